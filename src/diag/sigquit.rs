//! A goroutine dump on SIGQUIT, as Go prints one (`GOSCHED_SIGQUITDUMP=1`,
//! off by default: SIGQUIT belongs to the application, and its default
//! action, a core dump, is what most programs expect).
//!
//! When a runtime is built with the dump on, the first such build in the
//! process installs a SIGQUIT handler and starts one process-wide thread,
//! `gosched-sigquit`, blocked on a pipe. The handler only writes a byte to
//! the pipe (`write(2)` is async-signal-safe; the dump needs locks and
//! allocation, which a handler must not take). The thread then prints
//! `SIGQUIT: quit` and every goroutine of every live runtime that asked for
//! it, and exits the process with status 2, as Go does.
//!
//! # The previous action
//!
//! The action SIGQUIT had when the handler is installed is kept and
//! honoured:
//!
//! - `SIG_DFL` (the usual case): the dump replaces the default action.
//! - A handler (the application's, installed before the first runtime with
//!   the dump): ours calls it first, with the kernel's arguments, then asks
//!   for the dump. A handler that exits the process itself never sees the
//!   dump. It is called as a function: its own `sa_mask` and flags other
//!   than `SA_SIGINFO` do not apply.
//! - `SIG_IGN` (inherited from whoever started the process, as `nohup`-style
//!   launchers and supervisors do, or set by the program): SIGQUIT stays
//!   ignored and nothing is installed, even with
//!   `Builder::dump_on_sigquit(true)` (a program-wide default written into
//!   the code cannot know how the process was started; Go likewise keeps an
//!   inherited `SIG_IGN` for SIGHUP and SIGINT). Only the person running the
//!   program overrides it, by setting `GOSCHED_SIGQUITDUMP=1` in the
//!   environment: then SIGQUIT dumps.
//!
//! The decision is made once, at the first install; an action set later
//! for SIGQUIT replaces ours, as with any handler.
//!
//! # Forked children
//!
//! A child forked without exec inherits the handler and the pipe's write
//! end (exec resets the handler, and the pipe is close-on-exec). So the
//! handler compares `getpid()` with the pid recorded at install: in any
//! other process it never touches the pipe (the parent's thread would dump
//! the parent and exit it) and acts as if gosched were not there: it calls
//! the previous handler, ignores the signal if it was ignored, or restores
//! `SIG_DFL` and raises the signal again, so the child dies of SIGQUIT.
//!
//! # The deadlock check
//!
//! The deadlock check accounts for every thread of the process
//! (`Shared::deadlocked`). `gosched-sigquit` is counted among the threads
//! parked for good (`THREADS_PARKED`) for as long as it waits: blocked on a
//! pipe that only a signal writes to, it can never wake a goroutine, and
//! when it wakes it ends the process.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, Weak};

use crate::sched::{RuntimeLock, Shared};

/// Write end of the pipe, for the handler (-1 until installed).
static PIPE_W: AtomicI32 = AtomicI32::new(-1);

/// The process that installed the handler (0 until installed).
static PID: AtomicI32 = AtomicI32::new(0);

/// The action SIGQUIT had before ours: its `sa_sigaction` word (a handler,
/// `SIG_DFL` or `SIG_IGN`) and `sa_flags`, read by the handler.
static PREV_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicI32 = AtomicI32::new(0);

/// Runtimes that asked for the dump (dropped ones fail to upgrade).
static RUNTIMES: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

static INSTALL: Once = Once::new();

/// The knob that overrides an ignored SIGQUIT (see the module docs).
const ENV: &str = "GOSCHED_SIGQUITDUMP";

/// Registers `sh` for SIGQUIT dumps, installing the handler and the
/// thread on first use. Errors (no pipe, no thread) leave SIGQUIT alone,
/// as does a SIGQUIT ignored without the environment's say-so.
pub(crate) fn register(sh: &std::sync::Arc<Shared>) {
    {
        let mut all = RUNTIMES.rt_lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(std::sync::Arc::downgrade(sh));
    }
    INSTALL.call_once(install);
}

