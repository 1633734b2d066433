//! Async interop: `block_on_future` parks a goroutine until its waker
//! fires (woken from plain threads, other goroutines, spuriously, before
//! the park), and `JoinHandle` as a `Future`.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gosched::Builder;

/// A one-shot value set from outside, like a oneshot channel: `poll`
/// stores the waker, `complete` sets the value and wakes it.
#[derive(Clone, Default)]
struct OneShot(Arc<Mutex<(Option<u64>, Option<Waker>)>>);

impl OneShot {
    fn complete(&self, v: u64) {
        let w = {
            let mut s = self.0.lock().unwrap();
            s.0 = Some(v);
            s.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl Future for OneShot {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let mut s = self.0.lock().unwrap();
        match s.0 {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Pending `n` times, waking itself in `poll` each time (the wake-up
/// arrives before the caller parks), then ready.
struct SelfWaking(u32);

impl Future for SelfWaking {
    type Output = u32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        if self.0 == 0 {
            return Poll::Ready(7);
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn a_future_woken_from_a_plain_thread_parks_only_the_goroutine() {
    // One P: if block_on_future blocked the thread, `other` could not run.
    let rt = Builder::new().procs(1).build().unwrap();
    let fut = OneShot::default();
    let f2 = fut.clone();
    let ticks = Arc::new(AtomicUsize::new(0));
    let t2 = ticks.clone();
    let v = rt.block_on(move || {
        let other = gosched::spawn(move || {
            for _ in 0..20 {
                t2.fetch_add(1, Ordering::Relaxed);
                gosched::sleep(Duration::from_millis(1));
            }
        });
        let waker_thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            f2.complete(42);
        });
        let v = gosched::block_on_future(fut);
        waker_thread.join().unwrap();
        other.join().unwrap();
        v
    });
    assert_eq!(v, 42);
    assert_eq!(ticks.load(Ordering::Relaxed), 20);
}

#[test]
fn a_future_woken_from_another_goroutine() {
    let rt = Builder::new().procs(2).build().unwrap();
    let v = rt.block_on(|| {
        let fut = OneShot::default();
        let f2 = fut.clone();
        let h = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(5));
            f2.complete(9);
        });
        let v = gosched::block_on_future(fut);
        h.join().unwrap();
        v
    });
    assert_eq!(v, 9);
}

#[test]
fn wake_ups_before_the_park_and_spurious_ones_are_not_lost() {
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        assert_eq!(gosched::block_on_future(SelfWaking(1000)), 7);
    });
    // On a plain thread too.
    assert_eq!(gosched::block_on_future(SelfWaking(1000)), 7);
}

#[test]
fn many_wakers_from_many_threads_and_goroutines() {
    // 64 goroutines each wait on a future that 3 parties (a plain thread,
    // a goroutine, and a spurious waker) race to wake.
    let rt = Builder::new().procs(2).build().unwrap();
    let total = rt.block_on(|| {
        let hs: Vec<_> = (0..64u64)
            .map(|i| {
                gosched::spawn(move || {
                    let fut = OneShot::default();
                    let (a, b) = (fut.clone(), fut.clone());
                    let t = std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_micros(100 * (i % 7)));
                        a.complete(i);
                    });
                    let g = gosched::spawn(move || {
                        // Spurious wake-ups: wake whatever waker is stored,
                        // without completing.
                        for _ in 0..10 {
                            let w = b.0.lock().unwrap().1.clone();
                            if let Some(w) = w {
                                w.wake();
                            }
                            gosched::yield_now();
                        }
                        b.complete(i);
                    });
                    let v = gosched::block_on_future(fut);
                    t.join().unwrap();
                    g.join().unwrap();
                    v
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    assert_eq!(total, (0..64).sum::<u64>());
}

#[test]
fn a_join_handle_is_a_future() {
    let rt = Builder::new().procs(2).build().unwrap();
    // Awaited on a goroutine.
    let v = rt.block_on(|| {
        let h = gosched::spawn(|| {
            gosched::sleep(Duration::from_millis(5));
            5u32
        });
        gosched::block_on_future(async move { h.await.unwrap() * 2 })
    });
    assert_eq!(v, 10);
    // Awaited on a plain thread; a panic is the Err.
    let h = rt.spawn(|| -> u32 { panic!("boom") });
    let err = gosched::block_on_future(h).unwrap_err();
    assert_eq!(common::payload_str(&*err), Some("boom"));
    // Polled by hand: Pending, then the goroutine's exit wakes our waker.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut h = rt.spawn(move || {
        rx.recv().unwrap();
        3
    });
    let woken = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let waker = Waker::from(Arc::new(Flag(woken.clone())));
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
    tx.send(()).unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || woken.load(Ordering::SeqCst)));
    match Pin::new(&mut h).poll(&mut cx) {
        Poll::Ready(r) => assert_eq!(r.unwrap(), 3),
        Poll::Pending => panic!("woken but still pending"),
    }
}

