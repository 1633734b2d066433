//! System-call hand-off (`blocking`) and `lock_os_thread`: the two ways a
//! goroutine and its OS thread stay together.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use crate::sched::g::GRef;
use crate::sched::{
    cur_m, current_g, pstatus, switch_to_g0, NoPreempt, Reason, M, P, P_SYSCALL, P_USER,
};

/// `blocking(f)`: Go's entersyscall/exitsyscall around `f`.
///
/// 1. Enter: bump the P's syscalltick, record the start, and move the P from
///    USER(m) to SYSCALL(m). The goroutine stays in a no-preempt region for
///    the whole call (Go: `m.locks++`): the P is not its to yield.
/// 2. sysmon retakes the P (SYSCALL(m) -> HANDOFF, `handoffp`) after 20 µs
///    if other work waits, or after the quantum anyway.
/// 3. Exit: CAS SYSCALL(m) -> USER(m) and go on (the fast path); if the P
///    was retaken, switch to g0 with `ExitSyscall`: the goroutine is queued
///    and runs again when some M with a P picks it.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let Some(g) = current_g() else { return f() };
    if g.in_blocking.get() {
        // Nested: the outer call did all of it, and holds the signals.
        return f();
    }
    let _np = NoPreempt::enter();
    let m = cur_m();
    // SAFETY: we are a goroutine in a no-preempt region, so `m` is this
    // thread's M and stays so until `_np` drops.
    let m = unsafe { &*m };
    let sh = m.shared_ref();
    let Some(pi) = m.p.get() else { return f() };
    let p = &sh.ps[pi];
    p.syscall_start.store(sh.nanotime(), Ordering::Relaxed);
    p.syscalltick.fetch_add(1, Ordering::Release);
    let user = pstatus(m, P_USER);
    let sys = pstatus(m, P_SYSCALL);
    // Our P may have been retaken already (blocked-M hand-off, a
    // `set_procs` shrink): the call runs without one, protected from
    // signals all the same (sysmon signals a goroutine running without a
    // P), and the goroutine then waits for a P as after a retaken call.
    // It used to run `f` unprotected and go on without a P afterwards.
    let had_p = p
        .status
        .compare_exchange(user, sys, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok();
    sh.in_blocking.fetch_add(1, Ordering::SeqCst);
    g.in_blocking.set(true);
    // Its slice timer's signal would interrupt the call.
    crate::preempt::disarm_slice_timer(m);
    // So would anyone else's (Runtime drop's, a late sysmon's): none may
    // be sent to this M until `Exit` lets go.
    hold_signals(m);
    sh.note_busy();
    struct Exit<'a> {
        g: GRef,
        m: &'a M,
        p: &'a P,
        had_p: bool,
        sys: u64,
        user: u64,
    }
    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            let sh = self.m.shared_ref();
            // First: a goroutine that goes on running after the call must
            // be stoppable again (Runtime drop signals it until it yields).
            release_signals(self.m);
            self.g.in_blocking.set(false);
            sh.in_blocking.fetch_sub(1, Ordering::SeqCst);
            if !self.had_p
                || self
                    .p
                    .status
                    .compare_exchange(self.sys, self.user, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
            {
                // Retaken: queue ourselves and wait for a P (Go's exitsyscall0).
                switch_to_g0(self.g, Reason::ExitSyscall);
            }
        }
    }
    let _exit = Exit {
        g,
        m,
        p,
        had_p,
        sys,
        user,
    };
    f()
}

