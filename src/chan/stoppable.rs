//! [`Timer`] and [`Ticker`]: Go's `time.Timer` and `time.Ticker`, timer
//! channels that can be stopped and reset, on top of the same timer heaps as
//! [`after`](super::after) and [`tick`](super::tick).
//!
//! # Go 1.23 semantics: no stale values
//!
//! Before Go 1.23 a value that fired just before `Stop` or `Reset` could
//! still be received afterwards, and the documented idiom (`if !t.Stop() {
//! <-t.C }`) raced. Go 1.23 made the channel effectively unbuffered: after
//! `Stop` or `Reset` returns, no value prepared before the call is ever
//! received. Here the same holds, with two pieces:
//!
//! 1. Every arming carries a sequence number (`Inner::seq`); `stop` and
//!    `reset` bump it under the state lock, and a firing task delivers only
//!    while holding that lock and seeing its own number. A task that was
//!    already taken off the heap when `stop` ran (so `cancel` could not
//!    stop it) therefore delivers nothing.
//! 2. `stop` and `reset` drain the channel's one buffered value, under the
//!    same lock: a value that fired but was not received is discarded.
//!
//! As in Go 1.23, `stop` and `reset` return true when they prevented a
//! delivery: the timer was pending, or its value was still unreceived
//! (drained).
//!
//! Lock order: the state lock, then the channel lock (deliver, drain) or a
//! timer heap's lock (arm, cancel). Heaps run tasks after releasing their
//! lock, so a task taking the state lock cannot invert it.
//!
//! # Outliving the runtime
//!
//! A runtime's heap drops its pending tasks unrun when the runtime goes.
//! A task dropped unrun while its arming is still current (see `Pending`)
//! re-arms itself on the helper thread, so a `Timer` or `Ticker` made in a
//! goroutine still fires after its runtime is dropped. A task cancelled by
//! `stop` or `reset` is dropped too, but after the bump of the sequence
//! number, with the state lock held: the drop reads the number from an
//! atomic and, seeing it stale, does nothing (and takes no lock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::timer::{fallback, next_tick, Slot, MIN_TICK};
use super::{channel, Receiver, Sender};
use crate::sched::timer::{self, Task, FOREVER};
use crate::sched::{NoPreempt, RuntimeLock, Shared};

/// A single-shot timer whose channel receives the time once it fires (Go's
/// `time.Timer`, with Go 1.23's stop and reset semantics: see
/// [`stop`](Timer::stop)).
///
/// Created in a goroutine, it lives in that goroutine's runtime's timer
/// heap; elsewhere (or once that runtime is gone) a helper thread fires it.
/// Dropping the `Timer` stops it; a cloned receiver then sees the channel
/// closed.
///
/// # Examples
///
/// ```
/// use gosched::chan::Timer;
/// use std::time::{Duration, Instant};
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let start = Instant::now();
///     let t = Timer::new(Duration::from_millis(5));
///     let fired = t.c().recv().unwrap();
///     assert!(fired - start >= Duration::from_millis(5));
///
///     // Stopped before it fires: nothing is ever delivered.
///     let t = Timer::new(Duration::from_secs(60));
///     assert!(t.stop());
///     assert!(t.c().try_recv().is_err());
/// });
/// ```
pub struct Timer {
    inner: Arc<Inner>,
    rx: Receiver<Instant>,
}

/// A channel that receives the time every period until stopped (Go's
/// `time.Ticker`). Like Go's ticker it buffers one tick and drops ticks a
/// slow receiver misses, and after [`stop`](Ticker::stop) or
/// [`reset`](Ticker::reset) no earlier tick is received (Go 1.23).
///
/// A period below 100 µs, zero included (Go's `NewTicker` panics on it),
/// ticks every 100 µs; a huge one (up to `Duration::MAX`) effectively never
/// ticks. Dropping the `Ticker` stops it.
///
/// # Examples
///
/// ```
/// use gosched::chan::Ticker;
/// use std::time::{Duration, Instant};
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let start = Instant::now();
///     let t = Ticker::new(Duration::from_millis(2));
///     for _ in 0..3 {
///         t.c().recv().unwrap();
///     }
///     assert!(start.elapsed() >= Duration::from_millis(6));
///     t.stop();
///     assert!(t.c().recv_timeout(Duration::from_millis(20)).is_err());
/// });
/// ```
pub struct Ticker {
    inner: Arc<Inner>,
    rx: Receiver<Instant>,
}

