//! GOMAXPROCS at run time (Go's `procresize` and `(*p).destroy`).
//!
//! Go stops the world, swaps `allp` for an array of the new length, moves
//! the queues of the Ps it drops to the global queue, and starts the world.
//! gosched keeps every P it could ever need in one fixed array (`MAX_PROCS`
//! of them, about 1 KiB each) so that thieves, sysmon and `ready` index Ps
//! without a lock, and changes only how many are *live*: `ps[..gomaxprocs]`.
//! Instead of stopping every P, a resize retires only the Ps it drops:
//!
//! 1. Growing: under the `pidle` lock, raise `gomaxprocs` and put the new Ps
//!    (dead until now) on the idle list; wake an M if work waits.
//! 2. Shrinking: under the `pidle` lock, lower `gomaxprocs` and take the
//!    dropped Ps that are idle off the idle list; destroy those at once.
//!    Every other dropped P has an owner, which destroys it the next time it
//!    is on g0 (`G0::retire_p`, a Relaxed load per scheduling round) or
//!    hands it on (`handoffp`/`pidleput` destroy a dropped P instead). To
//!    make that soon, the resizer asks each dropped P's goroutine to yield
//!    (the cooperative flag and, with asynchronous preemption, SIGURG: a
//!    no-call loop yields within microseconds), takes a P in a blocking call
//!    at once (sysmon's retake), and after `RETIRE_GRACE` takes a P whose
//!    goroutine still runs (the blocked-thread retake: the goroutine goes on
//!    without a P until its next scheduling point, and sysmon signals it
//!    once a quantum until it gets there, `M::pless_run`). In ThreadAffine
//!    mode the goroutines preempted off dropped Ps keep their threads
//!    (safe-point rule 6 does not count them: their threads exist
//!    already), so a later grow checks that the threads `max_threads`
//!    leaves fit beside them (`grow_fits`).
//! 3. Destroying (`destroyp`, by whoever owns the P): its `runnext`, yield
//!    slot and local queue go to the global queue in that order (the order
//!    they would have run in), its caches of free Gs and stacks to the
//!    global ones; it becomes `P_DEAD`. Then, as wherever an M gives up a
//!    P (`handoffp`, the last spinning M), if any work waits anywhere, it
//!    wakes an M: its owner's M may have queued a goroutine counting on
//!    looking at the queues again with this P.
//!
//! The resize returns when every dropped P is dead, so when `set_procs(n)`
//! returns at most `n` Ps run goroutines. Timers are global, not per P:
//! none move. Changes of `gomaxprocs` happen under the `pidle` lock so that
//! `pidleput` (which checks it under the same lock) never parks a dropped P
//! on the idle list.
//!
//! Rejected: a real stop-the-world (every P stopped for a resize that
//! concerns a few); reallocating `ps` (every reader would need a lock or
//! an epoch scheme on the hottest paths).

use std::io;
use std::ptr::{self};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::builder::MAX_PROCS;
use crate::sched::RuntimeLock;

/// How long a dropped P's goroutine may go on running after it was asked to
/// yield before the resizer takes the P from under it.
const RETIRE_GRACE: Duration = Duration::from_millis(2);

/// The resizer's pause between looks at the dropped Ps.
const RETIRE_POLL: Duration = Duration::from_micros(50);

impl Shared {
    /// GOMAXPROCS now.
    #[inline]
    pub(crate) fn procs(&self) -> usize {
        self.gomaxprocs.load(Ordering::Relaxed)
    }

    /// The Ps that were ever live (whose counters may be non-zero).
    pub(crate) fn used_ps(&self) -> &[P] {
        &self.ps[..self.ps_used.load(Ordering::Relaxed)]
    }

    /// Is `p` beyond GOMAXPROCS, to be destroyed by its owner?
    #[inline]
    pub(crate) fn p_dropped(&self, p: usize) -> bool {
        p >= self.gomaxprocs.load(Ordering::Relaxed)
    }

