//! Wake-up preemption: a woken goroutine gets a P within microseconds even
//! when every P runs a CPU hog.
//!
//! Go lets a goroutine woken while every P is busy wait in a run queue
//! until some P reaches a scheduling point: up to a whole quantum (10 ms),
//! longer behind a crowd (golang/go#51071). Linux's schedulers instead let a
//! woken task preempt a task that has had its share. gosched does the
//! latter, in three parts:
//!
//! 1. **Where the woken goroutine waits.** A goroutine woken by a goroutine
//!    goes to its P's `runnext`, as in Go. One woken from outside any P
//!    (a timer fired by sysmon or an idle M, a plain thread's send, a
//!    goroutine in `blocking`) or by a P's scheduler (the timers it fires
//!    between two goroutines: in `runnext`, two due together pushed each
//!    other to the run queue's tail, where nothing below looks) goes to
//!    `Shared::woken`, which every P checks before anything else: it never
//!    queues behind preempted hogs.
//! 2. **Who makes room** (`Shared::wakeup_preempt`, called by `ready` after
//!    it queued into `woken`). If a P is idle or an M spins, they will take
//!    it: nothing to do. Otherwise pick the P whose current goroutine has
//!    run longest in its slice, and only if that is at least
//!    `WAKEUP_GRANULARITY`, and ask it to yield now: the cooperative flag
//!    and, with asynchronous preemption, SIGURG. At most one request is
//!    outstanding per P and slice (`P::wakeup_tick` holds the `schedtick`
//!    it was made in), so a storm of wake-ups sends one signal per P.
//!    In ThreadAffine mode the signal comes second: the request sets the
//!    flag and wakes sysmon, which sends SIGURG only if the goroutine is
//!    still in that slice `WAKEUP_RETRY` (20 µs) later and its thread used
//!    at least half of that in CPU time meanwhile (a thread the kernel left
//!    waiting for a CPU has had no chance to reach a runtime call; sysmon
//!    then looks again with a doubled backoff). A goroutine
//!    preempted by signal keeps its thread parked until it resumes, while a
//!    goroutine that yields at a runtime call keeps nothing; goroutines that
//!    make runtime calls (I/O handlers, channel users: the common case
//!    behind a burst of wake-ups) reach one within microseconds, so only
//!    call-free loops pay a thread hand-off. A goroutine that did not
//!    answer its last cooperative request (`G::wakeup_signal`, cleared when
//!    it yields at a runtime call) gets the signal at once, as in Migrate
//!    mode: a long request or a CPU hog would otherwise cost every wake-up
//!    beside it the 20 µs wait plus one more sysmon wake-up, the thread
//!    switch that puts sysmon on the hog's CPU. Before, a burst of 10,000
//!    wake-ups (10,000 connections closing at once) preempted dozens of
//!    such goroutines by signal and grew the runtime from 3 to 14-51
//!    threads. And while `WAKEUP_PARKED_PER_P` threads per P are parked
//!    with goroutines preempted for wake-ups, requests send no signal at
//!    all (`Shared::wakeup_signal_allowed`): on a slower machine, where a
//!    debug build's goroutines ran past the granularity between runtime
//!    calls, the same burst still grew it to 20-71 threads. Except to a
//!    goroutine that has run `WAKEUP_SIGNAL_ANYWAY` (600 µs) in its slice: a
//!    long request or a CPU hog is worth a parked thread, and one woken
//!    beside two kept ones otherwise held its P to the end. Nor to one
//!    still locked to its thread from an earlier asynchronous preemption
//!    (`G::affine`): parking it parks no new thread, and behind a few long
//!    requests in service at once the cap made every wake-up wait ~1 ms.
//! 3. **No penalty for the preempted.** A goroutine preempted on such a
//!    request goes to its P's `runnext`, not to the tail of the global queue
//!    (`G0::after`): it resumes as soon as the woken goroutine blocks or
//!    its own slice ends, instead of waiting behind every queued goroutine.
//!    In ThreadAffine mode it stays locked to its thread, and its P is handed
//!    to another thread for the woken goroutine, as for any preemption.
//!    It resumes once the woken goroutines have had their turn: when none
//!    is left, or after `WAKEUP_TURN` of theirs, counted from when
//!    the first of them starts (`P::start_turn`; counted from the
//!    preemption, the thread hand-off in between, 40 µs on a VM, used up
//!    most of the turn, and the kept goroutine resumed after one woken
//!    goroutine of several)
//!    (`P::keep_for_wakeup`, `Shared::kept_turn_over`; a woken
//!    goroutine that makes no call is asked to yield then, by sysmon, as
//!    for a wake-up: `Shared::kept_turn_preempt`). Not before
//!    further woken goroutines, but not after the whole stream either: a
//!    burst woken together (a timer tick, a poll that found many sockets)
//!    used to get one goroutine per wake-up preemption, the others waiting
//!    100 µs of hog time each (the last of 16 ran ~5 ms late); behind an
//!    endless stream the hog's thread would wait parked, and the next
//!    wake-up preemption on that P would push it out of `runnext` and park
//!    one more thread.
//!    Nothing takes the kept goroutine's place: one preempted for a later
//!    wake-up (a second long request, itself woken) queues behind it
//!    (`G0::requeue_preempted_for_wakeup`), a goroutine readied on the P
//!    joins the woken ones (`ready`) and a spawned one goes to the run
//!    queue's tail (`Shared::spawn_named`). Displaced to the tail, the kept
//!    goroutine waited behind every newer one: with several long requests
//!    in turn, last in, first out (the bimodal benchmark's 5 ms requests
//!    took 70-140 ms at p99 at 50 % load).
//!
//! Known limitation: a woken goroutine whose burst outlasts its turn
//! (more than `WAKEUP_GRANULARITY` before it blocks; a goroutine's first
//! run on a new thread took 110-370 µs in a debug build) is preempted
//! for the kept one and queued behind it, so it waits for the rest of the
//! kept goroutine's quantum: up to 10 ms by default, for ever with time
//! slicing off (`Duration::MAX`). Giving it further turns, alternating
//! with the kept goroutine, fixes that, but only if sysmon enforces each
//! turn on time, and sysmon looks at a P only when its goroutine runs:
//! when it looks while the P is handed to the woken goroutine's thread it
//! sleeps its idle backoff and that turn lasts up to 10 ms. Waking sysmon
//! when the woken goroutine starts makes turns exact but cost a 1 ms
//! ticker beside a hog 10-30 µs at p50 (latency bench, 2026-12-07); having
//! sysmon look again within 20 µs at a P still switching instead costs
//! nothing there. But further turns taken from the woken queue hurt the
//! bimodal benchmark: a long request back in that queue ran ahead of the
//! short requests woken after it, and the kept long request resumed after
//! each turn before them too (short p50 at 50 % load 0.65-0.83 ms ->
//! 1.6-1.8 ms). Not landed; turns would have to rank below fresh wake-ups.
//!
//! A request put off because no goroutine has run for the granularity yet
//! is made again by sysmon when one has (`wakeup_preempt` returns when).
//! While every P keeps switching goroutines (a busy server: its woken
//! queue is never empty, but every P takes from it within microseconds)
//! sysmon's looks back off from the granularity to `WAKEUP_LOOK_MAX`
//! (1 ms), and a waker wakes sysmon only when it is not already watching
//! (`Shared::sysmon_wakeup_look`): a look every 100 µs, plus one per
//! wake-up, cost a CPU switch each, 7,000-8,000 a second with 64
//! goroutines woken from a plain thread on 2 Ps; now ~1,400-1,600.
//! One request is outstanding per P and slice. If the goroutine refuses it
//! (the signal landed in libc or a signal handler: safe-point rule 4) it is
//! still running that slice when sysmon looks again, and sysmon repeats
//! the request with a backoff: `WAKEUP_RETRY`, doubling up to
//! `WAKEUP_RETRY_MAX` (sysmon's own cap for refused quantum preemptions),
//! for as long as a woken goroutine waits. Before, a refused request was
//! left to the end of the slice: beside a loop that spends half its time
//! in system calls (where signals are delivered, on the way back, at a pc
//! in libc), a 1 ms ticker's p99 was the whole 10 ms quantum. The backoff
//! bounds the signals a goroutine that always refuses receives to ~500/s.
//! sysmon learns of a refusal from the handler, which wakes it (once per
//! signal sent: `Shared::wakeup_signal_refused`); until then it leaves a
//! signalled request alone (`WAKEUP_SIGNALLED_LOOK`, a backstop). Looking
//! again every `WAKEUP_RETRY` instead, until the goroutine had switched
//! out and its P had been handed over, was two of sysmon's ~5 runs per
//! wake-up preemption in the bimodal server, on the server's only CPU
//! (50 % load on the AMD VM: server CPU 89 -> 79 %, short p99 16.9 ->
//! 7.7 ms, long p50 32.9 -> 18.8 ms). Its first look at a signalled
//! request comes once the woken goroutines have had their turn
//! (`WAKEUP_TURN_LOOK`), and applies the turn rule too, so keeping the
//! preempted goroutine aside need not wake it (`look_at_kept_turn`); the
//! backstop follows only if the goroutine is still in that slice.
//!
//! Thrashing: the granularity bounds how often one P can be interrupted
//! (at most once per `WAKEUP_GRANULARITY` of its goroutine's running time),
//! so a hog keeps most of its P even beside a goroutine woken in a loop
//! from outside, and beside a stream of woken goroutines that never lets
//! the woken queue empty, a third (the granularity, then a `WAKEUP_TURN`
//! of twice that). Goroutines readied from inside a P (a channel ping-pong
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
use crate::builder::PreemptMode;

