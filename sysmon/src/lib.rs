//! The system monitor ("sysmon") policy of the gosched runtime.
//!
//! gosched schedules goroutines the way Go 1.14+ does: a goroutine (G) runs
//! on an OS thread (M) that holds a processor (P); there are `GOMAXPROCS` Ps
//! and any number of Ms. Most scheduling decisions are taken by the Ms
//! themselves when a G blocks, yields or exits. A few cannot be, because the
//! M that would have to take them is busy running user code or is stuck in
//! the kernel. Those are taken by the *system monitor*: a dedicated thread,
//! holding no P, that wakes up from time to time, looks at every P and
//! intervenes.
//!
//! This crate is only the *policy* of that thread. It owns no thread, sends
//! no signal and reads no clock: the runtime calls [`Monitor::tick`] with the
//! current time and an implementation of [`Target`] (its view of the Ps and
//! the levers sysmon may pull), and the monitor answers how long to sleep.
//! The policy is therefore deterministic and is tested with a fake target
//! and hand-advanced time (see [`fake`]).
//!
//! # Glossary
//!
//! * **G, M, P** – goroutine, machine (OS thread), processor. A G runs only
//!   on an M that holds a P.
//! * **Slice** – one uninterrupted stretch of a G on a P. A slice begins
//!   when the scheduler executes a G without inheriting the previous G's
//!   time; the runtime then bumps the P's `schedtick` and publishes the
//!   slice's start time ([`PView::schedtick`], [`PView::slice_start`]).
//! * **Quantum** – how long a slice may run before sysmon asks the G to
//!   yield ([`Config::quantum`], Go's `forcePreemptNS`, 10 ms).
//! * **Preemption request** – setting the G's cooperative preempt flag (the
//!   G checks it in function prologues) and, with asynchronous preemption,
//!   also signalling its M so that the signal handler can stop the G at an
//!   asynchronous safe point ([`Target::preempt`], Go's `preemptone`).
//! * **Refused preemption** – the signal arrived but the G was not at an
//!   asynchronous safe point (for instance because the thread was inside
//!   foreign code or the kernel), so the handler left it running
//!   ([`PView::refused`]).
//! * **Blocking call** – a system call (or other call that may block in the
//!   kernel) that the G announced to the runtime, Go's `entersyscall`. The P
//!   stays attached to the M in status [`PStatus::Syscall`] and its
//!   `syscalltick` is bumped ([`PView::syscalltick`],
//!   [`PView::syscall_start`]).
//! * **Retake** – taking a P away from an M in a blocking call and handing it
//!   to another M so that other Gs can run (Go's `retake` + `handoffp`).
//! * **Blocked M** – an M whose G is asleep in the kernel *without* having
//!   announced a blocking call (a raw `read(2)` in foreign code, a page fault
//!   on a network file system, a futex inside a C library). Go has no remedy
//!   for this: the P stays pinned to the sleeping thread. gosched detects it
//!   and hands the P away ([`Target::handoff_blocked`]).
//! * **Tick** – one sysmon cycle, one call of [`Monitor::tick`].
//! * **Idle backoff** – Go's rule that sysmon polls every 20 µs, and after 50
//!   cycles in which it retook nothing doubles its sleep each cycle up to
//!   10 ms.
//!
//! # The rules
//!
//! Every tick applies the following steps, in this order. Go 1.19 function
//! names refer to `runtime/proc.go`.
//!
//! 1. **Timers** (from `sysmon`: `next := timeSleepUntil(); if next < now {
//!    startm(nil, false) }`). If the earliest timer deadline
//!    ([`Target::next_timer`]) is not later than now, call
//!    [`Target::fire_timers`], which makes the due goroutines runnable and
//!    wakes an M if a P is idle.
//! 2. **Preempt long-running goroutines** (from `retake` and `preemptone`).
//!    For every P in [`PStatus::Running`] whose slice started at least one
//!    quantum ago, call [`Target::preempt`] once in this tick, asking for a
//!    signal when [`Config::async_preempt`] is set. Go can only tell that a
//!    slice is old by seeing the same `schedtick` on two of its samples; the
//!    runtime publishes the slice's start time, so we compare against it
//!    directly. If the `schedtick` differs from the one recorded on the
//!    previous tick, a new slice has begun and the per-P bookkeeping of
//!    step 3 is reset. While the same slice keeps overrunning, the request
//!    is repeated on later ticks; the runtime keeps at most one signal
//!    pending per M, so repeats are cheap.
//!
//!    *Timed slices.* A slice the runtime has armed a timer for
//!    ([`PView::timed`]: the timer makes the request itself, in the
//!    runtime's signal handler) is first looked at
//!    [`Config::timer_grace`] (or `quantum / 4`, if longer) after its
//!    quantum, and from then on like any other. sysmon is the timer's
//!    backstop (a refused or lost timer request is retried from there), and
//!    does not wake for every slice end of goroutines that always use their
//!    whole quantum.
//!
//!    *Uncontended backoff* ([`Config::only_when_contended`]). An
//!    overrunning slice is preempted only while some goroutine waits for a
//!    P ([`Target::global_work`], [`PView::runq_nonempty`]). When none
//!    does, nobody needs any P back, whatever its slice: sysmon looks again
//!    [`Config::uncontended_look_max`] later (a quantum, if longer), and
//!    until that look it does not wake for the quantum of a slice that
//!    begins meanwhile either. A look that finds a goroutine waiting, or a
//!    wake-up by the runtime ([`Monitor::woken`]), ends the backoff. The
//!    runtime wakes sysmon itself when a woken goroutine needs a P (its
//!    wake-up preemption), so the backoff only delays work that starts to
//!    wait without a wake-up (a goroutine spawned by a busy one).
//!
//!    *Pending-signal backoff.* A request that finds the previous signal
//!    to the M still undelivered ([`Preempt::AlreadyPending`]: the thread
//!    waits for a CPU that another process holds) sends nothing; from the
//!    second such request in a row the retry interval doubles as for
//!    refusals, so that sysmon does not take CPU every quarter quantum from
//!    a machine that has none to spare. A delivered signal restarts it.
//!
//!    *Flag-only backoff.* With asynchronous preemption off a request can
//!    only set the goroutine's flag ([`Preempt::FlagOnly`]), which stays
//!    set until the slice ends: from the second such request of a slice
//!    the retry interval doubles as for refusals (a loop that never looks
//!    at the flag cost a sysmon wake-up every `quantum / 4`: 28,000 a
//!    second at a 100 µs quantum). A new slice restarts it.
//!
//!    *Refusal backoff.* A retry whose previous signal was refused
//!    ([`PView::refused`] grew since the previous tick) doubles the retry
//!    interval, from `max(min_sleep, quantum / 4)` up to
//!    [`Config::max_refused_retry`]; a retry that was not refused restarts
//!    it, and so does a thread that step 3 finds asleep in the kernel (its
//!    remedy is the hand-off, which the backoff would only delay). A
//!    goroutine that stays where preemption is refused (a long user signal
//!    handler, a loop inside libc) would otherwise cost a signal and a
//!    sysmon wake-up every `quantum / 4`, forever (at a 100 µs quantum,
//!    40,000 a second). Once every request of a slice has been refused for
//!    [`Config::starved_quanta`] quanta and at least [`Config::starved_min`]
//!    (measured from the first request of the unbroken run of refusals),
//!    call [`Target::starved`], once per slice, so the runtime can say why
//!    its other goroutines do not run.
//! 3. **Blocked-M detection** (no Go counterpart; it sits where `retake`
//!    handles `_Psyscall`). An overrunning slice is a *candidate* on a tick
//!    when sysmon already asked it to yield on an earlier tick, and its
//!    [`PView::refused`] count has grown since the previous tick (with
//!    asynchronous preemption off, the earlier request is enough). For
//!    candidates only, ask [`Target::thread_blocked`], which is costly (it
//!    reads the thread's state from `/proc`), at most once per
//!    [`Config::blocked_probe_interval`] per P (a tick in between neither
//!    scores nor resets). A candidate whose thread is asleep in the kernel
//!    scores a strike; any other answer resets the strikes. After [`Config::blocked_refusals`] consecutive strikes call
//!    [`Target::handoff_blocked`], once per slice. The thread is examined
//!    *before* this tick's signal is sent, because the signal itself briefly
//!    wakes a sleeping thread. In the tick of a hand-off the P is not
//!    preempted, since it may already be running some other G.
//! 4. **Retake Ps from blocking calls** (from `retake`). For every P in
//!    [`PStatus::Syscall`]: if its `syscalltick` differs from the one
//!    recorded on an earlier tick, record it and leave the P alone in this
//!    tick. A P has to be seen in the same call on two ticks, so that short
//!    calls never pay for a hand-off. Otherwise, once the call is
//!    [`Config::syscall_retake`] old, retake the P ([`Target::retake`]) if
//!    other work wants it: its local run queue is not empty, or the global
//!    run queue is not empty, or no P is idle and no M is spinning (Go:
//!    `runqempty(pp) && nmspinning+npidle > 0`). When nothing is waiting,
//!    retake it anyway once the call is a quantum old (Go's
//!    `syscallwhen+10*1000*1000 > now`), so that a P is not held by a
//!    thread that has left Go's world. A successful retake resets the idle
//!    backoff (Go: `if retake(now) != 0 { idle = 0 }`).
//! 5. **Decide how long to sleep** (from the top of `sysmon`'s loop).
//!    * If every P is idle, return [`Sleep::Idle`] with the next timer
//!      deadline. The runtime parks sysmon until that deadline or until it
//!      wakes sysmon because a P became busy or a blocking call began (Go
//!      parks on `sysmonnote` when `npidle == gomaxprocs`). As in Go, the
//!      idle backoff restarts only if the runtime wakes sysmon explicitly
//!      and says so with [`Monitor::woken`]; a park that merely times out
//!      leaves it as it was.
//!    * Otherwise take the earliest known deadline: for each running P the
//!      end of its quantum (`slice_start + quantum`; during an uncontended
//!      backoff, the backoff's next look if that is later) or, when it is
//!      already overrunning and has been asked to yield, a retry after
//!      `max(min_sleep, quantum / 4)`; for each P in a blocking call the
//!      moment it becomes retakable (`syscall_start + syscall_retake`;
//!      `now + syscall_retake` when its call was first seen in this tick;
//!      `syscall_start + quantum` when no work waits); and the next timer.
//!      Sleep until it, clamped to
//!      [`min_sleep`](Config::min_sleep)..=[`max_sleep`](Config::max_sleep).
//!    * When nothing has a deadline (for example preemption is disabled by a
//!      quantum of [`Duration::MAX`]), fall back to Go's idle backoff: sleep
//!      `min_sleep`, and after 50 consecutive ticks without a retake double
//!      the sleep on every tick up to `max_sleep`. [`Monitor::woken`]
//!      restarts the backoff (Go: `if syscallWake { idle = 0; delay = 20 }`).
//! 6. **Bounds.** Only Ps `0..target.procs()` are observed or acted upon.
//!
//! Because `max_sleep` does not exceed the quantum in the default
//! configuration, a slice that begins while sysmon sleeps is first observed
//! no later than its own deadline, so no slice is detected late merely
//! because sysmon did not know about it.
//!
//! # Rejected designs
//!
//! * **Go's fixed polling backoff** (20 µs doubling to 10 ms, whatever the
//!   Ps are doing). Go does not know when a slice started: it only notices
//!   that `schedtick` has not changed between two samples, so a slice is
//!   recognised as too long one to two sampling periods after it began, and
//!   at the 10 ms sampling period a "10 ms" quantum becomes 10–20 ms before
//!   the request is even sent. Our runtime publishes each slice's start
//!   time together with its `schedtick`, so sysmon sleeps exactly until the
//!   earliest known deadline. That is why the p99 slice length with a
//!   10 ms quantum is expected to be about 10 ms rather than the 19–40 ms
//!   seen under Go's policy. Sleeping until deadlines also avoids Go's
//!   thousands of 20 µs wake-ups per second right after every burst of
//!   activity.
//! * **Taking the minimum of the polling backoff and the deadline.** That
//!   brings the 20 µs polling back without improving precision. The backoff
//!   is used only when no deadline is known.
//! * **A timer for every slice** (arm a per-thread timer in `execute`).
//!   That costs a system call on the scheduler's hot path for every slice,
//!   most of which end long before the quantum. The runtime arms one (a
//!   per-thread timer, one per M) only for a slice whose goroutine used
//!   its whole previous slice, and sysmon leaves such *timed* slices to it
//!   (see rule 2): a CPU-bound goroutine is time-sliced without sysmon
//!   taking a CPU from it at every slice end.
//! * **Retaking a P on the first sighting of a blocking call.** Most calls
//!   return within microseconds; a hand-off wakes or creates an M and
//!   migrates the run queue. Like Go, we require the same call on two ticks.
//! * **Detecting blocked Ms from the thread state alone** (read every
//!   thread's `/proc` state on every tick). Reading `/proc` is a system
//!   call per thread, and a thread is often briefly asleep in a futex for
//!   legitimate reasons. We only look at threads whose slice overran and
//!   whose preemption was refused, and we require several consecutive
//!   strikes.
//! * **Letting sysmon read the clock itself.** The clock is an argument of
//!   [`Monitor::tick`] (the runtime uses a [`Clock`]), which keeps the
//!   policy deterministic and testable without sleeping.
//!
//! # Examples
//!
//! A P whose goroutine has been running for longer than the quantum is asked
//! to yield, and sysmon sleeps until the next P's quantum ends:
//!
//! ```
//! use gosched_sysmon::fake::{Call, FakeTarget};
//! use gosched_sysmon::{Config, Monitor, PView, Sleep};
//! use std::time::Duration;
//!
//! let ms = Duration::from_millis;
//! let mut target = FakeTarget::new(vec![
//!     PView::running(1, ms(0)), // running since t = 0
//!     PView::running(7, ms(6)), // running since t = 6 ms
//! ]);
//! let mut monitor = Monitor::new(Config::default(), 2);
//! let sleep = monitor.tick(&mut target, ms(12));
//! assert_eq!(target.calls(), vec![Call::Preempt { p: 0, signal: true }]);
//! // P 0 will be retried in quantum / 4 = 2.5 ms; P 1's quantum ends at 16 ms.
//! assert_eq!(sleep, Sleep::For(Duration::from_micros(2500)));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

