//! `Runtime`, `JoinHandle` and `Stats`.

use crate::sched::RuntimeLock;
use std::any::Any;
use std::cell::UnsafeCell;
use std::io;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::builder::{Builder, Config, PreemptMode};
use crate::g::{park, Body, Waiter};
use crate::sched::{self, Shared};

/// A goroutine runtime: `procs` Ps, worker threads started on demand, a
/// sysmon thread, and the stacks.
///
/// `Runtime` is `Send + Sync`; several may exist at once. Dropping it stops
/// and joins every thread it started and unmaps every stack. Goroutines
/// still running or parked then are abandoned, as when Go's `main` returns
/// (their destructors do not run). A goroutine spinning without ever
/// reaching a scheduling point keeps the drop waiting unless asynchronous
/// preemption is on.
///
/// # Examples
///
/// ```
/// use gosched::Runtime;
///
/// let rt = Runtime::new().unwrap();
/// let sum = rt.block_on(|| {
///     let hs: Vec<_> = (1..=10u64).map(|i| gosched::spawn(move || i * i)).collect();
///     hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
/// });
/// assert_eq!(sum, 385);
/// ```
pub struct Runtime {
    shared: Arc<Shared>,
    sysmon: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// A runtime with the default settings (`Builder::new().build()`).
    ///
    /// # Errors
    ///
    /// As [`Builder::build`] (a malformed `GOSCHED_*` variable, or the OS
    /// refusing the stack reservation).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// assert_eq!(rt.block_on(|| "hi"), "hi");
    /// ```
    pub fn new() -> io::Result<Runtime> {
        Builder::new().build()
    }

    pub(crate) fn from_config(cfg: Config) -> io::Result<Runtime> {
        if cfg.async_preempt {
            crate::preempt::install();
        }
        let shared = Shared::new(cfg)?;
        crate::sched::LIVE_RUNTIMES.fetch_add(1, Ordering::SeqCst);
        let sysmon = Some(crate::monitor::start(shared.clone()));
        Ok(Runtime { shared, sysmon })
    }

    /// Runs `f` as the main goroutine and blocks the calling thread until it
    /// returns; returns its result. Other goroutines still running then are
    /// left running (and are abandoned when the runtime drops). A panic in
    /// `f` is resumed in the caller.
    ///
    /// # Panics
    ///
    /// When called from inside a goroutine (of any runtime): it would block
    /// that goroutine's worker thread and its P. Call `f` directly, or spawn.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let v = vec![1, 2, 3];
    /// // `f` may borrow from the caller: block_on waits for it.
    /// let n = rt.block_on(|| v.iter().sum::<i32>());
    /// assert_eq!(n, 6);
    /// ```
    pub fn block_on<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> R {
        assert!(
            crate::g::parkable_g().is_none(),
            "gosched: Runtime::block_on called from inside a goroutine; this would block the goroutine's worker \
             thread. Call the function directly, or use spawn and join"
        );
        let task = Arc::new(Task::new(f));
        let body: Arc<dyn Body + '_> = task.clone();
        // SAFETY: we erase the lifetime of `f`'s borrows. This call does not
        // return before the body has run to completion (we wait on the task
        // below, and waiting cannot unwind), so everything `f` borrows
        // outlives its use; the goroutine drops its count on the task before
        // it completes the join. If the process exits meanwhile (deadlock
        // report), nothing runs afterwards.
        let body: Arc<dyn Body + 'static> = unsafe { std::mem::transmute(body) };
        self.shared.spawn_raw(body, None);
        let inner = &task.inner;
        match inner.wait() {
            Ok(r) => r,
            Err(p) => resume_unwind(p),
        }
    }

