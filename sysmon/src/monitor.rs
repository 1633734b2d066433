//! The [`Monitor`]: per-P bookkeeping and the tick that applies the rules
//! described in the crate documentation.

use crate::{Config, Counters, PStatus, PView, Preempt, Sleep, Target};
use std::time::Duration;

/// Ticks without a retake after which the idle backoff starts doubling the
/// sleep (Go: `idle > 50`).
const IDLE_TICKS_BEFORE_BACKOFF: u32 = 50;

/// What sysmon remembers about one P between ticks.
#[derive(Clone, Copy, Debug, Default)]
struct PRecord {
    /// The `schedtick` seen on the previous tick, if the P has been seen.
    schedtick: Option<u64>,
    /// A preemption of the current slice was requested on an earlier tick.
    requested: bool,
    /// [`PView::refused`] as seen on the previous tick.
    refused: u64,
    /// Consecutive ticks on which a refused preemption found the thread asleep.
    strikes: u32,
    /// `handoff_blocked` was already called for the current slice.
    handed_off: bool,
    /// No `thread_blocked` question before this time
    /// (`Config::blocked_probe_interval`).
    next_probe: Duration,
    /// The `syscalltick` recorded on an earlier tick, if any.
    syscalltick: Option<u64>,
    /// Consecutive retries of the current slice whose previous request was
    /// refused (the refusal backoff's exponent).
    refused_streak: u32,
    /// When the first request of the current unbroken run of refused
    /// requests was made (None: the last request was not refused).
    refusing_since: Option<Duration>,
    /// When the last preemption request of the current slice was made.
    last_request: Duration,
    /// [`Target::starved`] was already called for the current slice.
    starved: bool,
    /// Consecutive requests of the current slice that found the previous
    /// signal still undelivered ([`Preempt::AlreadyPending`]): the thread
    /// is not running (the kernel gave its CPU to another) and will take
    /// the pending signal as soon as it runs.
    pending_streak: u32,
    /// Consecutive requests of the current slice that could only set the
    /// goroutine's flag ([`Preempt::FlagOnly`]: asynchronous preemption
    /// off): the first set it, and it stays set until the slice ends.
    flag_streak: u32,
}

impl PRecord {
    /// Forget everything about the previous slice; `view` starts a new one.
    fn new_slice(&mut self, view: &PView) {
        self.schedtick = Some(view.schedtick);
        self.requested = false;
        self.refused = view.refused;
        self.strikes = 0;
        self.handed_off = false;
        self.next_probe = Duration::ZERO;
        self.refused_streak = 0;
        self.refusing_since = None;
        self.starved = false;
        self.pending_streak = 0;
        self.flag_streak = 0;
    }
}

/// The system monitor's policy state: what it remembers about every P, the
/// idle backoff and the [`Counters`].
///
/// The runtime's sysmon thread calls [`Monitor::tick`] in a loop, sleeping as
/// told in between, and calls [`Monitor::woken`] when it wakes sysmon early.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::FakeTarget;
/// use gosched_sysmon::{Config, Monitor, PView, Sleep};
/// use std::time::Duration;
///
/// let ms = Duration::from_millis;
/// let mut target = FakeTarget::new(vec![PView::running(1, ms(0)), PView::IDLE]);
/// let mut monitor = Monitor::new(Config::default(), 2);
/// let mut now = ms(0);
/// // A goroutine that never yields is asked to, once per tick, from 10 ms on.
/// while now < ms(20) {
///     match monitor.tick(&mut target, now) {
///         Sleep::For(d) => now += d,
///         Sleep::Idle(_) => unreachable!("P 0 is busy"),
///     }
/// }
/// assert!(monitor.counters().preempt_requests >= 4);
/// assert_eq!(monitor.counters().ticks, monitor.counters().preempt_requests + 1);
/// ```
#[derive(Clone, Debug)]
pub struct Monitor {
    cfg: Config,
    ps: Vec<PRecord>,
    /// Consecutive ticks without a successful retake (Go's `idle`).
    idle: u32,
    /// The current idle-backoff sleep (Go's `delay`).
    delay: Duration,
    /// After a look that found nobody waiting for a P: the next look (rule
    /// 2's uncontended backoff). No slice's quantum wakes sysmon before it.
    quiet_until: Option<Duration>,
    counters: Counters,
}

