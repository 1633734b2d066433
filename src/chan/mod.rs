//! Channels with Go's semantics: unbuffered rendezvous or buffered FIFO,
//! close, and [`select!`](crate::select!), for goroutines and plain threads
//! alike.
//!
//! ```
//! use gosched::chan;
//!
//! let rt = gosched::Runtime::new().unwrap();
//! let sum = rt.block_on(|| {
//!     let (tx, rx) = chan::channel(0); // unbuffered: each send meets a receive
//!     gosched::spawn(move || {
//!         for i in 1..=10 {
//!             tx.send(i).unwrap();
//!         }
//!         // dropping the last Sender closes the channel
//!     });
//!     rx.iter().sum::<i32>() // ends when the channel is closed and drained
//! });
//! assert_eq!(sum, 55);
//! ```
//!
//! # Time
//!
//! Waits with a limit: [`Sender::send_timeout`], [`Sender::send_deadline`],
//! [`Receiver::recv_timeout`], [`Receiver::recv_deadline`], and
//! `default(timeout)` in [`select!`](crate::select!). Timer channels:
//! [`after`] and [`tick`] (Go's `time.After` and `time.Tick`), and [`Timer`]
//! and [`Ticker`] (Go's `time.Timer` and `time.Ticker`), which can be
//! stopped and reset with Go 1.23's guarantee that no stale value is
//! received afterwards.
//!
//! # The channel (Go's `hchan`)
//!
//! A channel is one [`Arc`]'d `Chan`: its capacity and, behind one lock,
//!
//! - `buf`: the buffered values, FIFO, at most `cap` of them (none when
//!   `cap` is 0);
//! - `recvq` and `sendq`: FIFO queues of blocked receivers and senders, one
//!   entry per waiting case (Go's `sudog`, see `chan/queue.rs`); a sender's entry
//!   holds the value it wants to send, a receiver's entry a slot a sender
//!   fills;
//! - `closed`.
//!
//! Invariants, true whenever the lock is free:
//!
//! 1. A buffered channel never has both waiting receivers and a non-empty
//!    buffer (a receiver that finds a value takes it instead of waiting).
//! 2. A channel never has waiting senders unless its buffer is full (a
//!    sender that finds room uses it instead of waiting).
//! 3. A closed channel has no waiting sender or receiver: `close` wakes them
//!    all, and nobody queues on a closed channel.
//!
//! Queues may also hold *stale* entries: entries of a `select!` that was
//! already decided by another arm (or of an operation that timed out) and
//! whose owner has not yet come to remove them. Wakers skip them (their
//! claim fails, see below), and readiness checks ignore them.
//!
//! # The protocol (Go's chansend, chanrecv, closechan)
//!
//! Send `v`:
//!
//! 1. Lock. If closed, unlock and return `v` in the error.
//! 2. If a receiver waits, pop it, put `v` in its slot and claim its
//!    operation (one CAS; on failure the entry was stale: take `v` back and
//!    try the next). Unlock and unpark it: the value went from hand to hand
//!    without touching the buffer.
//! 3. Else, if the buffer has room, push `v`, unlock, return.
//! 4. Else queue an entry holding `v` on `sendq`, unlock, and park until the
//!    entry's operation is decided. An empty slot then means a receiver took
//!    the value; a full one means the channel was closed.
//!
//! Receive:
//!
//! 1. Lock. If a sender waits: on an unbuffered channel take its value; on a
//!    buffered one (whose buffer is full, invariant 2) take the head of the
//!    buffer and move the sender's value to the tail. Claim, unlock, unpark
//!    it.
//! 2. Else pop the buffer's head if any.
//! 3. Else, if closed, return `None`.
//! 4. Else queue an empty entry on `recvq`, unlock, park until decided: a
//!    full slot is the value; an empty one means closed.
//!
//! Close: lock, mark closed, decide every queued entry (receivers get
//! nothing, senders keep their value), unlock, unpark them all. Values
//! still buffered stay for receivers to drain.
//!
//! # Parking without lost wake-ups
//!
//! The owner queues its entry and unlocks *before* it parks, so a waker can
//! decide it at any moment after the unlock, even before the owner parks.
//! The owner loops `while undecided { park() }`, and the runtime's park has
//! token semantics: an unpark that comes before the park makes that park
//! return at once. So in every interleaving the owner either sees the
//! decision before parking or is woken by the token; the unit test
//! `model::park_handshake_never_loses_a_wakeup` enumerates the
//! interleavings of owner, waker and timeout to check exactly that.
//!
//! Every lock is taken inside a no-preempt region, so asynchronous
//! preemption never suspends a goroutine (and, in thread-affine mode, its
//! thread) while it holds a channel lock; locks are always released before
//! parking. The end of that region is also the operation's cooperative
//! preemption check (Go checks at every runtime call): every channel
//! operation takes its channel's lock at least once, so none needs a
//! separate check at entry, which saves a thread-local lookup per call.
//!
//! # Ending a channel
//!
//! Go has no destructors; here dropping the last [`Sender`] closes the
//! channel (receivers drain what is buffered, then get `None`), and so does
//! dropping the last [`Receiver`] (nobody could ever receive: blocked and
//! later sends fail with the value instead of blocking forever).
//!
//! # Rejected designs
//!
//! - Go's select locks every involved channel at once, in address order.
//!   Here each operation has one decision word instead (see `chan/queue.rs`):
//!   select registers on its channels one lock at a time, and whoever CASes
//!   the word first wins. No lock ordering, and a waker never holds two
//!   channel locks.
//! - A lock-free ring for buffered channels: Go keeps one lock per channel
//!   too; the lock is held for a few dozen instructions, and the waiter
//!   queues need it anyway.

