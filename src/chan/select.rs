//! `select!`: wait on several channel operations, run exactly one.
//!
//! # The algorithm (Go's selectgo, with a decision word instead of locking
//! every channel at once)
//!
//! 1. Poll order: a uniformly random permutation of the cases (a per-thread
//!    xorshift generator, Fisher-Yates), so that among several ready cases
//!    each is equally likely to run, as in Go.
//! 2. Pass 1: try each case in poll order without waiting (one channel lock
//!    at a time). The first that completes wins. A closed channel makes a
//!    receive ready (it yields `None`) and a send ready (it yields an error;
//!    Go would panic).
//! 3. Nothing ready: with a `default` arm, run it; with a
//!    `default(timeout)` arm, run it if its deadline has passed.
//! 4. Pass 2: one `Sel` (a decision word and our waiter) for the whole
//!    select; for each case in poll order, lock its channel and either queue
//!    an entry bound to (`Sel`, case) or, if the case turned ready since
//!    pass 1, stop. Then unlock.
//! 5. If a case turned ready, abort our own `Sel` (CAS `WAITING ->
//!    ABORTED`); if that succeeds, remove our entries and go back to pass 1.
//!    If it fails, some waker has already decided a case for us: go on.
//! 6. Park until decided (with `default(timeout)`: or until the deadline;
//!    then abort our `Sel` as in step 5, remove every entry and run the
//!    default arm; if the abort fails a waker decided first and its case
//!    wins). The waker that decided unlinked the winning
//!    entry; remove the other entries (each under its channel's lock; a
//!    waker that meets one of them before that fails its CAS and skips it).
//!    Collect the winning case's result from its entry.
//!
//! Exactly one case fires because exactly one CAS moves the decision word
//! away from `WAITING`; the winning case's value moved before that CAS
//! (see `chan/queue.rs`), and a losing case's value never moves.
//!
//! Rejected: Go's `sellock` (lock all channels, in address order, for the
//! whole registration). It serialises unrelated selects on shared channels
//! and needs the waker to hold its lock while touching other channels'
//! waiters; the decision word needs one lock at a time.
//!
//! The macro itself contains no `unsafe` code: cases are safe wrappers
//! ([`RecvCase`], [`SendCase`]) behind a sealed trait; only the channel
//! module touches the queues.

use std::cell::Cell;
use std::time::Instant;

use crate::chan::queue::{Decision, Entry};
use crate::chan::{Receiver, RecvNow, SendError, SendNow, Sender};

#[doc(hidden)]
pub use crate::chan::queue::Sel;

mod sealed {
    /// Only this crate's cases implement [`super::Case`]: `run` relies on
    /// every registered entry being removed by `unregister`.
    pub trait Sealed {}
}

/// One arm of a `select!` (implementation detail of the macro).
#[doc(hidden)]
pub trait Case: sealed::Sealed {
    /// Pass 1: completes the operation if it needs no waiting.
    fn try_now(&self) -> bool;
    /// Pass 2: queues an entry bound to (`sel`, `index`) and returns true,
    /// or returns false (queueing nothing) if the case is ready now.
    fn register(&self, sel: &Sel, index: usize) -> bool;
    /// Removes this case's entry from its queue if it is still there.
    fn unregister(&self);
    /// This case won pass 2: collects its result from the entry.
    fn complete(&self);
}

/// A `recv(rx) -> v` arm. `v: Option<T>`, `None` when the channel is
/// closed and drained.
#[doc(hidden)]
pub struct RecvCase<'a, T> {
    rx: &'a Receiver<T>,
    entry: Entry<T>,
    result: Cell<Option<Option<T>>>,
}

impl<'a, T> RecvCase<'a, T> {
    /// An arm receiving from `rx`.
    pub fn new(rx: &'a Receiver<T>) -> RecvCase<'a, T> {
        RecvCase {
            rx,
            entry: Entry::new(),
            result: Cell::new(None),
        }
    }

    /// The arm's value, once it fired.
    pub fn into_result(self) -> Option<T> {
        self.result
            .take()
            .expect("select: the chosen arm has no result")
    }
}

impl<T> sealed::Sealed for RecvCase<'_, T> {}

impl<T> Case for RecvCase<'_, T> {
    fn try_now(&self) -> bool {
        let chan = &self.rx.chan;
        let mut st = chan.lock();
        match chan.recv_now(&mut st) {
            RecvNow::Value(v, w) => {
                st.unlock_then_wake(w);
                self.result.set(Some(Some(v)));
                true
            }
            RecvNow::Closed => {
                self.result.set(Some(None));
                true
            }
            RecvNow::Empty => false,
        }
    }

