//! Goroutine-local storage: [`local!`](crate::local!) and [`LocalKey`].
//!
//! # Why not `thread_local!`
//!
//! A goroutine may resume on another OS thread after any cooperative point
//! (sleep, channel operation, join, yield), and LLVM keeps the address of a
//! `thread_local!` in a register across calls: a function that touches a
//! thread-local on both sides of such a point may use the *previous*
//! thread's slot (see the crate docs, "Soundness"). Goroutine-local values
//! are reached through the running G instead, which `current_g` reads
//! thread-base-relative on every call, so a migrated or preempted goroutine always
//! finds its own value.
//!
//! # Layout
//!
//! Each `LocalKey` static gets a process-wide index the first time it is
//! used (`LocalKey::index`; indexes are never reused). Each G has a vector
//! of slots indexed by it (`G::locals`), grown on demand; a slot holds a
//! boxed value as a raw pointer plus its drop function. Only the goroutine
//! itself touches its vector (owner access, see `G`), and no borrow of the
//! vector is held while user code runs (an initialiser or `with`'s closure
//! may use other keys, which may grow the vector; the values themselves are
//! boxed, so their addresses stay put).
//!
//! # Lifetime of the values
//!
//! A value is created by the first `with` on each goroutine and dropped
//! when the goroutine's body returns (or panics), on the goroutine, before
//! its `JoinHandle` reports the result (std drops thread-locals before
//! `join` returns too). A destructor that uses a key again re-creates it;
//! up to [`DESTRUCTOR_ROUNDS`] rounds run, then what is left is leaked (as
//! pthreads do). Goroutines abandoned by a dropped runtime never drop their
//! values (their destructors never run, as for the rest of their stack).

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sched::g::GRef;

/// Rounds of destructors at goroutine exit (pthreads'
/// PTHREAD_DESTRUCTOR_ITERATIONS is 4).
const DESTRUCTOR_ROUNDS: usize = 4;

/// The next index to hand to a key (process-wide; indexes are never reused).
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

/// One goroutine-local value, type-erased.
pub(crate) struct Slot {
    /// From `Box::<T>::into_raw`.
    ptr: *mut (),
    /// Frees `ptr` as the `Box<T>` it came from.
    drop_fn: unsafe fn(*mut ()),
}

/// A G's goroutine-local values (`G::locals`), indexed by key index.
pub(crate) type Slots = UnsafeCell<Vec<Option<Slot>>>;

/// Drops a value made by `LocalKey::get_or_init`.
///
/// # Safety
/// `p` came from `Box::<T>::into_raw` and is not used afterwards.
unsafe fn drop_box<T>(p: *mut ()) {
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(p.cast::<T>()) });
}

