//! `Stats`: a snapshot of a runtime's counters (`Runtime::stats`,
//! `gosched::stats`).

use crate::sched::RuntimeLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::builder::PreemptMode;
use crate::sched::{self, Shared};

/// A snapshot of a runtime's counters ([`Runtime::stats`](crate::Runtime::stats)).
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
    /// Goroutines alive now (spawned and not finished). A goroutine
    /// counts until its thread has switched away from it, a moment after
    /// it delivered its result: right after `join` or `block_on` returns
    /// it may still count (as with Go's `runtime.NumGoroutine`).
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
    /// The thread limit ([`Builder::max_threads`](crate::Builder::max_threads)).
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
    /// Whether wake-up preemption is on ([`Builder::wakeup_preempt`](crate::Builder::wakeup_preempt)).
    pub wakeup_preempt: bool,
    /// Whether sysmon runs at real-time priority
    /// ([`Builder::sysmon_realtime`](crate::Builder::sysmon_realtime)).
    pub sysmon_realtime: bool,
    /// sysmon's nice value: what it got of
    /// [`Builder::sysmon_nice`](crate::Builder::sysmon_nice) (0 before
    /// sysmon starts, or where lowering it is not permitted).
    pub sysmon_nice: i32,
    /// Wake-up preemption requests made (each asks one busy P to yield).
    pub preempt_wakeup: u64,
    /// Preemption requests made by slice timers rather than by sysmon: a
    /// goroutine that used its whole previous slice has its next one ended
    /// by a timer of its own thread's (`GOSCHED_SLICETIMEROFF=1`: none).
    pub preempt_timer: u64,
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
    ///     // One wake-up in 64 of each goroutine is sampled; 1 ms sleeps
    ///     // park every time (a 10 µs one may be over before it parks).
    ///     for _ in 0..200 {
    ///         gosched::sleep(std::time::Duration::from_millis(1));
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
        // One lock at a time, each released here (a guard in the literal
        // below would live until the end of the function, two at once).
        let threads = self.allm.rt_lock().len();
        let idle_threads = self.midle.rt_lock().len();
        // Read once: `set_procs` may change it meanwhile, and one snapshot
        // must agree with itself (`local_runqueues` is indexed by P).
        let procs = self.procs();
        Stats {
            goroutines: self.goroutines(),
            spawned: self.spawned(),
            threads,
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
            idle_threads,
            in_syscall: self.in_blocking.load(Ordering::Relaxed),
            global_runqueue: self.global_queue_len(),
            local_runqueues: (0..procs).map(|p| self.ps[p].runq.len()).collect(),
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
            procs,
            max_threads: self.cfg.max_threads,
            // A shrink counts the Ps it drops as idle until it destroys them.
            idle_procs: self.npidle.load(Ordering::Relaxed).min(procs),
            stack_size: self.stacks.stack_size(),
            quantum: self.cfg.quantum,
            async_preempt: self.cfg.async_preempt,
            wakeup_preempt: self.cfg.wakeup_preempt,
            sysmon_realtime: self.cfg.sysmon_realtime,
            sysmon_nice: self.sysmon_nice.load(Ordering::Relaxed),
            preempt_wakeup: self.counters.preempt_wakeup.load(Ordering::Relaxed),
            preempt_timer: self.counters.preempt_timer.load(Ordering::Relaxed),
            mode: self.cfg.mode,
            timers: self.timers.pending(),
        }
    }
}
