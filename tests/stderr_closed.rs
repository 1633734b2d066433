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
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = c.kill();
            let _ = c.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = status.expect("the child hung for 30 s: sysmon died on a closed stderr");
    assert!(status.success(), "child {status:?}, stdout:\n{out}");
    assert!(out.contains("DONE"), "stdout:\n{out}");
}