/// A `JoinHandle` polled once as a future (it keeps the task's waker),
/// then joined: `join` put the goroutine in the waker's place and dropped
/// the waker holding the handle's lock, in a no-preempt region. A waker
/// whose drop parks (here for 5 s) left the lock held by a parked
/// goroutine: the joined goroutine, finishing, blocked its thread on the
/// lock, and dropping the runtime then waited for that thread for ever
/// (5 runs of 5 hung). The old waker is now dropped after the lock, as
/// `poll` already did.
#[test]
fn join_drops_a_waker_left_by_a_poll_outside_the_lock() {
    common::in_child("join_drops_a_waker_left_by_a_poll_outside_the_lock", || {
        let _w = common::watchdog();
        struct ParksOnDrop;
        impl std::task::Wake for ParksOnDrop {
            fn wake(self: Arc<Self>) {}
        }
        impl Drop for ParksOnDrop {
            fn drop(&mut self) {
                gosched::sleep(Duration::from_secs(5));
            }
        }
        let rt = Builder::new().procs(2).build().unwrap();
        let _joiner = rt.spawn(|| {
            let mut h = gosched::spawn(|| gosched::sleep(Duration::from_millis(20)));
            let waker = Waker::from(Arc::new(ParksOnDrop));
            assert!(Pin::new(&mut h)
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            drop(waker); // the handle holds the last reference
            h.join().unwrap();
        });
        // The joined goroutine has finished; the joiner sleeps in the
        // waker's drop.
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        drop(rt);
        // Not after the waker's 5 s: the joiner is abandoned.
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    });
}

#[test]
fn the_waker_is_send_and_sync() {
    fn is<T: Send + Sync>(_: &T) {}
    struct Grab;
    impl Future for Grab {
        type Output = Waker;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Waker> {
            Poll::Ready(cx.waker().clone())
        }
    }
    let rt = Builder::new().procs(1).build().unwrap();
    let w = rt.block_on(|| gosched::block_on_future(Grab));
    is(&w);
    // Waking it after block_on_future returned is harmless.
    let t = Instant::now();
    std::thread::spawn(move || w.wake()).join().unwrap();
    rt.block_on(|| gosched::sleep(Duration::from_millis(1)));
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// A timer future of a real async crate (`futures-timer`, whose own thread
/// fires the wakers): goroutines parked on it in `block_on_future` wake
/// after the delay, and while they wait the only P runs another goroutine
/// to its end; a plain thread blocks on it the same way.
#[test]
fn a_futures_timer_delay_parks_goroutines_until_it_fires() {
    let _w = common::watchdog();
    // Long enough that ten yields end first even on a loaded machine.
    let delay = Duration::from_millis(300);
    let rt = Builder::new().procs(1).build().unwrap();
    let (woke, ticker_done, t0) = rt.block_on(move || {
        let t0 = Instant::now();
        let sleepers: Vec<_> = (0..8)
            .map(|_| {
                gosched::spawn(move || {
                    gosched::block_on_future(futures_timer::Delay::new(delay));
                    Instant::now()
                })
            })
            .collect();
        // Spawned last, so it runs after every sleeper started waiting:
        // with one P it ends before they wake only if they parked.
        let ticker = gosched::spawn(|| {
            for _ in 0..10 {
                gosched::yield_now();
            }
            Instant::now()
        });
        let woke: Vec<Instant> = sleepers.into_iter().map(|h| h.join().unwrap()).collect();
        (woke, ticker.join().unwrap(), t0)
    });
    for w in woke {
        assert!(w >= t0 + delay, "woke after {:?}, before the delay", w - t0);
        assert!(
            w > ticker_done,
            "the ticker ran only after a sleeper woke: block_on_future blocked the thread"
        );
    }
    let t0 = Instant::now();
    gosched::block_on_future(futures_timer::Delay::new(delay));
    assert!(t0.elapsed() >= delay);
}
