//! Timers: one heap per runtime, ordered by deadline, checked by every M
//! when it schedules, by the idle M that sleeps until the earliest deadline,
//! and by sysmon (which is how a timer fires while every P runs a CPU hog).
//!
//! Go keeps a heap per P; one heap behind a mutex gives the same results
//! (no timer fires before its deadline, an idle runtime sleeps exactly until
//! the next one) and is simpler. The earliest deadline is mirrored in an
//! atomic so the scheduler's check costs one load when nothing is due.

use crate::sched::{RtGuard, RuntimeLock};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest wait gosched arms a timer for: 100 years. Every duration the
/// API takes is clamped to it, so any `Duration` (up to `Duration::MAX`, as
/// `std::thread::sleep` accepts) means "at least that long, or effectively
/// forever", and every deadline stays representable both as an `Instant` and
/// as `u64` nanoseconds since a runtime's epoch (which overflow after ~584
/// years).
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `Instant::now() + d`, with `d` clamped to [`FOREVER`]: never overflows.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    Instant::now() + d.min(FOREVER)
}

/// `deadline` as a heap deadline: nanoseconds since `epoch`, rounded up so
/// a timer never fires before its deadline, and below `u64::MAX` (the
/// heap's "none pending").
pub(crate) fn nanos_since(epoch: Instant, deadline: Instant) -> u64 {
    nanos(deadline.saturating_duration_since(epoch)).min(u64::MAX - 2) + 1
}

/// Whole nanoseconds in `d`, saturating at `u64::MAX` (`as u64` on
/// `as_nanos()` would truncate: `Duration::MAX` became `u64::MAX`, and
/// `2^64 ns + 1` became 1).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A timer's callback. Runs on whichever thread fires it (an M's g0, an
/// idle M, sysmon): it must be short and must not block.
pub(crate) type Task = Box<dyn FnOnce() + Send>;

/// Handle for `Timers::cancel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimerId(u64);

#[derive(Default)]
struct Heap {
    order: BinaryHeap<Reverse<(u64, u64)>>,
    tasks: HashMap<u64, Task>,
    seq: u64,
    /// Set by `drop_all`: the runtime is gone, nothing will fire a task
    /// added now (`try_add` refuses it).
    closed: bool,
}

/// Cancelled entries a heap may hold beyond twice its live ones before
/// `cancel` rebuilds it: keeps small heaps from being rebuilt on every
/// cancel.
const COMPACT_SLACK: usize = 64;

