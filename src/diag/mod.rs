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
/// Formatted first, then written in one piece by `write_stderr`.
pub(crate) fn stderr_line(args: std::fmt::Arguments<'_>) {
    let mut line = std::fmt::format(args);
    line.push('\n');
    write_stderr(line.as_bytes());
}

/// Writes `bytes` to file descriptor 2 with `write(2)` (retried after
/// `EINTR` and short writes) and ignores a failure. Not through std's
/// `Stderr`: its lock may belong to a goroutine preempted inside
/// `eprintln!`, whose thread, in ThreadAffine mode, is parked until the
/// goroutine gets a P again. sysmon waiting for it there preempted nobody
/// again: beside a call-free loop on the only P, the holder never ran and
/// the process hung with `GOSCHED_SCHEDTRACE=1` (10 runs of 10). The same
/// holds for the scheduler (g0) and for fatal reports. std's stderr is
/// unbuffered, so nothing written through it waits to be flushed first.
/// Async-signal-safe (a system call and an errno read): signal handlers'
/// messages (`os::signal::SigBuf`) are written with it too.
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice of `bytes.len()` bytes.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return;
        }
    }
}
