//! # gosched: goroutines for Rust, preempted like Go 1.14+
//!
//! gosched runs goroutines on an M:N scheduler built the way Go's is: worker
//! threads (M) run goroutines (G) through processors (P) with work-stealing
//! run queues, and a system monitor thread (sysmon) preempts a goroutine
//! that has run longer than its quantum (10 ms by default). Preemption is
//! cooperative at every runtime call and, with the `preempt-signal` feature
//! (default), asynchronous: sysmon sends the goroutine's thread SIGURG and
//! the handler makes it call into the scheduler exactly where it was,
//! resuming later with every register intact. So CPU-bound loops with no
//! calls at all share the CPU fairly, without `.await` or yield calls.
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! let rt = gosched::Builder::new().procs(1).build().unwrap();
//! let late = rt.block_on(|| {
//!     // A loop with no calls and no yields, on the only P...
//!     let hog = gosched::spawn(|| {
//!         let t = Instant::now();
//!         let mut x = 0u64;
//!         while t.elapsed() < Duration::from_millis(200) {
//!             x = x.wrapping_mul(31).wrapping_add(1);
//!         }
//!         x
//!     });
//!     // ...does not starve a sleeper: it wakes within a few quanta.
//!     let t = Instant::now();
//!     gosched::sleep(Duration::from_millis(1));
//!     let late = t.elapsed();
//!     hog.join().unwrap();
//!     late
//! });
//! # #[cfg(feature = "preempt-signal")]
//! assert!(late < Duration::from_millis(150), "{late:?}");
//! ```
//!
//! ## Platform
//!
//! | target | status |
//! | --- | --- |
//! | x86_64 Linux (kernel 6.13+ for VMA-free guard pages; older: mprotect guards) | supported |
//! | aarch64 Linux | not yet (the context switch, trampoline and ucontext rewrite are the port) |
//! | anything else | `compile_error!` |
//!
//! ## Features
//!
//! - `preempt-signal` (default): asynchronous preemption with SIGURG. Without
//!   it, preemption is cooperative only: a goroutine yields at runtime calls
//!   and [`preempt_point`].
//!
//! ## What asynchronous preemption may interrupt, and what it never does
//!
//! It interrupts only Rust code of the main executable (your crate, std,
//! other statically linked Rust) running on a goroutine that sysmon asked to
//! yield, outside any [`no_preempt`] region and outside the runtime. It
//! never interrupts libc (malloc, stdio), the vDSO or other shared objects,
//! C, C++ or assembly linked into the executable (a C `#[global_allocator]`
//! such as mimalloc or jemalloc, a static musl), the methods of a
//! `GlobalAlloc` implementation, a signal handler, or the scheduler. (Rust
//! code is told apart by its symbol names, from the executable's symbol
//! table; a stripped executable is taken to be all Rust.) In [`PreemptMode::ThreadAffine`] (the
//! default) a preempted goroutine resumes on the same OS thread, which runs
//! nothing else meanwhile, so thread-locals and std's reentrant locks stay
//! sound. In [`PreemptMode::Migrate`] it may resume anywhere (Go's
//! behaviour): code must not keep thread-identity state across arbitrary
//! instructions, a promise the caller makes with the `unsafe`
//! [`Builder::allow_migrate`] (without it `build` refuses Migrate).
//!
//! ### Signal masks
//!
//! A thread's signal mask is thread state, like its affinity: a goroutine
//! that changes it with `pthread_sigmask` changes it for the goroutines
//! that run on that thread after it, unless it called [`lock_os_thread`]
//! first (a thread whose locked goroutine ends gets its mask back). A
//! blocked SIGPIPE or SIGINT does not affect preemption. A blocked
//! **SIGURG**, gosched's preemption signal, stops asynchronous preemption
//! on that thread until it is unblocked: a goroutine may block it around a
//! section that must not be interrupted, but should unblock it before it
//! blocks, yields or returns, or use [`no_preempt`], which costs no system
//! call. sysmon warns on stderr, once, when a preemption signal has waited
//! 200 ms on a thread that blocks SIGURG. The alternate signal stack
//! (`sigaltstack`) is thread state too: a goroutine may replace or disable
//! the one the runtime gave its thread (the preemption signal then runs on
//! the new one, or on the goroutine's stack, so give it room), and a signal
//! handler running on a goroutine's stack is still never preempted. But
//! the stack-overflow report runs on the alternate stack: while the
//! thread has none, or one the goroutine freed, a goroutine overflowing
//! its stack there dies of a plain SIGSEGV, unreported, and so does any
//! later goroutine on that thread. Put the runtime's back (the `old`
//! stack `sigaltstack` returned) before the goroutine yields or returns,
//! as with the mask.
//!
//! ## Soundness: thread identity across cooperative points
//!
//! At *cooperative* points (yield, sleep, channel operations, join, lock
//! waits, [`block_on_future`], ...) a goroutine may resume on another OS
//! thread in either mode, as in Go. Rust and LLVM assume a function never
//! changes threads, so safe code that ties state to the thread can go
//! wrong when it spans such a point **inside one function**:
//!
//! - A `thread_local!` used on both sides of the point. Holding the
//!   reference across it (`TLS.with(|c| { sleep(..); c.set(..) })`) plainly
//!   uses the old thread's slot; and even two separate `TLS.with` calls, one
//!   before and one after, may: in optimized builds LLVM computes the slot's
//!   address once per function and keeps it in a register across the call.
//!   Measured (`tests/local.rs`, `--release`, 16 goroutines on 2 Ps, 50 µs
//!   sleeps): every resumption on another thread used the previous thread's
//!   slot, where another goroutine may be using it at that moment: a data
//!   race from safe code.
//! - A thread-bound value held across the point: `rand::thread_rng()`, a
//!   `ReentrantLock` guard such as `std::io::stdout().lock()` (its owner is
//!   a thread id), a `RefCell` borrow of a thread-local, a
//!   `std::sync::MutexGuard` (pthread-style locks must be unlocked by the
//!   locking thread).
//!
//! What to use instead:
//!
//! - [`local!`] for per-goroutine state: it is reached through the running
//!   goroutine, so it is right on whichever thread the goroutine resumes
//!   (about 5 ns an access, twice a `thread_local!` read).
//! - [`lock_os_thread`] around code that must keep its thread (a C library
//!   with thread-local state, a thread-bound guard held across a wait).
//! - Look thread-locals up in a separate `#[inline(never)]` function, and
//!   never hold what they hand out across a cooperative point.
//! - [`sync::Mutex`] instead of `std::sync::Mutex` when a guard is held
//!   across a wait (it has no owner thread, and it parks instead of
//!   blocking the thread), and when goroutines contend for it: a
//!   `std::sync::Mutex` waiter blocks its thread in the kernel, holding
//!   its P until sysmon hands the P to another thread, and a holder
//!   preempted inside the critical section keeps the lock until it runs
//!   again. Many goroutines contending for one inside CPU-bound work then
//!   crawl (~80 scheduling rounds a second per P, measured on 2 Ps) where
//!   the same program with [`sync::Mutex`] runs at full speed.
//!
//! This is not particular to gosched: every stackful M:N runtime in Rust has
//! it ([rust-lang/unsafe-code-guidelines#602], [llvm/llvm-project#98479];
//! `may` makes spawning `unsafe` for it). Asynchronous preemption in the
//! default [`PreemptMode::ThreadAffine`] adds no such points (the goroutine
//! resumes on its thread, which ran nothing else); [`PreemptMode::Migrate`]
//! makes *every* instruction one.
//!
//! [rust-lang/unsafe-code-guidelines#602]: https://github.com/rust-lang/unsafe-code-guidelines/issues/602
//! [llvm/llvm-project#98479]: https://github.com/llvm/llvm-project/issues/98479
//!
//! ## Environment
//!
//! `GOSCHED_MAXPROCS` (1 ..= [`MAX_PROCS`]), `GOSCHED_QUANTUM` ("10ms", "500us"),
//! `GOSCHED_ASYNCPREEMPTOFF=1`, `GOSCHED_SCHEDTRACE=MS` (Go-style `SCHED`
//! lines on stderr every MS milliseconds). Explicit [`Builder`] calls win.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod arch;
mod builder;
pub mod chan;
mod diag;
mod driver;
mod future;
mod join;
mod local;
pub mod net;
mod os;
mod preempt;
mod runtime;
mod sched;
mod scope;
mod spawn_builder;
mod stack;
pub mod sync;