    /// Go's `(*p).destroy`: empties P `p` into the global queues and marks
    /// it dead, then wakes an M if any work waits. The caller owns `p`
    /// (took it off the idle list, or holds it in `P_HANDOFF` by its own
    /// hand) and, if it was spinning, has stopped (`nmspinning` no longer
    /// counts it).
    pub(crate) fn destroyp(&self, p: usize) {
        let pp = &self.ps[p];
        debug_assert!(self.p_dropped(p), "destroying live P {p}");
        // SAFETY: the caller owns `p` (see above): nobody else touches its
        // local data. Thieves only steal through `stealer`, which the
        // `Worker` tolerates, and CAS `runnext`, which the swap tolerates.
        let l = unsafe { &mut *pp.local.get() };
        // SAFETY: as above.
        unsafe { pp.runq.owner() }.drain(|g| self.injector.push(g));
        if !l.gfree.is_empty() {
            self.gfree.rt_lock().append(&mut l.gfree);
        }
        if !l.stacks.is_empty() {
            self.stacks.put_batch(l.stacks.drain(..));
        }
        // A revived P takes a fresh batch of goroutine ids.
        l.goid_next = 0;
        l.goid_end = 0;
        pp.m.store(ptr::null_mut(), Ordering::Relaxed);
        // Release: our writes to the local data happen-before a revival.
        pp.status.store(P_DEAD, Ordering::Release);
        // Whoever destroys a P stops looking at the run queues with it, yet
        // more than the goroutines just moved may count on it to look (Go
        // re-checks wherever an M gives up a P: `handoffp` starts an M for
        // global work, the last spinning M re-checks every queue):
        // - a goroutine its M queued on the global queue just before without
        //   waking anyone, because "we hold a P, we will look"
        //   (`queue_global(.., false)`): the goroutine of a ThreadAffine M,
        //   preempted by this very shrink's signal, whose `stoplockedm`
        //   then hands the P to `handoffp`, which destroys it; or a
        //   goroutine queued by `after` just before `retire_p`;
        // - submitters that skipped `wakep` while the owner spun.
        // Without this re-check (only moved goroutines woke an M), the
        // first kind waited with every live P idle and every M asleep until
        // the next resize (in tests/procs.rs,
        // `work_queued_while_spinning_ms_retire_is_never_stranded` hung in
        // 1 of 20-40 runs, and the no-call loop of
        // `a_loop_preempted_off_a_dropped_p_runs_on_while_the_other_ps_idle`
        // stopped in every run). Dekker with the submitters' `wakep` (see
        // the spinning protocol). Resizes are rare: the look at every queue
        // costs nothing that matters.
        fence(Ordering::SeqCst);
        if self.any_work() {
            self.wakep();
        }
    }

