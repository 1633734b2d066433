//! Idle Ms (Go's stopm, stoplockedm, startlockedm): parking an M without
//! a P, the one sleeper that waits in the driver for timers and I/O, and
//! the hand-offs of a goroutine locked to its thread.
//!
//! A parked M may be pinned to its waker's CPU for the hand-off
//! (`Shared::pin_to_this_cpu`) and undoes that as soon as it wakes: an idle
//! M back to the affinity it started with (`Shared::unpin`, no system call
//! unless it was pinned), an M whose goroutine is locked to it with
//! `lock_os_thread` back to the affinity its thread had when that goroutine
//! last switched out (`G0::unpin_locked`): the goroutine may have set it
//! itself (`sched_setaffinity` to keep to one CPU), and a pin must not widen
//! it again.

use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::schedule::G0;
use super::*;

impl G0<'_> {
    /// Go's stopm: park this M (without a P) until handed one. Returns false
    /// at shutdown. While parked it may be the sleeper, waiting in the
    /// driver (`crate::driver`): it wakes at the earliest deadline or on
    /// I/O, fires due timers, and tries to run what woke itself.
    pub(super) fn stopm(&self) -> bool {
        debug_assert!(self.m.p.get().is_none());
        self.sh.midle.rt_lock().push(self.m.clone());
        let me = Arc::as_ptr(self.m) as *mut M;
        loop {
            if self.sh.shutdown.load(Ordering::Acquire) {
                return false;
            }
            // The sleeper role: the one M that waits in the driver (until
            // the next timer, I/O, or `wake_m`); see `crate::driver`. Only
            // while a P is idle: with every P busy the Ps poll themselves
            // and sysmon fires timers, and a spare M woken by every event
            // only to find no P (it injects, and waits again) took a CPU
            // from a worker each time: 80,000 thread switches in 2 s of
            // the echo example with 1,000 connections, against 7,000.
            // The M that idles the next P takes the role in its own
            // `stopm`.
            // (We may hold the role already: `fire_as_sleeper` kept it.)
            let held = self.sh.timer_m.load(Ordering::SeqCst) == me;
            let sleeper = (self.sh.timers.next().is_some() || self.sh.driver.waiters() != 0)
                && self.sh.npidle.load(Ordering::SeqCst) > 0
                && (held
                    || self
                        .sh
                        .timer_m
                        .compare_exchange(ptr::null_mut(), me, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok());
            if held && !sleeper {
                self.leave_sleeper_role();
            }
            let (woken, io) = if sleeper {
                let timeout = self
                    .sh
                    .timers
                    .next()
                    .map(|next| Duration::from_nanos(next.saturating_sub(self.sh.nanotime())));
                self.sh.park_in_driver(self.m, timeout)
            } else {
                (self.m.note.wait(None), Vec::new())
            };
            self.sh.unpin(self.m);
            if sleeper && !woken && io.is_empty() && self.timer_due() {
                match self.fire_as_sleeper() {
                    FiredAsSleeper::Run => return true,
                    FiredAsSleeper::Sleep => continue,
                    FiredAsSleeper::NoP => {}
                }
            }
            if sleeper {
                self.leave_sleeper_role();
            }
            // Goroutines the poll woke: queued now, their wake-up below
            // (ourselves if we get a P, else `wakep`).
            let io_ready = io.len();
            self.sh.inject(io, false);
            if self.sh.shutdown.load(Ordering::Acquire) {
                return false;
            }
            if let Some(p) = self.m.take_nextp() {
                self.acquirep(p);
                self.wake_for_io(io_ready, 0);
                return true;
            }
            let timer_due = !woken && self.timer_due();
            if !timer_due && io_ready == 0 {
                continue;
            }
            // A timer is due or I/O woke goroutines. If a P is idle, leave
            // the idle list (unless someone already took us off it and is
            // about to hand us a P), take the P and run them ourselves.
            if let Some(p) = self.leave_idle_with_a_p() {
                self.acquirep(p);
                self.sh.fire_timers();
                self.wake_for_io(io_ready, 1);
                return true;
            }
            // No P for us (every P is busy): fire the timers anyway. The
            // goroutines they (and the poll) wake wait on the global queue
            // for a P, and the deadline moves on, so we sleep instead of
            // spinning on it. sysmon preempts only while someone waits, and
            // may be asleep for a quantum: tell it someone waits now.
            self.wake_for_io(io_ready, 0);
            if self.sh.fire_timers_wait() + io_ready > 0 {
                self.sh.wake_sysmon();
            }
        }
    }

    fn timer_due(&self) -> bool {
        self.sh
            .timers
            .next()
            .is_some_and(|n| n <= self.sh.nanotime())
    }

    /// Takes an idle P and leaves the idle M list, both or neither (under
    /// the list's lock): None if no P is idle, or if someone already took
    /// us off the list and is about to hand us a P (`take_nextp`).
    fn leave_idle_with_a_p(&self) -> Option<usize> {
        let mut idle = self.sh.midle.rt_lock();
        let pos = idle.iter().position(|m| Arc::ptr_eq(m, self.m))?;
        let p = self.sh.pidleget()?;
        idle.swap_remove(pos);
        Some(p)
    }

    /// Ends our sleeper role (`stopm`).
    fn leave_sleeper_role(&self) {
        self.sh.timer_m.store(ptr::null_mut(), Ordering::SeqCst);
        // Dekker with `wake_m`, which skips the futex wake while it sees
        // us as the sleeper: our leaving the role comes before our next
        // look at the note.
        fence(Ordering::SeqCst);
    }

    /// The sleeper woke for a due timer, and nothing else: take an idle P,
    /// fire the timers *keeping the role*, and give the P back and sleep on
    /// if they made nothing runnable (a ticker nobody receives from, a
    /// timer that only re-arms itself).
    ///
    /// Leaving the role before firing made every re-arming timer wake a
    /// second thread: `add_timer` saw no sleeper and, with our P taken,
    /// no idle P either, and woke sysmon (or, with another P idle, started
    /// an M to become the sleeper), once per tick: an idle process with a
    /// 100 µs ticker used 70-95 % of a CPU in a debug build. The P is taken
    /// without `note_busy` (sysmon need not look at a P held for
    /// microseconds) and before firing, so that a goroutine the timers wake
    /// runs here, on this thread, as before.
    fn fire_as_sleeper(&self) -> FiredAsSleeper {
        let Some(p) = self.leave_idle_with_a_p() else {
            return FiredAsSleeper::NoP;
        };
        self.acquirep_quiet(p);
        self.sh.sleeper_firing.store(true, Ordering::SeqCst);
        self.sh.fire_timers_wait();
        self.sh.sleeper_firing.store(false, Ordering::SeqCst);
        // Dekker with `add_timer` (see there).
        fence(Ordering::SeqCst);
        let skipped = self.sh.sleeper_skipped.swap(false, Ordering::SeqCst);
        if self.p().runq.has_work() || self.sh.global_has_work() {
            // Run what they woke, here: we are no longer the sleeper.
            self.leave_sleeper_role();
            self.sh.note_busy();
            if skipped {
                self.sh.wake_timer_owner();
            }
            return FiredAsSleeper::Run;
        }
        // Back to sleep: the loop recomputes the timeout from the heap. P
        // released, then us on the idle list, then the P: a `startm` that
        // takes the P finds an M to hand it to (no new thread), and one
        // that pops us meanwhile hands us another P while we hold none.
        let p = self.releasep();
        self.sh.midle.rt_lock().push(self.m.clone());
        self.sh.pidleput(p);
        FiredAsSleeper::Sleep
    }

    /// After a driver wait in `stopm` made `n` goroutines runnable (on the
    /// global queue), of which we run `ours` ourselves: wake an M for the
    /// rest (the spinning protocol ramps up from there).
    pub(super) fn wake_for_io(&self, n: usize, ours: usize) {
        if n > ours {
            fence(Ordering::SeqCst);
            self.sh.wakep();
        }
    }

    /// Go's stoplockedm: our locked G is not running; give our P away and
    /// sleep until someone hands us a P to run it with. `own_mask`: the
    /// affinity to restore if we are pinned meanwhile (see `unpin_locked`).
    pub(super) fn stoplockedm(&self, own_mask: Option<&libc::cpu_set_t>) -> bool {
        // Our locked G waits in a run queue after an asynchronous
        // preemption (ThreadAffine): count us until it resumes (see
        // `find_runnable`).
        let locked = self.m.locked_g.get();
        let affine = locked.is_some_and(|g| g.affine.load(Ordering::Relaxed));
        let for_wakeup = affine && locked.is_some_and(|g| g.wakeup_kept.replace(false));
        if affine {
            self.sh.affine_parked.fetch_add(1, Ordering::Relaxed);
        }
        if for_wakeup {
            self.sh.wakeup_parked.fetch_add(1, Ordering::Relaxed);
        }
        let ok = self.stoplockedm_wait(own_mask);
        if affine {
            self.sh.affine_parked.fetch_sub(1, Ordering::Relaxed);
        }
        if for_wakeup {
            self.sh.wakeup_parked.fetch_sub(1, Ordering::Relaxed);
        }
        ok
    }

    pub(super) fn stoplockedm_wait(&self, own_mask: Option<&libc::cpu_set_t>) -> bool {
        if let Some(p) = self.m.p.get() {
            if self.m.spinning.swap(false, Ordering::Relaxed) {
                self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
            }
            // What our P runs next decides who gets it: handed to an idle
            // M, the P went to whatever thread that goroutine needed in a
            // second hand-off (a goroutine asynchronously preempted in
            // ThreadAffine mode waits for its own thread): two thread
            // switches per preemption where one will do. Only a P that
            // `set_procs` dropped skips the look (`handoffp` retires it).
            let next = if self.sh.p_dropped(p) {
                None
            } else {
                self.take_ready()
            };
            match next.map(|(g, _)| (g, g.locked_m.get())) {
                // Our own goroutine is next: run it, with our P.
                Some((_, Some(lm))) if ptr::eq(lm.as_ptr(), Arc::as_ptr(self.m)) => return true,
                // We park right below: hand over our CPU with the P.
                Some((_, Some(lm))) => self.startlockedm(lm),
                Some((g, None)) => {
                    let p = self.releasep();
                    self.sh.startm_with(Some(p), Some(g), false, true);
                }
                None => {
                    let p = self.releasep();
                    self.sh.handoffp(p, true);
                }
            }
        }
        loop {
            self.m.note.wait(None);
            self.unpin_locked(own_mask);
            if self.sh.shutdown.load(Ordering::Acquire) {
                return false;
            }
            if let Some(p) = self.m.take_nextp() {
                self.acquirep(p);
                return true;
            }
        }
    }

    /// `Shared::unpin` for an M parked with its locked goroutine: back to
    /// `own_mask`, the affinity the thread had when a goroutine locked with
    /// `lock_os_thread` last switched out (read then by `run`), not to the
    /// one the M started with, which would undo the goroutine's own
    /// `sched_setaffinity`. None (the goroutine is locked only for
    /// ThreadAffine preemption or a panic, or the read failed): `unpin`.
    pub(super) fn unpin_locked(&self, own_mask: Option<&libc::cpu_set_t>) {
        let Some(mask) = own_mask else {
            return self.sh.unpin(self.m);
        };
        // A plain load first, as in `unpin`.
        if !self.m.pinned.load(Ordering::Relaxed) || !self.m.pinned.swap(false, Ordering::Acquire) {
            return;
        }
        // SAFETY: `mask` is this thread's own earlier affinity, read by
        // sched_getaffinity; pid 0 changes only the calling thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask) };
    }

    /// Go's startlockedm: the goroutine we dequeued may run only on `lm`
    /// (which runs its `locked_g` once it has a P): give it our P.
    pub(super) fn startlockedm(&self, lm: NonNull<M>) {
        let p = self.releasep();
        // SAFETY: Ms live as long as Shared.
        let lm = unsafe { lm.as_ref() };
        lm.nextp.store(p + 1, Ordering::Release);
        // We park right after this (see `run`): hand over our CPU too.
        self.sh.pin_to_this_cpu(lm);
        lm.note.wake();
    }
}

/// What `G0::fire_as_sleeper` did.
enum FiredAsSleeper {
    /// Timers woke goroutines: we hold a P to run them, and left the role.
    Run,
    /// Nothing became runnable: P given back, still the sleeper.
    Sleep,
    /// No idle P (or one is being handed to us): the caller goes on as for
    /// any other wake-up.
    NoP,
}
