//! `Builder`: runtime settings, their environment overrides, and validation.

use std::io;
use std::time::Duration;

use crate::stack::{DEFAULT_STACK, MAX_STACK, MIN_STACK};
use crate::Runtime;

/// Shortest accepted preemption quantum: below this the signal cost (several
/// µs per preemption on a VM) would eat a large share of the CPU.
///
/// # Examples
///
/// ```
/// use gosched::{Builder, MIN_QUANTUM};
/// assert!(Builder::new().preempt_quantum(MIN_QUANTUM).build().is_ok());
/// assert!(Builder::new().preempt_quantum(MIN_QUANTUM / 2).build().is_err());
/// ```
pub const MIN_QUANTUM: Duration = Duration::from_micros(50);

/// The largest number of Ps (GOMAXPROCS) a runtime accepts, at `build`
/// ([`Builder::procs`], `GOSCHED_MAXPROCS`) and in [`Runtime::set_procs`]:
/// 1024, the cap Go itself had (`_MaxGomaxprocs`) until Go 1.10. A runtime
/// allocates all of them up front (about 1 KiB each; only the first
/// `procs` are scheduled), so `set_procs` never reallocates what the
/// scheduler reads without locks; more Ps than CPUs adds no parallelism. A
/// larger value is an error, not a silent clamp, so a typo (an extra zero,
/// a negative number cast to `usize`) is noticed; the default
/// (`available_parallelism()`) is clamped to it.
///
/// # Examples
///
/// ```
/// use gosched::{Builder, MAX_PROCS};
/// assert!(Builder::new().procs(MAX_PROCS).build().is_ok());
/// let err = Builder::new().procs(MAX_PROCS + 1).build().unwrap_err();
/// assert!(err.to_string().contains("procs(1025)"));
/// ```
pub const MAX_PROCS: usize = 1024;

/// Default preemption quantum: 10 ms, Go's `forcePreemptNS`.
///
/// # Examples
///
/// ```
/// use gosched::{Builder, DEFAULT_QUANTUM};
/// let rt = Builder::new().preempt_quantum(DEFAULT_QUANTUM).build().unwrap();
/// assert_eq!(rt.stats().quantum, std::time::Duration::from_millis(10));
/// ```
pub const DEFAULT_QUANTUM: Duration = Duration::from_millis(10);

/// Where a goroutine that was preempted asynchronously resumes.
///
/// [`Migrate`](PreemptMode::Migrate) is unsound for ordinary Rust code (see
/// its doc), so choosing it also takes the `unsafe`
/// [`Builder::allow_migrate`] acknowledgement; without it `build` fails.
///
/// # Examples
///
/// ```
/// use gosched::{Builder, PreemptMode};
/// let b = Builder::new().procs(1).preempt_mode(PreemptMode::Migrate);
/// // SAFETY: the only goroutine computes `6 * 7` in registers: no
/// // thread-locals, no stdout lock, nothing tied to its OS thread.
/// let rt = unsafe { b.allow_migrate() }.build().unwrap();
/// assert_eq!(rt.block_on(|| 6 * 7), 42);
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreemptMode {
    /// The goroutine resumes on the OS thread it was interrupted on, and that
    /// thread runs nothing else meanwhile (its P moves on to another thread).
    /// Thread-locals, std's reentrant stdout lock and per-thread allocator
    /// caches stay sound across the preemption. The default. The price is
    /// one OS thread switch per asynchronous preemption: the preempted
    /// thread hands its P straight to the thread of the goroutine that
    /// runs next (on a 2-vCPU VM, 8-11 µs per preemption against Migrate's
    /// 4-5 µs; `cargo bench --bench latency`, part 2).
    ///
    /// Each preempted goroutine keeps its thread until it resumes, so
    /// many call-free loops at once cost threads. Past 8 such threads per
    /// P (at least 64), goroutines already running take turns first and a
    /// goroutine that has not started yet waits for a turn that comes
    /// rarer as more threads wait: on 2 Ps at the 10 ms quantum, of 100
    /// no-call loops spawned together 5 had not started after 5 s, of 200
    /// 82 (Migrate: none). Goroutines woken by a channel, timer, lock or
    /// I/O, and the one spawned last, are not affected (they run first).
    #[default]
    ThreadAffine,
    /// Go's behaviour: the goroutine goes to the tail of the global run queue
    /// and any thread may resume it. Cheapest; only for code that keeps no
    /// thread-identity state (thread-locals, reentrant locks) live across
    /// arbitrary instructions. Ordinary Rust does: `println!` holds std's
    /// reentrant stdout lock (its owner is a thread id) and `thread_local!`
    /// hands out references into the thread's storage, so a goroutine moved
    /// or interleaved mid-way corrupts them. Requires the `unsafe`
    /// [`Builder::allow_migrate`]; without it `build` returns an error.
    Migrate,
}

