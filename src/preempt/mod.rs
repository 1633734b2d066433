//! Preemption: how a goroutine that has run too long is made to yield.
//!
//! # Cooperative (always built)
//!
//! sysmon (`sysmon.rs`, policy in the `gosched-sysmon` crate) watches each
//! P's time slice; when one runs past its quantum while others wait, it
//! sets the running goroutine's `preempt` flag (`Shared::preempt_p`). The
//! goroutine yields at its next cooperative point: every runtime call
//! (channel and sync operations, `spawn`, `sleep`, `yield_now`, I/O) and
//! `gosched::preempt_point()` check the flag (`nopreempt.rs`, which also
//! holds the no-preempt regions the runtime's internals run in). Wake-up
//! preemption (`sched::wakeup`) asks through the same flag. A loop that
//! makes no runtime call is never stopped this way.
//!
//! # Asynchronous (the `preempt-signal` feature, default on)
//!
//! `sigurg/` adds the signal: sysmon also sends the goroutine's thread
//! SIGURG, whose handler checks the safe-point rules and rewrites the
//! interrupted context to call the trampoline in `crate::arch`, which
//! yields; see `sigurg/mod.rs` (why a signal, who owns SIGURG) and
//! `sigurg/handler.rs` (the safe-point rules, the handler step by step).
//! A goroutine that used its whole previous slice gets its next one ended
//! without sysmon: its M arms a one-shot timer that sends the M itself
//! SIGURG at the quantum, and the handler makes sysmon's request
//! (`sigurg/slice_timer.rs`).
//!
//! # What building without `preempt-signal` removes
//!
//! `--no-default-features` builds none of the following (`cooperative.rs`
//! supplies the four entry points the rest of the crate calls, doing
//! nothing):
//!
//! - the SIGURG handler, its safe-point rules, context rewrite and
//!   forwarding to the application's handler (`sigurg/handler.rs`);
//! - installing SIGURG, unblocking it on each M, `tgkill` from sysmon, the
//!   shutdown and wake-up preemption signals, and sysmon's watch that
//!   re-installs the handler when an application replaced it
//!   (`sigurg/mod.rs`, `signal_m`, `HandlerWatch`);
//! - the libc/libm leaf-routine table (`sigurg/leaf/`);
//! - the trampoline assembly, the XSAVE size, the ucontext accessors, the
//!   kernel signal-frame scan used against `SA_NODEFER` handlers, and the
//!   DWARF numbers (`arch/x86_64/preempt.rs`), and the thread's
//!   alternate-stack record that scan reads (`os::signal`);
//! - slice timers (`sigurg/slice_timer.rs`, `os::timer`; `arm_slice_timer`,
//!   `disarm_slice_timer` and `release_slice_timer` do nothing here);
//! - `M::signal_pending` and `sched::async_preempted`.
//!
//! Kept in both builds: the cooperative flag and its checks, time slicing
//! at cooperative points, wake-up preemption's flag requests, sysmon itself
//! (it also hands off Ps blocked in system calls, polls the netpoller and
//! fires timers), the SIGSEGV stack-overflow report (with the per-M
//! alternate signal stack it runs on), the SIGQUIT dump and fork handling.
//! The public API is the same: `Builder::async_preempt(true)` fails to
//! build a runtime with an error naming the feature, `Stats` reports
//! `async_preempt: false` and its asynchronous-preemption counters read 0.

pub(crate) mod nopreempt;
pub(crate) mod sysmon;

#[cfg(not(feature = "preempt-signal"))]
mod cooperative;
#[cfg(feature = "preempt-signal")]
mod sigurg;

#[cfg(not(feature = "preempt-signal"))]
pub(crate) use cooperative::{
    arm_slice_timer, disarm_slice_timer, install, on_m_start, release_slice_timer, signal_m,
    HandlerWatch,
};
#[cfg(feature = "preempt-signal")]
pub(crate) use sigurg::{
    arm_slice_timer, async_preempt_yield, disarm_slice_timer, install, on_m_start,
    release_slice_timer, signal_m, HandlerWatch, NO_SLICE_TIMER,
};

/// Number of refusal reasons (indices into the refusal counters).
pub(crate) const REFUSAL_REASONS: usize = 7;

/// Why an asynchronous preemption was refused.
// Without the feature nothing refuses (the handler is not built): the
// counters read 0 and only the names and the starvation reasons are used.
#[cfg_attr(not(feature = "preempt-signal"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Refusal {
    /// Rule 1: the M was on its scheduler stack, or no preemption was asked.
    NotRequested = 0,
    /// Rule 2: inside a no-preempt region (runtime code or `no_preempt`).
    NoPreempt = 1,
    /// Rule 3: too close to the end of the goroutine stack, or no XSAVE.
    Stack = 2,
    /// Rule 4: in foreign code (libc, vDSO, another shared object).
    ForeignCode = 3,
    /// Rule 5: inside a signal handler (by the signal mask, or by the
    /// kernel's signal frame on the goroutine's stack).
    SigMask = 4,
    /// Asynchronous preemption is off for the M's runtime
    /// (`Builder::async_preempt(false)`, `GOSCHED_ASYNCPREEMPTOFF=1`): a
    /// signal that reached it anyway (another runtime's, or an application's
    /// SIGURG) only gets forwarded.
    AsyncOff = 5,
    /// ThreadAffine mode with as many Ms parked holding preempted
    /// goroutines as `max_threads` allows (`Shared::affine_parked_limit`):
    /// one more would need a thread the limit leaves to blocking calls.
    Threads = 6,
}

/// Names of the refusal reasons, by index.
pub(crate) const REFUSAL_NAMES: [&str; REFUSAL_REASONS] = [
    "not_requested",
    "no_preempt",
    "stack",
    "foreign_code",
    "sigmask",
    "async_off",
    "threads",
];

/// What each refusal reason means for a user, by index (the starvation
/// warning names the dominant one).
pub(crate) const REFUSAL_HELP: [&str; REFUSAL_REASONS] = [
    "no preemption was requested",
    "inside a no_preempt region or runtime code",
    "too close to the end of the goroutine stack",
    "inside code that is not Rust code of the main executable (libc other than its memory and string routines, C, C++ or an allocator linked into the executable, the loader, the vDSO, another shared object)",
    "inside a signal handler",
    "asynchronous preemption is off for this runtime",
    "ThreadAffine mode keeps as many preempted goroutines' threads parked as max_threads allows (raise max_threads)",
];
