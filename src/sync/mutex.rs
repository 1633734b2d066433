//! `Mutex<T>`: Go's `sync.Mutex` (normal and starvation modes) holding a
//! value, like `std::sync::Mutex<T>` but parking the goroutine.
//!
//! # State word (Go's `mutexLocked`, `mutexWoken`, `mutexStarving`)
//!
//! ```text
//!  31 ........................ 3   2          1        0
//! [ waiters (queued or about to) ][ STARVING ][ WOKEN ][ LOCKED ]
//! ```
//!
//! - `LOCKED`: someone holds the mutex.
//! - `WOKEN`: a waiter is awake and competing (or a spinner announced
//!   itself), so `unlock` need not wake another.
//! - `STARVING`: starvation mode (below).
//! - waiters: goroutines counted as blocked on the semaphore.
//!
//! # Normal mode
//!
//! Waiters queue FIFO on a semaphore, but a woken waiter does not own the
//! mutex: it competes with newly arriving lockers, which usually win (they
//! are running already). That is good for throughput. A woken waiter that
//! loses goes back to the *front* of the queue.
//!
//! # Starvation mode
//!
//! A waiter that fails to get the mutex for more than 1 ms
//! ([`STARVATION_THRESHOLD`]) switches the mutex to starvation mode. Then
//! `unlock` hands ownership straight to the waiter at the head of the queue
//! (and yields to it); newcomers do not try to lock or spin, they queue at
//! the tail. The waiter that receives ownership switches back to normal
//! mode if it waited less than 1 ms or is the last waiter.
//!
//! # Lock protocol (Go's lockSlow)
//!
//! 1. Fast path: CAS `0 -> LOCKED`.
//! 2. While the mutex is locked in normal mode and spinning may pay off
//!    (more than one P, fewer than [`ACTIVE_SPIN`] rounds), spin, setting
//!    `WOKEN` if there are waiters so that `unlock` does not wake one for
//!    nothing.
//! 3. Compute the next state: take `LOCKED` unless starving; count
//!    ourselves as a waiter if it is locked or starving; set `STARVING` if
//!    we have waited too long and it is still locked; clear `WOKEN` if we
//!    were the woken one. CAS it in; on failure, reload and repeat.
//! 4. If the CAS took the lock, done. Otherwise sleep on the semaphore (at
//!    the front if we had waited before). On wake-up, in starvation mode we
//!    own the mutex: fix the state (set `LOCKED`, remove ourselves from the
//!    count, maybe leave starvation mode) and return; in normal mode go
//!    back to 2 as the woken competitor.
//!
//! Unlock: subtract `LOCKED`; if anything else is set, in normal mode wake
//! one waiter (setting `WOKEN`) unless one is already awake or the mutex
//! was re-locked meanwhile; in starvation mode hand it off.
//!
//! The mutex has no owner identity: unlocking on another thread than the
//! one that locked (after a goroutine migrated, or from a guard sent
//! elsewhere) is fine, and holding it across preemption in either
//! [`PreemptMode`](crate::PreemptMode) is correct by construction.

use crate::sched::RuntimeLock;
use crate::sync::spin::{procyield, ACTIVE_SPIN};
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sched::g::Waiter;
use crate::sched::NoPreempt;

const LOCKED: u32 = 1;
const WOKEN: u32 = 2;
const STARVING: u32 = 4;
const WAITER_SHIFT: u32 = 3;
const WAITER: u32 = 1 << WAITER_SHIFT;

/// How long a waiter may fail to get the mutex before it switches the
/// mutex to starvation mode (Go's starvationThresholdNs: 1 ms).
pub const STARVATION_THRESHOLD: Duration = Duration::from_millis(1);