    fn register(&self, sel: &Sel, index: usize) -> bool {
        let chan = &self.rx.chan;
        let mut st = chan.lock();
        if chan.recv_ready(&st, sel) {
            return false;
        }
        self.entry.bind(sel, index);
        st.recvq().push_back(&self.entry);
        true
    }

    fn unregister(&self) {
        self.rx.chan.lock().recvq().remove(&self.entry);
    }

    fn complete(&self) {
        // A full slot is the value; an empty one means closed.
        self.result.set(Some(self.entry.take()));
    }
}

/// A `send(tx, value) -> r` arm. `r: Result<(), SendError<T>>`, `Err` with
/// the value when the channel is closed.
#[doc(hidden)]
pub struct SendCase<'a, T> {
    tx: &'a Sender<T>,
    /// The value while it is not in the entry.
    value: Cell<Option<T>>,
    entry: Entry<T>,
    result: Cell<Option<Result<(), SendError<T>>>>,
}

impl<'a, T> SendCase<'a, T> {
    /// An arm sending `value` on `tx`.
    pub fn new(tx: &'a Sender<T>, value: T) -> SendCase<'a, T> {
        SendCase {
            tx,
            value: Cell::new(Some(value)),
            entry: Entry::new(),
            result: Cell::new(None),
        }
    }

    /// The arm's result, once it fired.
    pub fn into_result(self) -> Result<(), SendError<T>> {
        self.result
            .take()
            .expect("select: the chosen arm has no result")
    }
}

impl<T> sealed::Sealed for SendCase<'_, T> {}

impl<T> Case for SendCase<'_, T> {
    fn try_now(&self) -> bool {
        let chan = &self.tx.chan;
        let v = self
            .value
            .take()
            .expect("select: send arm without its value");
        let mut st = chan.lock();
        match chan.send_now(&mut st, v) {
            SendNow::Done(w) => {
                st.unlock_then_wake(w);
                self.result.set(Some(Ok(())));
                true
            }
            SendNow::Closed(v) => {
                self.result.set(Some(Err(SendError(v))));
                true
            }
            SendNow::Full(v) => {
                self.value.set(Some(v));
                false
            }
        }
    }

    fn register(&self, sel: &Sel, index: usize) -> bool {
        let chan = &self.tx.chan;
        let mut st = chan.lock();
        if chan.send_ready(&st, sel) {
            return false;
        }
        self.entry.bind(sel, index);
        self.entry.put(self.value.take());
        st.sendq().push_back(&self.entry);
        true
    }

    fn unregister(&self) {
        self.tx.chan.lock().sendq().remove(&self.entry);
        // Not sent: the value goes back to the arm (for a retry of pass 1).
        if let Some(v) = self.entry.take() {
            self.value.set(Some(v));
        }
    }

    fn complete(&self) {
        // An empty slot means a receiver took the value; a full one means
        // the channel was closed.
        self.result.set(Some(match self.entry.take() {
            None => Ok(()),
            Some(v) => Err(SendError(v)),
        }));
    }
}

/// Most arms a select may have (the macro refuses more at compile time).
const MAX_ARMS: usize = 32;

/// A random permutation of `0..n`, n <= `MAX_ARMS` (step 1 of the module
/// docs): Fisher-Yates, no allocation.
struct PollOrder {
    order: [u8; MAX_ARMS],
}

impl PollOrder {
    fn new(n: usize) -> PollOrder {
        let mut order = [0u8; MAX_ARMS];
        for i in 0..n {
            order[i] = i as u8;
            order.swap(i, crate::sched::rand::fastrand_below(i + 1));
        }
        PollOrder { order }
    }

    fn get(&self, k: usize) -> usize {
        usize::from(self.order[k])
    }
}

/// Runs a select over `cases` (the macro's engine). Returns the index of
/// the case that fired, or `cases.len()` for `default` (only when
/// `has_default`).
#[doc(hidden)]
pub fn run(cases: &[&dyn Case], has_default: bool) -> usize {
    select(
        cases,
        if has_default {
            Wait::Never
        } else {
            Wait::Forever
        },
    )
}

/// Runs a select with a `default(timeout)` arm (the macro's engine).
/// Returns the index of the case that fired, or `cases.len()` if none did
/// within `timeout` (clamped to 100 years, so any `Duration` is accepted).
#[doc(hidden)]
pub fn run_timeout(cases: &[&dyn Case], timeout: std::time::Duration) -> usize {
    select(
        cases,
        Wait::Until(crate::sched::timer::deadline_after(timeout)),
    )
}

