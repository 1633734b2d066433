//! Go's deadlock report: when every goroutine is blocked on a runtime object
//! and nothing could wake them, the process prints
//! `fatal error: all goroutines are asleep - deadlock!` with each blocked
//! goroutine and exits with status 2. And when something *could* still wake
//! them (a plain thread, a pending timer), it does not.
//!
//! This test has its own `main` (`harness = false`): the deadlock check
//! accounts for every thread of the process, and libtest's extra threads
//! would (correctly) make it hold back. The parent re-runs this binary with
//! `GOSCHED_DEADLOCK_CHILD=<scenario>` and checks the child's exit status
//! and stderr.

#[path = "common/child.rs"]
#[allow(dead_code)]
mod child;

use std::process::Command;
use std::time::{Duration, Instant};

use gosched::chan;

const ROLE: &str = "GOSCHED_DEADLOCK_CHILD";

/// The first CPU the calling thread may run on.
fn first_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data, filled in by the kernel; CPU_ISSET
    // reads bits inside the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(r, 0, "sched_getaffinity");
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("no CPU allowed")
    }
}

/// Restricts the calling thread to CPU `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: builds a one-CPU set (`cpu` < CPU_SETSIZE: it came from
    // `first_cpu`) and applies it to this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "sched_setaffinity");
    }
}

/// The `spin` role: keeps CPU `GOSCHED_SPIN_CPU` busy for at most 20 s,
/// and dies with its parent.
fn spin() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's death
    // signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let cpu: usize = std::env::var("GOSCHED_SPIN_CPU").unwrap().parse().unwrap();
    pin_to(cpu);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        std::hint::spin_loop();
    }
}

