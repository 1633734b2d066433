//! `Runtime`: building, `block_on`, `spawn`, GOMAXPROCS, and dropping.

use std::io;
use std::panic::resume_unwind;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::builder::{Builder, Config};
use crate::diag::stats::Stats;
use crate::join::*;
use crate::sched::g::Body;
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
///   stays open. That includes std's own locks: a goroutine abandoned in
///   the middle of a `println!` (preempted there) keeps stdout's lock, and
///   every later `println!` of the process blocks.
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
/// keeps the drop waiting unless asynchronous preemption is on, and one
/// inside [`blocking`](crate::blocking) keeps it waiting until its call
/// returns (a thread blocked in the kernel cannot be stopped; a read of a
/// terminal or a socket with no timeout may never return).
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
    /// refusing the stack reservation or the sysmon thread).
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
        crate::diag::panic::install();
        if shared.cfg.sigquit_dump {
            crate::diag::sigquit::register(&shared);
        }
        crate::sched::LIVE_RUNTIMES.fetch_add(1, Ordering::SeqCst);
        let mut rt = Runtime {
            shared,
            sysmon: None,
        };
        match crate::preempt::sysmon::start(rt.shared.clone()) {
            Ok(t) => rt.sysmon = Some(t),
            Err(e) => {
                // Undo everything: dropping the runtime (no M has started,
                // no goroutine exists) unmaps the stacks, closes the
                // poller and uncounts it (the deadlock check needs an exact
                // count of live runtimes). The refused thread's closure,
                // with its reference to `Shared`, is gone already.
                drop(rt);
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "gosched: cannot start the runtime's sysmon thread: {e}; {}",
                        Shared::thread_limit_hint(&e)
                    ),
                ));
            }
        }
        Ok(rt)
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
        // outlives its use. The body takes `f` out of the task and consumes
        // it (captures dropped) before it completes the join, and we move
        // the result out; the goroutine's count on the task may be dropped
        // after we return, but by then the task holds neither `f` nor a
        // result: its drop touches nothing `f` borrowed. If the process
        // exits meanwhile (deadlock report), nothing runs afterwards.
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
    /// most `n` Ps run goroutines. A goroutine whose P was taken that way
    /// (the signal was refused: it ran in libc, say) goes on running on its
    /// thread, without a P, until its next scheduling point; sysmon signals
    /// it once a quantum until one lands. With asynchronous preemption off
    /// it runs on until its next runtime call. No goroutine is lost or
    /// run twice; timers, locked goroutines and goroutines in
    /// [`blocking`](crate::blocking) carry on.
    ///
    /// In [`ThreadAffine`](crate::PreemptMode::ThreadAffine) mode each
    /// goroutine preempted off a dropped P keeps its thread until it runs
    /// again, which beside call-free loops can take a while; growing needs
    /// new threads beside those (see
    /// [`Builder::max_threads`](crate::Builder::max_threads)).
    ///
    /// Callable from a goroutine (it parks while it waits) and from a
    /// plain thread. Concurrent calls take effect one after the other.
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming `n` when it is 0 or above [`MAX_PROCS`](crate::MAX_PROCS), or
    /// when `n` Ps need more threads than the runtime's `max_threads` allows (`2 * n + 2`,
    /// see [`Builder::max_threads`](crate::Builder::max_threads)).
    ///
    /// `WouldBlock` when growing in ThreadAffine mode while more threads hold preempted
    /// goroutines than `max_threads` leaves for them beside `n` Ps (half of what it leaves
    /// beside one thread per P and sysmon); the message names the numbers. Nothing changes;
    /// the same call succeeds once those goroutines have run. With the default limit
    /// (10,000 threads) this takes thousands of goroutines preempted at once.
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

impl Runtime {
    /// Lets goroutines that have published their result finish exiting
    /// before the Ms stop (up to `FINISH_WAIT`): `block_on` returns as soon
    /// as its goroutine's result is out, and a drop right after it
    /// abandoned that goroutine on its way out about half the time, in the
    /// release builds measured here; an abandoned goroutine keeps the
    /// runtime's state alive, so 1,000 `build`-`block_on`-`drop` rounds
    /// kept 0.4-1 GB of it.
    ///
    /// It waits for those counted when it begins: as many exits as there
    /// were such goroutines then (or none left finishing). On a runtime
    /// that keeps finishing goroutines, waiting for none to be left could
    /// take the whole `FINISH_WAIT`.
    fn wait_for_finishing(&self) {
        let sh = &self.shared;
        let n = sh.finishing.load(Ordering::SeqCst) as u64;
        if n == 0 {
            return;
        }
        let exited = sh.exited();
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(10);
        while sh.finishing.load(Ordering::SeqCst) > 0
            && sh.exited().saturating_sub(exited) < n
            && start.elapsed() < FINISH_WAIT
        {
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(1));
        }
    }
}

/// How long `Runtime::drop` waits for goroutines already past their
/// result: their exit normally takes microseconds; past this (a
/// goroutine-local value's destructor that blocks, say) they are abandoned.
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
        self.wait_for_finishing();
        self.shared.shutdown();
        if let Some(t) = self.sysmon.take() {
            let _ = t.join();
        }
        self.shared.timers.drop_all();
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

// A `Runtime` is used from several threads at once (`block_on` on each).
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Runtime>()
};
