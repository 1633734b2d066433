//! The scheduler's side of the driver: how an idle M parks in the poller
//! and is woken from it, and how goroutines a poll woke become runnable
//! (Go's netpoll, netpollBreak and injectglist).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{poll_bound, SYSMON_BACKOFF_CAP, SYSMON_WATCH_AFTER};
use crate::sched::g::GRef;
use crate::sched::{Shared, M};

/// The scheduler's side of the seam.
impl Shared {
    /// Wakes M `m` from `stopm`: its note, and the poller if it is the
    /// sleeper (step 2 of "Who waits in the poller").
    ///
    /// The sleeper blocks in the poller, never on its note's futex (it
    /// leaves the role before it can wait there, and `Note::wait` returns
    /// at once on a set note), so it gets the poller break instead of a
    /// futex wake: one system call, not two.
    pub(crate) fn wake_m(&self, m: &M) {
        let was_clear = m.note.set();
        std::sync::atomic::fence(Ordering::SeqCst);
        if std::ptr::eq(self.timer_m.load(Ordering::SeqCst), m) {
            self.driver.os.wake();
        } else if was_clear {
            m.note.wake_futex();
        }
    }

    /// The sleeper's wait (step 1): until its note is set, `timeout` or I/O
    /// readiness. Returns whether the note was set and the goroutines the
    /// poll woke (the caller makes them runnable, e.g. with `inject`).
    pub(crate) fn park_in_driver(&self, m: &M, timeout: Option<Duration>) -> (bool, Vec<GRef>) {
        // Dekker with `wake_m`: our role (`timer_m`, set by the caller)
        // before our look at the note; its note before its look at the
        // role.
        std::sync::atomic::fence(Ordering::SeqCst);
        if m.note.take() {
            return (true, Vec::new());
        }
        self.driver.blocked.store(true, Ordering::Relaxed);
        let woken = self.driver.poll(timeout);
        self.driver.blocked.store(false, Ordering::Relaxed);
        self.driver
            .last_poll
            .store(self.nanotime(), Ordering::Relaxed);
        (m.note.take(), woken)
    }

    /// A non-blocking poll (find_runnable, sysmon): makes the goroutines it
    /// wakes runnable; returns how many. Never inlined: it keeps the poll's
    /// event buffer and code out of `find_runnable`, whose common path only
    /// loads `should_poll`'s counter.
    #[inline(never)]
    pub(crate) fn netpoll_now(&self) -> usize {
        let woken = self.driver.poll(Some(Duration::ZERO));
        self.driver
            .last_poll
            .store(self.nanotime(), Ordering::Relaxed);
        let n = woken.len();
        self.inject(woken, true);
        n
    }

    /// `find_runnable`'s poll before stealing (Go's findRunnable): returns
    /// the first goroutine the poll wakes, for the caller to run at once,
    /// and injects the rest, waking an M only if there is a rest (Go's
    /// injectglist of the tail).
    ///
    /// `netpoll_now` wakes an M for every batch. Here that M would find
    /// nothing (we run the goroutine), give up its P and, the P idle,
    /// become the poller sleeper; from then on our own polls were skipped
    /// (an M blocks in the poller) and each event of a request/reply
    /// exchange woke that thread instead: a thread switch per message,
    /// ~90,000 in a one-connection round-trip benchmark where Go makes
    /// ~3,000, and a round trip of ~26 µs where Go takes ~19 µs.
    #[inline(never)]
    pub(crate) fn netpoll_take(&self) -> Option<GRef> {
        let mut woken = self.driver.poll(Some(Duration::ZERO));
        self.driver
            .last_poll
            .store(self.nanotime(), Ordering::Relaxed);
        if woken.is_empty() {
            return None;
        }
        let first = woken.remove(0);
        self.inject(woken, true);
        Some(first)
    }

    /// sysmon's poll while Ps are busy (step 4): polls if goroutines wait
    /// and the last poll is older than `poll_bound`. Returns how long
    /// sysmon may sleep before it should look again (None: no bound).
    ///
    /// The bound holds while any descriptor is registered, not only while
    /// a goroutine waits: a goroutine that parks right after sysmon looked
    /// does not wake sysmon (that would add a futex wake to every park on
    /// I/O), so sysmon must look again within the bound anyway. (It used
    /// to sleep its idle period, 10 ms, whenever it found no waiter, so
    /// a reader served beside busy Ps waited ~10 ms per message.)
    pub(crate) fn sysmon_netpoll(&self) -> Option<Duration> {
        if self.driver.registered.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let bound = poll_bound(self.cfg.quantum);
        // Nobody waits, or an M blocks in the poller and gets every event
        // itself: nothing to poll now.
        if self.driver.should_poll() {
            self.netpoll_if_older(bound);
        }
        Some(bound)
    }