/// How long a select may wait for a case (step 3 and 6 of the module
/// docs).
#[derive(Clone, Copy)]
enum Wait {
    /// No `default` arm: until a case fires.
    Forever,
    /// `default`: not at all.
    Never,
    /// `default(timeout)`: until this deadline, then the default arm runs.
    Until(Instant),
}

fn select(cases: &[&dyn Case], wait: Wait) -> usize {
    let n = cases.len();
    // Only reachable by calling the hidden engine by hand: the macro stops
    // at 32 arms.
    assert!(
        n <= MAX_ARMS,
        "gosched::select!: too many arms ({n}; at most {MAX_ARMS})"
    );
    // Also only reachable by hand (the macro makes one case per arm): one
    // case passed twice would queue its entry twice, and a queue whose
    // entry links to itself is memory corruption, not a panic.
    for i in 1..n {
        for j in 0..i {
            assert!(
                !std::ptr::addr_eq(cases[i], cases[j]),
                "gosched::select!: the same case twice (arms {j} and {i})"
            );
        }
    }
    if n == 0 {
        crate::sched::preempt_check();
        match wait {
            Wait::Never => {}
            // Go's `select {}`: block for ever.
            Wait::Forever => loop {
                crate::sched::g::park("select (no cases)");
            },
            Wait::Until(deadline) => {
                while Instant::now() < deadline {
                    crate::sched::g::park_until("select (no cases)", deadline);
                }
            }
        }
        return 0;
    }
    loop {
        let order = PollOrder::new(n);
        // Pass 1.
        for k in 0..n {
            let i = order.get(k);
            if cases[i].try_now() {
                return i;
            }
        }
        match wait {
            Wait::Never => return n,
            Wait::Until(deadline) if Instant::now() >= deadline => return n,
            _ => {}
        }
        // Pass 2.
        let sel = Sel::new();
        let mut registered = 0;
        let mut ready = false;
        for k in 0..n {
            if !cases[order.get(k)].register(&sel, order.get(k)) {
                ready = true;
                break;
            }
            registered += 1;
            if sel.decision().is_some() {
                break; // already fired through an earlier entry
            }
        }
        let mut timed_out = false;
        let decision = if ready && sel.abort() {
            Decision::Aborted
        } else if let Wait::Until(deadline) = wait {
            match sel.wait_until("select", deadline) {
                Some(d) => d,
                // The deadline passed: give up unless a waker decided first
                // (then its case has completed and must be honoured).
                None if sel.abort() => {
                    timed_out = true;
                    Decision::Aborted
                }
                None => sel.wait("select"),
            }
        } else {
            sel.wait("select")
        };
        let won = match decision {
            Decision::Fired(i) => Some(i),
            Decision::Aborted => None,
        };
        for k in 0..registered {
            let i = order.get(k);
            if Some(i) != won {
                cases[i].unregister();
            }
        }
        if let Some(i) = won {
            cases[i].complete();
            return i;
        }
        if timed_out {
            return n;
        }
    }
}

