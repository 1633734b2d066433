//! No-preempt regions (safe-point rule 2), the runtime's locks that must
//! be taken inside one, and the cooperative preemption check.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::sched::g::GRef;
use crate::sched::*;

/// A no-preempt region of the calling goroutine (no-op on plain threads).
/// Runtime entry points hold one while they touch shared state, so the
/// SIGURG handler refuses to interrupt them (safe-point rule 2).
///
/// Zero-sized: `drop` finds the goroutine again with `current_g` (two
/// loads) rather than carrying it, which keeps guards that embed a
/// `NoPreempt` one register wide (moving a two-word guard through the
/// stack cost a store-forwarding stall on every channel operation).
pub(crate) struct NoPreempt {
    /// Not `Send`: the region belongs to the goroutine (or thread) that
    /// entered it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl NoPreempt {
    #[inline]
    pub(crate) fn enter() -> NoPreempt {
        if let Some(g) = current_g() {
            raise_no_preempt(g);
        }
        NoPreempt {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for NoPreempt {
    #[inline]
    fn drop(&mut self) {
        // The same goroutine as at `enter`, on whichever M it runs now
        // (a region may span a park), or None on the same plain thread.
        if let Some(g) = current_g() {
            if lower_no_preempt(g) == 0 && g.preempt.load(Ordering::Relaxed) {
                preempt_check();
            }
        }
    }
}

/// Locking for the runtime's own mutexes. A goroutine must hold them only
/// inside a no-preempt region: g0 and sysmon take the same locks, and a
/// goroutine preempted while holding one (in ThreadAffine mode its thread
/// then waits for a P) can stall every thread of the runtime. So the guard
/// carries its own region ([`RtGuard`]): a caller's `NoPreempt` local could
/// end before a guard that lives on as a temporary of a block's tail
/// expression (edition 2021 drops those after the block's locals), which
/// left `OnceLock::finish`, `Semaphore::available` and `Stats` preemptible
/// with the lock held. Poisoning is ignored (the runtime's critical
/// sections do not panic half-way).
pub(crate) trait RuntimeLock<T> {
    /// Locks the mutex; see the trait docs.
    fn rt_lock(&self) -> RtGuard<'_, T>;
    /// Locks the mutex if no other thread holds it.
    fn rt_try_lock(&self) -> Option<RtGuard<'_, T>>;
}

/// A runtime mutex's guard and the no-preempt region it is held in. Fields
/// drop in order: the lock is released before the region ends (and before
/// any cooperative preemption the region's end performs).
pub(crate) struct RtGuard<'a, T> {
    guard: std::sync::MutexGuard<'a, T>,
    _np: NoPreempt,
}

impl<T> RuntimeLock<T> for Mutex<T> {
    #[inline]
    fn rt_lock(&self) -> RtGuard<'_, T> {
        let _np = NoPreempt::enter();
        RtGuard {
            guard: self
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            _np,
        }
    }

    #[inline]
    fn rt_try_lock(&self) -> Option<RtGuard<'_, T>> {
        let _np = NoPreempt::enter();
        let guard = match self.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(RtGuard { guard, _np })
    }
}

impl<T> std::ops::Deref for RtGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for RtGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// If sysmon asked the running goroutine to yield, yield (cooperative
/// preemption; Go's stack-guard check in every function prologue).
#[inline]
pub(crate) fn preempt_check() {
    if let Some(g) = current_g() {
        if g.preempt.load(Ordering::Relaxed) && g.no_preempt.load(Ordering::Relaxed) == 0 {
            g.preempt.store(false, Ordering::Relaxed);
            switch_to_g0(g, Reason::CoopPreempt);
        }
    }
}

/// Raises the goroutine's no-preempt count. Only the goroutine itself
/// writes the count, and the signal handler that reads it runs on the same
/// thread, so a plain load and store suffice (no locked instruction): a
/// signal between them sees the old value, which is still true at that
/// instant. The compiler fence keeps the region's code after the store.
#[inline]
pub(crate) fn raise_no_preempt(g: GRef) {
    g.no_preempt
        .store(g.no_preempt.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Lowers the count (see `raise_no_preempt`); returns the new value.
#[inline]
pub(crate) fn lower_no_preempt(g: GRef) -> u32 {
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let n = g.no_preempt.load(Ordering::Relaxed) - 1;
    g.no_preempt.store(n, Ordering::Relaxed);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A runtime lock taken in a block's tail expression after the caller's
    /// own region (`{ let _np = NoPreempt::enter(); m.rt_lock().len() }`,
    /// the shape `Semaphore::available` had) is released before the
    /// goroutine can be preempted: the guard, a temporary, outlives the
    /// caller's `_np`, and a pending cooperative request used to switch
    /// out right there, lock held, so the next goroutine on the thread
    /// found it locked (a blocking `rt_lock` would have waited for ever).
    #[test]
    fn a_runtime_lock_in_a_tail_expression_is_released_before_a_preemption() {
        static LOCK: Mutex<Vec<u32>> = Mutex::new(Vec::new());
        static HELD_ACROSS: AtomicBool = AtomicBool::new(false);
        let rt = crate::Builder::new().procs(1).build().unwrap();
        rt.block_on(|| {
            // Queued behind us on our only P: runs when we switch out.
            let other = crate::spawn(|| {
                if LOCK.try_lock().is_err() {
                    HELD_ACROSS.store(true, Ordering::Relaxed);
                }
            });
            // As sysmon would: ask this goroutine to yield.
            current_g().unwrap().preempt.store(true, Ordering::Relaxed);
            let len = {
                let _np = NoPreempt::enter();
                LOCK.rt_lock().len()
            };
            assert_eq!(len, 0);
            other.join().unwrap();
        });
        assert!(
            !HELD_ACROSS.load(Ordering::Relaxed),
            "preempted with a runtime lock held"
        );
    }
}
