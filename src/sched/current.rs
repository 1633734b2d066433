//! Which M and which goroutine the caller runs on: migration-safe lookups
//! for runtime code, and async-signal-safe ones for signal handlers.

use std::cell::Cell;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering;

use super::*;
use crate::arch;
use crate::sched::g::{GRef, G};

thread_local! {
    /// The M this thread is (null on a plain thread). Set once when the M
    /// starts. Read it only through `cur_m` (see there).
    static CUR_M: Cell<*const M> = const { Cell::new(ptr::null()) };
}

/// Marks the calling thread as M `m` (null: a plain thread again). `mstart`
/// calls it after pointing the thread's base register at `m`, and before
/// tearing that down, so a non-null `CUR_M` always means the register is
/// valid (`current_g` relies on the order).
pub(super) fn set_cur_m(m: *const M) {
    CUR_M.with(|c| c.set(m));
}

/// The calling thread's M, or null on a plain thread.
///
/// The M comes from the thread-base-relative `M::this`, not from `CUR_M`: LLVM may
/// keep a thread-local's address in a register across a call, and a
/// goroutine can resume on another thread after any switch (see
/// `current_g`); the thread-local only tells plain threads from Ms.
#[inline]
pub(crate) fn cur_m() -> *const M {
    if !on_m() {
        return ptr::null();
    }
    this_m()
}

/// Is the calling thread an M? (A thread-local: the answer never changes
/// for a thread.)
///
/// Never inlined: inlined into a goroutine's loop, LLVM computed the
/// thread-local's address once, before the loop, and kept reading that
/// address after the goroutine moved to another thread at a yield; once
/// the first thread had exited (`Runtime` drop), the read hit its freed
/// TLS block and said "not an M" to a goroutine on a live one (`spawn`
/// then panicked "called outside a goroutine"; release builds, 1-7 times
/// in 40 drops of a spawning runtime). A call computes the address from
/// the thread running it, every time.
#[inline(never)]
fn on_m() -> bool {
    !CUR_M.with(|c| c.get()).is_null()
}

/// The calling M, for code that runs on an M (a goroutine or g0): one
/// thread-base-relative load (see `current_g`).
#[inline]
pub(crate) fn this_m() -> *const M {
    // SAFETY: callers run on an M thread, whose thread base `mstart` pointed
    // at its live M; `this` is a pointer-sized field of M.
    unsafe { arch::thread_base_word::<{ std::mem::offset_of!(M, this) }>() as *const M }
}

/// The running goroutine, if the caller is one.
///
/// Migration-safe and cheap (every runtime entry point calls it, through
/// `NoPreempt`). Asynchronous preemption in Migrate mode may stop us
/// between any two instructions and resume us on another thread, so "read
/// this thread's M, then read its `curg`" could read an M that now runs
/// some other goroutine. Instead each M points its thread's base register at
/// itself (`mstart`), and `curg` is read thread-base-relative: one instruction,
/// which reads the `curg` of whichever thread executes it, and that is
/// the thread running us. (Go keeps `g` in a register for the same
/// reason; it never async-preempts runtime code at all, which we cannot
/// promise for the std functions our runtime code calls.)
///
/// The thread-local read before it only tells a plain thread from an M
/// (`on_m`, a call, so it reads the running thread's).
#[inline]
pub(crate) fn current_g() -> Option<GRef> {
    if !on_m() {
        // A plain thread: goroutines run only on Ms.
        return None;
    }
    // SAFETY: we run on an M thread (CUR_M is set only on Ms, after
    // `mstart` pointed the thread base at the live M, and cleared before it is reset);
    // `curg` is a pointer-sized atomic inside M.
    let g = unsafe { arch::thread_base_word::<{ std::mem::offset_of!(M, curg) }>() };
    let g = NonNull::new(g as *mut G).map(GRef);
    #[cfg(debug_assertions)]
    check_current_g(g);
    g
}

/// Debug builds: `current_g`'s answer must agree with the stack we run on:
/// a goroutine's stack holds our stack pointer, and on g0 the stack
/// pointer is outside every goroutine stack. Catches a `curg` that is
/// not (or not yet) the running goroutine. A signal handler (a profiler's,
/// the application's SIGURG handler we forward to) runs on the thread's
/// alternate stack, or interrupts g0 mid-switch with `curg` set: off
/// `curg`'s stack, only another goroutine's stack is an error (the check
/// aborted every run of a program asking `current_id` from a SIGPROF
/// handler).
#[cfg(debug_assertions)]
#[inline(never)]
fn check_current_g(g: Option<GRef>) {
    let probe = 0u8;
    let sp = std::hint::black_box(&probe) as *const u8 as usize;
    match g {
        Some(g) => {
            let on_g =
                g.stack_lo.load(Ordering::Relaxed) <= sp && sp < g.stack_hi.load(Ordering::Relaxed);
            // SAFETY: only Ms get here (see `current_g`); `cur_m` is this
            // thread's live M for the rest of this check (no switch).
            let m = unsafe { &*cur_m() };
            assert!(
                on_g || !m.shared_ref().stacks.contains(sp),
                "gosched internal error: curg is not the running goroutine"
            );
        }
        None => {
            // SAFETY: only Ms get here (see `current_g`); on g0 there is no
            // migration, so `cur_m` is this thread's live M.
            let m = unsafe { &*cur_m() };
            assert!(
                !m.shared_ref().stacks.contains(sp),
                "gosched internal error: a goroutine runs while curg is null"
            );
        }
    }
}

/// Goroutine id for the stack-overflow report. Async-signal-safe: a TLS
/// read and an atomic load.
pub(crate) fn signal_safe_current_gid() -> u64 {
    let m = CUR_M.with(|c| c.get());
    if m.is_null() {
        return 0;
    }
    // SAFETY: this thread's live M; curg is null or a live G.
    unsafe {
        let g = (*m).curg.load(Ordering::Relaxed);
        if g.is_null() {
            0
        } else {
            (*g).id.load(Ordering::Relaxed)
        }
    }
}

/// The M of the calling thread, for the signal handler.
#[cfg(feature = "preempt-signal")]
pub(crate) fn signal_safe_current_m() -> *const M {
    CUR_M.with(|c| c.get())
}

/// Runs `f` with the runtime of the calling goroutine (None elsewhere).
pub(crate) fn with_current_shared<R>(f: impl FnOnce(&Shared) -> R) -> Option<R> {
    let g = current_g()?;
    // SAFETY: a running goroutine's runtime is alive.
    Some(f(unsafe { &*g.shared.load(Ordering::Acquire) }))
}
