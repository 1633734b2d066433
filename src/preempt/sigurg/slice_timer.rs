//! Slice timers: a goroutine that has shown it runs whole quanta is
//! preempted by a timer of its own thread's, not by sysmon.
//!
//! # Why
//!
//! sysmon ends a slice by waking at its deadline and signalling the M.
//! When every CPU runs a goroutine, each of those wake-ups takes a CPU
//! from one of them: two context switches and sysmon's own run, per slice
//! end. At a 100 µs quantum with 3 CPU-bound goroutines on 2 Ps that was
//! ~30,000 sysmon wake-ups a second, 10-15 % of the goroutines' CPU, and
//! in ThreadAffine mode worse: the Ms there sleep and wake at every
//! hand-off, a freshly woken M is protected from wake-up preemption by the
//! kernel for its first slice, and sysmon, woken on that CPU, waited for
//! the next scheduler tick (4 ms) 100-200 times a second, so no slice
//! ended and no timer fired on that P meanwhile (ticker p99 1.6-4.5 ms).
//!
//! A POSIX timer created with `SIGEV_THREAD_ID` is different: the kernel's
//! high-resolution timer interrupt queues SIGURG to the M itself, on the
//! CPU it runs on, and no other thread has to be scheduled.
//!
//! # The rule
//!
//! * Only goroutines whose previous slice ended in a time-slice
//!   preemption (`G::hog`) are timed, when their next *fresh* slice starts
//!   (`G0::execute`): one `timer_settime` per such slice, none on the
//!   scheduler's hot path (a goroutine that blocks or yields before its
//!   quantum is never timed; the "timer per slice" design the sysmon
//!   crate rejects armed one in every `execute`). The first slice of a
//!   hog is still ended by sysmon.
//! * Only while some goroutine waits for a P when the slice starts
//!   (`Shared::runnable_waiting`): a timer that fires with nobody waiting
//!   makes no request (below), so it was a wasted signal on the
//!   goroutine's CPU.
//! * Only while at least as many Ps are busy as the process has CPUs:
//!   otherwise sysmon has a CPU of its own, and its signal, sent from
//!   there, costs the goroutine less than a timer armed and fired on the
//!   goroutine's own CPU (two loops on one P of a 2-CPU VM at 100 µs:
//!   4.5 µs lost per preemption by sysmon, 7.4 µs by timer, Migrate).
//! * The M records the P and `schedtick` it armed for (`M::timer_p`,
//!   `M::timer_tick`) and the P records that its slice is timed
//!   (`P::timed_tick`), then arms the M's one-shot timer for the quantum.
//! * When the timer's SIGURG arrives (`si_code == SI_TIMER`, `sival_ptr`
//!   this M), the handler makes the request sysmon would have made, if the
//!   P is still this M's, still in that slice and running a goroutine;
//!   then the usual safe-point rules decide. If no goroutine waits for a
//!   P, it makes none (sysmon's `only_when_contended`: preempting would
//!   only reschedule the goroutine) and leaves the slice to sysmon. A timer
//!   whose slice ended early (the goroutine blocked)
//!   finds a later `schedtick` and does nothing: one spurious signal, at
//!   most one per timed slice. (A goroutine that enters a blocking call
//!   disarms it first: see `disarm`.)
//! * sysmon leaves a timed slice to its timer and only looks at it
//!   `Config::timer_grace` after its quantum (the sysmon crate's rule 2):
//!   a refused preemption is retried from there as any other, and the
//!   backoff, blocked-M and starvation rules are unchanged.
//! * Like sysmon's, the timer's SIGURG is forwarded to the application's
//!   SIGURG handler (every SIGURG is; see `sigurg`).
//!
//! `GOSCHED_SLICETIMEROFF=1` leaves every slice to sysmon (to compare).

use std::sync::atomic::Ordering;

use crate::os::timer::{self, SI_TIMER};
use crate::sched::{pstate, M, P_USER};

/// `M::timer_id` of an M that has not needed a timer yet.
pub(crate) const NO_SLICE_TIMER: i32 = -1;
/// `M::timer_id` of an M whose timer the kernel refused: its slices are
/// left to sysmon (not asked again).
const REFUSED: i32 = -2;

