//! Scoped goroutines: [`scope`] and [`Runtime::scope`], in
//! `std::thread::scope`'s shape.
//!
//! # Protocol
//!
//! 1. `scope` records who waits (the calling goroutine, or the calling
//!    thread) in a shared `ScopeData` with a count of running goroutines.
//! 2. `Scope::spawn` raises the count, then starts a goroutine whose body
//!    owns the closure and one count on a `Packet` (the result slot, shared
//!    with the `ScopedJoinHandle`).
//! 3. The goroutine runs the closure (catching a panic), stores the result
//!    in the packet and wakes a joiner. The closure and its captures are gone
//!    by then; the body's count on the packet is dropped when the goroutine
//!    drops its body (`sched::g_entry`).
//! 4. The packet's `Drop`, run by whoever drops the last count (the goroutine
//!    or the handle), first drops a result nobody took (it may borrow from
//!    `'scope`), then lowers the scope's count; the last one wakes the waiter.
//!    An unjoined panic marks the scope as panicked.
//! 5. `scope` runs the user closure under `catch_unwind`, then parks (or
//!    blocks) until the count is zero, re-checking it after every wake-up
//!    (park has token semantics, so a wake-up before the park is not lost).
//!    Only then does it return or resume a panic.
//!
//! So every use of `'scope` data by a spawned goroutine happens before the
//! decrement in step 4, which happens before `scope` returns: that is what
//! makes handing `'scope` closures to `'static` goroutines sound (see the
//! SAFETY comment in `Scope::spawn`).

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::join::JoinInner;
use crate::sched::g::{Body, Waiter};
use crate::sched::Shared;
use crate::Runtime;

/// Creates a scope for spawning goroutines that may borrow from the caller,
/// like [`std::thread::scope`]: every goroutine spawned in it is joined
/// before `scope` returns, whether or not the closure or a goroutine panics.
///
/// The calling goroutine parks while it waits (its thread runs other
/// goroutines, including the ones it waits for, even on one P). To use a
/// scope from a plain thread, call [`Runtime::scope`], which names the
/// runtime to run the goroutines on.
///
/// # Panics
///
/// - Outside a goroutine (there is no runtime to spawn on): use
///   [`Runtime::scope`].
/// - If `f` panics, after every goroutine of the scope has finished, with
///   `f`'s payload.
/// - If a spawned goroutine panicked and its handle was not joined, after
///   every goroutine has finished (as `std::thread::scope` does). A panic
///   returned by [`ScopedJoinHandle::join`] counts as handled.
///
/// # Examples
///
/// ```
/// let rt = gosched::Builder::new().procs(2).build().unwrap();
/// let v: Vec<u64> = (1..=1000).collect();
/// let total = rt.block_on(|| {
///     gosched::scope(|s| {
///         let hs: Vec<_> = v.chunks(250).map(|c| s.spawn(move || c.iter().sum::<u64>())).collect();
///         hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
///     })
/// });
/// assert_eq!(total, 500_500);
/// ```
#[track_caller]
pub fn scope<'env, F, T>(f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let g = crate::sched::current_g().unwrap_or_else(|| {
        panic!(
            "gosched::scope called outside a goroutine: there is no runtime to run the goroutines on; \
             use Runtime::scope from a plain thread"
        )
    });
    // SAFETY: a running goroutine's runtime is alive (the G holds a count
    // on it).
    let sh = unsafe { &*g.shared.load(Ordering::Acquire) };
    let sh = sh
        .me
        .upgrade()
        .expect("a running goroutine's runtime is alive");
    scope_on(sh, f)
}

impl Runtime {
    /// [`scope`] for any caller, spawning on this runtime: from a plain
    /// thread the thread blocks while it waits; from a goroutine (of any
    /// runtime) the goroutine parks.
    ///
    /// # Panics
    ///
    /// As [`scope`], except that it works outside a goroutine.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let mut hits = [0u32; 4];
    /// rt.scope(|s| {
    ///     for h in hits.iter_mut() {
    ///         s.spawn(move || *h += 1);
    ///     }
    /// });
    /// assert_eq!(hits, [1; 4]);
    /// ```
    pub fn scope<'env, F, T>(&self, f: F) -> T
    where
        F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
    {
        scope_on(self.shared().clone(), f)
    }
}