/// A mutual-exclusion lock protecting a `T`, goroutine-aware: a contended
/// locker spins briefly and then parks (its thread runs other goroutines),
/// queueing FIFO; a plain thread blocks. Implements Go's starvation mode,
/// so a waiter gets the lock within about a millisecond even against a
/// goroutine that re-locks in a tight loop.
///
/// Unlike `std::sync::Mutex` there is no poisoning: a panic while holding
/// the guard just unlocks.
///
/// # Examples
///
/// ```
/// use gosched::sync::{Mutex, WaitGroup};
/// use std::sync::Arc;
///
/// let rt = gosched::Runtime::new().unwrap();
/// let n = rt.block_on(|| {
///     let count = Arc::new(Mutex::new(0));
///     let wg = WaitGroup::new();
///     for _ in 0..10 {
///         let (count, wg) = (count.clone(), wg.clone());
///         wg.add(1);
///         gosched::spawn(move || {
///             *count.lock() += 1;
///             wg.done();
///         });
///     }
///     wg.wait();
///     let n = *count.lock();
///     n
/// });
/// assert_eq!(n, 10);
/// ```
pub struct Mutex<T: ?Sized> {
    /// The state word (module docs). Lock/unlock CASes pair with
    /// Acquire/Release.
    state: AtomicU32,
    /// Where waiters sleep.
    sema: Sema,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex hands out access to `data` to one holder at a time
// (LOCKED, or ownership handed off in starvation mode), with Acquire on
// lock pairing with Release on unlock; `T: Send` because the holder may be
// on any thread.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}
// SAFETY: owning the mutex is owning a `T`.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}

/// Access to a locked [`Mutex`]'s value; unlocks when dropped.
///
/// The guard may be sent to another goroutine or thread and dropped there
/// (the mutex has no owner identity).
///
/// # Examples
///
/// ```
/// let m = gosched::sync::Mutex::new(vec![1]);
/// let mut g = m.lock();
/// g.push(2); // DerefMut
/// assert_eq!(g.len(), 2); // Deref
/// drop(g);
/// assert!(m.try_lock().is_some());
/// ```
#[must_use = "if unused the Mutex will immediately unlock"]
pub struct MutexGuard<'a, T: ?Sized> {
    /// The locked mutex (read by `Condvar::wait` to re-lock it).
    pub(super) mutex: &'a Mutex<T>,
    /// Send iff `T: Send`, Sync iff `T: Sync`, like `&mut T`.
    _marker: PhantomData<&'a mut T>,
}

impl<T> Mutex<T> {
    /// A new unlocked mutex holding `value`.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = gosched::sync::Mutex::new(5);
    /// assert_eq!(*m.lock(), 5);
    /// ```
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            state: AtomicU32::new(0),
            sema: Sema::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the mutex, returning the value.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = gosched::sync::Mutex::new(String::from("x"));
    /// assert_eq!(m.into_inner(), "x");
    /// ```
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks the mutex, waiting if needed: a goroutine spins briefly, then
    /// parks; a plain thread blocks. Go's `Lock`.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let m = std::sync::Arc::new(gosched::sync::Mutex::new(0));
    ///     let g = m.lock();
    ///     let m2 = m.clone();
    ///     let h = gosched::spawn(move || *m2.lock() += 1); // parks until...
    ///     gosched::sleep(std::time::Duration::from_millis(1));
    ///     drop(g); // ...we unlock
    ///     h.join().unwrap();
    ///     assert_eq!(*m.lock(), 1);
    /// });
    /// ```
    pub fn lock(&self) -> MutexGuard<'_, T> {
        crate::sched::preempt_check();
        // Acquire: pairs with the Release in `unlock`.
        if self
            .state
            .compare_exchange_weak(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        MutexGuard {
            mutex: self,
            _marker: PhantomData,
        }
    }

