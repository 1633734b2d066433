//! What the runtime does when the OS refuses it something: a thread, the
//! stack reservation, a stack. Go's answer is a fatal error (exit status 2,
//! a message naming the limit, the goroutine dump) or, at build time, an
//! error; never an unwinding panic that leaves the scheduler wedged.
//!
//! The refusals are real: a child process lowers its own address-space
//! limit (RLIMIT_AS) to just above what it uses, so the next thread stack
//! (or reservation) cannot be mapped. The tests run as root, which
//! RLIMIT_NPROC does not bind; RLIMIT_AS binds everyone.

mod common;

use std::time::Duration;

use gosched::Builder;

/// The process's address-space size now (`VmSize` of /proc/self/status).
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status");
    kb * 1024
}

/// Sets the soft RLIMIT_AS of this process to `bytes` (the hard limit is
/// left alone, so `unlimit_address_space` can raise it back).
fn limit_address_space(bytes: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the plain struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut lim), 0, "getrlimit");
        lim.rlim_cur = bytes.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &lim), 0, "setrlimit");
    }
}

/// Raises the soft RLIMIT_AS back to the hard limit.
fn unlimit_address_space() {
    limit_address_space(u64::MAX);
}

/// Lowers RLIMIT_AS to `slack` bytes above the current size: small
/// allocations still fit, a new thread's stack (2 MiB by default) does not.
/// Call `wait_for_threads_started` first: a thread still starting maps its
/// signal stack, and aborts the process if it cannot.
fn limit_address_space_near_current(slack: u64) {
    limit_address_space(vm_size() + slack);
}

/// Waits until every other thread of the process has been asleep in the
/// kernel at once (a just-built runtime's sysmon has then finished
/// starting).
fn wait_for_threads_started() {
    let me = common::os_tid();
    let settled = common::wait_until(Duration::from_secs(20), || {
        std::fs::read_dir("/proc/self/task")
            .expect("read /proc/self/task")
            .flatten()
            .filter(|e| e.file_name().to_str() != Some(&me.to_string()))
            .all(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].trim_start().chars().next());
                matches!(state, Some('S') | Some('D'))
            })
    });
    assert!(settled, "the process's threads never all slept");
    // The sysmon of a just-built runtime may sleep once before its loop
    // (setting its priority); its loop allocates nothing big.
    std::thread::sleep(Duration::from_millis(100));
}

/// The OS refusing a worker thread is a fatal error (Go's "failed to
/// create new OS thread"), on every path that starts an M: `block_on`'s
/// spawn waking an M (which used to panic out of `block_on` while its
/// goroutine, borrowing from the caller, stayed queued) and sysmon handing
/// off the P of a thread blocked in the kernel (which used to kill sysmon
/// and leave the P in hand-off for good: a hang).
#[test]
fn refused_worker_thread_is_a_fatal_error() {
    if let Some(role) = common::child_role() {
        let rt = Builder::new().procs(1).build().unwrap();
        wait_for_threads_started();
        let v = [1u64, 2, 3];
        match role.as_str() {
            // No M exists yet: block_on's spawn must start one.
            "block_on" => {
                limit_address_space_near_current(1 << 20);
                let n = rt.block_on(|| v.iter().sum::<u64>());
                println!("UNEXPECTED: block_on returned {n}");
            }
            // The only M sleeps in the kernel with a goroutine waiting for
            // its P: sysmon hands the P off, to a new M. (The goroutine
            // must not sleep in the kernel before: sysmon would hand off
            // its P to a spinning M then, which would stay idle, ready.)
            _ => {
                let n = rt.block_on(|| {
                    limit_address_space_near_current(1 << 20);
                    let h = gosched::spawn(|| 1u64);
                    std::thread::sleep(Duration::from_secs(3));
                    h.join().unwrap() + v.iter().sum::<u64>()
                });
                println!("UNEXPECTED: block_on returned {n}");
            }
        }
        return;
    }
    for role in ["block_on", "sysmon"] {
        let out = common::run_child("refused_worker_thread_is_a_fatal_error", role, &[]);
        let what = format!("role {role}: {}", out.describe());
        assert_eq!(out.status.code(), Some(2), "{what}");
        for needle in [
            "gosched: failed to create new OS thread",
            "Resource temporarily unavailable",
            "pids.max",
            "RLIMIT_NPROC",
            "RLIMIT_AS",
            "fatal error: newosproc",
            "goroutine 1 [",
            "the main goroutine (Runtime::block_on)",
        ] {
            assert!(out.stderr.contains(needle), "no {needle:?}; {what}");
        }
        assert!(!out.stderr.contains("panicked"), "{what}");
        assert!(!out.stdout.contains("UNEXPECTED"), "{what}");
    }
}

