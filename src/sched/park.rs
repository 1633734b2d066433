//! Switching between a goroutine and its M's scheduler: park, ready,
//! yield, the first and last instructions of a goroutine.

use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use super::direct_yield::{requeue_yielder, yield_direct};
use super::*;
use crate::arch;
use crate::sched::g::{GRef, EMPTY, G, NOTIFIED};

/// Switches from goroutine `g` (the caller) to its M's scheduler, saying
/// why; returns when the goroutine is resumed, possibly on another M.
pub(crate) fn switch_to_g0(g: GRef, reason: Reason) {
    // In a fork()ed child the scheduler is a frozen copy: its g0 would run
    // goroutines queued in the parent (their side effects twice) or wait
    // for threads that do not exist (see `os::fork`).
    crate::os::fork::check_or_abort();
    raise_no_preempt(g);
    let m = this_m();
    // SAFETY: we are a goroutine, so `m` is this thread's live M and its
    // g0 is suspended in `execute`'s switch; `g.ctx` is ours to write.
    let arg = unsafe {
        (*m).reason.set(reason);
        arch::switch(g.ctx.get(), *(*m).g0_sp.get(), 0)
    };
    requeue_yielder(arg);
    lower_no_preempt(g);
}

/// Parks the calling goroutine (steps 1-2 of the handshake in `crate::sched::g`).
pub(crate) fn gopark(reason: &'static str) {
    let g = current_g().expect("gopark outside a goroutine");
    // Consume a pending token without switching.
    if g.park
        .compare_exchange(NOTIFIED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        return;
    }
    crate::os::fork::check_or_abort();
    g.wait_reason.set(reason);
    switch_to_g0(g, Reason::Park);
}

/// `yield_now` for the calling goroutine.
pub(crate) fn goyield(g: GRef) {
    // Before the direct hand-off too (see `switch_to_g0`).
    crate::os::fork::check_or_abort();
    if !yield_direct(g) {
        switch_to_g0(g, Reason::Yield);
    }
}

/// Called by the preemption trampoline on the goroutine's stack.
#[cfg(feature = "preempt-signal")]
pub(crate) fn async_preempted() {
    let g = current_g().expect("async preemption outside a goroutine");
    g.preempt.store(false, Ordering::Relaxed);
    switch_to_g0(g, Reason::AsyncPreempt);
}

