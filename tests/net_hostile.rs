//! The netpoller in hostile conditions: a seccomp profile that refuses
//! `epoll_pwait2`, sockets shared by goroutines of two runtimes, several
//! goroutines waiting in one direction of one socket with and without
//! deadlines. Scenarios that used to hang or spin run in a child process
//! (`common::run_child`) or under a time bound, so a regression fails
//! the test instead of stalling the suite.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::net::{Registration, TcpListener, TcpStream, UdpSocket};
use gosched::{Builder, Runtime};

// ---------------------------------------------------------------------------
// epoll_pwait2 refused by a seccomp profile

/// Installs a seccomp filter on every thread of this process that makes
/// `epoll_pwait2` fail with EPERM (as container profiles that refuse
/// unknown system calls do). Returns false if the kernel refuses filters.
fn refuse_epoll_pwait2() -> bool {
    let filter = [
        // A = the system call number.
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_epoll_pwait2 as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return false;
    }
    // SAFETY: `prog` points at `filter`, both live across the call; the
    // kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    r == 0
}

/// Under a seccomp profile that answers `epoll_pwait2` with EPERM, the
/// poller falls back to `epoll_wait`: a goroutine parked on a socket gets
/// its datagram, and the idle runtime does not spin meanwhile. (The error
/// used to be taken for "no events": every wait returned at once, the
/// datagram was never seen and the sleeping M burnt a whole CPU.)
#[test]
fn a_seccomp_refused_epoll_pwait2_falls_back_to_epoll_wait() {
    const TEST: &str = "a_seccomp_refused_epoll_pwait2_falls_back_to_epoll_wait";
    if common::child_role().as_deref() == Some("seccomp") {
        if !refuse_epoll_pwait2() {
            println!("SKIP: seccomp filters unavailable");
            return;
        }
        // SAFETY: epoll_pwait2 with an invalid fd and null pointers: the
        // filter answers before the kernel looks at them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                -1,
                0usize,
                1,
                0usize,
                0usize,
                0usize,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (r, errno),
            (-1, Some(libc::EPERM)),
            "the filter is not in force"
        );
        let rt = Builder::new().procs(1).build().unwrap();
        let (got, waited, cpu) = rt.block_on(|| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
            let to = s.local_addr().unwrap();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                c.send_to(b"through", to).unwrap();
            });
            let t = Instant::now();
            let cpu = common::process_cpu_time();
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf);
            let (waited, cpu) = (t.elapsed(), common::process_cpu_time() - cpu);
            sender.join().unwrap();
            (n.map(|n| buf[..n].to_vec()), waited, cpu)
        });
        println!("waited={waited:?} cpu={cpu:?}");
        assert_eq!(got.unwrap(), b"through");
        assert!(
            waited < Duration::from_secs(10),
            "the datagram took {waited:?}"
        );
        // Idle in the poller: a few ms of CPU; spinning: all of `waited`.
        assert!(
            cpu < waited / 2,
            "the idle runtime used {cpu:?} of CPU in {waited:?}: its poller spins"
        );
        return;
    }
    let out = common::run_child(TEST, "seccomp", &[]);
    assert!(out.status.success(), "{}", out.describe());
    if out.stdout.contains("SKIP:") {
        eprintln!("seccomp filters unavailable here: the fallback was not exercised");
    }
}

// ---------------------------------------------------------------------------
// A socket used from goroutines of two runtimes

/// Connects to `addr` from a plain thread after `delay`, keeping the
/// connection open for a while (the accepting side may read it).
fn connect_later(addr: std::net::SocketAddr, delay: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    })
}

