//! A P's local run queue (Go's `runq`, `runnext` and the queue half of
//! `runqput`/`runqget`/`runqsteal`), in one type: a change to how a P
//! queues its goroutines touches this file only.
//!
//! Three places, in the order the owner takes from them:
//!
//! 1. `next` (Go's `runnext`): one goroutine that runs next and inherits
//!    the current time slice. A goroutine readied or spawned by the running
//!    one goes here, so a ping-pong pair runs back to back; the goroutine it
//!    displaces goes to the deque's tail.
//! 2. `yielded`: a goroutine that yielded while it was the only other
//!    runnable one. It is the queue's tail, kept out of the deque so that a
//!    yield between two goroutines costs no atomic read-modify-write
//!    (`Worker::pop` is one). Not stealable: it waits at most until the
//!    running goroutine yields, parks or is preempted.
//! 3. `deque`: a FIFO crossbeam `Worker` (Chase-Lev); thieves take half of
//!    it through `stealer`.
//!
//! Who may call what: the `&self` methods (`has_work`, `len`,
//! `has_stealable_work`, `steal_into`'s victim side) are for any thread;
//! the [`Owner`] methods only for the P's owner, g0 in state SCHED or a
//! goroutine holding a claim (see "Ownership of a P" in `crate::sched`).
//! [`RunQueue::owner`] is the one `unsafe` door to them.

use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

use crossbeam_deque::{Injector, Steal, Stealer, Worker};

use crate::sched::g::{GRef, G};

/// How long a thief waits before taking `next` from a running P (Go's
/// `usleep(3)` in `runqgrab`).
const NEXT_GRACE: Duration = Duration::from_micros(3);

/// A P's run queue. See the module docs.
pub(crate) struct RunQueue {
    /// Set by the owner (swap); taken by the owner (swap) or a thief (CAS),
    /// AcqRel.
    next: AtomicPtr<G>,
    /// Owner only (plain Relaxed load and store); others only peek.
    yielded: AtomicPtr<G>,
    /// Owner only.
    deque: Worker<GRef>,
    stealer: Stealer<GRef>,
}

// SAFETY: `deque` (a `Worker`, which is `Send` but not `Sync`) is touched
// only through an `Owner`, and `owner`'s contract admits one owning thread
// at a time (handed over with Release/Acquire on the P's status word or a
// claim); every other field is atomic or a `Stealer` (`Sync`).
unsafe impl Sync for RunQueue {}

impl RunQueue {
    pub(crate) fn new() -> RunQueue {
        let deque = Worker::new_fifo();
        RunQueue {
            next: AtomicPtr::new(ptr::null_mut()),
            yielded: AtomicPtr::new(ptr::null_mut()),
            stealer: deque.stealer(),
            deque,
        }
    }

    /// The owner's side of the queue.
    ///
    /// # Safety
    /// The caller owns the queue's P (g0 of the M that holds it in state
    /// SCHED or HANDOFF by its own hand, or a goroutine holding a claim on
    /// it) for as long as it uses the returned handle.
    #[inline]
    pub(crate) unsafe fn owner(&self) -> Owner<'_> {
        Owner {
            q: self,
            _not_send: PhantomData,
        }
    }

    /// Is anything queued (next, the yield slot, the deque)? What sysmon
    /// asks before it preempts the running goroutine for the queue's sake,
    /// and a hand-off before it gives the P to a new M. A racy snapshot.
    pub(crate) fn has_work(&self) -> bool {
        self.has_stealable_work() || !self.yielded.load(Ordering::Relaxed).is_null()
    }

    /// Is anything queued that another P could take (next or the deque)?
    /// The yield slot does not count: it is not stealable, and its P runs
    /// it after the current goroutine, so an idle M that woke for it would
    /// find nothing and spin again. A racy snapshot.
    pub(crate) fn has_stealable_work(&self) -> bool {
        !self.stealer.is_empty() || !self.next.load(Ordering::Acquire).is_null()
    }

    /// Is anything queued besides `runnext` (the deque or the yield
    /// slot)? A racy snapshot.
    pub(crate) fn has_work_besides_next(&self) -> bool {
        !self.stealer.is_empty() || !self.yielded.load(Ordering::Relaxed).is_null()
    }

    /// Is `runnext` filled? A racy snapshot (sysmon: a kept goroutine a
    /// thief took is no longer waiting there).
    pub(crate) fn next_is_set(&self) -> bool {
        !self.next.load(Ordering::Acquire).is_null()
    }

    /// Goroutines queued: a racy snapshot for diagnostics.
    pub(crate) fn len(&self) -> usize {
        self.stealer.len()
            + usize::from(!self.next.load(Ordering::Relaxed).is_null())
            + usize::from(!self.yielded.load(Ordering::Relaxed).is_null())
    }

    /// Go's `runqsteal`: moves about half of this (the victim's) deque
    /// into `thief`'s and returns one goroutine of it; failing that, if
    /// `take_next`, this queue's `next`, after a short grace period when
    /// `victim_running` (Go's `runqgrab`: a goroutine that just readied
    /// `next` often blocks right after, as in a channel ping-pong, and its
    /// own P should run `next` rather than bounce the pair between
    /// threads; like Go, sleep rather than watch: the sleep also slows a
    /// thief that would otherwise keep snatching the pair, and watching
    /// `next` for 3 µs instead gained half as much on the 2-P ping-pong).
    pub(crate) fn steal_into(
        &self,
        thief: Owner<'_>,
        take_next: bool,
        victim_running: bool,
    ) -> Option<GRef> {
        if let Some(g) = steal_one(|| self.stealer.steal_batch_and_pop(&thief.q.deque)) {
            return Some(g);
        }
        if !take_next {
            return None;
        }
        let g = self.next.load(Ordering::Acquire);
        if g.is_null() {
            return None;
        }
        if victim_running {
            std::thread::sleep(NEXT_GRACE);
        }
        self.next
            .compare_exchange(g, ptr::null_mut(), Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .and_then(NonNull::new)
            .map(GRef)
    }
}

