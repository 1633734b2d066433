//! A goroutine dump on SIGQUIT, as Go prints one (`GOSCHED_SIGQUITDUMP=1`,
//! off by default: SIGQUIT belongs to the application, and its default
//! action, a core dump, is what most programs expect).
//!
//! When a runtime is built with the knob on, the first such build in the
//! process installs a SIGQUIT handler (the previous action is saved) and
//! starts one process-wide thread, `gosched-sigquit`, blocked on a pipe.
//! The handler only writes a byte to the pipe (`write(2)` is
//! async-signal-safe; the dump needs locks and allocation, which a handler
//! must not take). The thread then prints `SIGQUIT: quit` and every
//! goroutine of every live runtime that asked for it, and exits the process
//! with status 2, as Go does.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once, Weak};

use crate::sched::{RuntimeLock, Shared};

/// Write end of the pipe, for the handler (-1 until installed).
static PIPE_W: AtomicI32 = AtomicI32::new(-1);

/// Runtimes that asked for the dump (dropped ones fail to upgrade).
static RUNTIMES: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

static INSTALL: Once = Once::new();

/// Registers `sh` for SIGQUIT dumps, installing the handler and the
/// thread on first use. Errors (no pipe, no thread) leave SIGQUIT alone.
pub(crate) fn register(sh: &std::sync::Arc<Shared>) {
    {
        let mut all = RUNTIMES.rt_lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(std::sync::Arc::downgrade(sh));
    }
    INSTALL.call_once(install);
}

fn install() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [r, w] = fds;
    let started = std::thread::Builder::new()
        .name("gosched-sigquit".into())
        .spawn(move || wait_and_dump(r));
    if started.is_err() {
        return;
    }
    PIPE_W.store(w, Ordering::Release);
    let mut prev = crate::os::signal::current_action(libc::SIGQUIT);
    // SAFETY: `prev` is ours to write; the handler only calls write(2) on
    // a descriptor it loads atomically; SA_RESTART so that the interrupted
    // thread's system calls go on.
    unsafe {
        crate::os::signal::swap_action(
            libc::SIGQUIT,
            Some(&crate::os::signal::action(on_sigquit, libc::SA_RESTART)),
            &mut prev,
        );
    }
}

extern "C" fn on_sigquit(_sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let w = PIPE_W.load(Ordering::Acquire);
    let byte = 1u8;
    // SAFETY: write(2) is async-signal-safe; `byte` outlives the call. errno
    // is saved and restored around it, as a handler must.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(w, (&byte as *const u8).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

fn wait_and_dump(r: libc::c_int) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into `byte`.
        let n = unsafe { libc::read(r, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n == 0 {
            return;
        }
    }
    let mut out = String::from("SIGQUIT: quit\n");
    let live: Vec<_> = RUNTIMES
        .rt_lock()
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for sh in live {
        out.push_str(&sh.goroutine_dump());
    }
    crate::diag::die(&out)
}
