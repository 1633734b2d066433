//! Goroutines (G): the per-goroutine state, the park/unpark handshake, and
//! `Waiter`, which lets runtime objects wake either a goroutine or a plain
//! OS thread.
//!
//! # Park and unpark
//!
//! `park` has token semantics, like `std::thread::park`: an `unpark` that
//! comes first makes the next `park` return at once, and `park` may return
//! spuriously, so every caller parks in a loop that re-checks its condition.
//! The handshake on `G::park` (EMPTY, PARKED, NOTIFIED) closes the race
//! between a goroutine deciding to sleep and a waker that arrives while it
//! is still switching to the scheduler:
//!
//! 1. The goroutine consumes a pending token (NOTIFIED -> EMPTY) and returns,
//!    or switches to its M's scheduler stack (g0) with `Reason::Park`.
//! 2. Only on g0, after the goroutine's registers are saved, the M tries
//!    EMPTY -> PARKED. If a waker got there first (NOTIFIED), the M resets it
//!    to EMPTY and runs the goroutine again at once.
//! 3. A waker does EMPTY -> NOTIFIED (the goroutine has not parked yet: step
//!    2 will see it) or PARKED -> EMPTY, and then, being the only one to see
//!    PARKED, makes the goroutine runnable (`ready`).
//!
//! So a goroutine is put on a run queue only once it is fully suspended, and
//! exactly once per park. Go does the same with `gopark`'s unlock function
//! run on g0; a state word lets wakers run without the waiter's lock.

use std::cell::{Cell, UnsafeCell};
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

use crate::stack::Stack;

/// A goroutine's body, run once on the goroutine. It must catch its own
/// panics. It is an `Arc` so that one allocation can hold both the closure
/// and the result slot its `JoinHandle` reads (see `runtime::Task`).
pub(crate) trait Body: Send + Sync {
    fn run(&self);
    /// The runtime was dropped before `run` finished (or started), so it
    /// never will: complete the result slot with an error so that `join`
    /// returns. `rt` is the dropped runtime. Called once, after every M has
    /// stopped.
    fn abandon(&self, rt: *const crate::sched::Shared);
}

/// Park states (see the module docs).
pub(crate) const EMPTY: u8 = 0;
pub(crate) const PARKED: u8 = 1;
pub(crate) const NOTIFIED: u8 = 2;

