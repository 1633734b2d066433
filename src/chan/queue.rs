//! Waiter entries and the FIFO queues of them (Go's `sudog` and `waitq`).
//!
//! A blocked operation is a [`Sel`]: the waiter to wake and a state word
//! that exactly one party moves from `WAITING` to a decision. A single send
//! or receive has one case; a `select!` has one case per arm, all sharing
//! the one `Sel`. Each case that waits on a channel puts an [`Entry`] in that
//! channel's `recvq` or `sendq`: a link to the `Sel`, the case index, and a
//! slot for the value (the value to send, or the place a sender delivers
//! to).
//!
//! # Who touches what
//!
//! - Entries and `Sel`s live on the blocked caller's stack (or inside its
//!   select cases). The caller never moves them while they are queued and
//!   removes every entry of its own from every queue, under that queue's
//!   channel lock, before they die.
//! - An entry's links, `queued` flag and slot are touched only under its
//!   channel's lock, except that the owner reads the slot of the winning
//!   case after it has seen the decision (see below).
//! - A waker (under the channel lock) pops an entry, unlinks it, moves the
//!   value in or out of the slot, and only then tries to claim the `Sel`
//!   with one CAS (`WAITING -> case + 1`, AcqRel). If the CAS fails the
//!   operation was already decided elsewhere (another arm of the select, or
//!   a timeout): the waker undoes its slot move and tries the next entry.
//!   After a successful CAS the waker touches neither the entry nor the
//!   `Sel`: the owner may already have returned. That is why it clones the
//!   [`Waiter`] *before* the CAS and unparks that clone after unlocking.
//! - The owner loads the state with Acquire (pairs with the claim), so the
//!   slot write that preceded the claim is visible.

use std::cell::{Cell, UnsafeCell};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sched::g::Waiter;

/// `Sel::state` before any decision.
const WAITING: usize = 0;
/// `Sel::state` after the owner gave up (timeout, or a select that found a
/// case ready while registering and retries).
const ABORTED: usize = usize::MAX;

/// What a decided `Sel` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Case `n` fired: a waker completed it (or the channel was closed).
    Fired(usize),
    /// The owner aborted the operation itself.
    Aborted,
}

/// One blocked operation (a send, a receive, or a whole select): who to
/// wake and the decision word. See the module docs.
#[doc(hidden)]
pub struct Sel {
    /// `WAITING`, `case + 1`, or `ABORTED`. Moved away from `WAITING` once,
    /// by one CAS, by a waker (under a channel lock) or by the owner
    /// (abort). AcqRel; the owner's Acquire load pairs with it.
    state: AtomicUsize,
    /// The goroutine or thread that owns the operation. Immutable.
    waiter: Waiter,
}

impl Sel {
    /// A new undecided operation owned by the calling goroutine or thread.
    pub(crate) fn new() -> Sel {
        Sel {
            state: AtomicUsize::new(WAITING),
            waiter: Waiter::current(),
        }
    }

    /// The decision, if any (Acquire: pairs with the deciding CAS, so a value
    /// written into the winning slot before it is visible).
    pub(crate) fn decision(&self) -> Option<Decision> {
        match self.state.load(Ordering::Acquire) {
            WAITING => None,
            ABORTED => Some(Decision::Aborted),
            n => Some(Decision::Fired(n - 1)),
        }
    }

    /// Is it still undecided? (Relaxed: a hint for readiness checks; the
    /// CAS decides.)
    fn is_waiting(&self) -> bool {
        self.state.load(Ordering::Relaxed) == WAITING
    }

