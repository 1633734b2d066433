//! The P (processor): its status word, counters, local data, and the
//! claim a goroutine takes on its own P (see "Ownership of a P" in the
//! module docs of `crate::sched`).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crossbeam_deque::{Stealer, Worker};

use super::*;
use crate::sched::g::{GRef, G};
use crate::stack::Stack;

// P status words: (m id << 8) | state.
pub(crate) const P_IDLE: u64 = 0;
pub(crate) const P_HANDOFF: u64 = 1;
pub(crate) const P_SCHED: u64 = 2;
pub(crate) const P_USER: u64 = 3;
pub(crate) const P_SYSCALL: u64 = 4;
/// Beyond the current GOMAXPROCS (`Shared::gomaxprocs`): owned by nobody,
/// its queues empty, until `set_procs` brings it back (see `procresize`).
pub(crate) const P_DEAD: u64 = 5;

pub(crate) fn pstatus(m: &M, state: u64) -> u64 {
    ((m.id as u64) << 8) | state
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
    pub(crate) stealer: Stealer<GRef>,
    /// A G to run next, inheriting the time slice. Set by the owning M or a
    /// goroutine running on it (swap); taken by the owner (swap) or a thief
    /// (CAS), AcqRel.
    pub(crate) runnext: AtomicPtr<G>,
    /// A goroutine that yielded while it was the only other runnable one
    /// on this P: the local queue's tail, kept out of the `Worker` so that
    /// a yield between two goroutines costs no atomic read-modify-write
    /// (`Worker::pop` is one). Runs before the `Worker`'s goroutines (they
    /// came later). Not stealable: it waits at most until the running
    /// goroutine yields, parks or is preempted (sysmon counts it as
    /// waiting work), or its P is handed on with it. Only the P's owner
    /// (g0 in SCHED, or a goroutine holding a claim) reads or writes it,
    /// with plain Relaxed accesses; sysmon and `schedtrace` only peek.
    pub(crate) yielded: AtomicPtr<G>,
    /// Fresh slices started (Go's schedtick). Written by the owner, read by
    /// sysmon (Relaxed; `slice_start` is written just before it).
    pub(crate) schedtick: AtomicU64,
    /// When the current slice started, in `Shared::slice_clock` units
    /// (TSC ticks where the TSC is invariant, else ns since the epoch):
    /// stamped on every fresh slice, so it must be cheap. Owner writes,
    /// sysmon reads and converts (`Shared::slice_start_ns`).
    /// `UNSTAMPED` after a direct yield (see `yield_direct`).
    pub(crate) slice_start: AtomicU64,
    /// The `schedtick` of the slice whose goroutine was asked to yield for a
    /// wake-up (`wakeup::NO_WAKEUP`: none). Written by `wakeup_preempt`
    /// (any thread, CAS), read by the owner in `Sched::after`.
    pub(crate) wakeup_tick: AtomicU64,
    /// Blocking calls entered; written by the goroutine in `blocking`.
    pub(crate) syscalltick: AtomicU64,
    pub(crate) syscall_start: AtomicU64,
    /// The M that owns the P (null when idle). Read by sysmon.
    pub(crate) m: AtomicPtr<M>,
    pub(crate) counters: PCounters,
    pub(crate) local: UnsafeCell<PLocal>,
}

/// The part of a P only its owner touches (on g0).
pub(crate) struct PLocal {
    pub(crate) worker: Worker<GRef>,
    pub(crate) gfree: Vec<GRef>,
    pub(crate) stacks: Vec<Stack>,
    pub(crate) rng: u64,
    /// Next goroutine id of this P's batch, and the batch end.
    pub(crate) goid_next: u64,
    pub(crate) goid_end: u64,
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