impl Monitor {
    /// A monitor with configuration `cfg`, sized for `procs` Ps. The number of
    /// Ps actually examined on each tick is [`Target::procs`]; `procs` only
    /// pre-sizes the bookkeeping.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::{Config, Counters, Monitor};
    ///
    /// let monitor = Monitor::new(Config::default(), 4);
    /// assert_eq!(monitor.counters(), Counters::default());
    /// ```
    pub fn new(cfg: Config, procs: usize) -> Monitor {
        let delay = cfg.min_sleep;
        Monitor {
            cfg,
            ps: vec![PRecord::default(); procs],
            idle: 0,
            delay,
            quiet_until: None,
            counters: Counters::default(),
        }
    }

    /// The configuration the monitor was created with.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::{Config, Monitor};
    ///
    /// let monitor = Monitor::new(Config { blocked_refusals: 5, ..Config::default() }, 1);
    /// assert_eq!(monitor.config().blocked_refusals, 5);
    /// ```
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// One sysmon cycle at time `now`: fire due timers, apply every rule to
    /// every P, and say how long to sleep (see the crate documentation for
    /// the rules).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView, Sleep};
    /// use std::time::Duration;
    ///
    /// let ms = Duration::from_millis;
    /// let mut target = FakeTarget::new(vec![PView::running(1, ms(0))]);
    /// let mut monitor = Monitor::new(Config::default(), 1);
    /// // Sleep exactly until the slice's quantum ends ...
    /// assert_eq!(monitor.tick(&mut target, ms(3)), Sleep::For(ms(7)));
    /// // ... then ask it to yield.
    /// monitor.tick(&mut target, ms(10));
    /// assert_eq!(target.calls(), vec![Call::Preempt { p: 0, signal: true }]);
    /// ```
    pub fn tick<T: Target>(&mut self, target: &mut T, now: Duration) -> Sleep {
        self.counters.ticks += 1;

        // Rule 1: timers.
        if target.next_timer().is_some_and(|t| t <= now) {
            let fired = target.fire_timers(now);
            self.counters.timers_fired = self.counters.timers_fired.saturating_add(fired as u64);
        }

        // Rules 2-4, bounded by rule 6.
        let procs = target.procs();
        self.ps.resize(procs, PRecord::default());
        let mut earliest: Option<Duration> = None;
        let mut all_idle = true;
        let mut retook = false;
        // Whether any goroutine waits for a P; computed once, on demand.
        let mut waiting: Option<bool> = None;
        for p in 0..procs {
            let view = target.observe(p);
            let fresh = self.ps[p].schedtick != Some(view.schedtick);
            if fresh {
                self.ps[p].new_slice(&view);
            }
            let deadline = match view.status {
                PStatus::Idle => {
                    self.ps[p].strikes = 0;
                    None
                }
                PStatus::Running => {
                    all_idle = false;
                    self.running(target, p, &view, now, &mut waiting)
                }
                PStatus::Syscall => {
                    all_idle = false;
                    self.ps[p].strikes = 0;
                    self.syscall(target, p, &view, now, &mut retook)
                }
            };
            self.ps[p].refused = view.refused;
            earliest = min_deadline(earliest, deadline);
        }
        // Rule 2's uncontended backoff: the next look, if nobody waited.
        match waiting {
            Some(false) => self.quiet_until = after(now, self.uncontended_interval()),
            Some(true) => self.quiet_until = None,
            // No overrunning slice was looked at: keep the backoff.
            None => {}
        }

        // Rule 5: sleep.
        let next_timer = target.next_timer();
        if all_idle {
            return Sleep::Idle(next_timer);
        }
        self.backoff(retook);
        match min_deadline(earliest, next_timer) {
            Some(deadline) => Sleep::For(self.clamp(deadline.saturating_sub(now))),
            None => Sleep::For(self.delay),
        }
    }

    /// The runtime woke sysmon explicitly (a P became busy, a blocking call
    /// began): restart the idle backoff at `min_sleep` (Go: `syscallWake` in
    /// `sysmon`).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::FakeTarget;
    /// use gosched_sysmon::{Config, Monitor, PView, Sleep};
    /// use std::time::Duration;
    ///
    /// // With preemption disabled a busy P has no deadline, so the idle
    /// // backoff decides the sleep.
    /// let cfg = Config { quantum: Duration::MAX, ..Config::default() };
    /// let min = cfg.min_sleep;
    /// let mut monitor = Monitor::new(cfg, 1);
    /// let mut target = FakeTarget::new(vec![PView::running(1, Duration::ZERO)]);
    /// let mut now = Duration::ZERO;
    /// let mut last = min;
    /// for _ in 0..60 {
    ///     let Sleep::For(d) = monitor.tick(&mut target, now) else { unreachable!() };
    ///     now += d;
    ///     last = d;
    /// }
    /// assert!(last > min);
    /// monitor.woken();
    /// assert_eq!(monitor.tick(&mut target, now), Sleep::For(min));
    /// ```
    pub fn woken(&mut self) {
        self.idle = 0;
        self.delay = self.cfg.min_sleep;
        // Rule 2's uncontended backoff ends: every slice's own quantum
        // counts again.
        self.quiet_until = None;
    }