/// A goroutine.
///
/// Fields marked "owner" are touched only by the thread running the
/// goroutine or by the M that is switching it in or out (never both at
/// once: the run queues hand a G from one M to another with Release/Acquire).
pub(crate) struct G {
    /// Goroutine id, unique in the process. Set by the spawner before the
    /// G is published; read anywhere, also by threads that own nothing of
    /// it (the goroutine dump, schedtrace), hence atomic (Relaxed).
    pub(crate) id: AtomicU64,
    /// Saved stack pointer while suspended (owner; written by `switch`).
    pub(crate) ctx: UnsafeCell<usize>,
    /// The stack, taken on first run, returned at exit (owner).
    pub(crate) stack: UnsafeCell<Option<Stack>>,
    /// Bounds of `stack` ([lo, hi); 0 when none), for `current_g`'s check
    /// from any thread. Written by the M that sets or takes the stack.
    pub(crate) stack_lo: AtomicUsize,
    pub(crate) stack_hi: AtomicUsize,
    /// The body. The entry function runs it in place and takes it once it
    /// returned, so that a runtime dropped meanwhile can still abandon it
    /// (`Shared::abandon_goroutines`). Owner; read by the dropping thread
    /// only after every M stopped.
    pub(crate) entry: UnsafeCell<Option<std::sync::Arc<dyn Body>>>,
    /// Park handshake: EMPTY, PARKED, NOTIFIED. Any thread (AcqRel CAS).
    pub(crate) park: AtomicU8,
    /// Cooperative preemption request. Set by sysmon (Relaxed), checked and
    /// cleared by the goroutine at its next runtime call or preempt point.
    pub(crate) preempt: AtomicBool,
    /// In ThreadAffine mode, its last wake-up preemption request needed the
    /// signal (it made no runtime call within `WAKEUP_RETRY`): the next
    /// one signals at once (`sched::wakeup`, step 2). Set by sysmon,
    /// cleared when the goroutine yields at a runtime call for a request
    /// and when the G is reused (Relaxed: a hint; a stale value costs one
    /// thread hand-off or one 20 µs wait).
    pub(crate) wakeup_signal: AtomicBool,
    /// Nesting depth of no-preempt regions. Written by the goroutine; read by
    /// the SIGURG handler on the same thread, so Relaxed plus the handler's
    /// signal fence suffice. Runtime internals and `no_preempt` raise it; a
    /// suspended goroutine always has it >= 1 (it is inside a switch).
    pub(crate) no_preempt: AtomicU32,
    /// `lock_os_thread` nesting depth (owner; Go's lockedExt).
    pub(crate) lock_count: Cell<u32>,
    /// Locked to its M after an asynchronous preemption in ThreadAffine
    /// mode, until its next cooperative scheduling point. Written by the
    /// owner; read by wake-up preemption from other threads (Relaxed: a
    /// hint there, see `Shared::wakeup_signal_allowed`).
    pub(crate) affine: AtomicBool,
    /// Its last slice ended in a time-slice preemption (it ran a quantum
    /// without blocking): its next fresh slice is timed by its M's slice
    /// timer (`preempt::slice_timer`). Owner.
    pub(crate) hog: Cell<bool>,
    /// Preempted asynchronously in ThreadAffine mode to make room for a
    /// wake-up, and kept (`G0::requeue_preempted_for_wakeup`): its M counts
    /// itself in `Shared::wakeup_parked` while it waits (owner).
    pub(crate) wakeup_kept: Cell<bool>,
    /// Locked to its M because it was panicking (unwinding, or inside the
    /// panic hook) when it last switched out: std keeps that state per OS
    /// thread, so no other goroutine may run on the thread until the panic
    /// is over (owner).
    pub(crate) unwinding: Cell<bool>,
    /// The M this goroutine is locked to, if any (owner; read by the M that
    /// dequeues it, after the Acquire of the run queue).
    pub(crate) locked_m: Cell<Option<NonNull<crate::sched::M>>>,
    /// What the goroutine waits on while parked (for the deadlock report).
    /// Owner; the report reads it from another thread only when every
    /// goroutine is parked: written before the Release of `park`, read
    /// after its Acquire, and no goroutine runs to write it again.
    pub(crate) wait_reason: Cell<&'static str>,
    /// Where it was spawned (null: the main goroutine of `block_on`). Set
    /// by the spawner like `id`; read by the goroutine dump from any
    /// thread, hence atomic.
    pub(crate) spawned_at: AtomicPtr<std::panic::Location<'static>>,
    /// Spawned and not finished. Written by the spawner and the exiting
    /// M; read by the deadlock check (Relaxed: it double-checks).
    pub(crate) live: AtomicBool,
    /// Inside `blocking()`: runtime waits block the thread instead of
    /// parking the goroutine, as on a plain thread (owner).
    pub(crate) in_blocking: Cell<bool>,
    /// The runtime this G belongs to: a pointer from `Arc::into_raw` (the G
    /// holds a count on it), null while the G sits in the process-wide pool.
    /// Set when a runtime takes the G; read by wakers (Acquire).
    pub(crate) shared: std::sync::atomic::AtomicPtr<crate::sched::Shared>,
    /// Wake-ups so far, to sample one in `SCHED_LATENCY_SAMPLE` for the
    /// scheduling-latency histogram. Written by `ready` (whoever wakes the
    /// parked G owns it until it is queued).
    pub(crate) wakes: Cell<u32>,
    /// When a sampled wake-up made the G runnable (`Shared::slice_clock`
    /// units), or 0. Written by `ready`; read and cleared by the M that
    /// runs it next (handed over through the run queue, Release/Acquire).
    pub(crate) runnable_at: Cell<u64>,
    /// While preempted for wake-ups without an ordinary switch in between:
    /// when it started running (`Shared::slice_clock` units), else 0. A
    /// goroutine that has run a quantum since then goes to the global
    /// queue's tail like a time-sliced one (`G0::after`). Owner (the M
    /// switching it out; handed over through the run queues).
    pub(crate) run_origin: Cell<u64>,
    /// It has published its result (`JoinInner::complete`) and is counted
    /// in `Shared::finishing` until it exits (owner).
    pub(crate) finishing: Cell<bool>,
    /// Goroutine-local values (`crate::local`), indexed by key (owner;
    /// emptied when the goroutine's body ends).
    pub(crate) locals: crate::local::Slots,
    /// The name given by `GoroutineBuilder::name`, read through
    /// [`G::name`]. Written only by `Shared::spawn_raw` while the G is free
    /// (before it is published), and only while holding the `allg` lock of
    /// the runtime whose `allg` lists the G; the previous goroutine's name
    /// stays until then (a free G is never shown), so exiting costs nothing.
    pub(crate) name: UnsafeCell<Option<Box<str>>>,
}