/// How long `hold_signals` waits for a preemption signal already in flight
/// to this M to arrive before it takes the flag anyway.
#[cfg(feature = "preempt-signal")]
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// Keeps preemption signals away from this M for a blocking call: Linux
/// does not restart `poll`, `ppoll`, `select`, `epoll_wait`, `nanosleep`,
/// `clock_nanosleep`, `sem_timedwait` or a socket call with a timeout
/// after a handler, even with `SA_RESTART`: they fail with `EINTR` (and
/// `sleep` returns early). Go never signals an M in a system call either.
///
/// Every sender (sysmon, wake-up preemption, `set_procs`, Runtime drop)
/// goes through `signal_m`, which sends only after its CAS of the M's
/// `signal_pending` from false to true. So the blocking goroutine takes
/// that flag itself, with the same CAS: once it holds it, no signal can be
/// sent to this M, whatever the sender saw of the P or the goroutine a
/// moment before (a check-then-signal race a separate "in blocking" flag
/// would leave open). If the CAS fails, a signal is in flight; the
/// goroutine waits, making system calls (on whose return the kernel
/// delivers a signal already sent), until the handler, here on this
/// thread, acknowledges it, and tries again.
///
/// The wait is bounded: a flag nobody will clear (SIGURG blocked on this
/// thread, or the signal taken by an application handler installed over
/// ours, until sysmon re-installs ours) must not stall the call. A blocked
/// SIGURG cannot interrupt the call anyway; in the other cases the flag
/// is taken after `IN_FLIGHT_WAIT`.
#[cfg(feature = "preempt-signal")]
fn hold_signals(m: &M) {
    let hold = || {
        // Pairs with `signal_m`'s CAS and the handler's Release store.
        m.signal_pending
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    };
    if hold() {
        return;
    }
    if sigurg_blocked() {
        m.signal_pending.store(true, Ordering::Release);
        return;
    }
    let start = std::time::Instant::now();
    while !hold() {
        if start.elapsed() > IN_FLIGHT_WAIT {
            m.signal_pending.store(true, Ordering::Release);
            return;
        }
        std::thread::yield_now();
    }
}

/// Is SIGURG blocked in this thread's signal mask?
#[cfg(feature = "preempt-signal")]
fn sigurg_blocked() -> bool {
    // SAFETY: sigset_t is plain data, filled in by pthread_sigmask.
    let mut cur: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a query (null new set) of this thread's mask into `cur`.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) };
    // SAFETY: `cur` is an initialised sigset_t.
    r == 0 && unsafe { libc::sigismember(&cur, libc::SIGURG) } == 1
}

/// Lets preemption signals reach this M again (end of a blocking call).
#[cfg(feature = "preempt-signal")]
fn release_signals(m: &M) {
    // Pairs with `signal_m`'s CAS.
    m.signal_pending.store(false, Ordering::Release);
}

/// No preemption signals without `preempt-signal`.
#[cfg(not(feature = "preempt-signal"))]
fn hold_signals(_m: &M) {}

/// No preemption signals without `preempt-signal`.
#[cfg(not(feature = "preempt-signal"))]
fn release_signals(_m: &M) {}

/// Go's LockOSThread for the calling goroutine.
pub(crate) fn lock_os_thread() {
    let Some(g) = current_g() else { return };
    let _np = NoPreempt::enter();
    let m = cur_m();
    g.lock_count.set(
        g.lock_count
            .get()
            .checked_add(1)
            .expect("gosched: lock_os_thread nested too deeply"),
    );
    // SAFETY: in a no-preempt region `m` is this thread's M and stays so.
    let mm = unsafe { &*m };
    g.locked_m.set(Some(NonNull::from(mm)));
    mm.locked_g.set(Some(g));
}

/// Go's UnlockOSThread for the calling goroutine.
pub(crate) fn unlock_os_thread() {
    let Some(g) = current_g() else { return };
    let _np = NoPreempt::enter();
    let n = g.lock_count.get();
    if n == 0 {
        return;
    }
    g.lock_count.set(n - 1);
    if n == 1 && !g.affine.load(Ordering::Relaxed) && !g.unwinding.get() {
        let m = cur_m();
        g.locked_m.set(None);
        // SAFETY: as in `lock_os_thread`.
        unsafe { (*m).locked_g.set(None) };
    }
}
