//! A scriptable [`Target`] and [`Clock`] for tests and examples.
//!
//! [`FakeTarget`] holds the [`PView`] of every P in a public `Vec` that the
//! test edits between ticks, answers the monitor's questions from public
//! fields, and logs every action the monitor takes as a [`Call`]. Out-of-range
//! P indices panic, so a test that runs without panicking also checks that
//! the monitor never touches a P `>= procs()`.
//!
//! # Examples
//!
//! ```
//! use gosched_sysmon::fake::{Call, FakeTarget, ManualClock};
//! use gosched_sysmon::{Clock, Config, Monitor, PView};
//! use std::time::Duration;
//!
//! let clock = ManualClock::new(Duration::ZERO);
//! let mut target = FakeTarget::new(vec![PView::running(1, clock.now())]);
//! let mut monitor = Monitor::new(Config::default(), 1);
//! clock.advance(Duration::from_millis(10));
//! monitor.tick(&mut target, clock.now());
//! assert_eq!(target.calls(), vec![Call::Preempt { p: 0, signal: true }]);
//! ```

use crate::{Clock, PStatus, PView, Preempt, Target};
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// One action (or costly question) of the monitor, as logged by [`FakeTarget`].
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::{Call, FakeTarget};
/// use gosched_sysmon::{PView, Target};
///
/// let mut target = FakeTarget::new(vec![PView::IDLE]);
/// target.retake(0);
/// assert_eq!(target.calls(), vec![Call::Retake(0)]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// [`Target::preempt`] of P `p`, with or without a signal.
    Preempt {
        /// The P.
        p: usize,
        /// The `send_signal` argument.
        signal: bool,
    },
    /// [`Target::retake`] of the given P.
    Retake(usize),
    /// [`Target::thread_blocked`] of the given P.
    ThreadBlocked(usize),
    /// [`Target::handoff_blocked`] of the given P.
    HandoffBlocked(usize),
    /// [`Target::fire_timers`] at the given time.
    FireTimers(Duration),
    /// [`Target::starved`] of P `p`.
    Starved {
        /// The P.
        p: usize,
        /// How long its slice had overrun its quantum.
        overrun: Duration,
    },
}

/// A [`Target`] whose state is plain public data.
///
/// Behaviour of the levers:
/// * `preempt`: [`Preempt::NotRunning`] unless the P is running; without a
///   signal [`Preempt::FlagOnly`]; with one, [`Preempt::Signalled`] and
///   `signal_pending[p] = true`, or [`Preempt::AlreadyPending`] if it was
///   already set (clear it to simulate delivery).
/// * `retake`: a P in a blocking call becomes idle and `true` is returned;
///   otherwise `false`.
/// * `thread_blocked`: answers `blocked[p]`.
/// * `handoff_blocked`: answers `handoff_succeeds`, changing nothing else.
/// * `next_timer` / `fire_timers`: the minimum of `timers` / removes every
///   entry `<= now`.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::FakeTarget;
/// use gosched_sysmon::{PStatus, PView, Target};
/// use std::time::Duration;
///
/// let mut target = FakeTarget::new(vec![PView::in_syscall(1, Duration::ZERO)]);
/// assert!(target.retake(0));
/// assert_eq!(target.ps[0].status, PStatus::Idle);
/// assert!(!target.retake(0));
/// ```
#[derive(Clone, Debug)]
pub struct FakeTarget {
    /// The Ps; `procs()` is `ps.len()`.
    pub ps: Vec<PView>,
    /// Answer of [`Target::idle_or_spinning`] (initially 0).
    pub idle_or_spinning: usize,
    /// Answer of [`Target::global_work`] (initially `false`).
    pub global_work: bool,
    /// Pending timer deadlines, in any order.
    pub timers: Vec<Duration>,
    /// Answers of [`Target::thread_blocked`], per P (initially all `false`).
    pub blocked: Vec<bool>,
    /// Whether each P's M has a preemption signal pending (initially `false`).
    pub signal_pending: Vec<bool>,
    /// Answer of [`Target::handoff_blocked`] (initially `true`).
    pub handoff_succeeds: bool,
    calls: RefCell<Vec<Call>>,
    observations: Cell<u64>,
}

impl FakeTarget {
    /// A target with the given Ps, no timers, no idle P or spinning M, empty
    /// global queue and no thread blocked.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::FakeTarget;
    /// use gosched_sysmon::{PView, Target};
    ///
    /// let target = FakeTarget::new(vec![PView::IDLE; 3]);
    /// assert_eq!(target.procs(), 3);
    /// assert_eq!(target.blocked, vec![false; 3]);
    /// assert!(target.calls().is_empty());
    /// ```
    pub fn new(ps: Vec<PView>) -> FakeTarget {
        let n = ps.len();
        FakeTarget {
            ps,
            idle_or_spinning: 0,
            global_work: false,
            timers: Vec::new(),
            blocked: vec![false; n],
            signal_pending: vec![false; n],
            handoff_succeeds: true,
            calls: RefCell::new(Vec::new()),
            observations: Cell::new(0),
        }
    }

