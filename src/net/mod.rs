//! Networking that parks goroutines, not threads: [`TcpListener`],
//! [`TcpStream`] and [`UdpSocket`] with the shapes of `std::net`, plus
//! [`Registration`], which parks on any nonblocking file descriptor.
//!
//! Every socket here is a std socket set nonblocking. A call that would
//! block:
//!
//! - in a goroutine, registers the fd with the runtime's netpoller (once,
//!   on the first such call) and parks the goroutine until the fd is ready;
//!   its thread runs other goroutines meanwhile (Go's netpoller);
//! - on a plain thread (or inside [`blocking`](crate::blocking)), waits in
//!   `poll(2)`, like std;
//! - in a goroutine of another runtime than the one the socket is
//!   registered with (a socket shared between runtimes), or of any runtime
//!   once that one has shut down, waits in `poll(2)` inside
//!   [`blocking`](crate::blocking): its P is released meanwhile, and it is
//!   never handed to the other runtime's threads.
//!
//! Timeouts (`set_read_timeout`, `set_write_timeout`, `connect_timeout`)
//! bound each call, like std's, but are implemented as Go's deadlines are
//! (runtime timers, not `SO_RCVTIMEO`): a call that runs out returns
//! [`io::ErrorKind::TimedOut`] and the socket stays usable. `EINTR` never
//! reaches the caller.
//!
//! Calls in one direction on one socket are serialised, as Go serialises
//! them (its fdMutex): among goroutines, a second read (receive, accept)
//! waits until the first returns, and likewise for writes (sends), each
//! within its own timeout; a read and a write run side by side. So the
//! readiness one goroutine waited for cannot be taken by another that
//! found the socket empty earlier (with edge-triggered readiness it was:
//! two receivers and two datagrams behind one edge left the second
//! receiver parked with a datagram queued). Plain threads, which wait in
//! `poll(2)`, are not serialised.
//!
//! Handles made by `try_clone` share one registration; the last one
//! dropped deregisters and closes the fd (no goroutine can be parked on it
//! then: a parked goroutine holds a handle). `shutdown` wakes goroutines
//! parked on the socket at once.
//!
//! A runtime dropped while goroutines are parked on sockets closes those
//! sockets (the goroutines are abandoned, their handles never dropped);
//! other handles of such a socket then fail with an error. Except a call
//! already waiting on such a handle (a clone, read by a goroutine of
//! another runtime) at the moment of the drop: it may go on waiting for
//! the peer (the kernel keeps the socket open while the call polls it),
//! until its timeout, which then reports `EBADF`. It never closes the fd
//! of a [`Registration`], whose object may not own it (see there).
//!
//! # Examples
//!
//! An echo round trip, one goroutine per side:
//!
//! ```
//! use std::io::{Read, Write};
//! use gosched::net::{TcpListener, TcpStream};
//!
//! let rt = gosched::Runtime::new().unwrap();
//! let reply = rt.block_on(|| {
//!     let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let server = gosched::spawn(move || {
//!         let (mut s, _) = listener.accept().unwrap();
//!         let mut buf = [0u8; 5];
//!         s.read_exact(&mut buf).unwrap();
//!         s.write_all(&buf).unwrap();
//!     });
//!     let mut c = TcpStream::connect(addr).unwrap();
//!     c.write_all(b"hello").unwrap();
//!     let mut buf = [0u8; 5];
//!     c.read_exact(&mut buf).unwrap();
//!     server.join().unwrap();
//!     buf
//! });
//! assert_eq!(&reply, b"hello");
//! ```

/// `AsRawFd` and `AsFd` for types whose `inner` is an `Io` (or derefs
/// to one).
macro_rules! impl_as_fd {
    ($($t:ty),*) => {$(
        impl std::os::fd::AsRawFd for $t {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(self.inner.raw())
            }
        }

        impl std::os::fd::AsFd for $t {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self.inner.raw())
            }
        }
    )*};
}
use impl_as_fd;

mod registration;
mod sys;
mod tcp;
mod udp;

pub use registration::Registration;
pub use tcp::{Incoming, TcpListener, TcpStream};
pub use udp::UdpSocket;

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::driver::{Desc, Dir, Driver, TurnGuard};
use crate::sched::g::GRef;