    /// Wakes sysmon: its note, and its watch of the poller if it is in one
    /// (step 5 of "Who waits in the poller"). Every waker of sysmon calls
    /// this, never `sysmon_note.wake` directly.
    pub(crate) fn wake_sysmon(&self) {
        if !self.sysmon_note.set() {
            return; // Already set: whoever set it woke sysmon.
        }
        // Dekker with `sysmon_wait`: our note before our look at the
        // watch flag; its flag before its look at the note.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.driver.sysmon_watching.load(Ordering::SeqCst) {
            self.driver.os.unwatch();
        } else {
            self.sysmon_note.wake_futex();
        }
    }

    /// sysmon's sleep while every P is busy: `timeout`, or less if it is
    /// woken (returns true) or, while it watches the poller, if I/O gets
    /// ready (it polls, and returns true). It watches when goroutines wait
    /// for I/O, no M blocks in the poller, and a P is stuck (its goroutine
    /// has run the wake-up granularity) or no M has polled for
    /// `SYSMON_WATCH_AFTER` (step 5 of "Who waits in the poller").
    ///
    /// Otherwise it sleeps on its note, at most `poll_cap` (sysmon_netpoll's
    /// bound) and, while goroutines wait for I/O, only until the Ps' polls
    /// would be stale, backing off from there to `poll_cap` while they go
    /// on polling: a P that leaves a switching phase for one long goroutine
    /// is noticed within ~`SYSMON_WATCH_AFTER` of its last poll (sleeping
    /// the whole bound left replies waiting up to 1 ms after every
    /// quantum-end poll beside a hog), and in a busy server, whose Ps poll
    /// all the time, sysmon still wakes no more than about once per
    /// `SYSMON_BACKOFF_CAP`. (With a cap of `poll_cap`, 1 ms at the default
    /// quantum, and a backoff that outlived idle periods, a long request
    /// that began right after a poll went unnoticed for up to 1 ms while
    /// replies to short ones queued: the bimodal benchmark's short-request
    /// p99 at 50 % load was ~1.6-2.0 ms.) A wake-up of sysmon (a P got
    /// busy, a timer, a wake-up preemption) resets the backoff.
    pub(crate) fn sysmon_wait(&self, timeout: Duration, poll_cap: Option<Duration>) -> bool {
        let d = &self.driver;
        let watch_after = SYSMON_WATCH_AFTER.as_nanos() as u64;
        let last = d.last_poll.load(Ordering::Relaxed);
        let now = self.nanotime();
        let age = now.saturating_sub(last);
        let quiet = d
            .sysmon_quiet_until
            .load(Ordering::Relaxed)
            .saturating_sub(now);
        // A P whose goroutine has run for the wake-up granularity is stuck
        // in it: I/O readiness would wait for its next scheduling point,
        // and a wake-up preemption can make room now. Ps that only run
        // younger slices take I/O at their own polls (before they idle,
        // and every `GLOBAL_CHECK` slices).
        let gran = crate::sched::WAKEUP_GRANULARITY.as_nanos() as u64;
        let longest = self.longest_slice();
        let stuck = longest.is_some_and(|(_, ran, _)| ran >= gran);
        let stale = quiet == 0 && (stuck || age >= watch_after);
        if !stale || !d.should_poll() || d.os.break_pending() {
            let mut t = poll_cap.map_or(timeout, |c| c.min(timeout));
            if quiet > 0 {
                t = t.min(Duration::from_nanos(quiet));
            }
            if d.should_poll() && !stale && quiet == 0 {
                let cap = (poll_bound(self.cfg.quantum).as_nanos() as u64)
                    .min(SYSMON_BACKOFF_CAP.as_nanos() as u64);
                let backoff = next_backoff(&d.sysmon_backoff, watch_after, cap);
                let until_stale = Duration::from_nanos((watch_after - age).max(backoff));
                t = t.min(until_stale);
                if let Some(young) = self.until_stuck(longest, gran) {
                    t = t.min(young);
                }
            }
            let r = self.sysmon_note.wait(Some(t));
            if r {
                // Woken: a P got busy, a timer or a wake-up needs us; the
                // Ps' polling may have stopped: look again soon.
                self.sysmon_backoff_reset();
                self.sysmon_quiet_reset();
            }
            return r;
        }
        self.sysmon_backoff_reset();
        d.sysmon_watching.store(true, Ordering::SeqCst);
        if self.sysmon_note.take() {
            d.sysmon_watching.store(false, Ordering::Relaxed);
            return true;
        }
        let ready = d.os.watch(timeout);
        d.sysmon_watching.store(false, Ordering::SeqCst);
        if ready && d.should_poll() {
            if self.netpoll_now() == 0 {
                self.sysmon_quiet(watch_after);
            } else {
                self.sysmon_quiet_reset();
            }
        }
        self.sysmon_note.take() || ready
    }

    /// How long sysmon may sleep before the longest-running slice
    /// (`longest`, from `longest_slice`) could be stuck (have run `gran`),
    /// backing off while the Ps keep switching: if the slice it slept for
    /// last time has ended meanwhile, the sleep doubles from `gran` up to
    /// `SYSMON_BACKOFF_CAP` (a server serving short requests one after the
    /// other starts a slice every few microseconds). None: no P runs a
    /// goroutine.
    fn until_stuck(&self, longest: Option<(usize, u64, u64)>, gran: u64) -> Option<Duration> {
        let d = &self.driver;
        let Some((p, ran, tick)) = longest else {
            d.sysmon_young.store(NO_SLICE, Ordering::Relaxed);
            d.sysmon_young_backoff.store(0, Ordering::Relaxed);
            return None;
        };
        let key = slice_key(p, tick);
        let prev = d.sysmon_young.swap(key, Ordering::Relaxed);
        let backoff = if prev != key && prev != NO_SLICE {
            next_backoff(
                &d.sysmon_young_backoff,
                gran,
                SYSMON_BACKOFF_CAP.as_nanos() as u64,
            )
        } else {
            0
        };
        Some(Duration::from_nanos(gran.saturating_sub(ran).max(backoff)))
    }

    /// sysmon's watch woke nobody: its events were edges on descriptors
    /// whose goroutines are busy, not parked (a server at saturation: each
    /// request arriving on a connection whose handler still works). Watching
    /// again at once made sysmon run for every such edge, thousands of
    /// times a second on the server's own CPU; it pauses instead, for
    /// `SYSMON_WATCH_AFTER`, doubling with each empty poll in a row up to
    /// `SYSMON_BACKOFF_CAP`. A goroutine that parks meanwhile is found by
    /// its own M's poll before that M idles (`find_runnable`); only one
    /// whose I/O gets ready while every P runs something else waits up to
    /// the pause, as it would for the Ps' polls.
    fn sysmon_quiet(&self, watch_after: u64) {
        let d = &self.driver;
        let cap = SYSMON_BACKOFF_CAP.as_nanos() as u64;
        let pause = next_backoff(&d.sysmon_quiet_backoff, watch_after, cap);
        d.sysmon_quiet_until
            .store(self.nanotime().saturating_add(pause), Ordering::Relaxed);
    }

    /// Ends `sysmon_quiet`'s pause and its doubling.
    fn sysmon_quiet_reset(&self) {
        let d = &self.driver;
        d.sysmon_quiet_until.store(0, Ordering::Relaxed);
        d.sysmon_quiet_backoff.store(0, Ordering::Relaxed);
    }

    /// sysmon was woken, goes idle or watches the poller: its next sleep
    /// while Ps poll on their own starts over from `SYSMON_WATCH_AFTER`
    /// (see `sysmon_wait`).
    pub(crate) fn sysmon_backoff_reset(&self) {
        self.driver.sysmon_backoff.store(0, Ordering::Relaxed);
    }

    /// Polls without blocking if the last poll is older than `bound`;
    /// returns how many goroutines it made runnable.
    pub(crate) fn netpoll_if_older(&self, bound: Duration) -> usize {
        let last = self.driver.last_poll.load(Ordering::Relaxed);
        if self.nanotime().saturating_sub(last) >= bound.as_nanos() as u64 {
            self.netpoll_now()
        } else {
            0
        }
    }

    /// Makes goroutines claimed by a poll runnable, as one batch: onto the
    /// queue of woken goroutines (ahead of preempted CPU hogs, see
    /// `Shared::woken`), then (if `wake`) one `wakep` (Go's injectglist)
    /// and, if every P is busy, a wake-up preemption (`sched::wakeup`).
    pub(crate) fn inject(&self, gs: Vec<GRef>, wake: bool) {
        if gs.is_empty() {
            return;
        }
        for g in gs {
            self.woken.push(g);
        }
        if wake {
            // Dekker with the spinning protocol (see `wakep`).
            std::sync::atomic::fence(Ordering::SeqCst);
            self.wakep();
            let _ = self.wakeup_preempt(false);
        }
    }
}

/// `Driver::sysmon_young` when sysmon slept for no slice.
const NO_SLICE: u64 = u64::MAX;

/// One slice of one P, as `Driver::sysmon_young` remembers it.
fn slice_key(p: usize, tick: u64) -> u64 {
    ((p as u64) << 48) ^ tick
}

/// A doubling backoff kept in `slot` (ns; 0 = start over): returns this
/// step, clamped to `min ..= max(cap, min)`, and stores twice it.
fn next_backoff(slot: &AtomicU64, min: u64, cap: u64) -> u64 {
    let step = slot.load(Ordering::Relaxed).clamp(min, cap.max(min));
    slot.store(step.saturating_mul(2), Ordering::Relaxed);
    step
}
