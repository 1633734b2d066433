//! Goroutine-aware synchronization, after Go's `sync` package: a contended
//! [`Mutex`] parks the goroutine (its thread runs other goroutines) instead
//! of blocking the thread, and so do [`WaitGroup::wait`], [`RwLock`] (Go's
//! `RWMutex`), [`Condvar`] (Go's `Cond`, with [`Mutex`]) and the weighted
//! [`Semaphore`] (Go's `x/sync/semaphore`), and waiters for a running
//! [`OnceLock`] initialiser. All also work from plain threads, which
//! block.
//!
//! Why not `std::sync::Mutex` in goroutines? It blocks the worker thread,
//! and with it the P: on one P, a goroutine waiting for a lock whose holder
//! is parked on the same P would never let the holder run.
//!
//! # Examples
//!
//! ```
//! use gosched::sync::{Mutex, WaitGroup};
//! use std::sync::Arc;
//!
//! let rt = gosched::Builder::new().procs(1).build().unwrap();
//! let v = rt.block_on(|| {
//!     let log = Arc::new(Mutex::new(Vec::new()));
//!     let wg = WaitGroup::new();
//!     for i in 0..3 {
//!         wg.add(1);
//!         let (log, wg) = (log.clone(), wg.clone());
//!         gosched::spawn(move || {
//!             let mut l = log.lock();
//!             gosched::yield_now(); // others run, and park on the lock
//!             l.push(i);
//!             drop(l);
//!             wg.done();
//!         });
//!     }
//!     wg.wait();
//!     let mut v = log.lock().clone();
//!     v.sort();
//!     v
//! });
//! assert_eq!(v, [0, 1, 2]);
//! ```

mod condvar;
mod mutex;
mod once;
mod rwlock;
mod semaphore;
pub(crate) mod spin;
mod waitgroup;

pub use self::condvar::Condvar;
pub use self::mutex::{Mutex, MutexGuard, STARVATION_THRESHOLD};
pub use self::once::OnceLock;
pub use self::rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard, MAX_READERS};
pub use self::semaphore::Semaphore;
pub use self::waitgroup::WaitGroup;
