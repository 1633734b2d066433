//! Blocked-M detection: a goroutine asleep in the kernel on a lock held by
//! a preempted goroutine must not keep the only P, or the holder can never
//! run again to release the lock (a deadlock the runtime itself causes).

mod common_preempt;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use common_preempt::{child_role, refused, run_child, spin_for};
use gosched::{Builder, PreemptMode};

/// What one attempt of the scenario observed.
#[derive(Debug)]
struct Attempt {
    /// B found the lock held (by the preempted A) and blocked in `lock()`.
    contended: bool,
    /// C's ticks while B was blocked in the kernel.
    ticks_while_b_blocked: u64,
    /// How long B waited in `lock()`.
    b_waited: Duration,
    /// Longest gap between two of C's ticks during the attempt.
    max_tick_gap: Duration,
}

/// One attempt on a fresh runtime (procs 1, quantum 1 ms, ThreadAffine):
///
/// - A locks a `std::sync::Mutex` and spins ~50 ms holding it, with no
///   calls: it is preempted asynchronously while holding the lock, and in
///   ThreadAffine mode its thread parks with it while the P moves on.
/// - B, once A holds the lock, calls `lock()`: its thread sleeps in the
///   kernel (futex) while B's goroutine still owns the only P.
/// - C ticks every 1 ms.
///
/// Unless sysmon hands the P away from B's sleeping thread, A never runs
/// again, never unlocks, and the program hangs.
fn attempt() -> (Attempt, gosched::Stats) {
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_millis(1))
        .preempt_mode(PreemptMode::ThreadAffine)
        .build()
        .unwrap();
    let lock = Arc::new(Mutex::new(0u64));
    let held = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let res = rt.block_on(move || {
        let (t, s) = (ticks.clone(), stop.clone());
        let c = gosched::spawn(move || {
            let mut last = Instant::now();
            let mut max_gap = Duration::ZERO;
            while !s.load(Ordering::Relaxed) {
                gosched::sleep(Duration::from_millis(1));
                t.fetch_add(1, Ordering::Relaxed);
                max_gap = max_gap.max(last.elapsed());
                last = Instant::now();
            }
            max_gap
        });
        let (l, h) = (lock.clone(), held.clone());
        let a = gosched::spawn(move || {
            let mut g = l.lock().unwrap();
            h.store(true, Ordering::Release);
            spin_for(Duration::from_millis(50));
            *g += 1;
            h.store(false, Ordering::Release);
            drop(g);
        });
        let (l, h, t) = (lock.clone(), held.clone(), ticks.clone());
        let b = gosched::spawn(move || {
            let t0 = Instant::now();
            while !h.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(2) {
                gosched::sleep(Duration::from_micros(200));
            }
            match l.try_lock() {
                Ok(mut g) => {
                    *g += 1;
                    (false, 0, Duration::ZERO)
                }
                Err(TryLockError::WouldBlock) => {
                    let k0 = t.load(Ordering::Relaxed);
                    let w = Instant::now();
                    let mut g = l.lock().unwrap();
                    let waited = w.elapsed();
                    *g += 1;
                    (true, t.load(Ordering::Relaxed) - k0, waited)
                }
                Err(TryLockError::Poisoned(e)) => panic!("poisoned: {e}"),
            }
        });
        a.join().unwrap();
        let (contended, ticks_while_b_blocked, b_waited) = b.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let max_tick_gap = c.join().unwrap();
        assert_eq!(*lock.lock().unwrap(), 2, "A and B each got the lock once");
        Attempt {
            contended,
            ticks_while_b_blocked,
            b_waited,
            max_tick_gap,
        }
    });
    (res, rt.stats())
}

