//! The driver: what an M with nothing to run waits on, and the netpoller.
//!
//! An idle M used to sleep on its futex note, one of them (the "timer
//! sleeper") with a timeout until the next timer. Now that one M sleeps in
//! the OS poller instead, so "until the next timer, an I/O event or a
//! wake-up" is one wait (Go's findRunnable step "block in netpoll"), and
//! goroutines waiting for a file descriptor park on a *descriptor*, not on
//! a thread.
//!
//! # Contract of the OS poller (Go's netpoll.go)
//!
//! A particular implementation (epoll here, `epoll.rs`; kqueue would be
//! another) must define:
//!
//! 1. `OsPoller::new() -> io::Result<OsPoller>`: one instance per runtime
//!    (Go's netpollinit).
//! 2. `register(fd, token)`: edge-triggered interest in both directions;
//!    events for `fd` carry `token` (Go's netpollopen). `deregister(fd)`
//!    removes it (netpollclose).
//! 3. `wait(events, timeout) -> n`: block until events, the timeout
//!    (nanosecond precision: never late by a rounding; `None` = forever,
//!    `Some(ZERO)` = just look) or a `wake`; return the descriptor events
//!    as `(token, readiness)` in `events[..n]` (Go's netpoll(delay)). A
//!    non-blocking wait must not consume a pending `wake`.
//! 4. `wake()`: make the current or next blocking `wait` return; cheap
//!    when repeated (netpollBreak).
//! 5. `close()`: release the OS objects; later registrations fail.
//! 6. `watch(timeout) -> bool`: for sysmon, block until events are pending
//!    *without taking them* (so an M blocked in `wait` still gets them and
//!    its breaks), `unwatch()` or the timeout; `break_pending()`: a `wake`
//!    is not consumed yet (a watch would return at once).
//!
//! Everything else is generic and lives here: which M waits, the
//! per-descriptor state, deadlines, and handing woken goroutines to the
//! scheduler.
//!
//! # Who waits in the poller (the seam with the scheduler)
//!
//! 1. An M with nothing to run parks in `stopm`. If a P is idle and timers
//!    are pending or goroutines wait for I/O, the first such M takes the
//!    *sleeper* role (`Shared::timer_m`, a CAS: only one M blocks in the
//!    poller at a time) and waits in the poller until the next timer;
//!    every other M sleeps on its note. With every P busy nobody takes
//!    the role (the Ps poll, sysmon fires timers): a spare M would only be
//!    woken by each event to find no P. The M that idles a P takes it.
//!    Woken by a due timer alone, the sleeper fires it *keeping* the role
//!    (`G0::fire_as_sleeper`: with an idle P in hand, so that what the
//!    timer wakes runs here), and sleeps on if nothing became runnable:
//!    a timer that re-arms itself meanwhile (a ticker) finds the sleeper
//!    awake and wakes nobody. While the sleeper exists sysmon leaves timers
//!    to it (it backs it up 1 ms late while some P is busy).
//! 2. Waking an M is `Shared::wake_m`: set its note, then, if it is the
//!    sleeper, break the poller. The sleeper checks its note after taking
//!    the role and before waiting (a Dekker pair on `timer_m` and the
//!    note: either the waker sees the role and breaks the poll, or the M
//!    sees the note and does not wait).
//! 3. Goroutines an event wakes are claimed from their descriptors and
//!    handed to the scheduler as one batch (`Shared::inject`): onto the
//!    queue of woken goroutines (checked first by every P), then one
//!    `wakep` and, if every P is busy, a wake-up preemption. The sleeper
//!    itself takes an idle P to run them if it can (no second thread
//!    wake-up).
//! 4. While Ps run, nobody blocks in the poller; it is polled without
//!    blocking (each skipped with one load when no goroutine waits):
//!    - by `find_runnable` before it steals (Go's findRunnable): the
//!      first goroutine it finds is run by that M at once, and only the
//!      rest go to the woken queue with a `wakep` (`netpoll_take`), so a
//!      request/reply exchange stays on one thread;
//!    - by `find_runnable` on every `GLOBAL_CHECK`-th slice if the last
//!      poll is older than [`TICK_POLL_BOUND`], so readiness is seen within
//!      tens of microseconds while every P switches among runnable
//!      goroutines (a busy server never reaches the step before stealing);
//!    - by sysmon when the last poll is older than [`poll_bound`], so I/O
//!      readiness reaches the run queue even while every P runs a
//!      goroutine that makes no calls (Go's bound is 10 ms). While any
//!      descriptor is registered sysmon never sleeps longer than that
//!      bound with Ps busy: a goroutine parking on I/O does not wake it.
//! 5. And when a P is *stuck* (its goroutine has run the wake-up
//!    granularity, 100 µs, in its slice: a long request, a CPU hog), or no
//!    M has polled for [`SYSMON_WATCH_AFTER`], while every P is busy and
//!    goroutines wait for I/O, sysmon does not sleep on its note but
//!    *watches* the poller (contract item 6) until its next tick:
//!    an event wakes it at once, and it polls, so the woken goroutine is
//!    runnable (and a wake-up preemption asked for) within microseconds of
//!    the packet instead of within the poll bound (a goroutine reading a
//!    socket beside a CPU hog on 1 P was woken 0.5 ms late at p50, 1 ms
//!    at p99). Not while Ps poll on their own: in a busy server every
//!    packet would wake sysmon, a thread switch each. Nor merely because
//!    sysmon's own poll was the last one: in a server serving short
//!    requests one after the other, the Ps took the goroutines that poll
//!    woke and never polled themselves, so sysmon watched, and ran, for
//!    nearly every request (12,000 times a second beside the bimodal
//!    benchmark's 12,000 requests at 50 % load, on the server's only CPU);
//!    while no P is stuck it sleeps until the longest-running slice could
//!    be, backing off while the Ps keep switching (`Shared::until_stuck`).
//!    Nor right after a
//!    watch whose poll woke nobody: its events were for goroutines that
//!    are working, not parked (a server at saturation, requests queued on
//!    every connection), and sysmon pauses `SYSMON_WATCH_AFTER`, doubling
//!    up to [`SYSMON_BACKOFF_CAP`], before it watches again (it ran for
//!    almost every request before: 3,600 times in 300 ms in
//!    `tests/net_poll.rs`, ~5 % of the bimodal server's CPU). Whoever
//!    wakes sysmon uses `Shared::wake_sysmon`, which ends a watch as it
//!    wakes a note, and ends a pause too.
//!
//! # Descriptors (Go's pollDesc)
//!
//! A registered fd has a `Desc`: a reader slot and a writer slot, each
//! `EMPTY | READY | waiting(G)` (Go's pdNil, pdReady, G pointer), so a
//! reader and a writer of one socket park independently.
//!
//! 1. A goroutine tries its I/O; on EAGAIN it calls `wait`. A slot that is
//!    READY is consumed and `wait` returns at once (readiness arrived since
//!    the last wait; the caller retries its I/O).
//! 2. Otherwise it CASes `EMPTY -> G` and parks. The CAS closes the race
//!    with the poller: an event that arrives between the EAGAIN and the
//!    CAS left READY there, so the CAS fails and the goroutine retries
//!    instead of sleeping through it (no lost wake-up under edge
//!    triggering).
//! 3. An event moves a slot from G to EMPTY and wakes G (it will retry its
//!    I/O, which consumes the readiness), or from EMPTY to READY.
//! 4. A deadline is a runtime timer that CASes `G -> EMPTY` and wakes G;
//!    exactly one of the timer and the poller gets G out of the slot.
//! 5. One goroutine waits per slot, and it is the only goroutine of its
//!    direction between a `WouldBlock` and its park: the I/O loops of
//!    `net::Io` (every socket call and `Registration::read_with` /
//!    `write_with`) hold the direction's *turn* (`Desc::lock_turn`, Go's
//!    fdMutex readLock / writeLock) from their first attempt to their
//!    result, so that the one READY token is never consumed by a waiter
//!    whose `WouldBlock` came before another's (two receivers that both
//!    got `WouldBlock` before two datagrams arrived behind one edge: the
//!    first to wait took the token and datagram 1; the second parked with
//!    datagram 2 queued and no edge to come). Same-direction I/O on one
//!    socket is therefore serialised among the goroutines that park here,
//!    as in Go. A goroutine waiting for the turn honours its own deadline
//!    (a timed acquire; deadlines are per call here, not per socket as in
//!    Go). Plain threads and goroutines of other runtimes wait in
//!    `poll(2)`, which consumes no token, and take no turn. A bare wait
//!    (`Registration::wait_readable`) takes the turn only if it is free;
//!    otherwise it waits for it (within its deadline) and returns for a
//!    retry.
//!
//! Descriptors are allocated by the driver and never freed while it lives
//! (Go's pollCache is type-stable memory too): an event may name a
//! descriptor whose fd was just closed. So the event's token carries a
//! generation tag beside the address, and deregistering bumps the
//! generation: an event for a closed fd, read after the descriptor was
//! reused for a new fd, is dropped (golang/go#59545). An event that passed
//! the check just before the reuse can still mark the new registration
//! READY or wake its waiter once; that is a spurious wake-up, which every
//! waiter tolerates (it retries its I/O).
//!
//! # Shutdown
//!
//! A runtime dropped while goroutines wait for I/O abandons them (their
//! stacks are unmapped, so their sockets are never dropped). `close` marks
//! every descriptor that a goroutine was inside `wait` on dead: surviving
//! handles (clones held elsewhere) then fail with an error instead of
//! touching the fd number again. It closes the fd only if the descriptor
//! was registered with `register_owned`, by gosched's own socket types
//! (`TcpStream`, `TcpListener`, `UdpSocket`), whose object owns its fd and
//! is reachable only through gosched's handles. A `net::Registration<T>`
//! registers with `register`, and its fd is never closed here: `T` may not
//! own it (`&File`, `BorrowedFd`, an `Arc<File>` cloned elsewhere), and
//! closing it would be an I/O-safety violation (the real owner would close
//! or use a number the process may have reused for another file). An
//! abandoned `Registration` whose `T` does own its fd leaks that fd
//! instead, with the object. A plain thread, or a goroutine of another
//! runtime, inside a system call on a clone of a socket at the moment of
//! the drop is waited for (`Desc::enter_call`, Go's fdMutex reference
//! count): the fd is closed after that call, and its next call fails.
//!
//! # One runtime per descriptor
//!
//! A descriptor's waiters are goroutines of the driver's own runtime only:
//! a poll hands the goroutines it wakes to the polling runtime's queues
//! (`Shared::inject`, `netpoll_take`), and an idle runtime polls nobody
//! else's sockets. A goroutine of another runtime that must wait on a
//! socket registered here waits in `poll(2)` inside `blocking` instead
//! (`net::Io::wait`); so does every goroutine once this runtime shut down.

