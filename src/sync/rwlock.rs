//! `RwLock<T>`: Go's `sync.RWMutex` holding a value, like
//! `std::sync::RwLock<T>` but parking the goroutine.
//!
//! # Protocol (Go's rwmutex.go)
//!
//! - `reader_count`: readers holding or waiting for the lock; a writer that
//!   arrives subtracts [`MAX_READERS`], so a negative count tells new
//!   readers that a writer is pending: they sleep on `reader_sem`. That is
//!   the writer preference: a waiting writer blocks new readers, so a
//!   stream of readers cannot starve it.
//! - `reader_wait`: readers that were already inside when the writer
//!   arrived; the writer sleeps on `writer_sem` until the last of them
//!   leaves.
//! - Writers exclude each other with a [`Mutex`] `w`, held
//!   for the whole write.
//!
//! 1. Read lock: `reader_count += 1`; if it is now negative a writer is
//!    pending: wait on `reader_sem` (the writer's unlock releases us).
//! 2. Read unlock: `reader_count -= 1`; if it is now negative a writer is
//!    pending: `reader_wait -= 1`, and the reader that brings it to zero
//!    releases `writer_sem`.
//! 3. Write lock: lock `w`; `r = reader_count` before subtracting
//!    `MAX_READERS` (the readers inside); `reader_wait += r`; if readers
//!    are inside and have not all left meanwhile, wait on `writer_sem`.
//! 4. Write unlock: add `MAX_READERS` back; the result is the number of
//!    readers that arrived meanwhile and wait: release `reader_sem` that
//!    many times; unlock `w`.
//!
//! All counters use sequentially consistent RMWs, as Go's atomics are: the
//! protocol relies on the single total order of the adds on `reader_count`
//! and `reader_wait`.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

use super::mutex::{MutexGuard, Sema};
use super::Mutex;

/// The most readers an [`RwLock`] admits at once (Go's rwmutexMaxReaders,
/// 2^30, widened to 2^62 so that no program can reach it: even leaking
/// read guards with `mem::forget` at one per nanosecond takes over a
/// century, and reaching it would let a writer in beside readers).
pub const MAX_READERS: i64 = 1 << 62;

/// A reader-writer lock protecting a `T`, with Go's `sync.RWMutex`
/// semantics: any number of readers or one writer; a writer that is waiting
/// blocks new readers (so writers are not starved); contended callers park
/// (goroutines) or block (plain threads).
///
/// It is not reentrant: a goroutine that holds a read lock and asks for
/// another while a writer waits deadlocks, as in Go. No poisoning.
///
/// # Examples
///
/// ```
/// use gosched::sync::RwLock;
/// use std::sync::Arc;
///
/// let rt = gosched::Builder::new().procs(2).build().unwrap();
/// let v = rt.block_on(|| {
///     let cfg = Arc::new(RwLock::new(vec![1]));
///     let readers: Vec<_> = (0..4)
///         .map(|_| {
///             let cfg = cfg.clone();
///             gosched::spawn(move || cfg.read().len())
///         })
///         .collect();
///     cfg.write().push(2);
///     for r in readers {
///         let n = r.join().unwrap();
///         assert!(n == 1 || n == 2);
///     }
///     let v = cfg.read().clone();
///     v
/// });
/// assert_eq!(v, [1, 2]);
/// ```
pub struct RwLock<T: ?Sized> {
    /// Held by writers (step 3 to step 4).
    w: Mutex<()>,
    /// Writers wait here for departing readers.
    writer_sem: Sema,
    /// Readers wait here for a writer to finish.
    reader_sem: Sema,
    /// Pending readers, minus MAX_READERS while a writer is pending.
    reader_count: AtomicI64,
    /// Departing readers a pending writer waits for.
    reader_wait: AtomicI64,
    data: UnsafeCell<T>,
}

// SAFETY: readers share `&T` across goroutines/threads (so `T: Sync`), a
// writer gets `&mut T` from whichever thread it runs on (so `T: Send`); the
// protocol admits readers or one writer, never both, and the semaphores and
// the SeqCst counters order a writer's accesses against the readers'.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}
// SAFETY: owning the lock is owning a `T`.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}

/// Shared access to a read-locked [`RwLock`]'s value; unlocks when dropped.
///
/// # Examples
///
/// ```
/// let l = gosched::sync::RwLock::new(3);
/// let (a, b) = (l.read(), l.read()); // readers share
/// assert_eq!(*a + *b, 6);
/// ```
#[must_use = "if unused the RwLock will immediately unlock"]
pub struct RwLockReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    _marker: PhantomData<&'a T>,
}

/// Exclusive access to a write-locked [`RwLock`]'s value; unlocks when
/// dropped.
///
/// # Examples
///
/// ```
/// let l = gosched::sync::RwLock::new(String::new());
/// l.write().push_str("hi");
/// assert_eq!(*l.read(), "hi");
/// ```
#[must_use = "if unused the RwLock will immediately unlock"]
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    /// The writers' mutex; dropped (unlocked) after our `Drop` has let the
    /// waiting readers in (step 4).
    _w: MutexGuard<'a, ()>,
    _marker: PhantomData<&'a mut T>,
}

