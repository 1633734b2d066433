//! The sysmon thread: the mechanism half of the system monitor. The policy
//! (when to preempt, retake, hand off, how long to sleep) is the
//! `gosched-sysmon` crate, tested with a fake clock; this file implements its
//! `Target` over the real runtime and runs the loop, plus Go-style
//! `GOSCHED_SCHEDTRACE` lines.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gosched_sysmon::{Config as PolicyConfig, Monitor, PStatus, PView, Preempt, Sleep, Target};

use crate::sched::timer::nanos;
use crate::sched::{RuntimeLock, Shared};

/// sysmon's view of the runtime.
struct RuntimeTarget<'a> {
    sh: &'a Shared,
    /// The tick's time (ns since the epoch).
    now: u64,
    /// The tick's start on the slice clock (`Shared::slice_clock`).
    tick_clock: u64,
    /// Per P: (schedtick, when sysmon first saw it), to date `UNSTAMPED`
    /// slices.
    first_seen: &'a [Cell<(u64, u64)>],
    /// Per P: the `schedtick` of the latest `observe`, so that a request
    /// lands only in the slice the policy judged (`preempt`).
    observed: &'a [Cell<u64>],
    /// The starvation warning was printed (once per runtime).
    warned_starved: &'a Cell<bool>,
}

impl RuntimeTarget<'_> {
    /// The start of P `p`'s slice number `tick`, stamped `stamp`, in ns.
    fn slice_start_ns(&self, p: usize, tick: u64, stamp: u64) -> u64 {
        if stamp != crate::sched::UNSTAMPED {
            return self.sh.slice_start_ns(stamp);
        }
        let seen = &self.first_seen[p];
        let (seen_tick, at) = seen.get();
        if seen_tick == tick {
            return at;
        }
        seen.set((tick, self.now));
        self.now
    }
}