pub mod fake;
mod monitor;

pub use monitor::Monitor;

#[cfg(test)]
mod tests;

/// Tunables of the monitor.
///
/// `Config::default()` is: quantum 10 ms, syscall retake 20 µs, max sleep
/// 10 ms, min sleep 20 µs, 2 blocked refusals, asynchronous preemption on,
/// refused retries backing off to 2 ms, starvation reported after 100
/// quanta (and at least 100 ms) of refusals, timed slices looked at 1 ms
/// after their quantum.
/// Setting `quantum` or `syscall_retake` to [`Duration::MAX`] disables the
/// deadline it controls.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::Config;
/// use std::time::Duration;
///
/// let cfg = Config::default();
/// assert_eq!(cfg.quantum, Duration::from_millis(10));
/// assert_eq!(cfg.syscall_retake, Duration::from_micros(20));
/// assert_eq!(cfg.max_sleep, Duration::from_millis(10));
/// assert_eq!(cfg.min_sleep, Duration::from_micros(20));
/// assert_eq!(cfg.blocked_refusals, 2);
/// assert!(cfg.async_preempt);
/// assert_eq!(cfg.max_refused_retry, Duration::from_millis(2));
/// assert_eq!(cfg.starved_quanta, 100);
/// assert_eq!(cfg.starved_min, Duration::from_millis(100));
/// assert_eq!(cfg.timer_grace, Duration::from_millis(1));
///
/// let coarse = Config { quantum: Duration::from_millis(50), ..Config::default() };
/// assert_eq!(coarse.quantum, Duration::from_millis(50));
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a slice may run before sysmon requests its preemption (Go's
    /// `forcePreemptNS`). [`Duration::MAX`] disables time-slice preemption.
    pub quantum: Duration,
    /// How old a blocking call must be (and it must have been seen on two
    /// ticks) before its P may be retaken while other work waits.
    pub syscall_retake: Duration,
    /// Longest sleep while any P is busy (Go: 10 ms).
    pub max_sleep: Duration,
    /// Shortest sleep (Go: 20 µs). Wins over `max_sleep` if larger.
    pub min_sleep: Duration,
    /// Consecutive ticks on which a refused preemption finds the thread
    /// asleep in the kernel before the P is handed away. 0 disables
    /// blocked-M detection.
    pub blocked_refusals: u32,
    /// Least time between two [`Target::thread_blocked`] questions about
    /// one P (each reads `/proc` in the runtime: tens of µs). Without it a
    /// short quantum would ask every retry tick (`quantum / 4`).
    /// Blocked-M detection then takes at least `blocked_refusals` of these.
    pub blocked_probe_interval: Duration,
    /// Send a signal along with the cooperative preempt flag.
    pub async_preempt: bool,
    /// Preempt an overrunning goroutine only while another goroutine waits
    /// to run (some P's local queue or the global queue holds work). Go
    /// preempts regardless (`false`, the default); preempting a goroutine
    /// that nothing waits for only reschedules it, at the cost of a signal.
    /// When skipped, sysmon looks again
    /// [`uncontended_look_max`](Config::uncontended_look_max) later, or a
    /// quantum if longer (see rule 2's *uncontended backoff*).
    pub only_when_contended: bool,
    /// Interval between two looks while nobody waits for a P (only with
    /// [`only_when_contended`](Config::only_when_contended)); the quantum
    /// if that is longer. Default 1 ms: beside goroutines that never block
    /// at a short quantum, sysmon looked every quantum (at 100 µs, 10,000
    /// wake-ups a second, each taking a CPU from one of them: 7-10 % of
    /// their throughput on a 2-CPU VM), while work that starts to wait
    /// without the runtime saying so (a goroutine spawned by a busy one)
    /// now waits at most this long past its quantum.
    pub uncontended_look_max: Duration,
    /// Longest pause between two preemption requests to a slice whose
    /// asynchronous preemptions keep being refused (Go: none; see rule 2's
    /// refusal backoff). The retry interval doubles with every refused
    /// retry, from `max(min_sleep, quantum / 4)` up to this (or up to that
    /// start, if larger). Default 2 ms: at most 500 signals a second to a
    /// goroutine that refuses them, while one that is only briefly in libc
    /// is still caught within a few ms.
    pub max_refused_retry: Duration,
    /// Quanta for which every preemption request of a slice must have been
    /// refused before [`Target::starved`] reports it (once per slice). 0
    /// disables the report.
    pub starved_quanta: u32,
    /// Least such time, whatever the quantum (at a 100 µs quantum, 100
    /// quanta are only 10 ms: a loaded machine or a long runtime call
    /// can refuse that long without anything being wrong).
    pub starved_min: Duration,
    /// How long after its quantum a *timed* slice ([`PView::timed`]: the
    /// runtime armed a timer that requests its preemption without sysmon)
    /// is first looked at; the retry interval (`max(min_sleep, quantum /
    /// 4)`) if that is longer. Sysmon is then only the timer's backstop:
    /// a refused or lost timer preemption is retried from there as any
    /// other, and sysmon does not wake for every slice end.
    pub timer_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            quantum: Duration::from_millis(10),
            syscall_retake: Duration::from_micros(20),
            max_sleep: Duration::from_millis(10),
            min_sleep: Duration::from_micros(20),
            blocked_refusals: 2,
            blocked_probe_interval: Duration::from_millis(1),
            async_preempt: true,
            only_when_contended: false,
            uncontended_look_max: Duration::from_millis(1),
            max_refused_retry: Duration::from_millis(2),
            starved_quanta: 100,
            starved_min: Duration::from_millis(100),
            timer_grace: Duration::from_millis(1),
        }
    }
}