/// A goroutine is preempted for a wake-up only after it ran this long in
/// its slice, and a woken goroutine that makes no call is asked to yield
/// to a kept one after this long (step 3): Linux's CFS wake-up granularity
/// is 1 ms scaled by CPU count. A ThreadAffine wake-up preemption costs
/// 30-60 µs of CPU on a VM (a signal, two thread hand-offs, sysmon's
/// looks), so a hog asked every time it may be keeps over 40 % of its P.
///
/// 100 µs until 2026-12-07: at 50 % load the bimodal server (one CPU, AMD
/// VM) preempted its long requests twice as often, and with twice the
/// overhead fell behind: short-request p99 3.1-4.3 ms against 2.6-2.8 ms
/// at 200 µs (server CPU 87-88 % against 82-84 %, long p50 33-39 ms
/// against 26-28 ms; two alternated batches of 4 and 6 runs); at 30-35 %
/// the two were within the machine's noise (1.3-1.6 ms against
/// 1.5-1.7 ms).
pub(crate) const WAKEUP_GRANULARITY: Duration = Duration::from_micros(200);

/// How long the woken goroutines run beside a goroutine kept aside for
/// them before it resumes, at most (step 3; counted from when the first of
/// them starts): twice the granularity, so beside a stream of woken
/// goroutines a hog keeps a third of its P. Each turn costs a wake-up
/// preemption, in ThreadAffine mode two thread hand-offs besides: with
/// turns of one granularity, a server behind on its short requests (woken
/// queue never empty) spent on those what it needed to catch up. 200 µs
/// until 2026-12-07: the bimodal server at 50 % load (AMD VM without
/// AVX-512), three alternated batches of 5 runs: median short p99 1.60,
/// 2.61 and 1.52 ms with 200 µs, 1.04, 1.55 and 1.14 ms with 400 µs (1.06
/// ms with 600 µs in the first batch); at 30 % 1.97 and 0.69 ms against
/// 1.94 and 0.71 ms; long p50 within noise (17-19 ms either way).
const WAKEUP_TURN: Duration = WAKEUP_GRANULARITY.saturating_mul(2);

