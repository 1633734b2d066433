//! `Shared`: the state of one runtime (Go's `sched`, `allp` and `allm`),
//! its construction, and the runtime clock.

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle as ThreadHandle;
use std::time::Instant;

use crossbeam_deque::Injector;

use super::*;
use crate::arch;
use crate::builder::Config;
use crate::os::note::Note;
use crate::sched::g::GRef;
use crate::sched::timer::Timers;
use crate::stack::StackPool;

/// Counters of things that happen outside any P.
#[derive(Default)]
pub(crate) struct GlobalCounters {
    pub(crate) preempt_coop: AtomicU64,
    pub(crate) preempt_async: AtomicU64,
    pub(crate) refused: [AtomicU64; crate::preempt::REFUSAL_REASONS],
    pub(crate) retakes: AtomicU64,
    pub(crate) blocked_handoffs: AtomicU64,
    /// Wake-up preemption requests (`wakeup_preempt`).
    pub(crate) preempt_wakeup: AtomicU64,
    /// Preemption requests made by slice timers (`preempt::slice_timer`),
    /// not by sysmon; written by the signal handler.
    pub(crate) preempt_timer: AtomicU64,
    /// Slices sysmon reported starved (every preemption refused for
    /// `starved_quanta` quanta); written by sysmon.
    pub(crate) starved: AtomicU64,
}