/// The timers of one runtime. Deadlines are nanoseconds since the runtime's
/// epoch.
pub(crate) struct Timers {
    heap: Mutex<Heap>,
    /// Earliest pending deadline, u64::MAX when none. Written under the
    /// heap lock; read without it (Relaxed: a stale value only delays the
    /// check to the next scheduling round or sysmon tick).
    next: AtomicU64,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            heap: Mutex::new(Heap::default()),
            next: AtomicU64::new(u64::MAX),
        }
    }

    /// Adds a timer; returns its id and whether it is now the earliest.
    /// For the runtime's own threads, which `drop_all` outlives.
    pub(crate) fn add(&self, when: u64, task: Task) -> (TimerId, bool) {
        match self.try_add(when, task) {
            Ok(added) => added,
            // Unreachable from the runtime's threads (joined before
            // `drop_all`); elsewhere, as `try_add`'s caller would: the
            // task is dropped, outside the lock.
            Err(_) => (TimerId(0), false),
        }
    }

    /// `add`, unless `drop_all` has run: then the task back. The check and
    /// the insertion are one step under the heap's lock; a caller that
    /// checked the runtime's shutdown first and inserted later (a timer
    /// reset from a plain thread while the runtime dropped) left its task
    /// in a heap nobody fires, or, holding the last reference to the
    /// runtime, dropped the heap and the task in it, whose drop re-arms
    /// the timer under the lock the caller held: a thread hung for good.
    pub(crate) fn try_add(&self, when: u64, task: Task) -> Result<(TimerId, bool), Task> {
        let mut h = self.heap.rt_lock();
        if h.closed {
            return Err(task);
        }
        h.seq += 1;
        let id = h.seq;
        h.order.push(Reverse((when, id)));
        h.tasks.insert(id, task);
        let earliest = when < self.next.load(Ordering::Relaxed);
        if earliest {
            self.next.store(when, Ordering::Relaxed);
        }
        Ok((TimerId(id), earliest))
    }

    /// Cancels a timer that has not fired. Returns whether it was pending.
    ///
    /// The task is dropped at once (its captures, e.g. a channel's sender,
    /// are freed); its 16-byte heap entry stays until it reaches the top, or
    /// until cancelled entries outnumber live ones, when the heap is rebuilt
    /// without them (O(n), so O(1) amortised per cancel). Memory stays
    /// proportional to the live timers however many are cancelled (an
    /// `after` per `select!` in a loop, a timed park per `recv_timeout`).
    pub(crate) fn cancel(&self, id: TimerId) -> bool {
        let mut h = self.heap.rt_lock();
        let task = h.tasks.remove(&id.0);
        let was = task.is_some();
        if h.tasks.is_empty() {
            h.order.clear();
            self.next.store(u64::MAX, Ordering::Relaxed);
        } else if h.order.len() > 2 * h.tasks.len() + COMPACT_SLACK {
            let Heap { order, tasks, .. } = &mut *h;
            order.retain(|Reverse((_, id))| tasks.contains_key(id));
            let next = order.peek().map_or(u64::MAX, |r| r.0 .0);
            self.next.store(next, Ordering::Relaxed);
        }
        drop(h);
        // Outside the lock: dropping the task may close a channel.
        drop(task);
        was
    }

    /// Drops every pending task unrun: `Runtime::drop`, once no thread
    /// fires this heap. An abandoned goroutine keeps the runtime's state
    /// (and so this heap) alive, and a task kept here would never run nor
    /// drop: a `Timer`'s task moves to the helper thread when dropped
    /// unrun, `after`'s channel closes.
    pub(crate) fn drop_all(&self) {
        let tasks = {
            let mut h = self.heap.rt_lock();
            h.closed = true;
            h.order.clear();
            self.next.store(u64::MAX, Ordering::Relaxed);
            std::mem::take(&mut h.tasks)
        };
        // Outside the lock: dropping a task may close a channel or re-arm.
        drop(tasks);
    }

    /// Timers pending now (not fired, not cancelled).
    pub(crate) fn pending(&self) -> usize {
        self.heap.rt_lock().tasks.len()
    }

    /// Heap entries now, cancelled ones included (tests: memory is bounded).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.rt_lock().order.len()
    }

    /// Earliest pending deadline (may be a cancelled one; never later than
    /// the real earliest).
    pub(crate) fn next(&self) -> Option<u64> {
        match self.next.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// Runs every timer whose deadline is `<= now`; returns how many ran.
    pub(crate) fn fire(&self, now: u64) -> usize {
        if self.next.load(Ordering::Relaxed) > now {
            return 0;
        }
        self.fire_locked(self.heap.rt_lock(), now)
    }

    /// Like `fire`, but returns 0 at once if another thread holds the heap:
    /// it is firing the due timers itself, or adding or cancelling one, and
    /// then the caller's next look (every schedule, every sysmon tick)
    /// fires them. Ps and sysmon notice the same deadline together; waiting
    /// for the lock put the loser to sleep on its futex (a worker slept
    /// once per 1 ms timer beside busy Ps, `tests/net_poll.rs`).
    pub(crate) fn try_fire(&self, now: u64) -> usize {
        if self.next.load(Ordering::Relaxed) > now {
            return 0;
        }
        match self.heap.rt_try_lock() {
            Some(h) => self.fire_locked(h, now),
            None => 0,
        }
    }

    /// Takes the due timers out of the heap, unlocks it, then runs them (a
    /// timer's callback may add a timer).
    fn fire_locked(&self, mut h: RtGuard<'_, Heap>, now: u64) -> usize {
        let mut due = Vec::new();
        while let Some(&Reverse((when, id))) = h.order.peek() {
            if when > now {
                break;
            }
            h.order.pop();
            if let Some(t) = h.tasks.remove(&id) {
                due.push(t);
            }
        }
        let next = h.order.peek().map_or(u64::MAX, |r| r.0 .0);
        self.next.store(next, Ordering::Relaxed);
        drop(h);
        let n = due.len();
        for t in due {
            t();
        }
        n
    }
}

/// Adds a timer to the calling goroutine's runtime (None outside one).
///
/// Like every runtime entry point, it runs in a no-preempt region: it takes
/// the heap's lock, which g0 and sysmon take too, and a goroutine preempted
/// while holding it would stall every thread of the runtime.
pub(crate) fn add_current(deadline: Instant, task: Task) -> Option<TimerId> {
    let _np = crate::sched::NoPreempt::enter();
    crate::sched::with_current_shared(|sh| sh.add_timer(deadline, task))
}

