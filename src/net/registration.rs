//! `Registration`: park on any nonblocking file descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use super::Io;
use crate::driver::Dir;

/// Owns a nonblocking I/O object (a pipe, an eventfd, a socket type of
/// your own: anything [`AsFd`]) and parks the calling goroutine until its
/// file descriptor is readable or writable: the building block the types
/// of this module are made of, for other crates to integrate with the
/// netpoller. On a plain thread the waits block in `poll(2)`.
///
/// Readiness is edge-triggered: wait only after the I/O returned
/// `WouldBlock` (the helpers [`read_with`](Registration::read_with) and
/// [`write_with`](Registration::write_with) do exactly that). A wait may
/// return without the fd being ready; retry the I/O.
///
/// The fd is registered with the calling goroutine's runtime on the first
/// wait, and deregistered when the `Registration` drops (which then drops
/// the object, closing the fd if the object owns it) or in
/// [`into_inner`](Registration::into_inner).
///
/// gosched never closes the fd itself, since it cannot know whether `T`
/// owns it (`&File`, `BorrowedFd`, an `Arc<File>` cloned elsewhere do not).
/// So a goroutine abandoned by a runtime drop while it waits in a
/// `Registration` keeps its object: the fd is not closed (it leaks if `T`
/// owns it), and other users of the `Registration` get an error from its
/// waits and I/O helpers from then on (the object stays reachable through
/// [`get_ref`](Registration::get_ref) and `into_inner`).
///
/// I/O in one direction is serialised, as Go serialises the reads (and the
/// writes) of one connection: while a goroutine is inside
/// [`read_with`](Registration::read_with) (trying, parked, trying again),
/// another goroutine's `read_with` on the same `Registration` waits for it
/// to return, and likewise for [`write_with`](Registration::write_with);
/// a read and a write run side by side. So readiness one goroutine waited
/// for is never taken by another that got `WouldBlock` earlier. Hence a
/// `read_with` closure must not use its own `Registration` for reading
/// again (a nested `read_with` or `wait_readable` would wait for itself:
/// it panics instead), nor a `write_with` closure for writing. Plain
/// threads (which wait in `poll(2)`) and goroutines of another runtime are
/// not serialised.
///
/// # Examples
///
/// A goroutine parks on a pipe until another writes to it:
///
/// ```
/// use std::io::{Read, Write};
/// use gosched::net::Registration;
///
/// fn nonblocking_pipe() -> (std::fs::File, std::fs::File) {
///     let mut fds = [0; 2];
///     // SAFETY: pipe2 fills two new fds we then own.
///     assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
///     use std::os::fd::FromRawFd;
///     unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
/// }
///
/// let rt = gosched::Runtime::new().unwrap();
/// let got = rt.block_on(|| {
///     let (r, mut w) = nonblocking_pipe();
///     let r = Registration::new(r).unwrap();
///     let writer = gosched::spawn(move || {
///         gosched::sleep(std::time::Duration::from_millis(5));
///         w.write_all(b"ready").unwrap();
///     });
///     let mut buf = [0u8; 5];
///     // Parks (the thread runs the writer meanwhile) until data arrives.
///     let n = r.read_with(|mut f| f.read(&mut buf)).unwrap();
///     writer.join().unwrap();
///     buf[..n].to_vec()
/// });
/// assert_eq!(got, b"ready");
/// ```
pub struct Registration<T: AsFd> {
    inner: Io<T>,
}

