//! `sync::Mutex` and `sync::WaitGroup`: mutual exclusion under preemption,
//! starvation mode, parking instead of blocking, and WaitGroup semantics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::sync::{Mutex, WaitGroup};
use gosched::{Builder, PreemptMode};

/// 8 goroutines x 100k read-modify-write increments under the mutex, on 2
/// Ps with a 200 µs quantum, so goroutines are preempted while holding it.
fn counter_under_preemption(mode: PreemptMode) {
    let b = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(200))
        .preempt_mode(mode);
    // SAFETY: the goroutines only take gosched's Mutex (owned by the
    // goroutine, not the thread) and a WaitGroup: no thread-locals, no
    // stdout.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let total = rt.block_on(|| {
        let m = Arc::new(Mutex::new(0u64));
        let wg = WaitGroup::new();
        for _ in 0..8 {
            wg.add(1);
            let (m, wg) = (m.clone(), wg.clone());
            gosched::spawn(move || {
                for _ in 0..100_000 {
                    let mut g = m.lock();
                    // A deliberately non-atomic read-modify-write.
                    let v = std::hint::black_box(*g);
                    *g = v + 1;
                }
                wg.done();
            });
        }
        wg.wait();
        let v = *m.lock();
        v
    });
    assert_eq!(total, 800_000, "{mode:?}");
}

#[test]
fn mutex_counts_exactly_under_preemption_thread_affine() {
    counter_under_preemption(PreemptMode::ThreadAffine);
}

#[test]

fn mutex_counts_exactly_under_preemption_migrate() {
    counter_under_preemption(PreemptMode::Migrate);
}

#[test]
fn mutex_waiter_is_not_starved_by_a_goroutine_relocking_in_a_tight_loop() {
    let rt = Builder::new().procs(2).build().unwrap();
    let waits = rt.block_on(|| {
        let m = Arc::new(Mutex::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let hog = {
            let (m, stop) = (m.clone(), stop.clone());
            gosched::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut g = m.lock();
                    // Hold it ~20 µs, release, and re-lock at once.
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                    *g += 1;
                    rounds += 1;
                }
                rounds
            })
        };
        gosched::sleep(Duration::from_millis(5)); // let the hog get going
        let mut waits = Vec::new();
        for _ in 0..10 {
            gosched::sleep(Duration::from_micros(100));
            let t = Instant::now();
            let g = m.lock();
            waits.push(t.elapsed());
            drop(g);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(hog.join().unwrap() > 0, "the hog never ran");
        waits
    });
    let worst = *waits.iter().max().unwrap();
    // Starvation mode hands the lock over after ~1 ms of waiting; allow a
    // loaded CI machine plenty of slack.
    assert!(
        worst < Duration::from_millis(500),
        "a waiter waited {worst:?} for the lock: {waits:?}"
    );
}

#[test]
fn starvation_mode_hands_the_lock_to_a_waiter_that_barging_would_starve_for_ever() {
    // On one P the hog yields while holding the lock, so the waiter runs
    // only while the lock is held; and when the hog unlocks (waking the
    // waiter) it re-locks before the waiter runs. In normal mode alone the
    // waiter would lose every time, for ever. After 1 ms of waiting it
    // switches the mutex to starvation mode and the next unlock hands the
    // lock to it.
    let rt = Builder::new().procs(1).build().unwrap();
    let got = rt.block_on(|| {
        let m = Arc::new(Mutex::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let hog = {
            let (m, stop) = (m.clone(), stop.clone());
            gosched::spawn(move || {
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let g = m.lock();
                    gosched::yield_now();
                    drop(g);
                    rounds += 1;
                }
                rounds
            })
        };
        gosched::yield_now(); // the hog starts and holds the lock
        let (tx, rx) = gosched::chan::channel(1);
        let waiter = {
            let m = m.clone();
            gosched::spawn(move || {
                let t = Instant::now();
                let g = m.lock();
                let waited = t.elapsed();
                drop(g);
                tx.send(waited).unwrap();
            })
        };
        let got = rx.recv_timeout(Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        assert!(hog.join().unwrap() > 0, "the hog never ran");
        if got.is_ok() {
            waiter.join().unwrap();
        }
        got
    });
    let waited = got.expect("the waiter never got the lock: starvation mode did not engage");
    // ~1 ms here; without starvation mode it takes seconds (some other
    // accident has to let the waiter in), so this bound still tells.
    assert!(
        waited < Duration::from_millis(200),
        "the waiter waited {waited:?}: starvation mode did not hand it the lock"
    );
    assert!(
        waited >= Duration::from_micros(900),
        "won without starving first? waited {waited:?}"
    );
}

#[test]
fn contended_lock_parks_the_goroutine_not_the_thread() {
    // On one P: the holder sleeps while holding the lock. A std mutex would
    // block the only thread and the holder could never run to unlock it.
    let rt = Builder::new().procs(1).build().unwrap();
    let order = rt.block_on(|| {
        let m = Arc::new(Mutex::new(Vec::new()));
        let g = m.lock();
        let m2 = m.clone();
        let waiter = gosched::spawn(move || m2.lock().push("waiter"));
        gosched::yield_now(); // the waiter runs and parks on the lock
        let ticker = gosched::spawn(|| "ran while the waiter was parked");
        assert_eq!(ticker.join().unwrap(), "ran while the waiter was parked");
        drop(g);
        waiter.join().unwrap();
        let v = m.lock().clone();
        v
    });
    assert_eq!(order, ["waiter"]);
}

#[test]
fn mutex_is_shared_by_goroutines_and_plain_threads() {
    let rt = Builder::new().procs(2).build().unwrap();
    let m = Arc::new(Mutex::new(0u64));
    let gs: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            rt.spawn(move || {
                for _ in 0..20_000 {
                    *m.lock() += 1;
                }
            })
        })
        .collect();
    let ts: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    *m.lock() += 1;
                }
            })
        })
        .collect();
    for g in gs {
        g.join().unwrap();
    }
    for t in ts {
        t.join().unwrap();
    }
    assert_eq!(*m.lock(), 80_000);
}