    /// Starts a goroutine from outside (or inside) the runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let h = rt.spawn(|| 40 + 2);
    /// assert_eq!(h.join().unwrap(), 42); // a plain thread blocks in join
    /// ```
    #[track_caller]
    pub fn spawn<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_on(&self.shared, f)
    }

    /// A snapshot of the runtime's counters.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().procs(2).build().unwrap();
    /// rt.block_on(|| gosched::spawn(|| ()).join().unwrap());
    /// let s = rt.stats();
    /// assert_eq!(s.procs, 2);
    /// assert!(s.spawned >= 2);
    /// ```
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let own = sched::with_current_shared(|sh| std::ptr::eq(sh, &*self.shared)).unwrap_or(false);
        assert!(
            !own,
            "gosched: a Runtime dropped from one of its own goroutines; it would have to join the thread \
             it runs on. Drop it from outside (e.g. after block_on returns)"
        );
        self.shared.shutdown();
        if let Some(t) = self.sysmon.take() {
            let _ = t.join();
        }
        // Nobody polls any more: close the poller (and the sockets that
        // abandoned goroutines wait on).
        self.shared.driver.close();
        self.shared.free_dead_gs();
        crate::sched::LIVE_RUNTIMES.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("procs", &self.shared.cfg.procs)
            .finish_non_exhaustive()
    }
}

/// The result slot shared by a goroutine and its `JoinHandle`.
pub(crate) struct JoinInner<R> {
    done: AtomicBool,
    result: UnsafeCell<Option<std::thread::Result<R>>>,
    waiter: Mutex<Option<Waiter>>,
}

// SAFETY: `result` is written once by the goroutine before `done` is set
// (Release) and read once by the joiner after it sees `done` (Acquire).
unsafe impl<R: Send> Sync for JoinInner<R> {}

impl<R> JoinInner<R> {
    fn new() -> JoinInner<R> {
        JoinInner {
            done: AtomicBool::new(false),
            result: UnsafeCell::new(None),
            waiter: Mutex::new(None),
        }
    }

    fn complete(&self, r: std::thread::Result<R>) {
        let _np = sched::NoPreempt::enter();
        // SAFETY: only the goroutine writes, once, before `done`.
        unsafe { *self.result.get() = Some(r) };
        // Pairs with the Acquire loads in `wait` and `is_finished`.
        self.done.store(true, Ordering::Release);
        let w = self.waiter.rt_lock().take();
        if let Some(w) = w {
            w.unpark();
        }
    }

    fn wait(&self) -> std::thread::Result<R> {
        loop {
            if self.done.load(Ordering::Acquire) {
                // SAFETY: `done` is set only after the single write, and we
                // are the single reader (JoinHandle is consumed by join).
                return unsafe { (*self.result.get()).take() }.expect("join result taken twice");
            }
            {
                let _np = sched::NoPreempt::enter();
                let mut w = self.waiter.rt_lock();
                if self.done.load(Ordering::Acquire) {
                    continue;
                }
                *w = Some(Waiter::current());
            }
            crate::preempt_point_inner();
            if !self.done.load(Ordering::Acquire) {
                park("join");
            }
        }
    }
}

/// A goroutine's closure and its result slot in one allocation: the G runs
/// it through `dyn Body`, the `JoinHandle` reads the slot through
/// `dyn Slot<R>` (one allocation per spawn instead of two).
pub(crate) struct Task<F, R> {
    f: UnsafeCell<Option<F>>,
    inner: JoinInner<R>,
}

// SAFETY: `f` is taken exactly once, by the goroutine in `run`; `inner` is
// Sync on its own (see JoinInner).
unsafe impl<F: Send, R: Send> Sync for Task<F, R> {}

impl<F, R> Task<F, R> {
    fn new(f: F) -> Task<F, R> {
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
        self.inner.complete(r);
    }
}

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
    let task = Arc::new(Task::new(f));
    let id = sh.spawn_raw(task.clone(), Some(std::panic::Location::caller()));
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
    /// goroutine panicked (as `std::thread::JoinHandle::join`).
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

    /// Whether the goroutine has finished (its result is ready).
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