/// The state of one runtime (Go's `sched` plus `allp` and `allm`).
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) epoch: Instant,
    /// TSC reading at `epoch`, when the TSC is invariant (see `slice_clock`).
    pub(crate) tsc_epoch: Option<u64>,
    /// CPUs this process may run on, when the runtime was built
    /// (`available_parallelism`: affinity and cgroup quota): with fewer
    /// busy Ps, sysmon has a CPU of its own and slice timers are not used
    /// (`preempt::slice_timer`).
    #[cfg(feature = "preempt-signal")]
    pub(crate) cpus: usize,
    pub(crate) injector: Injector<GRef>,
    /// Goroutines time-sliced while `affine_parked_cap()` Ms were parked
    /// with preempted ThreadAffine goroutines: those pin their thread, and
    /// none of them is new, so `find_runnable` rotates them before it
    /// starts anything that could pin another thread. (Below the cap they
    /// queue in `injector`, in Go's order.)
    pub(crate) sliced: Injector<GRef>,
    /// Goroutines woken from outside any P (a timer fired by sysmon or an
    /// idle M, a plain thread's send, a goroutine in `blocking`) or by a
    /// P's scheduler (the timers it fires: see `ready_in`), and those
    /// spawned from outside (`Runtime::block_on`, `Runtime::spawn`): Go puts
    /// them in the waker's `runnext`, where they run before the queued
    /// crowd; with no P to hold them, this queue is checked first by every
    /// P instead (see `find_runnable`), so a woken goroutine never waits
    /// behind preempted CPU hogs in `injector`.
    pub(crate) woken: Injector<GRef>,
    /// Every P, `MAX_PROCS` of them; only `ps[..gomaxprocs]` are live.
    pub(crate) ps: Box<[P]>,
    /// GOMAXPROCS: the number of live Ps. Changed only by `procresize`,
    /// with the `pidle` lock held (so `pidleput` and `procresize` agree on
    /// which Ps are live); read anywhere (Relaxed where a stale value only
    /// delays a P's retirement by one scheduling round).
    pub(crate) gomaxprocs: AtomicUsize,
    /// The most Ps ever live (`ps[..ps_used]` may hold counts worth
    /// summing). Raised by `procresize` only.
    pub(crate) ps_used: AtomicUsize,
    /// A `procresize` is under way (serialises them; never held across a
    /// park, so it is a flag, not a lock).
    pub(crate) resizing: AtomicBool,
    /// Idle live Ps. Its lock also orders changes of `gomaxprocs`.
    pub(crate) pidle: Mutex<Vec<usize>>,
    /// How many Ps are idle. Counts every P whose status says `P_IDLE`
    /// (and may count one a moment before or after it says so): it is
    /// raised before a P's status turns idle and lowered after it turns
    /// busy. sysmon relies on that: a P it sees idle while `npidle` says
    /// some P is busy sends it round its loop again at once. The other
    /// order let sysmon, at nice -20 on the same CPU as the M between the
    /// two stores, spin for 9 ms while that M waited for the CPU (bimodal
    /// server, 1 CPU, traced).
    pub(crate) npidle: AtomicUsize,
    pub(crate) nmspinning: AtomicUsize,
    pub(crate) midle: Mutex<Vec<Arc<M>>>,
    pub(crate) allm: Mutex<Vec<Arc<M>>>,
    pub(crate) threads: Mutex<Vec<ThreadHandle<()>>>,
    pub(crate) timers: Timers,
    /// The idle M sleeping until the next timer, if any: the one M that
    /// blocks in the driver's poller (`crate::driver`). Wake it with
    /// `wake_m`.
    pub(crate) timer_m: AtomicPtr<M>,
    /// The sleeper (`timer_m`) woke for a due timer and fires timers,
    /// keeping its role (`G0::fire_as_sleeper`): `add_timer` need not wake
    /// anyone for an earlier deadline, and sets `sleeper_skipped` instead.
    pub(crate) sleeper_firing: AtomicBool,
    /// `add_timer` skipped its wake-up while the sleeper was firing.
    pub(crate) sleeper_skipped: AtomicBool,
    /// The driver: the OS poller idle Ms wait in, and the netpoller.
    pub(crate) driver: Arc<crate::driver::Driver>,
    pub(crate) stacks: StackPool,
    pub(crate) gfree: Mutex<Vec<GRef>>,
    pub(crate) allg: Mutex<Vec<GRef>>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) counters: GlobalCounters,
    pub(crate) sysmon_note: Note,
    /// 0, or the time (ns since the epoch; u64::MAX: never) until which
    /// sysmon sleeps because every P is idle. Written by sysmon; read by
    /// `note_busy` (SeqCst, a Dekker pair with the idle check).
    pub(crate) sysmon_idle_until: AtomicU64,
    /// While a woken goroutine waits for a busy P: the time (ns since the
    /// epoch) by which sysmon looks at wake-up preemption again; u64::MAX
    /// when it is not watching. sysmon stores u64::MAX before it checks
    /// `wakeup_waiting` (SeqCst, a Dekker pair with `ready`'s push and
    /// fence), so a waker that reads any other value can leave the next
    /// look to sysmon instead of waking it (`Shared::sysmon_looks_within`).
    pub(crate) sysmon_wakeup_look: AtomicU64,
    /// The nice value sysmon got (`Stats::sysmon_nice`).
    pub(crate) sysmon_nice: AtomicI32,
    /// sysmon's looks in a row that found every P's slice younger than the
    /// wake-up granularity while the Ps took woken goroutines (its backoff;
    /// see `Shared::wakeup_preempt`).
    pub(crate) wakeup_deferrals: AtomicU32,
    /// `woken_taken` at sysmon's last such look (`wakeup::NO_SAMPLE`: none
    /// since the last request). sysmon only.
    pub(crate) wakeup_deferral_seen: AtomicU64,
    /// Goroutines taken from `woken` so far (`find_runnable`): sysmon's
    /// measure of whether the Ps serve the woken goroutines on their own.
    pub(crate) woken_taken: AtomicU64,
    /// Goroutines blocked in `blocking()` right now.
    pub(crate) in_blocking: AtomicUsize,
    /// Ms with a `pless_run` set: their goroutine may run on without a P
    /// (`preempt::sysmon::preempt_pless`; sysmon looks at every M only while this
    /// is non-zero).
    pub(crate) npless: AtomicUsize,
    /// Ms parked with a goroutine that was preempted asynchronously in
    /// ThreadAffine mode and waits in a run queue to resume on them.
    /// Written by those Ms (`stoplockedm`); read by `find_runnable` (Relaxed:
    /// a scheduling hint).
    pub(crate) affine_parked: AtomicUsize,
    /// Of those, the Ms whose goroutine was preempted for a wake-up
    /// (`G::wakeup_kept`): wake-up preemption sends no more signals in
    /// ThreadAffine mode while `wakeup_signal_allowed` says so.
    pub(crate) wakeup_parked: AtomicUsize,
    /// Spawns from outside any P of this runtime (plain threads).
    pub(crate) counters_spawned_outside: AtomicU64,
    /// Exits on an M that had lost its P.
    pub(crate) counters_exited_outside: AtomicU64,
    /// Goroutines that have published their result but not yet exited
    /// (`sched::note_finishing`): `Runtime::drop` waits for them.
    pub(crate) finishing: AtomicUsize,
    /// Weak self-reference so Gs can hold the runtime alive.
    pub(crate) me: std::sync::Weak<Shared>,
}

