use super::*;

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new fds, closed by the test.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    (fds[0], fds[1])
}

fn close<const N: usize>(fds: [RawFd; N]) {
    for fd in fds {
        // SAFETY: fds this test opened and no longer uses.
        unsafe { libc::close(fd) };
    }
}

/// golang/go#59545: an event read for an fd that is then closed must
/// not mark the descriptor's next registration ready.
#[test]
fn a_stale_event_does_not_touch_a_reused_descriptor() {
    let d = Driver::new().unwrap();
    let (r1, w1) = pipe();
    let old = d.register(r1).unwrap();
    // SAFETY: writes one byte from a live buffer to our pipe.
    assert_eq!(unsafe { libc::write(w1, b"x".as_ptr().cast(), 1) }, 1);
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    let n = d.os.wait(&mut events, Some(Duration::from_secs(5)));
    assert!(n >= 1, "no event for a readable pipe");
    // The fd is closed and a new one takes the same descriptor before
    // the events read above are dispatched.
    assert!(d.deregister(old));
    close([r1, w1]);
    let (r2, w2) = pipe();
    let new = d.register(r2).unwrap();
    assert!(
        std::ptr::eq(old, new),
        "the free list reuses the descriptor"
    );
    assert!(d.dispatch(&events[..n]).is_empty());
    assert_eq!(
        new.slots[Dir::Read as usize].0.load(Ordering::Relaxed),
        EMPTY,
        "a stale event marked the new registration ready"
    );
    // A current event does mark it.
    let fresh = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: new.token(),
    };
    assert!(d.dispatch(&[fresh]).is_empty());
    assert_eq!(
        new.slots[Dir::Read as usize].0.load(Ordering::Relaxed),
        READY
    );
    assert!(d.deregister(new));
    close([r2, w2]);
}

#[test]
fn a_break_ends_a_blocking_wait_and_a_nonblocking_poll_leaves_it() {
    let d = Driver::new().unwrap();
    d.os.wake();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    // A non-blocking look sees the break but must not consume it.
    assert_eq!(d.os.wait(&mut events, Some(Duration::ZERO)), 0);
    let t = std::time::Instant::now();
    assert_eq!(d.os.wait(&mut events, Some(Duration::from_secs(10))), 0);
    assert!(t.elapsed() < Duration::from_secs(5), "the break was lost");
    // Consumed now: the next blocking wait times out.
    let t = std::time::Instant::now();
    d.os.wait(&mut events, Some(Duration::from_millis(20)));
    assert!(t.elapsed() >= Duration::from_millis(20));
}

/// While a descriptor is registered, sysmon's sleep is bounded by the
/// poll bound even when no goroutine waits at that moment: one may
/// park right after sysmon looked, and parking does not wake sysmon.
/// (Returning None there let sysmon sleep 10 ms, and a reader served
/// beside busy Ps waited that long.)
#[test]
fn sysmon_keeps_the_poll_bound_while_a_descriptor_is_registered() {
    let rt = crate::Builder::new().procs(1).build().unwrap();
    let sh = rt.shared();
    assert_eq!(sh.sysmon_netpoll(), None, "nothing registered");
    let (r, w) = pipe();
    let desc = sh.driver.register(r).unwrap();
    assert_eq!(sh.driver.waiters(), 0);
    assert_eq!(sh.sysmon_netpoll(), Some(poll_bound(sh.cfg.quantum)));
    assert!(sh.driver.deregister(desc));
    assert_eq!(sh.sysmon_netpoll(), None, "deregistered");
    close([r, w]);
}

/// A runtime drop closes an abandoned socket's fd, but not while a
/// handle's system call on it is in progress (a clone used by a plain
/// thread): it waits for the call, then closes, and turns later calls
/// away. It used to close at once, and a call that had checked the
/// descriptor a moment before reached whatever file the process opened
/// next under that number.
#[test]
fn close_waits_for_a_call_in_progress_before_closing_an_owned_fd() {
    let d = std::sync::Arc::new(Driver::new().unwrap());
    let (r, w) = pipe();
    let desc = d.register_owned(r).unwrap();
    // An abandoned goroutine waits on it.
    desc.inside.fetch_add(1, Ordering::Relaxed);
    assert!(desc.enter_call(), "a live descriptor turned a call away");
    let closer = {
        let d = d.clone();
        std::thread::spawn(move || d.close())
    };
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: F_GETFD takes no pointer; fails with EBADF on a closed fd.
    let open = unsafe { libc::fcntl(r, libc::F_GETFD) } >= 0;
    assert!(open, "the fd was closed under a call in progress");
    assert!(!closer.is_finished(), "close did not wait for the call");
    desc.exit_call();
    closer.join().unwrap();
    // SAFETY: as above.
    let open = unsafe { libc::fcntl(r, libc::F_GETFD) } >= 0;
    assert!(
        !open,
        "the abandoned socket's fd was not closed after the call"
    );
    assert!(!desc.enter_call(), "a call on a dead descriptor went ahead");
    close([w]);
}