/// Waits on several channel operations and runs the arm of exactly one that
/// completes (Go's `select` statement).
///
/// Arms, in any order, separated by commas (optional after a block):
///
/// - `recv(rx) -> v => body`: receive from `rx` (a [`Receiver`] or a
///   reference to one); `v: Option<T>` is `None` once the channel is closed
///   and drained.
/// - `send(tx, value) -> r => body`: send `value` on `tx`;
///   `r: Result<(), SendError<T>>` is `Err` (with the value) when the channel
///   is closed. Go would panic there; here a closed channel simply makes the
///   arm ready.
/// - `default => body`: taken when no other arm is ready, so the select
///   never blocks.
/// - `default(timeout) => body` (crossbeam-channel's syntax): taken when no
///   other arm completes within `timeout` (a [`Duration`]; any value is
///   accepted, `Duration::MAX` waits effectively forever). It never runs
///   before the timeout has passed unless the timeout is zero, and an arm
///   that becomes ready in time wins. Cheaper than `recv(after(timeout))`:
///   no channel and no timer task, only a timed park. The timeout is
///   evaluated after the channel expressions and the clock starts then.
///
/// At most one `default` arm of either kind.
///
/// Channel expressions and values are evaluated once, in order, before
/// anything else (as in Go). Among the arms that are ready, one is chosen
/// uniformly at random. Without `default` the goroutine parks (a plain
/// thread blocks) until some arm completes, and exactly one does. The
/// patterns `v` and `r` must be irrefutable (`_`, a name, ...). Bodies may
/// use `break`, `continue`, `return` and `?` of the enclosing function.
///
/// # Examples
///
/// ```
/// use gosched::chan::{after, channel};
/// use std::time::Duration;
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let (tx, rx) = channel::<i32>(0);
///     let (quit_tx, quit_rx) = channel::<()>(0);
///     gosched::spawn(move || {
///         for i in 0..3 {
///             tx.send(i).unwrap();
///         }
///         drop(quit_tx); // closing makes `recv(quit_rx)` ready
///     }); // (and the goroutine's end drops `tx`, closing `rx` too)
///     let mut got = Vec::new();
///     loop {
///         gosched::select! {
///             recv(rx) -> v => match v {
///                 Some(v) => got.push(v),
///                 None => break, // closed: a closed channel is always ready
///             },
///             recv(quit_rx) -> _ => break,
///             recv(after(Duration::from_secs(10))) -> _ => panic!("timed out"),
///         }
///     }
///     assert_eq!(got, [0, 1, 2]);
///
///     // With `default` a select never blocks.
///     let (tx, _rx) = channel::<i32>(0);
///     let sent = gosched::select! {
///         send(tx, 1) -> r => r.is_ok(),
///         default => false,
///     };
///     assert!(!sent); // nobody was receiving
///
///     // With `default(timeout)` it waits at most that long.
///     let (_tx, rx) = channel::<i32>(0);
///     let start = std::time::Instant::now();
///     let got = gosched::select! {
///         recv(rx) -> v => v,
///         default(Duration::from_millis(10)) => None,
///     };
///     assert_eq!(got, None);
///     assert!(start.elapsed() >= Duration::from_millis(10));
/// });
/// ```
///
/// [`Duration`]: std::time::Duration
#[macro_export]
macro_rules! select {
    // ---- parsing: one arm at a time ----
    (@parse $labels:tt $cases:tt [$($def:tt)+] default $($rest:tt)*) => {
        ::core::compile_error!("gosched::select!: more than one `default` arm")
    };
    (@parse [] $cases:tt $def:tt recv $($rest:tt)*) => {
        ::core::compile_error!("gosched::select!: too many arms (at most 32)")
    };
    (@parse [] $cases:tt $def:tt send $($rest:tt)*) => {
        ::core::compile_error!("gosched::select!: too many arms (at most 32)")
    };
    (@parse [$($labels:tt)*] [$($cases:tt)*] [$($def:tt)*]) => {
        $crate::select!(@emit [$($cases)*] [$($def)*])
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        recv($rx:expr $(,)?) -> $p:pat => $body:block, $($rest:tt)*) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (recv $l $i ($rx) $p => $body)] $def $($rest)*)
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        recv($rx:expr $(,)?) -> $p:pat => $body:block $($rest:tt)*) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (recv $l $i ($rx) $p => $body)] $def $($rest)*)
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        recv($rx:expr $(,)?) -> $p:pat => $body:expr, $($rest:tt)*) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (recv $l $i ($rx) $p => $body)] $def $($rest)*)
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        recv($rx:expr $(,)?) -> $p:pat => $body:expr) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (recv $l $i ($rx) $p => $body)] $def)
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        send($tx:expr, $v:expr $(,)?) -> $p:pat => $body:block, $($rest:tt)*) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (send $l $i ($tx, $v) $p => $body)] $def $($rest)*)
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        send($tx:expr, $v:expr $(,)?) -> $p:pat => $body:block $($rest:tt)*) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (send $l $i ($tx, $v) $p => $body)] $def $($rest)*)
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        send($tx:expr, $v:expr $(,)?) -> $p:pat => $body:expr, $($rest:tt)*) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (send $l $i ($tx, $v) $p => $body)] $def $($rest)*)
    };
    (@parse [($l:ident $i:tt) $($labels:tt)*] [$($cases:tt)*] $def:tt
        send($tx:expr, $v:expr $(,)?) -> $p:pat => $body:expr) => {
        $crate::select!(@parse [$($labels)*] [$($cases)* (send $l $i ($tx, $v) $p => $body)] $def)
    };
    (@parse $labels:tt $cases:tt [] default => $body:block, $($rest:tt)*) => {
        $crate::select!(@parse $labels $cases [plain $body] $($rest)*)
    };
    (@parse $labels:tt $cases:tt [] default => $body:block $($rest:tt)*) => {
        $crate::select!(@parse $labels $cases [plain $body] $($rest)*)
    };
    (@parse $labels:tt $cases:tt [] default => $body:expr, $($rest:tt)*) => {
        $crate::select!(@parse $labels $cases [plain $body] $($rest)*)
    };
    (@parse $labels:tt $cases:tt [] default => $body:expr) => {
        $crate::select!(@parse $labels $cases [plain $body])
    };
    (@parse $labels:tt $cases:tt [] default($t:expr $(,)?) => $body:block, $($rest:tt)*) => {
        $crate::select!(@parse $labels $cases [timeout ($t) $body] $($rest)*)
    };
    (@parse $labels:tt $cases:tt [] default($t:expr $(,)?) => $body:block $($rest:tt)*) => {
        $crate::select!(@parse $labels $cases [timeout ($t) $body] $($rest)*)
    };
    (@parse $labels:tt $cases:tt [] default($t:expr $(,)?) => $body:expr, $($rest:tt)*) => {
        $crate::select!(@parse $labels $cases [timeout ($t) $body] $($rest)*)
    };
    (@parse $labels:tt $cases:tt [] default($t:expr $(,)?) => $body:expr) => {
        $crate::select!(@parse $labels $cases [timeout ($t) $body])
    };
    (@parse $labels:tt $cases:tt $def:tt $($rest:tt)+) => {
        ::core::compile_error!(::core::concat!(
            "gosched::select!: expected `recv(rx) -> v => body`, `send(tx, value) -> r => body` ",
            "`default => body` or `default(timeout) => body`, found `", ::core::stringify!($($rest)+), "`"
        ))
    };

    // ---- code generation ----
    (@emit [$(($kind:ident $l:ident $i:tt ($($args:tt)*) $p:pat => $body:tt))*] [$($def:tt)*]) => {
        // Evaluate every channel and value first, in order; temporaries (e.g.
        // `after(d)`) live until the end of the match.
        match ($($crate::select!(@arg $kind $($args)*),)*) {
            ($($l,)*) => {
                $(let $l = $crate::select!(@case $kind $l);)*
                let __gosched_cases: &[&dyn $crate::chan::select::Case] =
                    &[$(&$l as &dyn $crate::chan::select::Case),*];
                let __gosched_chosen = $crate::select!(@run __gosched_cases $($def)*);
                $crate::select!(@dispatch __gosched_chosen [$(($l $i $p => $body))*] [$($def)*])
            }
        }
    };
    (@arg recv $rx:expr) => { &$rx };
    (@arg send $tx:expr, $v:expr) => { (&$tx, $v) };
    (@case recv $l:ident) => { $crate::chan::select::RecvCase::new($l) };
    (@case send $l:ident) => { $crate::chan::select::SendCase::new($l.0, $l.1) };
    (@run $cases:ident) => { $crate::chan::select::run($cases, false) };
    (@run $cases:ident plain $body:tt) => { $crate::chan::select::run($cases, true) };
    (@run $cases:ident timeout ($t:expr) $body:tt) => {
        $crate::chan::select::run_timeout($cases, $t)
    };
    (@dispatch $chosen:ident [$(($l:ident $i:tt $p:pat => $body:tt))*] [$($def:tt)*]) => {
        $(if $chosen == $i {
            let $p = $l.into_result();
            $body
        } else)* {
            $crate::select!(@default_body $($def)*)
        }
    };
    (@default_body) => { ::core::unreachable!("gosched::select!: no arm fired") };
    (@default_body plain $body:tt) => { $body };
    (@default_body timeout ($t:expr) $body:tt) => { $body };

    // ---- entry point ----
    ($($arms:tt)*) => {
        $crate::select!(@parse
            [(__gosched_c0 0) (__gosched_c1 1) (__gosched_c2 2) (__gosched_c3 3)
             (__gosched_c4 4) (__gosched_c5 5) (__gosched_c6 6) (__gosched_c7 7)
             (__gosched_c8 8) (__gosched_c9 9) (__gosched_c10 10) (__gosched_c11 11)
             (__gosched_c12 12) (__gosched_c13 13) (__gosched_c14 14) (__gosched_c15 15)
             (__gosched_c16 16) (__gosched_c17 17) (__gosched_c18 18) (__gosched_c19 19)
             (__gosched_c20 20) (__gosched_c21 21) (__gosched_c22 22) (__gosched_c23 23)
             (__gosched_c24 24) (__gosched_c25 25) (__gosched_c26 26) (__gosched_c27 27)
             (__gosched_c28 28) (__gosched_c29 29) (__gosched_c30 30) (__gosched_c31 31)]
            [] [] $($arms)*)
    };
}