mod epoll;
mod netpoll;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sched::g::GRef;
use crate::sched::RuntimeLock;

pub(crate) use epoll::shut_down;
use epoll::{OsPoller, HUP, MAX_EVENTS, READABLE, WRITABLE};

/// Direction of a wait: index of the slot in `Desc::slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Read = 0,
    Write = 1,
}

/// Slot states (besides a waiting G's address).
const EMPTY: usize = 0;
const READY: usize = 1;

/// Bits of a token that hold the descriptor's address (x86-64 user space
/// is below 2^47); the generation tag sits above.
const ADDR_BITS: u32 = 48;
const TAG_MASK: u64 = (1 << (64 - ADDR_BITS)) - 1;

/// How stale the last poll may be before sysmon polls while every P is
/// busy: half a quantum, between 100 µs and 1 ms (Go: 10 ms).
pub(crate) fn poll_bound(quantum: Duration) -> Duration {
    (quantum / 2).clamp(Duration::from_micros(100), Duration::from_millis(1))
}

/// How stale the last poll may be before a P polls on its periodic turn
/// (every `GLOBAL_CHECK`-th slice). A poll is one `epoll_pwait2` system
/// call (~0.5 µs): at most one per 50 µs per P keeps its cost near 1 % of
/// a P even when goroutines switch every 100 ns.
pub(crate) const TICK_POLL_BOUND: Duration = Duration::from_micros(50);

