//! `UdpSocket`.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::{no_addresses, resolve, Io};
use crate::driver::Dir;

/// A UDP socket: `std::net::UdpSocket` whose sends and receives park the
/// calling goroutine instead of its thread. Several goroutines may receive
/// on one socket (share it with an `Arc`): as in Go, their receives run
/// one at a time (a receive waits for the one before it to return, within
/// its own read timeout), and so do their sends; a receive and a send run
/// side by side.
///
/// # Examples
///
/// ```
/// use gosched::net::UdpSocket;
///
/// let rt = gosched::Runtime::new().unwrap();
/// rt.block_on(|| {
///     let a = UdpSocket::bind("127.0.0.1:0").unwrap();
///     let b = UdpSocket::bind("127.0.0.1:0").unwrap();
///     let b_addr = b.local_addr().unwrap();
///     let echo = gosched::spawn(move || {
///         let mut buf = [0u8; 16];
///         let (n, from) = b.recv_from(&mut buf).unwrap(); // parks
///         b.send_to(&buf[..n], from).unwrap();
///     });
///     a.send_to(b"ping", b_addr).unwrap();
///     let mut buf = [0u8; 16];
///     let (n, from) = a.recv_from(&mut buf).unwrap();
///     assert_eq!((&buf[..n], from), (&b"ping"[..], b_addr));
///     echo.join().unwrap();
/// });
/// ```
pub struct UdpSocket {
    inner: Io<std::net::UdpSocket>,
}

impl UdpSocket {
    /// Binds a socket to `addr` (as std).
    ///
    /// # Errors
    ///
    /// As std.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert_ne!(s.local_addr().unwrap().port(), 0);
    /// ```
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<UdpSocket> {
        let addrs = resolve(addr)?;
        UdpSocket::from_std(std::net::UdpSocket::bind(&addrs[..])?)
    }

    /// Wraps a std socket, setting it nonblocking.
    ///
    /// # Examples
    ///
    /// ```
    /// let std_s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let addr = std_s.local_addr().unwrap();
    /// let s = gosched::net::UdpSocket::from_std(std_s).unwrap();
    /// assert_eq!(s.local_addr().unwrap(), addr);
    /// ```
    pub fn from_std(s: std::net::UdpSocket) -> io::Result<UdpSocket> {
        s.set_nonblocking(true)?;
        Ok(UdpSocket {
            inner: Io::owning(s),
        })
    }

    /// Sends `buf` to `addr` (its first resolved address); returns the bytes
    /// sent.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `addr` resolves to nothing; `TimedOut`; as std.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::net::UdpSocket;
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert_eq!(a.send_to(b"x", b.local_addr().unwrap()).unwrap(), 1);
    /// ```
    pub fn send_to<A: ToSocketAddrs>(&self, buf: &[u8], addr: A) -> io::Result<usize> {
        let to = *resolve(addr)?.first().ok_or_else(no_addresses)?;
        self.inner.io(Dir::Write, |s| s.send_to(buf, to))
    }

    /// Receives one datagram; returns its length and sender. Parks until
    /// one arrives (or the read timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::net::UdpSocket;
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.send_to(b"hey", b.local_addr().unwrap()).unwrap();
    /// let mut buf = [0u8; 8];
    /// let (n, from) = b.recv_from(&mut buf).unwrap();
    /// assert_eq!((n, from), (3, a.local_addr().unwrap()));
    /// ```
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner.io(Dir::Read, |s| s.recv_from(buf))
    }

    /// Sets the default destination and the only accepted source (as std).
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::net::UdpSocket;
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.connect(b.local_addr().unwrap()).unwrap();
    /// b.connect(a.local_addr().unwrap()).unwrap();
    /// a.send(b"1").unwrap();
    /// let mut buf = [0u8; 1];
    /// assert_eq!(b.recv(&mut buf).unwrap(), 1);
    /// ```
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<()> {
        let addrs = resolve(addr)?;
        self.inner.get()?.connect(&addrs[..])
    }

    /// Sends `buf` to the connected peer.
    ///
    /// # Examples
    ///
    /// ```
    /// use gosched::net::UdpSocket;
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(a.send(b"x").is_err()); // not connected
    /// ```
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.io(Dir::Write, |s| s.send(buf))
    }

    /// Receives a datagram from the connected peer.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use gosched::net::UdpSocket;
    /// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    /// a.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    /// let e = a.recv(&mut [0u8; 4]).unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    /// ```
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.io(Dir::Read, |s| s.recv(buf))
    }

    /// Bounds each receive (`None`: no bound); see
    /// [`TcpStream::set_read_timeout`](super::TcpStream::set_read_timeout).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration (as std).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    /// assert_eq!(s.read_timeout().unwrap(), Some(Duration::from_secs(1)));
    /// ```
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_timeout(Dir::Read, t)
    }

    /// Bounds each send (`None`: no bound).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration (as std).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let s = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    /// assert_eq!(s.write_timeout().unwrap(), Some(Duration::from_secs(1)));
    /// ```
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.inner.set_timeout(Dir::Write, t)
    }

    /// The receive timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert_eq!(s.read_timeout().unwrap(), None);
    /// ```
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.timeout(Dir::Read))
    }

    /// The send timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert_eq!(s.write_timeout().unwrap(), None);
    /// ```
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.timeout(Dir::Write))
    }

    /// The local address.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// assert!(s.local_addr().unwrap().ip().is_loopback());
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get()?.local_addr()
    }
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.raw().fmt(f)
    }
}

super::impl_as_fd!(UdpSocket);