// The `select!` macro's support code, at the path the macro names.
#[doc(hidden)]
pub use crate::chan::select;

use std::time::{Duration, Instant};

pub use crate::builder::{
    Builder, PreemptMode, DEFAULT_MAX_THREADS, DEFAULT_QUANTUM, DEFAULT_SYSMON_NICE, MAX_PROCS,
    MIN_QUANTUM,
};
pub use crate::diag::stats::Stats;
pub use crate::future::block_on_future;
pub use crate::join::JoinHandle;
pub use crate::local::{AccessError, LocalKey};
pub use crate::runtime::Runtime;
pub use crate::scope::{scope, Scope, ScopedJoinHandle};
pub use crate::spawn_builder::{current_name, GoroutineBuilder};

/// Starts a goroutine on the calling goroutine's runtime. It is queued to
/// run next on this P (Go's `newproc`); the caller keeps running.
///
/// # Panics
///
/// Outside a goroutine: use [`Runtime::spawn`] or [`Runtime::block_on`].
/// In a `fork()`ed child process (see "Fork" on [`Runtime`]).
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let h = gosched::spawn(|| "from a goroutine");
///     assert_eq!(h.join().unwrap(), "from a goroutine");
/// });
/// ```
#[track_caller]
pub fn spawn<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let g = sched::current_g().unwrap_or_else(|| {
        panic!("gosched::spawn called outside a goroutine: use Runtime::spawn or Runtime::block_on")
    });
    // SAFETY: a running goroutine's runtime is alive.
    let sh = unsafe { &*g.shared.load(std::sync::atomic::Ordering::Acquire) };
    join::spawn_on(sh, f)
}