/// The calling goroutine is about to publish its result (`JoinInner::complete`,
/// inside a no-preempt region): count it in `Shared::finishing` until it
/// exits (`G0::gfput`), so that `Runtime::drop` waits for it rather than
/// abandon it on its way out.
pub(crate) fn note_finishing() {
    if let Some(g) = current_g() {
        if !g.finishing.replace(true) {
            // SAFETY: the G's runtime outlives the G.
            let sh = unsafe { &*g.shared.load(Ordering::Acquire) };
            sh.finishing.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Makes a parked goroutine runnable: into the current P's `runnext` when
/// the caller is a goroutine of the same runtime (it runs next, Go's
/// `ready(gp, next=true)`), else (a plain thread, another runtime, a
/// scheduler firing timers) among the woken goroutines (`Shared::woken`).
/// Then `wakep`.
/// Called inside the caller's no-preempt region (`GRef::unpark`'s, which
/// covers its claim of the goroutine too).
pub(crate) fn ready_in(g: GRef, _np: &NoPreempt) {
    crate::os::fork::check();
    // SAFETY: the G's runtime outlives the G.
    let sh = unsafe { &*g.shared.load(Ordering::Acquire) };
    let wakes = g.wakes.get().wrapping_add(1);
    g.wakes.set(wakes);
    if wakes.is_multiple_of(SCHED_LATENCY_SAMPLE) {
        g.runnable_at.set(sh.slice_clock().max(1));
    }
    // Into our P's `runnext`, unless it holds a goroutine preempted for a
    // wake-up (`sched::wakeup`, step 3): displaced to the tail, it would
    // wait behind everything queued since (a timer fired by this P pushed a
    // kept long request behind the request that had preempted it). `g`
    // then waits among the woken goroutines, which run before the kept one.
    //
    // Nor from the scheduler (`g0` firing timers: no goroutine readies):
    // goroutines whose timers fell due together pushed each other out of
    // `runnext` to the run queue's tail, and one that sysmon's timer look
    // woke meanwhile went among the woken goroutines, which a P takes
    // first; either way the first to run (a long request) held the P while
    // the others waited where no wake-up preemption looks (a sleeper woken
    // with a 30 ms request: 30 ms late). They wait among the woken
    // goroutines, in the order their timers fell due: the P takes them
    // first, and those it leaves behind a call-free goroutine get a
    // wake-up preemption. The first of them, found alone there, is this
    // P's next goroutine: no other P need make room for it (asking one
    // woke sysmon at nearly every tick of a 1 ms ticker beside a hog on
    // every P: 1,415-1,524 sysmon wake-ups against 1,193-1,278, ticker p99
    // 366-403 µs against 204-300 µs, tests/wakeup.rs
    // `hogs_on_every_p_are_time_sliced_by_their_own_timers`).
    let on_g = current_g().is_some();
    let local = on_g
        && sh.with_local(|p, q, _| {
            if p.keeps_for_wakeup() && q.has_next() {
                return false;
            }
            q.put_next(g);
            true
        }) == Some(true);
    if !local {
        if !on_g && sh.woken.is_empty() && sh.with_local(|_, _, _| ()).is_some() {
            sh.woken.push(g);
        } else {
            sh.ready_woken(g);
            return;
        }
    }
    fence(Ordering::SeqCst);
    sh.wakep();
}

impl Shared {
    /// Makes `g` runnable from outside any P (or beside a kept goroutine):
    /// among the woken goroutines, which every P takes first, then `wakep`
    /// and, if every P is busy, a wake-up preemption (`sched::wakeup`).
    pub(crate) fn ready_woken(&self, g: GRef) {
        self.woken.push(g);
        // Dekker with the spinning protocol (see `wakep`).
        fence(Ordering::SeqCst);
        self.wakep();
        let _ = self.wakeup_preempt(false);
    }
}

/// The first function of every goroutine (see `arch::init_stack`).
///
/// # Safety
/// Called only by `arch`'s start trampoline with a G prepared by `execute`.
pub(crate) unsafe extern "C" fn g_entry(arg: usize) -> ! {
    // SAFETY: `execute` passes the G it switched to; it is live.
    let g = GRef(unsafe { NonNull::new_unchecked(arg as *mut G) });
    // SAFETY: owner access: we are this G. The body stays in `entry` while
    // it runs (see the field); nobody writes `entry` until we exit.
    let f = unsafe { (*g.entry.get()).as_ref() }.expect("goroutine without a body");
    g.no_preempt.store(0, Ordering::Relaxed);
    // The body catches its own panics (see `runtime::Task`). Its captures
    // are dropped here, on the goroutine, as is our count on it.
    f.run();
    // SAFETY: owner access, as above; the borrow `f` ended.
    let body = unsafe { (*g.entry.get()).take() };
    // With nobody to join it (the handle dropped), the result goes with the
    // body: a panic in its drop has nobody to go to either (std aborts too,
    // "thread result panicked on drop"). Unwinding further ran off the
    // goroutine's stack: "failed to initiate panic", with no word of why.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(body))).is_err() {
        crate::diag::stderr_line(format_args!(
            "fatal: the result of goroutine {} panicked on drop (its handle was dropped: nobody \
             joined it)",
            g.id.load(Ordering::Relaxed)
        ));
        std::process::abort();
    }
    // Goroutine-local values re-created by that drop (a destructor of an
    // unjoined scoped result using a `local!`): drop them here, on the
    // goroutine, so the G's next goroutine starts empty (a panic in them
    // has no one to go to; the hook has printed it).
    let _ = crate::local::exit_destructors(Ok(()));
    g.no_preempt.store(1, Ordering::Relaxed);
    let m = this_m();
    // SAFETY: as in `switch_to_g0`; this context is never resumed.
    unsafe {
        (*m).reason.set(Reason::Exit);
        arch::switch(g.ctx.get(), *(*m).g0_sp.get(), 0);
    }
    unreachable!("a finished goroutine was resumed");
}
