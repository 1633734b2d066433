//! `Runtime`, `JoinHandle` and `Stats`.

use crate::sched::RuntimeLock;
use std::cell::UnsafeCell;
use std::io;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::builder::{Builder, Config, PreemptMode};
use crate::sched::g::{park, Body, Waiter};
use crate::sched::{self, Shared};

/// A goroutine runtime: `procs` Ps, worker threads started on demand, a
/// sysmon thread, and the stacks.
///
/// `Runtime` is `Send + Sync`; several may exist at once.
///
/// # Dropping a runtime
///
/// Dropping it stops and joins every thread it started and unmaps the
/// stacks. Goroutines that have not finished by then (running, runnable,
/// parked, or not yet started) are abandoned, as when Go's `main` returns:
///
/// - They never run again, and none of their destructors run: the locals
///   on their stacks (guards, buffers, `Arc`s) are never dropped, and the
///   values their closures captured (for a goroutine that never started,
///   the whole closure) are leaked. So a lock such a goroutine holds stays
///   held, a `Sender` it holds keeps its channel open, a file it owns
///   stays open.
/// - The stack of an abandoned goroutine that had started stays mapped
///   (leaked, with the pages it touched) for the life of the process:
///   other threads may still reach into it (a parked goroutine's waiter
///   entry is linked into the channel it waits on, and a later send or
///   close walks it). Every other stack is unmapped.
/// - Their [`JoinHandle`]s complete: [`JoinHandle::is_finished`] returns
///   true and [`JoinHandle::join`] returns `Err` at once, with the
///   `&'static str` payload `"gosched: runtime dropped before the goroutine
///   finished"`. A thread already waiting in `join` is woken.
///
/// Join the goroutines whose work or cleanup matters (or wait on a
/// [`sync::WaitGroup`](crate::sync::WaitGroup)) before dropping the
/// runtime. A goroutine spinning without ever reaching a scheduling point
/// keeps the drop waiting unless asynchronous preemption is on.
///
/// # Fork
///
/// `fork()` copies only the calling thread, so the runtime cannot work in a
/// forked child: there, [`Builder::build`] returns an `Unsupported` error,
/// and spawning, [`block_on`](Runtime::block_on), `join` and waking a
/// goroutine panic with a message saying so (instead of waiting forever);
/// a goroutine (forked from a goroutine) that would park there prints the
/// message and aborts the process; dropping a runtime there leaks it.
/// Fork then exec (what `std::process::Command` does) is fine, from a
/// goroutine too.
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
///
/// A goroutine still waiting when the runtime drops is abandoned:
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// let (tx, rx) = gosched::chan::channel::<u32>(0);
/// let h = rt.spawn(move || rx.recv()); // nobody sends: it parks for good
/// drop(rt);
/// assert!(h.is_finished());
/// let err = h.join().unwrap_err();
/// assert_eq!(
///     err.downcast_ref::<&str>(),
///     Some(&"gosched: runtime dropped before the goroutine finished")
/// );
/// drop(tx);
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

    /// The runtime's shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn from_config(cfg: Config) -> io::Result<Runtime> {
        crate::os::fork::install();
        if crate::os::fork::forked() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                crate::os::fork::FORKED_MSG,
            ));
        }
        if cfg.async_preempt {
            crate::preempt::install();
        }
        let shared = Shared::new(cfg)?;
        if shared.cfg.sigquit_dump {
            crate::diag::sigquit::register(&shared);
        }
        crate::sched::LIVE_RUNTIMES.fetch_add(1, Ordering::SeqCst);
        let sysmon = Some(crate::preempt::sysmon::start(shared.clone()));
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
    /// In a child process made by `fork()` (without exec): the runtime's
    /// threads do not exist there (see "Fork" on [`Runtime`]).
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
        crate::os::fork::check();
        assert!(
            crate::sched::g::parkable_g().is_none(),
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
    /// # Panics
    ///
    /// In a `fork()`ed child process (see "Fork" on [`Runtime`]).
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

    /// The number of Ps now (GOMAXPROCS): how many goroutines run in
    /// parallel.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().procs(3).build().unwrap();
    /// assert_eq!(rt.procs(), 3);
    /// ```
    pub fn procs(&self) -> usize {
        self.shared.procs()
    }

    /// Changes the number of Ps while the runtime runs (Go's
    /// `runtime.GOMAXPROCS(n)`); returns the previous number.
    ///
    /// Growing adds idle Ps at once. Shrinking retires the Ps above `n`:
    /// their queued goroutines move, in order, to the global queue; a
    /// goroutine running on one is asked to yield (with asynchronous
    /// preemption, a signal: a loop without calls stops within
    /// microseconds) and its P is taken after 2 ms at the latest, so
    /// `set_procs` returns within a few milliseconds. When it returns, at
    /// most `n` Ps run goroutines; a goroutine that never reaches a
    /// scheduling point with asynchronous preemption off goes on running
    /// on its thread, without a P, until it does. No goroutine is lost or
    /// run twice; timers, locked goroutines and goroutines in
    /// [`blocking`](crate::blocking) carry on.
    ///
    /// Callable from a goroutine (it parks while it waits) and from a
    /// plain thread. Concurrent calls take effect one after the other.
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming `n` when it is 0 or above [`MAX_PROCS`](crate::MAX_PROCS).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().procs(4).build().unwrap();
    /// assert_eq!(rt.set_procs(1).unwrap(), 4);
    /// let sum: u64 = rt.block_on(|| {
    ///     let hs: Vec<_> = (0..8u64).map(|i| gosched::spawn(move || i)).collect();
    ///     hs.into_iter().map(|h| h.join().unwrap()).sum()
    /// });
    /// assert_eq!(sum, 28);
    /// assert_eq!(rt.set_procs(2).unwrap(), 1);
    /// assert_eq!(rt.procs(), 2);
    /// assert!(rt.set_procs(0).unwrap_err().to_string().contains("set_procs(0)"));
    /// ```
    pub fn set_procs(&self, n: usize) -> io::Result<usize> {
        self.shared.procresize(n)
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
        if crate::os::fork::forked() {
            // In a forked child the threads to stop do not exist (joining
            // them would hang) and the state is a frozen copy: leak it.
            std::mem::forget(self.sysmon.take());
            std::mem::forget(self.shared.clone());
            return;
        }
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
        self.shared.abandon_goroutines();
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
            .field("procs", &self.shared.procs())
            .finish_non_exhaustive()
    }
}

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

    pub(crate) fn complete(&self, r: std::thread::Result<R>) {
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
            {
                let _np = sched::NoPreempt::enter();
                let mut w = self.waiter.rt_lock();
                if self.done.load(Ordering::Acquire) {
                    continue;
                }
                *w = Some(Waiter::current());
            }
            crate::sched::preempt_check();
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
    /// goroutine panicked (as `std::thread::JoinHandle::join`), or the
    /// `&'static str` `"gosched: runtime dropped before the goroutine
    /// finished"` if its [`Runtime`] was dropped first (see "Dropping a
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
    /// `async_off`).
    pub preempt_refused_by_reason: Vec<(&'static str, u64)>,
    /// Slices whose asynchronous preemptions were all refused for 100
    /// quanta and at least 100 ms in a row (a goroutine that stays in a
    /// signal handler or in libc while others wait for its P); the first
    /// one is also reported on stderr.
    pub preempt_starved: u64,
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
    /// Number of Ps (GOMAXPROCS) now.
    pub procs: usize,
    /// The thread limit ([`Builder::max_threads`]).
    pub max_threads: usize,
    /// Ps idle now.
    pub idle_procs: usize,
    /// Ms spinning (looking for work to steal) now.
    pub spinning_threads: usize,
    /// Ms parked with nothing to do now.
    pub idle_threads: usize,
    /// Goroutines inside [`blocking`](crate::blocking) calls now.
    pub in_syscall: usize,
    /// Goroutines in the global run queue now.
    pub global_runqueue: usize,
    /// Goroutines queued on each live P now (local queue, `runnext` and
    /// the yield slot), indexed by P.
    pub local_runqueues: Vec<usize>,
    /// Scheduling latency: how long woken goroutines (by a channel, timer,
    /// mutex, join...) waited between becoming runnable and running, as a
    /// histogram of `(upper bound, count)` buckets with bounds doubling
    /// from about 100-256 ns (powers of two of the CPU's time-stamp counter,
    /// converted; the last bound is `Duration::MAX`). Sampled like
    /// Go's `/sched/latencies:seconds`: one wake-up in 64 of each goroutine.
    /// See [`Stats::sched_latency_quantile`].
    pub sched_latency: Vec<(Duration, u64)>,
    /// Usable bytes of each goroutine stack.
    pub stack_size: usize,
    /// The preemption quantum.
    pub quantum: Duration,
    /// Whether wake-up preemption is on ([`Builder::wakeup_preempt`]).
    pub wakeup_preempt: bool,
    /// Wake-up preemption requests made (each asks one busy P to yield).
    pub preempt_wakeup: u64,
    /// Whether asynchronous preemption is on.
    pub async_preempt: bool,
    /// Where asynchronously preempted goroutines resume.
    pub mode: PreemptMode,
    /// Timers pending in the runtime's heap: sleeping goroutines, timed
    /// waits, and `chan::after`/`chan::tick` channels made in goroutines
    /// (a timer channel's timer is cancelled when its last receiver drops).
    pub timers: usize,
}

impl Stats {
    /// The scheduling latency below which a fraction `q` (0.0 ..= 1.0) of
    /// the sampled wake-ups ran, as the upper bound of the histogram bucket
    /// it falls in (so within a factor of 2 above the true value); `None`
    /// before any wake-up was sampled.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     for _ in 0..200 {
    ///         gosched::sleep(std::time::Duration::from_micros(10));
    ///     }
    /// });
    /// let p99 = rt.stats().sched_latency_quantile(0.99).unwrap();
    /// assert!(p99 < std::time::Duration::from_secs(1));
    /// ```
    pub fn sched_latency_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.sched_latency.iter().map(|b| b.1).sum();
        if total == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        self.sched_latency.iter().find_map(|&(bound, n)| {
            seen += n;
            (seen >= want).then_some(bound)
        })
    }
}