/// The status of a P as sysmon cares about it.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::{PStatus, PView};
/// use std::time::Duration;
///
/// assert_eq!(PView::IDLE.status, PStatus::Idle);
/// assert_eq!(PView::running(1, Duration::ZERO).status, PStatus::Running);
/// assert_eq!(PView::in_syscall(1, Duration::ZERO).status, PStatus::Syscall);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PStatus {
    /// No goroutine: the P is on the idle list (or about to be).
    Idle,
    /// An M holding the P is running a goroutine.
    Running,
    /// The P's M is in a blocking call announced to the runtime.
    Syscall,
}

/// One P as the runtime sees it now.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::{PStatus, PView};
/// use std::time::Duration;
///
/// let view = PView {
///     runq_nonempty: true,
///     ..PView::running(42, Duration::from_millis(3))
/// };
/// assert_eq!(view.status, PStatus::Running);
/// assert_eq!(view.schedtick, 42);
/// assert!(view.runq_nonempty);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct PView {
    /// What the P is doing.
    pub status: PStatus,
    /// Bumped on every fresh slice (execute without inherited time).
    pub schedtick: u64,
    /// When the current slice began, published together with `schedtick`.
    pub slice_start: Duration,
    /// Bumped on every entry into a blocking call.
    pub syscalltick: u64,
    /// When the current blocking call began.
    pub syscall_start: Duration,
    /// The P's local run queue (or `runnext`) holds work.
    pub runq_nonempty: bool,
    /// Cumulative count of refused asynchronous preemption attempts on this
    /// P's current M.
    pub refused: u64,
    /// The current slice is timed: the runtime armed a timer that requests
    /// its preemption at the end of its quantum without sysmon, which
    /// looks at it only [`Config::timer_grace`] later.
    pub timed: bool,
}