/// The owner's handle on a [`RunQueue`] (see [`RunQueue::owner`]). Not
/// `Send`: ownership of a P belongs to one thread at a time.
#[derive(Clone, Copy)]
pub(crate) struct Owner<'a> {
    q: &'a RunQueue,
    _not_send: PhantomData<*const ()>,
}

impl Owner<'_> {
    /// Go's `runqput(next=true)`: `g` runs next, inheriting the time slice;
    /// a goroutine it displaces from `next` goes to the tail.
    #[inline]
    pub(crate) fn put_next(self, g: GRef) {
        if let Some(old) = NonNull::new(self.q.next.swap(g.as_ptr(), Ordering::AcqRel)) {
            self.q.deque.push(GRef(old));
        }
    }

    /// Go's `runqput(next=false)`: `g` goes to the tail.
    #[inline]
    pub(crate) fn put_tail(self, g: GRef) {
        self.q.deque.push(g);
    }

    /// Puts a goroutine that yielded at the tail: into the yield slot when
    /// it is the only goroutine waiting (no atomic read-modify-write),
    /// else into the deque.
    #[inline]
    pub(crate) fn put_yielded(self, g: GRef) {
        if self.q.deque.is_empty() && self.q.yielded.load(Ordering::Relaxed).is_null() {
            self.q.yielded.store(g.as_ptr(), Ordering::Relaxed);
        } else {
            self.q.deque.push(g);
        }
    }

    /// Does `next` hold a goroutine?
    #[inline]
    pub(crate) fn has_next(self) -> bool {
        self.q.next_is_set()
    }

    /// Takes `next`, the goroutine that inherits the time slice.
    #[inline]
    pub(crate) fn take_next(self) -> Option<GRef> {
        // Only the owner fills `next`, thieves only empty it: a null seen
        // here stays null, and the common case skips the swap.
        if self.q.next.load(Ordering::Relaxed).is_null() {
            return None;
        }
        NonNull::new(self.q.next.swap(ptr::null_mut(), Ordering::AcqRel)).map(GRef)
    }

    /// Takes the head of the rest of the queue: the yield slot (it came
    /// before the deque's goroutines: a goroutine yields into it only when
    /// the deque is empty), then the deque.
    #[inline]
    pub(crate) fn pop(self) -> Option<GRef> {
        let y = self.q.yielded.load(Ordering::Relaxed);
        if !y.is_null() {
            self.q.yielded.store(ptr::null_mut(), Ordering::Relaxed);
            // SAFETY: non-null, checked above.
            return Some(GRef(unsafe { NonNull::new_unchecked(y) }));
        }
        self.q.deque.pop()
    }

    /// Takes a batch from a global queue into the deque and returns one of
    /// it (Go's `globrunqget`).
    #[inline]
    pub(crate) fn refill_from(self, global: &Injector<GRef>) -> Option<GRef> {
        steal_one(|| global.steal_batch_and_pop(&self.q.deque))
    }

    /// Takes every queued goroutine, `next` first (a P being destroyed).
    pub(crate) fn drain(self, mut f: impl FnMut(GRef)) {
        if let Some(g) = self.take_next() {
            f(g);
        }
        while let Some(g) = self.pop() {
            f(g);
        }
    }
}

/// Runs a steal until it succeeds or finds nothing (crossbeam's `Retry`
/// means a race with another thief, not emptiness).
pub(crate) fn steal_one(mut f: impl FnMut() -> Steal<GRef>) -> Option<GRef> {
    loop {
        match f() {
            Steal::Success(g) => return Some(g),
            Steal::Empty => return None,
            Steal::Retry => std::hint::spin_loop(),
        }
    }
}

#[cfg(test)]
mod tests;
