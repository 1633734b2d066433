//! `OnceLock<T>`: a cell initialised once, like `std::sync::OnceLock`, whose
//! waiters park while another goroutine runs the initialiser (Go's
//! `sync.Once` / `sync.OnceValue`).
//!
//! # Protocol
//!
//! `state` goes INCOMPLETE -> RUNNING (the one caller whose CAS wins runs
//! the initialiser) -> COMPLETE (value written before, Release). Callers
//! that find RUNNING register under the waiter lock after re-checking that
//! it is still RUNNING, noting the current `generation`, then park until
//! the generation has passed. The initialiser's end stores the new state
//! *before* it takes the waiter lock, and under that lock bumps the
//! generation and takes the whole list to wake it, so a waiter either
//! registered in time (and is woken) or re-checks under the lock and sees
//! the new state: no lost wake-up. If the initialiser panics, the state
//! goes back to INCOMPLETE and the waiters wake up; the first to retry runs
//! its own initialiser (std's `OnceLock` does the same).
//!
//! A woken waiter is no longer on the list, so it must not park again on
//! the state alone: another caller may have won the CAS for a retry before
//! the waiter ran, and that retry's end wakes only the waiters registered
//! with it. Hence the generation: once it has passed, the waiter goes back
//! to `get_or_init`'s loop, which returns the value, runs the initialiser,
//! or registers again.

use std::cell::UnsafeCell;
use std::fmt;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::sched::g::Waiter;
use crate::sched::{NoPreempt, RuntimeLock};

const INCOMPLETE: u8 = 0;
const RUNNING: u8 = 1;
const COMPLETE: u8 = 2;

