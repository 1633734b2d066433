//! The operating system: futex notes, asymmetric fences, fork detection,
//! signal plumbing (alternate stacks, chaining to a previous handler,
//! async-signal-safe output), CPU affinity and other threads' CPU time. Linux only; nothing here knows
//! about goroutines.

pub(crate) mod affinity;
pub(crate) mod cputime;
pub(crate) mod fork;
pub(crate) mod membarrier;
pub(crate) mod note;
pub(crate) mod signal;
pub(crate) mod slice;
#[cfg(feature = "preempt-signal")]
pub(crate) mod timer;