fn scope_on<'env, F, T>(sh: Arc<Shared>, f: F) -> T
where
    F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
{
    let scope = Scope {
        data: Arc::new(ScopeData {
            running: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            waiter: Waiter::current(),
        }),
        sh,
        _scope: PhantomData,
        _env: PhantomData,
    };
    // Step 5: whatever `f` does, wait for every goroutine before leaving.
    let r = catch_unwind(AssertUnwindSafe(|| f(&scope)));
    // Acquire: pairs with the Release decrement of each goroutine's packet,
    // so its writes (through borrows of our data) happen before we return.
    while scope.data.running.load(Ordering::Acquire) != 0 {
        crate::sched::g::park("scope");
    }
    match r {
        Err(payload) => resume_unwind(payload),
        Ok(_) if scope.data.panicked.load(Ordering::Relaxed) => {
            panic!("a scoped goroutine panicked")
        }
        Ok(v) => v,
    }
}

/// A scope to spawn goroutines in; see [`scope`].
///
/// `'scope` is the lifetime of the scope itself (goroutines may run until
/// it ends); `'env` is the lifetime of what they borrow (it outlives the
/// scope).
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// let greeting = String::from("hello");
/// rt.block_on(|| {
///     gosched::scope(|s| {
///         s.spawn(|| assert_eq!(greeting.len(), 5));
///         s.spawn(|| assert!(greeting.starts_with('h')));
///     });
/// });
/// ```
pub struct Scope<'scope, 'env: 'scope> {
    data: Arc<ScopeData>,
    /// The runtime the goroutines run on.
    sh: Arc<Shared>,
    /// Invariant in `'scope` and `'env`, as std's.
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

/// What the spawned goroutines and the waiting `scope` share.
struct ScopeData {
    /// Goroutines whose packet is still alive. Raised by `spawn`, lowered
    /// (Release) by `Packet::drop`; `scope` loads it with Acquire.
    running: AtomicUsize,
    /// A goroutine panicked and nobody joined it (Relaxed: read after the
    /// Acquire load of `running` that saw zero).
    panicked: AtomicBool,
    /// Who waits in `scope` (the goroutine or thread that called it).
    waiter: Waiter,
}

impl ScopeData {
    fn decrement(&self, panicked: bool) {
        if panicked {
            self.panicked.store(true, Ordering::Relaxed);
        }
        // Release: pairs with `scope`'s Acquire load.
        if self.running.fetch_sub(1, Ordering::Release) == 1 {
            // `self` is kept alive by the caller's `Arc` even if `scope`
            // returns as soon as it sees zero (e.g. after a spurious wake).
            self.waiter.unpark();
        }
    }
}

/// The result slot of one scoped goroutine; see the module docs, step 4.
struct Packet<T> {
    inner: JoinInner<T>,
    scope: Arc<ScopeData>,
}

impl<T> Drop for Packet<T> {
    fn drop(&mut self) {
        let result = self.inner.result.get_mut().take();
        let unhandled = matches!(result, Some(Err(_)));
        // Drop a result nobody joined before the count goes down: it may
        // borrow from 'scope. A panic here cannot be reported to anyone
        // (std aborts too).
        if catch_unwind(AssertUnwindSafe(move || drop(result))).is_err() {
            crate::diag::stderr_line(format_args!(
                "fatal: the result of a scoped goroutine panicked on drop"
            ));
            std::process::abort();
        }
        self.scope.decrement(unhandled);
    }
}

/// A scoped goroutine's body: the closure and the goroutine's count on its
/// packet.
struct ScopedBody<F, T> {
    f: UnsafeCell<Option<F>>,
    packet: Arc<Packet<T>>,
}

// SAFETY: `f` is taken exactly once, by the goroutine in `run`; the packet's
// JoinInner is Sync for `T: Send`, and ScopeData holds only atomics and a
// Waiter (Send + Sync).
unsafe impl<F: Send, T: Send> Sync for ScopedBody<F, T> {}

impl<F: FnOnce() -> T + Send, T: Send> Body for ScopedBody<F, T> {
    fn run(&self) {
        // SAFETY: `run` is called once, by the goroutine (see the Sync impl).
        let f = unsafe { (*self.f.get()).take() }.expect("a goroutine body ran twice");
        let r = catch_unwind(AssertUnwindSafe(f));
        let r = crate::local::exit_destructors(r);
        self.packet.inner.complete(r);
    }

    /// Nothing to complete: whoever could wait for a scoped goroutine of a
    /// dropped runtime never runs again either. Inside a goroutine the
    /// scope's owner is a goroutine of the same runtime (abandoned too); on
    /// a plain thread `Runtime::scope` borrows the runtime, which therefore
    /// cannot be dropped while the scope lasts. The closure, which may
    /// borrow from the scope's caller, is leaked, never run or dropped.
    fn abandon(&self, _rt: *const crate::sched::Shared) {}
}