/// A listener registered with runtime A (its goroutine waited on it), then
/// accepted on by a goroutine of runtime B while A is idle: B's goroutine
/// must get the connection without any help from A. It used to park on
/// A's poller, which nobody polled: it hung for ever. B's goroutine never
/// parks on A's poller (A's poll counters do not move), and a read timeout
/// of B's on a socket registered with A still holds.
#[test]
fn a_goroutine_of_another_runtime_accepts_while_the_first_runtime_idles() {
    const TEST: &str = "a_goroutine_of_another_runtime_accepts_while_the_first_runtime_idles";
    if common::child_role().as_deref() == Some("idle") {
        let l = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = l.local_addr().unwrap();
        let a = Runtime::new().unwrap();
        let b = Runtime::new().unwrap();
        let c1 = connect_later(addr, Duration::from_millis(100));
        let la = l.clone();
        a.block_on(move || la.accept().unwrap());
        c1.join().unwrap();
        // A UDP socket registered with A too.
        let u = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let ua = u.clone();
        let to = u.local_addr().unwrap();
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"a", to)
            .unwrap();
        a.block_on(move || ua.recv(&mut [0u8; 8]).unwrap());
        let before = a.stats();
        let c2 = connect_later(addr, Duration::from_millis(300));
        let lb = l.clone();
        let (mut s, _) = b.block_on(move || lb.accept().unwrap());
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).unwrap();
        c2.join().unwrap();
        let ub = u.clone();
        let (e, took) = b.block_on(move || {
            ub.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let t = Instant::now();
            let e = ub.recv(&mut [0u8; 8]).unwrap_err();
            (e.kind(), t.elapsed())
        });
        assert_eq!(e, std::io::ErrorKind::TimedOut);
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(10),
            "{took:?}"
        );
        let after = a.stats();
        assert_eq!(
            (after.poll_waits, after.poll_wakeups),
            (before.poll_waits, before.poll_wakeups),
            "goroutines of runtime B parked on runtime A's poller"
        );
        println!("done");
        return;
    }
    let out = common::run_child(TEST, "idle", &[]);
    assert!(
        out.status.success() && out.stdout.contains("done"),
        "{}",
        out.describe()
    );
}

/// As above, but runtime A is busy polling: one of its goroutines waits
/// on another socket, so an M of A sleeps in A's poller. B's goroutine
/// must get its connection from its own wait and resume as a goroutine of
/// B: A's poller used to wake it and hand it to A's run queues, where an
/// M of A ran it (and, had it exited there, cached B's goroutine and
/// stack in A: memory B unmaps when it drops).
#[test]
fn a_goroutine_of_another_runtime_is_never_run_by_the_busy_first_runtime() {
    const TEST: &str = "a_goroutine_of_another_runtime_is_never_run_by_the_busy_first_runtime";
    if common::child_role().as_deref() == Some("busy") {
        let l = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = l.local_addr().unwrap();
        let a = Runtime::new().unwrap();
        let b = Runtime::new().unwrap();
        let c1 = connect_later(addr, Duration::from_millis(100));
        let la = l.clone();
        a.block_on(move || la.accept().unwrap());
        c1.join().unwrap();
        // A goroutine of A parked on another socket for the whole test.
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other_addr = other.local_addr().unwrap();
        let a_waiter = a.spawn(move || {
            let mut buf = [0u8; 8];
            other.recv(&mut buf).unwrap()
        });
        assert!(common::wait_until(Duration::from_secs(10), || a
            .stats()
            .poll_waits
            >= 2));
        let before = a.stats();
        for round in 0..3 {
            let c = connect_later(addr, Duration::from_millis(200));
            let lb = l.clone();
            let (id_before, id_after, goroutines) = b.block_on(move || {
                let id = gosched::current_id();
                let (mut s, _) = lb.accept().unwrap();
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).unwrap();
                (id, gosched::current_id(), gosched::num_goroutines())
            });
            c.join().unwrap();
            assert_eq!(id_before, id_after, "round {round}");
            assert_eq!(goroutines, 1, "round {round}: B's goroutine count");
        }
        let after = a.stats();
        assert_eq!(
            (after.poll_waits, after.poll_wakeups),
            (before.poll_waits, before.poll_wakeups),
            "goroutines of runtime B parked on (or were woken by) runtime A's poller"
        );
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"end", other_addr)
            .unwrap();
        assert_eq!(a_waiter.join().unwrap(), 3);
        drop(b);
        drop(a);
        println!("done");
        return;
    }
    let out = common::run_child(TEST, "busy", &[]);
    assert!(
        out.status.success() && out.stdout.contains("done"),
        "{}",
        out.describe()
    );
}
// ---------------------------------------------------------------------------
// Several goroutines waiting in one direction of one socket

/// Runs `f` on a new thread and waits at most `limit` for it: a scenario
/// that hangs fails the test with `what` instead of stalling the suite
/// (the hung thread is left behind; it ends with the test process).
fn within<R: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hung for {limit:?}: {what}"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the scenario panicked: {what}")
        }
    }
}

/// How long the second waiter's timeout is, and how late it may be on a
/// loaded machine.
const SECOND_TIMEOUT: Duration = Duration::from_millis(100);
const LATE: Duration = Duration::from_secs(10);

/// Checks a second waiter's outcome: `kind` after at least
/// `SECOND_TIMEOUT` and well before `LATE`.
fn assert_timed_out(r: (std::io::ErrorKind, Duration), kind: std::io::ErrorKind) {
    assert_eq!(r.0, kind);
    assert!(
        r.1 >= SECOND_TIMEOUT && r.1 < LATE,
        "returned after {:?}",
        r.1
    );
}