impl PView {
    /// An idle P with every counter at zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::{PStatus, PView};
    ///
    /// assert_eq!(PView::IDLE.status, PStatus::Idle);
    /// assert!(!PView::IDLE.runq_nonempty);
    /// ```
    pub const IDLE: PView = PView {
        status: PStatus::Idle,
        schedtick: 0,
        slice_start: Duration::ZERO,
        syscalltick: 0,
        syscall_start: Duration::ZERO,
        runq_nonempty: false,
        refused: 0,
        timed: false,
    };

    /// A running P whose slice number `schedtick` began at `slice_start`;
    /// every other field as in [`PView::IDLE`].
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::{PStatus, PView};
    /// use std::time::Duration;
    ///
    /// let view = PView::running(3, Duration::from_millis(5));
    /// assert_eq!(view.status, PStatus::Running);
    /// assert_eq!(view.slice_start, Duration::from_millis(5));
    /// ```
    pub const fn running(schedtick: u64, slice_start: Duration) -> PView {
        PView {
            status: PStatus::Running,
            schedtick,
            slice_start,
            ..PView::IDLE
        }
    }

    /// A P whose M entered blocking call number `syscalltick` at
    /// `syscall_start`; every other field as in [`PView::IDLE`].
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::{PStatus, PView};
    /// use std::time::Duration;
    ///
    /// let view = PView::in_syscall(9, Duration::from_micros(70));
    /// assert_eq!(view.status, PStatus::Syscall);
    /// assert_eq!(view.syscalltick, 9);
    /// ```
    pub const fn in_syscall(syscalltick: u64, syscall_start: Duration) -> PView {
        PView {
            status: PStatus::Syscall,
            syscalltick,
            syscall_start,
            ..PView::IDLE
        }
    }
}

