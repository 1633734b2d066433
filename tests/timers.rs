//! `Timer` and `Ticker` (Go's time.Timer and time.Ticker, Go 1.23
//! semantics: no stale value after stop or reset), from goroutines and
//! plain threads.

mod common;

use std::time::{Duration, Instant};

use gosched::chan::{RecvTimeoutError, Ticker, Timer};
use gosched::Builder;

fn rt(procs: usize) -> gosched::Runtime {
    Builder::new().procs(procs).build().unwrap()
}

const QUIET: Duration = Duration::from_millis(100);

/// What `f` returns on the main goroutine of a runtime that is then
/// dropped. Waits first until that goroutine has exited: a runtime dropped
/// while its goroutine is still on its way out abandons it, and the
/// abandoned goroutine keeps the runtime's state, timer heap included,
/// alive (see `runtime_dropped_with_an_abandoned_goroutine_...` below).
fn in_dropped_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let rt = rt(1);
    let v = rt.block_on(f);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.stats().goroutines != 0 {
        assert!(Instant::now() < deadline, "the main goroutine never exited");
        std::thread::sleep(Duration::from_millis(1));
    }
    v
}

#[test]
fn timer_fires_once_no_earlier_than_its_duration() {
    let rt = rt(2);
    rt.block_on(|| {
        let start = Instant::now();
        let t = Timer::new(Duration::from_millis(20));
        let fired = t.c().recv().unwrap();
        assert!(
            fired - start >= Duration::from_millis(20),
            "{:?}",
            fired - start
        );
        assert_eq!(t.c().recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
    });
}

#[test]
fn timer_stopped_before_it_fires_delivers_nothing() {
    let rt = rt(2);
    rt.block_on(|| {
        let t = Timer::new(Duration::from_millis(20));
        assert!(t.stop(), "a pending timer was not reported stopped");
        assert_eq!(t.c().recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
        assert!(!t.stop(), "stopping twice reported a pending timer");
    });
    assert_eq!(rt.stats().timers, 0);
}

#[test]
fn timer_stopped_after_firing_discards_the_unreceived_value() {
    let rt = rt(2);
    rt.block_on(|| {
        let t = Timer::new(Duration::from_millis(1));
        gosched::sleep(Duration::from_millis(30)); // fired; nobody received
        assert!(t.stop(), "the unreceived value was not reported");
        assert_eq!(t.c().try_recv().ok(), None, "a stale value survived stop");
        // Received before the stop: nothing to prevent.
        let t = Timer::new(Duration::from_millis(1));
        t.c().recv().unwrap();
        assert!(!t.stop());
    });
}

#[test]
fn timer_reset_extends_the_deadline_and_drops_the_old_value() {
    let rt = rt(2);
    rt.block_on(|| {
        let t = Timer::new(Duration::from_millis(30));
        let reset_at = Instant::now();
        assert!(t.reset(Duration::from_millis(250)));
        // The original 30 ms deadline passes without a value.
        assert_eq!(
            t.c().recv_timeout(Duration::from_millis(120)),
            Err(RecvTimeoutError::Timeout)
        );
        let fired = t.c().recv().unwrap();
        assert!(
            fired - reset_at >= Duration::from_millis(250),
            "{:?}",
            fired - reset_at
        );

        // Reset after firing, value unreceived: the new value is the only one.
        let t = Timer::new(Duration::from_millis(1));
        gosched::sleep(Duration::from_millis(30));
        let reset_at = Instant::now();
        assert!(t.reset(Duration::from_millis(20)));
        let fired = t.c().recv().unwrap();
        assert!(
            fired >= reset_at + Duration::from_millis(20),
            "a stale value was received"
        );
    });
}

#[test]
fn timer_works_from_a_plain_thread_and_across_threads() {
    let t = Timer::new(Duration::from_millis(300));
    assert!(t.reset(Duration::from_millis(10)));
    let start = Instant::now();
    assert!(t.c().recv().is_some());
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "reset did not shorten it"
    );
    // Created in a goroutine, stopped from a plain thread after the
    // runtime is gone: the handle stays usable (it falls back to the
    // helper thread).
    let t = in_dropped_runtime(|| Timer::new(Duration::from_secs(60)));
    assert!(t.stop()); // still pending: the helper thread took it over
    t.reset(Duration::from_millis(5));
    assert!(t.c().recv_timeout(Duration::from_secs(10)).is_ok());
}

#[test]
fn dropping_a_timer_or_ticker_cancels_its_timer() {
    let rt = rt(2);
    rt.block_on(|| {
        let t = Timer::new(Duration::from_secs(60));
        let k = Ticker::new(Duration::from_secs(60));
        let rx = t.c().clone();
        drop((t, k));
        // The handle's sender went with it: a cloned receiver sees close.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(RecvTimeoutError::Disconnected)
        );
    });
    assert_eq!(rt.stats().timers, 0);
}

