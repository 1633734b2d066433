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
    if p.status
        .compare_exchange(user, sys, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        // Our P was already retaken (blocked-M hand-off): just run f.
        return f();
    }
    sh.in_blocking.fetch_add(1, Ordering::SeqCst);
    g.in_blocking.set(true);
    // Its slice timer's signal would interrupt the call.
    crate::preempt::disarm_slice_timer(m);
    sh.note_busy();
    struct Exit<'a> {
        g: GRef,
        m: &'a M,
        p: &'a P,
        sys: u64,
        user: u64,
    }
    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            let sh = self.m.shared_ref();
            self.g.in_blocking.set(false);
            sh.in_blocking.fetch_sub(1, Ordering::SeqCst);
            if self
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
    let _exit = Exit { g, m, p, sys, user };
    f()
}

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
    if n == 1 && !g.affine.get() && !g.unwinding.get() {
        let m = cur_m();
        g.locked_m.set(None);
        // SAFETY: as in `lock_os_thread`.
        unsafe { (*m).locked_g.set(None) };
    }
}