mod endpoints;
mod error;
#[cfg(test)]
mod model;
pub(crate) mod queue;
#[doc(hidden)]
pub mod select;
mod stoppable;
mod timer;

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

pub use self::endpoints::{IntoIter, Iter, Receiver, Sender, TryIter};
pub use self::error::{RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};
pub use self::stoppable::{Ticker, Timer};
pub use self::timer::{after, tick};

use crate::sched::g::Waiter;
use crate::sched::NoPreempt;
use queue::{Sel, WaitQueue};

/// Creates a channel of capacity `cap`: 0 is an unbuffered rendezvous (a
/// send completes only when a receiver takes the value), more is a FIFO
/// buffer of that many values (Go's `make(chan T, cap)`).
///
/// Both ends may be cloned and shared between goroutines and threads.
///
/// # Examples
///
/// ```
/// use gosched::chan::channel;
///
/// let (tx, rx) = channel(2);
/// tx.send("a").unwrap();
/// tx.send("b").unwrap(); // buffered: no receiver needed yet
/// assert_eq!(rx.len(), 2);
/// assert_eq!(rx.recv(), Some("a"));
/// assert_eq!(rx.recv(), Some("b"));
/// ```
pub fn channel<T: Send>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan::new(cap));
    (Sender::new(chan.clone()), Receiver::new(chan))
}

/// `deadline`, or 100 years from now if that is sooner (`timer::FOREVER`):
/// every deadline a channel operation waits for stays representable as a
/// timer's nanoseconds, whatever `Instant` the caller passes.
fn clamp_deadline(deadline: Instant) -> Instant {
    deadline.min(crate::sched::timer::deadline_after(
        crate::sched::timer::FOREVER,
    ))
}

/// The shared state of a channel (Go's `hchan`; see the module docs).
pub(crate) struct Chan<T> {
    /// Capacity; immutable.
    cap: usize,
    state: crate::sync::spin::SpinLock<State<T>>,
    /// Live `Sender`s; the last one to drop closes the channel.
    pub(crate) senders: AtomicUsize,
    /// Live `Receiver`s; the last one to drop closes the channel.
    pub(crate) receivers: AtomicUsize,
}

/// The locked part of a channel.
pub(crate) struct State<T> {
    buf: VecDeque<T>,
    recvq: WaitQueue<T>,
    sendq: WaitQueue<T>,
    closed: bool,
    /// Run once when the last `Receiver` drops (a timer channel cancels its
    /// timer). Set once by the channel's creator; taken under the lock and
    /// run after it is released.
    on_receivers_gone: Option<Hook>,
}

/// A channel's `on_receivers_gone` hook.
pub(crate) type Hook = Box<dyn FnOnce() + Send>;

/// A locked channel: the guard, inside a no-preempt region that outlives
/// it (fields drop in order: the lock first).
pub(crate) struct Locked<'a, T> {
    guard: crate::sync::spin::SpinGuard<'a, State<T>>,
    _np: NoPreempt,
}

impl<T> Locked<'_, T> {
    /// Unlocks, then wakes `partner` (the goroutine or thread a completed
    /// hand-off made runnable), in that order: woken first, it could run
    /// straight into our lock.
    #[inline(always)]
    pub(crate) fn unlock_then_wake(self, partner: Option<Waiter>) {
        drop(self);
        if let Some(w) = partner {
            w.unpark();
        }
    }
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = State<T>;
    fn deref(&self) -> &State<T> {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut State<T> {
        &mut self.guard
    }
}

/// Outcome of a send attempt that must not block.
pub(crate) enum SendNow<T> {
    /// Sent; unpark this receiver (if any) after unlocking.
    Done(Option<Waiter>),
    /// Would have to wait; the value comes back.
    Full(T),
    /// The channel is closed; the value comes back.
    Closed(T),
}

