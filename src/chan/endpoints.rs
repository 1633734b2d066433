//! The two ends of a channel: [`Sender`] and [`Receiver`], and the
//! receiving iterators.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::{Decision, Entry, Sel};
use super::{
    Chan, Locked, RecvNow, RecvTimeoutError, SendError, SendNow, SendTimeoutError, TryRecvError,
    TrySendError,
};

/// The sending end of a channel. Clone it to send from several goroutines;
/// the channel closes when the last clone drops (or on [`close`]).
///
/// [`close`]: Sender::close
///
/// # Examples
///
/// ```
/// let (tx, rx) = gosched::chan::channel(4);
/// let tx2 = tx.clone();
/// tx.send(1).unwrap();
/// tx2.send(2).unwrap();
/// drop((tx, tx2));
/// assert_eq!(rx.iter().collect::<Vec<_>>(), [1, 2]);
/// ```
pub struct Sender<T> {
    pub(crate) chan: Arc<Chan<T>>,
}

/// The receiving end of a channel. Clone it to receive from several
/// goroutines (each value goes to exactly one of them). When the last clone
/// drops the channel closes: later sends fail instead of blocking forever.
///
/// # Examples
///
/// ```
/// let (tx, rx) = gosched::chan::channel(1);
/// let rx2 = rx.clone();
/// tx.send(5).unwrap();
/// assert_eq!(rx2.recv(), Some(5));
/// drop((rx, rx2));
/// assert!(tx.send(6).is_err());
/// ```
pub struct Receiver<T> {
    pub(crate) chan: Arc<Chan<T>>,
}

/// How a send or receive began (`Sender::start`, `Receiver::start`): done
/// without waiting (a send gives `()`, a receive the value), the channel
/// closed (a send gets its value back), or it must wait: the channel is
/// still locked (a send also gets its value back).
enum Start<'a, T, D, V> {
    Done(D),
    Closed(V),
    Wait(Locked<'a, T>, V),
}

/// What `Sender` and `Receiver` share, written once: the state queries,
/// and the clone count whose last drop closes the channel (`$last_gone`).
macro_rules! endpoint_common {
    ($ty:ident, $count:ident, $last_gone:ident, $me:literal, $other:literal) => {
        impl<T> $ty<T> {
            /// Whether the channel is closed, by `close` or because every
            /// endpoint of the other side was dropped (a receiver may still
            /// find values buffered).
            ///
            /// # Examples
            ///
            /// ```
            /// let (tx, rx) = gosched::chan::channel::<()>(0);
            #[doc = concat!("assert!(!", $me, ".is_closed());")]
            #[doc = concat!("drop(", $other, ");")]
            #[doc = concat!("assert!(", $me, ".is_closed());")]
            /// ```
            pub fn is_closed(&self) -> bool {
                self.chan.is_closed()
            }

            /// Values in the buffer now (Go's `len(ch)`; always 0 when
            /// unbuffered).
            ///
            /// # Examples
            ///
            /// ```
            /// let (tx, rx) = gosched::chan::channel(3);
            /// tx.send(()).unwrap();
            #[doc = concat!("assert_eq!(", $me, ".len(), 1);")]
            /// ```
            pub fn len(&self) -> usize {
                self.chan.len()
            }

            /// Whether the buffer is empty now.
            ///
            /// # Examples
            ///
            /// ```
            /// let (tx, rx) = gosched::chan::channel::<u8>(3);
            #[doc = concat!("assert!(", $me, ".is_empty());")]
            /// ```
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// The buffer's capacity (Go's `cap(ch)`; 0 when unbuffered).
            ///
            /// # Examples
            ///
            /// ```
            /// let (tx, rx) = gosched::chan::channel::<u8>(3);
            #[doc = concat!("assert_eq!(", $me, ".capacity(), 3);")]
            /// ```
            pub fn capacity(&self) -> usize {
                self.chan.cap()
            }
        }

        impl<T> Clone for $ty<T> {
            fn clone(&self) -> $ty<T> {
                self.chan.$count.fetch_add(1, Ordering::Relaxed);
                $ty {
                    chan: self.chan.clone(),
                }
            }
        }

        impl<T> Drop for $ty<T> {
            fn drop(&mut self) {
                // AcqRel: the last dropper sees every other clone's drop.
                if self.chan.$count.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.chan.$last_gone();
                }
            }
        }

        impl<T> fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("cap", &self.chan.cap())
                    .finish_non_exhaustive()
            }
        }
    };
}

impl<T> Sender<T> {
    pub(super) fn new(chan: Arc<Chan<T>>) -> Sender<T> {
        Sender { chan }
    }