/// First repeat of a wake-up request the goroutine refused; doubles per
/// repeat up to `WAKEUP_RETRY_MAX`. In ThreadAffine mode it is also how
/// long a goroutine that makes no runtime calls keeps its P after a
/// cooperative request, before the signal: every wake-up beside a long
/// request pays it. 50 µs gave the bimodal benchmark (sysmon real-time) a
/// short-request p99 at 50 % load of 1.55-1.57 ms; 20 µs, 0.9-1.0 ms.
const WAKEUP_RETRY: Duration = Duration::from_micros(20);
const WAKEUP_RETRY_MAX: Duration = Duration::from_millis(2);

/// How long sysmon leaves a wake-up request that went out as a signal,
/// unless the handler refuses it (and wakes sysmon): a backstop.
const WAKEUP_SIGNALLED_LOOK: Duration = Duration::from_millis(1);

/// When sysmon looks first after a wake-up request went out as a signal:
/// by then the goroutine has switched out and the first woken goroutine
/// has run the granularity if it makes no call (a thread hand-off, then
/// `WAKEUP_GRANULARITY`), so that one look applies the turn rule as well
/// (`kept_turn_preempt`), and keeping the preempted goroutine aside wakes
/// nobody (`look_at_kept_turn`). If the goroutine is still in the slice
/// the request was for, sysmon looks again at `WAKEUP_SIGNALLED_LOOK`.
const WAKEUP_TURN_LOOK: Duration = WAKEUP_GRANULARITY.saturating_mul(2);

/// The longest sysmon waits between looks while a woken goroutine waits
/// but every P keeps switching goroutines (see `wakeup_preempt`).
const WAKEUP_LOOK_MAX: Duration = Duration::from_millis(1);

/// Threads per P that ThreadAffine wake-up preemption may keep parked at
/// once (see `Shared::wakeup_signal_allowed`).
const WAKEUP_PARKED_PER_P: usize = 2;

/// A goroutine that has run this long in its slice is preempted by signal
/// for a wake-up even while `WAKEUP_PARKED_PER_P` threads per P are parked
/// for wake-ups (see `Shared::wakeup_signal_allowed`). Above the 110-370
/// µs a burst's goroutines ran between runtime calls in a debug build on a
/// slow VM (the bursts the cap is for). 1 ms until 2026-12-07: a long
/// request that started while two others were parked held the short ones
/// behind it for that long (bimodal server at 50 % load, AMD VM,
/// alternated batches of 6 and 5 runs: short p99 2.60 / 3.25 ms at 1 ms,
/// 1.82 / 1.99 ms at 600 µs; at 30 % 1.38 -> 0.97 ms; tests/net_scale.rs
/// still 7-8 threads).
const WAKEUP_SIGNAL_ANYWAY: Duration = Duration::from_micros(600);

/// `P::wakeup_tick` when no request is outstanding.
pub(crate) const NO_WAKEUP: u64 = u64::MAX;

/// `P::wakeup_cpu` before sysmon's first look at a request.
pub(crate) const NO_SAMPLE: u64 = u64::MAX;