// SAFETY: the Cell/UnsafeCell fields are accessed only under the ownership
// rule in the struct docs (one thread at a time, handed over with
// Release/Acquire through the run queues), or, for `wait_reason`, under
// the park handshake described at the field; what other threads read
// without owning the G (`id`, `spawned_at`, the park state, the stack
// bounds) is atomic, except `name`, which is written only under the `allg`
// lock those readers hold (see `G::name`).
unsafe impl Sync for G {}
// SAFETY: as above.
unsafe impl Send for G {}

impl G {
    pub(crate) fn new(shared: *mut crate::sched::Shared) -> G {
        G {
            id: AtomicU64::new(0),
            ctx: UnsafeCell::new(0),
            stack: UnsafeCell::new(None),
            stack_lo: AtomicUsize::new(0),
            stack_hi: AtomicUsize::new(0),
            entry: UnsafeCell::new(None),
            park: AtomicU8::new(EMPTY),
            preempt: AtomicBool::new(false),
            no_preempt: AtomicU32::new(1),
            lock_count: Cell::new(0),
            affine: AtomicBool::new(false),
            hog: Cell::new(false),
            wakeup_kept: Cell::new(false),
            unwinding: Cell::new(false),
            locked_m: Cell::new(None),
            wait_reason: Cell::new(""),
            spawned_at: AtomicPtr::new(std::ptr::null_mut()),
            live: AtomicBool::new(false),
            in_blocking: Cell::new(false),
            locals: UnsafeCell::new(Vec::new()),
            shared: std::sync::atomic::AtomicPtr::new(shared),
            wakes: Cell::new(0),
            runnable_at: Cell::new(0),
            run_origin: Cell::new(0),
            finishing: Cell::new(false),
            wakeup_signal: AtomicBool::new(false),
            name: UnsafeCell::new(None),
        }
    }

    /// The goroutine's name, if it was spawned with one.
    ///
    /// # Safety
    ///
    /// The caller is the goroutine itself (its spawn wrote the name before
    /// publishing it, and the next write needs it to exit first), or the
    /// spawner that owns the G while it is free (the only writer), or holds
    /// the `allg` lock of the runtime whose `allg` lists this G (every write
    /// holds that lock) for as long as it uses the result.
    pub(crate) unsafe fn name(&self) -> Option<&str> {
        // SAFETY: no write can happen meanwhile (see the contract above).
        unsafe { (*self.name.get()).as_deref() }
    }
}

/// A pointer to a G. G structs are never freed (see
/// `Shared::free_dead_gs`), so a GRef is valid for the life of the process.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct GRef(pub(crate) NonNull<G>);

// SAFETY: a G is Sync (see above) and outlives every GRef to it.
unsafe impl Send for GRef {}
// SAFETY: as above.
unsafe impl Sync for GRef {}

impl std::ops::Deref for GRef {
    type Target = G;
    fn deref(&self) -> &G {
        // SAFETY: G structs are never freed.
        unsafe { self.0.as_ref() }
    }
}

impl GRef {
    pub(crate) fn as_ptr(self) -> *mut G {
        self.0.as_ptr()
    }

