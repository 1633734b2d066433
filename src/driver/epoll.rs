//! The Linux implementation of the driver's OS poller (Go's
//! netpoll_epoll.go): one epoll instance and one eventfd per runtime.
//!
//! - Interest is registered once per fd, edge-triggered, for both
//!   directions (`EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`); the event's
//!   user data is the descriptor's tagged address (see `Desc::token`).
//! - The eventfd is registered level-triggered under token 0 (no descriptor
//!   lives at address 0). `wake` writes it once per pending break; only a
//!   *blocking* wait reads it back (a non-blocking poll by sysmon or
//!   `find_runnable` may see it too, and must leave it for the M it is meant
//!   to wake, as Go's netpoll does).
//! - sysmon *watches* the poller without taking its events (`watch`): a
//!   `ppoll` on the epoll fd (readable while its ready list is not empty)
//!   and a second eventfd of its own, which `unwatch` writes. Watching
//!   consumes nothing, so it cannot steal a break or an event from an M
//!   blocked in `wait`.
//! - Waits use `epoll_pwait2` (nanosecond timeout: a 1 ms sleep must not
//!   round to 2 ms). Where it cannot be used, they fall back to
//!   `epoll_wait` with the timeout rounded *up* to whole milliseconds, so a
//!   timer is never fired early: on ENOSYS (kernels before 5.11) and on
//!   any other error but EINTR (a seccomp profile that answers unknown
//!   system calls with EPERM, as some container runtimes' do). The
//!   decision is made once for the process (`NO_PWAIT2`), and the failed
//!   wait is retried with `epoll_wait` at once: treating the error as "no
//!   events" left every wait returning immediately, no event delivered
//!   and the polling thread spinning at 100 % CPU.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// Token of the eventfd in the epoll set.
const BREAK_TOKEN: u64 = 0;

/// Events one wait returns at most (Go: 128).
pub(super) const MAX_EVENTS: usize = 128;

/// Interest for every registered fd.
const INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// Readiness for reading: data, EOF (the peer shut down its side), hang-up
/// or an error (the read reports it).
pub(super) const READABLE: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// Readiness for writing: room, hang-up or an error.
pub(super) const WRITABLE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// The peer closed (its writing side or all) or the connection failed.
pub(super) const HUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// One runtime's epoll instance and break eventfd.
pub(super) struct OsPoller {
    /// The epoll fd (-1 after `close`). `wait` reads it without the lock:
    /// only the runtime's Ms and sysmon wait, and they have stopped before
    /// `close` runs.
    epfd: AtomicI32,
    /// The eventfd that breaks a blocking wait.
    efd: AtomicI32,
    /// The eventfd that ends sysmon's `watch` (nonblocking; only sysmon
    /// reads it).
    watch_efd: AtomicI32,
    /// Held (shared) around `epoll_ctl`, (exclusive) by `close`: a
    /// registration dropped on a plain thread while the runtime shuts down
    /// never calls `epoll_ctl` on a closed, possibly reused, fd number.
    /// The value says whether the fds are closed.
    ctl: RwLock<bool>,
    /// A break is written and not yet read (Go's netpollWakeSig): repeated
    /// `wake`s cost one write.
    wake_pending: AtomicBool,
}