/// Outcome of a receive attempt that must not block.
pub(crate) enum RecvNow<T> {
    /// Received; unpark this sender (if any) after unlocking.
    Value(T, Option<Waiter>),
    /// Would have to wait.
    Empty,
    /// Closed and drained.
    Closed,
}

impl<T> Chan<T> {
    fn new(cap: usize) -> Chan<T> {
        Chan {
            cap,
            state: crate::sync::spin::SpinLock::new(State {
                buf: VecDeque::with_capacity(cap.min(1024)),
                recvq: WaitQueue::new(),
                sendq: WaitQueue::new(),
                closed: false,
                on_receivers_gone: None,
            }),
            senders: AtomicUsize::new(1),
            receivers: AtomicUsize::new(1),
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Locks the channel inside a no-preempt region. Never park while
    /// holding the result.
    pub(crate) fn lock(&self) -> Locked<'_, T> {
        let np = NoPreempt::enter();
        // No user code runs under the lock (values are only moved), so
        // nothing panics half-way through a change of the state.
        let guard = self.state.lock();
        Locked { guard, _np: np }
    }

    /// Send steps 1-3 of the module docs, under the lock.
    pub(crate) fn send_now(&self, st: &mut State<T>, v: T) -> SendNow<T> {
        if st.closed {
            return SendNow::Closed(v);
        }
        let v = match st.recvq.hand_to_receiver(v) {
            Ok(w) => return SendNow::Done(Some(w)),
            Err(v) => v,
        };
        if st.buf.len() < self.cap {
            st.buf.push_back(v);
            return SendNow::Done(None);
        }
        SendNow::Full(v)
    }

    /// Receive steps 1-3 of the module docs, under the lock.
    pub(crate) fn recv_now(&self, st: &mut State<T>) -> RecvNow<T> {
        if self.cap == 0 {
            if let Some((v, w)) = st.sendq.take_from_sender() {
                return RecvNow::Value(v, Some(w));
            }
        } else if let Some(v) = st.buf.pop_front() {
            // Room now: the first live sender moves its value to the tail.
            let w = st.sendq.take_from_sender().map(|(sv, w)| {
                st.buf.push_back(sv);
                w
            });
            return RecvNow::Value(v, w);
        }
        if st.closed {
            RecvNow::Closed
        } else {
            RecvNow::Empty
        }
    }

    /// Would a send complete now without waiting (a closed channel counts:
    /// the send completes with an error)? Ignores entries of `mine`.
    pub(crate) fn send_ready(&self, st: &State<T>, mine: &Sel) -> bool {
        st.closed || st.buf.len() < self.cap || st.recvq.has_live(Some(mine))
    }

    /// Would a receive complete now without waiting? Ignores entries of
    /// `mine`.
    pub(crate) fn recv_ready(&self, st: &State<T>, mine: &Sel) -> bool {
        st.closed || !st.buf.is_empty() || st.sendq.has_live(Some(mine))
    }

    /// Go's closechan. Idempotent.
    pub(crate) fn close(&self) {
        self.close_and(false);
    }

    /// The last `Receiver` dropped: close, then run the
    /// `on_receivers_gone` hook, if any.
    pub(crate) fn close_receivers_gone(&self) {
        self.close_and(true);
    }

    /// Closes (if not yet closed) and, if `hook`, takes the
    /// `on_receivers_gone` hook; wakes the waiters and runs the hook after
    /// unlocking.
    fn close_and(&self, hook: bool) {
        let mut wake = Vec::new();
        let hook = {
            let mut st = self.lock();
            if !st.closed {
                st.closed = true;
                st.recvq.release_all(&mut wake);
                st.sendq.release_all(&mut wake);
            }
            if hook {
                st.on_receivers_gone.take()
            } else {
                None
            }
        };
        for w in wake {
            w.unpark();
        }
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Sets the hook run when the last `Receiver` drops. Call before the
    /// channel's receiver is handed out.
    pub(crate) fn set_on_receivers_gone(&self, hook: Hook) {
        let mut st = self.lock();
        debug_assert!(st.on_receivers_gone.is_none());
        st.on_receivers_gone = Some(hook);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().buf.len()
    }
}

impl<T> State<T> {
    /// Queues a receiver entry (bound by the caller).
    pub(crate) fn recvq(&mut self) -> &mut WaitQueue<T> {
        &mut self.recvq
    }

    /// Queues a sender entry (bound by the caller, holding its value).
    pub(crate) fn sendq(&mut self) -> &mut WaitQueue<T> {
        &mut self.sendq
    }
}