    /// Rule 2's uncontended backoff: `max(quantum, uncontended_look_max)`.
    fn uncontended_interval(&self) -> Duration {
        self.cfg.uncontended_look_max.max(self.cfg.quantum)
    }

    /// What the monitor has done so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::FakeTarget;
    /// use gosched_sysmon::{Config, Monitor, PView};
    /// use std::time::Duration;
    ///
    /// let mut monitor = Monitor::new(Config::default(), 1);
    /// let mut target = FakeTarget::new(vec![PView::IDLE]);
    /// target.timers.push(Duration::from_millis(1));
    /// monitor.tick(&mut target, Duration::from_millis(1));
    /// assert_eq!(monitor.counters().ticks, 1);
    /// assert_eq!(monitor.counters().timers_fired, 1);
    /// ```
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Rules 2 and 3 for a running P. Returns its next deadline.
    fn running<T: Target>(
        &mut self,
        target: &mut T,
        p: usize,
        view: &PView,
        now: Duration,
        waiting: &mut Option<bool>,
    ) -> Option<Duration> {
        let limit = if view.timed {
            let grace = self.cfg.timer_grace.max(self.retry_interval(0));
            self.cfg.quantum.saturating_add(grace)
        } else {
            self.cfg.quantum
        };
        let Some(deadline) = after(view.slice_start, limit) else {
            // Preemption disabled.
            self.ps[p].strikes = 0;
            return None;
        };
        if now < deadline {
            self.ps[p].strikes = 0;
            // During an uncontended backoff the slice's end does not wake
            // sysmon: nobody waits for its P.
            return Some(self.quiet_until.map_or(deadline, |q| q.max(deadline)));
        }
        if self.cfg.only_when_contended && !*waiting.get_or_insert_with(|| contended(target)) {
            // Nobody waits for a P: preempting would only reschedule this
            // goroutine. Look again later (the uncontended backoff).
            self.ps[p].strikes = 0;
            return after(now, self.uncontended_interval());
        }
        let rec = &mut self.ps[p];
        if rec.requested && view.refused > rec.refused {
            rec.refused_streak = rec.refused_streak.saturating_add(1);
            rec.refusing_since.get_or_insert(rec.last_request);
        } else {
            rec.refused_streak = 0;
            rec.refusing_since = None;
        }
        let streak = rec.refused_streak;
        let starve_after = self
            .cfg
            .quantum
            .saturating_mul(self.cfg.starved_quanta)
            .max(self.cfg.starved_min);
        let starving = rec
            .refusing_since
            .is_some_and(|since| now.saturating_sub(since) >= starve_after);
        if starving && !rec.starved && self.cfg.starved_quanta > 0 {
            rec.starved = true;
            self.counters.starved += 1;
            target.starved(p, now.saturating_sub(deadline));
        }
        let handed_off = self.blocked(target, p, view, now);
        // A thread found asleep in the kernel is refused because it sleeps:
        // the remedy is rule 3's hand-off, which a backoff would delay.
        let asleep = self.ps[p].strikes > 0;
        if handed_off {
            // The P may already run another goroutine: do not preempt it.
            return after(now, self.retry_interval(if asleep { 0 } else { streak }));
        }
        let outcome = target.preempt(p, self.cfg.async_preempt);
        self.counters.preempt_requests += 1;
        if outcome == Preempt::Signalled {
            self.counters.signals += 1;
        }
        let rec = &mut self.ps[p];
        rec.requested = true;
        rec.last_request = now;
        // The previous signal still waits for its thread to run: looking
        // again every quarter quantum only takes CPU from the goroutines
        // that have it (the pending-signal backoff, as for refusals; the
        // first such request may only have raced the handler).
        rec.pending_streak = if outcome == Preempt::AlreadyPending {
            rec.pending_streak.saturating_add(1)
        } else {
            0
        };
        let pending = rec.pending_streak.saturating_sub(1);
        // Asynchronous preemption off: the flag is set and stays set; a
        // repeat changes nothing, and a goroutine that has not looked at
        // it by now may not for a long while (a loop without calls). Back
        // off as for refusals (at a 100 µs quantum sysmon woke 28,000
        // times a second beside one such loop); rule 3 still looks at the
        // thread on every retry, and a thread found asleep restarts it.
        rec.flag_streak = if outcome == Preempt::FlagOnly {
            rec.flag_streak.saturating_add(1)
        } else {
            0
        };
        let flagged = rec.flag_streak.saturating_sub(1);
        after(
            now,
            self.retry_interval(if asleep {
                0
            } else {
                streak.max(pending).max(flagged)
            }),
        )
    }