/// Yields the processor: the calling goroutine goes to the back of its P's
/// run queue and others run (Go's `runtime.Gosched`). On a plain thread,
/// `std::thread::yield_now`.
///
/// # Examples
///
/// ```
/// let rt = gosched::Builder::new().procs(1).build().unwrap();
/// let order = rt.block_on(|| {
///     let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
///     let l2 = log.clone();
///     let h = gosched::spawn(move || l2.lock().unwrap().push("other"));
///     gosched::yield_now(); // lets the new goroutine run on our only P
///     log.lock().unwrap().push("main");
///     h.join().unwrap();
///     let v = log.lock().unwrap().clone();
///     v
/// });
/// assert_eq!(order, ["other", "main"]);
/// ```
#[inline]
pub fn yield_now() {
    match sched::g::parkable_g() {
        Some(g) => sched::goyield(g),
        None => std::thread::yield_now(),
    }
}

/// Sleeps for at least `d`: parks the goroutine (its thread runs others)
/// until a timer wakes it; never wakes early. On a plain thread,
/// `std::thread::sleep`. Any duration is accepted: like
/// `std::thread::sleep`, `Duration::MAX` sleeps effectively forever (the
/// timer is armed for 100 years).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let t = Instant::now();
///     gosched::sleep(Duration::from_millis(5));
///     assert!(t.elapsed() >= Duration::from_millis(5));
/// });
/// ```
pub fn sleep(d: Duration) {
    let deadline = sched::timer::deadline_after(d);
    if sched::g::parkable_g().is_none() {
        return std::thread::sleep(d);
    }
    sched::preempt_check();
    while Instant::now() < deadline {
        sched::g::park_until("sleep", deadline);
    }
}

/// A cheap cooperative preemption check: if sysmon asked this goroutine to
/// yield, yield now. Costs a thread-local read and a load otherwise. Useful
/// in hot loops when asynchronous preemption is off.
///
/// # Examples
///
/// ```
/// let rt = gosched::Builder::new().async_preempt(false).build().unwrap();
/// let n = rt.block_on(|| {
///     let mut n = 0u64;
///     for i in 0..1_000_000u64 {
///         n = n.wrapping_add(i);
///         gosched::preempt_point();
///     }
///     n
/// });
/// assert_eq!(n, 499_999_500_000);
/// ```
#[inline]
pub fn preempt_point() {
    sched::preempt_check();
}

/// Runs `f` with asynchronous preemption disabled for the calling goroutine
/// (regions nest). Cooperative preemption still happens at runtime calls
/// inside `f`; a request that arrives meanwhile is honoured when the
/// outermost region ends.
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// let v = rt.block_on(|| gosched::no_preempt(|| 2 + 2));
/// assert_eq!(v, 4);
/// ```
pub fn no_preempt<R>(f: impl FnOnce() -> R) -> R {
    let _np = sched::NoPreempt::enter();
    f()
}