    /// Decides for case `case` (a waker's claim). Returns whether this call
    /// decided.
    fn claim(&self, case: usize) -> bool {
        // AcqRel: Release publishes the slot move made just before; Acquire
        // orders us after an earlier abort by the owner.
        self.state
            .compare_exchange(WAITING, case + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The owner gives up. Returns false if a waker decided first (then the
    /// owner must honour that decision).
    pub(crate) fn abort(&self) -> bool {
        // AcqRel: on failure, Acquire makes the winner's slot write visible.
        self.state
            .compare_exchange(WAITING, ABORTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Parks until decided; returns the decision. `reason` is shown by the
    /// deadlock report.
    pub(crate) fn wait(&self, reason: &'static str) -> Decision {
        loop {
            if let Some(d) = self.decision() {
                return d;
            }
            // Token semantics: a waker that claimed us after the load above
            // has unparked (or will unpark) us, and that token makes this
            // park return. Spurious returns just loop.
            crate::sched::g::park(reason);
        }
    }

    /// Parks until decided or `deadline`; `None` means the deadline passed
    /// while still undecided (the caller then tries `abort`).
    pub(crate) fn wait_until(
        &self,
        reason: &'static str,
        deadline: std::time::Instant,
    ) -> Option<Decision> {
        loop {
            if let Some(d) = self.decision() {
                return Some(d);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            crate::sched::g::park_until(reason, deadline);
        }
    }
}

/// One case of a blocked operation, queued on a channel (Go's `sudog`).
///
/// Every field is touched only under the lock of the channel whose queue
/// the entry is (or was last) in, except `slot` after the decision (module
/// docs).
pub(crate) struct Entry<T> {
    /// The operation this entry belongs to; set before queueing.
    sel: Cell<*const Sel>,
    /// The case index within the operation.
    case: Cell<usize>,
    /// Send: the value to send (taken by the receiver that completes it).
    /// Receive: empty; filled by the sender that completes it.
    slot: UnsafeCell<Option<T>>,
    prev: Cell<*const Entry<T>>,
    next: Cell<*const Entry<T>>,
    queued: Cell<bool>,
}

impl<T> Entry<T> {
    pub(crate) fn new() -> Entry<T> {
        Entry {
            sel: Cell::new(ptr::null()),
            case: Cell::new(0),
            slot: UnsafeCell::new(None),
            prev: Cell::new(ptr::null()),
            next: Cell::new(ptr::null()),
            queued: Cell::new(false),
        }
    }

    /// Binds the entry to case `case` of `sel` (before queueing it).
    pub(crate) fn bind(&self, sel: &Sel, case: usize) {
        debug_assert!(!self.queued.get(), "binding a queued entry");
        self.sel.set(sel);
        self.case.set(case);
    }

    /// Is the entry's operation `sel`?
    pub(crate) fn belongs_to(&self, sel: &Sel) -> bool {
        ptr::eq(self.sel.get(), sel)
    }

    fn sel(&self) -> &Sel {
        // SAFETY: `sel` is set by `bind` before the entry is queued, and the
        // owner keeps the `Sel` alive while any entry of it is queued (it
        // removes them all before returning); we are called only on queued
        // or just-popped entries, under the channel lock.
        unsafe { &*self.sel.get() }
    }

    /// Puts a value in the slot. Only the owner while the entry is not
    /// queued, or a waker under the channel lock on a popped entry.
    pub(crate) fn put(&self, v: Option<T>) {
        // SAFETY: per the access rule above nobody else touches the slot
        // now: the owner reads it only after a decision, and a decision for
        // this entry is made only by whoever holds it popped (us).
        unsafe { *self.slot.get() = v };
    }

    /// Takes the value out of the slot (same access rule as `put`; the
    /// owner may also call it after its `Sel` is decided, when no waker
    /// holds the entry any more).
    pub(crate) fn take(&self) -> Option<T> {
        // SAFETY: as in `put`.
        unsafe { (*self.slot.get()).take() }
    }
}

impl<T> Drop for Entry<T> {
    fn drop(&mut self) {
        if self.queued.get() {
            // A queue would keep a dangling pointer: a bug in this crate.
            // Continuing could corrupt memory; stop here instead.
            crate::diag::stderr_line(format_args!(
                "fatal: gosched channel waiter dropped while still queued"
            ));
            std::process::abort();
        }
    }
}

/// A FIFO of entries: an intrusive doubly linked list, so that an owner
/// removes its entry in O(1) (Go's `waitq`). Lives inside the channel's
/// locked state; every method requires that lock.
pub(crate) struct WaitQueue<T> {
    head: *const Entry<T>,
    tail: *const Entry<T>,
}

impl<T> WaitQueue<T> {
    pub(crate) const fn new() -> WaitQueue<T> {
        WaitQueue {
            head: ptr::null(),
            tail: ptr::null(),
        }
    }

    /// Appends `e`. Precondition: `e` is bound and not queued anywhere; the
    /// caller keeps it alive and unmoved until it is removed.
    pub(crate) fn push_back(&mut self, e: &Entry<T>) {
        debug_assert!(!e.queued.get(), "entry queued twice");
        debug_assert!(!e.sel.get().is_null(), "queueing an unbound entry");
        e.prev.set(self.tail);
        e.next.set(ptr::null());
        if self.tail.is_null() {
            self.head = e;
        } else {
            // SAFETY: `tail` is a queued entry, alive by the owner's promise.
            unsafe { (*self.tail).next.set(e) };
        }
        self.tail = e;
        e.queued.set(true);
    }

    /// Unlinks `e` if it is queued (here: an entry is only ever in the queue
    /// its owner put it in). Returns whether it was.
    pub(crate) fn remove(&mut self, e: &Entry<T>) -> bool {
        if !e.queued.get() {
            return false;
        }
        let (prev, next) = (e.prev.get(), e.next.get());
        if prev.is_null() {
            self.head = next;
        } else {
            // SAFETY: linked neighbours are queued entries, alive.
            unsafe { (*prev).next.set(next) };
        }
        if next.is_null() {
            self.tail = prev;
        } else {
            // SAFETY: as above.
            unsafe { (*next).prev.set(prev) };
        }
        e.prev.set(ptr::null());
        e.next.set(ptr::null());
        e.queued.set(false);
        true
    }

    /// Unlinks and returns the head.
    fn pop_front(&mut self) -> Option<&Entry<T>> {
        // SAFETY: a queued entry is alive until its owner removes it, which
        // needs the lock we hold; the returned borrow ends before we unlock
        // (it is tied to `&mut self`, which is behind the lock guard).
        let e = unsafe { self.head.as_ref()? };
        self.remove(e);
        Some(e)
    }

    /// Is some entry of an operation other than `not` still undecided?
    /// A readiness hint for `select!` registration.
    pub(crate) fn has_live(&self, not: Option<&Sel>) -> bool {
        let mut p = self.head;
        // SAFETY: queued entries and their `Sel`s are alive (see `pop_front`).
        while let Some(e) = unsafe { p.as_ref() } {
            let mine = not.is_some_and(|s| e.belongs_to(s));
            if !mine && e.sel().is_waiting() {
                return true;
            }
            p = e.next.get();
        }
        false
    }

    /// Gives `v` to the first waiting receiver that can still take it
    /// (Go's `send` to a dequeued sudog). Returns the receiver's waiter to
    /// unpark after unlocking, or `v` back if every entry was stale.
    #[inline]
    pub(crate) fn hand_to_receiver(&mut self, v: T) -> Result<Waiter, T> {
        if self.head.is_null() {
            // The common case on a buffered channel: nobody waits.
            return Err(v);
        }
        self.hand_to_receiver_slow(v)
    }

    #[cold]
    fn hand_to_receiver_slow(&mut self, mut v: T) -> Result<Waiter, T> {
        while let Some(e) = self.pop_front() {
            let sel = e.sel();
            let w = sel.waiter.clone();
            e.put(Some(v));
            if sel.claim(e.case.get()) {
                return Ok(w);
            }
            // Decided elsewhere (stale): take the value back.
            v = e.take().expect("value vanished from a stale entry");
        }
        Err(v)
    }

    /// Takes the value of the first waiting sender that can still give it.
    /// Returns the value and the sender's waiter to unpark after unlocking.
    #[inline]
    pub(crate) fn take_from_sender(&mut self) -> Option<(T, Waiter)> {
        if self.head.is_null() {
            return None;
        }
        self.take_from_sender_slow()
    }

    #[cold]
    fn take_from_sender_slow(&mut self) -> Option<(T, Waiter)> {
        while let Some(e) = self.pop_front() {
            let sel = e.sel();
            let w = sel.waiter.clone();
            let v = e.take().expect("a queued sender without a value");
            if sel.claim(e.case.get()) {
                return Some((v, w));
            }
            e.put(Some(v));
        }
        None
    }

    /// Decides every queued entry as fired-with-nothing-moved (close):
    /// receivers find an empty slot, senders their value still there.
    /// Returns the waiters to unpark after unlocking.
    pub(crate) fn release_all(&mut self, out: &mut Vec<Waiter>) {
        while let Some(e) = self.pop_front() {
            let sel = e.sel();
            let w = sel.waiter.clone();
            if sel.claim(e.case.get()) {
                out.push(w);
            }
        }
    }
}

// SAFETY: the raw pointers in a queue are only dereferenced under the
// channel lock that owns the queue; the entries they point at hold `T`s
// that move between threads, hence `T: Send`.
unsafe impl<T: Send> Send for WaitQueue<T> {}
