//! Joining a goroutine: the result slot a goroutine and its `JoinHandle`
//! share, the task that runs a spawned closure, and `JoinHandle` itself.

use crate::sched::RuntimeLock;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::sched::g::{park, Body, Waiter};
use crate::sched::{self, Shared};

/// The result slot shared by a goroutine and its `JoinHandle`.
pub(crate) struct JoinInner<R> {
    pub(crate) done: AtomicBool,
    pub(crate) result: UnsafeCell<Option<std::thread::Result<R>>>,
    pub(crate) waiter: Mutex<Option<Waiter>>,
}

// SAFETY: `result` is written once by the goroutine before `done` is set
// (Release) and read once by the joiner after it sees `done` (Acquire).
unsafe impl<R: Send> Sync for JoinInner<R> {}

impl<R> JoinInner<R> {
    pub(crate) fn new() -> JoinInner<R> {
        JoinInner {
            done: AtomicBool::new(false),
            result: UnsafeCell::new(None),
            waiter: Mutex::new(None),
        }
    }

    /// Publishes the goroutine's result and wakes whoever waits for it.
    /// A goroutine or thread in `join` is woken inside the no-preempt
    /// region; an async task's `Waker` (foreign code) is woken after it,
    /// preemptible and outside every runtime lock, by [`wake_task`].
    pub(crate) fn complete(&self, r: std::thread::Result<R>) {
        let task = {
            let _np = sched::NoPreempt::enter();
            sched::note_finishing();
            // SAFETY: only the goroutine writes, once, before `done`.
            unsafe { *self.result.get() = Some(r) };
            // Pairs with the Acquire loads in `wait` and `is_finished`.
            self.done.store(true, Ordering::Release);
            let w = self.waiter.rt_lock().take();
            match w {
                Some(Waiter::Waker(w)) => Some(w),
                Some(w) => {
                    w.unpark();
                    None
                }
                None => None,
            }
        };
        // Nothing replaces the waker now (`done` is set), so it is woken
        // exactly once. If the goroutine is abandoned just before this
        // (preempted here, then its runtime dropped), the task is not woken:
        // as for a goroutine abandoned inside the waker's own code.
        if let Some(w) = task {
            wake_task(w);
        }
    }

    /// The runtime was dropped before the goroutine finished (see
    /// `Body::abandon`): complete with [`ABANDONED`] unless it did finish.
    fn abandon(&self, rt: *const Shared) {
        if self.done.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the goroutine will never run again (every M stopped), and
        // it had not written the result (it does so in `complete`, in a
        // no-preempt region, just before setting `done`): we are the only
        // writer, before `done`.
        unsafe { *self.result.get() = Some(Err(Box::new(ABANDONED))) };
        // Pairs with the Acquire loads in `wait` and `is_finished`.
        self.done.store(true, Ordering::Release);
        let w = self.waiter.rt_lock().take();
        match w {
            // A goroutine of the dropped runtime is abandoned too.
            Some(Waiter::G(g)) if std::ptr::eq(g.shared.load(Ordering::Acquire), rt) => {}
            Some(Waiter::Waker(w)) => wake_task(w),
            Some(w) => w.unpark(),
            None => {}
        }
    }

    pub(crate) fn wait(&self) -> std::thread::Result<R> {
        loop {
            if self.done.load(Ordering::Acquire) {
                // SAFETY: `done` is set only after the single write, and we
                // are the single reader (JoinHandle is consumed by join).
                return unsafe { (*self.result.get()).take() }.expect("join result taken twice");
            }
            crate::os::fork::check();
            let replaced = {
                let _np = sched::NoPreempt::enter();
                let mut w = self.waiter.rt_lock();
                if self.done.load(Ordering::Acquire) {
                    continue;
                }
                w.replace(Waiter::current())
            };
            // A task's `Waker` left by an earlier `poll` is foreign code:
            // dropped after the lock and the no-preempt region, as `poll`
            // drops the one it replaces. Dropped under them, a waker whose
            // drop parked held the lock while parked: the finishing
            // goroutine blocked its thread on it, and `Runtime::drop`
            // waited for that thread for ever.
            drop(replaced);
            crate::sched::preempt_check();
            if !self.done.load(Ordering::Acquire) {
                park("join");
            }
        }
    }
}

/// Wakes (and drops) the `Waker` of a task awaiting a `JoinHandle`, when
/// its goroutine has finished or been abandoned. The waker is foreign
/// code: `complete` calls this outside its no-preempt region, holding no
/// runtime lock (`abandon` runs on the dropping thread once every M has
/// stopped, but its caller still holds the runtime's list of goroutines).
/// A panic in it is caught and discarded (the panic hook has reported it):
/// the result is already published, and the finishing goroutine (or the
/// runtime's drop) has nobody to pass it to. Unwinding further would leave
/// a goroutine's `extern "C"` entry, which aborts the process. tokio treats
/// a panic in its `JoinHandle`'s waker the same way.
fn wake_task(w: std::task::Waker) {
    let _ = catch_unwind(AssertUnwindSafe(move || w.wake()));
}

