//! Timer channels: [`after`] (Go's `time.After`) and [`tick`] (Go's
//! `time.Tick`).
//!
//! Inside a goroutine the timer lives in the runtime's timer heap: its task
//! runs on a scheduler thread or sysmon and only does a `try_send`, so it
//! never blocks. Outside any runtime (a plain thread) a single lazily
//! started helper thread keeps a heap of the same kind and plays the same
//! role.
//!
//! A timer channel's timer is cancelled when the channel's last receiver
//! drops (the channel's `on_receivers_gone` hook; see `Armed`), as Go 1.23
//! collects unreferenced timer channels: `select!` with `recv(after(d))` in
//! a loop leaves nothing behind. Every duration is accepted: deadlines are
//! clamped to 100 years (`FOREVER`), which is "never" in practice.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::{channel, Receiver, Sender, TrySendError};
use crate::os::note::Note;
use crate::sched::timer::{self, Task, TimerId, Timers, FOREVER};
use crate::sched::{NoPreempt, RuntimeLock, Shared};

/// A channel that receives the current time once, at least `d` from now
/// (Go's `time.After`). It never fires early. Called in a goroutine, the
/// timer belongs to that goroutine's runtime (if the runtime is dropped
/// first, the channel closes without a value); elsewhere a helper thread
/// fires it. After its one value the channel is closed: a second `recv`
/// returns `None` at once (Go's channel stays open, and a second receive
/// blocks for ever).
///
/// Dropping every receiver before it fires cancels the timer, so a
/// `select!` that times out with `recv(after(d))` can run in a loop without
/// piling up timers. Any duration is accepted; `Duration::MAX` never fires.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let start = Instant::now();
///     let timeout = gosched::chan::after(Duration::from_millis(5));
///     let fired = timeout.recv().unwrap();
///     assert!(fired - start >= Duration::from_millis(5));
///     assert_eq!(timeout.recv(), None);
///
///     // An unused timeout is cancelled when its receiver drops.
///     let (tx, rx) = gosched::chan::channel(1);
///     tx.send(1).unwrap();
///     let got = gosched::select! {
///         recv(rx) -> v => v,
///         recv(gosched::chan::after(Duration::MAX)) -> _ => None,
///     };
///     assert_eq!(got, Some(1));
/// });
/// assert_eq!(rt.stats().timers, 0);
/// ```
pub fn after(d: Duration) -> Receiver<Instant> {
    let (tx, rx) = channel(1);
    let armed = Armed::new(&rx);
    let task: Task = Box::new(move || {
        // Never fails on a fresh 1-slot channel except when the receiver is
        // gone, which is fine.
        let _ = tx.try_send(Instant::now());
    });
    let deadline = timer::deadline_after(d);
    match crate::sched::with_current_shared(|sh| SharedPtr(sh)) {
        // SAFETY: we are on a goroutine of that runtime: it is alive.
        Some(sh) => armed.arm(|| unsafe { sh.arm(deadline, task) }),
        None => armed.arm(|| Slot::Fallback(fallback().add(deadline, task))),
    }
    rx
}

/// The shortest period [`tick`] uses. A shorter one (zero included, which
/// Go's `NewTicker` rejects with a panic) is rounded up to it: every tick
/// costs a timer firing and a thread wake-up, and a ticker of a few
/// nanoseconds would keep a thread busy firing ticks that the buffer of one
/// drops anyway.
pub(super) const MIN_TICK: Duration = Duration::from_micros(100);

/// A channel that receives the current time every `period` (Go's
/// `time.Tick`). Like Go's `Ticker` it buffers one tick and drops ticks a
/// slow receiver misses; dropping the last receiver stops the ticker (its
/// pending timer is cancelled).
///
/// Any period is accepted: one below 100 µs, zero included (which Go's
/// `NewTicker` rejects with a panic), ticks every 100 µs; a huge one (up
/// to `Duration::MAX`) effectively never ticks.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let start = Instant::now();
///     let t = gosched::chan::tick(Duration::from_millis(2));
///     for _ in 0..3 {
///         t.recv().unwrap();
///     }
///     assert!(start.elapsed() >= Duration::from_millis(6));
///
///     // A zero period is the minimum period, not a busy loop.
///     let start = Instant::now();
///     let z = gosched::chan::tick(Duration::ZERO);
///     z.recv().unwrap();
///     let second = z.recv().unwrap();
///     assert!(second - start >= Duration::from_micros(200));
/// });
/// ```
pub fn tick(period: Duration) -> Receiver<Instant> {
    let period = period.clamp(MIN_TICK, FOREVER);
    let (tx, rx) = channel(1);
    let armed = Armed::new(&rx);
    let first = timer::deadline_after(period);
    match crate::sched::with_current_shared(|sh| SharedPtr(sh)) {
        Some(sh) => arm_runtime(sh, armed, first, period, tx),
        None => arm_fallback(armed, first, period, tx),
    }
    rx
}