/// Under an address-space limit (`ulimit -v`) the stack reservation fails;
/// the error says what was reserved, why it may fail and what to change,
/// not just "Cannot allocate memory". Lifting the limit lets a runtime
/// build again.
#[test]
fn refused_stack_reservation_names_the_reservation_and_the_limit() {
    if common::child_role().is_some() {
        wait_for_threads_started();
        // Half the reservation (256 GiB) above what the process uses.
        limit_address_space_near_current(128 << 30);
        match Builder::new().procs(1).build() {
            Ok(_) => println!("UNEXPECTED: built under the limit"),
            Err(e) => println!("ERR: {e} (kind {:?})", e.kind()),
        }
        unlimit_address_space();
        let rt = Builder::new().procs(1).build().unwrap();
        println!("AFTER: {}", rt.block_on(|| 7));
        return;
    }
    let out = common::run_child(
        "refused_stack_reservation_names_the_reservation_and_the_limit",
        "child",
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    // libtest's "test ... " may precede the line (--nocapture).
    let err = out
        .stdout
        .lines()
        .find_map(|l| l.split_once("ERR: ").map(|(_, e)| e))
        .unwrap_or_else(|| panic!("build did not fail: {}", out.describe()));
    for needle in [
        "cannot reserve 256 GiB of address space for goroutine stacks",
        "Cannot allocate memory",
        "RLIMIT_AS (ulimit -v; now ",
        "vm.overcommit_memory=2",
        "kind OutOfMemory",
        "ulimit -v unlimited",
    ] {
        assert!(err.contains(needle), "no {needle:?} in {err:?}");
    }
    assert!(out.stdout.contains("AFTER: 7"), "{}", out.describe());
}

/// The role of a child whose scenario runs before libtest's `main` (see
/// `pre_main`).
const PRE_MAIN_SYSMON: &str = "pre-main: sysmon refused";

/// Runs a child scenario that needs the process to itself: the deadlock
/// report holds back while any thread exists that could still wake a
/// goroutine, and libtest runs each test on a thread of its own while its
/// main thread waits. Entries of `.init_array` run before `main`, when the
/// process has one thread; the scenario exits the process.
#[used]
#[link_section = ".init_array"]
static PRE_MAIN: extern "C" fn() = pre_main;

extern "C" fn pre_main() {
    if std::env::var(common::CHILD_ENV).as_deref() != Ok(PRE_MAIN_SYSMON) {
        return;
    }
    // No unwinding out of an `extern "C"` function: a panic is exit 101.
    let r = std::panic::catch_unwind(sysmon_refused_scenario);
    std::process::exit(if r.is_ok() { 0 } else { 101 });
}

/// The child of `refused_sysmon_thread_is_a_build_error_and_undone`.
fn sysmon_refused_scenario() {
    // The parent sets RUST_MIN_STACK to 128 MiB: the reservation and the
    // runtime's allocations fit in the limit, the sysmon thread's stack
    // does not.
    let before = vm_size();
    limit_address_space(before + (256 << 30) + (32 << 20));
    let built = Builder::new().procs(1).build();
    unlimit_address_space();
    match built {
        Ok(_) => eprintln!("UNEXPECTED: built under the limit"),
        Err(e) => eprintln!("BUILD ERR: {e} (kind {:?})", e.kind()),
    }
    // The stack reservation was unmapped.
    let after = vm_size();
    assert!(
        after < before + (1 << 30),
        "the failed build left {} MiB mapped",
        (after - before) >> 20
    );
    // The failed build left nothing counted: this runtime, the only one,
    // reports its deadlock (exit status 2).
    let rt = Builder::new().procs(1).build().unwrap();
    rt.block_on(|| {
        let (tx, rx) = gosched::chan::channel::<u32>(0);
        let _keep = tx;
        rx.recv();
    });
    eprintln!("UNEXPECTED: the receive returned");
}

/// The OS refusing the sysmon thread makes `Builder::build` return an
/// error naming it (it used to panic), and undoes what the build set up:
/// a later runtime, alone in the process, still reports a deadlock (the
/// failed build used to stay counted as a live runtime, which silenced the
/// report for the life of the process).
#[test]
fn refused_sysmon_thread_is_a_build_error_and_undone() {
    let mut cmd = common::child_command(
        "refused_sysmon_thread_is_a_build_error_and_undone",
        PRE_MAIN_SYSMON,
    );
    cmd.env("RUST_MIN_STACK", (128u32 << 20).to_string());
    let (status, stderr) = run_with_timeout(cmd, common::CHILD_TIMEOUT);
    let what = format!("{status:?}\n--- stderr ---\n{stderr}");
    let err = stderr
        .lines()
        .find_map(|l| l.strip_prefix("BUILD ERR: "))
        .unwrap_or_else(|| panic!("build did not fail: {what}"));
    for needle in [
        "cannot start the runtime's sysmon thread",
        "Resource temporarily unavailable",
        "RLIMIT_NPROC",
        "RLIMIT_AS",
        "kind WouldBlock",
    ] {
        assert!(err.contains(needle), "no {needle:?} in {err:?}");
    }
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{what}");
    assert!(
        stderr.contains("fatal error: all goroutines are asleep - deadlock!"),
        "{what}"
    );
}

/// Runs `cmd` (stdout discarded) and returns its exit status, or `None` if
/// it ran past `timeout` (it is killed then), and its stderr. For children
/// that libtest does not run (`common::run_child` checks that it did).
fn run_with_timeout(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    use std::process::Stdio;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the child process");
    let mut pipe = child.stderr.take().expect("child stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the child") {
            break Some(st);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status, reader.join().unwrap())
}

/// Running out of goroutine stacks is a fatal error naming the stack size,
/// the goroutine count and the knob: 1 GiB stacks fill the 256 GiB
/// reservation after 255 goroutines. It used to be a panic on g0, which
/// killed the M and left its P and the goroutine stranded: a hang.
#[test]
fn running_out_of_stacks_is_a_fatal_error() {
    if common::child_role().is_some() {
        let rt = Builder::new().stack_size(1 << 30).procs(1).build().unwrap();
        rt.block_on(|| {
            let (tx, rx) = gosched::chan::channel::<()>(0);
            let _hs: Vec<_> = (0..300)
                .map(|_| {
                    let rx = rx.clone();
                    gosched::spawn(move || rx.recv())
                })
                .collect();
            // They start (and park) while we sleep.
            gosched::sleep(Duration::from_secs(30));
            drop(tx);
        });
        println!("UNEXPECTED: 300 goroutines with 1 GiB stacks ran");
        return;
    }
    let out = common::run_child("running_out_of_stacks_is_a_fatal_error", "child", &[]);
    let what = out.describe();
    assert_eq!(out.status.code(), Some(2), "{what}");
    for needle in [
        "gosched: cannot allocate a goroutine stack of 1073741824 bytes (1 GiB; ",
        " live goroutines, 255 stacks made so far",
        "all 255 stacks of the fixed 256 GiB stack reservation are in use",
        "Builder::stack_size",
        "fatal error: out of memory",
        "the main goroutine (Runtime::block_on)",
        "[waiting]",
    ] {
        assert!(out.stderr.contains(needle), "no {needle:?}; {what}");
    }
    // The main goroutine and the 255 started ones at least (all 301 unless
    // the main goroutine was preempted while it spawned).
    let live: usize = out
        .stderr
        .split(" live goroutines")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no goroutine count; {what}"));
    assert!(
        (256..=301).contains(&live),
        "{live} live goroutines; {what}"
    );
    assert!(!out.stderr.contains("panicked"), "{what}");
}