    /// Rule 3 for an overrunning slice: count a strike if the evidence holds
    /// and hand the P away after enough of them. `true` if handed away now.
    fn blocked<T: Target>(
        &mut self,
        target: &mut T,
        p: usize,
        view: &PView,
        now: Duration,
    ) -> bool {
        let threshold = self.cfg.blocked_refusals;
        let rec = &mut self.ps[p];
        let refused = !self.cfg.async_preempt || view.refused > rec.refused;
        let candidate = threshold > 0 && rec.requested && !rec.handed_off && refused;
        if !candidate {
            rec.strikes = 0;
            return false;
        }
        if now < rec.next_probe {
            // Asked recently: no new evidence either way.
            return false;
        }
        rec.next_probe = now.saturating_add(self.cfg.blocked_probe_interval);
        if !target.thread_blocked(p) {
            rec.strikes = 0;
            return false;
        }
        rec.strikes = rec.strikes.saturating_add(1);
        if rec.strikes < threshold {
            return false;
        }
        rec.handed_off = true;
        rec.strikes = 0;
        if target.handoff_blocked(p) {
            self.counters.blocked_handoffs += 1;
            true
        } else {
            false
        }
    }

    /// Rule 4 for a P in a blocking call. Returns its next deadline.
    fn syscall<T: Target>(
        &mut self,
        target: &mut T,
        p: usize,
        view: &PView,
        now: Duration,
        retook: &mut bool,
    ) -> Option<Duration> {
        let cfg = &self.cfg;
        let rec = &mut self.ps[p];
        if rec.syscalltick != Some(view.syscalltick) {
            rec.syscalltick = Some(view.syscalltick);
            return after(now, cfg.syscall_retake);
        }
        let age = now.saturating_sub(view.syscall_start);
        if age < cfg.syscall_retake {
            return after(view.syscall_start, cfg.syscall_retake);
        }
        let wanted = view.runq_nonempty
            || age >= cfg.quantum
            || target.idle_or_spinning() == 0
            || target.global_work();
        if !wanted {
            return after(view.syscall_start, cfg.quantum);
        }
        if target.retake(p) {
            self.counters.retakes += 1;
            *retook = true;
        }
        None
    }

    /// How soon an overrunning slice that was asked to yield is looked at
    /// again: soon, but not in a tight loop; after `refused_streak`
    /// refused retries in a row, twice as late per refusal, up to
    /// `max_refused_retry` (rule 2's refusal backoff).
    fn retry_interval(&self, refused_streak: u32) -> Duration {
        let base = self.cfg.min_sleep.max(self.cfg.quantum / 4);
        if refused_streak == 0 {
            return base;
        }
        let cap = self.cfg.max_refused_retry.max(base);
        base.checked_mul(1 << refused_streak.min(31))
            .map_or(cap, |d| d.min(cap))
    }

    /// Go's idle backoff: 50 ticks at `min_sleep`, then double per tick up to
    /// `max_sleep`; a retake restarts it.
    fn backoff(&mut self, retook: bool) {
        if retook {
            self.idle = 0;
        } else {
            self.idle = self.idle.saturating_add(1);
        }
        if self.idle == 0 {
            self.delay = self.cfg.min_sleep;
        } else if self.idle > IDLE_TICKS_BEFORE_BACKOFF {
            self.delay = self.delay.saturating_mul(2);
        }
        self.delay = self.clamp(self.delay);
    }

    /// Clamp a sleep to `min_sleep..=max_sleep` (`min_sleep` wins if the
    /// bounds are inverted).
    fn clamp(&self, d: Duration) -> Duration {
        d.min(self.cfg.max_sleep).max(self.cfg.min_sleep)
    }
}

/// `start + interval`, or `None` if the interval is [`Duration::MAX`]
/// (disabled) or the sum overflows.
fn after(start: Duration, interval: Duration) -> Option<Duration> {
    if interval == Duration::MAX {
        None
    } else {
        start.checked_add(interval)
    }
}

/// The earlier of two optional deadlines.
fn min_deadline(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Does any goroutine wait for a P (a local queue or the global queue)?
fn contended<T: Target>(target: &T) -> bool {
    target.global_work() || (0..target.procs()).any(|p| target.observe(p).runq_nonempty)
}
