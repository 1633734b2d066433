//! `sleep`: never wakes early, every sleeper wakes, and it parks the
//! goroutine rather than its thread.

mod common;

use std::time::{Duration, Instant};

use common::XorShift;
use gosched::Builder;

#[test]
fn five_thousand_random_sleepers_all_wake_and_none_early() {
    let _wd = common::watchdog();
    const N: usize = 5_000;
    let rt = Builder::new().procs(2).build().unwrap();
    let mut rng = XorShift::new(0x5eed_1e55);
    let durations: Vec<Duration> = (0..N)
        .map(|_| Duration::from_micros(rng.below(50_000)))
        .collect();
    let started = Instant::now();
    let results = rt.block_on(|| {
        let hs: Vec<_> = durations
            .iter()
            .map(|&d| {
                gosched::spawn(move || {
                    let t = Instant::now();
                    gosched::sleep(d);
                    (d, t.elapsed())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let wall = started.elapsed();
    assert_eq!(results.len(), N);
    let early: Vec<_> = results.iter().filter(|(want, got)| got < want).collect();
    assert!(
        early.is_empty(),
        "{} sleepers woke early, e.g. {:?}",
        early.len(),
        &early[..early.len().min(5)]
    );
    // 5,000 sleeps of up to 50 ms on 2 Ps: sleeping Gs hold no thread, so
    // this takes about 50 ms, not minutes.
    assert!(wall < Duration::from_secs(20), "{N} sleepers took {wall:?}");
}

#[test]
fn sleep_parks_the_goroutine_not_the_thread() {
    let _wd = common::watchdog();
    const N: u32 = 100;
    const NAP: Duration = Duration::from_millis(100);
    let rt = Builder::new().procs(1).build().unwrap();
    let wall = rt.block_on(|| {
        let t = Instant::now();
        let hs: Vec<_> = (0..N)
            .map(|_| gosched::spawn(|| gosched::sleep(NAP)))
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        t.elapsed()
    });
    // Blocking the only P's thread would take N * NAP = 10 s.
    assert!(wall >= NAP);
    assert!(
        wall < NAP * N / 4,
        "{N} concurrent sleeps of {NAP:?} on one P took {wall:?}"
    );
}

#[test]
fn sleep_zero_returns() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(1).build().unwrap();
    let n = rt.block_on(|| {
        for _ in 0..1000 {
            gosched::sleep(Duration::ZERO);
        }
        let h = gosched::spawn(|| {
            gosched::sleep(Duration::ZERO);
            7
        });
        h.join().unwrap()
    });
    assert_eq!(n, 7);
}

#[test]
fn sleep_on_a_plain_thread_sleeps_the_thread() {
    assert_eq!(gosched::current_id(), None);
    let t = Instant::now();
    gosched::sleep(Duration::from_millis(20));
    assert!(t.elapsed() >= Duration::from_millis(20));
    gosched::sleep(Duration::ZERO);
}

#[test]
fn sleeper_wakes_while_every_p_is_idle() {
    let _wd = common::watchdog();
    // Nothing else runs: the wake-up must come from the timer alone, with
    // every P idle and every M parked.
    let rt = Builder::new().procs(2).build().unwrap();
    for ms in [1u64, 5, 30] {
        let d = Duration::from_millis(ms);
        let got = rt.block_on(|| {
            let t = Instant::now();
            gosched::sleep(d);
            t.elapsed()
        });
        assert!(got >= d, "slept {got:?} < {d:?}");
        assert!(got < d + Duration::from_secs(2), "slept {got:?} for {d:?}");
    }
}

#[test]
fn sleepers_preempted_at_a_tiny_quantum_keep_running() {
    let _wd = common::watchdog();
    // Sleeping in a loop with a 50 µs quantum: sysmon preempts the
    // sleepers (their slices run on through runnext) at arbitrary points,
    // including inside the runtime's own timer code, which must refuse.
    for round in 0..30 {
        let rt = Builder::new()
            .procs(2)
            .preempt_quantum(Duration::from_micros(50))
            .build()
            .unwrap();
        let naps = rt.block_on(|| {
            let hs: Vec<_> = (0..16)
                .map(|_| {
                    gosched::spawn(|| {
                        let t = Instant::now();
                        let mut naps = 0u64;
                        while t.elapsed() < Duration::from_millis(100) {
                            gosched::sleep(Duration::from_micros(1));
                            naps += 1;
                        }
                        naps
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).min().unwrap()
        });
        assert!(naps > 0, "round {round}");
    }
}

/// `sleep(Duration::MAX)` (and any duration whose deadline overflows
/// `Instant` or u64 nanoseconds) is accepted, as `std::thread::sleep`
/// accepts it: in a goroutine that `block_on` then abandons, and on a plain
/// thread. It used to panic with "overflow when adding duration to
/// instant". In a child process: the sleepers never end.
#[test]
fn sleep_duration_max_sleeps_forever_without_panicking() {
    if common::child_role().is_some() {
        // 2^64 ns: truncated to u64 nanoseconds it is 0.
        let huge = [Duration::MAX, Duration::new(18_446_744_073, 709_551_616)];
        let rt = Builder::new().procs(2).build().unwrap();
        let (finished, timers) = rt.block_on(|| {
            let hs: Vec<_> = huge
                .iter()
                .map(|&d| gosched::spawn(move || gosched::sleep(d)))
                .collect();
            gosched::sleep(Duration::from_millis(50));
            let finished = hs.iter().filter(|h| h.is_finished()).count();
            (finished, gosched::num_goroutines())
        });
        let pending = rt.stats().timers;
        let threads: Vec<_> = huge
            .iter()
            .map(|&d| std::thread::spawn(move || gosched::sleep(d)))
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let threads_finished = threads.iter().filter(|h| h.is_finished()).count();
        eprintln!(
            "SLEEP-MAX goroutines_finished={finished} goroutines={timers} timers={pending} threads_finished={threads_finished}"
        );
        // Exit with the sleepers still asleep (the runtime abandons its
        // goroutines; the plain threads die with the process).
        drop(rt);
        std::process::exit(0);
    }
    let out = common::run_child(
        "sleep_duration_max_sleeps_forever_without_panicking",
        "sleep-max",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("SLEEP-MAX "))
        .unwrap_or_else(|| panic!("no report\n{}", out.describe()));
    // Both sleeping goroutines (and main) live, each sleeper with a timer;
    // both plain threads still asleep.
    assert_eq!(
        line,
        "SLEEP-MAX goroutines_finished=0 goroutines=3 timers=2 threads_finished=0",
        "{}",
        out.describe()
    );
}