/// Times P `p`'s fresh slice `tick`, which `m` (the calling thread's M,
/// on its scheduler stack) is about to start for a goroutine that used its
/// whole previous slice. Best effort: without a timer sysmon ends the
/// slice.
pub(crate) fn arm(m: &M, p: usize, tick: u64) {
    let sh = m.shared_ref();
    let busy = sh.procs().saturating_sub(sh.npidle.load(Ordering::Relaxed));
    if busy < sh.cpus {
        // A CPU is left for sysmon: it ends the slice for less (its signal
        // comes from another CPU; a timer costs the goroutine's own CPU
        // the arming and the interrupt: 7.4 against 4.5 µs per preemption,
        // two loops on one P at 100 µs, Migrate).
        return;
    }
    if !sh.runnable_waiting() {
        // Nobody waits for a P: the timer would find nothing to make room
        // for, and its signal would cost the goroutine's CPU for nothing
        // (two hogs on two Ps beside a 1 ms ticker at 100 µs: one wasted
        // signal per tick). Work that starts to wait later either wakes
        // the runtime (wake-up preemption) or is seen by sysmon's next
        // look (its uncontended backoff).
        return;
    }
    let mut id = m.timer_id.load(Ordering::Relaxed);
    if id == NO_SLICE_TIMER {
        let tid = m.tid.load(Ordering::Relaxed);
        id = timer::create(tid, libc::SIGURG, token(m)).unwrap_or(REFUSED);
        m.timer_id.store(id, Ordering::Relaxed);
    }
    if id < 0 {
        return;
    }
    // The handler reads these after the signal, on this thread.
    m.timer_p.store(p, Ordering::Relaxed);
    m.timer_tick.store(tick, Ordering::Relaxed);
    m.timer_armed.store(true, Ordering::Relaxed);
    sh.ps[p].timed_tick.store(tick, Ordering::Relaxed);
    timer::arm(id, sh.cfg.quantum);
}

/// Disarms `m`'s timer if it has not fired yet (`m` is the calling
/// thread's M): its goroutine enters a blocking call (`sched::blocking`),
/// whose system call the signal would interrupt; calls that do not restart
/// after a handler (`poll`, `epoll_wait`, `nanosleep`, reads with a
/// timeout) would return EINTR to the goroutine. One system call, only for
/// a timed slice.
pub(crate) fn disarm(m: &M) {
    if !m.timer_armed.swap(false, Ordering::Relaxed) {
        return;
    }
    let id = m.timer_id.load(Ordering::Relaxed);
    if id >= 0 {
        timer::disarm(id);
    }
}

/// Deletes `m`'s timer (the calling thread's M, whose thread is ending).
pub(crate) fn release(m: &M) {
    let id = m.timer_id.swap(NO_SLICE_TIMER, Ordering::Relaxed);
    if id >= 0 {
        timer::delete(id);
    }
}

/// The value our timers carry to the handler: the M they belong to.
fn token(m: &M) -> usize {
    m as *const M as usize
}

/// Is this signal `m`'s slice timer? Async-signal-safe.
pub(super) fn is_ours(m: &M, info: *const libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: the kernel's siginfo for this signal; for SI_TIMER its value
    // union holds the timer's `sigev_value`.
    unsafe { (*info).si_code == SI_TIMER && (*info).si_value().sival_ptr as usize == token(m) }
}

/// The handler's half: request the preemption of the slice the timer was
/// armed for, as sysmon would. Async-signal-safe: atomics and one
/// `timer_settime`.
pub(super) fn request(m: &M) {
    m.timer_armed.store(false, Ordering::Relaxed);
    let sh = m.shared_ref();
    let p = m.timer_p.load(Ordering::Relaxed);
    let tick = m.timer_tick.load(Ordering::Relaxed);
    let Some(pp) = sh.ps.get(p) else {
        return;
    };
    if !std::ptr::eq(pp.m.load(Ordering::Acquire), m)
        || pp.schedtick.load(Ordering::Acquire) != tick
        || pstate(pp.status.load(Ordering::Acquire)) != P_USER
    {
        // The slice it timed is over, or its goroutine is in a blocking
        // call (a signal sent just before `disarm`): nothing to re-arm.
        return;
    }
    if !sh.runnable_waiting() {
        // Nobody to make room for: sysmon looks again (a timed slice, a
        // grace after its quantum, then every quantum while it overruns).
        // Re-arming here instead signalled a goroutine alone on its P at
        // every quantum: hog throughput 0.876 against 0.934, two loops on
        // two Ps beside a 1 ms ticker at 100 µs.
        return;
    }
    if sh.preempt_slice(p, Some(tick), false) == gosched_sysmon::Preempt::FlagOnly {
        sh.counters.preempt_timer.fetch_add(1, Ordering::Relaxed);
    }
}