#[test]
fn ticker_ticks_until_stopped_then_never_again() {
    let rt = rt(2);
    rt.block_on(|| {
        let start = Instant::now();
        let t = Ticker::new(Duration::from_millis(5));
        let mut last = start;
        for _ in 0..4 {
            let tick = t.c().recv().unwrap();
            assert!(tick > last);
            last = tick;
        }
        assert!(start.elapsed() >= Duration::from_millis(20));
        gosched::sleep(Duration::from_millis(20)); // a tick is buffered now
        t.stop();
        assert_eq!(t.c().recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
    });
    assert_eq!(rt.stats().timers, 0);
}

#[test]
fn ticker_reset_changes_the_period_and_restarts_a_stopped_ticker() {
    let rt = rt(2);
    rt.block_on(|| {
        let t = Ticker::new(Duration::from_secs(3600));
        let reset_at = Instant::now();
        t.reset(Duration::from_millis(5));
        for _ in 0..3 {
            t.c().recv().unwrap();
        }
        assert!(reset_at.elapsed() >= Duration::from_millis(15));
        t.stop();
        assert_eq!(t.c().recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
        let reset_at = Instant::now();
        t.reset(Duration::from_millis(10));
        let tick = t.c().recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(tick - reset_at >= Duration::from_millis(10));
    });
}

#[test]
fn stop_racing_the_firing_never_leaves_a_stale_value() {
    // Timers due right now, stopped while the runtime may be firing them:
    // whatever stop returns, nothing is received afterwards.
    let rt = rt(2);
    rt.block_on(|| {
        for i in 0..300u64 {
            let t = Timer::new(Duration::from_micros(i % 50));
            if i % 3 == 0 {
                gosched::yield_now();
            }
            t.stop();
            assert_eq!(t.c().try_recv().ok(), None, "round {i}");
            gosched::sleep(Duration::from_micros(60));
            assert_eq!(t.c().try_recv().ok(), None, "late delivery in round {i}");
        }
    });
}

/// A timer created in a goroutine whose runtime is dropped before the
/// deadline: the helper thread fires it (it used to be dropped with the
/// runtime's heap, and `recv` hung for ever).
#[test]
fn timer_outliving_its_runtime_still_fires() {
    let (start, t) = in_dropped_runtime(|| (Instant::now(), Timer::new(Duration::from_millis(50))));
    let fired = t
        .c()
        .recv_timeout(Duration::from_secs(10))
        .expect("the timer never fired after its runtime was dropped");
    assert!(
        fired - start >= Duration::from_millis(50),
        "{:?}",
        fired - start
    );
    assert_eq!(t.c().recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
    assert!(!t.stop());

    // Still pending after the drop: stop prevents the delivery.
    let t = in_dropped_runtime(|| Timer::new(Duration::from_secs(1)));
    assert!(t.stop(), "a pending timer was not reported stopped");
    assert_eq!(
        t.c().recv_timeout(Duration::from_millis(1500)),
        Err(RecvTimeoutError::Timeout)
    );
}

/// The same for a ticker: it keeps ticking on the helper thread.
#[test]
fn ticker_outliving_its_runtime_keeps_ticking() {
    let k = in_dropped_runtime(|| Ticker::new(Duration::from_millis(20)));
    let mut last = Instant::now();
    for i in 0..3 {
        let tick = k
            .c()
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("tick {i} after the runtime was dropped: {e:?}"));
        assert!(tick >= last || i == 0);
        last = tick;
    }
    k.stop();
    assert_eq!(k.c().recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
}

/// A runtime dropped while a goroutine is still parked abandons it, and
/// the abandoned goroutine keeps the runtime's state alive, pending timer
/// tasks included: `Runtime::drop` drops them itself, so the drop guard
/// moves a Timer to the helper thread (before, they were never dropped).
#[test]
fn runtime_dropped_with_an_abandoned_goroutine_still_fires_its_timers() {
    let (tx, rx) = gosched::chan::channel::<()>(0);
    let t = {
        let rt = rt(1);
        rt.block_on(move || {
            gosched::spawn(move || {
                let _keep = tx;
                rx.recv() // parked for good: abandoned by the drop
            });
            Timer::new(Duration::from_millis(50))
        })
    };
    assert!(
        t.c().recv_timeout(Duration::from_secs(10)).is_ok(),
        "the timer never fired after its runtime was dropped"
    );
}

/// Plain threads reset timers of a runtime while it is dropped: each
/// timer's last reset must fire, on the helper thread once the runtime is
/// gone. A reset could find the runtime not yet shut down, then insert
/// its task after the drop had emptied the heap: the task sat in a heap
/// nobody fires (kept alive by an abandoned goroutine: 5 of 16 timers lost
/// in a round), or, when the reset held the last reference to the
/// runtime, dropping it dropped the heap, whose task re-armed by taking
/// the lock the reset held: the thread hung (3 runs of 3 in release, 2
/// of 3 in debug, with 4 threads and 30 rounds). Run in a child: the hang
/// leaves a thread stuck for good.
#[test]
fn timers_reset_while_their_runtime_drops_all_fire() {
    const TEST: &str = "timers_reset_while_their_runtime_drops_all_fire";
    if common::child_role().as_deref() == Some(TEST) {
        let _w = common::watchdog();
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        for round in 0..40 {
            // Odd rounds keep the runtime's state alive after its drop (an
            // abandoned goroutine), even ones let the resets drop it.
            let threads = if round % 2 == 1 { 8 } else { 4 };
            let b = rt(1);
            if round % 2 == 1 {
                let (keep, parked) = gosched::chan::channel::<()>(0);
                b.spawn(move || parked.recv());
                std::mem::forget(keep);
            }
            let timers: Vec<Arc<Timer>> = b.block_on(|| {
                (0..threads)
                    .map(|_| Arc::new(Timer::new(Duration::from_secs(3600))))
                    .collect()
            });
            let stop = Arc::new(AtomicBool::new(false));
            let resetters: Vec<_> = timers
                .iter()
                .map(|t| {
                    let (t, stop) = (t.clone(), stop.clone());
                    std::thread::spawn(move || {
                        t.reset(Duration::from_millis(30));
                        while !stop.load(Ordering::Relaxed) {
                            t.reset(Duration::from_millis(30));
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
            drop(b);
            std::thread::sleep(Duration::from_millis(10));
            stop.store(true, Ordering::Relaxed);
            for r in resetters {
                r.join().unwrap();
            }
            let lost = timers
                .iter()
                .filter(|t| t.c().recv_timeout(Duration::from_secs(5)).is_err())
                .count();
            assert_eq!(
                lost, 0,
                "round {round}: {lost} of {threads} timers never fired"
            );
        }
        return;
    }
    if common::child_role().is_some() {
        return;
    }
    let out = common::run_child(TEST, TEST, &[]);
    assert!(out.status.success(), "{}", out.describe());
}
