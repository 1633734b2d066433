//! `yield_now` without the scheduler: switch straight to the next
//! goroutine of the P's own queue.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::*;
use crate::arch;
use crate::sched::g::{GRef, G};

/// Tag on `switch`'s argument: "the goroutine that switched to you is
/// yielding: put it at the tail of the P's local queue". Set by
/// `yield_direct`; acted on by `requeue_yielder` on the resumed side.
const YIELDED: usize = 1;

/// `yield_now` without the scheduler: switch straight to the goroutine
/// the P would run next, when that is an ordinary goroutine from the P's
/// own queue (runnext or local). Returns false, having done nothing, when
/// the scheduler is needed: every `GLOBAL_CHECK`th slice (the global queue
/// and timers must be looked at), an empty local queue (global queue,
/// timers, stealing), a goroutine locked to a thread on either side or
/// panicking, a goroutine that has never run (no stack yet), or a P we no
/// longer own.
///
/// The yielding goroutine must not be on a run queue before its context is
/// saved (another thread could resume it half-saved), so the goroutine we
/// switch to queues it, after the switch: the switch's argument carries it
/// (`YIELDED`), and every place a goroutine resumes from a switch calls
/// `requeue_yielder`.
///
/// `#[inline]`: its one caller, `goyield`, is in another module, so
/// possibly another codegen unit, where it was not inlined: the call and
/// its register saves cost ~12 instructions a yield, 3-4 % of the
/// `yield/round_trip` bench.
#[inline]
pub(crate) fn yield_direct(g: GRef) -> bool {
    // A panicking goroutine must keep its thread (see
    // `G0::lock_if_panicking`): let the scheduler lock it.
    if g.locked_m.get().is_some() || std::thread::panicking() {
        return false;
    }
    raise_no_preempt(g);
    let m = this_m();
    // SAFETY: in a no-preempt region `m` is this thread's M and stays so.
    let m = unsafe { &*m };
    let sh = m.shared_ref();
    let Some(pi) = m.p.get() else {
        lower_no_preempt(g);
        return false;
    };
    let p = &sh.ps[pi];
    // Claim the P as `with_local` does, but keep the claim across the
    // switch: the resumed side queues us and ends it (`requeue_yielder`).
    if !claim_p(m, p) {
        lower_no_preempt(g);
        return false;
    }
    // SAFETY: we hold a claim on the P.
    let q = unsafe { p.runq.owner() };
    let next = (|| {
        let tick = p.schedtick.load(Ordering::Relaxed);
        if tick.is_multiple_of(GLOBAL_CHECK) {
            return None;
        }
        let next = match q.take_next() {
            Some(g) => {
                // A goroutine kept for a wake-up resumes: our turn is over
                // (left set, sysmon took a later `runnext` goroutine for a
                // kept one and preempted whoever ran for it).
                p.clear_kept();
                g
            }
            None => q.pop()?,
        };
        if next.locked_m.get().is_some() || next.stack_hi.load(Ordering::Relaxed) == 0 {
            // g0 takes it from runnext (empty: we just emptied it, or it
            // was empty when we popped the rest of the queue).
            q.put_next(next);
            return None;
        }
        // A fresh slice, but no clock read here (a TSC read is a sixth of a
        // yield): sysmon dates it when it first sees the new tick, as Go's
        // sysmon dates every slice.
        p.slice_start.store(UNSTAMPED, Ordering::Relaxed);
        p.schedtick.store(tick + 1, Ordering::Release);
        bump(&p.counters.switches);
        Some(next)
    })();
    let Some(next) = next else {
        unclaim_p(m);
        lower_no_preempt(g);
        return false;
    };
    note_running(sh, p, next);
    next.preempt.store(false, Ordering::Relaxed);
    // From here the M runs `next` (sysmon and the signal handler read
    // curg); both goroutines are in no-preempt regions across the switch.
    m.curg.store(next.as_ptr(), Ordering::Release);
    m.yield_p.set(p);
    // SAFETY: `next` was dequeued by us (exactly once) and has a context
    // saved by `switch`; `g.ctx` is ours to write.
    let arg = unsafe { arch::switch(g.ctx.get(), *next.ctx.get(), g.as_ptr() as usize | YIELDED) };
    requeue_yielder(arg);
    lower_no_preempt(g);
    true
}

/// The resumed side of `yield_direct`: if the goroutine that switched to
/// us was yielding, its context is saved now: queue it. Call right after
/// every `switch` that resumes a goroutine, in its no-preempt region.
pub(crate) fn requeue_yielder(arg: usize) {
    if arg & YIELDED == 0 {
        return;
    }
    // SAFETY: `yield_direct` passed a live G's address with the tag bit.
    let y = GRef(unsafe { NonNull::new_unchecked((arg & !YIELDED) as *mut G) });
    // SAFETY: we run on the M the yielder switched to us on (a direct
    // switch never changes thread) inside a no-preempt region; the
    // yielder's claim on the M's P is ours to use and end.
    let m = unsafe { &*this_m() };
    // SAFETY: `yield_direct` stored the P it claimed (a live element of
    // the runtime's `ps`) just before switching to us on this M.
    let p = unsafe { &*m.yield_p.get() };
    debug_assert!(
        m.claiming.load(Ordering::Relaxed),
        "a direct yield without a claim"
    );
    // SAFETY: as above: the claim gives us the P's run queue.
    unsafe { p.runq.owner() }.put_yielded(y);
    unclaim_p(m);
}