/// Validated settings of one runtime.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) procs: usize,
    pub(crate) stack_size: usize,
    pub(crate) quantum: Duration,
    pub(crate) async_preempt: bool,
    pub(crate) mode: PreemptMode,
    pub(crate) schedtrace: Option<Duration>,
    /// `GOSCHED_SCHEDDETAIL=1`: schedtrace adds per-P, per-M and per-G lines.
    pub(crate) scheddetail: bool,
    pub(crate) max_threads: usize,
    pub(crate) sigquit_dump: bool,
    pub(crate) wakeup_preempt: bool,
    /// sysmon runs `SCHED_FIFO` (checked at `build`: it may).
    pub(crate) sysmon_realtime: bool,
    /// The nice value sysmon asks for (-20 ..= 0; 0: none).
    pub(crate) sysmon_nice: i32,
    /// Ms time the slices of goroutines that ran a whole quantum with a
    /// timer of their own (`preempt::slice_timer`); off with
    /// `GOSCHED_SLICETIMEROFF=1`.
    pub(crate) slice_timer: bool,
}

/// The nice value sysmon asks for by default (see
/// [`Builder::sysmon_nice`]).
///
/// # Examples
///
/// ```
/// assert_eq!(gosched::DEFAULT_SYSMON_NICE, -20);
/// ```
pub const DEFAULT_SYSMON_NICE: i32 = -20;

/// The fewest threads ([`Builder::max_threads`]) a runtime with `procs`
/// Ps can run on: `2 * procs + 2`. Per P, the M running its goroutines
/// and one more: a ThreadAffine preemption parks the preempted goroutine's
/// thread while the P goes on with another M (up to half the threads
/// beside one per P and sysmon, and at least one,
/// `Shared::affine_parked_limit`), and an M that hands its P to such a
/// thread, or gives it up, is busy until it reaches the idle list, so for
/// a moment a P can need a second M. Plus sysmon, plus one: `newm` dies of
/// thread exhaustion when the new M and sysmon do not fit. With one fewer
/// thread, busy call-free loops killed the program (exit 2) in 1 of 20
/// runs (2 Ps, 5 threads) to 7 of 13 (1 P, 3 threads); with `procs + 2`
/// in half the runs. `build` and `set_procs` refuse less.
pub(crate) fn min_threads(procs: usize) -> usize {
    procs.saturating_mul(2).saturating_add(2)
}

/// The error of `build` and `set_procs` for `procs` Ps under a limit of
/// `max_threads` below [`min_threads`].
pub(crate) fn too_few_threads(procs: usize, max_threads: usize) -> io::Error {
    invalid(format!(
        "procs {procs} needs max_threads >= {}, have {max_threads} (one thread per P, one more \
         per P for preempted goroutines' threads and hand-offs, sysmon and a spare; raise \
         Builder::max_threads / GOSCHED_MAXTHREADS or lower the number of Ps)",
        min_threads(procs)
    ))
}

/// Default cap on the threads of one runtime: 10,000, Go's `maxmcount`.
///
/// # Examples
///
/// ```
/// assert_eq!(gosched::DEFAULT_MAX_THREADS, 10_000);
/// ```
pub const DEFAULT_MAX_THREADS: usize = 10_000;

/// Configures and builds a [`Runtime`].
///
/// Every setting has an environment override read at [`build`](Builder::build)
/// (`GOSCHED_MAXPROCS`, `GOSCHED_QUANTUM`, `GOSCHED_ASYNCPREEMPTOFF=1`,
/// `GOSCHED_SCHEDTRACE=MS`); an explicit call wins over the environment.
/// Invalid settings, and malformed variables, are an `Err` naming the
/// setting and the value; `build` never panics on input.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use gosched::Builder;
///
/// let rt = Builder::new()
///     .procs(2)
///     .stack_size(256 * 1024)
///     .preempt_quantum(Duration::from_millis(1))
///     .build()
///     .unwrap();
/// assert_eq!(rt.block_on(|| gosched::spawn(|| 1 + 1).join().unwrap()), 2);
///
/// let err = Builder::new().procs(0).build().unwrap_err();
/// assert!(err.to_string().contains("procs(0)"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Builder {
    procs: Option<usize>,
    stack_size: Option<usize>,
    quantum: Option<Duration>,
    async_preempt: Option<bool>,
    mode: Option<PreemptMode>,
    allow_migrate: bool,
    max_threads: Option<usize>,
    sigquit_dump: Option<bool>,
    wakeup_preempt: Option<bool>,
    sysmon_realtime: Option<bool>,
    sysmon_nice: Option<i32>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Parses "10ms", "500us", "500µs", "1s", "250000ns", or a bare number of