    /// Locks the mutex if that needs no waiting (Go's `TryLock`). Returns
    /// `None` if it is locked, or in starvation mode (it then belongs to
    /// the queued waiters).
    ///
    /// # Examples
    ///
    /// ```
    /// let m = gosched::sync::Mutex::new(());
    /// let g = m.try_lock().unwrap();
    /// assert!(m.try_lock().is_none());
    /// drop(g);
    /// assert!(m.try_lock().is_some());
    /// ```
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let mut old = self.state.load(Ordering::Relaxed);
        loop {
            if old & (LOCKED | STARVING) != 0 {
                return None;
            }
            // Acquire: pairs with the Release in `unlock`.
            match self.state.compare_exchange_weak(
                old,
                old | LOCKED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(MutexGuard {
                        mutex: self,
                        _marker: PhantomData,
                    })
                }
                Err(now) => old = now,
            }
        }
    }

    /// A mutable reference to the value; no locking needed, since `&mut`
    /// proves nobody else holds the mutex.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut m = gosched::sync::Mutex::new(1);
    /// *m.get_mut() = 2;
    /// assert_eq!(*m.lock(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Steps 2-4 of the lock protocol (module docs; Go's lockSlow).
    #[cold]
    fn lock_slow(&self) {
        let mut wait_start: Option<Instant> = None;
        let mut starving = false;
        let mut awoke = false;
        let mut spins = 0;
        let mut old = self.state.load(Ordering::Relaxed);
        loop {
            // Step 2: spin while locked in normal mode.
            if old & (LOCKED | STARVING) == LOCKED && can_spin(spins) {
                if !awoke
                    && old & WOKEN == 0
                    && old >> WAITER_SHIFT != 0
                    && self
                        .state
                        .compare_exchange_weak(
                            old,
                            old | WOKEN,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    awoke = true;
                }
                procyield();
                spins += 1;
                old = self.state.load(Ordering::Relaxed);
                continue;
            }
            // Step 3.
            let mut new = old;
            if old & STARVING == 0 {
                new |= LOCKED;
            }
            if old & (LOCKED | STARVING) != 0 {
                new += WAITER;
            }
            if starving && old & LOCKED != 0 {
                new |= STARVING;
            }
            if awoke {
                debug_assert!(new & WOKEN != 0, "sync: inconsistent mutex state");
                new &= !WOKEN;
            }
            // Acquire: if this takes the lock, pairs with `unlock`'s Release.
            match self
                .state
                .compare_exchange_weak(old, new, Ordering::Acquire, Ordering::Relaxed)
            {
                Err(now) => old = now,
                Ok(_) => {
                    if old & (LOCKED | STARVING) == 0 {
                        return; // locked by the CAS
                    }
                    // Step 4: sleep; at the front if we have waited before.
                    let requeue = wait_start.is_some();
                    let start = *wait_start.get_or_insert_with(Instant::now);
                    self.sema.acquire(requeue);
                    starving = starving || start.elapsed() > STARVATION_THRESHOLD;
                    old = self.state.load(Ordering::Relaxed);
                    if old & STARVING != 0 {
                        // Ownership was handed to us; the state still counts
                        // us as a waiter and has LOCKED clear.
                        debug_assert!(
                            old & (LOCKED | WOKEN) == 0 && old >> WAITER_SHIFT != 0,
                            "sync: inconsistent mutex state"
                        );
                        let mut delta = LOCKED.wrapping_sub(WAITER);
                        if !starving || old >> WAITER_SHIFT == 1 {
                            // Leave starvation mode: we did not wait long,
                            // or nobody is left to starve.
                            delta = delta.wrapping_sub(STARVING);
                        }
                        // Acquire: pairs with the releaser (also ordered by
                        // the semaphore's lock).
                        self.state.fetch_add(delta, Ordering::Acquire);
                        return;
                    }
                    awoke = true;
                    spins = 0;
                }
            }
        }
    }

    /// Go's Unlock.
    fn unlock(&self) {
        // Release: pairs with the Acquire of the next locker.
        let new = self
            .state
            .fetch_sub(LOCKED, Ordering::Release)
            .wrapping_sub(LOCKED);
        if new != 0 {
            self.unlock_slow(new);
        }
    }

    #[cold]
    fn unlock_slow(&self, new: u32) {
        debug_assert!(
            new.wrapping_add(LOCKED) & LOCKED != 0,
            "sync: unlock of unlocked mutex"
        );
        if new & STARVING != 0 {
            // Starvation mode: hand ownership to the head waiter. LOCKED
            // stays clear, but STARVING keeps newcomers off; the waiter
            // sets LOCKED itself. Yield so it runs at once (Go does).
            self.sema.release();
            crate::yield_now();
            return;
        }
        let mut old = new;
        loop {
            // Nobody to wake, or someone already awake / re-locked it /
            // switched it to starvation mode: nothing to do.
            if old >> WAITER_SHIFT == 0 || old & (LOCKED | WOKEN | STARVING) != 0 {
                return;
            }
            let next = (old - WAITER) | WOKEN;
            match self
                .state
                .compare_exchange_weak(old, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.sema.release();
                    return;
                }
                Err(now) => old = now,
            }
        }
    }
}