impl Target for RuntimeTarget<'_> {
    fn procs(&self) -> usize {
        self.sh.procs()
    }

    fn observe(&self, p: usize) -> PView {
        let pp = &self.sh.ps[p];
        let status = match crate::sched::pstate(pp.status.load(Ordering::Acquire)) {
            // A P in hand-off is about to run on the M it was handed to:
            // busy, from sysmon's point of view (treating it as idle made
            // sysmon see "all idle" while `all_idle()` said otherwise, and
            // spin until the receiving M woke).
            crate::sched::P_SCHED | crate::sched::P_USER | crate::sched::P_HANDOFF => {
                PStatus::Running
            }
            crate::sched::P_SYSCALL => PStatus::Syscall,
            _ => PStatus::Idle,
        };
        let m = pp.m.load(Ordering::Acquire);
        let refused = if m.is_null() {
            0
        } else {
            // SAFETY: Ms live as long as Shared.
            unsafe { (*m).refused.load(Ordering::Relaxed) }
        };
        let schedtick = pp.schedtick.load(Ordering::Acquire);
        self.observed[p].set(schedtick);
        let stamp = pp.slice_start.load(Ordering::Relaxed);
        PView {
            status,
            schedtick,
            slice_start: Duration::from_nanos(self.slice_start_ns(p, schedtick, stamp)),
            syscalltick: pp.syscalltick.load(Ordering::Acquire),
            syscall_start: Duration::from_nanos(pp.syscall_start.load(Ordering::Relaxed)),
            runq_nonempty: self.sh.ps[p].runq.has_work(),
            refused,
            timed: pp.timed_tick.load(Ordering::Relaxed) == schedtick,
        }
    }

    fn idle_or_spinning(&self) -> usize {
        self.sh.npidle.load(Ordering::SeqCst) + self.sh.nmspinning.load(Ordering::SeqCst)
    }

    fn global_work(&self) -> bool {
        self.sh.global_has_work()
    }

    fn preempt(&mut self, p: usize, send_signal: bool) -> Preempt {
        let tick = self.observed[p].get();
        if self.sh.asked_for_wakeup_since(p, tick, self.tick_clock) {
            // Asked for a wake-up in this slice during this very tick (by
            // its own `fire_timers`): that request stands for this one. A
            // second signal only landed after the switch: one wasted signal
            // per timer wake-up beside a hog. (Only this tick's: a thread
            // asleep in the kernel is handed off only after sysmon's own
            // refused signals, rule 3, and the wake-up's retries, renewing
            // their request all the time, must not hold them back.)
            return Preempt::AlreadyPending;
        }
        if !self.sh.slice_wanted(p) {
            // Preempting this P would serve none of the goroutines waiting
            // (see `slice_wanted`). Answered as a request already out: the
            // policy retries with its backoff meanwhile.
            return Preempt::AlreadyPending;
        }
        // Only in the slice observed: a request landing in a later one
        // would preempt a goroutine that has just started.
        self.sh.preempt_slice(p, Some(tick), send_signal)
    }

    fn retake(&mut self, p: usize) -> bool {
        let ok = self.sh.retake(p, crate::sched::P_SYSCALL);
        if ok {
            self.sh.counters.retakes.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn thread_blocked(&self, p: usize) -> bool {
        let m = self.sh.ps[p].m.load(Ordering::Acquire);
        if m.is_null() {
            return false;
        }
        // SAFETY: Ms live as long as Shared.
        let tid = unsafe { (*m).tid.load(Ordering::Acquire) };
        thread_sleeping(tid)
    }

    fn handoff_blocked(&mut self, p: usize) -> bool {
        let ok = self.sh.retake(p, crate::sched::P_USER);
        if ok {
            self.sh
                .counters
                .blocked_handoffs
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn next_timer(&self) -> Option<Duration> {
        let next = self.sh.timers.next()?;
        // While an M sleeps in the driver until the next timer (`stopm`'s
        // sleeper, whom `add_timer` wakes for an earlier one), that M fires
        // timers: sysmon only backs it up, `TIMER_BACKSTOP` late, for the
        // moment the sleeper leaves its role to take the last idle P and
        // then runs a goroutine that makes no calls. Waking at every
        // deadline as well cost a second thread wake-up per timer: an idle
        // process with a 100 µs ticker used 70-95 % of a CPU in a debug
        // build on the AMD VM, half of it sysmon's.
        let next = if self.sh.timer_m.load(Ordering::SeqCst).is_null() {
            next
        } else {
            next.saturating_add(nanos(TIMER_BACKSTOP))
        };
        Some(Duration::from_nanos(next))
    }

    fn fire_timers(&mut self, _now: Duration) -> usize {
        self.sh.fire_timers()
    }

    fn starved(&mut self, p: usize, overrun: Duration) {
        self.sh.counters.starved.fetch_add(1, Ordering::Relaxed);
        if self.warned_starved.replace(true) {
            return;
        }
        // The dominant reason among those a running goroutine can cause
        // (the first on a tie). Rule 6's was missing: a goroutine starved
        // by it alone was reported as "inside a signal handler".
        let reason = [
            crate::preempt::Refusal::NoPreempt,
            crate::preempt::Refusal::Stack,
            crate::preempt::Refusal::ForeignCode,
            crate::preempt::Refusal::SigMask,
            crate::preempt::Refusal::Threads,
        ]
        .into_iter()
        .rev()
        .max_by_key(|&r| self.sh.counters.refused[r as usize].load(Ordering::Relaxed))
        .unwrap_or(crate::preempt::Refusal::NoPreempt) as usize;
        crate::diag::stderr_line(format_args!(
            "gosched: warning: the goroutine on P {p} has overrun its {:?} quantum by {:?} and every \
             asynchronous preemption was refused, mostly `{}`: {}. Goroutines waiting for this P \
             do not run until it reaches a runtime call. Keep signal handlers short and split long \
             loops in libc (safe-point rules in gosched's preempt docs). Stats::preempt_starved counts \
             these slices; this warning is printed once.",
            self.sh.cfg.quantum,
            overrun,
            crate::preempt::REFUSAL_NAMES[reason],
            crate::preempt::REFUSAL_HELP[reason],
        ));
    }
}

/// Is thread `tid` of this process asleep in the kernel ('S' or 'D' in
/// /proc/self/task/TID/stat)?
fn thread_sleeping(tid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may contain
    // spaces or parentheses itself: take the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    matches!(state, Some('S') | Some('D'))
}

/// sysmon's requested time slice: the kernel's minimum (it runs for
/// microseconds at a time).
const SYSMON_SLICE: Duration = Duration::from_micros(100);

/// Starts the sysmon thread of a runtime; the OS may refuse the thread
/// (`Builder::build` then returns the error).
pub(crate) fn start(sh: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gosched-sysmon".into())
        .spawn(move || run(&sh))
}

fn run(sh: &Shared) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's slack:
    // sysmon's deadlines are the quantum's and timers', so wake on time.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    // And get the CPU when it wakes, even when every CPU runs a goroutine
    // (see `os::slice`).
    crate::os::slice::request_slice(SYSMON_SLICE);
    // A slice is not enough: see `Builder::sysmon_nice`.
    let nice = crate::os::slice::request_nice(sh.cfg.sysmon_nice);
    sh.sysmon_nice.store(nice, Ordering::Relaxed);
    if sh.cfg.sysmon_realtime {
        // `build` checked that the process may: failing now (the limit was
        // lowered meanwhile) leaves sysmon as it was.
        let _ = crate::os::slice::request_realtime();
    }
    let cfg = PolicyConfig {
        quantum: sh.cfg.quantum,
        async_preempt: sh.cfg.async_preempt,
        // A preemption nobody waits for costs a signal (~10 µs on this kind
        // of VM) and gains nothing; skip it (Go does not).
        only_when_contended: true,
        ..PolicyConfig::default()
    };
    let mut mon = Monitor::new(cfg, sh.procs());
    let first_seen = vec![Cell::new((u64::MAX, 0)); sh.ps.len()];
    let observed = vec![Cell::new(u64::MAX); sh.ps.len()];
    let warned_starved = Cell::new(false);
    let trace = sh.cfg.schedtrace;
    let mut next_trace = trace.map(|t| sh.nanotime().saturating_add(nanos(t)));
    let mut handler = crate::preempt::HandlerWatch::new();
    let mut deadlock_look = DEADLOCK_LOOK_MIN;
    // When to look at goroutines running without a P next (0: at once).
    let mut next_pless = 0u64;
    while !sh.shutdown.load(Ordering::Acquire) {
        let now = sh.nanotime();
        handler.check(sh, now);
        let mut target = RuntimeTarget {
            sh,
            now,
            tick_clock: sh.slice_clock(),
            first_seen: &first_seen,
            observed: &observed,
            warned_starved: &warned_starved,
        };
        let sleep = mon.tick(&mut target, Duration::from_nanos(now));
        // I/O readiness while Ps are busy (see `crate::driver`).
        let poll_cap = sh.sysmon_netpoll();
        if let (Some(t), Some(at)) = (trace, next_trace) {
            if now >= at {
                crate::diag::stderr_line(format_args!("{}", sh.schedtrace_line()));
                next_trace = Some(now.saturating_add(nanos(t)));
            }
        }
        let mut trace_cap = next_trace.map(|at| Duration::from_nanos(at.saturating_sub(now)));
        // Goroutines running without a P: signalled once a quantum.
        if sh.npless.load(Ordering::SeqCst) != 0 {
            if now >= next_pless {
                next_pless = now.saturating_add(nanos(sh.cfg.quantum));
                if !preempt_pless(sh) {
                    next_pless = 0;
                }
            }
            if next_pless != 0 {
                lower_to(
                    &mut trace_cap,
                    Duration::from_nanos(next_pless.saturating_sub(now)),
                );
            }
        }
        // Not watching, until the check below says otherwise (see
        // `Shared::sysmon_wakeup_look`).
        sh.sysmon_wakeup_look.store(u64::MAX, Ordering::SeqCst);
        if sh.wakeup_waiting() {
            // A woken goroutine waits while every P is busy: a request the
            // granularity put off is made when a goroutine reaches it (see
            // `sched::wakeup`).
            if let Some(retry) = sh.wakeup_preempt(true) {
                lower_to(&mut trace_cap, retry);
                sh.sysmon_wakeup_look
                    .store(now.saturating_add(nanos(retry)), Ordering::SeqCst);
            }
        } else {
            sh.wakeup_deferrals_reset();
            if sh.cfg.wakeup_preempt && !sh.woken.is_empty() {
                // A woken goroutine waits, but no request can be made now:
                // a P was idle or an M spinning a moment ago (one handing
                // its P to a kept goroutine's thread, say), and may not
                // take it after all. Look again within the granularity
                // rather than sleep until the next slice end (traced in the
                // bimodal benchmark: short requests left in `woken` for
                // most of a 10 ms slice).
                let g = crate::sched::WAKEUP_GRANULARITY;
                lower_to(&mut trace_cap, g);
            }
        }
        // A goroutine kept aside for a wake-up waits behind one that has had
        // its turn (see `sched::wakeup`, step 3).
        if let Some(d) = sh.kept_turn_preempt() {
            lower_to(&mut trace_cap, d);
            let look = now.saturating_add(nanos(d));
            let _ = sh.sysmon_wakeup_look.fetch_min(look, Ordering::SeqCst);
        }
        let woken = match sleep {
            Sleep::For(d) => sh.sysmon_wait(min_opt(d, trace_cap), poll_cap),
            Sleep::Idle(deadline) => {
                sh.sysmon_backoff_reset();
                // Publish that we sleep, then re-check (Dekker with
                // `Shared::note_busy`): either a P that just got busy sees the
                // flag and wakes us, or we see it busy here.
                // Timers are the sleeper's while one waits in the driver
                // (`RuntimeTarget::next_timer`); should it take the last
                // idle P, `note_busy` wakes us. Backing it up at each
                // deadline, `TIMER_BACKSTOP` late, cost a wake-up of
                // sysmon every other tick of a 500 µs ticker.
                let timer_wait = deadline.filter(|_| sh.timer_m.load(Ordering::SeqCst).is_null());
                let timeout = timer_wait.map(|d| d.saturating_sub(Duration::from_nanos(now)));
                let timeout = match (timeout, trace_cap) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                // Goroutines live but are not deadlocked now: a plain thread
                // they wait on may be about to park, and a plain thread's
                // park wakes nobody. Look again, less and less often, rather
                // than sleep for ever (a plain thread that parked after our
                // look went unreported: the process hung).
                let timeout = match timeout {
                    // (A goroutine waiting for I/O rules a deadlock out.)
                    None if deadline.is_none()
                        && sh.goroutines() > 0
                        && sh.driver.waiters() == 0 =>
                    {
                        let t = deadlock_look;
                        deadlock_look = t.saturating_mul(2).min(DEADLOCK_LOOK_MAX);
                        Some(t)
                    }
                    t => t,
                };
                let until = match (deadline, timeout) {
                    (None, _) if sh.deadlocked() => now.saturating_add(nanos(DEADLOCK_RECHECK)),
                    (_, Some(t)) => now.saturating_add(nanos(t)),
                    (_, None) => u64::MAX,
                };
                sh.sysmon_idle_until.store(until.max(1), Ordering::SeqCst);
                let woken = if !sh.all_idle() {
                    true
                } else if deadline.is_none() && sh.deadlocked() {
                    // Look again after a pause: a thread that was just
                    // woken may not have run yet.
                    let seen = sh.progress();
                    let woken = sh.sysmon_note.wait(Some(DEADLOCK_RECHECK));
                    if !woken && sh.progress() == seen && sh.deadlocked() {
                        sh.die_deadlocked();
                    }
                    woken
                } else {
                    sh.sysmon_note.wait(timeout)
                };
                sh.sysmon_idle_until.store(0, Ordering::SeqCst);
                woken
            }
        };
        if woken || matches!(sleep, Sleep::For(_)) {
            deadlock_look = DEADLOCK_LOOK_MIN;
        }
        if woken {
            mon.woken();
        }
    }
}

/// Signals every M whose goroutine runs on without a P (`M::pless_run`)
/// and forgets those whose run has ended. A retake took the P from under
/// that goroutine (its thread was blocked in the kernel, or `set_procs`
/// dropped the P and its goroutine did not yield within the grace), and
/// nobody else looks at it until its next scheduling point: a call-free
/// loop went on for good, a CPU beyond GOMAXPROCS (four goroutines sorting
/// with libc's `qsort` after `set_procs(1)` used 1.8-2.0 CPUs until they
/// ended). Such a preemption parks the thread without a P to hand on (safe-
/// point rule 6 lets it through). A thread asleep in the kernel is left
/// alone: the signal would only interrupt its system call (`EINTR`).
/// Returns whether any such M remains.
fn preempt_pless(sh: &Shared) -> bool {
    let mut left = false;
    for m in sh.allm.rt_lock().iter() {
        let run = m.pless_run.load(Ordering::Acquire);
        if run == 0 {
            continue;
        }
        if m.runs.load(Ordering::Acquire) != run || m.curg.load(Ordering::Acquire).is_null() {
            // That run has ended: the goroutine reached the scheduler.
            if m.pless_run
                .compare_exchange(run, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                sh.npless.fetch_sub(1, Ordering::SeqCst);
            }
            continue;
        }
        left = true;
        if !thread_sleeping(m.tid.load(Ordering::Acquire)) {
            crate::preempt::signal_m(m);
        }
    }
    left
}

/// sysmon's looks for a deadlock while every P is idle and goroutines are
/// parked but some thread is not yet accounted for: 100 ms, doubling to
/// 2 s (a plain thread parking does not wake sysmon).
const DEADLOCK_LOOK_MIN: Duration = Duration::from_millis(100);
const DEADLOCK_LOOK_MAX: Duration = Duration::from_secs(2);

/// How late sysmon fires a timer that an M sleeping in the driver should
/// have fired (see `RuntimeTarget::next_timer`).
const TIMER_BACKSTOP: Duration = Duration::from_millis(1);

/// Pause between the two looks of the deadlock check.
const DEADLOCK_RECHECK: Duration = Duration::from_millis(100);

/// Lowers the optional bound `cap` to `d`.
fn lower_to(cap: &mut Option<Duration>, d: Duration) {
    *cap = Some(cap.map_or(d, |c| c.min(d)));
}

fn min_opt(d: Duration, cap: Option<Duration>) -> Duration {
    cap.map_or(d, |c| d.min(c))
}