    /// Step 3 of the handshake: wakes the goroutine if it is parked, or
    /// leaves a token if it is not.
    ///
    /// Not preemptible from the claim to the enqueue (as Go's `goready`,
    /// which runs on the system stack): a waker preempted in between (a
    /// CPU-bound goroutine releasing a lock, say) held the woken goroutine
    /// neither parked nor queued for as long as it waited for a P itself.
    pub(crate) fn unpark(self) {
        let np = crate::sched::NoPreempt::enter();
        if self.unpark_deferred() {
            crate::sched::ready_in(self, &np);
        }
    }

    /// `unpark` without the `ready`, for wakers that batch (the netpoller):
    /// returns true if the goroutine was parked, and the caller must now
    /// make it runnable.
    pub(crate) fn unpark_deferred(self) -> bool {
        let mut s = self.park.load(Ordering::Acquire);
        loop {
            let (next, wake) = match s {
                EMPTY => (NOTIFIED, false),
                PARKED => (EMPTY, true),
                _ => return false,
            };
            // AcqRel: pairs with the M's EMPTY -> PARKED CAS (it saved the
            // goroutine's context before) and with the goroutine's consuming
            // NOTIFIED -> EMPTY.
            match self
                .park
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return wake,
                Err(now) => s = now,
            }
        }
    }
}

/// Whoever waits on a runtime object: a goroutine (parks), a plain thread
/// (blocks), or an async task (its `Waker` is woken; `JoinHandle` as a
/// `Future`).
#[derive(Clone, Debug)]
pub(crate) enum Waiter {
    G(GRef),
    Thread(std::thread::Thread),
    Waker(std::task::Waker),
}

impl Waiter {
    /// The calling goroutine, or the calling thread outside a goroutine.
    pub(crate) fn current() -> Waiter {
        match parkable_g() {
            Some(g) => Waiter::G(g),
            None => Waiter::Thread(std::thread::current()),
        }
    }

    /// Wakes the waiter (or leaves it a token).
    pub(crate) fn unpark(&self) {
        match self {
            Waiter::G(g) => g.unpark(),
            Waiter::Thread(t) => {
                THREAD_WAKES.fetch_add(1, Ordering::Relaxed);
                t.unpark()
            }
            Waiter::Waker(w) => w.wake_by_ref(),
        }
    }
}

/// Plain threads parked in `park` right now, with no deadline (the deadlock
/// check accounts for every thread of the process), and the
/// `gosched-sigquit` thread while it waits (`crate::diag::sigquit`: it can
/// never wake a goroutine either). A thread in `park_until` is not counted:
/// it wakes by itself, so, like a thread doing anything else, it may still
/// wake a goroutine (Go's checkdead counts only Ms that can never run
/// again).
pub(crate) static THREADS_PARKED: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Wake-ups of plain threads so far (the deadlock check requires it stable).
pub(crate) static THREAD_WAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The calling goroutine if it can park (not inside `blocking()`).
pub(crate) fn parkable_g() -> Option<GRef> {
    crate::sched::current_g().filter(|g| !g.in_blocking.get())
}

/// Blocks a plain thread until `Waiter::unpark`. Only an untimed park counts
/// in `THREADS_PARKED` (see there).
fn thread_park() {
    THREADS_PARKED.fetch_add(1, Ordering::SeqCst);
    std::thread::park();
    THREADS_PARKED.fetch_sub(1, Ordering::SeqCst);
}

/// Parks the calling goroutine (or thread) until `Waiter::unpark`. May
/// return spuriously: call it in a loop that re-checks the condition.
/// `reason` says what it waits on (shown by the deadlock report).
pub(crate) fn park(reason: &'static str) {
    match parkable_g() {
        Some(_) => crate::sched::gopark(reason),
        None => thread_park(),
    }
}

/// Like `park`, but gives up at `deadline` (returns either way; the caller
/// re-checks its condition and the clock).
pub(crate) fn park_until(reason: &'static str, deadline: std::time::Instant) {
    match parkable_g() {
        Some(g) => {
            let w = Waiter::G(g);
            let t = crate::sched::timer::add_current(deadline, Box::new(move || w.unpark()));
            crate::sched::gopark(reason);
            if let Some(t) = t {
                crate::sched::timer::cancel_current(t);
            }
        }
        None => {
            if let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                // Not counted as parked: this thread wakes by itself.
                std::thread::park_timeout(left);
            }
        }
    }
}