/// A goroutine receives on a UDP socket (no timeout); a second one, with
/// a read timeout, receives on the same socket: it gets `TimedOut` in
/// time, so does a third (the first still holds the turn), and the first
/// still gets the next datagram. The second waiter used to queue behind
/// the first on a lock with no deadline: it hung until the first got a
/// datagram. Then the second's timeout released the turn the first held
/// (a guard built for a lock it did not get), and the third parked beside
/// the first: "two goroutines in one slot" (a panic).
#[test]
fn a_second_udp_receiver_gets_its_own_timeout() {
    let _w = common::watchdog();
    within(Duration::from_secs(30), "a second UDP receiver", || {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let s = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            let to = s.local_addr().unwrap();
            let s2 = s.clone();
            let first = gosched::spawn(move || {
                let mut buf = [0u8; 64];
                let n = s2.recv(&mut buf).unwrap();
                buf[..n].to_vec()
            });
            gosched::sleep(Duration::from_millis(20)); // let it park
            s.set_read_timeout(Some(SECOND_TIMEOUT)).unwrap();
            let t = Instant::now();
            let e = s.recv(&mut [0u8; 64]).unwrap_err();
            assert_timed_out((e.kind(), t.elapsed()), std::io::ErrorKind::TimedOut);
            // The first still holds the turn: a third waits behind it too.
            let t = Instant::now();
            let e = s.recv(&mut [0u8; 64]).unwrap_err();
            assert_timed_out((e.kind(), t.elapsed()), std::io::ErrorKind::TimedOut);
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            c.send_to(b"first", to).unwrap();
            assert_eq!(first.join().unwrap(), b"first");
        });
    });
}

/// The same with two handles of one TCP stream (`try_clone`).
#[test]
fn a_second_tcp_reader_gets_its_own_timeout() {
    let _w = common::watchdog();
    within(Duration::from_secs(30), "a second TCP reader", || {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            let s2 = s.try_clone().unwrap();
            let first = gosched::spawn(move || {
                let mut buf = [0u8; 5];
                (&s2).read_exact(&mut buf).unwrap();
                buf
            });
            gosched::sleep(Duration::from_millis(20));
            s.set_read_timeout(Some(SECOND_TIMEOUT)).unwrap();
            let t = Instant::now();
            let e = (&s).read(&mut [0u8; 8]).unwrap_err();
            assert_timed_out((e.kind(), t.elapsed()), std::io::ErrorKind::TimedOut);
            let t = Instant::now();
            let e = (&s).read(&mut [0u8; 8]).unwrap_err();
            assert_timed_out((e.kind(), t.elapsed()), std::io::ErrorKind::TimedOut);
            peer.write_all(b"first").unwrap();
            assert_eq!(&first.join().unwrap(), b"first");
        });
    });
}

/// The same with `Registration::wait_readable(Some(t))` beside a
/// goroutine in `read_with`.
#[test]
fn a_second_registration_wait_gets_its_own_timeout() {
    let _w = common::watchdog();
    within(
        Duration::from_secs(30),
        "a second Registration wait",
        || {
            let rt = Builder::new().procs(2).build().unwrap();
            rt.block_on(|| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                let to = s.local_addr().unwrap();
                let r = Arc::new(Registration::new(s).unwrap());
                let r2 = r.clone();
                let first = gosched::spawn(move || {
                    let mut buf = [0u8; 64];
                    let n = r2.read_with(|s| s.recv(&mut buf)).unwrap();
                    buf[..n].to_vec()
                });
                gosched::sleep(Duration::from_millis(20));
                let t = Instant::now();
                let e = r.wait_readable(Some(SECOND_TIMEOUT)).unwrap_err();
                assert_timed_out((e.kind(), t.elapsed()), std::io::ErrorKind::TimedOut);
                let t = Instant::now();
                let e = r.wait_readable(Some(SECOND_TIMEOUT)).unwrap_err();
                assert_timed_out((e.kind(), t.elapsed()), std::io::ErrorKind::TimedOut);
                let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                c.send_to(b"first", to).unwrap();
                assert_eq!(first.join().unwrap(), b"first");
            });
        },
    );
}

