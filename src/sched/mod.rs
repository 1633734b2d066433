//! The goroutine scheduler.
//!
//! # Glossary (Go's words, proc.go)
//!
//! - **G**, a goroutine: a stack, a saved context, park state ([`crate::sched::g`]).
//! - **M**, a worker OS thread. It runs the scheduler loop on its own thread
//!   stack ("g0") and switches into Gs; a G switches back to g0 to yield,
//!   park or exit, so the scheduler never runs on a goroutine's stack.
//! - **P**, a processor: the right to run goroutines. `procs` of them. Each
//!   has a FIFO local run queue (a crossbeam `Worker`; thieves hold its
//!   `Stealer`), a `runnext` slot, a `schedtick`, and caches of free Gs and
//!   stacks.
//! - **sched** ([`Shared`]): the global run queue (an `Injector`), the idle P
//!   and idle M lists, the spinning-M count, the timers.
//!
//! # Finding work (`find_runnable`, Go's findRunnable)
//!
//! 1. Every 61st slice take one G from the global queue first, so the global
//!    queue cannot starve behind a busy local one.
//! 2. `runnext` (the G it names inherits the current time slice), then the
//!    local queue, then a batch from the global queue, then due timers.
//! 3. Ready I/O: a non-blocking poll of the netpoller, only while
//!    goroutines wait on it (`crate::driver`).
//! 4. Steal: at most (busy Ps)/2 Ms spin; a spinning M visits every other P
//!    in a random order (random start, step coprime to the count) and takes
//!    half of a victim's queue, its `runnext` only on the last of 4 passes.
//! 5. Give up: release the P, stop spinning, re-check every source, park
//!    (one parked M waits in the driver: timers, I/O and wake-ups).
//!
//! # Spinning and wake-ups (Go's "Worker thread parking/unparking")
//!
//! The problem: enough Ms must be awake to use every P that has work, yet
//! idle Ms must sleep (an idle runtime uses no CPU), and a G must never sit
//! in a queue while all Ms sleep. The protocol:
//!
//! 1. A submitter (spawn, ready, a timer) enqueues the G, then (SeqCst
//!    fence) calls `wakep`, which starts one spinning M if a P is idle and
//!    no M is already spinning.
//! 2. A spinning M that finds work stops spinning and calls `wakep`, so a
//!    successor keeps looking (parallelism ramps up one M at a time, without
//!    a thundering herd).
//! 3. The last spinning M to give up decrements the count, (SeqCst fence)
//!    re-checks every queue, and if anything is there takes a P back and
//!    spins again. Steps 1 and 3 are a Dekker pair: either the submitter sees
//!    no spinning M and wakes one, or the M sees the work.
//!
//! Rejected: waking an M on every ready (thundering herd); a central run
//! queue only (contention); handing a G directly to a woken thread (the
//! woken thread may be slow to run while others are idle).
//!
//! # Ownership of a P
//!
//! A P's local data (its `Worker`, caches) is touched only by the M that
//! owns it, and only on g0. Ownership is the P's `status` word, so that
//! sysmon can take a P from an M whose goroutine sits in a blocking call or
//! is blocked in the kernel, while that M is not looking:
//!
//! - `SCHED(m)`: M `m` is on g0 using the P.
//! - `USER(m)`: M `m` is running a goroutine; g0 is not touching the P.
//!   g0 reclaims it with a CAS `USER(m) -> SCHED(m)` when the G switches
//!   back; sysmon retakes it with a CAS `USER(m) -> HANDOFF`. The running
//!   goroutine itself may touch the P's local data for a moment (to queue a
//!   goroutine it readies or spawns, or itself when it yields) under a
//!   *claim*: it raises its M's `claiming` flag, then checks that the status
//!   is still `USER(m)`. A retake, after its CAS, waits until that flag is
//!   down. The two form a Dekker pair whose fences are asymmetric
//!   (`crate::os::membarrier`): the goroutine's side, taken millions of times a
//!   second, costs a store and a load; sysmon's, taken when a thread is
//!   stuck in the kernel, a `membarrier` system call.
//! - `SYSCALL(m)`: the goroutine is in `blocking()`; it takes the P back
//!   with a CAS, or sysmon retakes it.
//! - `HANDOFF`: in transit to another M (via its `nextp`).
//! - `IDLE`: on the idle list.
//!
//! Go keeps Ps in a global `allp` array for the same reason; we do too, and
//! hand Ps between Ms by index.

use std::cell::{Cell, UnsafeCell};
use std::ptr::{self, NonNull};
use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle as ThreadHandle;
use std::time::Instant;

use crossbeam_deque::{Injector, Stealer, Worker};

use crate::arch;
use crate::builder::Config;
use crate::os::note::Note;
use crate::sched::g::{GRef, EMPTY, G, NOTIFIED};
use crate::sched::timer::{Task, TimerId, Timers};
use crate::stack::{Stack, StackPool};

/// Every `GLOBAL_CHECK`-th slice a P looks at the global queue first (Go: 61,
/// a prime, so it does not beat in step with application patterns).
const GLOBAL_CHECK: u64 = 61;

/// Passes over all Ps a spinning M makes before giving up (Go: stealTries).
const STEAL_TRIES: usize = 4;

/// Free Gs a P keeps before returning half to the global list.
pub(crate) const G_CACHE: usize = 64;

/// Free Gs a P takes from the global list at once.
const G_BATCH: usize = 32;