/// A nonblocking I/O object and its (lazy) netpoller registration: the
/// core of every type in this module.
pub(crate) struct Io<T: AsFd> {
    /// The object. Dropped in `Drop` unless the runtime already closed its
    /// fd (then forgotten).
    io: std::mem::ManuallyDrop<T>,
    /// `io` owns its fd and only gosched's handles reach it (a socket
    /// type, made by `Io::owning`): the runtime may close the fd at
    /// shutdown (the driver's "Shutdown"). False for a `Registration`.
    owned: bool,
    /// The registration, made by the first goroutine that must wait.
    reg: OnceLock<Reg>,
    /// Serialises the first registration (two goroutines could race to
    /// register the fd).
    init: std::sync::Mutex<()>,
    /// Per-call timeouts in ns; `NO_TIMEOUT` when none.
    timeouts: [AtomicU64; 2],
    /// Per direction: the last stream transfer was short (see `io_stream`).
    short: [AtomicBool; 2],
}

const NO_TIMEOUT: u64 = u64::MAX;

struct Reg {
    driver: Arc<Driver>,
    desc: &'static Desc,
}

impl Reg {
    /// Can the calling goroutine park on this registration: is it
    /// registered with that goroutine's own runtime, which still runs?
    /// Only a runtime's own goroutines may wait on its poller: the
    /// goroutines a poll wakes go onto the polling runtime's queues.
    fn parks_here(&self) -> bool {
        crate::sched::current_g().is_some_and(|g| self.parks_g(g))
    }

    /// `parks_here` for goroutine `g`, the calling one.
    fn parks_g(&self, g: GRef) -> bool {
        // SAFETY: a running goroutine's runtime is alive.
        let sh = unsafe { &*g.shared.load(Ordering::Acquire) };
        !self.driver.is_closed() && Arc::ptr_eq(&sh.driver, &self.driver)
    }
}

/// The direction's turn, held by a goroutine that parks on the
/// registration's poller through a whole I/O call (see `Io::io_until`).
struct Held<'a> {
    reg: &'a Reg,
    turn: TurnGuard,
}

impl Held<'_> {
    fn wait(&self, deadline: Option<Instant>) {
        self.reg.driver.wait_turn(&self.turn, deadline);
    }
}

impl<T: AsFd> Io<T> {
    /// For an object that may not own its fd (a `Registration`'s): the
    /// runtime never closes the fd, not even when it abandons a goroutine
    /// waiting on it.
    pub(crate) fn new(io: T) -> Io<T> {
        Io::with_ownership(io, false)
    }

    /// For an object that owns its fd and that only gosched's handles
    /// reach (the socket types of this module): a runtime dropped while a
    /// goroutine waits on it closes the fd (the driver's "Shutdown").
    pub(crate) fn owning(io: T) -> Io<T> {
        Io::with_ownership(io, true)
    }