/// milliseconds. A huge value saturates at `u64::MAX` nanoseconds (~584
/// years: a quantum that long means no time-slice preemption).
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let nanos = match unit.trim() {
        "ns" => v,
        "us" | "µs" => v * 1e3,
        "ms" | "" => v * 1e6,
        "s" => v * 1e9,
        _ => return None,
    };
    // `as` saturates: a huge value becomes u64::MAX ns.
    Some(Duration::from_nanos(nanos as u64))
}

fn env(name: &str) -> io::Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(invalid(format!("{name}={v:?}: not valid UTF-8")))
        }
    }
}

/// A 0/1 variable: `None` when unset or empty.
fn env_flag(name: &str) -> io::Result<Option<bool>> {
    match env(name)?.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("0") => Ok(Some(false)),
        Some("1") => Ok(Some(true)),
        Some(v) => Err(invalid(format!("{name}={v:?}: expected 0 or 1"))),
    }
}

impl Builder {
    /// A builder with every setting at its default (or environment) value.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().build().unwrap();
    /// assert_eq!(rt.block_on(|| 1), 1);
    /// ```
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Number of Ps: how many goroutines run in parallel (GOMAXPROCS).
    /// Default: `$GOSCHED_MAXPROCS`, else `std::thread::available_parallelism()`
    /// (at most [`MAX_PROCS`]). 0, or more than [`MAX_PROCS`] (1024), is an
    /// error at `build`: every P is allocated up front and visited by sysmon,
    /// so an absurd value would exhaust memory before anything runs (see
    /// [`MAX_PROCS`] for why 1024). So is a number of Ps that
    /// [`max_threads`](Builder::max_threads) cannot run: `n` Ps need
    /// `max_threads >= 2 * n + 2` (see there).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().procs(1).build().unwrap();
    /// assert_eq!(rt.stats().procs, 1);
    /// let err = gosched::Builder::new().procs(usize::MAX).build().unwrap_err();
    /// assert!(err.to_string().contains("MAX_PROCS"));
    /// let err = gosched::Builder::new().procs(8).max_threads(3).build().unwrap_err();
    /// assert!(err.to_string().contains("procs 8 needs max_threads >= 18, have 3"));
    /// ```
    pub fn procs(mut self, n: usize) -> Builder {
        self.procs = Some(n);
        self
    }

    /// Bytes reserved for each goroutine's stack (rounded up to whole pages;
    /// memory is committed only as the stack is used). Default 1 MiB;
    /// accepted range 16 KiB ..= 1 GiB.
    ///
    /// Every runtime's stacks share one fixed 256 GiB address-space
    /// reservation, each with a 64 KiB guard: at most
    /// `256 GiB / (stack_size + 64 KiB)` goroutines that have started can
    /// be alive at once (246,723 at 1 MiB, 2,097,152 at 64 KiB, 255 at
    /// 1 GiB). One more is Go's `fatal error: out of memory`, with the
    /// numbers and the goroutine dump (exit status 2).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().stack_size(64 * 1024).build().unwrap();
    /// assert_eq!(rt.stats().stack_size, 64 * 1024);
    /// assert!(gosched::Builder::new().stack_size(100).build().is_err());
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// How long a goroutine may run before sysmon preempts it. Default
    /// 10 ms, or `$GOSCHED_QUANTUM` ("10ms", "500us"); at least 50 µs. There
    /// is no maximum: a quantum longer than the program runs (up to
    /// `Duration::MAX`) means no time-slice preemption at all (wake-up
    /// preemption, [`Builder::wakeup_preempt`], is separate).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let rt = gosched::Builder::new().preempt_quantum(Duration::from_micros(200)).build().unwrap();
    /// assert_eq!(rt.stats().quantum, Duration::from_micros(200));
    /// assert!(gosched::Builder::new().preempt_quantum(Duration::from_micros(10)).build().is_err());
    ///
    /// let rt = gosched::Builder::new().preempt_quantum(Duration::MAX).build().unwrap();
    /// rt.block_on(|| gosched::sleep(Duration::from_millis(1)));
    /// assert_eq!(rt.stats().preempt_async + rt.stats().preempt_coop, 0);
    /// ```
    pub fn preempt_quantum(mut self, d: Duration) -> Builder {
        self.quantum = Some(d);
        self
    }