/// Goroutine ids a P takes from the global counter at once (Go's
/// `_GoidCacheBatch`).
const GOID_BATCH: u64 = 16;

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

/// How long a thief waits before taking `runnext` from a running P (Go's
/// `usleep(3)` in `runqgrab`).
const RUNNEXT_GRACE: std::time::Duration = std::time::Duration::from_micros(3);

// P status words: (m id << 8) | state.
pub(crate) const P_IDLE: u64 = 0;
pub(crate) const P_HANDOFF: u64 = 1;
pub(crate) const P_SCHED: u64 = 2;
pub(crate) const P_USER: u64 = 3;
pub(crate) const P_SYSCALL: u64 = 4;
/// Beyond the current GOMAXPROCS (`Shared::gomaxprocs`): owned by nobody,
/// its queues empty, until `set_procs` brings it back (see `procresize`).
pub(crate) const P_DEAD: u64 = 5;

pub(crate) fn pstatus(m: &M, state: u64) -> u64 {
    ((m.id as u64) << 8) | state
}

/// Why a goroutine switched to g0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    None,
    Yield,
    Park,
    Exit,
    CoopPreempt,
    AsyncPreempt,
    /// The goroutine lost its P in `blocking()` and needs one back.
    ExitSyscall,
}

/// Per-P counters, written only by the owning M (Relaxed), summed by
/// `stats()`.
#[derive(Default)]
pub(crate) struct PCounters {
    pub(crate) spawned: AtomicU64,
    pub(crate) exited: AtomicU64,
    pub(crate) switches: AtomicU64,
    pub(crate) steals: AtomicU64,
    pub(crate) parks: AtomicU64,
    /// Sampled wake-up-to-running latencies of goroutines this P ran
    /// (`latency_bucket`).
    pub(crate) sched_latency: [AtomicU64; SCHED_LATENCY_BUCKETS],
}

pub(crate) fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// A processor. See the module docs for the `status` protocol.
pub(crate) struct P {
    pub(crate) id: usize,
    /// Ownership word (module docs). CAS by the owner M and by sysmon.
    pub(crate) status: AtomicU64,
    pub(crate) stealer: Stealer<GRef>,
    /// A G to run next, inheriting the time slice. Set by the owning M or a
    /// goroutine running on it (swap); taken by the owner (swap) or a thief
    /// (CAS), AcqRel.
    pub(crate) runnext: AtomicPtr<G>,
    /// A goroutine that yielded while it was the only other runnable one
    /// on this P: the local queue's tail, kept out of the `Worker` so that
    /// a yield between two goroutines costs no atomic read-modify-write
    /// (`Worker::pop` is one). Runs before the `Worker`'s goroutines (they
    /// came later). Not stealable: it waits at most until the running
    /// goroutine yields, parks or is preempted (sysmon counts it as
    /// waiting work), or its P is handed on with it. Only the P's owner
    /// (g0 in SCHED, or a goroutine holding a claim) reads or writes it,
    /// with plain Relaxed accesses; sysmon and `schedtrace` only peek.
    pub(crate) yielded: AtomicPtr<G>,
    /// Fresh slices started (Go's schedtick). Written by the owner, read by
    /// sysmon (Relaxed; `slice_start` is written just before it).
    pub(crate) schedtick: AtomicU64,
    /// When the current slice started, in `Shared::slice_clock` units
    /// (TSC ticks where the TSC is invariant, else ns since the epoch):
    /// stamped on every fresh slice, so it must be cheap. Owner writes,
    /// sysmon reads and converts (`Shared::slice_start_ns`).
    /// `UNSTAMPED` after a direct yield (see `yield_direct`).
    pub(crate) slice_start: AtomicU64,
    /// The `schedtick` of the slice whose goroutine was asked to yield for a
    /// wake-up (`wakeup::NO_WAKEUP`: none). Written by `wakeup_preempt`
    /// (any thread, CAS), read by the owner in `Sched::after`.
    pub(crate) wakeup_tick: AtomicU64,
    /// Blocking calls entered; written by the goroutine in `blocking`.
    pub(crate) syscalltick: AtomicU64,
    pub(crate) syscall_start: AtomicU64,
    /// The M that owns the P (null when idle). Read by sysmon.
    pub(crate) m: AtomicPtr<M>,
    pub(crate) counters: PCounters,
    pub(crate) local: UnsafeCell<PLocal>,
}

/// The part of a P only its owner touches (on g0).
pub(crate) struct PLocal {
    pub(crate) worker: Worker<GRef>,
    pub(crate) gfree: Vec<GRef>,
    pub(crate) stacks: Vec<Stack>,
    pub(crate) rng: u64,
    /// Next goroutine id of this P's batch, and the batch end.
    pub(crate) goid_next: u64,
    pub(crate) goid_end: u64,
}

// SAFETY: `local` is accessed only by the M whose id is in `status` (state
// SCHED), handed over with Release/Acquire on `status`/`nextp`; every other
// field is atomic or immutable.
unsafe impl Sync for P {}

