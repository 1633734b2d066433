//! Runtime lifecycle: dropping a runtime stops its threads, an idle runtime
//! uses no CPU, and the counters add up after work. The process-wide
//! measurements (threads, CPU time) run in a child process so that the
//! other tests of this file cannot disturb them.

mod common;

use std::time::Duration;

use common::{child_role, os_thread_count, process_cpu_time, run_child, wait_until};
use gosched::Builder;

/// Some work that wakes every P and M: spawns, yields, sleeps, a join tree.
fn some_work() -> u64 {
    let hs: Vec<_> = (0..200u64)
        .map(|i| {
            gosched::spawn(move || {
                gosched::yield_now();
                if i % 10 == 0 {
                    gosched::sleep(Duration::from_millis(1));
                }
                i
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).sum()
}

#[test]
fn dropping_runtimes_returns_the_thread_count_to_its_start() {
    if child_role().is_some() {
        let before = os_thread_count();
        let mut peak = before;
        for round in 0..20 {
            let rt = Builder::new().procs(2).build().unwrap();
            assert_eq!(rt.block_on(some_work), 199 * 200 / 2);
            peak = peak.max(os_thread_count());
            drop(rt);
            // Drop joins every thread; the kernel may list an exiting thread
            // for a moment after its join returns.
            let back = wait_until(Duration::from_secs(2), || os_thread_count() == before);
            assert!(
                back,
                "round {round}: {} threads after drop, {before} before",
                os_thread_count()
            );
        }
        // The runtimes did start threads (an M and sysmon at least), so a
        // count that returns to the start means they were all stopped.
        assert!(peak >= before + 2, "peak {peak}, before {before}");
        eprintln!("threads: before {before}, peak {peak}");
        return;
    }
    let out = run_child(
        "dropping_runtimes_returns_the_thread_count_to_its_start",
        "threads",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    out.stderr
        .lines()
        .filter(|l| l.starts_with("threads:"))
        .for_each(|l| eprintln!("child: {l}"));
}

#[test]
fn idle_runtime_uses_almost_no_cpu() {
    if child_role().is_some() {
        let rt = Builder::new().procs(2).build().unwrap();
        assert_eq!(rt.block_on(some_work), 199 * 200 / 2);
        // Let the runtime settle into idleness (spinning Ms give up, sysmon
        // backs off), then measure a second of it.
        std::thread::sleep(Duration::from_millis(100));
        let before = process_cpu_time();
        std::thread::sleep(Duration::from_secs(1));
        let used = process_cpu_time() - before;
        eprintln!("idle cpu: {used:?} in 1s");
        assert!(
            used < Duration::from_millis(50),
            "an idle 2-P runtime used {used:?} of CPU in 1 s"
        );
        drop(rt);
        return;
    }
    let out = run_child("idle_runtime_uses_almost_no_cpu", "idle", &[]);
    assert!(out.status.success(), "{}", out.describe());
    out.stderr
        .lines()
        .filter(|l| l.starts_with("idle cpu:"))
        .for_each(|l| eprintln!("child: {l}"));
}

#[test]
fn stats_add_up_after_work() {
    let _wd = common::watchdog();
    const N: u64 = 1_000;
    let rt = Builder::new().procs(2).build().unwrap();
    let s0 = rt.stats();
    assert_eq!((s0.goroutines, s0.spawned, s0.procs), (0, 0, 2), "{s0:?}");
    rt.block_on(|| {
        let hs: Vec<_> = (0..N).map(|i| gosched::spawn(move || i)).collect();
        for h in hs {
            h.join().unwrap();
        }
        // Inside block_on, once everything is joined, only main is alive.
        assert!(
            wait_until(Duration::from_secs(5), || rt.stats().goroutines == 1),
            "goroutines stuck at {} inside block_on",
            rt.stats().goroutines
        );
    });
    // The spawned goroutines plus the main one.
    assert_eq!(rt.stats().spawned, N + 1, "{:?}", rt.stats());
    assert!(
        wait_until(Duration::from_secs(5), || rt.stats().goroutines == 0),
        "goroutines stuck at {} after block_on",
        rt.stats().goroutines
    );
    let s = rt.stats();
    assert!(
        s.threads >= 1 && s.threads <= s.procs + 3,
        "{} threads for {} procs: {s:?}",
        s.threads,
        s.procs
    );
    assert!(s.switches > N, "{s:?}");
    // A second block_on adds to the counts.
    rt.block_on(|| gosched::spawn(|| ()).join().unwrap());
    assert_eq!(rt.stats().spawned, N + 3);
}