/// Spin only on a multi-P runtime (or a multi-core machine for plain
/// threads), and only a few rounds (Go's sync_runtime_canSpin).
fn can_spin(spins: u32) -> bool {
    if spins >= ACTIVE_SPIN {
        return false;
    }
    let procs = crate::sched::with_current_shared(|sh| sh.procs()).unwrap_or_else(|| {
        static CPUS: OnceLock<usize> = OnceLock::new();
        *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    });
    procs > 1
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves we hold the mutex: no other reference to
        // the data exists until it drops.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access
        // through the guard.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Mutex");
        match self.try_lock() {
            Some(g) => d.field("data", &&*g),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.finish_non_exhaustive()
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(v: T) -> Mutex<T> {
        Mutex::new(v)
    }
}

/// A counting semaphore whose waiters queue FIFO (front insertion for a
/// re-queued waiter) and receive a unit directly from `release` (Go's
/// semacquire/semrelease with handoff). Its lock is held only for a few
/// instructions, inside a no-preempt region, never while parking. Shared
/// with `RwLock` (Go's RWMutex sleeps on the same semaphores).
pub(super) struct Sema {
    inner: std::sync::Mutex<SemaInner>,
}

struct SemaInner {
    /// Units released while nobody waited.
    count: u32,
    /// Waiting entries (on their owners' stacks; each stays alive until its
    /// `granted` flag is set, and only `release` removes it).
    queue: VecDeque<*const SemaWaiter>,
}

// SAFETY: the pointers are dereferenced only under the semaphore's lock
// (by `release`), and point at entries that live until granted.
unsafe impl Send for SemaInner {}

struct SemaWaiter {
    waiter: Waiter,
    /// Set by `release` (Release) after unlinking the entry; the owner
    /// spins on it with Acquire around `park`.
    granted: AtomicBool,
}

impl Sema {
    pub(super) const fn new() -> Sema {
        Sema {
            inner: std::sync::Mutex::new(SemaInner {
                count: 0,
                queue: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> crate::sched::RtGuard<'_, SemaInner> {
        // No user code runs under this lock; poisoning is impossible in
        // practice and harmless to ignore.
        self.inner.rt_lock()
    }

    /// Takes a unit, parking until one is released to us.
    fn acquire(&self, front: bool) {
        self.acquire_for(front, "sync.Mutex.Lock");
    }

    /// `acquire`, saying what the waiter waits on (the deadlock report).
    pub(super) fn acquire_for(&self, front: bool, reason: &'static str) {
        let me = SemaWaiter {
            waiter: Waiter::current(),
            granted: AtomicBool::new(false),
        };
        {
            let _np = NoPreempt::enter();
            let mut s = self.lock();
            if s.count > 0 {
                s.count -= 1;
                return;
            }
            if front {
                s.queue.push_front(&me);
            } else {
                s.queue.push_back(&me);
            }
        }
        // Acquire: pairs with the Release store in `release`.
        while !me.granted.load(Ordering::Acquire) {
            crate::sched::g::park(reason);
        }
    }

    /// Gives a unit to the head waiter (waking it) or keeps it for the next
    /// `acquire`.
    pub(super) fn release(&self) {
        let woken = {
            let _np = NoPreempt::enter();
            let mut s = self.lock();
            match s.queue.pop_front() {
                Some(p) => {
                    // SAFETY: a queued entry is alive until its `granted` is
                    // set (its owner loops on it), and we set that last.
                    let w = unsafe { &*p };
                    let waiter = w.waiter.clone();
                    // Release: the owner may return (and free the entry) as
                    // soon as it sees this; we touch the entry no more.
                    w.granted.store(true, Ordering::Release);
                    Some(waiter)
                }
                None => {
                    s.count += 1;
                    None
                }
            }
        };
        if let Some(w) = woken {
            w.unpark();
        }
    }
}
