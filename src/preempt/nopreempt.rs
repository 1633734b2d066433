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
/// then waits for a P) can stall every thread of the runtime. Debug builds
/// check the rule at every acquisition; poisoning is ignored (the runtime's
/// critical sections do not panic half-way).
pub(crate) trait RuntimeLock<T> {
    /// Locks the mutex; see the trait docs.
    fn rt_lock(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> RuntimeLock<T> for Mutex<T> {
    #[inline]
    fn rt_lock(&self) -> std::sync::MutexGuard<'_, T> {
        #[cfg(debug_assertions)]
        if let Some(g) = current_g() {
            assert!(
                g.no_preempt.load(Ordering::Relaxed) > 0,
                "gosched internal error: a runtime lock taken by a preemptible goroutine"
            );
        }
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