/// A snapshot of a runtime's counters ([`Runtime::stats`]).
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| gosched::yield_now());
/// let s = rt.stats();
/// assert!(s.switches >= 2);
/// println!("{s:?}");
/// ```
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Stats {
    /// Goroutines alive now (spawned and not finished).
    pub goroutines: usize,
    /// Goroutines spawned since the runtime started.
    pub spawned: u64,
    /// Worker threads (Ms) started.
    pub threads: usize,
    /// Switches into goroutines.
    pub switches: u64,
    /// Successful steals from another P's run queue.
    pub steals: u64,
    /// Goroutines that parked (channel, join, sleep, ...).
    pub parks: u64,
    /// Preemptions at a cooperative check (runtime call or `preempt_point`).
    pub preempt_coop: u64,
    /// Asynchronous (signal) preemptions that switched the goroutine out.
    pub preempt_async: u64,
    /// Asynchronous attempts refused by the safe-point rules (all reasons).
    pub preempt_refused: u64,
    /// Refusals by reason: `(name, count)`, names as in the `preempt` docs
    /// (`not_requested`, `no_preempt`, `stack`, `foreign_code`, `sigmask`,
    /// `not_m`).
    pub preempt_refused_by_reason: Vec<(&'static str, u64)>,
    /// Ps taken back from blocking calls by sysmon.
    pub retakes: u64,
    /// Ps handed away from a thread blocked in the kernel (blocked-M
    /// detection).
    pub blocked_handoffs: u64,
    /// Goroutine parks on the netpoller (a socket or `net::Registration`
    /// that would block).
    pub poll_waits: u64,
    /// Goroutines the netpoller woke (I/O readiness or a local shutdown).
    pub poll_wakeups: u64,
    /// Number of Ps.
    pub procs: usize,
    /// Ps idle now.
    pub idle_procs: usize,
    /// Usable bytes of each goroutine stack.
    pub stack_size: usize,
    /// The preemption quantum.
    pub quantum: Duration,
    /// Whether asynchronous preemption is on.
    pub async_preempt: bool,
    /// Where asynchronously preempted goroutines resume.
    pub mode: PreemptMode,
}

impl Shared {
    pub(crate) fn stats(&self) -> Stats {
        // It takes locks the scheduler takes too (see `timer::add_current`).
        let _np = sched::NoPreempt::enter();
        let sum = |f: fn(&sched::PCounters) -> &std::sync::atomic::AtomicU64| -> u64 {
            self.ps
                .iter()
                .map(|p| f(&p.counters).load(Ordering::Relaxed))
                .sum()
        };
        let by_reason: Vec<(&'static str, u64)> = crate::preempt::REFUSAL_NAMES
            .iter()
            .zip(self.counters.refused.iter())
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .collect();
        Stats {
            goroutines: self.goroutines(),
            spawned: self.spawned(),
            threads: self.allm.rt_lock().len(),
            switches: sum(|c| &c.switches),
            steals: sum(|c| &c.steals),
            parks: sum(|c| &c.parks),
            preempt_coop: self.counters.preempt_coop.load(Ordering::Relaxed),
            preempt_async: self.counters.preempt_async.load(Ordering::Relaxed),
            preempt_refused: by_reason.iter().map(|r| r.1).sum(),
            preempt_refused_by_reason: by_reason,
            retakes: self.counters.retakes.load(Ordering::Relaxed),
            blocked_handoffs: self.counters.blocked_handoffs.load(Ordering::Relaxed),
            poll_waits: self.driver.waits.load(Ordering::Relaxed),
            poll_wakeups: self.driver.wakeups.load(Ordering::Relaxed),
            procs: self.cfg.procs,
            idle_procs: self.npidle.load(Ordering::Relaxed),
            stack_size: self.stacks.stack_size(),
            quantum: self.cfg.quantum,
            async_preempt: self.cfg.async_preempt,
            mode: self.cfg.mode,
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Runtime>();
    let _: Option<Box<dyn Any>> = None;
}