/// Runtimes alive in the process (the deadlock check runs only with one).
pub(crate) static LIVE_RUNTIMES: AtomicUsize = AtomicUsize::new(0);

impl Shared {
    pub(crate) fn new(cfg: Config) -> std::io::Result<Arc<Shared>> {
        // Before any M can claim a P (see "Ownership of a P").
        crate::os::membarrier::init();
        let stacks = StackPool::new(cfg.stack_size)?;
        // Every P a `set_procs` may ask for exists from the start (Go grows
        // `allp` under stop-the-world instead; a fixed array lets sysmon,
        // thieves and `ready` index it without a lock). Ps at or above
        // `gomaxprocs` are dead: about 1 KiB each, never scheduled.
        let mut ps = Vec::with_capacity(crate::builder::MAX_PROCS);
        for id in 0..crate::builder::MAX_PROCS {
            ps.push(P {
                id,
                status: AtomicU64::new(if id < cfg.procs { P_IDLE } else { P_DEAD }),
                runq: super::runq::RunQueue::new(),
                schedtick: AtomicU64::new(0),
                wakeup_tick: AtomicU64::new(wakeup::NO_WAKEUP),
                kept_tick: AtomicU64::new(wakeup::NO_WAKEUP),
                kept_at: AtomicU64::new(0),
                wakeup_asked: AtomicU64::new(0),
                wakeup_retries: AtomicU32::new(0),
                wakeup_cpu: AtomicU64::new(wakeup::NO_SAMPLE),
                wakeup_signalled: AtomicBool::new(false),
                slice_start: AtomicU64::new(0),
                timed_tick: AtomicU64::new(NO_TIMER),
                syscalltick: AtomicU64::new(0),
                syscall_start: AtomicU64::new(0),
                m: AtomicPtr::new(ptr::null_mut()),
                counters: PCounters::default(),
                local: UnsafeCell::new(PLocal {
                    gfree: Vec::new(),
                    stacks: Vec::new(),
                    rng: super::rand::seed(),
                    goid_next: 0,
                    goid_end: 0,
                }),
            });
        }
        let procs = cfg.procs;
        let driver = Arc::new(crate::driver::Driver::new()?);
        Ok(Arc::new_cyclic(|me| Shared {
            cfg,
            tsc_epoch: arch::ticks_are_time().then(arch::ticks),
            #[cfg(feature = "preempt-signal")]
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            epoch: Instant::now(),
            injector: Injector::new(),
            sliced: Injector::new(),
            woken: Injector::new(),
            ps: ps.into_boxed_slice(),
            gomaxprocs: AtomicUsize::new(procs),
            ps_used: AtomicUsize::new(procs),
            resizing: AtomicBool::new(false),
            pidle: Mutex::new((0..procs).rev().collect()),
            npidle: AtomicUsize::new(procs),
            nmspinning: AtomicUsize::new(0),
            midle: Mutex::new(Vec::new()),
            allm: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            timers: Timers::new(),
            timer_m: AtomicPtr::new(ptr::null_mut()),
            sleeper_firing: AtomicBool::new(false),
            sleeper_skipped: AtomicBool::new(false),
            driver,
            stacks,
            gfree: Mutex::new(Vec::new()),
            allg: Mutex::new(Vec::new()),
            shutdown: AtomicBool::new(false),
            counters: GlobalCounters::default(),
            sysmon_note: Note::new(),
            sysmon_idle_until: AtomicU64::new(0),
            sysmon_wakeup_look: AtomicU64::new(u64::MAX),
            sysmon_nice: AtomicI32::new(0),
            wakeup_deferrals: AtomicU32::new(0),
            wakeup_deferral_seen: AtomicU64::new(wakeup::NO_SAMPLE),
            woken_taken: AtomicU64::new(0),
            in_blocking: AtomicUsize::new(0),
            npless: AtomicUsize::new(0),
            affine_parked: AtomicUsize::new(0),
            wakeup_parked: AtomicUsize::new(0),
            counters_spawned_outside: AtomicU64::new(0),
            counters_exited_outside: AtomicU64::new(0),
            finishing: AtomicUsize::new(0),
            me: me.clone(),
        }))
    }