/// Cancels a timer of the calling goroutine's runtime (in a no-preempt
/// region, as `add_current`).
pub(crate) fn cancel_current(id: TimerId) {
    let _np = crate::sched::NoPreempt::enter();
    crate::sched::with_current_shared(|sh| sh.timers.cancel(id));
}

impl crate::sched::Shared {
    /// Adds a timer; wakes whoever sleeps until a later deadline. For the
    /// runtime's own threads (see `Timers::add`).
    pub(crate) fn add_timer(&self, deadline: Instant, task: Task) -> TimerId {
        self.try_add_timer(deadline, task).unwrap_or(TimerId(0))
    }

    /// `add_timer`, unless the runtime's heap is closed (dropped: see
    /// `Timers::try_add`): then the task back, for the caller to put
    /// elsewhere.
    pub(crate) fn try_add_timer(&self, deadline: Instant, task: Task) -> Result<TimerId, Task> {
        let _np = crate::sched::NoPreempt::enter();
        let (id, earliest) = self.timers.try_add(self.instant_to_nanos(deadline), task)?;
        if earliest {
            // Dekker with `G0::fire_as_sleeper`: our timer before our look
            // at the flag; its flag's clearing before its look at the heap.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.sleeper_firing.load(Ordering::SeqCst) {
                // The sleeper is awake, firing (most often this is a ticker
                // re-arming from its own fire): it looks at the heap again
                // before it sleeps or leaves its role.
                self.sleeper_skipped.store(true, Ordering::SeqCst);
            } else {
                self.wake_timer_owner();
            }
        }
        Ok(id)
    }

    /// The earliest timer deadline moved earlier: wake whoever fires
    /// timers, so that it sleeps until the new one.
    pub(crate) fn wake_timer_owner(&self) {
        let tm = self.timer_m.load(Ordering::Acquire);
        if !tm.is_null() {
            // SAFETY: Ms live as long as Shared (allm holds them).
            self.wake_m(unsafe { &*tm });
        } else if self.npidle.load(Ordering::SeqCst) > 0 {
            // Nobody sleeps on timers and a P is idle: start an M,
            // which finds nothing to run and becomes the timer sleeper.
            self.wakep();
        } else {
            // Every P is busy: sysmon fires timers for them; make it
            // recompute its sleep with this deadline.
            self.wake_sysmon();
        }
    }

    /// Fires due timers unless another thread holds the timer heap (see
    /// `Timers::try_fire`); returns how many. For callers that look again
    /// soon: a P's schedule, sysmon's tick.
    pub(crate) fn fire_timers(&self) -> usize {
        // One atomic load when nothing is pending; one clock read otherwise
        // (`Timers::try_fire` re-checks the earliest deadline itself).
        match self.timers.next() {
            Some(_) => self.timers.try_fire(self.nanotime()),
            None => 0,
        }
    }

    /// Fires due timers, waiting for the heap's lock; returns how many.
    /// For an idle M about to sleep until the next deadline, which must
    /// move on.
    pub(crate) fn fire_timers_wait(&self) -> usize {
        match self.timers.next() {
            Some(_) => self.timers.fire(self.nanotime()),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn fires_in_deadline_order_and_never_early() {
        let t = Timers::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        for when in [30u64, 10, 20] {
            let log = log.clone();
            t.add(when, Box::new(move || log.rt_lock().push(when)));
        }
        assert_eq!(t.next(), Some(10));
        assert_eq!(t.fire(9), 0);
        assert_eq!(t.fire(20), 2);
        assert_eq!(*log.rt_lock(), vec![10, 20]);
        assert_eq!(t.next(), Some(30));
    }

    #[test]
    fn cancelled_timers_do_not_run() {
        let t = Timers::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let (id, earliest) = t.add(
            5,
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert!(earliest);
        assert!(t.cancel(id));
        assert!(!t.cancel(id));
        assert_eq!(t.fire(100), 0);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn cancelled_entries_do_not_accumulate() {
        let t = Timers::new();
        // One long-lived timer keeps the heap non-empty throughout.
        t.add(u64::MAX - 1, Box::new(|| {}));
        let mut max = 0;
        for i in 0..100_000u64 {
            let (id, _) = t.add(1_000_000 + i, Box::new(|| {}));
            t.cancel(id);
            max = max.max(t.entries());
        }
        assert_eq!(t.pending(), 1);
        assert!(max <= 2 + 2 * COMPACT_SLACK, "heap grew to {max} entries");
        // Only cancelled entries come before the live timer.
        assert_eq!(t.fire(u64::MAX - 2), 0);
        assert_eq!(t.next(), Some(u64::MAX - 1));
    }
}