/// `epoll_pwait2` failed once with an error that says it cannot be used
/// (see `pwait2_unusable`): every runtime of the process uses
/// `epoll_wait` from then on.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// What an `epoll_pwait2` failure with `errno` means: false for EINTR (a
/// signal: no events this time), true for anything else. ENOSYS is a
/// kernel without it; EPERM (or another errno) is typically a seccomp
/// filter refusing a system call it does not know; either way the call
/// will never work, and returning "no events" for it would turn every
/// blocking wait into a spin that never sees an event.
fn pwait2_unusable(errno: Option<i32>) -> bool {
    errno != Some(libc::EINTR)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl OsPoller {
    /// Go's netpollinit.
    pub(super) fn new() -> io::Result<OsPoller> {
        // SAFETY: epoll_create1 and eventfd take no pointers.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: as above.
        let efd = match cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }) {
            Ok(fd) => fd,
            Err(e) => {
                // SAFETY: we own `epfd` and nothing else refers to it.
                unsafe { libc::close(epfd) };
                return Err(e);
            }
        };
        // SAFETY: eventfd takes no pointers.
        let watch_efd =
            match cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }) {
                Ok(fd) => fd,
                Err(e) => {
                    // SAFETY: we own both fds and close each once.
                    unsafe {
                        libc::close(efd);
                        libc::close(epfd);
                    }
                    return Err(e);
                }
            };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: BREAK_TOKEN,
        };
        // SAFETY: both fds are ours and open; `ev` is a valid event.
        if let Err(e) = cvt(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, efd, &mut ev) }) {
            // SAFETY: we own both fds and nothing else refers to them.
            unsafe {
                libc::close(watch_efd);
                libc::close(efd);
                libc::close(epfd);
            }
            return Err(e);
        }
        Ok(OsPoller {
            epfd: AtomicI32::new(epfd),
            efd: AtomicI32::new(efd),
            watch_efd: AtomicI32::new(watch_efd),
            ctl: RwLock::new(false),
            wake_pending: AtomicBool::new(false),
        })
    }

    /// Go's netpollopen: edge-triggered interest in both directions, the
    /// events carrying `token`.
    pub(super) fn register(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let closed = self.ctl.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return Err(shut_down());
        }
        let mut ev = libc::epoll_event {
            events: INTEREST,
            u64: token,
        };
        // SAFETY: `epfd` is open (not closed: checked under the lock);
        // `ev` is a valid event; a bad `fd` is an error, not UB.
        cvt(unsafe {
            libc::epoll_ctl(
                self.epfd.load(Ordering::Relaxed),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev,
            )
        })?;
        Ok(())
    }

    /// Go's netpollclose. Errors (the fd is already gone) are ignored:
    /// closing the fd removes it from the set anyway.
    pub(super) fn deregister(&self, fd: RawFd) {
        let closed = self.ctl.read().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return;
        }
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `register`.
        unsafe {
            libc::epoll_ctl(
                self.epfd.load(Ordering::Relaxed),
                libc::EPOLL_CTL_DEL,
                fd,
                &mut ev,
            )
        };
    }

    /// Go's netpollBreak: makes the current or next blocking `wait` return.
    pub(super) fn wake(&self) {
        if self.wake_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd (or to
        // -1 after close: EBADF). EAGAIN (counter saturated) means a break
        // is pending anyway.
        unsafe { libc::write(self.efd.load(Ordering::Relaxed), one.as_ptr().cast(), 8) };
    }

    /// Waits for events (Go's netpoll(delay)): `None` blocks until an
    /// event or a `wake`, `Some(ZERO)` only looks. Returns the descriptor
    /// events (the break is filtered out) in `out[..n]`; EINTR returns 0.
    pub(super) fn wait(
        &self,
        out: &mut [libc::epoll_event; MAX_EVENTS],
        timeout: Option<Duration>,
    ) -> usize {
        let epfd = self.epfd.load(Ordering::Relaxed);
        if epfd < 0 {
            return 0;
        }
        let n = self.epoll_wait(epfd, out, timeout);
        let blocking = timeout != Some(Duration::ZERO);
        let mut kept = 0;
        for i in 0..n {
            let ev = out[i];
            if ev.u64 == BREAK_TOKEN {
                if blocking {
                    self.drain_break();
                }
                continue;
            }
            out[kept] = ev;
            kept += 1;
        }
        kept
    }

    fn drain_break(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from our
        // nonblocking eventfd.
        unsafe { libc::read(self.efd.load(Ordering::Relaxed), buf.as_mut_ptr().cast(), 8) };
        // After the read (Go's order): a `wake` from now on writes again;
        // one that saw the flag still set relies on its note, which the
        // woken M checks before it waits again.
        self.wake_pending.store(false, Ordering::Release);
    }

    fn epoll_wait(
        &self,
        epfd: RawFd,
        out: &mut [libc::epoll_event; MAX_EVENTS],
        timeout: Option<Duration>,
    ) -> usize {
        if !NO_PWAIT2.load(Ordering::Relaxed) {
            match epoll_pwait2(epfd, out, timeout) {
                Ok(n) => return n,
                Err(errno) if !pwait2_unusable(errno) => return 0,
                Err(_) => NO_PWAIT2.store(true, Ordering::Relaxed),
            }
        }
        epoll_wait_ms(epfd, out, timeout)
    }

    /// sysmon's watch: blocks until the epoll set has events (without
    /// taking them), `unwatch`, a signal or `timeout`. Returns whether the
    /// set has events (or may have: a pending break makes it readable too,
    /// which is why the caller does not watch while one is pending).
    pub(super) fn watch(&self, timeout: Duration) -> bool {
        let epfd = self.epfd.load(Ordering::Relaxed);
        let wfd = self.watch_efd.load(Ordering::Relaxed);
        if epfd < 0 || wfd < 0 {
            return false;
        }
        let mut fds = [
            libc::pollfd {
                fd: epfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = crate::os::note::timespec(timeout);
        // SAFETY: `fds` holds two pollfds and `ts` a timespec, both live
        // across the call; a null sigmask leaves the mask alone.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if r <= 0 {
            return false;
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into `buf` from our nonblocking eventfd.
            unsafe { libc::read(wfd, buf.as_mut_ptr().cast(), 8) };
        }
        fds[0].revents & libc::POLLIN != 0
    }

    /// Ends the current or next `watch` early.
    pub(super) fn unwatch(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from `one` to our eventfd (a full counter
        // fails with EAGAIN, which still leaves it readable).
        unsafe {
            libc::write(
                self.watch_efd.load(Ordering::Relaxed),
                one.as_ptr().cast(),
                8,
            )
        };
    }

    /// A break is written and not read yet (the epoll set is readable for
    /// it until a blocking wait reads it).
    pub(super) fn break_pending(&self) -> bool {
        self.wake_pending.load(Ordering::Acquire)
    }

    /// Closes the epoll fd and the eventfd (runtime drop, after every M and
    /// sysmon stopped). Later `register`s fail; `deregister`s do nothing.
    pub(super) fn close(&self) {
        let mut closed = self.ctl.write().unwrap_or_else(|e| e.into_inner());
        if *closed {
            return;
        }
        *closed = true;
        for fd in [&self.epfd, &self.efd, &self.watch_efd] {
            let fd = fd.swap(-1, Ordering::Relaxed);
            // SAFETY: we own these fds; after the swap nothing uses them.
            unsafe { libc::close(fd) };
        }
    }
}

impl Drop for OsPoller {
    fn drop(&mut self) {
        self.close();
    }
}

/// One `epoll_pwait2` (nanosecond timeout): the number of events, or the
/// errno of its failure.
fn epoll_pwait2(
    epfd: RawFd,
    out: &mut [libc::epoll_event; MAX_EVENTS],
    timeout: Option<Duration>,
) -> Result<usize, Option<i32>> {
    let ts = timeout.map(crate::os::note::timespec);
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `out` has room for MAX_EVENTS events; `tsp` is null or
    // points at `ts`; a null sigmask leaves the mask alone.
    let r = unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait2,
            epfd,
            out.as_mut_ptr(),
            MAX_EVENTS as libc::c_int,
            tsp,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    if r >= 0 {
        Ok(r as usize)
    } else {
        Err(io::Error::last_os_error().raw_os_error())
    }
}

/// `epoll_wait`, the fallback: the timeout rounded *up* to whole
/// milliseconds (never wake before a timer's deadline). An error (EINTR)
/// is no events.
fn epoll_wait_ms(
    epfd: RawFd,
    out: &mut [libc::epoll_event; MAX_EVENTS],
    timeout: Option<Duration>,
) -> usize {
    let ms = match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as libc::c_int
        }
    };
    // SAFETY: `out` has room for MAX_EVENTS events.
    let r = unsafe { libc::epoll_wait(epfd, out.as_mut_ptr(), MAX_EVENTS as libc::c_int, ms) };
    r.max(0) as usize
}