    /// Sends `v`, waiting (parking the goroutine, or blocking a plain
    /// thread) until a receiver takes it (unbuffered) or there is room in
    /// the buffer. On a closed channel, or one closed while waiting, the
    /// value comes back in the error (Go would panic).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let (tx, rx) = gosched::chan::channel(0);
    ///     let h = gosched::spawn(move || rx.recv());
    ///     tx.send("hello").unwrap(); // returns once the goroutine has it
    ///     assert_eq!(h.join().unwrap(), Some("hello"));
    /// });
    /// ```
    pub fn send(&self, v: T) -> Result<(), SendError<T>> {
        let sel;
        let entry;
        {
            let (mut st, v) = match self.start(v) {
                Start::Done(()) => return Ok(()),
                Start::Closed(v) => return Err(SendError(v)),
                Start::Wait(st, v) => (st, v),
            };
            sel = Sel::new();
            entry = Entry::new();
            entry.bind(&sel, 0);
            entry.put(Some(v));
            st.sendq().push_back(&entry);
        }
        // Decided by a receiver (slot emptied) or by close (slot full); a
        // plain send is never aborted, so its entry is off the queue now.
        let d = sel.wait("chan send");
        debug_assert_eq!(d, Decision::Fired(0));
        match entry.take() {
            None => Ok(()),
            Some(v) => Err(SendError(v)),
        }
    }

    /// Like [`send`](Sender::send), giving up after `timeout`. Any timeout
    /// is accepted; `Duration::MAX` waits effectively forever (deadlines are
    /// clamped to 100 years). A zero timeout sends only if that needs no
    /// waiting, like [`try_send`](Sender::try_send).
    ///
    /// # Errors
    ///
    /// [`SendTimeoutError::Timeout`] if no receiver took the value and no
    /// room appeared in time (never earlier), and
    /// [`SendTimeoutError::Disconnected`] if the channel is closed, or was
    /// closed while waiting. Both carry the value back.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::{channel, SendTimeoutError};
    /// use std::time::Duration;
    ///
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let (tx, rx) = channel(1);
    ///     let d = Duration::from_millis(10);
    ///     tx.send_timeout(1, d).unwrap(); // room in the buffer
    ///     // Full: the value comes back after the timeout.
    ///     assert_eq!(tx.send_timeout(2, d), Err(SendTimeoutError::Timeout(2)));
    ///     assert_eq!(rx.recv(), Some(1));
    ///     drop(rx);
    ///     let closed = tx.send_timeout(3, d);
    ///     assert_eq!(closed, Err(SendTimeoutError::Disconnected(3)));
    /// });
    /// ```
    pub fn send_timeout(&self, v: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_deadline(v, crate::sched::timer::deadline_after(timeout))
    }

    /// Like [`send`](Sender::send), giving up at `deadline`. Any instant is
    /// accepted: one in the past sends only if that needs no waiting, and
    /// one more than 100 years ahead is clamped to that (effectively never).
    ///
    /// # Errors
    ///
    /// As [`send_timeout`](Sender::send_timeout): the value comes back in
    /// [`SendTimeoutError::Timeout`] or [`SendTimeoutError::Disconnected`].
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::{channel, SendTimeoutError};
    /// use std::time::{Duration, Instant};
    ///
    /// let (tx, rx) = channel(0);
    /// // From a plain thread: blocks the thread until the deadline.
    /// let deadline = Instant::now() + Duration::from_millis(10);
    /// assert_eq!(tx.send_deadline(7, deadline), Err(SendTimeoutError::Timeout(7)));
    /// assert!(Instant::now() >= deadline);
    /// let t = std::thread::spawn(move || rx.recv());
    /// tx.send_deadline(8, Instant::now() + Duration::from_secs(10)).unwrap();
    /// assert_eq!(t.join().unwrap(), Some(8));
    /// ```
    pub fn send_deadline(&self, v: T, deadline: Instant) -> Result<(), SendTimeoutError<T>> {
        let deadline = super::clamp_deadline(deadline);
        let sel;
        let entry;
        {
            let (mut st, v) = match self.start(v) {
                Start::Done(()) => return Ok(()),
                Start::Closed(v) => return Err(SendTimeoutError::Disconnected(v)),
                Start::Wait(st, v) => (st, v),
            };
            if Instant::now() >= deadline {
                return Err(SendTimeoutError::Timeout(v));
            }
            sel = Sel::new();
            entry = Entry::new();
            entry.bind(&sel, 0);
            entry.put(Some(v));
            st.sendq().push_back(&entry);
        }
        let decided = sel.wait_until("chan send", deadline);
        if decided.is_none() && sel.abort() {
            // We gave up first: nobody took the value; unqueue the entry
            // (under the lock, before it goes out of scope) and take it back.
            self.chan.lock().sendq().remove(&entry);
            let v = entry.take().expect("an aborted send lost its value");
            return Err(SendTimeoutError::Timeout(v));
        }
        // Decided by a receiver (slot emptied) or by close (slot full); the
        // waker took the entry off the queue.
        match entry.take() {
            None => Ok(()),
            Some(v) => Err(SendTimeoutError::Disconnected(v)),
        }
    }

