//! Wake-up preemption: a woken goroutine gets a P within microseconds even
//! when every P runs a CPU hog.
//!
//! Go lets a goroutine woken while every P is busy wait in a run queue
//! until some P reaches a scheduling point: up to a whole quantum (10 ms),
//! longer behind a crowd (golang/go#51071). Linux's schedulers instead let a
//! woken task preempt a task that has had its share. gosched does the
//! latter, in three parts:
//!
//! 1. **Where the woken goroutine waits.** A goroutine woken from inside a
//!    P goes to that P's `runnext`, as in Go. One woken from outside any P
//!    (a timer fired by sysmon or an idle M, a plain thread's send, a
//!    goroutine in `blocking`) goes to `Shared::woken`, which every P checks
//!    before anything else: it never queues behind preempted hogs.
//! 2. **Who makes room** (`Shared::wakeup_preempt`, called by `ready` after
//!    it queued into `woken`). If a P is idle or an M spins, they will take
//!    it: nothing to do. Otherwise pick the P whose current goroutine has
//!    run longest in its slice, and only if that is at least
//!    `WAKEUP_GRANULARITY`, and ask it to yield now: the cooperative flag
//!    and, with asynchronous preemption, SIGURG. At most one request is
//!    outstanding per P and slice (`P::wakeup_tick` holds the `schedtick`
//!    it was made in), so a storm of wake-ups sends one signal per P.
//! 3. **No penalty for the preempted.** A goroutine preempted on such a
//!    request goes to its P's `runnext`, not to the tail of the global queue
//!    (`Sched::after`): it resumes as soon as the woken goroutine blocks or
//!    its own slice ends, instead of waiting behind every queued goroutine.
//!    In ThreadAffine mode it stays locked to its thread, and its P is handed
//!    to another thread for the woken goroutine, as for any preemption.
//!
//! A request refused because no goroutine has run for the granularity yet
//! is retried by sysmon, which looks every half granularity while a woken
//! goroutine waits (`wakeup_waiting`).
//!
//! Thrashing: the granularity bounds how often one P can be interrupted
//! (at most once per `WAKEUP_GRANULARITY` of its goroutine's running time),
//! so a hog keeps most of its P even beside a goroutine woken in a loop
//! from outside. Goroutines readied from inside a P (a channel ping-pong
//! between goroutines) never trigger it: they go to the waker's `runnext`.
//!
//! Rejected: preempting the P with the *latest* slice (it is the most
//! likely to be interactive itself); preempting on every ready, including
//! those into a busy P's `runnext` (the readier usually blocks right after,
//! and a signal would cost more than it saves); doing it in sysmon (one
//! more thread wake-up on the path, ~30 µs on a VM).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

/// A goroutine is preempted for a wake-up only after it ran this long in
/// its slice: Linux's CFS wake-up granularity is 1 ms scaled by CPU count;
/// a preemption costs 10-50 µs on a VM, so 100 µs keeps at least ~2/3 of
/// a P for a hog even when it is asked every time it may be.
pub(crate) const WAKEUP_GRANULARITY: Duration = Duration::from_micros(100);

/// `P::wakeup_tick` when no request is outstanding.
pub(crate) const NO_WAKEUP: u64 = u64::MAX;

impl Shared {
    /// Step 2 of the module docs. Called by `ready` after queueing into
    /// `woken` (and the SeqCst fence before `wakep`), with `retry` false;
    /// by sysmon while a woken goroutine still waits, with `retry` true: a
    /// request already made in the current slice of some P is then made
    /// again (its signal may have been refused, or its thread may not have
    /// run yet: `preempt_p` sends no second signal while one is in flight).
    pub(crate) fn wakeup_preempt(&self, retry: bool) {
        if !self.cfg.wakeup_preempt
            || self.npidle.load(Ordering::SeqCst) != 0
            || self.nmspinning.load(Ordering::SeqCst) != 0
        {
            return;
        }
        let now = self.slice_clock();
        let mut best: Option<(usize, u64, u64)> = None; // (p, ran ns, schedtick)
        for (i, p) in self.ps[..self.procs()].iter().enumerate() {
            if p.status.load(Ordering::Acquire) & 0xff != P_USER {
                continue;
            }
            let tick = p.schedtick.load(Ordering::Acquire);
            if !retry && p.wakeup_tick.load(Ordering::Relaxed) == tick {
                // Already asked in this slice: it is on its way to g0,
                // which takes the woken goroutine first.
                return;
            }
            let start = p.slice_start.load(Ordering::Relaxed);
            if start == UNSTAMPED {
                // Began with a direct yield a moment ago (sysmon dates it).
                continue;
            }
            let ran = self.clock_delta_ns(start, now);
            if best.is_none_or(|b| ran > b.1) {
                best = Some((i, ran, tick));
            }
        }
        let Some((p, ran, tick)) = best else { return };
        if ran < WAKEUP_GRANULARITY.as_nanos() as u64 {
            // Too early to interrupt anyone: sysmon asks again shortly.
            self.sysmon_note.wake();
            return;
        }
        let pp = &self.ps[p];
        let prev = pp.wakeup_tick.load(Ordering::Relaxed);
        if prev == tick && retry {
            self.preempt_p(p, true);
        } else if pp
            .wakeup_tick
            .compare_exchange(prev, tick, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.counters.preempt_wakeup.fetch_add(1, Ordering::Relaxed);
            self.preempt_p(p, true);
        }
    }

    /// Does a woken goroutine wait for a P while wake-up preemption could
    /// make room (sysmon's retry, for requests refused by the
    /// granularity)?
    pub(crate) fn wakeup_waiting(&self) -> bool {
        self.cfg.wakeup_preempt
            && !self.woken.is_empty()
            && self.npidle.load(Ordering::SeqCst) == 0
            && self.nmspinning.load(Ordering::SeqCst) == 0
    }

    /// Was the goroutine that P `p` ran in its current slice asked to yield
    /// for a wake-up (step 3)?
    pub(crate) fn preempted_for_wakeup(&self, p: usize) -> bool {
        let pp = &self.ps[p];
        pp.wakeup_tick.load(Ordering::Relaxed) == pp.schedtick.load(Ordering::Relaxed)
    }
}