impl Shared {
    /// Step 2 of the module docs. Called by `ready` (and the netpoller's
    /// `inject`) after queueing into `woken` (and the SeqCst fence before
    /// `wakep`), with `from_sysmon` false; by sysmon while a woken goroutine
    /// still waits, with `from_sysmon` true.
    ///
    /// Returns `Some(d)` if no goroutine has run for the granularity yet,
    /// or (to sysmon) if no P runs one at all: ask again in `d` (sysmon
    /// does; `ready` wakes sysmon so that it does). A P already asked in
    /// its current slice is never asked again in it: if its signal was
    /// refused (a goroutine in libc or a signal handler), sysmon's own
    /// retries, with their backoff, take over.
    pub(crate) fn wakeup_preempt(&self, from_sysmon: bool) -> Option<Duration> {
        if !self.wakeup_may_help() {
            return None;
        }
        let now = self.slice_clock();
        let ns_per_unit = self.ns_per_clock_unit();
        let mut best: Option<(usize, u64, u64)> = None; // (p, ran ns, schedtick)
        for (i, p) in self.ps[..self.procs()].iter().enumerate() {
            let state = pstate(p.status.load(Ordering::Acquire));
            let tick = p.schedtick.load(Ordering::Acquire);
            if p.wakeup_tick.load(Ordering::Relaxed) == tick
                && matches!(state, P_USER | P_SCHED | P_HANDOFF)
            {
                // Already asked in this slice: it is on its way to g0,
                // which takes the woken goroutine first, or there (its
                // goroutine switched out, its new one not started yet), or
                // it refused. Not asking another P while it switches: with
                // a signal sent at once, sysmon's next look often came
                // while the asked P was handed to another thread, and it
                // preempted a second hog for the same wake-up (fairness
                // example, one hog per P: ~1.3 preemptions per wake-up).
                return if from_sysmon {
                    self.wakeup_retry(i, now, ns_per_unit)
                } else {
                    None
                };
            }
            if state != P_USER {
                continue;
            }
            // None: began with a direct yield a moment ago.
            let Some(ran) = slice_ran(p, now, ns_per_unit) else {
                continue;
            };
            if best.is_none_or(|b| ran > b.1) {
                best = Some((i, ran, tick));
            }
        }
        let Some((p, ran, tick)) = best else {
            // No P runs a goroutine: each is between two (or had its slice
            // begin with a direct yield). Whatever they run next may make
            // no call: sysmon looks again within the granularity. It used
            // to plan nothing here and sleep its maximum: with the only P
            // being handed to a kept long request's thread just as sysmon
            // fired a ticker's timer, the request resumed first and the
            // ticker waited 10 ms (time slicing off: up to the request's
            // end, 45 ms; tests/wakeup.rs, 4 runs in 350).
            return from_sysmon.then_some(WAKEUP_GRANULARITY);
        };
        let gran = WAKEUP_GRANULARITY.as_nanos() as u64;
        if ran < gran {
            // Too early to interrupt anyone: ask again when the goroutine
            // that has run longest reaches the granularity. Every P began
            // its slice less than the granularity ago, so the Ps are
            // switching goroutines; if they took woken goroutines since
            // sysmon's last such look (a busy server, whose woken queue is
            // never empty), they will take this one at their next switch,
            // and sysmon looks less and less often, up to
            // `WAKEUP_LOOK_MAX`, instead of every 100 µs: each look takes a
            // CPU from a worker. If they took none, the goroutine that runs
            // now is the one to ask, when it reaches the granularity: a
            // backoff there (applied to every look before) left a woken
            // goroutine waiting 200-400 µs beside a long request resumed a
            // moment before (bimodal benchmark, AMD VM).
            let wait = Duration::from_nanos(gran - ran);
            if from_sysmon {
                let taken = self.woken_taken.load(Ordering::Relaxed);
                let seen = self.wakeup_deferral_seen.swap(taken, Ordering::Relaxed);
                if seen == taken || seen == NO_SAMPLE {
                    self.wakeup_deferrals.store(0, Ordering::Relaxed);
                    return Some(wait);
                }
                let n = self.wakeup_deferrals.fetch_add(1, Ordering::Relaxed);
                let backoff = WAKEUP_GRANULARITY
                    .saturating_mul(1 << n.min(16))
                    .min(WAKEUP_LOOK_MAX);
                return Some(wait.max(backoff));
            }
            if self.sysmon_wakeup_look.load(Ordering::SeqCst) == u64::MAX {
                // Not watching: see `Shared::sysmon_wakeup_look`.
                self.wake_sysmon();
            }
            return Some(wait);
        }
        self.wakeup_deferrals_reset();
        self.ask(p, tick, ran, now, from_sysmon)
    }

    /// Starts sysmon's deferral backoff over (see `wakeup_preempt`): a
    /// request was made, or no woken goroutine waits.
    pub(crate) fn wakeup_deferrals_reset(&self) {
        self.wakeup_deferrals.store(0, Ordering::Relaxed);
        self.wakeup_deferral_seen
            .store(NO_SAMPLE, Ordering::Relaxed);
    }

    /// Asks P `p`, in slice `tick`, to yield for a woken (or kept)
    /// goroutine: at most once per slice (the `wakeup_tick` CAS);
    /// cooperatively first in ThreadAffine mode, with the signal at once
    /// otherwise. Returns when sysmon should look again.
    fn ask(&self, p: usize, tick: u64, ran: u64, now: u64, from_sysmon: bool) -> Option<Duration> {
        let pp = &self.ps[p];
        let prev = pp.wakeup_tick.load(Ordering::Relaxed);
        if pp
            .wakeup_tick
            .compare_exchange(prev, tick, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            pp.wakeup_asked.store(now, Ordering::Relaxed);
            pp.wakeup_retries.store(0, Ordering::Relaxed);
            pp.wakeup_cpu.store(NO_SAMPLE, Ordering::Relaxed);
            self.counters.preempt_wakeup.fetch_add(1, Ordering::Relaxed);
            // A goroutine that did not answer its last cooperative request
            // gets the signal at once, as in Migrate mode.
            let coop_first = self.cfg.mode == PreemptMode::ThreadAffine
                && (!self
                    .p_goroutine(p)
                    .is_some_and(|g| g.wakeup_signal.load(Ordering::Relaxed))
                    || !self.wakeup_signal_allowed(p, ran));
            if coop_first {
                // Cooperatively first (step 2): sysmon sends the signal if
                // the goroutine is still in this slice `WAKEUP_RETRY` later.
                pp.wakeup_signalled.store(false, Ordering::Relaxed);
                self.preempt_slice(p, Some(tick), false);
                if !from_sysmon && !self.sysmon_looks_within(WAKEUP_RETRY) {
                    self.wake_sysmon();
                }
                return Some(WAKEUP_RETRY);
            }
            self.signal_for_wakeup(p, tick);
        }
        None
    }