    /// Sends `v` if that needs no waiting: a receiver is waiting, or the
    /// buffer has room.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] if it would have to wait,
    /// [`TrySendError::Disconnected`] if the channel is closed; both carry
    /// the value back.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::{channel, TrySendError};
    /// let (tx, rx) = channel(0);
    /// // Unbuffered and nobody receiving: it would block.
    /// assert_eq!(tx.try_send(1), Err(TrySendError::Full(1)));
    /// drop(rx);
    /// assert_eq!(tx.try_send(1), Err(TrySendError::Disconnected(1)));
    /// ```
    pub fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        match self.start(v) {
            Start::Done(()) => Ok(()),
            Start::Wait(_, v) => Err(TrySendError::Full(v)),
            Start::Closed(v) => Err(TrySendError::Disconnected(v)),
        }
    }

    /// Send steps 1-3 (module docs); on `Wait` the channel is still locked
    /// and the value comes back, for the caller to queue or return.
    #[inline(always)] // the channel fast path: as if written out in each caller
    fn start(&self, v: T) -> Start<'_, T, (), T> {
        let mut st = self.chan.lock();
        match self.chan.send_now(&mut st, v) {
            SendNow::Done(w) => {
                st.unlock_then_wake(w);
                Start::Done(())
            }
            SendNow::Full(v) => Start::Wait(st, v),
            SendNow::Closed(v) => Start::Closed(v),
        }
    }

    /// Closes the channel (Go's `close`): blocked senders get their values
    /// back in errors, receivers drain the buffer and then get `None`.
    /// Closing twice is a no-op (Go would panic).
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = gosched::chan::channel(2);
    /// tx.send(1).unwrap();
    /// tx.close();
    /// assert!(tx.is_closed());
    /// assert_eq!(rx.recv(), Some(1)); // drained first
    /// assert_eq!(rx.recv(), None);
    /// ```
    pub fn close(&self) {
        self.chan.close();
    }
}

endpoint_common!(Sender, senders, close, "tx", "rx");

impl<T> Receiver<T> {
    pub(super) fn new(chan: Arc<Chan<T>>) -> Receiver<T> {
        Receiver { chan }
    }

    /// Receives a value, waiting (parking the goroutine, or blocking a plain
    /// thread) until one is there. `None` once the channel is closed and its
    /// buffer drained.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let (tx, rx) = gosched::chan::channel(0);
    ///     gosched::spawn(move || tx.send(42).unwrap());
    ///     assert_eq!(rx.recv(), Some(42));
    ///     assert_eq!(rx.recv(), None); // the sender is gone: closed
    /// });
    /// ```
    pub fn recv(&self) -> Option<T> {
        let sel;
        let entry;
        {
            let mut st = match self.start() {
                Start::Done(v) => return Some(v),
                Start::Closed(()) => return None,
                Start::Wait(st, ()) => st,
            };
            sel = Sel::new();
            entry = Entry::new();
            entry.bind(&sel, 0);
            st.recvq().push_back(&entry);
        }
        let d = sel.wait("chan receive");
        debug_assert_eq!(d, Decision::Fired(0));
        entry.take()
    }