/// What happened when sysmon asked for a preemption.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::FakeTarget;
/// use gosched_sysmon::{PView, Preempt, Target};
/// use std::time::Duration;
///
/// let mut target = FakeTarget::new(vec![PView::running(1, Duration::ZERO), PView::IDLE]);
/// assert_eq!(target.preempt(0, true), Preempt::Signalled);
/// assert_eq!(target.preempt(0, true), Preempt::AlreadyPending);
/// assert_eq!(target.preempt(0, false), Preempt::FlagOnly);
/// assert_eq!(target.preempt(1, true), Preempt::NotRunning);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preempt {
    /// The flag was set and a signal was sent to the M.
    Signalled,
    /// The flag was set; a signal was already pending on the M, so none was sent.
    AlreadyPending,
    /// Only the cooperative flag was set (no signal was asked for).
    FlagOnly,
    /// The P was not running a goroutine any more; nothing was done.
    NotRunning,
}

/// A source of the current time, as a [`Duration`] since the runtime's epoch.
///
/// The monitor itself never reads a clock; the runtime uses one to obtain the
/// `now` it passes to [`Monitor::tick`].
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::ManualClock;
/// use gosched_sysmon::Clock;
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Duration::from_millis(1));
/// clock.advance(Duration::from_millis(2));
/// assert_eq!(clock.now(), Duration::from_millis(3));
/// ```
pub trait Clock {
    /// The current time.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::ManualClock;
    /// use gosched_sysmon::Clock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new(Duration::from_secs(5));
    /// assert_eq!(clock.now(), Duration::from_secs(5));
    /// ```
    fn now(&self) -> Duration;
}