impl<T: AsFd> Registration<T> {
    /// Takes `io`, whose fd must be in nonblocking mode.
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming the fd if it is in blocking mode (a wait
    /// would never be needed and every I/O would block the thread); the
    /// error of `fcntl` if the fd is bad.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(gosched::net::Registration::new(s.try_clone().unwrap()).is_err()); // blocking
    /// s.set_nonblocking(true).unwrap();
    /// assert!(gosched::net::Registration::new(s).is_ok());
    /// ```
    pub fn new(io: T) -> io::Result<Registration<T>> {
        let fd = io.as_fd().as_raw_fd();
        // SAFETY: F_GETFL on a borrowed (open) fd takes no pointers.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("gosched::net::Registration: fd {fd} is in blocking mode (set O_NONBLOCK)"),
            ));
        }
        Ok(Registration { inner: Io::new(io) })
    }

    /// The object.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_nonblocking(true).unwrap();
    /// let addr = s.local_addr().unwrap();
    /// let r = gosched::net::Registration::new(s).unwrap();
    /// assert_eq!(r.get_ref().local_addr().unwrap(), addr);
    /// ```
    pub fn get_ref(&self) -> &T {
        self.inner.raw()
    }

    /// Deregisters the fd and returns the object (still open).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_nonblocking(true).unwrap();
    /// let r = gosched::net::Registration::new(s).unwrap();
    /// let s = r.into_inner().unwrap();
    /// assert!(s.local_addr().is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// None at present: even after the runtime it was registered with shut
    /// down while a goroutine waited on it, the object is returned (the
    /// runtime never closes a `Registration`'s fd).
    pub fn into_inner(self) -> io::Result<T> {
        self.inner.into_inner()
    }

    /// Parks until the fd may be readable (or `timeout`, if given, passes:
    /// then `TimedOut`). While another goroutine is inside
    /// [`read_with`](Registration::read_with) it waits for that call to
    /// return and then returns (the readiness may have gone to that call:
    /// retry the I/O).
    ///
    /// # Errors
    ///
    /// `TimedOut`; an error if the runtime it is registered with shut down.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_nonblocking(true).unwrap();
    /// let r = gosched::net::Registration::new(s).unwrap();
    /// let rt = gosched::Runtime::new().unwrap();
    /// let e = rt.block_on(|| r.wait_readable(Some(Duration::from_millis(5))).unwrap_err());
    /// assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    /// ```
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait(Dir::Read, timeout)
    }

    /// Parks until the fd may be writable (or `timeout` passes).
    ///
    /// # Errors
    ///
    /// As [`wait_readable`](Registration::wait_readable).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_nonblocking(true).unwrap();
    /// let r = gosched::net::Registration::new(s).unwrap();
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| r.wait_writable(None).unwrap()); // a fresh socket can send
    /// ```
    pub fn wait_writable(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait(Dir::Write, timeout)
    }

    fn wait(&self, dir: Dir, timeout: Option<Duration>) -> io::Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.inner.get()?;
        self.inner.wait(dir, deadline)?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(super::timed_out());
        }
        Ok(())
    }

    /// Runs the read `f` until it does not return `WouldBlock`, parking
    /// for readability in between. `Interrupted` is retried.
    ///
    /// One goroutine at a time reads through a `Registration` this way
    /// (see the type's docs): a second waits for the first's call to
    /// return. `f` must not read through this `Registration` itself.
    ///
    /// # Errors
    ///
    /// `f`'s error.
    ///
    /// # Panics
    ///
    /// If `f`, run by a goroutine, calls `read_with` or `wait_readable` on
    /// this `Registration` while it would have to wait (it would wait for
    /// its own call).
    ///
    /// # Examples
    ///
    /// ```
    /// let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// b.set_nonblocking(true).unwrap();
    /// a.send_to(b"hi", b.local_addr().unwrap()).unwrap();
    /// let b = gosched::net::Registration::new(b).unwrap();
    /// let mut buf = [0u8; 4];
    /// let n = b.read_with(|s| s.recv(&mut buf)).unwrap();
    /// assert_eq!(&buf[..n], b"hi");
    /// ```
    pub fn read_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.inner.io_until(Dir::Read, None, f)
    }

    /// Runs the write `f` until it does not return `WouldBlock`, parking
    /// for writability in between. Serialised like
    /// [`read_with`](Registration::read_with), for writes.
    ///
    /// # Errors
    ///
    /// `f`'s error.
    ///
    /// # Panics
    ///
    /// If `f`, run by a goroutine, calls `write_with` or `wait_writable` on
    /// this `Registration` while it would have to wait.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.set_nonblocking(true).unwrap();
    /// let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let to = b.local_addr().unwrap();
    /// let a = gosched::net::Registration::new(a).unwrap();
    /// assert_eq!(a.write_with(|s| s.send_to(b"hi", to)).unwrap(), 2);
    /// ```
    pub fn write_with<R>(&self, f: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.inner.io_until(Dir::Write, None, f)
    }
}

impl<T: AsFd> AsFd for Registration<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.raw().as_fd()
    }
}

impl<T: AsFd + std::fmt::Debug> std::fmt::Debug for Registration<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("io", self.inner.raw())
            .finish_non_exhaustive()
    }
}
