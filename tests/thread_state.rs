//! The state of OS threads, as goroutines and signals see it: a goroutine
//! that exits while locked to its thread leaves the thread with the signal
//! mask and CPU affinity it started with (its own never reach a later
//! goroutine), and a
//! locked goroutine's own CPU affinity survives the scheduler's pinning.
//! And SIGQUIT with the goroutine dump on (`GOSCHED_SIGQUITDUMP=1`): the
//! action it replaced is honoured, a forked child's SIGQUIT is its own, and
//! a deadlock is still reported.
//!
//! Deadlock reports need a process whose every thread the deadlock check
//! can account for, which a libtest child is not (its main thread waits for
//! the test thread on a channel): those scenarios run in a single-threaded
//! copy of the child, made with `fork` before any runtime exists
//! (`in_single_threaded_copy`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::os_tid;
use gosched::Builder;

/// Is SIGUSR2 blocked on the calling thread?
fn sigusr2_blocked() -> bool {
    // SAFETY: sigset_t is plain data; a null new set only reads this
    // thread's mask into `old`.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old),
            0
        );
        libc::sigismember(&old, libc::SIGUSR2) == 1
    }
}

/// Blocks SIGUSR2 on the calling thread.
fn block_sigusr2() {
    // SAFETY: builds a one-signal set and adds it to this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
}

/// The calling thread's CPU affinity.
fn affinity() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data, filled by the kernel; 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        set
    }
}

/// The CPUs in `set`.
fn cpus_of(set: &libc::cpu_set_t) -> Vec<usize> {
    (0..8 * std::mem::size_of::<libc::cpu_set_t>())
        // SAFETY: `c` is inside the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

/// Restricts the calling thread to CPU `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: builds a one-CPU set (cpu < CPU_SETSIZE: it came from
    // `cpus_of`) and applies it to this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// A goroutine that blocks SIGUSR2 and narrows its CPU affinity, then exits
/// while still locked: the goroutines that run afterwards (on one P, so on
/// whatever thread the runtime has) never see that mask or affinity. Before
/// the fix the thread went back to the pool as the goroutine left it, and
/// every later goroutine on it ran with SIGUSR2 blocked.
///
/// One P: the exiting goroutine's own wake-up of its joiner then starts no
/// thread (no P is idle), so the only thread started after the change is
/// the one the exit hands the P to.
#[test]
fn a_goroutine_exiting_locked_leaves_its_signal_mask_and_affinity_to_nobody() {
    let _wd = common::watchdog();
    // The Ms inherit this thread's affinity.
    let start = affinity();
    let cpus = cpus_of(&start);
    assert!(!sigusr2_blocked(), "the test thread blocks SIGUSR2 itself");
    let rt = Builder::new().procs(1).build().unwrap();
    let bad = rt.block_on(move || {
        let mut bad = Vec::new();
        for round in 0..3usize {
            let narrow = cpus.len() > 1;
            let cpu = cpus[round % cpus.len()];
            let tid = gosched::spawn(move || {
                gosched::lock_os_thread();
                block_sigusr2();
                if narrow {
                    pin_to(cpu);
                }
                assert!(sigusr2_blocked());
                os_tid()
            })
            .join()
            .unwrap();
            let later: Vec<_> = (0..100usize)
                .map(|i| {
                    gosched::spawn(move || {
                        let mut bad = Vec::new();
                        for k in 0..3 {
                            let here = os_tid();
                            if sigusr2_blocked() {
                                bad.push(format!(
                                    "round {round}, goroutine {i}: SIGUSR2 blocked on thread {here} \
                                     (the locked goroutine ran on {tid})"
                                ));
                            }
                            // SAFETY: both are valid sets.
                            if !unsafe { libc::CPU_EQUAL(&affinity(), &start) } {
                                bad.push(format!(
                                    "round {round}, goroutine {i}: affinity {:?} on thread {here}, \
                                     not the process's {:?} (the locked goroutine ran on {tid})",
                                    cpus_of(&affinity()),
                                    cpus_of(&start)
                                ));
                            }
                            if (i + k) % 2 == 0 {
                                gosched::yield_now();
                            } else {
                                gosched::sleep(Duration::from_micros(100));
                            }
                        }
                        bad
                    })
                })
                .collect();
            for h in later {
                bad.extend(h.join().unwrap());
            }
        }
        bad
    });
    assert!(
        bad.is_empty(),
        "{} observations of a dead goroutine's thread state, first ones:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
}

/// With asynchronous preemption: after a goroutine blocked SIGUSR2 and
/// exited locked, a loop without calls on the only P is still preempted
/// (a goroutine sleeping 1 ms beside it keeps waking). Before the fix the
/// loop ran on the exited goroutine's thread, whose changed mask made the
/// SIGURG handler refuse every preemption there (safe-point rule 5): the
/// sleeper never ran again, and the child hung until its own watchdog.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn after_a_locked_exit_a_loop_without_calls_is_still_preempted() {
    const TEST: &str = "after_a_locked_exit_a_loop_without_calls_is_still_preempted";
    if common::child_role().as_deref() == Some("hog") {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(30));
            eprintln!("TIMEOUT: the sleeper beside the loop did not wake 20 times in 30 s");
            std::process::exit(3);
        });
        let rt = Builder::new().procs(1).build().unwrap();
        let worst = rt.block_on(|| {
            gosched::spawn(|| {
                gosched::lock_os_thread();
                block_sigusr2();
            })
            .join()
            .unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let hog = gosched::spawn({
                let stop = stop.clone();
                move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                    }
                    x
                }
            });
            let mut worst = Duration::ZERO;
            for _ in 0..20 {
                let t = Instant::now();
                gosched::sleep(Duration::from_millis(1));
                worst = worst.max(t.elapsed());
            }
            stop.store(true, Ordering::Relaxed);
            hog.join().unwrap();
            worst
        });
        println!(
            "worst_us={} preempt_async={}",
            worst.as_micros(),
            rt.stats().preempt_async
        );
        return;
    }
    let _wd = common::watchdog();
    let out = common::run_child(TEST, "hog", &[]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout_u64("preempt_async=") > 0, "{}", out.describe());
    // A quantum (10 ms) and sysmon's look, on a loaded machine: 5 s is
    // generous.
    assert!(
        out.stdout_u64("worst_us=") < 5_000_000,
        "the sleeper waited too long\n{}",
        out.describe()
    );
}