/// Writes are serialised too: a goroutine's `write_all` parks on a full
/// send buffer (the peer reads nothing); a second writer with a write
/// timeout gets `TimedOut`, and so does a third: the first still holds
/// the write turn. The third used to get the turn the second's timeout
/// released, and write beside the first (or park beside it and panic).
#[test]
fn a_timed_out_writer_leaves_the_turn_with_the_writer_that_holds_it() {
    let _w = common::watchdog();
    within(
        Duration::from_secs(30),
        "writers queued on one stream",
        || {
            let rt = Builder::new().procs(2).build().unwrap();
            rt.block_on(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let (s, _) = l.accept().unwrap();
                let s2 = s.try_clone().unwrap();
                let first = gosched::spawn(move || {
                    // Far more than loopback's buffers hold: it parks.
                    let big = vec![7u8; 64 << 20];
                    (&s2).write_all(&big).map_err(|e| e.kind())
                });
                wait_until_send_queue_is_full(&s);
                s.set_write_timeout(Some(SECOND_TIMEOUT)).unwrap();
                for writer in ["second", "third"] {
                    let t = Instant::now();
                    let r = (&s).write(&[1u8; 16]);
                    let e = r.expect_err(&format!("the {writer} writer wrote beside the first"));
                    assert_timed_out((e.kind(), t.elapsed()), std::io::ErrorKind::TimedOut);
                }
                drop(peer); // the first's write ends with an error
                let r = first.join().unwrap();
                assert!(r.is_err(), "the first writer: {r:?}");
            });
        },
    );
}

/// Sleeps until `s`'s send queue (`TIOCOUTQ`: bytes written and not yet
/// acknowledged) has stopped growing, at a size above zero: a writer of
/// far more than the peer's buffers hold (which reads nothing) has filled
/// it and parked. A fixed sleep of 100 ms was not always enough on a
/// loaded CI machine: the second writer found room and wrote.
fn wait_until_send_queue_is_full(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: a valid socket descriptor and a c_int for the result.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        assert_eq!(r, 0, "TIOCOUTQ: {}", std::io::Error::last_os_error());
        n
    };
    let t = Instant::now();
    let (mut last, mut same) = (0, 0);
    while same < 3 {
        assert!(
            t.elapsed() < LATE,
            "the send queue never filled: {last} bytes"
        );
        gosched::sleep(Duration::from_millis(20));
        let n = queued();
        same = if n > 0 && n == last { same + 1 } else { 0 };
        last = n;
    }
}

// ---------------------------------------------------------------------------
// Readiness seen by one waiter is not lost for another

/// Two goroutines receive on one socket through `read_with`; the first
/// gets `WouldBlock` and reaches its wait only later (its closure sleeps
/// after the `WouldBlock`, as a goroutine preempted right after its
/// system call would). Two datagrams arrive meanwhile: one edge. Each
/// receiver must get one. The second used to hang: it too had got
/// `WouldBlock` before the datagrams (the closures ran side by side), the
/// first to wait consumed the readiness ("READY") and took datagram 1,
/// and the second parked with datagram 2 queued and no edge to come. Now
/// the second waits for the first's call to end (Go's fdMutex), then
/// finds datagram 2.
#[test]
fn readiness_consumed_by_one_receiver_is_not_lost_for_the_other() {
    let _w = common::watchdog();
    within(Duration::from_secs(40), "the second receiver", || {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            let to = s.local_addr().unwrap();
            let r = Arc::new(Registration::new(s).unwrap());
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            // Register the socket and settle: one datagram through a wait.
            let r0 = r.clone();
            let warm = gosched::spawn(move || r0.read_with(|s| s.recv(&mut [0u8; 8])).unwrap());
            gosched::sleep(Duration::from_millis(20));
            c.send_to(b"w", to).unwrap();
            warm.join().unwrap();
            for round in 0..3 {
                let blocked = Arc::new(AtomicUsize::new(0));
                let receiver = |pause: Duration| {
                    let r = r.clone();
                    let blocked = blocked.clone();
                    gosched::spawn(move || {
                        let mut first = true;
                        let mut buf = [0u8; 8];
                        let n = r
                            .read_with(|s| {
                                let res = s.recv(&mut buf);
                                if first && res.is_err() {
                                    first = false;
                                    blocked.fetch_add(1, Ordering::SeqCst);
                                    gosched::sleep(pause);
                                }
                                res
                            })
                            .unwrap();
                        buf[..n].to_vec()
                    })
                };
                let x = receiver(Duration::from_millis(100));
                let y = receiver(Duration::from_millis(250));
                // Both inside their closures (before the fix), or one
                // inside and the other waiting for its turn (after).
                while blocked.load(Ordering::SeqCst) < 1 {
                    gosched::sleep(Duration::from_millis(1));
                }
                let t = Instant::now();
                while blocked.load(Ordering::SeqCst) < 2 && t.elapsed() < Duration::from_millis(50)
                {
                    gosched::sleep(Duration::from_millis(1));
                }
                c.send_to(b"1", to).unwrap();
                c.send_to(b"2", to).unwrap();
                let mut got = vec![x.join().unwrap(), y.join().unwrap()];
                got.sort();
                assert_eq!(got, [b"1".to_vec(), b"2".to_vec()], "round {round}");
            }
        });
    });
}