/// Child scenarios.
fn child(scenario: &str) {
    if scenario == "spin" {
        spin();
        return;
    }
    let rt = gosched::Builder::new().procs(2).build().unwrap();
    match scenario {
        // The main goroutine receives on a channel only it could send on.
        "main_recv" => {
            rt.block_on(|| {
                let (tx, rx) = chan::channel::<u32>(0);
                let _keep = tx;
                rx.recv();
            });
        }
        // Timed channel waits on the main goroutine end by themselves:
        // send_timeout, recv_deadline, select's default(timeout), and a
        // receive from a pending Timer. Not a deadlock.
        "main_timed_channel_waits" => {
            rt.block_on(|| {
                let (tx, rx) = chan::channel::<u32>(0);
                let d = Duration::from_millis(200);
                assert!(tx.send_timeout(1, d).is_err());
                assert!(rx.recv_deadline(Instant::now() + d).is_err());
                let timed_out = gosched::select! {
                    recv(rx) -> _ => false,
                    default(d) => true,
                };
                assert!(timed_out);
                assert!(chan::Timer::new(d).c().recv().is_some());
            });
        }
        // The main goroutine receives from a stopped Timer: nothing can
        // ever arrive (as in Go, a deadlock).
        "main_recv_on_stopped_timer" => {
            rt.block_on(|| {
                let t = chan::Timer::new(Duration::from_secs(60));
                assert!(t.stop());
                t.c().recv();
            });
        }
        // Two goroutines wait on each other's channel; main joins one.
        "cycle" => {
            rt.block_on(|| {
                let (tx1, rx1) = chan::channel::<u32>(0);
                let (tx2, rx2) = chan::channel::<u32>(0);
                // Named: the report shows the name.
                let a = gosched::GoroutineBuilder::new()
                    .name("cycle-a".into())
                    .spawn(move || {
                        let _keep = tx2;
                        rx1.recv()
                    })
                    .unwrap();
                let _b = gosched::spawn(move || {
                    let _keep = tx1;
                    rx2.recv()
                });
                let _ = a.join();
            });
        }
        // A plain thread sends after a while: not a deadlock.
        "plain_thread_sends" => {
            let (tx, rx) = chan::channel::<u32>(0);
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                tx.send(7).unwrap();
            });
            let v = rt.block_on(|| rx.recv());
            assert_eq!(v, Some(7));
            t.join().unwrap();
        }
        // A goroutine sleeps (a timer is pending) while main waits for it.
        "sleeper" => {
            rt.block_on(|| {
                let h = gosched::spawn(|| gosched::sleep(Duration::from_millis(400)));
                h.join().unwrap();
            });
        }
        // A plain thread waits on a gosched channel with a timeout nobody
        // will beat, then sends to the main goroutine: the timed wait ends
        // by itself, so nothing is deadlocked (issue 12, bug 1).
        "plain_thread_recv_timeout" => {
            let (tx, rx) = chan::channel::<u32>(0);
            let (_quiet_tx, quiet_rx) = chan::channel::<u32>(0);
            let t = std::thread::spawn(move || {
                let r = quiet_rx.recv_timeout(Duration::from_millis(800));
                assert_eq!(r, Err(chan::RecvTimeoutError::Timeout));
                tx.send(7).unwrap();
            });
            let v = rt.block_on(|| rx.recv());
            assert_eq!(v, Some(7));
            t.join().unwrap();
        }
        // The same with `gosched::sleep` on the plain thread.
        "plain_thread_gosched_sleep" => {
            let (tx, rx) = chan::channel::<u32>(0);
            let t = std::thread::spawn(move || {
                gosched::sleep(Duration::from_millis(800));
                tx.send(8).unwrap();
            });
            let v = rt.block_on(|| rx.recv());
            assert_eq!(v, Some(8));
            t.join().unwrap();
        }
        // A plain thread in a timed wait of a std Condvar (no runtime object
        // at all), then a send.
        "plain_thread_condvar_timeout" => {
            let (tx, rx) = chan::channel::<u32>(0);
            let t = std::thread::spawn(move || {
                let m = std::sync::Mutex::new(false);
                let cv = std::sync::Condvar::new();
                let g = m.lock().unwrap();
                let (g, r) = cv
                    .wait_timeout_while(g, Duration::from_millis(800), |ready| !*ready)
                    .unwrap();
                assert!(r.timed_out() && !*g);
                tx.send(9).unwrap();
            });
            let v = rt.block_on(|| rx.recv());
            assert_eq!(v, Some(9));
            t.join().unwrap();
        }
        // Two plain threads: one parked with no deadline on a gosched
        // WaitGroup (counted as parked), one in a timed receive that then
        // releases the group; the main goroutine waits on the group too.
        "plain_thread_timed_and_untimed" => {
            let wg = gosched::sync::WaitGroup::new();
            wg.add(1);
            let w1 = wg.clone();
            let waiter = std::thread::spawn(move || w1.wait());
            let w2 = wg.clone();
            let (_quiet_tx, quiet_rx) = chan::channel::<u32>(0);
            let timed = std::thread::spawn(move || {
                for _ in 0..4 {
                    let _ = quiet_rx.recv_timeout(Duration::from_millis(200));
                }
                w2.done();
            });
            rt.block_on(|| wg.wait());
            waiter.join().unwrap();
            timed.join().unwrap();
        }
        // A plain thread parked (no deadline) in a select whose other case
        // is a timer channel (`after`, fired by the helper thread of plain
        // threads' timers), then a send.
        "plain_thread_select_after" => {
            let (tx, rx) = chan::channel::<u32>(0);
            let (_quiet_tx, quiet_rx) = chan::channel::<u32>(0);
            let t = std::thread::spawn(move || {
                let timer = chan::after(Duration::from_millis(800));
                gosched::select! {
                    recv(quiet_rx) -> _v => panic!("nobody sends on quiet_rx"),
                    recv(timer) -> _at => tx.send(10).unwrap(),
                }
            });
            let v = rt.block_on(|| rx.recv());
            assert_eq!(v, Some(10));
            t.join().unwrap();
        }
        // A true deadlock beside a plain thread parked forever on a runtime
        // object: still reported.
        "plain_thread_parks_late" => {
            // The main goroutine parks at once; the plain thread it waits
            // on parks only 300 ms later, after sysmon's first look.
            let (tx, rx) = chan::channel::<u32>(0);
            let (tx2, rx2) = chan::channel::<u32>(0);
            let _t = std::thread::spawn(move || {
                let _keep = tx;
                std::thread::sleep(Duration::from_millis(300));
                rx2.recv()
            });
            rt.block_on(move || {
                let _keep = tx2;
                rx.recv()
            });
        }
        "plain_thread_parked_forever" => {
            let (tx, rx) = chan::channel::<u32>(0);
            let (tx2, rx2) = chan::channel::<u32>(0);
            let _t = std::thread::spawn(move || {
                let _keep = tx;
                rx2.recv()
            });
            rt.block_on(move || {
                let _keep = tx2;
                rx.recv()
            });
        }
        // A timer channel used on a plain thread first (this starts the
        // helper thread that fires plain threads' timers), then a true
        // deadlock: still reported. The helper thread, idle with no timer
        // pending, used to hide it for good (the child hung).
        "plain_thread_after_then_main_recv" => {
            assert!(chan::after(Duration::from_millis(1)).recv().is_some());
            rt.block_on(|| {
                let (tx, rx) = chan::channel::<u32>(0);
                std::mem::forget(tx);
                rx.recv();
            });
        }
        // The same after a plain thread's Timer was stopped: the helper
        // thread, waiting for that timer's deadline when it was cancelled,
        // hid the deadlock until then (here after the 30 s kill).
        "plain_thread_stopped_timer_then_main_recv" => {
            let t = chan::Timer::new(Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(50)); // the helper waits on it
            assert!(t.stop());
            rt.block_on(|| t.c().recv());
        }
        // The main goroutine waits for a timer channel made on a plain
        // thread: the helper thread will fire it (not a deadlock).
        "main_recv_on_plain_thread_after" => {
            let at = chan::after(Duration::from_millis(800));
            assert!(rt.block_on(|| at.recv()).is_some());
        }
        // A plain thread ping-pongs with the main goroutine through
        // unbuffered channels, starved of CPU: SCHED_IDLE, on the CPU three
        // busy processes spin on (one was not enough to starve it for
        // 100 ms). After each reply it is woken but may not
        // run for a long time; every P is idle and the goroutine parked
        // meanwhile. Not a deadlock: the woken thread will run.
        "starved_plain_thread_ping_pong" => {
            let cpu = first_cpu();
            let mut spinners: Vec<_> = (0..3)
                .map(|_| {
                    Command::new(std::env::current_exe().unwrap())
                        .env(ROLE, "spin")
                        .env("GOSCHED_SPIN_CPU", cpu.to_string())
                        .spawn()
                        .expect("start a spinner")
                })
                .collect();
            let (a_tx, a_rx) = chan::channel::<u32>(0);
            let (b_tx, b_rx) = chan::channel::<u32>(0);
            let t = std::thread::spawn(move || {
                pin_to(cpu);
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: changes only the calling thread's policy (to the
                // lowest, which needs no privilege).
                let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                assert_eq!(r, 0, "sched_setscheduler(SCHED_IDLE)");
                let start = Instant::now();
                let mut n = 0;
                while start.elapsed() < Duration::from_secs(4) {
                    a_tx.send(n).unwrap();
                    assert_eq!(b_rx.recv(), Some(n));
                    n += 1;
                }
                n
            });
            rt.block_on(move || {
                while let Some(v) = a_rx.recv() {
                    b_tx.send(v).unwrap();
                }
            });
            let rounds = t.join().unwrap();
            for s in &mut spinners {
                let _ = s.kill();
                let _ = s.wait();
            }
            assert!(rounds > 0);
        }
        other => panic!("unknown scenario {other}"),
    }
    drop(rt);
    std::process::exit(0);
}