/// A worker thread.
pub(crate) struct M {
    pub(crate) id: usize,
    pub(crate) shared: *const Shared,
    /// Kernel thread id, for tgkill and /proc. Written once at start.
    pub(crate) tid: AtomicI32,
    pub(crate) note: Note,
    /// A P handed to this M (index + 1; 0 = none). Written by the M that
    /// hands it off before `note.wake()` (Release via the note), taken by
    /// this M after waking.
    pub(crate) nextp: AtomicUsize,
    /// Started as a spinning M (set with `nextp`, read after waking).
    pub(crate) spinning: AtomicBool,
    /// Another M restricted this M's thread to one CPU for a hand-off
    /// (`Shared::pin_to_this_cpu`); this M undoes it when it wakes.
    pub(crate) pinned: AtomicBool,
    /// This M's own CPU affinity, read when it started (owner thread); the
    /// mask `unpin` restores. None if it could not be read.
    pub(crate) cpu_mask: Cell<Option<libc::cpu_set_t>>,
    /// `cpu_mask` is known, so pinning this M can be undone (set once at
    /// start, read by the M that pins it).
    pub(crate) unpinnable: AtomicBool,
    /// A goroutine on this M holds a claim on its P (see "Ownership of a
    /// P"). Written only by this M's thread; read by sysmon's retake.
    pub(crate) claiming: AtomicBool,
    /// This M's own address, read GS-relative by `this_m`. Set in
    /// `mstart`.
    pub(crate) this: AtomicPtr<M>,
    /// The goroutine running on this M (null on g0). Written by this M;
    /// read by sysmon and this thread's signal handler.
    pub(crate) curg: AtomicPtr<G>,
    /// The goroutine locked to this M (owner thread only).
    pub(crate) locked_g: Cell<Option<GRef>>,
    /// Saved g0 stack pointer while a goroutine runs (owner thread).
    pub(crate) g0_sp: UnsafeCell<usize>,
    /// The P this M holds (owner thread).
    pub(crate) p: Cell<Option<usize>>,
    /// Set when this M takes a P: its next `execute` starts a fresh slice
    /// whatever the goroutine inherits (owner thread).
    pub(crate) new_p: Cell<bool>,
    /// The P a direct yield on this M claimed, for the goroutine it
    /// switches to (`requeue_yielder`; owner thread).
    pub(crate) yield_p: Cell<*const P>,
    /// Why the current goroutine switched to g0 (owner thread).
    pub(crate) reason: Cell<Reason>,
    /// 1 while a preemption signal is in flight (Go's signalPending): set
    /// by sysmon's CAS before tgkill, cleared by the handler.
    pub(crate) signal_pending: AtomicBool,
    /// Asynchronous preemption attempts the handler refused on this M.
    pub(crate) refused: AtomicU64,
    /// The signal mask this M runs goroutines with (safe-point rule 5).
    pub(crate) sigmask: UnsafeCell<libc::sigset_t>,
}

// SAFETY: Cell/UnsafeCell fields are touched only by the M's own thread
// (and its signal handler, which runs on that thread); the rest are atomics.
unsafe impl Sync for M {}
// SAFETY: as above.
unsafe impl Send for M {}

impl M {
    /// The runtime of this M (async-signal-safe: a plain read).
    pub(crate) fn shared_ref(&self) -> &Shared {
        // SAFETY: Shared outlives every M (the M threads hold an Arc).
        unsafe { &*self.shared }
    }

    fn take_nextp(&self) -> Option<usize> {
        match self.nextp.swap(0, Ordering::Acquire) {
            0 => None,
            n => Some(n - 1),
        }
    }
}

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
    pub(crate) injector: Injector<GRef>,
    /// Goroutines woken from outside any P (a timer fired by sysmon or an
    /// idle M, a plain thread's send, a goroutine in `blocking`): Go puts
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
    /// Goroutines blocked in `blocking()` right now.
    pub(crate) in_blocking: AtomicUsize,
    /// Ms parked with a goroutine that was preempted asynchronously in
    /// ThreadAffine mode and waits in a run queue to resume on them.
    /// Written by those Ms (`stoplockedm`); read by `find_runnable` (Relaxed:
    /// a scheduling hint).
    pub(crate) affine_parked: AtomicUsize,
    /// Spawns from outside any P of this runtime (plain threads).
    pub(crate) counters_spawned_outside: AtomicU64,
    /// Exits on an M that had lost its P.
    pub(crate) counters_exited_outside: AtomicU64,
    /// Weak self-reference so Gs can hold the runtime alive.
    pub(crate) me: std::sync::Weak<Shared>,
}

thread_local! {
    /// The M this thread is (null on a plain thread). Set once when the M
    /// starts. Read it only through `cur_m` (see there).
    static CUR_M: Cell<*const M> = const { Cell::new(ptr::null()) };
}

/// The calling thread's M, or null on a plain thread.
///
/// The M comes from the GS-relative `M::this`, not from `CUR_M`: LLVM may
/// keep a thread-local's address in a register across a call, and a
/// goroutine can resume on another thread after any switch (see
/// `current_g`); the thread-local only tells plain threads from Ms.
#[inline]
pub(crate) fn cur_m() -> *const M {
    if !on_m() {
        return ptr::null();
    }
    this_m()
}

/// Is the calling thread an M? (A thread-local: the answer never changes
/// for a thread, so a stale read after a migration is still right.)
#[inline]
fn on_m() -> bool {
    !CUR_M.with(|c| c.get()).is_null()
}

/// The calling M, for code that runs on an M (a goroutine or g0): one
/// GS-relative load (see `current_g`).
#[inline]
pub(crate) fn this_m() -> *const M {
    // SAFETY: callers run on an M thread, whose GS base `mstart` pointed
    // at its live M; `this` is a pointer-sized field of M.
    unsafe { arch::thread_base_word::<{ std::mem::offset_of!(M, this) }>() as *const M }
}