/// A locked goroutine keeps itself to one CPU (`sched_setaffinity`) and
/// waits on a channel that other goroutines feed, 200 times: after every
/// wake-up its affinity is still that one CPU, and it runs there. The M
/// that hands the goroutine's thread its P pins that thread to its own CPU
/// for the hand-off (ThreadAffine's `startlockedm`); before the fix the
/// woken thread undid the pin by restoring the mask it had when the M
/// started (every CPU), so the goroutine's own affinity was gone after its
/// first wake-up by another thread.
#[test]
fn a_locked_goroutines_own_cpu_affinity_survives_its_wake_ups() {
    let _wd = common::watchdog();
    let cpus = cpus_of(&affinity());
    if cpus.len() < 2 {
        eprintln!(
            "skipped: this process may run on one CPU only ({cpus:?}), nothing to pin away from"
        );
        return;
    }
    let cpu = cpus[cpus.len() - 1];
    let rt = Builder::new().procs(2).build().unwrap();
    let bad = rt.block_on(move || {
        let (tx, rx) = gosched::chan::channel::<u32>(0);
        let locked = gosched::spawn(move || {
            gosched::lock_os_thread();
            pin_to(cpu);
            let mut bad = Vec::new();
            for i in 0..200 {
                if rx.recv().is_none() {
                    bad.push(format!("the feeders stopped after {i} values"));
                    break;
                }
                let now = cpus_of(&affinity());
                // SAFETY: sched_getcpu has no preconditions.
                let on = unsafe { libc::sched_getcpu() };
                if now != [cpu] || on != cpu as i32 {
                    bad.push(format!(
                        "wake-up {i}: affinity {now:?}, running on CPU {on}; set to CPU {cpu} only"
                    ));
                }
            }
            // Exits locked: the thread, narrowed, ends with it.
            bad
        });
        let feeders: Vec<_> = (0..4u32)
            .map(|f| {
                let tx = tx.clone();
                gosched::spawn(move || {
                    for k in 0..50u32 {
                        tx.send(k).unwrap();
                        match (f + k) % 3 {
                            0 => gosched::yield_now(),
                            1 => gosched::sleep(Duration::from_micros(50)),
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        for f in feeders {
            f.join().unwrap();
        }
        locked.join().unwrap()
    });
    assert!(
        bad.is_empty(),
        "{} of 200 wake-ups off the goroutine's own CPU, first ones:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
}

/// The SIGQUIT handler of the tests below, installed before gosched's: says
/// so on stderr (write(2) only: async-signal-safe).
extern "C" fn user_sigquit_handler(_sig: libc::c_int) {
    let msg = b"user SIGQUIT handler ran\n";
    // SAFETY: write(2) of a static buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Sets SIGQUIT's action to `handler` (a function, SIG_IGN or SIG_DFL).
fn set_sigquit(handler: libc::sighandler_t) {
    // SAFETY: signal(2) with a valid disposition; the function one is
    // async-signal-safe.
    let old = unsafe { libc::signal(libc::SIGQUIT, handler) };
    assert_ne!(old, libc::SIG_ERR);
}

/// Raises SIGQUIT from a goroutine of a runtime built by `builder`, then
/// waits: prints `alive` if the process is still there after 300 ms.
fn raise_sigquit_in(builder: Builder) {
    let rt = builder.procs(2).build().unwrap();
    rt.block_on(|| {
        let (_tx, rx) = gosched::chan::channel::<()>(0);
        let _waiter = gosched::spawn(move || rx.recv());
        gosched::sleep(Duration::from_millis(50));
        // SAFETY: raise has no preconditions.
        unsafe { libc::raise(libc::SIGQUIT) };
        gosched::sleep(Duration::from_millis(300));
    });
    println!("alive");
}

/// A SIGQUIT handler the application installed before the dump was turned
/// on still runs (first), and the dump follows. Before the fix the action
/// replaced was read and dropped: the application's handler never ran.
#[test]
fn sigquit_runs_the_handler_it_replaced_then_dumps() {
    const TEST: &str = "sigquit_runs_the_handler_it_replaced_then_dumps";
    if common::child_role().as_deref() == Some("user") {
        set_sigquit(user_sigquit_handler as *const () as libc::sighandler_t);
        raise_sigquit_in(Builder::new());
        return;
    }
    let _wd = common::watchdog();
    let out = common::run_child(TEST, "user", &[("GOSCHED_SIGQUITDUMP", "1")]);
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    let (user, dump) = (
        out.stderr.find("user SIGQUIT handler ran"),
        out.stderr.find("SIGQUIT: quit"),
    );
    assert!(
        user.is_some() && dump.is_some() && user < dump,
        "want the application's handler, then the dump\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("[waiting]"), "{}", out.describe());
}

/// SIGQUIT ignored before the runtime was built (a launcher's `SIG_IGN`)
/// stays ignored although the program turns the dump on in its code; only
/// `GOSCHED_SIGQUITDUMP=1` in the environment asks for the dump anyway.
/// Before the fix the ignored SIGQUIT dumped and exited the process with
/// status 2.
#[test]
fn an_ignored_sigquit_stays_ignored_unless_the_environment_asks() {
    const TEST: &str = "an_ignored_sigquit_stays_ignored_unless_the_environment_asks";
    if common::child_role().as_deref() == Some("ignored") {
        set_sigquit(libc::SIG_IGN);
        raise_sigquit_in(Builder::new().dump_on_sigquit(true));
        return;
    }
    let _wd = common::watchdog();
    let out = common::run_child(TEST, "ignored", &[]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("alive"), "{}", out.describe());
    assert!(!out.stderr.contains("SIGQUIT: quit"), "{}", out.describe());
    let asked = common::run_child(TEST, "ignored", &[("GOSCHED_SIGQUITDUMP", "1")]);
    assert_eq!(asked.status.code(), Some(2), "{}", asked.describe());
    assert!(
        asked.stderr.starts_with("SIGQUIT: quit"),
        "{}",
        asked.describe()
    );
}

/// A child forked (without exec) from a process with the dump on inherits
/// the handler, but its SIGQUIT is its own: the child dies of it (the
/// default action, as if gosched were not there), and the parent neither
/// dumps nor exits. Before the fix the child's handler wrote to the
/// parent's pipe: the parent printed its dump and exited with status 2,
/// and the child carried on.
#[test]
fn a_forked_childs_sigquit_is_its_own() {
    const TEST: &str = "a_forked_childs_sigquit_is_its_own";
    if common::child_role().as_deref() == Some("fork") {
        let rt = Builder::new().procs(2).build().unwrap();
        // SAFETY: fork has no preconditions; the copy calls only
        // async-signal-safe functions (raise, _exit) before it ends.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::raise(libc::SIGQUIT);
                libc::_exit(0);
            }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            println!("copy_signal={}", libc::WTERMSIG(status));
        } else {
            println!("copy_exit={}", libc::WEXITSTATUS(status));
        }
        // A dump the copy's signal set off would have ended us by now.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(rt.block_on(|| 7), 7);
        println!("parent_alive");
        return;
    }
    let _wd = common::watchdog();
    let out = common::run_child(TEST, "fork", &[("GOSCHED_SIGQUITDUMP", "1")]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(!out.stderr.contains("SIGQUIT: quit"), "{}", out.describe());
    assert_eq!(
        out.stdout_u64("copy_signal="),
        libc::SIGQUIT as u64,
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("parent_alive"), "{}", out.describe());
}

/// Runs `scenario` in a copy of this process made with `fork`, in which
/// only the calling thread exists, and waits for the copy: its exit code,
/// or `None` if it was killed after `limit` (a missed deadlock report hangs
/// it) or died of a signal. Call it in a child process (`run_child`) before
/// anything of gosched runs there. The copy shares our stdout and stderr.
fn in_single_threaded_copy(limit: Duration, scenario: impl FnOnce()) -> Option<i32> {
    // SAFETY: fork has no preconditions. The copy runs only this thread:
    // libtest's main thread, the only other one, waits on a channel and
    // holds no lock the scenario takes (glibc makes malloc usable in a
    // forked child), and no runtime exists yet whose state could be
    // copied mid-use.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        scenario();
        // SAFETY: ends the copy without running the test harness on.
        unsafe { libc::_exit(0) };
    }
    let deadline = Instant::now() + limit;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing its status to `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our own child, still running.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            eprintln!("the single-threaded copy ran past {limit:?}: killed");
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

/// The deadlock report's first line (tests/deadlock.rs).
const DEADLOCK: &str = "fatal error: all goroutines are asleep - deadlock!";

/// Runs a program that deadlocks in a single-threaded copy of a child
/// process with the environment `envs`, after `before` ran inside its main
/// goroutine, and checks that the copy reports the deadlock (exit status 2,
/// Go's report naming the main goroutine's receive).
fn check_deadlock_reported(test: &str, envs: &[(&str, &str)], before: fn()) {
    if common::child_role().as_deref() == Some("deadlock") {
        let code = in_single_threaded_copy(Duration::from_secs(30), move || {
            let rt = Builder::new().procs(2).build().unwrap();
            rt.block_on(move || {
                before();
                let (tx, rx) = gosched::chan::channel::<u32>(0);
                let _keep = tx;
                rx.recv();
            });
            eprintln!("UNEXPECTED: the deadlocked program went on");
        });
        println!("copy_exit={}", code.map_or(-1, |c| c as i64));
        return;
    }
    let _wd = common::watchdog();
    let out = common::run_child(test, "deadlock", envs);
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("copy_exit=2") && out.stderr.contains(DEADLOCK),
        "no deadlock report\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("[chan receive]"), "{}", out.describe());
}

/// A deadlock after a goroutine exited locked is still reported: its
/// thread went back to the pool and counts as an M like any other.
#[test]
fn a_deadlock_after_a_locked_exit_is_reported() {
    check_deadlock_reported("a_deadlock_after_a_locked_exit_is_reported", &[], || {
        gosched::spawn(gosched::lock_os_thread).join().unwrap();
    });
}

/// With the SIGQUIT dump on, a deadlock is still reported: the deadlock
/// check accounts for every thread, and the `gosched-sigquit` thread, which
/// can never wake a goroutine, counts as parked for good. Before the fix it
/// was an unknown thread, so the check held back for ever and the program
/// hung (the copy is killed after 30 s).
#[test]
fn a_deadlock_with_the_sigquit_dump_on_is_reported() {
    check_deadlock_reported(
        "a_deadlock_with_the_sigquit_dump_on_is_reported",
        &[("GOSCHED_SIGQUITDUMP", "1")],
        || {},
    );
}

/// Threads ended by locked exits do not count against `max_threads`: the
/// limit counted every M ever started, so with `max_threads(6)` the fifth
/// locked exit died of "thread exhaustion".
#[test]
fn locked_exits_do_not_use_up_max_threads() {
    if common::child_role().is_some() {
        let rt = Builder::new().procs(1).max_threads(6).build().unwrap();
        let n = rt.block_on(|| {
            let mut n = 0;
            for _ in 0..20 {
                gosched::spawn(gosched::lock_os_thread).join().unwrap();
                n += 1;
            }
            n
        });
        println!("exits={n}");
        return;
    }
    let out = common::run_child("locked_exits_do_not_use_up_max_threads", "exits", &[]);
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout_u64("exits="), 20, "{}", out.describe());
}