    /// A timestamp for `P::slice_start`: TSC ticks when they measure time,
    /// else `nanotime`.
    #[inline]
    pub(crate) fn slice_clock(&self) -> u64 {
        match self.tsc_epoch {
            Some(_) => arch::ticks(),
            None => self.nanotime(),
        }
    }

    /// Converts a `slice_clock` stamp to ns since the epoch (sysmon). The
    /// tick rate is measured over the runtime's life so far: (ticks, ns)
    /// at the epoch and now.
    pub(crate) fn slice_start_ns(&self, stamp: u64) -> u64 {
        let Some(t0) = self.tsc_epoch else {
            return stamp;
        };
        let (now_ns, now_t) = (self.nanotime(), arch::ticks());
        if stamp < t0 || now_t <= t0 || now_ns == 0 {
            return 0;
        }
        let ns_per_tick = now_ns as f64 / (now_t - t0) as f64;
        let ago = now_t.saturating_sub(stamp) as f64 * ns_per_tick;
        now_ns.saturating_sub(ago as u64)
    }

    /// Nanoseconds per `slice_clock` unit, measured over the runtime's
    /// life so far (1 without an invariant TSC). A clock read: not for hot
    /// paths.
    pub(crate) fn ns_per_clock_unit(&self) -> f64 {
        let Some(t0) = self.tsc_epoch else {
            return 1.0;
        };
        let (now_ns, now_t) = (self.nanotime(), arch::ticks());
        if now_t <= t0 || now_ns == 0 {
            return 1.0;
        }
        now_ns as f64 / (now_t - t0) as f64
    }

    /// Nanoseconds since the runtime's epoch.
    pub(crate) fn nanotime(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(super) fn instant_to_nanos(&self, t: Instant) -> u64 {
        crate::sched::timer::nanos_since(self.epoch, t)
    }
}

/// One wake-up in this many of each goroutine is timed for the
/// scheduling-latency histogram. Go's `gTrackingPeriod` is 8; a time-stamp
/// counter read costs tens of ns on a VM, and at 8 the two reads per sample
/// cost the 1-P channel ping-pong ~5 %, at 64 under 1 %.
pub(crate) const SCHED_LATENCY_SAMPLE: u32 = 64;

/// Buckets of the scheduling-latency histogram, in `slice_clock` units
/// (TSC ticks, or ns without an invariant TSC), so that recording one is a
/// counter read, a subtraction and a bit scan (converting to ns on the
/// spot, a clock read and a division, cost the ping-pong path ~7 %): bucket
/// 0 holds waits under 256 units, bucket `i` those in [2^(i+7), 2^(i+8)),
/// the last one everything from 2^38 up. `stats()` converts the bounds.
pub(crate) const SCHED_LATENCY_BUCKETS: usize = 32;

/// The histogram bucket of a wait of `units` `slice_clock` units.
pub(crate) fn latency_bucket(units: u64) -> usize {
    let bits = (u64::BITS - units.leading_zeros()) as usize;
    bits.saturating_sub(8).min(SCHED_LATENCY_BUCKETS - 1)
}

/// `g` is about to run on P `p` (owned or claimed by the caller): if its
/// wake-up was sampled, record how long it waited (one `Cell` read when not).
#[inline]
pub(crate) fn note_running(sh: &Shared, p: &P, g: GRef) {
    let at = g.runnable_at.replace(0);
    if at != 0 {
        record_sched_latency(sh, p, at);
    }
}

#[cold]
#[inline(never)]
fn record_sched_latency(sh: &Shared, p: &P, runnable_at: u64) {
    let units = sh.slice_clock().saturating_sub(runnable_at);
    bump(&p.counters.sched_latency[latency_bucket(units)]);
}

/// `P::slice_start` of a slice whose start sysmon dates itself: the time
/// it first sees the slice's `schedtick` (Go's `sysmon` dates every slice
/// that way). A slice so dated may run up to one sysmon sleep longer than
/// the quantum before it is preempted.
pub(crate) const UNSTAMPED: u64 = u64::MAX;

/// `P::timed_tick` before any slice of the P was timed.
pub(crate) const NO_TIMER: u64 = u64::MAX;