    /// Receives a value if one is there without waiting.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if it would have to wait,
    /// [`TryRecvError::Disconnected`] if the channel is closed and drained.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::{channel, TryRecvError};
    /// let (tx, rx) = channel(1);
    /// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    /// tx.send(3).unwrap();
    /// assert_eq!(rx.try_recv(), Ok(3));
    /// ```
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.start() {
            Start::Done(v) => Ok(v),
            Start::Wait(..) => Err(TryRecvError::Empty),
            Start::Closed(()) => Err(TryRecvError::Disconnected),
        }
    }

    /// Receive steps 1-3 (module docs); on `Wait` the channel is still
    /// locked, for the caller to queue an entry or give up.
    #[inline(always)] // the channel fast path: as if written out in each caller
    fn start(&self) -> Start<'_, T, T, ()> {
        let mut st = self.chan.lock();
        match self.chan.recv_now(&mut st) {
            RecvNow::Value(v, w) => {
                st.unlock_then_wake(w);
                Start::Done(v)
            }
            RecvNow::Empty => Start::Wait(st, ()),
            RecvNow::Closed => Start::Closed(()),
        }
    }

    /// Like [`recv`](Receiver::recv), giving up after `timeout`. Any
    /// timeout is accepted; `Duration::MAX` waits effectively forever.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if nothing came in time (never
    /// earlier), [`RecvTimeoutError::Disconnected`] if the channel is closed
    /// and drained.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::{channel, RecvTimeoutError};
    /// use std::time::Duration;
    ///
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let (tx, rx) = channel(0);
    ///     let d = Duration::from_millis(10);
    ///     assert_eq!(rx.recv_timeout(d), Err(RecvTimeoutError::Timeout));
    ///     gosched::spawn(move || tx.send(1).unwrap());
    ///     assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(1));
    ///     // The sender's goroutine ends and drops `tx`: closed.
    ///     let closed = rx.recv_timeout(Duration::from_secs(10));
    ///     assert_eq!(closed, Err(RecvTimeoutError::Disconnected));
    /// });
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        // Clamped to 100 years: a huge timeout still arms a timer, so the
        // wait counts as timed (it will end by itself), as in Go.
        self.recv_deadline(crate::sched::timer::deadline_after(timeout))
    }

    /// Like [`recv`](Receiver::recv), giving up at `deadline`. Any instant
    /// is accepted: one in the past receives only what needs no waiting,
    /// and one more than 100 years ahead is clamped to that (effectively
    /// never).
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if nothing came by the deadline (never
    /// earlier), [`RecvTimeoutError::Disconnected`] if the channel is
    /// closed and drained.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::chan::{channel, RecvTimeoutError};
    /// use std::time::{Duration, Instant};
    ///
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let (tx, rx) = channel(0);
    ///     let deadline = Instant::now() + Duration::from_millis(10);
    ///     assert_eq!(rx.recv_deadline(deadline), Err(RecvTimeoutError::Timeout));
    ///     assert!(Instant::now() >= deadline);
    ///     gosched::spawn(move || tx.send(1).unwrap());
    ///     let far = Instant::now() + Duration::from_secs(10);
    ///     assert_eq!(rx.recv_deadline(far), Ok(1));
    /// });
    /// ```
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        let deadline = super::clamp_deadline(deadline);
        let sel;
        let entry;
        {
            let mut st = match self.start() {
                Start::Done(v) => return Ok(v),
                Start::Closed(()) => return Err(RecvTimeoutError::Disconnected),
                Start::Wait(st, ()) => st,
            };
            if Instant::now() >= deadline {
                return Err(RecvTimeoutError::Timeout);
            }
            sel = Sel::new();
            entry = Entry::new();
            entry.bind(&sel, 0);
            st.recvq().push_back(&entry);
        }
        let decided = sel.wait_until("chan receive", deadline);
        if decided.is_none() && sel.abort() {
            // We gave up first: remove our entry before it goes out of scope.
            self.chan.lock().recvq().remove(&entry);
            return Err(RecvTimeoutError::Timeout);
        }
        // Decided by a sender (full slot) or close (empty slot); the waker
        // took the entry off the queue.
        entry.take().ok_or(RecvTimeoutError::Disconnected)
    }

    /// An iterator that receives until the channel is closed and drained
    /// (Go's `for v := range ch`).
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = gosched::chan::channel(3);
    /// for i in 0..3 {
    ///     tx.send(i).unwrap();
    /// }
    /// drop(tx);
    /// assert_eq!(rx.iter().collect::<Vec<_>>(), [0, 1, 2]);
    /// ```
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator over the values available now, without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// let (tx, rx) = gosched::chan::channel(3);
    /// tx.send(1).unwrap();
    /// tx.send(2).unwrap();
    /// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2]); // tx still open
    /// ```
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }
}

endpoint_common!(Receiver, receivers, close_receivers_gone, "rx", "tx");

/// Blocking iterator over a [`Receiver`] ([`Receiver::iter`]).
///
/// # Examples
///
/// ```
/// let (tx, rx) = gosched::chan::channel(1);
/// tx.send(9).unwrap();
/// drop(tx);
/// let mut it = rx.iter();
/// assert_eq!(it.next(), Some(9));
/// assert_eq!(it.next(), None);
/// ```
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv()
    }
}

/// Non-blocking iterator over a [`Receiver`] ([`Receiver::try_iter`]).
///
/// # Examples
///
/// ```
/// let (_tx, rx) = gosched::chan::channel::<u8>(1);
/// assert_eq!(rx.try_iter().next(), None);
/// ```
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// Owning blocking iterator (`for v in rx`).
///
/// # Examples
///
/// ```
/// let (tx, rx) = gosched::chan::channel(2);
/// tx.send(1).unwrap();
/// tx.send(2).unwrap();
/// drop(tx);
/// let v: Vec<i32> = rx.into_iter().collect();
/// assert_eq!(v, [1, 2]);
/// ```
#[derive(Debug)]
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv()
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}