    /// Sends P `p` the signal for the wake-up request of slice `tick`, and
    /// notes that it went out (see `wakeup_retry`).
    fn signal_for_wakeup(&self, p: usize, tick: u64) {
        self.ps[p].wakeup_signalled.store(true, Ordering::Relaxed);
        self.preempt_slice(p, Some(tick), true);
    }

    /// The SIGURG handler on M `m` refused a signal: if it was a wake-up
    /// request's (`wakeup_signalled`), wake sysmon to repeat it, with its
    /// backoff. Once per signal sent: the flag is cleared here, so a
    /// goroutine whose every signal is refused (inside a signal handler)
    /// does not wake sysmon more often than sysmon signals it.
    /// Async-signal-safe: atomics, and `wake_sysmon`'s one system call.
    #[cfg(feature = "preempt-signal")]
    pub(crate) fn wakeup_signal_refused(&self, m: &M) {
        let Some(pp) = self.ps[..self.procs()]
            .iter()
            .find(|pp| std::ptr::eq(pp.m.load(Ordering::Acquire), m))
        else {
            return;
        };
        if pp.wakeup_signalled.swap(false, Ordering::Relaxed) {
            self.wake_sysmon();
        }
    }

    /// sysmon: a goroutine kept aside for a wake-up (step 3) waits in a P's
    /// `runnext` while a goroutine that started after it (the woken one)
    /// has run `WAKEUP_GRANULARITY` and still runs: ask that P
    /// to yield, as for a wake-up. The turn rule used to be applied only at
    /// the P's next scheduling point, so a woken goroutine that makes no
    /// call (a second long request) held the P until its quantum ended,
    /// with time slicing off until it finished, and the kept one, older,
    /// waited for all of it (tests/wakeup.rs
    /// `a_kept_goroutine_resumes_after_the_woken_ones_turn`). Returns when
    /// to look again (None: no P keeps a goroutine).
    pub(crate) fn kept_turn_preempt(&self) -> Option<Duration> {
        if !self.cfg.wakeup_preempt {
            return None;
        }
        let now = self.slice_clock();
        let ns_per_unit = self.ns_per_clock_unit();
        let gran = WAKEUP_GRANULARITY.as_nanos() as u64;
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Option<Duration>| {
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        };
        for (i, p) in self.ps[..self.procs()].iter().enumerate() {
            let kept = p.kept_tick.load(Ordering::Relaxed);
            if kept == NO_WAKEUP
                || pstate(p.status.load(Ordering::Acquire)) != P_USER
                || !p.runq.next_is_set()
            {
                continue;
            }
            let tick = p.schedtick.load(Ordering::Acquire);
            if tick == kept {
                // Kept in this very slice: no turn has begun yet.
                soonest(Some(WAKEUP_GRANULARITY));
                continue;
            }
            if p.wakeup_tick.load(Ordering::Relaxed) == tick {
                soonest(self.wakeup_retry(i, now, ns_per_unit));
                continue;
            }
            let Some(ran) = slice_ran(p, now, ns_per_unit) else {
                soonest(Some(WAKEUP_GRANULARITY));
                continue;
            };
            if ran < gran {
                soonest(Some(Duration::from_nanos(gran - ran)));
                continue;
            }
            soonest(Some(
                self.ask(i, tick, ran, now, true).unwrap_or(WAKEUP_RETRY),
            ));
        }
        next
    }

    /// Makes sure sysmon looks at wake-up preemption within the
    /// granularity, waking it unless it will anyway: a goroutine joined
    /// `woken` from inside a P about to resume a kept one
    /// (`G0::requeue_preempted_for_wakeup`: sysmon asks for room for it
    /// once the kept one has run the granularity).
    pub(crate) fn look_within_granularity(&self) {
        if !self.sysmon_looks_within(WAKEUP_GRANULARITY) {
            self.wake_sysmon();
        }
    }

    /// A goroutine was just kept aside for a wake-up (step 3): makes sure
    /// sysmon looks at the turn rule (`kept_turn_preempt`) once the woken
    /// goroutines have had their turn, waking it unless it will anyway,
    /// which it nearly always will: it planned that look when it made the
    /// request (`WAKEUP_TURN_LOOK`). Waking it for a look within the
    /// granularity was wasted where sysmon shares the goroutine's CPU: it
    /// ran at once, while the P was still on its way to another thread,
    /// found no turn begun and planned nothing new (2,300 such runs a
    /// second in the bimodal server at 50 % load, traced); that CPU switch
    /// was on the way to the woken goroutine, and a look 1 ms later, the
    /// signalled request's backstop, came as well.
    pub(crate) fn look_at_kept_turn(&self) {
        if !self.sysmon_looks_within(WAKEUP_TURN_LOOK) {
            self.wake_sysmon();
        }
    }

