//! The P (processor): its status word, counters, local data, and the
//! claim a goroutine takes on its own P (see "Ownership of a P" in the
//! module docs of `crate::sched`).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use super::runq::RunQueue;
use super::*;
use crate::sched::g::GRef;
use crate::stack::{Stack, StackPool, P_CACHE};

// P status words: (m id << 8) | state.
pub(crate) const P_IDLE: u64 = 0;
pub(crate) const P_HANDOFF: u64 = 1;
pub(crate) const P_SCHED: u64 = 2;
pub(crate) const P_USER: u64 = 3;
pub(crate) const P_SYSCALL: u64 = 4;
/// Beyond the current GOMAXPROCS (`Shared::gomaxprocs`): owned by nobody,
/// its queues empty, until `set_procs` brings it back (see `procresize`).
pub(crate) const P_DEAD: u64 = 5;

/// The status word "state `state`, owned by M `m`".
pub(crate) fn pstatus(m: &M, state: u64) -> u64 {
    ((m.id as u64) << 8) | state
}

/// The state part of a status word (`P_IDLE` .. `P_DEAD`).
#[inline]
pub(crate) fn pstate(status: u64) -> u64 {
    status & 0xff
}

/// The owning M's id part of a status word.
#[inline]
pub(crate) fn powner(status: u64) -> u64 {
    status >> 8
}

/// Per-P counters, written only by the owning M (Relaxed), summed by
/// `stats()`.
#[derive(Default)]
pub(crate) struct PCounters {
    pub(crate) spawned: AtomicU64,
    pub(crate) exited: AtomicU64,
    pub(crate) switches: AtomicU64,
    pub(crate) steals: AtomicU64,
    pub(crate) parks: AtomicU64,
    /// Sampled wake-up-to-running latencies of goroutines this P ran
    /// (`latency_bucket`).
    pub(crate) sched_latency: [AtomicU64; SCHED_LATENCY_BUCKETS],
}

pub(crate) fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// A processor. See the module docs for the `status` protocol.
pub(crate) struct P {
    pub(crate) id: usize,
    /// Ownership word (module docs). CAS by the owner M and by sysmon.
    pub(crate) status: AtomicU64,
    /// Its run queue: `runnext`, the yield slot and the local deque
    /// (`runq`).
    pub(crate) runq: RunQueue,
    /// Fresh slices started (Go's schedtick). Written by the owner, read by
    /// sysmon (Relaxed; `slice_start` is written just before it).
    pub(crate) schedtick: AtomicU64,
    /// When the current slice started, in `Shared::slice_clock` units
    /// (TSC ticks where the TSC is invariant, else ns since the epoch):
    /// stamped on every fresh slice, so it must be cheap. Owner writes,
    /// sysmon reads and converts (`Shared::slice_start_ns`).
    /// `UNSTAMPED` after a direct yield (see `yield_direct`).
    pub(crate) slice_start: AtomicU64,
    /// The `schedtick` of the last slice its M timed with a slice timer
    /// (`preempt::slice_timer`; `NO_TIMER`: none). Owner writes, sysmon
    /// reads: a timed slice needs no deadline of sysmon's.
    pub(crate) timed_tick: AtomicU64,
    /// The `schedtick` of the slice whose goroutine was asked to yield for a
    /// wake-up (`wakeup::NO_WAKEUP`: none). Written by `wakeup_preempt`
    /// (any thread, CAS), read by the owner in `G0::after`.
    pub(crate) wakeup_tick: AtomicU64,
    /// When that request was last made (slice clock units) and how often it
    /// was repeated in this slice: sysmon's retry backoff for a request the
    /// goroutine refused (see `sched::wakeup`). Written by whoever made the
    /// request (the `wakeup_tick` CAS or sysmon), read by sysmon.
    pub(crate) wakeup_asked: AtomicU64,
    pub(crate) wakeup_retries: AtomicU32,
    /// The request in `wakeup_tick`'s slice went out as a signal that the
    /// handler has not refused: sysmon does not repeat it (see
    /// `Shared::wakeup_retry`). Set by whoever sent it; cleared by a
    /// cooperative request and by the handler when it refuses a signal
    /// (which then wakes sysmon: `Shared::wakeup_signal_refused`).
    pub(crate) wakeup_signalled: AtomicBool,
    /// ThreadAffine: the CPU time (ns) the P's thread had used when sysmon
    /// last looked at an outstanding request (`wakeup::NO_SAMPLE`: not yet
    /// since the request). sysmon only.
    pub(crate) wakeup_cpu: AtomicU64,
    /// The `schedtick` of the slice whose goroutine was preempted for a
    /// wake-up and kept in `runnext` (`wakeup::NO_WAKEUP`: none), and when
    /// the woken goroutines' turn began (`Shared::slice_clock`; `TURN_UNSTARTED`
    /// until the first of them starts: `P::start_turn`), so that it resumes
    /// once they have had their turn (see `sched::wakeup`, step 3). The
    /// owner writes both (`P::keep_for_wakeup`, `P::clear_kept`); sysmon
    /// reads `kept_tick` (`Shared::kept_turn_preempt`).
    pub(crate) kept_tick: AtomicU64,
    pub(crate) kept_at: AtomicU64,
    /// Blocking calls entered; written by the goroutine in `blocking`.
    pub(crate) syscalltick: AtomicU64,
    pub(crate) syscall_start: AtomicU64,
    /// The M that owns the P (null when idle). Read by sysmon.
    pub(crate) m: AtomicPtr<M>,
    pub(crate) counters: PCounters,
    pub(crate) local: UnsafeCell<PLocal>,
}

/// `P::kept_at` before the woken goroutines' turn begins.
pub(crate) const TURN_UNSTARTED: u64 = 0;