/// A cell written once, by the first caller of
/// [`get_or_init`](OnceLock::get_or_init) (or [`set`](OnceLock::set));
/// concurrent callers park (goroutines) or block (plain threads) until the
/// value is ready. Good for lazily initialised shared state whose
/// initialiser itself waits (I/O, channels, sleeps) without tying up
/// threads.
///
/// # Examples
///
/// ```
/// use gosched::sync::OnceLock;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// static CONFIG: OnceLock<String> = OnceLock::new();
/// static CALLS: AtomicUsize = AtomicUsize::new(0);
///
/// let rt = gosched::Builder::new().procs(2).build().unwrap();
/// rt.block_on(|| {
///     let hs: Vec<_> = (0..8)
///         .map(|_| {
///             gosched::spawn(|| {
///                 CONFIG.get_or_init(|| {
///                     CALLS.fetch_add(1, Ordering::SeqCst);
///                     gosched::sleep(std::time::Duration::from_millis(5)); // others park
///                     String::from("loaded")
///                 })
///                 .len()
///             })
///         })
///         .collect();
///     assert!(hs.into_iter().all(|h| h.join().unwrap() == 6));
/// });
/// assert_eq!(CALLS.load(Ordering::SeqCst), 1);
/// ```
pub struct OnceLock<T> {
    /// INCOMPLETE, RUNNING or COMPLETE. COMPLETE is stored with Release
    /// after the value is written; readers load it with Acquire.
    state: AtomicU8,
    /// Who waits for a running initialiser.
    waiters: std::sync::Mutex<Vec<Waiter>>,
    /// Bumped (under `waiters`' lock, Release) each time an initialiser
    /// ends and the list is taken; a waiter parks until it differs from
    /// the value it registered with (module docs). Wraps.
    generation: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, by the caller that won the RUNNING
// CAS, before COMPLETE is published (Release); it is only read after an
// Acquire load of COMPLETE, as `&T` (so `T: Sync`), and may be written and
// dropped on another thread than it is read (so `T: Send`).
unsafe impl<T: Send + Sync> Sync for OnceLock<T> {}
// SAFETY: owning the cell is owning a `T`.
unsafe impl<T: Send> Send for OnceLock<T> {}

impl<T> OnceLock<T> {
    /// An empty cell.
    ///
    /// # Examples
    ///
    /// ```
    /// let c: gosched::sync::OnceLock<u8> = gosched::sync::OnceLock::new();
    /// assert!(c.get().is_none());
    /// ```
    pub const fn new() -> OnceLock<T> {
        OnceLock {
            state: AtomicU8::new(INCOMPLETE),
            waiters: std::sync::Mutex::new(Vec::new()),
            generation: AtomicUsize::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// The value, if it has been initialised; never waits.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = gosched::sync::OnceLock::new();
    /// assert_eq!(c.get(), None);
    /// c.get_or_init(|| 3);
    /// assert_eq!(c.get(), Some(&3));
    /// ```
    pub fn get(&self) -> Option<&T> {
        // Acquire: pairs with the Release store of COMPLETE.
        if self.state.load(Ordering::Acquire) == COMPLETE {
            // SAFETY: COMPLETE means written, and never written again.
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }

    /// The value, initialising it with `f` if nobody has; if another caller
    /// is running its initialiser, waits for it (parks a goroutine, blocks
    /// a thread). If `f` panics the panic propagates and the cell stays
    /// empty (a waiter then runs its own initialiser). Calling
    /// `get_or_init` on the same cell from inside `f` waits for itself
    /// forever.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = gosched::sync::OnceLock::new();
    /// assert_eq!(*c.get_or_init(|| 1), 1);
    /// assert_eq!(*c.get_or_init(|| 2), 1); // already set
    /// ```
    pub fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        let mut f = Some(f);
        loop {
            if let Some(v) = self.get() {
                return v;
            }
            match self.state.compare_exchange(
                INCOMPLETE,
                RUNNING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let f = f.take().expect("the initialiser runs once per call");
                    // On a panic in `f`, reopen the cell and wake the waiters.
                    let reset = Finish {
                        cell: self,
                        to: INCOMPLETE,
                    };
                    let v = f();
                    // SAFETY: we hold RUNNING: nobody else writes or reads
                    // the value until COMPLETE is published.
                    unsafe { (*self.value.get()).write(v) };
                    std::mem::forget(reset);
                    self.finish(COMPLETE);
                }
                Err(COMPLETE) => {}
                Err(_) => self.wait_while_running(),
            }
        }
    }

    /// Sets the value if the cell is empty; `Err(value)` if it was already
    /// set. If an initialiser is running, waits for it first.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = gosched::sync::OnceLock::new();
    /// assert_eq!(c.set(1), Ok(()));
    /// assert_eq!(c.set(2), Err(2));
    /// ```
    pub fn set(&self, value: T) -> Result<(), T> {
        let mut value = Some(value);
        self.get_or_init(|| value.take().expect("taken once"));
        match value {
            None => Ok(()),
            Some(v) => Err(v),
        }
    }

    /// A mutable reference to the value, if set (`&mut` proves nobody else
    /// uses the cell).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut c = gosched::sync::OnceLock::new();
    /// c.set(1).unwrap();
    /// *c.get_mut().unwrap() += 1;
    /// assert_eq!(c.get(), Some(&2));
    /// ```
    pub fn get_mut(&mut self) -> Option<&mut T> {
        if *self.state.get_mut() == COMPLETE {
            // SAFETY: COMPLETE means written; `&mut self` is exclusive.
            Some(unsafe { self.value.get_mut().assume_init_mut() })
        } else {
            None
        }
    }

    /// Consumes the cell, returning the value if set.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = gosched::sync::OnceLock::new();
    /// c.set(String::from("x")).unwrap();
    /// assert_eq!(c.into_inner().as_deref(), Some("x"));
    /// ```
    pub fn into_inner(mut self) -> Option<T> {
        if *self.state.get_mut() != COMPLETE {
            return None;
        }
        *self.state.get_mut() = INCOMPLETE; // so Drop does not drop it too
                                            // SAFETY: it was COMPLETE (written), and the state no longer says
                                            // so, so this is the only read that moves it out.
        Some(unsafe { self.value.get_mut().assume_init_read() })
    }

    /// Parks until the initialiser running now has finished (either way);
    /// the caller then re-checks the state (module docs: another one may
    /// be running by then).
    fn wait_while_running(&self) {
        let registered = {
            let _np = NoPreempt::enter();
            let mut w = self.waiters.rt_lock();
            if self.state.load(Ordering::Acquire) != RUNNING {
                return;
            }
            w.push(Waiter::current());
            self.generation.load(Ordering::Relaxed)
        };
        // Acquire: pairs with the Release bump in `finish` (which follows
        // its store of the state).
        while self.generation.load(Ordering::Acquire) == registered {
            crate::sched::g::park("sync.OnceLock");
        }
    }

    /// Publishes the end of an initialiser (`to` is COMPLETE or, after a
    /// panic, INCOMPLETE) and wakes every waiter.
    fn finish(&self, to: u8) {
        // Release: pairs with the Acquire loads in `get` and the waiters;
        // stored before taking the lock (module docs).
        self.state.store(to, Ordering::Release);
        let ws = {
            let _np = NoPreempt::enter();
            let mut w = self.waiters.rt_lock();
            // Release: pairs with the waiters' Acquire loads.
            self.generation.fetch_add(1, Ordering::Release);
            // The guard is a local, dropped before `_np` (a guard made in
            // the block's tail expression would outlive `_np` in edition
            // 2021, holding the lock outside the no-preempt region).
            std::mem::take(&mut *w)
        };
        for w in ws {
            w.unpark();
        }
    }
}

/// Runs `OnceLock::finish(to)` when dropped (the initialiser unwound).
struct Finish<'a, T> {
    cell: &'a OnceLock<T>,
    to: u8,
}

impl<T> Drop for Finish<'_, T> {
    fn drop(&mut self) {
        self.cell.finish(self.to);
    }
}

impl<T> Drop for OnceLock<T> {
    fn drop(&mut self) {
        if *self.state.get_mut() == COMPLETE {
            // SAFETY: COMPLETE means written, and this is the last use.
            unsafe { self.value.get_mut().assume_init_drop() };
        }
    }
}

impl<T> Default for OnceLock<T> {
    fn default() -> OnceLock<T> {
        OnceLock::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for OnceLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_tuple("OnceLock");
        match self.get() {
            Some(v) => d.field(v),
            None => d.field(&format_args!("<uninit>")),
        };
        d.finish()
    }
}