    /// Whether sysmon may preempt a goroutine asynchronously (SIGURG) when it
    /// ignores the cooperative request. Default on with the `preempt-signal`
    /// feature, unless `GOSCHED_ASYNCPREEMPTOFF=1`. Turning it on without the
    /// feature is an error at `build`.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().async_preempt(false).build().unwrap();
    /// assert!(!rt.stats().async_preempt);
    /// ```
    pub fn async_preempt(mut self, on: bool) -> Builder {
        self.async_preempt = Some(on);
        self
    }

    /// Where asynchronously preempted goroutines resume. Default
    /// [`PreemptMode::ThreadAffine`]. [`PreemptMode::Migrate`] also needs
    /// [`allow_migrate`](Builder::allow_migrate), or `build` fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::{Builder, PreemptMode};
    /// let rt = Builder::new().preempt_mode(PreemptMode::ThreadAffine).build().unwrap();
    /// assert_eq!(rt.stats().mode, PreemptMode::ThreadAffine);
    ///
    /// let err = Builder::new().preempt_mode(PreemptMode::Migrate).build().unwrap_err();
    /// assert!(err.to_string().contains("allow_migrate"));
    /// ```
    pub fn preempt_mode(mut self, mode: PreemptMode) -> Builder {
        self.mode = Some(mode);
        self
    }

    /// Acknowledges that [`PreemptMode::Migrate`] is sound for this program,
    /// so that `preempt_mode(PreemptMode::Migrate)` is accepted by `build`.
    /// On its own it changes nothing: the mode stays whatever
    /// [`preempt_mode`](Builder::preempt_mode) chose (default ThreadAffine).
    ///
    /// # Safety
    ///
    /// Code that can be asynchronously preempted holds no thread identity
    /// across any instruction: no thread-locals (`thread_local!`, `errno`
    /// read after another call, per-thread allocator or RNG state held by
    /// reference), no std stdout/stderr lock (`println!`, `eprintln!`), no
    /// reentrant lock or other state keyed by the OS thread id. Under
    /// Migrate a goroutine can stop between any two instructions of such
    /// code and resume on another OS thread, while its old thread runs other
    /// goroutines; std's stdout `RefCell` is then borrowed twice (an abort)
    /// and thread-local updates are lost or land on the wrong thread.
    /// Panicking is thread state too: std counts a panic in progress per
    /// thread (`std::thread::panicking`, "in the panic hook"), so code that
    /// unwinds, runs drops during an unwind or captures a `Backtrace` is
    /// covered by this promise, as is any std call that reads `errno` after
    /// a system call (`Command::output` beside concurrent `env::set_var`
    /// once failed with "Success"): under Migrate, a goroutine preempted
    /// while unwinding, with a drop that sleeps or yields, aborted the
    /// process as "thread panicked while processing panic" in 4 runs of 27
    /// (ThreadAffine: none).
    /// Thread identity taken and released entirely inside
    /// [`no_preempt`](crate::no_preempt) is fine: that closure is never
    /// preempted asynchronously.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::{Builder, PreemptMode};
    /// let b = Builder::new().procs(2).preempt_mode(PreemptMode::Migrate);
    /// // SAFETY: the goroutines below only do arithmetic on their own
    /// // locals; nothing they run reads a thread-local or takes stdout.
    /// let rt = unsafe { b.allow_migrate() }.build().unwrap();
    /// assert_eq!(rt.stats().mode, PreemptMode::Migrate);
    /// let sum = rt.block_on(|| {
    ///     let hs: Vec<_> = (0..4u64).map(|i| gosched::spawn(move || i * i)).collect();
    ///     hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    /// });
    /// assert_eq!(sum, 14);
    /// ```
    pub unsafe fn allow_migrate(mut self) -> Builder {
        self.allow_migrate = true;
        self
    }