impl<T> RwLock<T> {
    /// A new unlocked lock holding `value`.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = gosched::sync::RwLock::new(1);
    /// assert_eq!(*l.read(), 1);
    /// ```
    pub const fn new(value: T) -> RwLock<T> {
        RwLock {
            w: Mutex::new(()),
            writer_sem: Sema::new(),
            reader_sem: Sema::new(),
            reader_count: AtomicI64::new(0),
            reader_wait: AtomicI64::new(0),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the lock, returning the value.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = gosched::sync::RwLock::new(vec![1]);
    /// assert_eq!(l.into_inner(), [1]);
    /// ```
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Locks for reading (Go's `RLock`), waiting while a writer holds the
    /// lock or is waiting for it.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let l = std::sync::Arc::new(gosched::sync::RwLock::new(0));
    ///     let w = l.write();
    ///     let l2 = l.clone();
    ///     let r = gosched::spawn(move || *l2.read()); // parks until...
    ///     gosched::sleep(std::time::Duration::from_millis(1));
    ///     drop(w); // ...the writer leaves
    ///     assert_eq!(r.join().unwrap(), 0);
    /// });
    /// ```
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        crate::sched::preempt_check();
        // Step 1.
        if self.reader_count.fetch_add(1, SeqCst) + 1 < 0 {
            // A writer is pending: wait for its unlock to let us in.
            self.reader_sem.acquire_for(false, "sync.RWMutex.RLock");
        }
        RwLockReadGuard {
            lock: self,
            _marker: PhantomData,
        }
    }

    /// Locks for reading if that needs no waiting (Go's `TryRLock`): `None`
    /// while a writer holds the lock or waits for it.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = gosched::sync::RwLock::new(());
    /// let r = l.try_read().unwrap();
    /// assert!(l.try_write().is_none());
    /// drop(r);
    /// let w = l.try_write().unwrap();
    /// assert!(l.try_read().is_none());
    /// # drop(w);
    /// ```
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let mut c = self.reader_count.load(SeqCst);
        loop {
            if c < 0 {
                return None;
            }
            match self
                .reader_count
                .compare_exchange_weak(c, c + 1, SeqCst, SeqCst)
            {
                Ok(_) => {
                    return Some(RwLockReadGuard {
                        lock: self,
                        _marker: PhantomData,
                    })
                }
                Err(now) => c = now,
            }
        }
    }

    /// Locks for writing (Go's `Lock`): waits for other writers, then
    /// blocks new readers and waits for the readers inside to leave.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let l = std::sync::Arc::new(gosched::sync::RwLock::new(0));
    ///     let hs: Vec<_> = (0..10)
    ///         .map(|_| {
    ///             let l = l.clone();
    ///             gosched::spawn(move || *l.write() += 1)
    ///         })
    ///         .collect();
    ///     hs.into_iter().for_each(|h| h.join().unwrap());
    ///     assert_eq!(*l.read(), 10);
    /// });
    /// ```
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        // Step 3: first exclude other writers.
        let w = self.w.lock();
        // Announce the writer to readers; `r` readers are inside.
        let r = self.reader_count.fetch_sub(MAX_READERS, SeqCst);
        // Wait for them, unless they have all left already.
        if r != 0 && self.reader_wait.fetch_add(r, SeqCst) + r != 0 {
            self.writer_sem.acquire_for(false, "sync.RWMutex.Lock");
        }
        RwLockWriteGuard {
            lock: self,
            _w: w,
            _marker: PhantomData,
        }
    }

    /// Locks for writing if that needs no waiting (Go's `TryLock`): `None`
    /// if anyone holds the lock (or a writer waits for it).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = gosched::sync::RwLock::new(1);
    /// *l.try_write().unwrap() += 1;
    /// let r = l.read();
    /// assert!(l.try_write().is_none());
    /// assert_eq!(*r, 2);
    /// ```
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let w = self.w.try_lock()?;
        if self
            .reader_count
            .compare_exchange(0, -MAX_READERS, SeqCst, SeqCst)
            .is_err()
        {
            return None; // `w` unlocks
        }
        Some(RwLockWriteGuard {
            lock: self,
            _w: w,
            _marker: PhantomData,
        })
    }

    /// A mutable reference to the value; no locking needed, since `&mut`
    /// proves nobody else holds the lock.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut l = gosched::sync::RwLock::new(1);
    /// *l.get_mut() = 2;
    /// assert_eq!(*l.read(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Step 2 (Go's RUnlock / rUnlockSlow).
    fn read_unlock(&self) {
        let r = self.reader_count.fetch_sub(1, SeqCst) - 1;
        if r < 0 {
            assert!(
                r + 1 != 0 && r + 1 != -MAX_READERS,
                "sync: read unlock of an unlocked RwLock"
            );
            // A writer is pending; the last reader it waits for wakes it.
            if self.reader_wait.fetch_sub(1, SeqCst) - 1 == 0 {
                self.writer_sem.release();
            }
        }
    }

    /// Step 4 (Go's Unlock, before `w` unlocks).
    fn write_unlock(&self) {
        let r = self.reader_count.fetch_add(MAX_READERS, SeqCst) + MAX_READERS;
        assert!(r < MAX_READERS, "sync: write unlock of an unlocked RwLock");
        // Let in the readers that arrived while we held it.
        for _ in 0..r {
            self.reader_sem.release();
        }
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read guard proves no writer holds the lock until it
        // drops; readers only share `&T`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.read_unlock();
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a write guard proves exclusive access until it drops.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only access
        // through the guard.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.write_unlock();
        // Then `_w` drops: the next writer may come in.
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RwLock");
        match self.try_read() {
            Some(g) => d.field("data", &&*g),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.finish_non_exhaustive()
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> RwLock<T> {
        RwLock::new(T::default())
    }
}

impl<T> From<T> for RwLock<T> {
    fn from(v: T) -> RwLock<T> {
        RwLock::new(v)
    }
}