/// sysmon watches the poller itself (step 5 of "Who waits in the poller")
/// once no M has polled for this long: Ps that switch goroutines poll at
/// least every [`TICK_POLL_BOUND`], so four of those without a poll mean
/// every P is inside one goroutine.
pub(crate) const SYSMON_WATCH_AFTER: Duration = Duration::from_micros(200);

/// The longest sysmon sleeps while Ps poll on their own and goroutines wait
/// for I/O (see `Shared::sysmon_wait`): how late a goroutine that stops
/// polling (a long request) is noticed, at worst, beyond
/// [`SYSMON_WATCH_AFTER`]. Each of sysmon's looks costs a few microseconds
/// of some CPU: at most ~2,500 per second while Ps are busy.
pub(crate) const SYSMON_BACKOFF_CAP: Duration = Duration::from_micros(400);

/// One direction of a descriptor: EMPTY, READY or a waiting G's address.
struct Slot(AtomicUsize);

impl Slot {
    /// Consumes a READY (step 1 of the protocol).
    fn take_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed) == READY
            && self
                .0
                .compare_exchange(READY, EMPTY, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Readiness (step 3): returns the waiting G to wake, if any.
    fn notify(&self) -> Option<GRef> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let next = if cur > READY { EMPTY } else { READY };
            if cur == next {
                return None;
            }
            // AcqRel: pairs with the waiter's CAS that published its G
            // (and what it wrote before parking).
            match self
                .0
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if cur > READY => {
                    // SAFETY: only a live G's address is stored in a slot
                    // (G structs are never freed).
                    return Some(GRef(unsafe {
                        std::ptr::NonNull::new_unchecked(cur as *mut crate::sched::g::G)
                    }));
                }
                Ok(_) => return None,
                Err(now) => cur = now,
            }
        }
    }

    /// A deadline (step 4): takes `g` out of the slot if it still waits.
    fn expire(&self, g: GRef) -> bool {
        self.0
            .compare_exchange(
                g.as_ptr() as usize,
                EMPTY,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

/// `Turn::state` bits: someone holds the turn; goroutines queue for it.
const TURN_HELD: u32 = 1;
const TURN_QUEUED: u32 = 2;

/// One direction's turn (step 5; Go's fdMutex read or write half): a lock
/// held across a whole I/O call, with a FIFO queue whose waiters may give
/// up at a deadline. Unlocking with waiters hands the turn straight to the
/// head one (`TURN_HELD` stays set), so a waiter that timed out has never
/// owned it and one that was handed it owns it whatever its clock says.
pub(crate) struct Turn {
    /// `TURN_HELD | TURN_QUEUED`. The uncontended lock and unlock are one
    /// CAS each; `TURN_QUEUED` changes only under `queue`'s lock and sends
    /// an unlock to the slow path.
    state: AtomicU32,
    /// The holding goroutine's address (0: none; a plain thread never
    /// holds a turn), to report a re-entrant lock instead of hanging.
    owner: AtomicUsize,
    /// Waiters, FIFO. Each entry lives on its waiter's stack until it is
    /// handed the turn (`granted`) or takes itself out under this lock.
    queue: Mutex<TurnQueue>,
}

struct TurnQueue(std::collections::VecDeque<*const TurnWaiter>);

// SAFETY: the pointers are dereferenced only under the queue's lock, and
// point at entries that stay alive until they are granted or removed (both
// under that lock).
unsafe impl Send for TurnQueue {}

struct TurnWaiter {
    waiter: crate::sched::g::Waiter,
    /// Set (Release) by the unlocker after unlinking the entry: the turn
    /// is ours.
    granted: AtomicBool,
}

impl Turn {
    fn new() -> Turn {
        Turn {
            state: AtomicU32::new(0),
            owner: AtomicUsize::new(0),
            queue: Mutex::new(TurnQueue(std::collections::VecDeque::new())),
        }
    }

    /// Takes the turn for goroutine `g`, waiting FIFO; false if `deadline`
    /// passed first.
    ///
    /// # Panics
    ///
    /// If `g` holds it already (an I/O closure that re-entered its own
    /// registration in the same direction: it would wait for itself).
    fn lock(&self, g: GRef, deadline: Option<Instant>) -> bool {
        // Acquire: pairs with the Release of the last unlock.
        let mine = self
            .state
            .compare_exchange(0, TURN_HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            || self.lock_slow(g, deadline);
        if mine {
            self.owner.store(g.as_ptr() as usize, Ordering::Relaxed);
        }
        mine
    }

    /// Takes the turn if it is free.
    fn try_lock(&self, g: GRef) -> bool {
        let mine = self
            .state
            .compare_exchange(0, TURN_HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if mine {
            self.owner.store(g.as_ptr() as usize, Ordering::Relaxed);
        }
        mine
    }

    #[cold]
    fn lock_slow(&self, g: GRef, deadline: Option<Instant>) -> bool {
        // Only we store our own address there, and we clear it before we
        // unlock: seeing it means we hold the turn.
        assert!(
            self.owner.load(Ordering::Relaxed) != g.as_ptr() as usize,
            "gosched: an I/O closure (Registration::read_with / write_with) used its own \
             registration in the same direction; I/O in one direction of a socket is \
             serialised, so it would wait for itself"
        );
        let me = TurnWaiter {
            waiter: crate::sched::g::Waiter::G(g),
            granted: AtomicBool::new(false),
        };
        {
            let _np = crate::sched::NoPreempt::enter();
            let mut q = self.queue.rt_lock();
            let mut s = self.state.load(Ordering::Relaxed);
            loop {
                if s & TURN_HELD == 0 {
                    // Free: then nobody queues (unlock hands the turn to a
                    // queued waiter), and only a fast-path locker races us.
                    match self.state.compare_exchange(
                        s,
                        s | TURN_HELD,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            drop(q);
                            return true;
                        }
                        Err(now) => s = now,
                    }
                    continue;
                }
                // A CAS, not a store: the holder's fast unlock (HELD -> 0)
                // either comes first (we see the turn free) or fails and
                // takes the slow path, which needs the lock we hold.
                match self.state.compare_exchange(
                    s,
                    s | TURN_QUEUED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => s = now,
                }
            }
            q.0.push_back(&me);
            drop(q);
        }
        loop {
            // Acquire: pairs with the unlocker's Release.
            if me.granted.load(Ordering::Acquire) {
                return true;
            }
            match deadline {
                None => crate::sched::g::park("IO wait (turn)"),
                Some(d) if Instant::now() < d => crate::sched::g::park_until("IO wait (turn)", d),
                Some(_) => {
                    let _np = crate::sched::NoPreempt::enter();
                    let mut q = self.queue.rt_lock();
                    // Under the lock: granted, or still queued.
                    let granted = me.granted.load(Ordering::Acquire);
                    if !granted {
                        let at = q.0.iter().position(|&w| std::ptr::eq(w, &me));
                        q.0.remove(at.expect("a turn waiter neither granted nor queued"));
                        if q.0.is_empty() {
                            self.state.fetch_and(!TURN_QUEUED, Ordering::Relaxed);
                        }
                    }
                    drop(q);
                    return granted;
                }
            }
        }
    }

    fn unlock(&self) {
        self.owner.store(0, Ordering::Relaxed);
        // Release: pairs with the next holder's Acquire.
        if self
            .state
            .compare_exchange(TURN_HELD, 0, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            self.unlock_slow();
        }
    }

    #[cold]
    fn unlock_slow(&self) {
        let woken = {
            let _np = crate::sched::NoPreempt::enter();
            let mut q = self.queue.rt_lock();
            let next = match q.0.pop_front() {
                Some(w) => {
                    if q.0.is_empty() {
                        self.state.fetch_and(!TURN_QUEUED, Ordering::Relaxed);
                    }
                    // SAFETY: a queued entry is alive until it is granted
                    // or removed, both under this lock; we set `granted`
                    // last and touch the entry no more.
                    let w = unsafe { &*w };
                    let waiter = w.waiter.clone();
                    // TURN_HELD stays set: the turn is the waiter's now.
                    w.granted.store(true, Ordering::Release);
                    Some(waiter)
                }
                None => {
                    // The waiters gave up (and cleared TURN_QUEUED).
                    self.state.fetch_and(!TURN_HELD, Ordering::Release);
                    None
                }
            };
            drop(q);
            next
        };
        if let Some(w) = woken {
            w.unpark();
        }
    }
}

/// A held turn (`Desc::lock_turn`); unlocks when dropped.
pub(crate) struct TurnGuard {
    desc: &'static Desc,
    dir: Dir,
}

impl TurnGuard {
    pub(crate) fn dir(&self) -> Dir {
        self.dir
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.desc.turn[self.dir as usize].unlock();
    }
}

/// A registered file descriptor (Go's pollDesc). Aligned so its address
/// leaves room for nothing but the tag above bit 48, and so that two
/// descriptors never share a cache line.
#[repr(align(64))]
pub(crate) struct Desc {
    /// Registration generation, bumped at deregistration; its low bits tag
    /// the events (Go's fdseq). Written under the driver's table lock.
    gen: AtomicU64,
    /// The registered fd (for `close`).
    fd: AtomicI32,
    /// Reader and writer slots.
    slots: [Slot; 2],
    /// Serialises the I/O calls of one direction (step 5).
    turn: [Turn; 2],
    /// Goroutines inside `wait` on this descriptor (parked, or woken and
    /// not yet resumed): the ones a runtime drop abandons.
    inside: AtomicU32,
    /// Registered now (the table lock guards the transitions).
    in_use: AtomicBool,
    /// The registering handle's object owns the fd (`register_owned`):
    /// `close` closes it at shutdown if the descriptor is dead. Written at
    /// registration under the table lock.
    owned: AtomicBool,
    /// The runtime shut down while a goroutine waited here (see
    /// "Shutdown"): handles must not touch the fd, which the runtime
    /// closed if it is `owned`.
    dead: AtomicBool,
    /// Handles' system calls on the fd in progress (`enter_call`): `close`
    /// closes an `owned` fd only once none is (Go's fdMutex reference
    /// count, for the close only).
    calls: AtomicU32,
    /// An event since registration said the peer closed its side or the
    /// connection failed (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`): a read
    /// may return EOF or an error without any further event, so
    /// `net::Io::io_stream` must not wait before trying it.
    hup: AtomicBool,
}

impl Desc {
    fn new() -> Desc {
        Desc {
            gen: AtomicU64::new(0),
            fd: AtomicI32::new(-1),
            slots: [Slot(AtomicUsize::new(EMPTY)), Slot(AtomicUsize::new(EMPTY))],
            turn: [Turn::new(), Turn::new()],
            inside: AtomicU32::new(0),
            in_use: AtomicBool::new(false),
            owned: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            calls: AtomicU32::new(0),
            hup: AtomicBool::new(false),
        }
    }

    /// A handle is about to make a system call on the fd: counts it in
    /// `calls` unless the descriptor is dead (then false, uncounted). The
    /// count, then the check, against `close`'s mark, then its look at the
    /// count (all SeqCst): either the call sees the mark, or `close` sees
    /// the call and waits for `exit_call` before it closes the fd. A check
    /// of `dead` alone raced the close: a clone's call that had passed it
    /// a moment before reached whatever file the process opened next under
    /// the fd's number (a plain thread's writes landed in an unrelated
    /// `UnixStream` 12 times in ~4,400 runtime drops).
    pub(crate) fn enter_call(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.dead.load(Ordering::SeqCst) {
            self.exit_call();
            return false;
        }
        true
    }

    /// The system call `enter_call` counted is over.
    pub(crate) fn exit_call(&self) {
        self.calls.fetch_sub(1, Ordering::Release);
    }

    /// The event token: address plus generation tag.
    fn token(&self) -> u64 {
        let addr = self as *const Desc as u64;
        debug_assert!(addr >> ADDR_BITS == 0, "descriptor above 2^48");
        addr | ((self.gen.load(Ordering::Relaxed) & TAG_MASK) << ADDR_BITS)
    }

    /// The runtime shut down while a goroutine waited on this
    /// descriptor: handles must not use the fd any more.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// The runtime closed this fd at shutdown (it is dead and `owned`):
    /// its handle must forget its object, not drop it.
    fn fd_closed(&self) -> bool {
        self.is_dead() && self.owned.load(Ordering::Relaxed)
    }

    /// See `Desc::hup`.
    pub(crate) fn peer_closed(&self) -> bool {
        self.hup.load(Ordering::Acquire)
    }

    /// Takes the turn in `dir` for goroutine `g`, the calling goroutine
    /// (step 5), waiting in line until `deadline`; None if it passed first.
    /// Only goroutines that park on this descriptor's driver take turns.
    ///
    /// # Panics
    ///
    /// If `g` holds that turn already.
    pub(crate) fn lock_turn(
        &'static self,
        dir: Dir,
        g: GRef,
        deadline: Option<Instant>,
    ) -> Option<TurnGuard> {
        // `then`, not `then_some`: a guard built for a lock not taken would
        // release, when dropped, the turn another goroutine holds.
        self.turn[dir as usize]
            .lock(g, deadline)
            .then(|| TurnGuard { desc: self, dir })
    }
}

/// The descriptors a driver ever allocated, and the free ones.
#[derive(Default)]
struct Table {
    all: Vec<&'static Desc>,
    free: Vec<&'static Desc>,
}

/// One runtime's driver: the OS poller plus the generic state.
pub(crate) struct Driver {
    os: OsPoller,
    /// Goroutines inside `wait` (any descriptor). Written by waiters
    /// (SeqCst); read with one Relaxed load by `find_runnable` and sysmon
    /// to skip polling, and by the deadlock check.
    waiters: AtomicUsize,
    /// An M is blocked in the poller (so nobody else need poll). Written by
    /// that M; read Relaxed (a stale value costs one extra or one skipped
    /// non-blocking poll).
    blocked: AtomicBool,
    /// When the poller was last looked at, in ns since the runtime's
    /// epoch (for sysmon).
    last_poll: AtomicU64,
    /// sysmon is in (or about to enter) `OsPoller::watch`: a waker of
    /// sysmon must `unwatch` rather than wake its note's futex (SeqCst, a
    /// Dekker pair with the note; see `Shared::wake_sysmon`).
    sysmon_watching: AtomicBool,
    /// sysmon's next note sleep while Ps poll on their own and goroutines
    /// wait for I/O, in ns (0: from `SYSMON_WATCH_AFTER`); see
    /// `Shared::sysmon_wait` (sysmon only).
    sysmon_backoff: AtomicU64,
    /// The slice (P and `schedtick`, `netpoll::slice_key`) sysmon last slept
    /// for until it could be stuck, and the next such sleep while the Ps
    /// keep switching, in ns (0: from the granularity); see
    /// `Shared::until_stuck` (sysmon only).
    sysmon_young: AtomicU64,
    sysmon_young_backoff: AtomicU64,
    /// After a watch whose poll woke nobody (its events were for
    /// descriptors no goroutine waits on: a busy server's connections
    /// whose handlers are still working), sysmon does not watch again
    /// before this time, in ns since the runtime's epoch (0: none); see
    /// `Shared::sysmon_wait` (sysmon only).
    sysmon_quiet_until: AtomicU64,
    /// The next such pause, in ns (0: from `SYSMON_WATCH_AFTER`), doubled
    /// by each empty poll up to `SYSMON_BACKOFF_CAP`, reset by a poll that
    /// wakes a goroutine and by a wake-up of sysmon (sysmon only).
    sysmon_quiet_backoff: AtomicU64,
    table: Mutex<Table>,
    /// Descriptors registered now (sysmon keeps its poll period while any
    /// is). Written under `table`'s lock, read Relaxed.
    registered: AtomicUsize,
    /// `close` ran.
    closed: AtomicBool,
    /// Parks on a descriptor (Stats::poll_waits).
    pub(crate) waits: AtomicU64,
    /// Goroutines woken by the poller (Stats::poll_wakeups).
    pub(crate) wakeups: AtomicU64,
}

// SAFETY: the `&'static Desc`s in the table point into boxes this driver
// leaked and frees only in `drop`; every field is Sync.
unsafe impl Sync for Driver {}
// SAFETY: as above.
unsafe impl Send for Driver {}

impl Driver {
    pub(crate) fn new() -> io::Result<Driver> {
        Ok(Driver {
            os: OsPoller::new()?,
            waiters: AtomicUsize::new(0),
            blocked: AtomicBool::new(false),
            last_poll: AtomicU64::new(0),
            sysmon_young: AtomicU64::new(u64::MAX),
            sysmon_young_backoff: AtomicU64::new(0),
            sysmon_watching: AtomicBool::new(false),
            sysmon_backoff: AtomicU64::new(0),
            sysmon_quiet_until: AtomicU64::new(0),
            sysmon_quiet_backoff: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
            registered: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            waits: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
        })
    }

    /// Goroutines waiting for I/O now.
    pub(crate) fn waiters(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    /// Should a running M or sysmon poll without blocking? One Relaxed
    /// load when no goroutine waits (the scheduler's hot path).
    #[inline]
    pub(crate) fn should_poll(&self) -> bool {
        self.waiters.load(Ordering::Relaxed) != 0 && !self.blocked.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers `fd` (Go's poll_runtime_pollOpen). The descriptor lives
    /// as long as the driver (not really `'static`): callers keep an
    /// `Arc<Driver>` beside it. The driver never closes `fd`, not even at
    /// shutdown (see "Shutdown"): for a `net::Registration`, whose object
    /// may not own it.
    pub(crate) fn register(&self, fd: RawFd) -> io::Result<&'static Desc> {
        self.register_as(fd, false)
    }

    /// `register` for an fd that the registering handle's object owns and
    /// that only gosched's handles reach (its socket types): if a goroutine
    /// is abandoned waiting on it, the runtime's drop closes it.
    pub(crate) fn register_owned(&self, fd: RawFd) -> io::Result<&'static Desc> {
        self.register_as(fd, true)
    }

    fn register_as(&self, fd: RawFd, owned: bool) -> io::Result<&'static Desc> {
        let _np = crate::sched::NoPreempt::enter();
        let desc = {
            let mut t = self.table.rt_lock();
            if self.is_closed() {
                return Err(shut_down());
            }
            let d = match t.free.pop() {
                Some(d) => d,
                None => {
                    let d: &'static Desc = Box::leak(Box::new(Desc::new()));
                    t.all.push(d);
                    d
                }
            };
            d.fd.store(fd, Ordering::Relaxed);
            d.in_use.store(true, Ordering::Relaxed);
            d.owned.store(owned, Ordering::Relaxed);
            d.hup.store(false, Ordering::Relaxed);
            self.registered.fetch_add(1, Ordering::Relaxed);
            d
        };
        if let Err(e) = self.os.register(fd, desc.token()) {
            self.release(desc);
            return Err(e);
        }
        Ok(desc)
    }

    /// Deregisters `desc` (Go's poll_runtime_pollClose). Returns false if
    /// the runtime already closed its fd at shutdown (the caller must not
    /// close it again). A dead descriptor whose fd the runtime left open
    /// (not `owned`) stays dead (its poller is closed): true, the caller
    /// still owns what it owned.
    pub(crate) fn deregister(&self, desc: &'static Desc) -> bool {
        let _np = crate::sched::NoPreempt::enter();
        if desc.is_dead() {
            return !desc.fd_closed();
        }
        self.os.deregister(desc.fd.load(Ordering::Relaxed));
        self.release(desc)
    }

    /// Returns `desc` to the free list (bumping its generation) unless it
    /// is dead; false if the runtime closed its fd (`Desc::fd_closed`).
    fn release(&self, desc: &'static Desc) -> bool {
        let mut t = self.table.rt_lock();
        if desc.is_dead() {
            return !desc.fd_closed();
        }
        // Events still carrying the old tag are dropped from now on.
        desc.gen.fetch_add(1, Ordering::Release);
        desc.in_use.store(false, Ordering::Relaxed);
        desc.fd.store(-1, Ordering::Relaxed);
        self.registered.fetch_sub(1, Ordering::Relaxed);
        for s in &desc.slots {
            s.0.store(EMPTY, Ordering::Relaxed);
        }
        t.free.push(desc);
        true
    }

    /// Wakes whoever waits on `desc` in direction `dir` (a local shutdown:
    /// the kernel's event follows, but the waiter should not depend on a
    /// poll happening).
    pub(crate) fn notify(&self, desc: &Desc, dir: Dir) {
        if let Some(g) = desc.slots[dir as usize].notify() {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            g.unpark();
        }
    }

    /// Parks the calling goroutine until `desc` may be ready in direction
    /// `dir`, or `deadline`, for a caller that does not hold the turn (a
    /// bare `Registration` wait): with the turn free it takes it for the
    /// wait; otherwise it waits for the turn (within `deadline`) and
    /// returns for a retry, the readiness it waited for perhaps consumed by
    /// the holder (step 5). May return spuriously. Call it from a goroutine
    /// of this driver's runtime that can park.
    pub(crate) fn wait(
        self: &Arc<Driver>,
        desc: &'static Desc,
        dir: Dir,
        deadline: Option<Instant>,
    ) {
        // Not even a READY is ours without the turn: its holder may be
        // between a `WouldBlock` and its wait, and need it.
        let g = crate::sched::current_g().expect("Driver::wait outside a goroutine");
        if desc.turn[dir as usize].try_lock(g) {
            let turn = TurnGuard { desc, dir };
            self.wait_turn(&turn, deadline);
        } else {
            drop(desc.lock_turn(dir, g, deadline));
        }
    }

    /// Parks the calling goroutine, which holds `turn`, until its
    /// descriptor may be ready in the turn's direction, or `deadline`
    /// (steps 1, 2 and 4 in the module docs). May return spuriously; the
    /// caller retries its I/O and checks its deadline. Call it from a
    /// goroutine of this driver's runtime that can park: the goroutines a
    /// poll wakes are made runnable on the polling runtime's queues.
    pub(crate) fn wait_turn(self: &Arc<Driver>, turn: &TurnGuard, deadline: Option<Instant>) {
        let (desc, dir) = (turn.desc, turn.dir);
        let slot = &desc.slots[dir as usize];
        if slot.take_ready() {
            return;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let g = crate::sched::current_g().expect("Driver::wait outside a goroutine");
        self.waiters.fetch_add(1, Ordering::SeqCst);
        desc.inside.fetch_add(1, Ordering::Relaxed);
        self.waits.fetch_add(1, Ordering::Relaxed);
        // Step 2. AcqRel: pairs with `notify`'s CAS.
        match slot.0.compare_exchange(
            EMPTY,
            g.as_ptr() as usize,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                let timer = deadline.and_then(|d| {
                    let drv = self.clone();
                    crate::sched::timer::add_current(
                        d,
                        Box::new(move || {
                            if desc.slots[dir as usize].expire(g) {
                                g.unpark();
                            }
                            drop(drv);
                        }),
                    )
                });
                // A wake-up meant for an earlier wait of this goroutine
                // (a token) leaves the slot holding us: park again.
                while slot.0.load(Ordering::Acquire) == g.as_ptr() as usize {
                    crate::sched::gopark("IO wait");
                }
                if let Some(t) = timer {
                    crate::sched::timer::cancel_current(t);
                }
            }
            Err(READY) => {
                slot.take_ready();
            }
            Err(other) => {
                unreachable!("two goroutines in one slot ({other:#x}) despite the turn")
            }
        }
        desc.inside.fetch_sub(1, Ordering::Relaxed);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Polls the OS poller and claims the goroutines its events wake (Go's
    /// netpoll): each is out of its slot and no longer PARKED, so the
    /// caller must make every one runnable. `timeout` as in the contract.
    #[inline(never)]
    fn poll(&self, timeout: Option<Duration>) -> Vec<GRef> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let n = self.os.wait(&mut events, timeout);
        self.dispatch(&events[..n])
    }

    /// The second half of `poll`: applies events to their descriptors'
    /// slots, dropping those whose generation tag is stale.
    fn dispatch(&self, events: &[libc::epoll_event]) -> Vec<GRef> {
        let mut woken = Vec::new();
        for ev in events {
            let (data, bits) = (ev.u64, ev.events);
            let addr = data & ((1 << ADDR_BITS) - 1);
            // SAFETY: a token holds the address of a descriptor this driver
            // allocated; descriptors are freed only when the driver drops,
            // and only the driver's own runtime polls it.
            let desc = unsafe { &*(addr as *const Desc) };
            if desc.gen.load(Ordering::Acquire) & TAG_MASK != data >> ADDR_BITS {
                // For an fd closed since (golang/go#59545).
                continue;
            }
            if bits & HUP != 0 {
                // Before the notifications below, which publish it to the
                // goroutines they wake (or leave READY for).
                desc.hup.store(true, Ordering::Release);
            }
            for (dir, mask) in [(Dir::Read, READABLE), (Dir::Write, WRITABLE)] {
                if bits & mask != 0 {
                    if let Some(g) = desc.slots[dir as usize].notify() {
                        if g.unpark_deferred() {
                            woken.push(g);
                        }
                    }
                }
            }
        }
        if !woken.is_empty() {
            self.wakeups
                .fetch_add(woken.len() as u64, Ordering::Relaxed);
        }
        woken
    }

    /// Closes the poller at runtime drop (after every M and sysmon
    /// stopped): marks dead the descriptors that abandoned goroutines wait
    /// on and closes those fds that are `owned` (see "Shutdown"), then
    /// closes the OS poller.
    pub(crate) fn close(&self) {
        let _np = crate::sched::NoPreempt::enter();
        {
            let t = self.table.rt_lock();
            self.closed.store(true, Ordering::Release);
            for d in &t.all {
                if !d.in_use.load(Ordering::Relaxed) {
                    continue;
                }
                // Only our own goroutines ever wait here (`net::Io::wait`
                // sends a goroutine of another runtime to `poll(2)`), and
                // they are abandoned: nobody to wake.
                if d.inside.load(Ordering::Relaxed) > 0 {
                    d.dead.store(true, Ordering::SeqCst);
                    let fd = d.fd.swap(-1, Ordering::Relaxed);
                    // Not while a handle's call on it is in progress
                    // (`Desc::enter_call`): calls on our sockets do not
                    // block, so that is microseconds; one held up longer
                    // (its thread stopped) leaves the fd open rather than
                    // closed under it.
                    let start = std::time::Instant::now();
                    while d.calls.load(Ordering::SeqCst) != 0 && start.elapsed() < CALLS_DRAIN {
                        std::thread::yield_now();
                    }
                    // Only a gosched socket's fd: a `Registration`'s
                    // object may not own its fd.
                    if d.owned.load(Ordering::Relaxed) && d.calls.load(Ordering::SeqCst) == 0 {
                        // SAFETY: `owned`: the fd belongs to a gosched
                        // socket's object, reachable only through handles
                        // that abandoned goroutines hold (or clones, whose
                        // calls `enter_call` counted or turned away, and
                        // which forget the object instead of dropping it:
                        // `fd_closed`).
                        unsafe { libc::close(fd) };
                    }
                }
            }
        }
        self.os.close();
    }
}

/// How long `Driver::close` waits for handles' calls in progress on an
/// fd it is about to close (see `Desc::enter_call`).
const CALLS_DRAIN: Duration = Duration::from_secs(1);

impl Drop for Driver {
    fn drop(&mut self) {
        let t = std::mem::take(self.table.get_mut().unwrap_or_else(|e| e.into_inner()));
        for d in t.all {
            // SAFETY: leaked by `register` from a Box; the driver is being
            // dropped, so no registration, poll or timer task refers to it
            // (registrations and deadline timers hold an Arc on the driver).
            drop(unsafe { Box::from_raw(d as *const Desc as *mut Desc) });
        }
    }
}

#[cfg(test)]
mod tests;