/// The running goroutine, if the caller is one.
///
/// Migration-safe and cheap (every runtime entry point calls it, through
/// `NoPreempt`). Asynchronous preemption in Migrate mode may stop us
/// between any two instructions and resume us on another thread, so "read
/// this thread's M, then read its `curg`" could read an M that now runs
/// some other goroutine. Instead each M points its thread's GS base at
/// itself (`mstart`), and `curg` is read GS-relative: one instruction,
/// which reads the `curg` of whichever thread executes it, and that is
/// the thread running us. (Go keeps `g` in a register for the same
/// reason; it never async-preempts runtime code at all, which we cannot
/// promise for the std functions our runtime code calls.)
///
/// The thread-local read before it only tells a plain thread from an M:
/// a stale value (from the thread we ran on before a migration) is still
/// non-null, because goroutines run only on Ms.
#[inline]
pub(crate) fn current_g() -> Option<GRef> {
    if !on_m() {
        // A plain thread: goroutines run only on Ms.
        return None;
    }
    // SAFETY: we run on an M thread (CUR_M is set only on Ms, after
    // `mstart` pointed GS at the live M, and cleared before it is reset);
    // `curg` is a pointer-sized atomic inside M.
    let g = unsafe { arch::thread_base_word::<{ std::mem::offset_of!(M, curg) }>() };
    let g = NonNull::new(g as *mut G).map(GRef);
    #[cfg(debug_assertions)]
    check_current_g(g);
    g
}

/// Debug builds: `current_g`'s answer must agree with the stack we run on:
/// a goroutine's stack holds our stack pointer, and on g0 the stack
/// pointer is outside every goroutine stack. Catches a `curg` that is
/// not (or not yet) the running goroutine.
#[cfg(debug_assertions)]
#[inline(never)]
fn check_current_g(g: Option<GRef>) {
    let probe = 0u8;
    let sp = std::hint::black_box(&probe) as *const u8 as usize;
    match g {
        Some(g) => assert!(
            g.stack_lo.load(Ordering::Relaxed) <= sp && sp < g.stack_hi.load(Ordering::Relaxed),
            "gosched internal error: curg is not the running goroutine"
        ),
        None => {
            // SAFETY: only Ms get here (see `current_g`); on g0 there is no
            // migration, so `cur_m` is this thread's live M.
            let m = unsafe { &*cur_m() };
            assert!(
                !m.shared_ref().stacks.contains(sp),
                "gosched internal error: a goroutine runs while curg is null"
            );
        }
    }
}

/// Goroutine id for the stack-overflow report. Async-signal-safe: a TLS
/// read and an atomic load.
pub(crate) fn signal_safe_current_gid() -> u64 {
    let m = CUR_M.with(|c| c.get());
    if m.is_null() {
        return 0;
    }
    // SAFETY: this thread's live M; curg is null or a live G.
    unsafe {
        let g = (*m).curg.load(Ordering::Relaxed);
        if g.is_null() {
            0
        } else {
            (*g).id.get()
        }
    }
}

/// The M of the calling thread, for the signal handler.
pub(crate) fn signal_safe_current_m() -> *const M {
    CUR_M.with(|c| c.get())
}

/// Runs `f` with the runtime of the calling goroutine (None elsewhere).
pub(crate) fn with_current_shared<R>(f: impl FnOnce(&Shared) -> R) -> Option<R> {
    let g = current_g()?;
    // SAFETY: a running goroutine's runtime is alive.
    Some(f(unsafe { &*g.shared.load(Ordering::Acquire) }))
}

