//! `SpinLock`: a lock for the runtime's short critical sections that are
//! contended across threads (a channel's state).
//!
//! std's futex mutex marks itself contended once a thread sleeps in the
//! kernel, and from then on every unlock makes a FUTEX_WAKE system call; a
//! channel lock taken by two threads millions of times a second spends most
//! of its time there. The sections guarded here are a few dozen
//! instructions, run in a no-preempt region (so the holder is never
//! preempted by gosched), and never block: spinning, then yielding the CPU
//! to the OS, is cheaper. A holder descheduled by the OS costs the waiters
//! a `sched_yield` each, not a spin for the whole time slice.
//!
//! The spin backs off: a waiter looks at the lock, then pauses 30 PAUSE
//! instructions before looking again, four times (Go's `lock2` does the
//! same). Looking continuously pulls the lock's cache line away from the
//! holder on every iteration; with the back-off, the holder (and whoever
//! locks next on its CPU) keeps the line for a burst of operations. On the
//! 4x4 buffered-channel benchmark that is the difference between 2x Go's
//! time per value and half of it (benches/README.md).

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// Spin rounds before a waiter gives up the CPU (Go's `active_spin`, used
/// by its `lock2` and `sync.Mutex`): here and in `sync::Mutex`.
pub(crate) const ACTIVE_SPIN: u32 = 4;

/// Pause hints per spin round (Go's `active_spin_cnt`).
const ACTIVE_SPIN_CNT: u32 = 30;

/// One spin round: `ACTIVE_SPIN_CNT` pause hints (Go's `procyield`).
#[inline]
pub(crate) fn procyield() {
    for _ in 0..ACTIVE_SPIN_CNT {
        std::hint::spin_loop();
    }
}

/// A spin-then-yield lock around a `T`.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time
// (Acquire on lock pairs with Release on unlock), so T: Send suffices.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> SpinLock<T> {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Locks; see the module docs. Like every runtime lock, a goroutine
    /// must hold it only inside a no-preempt region.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        #[cfg(debug_assertions)]
        if let Some(g) = crate::sched::current_g() {
            assert!(
                g.no_preempt.load(Ordering::Relaxed) > 0,
                "gosched internal error: a runtime lock taken by a preemptible goroutine"
            );
        }
        // Acquire pairs with the Release store in SpinGuard::drop.
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    fn lock_slow(&self) {
        let mut spins = 0;
        loop {
            // Test before test-and-set, backing off between looks.
            while self.locked.load(Ordering::Relaxed) {
                if spins < ACTIVE_SPIN {
                    spins += 1;
                    procyield();
                } else {
                    std::thread::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Access to a `SpinLock`'s value; unlocks on drop.
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // Pairs with the Acquire in `lock`.
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_across_threads() {
        let l = Arc::new(SpinLock::new(0u64));
        let ts: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        let mut g = l.lock();
                        let v = std::hint::black_box(*g);
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(*l.lock(), 400_000);
    }
}