#[test]
fn guard_may_be_released_by_another_goroutine() {
    let rt = Builder::new().procs(2).build().unwrap();
    static M: Mutex<i32> = Mutex::new(1); // `new` is const
    rt.block_on(|| {
        let g = M.lock();
        let h = gosched::spawn(move || {
            assert_eq!(*g, 1);
            drop(g); // Go allows unlocking from another goroutine
        });
        h.join().unwrap();
        assert!(M.try_lock().is_some());
    });
}

#[test]
fn try_lock_get_mut_and_into_inner() {
    let mut m = Mutex::new(String::from("a"));
    m.get_mut().push('b');
    {
        let g = m.try_lock().expect("unlocked");
        assert!(m.try_lock().is_none(), "try_lock on a locked mutex");
        assert_eq!(*g, "ab");
    }
    assert!(format!("{m:?}").contains("ab"));
    assert_eq!(m.into_inner(), "ab");
}

#[test]
fn a_panic_while_holding_the_guard_unlocks() {
    let rt = Builder::new().procs(1).build().unwrap();
    rt.block_on(|| {
        let m = Arc::new(Mutex::new(0));
        let m2 = m.clone();
        let h = gosched::spawn(move || {
            let _g = m2.lock();
            panic!("boom");
        });
        assert!(h.join().is_err());
        *m.lock() += 1; // would hang if the guard had not unlocked
        assert_eq!(*m.lock(), 1);
    });
}

#[test]
fn waitgroup_waits_for_1000_goroutines() {
    let rt = Builder::new().procs(2).build().unwrap();
    let n = rt.block_on(|| {
        let wg = WaitGroup::new();
        let done = Arc::new(AtomicUsize::new(0));
        wg.add(1000);
        for i in 0..1000 {
            let (wg, done) = (wg.clone(), done.clone());
            gosched::spawn(move || {
                if i % 10 == 0 {
                    gosched::sleep(Duration::from_millis(1));
                }
                done.fetch_add(1, Ordering::Relaxed);
                wg.done();
            });
        }
        wg.wait();
        // Every done() happened before wait returned.
        done.load(Ordering::Relaxed)
    });
    assert_eq!(n, 1000);
}

#[test]
fn waitgroup_wakes_every_waiter_and_can_be_reused() {
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        let wg = WaitGroup::new();
        for round in 0..3 {
            wg.add(1);
            let waiters: Vec<_> = (0..10)
                .map(|_| {
                    let wg = wg.clone();
                    gosched::spawn(move || wg.wait())
                })
                .collect();
            gosched::sleep(Duration::from_millis(2));
            assert!(
                waiters.iter().all(|w| !w.is_finished()),
                "round {round}: a waiter returned early"
            );
            wg.done();
            for w in waiters {
                w.join().unwrap();
            }
        }
    });
}

#[test]
fn waitgroup_from_plain_threads() {
    let wg = WaitGroup::new();
    wg.add(4);
    for _ in 0..4 {
        let wg = wg.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            wg.done();
        });
    }
    wg.wait();
    assert_eq!(wg.count(), 0);
}

#[test]
fn waitgroup_done_below_zero_panics_like_go() {
    let wg = WaitGroup::new();
    wg.add(1);
    wg.done();
    let err = std::panic::catch_unwind(|| wg.done()).unwrap_err();
    let msg = err.downcast_ref::<&str>().copied().unwrap_or_default();
    assert_eq!(msg, "sync: negative WaitGroup counter");
    // The counter stays usable (at zero).
    assert_eq!(wg.count(), 0);
    wg.wait();
}

#[test]
fn waitgroup_add_that_overflows_panics_and_leaves_the_counter_unchanged() {
    let wg = WaitGroup::new();
    wg.add(1);
    for n in [i64::MAX as usize, usize::MAX] {
        let err = std::panic::catch_unwind(|| wg.add(n)).unwrap_err();
        let msg = err.downcast_ref::<&str>().copied().unwrap_or_default();
        assert_eq!(msg, "sync: WaitGroup counter overflow", "add({n})");
        assert_eq!(wg.count(), 1, "add({n}) changed the counter");
    }
    // Still usable: the one done() brings it to zero.
    wg.done();
    wg.wait();
    assert_eq!(wg.count(), 0);
}