    /// Every call logged so far, oldest first.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{PView, Target};
    ///
    /// let target = FakeTarget::new(vec![PView::IDLE]);
    /// target.thread_blocked(0);
    /// assert_eq!(target.calls(), vec![Call::ThreadBlocked(0)]);
    /// ```
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Return the calls logged so far and clear the log.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{PView, Target};
    ///
    /// let mut target = FakeTarget::new(vec![PView::IDLE]);
    /// target.retake(0);
    /// assert_eq!(target.take_calls(), vec![Call::Retake(0)]);
    /// assert!(target.calls().is_empty());
    /// ```
    pub fn take_calls(&self) -> Vec<Call> {
        self.calls.take()
    }

    /// How many times [`Target::observe`] was called.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::FakeTarget;
    /// use gosched_sysmon::{Config, Monitor, PView};
    ///
    /// let mut target = FakeTarget::new(vec![PView::IDLE; 2]);
    /// Monitor::new(Config::default(), 2).tick(&mut target, Default::default());
    /// assert_eq!(target.observations(), 2);
    /// ```
    pub fn observations(&self) -> u64 {
        self.observations.get()
    }

    fn log(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    fn check(&self, p: usize) {
        assert!(
            p < self.ps.len(),
            "P index {p} out of range (procs = {})",
            self.ps.len()
        );
    }
}

impl Target for FakeTarget {
    fn procs(&self) -> usize {
        self.ps.len()
    }

    fn observe(&self, p: usize) -> PView {
        self.check(p);
        self.observations.set(self.observations.get() + 1);
        self.ps[p]
    }

    fn idle_or_spinning(&self) -> usize {
        self.idle_or_spinning
    }

    fn global_work(&self) -> bool {
        self.global_work
    }

    fn preempt(&mut self, p: usize, send_signal: bool) -> Preempt {
        self.check(p);
        self.log(Call::Preempt {
            p,
            signal: send_signal,
        });
        if self.ps[p].status != PStatus::Running {
            Preempt::NotRunning
        } else if !send_signal {
            Preempt::FlagOnly
        } else if self.signal_pending[p] {
            Preempt::AlreadyPending
        } else {
            self.signal_pending[p] = true;
            Preempt::Signalled
        }
    }

    fn retake(&mut self, p: usize) -> bool {
        self.check(p);
        self.log(Call::Retake(p));
        if self.ps[p].status == PStatus::Syscall {
            self.ps[p].status = PStatus::Idle;
            true
        } else {
            false
        }
    }

    fn thread_blocked(&self, p: usize) -> bool {
        self.check(p);
        self.log(Call::ThreadBlocked(p));
        self.blocked[p]
    }

    fn handoff_blocked(&mut self, p: usize) -> bool {
        self.check(p);
        self.log(Call::HandoffBlocked(p));
        self.handoff_succeeds
    }

    fn next_timer(&self) -> Option<Duration> {
        self.timers.iter().copied().min()
    }

    fn fire_timers(&mut self, now: Duration) -> usize {
        self.log(Call::FireTimers(now));
        let before = self.timers.len();
        self.timers.retain(|&t| t > now);
        before - self.timers.len()
    }

    fn starved(&mut self, p: usize, overrun: Duration) {
        self.log(Call::Starved { p, overrun });
    }
}

/// A [`Clock`] that only moves when told to.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::ManualClock;
/// use gosched_sysmon::Clock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Duration::ZERO);
/// clock.set(Duration::from_secs(1));
/// assert_eq!(clock.now(), Duration::from_secs(1));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Cell<Duration>,
}

impl ManualClock {
    /// A clock reading `start`.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::ManualClock;
    /// use gosched_sysmon::Clock;
    /// use std::time::Duration;
    ///
    /// assert_eq!(ManualClock::new(Duration::from_millis(7)).now(), Duration::from_millis(7));
    /// ```
    pub fn new(start: Duration) -> ManualClock {
        ManualClock {
            now: Cell::new(start),
        }
    }

    /// Move the clock to `now`.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::ManualClock;
    /// use gosched_sysmon::Clock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::default();
    /// clock.set(Duration::from_micros(20));
    /// assert_eq!(clock.now(), Duration::from_micros(20));
    /// ```
    pub fn set(&self, now: Duration) {
        self.now.set(now);
    }

    /// Move the clock forward by `by`.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::ManualClock;
    /// use gosched_sysmon::Clock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::default();
    /// clock.advance(Duration::from_millis(2));
    /// clock.advance(Duration::from_millis(3));
    /// assert_eq!(clock.now(), Duration::from_millis(5));
    /// ```
    pub fn advance(&self, by: Duration) {
        self.now.set(self.now.get() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.now.get()
    }
}