/// Child: runs the scenario 5 times on fresh runtimes (B blocks behind a
/// preempted A in most of them), then reports a summary.
fn blocked_child() {
    let (mut contended, mut min_handoffs, mut ticks, mut max_gap) =
        (0u64, u64::MAX, 0u64, Duration::ZERO);
    let mut max_wait = Duration::ZERO;
    for i in 0..5 {
        let (a, st) = attempt();
        eprintln!(
            "attempt {i}: {a:?}; blocked_handoffs={} preempt_async={} refused foreign_code={}",
            st.blocked_handoffs,
            st.preempt_async,
            refused(&st, "foreign_code")
        );
        max_gap = max_gap.max(a.max_tick_gap);
        if a.contended {
            contended += 1;
            min_handoffs = min_handoffs.min(st.blocked_handoffs);
            ticks += a.ticks_while_b_blocked;
            max_wait = max_wait.max(a.b_waited);
        }
    }
    eprintln!(
        "CONTENDED={contended} MIN_BLOCKED_HANDOFFS={min_handoffs} TICKS_WHILE_BLOCKED={ticks} MAX_GAP_US={} MAX_B_WAIT_US={}",
        max_gap.as_micros(),
        max_wait.as_micros()
    );
}

/// A goroutine blocked in the kernel on a `std::sync::Mutex` whose holder
/// was preempted does not keep the only P: sysmon hands it away, the
/// holder finishes and unlocks, the waiter gets the lock, and a ticker
/// keeps running throughout. Runs in a child so a deadlock fails the test
/// after 20 s instead of hanging the suite.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn goroutine_blocked_in_kernel_on_lock_of_preempted_holder_does_not_deadlock() {
    if child_role().as_deref() == Some("blocked") {
        return blocked_child();
    }
    let out = run_child(
        "goroutine_blocked_in_kernel_on_lock_of_preempted_holder_does_not_deadlock",
        "blocked",
        Duration::from_secs(20),
    );
    out.assert_success("blocked-M child");
    eprintln!("child ({:?}):\n{}", out.elapsed, out.stderr.trim());
    let contended = out.report("CONTENDED").unwrap();
    assert!(
        contended > 0,
        "A was never preempted while holding the lock in 5 attempts"
    );
    let handoffs = out.report("MIN_BLOCKED_HANDOFFS").unwrap();
    let ticks = out.report("TICKS_WHILE_BLOCKED").unwrap();
    let gap = Duration::from_micros(out.report("MAX_GAP_US").unwrap());
    assert!(
        handoffs > 0,
        "in some attempt B's sleeping thread kept the P, yet the program went on"
    );
    assert!(
        ticks > 0,
        "the ticker never ran while B was blocked in the kernel"
    );
    assert!(
        gap < Duration::from_secs(5),
        "the ticker stalled for {gap:?}"
    );
}

/// sysmon takes Ps from threads it finds asleep in the kernel, over and
/// over, while the goroutines of those threads wake up and spawn and yield
/// (touching the P's local queue under a claim that a takeover waits out;
/// the fence pair itself is tested in `src/membarrier.rs`). Every spawned
/// goroutine must run exactly once, and the program must finish.
#[test]
fn takeovers_racing_with_spawns_and_yields_lose_no_goroutine() {
    const SLEEPERS: usize = 4;
    const ROUNDS: u64 = 60;
    const BURST: u64 = 20;
    let rt = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(500))
        .async_preempt(false)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicU64::new(0));
    let r2 = ran.clone();
    rt.block_on(move || {
        let stop = Arc::new(AtomicBool::new(false));
        // Keeps a goroutine waiting for a P, so overrunning slices are
        // preempted (and, asleep in the kernel, taken over).
        let s = stop.clone();
        let ticker = gosched::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                gosched::sleep(Duration::from_micros(300));
            }
        });
        let sleepers: Vec<_> = (0..SLEEPERS as u64)
            .map(|k| {
                let ran = r2.clone();
                gosched::spawn(move || {
                    let mut hs = Vec::new();
                    for i in 0..ROUNDS {
                        // A foreign blocking call: the thread sleeps in the
                        // kernel while its goroutine still owns the P.
                        std::thread::sleep(Duration::from_micros(1_000 + 700 * ((i + k) % 4)));
                        // Then claims: spawns (queued on the P) and yields.
                        for _ in 0..BURST {
                            let ran = ran.clone();
                            hs.push(gosched::spawn(move || {
                                ran.fetch_add(1, Ordering::Relaxed);
                            }));
                            gosched::yield_now();
                        }
                    }
                    for h in hs {
                        h.join().unwrap();
                    }
                })
            })
            .collect();
        for h in sleepers {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        ticker.join().unwrap();
    });
    let st = rt.stats();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        SLEEPERS as u64 * ROUNDS * BURST,
        "goroutines lost or run twice: {st:?}"
    );
    assert!(
        st.blocked_handoffs > 0,
        "no takeover happened, so nothing raced: {st:?}"
    );
}