    /// The most OS threads the runtime may run at once: its worker threads
    /// (Ms: those running goroutines, those parked in `blocking` calls or
    /// with a locked or preempted goroutine, idle ones) plus sysmon. Go's
    /// `debug.SetMaxThreads`; default [`DEFAULT_MAX_THREADS`] (10,000), or
    /// `$GOSCHED_MAXTHREADS`; at least 2 (sysmon and one worker).
    ///
    /// A program that needs more threads than this (typically: more
    /// goroutines stuck in [`blocking`](crate::blocking) calls at once) dies
    /// as Go's does: `fatal error: thread exhaustion`, a line naming the
    /// limit and this knob, every goroutine, and exit status 2.
    /// [`PreemptMode::ThreadAffine`] preemption never gets it there: it
    /// parks one thread per preempted goroutine, and keeps at most half of
    /// the threads left beside one per P and sysmon parked that way; past
    /// that, call-free loops run on until their next runtime call (counted
    /// as `threads` refusals in [`Stats`](crate::Stats)). A shrink
    /// ([`Runtime::set_procs`](crate::Runtime::set_procs)) parks the
    /// goroutines of the Ps it drops whatever the count (their threads
    /// exist already); a grow that would not leave that half beside the
    /// new Ps is refused (`WouldBlock`) until enough of them have run.
    ///
    /// The limit must leave room for the Ps: `n` Ps need at least
    /// `2 * n + 2` threads (one M per P; one more per P, for the thread a
    /// ThreadAffine preemption parks and for an M between handing its P on
    /// and going idle; sysmon; a spare). Less is an `InvalidInput` error at
    /// `build` naming both numbers, as is a later
    /// [`Runtime::set_procs`](crate::Runtime::set_procs) beyond it (it
    /// used to be accepted, and the program died of thread exhaustion as
    /// soon as the Ps were busy).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().procs(2).max_threads(64).build().unwrap();
    /// assert_eq!(rt.stats().max_threads, 64);
    /// let err = gosched::Builder::new().max_threads(1).build().unwrap_err();
    /// assert!(err.to_string().contains("max_threads(1)"));
    ///
    /// // 1 P needs 4 threads; 8 Ps would need 18.
    /// let rt = gosched::Builder::new().procs(1).max_threads(4).build().unwrap();
    /// let err = rt.set_procs(8).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// assert!(err.to_string().contains("procs 8 needs max_threads >= 18, have 4"));
    /// assert_eq!(rt.procs(), 1);
    /// let err = gosched::Builder::new().procs(2).max_threads(5).build().unwrap_err();
    /// assert!(err.to_string().contains("procs 2 needs max_threads >= 6, have 5"));
    /// ```
    pub fn max_threads(mut self, n: usize) -> Builder {
        self.max_threads = Some(n);
        self
    }

    /// Wake-up preemption: when a goroutine is woken from outside any P (a
    /// timer, a plain thread, a blocking call) while every P is busy and no
    /// thread looks for work, the goroutine that has run longest (at least
    /// 200 µs into its slice) is asked to yield at once, so the woken one
    /// runs within microseconds instead of up to a quantum; the preempted
    /// goroutine keeps its place: it runs next on its P, once the woken
    /// goroutines have blocked or run 400 µs between them. Default on with
    /// the `preempt-signal` feature, unless `GOSCHED_WAKEUPPREEMPTOFF=1`;
    /// with asynchronous preemption off, only the cooperative flag is set.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().wakeup_preempt(false).build().unwrap();
    /// assert!(!rt.stats().wakeup_preempt);
    /// ```
    pub fn wakeup_preempt(mut self, on: bool) -> Builder {
        self.wakeup_preempt = Some(on);
        self
    }

    /// On SIGQUIT (Ctrl-\\), print every goroutine and exit with status 2,
    /// as Go does. Default off, or `$GOSCHED_SIGQUITDUMP=1`: SIGQUIT belongs
    /// to the application. Process-wide once on: the first runtime built
    /// with it installs the handler (and one `gosched-sigquit` thread that
    /// prints the dump: a signal handler may not); later SIGQUITs dump every
    /// live runtime that asked for it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let rt = gosched::Builder::new().dump_on_sigquit(true).build().unwrap();
    /// rt.block_on(|| loop {
    ///     gosched::sleep(std::time::Duration::from_secs(1)); // kill -QUIT <pid> to see it
    /// });
    /// ```
    pub fn dump_on_sigquit(mut self, on: bool) -> Builder {
        self.sigquit_dump = Some(on);
        self
    }

