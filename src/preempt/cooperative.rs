//! The cooperative-only build (without the `preempt-signal` feature): the
//! entry points of `sigurg` that the scheduler, sysmon and the runtime call,
//! doing nothing. No SIGURG handler is installed and no signal is sent; a
//! goroutine yields only at its cooperative points (see the module docs of
//! `crate::preempt`).

use crate::sched::{Shared, M};

/// Nothing to install: no runtime has asynchronous preemption on
/// (`Builder::async_preempt(true)` fails to build without the feature).
pub(crate) fn install() {}

/// Nothing to unblock: an M's signal mask is left as the thread inherited it.
pub(crate) fn on_m_start() {}

/// Never signals: the caller has set the goroutine's cooperative flag, which
/// is the whole request here. Returns false (no signal sent).
pub(crate) fn signal_m(_m: &M) -> bool {
    false
}

/// No SIGURG handler to watch over.
pub(crate) struct HandlerWatch;

impl HandlerWatch {
    pub(crate) fn new() -> HandlerWatch {
        HandlerWatch
    }

    /// Does nothing.
    pub(crate) fn check(&mut self, _sh: &Shared, _now: u64) {}
}

/// No slice timers: `Config::slice_timer` is always false here.
pub(crate) fn arm_slice_timer(_m: &M, _p: usize, _tick: u64) {}

/// No slice timer to disarm.
pub(crate) fn disarm_slice_timer(_m: &M) {}

/// No slice timer to delete.
pub(crate) fn release_slice_timer(_m: &M) {}