impl<'scope> Scope<'scope, '_> {
    /// Spawns a goroutine in the scope; it may borrow anything that
    /// outlives the scope. It is joined when the scope ends, if not before.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let mut v = vec![1, 2, 3];
    /// rt.block_on(|| {
    ///     gosched::scope(|s| {
    ///         s.spawn(|| v.push(4)); // a mutable borrow
    ///     });
    /// });
    /// assert_eq!(v, [1, 2, 3, 4]);
    /// ```
    #[track_caller]
    pub fn spawn<F, T>(&'scope self, f: F) -> ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        let packet = Arc::new(Packet {
            inner: JoinInner::new(),
            scope: self.data.clone(),
        });
        // Before the goroutine exists, so its decrement cannot come first.
        // (If `spawn_raw` unwinds, dropping the body and `packet` lowers it
        // again.)
        self.data.running.fetch_add(1, Ordering::Relaxed);
        let body: Arc<dyn Body + 'scope> = Arc::new(ScopedBody {
            f: UnsafeCell::new(Some(f)),
            packet: packet.clone(),
        });
        // SAFETY: we erase 'scope from the body so a 'static goroutine can
        // run it. Every use of 'scope data by the goroutine ends before
        // `scope` returns:
        // 1. The closure is consumed in `run`, and the result is either
        //    taken by a join (which happens inside the scope, as the handle
        //    is bounded by 'scope) or dropped in `Packet::drop`; both happen
        //    before the packet's decrement (module docs, step 4).
        // 2. `scope` does not return (nor unwind) before the count is zero:
        //    it waits after catching the closure's panic, and waiting does
        //    not unwind.
        // 3. After its decrement the goroutine only frees the body's
        //    allocation (dealloc, no drop glue touching 'scope data: the
        //    closure slot is `None`) and switches to its scheduler.
        // 4. If the runtime is dropped while the scope's caller is parked
        //    here (the caller is an abandoned goroutine), the spawned
        //    goroutines are abandoned too: dropping a Runtime joins every M
        //    before it unmaps the stacks, so none of them runs another
        //    instruction, and abandoned bodies are leaked, never dropped
        //    (`Shared::free_dead_gs`). The borrowed data, on the caller's
        //    stack or in what it owns, is never freed while a goroutine can
        //    still use it. A plain-thread caller (`Runtime::scope`) borrows
        //    the Runtime for the whole scope, so it cannot be dropped then.
        // 5. If the process exits (the deadlock report), nothing runs after.
        let body: Arc<dyn Body + 'static> = unsafe { std::mem::transmute(body) };
        let id = self
            .sh
            .spawn_raw(body, Some(std::panic::Location::caller()));
        ScopedJoinHandle {
            packet,
            id,
            _scope: PhantomData,
        }
    }
}

impl std::fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("running", &self.data.running.load(Ordering::Relaxed))
            .field("panicked", &self.data.panicked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// An owned permission to join a scoped goroutine ([`Scope::spawn`]).
/// Dropping it leaves the goroutine to be joined by the scope.
///
/// # Examples
///
/// ```
/// let rt = gosched::Runtime::new().unwrap();
/// let data = [1, 2, 3];
/// let r = rt.scope(|s| {
///     let h = s.spawn(|| data.iter().max().copied());
///     h.join()
/// });
/// assert_eq!(r.unwrap(), Some(3));
/// ```
pub struct ScopedJoinHandle<'scope, T> {
    packet: Arc<Packet<T>>,
    id: u64,
    _scope: PhantomData<&'scope ()>,
}

impl<T> ScopedJoinHandle<'_, T> {
    /// Waits for the goroutine to finish (parks a goroutine, blocks a
    /// thread); `Err` carries its panic payload, which then no longer makes
    /// the scope panic.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.scope(|s| {
    ///     let h = s.spawn(|| panic!("handled"));
    ///     assert!(h.join().is_err());
    /// }); // does not panic: the panic was joined
    /// ```
    pub fn join(self) -> std::thread::Result<T> {
        self.packet.inner.wait()
    }

    /// Whether the goroutine has finished.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.scope(|s| {
    ///     let h = s.spawn(|| 7);
    ///     while !h.is_finished() {
    ///         std::thread::yield_now();
    ///     }
    ///     assert_eq!(h.join().unwrap(), 7);
    /// });
    /// ```
    pub fn is_finished(&self) -> bool {
        self.packet.inner.done.load(Ordering::Acquire)
    }

    /// The goroutine's id.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.scope(|s| {
    ///     let h = s.spawn(|| gosched::current_id().unwrap());
    ///     let id = h.id();
    ///     assert_eq!(h.join().unwrap(), id);
    /// });
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<T> std::fmt::Debug for ScopedJoinHandle<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedJoinHandle")
            .field("id", &self.id)
            .field("finished", &self.is_finished())
            .finish()
    }
}
