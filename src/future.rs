//! Async interop: [`block_on_future`] runs a `Future` on a goroutine (or a
//! plain thread), and [`JoinHandle`] is a `Future`.
//!
//! # Waking
//!
//! `block_on_future` polls the future with a `Waker` backed by a `Signal`:
//! a `notified` flag plus the `Waiter` (goroutine or thread) that polls.
//!
//! 1. Poll. If `Ready`, return.
//! 2. Consume `notified` (swap false). If it was set, a wake-up came during
//!    or after the poll: poll again.
//! 3. Otherwise park, and go back to 2 on every return from `park`
//!    (spurious or not).
//!
//! A wake sets `notified` (swap true) and, if it was clear, unparks the
//! waiter. Park has token semantics, so a wake between 2 and 3 leaves a
//! token and the park returns at once: no lost wake-up. A late wake, after
//! `block_on_future` returned, only leaves a token that the next park of
//! that goroutine (or thread) treats as spurious; every park in the runtime
//! re-checks its condition. Wakers may be cloned, sent anywhere and woken
//! from plain threads, other goroutines or other runtimes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::join::JoinInner;
use crate::sched::g::Waiter;
use crate::sched::RuntimeLock;
use crate::JoinHandle;

/// Runs a future to completion on the calling goroutine and returns its
/// output. While the future is pending the goroutine parks (its thread runs
/// other goroutines) until the future's `Waker` is woken; on a plain thread
/// (or inside [`blocking`](crate::blocking)) the thread blocks.
///
/// The waker is `Send + Sync` and may be woken from anywhere (plain
/// threads, other goroutines), any number of times, also before the
/// goroutine parks; no wake-up is lost. There is no async I/O reactor here:
/// futures that need one (tokio's sockets and timers) must be driven by
/// their own runtime; executor-agnostic futures (channels, `JoinHandle`s,
/// timers with their own thread) work.
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// let v = rt.block_on(|| {
///     let h = gosched::spawn(|| 6 * 7);
///     // A JoinHandle is a Future; so is any async block.
///     gosched::block_on_future(async move { h.await.unwrap() + 1 })
/// });
/// assert_eq!(v, 43);
/// assert_eq!(gosched::block_on_future(async { 5 }), 5); // a plain thread
/// ```
pub fn block_on_future<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let signal = Arc::new(Signal {
        notified: AtomicBool::new(false),
        waiter: Waiter::current(),
    });
    let waker = Waker::from(signal.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        crate::sched::preempt_check();
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // AcqRel: pairs with the waker's swap, so what the waker's side
        // wrote before waking is visible to the next poll.
        while !signal.notified.swap(false, Ordering::AcqRel) {
            crate::sched::g::park("future");
        }
    }
}

/// The state behind `block_on_future`'s waker (module docs).
struct Signal {
    notified: AtomicBool,
    waiter: Waiter,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // AcqRel: pairs with the poller's swap.
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.waiter.unpark();
        }
    }
}

/// A `JoinHandle` is a future of the goroutine's result, so async code can
/// await a goroutine: the goroutine's exit wakes the awaiting task. Polling
/// again after `Ready` panics.
///
/// The task's `Waker` is called by the finishing goroutine (or by the
/// runtime's drop, for a goroutine it abandons), preemptible and outside
/// the runtime's locks. If it panics, the panic is caught and discarded
/// (the panic hook reports it as usual): the goroutine has already
/// published its result, so it finishes normally and `poll` still returns
/// it; the runtime carries on. tokio does the same with its `JoinHandle`'s
/// waker.
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// let h = rt.spawn(|| "done");
/// // Any executor works; here a plain thread blocks on it.
/// assert_eq!(gosched::block_on_future(h).unwrap(), "done");
/// ```
impl<R> Future for JoinHandle<R> {
    type Output = std::thread::Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner().poll_join(cx)
    }
}

impl<R> JoinInner<R> {
    /// `JoinHandle::poll`: the result if the goroutine has finished, else
    /// register the task's waker (replacing an earlier one), re-checking
    /// under the waiter lock that `complete` takes. The waker is foreign
    /// code: it is cloned before the lock is taken, and the one it replaces
    /// is dropped after it is released (and outside the no-preempt region).
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<std::thread::Result<R>> {
        // Acquire: pairs with the Release store in `complete`.
        if !self.done.load(Ordering::Acquire) {
            let mut w = Some(Waiter::Waker(cx.waker().clone()));
            let pending = {
                let _np = crate::sched::NoPreempt::enter();
                let mut slot = self.waiter.rt_lock();
                // Acquire: as above.
                let pending = !self.done.load(Ordering::Acquire);
                if pending {
                    std::mem::swap(&mut *slot, &mut w);
                }
                pending
            };
            // The replaced waker, or our unused clone: dropped here.
            drop(w);
            if pending {
                return Poll::Pending;
            }
        }
        // SAFETY: `done` is set only after the single write of the result,
        // and the handle is the single reader (`poll` needs `&mut`, `join`
        // consumes it).
        let r = unsafe { (*self.result.get()).take() };
        Poll::Ready(r.expect("JoinHandle polled after it returned Ready"))
    }
}
