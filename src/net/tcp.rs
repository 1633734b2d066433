//! `TcpListener` and `TcpStream`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{no_addresses, resolve, sys, Io};
use crate::driver::Dir;

/// A TCP socket server, listening for connections: `std::net::TcpListener`
/// whose `accept` parks the calling goroutine instead of its thread.
/// Several goroutines may accept on one listener (share it with an `Arc`):
/// their `accept`s run one at a time, as in Go.
///
/// # Examples
///
/// ```
/// use gosched::net::{TcpListener, TcpStream};
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let l = TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = l.local_addr().unwrap();
///     let c = gosched::spawn(move || TcpStream::connect(addr).unwrap());
///     let (s, peer) = l.accept().unwrap();
///     let c = c.join().unwrap();
///     assert_eq!(peer, c.local_addr().unwrap());
///     assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
/// });
/// ```
pub struct TcpListener {
    inner: Io<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds a listener to `addr` (as `std::net::TcpListener::bind`), with
    /// the largest accept queue the system allows (`net.core.somaxconn`, as
    /// Go listens; std asks for 128, and a burst of connections beyond the
    /// queue waits for the client's one-second SYN retry).
    ///
    /// # Errors
    ///
    /// As std: the address is in use, cannot be resolved, ...
    ///
    /// # Examples
    ///
    /// ```
    /// let l = gosched::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// assert_ne!(l.local_addr().unwrap().port(), 0);
    /// ```
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
        let addrs = resolve(addr)?;
        let l = std::net::TcpListener::bind(&addrs[..])?;
        // Listening again only resizes the queue; the kernel caps the
        // backlog at somaxconn.
        // SAFETY: `l` owns a valid listening socket.
        if unsafe { libc::listen(l.as_raw_fd(), libc::c_int::MAX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        TcpListener::from_std(l)
    }

    /// Wraps a std listener, setting it nonblocking.
    ///
    /// # Examples
    ///
    /// ```
    /// let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let addr = std_l.local_addr().unwrap();
    /// let l = gosched::net::TcpListener::from_std(std_l).unwrap();
    /// assert_eq!(l.local_addr().unwrap(), addr);
    /// ```
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        Ok(TcpListener {
            inner: Io::owning(l),
        })
    }

    /// Accepts a connection: parks the calling goroutine (blocks a plain
    /// thread) until one arrives.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::net::{TcpListener, TcpStream};
    /// let l = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// let (_s, peer) = l.accept().unwrap(); // a plain thread blocks
    /// assert_eq!(peer, c.local_addr().unwrap());
    /// ```
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, a) = self.inner.io(Dir::Read, |l| l.accept())?;
        Ok((TcpStream::from_std(s)?, a))
    }

    /// An endless iterator of `accept`ed connections.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::net::{TcpListener, TcpStream};
    /// let l = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// let s = l.incoming().next().unwrap().unwrap();
    /// assert_eq!(s.local_addr().unwrap(), l.local_addr().unwrap());
    /// ```
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address the listener is bound to.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = gosched::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// assert!(l.local_addr().unwrap().ip().is_loopback());
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get()?.local_addr()
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.raw().fmt(f)
    }
}

/// The iterator of [`TcpListener::incoming`]: never returns `None`.
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A TCP connection: `std::net::TcpStream` whose reads, writes and
/// connects park the calling goroutine instead of its thread. Clones made
/// by [`try_clone`](TcpStream::try_clone) share the socket (and its
/// timeouts, as std's share the socket's options). As in Go, the reads of
/// one socket run one at a time, whichever handles and goroutines make
/// them (a read waits for the one before it to return, within its own read
/// timeout), and so do its writes; a read and a write run side by side.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use gosched::net::{TcpListener, TcpStream};
///
/// let rt = gosched::Runtime::new().unwrap();
/// let got = rt.block_on(|| {
///     let l = TcpListener::bind("127.0.0.1:0").unwrap();
///     let addr = l.local_addr().unwrap();
///     gosched::spawn(move || {
///         let (mut s, _) = l.accept().unwrap();
///         s.write_all(b"hi").unwrap();
///     });
///     let mut c = TcpStream::connect(addr).unwrap();
///     let mut v = Vec::new();
///     c.read_to_end(&mut v).unwrap(); // until the server's drop (EOF)
///     v
/// });
/// assert_eq!(got, b"hi");
/// ```
pub struct TcpStream {
    inner: Arc<Io<std::net::TcpStream>>,
}

