//! The M (a worker thread) and why its goroutine switched to g0.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::*;
use crate::os::note::Note;
use crate::sched::g::{GRef, G};

/// Why a goroutine switched to g0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    None,
    Yield,
    Park,
    Exit,
    CoopPreempt,
    AsyncPreempt,
    /// The goroutine lost its P in `blocking()` and needs one back.
    ExitSyscall,
}

/// A worker thread.
pub(crate) struct M {
    pub(crate) id: usize,
    pub(crate) shared: *const Shared,
    /// Kernel thread id, for tgkill and /proc. Written once at start.
    pub(crate) tid: AtomicI32,
    pub(crate) note: Note,
    /// A P handed to this M (index + 1; 0 = none). Written by the M that
    /// hands it off before `note.wake()` (Release via the note), taken by
    /// this M after waking.
    pub(crate) nextp: AtomicUsize,
    /// A goroutine handed to this M with `nextp`, to run first (null =
    /// none): `stoplockedm` took it off the P to see which thread it needs
    /// (`Shared::startm_with`). Written with `nextp`, before it; taken by
    /// this M after it took the P.
    pub(crate) nextg: AtomicPtr<G>,
    /// Started as a spinning M (set with `nextp`, read after waking).
    pub(crate) spinning: AtomicBool,
    /// Another M restricted this M's thread to one CPU for a hand-off
    /// (`Shared::pin_to_this_cpu`); this M undoes it when it wakes.
    pub(crate) pinned: AtomicBool,
    /// This M's own CPU affinity, read when it started (owner thread); the
    /// mask `unpin` restores (an M parked with a goroutine locked by
    /// `lock_os_thread` restores the one its thread had when the goroutine
    /// switched out instead: `G0::unpin_locked`). None if it could not be
    /// read.
    pub(crate) cpu_mask: Cell<Option<libc::cpu_set_t>>,
    /// `cpu_mask` is known, so pinning this M can be undone, and allows
    /// several CPUs, so pinning it changes something (set once at start,
    /// read by the M that pins it).
    pub(crate) unpinnable: AtomicBool,
    /// A goroutine on this M holds a claim on its P (see "Ownership of a
    /// P"). Written only by this M's thread; read by sysmon's retake.
    pub(crate) claiming: AtomicBool,
    /// This M's own address, read thread-base-relative by `this_m`. Set in
    /// `mstart`.
    pub(crate) this: AtomicPtr<M>,
    /// The goroutine running on this M (null on g0). Written by this M;
    /// read by sysmon and this thread's signal handler.
    pub(crate) curg: AtomicPtr<G>,
    /// The goroutine locked to this M (owner thread only).
    pub(crate) locked_g: Cell<Option<GRef>>,
    /// Saved g0 stack pointer while a goroutine runs (owner thread).
    pub(crate) g0_sp: UnsafeCell<usize>,
    /// The P this M holds (owner thread).
    pub(crate) p: Cell<Option<usize>>,
    /// Set when this M takes a P: its next `execute` starts a fresh slice
    /// whatever the goroutine inherits (owner thread).
    pub(crate) new_p: Cell<bool>,
    /// The P a direct yield on this M claimed, for the goroutine it
    /// switches to (`requeue_yielder`; owner thread).
    pub(crate) yield_p: Cell<*const P>,
    /// Why the current goroutine switched to g0 (owner thread).
    pub(crate) reason: Cell<Reason>,
    /// 1 while a preemption signal is in flight (Go's signalPending): set
    /// by sysmon's CAS before tgkill, cleared by the handler. Also held
    /// (set by the same CAS) by a goroutine of this M for the whole of a
    /// `blocking()` call, so that no signal interrupts the call
    /// (`syscall::hold_signals`), and cleared when the call returns.
    #[cfg(feature = "preempt-signal")]
    pub(crate) signal_pending: AtomicBool,
    /// Bumped by the SIGURG handler on entry and again on its way out: odd
    /// while a handler runs on this thread. sysmon's watch for a signal
    /// that stays pending (`HandlerWatch`) tells a new signal, and a
    /// thread the kernel left waiting inside the handler (SIGURG is
    /// blocked there too), from one that never arrives.
    #[cfg(feature = "preempt-signal")]
    pub(crate) sigurg_seq: AtomicU64,
    /// Set by the SIGURG handler when it sends the goroutine to the
    /// trampoline, cleared by g0 once the goroutine has switched out
    /// (`G0::after`): a second signal in between (a request repeated by
    /// sysmon after the handler cleared the first) is refused (safe-point
    /// rule 2). Accepted, it nested a second trampoline call: the goroutine,
    /// resumed, finished the first one and was preempted again at once,
    /// outside any request. Only this thread writes it; sysmon reads it
    /// (`Shared::p_preempting`: a hint, not to repeat the request).
    #[cfg(feature = "preempt-signal")]
    pub(crate) preempting: AtomicBool,
    /// The kernel id of this M's slice timer (`preempt::slice_timer`),
    /// created the first time this M times a slice and deleted when its
    /// thread ends; negative: none (see `slice_timer`). Written by the
    /// owner thread, read by its signal handler.
    #[cfg(feature = "preempt-signal")]
    pub(crate) timer_id: AtomicI32,
    /// The P and `schedtick` of the slice the timer was last armed for,
    /// written before it is armed, read by this thread's signal handler.
    #[cfg(feature = "preempt-signal")]
    pub(crate) timer_p: AtomicUsize,
    #[cfg(feature = "preempt-signal")]
    pub(crate) timer_tick: AtomicU64,
    /// The timer is armed and has not fired (set by the owner when it
    /// arms it, cleared by the handler and by `disarm`).
    #[cfg(feature = "preempt-signal")]
    pub(crate) timer_armed: AtomicBool,
    /// Asynchronous preemption attempts the handler refused on this M.
    pub(crate) refused: AtomicU64,
    /// This M's runs of goroutines so far: g0 bumps it in `execute` before
    /// each switch to a goroutine, so it names the current run (never 0
    /// inside one). Written by the owner; read by a retake, sysmon and
    /// this thread's signal handler.
    pub(crate) runs: AtomicU64,
    /// The run (`runs`) whose P a retake took while its goroutine ran in
    /// user code (`Shared::retake` in `P_USER`: a blocked thread, a
    /// `set_procs` shrink): that goroutine goes on without a P until its
    /// next scheduling point, and sysmon signals the M until that run
    /// ends (`preempt::sysmon::preempt_pless`). 0: none. Set by the retake, cleared
    /// by sysmon.
    pub(crate) pless_run: AtomicU64,
    /// The signal mask this M runs goroutines with (safe-point rule 5).
    pub(crate) sigmask: UnsafeCell<libc::sigset_t>,
}

// SAFETY: Cell/UnsafeCell fields are touched only by the M's own thread
// (and its signal handler, which runs on that thread); the rest are atomics.
unsafe impl Sync for M {}
// SAFETY: as above.
unsafe impl Send for M {}

impl M {
    /// The runtime of this M (async-signal-safe: a plain read).
    pub(crate) fn shared_ref(&self) -> &Shared {
        // SAFETY: Shared outlives every M (the M threads hold an Arc).
        unsafe { &*self.shared }
    }

    pub(super) fn take_nextp(&self) -> Option<usize> {
        match self.nextp.swap(0, Ordering::Acquire) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// The goroutine handed over with our P, if any (after `take_nextp`,
    /// whose Acquire orders this read after the hand-off's writes).
    pub(super) fn take_nextg(&self) -> Option<GRef> {
        if self.nextg.load(Ordering::Relaxed).is_null() {
            return None;
        }
        std::ptr::NonNull::new(self.nextg.swap(std::ptr::null_mut(), Ordering::Relaxed)).map(GRef)
    }
}