/// Runs a blocking call (file I/O, a C library, `std::thread::sleep`)
/// without holding up other goroutines: the goroutine's P is released to
/// sysmon, which hands it to another thread if the call lasts (after 20 µs
/// when work waits). On return the goroutine gets a P back (its own if
/// still free) or queues for one (Go's entersyscall/exitsyscall). On a
/// plain thread it just calls `f`.
///
/// No preemption signal is sent to the thread while `f` runs. A blocking
/// system call made *outside* `blocking` holds the goroutine's P; when
/// goroutines wait for it, sysmon signals the thread (as for any goroutine
/// that overruns its quantum), finds it asleep in the kernel and hands the
/// P to another thread. The signal interrupts the call: calls the kernel
/// restarts after a handler are unaffected, but `poll`, `select`,
/// `epoll_wait`, `nanosleep`, `sem_timedwait`, `sigtimedwait` and socket
/// calls with a timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`, as std's
/// `set_read_timeout` sets) fail with `EINTR`: std's `TcpStream::read` with a
/// read timeout returns `ErrorKind::Interrupted` (`read_exact` and
/// `write_all` retry it). Go 1.14's release notes warn of the same. Wrap
/// such calls in `blocking`, or retry on `Interrupted`; `std::thread::sleep`,
/// `recv_timeout` and plain reads of pipes and sockets retry by themselves.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let rt = gosched::Builder::new().procs(1).build().unwrap();
/// rt.block_on(|| {
///     let other = gosched::spawn(|| gosched::sleep(Duration::from_millis(1)));
///     gosched::blocking(|| std::thread::sleep(Duration::from_millis(20)));
///     other.join().unwrap();
/// });
/// ```
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    sched::syscall::blocking(f)
}

/// Wires the calling goroutine to its current OS thread (Go's
/// `runtime.LockOSThread`): until a matching [`unlock_os_thread`] it runs
/// only on this thread, and this thread runs nothing else. Calls nest.
/// No-op on a plain thread.
///
/// A goroutine that exits while still locked (more calls than
/// [`unlock_os_thread`]s) leaves its thread to the pool with the signal
/// mask and CPU affinity the thread had when the runtime started it. Go
/// ends such a thread instead; gosched does not (a goroutine that ran on
/// it before may still hold the address of its thread-locals, see
/// "Soundness" above), so a network namespace (`setns`/`unshare`),
/// credentials or a scheduling policy changed there are *not* put back:
/// do such changes on a plain `std::thread`, not on a goroutine's thread.
/// A thread unlocked after a change goes back to the pool as it is.
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     gosched::lock_os_thread();
///     let before = std::thread::current().id();
///     gosched::yield_now();
///     gosched::sleep(std::time::Duration::from_millis(1));
///     assert_eq!(std::thread::current().id(), before);
///     gosched::unlock_os_thread();
/// });
/// ```
pub fn lock_os_thread() {
    sched::syscall::lock_os_thread();
}

/// Undoes one [`lock_os_thread`]; at zero the goroutine may run anywhere
/// again. Extra calls are ignored, as in Go.
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     gosched::lock_os_thread();
///     gosched::unlock_os_thread();
///     gosched::unlock_os_thread(); // no-op
/// });
/// ```
pub fn unlock_os_thread() {
    sched::syscall::unlock_os_thread();
}

/// The calling goroutine's id, or `None` outside a goroutine. Ids are unique
/// within the process and start at 1.
///
/// # Examples
///
/// ```
/// assert_eq!(gosched::current_id(), None);
/// let rt = gosched::Runtime::new().unwrap();
/// assert!(rt.block_on(gosched::current_id).is_some());
/// ```
pub fn current_id() -> Option<u64> {
    sched::current_g().map(|g| g.id.load(std::sync::atomic::Ordering::Relaxed))
}

/// Goroutines alive in the calling goroutine's runtime (0 outside one),
/// as [`Stats::goroutines`] counts them (one that just delivered its
/// result to `join` may still count for a moment).
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// let n = rt.block_on(gosched::num_goroutines);
/// assert_eq!(n, 1); // just the main goroutine
/// ```
pub fn num_goroutines() -> usize {
    sched::with_current_shared(|sh| sh.goroutines()).unwrap_or(0)
}

/// A snapshot of the calling goroutine's runtime's counters (what
/// [`Runtime::stats`] returns), for code that has no `&Runtime` at hand;
/// `None` outside a goroutine.
///
/// # Examples
///
/// ```
/// assert!(gosched::stats().is_none());
/// let rt = gosched::Builder::new().procs(2).build().unwrap();
/// let s = rt.block_on(|| gosched::stats().unwrap());
/// assert_eq!(s.procs, 2);
/// assert_eq!(s.goroutines, 1);
/// ```
pub fn stats() -> Option<Stats> {
    sched::with_current_shared(|sh| sh.stats())
}