/// The runtime as seen and steered by sysmon.
///
/// All times are [`Duration`]s since the runtime's epoch, the same epoch as
/// the `now` passed to [`Monitor::tick`]. The monitor never passes a P index
/// `>= procs()`.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::FakeTarget;
/// use gosched_sysmon::{PStatus, PView, Target};
/// use std::time::Duration;
///
/// let target = FakeTarget::new(vec![PView::IDLE, PView::running(4, Duration::ZERO)]);
/// assert_eq!(target.procs(), 2);
/// assert_eq!(target.observe(1).status, PStatus::Running);
/// ```
pub trait Target {
    /// The number of Ps (`GOMAXPROCS`). Read once per tick.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::FakeTarget;
    /// use gosched_sysmon::{Config, Monitor, PView, Sleep, Target};
    ///
    /// // The monitor was sized for 8 Ps but only ever touches the 2 that exist
    /// // (the fake panics on any other index).
    /// let mut target = FakeTarget::new(vec![PView::IDLE; 2]);
    /// let mut monitor = Monitor::new(Config::default(), 8);
    /// assert_eq!(target.procs(), 2);
    /// assert_eq!(monitor.tick(&mut target, Default::default()), Sleep::Idle(None));
    /// ```
    fn procs(&self) -> usize;

    /// A snapshot of P `p`. Called once per P per tick.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::FakeTarget;
    /// use gosched_sysmon::{PView, Target};
    /// use std::time::Duration;
    ///
    /// let target = FakeTarget::new(vec![PView::in_syscall(2, Duration::from_micros(5))]);
    /// assert_eq!(target.observe(0).syscalltick, 2);
    /// ```
    fn observe(&self, p: usize) -> PView;

    /// Number of idle Ps plus spinning Ms (Go: `npidle + nmspinning`).
    /// Consulted only for a P whose blocking call is old enough to retake.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView};
    /// use std::time::Duration;
    ///
    /// let us = Duration::from_micros;
    /// let mut target = FakeTarget::new(vec![PView::in_syscall(1, us(0)), PView::IDLE]);
    /// let mut monitor = Monitor::new(Config::default(), 2);
    /// monitor.tick(&mut target, us(10)); // first sighting of the call
    /// target.idle_or_spinning = 1; // P 1 is idle: nobody needs P 0 yet
    /// monitor.tick(&mut target, us(40));
    /// assert!(target.calls().is_empty());
    /// target.idle_or_spinning = 0; // every P is busy: take P 0 back
    /// monitor.tick(&mut target, us(60));
    /// assert_eq!(target.calls(), vec![Call::Retake(0)]);
    /// ```
    fn idle_or_spinning(&self) -> usize;