    /// sysmon, while a woken goroutine waits: P `p` was asked in its
    /// current slice and still runs it. Repeats the request once the
    /// backoff since the last one has passed; returns when to look again.
    ///
    /// In ThreadAffine mode the repeat is the signal after a cooperative
    /// first request (step 2), and it is sent only if the P's thread has
    /// used at least half the backoff in CPU time since sysmon's previous
    /// look: a thread the kernel left waiting for a CPU (two busy runtimes
    /// on two CPUs, a loaded host) has had no chance to reach its next
    /// runtime call, and a signal would pin it for nothing.
    fn wakeup_retry(&self, p: usize, now: u64, ns_per_unit: f64) -> Option<Duration> {
        let pp = &self.ps[p];
        let asked = pp.wakeup_asked.load(Ordering::Relaxed);
        let since = Duration::from_nanos((now.saturating_sub(asked) as f64 * ns_per_unit) as u64);
        if pp.wakeup_signalled.load(Ordering::Relaxed) {
            // The signal went out and was not refused: its goroutine is on
            // its way to the scheduler, or the signal to it (a thread the
            // kernel has not run yet). A refusal wakes sysmon (the
            // handler), so there is nothing to look at before then but a
            // lost signal. Looking every `WAKEUP_RETRY` meanwhile was two
            // of sysmon's ~5 runs per wake-up preemption in the bimodal
            // server, on its only CPU. The first look comes after the
            // woken goroutines' turn (`WAKEUP_TURN_LOOK`).
            if since < WAKEUP_TURN_LOOK {
                return Some(WAKEUP_TURN_LOOK - since);
            }
            if since < WAKEUP_SIGNALLED_LOOK {
                return Some(WAKEUP_SIGNALLED_LOOK - since);
            }
        }
        if pstate(pp.status.load(Ordering::Acquire)) != P_USER || self.p_preempting(p) {
            // Switching (or on its way: the handler took the signal): it
            // takes the woken goroutine next (or, handed to a thread whose
            // goroutine is locked to it, runs that one first): look again
            // soon. A repeat sent while the goroutine was on its way to g0
            // was refused (rule 2) and cost its thread one more signal: on
            // a VM where sysmon shares the goroutine's CPU, the first
            // signal's round trip outlasted `WAKEUP_RETRY`.
            return Some(WAKEUP_RETRY);
        }
        let affine = self.cfg.mode == PreemptMode::ThreadAffine;
        if affine && pp.wakeup_cpu.load(Ordering::Relaxed) == NO_SAMPLE {
            pp.wakeup_cpu
                .store(self.p_thread_cpu(p).unwrap_or(0), Ordering::Relaxed);
        }
        let n = pp.wakeup_retries.load(Ordering::Relaxed);
        let wait = retry_backoff(n);
        if since < wait {
            return Some(wait - since);
        }
        if affine {
            if let Some(cpu) = self.p_thread_cpu(p) {
                let ran = cpu.saturating_sub(pp.wakeup_cpu.swap(cpu, Ordering::Relaxed));
                if ran < (wait / 2).as_nanos() as u64 {
                    // Not a refusal, but the machine is busy: look again
                    // after a doubled backoff (each look takes a CPU too).
                    pp.wakeup_asked.store(now, Ordering::Relaxed);
                    pp.wakeup_retries
                        .store(n.saturating_add(1), Ordering::Relaxed);
                    return Some(retry_backoff(n.saturating_add(1)));
                }
            }
        }
        pp.wakeup_asked.store(now, Ordering::Relaxed);
        pp.wakeup_retries
            .store(n.saturating_add(1), Ordering::Relaxed);
        let ran = slice_ran(pp, now, ns_per_unit).unwrap_or(0);
        if affine && !self.wakeup_signal_allowed(p, ran) {
            // Threads parked for wake-ups: the request stays cooperative
            // until the goroutine has run `WAKEUP_SIGNAL_ANYWAY`.
            let anyway = (WAKEUP_SIGNAL_ANYWAY.as_nanos() as u64).saturating_sub(ran);
            return Some(
                retry_backoff(n.saturating_add(1)).min(Duration::from_nanos(anyway.max(1))),
            );
        }
        if affine && n == 0 {
            // It did not answer the cooperative request: signal it at once
            // next time (step 2).
            if let Some(g) = self.p_goroutine(p) {
                g.wakeup_signal.store(true, Ordering::Relaxed);
            }
        }
        self.signal_for_wakeup(p, pp.wakeup_tick.load(Ordering::Relaxed));
        Some(retry_backoff(n.saturating_add(1)))
    }