/// Declares goroutine-local statics: each goroutine that uses one gets its
/// own value, created by `init_expr` on first use and dropped when the
/// goroutine exits. Access goes through [`LocalKey::with`].
///
/// The shape is `thread_local!`'s (and tokio's `task_local!`'s):
/// attributes and visibility are allowed, and several statics may be
/// declared in one invocation.
///
/// ```text
/// gosched::local! {
///     static NAME: Type = init_expr;
///     pub static OTHER: Type = init_expr;
/// }
/// ```
///
/// # Examples
///
/// ```
/// use std::cell::Cell;
///
/// gosched::local! {
///     static COUNTER: Cell<u32> = Cell::new(0);
/// }
///
/// let rt = gosched::Builder::new().procs(2).build().unwrap();
/// let counts = rt.block_on(|| {
///     let hs: Vec<_> = (1..=3)
///         .map(|n| {
///             gosched::spawn(move || {
///                 for _ in 0..n {
///                     COUNTER.with(|c| c.set(c.get() + 1));
///                     gosched::yield_now(); // may resume on another thread
///                 }
///                 COUNTER.with(|c| c.get())
///             })
///         })
///         .collect();
///     hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
/// });
/// assert_eq!(counts, [1, 2, 3]); // one counter per goroutine
/// ```
#[macro_export]
macro_rules! local {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident : $t:ty = $init:expr; $($rest:tt)*) => {
        $(#[$attr])*
        $vis static $name: $crate::LocalKey<$t> = {
            fn __gosched_local_init() -> $t {
                $init
            }
            $crate::LocalKey::__new(__gosched_local_init)
        };
        $crate::local!($($rest)*);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident : $t:ty = $init:expr) => {
        $crate::local!($(#[$attr])* $vis static $name: $t = $init;);
    };
}

/// A goroutine-local key, declared with [`local!`](crate::local!).
///
/// # Examples
///
/// ```
/// use std::cell::RefCell;
///
/// gosched::local! {
///     static LOG: RefCell<Vec<&'static str>> = RefCell::new(Vec::new());
/// }
///
/// let rt = gosched::Runtime::new().unwrap();
/// let v = rt.block_on(|| {
///     LOG.with(|l| l.borrow_mut().push("a"));
///     gosched::sleep(std::time::Duration::from_millis(1));
///     LOG.with(|l| l.borrow_mut().push("b"));
///     LOG.with(|l| l.borrow().clone())
/// });
/// assert_eq!(v, ["a", "b"]);
/// ```
pub struct LocalKey<T: 'static> {
    init: fn() -> T,
    /// 0 until first use, then the key's index + 1 (Relaxed: the value
    /// is only ever one number, and a race just wastes an index).
    index: AtomicUsize,
}

/// The error [`LocalKey::try_with`] returns outside a goroutine.
///
/// # Examples
///
/// ```
/// gosched::local! { static X: u8 = 1; }
/// let e = X.try_with(|_| ()).unwrap_err();
/// assert!(e.to_string().contains("outside a goroutine"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessError;

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("goroutine-local value accessed outside a goroutine")
    }
}

impl std::error::Error for AccessError {}

impl<T: 'static> LocalKey<T> {
    #[doc(hidden)]
    pub const fn __new(init: fn() -> T) -> LocalKey<T> {
        LocalKey {
            init,
            index: AtomicUsize::new(0),
        }
    }

    /// Calls `f` with the calling goroutine's value, creating it first if
    /// this goroutine has not used it yet.
    ///
    /// # Panics
    ///
    /// Outside a goroutine (on a plain thread, or on a runtime thread
    /// outside any goroutine); use [`try_with`](Self::try_with) to check.
    ///
    /// # Examples
    ///
    /// ```
    /// gosched::local! { static NAME: String = String::from("gopher"); }
    /// let rt = gosched::Runtime::new().unwrap();
    /// let n = rt.block_on(|| NAME.with(|s| s.len()));
    /// assert_eq!(n, 6);
    /// let r = std::panic::catch_unwind(|| NAME.with(|s| s.len()));
    /// assert!(r.is_err()); // not in a goroutine
    /// ```
    #[track_caller]
    pub fn with<F, R>(&'static self, f: F) -> R
    where
        F: FnOnce(&T) -> R,
    {
        match crate::sched::current_g() {
            // SAFETY: `g` is the calling goroutine.
            Some(g) => f(unsafe { &*self.get_or_init(g) }),
            None => panic!(
                "gosched::local! value accessed outside a goroutine \
                 (use try_with to check, or thread_local! on plain threads)"
            ),
        }
    }

    /// Like [`with`](Self::with), but returns `Err(AccessError)` instead of
    /// panicking outside a goroutine.
    ///
    /// # Examples
    ///
    /// ```
    /// gosched::local! { static ID: u32 = 7; }
    /// assert!(ID.try_with(|v| *v).is_err());
    /// let rt = gosched::Runtime::new().unwrap();
    /// assert_eq!(rt.block_on(|| ID.try_with(|v| *v)), Ok(7));
    /// ```
    pub fn try_with<F, R>(&'static self, f: F) -> Result<R, AccessError>
    where
        F: FnOnce(&T) -> R,
    {
        let g = crate::sched::current_g().ok_or(AccessError)?;
        // SAFETY: `g` is the calling goroutine.
        Ok(f(unsafe { &*self.get_or_init(g) }))
    }

    /// This key's index in every G's slot vector, assigned on first use.
    #[inline]
    fn index(&'static self) -> usize {
        match self.index.load(Ordering::Relaxed) {
            0 => self.assign_index(),
            i => i - 1,
        }
    }

    #[cold]
    fn assign_index(&'static self) -> usize {
        let mine = NEXT_INDEX.fetch_add(1, Ordering::Relaxed) + 1;
        match self
            .index
            .compare_exchange(0, mine, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => mine - 1,
            Err(theirs) => theirs - 1,
        }
    }

    /// The goroutine's value, created if missing.
    ///
    /// # Safety
    /// `g` is the calling goroutine (only it touches `g.locals`). The
    /// pointer stays valid until the goroutine's body has returned.
    #[inline]
    unsafe fn get_or_init(&'static self, g: GRef) -> *const T {
        let i = self.index();
        // SAFETY: owner access (the caller's contract); the borrow ends
        // before any user code runs.
        let slots = unsafe { &*g.locals.get() };
        if let Some(Some(s)) = slots.get(i) {
            return s.ptr.cast::<T>();
        }
        // SAFETY: as above.
        unsafe { self.init_slow(g, i) }
    }

    /// # Safety
    /// As `get_or_init`.
    #[cold]
    unsafe fn init_slow(&'static self, g: GRef, i: usize) -> *const T {
        // No borrow of the slots while the initialiser runs: it may use
        // other keys (growing the vector) or, recursively, this one.
        let v = Box::new((self.init)());
        // SAFETY: owner access; no reference into the vector is live.
        let slots = unsafe { &mut *g.locals.get() };
        if slots.len() <= i {
            slots.resize_with(i + 1, || None);
        }
        if let Some(s) = &slots[i] {
            // A recursive initialisation got there first: keep its value
            // (references to it may exist) and drop ours.
            let p = s.ptr.cast::<T>();
            drop(v);
            return p;
        }
        let p = Box::into_raw(v);
        slots[i] = Some(Slot {
            ptr: p.cast(),
            drop_fn: drop_box::<T>,
        });
        p
    }
}

impl<T: 'static> fmt::Debug for LocalKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey").finish_non_exhaustive()
    }
}

