//! Diagnostics: what a user sees when something is wrong or when they ask.
//!
//! - `schedtrace`: Go's `SCHED` lines (`GOSCHED_SCHEDTRACE=MS`, with
//!   `GOSCHED_SCHEDDETAIL=1` the per-P, per-M and per-G detail).
//! - `checkdead`: the deadlock check (all goroutines asleep, no thread that
//!   could wake one), Go's deadlock report, thread exhaustion, the goroutine
//!   dump.
//! - `sigquit`: Go's SIGQUIT behaviour (dump every goroutine, exit 2).
//! - `panic`: the panic hook that names the panicking goroutine.
//!
//! `Stats` (`crate::runtime`) is the programmatic view of the same counters.

mod checkdead;
pub(crate) mod panic;
mod schedtrace;
pub(crate) mod sigquit;
pub(crate) mod stats;

pub(crate) use self::checkdead::die;

/// Writes one line of a runtime message to stderr and ignores a failure.
/// `eprintln!` panics when stderr is closed (a program piped into `head`
/// whose pipe closed): on sysmon's thread that panic ended sysmon, and no
/// timer fired and no goroutine was preempted again (the program hung).
pub(crate) fn stderr_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().write_fmt(format_args!("{args}\n"));
}