/// Many rounds of two `UdpSocket` receivers and two datagrams sent
/// together from a plain thread at varying moments: each receiver gets
/// one datagram, well within its (generous) read timeout. A receiver
/// waiting for the other's turn with a deadline is handed the turn.
#[test]
fn two_receivers_get_two_datagrams_sent_together_round_after_round() {
    let _w = common::watchdog();
    within(Duration::from_secs(50), "two receivers", || {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let s = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let to = s.local_addr().unwrap();
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut rng = common::XorShift::new(0x5eed);
            for round in 0..300u64 {
                let recv = |s: Arc<UdpSocket>| {
                    gosched::spawn(move || {
                        let mut buf = [0u8; 8];
                        s.recv(&mut buf).map(|n| buf[0..n].to_vec())
                    })
                };
                let (x, y) = (recv(s.clone()), recv(s.clone()));
                let delay = Duration::from_micros(rng.below(300));
                let sender = {
                    let c = c.try_clone().unwrap();
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        c.send_to(b"a", to).unwrap();
                        c.send_to(b"b", to).unwrap();
                    })
                };
                let (a, b) = (x.join().unwrap(), y.join().unwrap());
                sender.join().unwrap();
                let mut got = vec![
                    a.unwrap_or_else(|e| panic!("round {round}: {e}")),
                    b.unwrap_or_else(|e| panic!("round {round}: {e}")),
                ];
                got.sort();
                assert_eq!(got, [b"a".to_vec(), b"b".to_vec()], "round {round}");
            }
        });
    });
}

/// Several goroutines accept on one listener while bursts of connections
/// arrive (several behind one edge): every connection is accepted, round
/// after round.
#[test]
fn several_acceptors_take_every_connection_of_a_burst() {
    let _w = common::watchdog();
    within(Duration::from_secs(50), "several acceptors", || {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let l = Arc::new(TcpListener::bind("127.0.0.1:0").unwrap());
            let addr = l.local_addr().unwrap();
            let mut rng = common::XorShift::new(0xacce);
            for round in 0..100u64 {
                let acceptors: Vec<_> = (0..4)
                    .map(|_| {
                        let l = l.clone();
                        gosched::spawn(move || l.accept().map(|(s, _)| s))
                    })
                    .collect();
                let delay = Duration::from_micros(rng.below(300));
                let connector = std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    (0..4)
                        .map(|_| std::net::TcpStream::connect(addr).unwrap())
                        .collect::<Vec<_>>()
                });
                for a in acceptors {
                    a.join()
                        .unwrap()
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                }
                connector.join().unwrap();
            }
        });
    });
}

/// A `read_with` closure that reads through its own `Registration` again
/// would wait for itself (reads are serialised): it panics, naming the
/// mistake, instead of hanging.
#[test]
fn a_read_with_closure_that_reads_its_own_registration_panics() {
    let _w = common::watchdog();
    within(Duration::from_secs(30), "a re-entrant read_with", || {
        let rt = Builder::new().procs(1).build().unwrap();
        rt.block_on(|| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            let to = s.local_addr().unwrap();
            let r = Arc::new(Registration::new(s).unwrap());
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            // Registered (the turn applies from the first wait on).
            let r0 = r.clone();
            let warm = gosched::spawn(move || r0.read_with(|s| s.recv(&mut [0u8; 8])).unwrap());
            gosched::sleep(Duration::from_millis(20));
            c.send_to(b"w", to).unwrap();
            warm.join().unwrap();
            let r1 = r.clone();
            let nested =
                gosched::spawn(move || r1.read_with(|_| r1.read_with(|s| s.recv(&mut [0u8; 8]))));
            let e = nested.join().unwrap_err();
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("");
            assert!(msg.contains("its own registration"), "{msg}");
            // The turn was released by the unwinding: the socket works.
            c.send_to(b"x", to).unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(r.read_with(|s| s.recv(&mut buf)).unwrap(), 1);
        });
    });
}