    /// The global run queue is not empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView};
    /// use std::time::Duration;
    ///
    /// let us = Duration::from_micros;
    /// let mut target = FakeTarget::new(vec![PView::in_syscall(1, us(0)), PView::IDLE]);
    /// target.idle_or_spinning = 1;
    /// target.global_work = true;
    /// let mut monitor = Monitor::new(Config::default(), 2);
    /// monitor.tick(&mut target, us(10));
    /// monitor.tick(&mut target, us(40));
    /// assert_eq!(target.calls(), vec![Call::Retake(0)]);
    /// ```
    fn global_work(&self) -> bool;

    /// Set the cooperative preempt flag of `p`'s running goroutine; when
    /// `send_signal`, also signal its M (the runtime keeps at most one signal
    /// pending per M).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView};
    /// use std::time::Duration;
    ///
    /// let ms = Duration::from_millis;
    /// let mut target = FakeTarget::new(vec![PView::running(1, ms(0))]);
    /// let cfg = Config { async_preempt: false, ..Config::default() };
    /// let mut monitor = Monitor::new(cfg, 1);
    /// monitor.tick(&mut target, ms(9));
    /// assert!(target.calls().is_empty()); // within its quantum
    /// monitor.tick(&mut target, ms(10));
    /// assert_eq!(target.calls(), vec![Call::Preempt { p: 0, signal: false }]);
    /// ```
    fn preempt(&mut self, p: usize, send_signal: bool) -> Preempt;

    /// Take `p` away from an M in a blocking call and hand it to another M
    /// (Go: `retake` + `handoffp`). `true` if taken.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView};
    /// use std::time::Duration;
    ///
    /// let us = Duration::from_micros;
    /// let mut target = FakeTarget::new(vec![PView {
    ///     runq_nonempty: true,
    ///     ..PView::in_syscall(5, us(0))
    /// }]);
    /// let mut monitor = Monitor::new(Config::default(), 1);
    /// monitor.tick(&mut target, us(1)); // must be seen on two ticks
    /// assert!(target.calls().is_empty());
    /// monitor.tick(&mut target, us(21));
    /// assert_eq!(target.calls(), vec![Call::Retake(0)]);
    /// assert_eq!(monitor.counters().retakes, 1);
    /// ```
    fn retake(&mut self, p: usize) -> bool;

    /// Is the OS thread running `p`'s goroutine asleep in the kernel (for
    /// example state `S` in `/proc`)? Costly: called only for Ps whose slice
    /// overran and whose preemption was refused (or, without asynchronous
    /// preemption, requested) since the previous tick.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView};
    /// use std::time::Duration;
    ///
    /// let ms = Duration::from_millis;
    /// let mut target = FakeTarget::new(vec![PView::running(1, ms(0))]);
    /// let mut monitor = Monitor::new(Config::default(), 1);
    /// monitor.tick(&mut target, ms(5));
    /// monitor.tick(&mut target, ms(10)); // overrun: signalled
    /// target.ps[0].refused += 1; // the signal was refused
    /// target.take_calls();
    /// monitor.tick(&mut target, ms(12));
    /// assert_eq!(
    ///     target.calls(),
    ///     vec![Call::ThreadBlocked(0), Call::Preempt { p: 0, signal: true }]
    /// );
    /// ```
    fn thread_blocked(&self, p: usize) -> bool;

    /// Hand `p` away from its M whose goroutine is blocked in the kernel
    /// (blocked-M detection). `true` if done.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView};
    /// use std::time::Duration;
    ///
    /// let ms = Duration::from_millis;
    /// let mut target = FakeTarget::new(vec![PView::running(1, ms(0))]);
    /// target.blocked[0] = true; // asleep in the kernel
    /// let mut monitor = Monitor::new(Config::default(), 1);
    /// for t in [10, 13, 16] {
    ///     monitor.tick(&mut target, ms(t));
    ///     target.ps[0].refused += 1; // every signal is refused
    /// }
    /// assert!(target.calls().contains(&Call::HandoffBlocked(0)));
    /// assert_eq!(monitor.counters().blocked_handoffs, 1);
    /// ```
    fn handoff_blocked(&mut self, p: usize) -> bool;

    /// The earliest pending timer deadline, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::FakeTarget;
    /// use gosched_sysmon::{Config, Monitor, PView, Sleep};
    /// use std::time::Duration;
    ///
    /// let ms = Duration::from_millis;
    /// let mut target = FakeTarget::new(vec![PView::running(1, ms(0))]);
    /// target.timers.push(ms(2));
    /// let mut monitor = Monitor::new(Config::default(), 1);
    /// // The timer at 2 ms comes before the quantum's end at 10 ms.
    /// assert_eq!(monitor.tick(&mut target, ms(1)), Sleep::For(ms(1)));
    /// ```
    fn next_timer(&self) -> Option<Duration>;

