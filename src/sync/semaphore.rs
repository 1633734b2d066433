//! `Semaphore`: a weighted semaphore, after Go's
//! `golang.org/x/sync/semaphore`.
//!
//! # Protocol
//!
//! `cur` (permits held) and a FIFO queue of waiting entries live under one
//! short lock. `acquire(n)` takes the permits at once only if they are free
//! *and nobody is queued* (so a large request at the head is not overtaken
//! forever by small ones); otherwise it queues an entry on its own stack
//! and parks until `granted`. `release(n)` returns permits and then grants
//! waiters from the head, in order, while the head's request fits; it stops
//! at the first that does not fit (x/sync's notifyWaiters: granting later,
//! smaller requests first would starve it). A granted entry is unlinked
//! under the lock and `granted` is set last (Release), as in the mutex's
//! semaphore, so the entry outlives every access to it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sched::g::Waiter;
use crate::sched::{NoPreempt, RuntimeLock};

/// A weighted counting semaphore with FIFO waiters (Go's
/// `x/sync/semaphore.Weighted`): `acquire(n)` waits until `n` permits are
/// free, parking the goroutine (a plain thread blocks); `release(n)` hands
/// permits to the waiters in arrival order.
///
/// # Examples
///
/// ```
/// use gosched::sync::Semaphore;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let rt = gosched::Builder::new().procs(2).build().unwrap();
/// rt.block_on(|| {
///     let sem = Arc::new(Semaphore::new(3)); // at most 3 at a time
///     let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
///     let hs: Vec<_> = (0..10)
///         .map(|_| {
///             let (sem, now, max) = (sem.clone(), now.clone(), max.clone());
///             gosched::spawn(move || {
///                 sem.acquire(1);
///                 let n = now.fetch_add(1, Ordering::SeqCst) + 1;
///                 max.fetch_max(n, Ordering::SeqCst);
///                 gosched::sleep(std::time::Duration::from_millis(1));
///                 now.fetch_sub(1, Ordering::SeqCst);
///                 sem.release(1);
///             })
///         })
///         .collect();
///     hs.into_iter().for_each(|h| h.join().unwrap());
///     assert!(max.load(Ordering::SeqCst) <= 3);
/// });
/// ```
pub struct Semaphore {
    /// Total permits.
    size: usize,
    state: std::sync::Mutex<State>,
}

struct State {
    /// Permits held now (<= size).
    cur: usize,
    /// Waiting entries, FIFO (on their owners' stacks; alive until granted).
    queue: VecDeque<*const Entry>,
}

// SAFETY: the entry pointers are dereferenced only under the state lock,
// while their owners wait for `granted` (module docs).
unsafe impl Send for State {}

struct Entry {
    n: usize,
    waiter: Waiter,
    /// Set (Release) by `release` after unlinking the entry.
    granted: AtomicBool,
}

impl Semaphore {
    /// A semaphore with `permits` permits, all free.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::sync::Semaphore::new(2);
    /// assert_eq!(s.available(), 2);
    /// ```
    pub const fn new(permits: usize) -> Semaphore {
        Semaphore {
            size: permits,
            state: std::sync::Mutex::new(State {
                cur: 0,
                queue: VecDeque::new(),
            }),
        }
    }

    /// Takes `n` permits, waiting (FIFO) until they are free.
    ///
    /// # Panics
    ///
    /// If `n` is larger than the semaphore's total permits: such a request
    /// could never be granted (x/sync's `Acquire` would block until its
    /// context is cancelled; with no context here, it would hang forever).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let s = std::sync::Arc::new(gosched::sync::Semaphore::new(4));
    ///     s.acquire(3);
    ///     let s2 = s.clone();
    ///     let h = gosched::spawn(move || s2.acquire(2)); // waits for...
    ///     gosched::sleep(std::time::Duration::from_millis(1));
    ///     s.release(3); // ...these
    ///     h.join().unwrap();
    ///     assert_eq!(s.available(), 2);
    /// });
    /// ```
    pub fn acquire(&self, n: usize) {
        assert!(
            n <= self.size,
            "gosched::sync::Semaphore::acquire({n}) on a semaphore of {} permits would never return",
            self.size
        );
        crate::sched::preempt_check();
        let me = Entry {
            n,
            waiter: Waiter::current(),
            granted: AtomicBool::new(false),
        };
        {
            let _np = NoPreempt::enter();
            let mut s = self.state.rt_lock();
            if self.size - s.cur >= n && s.queue.is_empty() {
                s.cur += n;
                return;
            }
            s.queue.push_back(&me);
        }
        // Acquire: pairs with the Release store in `release`.
        while !me.granted.load(Ordering::Acquire) {
            crate::sched::g::park("sync.Semaphore.Acquire");
        }
    }

    /// Takes `n` permits if they are free and nobody is waiting; never
    /// waits (x/sync's `TryAcquire`). False if `n` exceeds the total.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::sync::Semaphore::new(2);
    /// assert!(s.try_acquire(2));
    /// assert!(!s.try_acquire(1));
    /// s.release(1);
    /// assert!(s.try_acquire(1));
    /// assert!(!s.try_acquire(3)); // more than it has at all
    /// ```
    pub fn try_acquire(&self, n: usize) -> bool {
        let _np = NoPreempt::enter();
        let mut s = self.state.rt_lock();
        let ok = self.size - s.cur >= n && s.queue.is_empty();
        if ok {
            s.cur += n;
        }
        ok
    }

    /// Returns `n` permits and grants waiting requests, in order, while
    /// the one at the head fits (x/sync's `Release`).
    ///
    /// # Panics
    ///
    /// If more permits are released than are held (x/sync: "semaphore:
    /// released more than held"); the semaphore is left unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::sync::Semaphore::new(1);
    /// s.acquire(1);
    /// s.release(1);
    /// assert!(std::panic::catch_unwind(|| s.release(1)).is_err());
    /// assert_eq!(s.available(), 1);
    /// ```
    pub fn release(&self, n: usize) {
        let woken = {
            let _np = NoPreempt::enter();
            let mut s = self.state.rt_lock();
            if n > s.cur {
                None
            } else {
                s.cur -= n;
                let mut woken = Vec::new();
                while let Some(&p) = s.queue.front() {
                    // SAFETY: a queued entry is alive until its `granted` is
                    // set, which only happens below after unlinking it.
                    let e = unsafe { &*p };
                    if self.size - s.cur < e.n {
                        break; // the head does not fit: nobody overtakes it
                    }
                    s.cur += e.n;
                    s.queue.pop_front();
                    woken.push(e.waiter.clone());
                    // Release: the owner may return (and free the entry) as
                    // soon as it sees this; we touch the entry no more.
                    e.granted.store(true, Ordering::Release);
                }
                Some(woken)
            }
        };
        let Some(woken) = woken else {
            panic!("gosched::sync::Semaphore::release({n}): released more than held");
        };
        for w in woken {
            w.unpark();
        }
    }

    /// Permits free now (for diagnostics; may be stale at once).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::sync::Semaphore::new(5);
    /// s.acquire(2);
    /// assert_eq!(s.available(), 3);
    /// ```
    pub fn available(&self) -> usize {
        let _np = NoPreempt::enter();
        self.size - self.state.rt_lock().cur
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("permits", &self.size)
            .field("available", &self.available())
            .finish_non_exhaustive()
    }
}
