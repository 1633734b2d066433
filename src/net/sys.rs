//! The system calls std does not offer: a nonblocking `connect` and a
//! `poll(2)` wait for plain threads.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::driver::Dir;

/// Blocks the calling thread until `fd` is ready for `dir` (or has an
/// error or hang-up), or `deadline` passes. EINTR returns early (the
/// caller retries its I/O and checks its deadline).
pub(super) fn poll_fd(fd: RawFd, dir: Dir, deadline: Option<Instant>) -> io::Result<()> {
    let events = match dir {
        Dir::Read => libc::POLLIN | libc::POLLRDHUP,
        Dir::Write => libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts =
        deadline.map(|d| crate::os::note::timespec(d.saturating_duration_since(Instant::now())));
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd; `tsp` is null or points at `ts`; a null
    // sigmask leaves the mask alone.
    let r = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if pfd.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(())
}

/// A new nonblocking, close-on-exec TCP socket for `addr`'s family.
fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket takes no pointers.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `addr` as a sockaddr for the kernel.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Starts a nonblocking connect to `addr`. Returns the socket and whether
/// the connection is still in progress (then wait for writability and
/// call `connect_result`).
pub(super) fn connect_start(addr: &SocketAddr) -> io::Result<(OwnedFd, bool)> {
    use std::os::fd::AsRawFd;
    let fd = tcp_socket(addr)?;
    let (sa, len) = sockaddr(addr);
    // SAFETY: `sa` holds a valid sockaddr of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r == 0 {
        return Ok((fd, false));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // EINTR: the connection goes on asynchronously (POSIX); wait for
        // it as for EINPROGRESS.
        Some(libc::EINPROGRESS) | Some(libc::EINTR) => Ok((fd, true)),
        _ => Err(e),
    }
}

/// The outcome of an in-progress connect (SO_ERROR), or WouldBlock while
/// it is still in progress.
pub(super) fn connect_result(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for an int-sized option.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    // No error: connected, or still in progress (a spurious wake-up).
    let mut sa: libc::sockaddr_storage =
        // SAFETY: plain data; all-zero is valid.
        unsafe { std::mem::zeroed() };
    let mut salen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `sa`/`salen` describe a buffer large enough for any address.
    let r = unsafe {
        libc::getpeername(
            fd,
            (&mut sa as *mut libc::sockaddr_storage).cast(),
            &mut salen,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        return Err(e);
    }
    Ok(())
}