/// The part a pending timer task shares with its `Timer` or `Ticker`.
struct Inner {
    /// Where this timer's tasks go.
    home: Home,
    /// The channel's sender (one-value buffer); the handle owns the
    /// receiver.
    tx: Sender<Instant>,
    /// The current arming's sequence number: bumped by every stop and
    /// reset, so a task armed under an older number delivers nothing
    /// (module docs, step 1). Written only with the state lock held; read
    /// under it, and without it by a task's drop (`Pending`), which may
    /// run while `stop_and` holds the lock.
    seq: AtomicU64,
    /// Taken by the handle's stop/reset and by the firing task (on a
    /// scheduler thread, sysmon or the fallback thread); always inside a
    /// no-preempt region when on a goroutine.
    state: Mutex<State>,
}

struct State {
    /// The pending task, if any.
    slot: Option<Slot>,
    /// `Some` for a ticker: the task re-arms itself.
    period: Option<Duration>,
}

/// The timer heap a timer's tasks go to.
enum Home {
    /// The runtime it was created in. Weak: a handle may outlive it.
    Runtime(Weak<Shared>),
    /// The helper thread's heap.
    Fallback,
}

impl Home {
    fn current() -> Home {
        crate::sched::with_current_shared(|sh| Home::Runtime(sh.me.clone()))
            .unwrap_or(Home::Fallback)
    }

    /// Adds `task` to this heap, or to the fallback heap if the runtime is
    /// gone or shutting down (its heap would never fire it).
    fn add(&self, when: Instant, task: Task) -> Slot {
        let mut task = task;
        if let Home::Runtime(w) = self {
            // The shutdown check and the insertion in one step
            // (`try_add_timer`): checked apart, a reset from a plain thread
            // while the runtime dropped could insert after the heap was
            // emptied (see `Timers::try_add`). Our reference to the
            // runtime is not the last while the heap is open (`Runtime`
            // keeps one until after `drop_all`); once it is closed it
            // may be, and dropping it here, under the caller's state lock,
            // drops an empty heap: no task of ours.
            if let Some(sh) = w.upgrade().filter(|sh| !sh.is_shut_down()) {
                match sh.try_add_timer(when, task) {
                    Ok(id) => return Slot::Runtime(w.clone(), id),
                    Err(t) => task = t,
                }
            }
        }
        Slot::Fallback(fallback().add(when, task))
    }
}

impl Inner {
    /// A timer (`period: None`) or ticker armed for `when`, and its
    /// receiver.
    fn start(when: Instant, period: Option<Duration>) -> (Arc<Inner>, Receiver<Instant>) {
        let (tx, rx) = channel(1);
        let inner = Arc::new(Inner {
            home: Home::current(),
            tx,
            seq: AtomicU64::new(0),
            state: Mutex::new(State { slot: None, period }),
        });
        {
            let _np = NoPreempt::enter();
            let mut st = inner.state.rt_lock();
            inner.arm(&mut st, when);
        }
        (inner, rx)
    }

    /// Arms a task for `when` under the current sequence number.
    /// The caller holds the state lock (`st`).
    fn arm(self: &Arc<Inner>, st: &mut State, when: Instant) {
        let pending = Pending {
            inner: Some(self.clone()),
            seq: self.seq.load(Ordering::SeqCst),
            when,
        };
        let task: Task = Box::new(move || pending.run());
        st.slot = Some(self.home.add(when, task));
    }