/// One check of the parent: Ok, or what went wrong.
type Check = fn() -> Result<(), String>;

struct Outcome {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Runs a child scenario (this binary again, with `ROLE=scenario`; no
/// libtest here, so no test-count check); a child that hangs (a missed
/// deadlock) is killed after 30 s and reported with exit code None.
fn run(scenario: &str) -> Outcome {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, scenario).env_remove("GOSCHED_MAXPROCS");
    let done = child::run(cmd, Duration::from_secs(30));
    Outcome {
        code: done.status.and_then(|s| s.code()),
        stderr: done.stderr,
        took: done.elapsed,
    }
}

fn main_recv_is_reported() -> Result<(), String> {
    let o = run("main_recv");
    if o.code != Some(2) {
        return Err(format!("exit {:?}, want 2; stderr:\n{}", o.code, o.stderr));
    }
    let lines: Vec<&str> = o.stderr.lines().collect();
    if lines.first() != Some(&"fatal error: all goroutines are asleep - deadlock!") {
        return Err(format!("first line wrong:\n{}", o.stderr));
    }
    if !o.stderr.contains("[chan receive]") || !o.stderr.contains("Runtime::block_on") {
        return Err(format!(
            "no main goroutine waiting on a receive:\n{}",
            o.stderr
        ));
    }
    Ok(())
}

fn cycle_reports_every_blocked_goroutine() -> Result<(), String> {
    let o = run("cycle");
    if o.code != Some(2) {
        return Err(format!("exit {:?}, want 2; stderr:\n{}", o.code, o.stderr));
    }
    let receivers = o.stderr.matches("[chan receive]:").count();
    let joins = o.stderr.matches("[join]:").count();
    let spawned_here = o.stderr.matches("spawned at tests/deadlock.rs:").count();
    // Only the goroutine spawned with a name shows one.
    let named = o.stderr.matches(" \"cycle-a\" [chan receive]:").count();
    let quoted = o.stderr.matches('"').count();
    if receivers != 2 || joins != 1 || spawned_here != 2 || named != 1 || quoted != 2 {
        return Err(format!(
            "want 2 receivers, 1 joiner, 2 spawn sites, 1 named \"cycle-a\" and no other name; \
             got {receivers}, {joins}, {spawned_here}, {named}, {quoted} quotes:\n{}",
            o.stderr
        ));
    }
    Ok(())
}

fn plain_thread_sender_is_not_a_deadlock() -> Result<(), String> {
    let o = run("plain_thread_sends");
    if o.code != Some(0) || o.stderr.contains("deadlock") {
        return Err(format!("exit {:?}, want 0; stderr:\n{}", o.code, o.stderr));
    }
    Ok(())
}

fn pending_timer_is_not_a_deadlock() -> Result<(), String> {
    let o = run("sleeper");
    if o.code != Some(0) || o.stderr.contains("deadlock") {
        return Err(format!("exit {:?}, want 0; stderr:\n{}", o.code, o.stderr));
    }
    if o.took < Duration::from_millis(400) {
        return Err(format!("finished in {:?}, before the sleep ended", o.took));
    }
    Ok(())
}

/// A scenario that must finish normally after at least `min`.
fn completes(scenario: &str, min: Duration) -> Result<(), String> {
    let o = run(scenario);
    if o.code != Some(0) || o.stderr.contains("deadlock") {
        return Err(format!("exit {:?}, want 0; stderr:\n{}", o.code, o.stderr));
    }
    if o.took < min {
        return Err(format!("finished in {:?}, before {min:?}", o.took));
    }
    Ok(())
}

fn timed_channel_waits_on_main_are_not_a_deadlock() -> Result<(), String> {
    completes("main_timed_channel_waits", Duration::from_millis(800))
}

/// `scenario` ends in the deadlock report (status 2) with a goroutine or
/// thread blocked in a channel receive.
fn reported_in_chan_receive(scenario: &str) -> Result<(), String> {
    let o = run(scenario);
    if o.code != Some(2)
        || !o
            .stderr
            .starts_with("fatal error: all goroutines are asleep - deadlock!\n")
        || !o.stderr.contains("[chan receive]")
    {
        return Err(format!("exit {:?}, want 2; stderr:\n{}", o.code, o.stderr));
    }
    Ok(())
}

fn receiving_from_a_stopped_timer_is_a_deadlock() -> Result<(), String> {
    reported_in_chan_receive("main_recv_on_stopped_timer")
}

fn plain_thread_in_recv_timeout_is_not_a_deadlock() -> Result<(), String> {
    completes("plain_thread_recv_timeout", Duration::from_millis(800))
}

fn plain_thread_in_gosched_sleep_is_not_a_deadlock() -> Result<(), String> {
    completes("plain_thread_gosched_sleep", Duration::from_millis(800))
}

fn plain_thread_in_condvar_wait_timeout_is_not_a_deadlock() -> Result<(), String> {
    completes("plain_thread_condvar_timeout", Duration::from_millis(800))
}

fn timed_thread_beside_a_parked_thread_is_not_a_deadlock() -> Result<(), String> {
    completes("plain_thread_timed_and_untimed", Duration::from_millis(800))
}

fn plain_thread_selecting_on_a_timer_channel_is_not_a_deadlock() -> Result<(), String> {
    completes("plain_thread_select_after", Duration::from_millis(800))
}

fn plain_thread_parked_forever_is_part_of_a_deadlock() -> Result<(), String> {
    reported_in_chan_receive("plain_thread_parked_forever")
}

/// sysmon looked while the plain thread was still sleeping (not a
/// deadlock then) and used to sleep for ever: nothing wakes it when a plain
/// thread parks, so the child hung until the 30 s kill.
fn plain_thread_parking_late_is_part_of_a_deadlock() -> Result<(), String> {
    reported_in_chan_receive("plain_thread_parks_late")
}

fn plain_thread_timer_channel_does_not_hide_a_deadlock() -> Result<(), String> {
    reported_in_chan_receive("plain_thread_after_then_main_recv")
}

fn plain_thread_stopped_timer_does_not_hide_a_deadlock() -> Result<(), String> {
    reported_in_chan_receive("plain_thread_stopped_timer_then_main_recv")
}

fn goroutine_waiting_for_a_helper_thread_timer_is_not_a_deadlock() -> Result<(), String> {
    completes(
        "main_recv_on_plain_thread_after",
        Duration::from_millis(800),
    )
}

/// Goes with a fix in the deadlock check: a plain thread woken but not yet
/// run still counted as parked, so every P idle, the goroutine parked and
/// the thread "parked" looked like a deadlock for as long as the thread
/// waited for a CPU (100 ms was enough: exit 2).
fn starved_plain_thread_is_not_a_deadlock() -> Result<(), String> {
    completes("starved_plain_thread_ping_pong", Duration::from_secs(4))
}

fn main() {
    if let Ok(s) = std::env::var(ROLE) {
        child(&s);
        return;
    }
    // `cargo test --test deadlock NAME...`: only the checks whose name
    // contains one of the NAMEs.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, Check); 17] = [
        (
            "starved_plain_thread_is_not_a_deadlock",
            starved_plain_thread_is_not_a_deadlock,
        ),
        (
            "plain_thread_timer_channel_does_not_hide_a_deadlock",
            plain_thread_timer_channel_does_not_hide_a_deadlock,
        ),
        (
            "plain_thread_stopped_timer_does_not_hide_a_deadlock",
            plain_thread_stopped_timer_does_not_hide_a_deadlock,
        ),
        (
            "goroutine_waiting_for_a_helper_thread_timer_is_not_a_deadlock",
            goroutine_waiting_for_a_helper_thread_timer_is_not_a_deadlock,
        ),
        (
            "timed_channel_waits_on_main_are_not_a_deadlock",
            timed_channel_waits_on_main_are_not_a_deadlock,
        ),
        (
            "receiving_from_a_stopped_timer_is_a_deadlock",
            receiving_from_a_stopped_timer_is_a_deadlock,
        ),
        (
            "plain_thread_selecting_on_a_timer_channel_is_not_a_deadlock",
            plain_thread_selecting_on_a_timer_channel_is_not_a_deadlock,
        ),
        ("main_recv_is_reported", main_recv_is_reported),
        (
            "plain_thread_in_recv_timeout_is_not_a_deadlock",
            plain_thread_in_recv_timeout_is_not_a_deadlock,
        ),
        (
            "plain_thread_in_gosched_sleep_is_not_a_deadlock",
            plain_thread_in_gosched_sleep_is_not_a_deadlock,
        ),
        (
            "plain_thread_in_condvar_wait_timeout_is_not_a_deadlock",
            plain_thread_in_condvar_wait_timeout_is_not_a_deadlock,
        ),
        (
            "timed_thread_beside_a_parked_thread_is_not_a_deadlock",
            timed_thread_beside_a_parked_thread_is_not_a_deadlock,
        ),
        (
            "plain_thread_parking_late_is_part_of_a_deadlock",
            plain_thread_parking_late_is_part_of_a_deadlock,
        ),
        (
            "plain_thread_parked_forever_is_part_of_a_deadlock",
            plain_thread_parked_forever_is_part_of_a_deadlock,
        ),
        (
            "cycle_reports_every_blocked_goroutine",
            cycle_reports_every_blocked_goroutine,
        ),
        (
            "plain_thread_sender_is_not_a_deadlock",
            plain_thread_sender_is_not_a_deadlock,
        ),
        (
            "pending_timer_is_not_a_deadlock",
            pending_timer_is_not_a_deadlock,
        ),
    ];
    let tests: Vec<(&str, Check)> = tests
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let mut failed = 0;
    for &(name, f) in &tests {
        match f() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n{e}");
            }
        }
    }
    println!("{} passed, {failed} failed", tests.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