/// The part of a P only its owner touches (on g0).
pub(crate) struct PLocal {
    pub(crate) gfree: Vec<GRef>,
    pub(crate) stacks: Vec<Stack>,
    pub(crate) rng: u64,
    /// Next goroutine id of this P's batch, and the batch end.
    pub(crate) goid_next: u64,
    pub(crate) goid_end: u64,
}

/// The goroutine kept for a wake-up (owner only, but for sysmon's reads).
impl P {
    /// `runnext` now holds the goroutine preempted for a wake-up in slice
    /// `tick`; the woken goroutines' turn begins when the first of them
    /// starts (`start_turn`).
    pub(crate) fn keep_for_wakeup(&self, tick: u64) {
        self.kept_at.store(TURN_UNSTARTED, Ordering::Relaxed);
        self.kept_tick.store(tick, Ordering::Relaxed);
    }

    /// A fresh slice starts at `now` (slice clock): if a goroutine is kept
    /// for a wake-up and the woken goroutines' turn has not begun, it
    /// begins now. Dating the turn from the preemption instead counted the
    /// thread hand-off into it: on a VM where that took 40 µs, the kept
    /// goroutine resumed after one woken goroutine of several, and the
    /// others waited for its next preemption (bimodal benchmark).
    #[inline]
    pub(crate) fn start_turn(&self, now: u64) {
        if self.kept_tick.load(Ordering::Relaxed) != super::wakeup::NO_WAKEUP
            && self.kept_at.load(Ordering::Relaxed) == TURN_UNSTARTED
        {
            self.kept_at.store(now.max(1), Ordering::Relaxed);
        }
    }

    /// Is a goroutine kept in `runnext` that may resume (a slice has
    /// started since it was preempted: a woken goroutine has had a turn)?
    /// Returns when that turn began (`TURN_UNSTARTED`: not yet).
    #[inline]
    pub(crate) fn kept_since(&self, schedtick: u64) -> Option<u64> {
        let tick = self.kept_tick.load(Ordering::Relaxed);
        (tick != super::wakeup::NO_WAKEUP && tick != schedtick)
            .then(|| self.kept_at.load(Ordering::Relaxed))
    }

    /// Is the goroutine in `runnext` one preempted for a wake-up?
    #[inline]
    pub(crate) fn keeps_for_wakeup(&self) -> bool {
        self.kept_tick.load(Ordering::Relaxed) != super::wakeup::NO_WAKEUP
    }

    /// Was the P asked to make room for a woken goroutine in its current
    /// slice, and is it still in that slice (running it, or switching out
    /// of it)? See `Shared::wakeup_preempt`.
    pub(crate) fn making_room_for_wakeup(&self) -> bool {
        let tick = self.schedtick.load(Ordering::Acquire);
        self.wakeup_tick.load(Ordering::Relaxed) == tick
            && matches!(
                super::pstate(self.status.load(Ordering::Acquire)),
                super::P_USER | super::P_SCHED | super::P_HANDOFF
            )
    }

    /// `runnext` was taken in the ordinary order: nothing is kept.
    pub(crate) fn clear_kept(&self) {
        self.kept_tick
            .store(super::wakeup::NO_WAKEUP, Ordering::Relaxed);
    }
}

impl PLocal {
    /// The next number of this P's random sequence (steal order).
    pub(crate) fn rand(&mut self) -> u64 {
        super::rand::next(&mut self.rng)
    }

    /// A stack from the P's cache, refilled with half a cache from `pool`
    /// when empty.
    pub(crate) fn stack_get(&mut self, pool: &StackPool) -> Stack {
        if self.stacks.is_empty() {
            pool.get_batch(&mut self.stacks, P_CACHE / 2);
        }
        self.stacks.pop().expect("stack batch is never empty")
    }

    /// Caches a finished G and its stack, moving half of a full cache to
    /// the runtime's lists.
    pub(crate) fn put_free(&mut self, sh: &Shared, g: GRef, stack: Option<Stack>) {
        if let Some(s) = stack {
            sh.stacks.recycle(&s);
            self.stacks.push(s);
            if self.stacks.len() > P_CACHE {
                let half = self.stacks.len() / 2;
                sh.stacks.put_batch(self.stacks.drain(..half));
            }
        }
        self.gfree.push(g);
        if self.gfree.len() > G_CACHE {
            let half = self.gfree.len() / 2;
            sh.gfree.rt_lock().extend(self.gfree.drain(..half));
        }
    }
}

// SAFETY: `local` is accessed only by the M whose id is in `status` (state
// SCHED), handed over with Release/Acquire on `status`/`nextp`; every other
// field is atomic or immutable.
unsafe impl Sync for P {}

/// Claims P `p`, which M `m` held in state USER(m) when its goroutine
/// last looked, for a goroutine of `m` (see "Ownership of a P"): false if
/// sysmon retook it meanwhile. Until `unclaim_p`, the caller may touch the
/// P's local data. Call in a no-preempt region; `m` is the caller's M.
#[inline]
pub(crate) fn claim_p(m: &M, p: &P) -> bool {
    m.claiming.store(true, Ordering::Relaxed);
    // Dekker with `Shared::retake`: either it sees our flag, or we see
    // its status change.
    crate::os::membarrier::light();
    // Acquire pairs with the Release of the P's last hand-over.
    if p.status.load(Ordering::Acquire) == pstatus(m, P_USER) {
        return true;
    }
    m.claiming.store(false, Ordering::Relaxed);
    false
}

/// Ends `m`'s claim (Release: our writes to the P's local data happen
/// before a retake that waited for the flag).
#[inline]
pub(crate) fn unclaim_p(m: &M) {
    m.claiming.store(false, Ordering::Release);
}