    /// `Runtime::set_procs`: Go's procresize (module docs). Returns the
    /// previous count. Refuses more Ps than `max_threads` can run
    /// (`builder::min_threads`): accepted, they made `newm` die of thread
    /// exhaustion as soon as they were busy (`set_procs(8)` under
    /// `max_threads(3)` returned Ok).
    pub(crate) fn procresize(&self, n: usize) -> io::Result<usize> {
        if n == 0 || n > MAX_PROCS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("set_procs({n}): the number of Ps must be in 1..={MAX_PROCS}"),
            ));
        }
        if self.cfg.max_threads < crate::builder::min_threads(n) {
            return Err(crate::builder::too_few_threads(n, self.cfg.max_threads));
        }
        while self
            .resizing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            crate::sleep(RETIRE_POLL);
        }
        let old = self.procs();
        if n > old {
            if let Err(e) = self.grow_fits(n) {
                self.resizing.store(false, Ordering::Release);
                return Err(e);
            }
            self.grow(old, n);
        } else if n < old {
            self.shrink(old, n);
        }
        self.resizing.store(false, Ordering::Release);
        // sysmon sizes its view from `gomaxprocs` on its next tick.
        self.wake_sysmon();
        Ok(old)
    }

    /// Growing to `n` Ps needs a thread for each, beside the threads held
    /// by goroutines that ThreadAffine preemption parked: no more of those
    /// than `n` Ps leave for them (`affine_parked_limit_at(n)`, half of
    /// what `max_threads` leaves beside the Ps and sysmon; the rest is for
    /// blocking calls, locked goroutines and hand-offs). A shrink adds to
    /// them past the limit: the goroutines preempted off the dropped Ps
    /// keep their threads, and beside call-free loops none of them runs
    /// again soon. Growing anyway, with `max_threads` at the fewest `n` Ps
    /// accept, the Ps' new threads died of thread exhaustion: shrinking to
    /// 1 and growing back beside busy loops did, every time, after a few
    /// rounds. Goroutines left running without a P are not counted: they
    /// are parked (and counted) within a quantum, or asleep in the kernel,
    /// where they are blocking calls in all but name (counting them
    /// refused a grow while two goroutines waited in plain pipe reads).
    fn grow_fits(&self, n: usize) -> io::Result<()> {
        if self.cfg.mode != crate::builder::PreemptMode::ThreadAffine {
            return Ok(());
        }
        let pinned = self.affine_parked.load(Ordering::Relaxed);
        let room = self.affine_parked_limit_at(n);
        if pinned <= room {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "set_procs({n}): {pinned} threads hold goroutines preempted in ThreadAffine mode, \
                 more than max_threads({}) leaves for them beside {n} Ps ({room}); try again once \
                 they have run, or raise Builder::max_threads / GOSCHED_MAXTHREADS",
                self.cfg.max_threads
            ),
        ))
    }

    fn grow(&self, old: usize, n: usize) {
        // Takes runtime locks and never parks.
        let _np = NoPreempt::enter();
        {
            let mut idle = self.pidle.rt_lock();
            // Counted before sysmon can see them, idle or dead (see
            // `Shared::npidle`).
            self.npidle.fetch_add(n - old, Ordering::SeqCst);
            self.gomaxprocs.store(n, Ordering::SeqCst);
            for p in old..n {
                let pp = &self.ps[p];
                debug_assert_eq!(pp.status.load(Ordering::Relaxed), P_DEAD);
                pp.status.store(P_IDLE, Ordering::Release);
                idle.push(p);
            }
            self.ps_used.fetch_max(n, Ordering::Relaxed);
        }
        // Work queued while fewer Ps ran can start now: one spinning M, which
        // wakes the next when it finds work (the usual ramp-up).
        fence(Ordering::SeqCst);
        if self.any_work() {
            self.wakep();
        }
    }

    fn shrink(&self, old: usize, n: usize) {
        let idle_dropped: Vec<usize> = {
            let _np = NoPreempt::enter();
            let mut idle = self.pidle.rt_lock();
            self.gomaxprocs.store(n, Ordering::SeqCst);
            let mut dropped = Vec::new();
            idle.retain(|&p| {
                let keep = p < n;
                if !keep {
                    dropped.push(p);
                }
                keep
            });
            self.npidle.fetch_sub(dropped.len(), Ordering::SeqCst);
            for &p in &dropped {
                self.ps[p].status.store(P_HANDOFF, Ordering::Relaxed);
            }
            dropped
        };
        for p in idle_dropped {
            let _np = NoPreempt::enter();
            self.destroyp(p);
        }
        let start = Instant::now();
        let mut asked = vec![false; old - n];
        loop {
            let mut pending = false;
            let me = self.my_p();
            for p in n..old {
                let st = pstate(self.ps[p].status.load(Ordering::Acquire));
                if st == P_DEAD {
                    continue;
                }
                pending = true;
                if me == Some(p) {
                    // Our own P, running us: our next park (below) retires
                    // it.
                    continue;
                }
                let _np = NoPreempt::enter();
                match st {
                    P_SYSCALL => {
                        self.retake(p, P_SYSCALL);
                    }
                    P_USER if start.elapsed() >= RETIRE_GRACE => {
                        self.retake(p, P_USER);
                    }
                    P_USER if !asked[p - n] => {
                        asked[p - n] = true;
                        self.preempt_p(p, true);
                    }
                    _ => {}
                }
            }
            if !pending {
                return;
            }
            crate::sleep(RETIRE_POLL);
        }
    }
}

impl Shared {
    /// The P the calling goroutine runs on, if it runs on this runtime and
    /// holds its P: that P's status is `P_USER` owned by this M. Not the P
    /// of a goroutine inside `blocking()` (`P_SYSCALL`, or already taken
    /// by sysmon for another M while `M::p` still names it): such a
    /// goroutine does not park at `crate::sleep` (a plain thread sleep
    /// there), so the shrink must take that P like any other. It skipped
    /// "its own" P and waited for ever (`set_procs` from inside
    /// `blocking()` while on a dropped P).
    fn my_p(&self) -> Option<usize> {
        let _np = NoPreempt::enter();
        let m = cur_m();
        if m.is_null() {
            return None;
        }
        // SAFETY: non-null `m` is this thread's live M; in a no-preempt
        // region we cannot move to another thread.
        let m = unsafe { &*m };
        let p = ptr::eq(m.shared, self).then(|| m.p.get()).flatten()?;
        (self.ps[p].status.load(Ordering::Acquire) == pstatus(m, P_USER)).then_some(p)
    }
}