/// A no-preempt region of the calling goroutine (no-op on plain threads).
/// Runtime entry points hold one while they touch shared state, so the
/// SIGURG handler refuses to interrupt them (safe-point rule 2).
///
/// Zero-sized: `drop` finds the goroutine again with `current_g` (two
/// loads) rather than carrying it, which keeps guards that embed a
/// `NoPreempt` one register wide (moving a two-word guard through the
/// stack cost a store-forwarding stall on every channel operation).
pub(crate) struct NoPreempt {
    /// Not `Send`: the region belongs to the goroutine (or thread) that
    /// entered it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl NoPreempt {
    #[inline]
    pub(crate) fn enter() -> NoPreempt {
        if let Some(g) = current_g() {
            raise_no_preempt(g);
        }
        NoPreempt {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for NoPreempt {
    #[inline]
    fn drop(&mut self) {
        // The same goroutine as at `enter`, on whichever M it runs now
        // (a region may span a park), or None on the same plain thread.
        if let Some(g) = current_g() {
            if lower_no_preempt(g) == 0 && g.preempt.load(Ordering::Relaxed) {
                preempt_check();
            }
        }
    }
}

/// Locking for the runtime's own mutexes. A goroutine must hold them only
/// inside a no-preempt region: g0 and sysmon take the same locks, and a
/// goroutine preempted while holding one (in ThreadAffine mode its thread
/// then waits for a P) can stall every thread of the runtime. Debug builds
/// check the rule at every acquisition; poisoning is ignored (the runtime's
/// critical sections do not panic half-way).
pub(crate) trait RuntimeLock<T> {
    /// Locks the mutex; see the trait docs.
    fn rt_lock(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> RuntimeLock<T> for Mutex<T> {
    #[inline]
    fn rt_lock(&self) -> std::sync::MutexGuard<'_, T> {
        #[cfg(debug_assertions)]
        if let Some(g) = current_g() {
            assert!(
                g.no_preempt.load(Ordering::Relaxed) > 0,
                "gosched internal error: a runtime lock taken by a preemptible goroutine"
            );
        }
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// If sysmon asked the running goroutine to yield, yield (cooperative
/// preemption; Go's stack-guard check in every function prologue).
#[inline]
pub(crate) fn preempt_check() {
    if let Some(g) = current_g() {
        if g.preempt.load(Ordering::Relaxed) && g.no_preempt.load(Ordering::Relaxed) == 0 {
            g.preempt.store(false, Ordering::Relaxed);
            switch_to_g0(g, Reason::CoopPreempt);
        }
    }
}

/// Switches from goroutine `g` (the caller) to its M's scheduler, saying
/// why; returns when the goroutine is resumed, possibly on another M.
pub(crate) fn switch_to_g0(g: GRef, reason: Reason) {
    raise_no_preempt(g);
    let m = this_m();
    // SAFETY: we are a goroutine, so `m` is this thread's live M and its
    // g0 is suspended in `execute`'s switch; `g.ctx` is ours to write.
    let arg = unsafe {
        (*m).reason.set(reason);
        arch::switch(g.ctx.get(), *(*m).g0_sp.get(), 0)
    };
    requeue_yielder(arg);
    lower_no_preempt(g);
}

/// Raises the goroutine's no-preempt count. Only the goroutine itself
/// writes the count, and the signal handler that reads it runs on the same
/// thread, so a plain load and store suffice (no locked instruction): a
/// signal between them sees the old value, which is still true at that
/// instant. The compiler fence keeps the region's code after the store.
#[inline]
fn raise_no_preempt(g: GRef) {
    g.no_preempt
        .store(g.no_preempt.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Lowers the count (see `raise_no_preempt`); returns the new value.
#[inline]
fn lower_no_preempt(g: GRef) -> u32 {
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let n = g.no_preempt.load(Ordering::Relaxed) - 1;
    g.no_preempt.store(n, Ordering::Relaxed);
    n
}

/// Parks the calling goroutine (steps 1-2 of the handshake in `crate::sched::g`).
pub(crate) fn gopark(reason: &'static str) {
    let g = current_g().expect("gopark outside a goroutine");
    // Consume a pending token without switching.
    if g.park
        .compare_exchange(NOTIFIED, EMPTY, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        return;
    }
    crate::os::fork::check_or_abort();
    g.wait_reason.set(reason);
    switch_to_g0(g, Reason::Park);
}

/// `yield_now` for the calling goroutine.
pub(crate) fn goyield(g: GRef) {
    if !yield_direct(g) {
        switch_to_g0(g, Reason::Yield);
    }
}

/// Claims P `p`, which M `m` held in state USER(m) when its goroutine
/// last looked, for a goroutine of `m` (see "Ownership of a P"): false if
/// sysmon retook it meanwhile. Until `unclaim_p`, the caller may touch the
/// P's local data. Call in a no-preempt region; `m` is the caller's M.
#[inline]
fn claim_p(m: &M, p: &P) -> bool {
    m.claiming.store(true, Ordering::Relaxed);
    // Dekker with `Shared::retake`: either it sees our flag, or we see
    // its status change.
    crate::os::membarrier::light();
    // Acquire pairs with the Release of the P's last hand-over.
    if p.status.load(Ordering::Acquire) == pstatus(m, P_USER) {
        return true;
    }
    m.claiming.store(false, Ordering::Relaxed);
    false
}

/// Ends `m`'s claim (Release: our writes to the P's local data happen
/// before a retake that waited for the flag).
#[inline]
fn unclaim_p(m: &M) {
    m.claiming.store(false, Ordering::Release);
}

/// Owner-only read-and-clear of a slot no other thread writes (such as
/// `P::yielded`): a load and a store, not an atomic swap.
trait OwnerSwap<T> {
    fn swap_owner(&self, v: *mut T) -> *mut T;
}

impl<T> OwnerSwap<T> for AtomicPtr<T> {
    #[inline]
    fn swap_owner(&self, v: *mut T) -> *mut T {
        let old = self.load(Ordering::Relaxed);
        self.store(v, Ordering::Relaxed);
        old
    }
}

/// `P::slice_start` of a slice whose start sysmon dates itself: the time
/// it first sees the slice's `schedtick` (Go's `sysmon` dates every slice
/// that way). A slice so dated may run up to one sysmon sleep longer than
/// the quantum before it is preempted.
pub(crate) const UNSTAMPED: u64 = u64::MAX;

/// Tag on `switch`'s argument: "the goroutine that switched to you is
/// yielding: put it at the tail of the P's local queue". Set by
/// `yield_direct`; acted on by `requeue_yielder` on the resumed side.
const YIELDED: usize = 1;

/// `yield_now` without the scheduler: switch straight to the goroutine
/// the P would run next, when that is an ordinary goroutine from the P's
/// own queue (runnext or local). Returns false, having done nothing, when
/// the scheduler is needed: every `GLOBAL_CHECK`th slice (the global queue
/// and timers must be looked at), an empty local queue (global queue,
/// timers, stealing), a goroutine locked to a thread on either side or
/// panicking, a goroutine that has never run (no stack yet), or a P we no
/// longer own.
///
/// The yielding goroutine must not be on a run queue before its context is
/// saved (another thread could resume it half-saved), so the goroutine we
/// switch to queues it, after the switch: the switch's argument carries it
/// (`YIELDED`), and every place a goroutine resumes from a switch calls
/// `requeue_yielder`.
fn yield_direct(g: GRef) -> bool {
    // A panicking goroutine must keep its thread (see
    // `Sched::lock_if_panicking`): let the scheduler lock it.
    if g.locked_m.get().is_some() || std::thread::panicking() {
        return false;
    }
    raise_no_preempt(g);
    let m = this_m();
    // SAFETY: in a no-preempt region `m` is this thread's M and stays so.
    let m = unsafe { &*m };
    let sh = m.shared_ref();
    let Some(pi) = m.p.get() else {
        lower_no_preempt(g);
        return false;
    };
    let p = &sh.ps[pi];
    // Claim the P as `with_local` does, but keep the claim across the
    // switch: the resumed side queues us and ends it (`requeue_yielder`).
    if !claim_p(m, p) {
        lower_no_preempt(g);
        return false;
    }
    // SAFETY: we hold a claim on the P.
    let l = unsafe { &mut *p.local.get() };
    let next = (|| {
        let tick = p.schedtick.load(Ordering::Relaxed);
        if tick.is_multiple_of(GLOBAL_CHECK) {
            return None;
        }
        // Only the owner fills `runnext` (we hold the claim), thieves only
        // empty it: a null seen here stays null, and the common case (the
        // yielder went to the local queue, not `runnext`) skips the swap.
        let rn = p.runnext.load(Ordering::Relaxed);
        let rn = if rn.is_null() {
            rn
        } else {
            p.runnext.swap(ptr::null_mut(), Ordering::AcqRel)
        };
        let next = NonNull::new(rn)
            .or_else(|| NonNull::new(p.yielded.swap_owner(ptr::null_mut())))
            .map(GRef)
            .or_else(|| l.worker.pop())?;
        if next.locked_m.get().is_some() || next.stack_hi.load(Ordering::Relaxed) == 0 {
            // g0 takes it from runnext (empty: we just emptied it, or it
            // was empty when we popped the local queue).
            p.runnext.store(next.as_ptr(), Ordering::Release);
            return None;
        }
        // A fresh slice, but no clock read here (a TSC read is a sixth of a
        // yield): sysmon dates it when it first sees the new tick, as Go's
        // sysmon dates every slice.
        p.slice_start.store(UNSTAMPED, Ordering::Relaxed);
        p.schedtick.store(tick + 1, Ordering::Release);
        bump(&p.counters.switches);
        Some(next)
    })();
    let Some(next) = next else {
        unclaim_p(m);
        lower_no_preempt(g);
        return false;
    };
    note_running(sh, p, next);
    next.preempt.store(false, Ordering::Relaxed);
    // From here the M runs `next` (sysmon and the signal handler read
    // curg); both goroutines are in no-preempt regions across the switch.
    m.curg.store(next.as_ptr(), Ordering::Release);
    m.yield_p.set(p);
    // SAFETY: `next` was dequeued by us (exactly once) and has a context
    // saved by `switch`; `g.ctx` is ours to write.
    let arg = unsafe { arch::switch(g.ctx.get(), *next.ctx.get(), g.as_ptr() as usize | YIELDED) };
    requeue_yielder(arg);
    lower_no_preempt(g);
    true
}

/// The resumed side of `yield_direct`: if the goroutine that switched to
/// us was yielding, its context is saved now: queue it. Call right after
/// every `switch` that resumes a goroutine, in its no-preempt region.
fn requeue_yielder(arg: usize) {
    if arg & YIELDED == 0 {
        return;
    }
    // SAFETY: `yield_direct` passed a live G's address with the tag bit.
    let y = GRef(unsafe { NonNull::new_unchecked((arg & !YIELDED) as *mut G) });
    // SAFETY: we run on the M the yielder switched to us on (a direct
    // switch never changes thread) inside a no-preempt region; the
    // yielder's claim on the M's P is ours to use and end.
    let m = unsafe { &*this_m() };
    // SAFETY: `yield_direct` stored the P it claimed (a live element of
    // the runtime's `ps`) just before switching to us on this M.
    let p = unsafe { &*m.yield_p.get() };
    debug_assert!(
        m.claiming.load(Ordering::Relaxed),
        "a direct yield without a claim"
    );
    // SAFETY: as above: the claim gives us the P's local data.
    let l = unsafe { &mut *p.local.get() };
    if l.worker.is_empty() && p.yielded.load(Ordering::Relaxed).is_null() {
        // The only goroutine waiting: the queue's tail is its head.
        p.yielded.store(y.as_ptr(), Ordering::Relaxed);
    } else {
        l.worker.push(y);
    }
    unclaim_p(m);
}

/// Called by the preemption trampoline on the goroutine's stack.
pub(crate) fn async_preempted() {
    let g = current_g().expect("async preemption outside a goroutine");
    g.preempt.store(false, Ordering::Relaxed);
    switch_to_g0(g, Reason::AsyncPreempt);
}

/// Makes a parked goroutine runnable: into the current P's `runnext` when
/// the caller is a goroutine of the same runtime (it runs next, Go's
/// `ready(gp, next=true)`), else onto the global queue. Then `wakep`.
pub(crate) fn ready(g: GRef) {
    crate::os::fork::check();
    let _np = NoPreempt::enter();
    // SAFETY: the G's runtime outlives the G.
    let sh = unsafe { &*g.shared.load(Ordering::Acquire) };
    let wakes = g.wakes.get().wrapping_add(1);
    g.wakes.set(wakes);
    if wakes.is_multiple_of(SCHED_LATENCY_SAMPLE) {
        g.runnable_at.set(sh.slice_clock().max(1));
    }
    let local = sh.with_local(|p, l| {
        if let Some(old) = NonNull::new(p.runnext.swap(g.as_ptr(), Ordering::AcqRel)) {
            l.worker.push(GRef(old));
        }
    });
    if local.is_none() {
        sh.woken.push(g);
        fence(Ordering::SeqCst);
        sh.wakep();
        let _ = sh.wakeup_preempt(false);
        return;
    }
    fence(Ordering::SeqCst);
    sh.wakep();
}

/// The first function of every goroutine (see `arch::init_stack`).
///
/// # Safety
/// Called only by `arch`'s start trampoline with a G prepared by `execute`.
pub(crate) unsafe extern "C" fn g_entry(arg: usize) -> ! {
    // SAFETY: `execute` passes the G it switched to; it is live.
    let g = GRef(unsafe { NonNull::new_unchecked(arg as *mut G) });
    // SAFETY: owner access: we are this G. The body stays in `entry` while
    // it runs (see the field); nobody writes `entry` until we exit.
    let f = unsafe { (*g.entry.get()).as_ref() }.expect("goroutine without a body");
    g.no_preempt.store(0, Ordering::Relaxed);
    // The body catches its own panics (see `runtime::Task`). Its captures
    // are dropped here, on the goroutine, as is our count on it.
    f.run();
    // SAFETY: owner access, as above; the borrow `f` ended.
    drop(unsafe { (*g.entry.get()).take() });
    // Goroutine-local values re-created by that drop (a destructor of an
    // unjoined scoped result using a `local!`): drop them here, on the
    // goroutine, so the G's next goroutine starts empty (a panic in them
    // has no one to go to; the hook has printed it).
    let _ = crate::local::exit_destructors(Ok(()));
    g.no_preempt.store(1, Ordering::Relaxed);
    let m = this_m();
    // SAFETY: as in `switch_to_g0`; this context is never resumed.
    unsafe {
        (*m).reason.set(Reason::Exit);
        arch::switch(g.ctx.get(), *(*m).g0_sp.get(), 0);
    }
    unreachable!("a finished goroutine was resumed");
}

/// The calling thread's CPU affinity.
pub(crate) fn thread_cpu_mask() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data, filled by the kernel; 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let ok = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0;
        ok.then_some(set)
    }
}

/// Runtimes alive in the process (the deadlock check runs only with one).
pub(crate) static LIVE_RUNTIMES: AtomicUsize = AtomicUsize::new(0);

/// Process-wide goroutine ids (Go's goid starts at 1).
static NEXT_GID: AtomicU64 = AtomicU64::new(1);

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
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (std::process::id() as u64);
        for id in 0..crate::builder::MAX_PROCS {
            let worker = Worker::new_fifo();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ps.push(P {
                id,
                status: AtomicU64::new(if id < cfg.procs { P_IDLE } else { P_DEAD }),
                stealer: worker.stealer(),
                runnext: AtomicPtr::new(ptr::null_mut()),
                yielded: AtomicPtr::new(ptr::null_mut()),
                schedtick: AtomicU64::new(0),
                wakeup_tick: AtomicU64::new(wakeup::NO_WAKEUP),
                slice_start: AtomicU64::new(0),
                syscalltick: AtomicU64::new(0),
                syscall_start: AtomicU64::new(0),
                m: AtomicPtr::new(ptr::null_mut()),
                counters: PCounters::default(),
                local: UnsafeCell::new(PLocal {
                    worker,
                    gfree: Vec::new(),
                    stacks: Vec::new(),
                    rng: seed | 1,
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
            epoch: Instant::now(),
            injector: Injector::new(),
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
            driver,
            stacks,
            gfree: Mutex::new(Vec::new()),
            allg: Mutex::new(Vec::new()),
            shutdown: AtomicBool::new(false),
            counters: GlobalCounters::default(),
            sysmon_note: Note::new(),
            sysmon_idle_until: AtomicU64::new(0),
            in_blocking: AtomicUsize::new(0),
            affine_parked: AtomicUsize::new(0),
            counters_spawned_outside: AtomicU64::new(0),
            counters_exited_outside: AtomicU64::new(0),
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

    fn instant_to_nanos(&self, t: Instant) -> u64 {
        crate::sched::timer::nanos_since(self.epoch, t)
    }

    /// Adds a timer; wakes whoever sleeps until a later deadline.
    pub(crate) fn add_timer(&self, deadline: Instant, task: Task) -> TimerId {
        let _np = NoPreempt::enter();
        let (id, earliest) = self.timers.add(self.instant_to_nanos(deadline), task);
        if earliest {
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
                self.sysmon_note.wake();
            }
        }
        id
    }

    /// Fires due timers; returns how many.
    pub(crate) fn fire_timers(&self) -> usize {
        // One atomic load when nothing is pending; one clock read otherwise
        // (`Timers::fire` re-checks the earliest deadline itself).
        match self.timers.next() {
            Some(_) => self.timers.fire(self.nanotime()),
            None => 0,
        }
    }

    /// Creates a goroutine running `body` (which must catch its own panics)
    /// and makes it runnable. From a goroutine of this runtime it goes to the
    /// current P's `runnext` (Go's newproc), else to the global queue.
    pub(crate) fn spawn_raw(
        &self,
        body: Arc<dyn crate::sched::g::Body>,
        at: Option<&'static std::panic::Location<'static>>,
    ) -> u64 {
        crate::os::fork::check();
        let _np = NoPreempt::enter();
        let init = |g: GRef, id: u64, body: Arc<dyn crate::sched::g::Body>| {
            g.id.set(id);
            g.spawned_at.set(at);
            g.live.store(true, Ordering::Relaxed);
            // SAFETY: a free G is owned by whoever took it from a free list.
            unsafe { *g.entry.get() = Some(body) };
            g.park.store(EMPTY, Ordering::Relaxed);
            g.no_preempt.store(1, Ordering::Relaxed);
            g.preempt.store(false, Ordering::Relaxed);
        };
        let mut body = Some(body);
        // From a goroutine (or g0) of this runtime: Go's newproc, all on the
        // P: a cached G, an id from the P's batch, into runnext (the previous
        // runnext is kicked to the local queue's tail).
        let local = self.with_local(|p, l| {
            let g = l
                .gfree
                .pop()
                .unwrap_or_else(|| self.gget_global(&mut l.gfree));
            if l.goid_next == l.goid_end {
                l.goid_next = NEXT_GID.fetch_add(GOID_BATCH, Ordering::Relaxed);
                l.goid_end = l.goid_next + GOID_BATCH;
            }
            let id = l.goid_next;
            l.goid_next += 1;
            init(g, id, body.take().expect("body taken once"));
            bump(&p.counters.spawned);
            if let Some(old) = NonNull::new(p.runnext.swap(g.as_ptr(), Ordering::AcqRel)) {
                l.worker.push(GRef(old));
            }
            id
        });
        let id = match local {
            Some(id) => id,
            None => {
                // From a plain thread (or a goroutine that lost its P): the
                // global queue.
                let mut spare = Vec::new();
                let g = self.gget_global(&mut spare);
                self.gfree.rt_lock().extend(spare);
                let id = NEXT_GID.fetch_add(1, Ordering::Relaxed);
                init(g, id, body.take().expect("body taken once"));
                self.counters_spawned_outside
                    .fetch_add(1, Ordering::Relaxed);
                self.injector.push(g);
                id
            }
        };
        fence(Ordering::SeqCst);
        self.wakep();
        id
    }

    /// Runs `f` on the P-local data of the calling thread's P, if the caller
    /// is a goroutine (or g0) of this runtime whose M holds a P; None
    /// otherwise. Call it inside a no-preempt region, and never switch
    /// inside `f`.
    ///
    /// A goroutine's M holds its P in state USER(m), in which only sysmon may
    /// touch it (to retake it). So the goroutine claims it for the duration
    /// of `f` (`claim_p`; a retake waits for the claim to end). On g0 the P
    /// is in SCHED(m) already.
    pub(crate) fn with_local<R>(&self, f: impl FnOnce(&P, &mut PLocal) -> R) -> Option<R> {
        let m = cur_m();
        if m.is_null() {
            return None;
        }
        // SAFETY: non-null `m` is this thread's live M; in a no-preempt
        // region we cannot move to another thread.
        let m = unsafe { &*m };
        if !ptr::eq(m.shared, self) {
            return None;
        }
        let p = &self.ps[m.p.get()?];
        if m.curg.load(Ordering::Relaxed).is_null() {
            // SAFETY: g0 of the M that holds this P in state SCHED: the only
            // one allowed to touch its local data.
            return Some(f(p, unsafe { &mut *p.local.get() }));
        }
        if !claim_p(m, p) {
            return None;
        }
        // SAFETY: we hold a claim on the P: nobody else touches its local
        // data until we end it.
        let r = f(p, unsafe { &mut *p.local.get() });
        unclaim_p(m);
        Some(r)
    }

    /// A free G from the global list, moving up to `G_BATCH - 1` more into
    /// `spare` (a P's cache), or a new one.
    fn gget_global(&self, spare: &mut Vec<GRef>) -> GRef {
        {
            let mut free = self.gfree.rt_lock();
            if let Some(g) = free.pop() {
                let k = free.len().min(G_BATCH - 1);
                let at = free.len() - k;
                spare.extend(free.drain(at..));
                return g;
            }
        }
        let me = Arc::into_raw(self.me.upgrade().expect("runtime alive")) as *mut Shared;
        let pooled = teardown::G_POOL.rt_lock().pop();
        let g = match pooled {
            Some(g) => {
                g.shared.store(me, Ordering::Release);
                g
            }
            None => GRef(NonNull::from(Box::leak(Box::new(G::new(me))))),
        };
        self.allg.rt_lock().push(g);
        g
    }

    /// Goroutines spawned so far.
    pub(crate) fn spawned(&self) -> u64 {
        self.used_ps()
            .iter()
            .map(|p| p.counters.spawned.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.counters_spawned_outside.load(Ordering::Relaxed)
    }

    /// Live goroutines.
    pub(crate) fn goroutines(&self) -> usize {
        let spawned = self.spawned();
        let exited: u64 = self
            .used_ps()
            .iter()
            .map(|p| p.counters.exited.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.counters_exited_outside.load(Ordering::Relaxed);
        spawned.saturating_sub(exited) as usize
    }
}

pub(crate) mod g;
mod handoff;
mod procresize;
mod schedule;
pub(crate) mod syscall;
mod teardown;
#[cfg(test)]
mod tests;
pub(crate) mod timer;
mod wakeup;