/// Was the dump asked for in the environment (`GOSCHED_SIGQUITDUMP=1`, as
/// `Builder::build` reads it)?
fn asked_in_env() -> bool {
    std::env::var(ENV).is_ok_and(|v| v.trim() == "1")
}

/// Records `prev` as the action to honour (never ourselves).
fn set_prev(prev: &libc::sigaction) {
    let h = if prev.sa_sigaction == on_sigquit as *const () as usize {
        libc::SIG_DFL
    } else {
        prev.sa_sigaction
    };
    PREV_HANDLER.store(h, Ordering::Release);
    PREV_FLAGS.store(prev.sa_flags, Ordering::Release);
}

fn install() {
    let mut prev = crate::os::signal::current_action(libc::SIGQUIT);
    if prev.sa_sigaction == libc::SIG_IGN && !asked_in_env() {
        return;
    }
    set_prev(&prev);
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [r, w] = fds;
    // The handler never blocks, even if SIGQUITs fill the pipe before the
    // thread reads (one byte is all it needs). Best effort.
    // SAFETY: fcntl on a descriptor we just created.
    unsafe {
        let fl = libc::fcntl(w, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(w, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    // Counted before it exists: a deadlock check in between sees one thread
    // fewer than it expects and holds back that look.
    crate::sched::g::THREADS_PARKED.fetch_add(1, Ordering::SeqCst);
    let started = std::thread::Builder::new()
        .name("gosched-sigquit".into())
        .spawn(move || wait_and_dump(r));
    if started.is_err() {
        crate::sched::g::THREADS_PARKED.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: our own descriptors, used by nobody.
        unsafe {
            libc::close(r);
            libc::close(w);
        }
        return;
    }
    // SAFETY: getpid has no preconditions.
    PID.store(unsafe { libc::getpid() }, Ordering::Release);
    PIPE_W.store(w, Ordering::Release);
    // SAFETY: `prev` is ours to write; the handler is async-signal-safe
    // (getpid, write, sigaction, raise, and the previous handler, which was
    // installed as one). SA_RESTART so that the interrupted thread's system
    // calls go on; SA_ONSTACK so that it runs on an M's alternate stack.
    unsafe {
        crate::os::signal::swap_action(
            libc::SIGQUIT,
            Some(&crate::os::signal::action(
                on_sigquit,
                libc::SA_RESTART | libc::SA_ONSTACK,
            )),
            &mut prev,
        );
    }
    // The action we really replaced, should it have changed since we
    // read it (a signal in between honours the one read first).
    set_prev(&prev);
}

extern "C" fn on_sigquit(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: errno is saved and restored around the whole handler, as a
    // handler must; __errno_location returns this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    let h = PREV_HANDLER.load(Ordering::Acquire);
    let flags = PREV_FLAGS.load(Ordering::Acquire);
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    if unsafe { libc::getpid() } != PID.load(Ordering::Acquire) {
        // A child forked without exec: as if gosched were not here.
        if h == libc::SIG_DFL {
            let dfl = crate::os::signal::zeroed_sigaction();
            // SAFETY: sigaction and raise are async-signal-safe; SIGQUIT is
            // blocked while we run (no SA_NODEFER), so the raised one is
            // delivered, with the default action, once we return.
            unsafe {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
                libc::raise(sig);
            }
        } else {
            crate::os::signal::forward(h, flags, sig, info, uc);
        }
    } else {
        crate::os::signal::forward(h, flags, sig, info, uc);
        let w = PIPE_W.load(Ordering::Acquire);
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; `byte` outlives the call.
        unsafe { libc::write(w, (&byte as *const u8).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn wait_and_dump(r: libc::c_int) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into `byte`.
        let n = unsafe { libc::read(r, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        let interrupted =
            n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        if !interrupted {
            // End of file or an error: no dump will ever come; this thread
            // is no longer parked for good.
            crate::sched::g::THREADS_PARKED.fetch_sub(1, Ordering::SeqCst);
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