/// Drops the calling goroutine's local values (at the end of its body,
/// before the result is published). A destructor's panic becomes the
/// goroutine's result if the body itself succeeded. Costs a `current_g`
/// and a length check for a goroutine that used no keys.
#[inline]
pub(crate) fn exit_destructors<R>(r: std::thread::Result<R>) -> std::thread::Result<R> {
    match crate::sched::current_g() {
        // SAFETY: owner access: we are `g`.
        Some(g) if !unsafe { &*g.locals.get() }.is_empty() => drop_all(g, r),
        _ => r,
    }
}

#[cold]
fn drop_all<R>(g: GRef, r: std::thread::Result<R>) -> std::thread::Result<R> {
    let mut panic = None;
    for _ in 0..DESTRUCTOR_ROUNDS {
        let mut any = false;
        let mut i = 0;
        loop {
            // SAFETY: owner access: we are `g`. The borrow ends before the
            // destructor runs (it may use keys again).
            let taken = unsafe {
                let slots = &mut *g.locals.get();
                if i >= slots.len() {
                    break;
                }
                slots[i].take()
            };
            if let Some(s) = taken {
                any = true;
                // SAFETY: the slot was just unlinked, so nothing reaches
                // `ptr` any more; `drop_fn` matches its type.
                let d = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                    (s.drop_fn)(s.ptr)
                }));
                if let Err(p) = d {
                    panic.get_or_insert(p);
                }
            }
            i += 1;
        }
        if !any {
            break;
        }
    }
    // Whatever destructors re-created in the last round is leaked (a
    // `Slot` has no drop glue); the vector is emptied for the G's next
    // goroutine.
    // SAFETY: owner access.
    drop(std::mem::take(unsafe { &mut *g.locals.get() }));
    match (r, panic) {
        (Ok(_), Some(p)) => Err(p),
        (r, _) => r,
    }
}