    /// The task armed under `seq` for `when`: delivers the time unless
    /// stopped or reset since (module docs, step 1); a ticker re-arms.
    fn fire(self: &Arc<Inner>, seq: u64, when: Instant) {
        let mut st = self.state.rt_lock();
        if self.seq.load(Ordering::SeqCst) != seq {
            return;
        }
        st.slot = None;
        // Full (a ticker's receiver is behind): the tick is dropped, as in
        // Go. The handle owns the receiver, so the channel is open.
        let _ = self.tx.try_send(Instant::now());
        if let Some(period) = st.period {
            let next = next_tick(when, Instant::now(), period);
            self.arm(&mut st, next);
        }
    }

    /// Stops the timer, discards an unreceived value (module docs, step 2)
    /// and, with `then`, re-arms it: for `Some((when, period))` a timer
    /// (`period: None`) or ticker armed for `when`. Returns whether it
    /// prevented a delivery.
    fn stop_and(
        self: &Arc<Inner>,
        rx: &Receiver<Instant>,
        then: Option<(Instant, Option<Duration>)>,
    ) -> bool {
        let _np = NoPreempt::enter();
        let mut st = self.state.rt_lock();
        // Before the cancel: the cancelled task's drop sees the new number
        // and does not re-arm (see `Pending`).
        self.seq.fetch_add(1, Ordering::SeqCst);
        let pending = st.slot.take().is_some_and(Slot::cancel);
        let drained = rx.try_recv().is_ok();
        if let Some((when, period)) = then {
            st.period = period;
            self.arm(&mut st, when);
        }
        pending || drained
    }
}

/// A task as armed under `seq` for `when`, in a runtime's heap or the
/// helper thread's. Run, it fires (`Inner::fire`). Dropped unrun while
/// still the current arming, it re-arms for `when` where `Home::add` sends
/// it now: its runtime dropped its heap, and with it this task, so the
/// helper thread takes the timer over (module docs, "Outliving the
/// runtime"). Stopped or reset, it is stale and its drop does nothing.
struct Pending {
    /// `None` once run.
    inner: Option<Arc<Inner>>,
    seq: u64,
    when: Instant,
}

impl Pending {
    fn run(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.fire(self.seq, self.when);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Without the lock first: a cancelled task is dropped while
        // `stop_and` holds it (and has bumped the number already). Nor
        // while unwinding: a task dropped by a panic inside `arm` (the
        // helper thread could not start) would take the lock its caller
        // holds.
        if inner.seq.load(Ordering::SeqCst) != self.seq || std::thread::panicking() {
            return;
        }
        let _np = NoPreempt::enter();
        let mut st = inner.state.rt_lock();
        // Re-checked under the lock: a stop or reset in between wins.
        if inner.seq.load(Ordering::SeqCst) == self.seq {
            inner.arm(&mut st, self.when);
        }
    }
}

impl Timer {
    /// A timer that fires once, at least `d` from now (Go's
    /// `time.NewTimer`). Any duration is accepted; `Duration::MAX` never
    /// fires (deadlines are clamped to 100 years).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// // From a plain thread: a helper thread fires it.
    /// let t = gosched::chan::Timer::new(Duration::from_millis(1));
    /// assert!(t.c().recv().is_some());
    /// ```
    pub fn new(d: Duration) -> Timer {
        let (inner, rx) = Inner::start(timer::deadline_after(d), None);
        Timer { inner, rx }
    }

    /// The channel the time is delivered on (Go's `t.C`). Use it with
    /// `recv`, `recv_timeout` or in [`select!`](crate::select!).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::{channel, Timer};
    /// use std::time::Duration;
    ///
    /// let (_tx, rx) = channel::<()>(0);
    /// let t = Timer::new(Duration::from_millis(1));
    /// let timed_out = gosched::select! {
    ///     recv(rx) -> _ => false,
    ///     recv(t.c()) -> _ => true,
    /// };
    /// assert!(timed_out);
    /// ```
    pub fn c(&self) -> &Receiver<Instant> {
        &self.rx
    }

