//! Who closes a file descriptor when a runtime is dropped while goroutines
//! wait for I/O on it. The runtime closes the fds of its own socket types
//! (their objects own them and only abandoned goroutines reach them), but
//! never the fd of a `net::Registration<T>`: `T` may not own it (`&File`,
//! `BorrowedFd<'static>`), and closing it would be an I/O-safety violation
//! (the real owner would later close or use a number the process may have
//! reused). Each scenario runs in a child process (fd numbers are
//! process-wide), under a watchdog.

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use common::{in_child, watchdog};
use gosched::net::{Registration, TcpListener, TcpStream, UdpSocket};
use gosched::Builder;

/// A nonblocking pipe: (read end, write end), leaked so that they live
/// (and stay owned by these `File`s) for the rest of the process.
fn leaked_pipe() -> (&'static File, &'static File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new fds, which we then own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds, owned by nothing else.
    let (r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    (Box::leak(Box::new(r)), Box::leak(Box::new(w)))
}

/// `fcntl(fd, F_GETFD)`: Ok if `fd` is open, the error (EBADF) if not.
fn fd_flags(fd: RawFd) -> std::io::Result<i32> {
    // SAFETY: F_GETFD takes no pointer; on a closed fd it fails with EBADF.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The inode of the file `fd` refers to (to tell "still our pipe" from
/// "a reused number").
fn inode(fd: BorrowedFd<'_>) -> u64 {
    // SAFETY: fstat writes a plain-data struct we own; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (borrowed) and `st` is live across the call.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    assert_eq!(r, 0, "fstat: {}", std::io::Error::last_os_error());
    st.st_ino
}

/// Waits (in the calling goroutine) until `n` more goroutines than
/// `base` parked on the netpoller, then a little longer so the last one
/// is past its park.
fn until_parked(base: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gosched::stats().unwrap().poll_waits < base + n {
        assert!(
            Instant::now() < deadline,
            "the goroutines did not park on the netpoller"
        );
        gosched::sleep(Duration::from_millis(1));
    }
    gosched::sleep(Duration::from_millis(20));
}

/// After the runtime's drop, `r` is still open and still our pipe: data
/// written to `w` is read back through the `File` that owns `r`.
fn assert_pipe_still_works(r: &'static File, w: &'static File, ino: u64) {
    let fd = r.as_raw_fd();
    if let Err(e) = fd_flags(fd) {
        panic!("the runtime's drop closed fd {fd}, owned by a File it only borrowed: {e}");
    }
    assert_eq!(inode(r.as_fd()), ino, "fd {fd} is no longer the pipe");
    (&*w).write_all(b"still mine").unwrap();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, live across the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(n, 1, "the pipe never became readable");
    let mut buf = [0u8; 16];
    let got = (&*r).read(&mut buf).unwrap();
    assert_eq!(&buf[..got], b"still mine");
}

/// A goroutine parked in `read_with` on a `Registration<&File>` (the read
/// end of a pipe, owned by a leaked `File`) is abandoned by the runtime's
/// drop: the fd must stay open and owned by its `File`. In the same
/// runtime, goroutines abandoned on gosched's own `TcpStream` and
/// `UdpSocket` still have those sockets closed (their objects own the fds).
/// (The drop used to close every fd an abandoned goroutine waited on, the
/// borrowed pipe's included.)
#[test]
fn a_runtime_drop_leaves_a_borrowed_registration_fd_open_and_closes_its_own_sockets() {
    in_child(
        "a_runtime_drop_leaves_a_borrowed_registration_fd_open_and_closes_its_own_sockets",
        || {
            let _w = watchdog();
            let (r, w) = leaked_pipe();
            let ino = inode(r.as_fd());
            let rt = Builder::new().procs(2).build().unwrap();
            let (socket_fds, _peer) = rt.block_on(move || {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (s, _) = l.accept().unwrap();
                let u = UdpSocket::bind("127.0.0.1:0").unwrap();
                let fds = [c.as_raw_fd(), u.as_raw_fd()];
                let reg = Registration::new(r).unwrap();
                let base = gosched::stats().unwrap().poll_waits;
                gosched::spawn(move || {
                    let mut buf = [0u8; 16];
                    reg.read_with(|&(mut f): &&File| f.read(&mut buf))
                        .map(|_| ())
                });
                gosched::spawn(move || c.read(&mut [0u8; 1]).map(|_| ()));
                gosched::spawn(move || u.recv(&mut [0u8; 1]).map(|_| ()));
                until_parked(base, 3);
                // `c`, `u` and `reg` are abandoned; `s` lives on (its
                // close would wake `c`'s reader with EOF).
                (fds, s)
            });
            drop(rt);
            assert_pipe_still_works(r, w, ino);
            for fd in socket_fds {
                let e = fd_flags(fd).expect_err("an abandoned gosched socket was not closed");
                assert_eq!(e.raw_os_error(), Some(libc::EBADF), "fd {fd}: {e}");
            }
        },
    );
}

/// The same with a bare `wait_readable` on a shared (leaked)
/// `Registration<BorrowedFd<'static>>`: the fd stays open, and the
/// surviving handle fails with an error instead of using the fd (the
/// descriptor is dead), while the object stays reachable.
#[test]
fn a_runtime_drop_leaves_a_borrowed_fd_waited_on_with_wait_readable_open() {
    in_child(
        "a_runtime_drop_leaves_a_borrowed_fd_waited_on_with_wait_readable_open",
        || {
            let _w = watchdog();
            let (r, w) = leaked_pipe();
            let ino = inode(r.as_fd());
            let reg: &'static Registration<BorrowedFd<'static>> =
                Box::leak(Box::new(Registration::new(r.as_fd()).unwrap()));
            let rt = Builder::new().procs(1).build().unwrap();
            rt.block_on(move || {
                let base = gosched::stats().unwrap().poll_waits;
                gosched::spawn(move || reg.wait_readable(None));
                until_parked(base, 1);
            });
            drop(rt);
            assert_pipe_still_works(r, w, ino);
            let e = reg
                .wait_readable(Some(Duration::from_millis(10)))
                .expect_err("a wait on a registration of a dropped runtime succeeded");
            assert_ne!(e.kind(), ErrorKind::TimedOut, "{e}");
            assert_eq!(reg.get_ref().as_raw_fd(), r.as_raw_fd());
        },
    );
}