/// The next deadline of a ticker that fired for `when` at `now`: one period
/// later, skipping periods it fell behind on (Go's ticker adjustment).
/// `period` is at most `FOREVER`, so this cannot overflow.
pub(super) fn next_tick(when: Instant, now: Instant, period: Duration) -> Instant {
    let mut next = when + period;
    if next <= now {
        let behind = now.duration_since(when).as_nanos() / period.as_nanos();
        let skip = u32::try_from(behind).unwrap_or(u32::MAX);
        next = when
            .checked_add(period.saturating_mul(skip.saturating_add(1)))
            .unwrap_or_else(|| timer::deadline_after(FOREVER));
    }
    next
}

/// Where a timer channel's pending timer is.
pub(super) enum Slot {
    /// In a runtime's heap. Weak: a receiver may outlive its runtime.
    Runtime(Weak<Shared>, TimerId),
    /// In the fallback thread's heap, under this id.
    Fallback(TimerId),
}

impl Slot {
    /// Cancels the timer; returns whether it was still pending (had not
    /// fired and was not cancelled before).
    pub(super) fn cancel(self) -> bool {
        match self {
            // A runtime that is shutting down fires nothing more, even
            // while its last references are being dropped: nothing to stop.
            Slot::Runtime(sh, id) => sh
                .upgrade()
                .is_some_and(|sh| !sh.is_shut_down() && sh.timers.cancel(id)),
            Slot::Fallback(id) => fallback().cancel(id),
        }
    }
}

/// A timer channel's current timer, so that dropping the channel's last
/// receiver cancels it (Go 1.23: an unreferenced timer channel is
/// collected). Without this, `select!` over `recv(after(10 s))` in a loop
/// kept one timer and its channel alive per iteration until it fired.
///
/// A ticker re-arms from its own firing task; the lock makes "receivers
/// gone" and "re-arm" exclusive, so no timer is armed after the receivers
/// are gone.
#[derive(Clone)]
struct Armed(Arc<Mutex<ArmedState>>);

struct ArmedState {
    /// The last receiver dropped: arm nothing more.
    gone: bool,
    current: Option<Slot>,
}

impl Armed {
    /// Creates the record and installs the hook on `rx`'s channel.
    fn new(rx: &Receiver<Instant>) -> Armed {
        let armed = Armed(Arc::new(Mutex::new(ArmedState {
            gone: false,
            current: None,
        })));
        let a = armed.clone();
        rx.chan.set_on_receivers_gone(Box::new(move || {
            let slot = {
                let _np = NoPreempt::enter();
                let mut st = a.0.rt_lock();
                st.gone = true;
                st.current.take()
            };
            if let Some(slot) = slot {
                let _np = NoPreempt::enter();
                let _ = slot.cancel();
            }
        }));
        armed
    }

    /// Arms the next timer with `add` unless the receivers are gone.
    ///
    /// In a no-preempt region: the lock is also taken by timer tasks on
    /// scheduler threads and sysmon, which a goroutine preempted while
    /// holding it would stall.
    fn arm(&self, add: impl FnOnce() -> Slot) {
        let _np = NoPreempt::enter();
        let mut st = self.0.rt_lock();
        if !st.gone {
            // The previous slot, if any, has fired: nothing to cancel.
            st.current = Some(add());
        }
    }
}

/// Delivers one tick; false once the receiver is gone (stop re-arming).
fn deliver(tx: &Sender<Instant>) -> bool {
    !matches!(
        tx.try_send(Instant::now()),
        Err(TrySendError::Disconnected(_))
    )
}

/// A runtime, as captured by a timer channel's task.
#[derive(Clone, Copy)]
struct SharedPtr(*const Shared);

// SAFETY: `Shared` is Sync; the pointer is dereferenced only while the
// runtime is known alive (see `SharedPtr::arm`).
unsafe impl Send for SharedPtr {}

impl SharedPtr {
    /// Adds `task` to the runtime's heap.
    ///
    /// # Safety
    ///
    /// The runtime is alive: we run on one of its goroutines, or as a task
    /// from its own timer heap, which only the runtime's threads fire while
    /// it exists (dropping the runtime drops pending tasks unrun).
    unsafe fn arm(self, when: Instant, task: Task) -> Slot {
        // SAFETY: the caller's contract.
        let sh = unsafe { &*self.0 };
        Slot::Runtime(sh.me.clone(), sh.add_timer(when, task))
    }
}