    /// Run sysmon, the thread that preempts goroutines and watches the
    /// poller while every P is busy, at real-time priority (`SCHED_FIFO` 1,
    /// the lowest; not inherited by threads it starts), so that it gets a
    /// CPU the moment it wakes. Default off, or `$GOSCHED_SYSMONRT=1`.
    ///
    /// Why: Linux's fair scheduler does not always run a waking thread
    /// promptly beside CPU-bound threads on its CPU. Measured on Linux 6.18
    /// (2-vCPU VM), a thread waking every 50 µs beside two CPU-bound
    /// threads waited 4-9 ms for the CPU every ~25 ms at nice 0 (42 waits
    /// over 1 ms in 3 s), rarely at nice -20 (1-2; the default
    /// [`sysmon_nice`](Builder::sysmon_nice)); a `SCHED_FIFO` one never
    /// waited more than ~0.1 ms.
    /// When goroutines hog every CPU, each such wait delays sysmon's
    /// preemptions and its poll: the bimodal benchmark's short requests
    /// (one P, a server pinned to one CPU) waited up to a tick or two for
    /// sysmon. sysmon sleeps between checks that take microseconds, so
    /// the CPU it takes from others stays small.
    ///
    /// Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least 1 (root has
    /// the capability). Asked for with this method and refused, `build`
    /// fails; asked for with the environment variable and refused, a
    /// warning goes to stderr and sysmon stays `SCHED_OTHER`.
    ///
    /// # Examples
    ///
    /// ```
    /// match gosched::Builder::new().sysmon_realtime(true).build() {
    ///     Ok(rt) => assert!(rt.stats().sysmon_realtime),
    ///     // Not permitted here: the error says what is missing.
    ///     Err(e) => assert!(e.to_string().contains("RLIMIT_RTPRIO")),
    /// }
    /// ```
    pub fn sysmon_realtime(mut self, on: bool) -> Builder {
        self.sysmon_realtime = Some(on);
        self
    }

    /// The nice value sysmon asks for, -20 ..= 0 (0: it asks for nothing).
    /// Default [`DEFAULT_SYSMON_NICE`] (-20), or `$GOSCHED_SYSMONNICE`.
    /// Best effort: where the process may not lower a nice value (it needs
    /// `CAP_SYS_NICE`, which root has, or an `RLIMIT_NICE` above 20),
    /// sysmon takes the lowest value `RLIMIT_NICE` allows, often 0, and
    /// nothing fails; [`Stats::sysmon_nice`](crate::Stats::sysmon_nice)
    /// says what it got. Threads sysmon starts begin at nice 0.
    ///
    /// Why: when goroutines hog every CPU, sysmon's wake-ups (to preempt
    /// a goroutine for one that was woken, to poll for I/O) compete with
    /// the hogs' threads, and Linux's fair scheduler (EEVDF) lets a waking
    /// thread in at once only while it is owed CPU time. sysmon wakes
    /// thousands of times a second and each run leaves it slightly in
    /// debt, so at an equal weight it was regularly left waiting for the
    /// next scheduler tick (4 ms at 250 Hz): in the bimodal benchmark (one
    /// CPU, 0.5 % of requests 5 ms long) ~27 of its 40 µs waits a second
    /// took 3-4.7 ms, and the short requests behind them had a p99 of
    /// 3.3-3.9 ms. At nice -20 (weight 88,761 against 1,024) its debt is
    /// negligible: 3 such waits in 4 s, p99 0.69 ms. sysmon sleeps between
    /// checks that take microseconds, so the CPU it takes stays small (a
    /// few percent of one CPU in a busy server), but a higher weight means
    /// a busy sysmon would get its way: set 0 to keep it at the process's
    /// own nice value. [`sysmon_realtime`](Builder::sysmon_realtime) goes
    /// further (a real-time policy; nice values do not apply to it).
    ///
    /// # Errors
    ///
    /// [`build`](Builder::build) returns `InvalidInput` for a value outside
    /// -20 ..= 0.
    ///
    /// # Examples
    ///
    /// ```
    /// // Keep sysmon at the process's nice value.
    /// let rt = gosched::Builder::new().sysmon_nice(0).build().unwrap();
    /// assert_eq!(rt.block_on(|| 1), 1);
    /// assert_eq!(rt.stats().sysmon_nice, 0);
    ///
    /// let err = gosched::Builder::new().sysmon_nice(5).build().unwrap_err();
    /// assert!(err.to_string().contains("sysmon_nice(5)"));
    /// ```
    pub fn sysmon_nice(mut self, nice: i32) -> Builder {
        self.sysmon_nice = Some(nice);
        self
    }