impl Shared {
    pub(crate) fn stats(&self) -> Stats {
        // It takes locks the scheduler takes too (see `timer::add_current`).
        let _np = sched::NoPreempt::enter();
        let sum = |f: fn(&sched::PCounters) -> &std::sync::atomic::AtomicU64| -> u64 {
            self.used_ps()
                .iter()
                .map(|p| f(&p.counters).load(Ordering::Relaxed))
                .sum()
        };
        let ns_per_unit = self.ns_per_clock_unit();
        let sum_at = |i: usize| -> u64 {
            self.used_ps()
                .iter()
                .map(|p| p.counters.sched_latency[i].load(Ordering::Relaxed))
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
            preempt_starved: self.counters.starved.load(Ordering::Relaxed),
            retakes: self.counters.retakes.load(Ordering::Relaxed),
            blocked_handoffs: self.counters.blocked_handoffs.load(Ordering::Relaxed),
            spinning_threads: self.nmspinning.load(Ordering::Relaxed),
            idle_threads: self.midle.rt_lock().len(),
            in_syscall: self.in_blocking.load(Ordering::Relaxed),
            global_runqueue: self.global_queue_len(),
            local_runqueues: (0..self.procs()).map(|p| self.ps[p].runq.len()).collect(),
            sched_latency: (0..sched::SCHED_LATENCY_BUCKETS)
                .map(|i| {
                    let bound = if i + 1 == sched::SCHED_LATENCY_BUCKETS {
                        Duration::MAX
                    } else {
                        // Buckets count clock units (see
                        // `SCHED_LATENCY_BUCKETS`): convert the bound.
                        Duration::from_nanos(((1u64 << (i + 8)) as f64 * ns_per_unit) as u64)
                    };
                    (bound, sum_at(i))
                })
                .collect(),
            poll_waits: self.driver.waits.load(Ordering::Relaxed),
            poll_wakeups: self.driver.wakeups.load(Ordering::Relaxed),
            procs: self.procs(),
            max_threads: self.cfg.max_threads,
            idle_procs: self.npidle.load(Ordering::Relaxed),
            stack_size: self.stacks.stack_size(),
            quantum: self.cfg.quantum,
            async_preempt: self.cfg.async_preempt,
            wakeup_preempt: self.cfg.wakeup_preempt,
            preempt_wakeup: self.counters.preempt_wakeup.load(Ordering::Relaxed),
            mode: self.cfg.mode,
            timers: self.timers.pending(),
        }
    }
}

// A `Runtime` is used from several threads at once (`block_on` on each).
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Runtime>()
};
