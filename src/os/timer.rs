//! Per-thread one-shot POSIX timers that signal their own thread
//! (`timer_create` with `SIGEV_THREAD_ID`): the slice timers of the Ms (see
//! `preempt::sigurg::slice_timer`).
//!
//! The kernel's high-resolution timer interrupt sends the signal straight
//! to the thread: no other thread has to be scheduled for it.
//!
//! Raw system calls on the kernel's timer ids (small integers), not libc's
//! `timer_t` wrappers: the id fits an atomic the signal handler can read,
//! and arming is one system call, which is async-signal-safe.

use std::time::Duration;

/// `si_code` of a signal sent by a POSIX timer.
pub(crate) const SI_TIMER: libc::c_int = -2;

/// Creates a disarmed timer that, when it expires, sends `sig` to thread
/// `tid` of this process with `si_value.sival_ptr == token`. Returns its
/// kernel id (never negative), or None where the kernel refuses (no
/// memory, or the user's `RLIMIT_SIGPENDING` reached: every timer holds a
/// queued-signal slot).
pub(crate) fn create(tid: libc::pid_t, sig: libc::c_int, token: usize) -> Option<i32> {
    // SAFETY: sigevent is plain data; all-zero is a valid value.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_THREAD_ID;
    ev.sigev_signo = sig;
    ev.sigev_value = libc::sigval {
        sival_ptr: token as *mut libc::c_void,
    };
    ev.sigev_notify_thread_id = tid;
    let mut id: libc::c_int = -1;
    // SAFETY: `ev` and `id` are valid for the call; the kernel checks that
    // `tid` is a thread of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            libc::CLOCK_MONOTONIC,
            &mut ev as *mut libc::sigevent,
            &mut id as *mut libc::c_int,
        )
    };
    (r == 0 && id >= 0).then_some(id)
}

/// Arms timer `id` to expire once, `after` from now, replacing any earlier
/// expiry (a zero `after` is rounded up to 1 ns: zero would disarm it).
/// Async-signal-safe: one system call.
pub(crate) fn arm(id: i32, after: Duration) {
    settime(id, after.as_nanos().clamp(1, i64::MAX as u128) as i64);
}

/// Disarms timer `id` (a pending expiry is cancelled; a signal already
/// sent is not).
pub(crate) fn disarm(id: i32) {
    settime(id, 0);
}

/// `timer_settime` of a one-shot expiry `ns` from now (0: disarmed).
fn settime(id: i32, ns: i64) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid, normalised itimerspec; a null old value is
    // allowed; an id that is not a live timer of ours fails with EINVAL.
    unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &spec as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    };
}

/// Deletes timer `id` (a pending expiry is cancelled).
pub(crate) fn delete(id: i32) {
    // SAFETY: deleting a timer id of ours; a stale id fails with EINVAL.
    unsafe { libc::syscall(libc::SYS_timer_delete, id) };
}