    /// Validates the settings and starts the runtime (its threads start
    /// lazily, when there is work).
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming the setting and its value for: `procs(0)` or
    /// above [`MAX_PROCS`], a
    /// stack size outside 16 KiB ..= 1 GiB, a quantum below 50 µs,
    /// `async_preempt(true)` without the `preempt-signal` feature,
    /// `preempt_mode(Migrate)` without the `unsafe`
    /// [`allow_migrate`](Builder::allow_migrate), or a malformed `GOSCHED_*`
    /// variable. Any OS error reserving the stacks. `PermissionDenied` for
    /// [`sysmon_realtime(true)`](Builder::sysmon_realtime) where the
    /// process may not use real-time priorities. `InvalidInput` for a
    /// [`sysmon_nice`](Builder::sysmon_nice) outside -20 ..= 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let err = gosched::Builder::new().stack_size(1 << 40).build().unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// assert!(err.to_string().contains("stack_size(1099511627776)"));
    /// ```
    pub fn build(self) -> io::Result<Runtime> {
        Runtime::from_config(self.config()?)
    }

    pub(crate) fn config(self) -> io::Result<Config> {
        let procs = match self.procs {
            Some(0) => return Err(invalid("procs(0): a runtime needs at least one P".into())),
            Some(n) if n > MAX_PROCS => {
                return Err(invalid(format!(
                    "procs({n}): exceeds MAX_PROCS ({MAX_PROCS}); every P is allocated up front"
                )));
            }
            Some(n) => n,
            None => match env("GOSCHED_MAXPROCS")? {
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) if (1..=MAX_PROCS).contains(&n) => n,
                    Ok(n) if n > MAX_PROCS => {
                        return Err(invalid(format!(
                            "GOSCHED_MAXPROCS={v:?}: exceeds MAX_PROCS ({MAX_PROCS})"
                        )));
                    }
                    _ => {
                        return Err(invalid(format!(
                            "GOSCHED_MAXPROCS={v:?}: expected an integer in 1..={MAX_PROCS}"
                        )));
                    }
                },
                None => std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(MAX_PROCS),
            },
        };
        let stack_size = self.stack_size.unwrap_or(DEFAULT_STACK);
        if stack_size < MIN_STACK {
            return Err(invalid(format!(
                "stack_size({stack_size}): below the {MIN_STACK}-byte minimum (the preemption frame alone needs several KiB)"
            )));
        }
        if stack_size > MAX_STACK {
            return Err(invalid(format!(
                "stack_size({stack_size}): exceeds the {MAX_STACK}-byte (1 GiB) maximum"
            )));
        }
        let page = crate::stack::page_size();
        let stack_size = stack_size.next_multiple_of(page);
        let quantum = match self.quantum {
            Some(q) => {
                if q < MIN_QUANTUM {
                    return Err(invalid(format!(
                        "preempt_quantum({q:?}): below the 50µs minimum"
                    )));
                }
                q
            }
            None => match env("GOSCHED_QUANTUM")? {
                Some(v) => match parse_duration(&v) {
                    Some(q) if q >= MIN_QUANTUM => q,
                    Some(q) => {
                        return Err(invalid(format!(
                            "GOSCHED_QUANTUM={v:?}: {q:?} is below the 50µs minimum"
                        )))
                    }
                    None => {
                        return Err(invalid(format!(
                        "GOSCHED_QUANTUM={v:?}: expected a duration such as \"10ms\" or \"500us\""
                    )))
                    }
                },
                None => DEFAULT_QUANTUM,
            },
        };
        let feature = cfg!(feature = "preempt-signal");
        let async_preempt =
            match self.async_preempt {
                Some(true) if !feature => return Err(invalid(
                    "async_preempt(true): gosched was built without the `preempt-signal` feature"
                        .into(),
                )),
                Some(on) => on,
                None => env_flag("GOSCHED_ASYNCPREEMPTOFF")?.map_or(feature, |off| feature && !off),
            };
        let schedtrace = match env("GOSCHED_SCHEDTRACE")? {
            None => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => {
                    return Err(invalid(format!(
                        "GOSCHED_SCHEDTRACE={v:?}: expected a period in milliseconds"
                    )));
                }
            },
        };
        let mode = self.mode.unwrap_or_default();
        if mode == PreemptMode::Migrate && !self.allow_migrate {
            return Err(invalid(
                "preempt_mode(Migrate) requires the unsafe Builder::allow_migrate(): \
                 a preempted goroutine may resume on another OS thread, which is \
                 unsound for code that holds thread-locals or std's stdout lock"
                    .into(),
            ));
        }
        let scheddetail = env_flag("GOSCHED_SCHEDDETAIL")?.unwrap_or(false);
        let sigquit_dump = match self.sigquit_dump {
            Some(on) => on,
            None => env_flag("GOSCHED_SIGQUITDUMP")?.unwrap_or(false),
        };
        let wakeup_preempt = match self.wakeup_preempt {
            Some(on) => on,
            None => env_flag("GOSCHED_WAKEUPPREEMPTOFF")?.map_or(feature, |off| feature && !off),
        };
        // Parsed whether or not it matters, so that a typo is an error.
        let slice_timer_off = env_flag("GOSCHED_SLICETIMEROFF")?.unwrap_or(false);
        // Read by the leaf table once per process (`preempt::install`);
        // checked here so that a typo is an error too.
        env_flag("GOSCHED_LEAFPREEMPTOFF")?;
        let slice_timer = async_preempt && quantum != Duration::MAX && !slice_timer_off;
        // Refused by the kernel: an error if asked for here, a warning if
        // asked for by the environment.
        let (want_realtime, explicit) = match self.sysmon_realtime {
            Some(on) => (on, true),
            None => (env_flag("GOSCHED_SYSMONRT")?.unwrap_or(false), false),
        };
        let sysmon_realtime = want_realtime
            && match crate::os::slice::realtime_allowed() {
                Ok(()) => true,
                Err(e) => {
                    let why = format!(
                        "SCHED_FIFO refused ({e}): needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1"
                    );
                    if explicit {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("sysmon_realtime(true): {why}"),
                        ));
                    }
                    crate::diag::stderr_line(format_args!(
                        "gosched: GOSCHED_SYSMONRT=1 ignored: {why}"
                    ));
                    false
                }
            };
        let sysmon_nice = match self.sysmon_nice {
            Some(n) if !(-20..=0).contains(&n) => {
                return Err(invalid(format!(
                    "sysmon_nice({n}): expected -20 ..= 0 (0: sysmon asks for nothing)"
                )))
            }
            Some(n) => n,
            None => match env("GOSCHED_SYSMONNICE")? {
                Some(v) if !v.trim().is_empty() => match v.trim().parse::<i32>() {
                    Ok(n) if (-20..=0).contains(&n) => n,
                    _ => {
                        return Err(invalid(format!(
                            "GOSCHED_SYSMONNICE={v:?}: expected an integer in -20 ..= 0"
                        )))
                    }
                },
                _ => DEFAULT_SYSMON_NICE,
            },
        };
        let max_threads = match self.max_threads {
            Some(n) if n < 2 => {
                return Err(invalid(format!(
                    "max_threads({n}): a runtime needs at least 2 threads (sysmon and one worker)"
                )))
            }
            Some(n) => n,
            None => match env("GOSCHED_MAXTHREADS")? {
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) if n >= 2 => n,
                    _ => {
                        return Err(invalid(format!(
                            "GOSCHED_MAXTHREADS={v:?}: expected an integer of at least 2"
                        )))
                    }
                },
                None => DEFAULT_MAX_THREADS,
            },
        };
        if max_threads < min_threads(procs) {
            return Err(too_few_threads(procs, max_threads));
        }
        Ok(Config {
            procs,
            stack_size,
            quantum,
            async_preempt,
            mode,
            schedtrace,
            scheddetail,
            max_threads,
            sigquit_dump,
            wakeup_preempt,
            sysmon_realtime,
            sysmon_nice,
            slice_timer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10ms"), Some(Duration::from_millis(10)));
        assert_eq!(parse_duration("500us"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("500µs"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("7"), Some(Duration::from_millis(7)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            parse_duration("1000000000000000000000s"),
            Some(Duration::from_nanos(u64::MAX))
        );
        assert_eq!(
            parse_duration("1000000000s"),
            Some(Duration::from_secs(1_000_000_000))
        );
    }
}
