//! Timer channels: [`after`] (Go's `time.After`) and [`tick`] (Go's
//! `time.Tick`).
//!
//! Inside a goroutine the timer lives in the runtime's timer heap: its task
//! runs on a scheduler thread or sysmon and only does a `try_send`, so it
//! never blocks. Outside any runtime (a plain thread) a single lazily
//! started helper thread keeps a heap of its own and plays the same role.

use crate::sched::RuntimeLock;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{channel, Receiver, Sender, TrySendError};
use crate::sched::Shared;

/// A channel that receives the current time once, at least `d` from now
/// (Go's `time.After`). It never fires early. Called in a goroutine, the
/// timer belongs to that goroutine's runtime (if the runtime is dropped
/// first, the channel closes without a value); elsewhere a helper thread
/// fires it.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let start = Instant::now();
///     let fired = gosched::chan::after(Duration::from_millis(5)).recv().unwrap();
///     assert!(fired - start >= Duration::from_millis(5));
/// });
/// ```
pub fn after(d: Duration) -> Receiver<Instant> {
    let (tx, rx) = channel(1);
    let deadline = Instant::now().checked_add(d).unwrap_or_else(far_future);
    let task = Box::new(move || {
        // Never fails on a fresh 1-slot channel except when the receiver is
        // gone, which is fine.
        let _ = tx.try_send(Instant::now());
    });
    if crate::sched::current_g().is_some() {
        crate::timer::add_current(deadline, task);
    } else {
        fallback().add(deadline, task);
    }
    rx
}

/// A channel that receives the current time every `period` (Go's
/// `time.Tick`). Like Go's `Ticker` it buffers one tick and drops ticks a
/// slow receiver misses; ticks stop when the receiver is dropped.
///
/// # Panics
///
/// If `period` is zero (Go: "non-positive interval for NewTicker").
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
/// });
/// ```
pub fn tick(period: Duration) -> Receiver<Instant> {
    assert!(
        !period.is_zero(),
        "gosched::chan::tick: non-positive interval"
    );
    let (tx, rx) = channel(1);
    let first = Instant::now()
        .checked_add(period)
        .unwrap_or_else(far_future);
    match crate::sched::with_current_shared(|sh| SharedPtr(sh)) {
        Some(sh) => arm_runtime(sh, first, period, tx),
        None => arm_fallback(first, period, tx),
    }
    rx
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The next deadline of a ticker that fired for `when` at `now`: one period
/// later, skipping periods it fell behind on (Go's ticker adjustment).
fn next_tick(when: Instant, now: Instant, period: Duration) -> Instant {
    let mut next = when + period;
    if next <= now {
        let behind = now.duration_since(when).as_nanos() / period.as_nanos();
        let skip = u32::try_from(behind).unwrap_or(u32::MAX);
        next = when
            .checked_add(period.saturating_mul(skip.saturating_add(1)))
            .unwrap_or_else(far_future);
    }
    next
}

/// Delivers one tick; false once the receiver is gone (stop re-arming).
fn deliver(tx: &Sender<Instant>) -> bool {
    !matches!(
        tx.try_send(Instant::now()),
        Err(TrySendError::Disconnected(_))
    )
}

/// A runtime, as captured by a ticker's timer task.
#[derive(Clone, Copy)]
struct SharedPtr(*const Shared);

// SAFETY: `Shared` is Sync; the pointer is dereferenced only by a timer task
// stored in that runtime's own heap (see `arm_runtime`).
unsafe impl Send for SharedPtr {}

/// Arms the next tick in the runtime's heap. The task re-arms itself.
fn arm_runtime(sh: SharedPtr, when: Instant, period: Duration, tx: Sender<Instant>) {
    let task = Box::new(move || {
        if deliver(&tx) {
            let next = next_tick(when, Instant::now(), period);
            arm_runtime(sh, next, period, tx);
        }
    });
    // SAFETY: the runtime is alive: either we are on one of its goroutines
    // (`tick`), or we run as a task from its own timer heap, which only the
    // runtime's threads fire while it exists (dropping the runtime drops
    // pending tasks unrun).
    unsafe { &*sh.0 }.add_timer(when, task);
}

fn arm_fallback(when: Instant, period: Duration, tx: Sender<Instant>) {
    fallback().add(
        when,
        Box::new(move || {
            if deliver(&tx) {
                let next = next_tick(when, Instant::now(), period);
                arm_fallback(next, period, tx);
            }
        }),
    );
}

type Task = Box<dyn FnOnce() + Send>;

/// The timer thread for channels made outside any runtime.
struct Fallback {
    heap: Mutex<FallbackHeap>,
    cv: Condvar,
}

#[derive(Default)]
struct FallbackHeap {
    order: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    tasks: std::collections::HashMap<u64, Task>,
    seq: u64,
}

fn fallback() -> &'static Fallback {
    static F: OnceLock<&'static Fallback> = OnceLock::new();
    F.get_or_init(|| {
        let f: &'static Fallback = Box::leak(Box::new(Fallback {
            heap: Mutex::new(FallbackHeap::default()),
            cv: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("gosched-chan-timer".into())
            .spawn(move || f.run())
            .expect("gosched: cannot start the channel timer thread");
        f
    })
}

impl Fallback {
    fn add(&self, when: Instant, task: Task) {
        let mut h = self.heap.rt_lock();
        h.seq += 1;
        let id = h.seq;
        h.order.push(std::cmp::Reverse((when, id)));
        h.tasks.insert(id, task);
        drop(h);
        self.cv.notify_one();
    }

    fn run(&self) {
        let mut h = self.heap.rt_lock();
        loop {
            let now = Instant::now();
            match h.order.peek().map(|r| r.0) {
                Some((when, id)) if when <= now => {
                    h.order.pop();
                    if let Some(t) = h.tasks.remove(&id) {
                        drop(h);
                        t();
                        h = self.heap.rt_lock();
                    }
                }
                Some((when, _)) => {
                    h = self
                        .cv
                        .wait_timeout(h, when - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => h = self.cv.wait(h).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}