/// Child of the test below: A blocks its thread in the kernel (a plain
/// `std::thread::sleep`) while B waits for the only P, so sysmon hands the
/// P away from A's thread; B finishes and the P goes idle. Then A's thread
/// wakes, and A yields (round 0) or is preempted in a loop without calls
/// (round 1) with no P: it must be queued where an M will find it.
fn lost_p_child() {
    let mut min_handoffs = u64::MAX;
    for round in 0..2 {
        // On a loaded machine sysmon may not get to hand the P away within
        // A's block; try again a few times (each attempt must finish either
        // way: that is the point).
        let mut handoffs = 0;
        for _attempt in 0..5 {
            let rt = Builder::new()
                .procs(1)
                .preempt_quantum(Duration::from_millis(1))
                .build()
                .unwrap();
            rt.block_on(move || {
                let a = gosched::spawn(move || {
                    std::thread::sleep(Duration::from_millis(60));
                    if round == 0 {
                        gosched::yield_now();
                    } else {
                        spin_for(Duration::from_millis(20));
                    }
                });
                let b = gosched::spawn(|| spin_for(Duration::from_millis(5)));
                b.join().unwrap();
                a.join().unwrap();
            });
            handoffs = rt.stats().blocked_handoffs;
            if handoffs > 0 {
                break;
            }
        }
        eprintln!("round {round}: {handoffs} blocked hand-offs");
        min_handoffs = min_handoffs.min(handoffs);
    }
    eprintln!("DONE=1 MIN_HANDOFFS={min_handoffs}");
}

/// A goroutine whose P sysmon took while its thread was blocked in the
/// kernel, and which then yields or is preempted while every other P is
/// idle, still runs again (it used to sit in the global queue with every
/// thread asleep: a hang first seen under load in tests/sleep.rs). In a
/// child, so a hang fails after 20 s.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn goroutine_that_lost_its_p_and_yields_is_not_lost() {
    if child_role().as_deref() == Some("lost_p") {
        return lost_p_child();
    }
    let out = run_child(
        "goroutine_that_lost_its_p_and_yields_is_not_lost",
        "lost_p",
        Duration::from_secs(20),
    );
    out.assert_success("lost-P child");
    assert_eq!(out.report("DONE"), Some(1), "{}", out.stderr);
    // Otherwise A kept its P and the scenario tested nothing.
    assert!(
        out.report("MIN_HANDOFFS").unwrap() >= 1,
        "sysmon did not take the P from A's blocked thread:\n{}",
        out.stderr
    );
}

/// A goroutine whose P sysmon took while its thread was blocked in the
/// kernel, and which then calls `blocking()` before it reaches the
/// scheduler, makes that call as a blocking call all the same: counted in
/// `Stats::in_syscall` and kept from preemption signals (sysmon signals a
/// goroutine running without a P), and after it, it waits for a P. It used
/// to run the call as plain code, uncounted and unprotected, and go on
/// without a P.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn a_blocking_call_made_without_a_p_is_still_a_blocking_call() {
    for attempt in 0.. {
        let rt = Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_millis(1))
            .build()
            .unwrap();
        let in_call = Arc::new(AtomicBool::new(false));
        let a = {
            let in_call = in_call.clone();
            rt.spawn(move || {
                // sysmon hands the P to B while this thread sleeps.
                std::thread::sleep(Duration::from_millis(60));
                gosched::blocking(|| {
                    in_call.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(150));
                    in_call.store(false, Ordering::SeqCst);
                });
            })
        };
        let b = rt.spawn(|| spin_for(Duration::from_millis(5)));
        let mut counted = 0;
        while !a.is_finished() {
            if in_call.load(Ordering::SeqCst) {
                counted = counted.max(rt.stats().in_syscall);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        a.join().unwrap();
        b.join().unwrap();
        if rt.stats().blocked_handoffs == 0 {
            // On a loaded machine sysmon may not have handed the P away
            // within A's sleep: the scenario did not happen; again.
            assert!(attempt < 20, "sysmon never took the P from A's thread");
            continue;
        }
        assert_eq!(
            counted, 1,
            "attempt {attempt}: the call without a P was not counted"
        );
        break;
    }
}