/// Arms the next tick in the runtime's heap. The task re-arms itself.
fn arm_runtime(sh: SharedPtr, armed: Armed, when: Instant, period: Duration, tx: Sender<Instant>) {
    let a = armed.clone();
    let task: Task = Box::new(move || {
        if deliver(&tx) {
            let next = next_tick(when, Instant::now(), period);
            arm_runtime(sh, a, next, period, tx);
        }
    });
    // SAFETY: we are on one of the runtime's goroutines (`tick`) or run as
    // a task from its own heap (above).
    armed.arm(|| unsafe { sh.arm(when, task) });
}

fn arm_fallback(armed: Armed, when: Instant, period: Duration, tx: Sender<Instant>) {
    let a = armed.clone();
    let task: Task = Box::new(move || {
        if deliver(&tx) {
            let next = next_tick(when, Instant::now(), period);
            arm_fallback(a, next, period, tx);
        }
    });
    armed.arm(|| Slot::Fallback(fallback().add(when, task)));
}

/// The timer thread for channels made outside any runtime: a heap of the
/// same kind as a runtime's, fired by one helper thread that sleeps on a
/// note until the earliest deadline.
///
/// # The deadlock check
///
/// The deadlock check accounts for every thread of the process
/// (`Shared::deadlocked`). While the heap is empty the helper thread can
/// wake nobody, so it counts itself in `THREADS_PARKED` (as the SIGQUIT
/// thread does); it used not to, and once it existed no deadlock was ever
/// reported again. With a timer pending it is not counted: the timer will
/// fire and may wake a goroutine, so nothing is deadlocked.
///
/// The count never includes the thread while a timer is pending, not even
/// before the thread has woken to look: whoever adds a timer takes the
/// count back at once (`uncount`), and the thread, having counted itself,
/// looks at the heap again. Both sides publish, fence, then look (Dekker),
/// so at least one sees the other; `counted` makes sure only one of them
/// gives the count back.
pub(super) struct Fallback {
    timers: Timers,
    /// Woken when a timer becomes the earliest, and when the last pending
    /// timer is cancelled (the thread then counts itself parked).
    note: Note,
    /// The heap's deadlines are nanoseconds since this instant.
    epoch: Instant,
    /// The thread is counted in `THREADS_PARKED` (see the type docs). Set
    /// by the thread after counting itself; cleared by whoever gives the
    /// count back.
    counted: AtomicBool,
}

pub(super) fn fallback() -> &'static Fallback {
    static F: OnceLock<&'static Fallback> = OnceLock::new();
    F.get_or_init(|| {
        let f: &'static Fallback = Box::leak(Box::new(Fallback {
            timers: Timers::new(),
            note: Note::new(),
            epoch: Instant::now(),
            counted: AtomicBool::new(false),
        }));
        std::thread::Builder::new()
            .name("gosched-chan-timer".into())
            .spawn(move || f.run())
            .expect("gosched: cannot start the channel timer thread");
        f
    })
}

impl Fallback {
    pub(super) fn add(&self, when: Instant, task: Task) -> TimerId {
        let (id, earliest) = self.timers.add(timer::nanos_since(self.epoch, when), task);
        // Dekker with `run`: the timer is in the heap; now look whether
        // the thread counted itself parked (type docs).
        fence(Ordering::SeqCst);
        self.uncount();
        if earliest {
            self.note.wake();
        }
        id
    }

    /// Cancels a timer (see `Timers::cancel`). When that empties the
    /// heap, wakes the thread: it was waiting for that deadline, not
    /// counted as parked, and must count itself now (or a deadlock stays
    /// hidden until the cancelled deadline).
    fn cancel(&self, id: TimerId) -> bool {
        let was = self.timers.cancel(id);
        if was && self.timers.next().is_none() {
            self.note.wake();
        }
        was
    }

    /// Gives back the thread's count in `THREADS_PARKED`, if it holds one.
    fn uncount(&self) {
        if self.counted.load(Ordering::SeqCst)
            && self
                .counted
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            crate::sched::g::THREADS_PARKED.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn run(&self) {
        loop {
            let now = timer::nanos(self.epoch.elapsed());
            self.timers.fire(now);
            let timeout = match self.timers.next() {
                Some(next) => Some(Duration::from_nanos(next.saturating_sub(now))),
                None => {
                    // Nothing to fire: parked for the deadlock check.
                    // Counted before `counted` is set, so whoever clears
                    // it finds the count there to give back.
                    crate::sched::g::THREADS_PARKED.fetch_add(1, Ordering::SeqCst);
                    self.counted.store(true, Ordering::SeqCst);
                    // Dekker with `add`: look again (type docs).
                    fence(Ordering::SeqCst);
                    if self.timers.next().is_some() {
                        self.uncount();
                        continue;
                    }
                    None
                }
            };
            self.note.wait(timeout);
            self.uncount();
        }
    }
}