impl TcpStream {
    /// Connects to `addr`, trying each address it resolves to in turn.
    ///
    /// # Errors
    ///
    /// The last address's error (e.g. `ConnectionRefused`), or
    /// `InvalidInput` if `addr` resolves to nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// assert_eq!(c.peer_addr().unwrap(), l.local_addr().unwrap());
    /// ```
    pub fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
        let mut last = None;
        for a in resolve(addr)? {
            match TcpStream::connect_until(&a, None) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(no_addresses))
    }

    /// Connects to `addr`, giving up after `timeout` with `TimedOut`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero timeout (as std); `TimedOut`; the
    /// connect's own error.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let addr = l.local_addr().unwrap();
    /// let c = gosched::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    /// assert_eq!(c.peer_addr().unwrap(), addr);
    /// ```
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        TcpStream::connect_until(addr, Instant::now().checked_add(timeout))
    }

    fn connect_until(addr: &SocketAddr, deadline: Option<Instant>) -> io::Result<TcpStream> {
        let (fd, pending) = sys::connect_start(addr)?;
        let s = TcpStream::wrap(std::net::TcpStream::from(fd));
        if pending {
            s.inner
                .io_until(Dir::Write, deadline, |s| sys::connect_result(s.as_raw_fd()))?;
        }
        Ok(s)
    }

    /// Wraps a std stream, setting it nonblocking.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let std_s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// let s = gosched::net::TcpStream::from_std(std_s).unwrap();
    /// assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
    /// ```
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        Ok(TcpStream::wrap(s))
    }

    fn wrap(s: std::net::TcpStream) -> TcpStream {
        TcpStream {
            inner: Arc::new(Io::owning(s)),
        }
    }

    /// Reads without removing the data from the queue (as std's `peek`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use gosched::net::{TcpListener, TcpStream};
    /// let l = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// let (mut s, _) = l.accept().unwrap();
    /// c.write_all(b"abc").unwrap();
    /// let mut buf = [0u8; 3];
    /// assert_eq!(s.peek(&mut buf).unwrap(), 3);
    /// s.read_exact(&mut buf).unwrap(); // still there
    /// assert_eq!(&buf, b"abc");
    /// ```
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.io(Dir::Read, |s| s.peek(buf))?;
        // The data is there: the next read must not wait for an event.
        self.inner.forget_short(Dir::Read);
        Ok(n)
    }

    /// Shuts down one or both halves (as std), and wakes goroutines parked
    /// on this socket at once: a parked reader then sees EOF.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Read;
    /// use std::net::Shutdown;
    /// use gosched::net::{TcpListener, TcpStream};
    ///
    /// let rt = gosched::Runtime::new().unwrap();
    /// let n = rt.block_on(|| {
    ///     let l = TcpListener::bind("127.0.0.1:0").unwrap();
    ///     let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    ///     let _s = l.accept().unwrap();
    ///     let reader = c.try_clone().unwrap();
    ///     let h = gosched::spawn(move || (&reader).read(&mut [0u8; 8]).unwrap());
    ///     gosched::sleep(std::time::Duration::from_millis(10)); // let it park
    ///     c.shutdown(Shutdown::Both).unwrap();
    ///     h.join().unwrap()
    /// });
    /// assert_eq!(n, 0); // EOF
    /// ```
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.get()?.shutdown(how)?;
        self.inner.notify(match how {
            Shutdown::Read => &[Dir::Read],
            Shutdown::Write => &[Dir::Write],
            Shutdown::Both => &[Dir::Read, Dir::Write],
        });
        Ok(())
    }

    /// Another handle to the same socket (sharing its registration and
    /// timeouts; the last handle dropped closes it).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// let d = c.try_clone().unwrap();
    /// assert_eq!(c.local_addr().unwrap(), d.local_addr().unwrap());
    /// ```
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        self.inner.get()?;
        Ok(TcpStream {
            inner: self.inner.clone(),
        })
    }

    /// Sets TCP_NODELAY (as std).
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// c.set_nodelay(true).unwrap();
    /// assert!(c.nodelay().unwrap());
    /// ```
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.get()?.set_nodelay(nodelay)
    }

    /// Whether TCP_NODELAY is set.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// assert!(!c.nodelay().unwrap());
    /// ```
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.get()?.nodelay()
    }

    /// Bounds each read (`None`: no bound). A read that runs out returns
    /// `TimedOut`; the stream stays usable. A runtime timer, not
    /// SO_RCVTIMEO.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration (as std).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Read;
    /// use std::time::Duration;
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let mut c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    /// let e = c.read(&mut [0u8; 4]).unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    /// assert_eq!(c.read_timeout().unwrap(), Some(Duration::from_millis(20)));
    /// ```
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_timeout(Dir::Read, t)
    }

    /// Bounds each write (see [`set_read_timeout`](Self::set_read_timeout)).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration (as std).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    /// assert_eq!(c.write_timeout().unwrap(), Some(Duration::from_secs(1)));
    /// assert!(c.set_write_timeout(Some(Duration::ZERO)).is_err());
    /// ```
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_timeout(Dir::Write, t)
    }

    /// The read timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// assert_eq!(c.read_timeout().unwrap(), None);
    /// ```
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.timeout(Dir::Read))
    }

    /// The write timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// assert_eq!(c.write_timeout().unwrap(), None);
    /// ```
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.timeout(Dir::Write))
    }

    /// The remote address.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// assert_eq!(c.peer_addr().unwrap(), l.local_addr().unwrap());
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get()?.peer_addr()
    }

    /// The local address.
    ///
    /// # Examples
    ///
    /// ```
    /// let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let c = gosched::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    /// assert!(c.local_addr().unwrap().ip().is_loopback());
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get()?.local_addr()
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        self.inner.io_stream(Dir::Read, len, |mut s| s.read(buf))
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.inner
            .io_stream(Dir::Read, len, |mut s| s.read_vectored(bufs))
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner
            .io_stream(Dir::Write, buf.len(), |mut s| s.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.inner
            .io_stream(Dir::Write, len, |mut s| s.write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.raw().fmt(f)
    }
}

super::impl_as_fd!(TcpStream, TcpListener);