    /// ThreadAffine mode: may a wake-up request be sent as a signal? A
    /// goroutine preempted by signal for a wake-up parks its thread until it
    /// resumes, after the woken ones' turn; in a burst (10,000 goroutines
    /// woken at once, each running tens of microseconds in a debug build on
    /// a slow VM) goroutines preempted one after the other queued behind
    /// each other on their P, each with its thread: 25-71 OS threads in
    /// tests/net_scale.rs. With `WAKEUP_PARKED_PER_P` per P parked so, the
    /// requests stay cooperative (the goroutine yields at its next runtime
    /// call, or when its quantum ends) until one of them resumes.
    ///
    /// A goroutine that has run `WAKEUP_SIGNAL_ANYWAY` in its slice gets
    /// the signal whatever the count (`ran`: ns in its slice): the cap is
    /// for bursts of goroutines that each run a little past the
    /// granularity, and it left a long request or a CPU hog that was
    /// itself woken holding the P until its quantum ended or it finished:
    /// beside two long requests kept for wake-ups, the bimodal benchmark's
    /// short requests waited for a third one, ~5 ms, even at 20 % load
    /// (AMD VM: short p99 2-8 ms).
    ///
    /// Nor does the cap hold back a goroutine that is still locked to its
    /// thread from an earlier asynchronous preemption (`G::affine`: it
    /// resumed and has not reached a runtime call since): its thread is
    /// taken already, and parking it adds none. That is every long request
    /// after its first preemption. Behind a few long requests in service
    /// at once (time-sliced or kept, each with its thread parked), the cap
    /// made every wake-up beside the running one wait until that one had
    /// run `WAKEUP_SIGNAL_ANYWAY` again, after each of its turns: ~1.4 ms
    /// per short request once the bimodal server fell behind at 50 % load
    /// (AMD VM, traced), which kept it behind.
    fn wakeup_signal_allowed(&self, p: usize, ran: u64) -> bool {
        ran >= WAKEUP_SIGNAL_ANYWAY.as_nanos() as u64
            || self.wakeup_parked.load(Ordering::Relaxed) < WAKEUP_PARKED_PER_P * self.procs()
            || self
                .p_goroutine(p)
                .is_some_and(|g| g.affine.load(Ordering::Relaxed))
    }

    /// Will sysmon look at wake-up preemption again within `d` anyway (see
    /// `Shared::sysmon_wakeup_look`)? Then a waker need not wake it: in a
    /// busy server every poll and every wake-up from outside a P would
    /// otherwise wake sysmon, tens of thousands of times a second, and on
    /// two CPUs each wake-up takes one from a worker.
    fn sysmon_looks_within(&self, d: Duration) -> bool {
        // After the caller's push to `woken` and SeqCst fence (`ready`,
        // `inject`): see the field's docs.
        let look = self.sysmon_wakeup_look.load(Ordering::SeqCst);
        look != u64::MAX && look <= self.nanotime().saturating_add(d.as_nanos() as u64)
    }

    /// The M that owns P `p` now, if any (it may change at any moment: for
    /// hints only).
    fn p_m(&self, p: usize) -> Option<&M> {
        let mp = self.ps[p].m.load(Ordering::Acquire);
        // SAFETY: a non-null `P::m` points to an M, and Ms live as long as
        // Shared (`allm` holds them).
        unsafe { mp.as_ref() }
    }

    /// The goroutine P `p` runs now, if any (a hint, as `p_m`).
    fn p_goroutine(&self, p: usize) -> Option<&g::G> {
        let g = self.p_m(p)?.curg.load(Ordering::Acquire);
        // SAFETY: G structs are never freed while the runtime runs (see
        // `preempt_p`); we only touch its atomics.
        unsafe { g.as_ref() }
    }

    /// Has the SIGURG handler of the thread that runs P `p` sent its
    /// goroutine to the scheduler, which has not switched it out yet?
    #[cfg(feature = "preempt-signal")]
    fn p_preempting(&self, p: usize) -> bool {
        self.p_m(p)
            .is_some_and(|m| m.preempting.load(Ordering::Relaxed))
    }

    #[cfg(not(feature = "preempt-signal"))]
    fn p_preempting(&self, _p: usize) -> bool {
        false
    }

    /// CPU time used by the thread that runs P `p` now, in ns.
    fn p_thread_cpu(&self, p: usize) -> Option<u64> {
        let tid = self.p_m(p)?.tid.load(Ordering::Acquire);
        crate::os::cputime::thread_cpu_ns(tid)
    }

    /// The P whose goroutine has run longest in its current slice, if any
    /// P runs one: (P, ns run, `schedtick`). A racy snapshot, for sysmon.
    pub(crate) fn longest_slice(&self) -> Option<(usize, u64, u64)> {
        let now = self.slice_clock();
        let ns_per_unit = self.ns_per_clock_unit();
        let mut best: Option<(usize, u64, u64)> = None;
        for (i, p) in self.ps[..self.procs()].iter().enumerate() {
            if pstate(p.status.load(Ordering::Acquire)) != P_USER {
                continue;
            }
            let tick = p.schedtick.load(Ordering::Acquire);
            let Some(ran) = slice_ran(p, now, ns_per_unit) else {
                continue;
            };
            if best.is_none_or(|b| ran > b.1) {
                best = Some((i, ran, tick));
            }
        }
        best
    }

    /// Does a woken goroutine wait for a P while every P is busy (sysmon
    /// then calls `wakeup_preempt` for requests the granularity put off)?
    pub(crate) fn wakeup_waiting(&self) -> bool {
        !self.woken.is_empty() && self.wakeup_may_help()
    }

    /// Wake-up preemption is on, and no P is idle and no M spins (either
    /// would take the woken goroutine without anyone being preempted).
    fn wakeup_may_help(&self) -> bool {
        self.cfg.wakeup_preempt
            && self.npidle.load(Ordering::SeqCst) == 0
            && self.nmspinning.load(Ordering::SeqCst) == 0
    }

