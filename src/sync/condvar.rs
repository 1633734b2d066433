//! `Condvar`: Go's `sync.Cond`, working with [`Mutex`](super::Mutex).
//!
//! # Protocol
//!
//! Waiters queue FIFO as entries on their own stacks (like the mutex's
//! semaphore): `wait` enqueues its entry *before* it unlocks the mutex, so
//! a notify that follows the unlock, or that races with it, finds the entry
//! (no lost wake-up, Go's notifyListAdd-before-Unlock). A notify unlinks
//! entries under the queue's lock and then sets their `notified` flag
//! (Release) as the last touch; the owner parks until it sees the flag
//! (Acquire), so the entry stays alive as long as the queue can reach it.
//! Then `wait` re-locks the mutex and returns the new guard.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::MutexGuard;
use crate::sched::g::Waiter;
use crate::sched::{NoPreempt, RuntimeLock};

/// A condition variable for [`Mutex`](super::Mutex) (Go's `sync.Cond`):
/// goroutines wait for a condition on data the mutex protects; waiting
/// parks the goroutine (a plain thread blocks). Wake-ups are FIFO, and a
/// waiter may also wake spuriously, so always wait in a loop (or use
/// [`wait_while`](Condvar::wait_while)).
///
/// # Examples
///
/// ```
/// use gosched::sync::{Condvar, Mutex};
/// use std::sync::Arc;
///
/// let rt = gosched::Builder::new().procs(2).build().unwrap();
/// rt.block_on(|| {
///     let pair = Arc::new((Mutex::new(false), Condvar::new()));
///     let p2 = pair.clone();
///     gosched::spawn(move || {
///         *p2.0.lock() = true;
///         p2.1.notify_one();
///     });
///     let (m, cv) = &*pair;
///     let mut ready = m.lock();
///     while !*ready {
///         ready = cv.wait(ready);
///     }
///     assert!(*ready);
/// });
/// ```
pub struct Condvar {
    /// Waiting entries (on their owners' stacks; alive until `notified`).
    queue: std::sync::Mutex<VecDeque<*const Entry>>,
}

// SAFETY: the entry pointers are dereferenced only under the queue lock or
// by the notifier that unlinked them, while their owners wait for
// `notified` (module docs).
unsafe impl Send for Condvar {}
// SAFETY: as above.
unsafe impl Sync for Condvar {}

struct Entry {
    waiter: Waiter,
    /// Set (Release) by the notifier after unlinking the entry.
    notified: AtomicBool,
}

impl Condvar {
    /// A condition variable with no waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// let cv = gosched::sync::Condvar::new();
    /// cv.notify_all(); // nobody waits: no effect
    /// ```
    pub const fn new() -> Condvar {
        Condvar {
            queue: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Unlocks the guard's mutex, waits for a notification, re-locks the
    /// mutex and returns the new guard (Go's `Wait`). May also return
    /// without a notification (spuriously): re-check the condition.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::sync::{Condvar, Mutex};
    /// use std::sync::Arc;
    ///
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let s = Arc::new((Mutex::new(0), Condvar::new()));
    ///     let s2 = s.clone();
    ///     let h = gosched::spawn(move || {
    ///         let mut n = s2.0.lock();
    ///         while *n == 0 {
    ///             n = s2.1.wait(n);
    ///         }
    ///         *n
    ///     });
    ///     *s.0.lock() = 5;
    ///     s.1.notify_all();
    ///     assert_eq!(h.join().unwrap(), 5);
    /// });
    /// ```
    pub fn wait<'a, T: ?Sized>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let mutex = guard.mutex;
        let me = Entry {
            waiter: Waiter::current(),
            notified: AtomicBool::new(false),
        };
        {
            let _np = NoPreempt::enter();
            self.queue.rt_lock().push_back(&me);
        }
        drop(guard);
        // Acquire: pairs with the notifier's Release store.
        while !me.notified.load(Ordering::Acquire) {
            crate::sched::g::park("sync.Cond.Wait");
        }
        mutex.lock()
    }

    /// Waits until `condition` returns false, re-checking it after every
    /// wake-up (std's `Condvar::wait_while`).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::sync::{Condvar, Mutex};
    /// use std::sync::Arc;
    ///
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let s = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    ///     let s2 = s.clone();
    ///     gosched::spawn(move || {
    ///         s2.0.lock().push(1);
    ///         s2.1.notify_one();
    ///     });
    ///     let v = s.1.wait_while(s.0.lock(), |v| v.is_empty());
    ///     assert_eq!(*v, [1]);
    /// });
    /// ```
    pub fn wait_while<'a, T: ?Sized>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        while condition(&mut *guard) {
            guard = self.wait(guard);
        }
        guard
    }

    /// Wakes the longest-waiting waiter, if any (Go's `Signal`).
    ///
    /// # Examples
    ///
    /// ```
    /// let cv = gosched::sync::Condvar::new();
    /// cv.notify_one(); // nobody waits: no effect
    /// ```
    pub fn notify_one(&self) {
        let w = {
            let _np = NoPreempt::enter();
            let mut q = self.queue.rt_lock();
            q.pop_front().map(|p| {
                // SAFETY: a queued entry is alive until `notified` is set
                // (its owner loops on it), and we set that last.
                unsafe { grant(p) }
            })
        };
        if let Some(w) = w {
            w.unpark();
        }
    }

    /// Wakes every waiter (Go's `Broadcast`).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::sync::{Condvar, Mutex, WaitGroup};
    /// use std::sync::Arc;
    ///
    /// let rt = gosched::Builder::new().procs(2).build().unwrap();
    /// rt.block_on(|| {
    ///     let s = Arc::new((Mutex::new(false), Condvar::new()));
    ///     let wg = WaitGroup::new();
    ///     for _ in 0..4 {
    ///         let (s, wg) = (s.clone(), wg.clone());
    ///         wg.add(1);
    ///         gosched::spawn(move || {
    ///             drop(s.1.wait_while(s.0.lock(), |go| !*go));
    ///             wg.done();
    ///         });
    ///     }
    ///     *s.0.lock() = true;
    ///     s.1.notify_all();
    ///     wg.wait(); // all four woke up
    /// });
    /// ```
    pub fn notify_all(&self) {
        let ws: Vec<Waiter> = {
            let _np = NoPreempt::enter();
            let mut q = self.queue.rt_lock();
            q.drain(..)
                // SAFETY: as in `notify_one`.
                .map(|p| unsafe { grant(p) })
                .collect()
        };
        for w in ws {
            w.unpark();
        }
    }
}

/// Marks an unlinked entry notified and returns whom to wake.
///
/// # Safety
/// `p` was just unlinked from the queue (under its lock) and its owner is
/// still waiting for `notified`.
unsafe fn grant(p: *const Entry) -> Waiter {
    // SAFETY: the caller's contract: the entry is alive.
    let e = unsafe { &*p };
    let w = e.waiter.clone();
    // Release: the owner may return (and free the entry) as soon as it sees
    // this; we touch the entry no more.
    e.notified.store(true, Ordering::Release);
    w
}

impl Default for Condvar {
    fn default() -> Condvar {
        Condvar::new()
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar").finish_non_exhaustive()
    }
}