/// A goroutine's closure and its result slot in one allocation: the G runs
/// it through `dyn Body`, the `JoinHandle` reads the slot through
/// `dyn Slot<R>` (one allocation per spawn instead of two).
pub(crate) struct Task<F, R> {
    f: UnsafeCell<Option<F>>,
    pub(crate) inner: JoinInner<R>,
}

// SAFETY: `f` is taken exactly once, by the goroutine in `run`; `inner` is
// Sync on its own (see JoinInner).
unsafe impl<F: Send, R: Send> Sync for Task<F, R> {}

impl<F, R> Task<F, R> {
    pub(crate) fn new(f: F) -> Task<F, R> {
        Task {
            f: UnsafeCell::new(Some(f)),
            inner: JoinInner::new(),
        }
    }
}

impl<F: FnOnce() -> R + Send, R: Send> Body for Task<F, R> {
    fn run(&self) {
        // SAFETY: `run` is called once, by the goroutine (see the Sync impl).
        let f = unsafe { (*self.f.get()).take() }.expect("a goroutine body ran twice");
        let r = catch_unwind(AssertUnwindSafe(f));
        let r = crate::local::exit_destructors(r);
        self.inner.complete(r);
    }

    fn abandon(&self, rt: *const Shared) {
        self.inner.abandon(rt);
    }
}

/// The panic payload `JoinHandle::join` returns for a goroutine whose
/// runtime was dropped before it finished.
pub(crate) const ABANDONED: &str = "gosched: runtime dropped before the goroutine finished";

/// The `JoinHandle` side of a `Task`, without its closure type.
trait Slot<R>: Send + Sync {
    fn slot(&self) -> &JoinInner<R>;
}

impl<F: Send, R: Send> Slot<R> for Task<F, R> {
    fn slot(&self) -> &JoinInner<R> {
        &self.inner
    }
}

#[track_caller]
pub(crate) fn spawn_on<F, R>(sh: &Shared, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    spawn_named(sh, f, None)
}

/// `spawn_on` with a name for the goroutine (`GoroutineBuilder::name`).
#[track_caller]
pub(crate) fn spawn_named<F, R>(sh: &Shared, f: F, name: Option<Box<str>>) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let task = Arc::new(Task::new(f));
    let id = sh.spawn_named(task.clone(), Some(std::panic::Location::caller()), name);
    JoinHandle { task, id }
}

/// An owned permission to join a goroutine (wait for it and take its
/// result). Dropping it detaches the goroutine.
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let h = gosched::spawn(|| panic!("boom"));
///     let err = h.join().unwrap_err();
///     assert_eq!(err.downcast_ref::<&str>(), Some(&"boom"));
/// });
/// ```
pub struct JoinHandle<R> {
    task: Arc<dyn Slot<R>>,
    id: u64,
}

impl<R> JoinHandle<R> {
    /// Waits for the goroutine to finish: parks the calling goroutine, or
    /// blocks a plain thread. `Err` carries the panic payload if the
    /// goroutine panicked (as `std::thread::JoinHandle::join`), or the
    /// `&'static str` `"gosched: runtime dropped before the goroutine
    /// finished"` if its [`Runtime`](crate::Runtime) was dropped first (see "Dropping a
    /// runtime" there; `join` then returns at once, also when it was
    /// already waiting).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let v = rt.block_on(|| gosched::spawn(|| vec![1, 2]).join().unwrap());
    /// assert_eq!(v, [1, 2]);
    /// ```
    pub fn join(self) -> std::thread::Result<R> {
        self.task.slot().wait()
    }

    /// The result slot (for `impl Future for JoinHandle`).
    pub(crate) fn inner(&self) -> &JoinInner<R> {
        self.task.slot()
    }

    /// Whether `join` would return at once: the goroutine has finished
    /// (its result is ready), or its runtime was dropped before it did (it
    /// never will; `join` returns `Err`).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let h = rt.spawn(|| 1);
    /// while !h.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(h.join().unwrap(), 1);
    /// ```
    pub fn is_finished(&self) -> bool {
        self.task.slot().done.load(Ordering::Acquire)
    }

    /// The goroutine's id.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let h = rt.spawn(|| gosched::current_id().unwrap());
    /// let id = h.id();
    /// assert_eq!(h.join().unwrap(), id);
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<R> std::fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("id", &self.id)
            .field("finished", &self.is_finished())
            .finish()
    }
}
