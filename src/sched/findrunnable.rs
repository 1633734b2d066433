//! Finding work for an M (Go's findRunnable and stealWork): the order of
//! the sources, stealing, and giving up the P. See "Finding work" and
//! "Spinning and wake-ups" in `crate::sched`.

use std::sync::atomic::{fence, Ordering};

use super::runq::steal_one;
use super::schedule::G0;
use super::*;
use crate::sched::g::GRef;

impl G0<'_> {
    /// Go's findRunnable. Returns None only at shutdown.
    ///
    /// One departure from Go, for ThreadAffine mode: while
    /// `affine_parked_cap()` Ms are parked with asynchronously preempted
    /// goroutines, each pinning its thread until it resumes, starting
    /// fresh goroutines (which get preempted in turn) would add a thread
    /// per goroutine (1,000+ threads with 2,000 hogs at a 50 µs quantum).
    /// So goroutines preempted then wait in `Shared::sliced`, served right
    /// after `runnext`; the global queue comes next, and the local queue
    /// last. Everything but `sliced` also gets a turn that grows rarer as
    /// the count grows (`Shared::affine_turns`). Rotating the goroutines
    /// already running keeps the count near the cap.
    pub(super) fn find_runnable(&self) -> Option<(GRef, bool)> {
        loop {
            if self.sh.shutdown.load(Ordering::Acquire) {
                return None;
            }
            if self.retire_p() {
                if !self.stopm() {
                    return None;
                }
                continue;
            }
            // A goroutine handed to us with our P (`M::nextg`): every
            // `stopm` that gave us a P comes back through here.
            if let Some(g) = self.m.take_nextg() {
                return Some((g, false));
            }
            if let Some(x) = self.take_ready() {
                return Some(x);
            }
            let busy = self
                .sh
                .procs()
                .saturating_sub(self.sh.npidle.load(Ordering::SeqCst));
            if self.m.spinning.load(Ordering::Relaxed)
                || 2 * self.sh.nmspinning.load(Ordering::SeqCst) < busy
            {
                if !self.m.spinning.load(Ordering::Relaxed) {
                    self.m.spinning.store(true, Ordering::Relaxed);
                    self.sh.nmspinning.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(g) = self.steal_work() {
                    return Some((g, false));
                }
            }
            // Nothing: give up the P (step 5 of the module docs).
            let was_spinning = self.m.spinning.swap(false, Ordering::Relaxed);
            let pi = self.releasep();
            self.sh.pidleput(pi);
            if was_spinning {
                self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
            }
            fence(Ordering::SeqCst);
            if self.sh.any_work() {
                if let Some(pi) = self.sh.pidleget() {
                    self.acquirep(pi);
                    if was_spinning {
                        self.m.spinning.store(true, Ordering::Relaxed);
                        self.sh.nmspinning.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
            }
            if !self.stopm() {
                return None;
            }
        }
    }

    /// The sources `find_runnable` takes from while holding the P, in its
    /// order, without stealing from other Ps or giving the P up: what this
    /// P runs next if it can run something at once. `stoplockedm` uses it
    /// to hand the P straight to the thread that goroutine needs.
    pub(super) fn take_ready(&self) -> Option<(GRef, bool)> {
        loop {
            self.sh.fire_timers();
            let p = self.p();
            let q = self.runq();
            // A goroutine preempted to make room for a woken one resumes
            // once the woken goroutines have had their turn: when none is
            // left, or after `WAKEUP_GRANULARITY` (`sched::wakeup`, step 3).
            if let Some(at) = p.kept_since(p.schedtick.load(Ordering::Relaxed)) {
                if self.sh.woken.is_empty() || self.sh.kept_turn_over(at) {
                    p.clear_kept();
                    if let Some(g) = q.take_next() {
                        return Some((g, true));
                    }
                }
            }
            // Goroutines woken from outside any P first (see `Shared::woken`).
            if !self.sh.woken.is_empty() {
                if let Some(g) = steal_one(|| self.sh.woken.steal()) {
                    self.sh.woken_taken.fetch_add(1, Ordering::Relaxed);
                    return Some((g, false));
                }
            }
            let tick = p.schedtick.load(Ordering::Relaxed);
            let global_turn = tick.is_multiple_of(GLOBAL_CHECK);
            let (affine_full, local_turn) = self.sh.affine_turns(tick);
            // The turn is for everything outside `sliced` (our queue, then
            // the global one), taken only if there is something: the
            // tick stands still while we look, and an empty turn would
            // skip `sliced` forever.
            let local_turn = local_turn && (p.runq.has_work() || !self.sh.injector.is_empty());
            // The periodic poll (see `crate::driver`, "Who waits in the
            // poller"): what it wakes goes to `woken`, served next round.
            if global_turn
                && self.sh.driver.should_poll()
                && self.sh.netpoll_if_older(crate::driver::TICK_POLL_BOUND) > 0
            {
                continue;
            }
            if global_turn && !affine_full {
                if let Some(g) = steal_one(|| self.sh.injector.steal()) {
                    return Some((g, false));
                }
            }
            if let Some(g) = q.take_next() {
                p.clear_kept();
                return Some((g, true));
            }
            // At the cap, goroutines already running take turns first.
            if !local_turn && !self.sh.sliced.is_empty() {
                if let Some(g) = steal_one(|| self.sh.sliced.steal()) {
                    return Some((g, false));
                }
            }
            if affine_full && !local_turn {
                if let Some(g) = steal_one(|| self.sh.injector.steal()) {
                    return Some((g, false));
                }
            }
            if let Some(g) = q.pop().or_else(|| q.refill_from(&self.sh.injector)) {
                return Some((g, false));
            }
            // Ready I/O before stealing (Go's findRunnable step 6); one
            // Relaxed load when no goroutine waits on the poller.
            if self.sh.driver.should_poll() {
                if let Some(g) = self.sh.netpoll_take() {
                    return Some((g, false));
                }
            }
            return None;
        }
    }

    /// Go's stealWork: up to 4 passes over the other Ps in random order.
    pub(super) fn steal_work(&self) -> Option<GRef> {
        let n = self.sh.procs();
        let me = self.p().id;
        for pass in 0..STEAL_TRIES {
            let last = pass == STEAL_TRIES - 1;
            let r = self.local().rand();
            let (start, step) = (
                super::rand::below(r, n),
                coprime_step(n, (r >> 32) as usize),
            );
            let mut i = start;
            for _ in 0..n {
                if i != me {
                    if let Some(g) = self.steal_from(i, last) {
                        bump(&self.p().counters.steals);
                        return Some(g);
                    }
                }
                i = (i + step) % n;
            }
        }
        None
    }

    pub(super) fn steal_from(&self, victim: usize, take_runnext: bool) -> Option<GRef> {
        let v = &self.sh.ps[victim];
        let running = matches!(pstate(v.status.load(Ordering::Relaxed)), P_USER | P_SCHED);
        v.runq.steal_into(self.runq(), take_runnext, running)
    }

    /// If `set_procs` dropped our P, destroy it (Go's procresize does it
    /// for every dropped P while the world is stopped; see
    /// `sched::procresize`). Returns whether it did: we have no P now.
    #[inline]
    pub(super) fn retire_p(&self) -> bool {
        match self.m.p.get() {
            Some(p) if self.sh.p_dropped(p) => {}
            _ => return false,
        }
        let was_spinning = self.m.spinning.swap(false, Ordering::Relaxed);
        if was_spinning {
            self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
        }
        // A goroutine handed to us with the P (`M::nextg`) runs elsewhere:
        // kept here, it waited for this M to get a P again, maybe for ever
        // (`shrink_and_grow_under_hogs_and_ping_pong` hung in 1 of 4 runs:
        // a ping-pong goroutine runnable, every P running hogs, none
        // looking for it). Queued before the P is destroyed, so that the
        // destroyer's re-check sees it.
        if let Some(g) = self.m.take_nextg() {
            self.sh.injector.push(g);
        }
        // We stop without looking, but two kinds of work count on us to:
        // submitters that skipped `wakep` while we spun, and a goroutine we
        // put on the global queue ourselves just before (`globrunqput(g,
        // false)` after a preemption: "we hold a P, we will look").
        // `destroyp` re-checks every queue and wakes an M (Go's rule for
        // the last spinning M). (Without it, a goroutine queued just before
        // waited with every M asleep:
        // `work_queued_while_spinning_ms_retire_is_never_stranded` hung in
        // 1 of 40 runs, 4 of 60 under load; found with an event ring.)
        let p = self.releasep();
        self.sh.destroyp(p);
        true
    }

    /// Go's resetspinning.
    pub(super) fn resetspinning(&self) {
        self.m.spinning.store(false, Ordering::Relaxed);
        self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
        self.sh.wakep();
    }
}

/// Ms parked with an asynchronously preempted ThreadAffine goroutine above
/// which `find_runnable` serves the global queue (where those goroutines
/// wait) before the local one: `max(AFFINE_PARKED_MIN, AFFINE_PARKED_PER_P
/// * procs)`. A soft cap on the threads ThreadAffine preemption costs.
///
/// The cap trades thread count for start latency: at the cap a goroutine
/// waiting in a local queue starts only on the every-61st-slice turn (each
/// one started is preempted in turn and pins one more thread). Below it
/// Go's order holds. So it is high enough that ordinary loads (tens of
/// call-free loops) never reach it (40 loops on 2 Ps: fairness index 0.99
/// either way, while a cap of 16 dropped it to 0.58 in a 2 s run), and low
/// enough that a burst of thousands of short hogs stays at tens of threads
/// instead of one per hog.
const AFFINE_PARKED_PER_P: usize = 8;
const AFFINE_PARKED_MIN: usize = 64;

impl Shared {
    /// See `AFFINE_PARKED_PER_P`; at most half of `affine_parked_limit`,
    /// so that the slow growth past the cap has room before the limit.
    pub(super) fn affine_parked_cap(&self) -> usize {
        (AFFINE_PARKED_PER_P * self.procs())
            .max(AFFINE_PARKED_MIN)
            .min(self.affine_parked_limit() / 2)
            .max(1)
    }

    /// The most Ms ThreadAffine preemption may keep parked: half of the
    /// threads `max_threads` leaves beside one M per P and sysmon (the
    /// other half stays for blocking calls, locked goroutines and idle
    /// Ms). At the limit the SIGURG handler refuses to preempt in
    /// ThreadAffine mode (`Refusal::Threads`): the goroutine runs on until
    /// its next runtime call, as without asynchronous preemption, instead
    /// of the runtime dying of thread exhaustion (100 no-call loops on 2 Ps
    /// with `max_threads(64)` did, every run: the soft cap was 64 parked
    /// Ms).
    pub(crate) fn affine_parked_limit(&self) -> usize {
        self.affine_parked_limit_at(self.procs())
    }

    /// `affine_parked_limit` with `procs` Ps.
    pub(crate) fn affine_parked_limit_at(&self, procs: usize) -> usize {
        (self.cfg.max_threads.saturating_sub(procs.saturating_add(1)) / 2).max(1)
    }

    /// Are `affine_parked_cap()` Ms parked with preempted ThreadAffine
    /// goroutines?
    pub(super) fn affine_full(&self) -> bool {
        self.affine_parked.load(Ordering::Relaxed) >= self.affine_parked_cap()
    }

    /// For the P at slice `tick`: (at the cap?, the turn of everything
    /// but `sliced`?). With `k` = parked Ms / cap (≥ 1, a fraction), that
    /// turn is every `GLOBAL_CHECK * k³`-th slice.
    ///
    /// Each goroutine started on that turn may pin one more thread, while
    /// a pinned one frees its thread after the slices it still needs: at
    /// a fixed turn (every 61st) the count drifts up without bound once
    /// goroutines need more than 61 slices to finish, and wanders near
    /// that (85-347 Ms for 1,000 hogs of ~50 slices each in a debug
    /// build, one CI run failing at 347, when fresh goroutines in the
    /// global queue were also started at every slice at the cap). A turn
    /// that grows rarer as the count grows settles
    /// where goroutines need about `61 * k³` slices, and still starts
    /// every queued goroutine eventually, so none starves behind pinned
    /// CPU hogs that never finish (only the thread count grows then, as
    /// the fourth root of the slices run).
    pub(super) fn affine_turns(&self, tick: u64) -> (bool, bool) {
        let parked = self.affine_parked.load(Ordering::Relaxed);
        let cap = self.affine_parked_cap();
        if parked < cap {
            return (false, false);
        }
        let (parked, cap) = (parked as u64, cap as u64);
        let cube = |x: u64| x.saturating_mul(x).saturating_mul(x);
        let period = GLOBAL_CHECK.saturating_mul(cube(parked)) / cube(cap);
        (true, tick.is_multiple_of(period.max(1)))
    }
}

/// A step in 1..n coprime to n, so `start + k*step mod n` visits every P
/// once (Go's randomOrder).
pub(super) fn coprime_step(n: usize, r: usize) -> usize {
    if n <= 1 {
        return 1;
    }
    let mut s = r % n;
    loop {
        s = s % (n - 1) + 1;
        if gcd(s, n) == 1 {
            return s;
        }
        s += 1;
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::coprime_step;

    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }

    #[test]
    pub(super) fn coprime_step_visits_every_p_exactly_once_from_any_start() {
        let mut rs: Vec<usize> = (0..300).collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            rs.push(x as usize);
        }
        rs.extend([usize::MAX, usize::MAX - 1, 1 << 63]);
        for n in 1..=64usize {
            for &r in &rs {
                let step = coprime_step(n, r);
                if n > 1 {
                    assert!((1..n).contains(&step), "n={n} r={r}: step {step}");
                }
                for start in 0..n {
                    let mut visits = vec![0u8; n];
                    let mut i = start;
                    for _ in 0..n {
                        visits[i] += 1;
                        i = (i + step) % n;
                    }
                    assert!(
                        visits.iter().all(|&v| v == 1),
                        "n={n} r={r} step={step} start={start}: {visits:?}"
                    );
                }
            }
        }
    }

    #[test]
    pub(super) fn coprime_step_reaches_every_coprime_step() {
        // The steal order is random only if every valid step can come up.
        for n in 2..=64usize {
            let got: HashSet<usize> = (0..4 * n).map(|r| coprime_step(n, r)).collect();
            let want: HashSet<usize> = (1..n).filter(|&s| gcd(s, n) == 1).collect();
            assert_eq!(got, want, "n={n}");
        }
        assert_eq!(coprime_step(1, 12345), 1);
    }
}