    /// Make every goroutine whose timer is due at `now` runnable (and wake an
    /// M if a P is idle); returns how many.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView, Sleep};
    /// use std::time::Duration;
    ///
    /// let ms = Duration::from_millis;
    /// let mut target = FakeTarget::new(vec![PView::IDLE]);
    /// target.timers = vec![ms(1), ms(2), ms(8)];
    /// let mut monitor = Monitor::new(Config::default(), 1);
    /// assert_eq!(monitor.tick(&mut target, ms(3)), Sleep::Idle(Some(ms(8))));
    /// assert_eq!(target.calls(), vec![Call::FireTimers(ms(3))]);
    /// assert_eq!(monitor.counters().timers_fired, 2);
    /// ```
    fn fire_timers(&mut self, now: Duration) -> usize;

    /// P `p`'s current slice has overrun its quantum by `overrun` (at
    /// least [`Config::starved_quanta`] quanta) and every asynchronous
    /// preemption of it was refused since the retries began: the goroutines
    /// waiting for `p` starve. Called once per slice; the runtime makes it
    /// visible (a warning, a counter). The default does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched_sysmon::fake::{Call, FakeTarget};
    /// use gosched_sysmon::{Config, Monitor, PView, Sleep};
    /// use std::time::Duration;
    ///
    /// let ms = Duration::from_millis;
    /// let cfg = Config { starved_quanta: 3, starved_min: Duration::ZERO, ..Config::default() };
    /// let mut target = FakeTarget::new(vec![PView::running(1, ms(0))]);
    /// let mut monitor = Monitor::new(cfg, 1);
    /// let mut now = ms(10);
    /// while now < ms(60) {
    ///     let Sleep::For(d) = monitor.tick(&mut target, now) else { unreachable!() };
    ///     target.ps[0].refused += 1; // inside a signal handler: refused
    ///     target.signal_pending[0] = false; // the signal was delivered
    ///     now += d;
    /// }
    /// assert_eq!(target.calls().iter().filter(|c| matches!(c, Call::Starved { p: 0, .. })).count(), 1);
    /// assert_eq!(monitor.counters().starved, 1);
    /// ```
    fn starved(&mut self, p: usize, overrun: Duration) {
        let _ = (p, overrun);
    }
}

/// sysmon's decision about its next sleep.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::FakeTarget;
/// use gosched_sysmon::{Config, Monitor, PView, Sleep};
/// use std::time::Duration;
///
/// let ms = Duration::from_millis;
/// let mut monitor = Monitor::new(Config::default(), 1);
/// let mut busy = FakeTarget::new(vec![PView::running(1, ms(0))]);
/// assert_eq!(monitor.tick(&mut busy, ms(3)), Sleep::For(ms(7)));
/// let mut idle = FakeTarget::new(vec![PView::IDLE]);
/// assert_eq!(monitor.tick(&mut idle, ms(3)), Sleep::Idle(None));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sleep {
    /// Sleep this long (the runtime may wake sysmon early).
    For(Duration),
    /// Every P is idle: sleep until the runtime wakes sysmon, or until the
    /// given absolute deadline (the next timer, same epoch as `now`) if any.
    Idle(Option<Duration>),
}

/// Counters of what the monitor did.
///
/// # Examples
///
/// ```
/// use gosched_sysmon::fake::FakeTarget;
/// use gosched_sysmon::{Config, Counters, Monitor, PView};
/// use std::time::Duration;
///
/// let mut monitor = Monitor::new(Config::default(), 1);
/// assert_eq!(monitor.counters(), Counters::default());
/// let mut target = FakeTarget::new(vec![PView::running(1, Duration::ZERO)]);
/// monitor.tick(&mut target, Duration::from_millis(11));
/// let c = monitor.counters();
/// assert_eq!((c.ticks, c.preempt_requests, c.signals), (1, 1, 1));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls of [`Monitor::tick`].
    pub ticks: u64,
    /// Calls of [`Target::preempt`].
    pub preempt_requests: u64,
    /// Calls of [`Target::preempt`] that answered [`Preempt::Signalled`].
    pub signals: u64,
    /// Calls of [`Target::retake`] that answered `true`.
    pub retakes: u64,
    /// Calls of [`Target::handoff_blocked`] that answered `true`.
    pub blocked_handoffs: u64,
    /// Sum of the values returned by [`Target::fire_timers`].
    pub timers_fired: u64,
    /// Calls of [`Target::starved`]: slices whose preemption was refused
    /// for `starved_quanta` quanta.
    pub starved: u64,
}