/// The error of a registration with a runtime that has shut down.
pub(crate) fn shut_down() -> io::Error {
    io::Error::other("gosched: the runtime this socket is registered with has shut down")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only EINTR keeps `epoll_pwait2`; ENOSYS, EPERM (seccomp) and any
    /// other failure switch to `epoll_wait` (they used to return "no
    /// events" for ever: a spinning poller).
    #[test]
    fn only_eintr_keeps_epoll_pwait2() {
        assert!(!pwait2_unusable(Some(libc::EINTR)));
        for errno in [libc::ENOSYS, libc::EPERM, libc::EACCES, libc::EINVAL] {
            assert!(pwait2_unusable(Some(errno)), "errno {errno}");
        }
        assert!(pwait2_unusable(None));
    }

    /// The fallback delivers events and blocks for its (rounded-up)
    /// timeout when there are none.
    #[test]
    fn the_epoll_wait_fallback_blocks_and_delivers() {
        let p = OsPoller::new().unwrap();
        let epfd = p.epfd.load(Ordering::Relaxed);
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let t = std::time::Instant::now();
        assert_eq!(
            epoll_wait_ms(epfd, &mut out, Some(Duration::from_micros(20_100))),
            0
        );
        assert!(
            t.elapsed() >= Duration::from_millis(21),
            "woke early: {:?}",
            t.elapsed()
        );
        p.wake();
        let n = epoll_wait_ms(epfd, &mut out, Some(Duration::from_secs(10)));
        assert_eq!(n, 1);
        let token = out[0].u64; // packed: copy before comparing
        assert_eq!(token, BREAK_TOKEN);
    }
}
