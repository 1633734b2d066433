//! The runtime's own messages never take it down when stderr is closed
//! (a program piped into `head`, which exits after its lines).

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{child_command, child_role};

/// Child: a goroutine that spins (looking at its preemption flag) on the
/// only P, so that the main goroutine's 100 sleeps are each ended by
/// sysmon (which fires timers while every P is busy), with
/// `GOSCHED_SCHEDTRACE=1` making sysmon write a line to stderr every ms.
fn child() {
    let rt = gosched::Builder::new().procs(1).build().unwrap();
    rt.block_on(|| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let hog = gosched::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(200) {
                    std::hint::spin_loop();
                }
                gosched::preempt_point();
            }
        });
        for _ in 0..100 {
            gosched::sleep(Duration::from_millis(2));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hog.join().unwrap();
    });
    println!("DONE");
}

/// Waits for `c` to exit; kills it after `limit` (then None).
fn wait_or_kill(c: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GOSCHED_SCHEDTRACE` into a closed stderr: sysmon's `eprintln!`
/// panicked on EPIPE and killed sysmon; the sleeps, whose timers only
/// sysmon fires while the P is busy, never ended.
#[test]
fn a_closed_stderr_does_not_stop_sysmon() {
    if child_role().is_some() {
        return child();
    }
    let mut cmd = child_command("a_closed_stderr_does_not_stop_sysmon", "child");
    cmd.env("GOSCHED_SCHEDTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut c = cmd.spawn().unwrap();
    // Close the read end at once: every write to the child's stderr fails
    // with EPIPE (Rust programs ignore SIGPIPE).
    drop(c.stderr.take());
    let status = wait_or_kill(&mut c, Duration::from_secs(30));
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = status.expect("the child hung for 30 s: sysmon died on a closed stderr");
    assert!(status.success(), "child {status:?}, stdout:\n{out}");
    assert!(out.contains("DONE"), "stdout:\n{out}");
}

/// Child: on the only P, a goroutine printing long lines with `eprintln!`
/// (holding std's stderr lock while it formats) beside a call-free loop;
/// the main goroutine's sleep ends only if sysmon goes on preempting.
fn printer_child() {
    let rt = gosched::Builder::new().procs(1).build().unwrap();
    rt.block_on(|| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let printer = {
            let stop = stop.clone();
            gosched::spawn(move || {
                let v: Vec<u64> = (0..200).collect();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("{v:?}");
                }
            })
        };
        let hog = {
            let stop = stop.clone();
            gosched::spawn(move || {
                let mut x = 1u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x).wrapping_mul(3).wrapping_add(1);
                }
                x
            })
        };
        gosched::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        printer.join().unwrap();
        hog.join().unwrap();
    });
    println!("DONE");
}

/// sysmon's `GOSCHED_SCHEDTRACE` lines never wait for a goroutine holding
/// std's stderr lock. It wrote through that lock: a goroutine preempted
/// inside `eprintln!` (ThreadAffine: its thread parked, the lock held)
/// waited for the only P, which a call-free loop kept, and only sysmon
/// could preempt that loop, and sysmon waited for the lock: the process
/// hung (10 runs of 10 in release, 9 of 10 in debug).
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn schedtrace_never_waits_for_a_goroutine_holding_stderr() {
    if child_role().as_deref() == Some("printer") {
        return printer_child();
    }
    let mut cmd = child_command(
        "schedtrace_never_waits_for_a_goroutine_holding_stderr",
        "printer",
    );
    cmd.env("GOSCHED_SCHEDTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(30));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = status.expect("the child hung (killed after 30 s)");
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("DONE"), "{out}");
}