    /// Was P `p` asked to yield for a wake-up in slice `tick`, at or after
    /// `since` (slice clock)?
    pub(crate) fn asked_for_wakeup_since(&self, p: usize, tick: u64, since: u64) -> bool {
        let pp = &self.ps[p];
        pp.wakeup_tick.load(Ordering::Relaxed) == tick
            && pp.wakeup_asked.load(Ordering::Relaxed) >= since
    }

    /// sysmon's time slicing of P `p` (its rule 2), which found goroutines
    /// waiting: would preempting `p` serve any of them? With wake-up
    /// preemption on, not if the only ones waiting are a goroutine kept
    /// in another P's `runnext` for a wake-up (it waits for that P's turn:
    /// `kept_turn_preempt`) or woken goroutines while another P is on its
    /// way to make room for them (asked in its current slice, not switched
    /// yet). Preempting `p` then preempted a second hog for the same
    /// wake-up (two hogs on two Ps beside a 1 ms ticker at 100 µs: 1.5-2
    /// signals per tick). A request that is `p`'s own counts: its thread
    /// may be asleep in the kernel, where only sysmon's refused signals
    /// lead to a hand-off (rule 3); and if the asked P's is, the woken
    /// goroutines wait for that hand-off.
    pub(crate) fn slice_wanted(&self, p: usize) -> bool {
        if !self.cfg.wakeup_preempt || self.waiting_besides_wakeups(Some(p)) {
            return true;
        }
        !self.woken.is_empty()
            && !self.ps[..self.procs()]
                .iter()
                .enumerate()
                .any(|(q, pp)| q != p && pp.making_room_for_wakeup())
    }

    /// Does a goroutine wait for a P that wake-up preemption does not look
    /// after: one in the global queues other than `woken`, in a run
    /// queue's deque or yield slot, or in a `runnext` not kept there for a
    /// wake-up (but P `own`'s kept one counts)? A racy snapshot.
    pub(crate) fn waiting_besides_wakeups(&self, own: Option<usize>) -> bool {
        if !self.injector.is_empty() || !self.sliced.is_empty() {
            return true;
        }
        self.ps[..self.procs()].iter().enumerate().any(|(q, pp)| {
            pp.runq.has_work_besides_next()
                || (pp.runq.next_is_set() && (own == Some(q) || !pp.keeps_for_wakeup()))
        })
    }

    /// Have the woken goroutines whose turn began at `turn` (slice clock;
    /// `TURN_UNSTARTED`: none has started yet) had their turn (step 3)?
    pub(crate) fn kept_turn_over(&self, turn: u64) -> bool {
        if turn == p::TURN_UNSTARTED {
            return false;
        }
        let ran = self.slice_clock().saturating_sub(turn) as f64 * self.ns_per_clock_unit();
        ran >= WAKEUP_TURN.as_nanos() as f64
    }

    /// Was the goroutine that P `p` ran in its current slice asked to yield
    /// for a wake-up (step 3)?
    pub(crate) fn preempted_for_wakeup(&self, p: usize) -> bool {
        let pp = &self.ps[p];
        pp.wakeup_tick.load(Ordering::Relaxed) == pp.schedtick.load(Ordering::Relaxed)
    }
}

/// How long P `p`'s current slice has run at `now` (slice clock units,
/// `ns_per_unit` ns each), in ns. None right after a direct yield, which
/// leaves the slice unstamped for sysmon to date (`UNSTAMPED`).
fn slice_ran(p: &p::P, now: u64, ns_per_unit: f64) -> Option<u64> {
    let start = p.slice_start.load(Ordering::Relaxed);
    (start != UNSTAMPED).then(|| (now.saturating_sub(start) as f64 * ns_per_unit) as u64)
}

/// The wait before repeat `n` of a wake-up request: `WAKEUP_RETRY`,
/// doubling per repeat, at most `WAKEUP_RETRY_MAX`.
fn retry_backoff(n: u32) -> Duration {
    WAKEUP_RETRY
        .saturating_mul(1 << n.min(16))
        .min(WAKEUP_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::WAKEUP_GRANULARITY;
    use crate::sched::Shared;

    /// sysmon, while a woken goroutine waits and the only P is on its way
    /// to another thread (taken off the idle list here: `P_HANDOFF`, as
    /// when it is handed to a kept goroutine's thread), plans a look
    /// within the granularity: the goroutine that P runs next may make no
    /// call. It planned none and slept its maximum (10 ms; see
    /// `wakeup_preempt`).
    #[test]
    fn sysmon_looks_again_soon_while_every_p_is_between_goroutines() {
        let cfg = crate::Builder::new()
            .procs(1)
            .wakeup_preempt(true)
            .config()
            .unwrap();
        let sh = Shared::new(cfg).unwrap();
        let p = sh.pidleget().expect("the only P is idle");
        assert_eq!(sh.wakeup_preempt(true), Some(WAKEUP_GRANULARITY));
        // A waker outside sysmon has nobody to ask either: nothing to do.
        assert_eq!(sh.wakeup_preempt(false), None);
        sh.pidleput(p);
        // With the P idle, its M takes the woken goroutine: no look.
        assert_eq!(sh.wakeup_preempt(true), None);
    }
}
