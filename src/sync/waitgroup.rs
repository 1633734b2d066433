//! `WaitGroup`: Go's `sync.WaitGroup`.
//!
//! A counter plus a list of waiters. `wait` registers under the list's
//! lock after re-checking the counter there; the `done` that brings the
//! counter to zero takes the same lock, re-checks zero, bumps the
//! generation and wakes the whole list. Each waiter parks until the
//! generation it registered in has passed, so a wake-up can neither be lost
//! (register and bump are serialised by the lock) nor leak into a later
//! round of a reused group.

use crate::sched::RuntimeLock;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sched::g::Waiter;
use crate::sched::NoPreempt;

/// Waits for a collection of goroutines (or threads) to finish: `add` the
/// number to wait for, each calls `done` when finished, `wait` blocks until
/// the counter is zero. Clones share the same group.
///
/// # Examples
///
/// ```
/// use gosched::sync::WaitGroup;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let wg = WaitGroup::new();
///     let hits = Arc::new(AtomicUsize::new(0));
///     for _ in 0..100 {
///         wg.add(1);
///         let (wg, hits) = (wg.clone(), hits.clone());
///         gosched::spawn(move || {
///             hits.fetch_add(1, Ordering::Relaxed);
///             wg.done();
///         });
///     }
///     wg.wait();
///     assert_eq!(hits.load(Ordering::Relaxed), 100);
/// });
/// ```
#[derive(Clone)]
pub struct WaitGroup {
    inner: Arc<Inner>,
}

struct Inner {
    /// The counter. `add`/`done` are AcqRel; `wait`'s Acquire load pairs
    /// with the `done` that reached zero.
    count: AtomicI64,
    /// Bumped (under `waiters`' lock) each time the counter reaches zero;
    /// a waiter returns once it differs from the value it registered with.
    generation: AtomicU64,
    waiters: Mutex<Vec<Waiter>>,
}

impl WaitGroup {
    /// A group with a zero counter.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = gosched::sync::WaitGroup::new();
    /// wg.wait(); // zero: returns at once
    /// ```
    pub fn new() -> WaitGroup {
        WaitGroup {
            inner: Arc::new(Inner {
                count: AtomicI64::new(0),
                generation: AtomicU64::new(0),
                waiters: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Adds `n` to the counter (Go's `Add(n)`); call it before starting
    /// what will call `done`.
    ///
    /// # Panics
    ///
    /// `sync: WaitGroup counter overflow` if the counter would exceed
    /// `i64::MAX`; the counter is then left unchanged, so the group stays
    /// usable. (Go's counter is 32 bits and wraps into its "negative
    /// WaitGroup counter" panic instead.)
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = gosched::sync::WaitGroup::new();
    /// wg.add(2);
    /// wg.done();
    /// wg.done();
    /// wg.wait();
    ///
    /// wg.add(1);
    /// let r = std::panic::catch_unwind(|| wg.add(i64::MAX as usize));
    /// assert!(r.is_err());
    /// assert_eq!(wg.count(), 1); // unchanged
    /// ```
    pub fn add(&self, n: usize) {
        // Check, then add, in one CAS: a failed add must not leave the
        // counter wrapped for `done`, `wait` or another `add` to see.
        // AcqRel as `done`'s fetch_sub, which it pairs with.
        let r = i64::try_from(n).ok().and_then(|n| {
            self.inner
                .count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_add(n))
                .ok()
        });
        if r.is_none() {
            panic!("sync: WaitGroup counter overflow");
        }
    }

    /// Decrements the counter (Go's `Done`); the call that brings it to
    /// zero wakes every waiter.
    ///
    /// # Panics
    ///
    /// `sync: negative WaitGroup counter` if the counter is already zero,
    /// as in Go. The counter is then left at zero (it never goes below), so
    /// waiters and a concurrent legitimate `done` are unaffected.
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = gosched::sync::WaitGroup::new();
    /// let r = std::panic::catch_unwind(|| wg.done());
    /// assert!(r.is_err()); // more done() than add()
    /// ```
    pub fn done(&self) {
        // Check, then decrement, in one CAS (as `add`): a stray call must
        // not take the counter below zero even for an instant, or a `wait`
        // seeing that would park for good, and the `done` that brought it
        // to zero, re-checking under the lock, would wake nobody. AcqRel:
        // pairs with the other `done`s and `add`s.
        let prev = self
            .inner
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c > 0).then(|| c - 1)
            });
        let Ok(prev) = prev else {
            panic!("sync: negative WaitGroup counter");
        };
        if prev == 1 {
            let woken = {
                let _np = NoPreempt::enter();
                let mut w = self.inner.waiters.rt_lock();
                if self.inner.count.load(Ordering::Acquire) != 0 {
                    // Re-added before we got here: this round is not over
                    // (Go calls that a misuse); its waiters keep waiting.
                    return;
                }
                // Release: pairs with the waiters' Acquire loads.
                self.inner.generation.fetch_add(1, Ordering::Release);
                std::mem::take(&mut *w)
            };
            for w in woken {
                w.unpark();
            }
        }
    }

    /// Blocks until the counter is zero: parks the goroutine, or blocks a
    /// plain thread (Go's `Wait`).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let wg = gosched::sync::WaitGroup::new();
    ///     wg.add(1);
    ///     let wg2 = wg.clone();
    ///     gosched::spawn(move || {
    ///         gosched::sleep(std::time::Duration::from_millis(2));
    ///         wg2.done();
    ///     });
    ///     wg.wait();
    ///     assert_eq!(wg.count(), 0);
    /// });
    /// ```
    pub fn wait(&self) {
        crate::sched::preempt_check();
        // Acquire: pairs with the done() that reached zero.
        if self.inner.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let registered = {
            let _np = NoPreempt::enter();
            let mut w = self.inner.waiters.rt_lock();
            if self.inner.count.load(Ordering::Acquire) == 0 {
                return;
            }
            w.push(Waiter::current());
            self.inner.generation.load(Ordering::Relaxed)
        };
        // Acquire: pairs with the Release bump in `done`.
        while self.inner.generation.load(Ordering::Acquire) == registered {
            crate::sched::g::park("sync.WaitGroup.Wait");
        }
    }

    /// The counter now (for diagnostics).
    ///
    /// # Examples
    ///
    /// ```
    /// let wg = gosched::sync::WaitGroup::new();
    /// wg.add(3);
    /// assert_eq!(wg.count(), 3);
    /// ```
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::Acquire).max(0) as usize
    }
}

impl Default for WaitGroup {
    fn default() -> WaitGroup {
        WaitGroup::new()
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup")
            .field("count", &self.count())
            .finish()
    }
}