    fn with_ownership(io: T, owned: bool) -> Io<T> {
        Io {
            io: std::mem::ManuallyDrop::new(io),
            owned,
            reg: OnceLock::new(),
            init: std::sync::Mutex::new(()),
            timeouts: [AtomicU64::new(NO_TIMEOUT), AtomicU64::new(NO_TIMEOUT)],
            short: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// The object for one system call, unless the runtime closed its fd
    /// at shutdown; the runtime does not close it while the returned
    /// `Use` lives (`Desc::enter_call`).
    pub(crate) fn get(&self) -> io::Result<Use<'_, T>> {
        match self.reg.get() {
            Some(r) if !r.desc.enter_call() => Err(crate::driver::shut_down()),
            r => Ok(Use {
                io: &self.io,
                desc: r.map(|r| r.desc),
            }),
        }
    }

    pub(crate) fn raw(&self) -> &T {
        &self.io
    }

    fn fd(&self) -> RawFd {
        self.io.as_fd().as_raw_fd()
    }

    pub(crate) fn set_timeout(&self, dir: Dir, t: Option<Duration>) -> io::Result<()> {
        let ns = match t {
            None => NO_TIMEOUT,
            Some(d) if d.is_zero() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "cannot set a 0 duration timeout",
                ))
            }
            Some(d) => u64::try_from(d.as_nanos()).unwrap_or(NO_TIMEOUT - 1),
        };
        self.timeouts[dir as usize].store(ns, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn timeout(&self, dir: Dir) -> Option<Duration> {
        match self.timeouts[dir as usize].load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Runs `f` until it does not return `WouldBlock`, waiting for `dir`
    /// in between, within the direction's timeout.
    pub(crate) fn io<R>(&self, dir: Dir, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        let deadline = self
            .timeout(dir)
            .and_then(|t| Instant::now().checked_add(t));
        self.io_until(dir, deadline, f)
    }

    /// `io` for a read or write of `len` bytes on a stream socket.
    ///
    /// A short transfer (0 < n < `len`) means the socket had no more data
    /// (read) or no more send-buffer room (write) at that moment, so the
    /// next call on a goroutine goes to the poller first instead of making
    /// a system call that would most likely fail with `WouldBlock` (tokio
    /// clears readiness after a short read for the same reason). Nothing
    /// is missed: data or room that comes later raises a new
    /// edge-triggered event, which wakes the waiter or leaves the slot
    /// READY for it; a local `shutdown` leaves it READY too. The exception
    /// is a peer that closed: its FIN may have come with the data just read
    /// (one event for both), and the EOF behind it raises no further
    /// event, so once an event said the peer closed (`Desc::peer_closed`)
    /// every call tries the socket first. In a
    /// request/reply exchange this saves one system call per message.
    /// The pre-wait, like the rest of the call, runs under the direction's
    /// turn (`io_until`), so the READY it may consume is its own.
    pub(crate) fn io_stream(
        &self,
        dir: Dir,
        len: usize,
        f: impl FnMut(&T) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let deadline = self
            .timeout(dir)
            .and_then(|t| Instant::now().checked_add(t));
        let mut held = self.take_turn(dir, deadline)?;
        let short = &self.short[dir as usize];
        if short.load(Ordering::Relaxed) {
            short.store(false, Ordering::Relaxed);
            if let Some(h) = &held {
                if !h.reg.desc.peer_closed() {
                    h.wait(deadline);
                }
            }
        }
        let r = self.io_loop(dir, deadline, &mut held, f);
        if let Ok(n) = r {
            if n > 0 && n < len {
                short.store(true, Ordering::Relaxed);
            }
        }
        r
    }

    /// The next `io_stream` call in `dir` tries the socket first (a `peek`
    /// just saw data).
    pub(crate) fn forget_short(&self, dir: Dir) {
        self.short[dir as usize].store(false, Ordering::Relaxed);
    }

    /// `io` with an absolute deadline (None: none).
    ///
    /// A goroutine that parks on this registration's poller holds the
    /// direction's turn (`Desc::lock_turn`, Go's fdMutex) from its first
    /// attempt to its result, so that it is the only one of its direction
    /// between a `WouldBlock` and its park (the readiness token it may
    /// consume is then its own; see step 5 of the driver's "Descriptors"):
    /// same-direction calls on one socket run one at a time, each waiting
    /// for the turn within its own deadline. A goroutine whose fd is not
    /// registered yet tries once without the turn; on `WouldBlock` it
    /// registers, takes the turn and tries again before it parks. Plain
    /// threads and goroutines of other runtimes wait in `poll(2)` (level
    /// triggered: no token to lose) and take no turn.
    pub(crate) fn io_until<R>(
        &self,
        dir: Dir,
        deadline: Option<Instant>,
        f: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut held = self.take_turn(dir, deadline)?;
        self.io_loop(dir, deadline, &mut held, f)
    }

    /// The turn in `dir` if the calling goroutine parks on this object's
    /// registration; `TimedOut` if `deadline` passes while it waits for it.
    #[inline]
    fn take_turn(&self, dir: Dir, deadline: Option<Instant>) -> io::Result<Option<Held<'_>>> {
        let Some(reg) = self.reg.get() else {
            return Ok(None);
        };
        let Some(g) = crate::sched::g::parkable_g() else {
            return Ok(None);
        };
        if !reg.parks_g(g) {
            return Ok(None);
        }
        match reg.desc.lock_turn(dir, g, deadline) {
            Some(turn) => Ok(Some(Held { reg, turn })),
            None => Err(timed_out()),
        }
    }

    /// The loop of `io_until`, holding `held` if it is the turn.
    fn io_loop<'a, R>(
        &'a self,
        dir: Dir,
        deadline: Option<Instant>,
        held: &mut Option<Held<'a>>,
        mut f: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match f(&*self.get()?) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out());
            }
            if let Some(h) = held {
                debug_assert_eq!(h.turn.dir(), dir);
                h.wait(deadline);
                continue;
            }
            if crate::sched::g::parkable_g().is_some() {
                // No turn yet: this fd's first wait (or another goroutine
                // registered it since our call began). Register it with our
                // runtime if nobody has, and retry under the turn: the
                // `WouldBlock` above was seen without it. Registered with
                // another runtime: no turn, `wait` polls.
                self.registration()?;
                *held = self.take_turn(dir, deadline)?;
                if held.is_some() {
                    continue;
                }
            }
            self.wait(dir, deadline)?;
        }
    }

    /// Waits until the fd may be ready for `dir` or `deadline`: parks a
    /// goroutine on the netpoller, blocks a plain thread in poll(2). May
    /// return early; callers retry their I/O.
    pub(crate) fn wait(&self, dir: Dir, deadline: Option<Instant>) -> io::Result<()> {
        if crate::sched::g::parkable_g().is_none() {
            return sys::poll_fd(self.fd(), dir, deadline);
        }
        let reg = self.registration()?;
        if !reg.parks_here() {
            // Registered with another runtime (or one that has shut down):
            // wait like a blocking call, our P released. Parked on that
            // runtime's poller we would be woken onto its run queues and
            // run by its Ms (or never woken, if it is idle).
            let fd = self.fd();
            return crate::blocking(|| sys::poll_fd(fd, dir, deadline));
        }
        reg.driver.wait(reg.desc, dir, deadline);
        Ok(())
    }

    /// The registration, made now with the calling goroutine's runtime if
    /// there is none yet.
    fn registration(&self) -> io::Result<&Reg> {
        if let Some(r) = self.reg.get() {
            return Ok(r);
        }
        let _np = crate::sched::NoPreempt::enter();
        let _init = self.init.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = self.reg.get() {
            return Ok(r);
        }
        let driver = crate::sched::with_current_shared(|sh| sh.driver.clone())
            .ok_or_else(|| io::Error::other("gosched: registering a socket outside a goroutine"))?;
        let desc = if self.owned {
            driver.register_owned(self.fd())?
        } else {
            driver.register(self.fd())?
        };
        Ok(self.reg.get_or_init(|| Reg { driver, desc }))
    }

    /// Deregisters and returns the object (Registration::into_inner).
    pub(crate) fn into_inner(self) -> io::Result<T> {
        let mut me = std::mem::ManuallyDrop::new(self);
        let owned = match me.reg.take() {
            Some(r) => r.driver.deregister(r.desc),
            None => true,
        };
        // SAFETY: `me` is never used or dropped again; each field is
        // dropped or moved out exactly once here.
        unsafe {
            std::ptr::drop_in_place(&mut me.init);
            std::ptr::drop_in_place(&mut me.reg);
            if owned {
                return Ok(std::mem::ManuallyDrop::take(&mut me.io));
            }
        }
        Err(crate::driver::shut_down())
    }

    /// Wakes goroutines parked on this fd in `dirs` (after a shutdown).
    pub(crate) fn notify(&self, dirs: &[Dir]) {
        if let Some(r) = self.reg.get() {
            for &d in dirs {
                r.driver.notify(r.desc, d);
            }
        }
    }
}

/// `Io::get`'s object, counted as a call in progress on its descriptor
/// until dropped.
pub(crate) struct Use<'a, T> {
    io: &'a T,
    desc: Option<&'static crate::driver::Desc>,
}

impl<T> std::ops::Deref for Use<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.io
    }
}

impl<T> Drop for Use<'_, T> {
    fn drop(&mut self) {
        if let Some(d) = self.desc {
            d.exit_call();
        }
    }
}

impl<T: AsFd> Drop for Io<T> {
    fn drop(&mut self) {
        let owned = match self.reg.take() {
            Some(r) => r.driver.deregister(r.desc),
            None => true,
        };
        if owned {
            // SAFETY: dropped once, here; `io` is not used afterwards.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.io) };
        }
        // Otherwise the runtime closed the fd at shutdown: forget `io`.
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "gosched: I/O timed out")
}

/// The addresses `addr` resolves to, resolving names in a `blocking`
/// call (DNS may block).
fn resolve<A: std::net::ToSocketAddrs>(addr: A) -> io::Result<Vec<std::net::SocketAddr>> {
    crate::blocking(|| addr.to_socket_addrs().map(|a| a.collect()))
}

fn no_addresses() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "could not resolve to any addresses",
    )
}
