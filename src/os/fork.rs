//! Detecting a `fork()`ed child.
//!
//! `fork` copies only the calling thread: in the child no M, no sysmon and
//! no timer thread exists, the runtime's queues and locks are frozen
//! mid-use, and any thread that held one of our mutexes at the fork holds
//! it forever. A goroutine spawned there would never run, a `join` or
//! `block_on` would wait forever, silently. Go does not support using its
//! runtime after a bare fork either (`syscall.ForkExec` execs at once).
//! So a process-wide `pthread_atfork` child handler sets a flag, and every
//! entry point that needs the runtime's threads (spawn, `block_on`, `join`,
//! parking a goroutine, making one runnable, building a runtime) checks it
//! and panics with a message that says so (parking a goroutine, where
//! unwinding could leave a wait entry dangling, prints it and aborts, as
//! does any other switch to the scheduler: `yield_now`, a cooperative
//! preemption at the end of a no-preempt region).
//! Fork then exec (what `std::process::Command` does) is fine: the child
//! replaces the image before it calls anything of ours; the handler only
//! stores a flag, which is async-signal-safe.
//!
//! Rejected: comparing `getpid()` with the pid at startup (a system call on
//! every check: glibc no longer caches the pid).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

/// Set in a child of `fork` (by the atfork child handler), never cleared.
static FORKED: AtomicBool = AtomicBool::new(false);

/// The panic message of an entry point called in a forked child.
pub(crate) const FORKED_MSG: &str =
    "gosched: the runtime cannot be used in a fork()ed child process \
     (fork copies only the calling thread: no worker threads or sysmon exist there); \
     fork then exec (std::process::Command) is fine";

extern "C" fn on_fork_child() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Installs the atfork handler (once per process; before any runtime
/// exists, so every fork after that is seen).
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a child handler that only stores to an atomic
        // (async-signal-safe, as a handler run in a forked child must be);
        // the prepare and parent handlers are none.
        let r = unsafe { libc::pthread_atfork(None, None, Some(on_fork_child)) };
        // Only ENOMEM is possible; then forks go undetected (as before).
        debug_assert_eq!(r, 0, "pthread_atfork failed");
    });
}

/// This process's id, read once: glibc no longer caches it, and `tgkill`
/// needs it for every preemption signal (a `getpid` system call each).
/// A forked child reads its own afresh (never the parent's, which would
/// aim its signals at the parent's threads).
#[cfg(feature = "preempt-signal")]
pub(crate) fn pid() -> i32 {
    use std::sync::atomic::AtomicI32;
    static PID: AtomicI32 = AtomicI32::new(0);
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 && !forked() {
        return cached;
    }
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    if !forked() {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

/// Whether this process is a forked child of one that installed the
/// handler.
#[inline]
pub(crate) fn forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}

/// In a forked child: prints [`FORKED_MSG`] and aborts. For `gopark`,
/// where unwinding is not an option: the caller may have linked a wait
/// entry on its stack into a channel's queue, which a panic would leave
/// dangling.
#[inline]
pub(crate) fn check_or_abort() {
    if forked() {
        forked_abort();
    }
}

#[cold]
#[inline(never)]
fn forked_abort() -> ! {
    let msg = format!("fatal error: {FORKED_MSG}\n");
    // SAFETY: writes our own buffer to fd 2 (a raw write: std's stderr
    // lock may have been held by a thread that does not exist here).
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    std::process::abort()
}

/// Panics with [`FORKED_MSG`] in a forked child.
#[inline]
#[track_caller]
pub(crate) fn check() {
    if forked() {
        forked_panic();
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn forked_panic() -> ! {
    panic!("{FORKED_MSG}")
}

#[cfg(all(test, feature = "preempt-signal"))]
mod pid_tests {
    /// The cached pid is this process's, on every call.
    #[test]
    fn pid_is_this_process() {
        assert_eq!(super::pid() as u32, std::process::id());
        assert_eq!(super::pid() as u32, std::process::id());
    }
}