    /// Stops the timer (Go's `t.Stop`, Go 1.23 semantics): once it returns,
    /// no value is received from [`c`](Timer::c) until a
    /// [`reset`](Timer::reset), even one that fired just before and was not
    /// yet received (it is discarded). Returns true if this call prevented
    /// a delivery (the timer was pending, or its value unreceived), false
    /// if it had already been stopped or its value received.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::Timer;
    /// use std::time::Duration;
    ///
    /// let t = Timer::new(Duration::from_millis(1));
    /// assert!(t.c().recv().is_some());
    /// assert!(!t.stop()); // already delivered and received
    ///
    /// let t = Timer::new(Duration::from_secs(60));
    /// assert!(t.stop());
    /// assert!(!t.stop()); // already stopped
    /// ```
    pub fn stop(&self) -> bool {
        self.inner.stop_and(&self.rx, None)
    }

    /// Re-arms the timer to fire `d` from now (Go's `t.Reset`, Go 1.23
    /// semantics): as [`stop`](Timer::stop), no value from before the call
    /// is received afterwards. Returns what `stop` would have returned.
    /// Any duration is accepted, as in [`new`](Timer::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::Timer;
    /// use std::time::{Duration, Instant};
    ///
    /// let t = Timer::new(Duration::from_millis(1));
    /// std::thread::sleep(Duration::from_millis(20)); // fired, not received
    /// let reset_at = Instant::now();
    /// assert!(t.reset(Duration::from_millis(10))); // the stale value is dropped
    /// let fired = t.c().recv().unwrap();
    /// assert!(fired - reset_at >= Duration::from_millis(10));
    /// ```
    pub fn reset(&self, d: Duration) -> bool {
        let when = timer::deadline_after(d);
        self.inner.stop_and(&self.rx, Some((when, None)))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer").finish_non_exhaustive()
    }
}

impl Ticker {
    /// A ticker that delivers the time every `period`, the first tick one
    /// period from now (Go's `time.NewTicker`). See the type docs for
    /// short and huge periods.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let t = gosched::chan::Ticker::new(Duration::from_millis(1));
    /// assert!(t.c().recv().is_some());
    /// assert!(t.c().recv().is_some());
    /// ```
    pub fn new(period: Duration) -> Ticker {
        let period = period.clamp(MIN_TICK, FOREVER);
        let (inner, rx) = Inner::start(timer::deadline_after(period), Some(period));
        Ticker { inner, rx }
    }

    /// The channel the ticks are delivered on (Go's `t.C`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let t = gosched::chan::Ticker::new(Duration::from_millis(1));
    /// let first = t.c().recv().unwrap();
    /// let second = t.c().recv().unwrap();
    /// assert!(second > first);
    /// ```
    pub fn c(&self) -> &Receiver<Instant> {
        &self.rx
    }

    /// Stops the ticker (Go's `t.Stop`, Go 1.23 semantics): once it
    /// returns no tick is received, not even one that was already
    /// buffered, until a [`reset`](Ticker::reset).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::Ticker;
    /// use std::time::Duration;
    ///
    /// let t = Ticker::new(Duration::from_millis(1));
    /// std::thread::sleep(Duration::from_millis(10)); // a tick is buffered
    /// t.stop();
    /// assert!(t.c().recv_timeout(Duration::from_millis(20)).is_err());
    /// ```
    pub fn stop(&self) {
        self.inner.stop_and(&self.rx, None);
    }

    /// Restarts the ticker with a new `period`, the next tick one period
    /// from now (Go's `t.Reset`); no tick from before the call is received
    /// afterwards. Works on a stopped ticker too. Periods are adjusted as
    /// in [`new`](Ticker::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::Ticker;
    /// use std::time::{Duration, Instant};
    ///
    /// let t = Ticker::new(Duration::from_secs(3600));
    /// let reset_at = Instant::now();
    /// t.reset(Duration::from_millis(5));
    /// let tick = t.c().recv().unwrap();
    /// assert!(tick - reset_at >= Duration::from_millis(5));
    /// ```
    pub fn reset(&self, period: Duration) {
        let period = period.clamp(MIN_TICK, FOREVER);
        let when = timer::deadline_after(period);
        self.inner.stop_and(&self.rx, Some((when, Some(period))));
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker").finish_non_exhaustive()
    }
}
