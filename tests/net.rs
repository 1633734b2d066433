//! gosched::net and the netpoller: goroutines park on sockets, not threads.
//! All traffic is on 127.0.0.1. Tests that count process-wide things
//! (threads, fds) or could hang run in a child process. The tests at the
//! issue's full sizes (10,000 connections, 100,000 cycles) are in
//! `net_scale.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{child_role, in_child, run_child, watchdog};
use gosched::net::{Registration, TcpListener, TcpStream, UdpSocket};
use gosched::{Builder, Runtime};

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn read_timeout_returns_timed_out_and_the_stream_stays_usable() {
    let _w = watchdog();
    let rt = Runtime::new().unwrap();
    rt.block_on(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let to = Duration::from_millis(30);
        c.set_read_timeout(Some(to)).unwrap();
        let t = Instant::now();
        let e = c.read(&mut [0u8; 8]).unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(took >= to, "timed out early: {took:?}");
        assert!(took < Duration::from_secs(2), "timed out late: {took:?}");
        // Still usable, in both directions.
        s.write_all(b"after").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"after");
        c.write_all(b"back").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"back");
        // And a zero timeout is refused, as in std.
        assert_eq!(
            c.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    });
}

#[test]
fn shutdown_from_another_goroutine_wakes_a_parked_reader() {
    let _w = watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    let late = rt.block_on(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let reader = c.try_clone().unwrap();
        let parked = Arc::new(AtomicBool::new(false));
        let p2 = parked.clone();
        let h = gosched::spawn(move || {
            p2.store(true, Ordering::SeqCst);
            let n = (&reader).read(&mut [0u8; 8]).unwrap();
            (n, Instant::now())
        });
        while !parked.load(Ordering::SeqCst) {
            gosched::sleep(Duration::from_millis(1));
        }
        gosched::sleep(Duration::from_millis(20)); // let it park
        let t = Instant::now();
        c.shutdown(Shutdown::Both).unwrap();
        let (n, woke) = h.join().unwrap();
        assert_eq!(n, 0, "a shut-down reader sees EOF");
        woke.duration_since(t)
    });
    // The issue asks for 10 ms; the bound is generous for a loaded CI box.
    assert!(late < Duration::from_millis(250), "woke after {late:?}");
}

/// After a short read a goroutine's next read goes to the poller before it
/// tries the socket (one system call less per message). Nothing may be
/// lost that way: data a plain thread writes at arbitrary moments (before,
/// during and after the reader parks) all arrives, in order; a read
/// timeout still fires; a `shutdown` from another goroutine still gives
/// EOF at once.
#[test]
fn reads_after_a_short_read_miss_no_data_timeout_or_shutdown() {
    let _w = watchdog();
    let rt = Builder::new().procs(1).build().unwrap();
    let l = rt.block_on(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = l.local_addr().unwrap();
    const TOTAL: usize = 200_000;
    let writer = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        let mut rng = common::XorShift::new(7);
        let mut sent = 0;
        while sent < TOTAL {
            let n = (1 + rng.below(300) as usize).min(TOTAL - sent);
            let chunk: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
            c.write_all(&chunk).unwrap();
            sent += n;
            if rng.below(4) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(200)));
            }
        }
        c
    });
    rt.block_on(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 1024];
        let mut got = 0;
        while got < TOTAL {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "EOF after {got} of {TOTAL} bytes");
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, ((got + k) % 251) as u8, "byte {} wrong", got + k);
            }
            got += n;
        }
        let mut c = writer.join().unwrap();
        // A short read, then a read that must time out.
        c.write_all(b"abc").unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 3);
        let to = Duration::from_millis(30);
        s.set_read_timeout(Some(to)).unwrap();
        let t = Instant::now();
        assert_eq!(s.read(&mut buf).unwrap_err().kind(), ErrorKind::TimedOut);
        assert!(t.elapsed() >= to, "timed out early: {:?}", t.elapsed());
        s.set_read_timeout(None).unwrap();
        // A short read, then a read that a shutdown from another goroutine
        // must end with EOF.
        c.write_all(b"de").unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 2);
        let s2 = s.try_clone().unwrap();
        let h = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(20));
            s2.shutdown(Shutdown::Read).unwrap();
            Instant::now()
        });
        assert_eq!(s.read(&mut buf).unwrap(), 0, "a shut-down reader sees EOF");
        let late = Instant::now().duration_since(h.join().unwrap());
        assert!(
            late < Duration::from_millis(250),
            "EOF {late:?} after the shutdown"
        );
        drop(c);
    });
}

/// The exception to the rule above: data and the peer's FIN often come in
/// one event, and after the short read that takes the data the EOF raises
/// no further event. The next read must return 0, not park for ever (it
/// did, before reads checked whether the peer had closed).
#[test]
fn a_short_read_followed_by_the_peers_close_returns_eof() {
    let _w = watchdog();
    let rt = Builder::new().procs(1).build().unwrap();
    rt.block_on(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        for i in 0..50u64 {
            let peer = std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                // Let the reader park first, then data and FIN together.
                std::thread::sleep(Duration::from_micros(200 + 50 * (i % 5)));
                c.write_all(b"xyz").unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                c
            });
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(s.read(&mut buf).unwrap(), 3, "round {i}");
            assert_eq!(&buf[..3], b"xyz");
            assert_eq!(s.read(&mut buf).unwrap(), 0, "round {i}: EOF");
            drop(peer.join().unwrap());
        }
    });
}

/// A goroutine blocked in `accept` beside a goroutine that spins without
/// calls on the only P: how long after the connect it accepted, and the
/// runtime's stats.
fn accept_beside_a_hog(mode: gosched::PreemptMode) -> (Duration, gosched::Stats) {
    let b = Builder::new().procs(1).preempt_mode(mode);
    // SAFETY: the preemptible goroutines here spin on an atomic or park in
    // `accept`; none holds a thread-local or the stdout lock.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let connector = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100)); // acceptor parked, hog running
        let t = Instant::now();
        let c = std::net::TcpStream::connect(addr).unwrap();
        (t, c)
    });
    let (accepted_at, spins) = rt.block_on(move || {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let acceptor = gosched::spawn(move || {
            let r = l.accept().map(|_| Instant::now());
            stop2.store(true, Ordering::SeqCst);
            r
        });
        let hog = gosched::spawn(move || {
            let t = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(20) {
                n += 1;
            }
            n
        });
        let at = acceptor.join().unwrap().unwrap();
        (at, hog.join().unwrap())
    });
    let (t, _c) = connector.join().unwrap();
    assert!(spins > 0);
    (accepted_at.saturating_duration_since(t), rt.stats())
}

#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn accept_beside_a_no_call_hog_on_one_proc_is_prompt() {
    let _w = watchdog();
    // ThreadAffine: the preempted hog keeps its thread, so another M
    // exists, sleeps in the poller and takes the event.
    let (late, s) = accept_beside_a_hog(gosched::PreemptMode::ThreadAffine);
    // A few 10 ms quanta at most; generous for a loaded machine.
    assert!(
        late < Duration::from_millis(300),
        "accepted after {late:?}: {s:?}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn accept_beside_a_no_call_hog_is_prompt_when_only_sysmon_polls() {
    let _w = watchdog();
    // Migrate: one M runs everything, so no idle M blocks in the poller;
    // only sysmon's periodic poll (every <= 1 ms while goroutines wait)
    // can see the connection, then the hog is preempted for the acceptor.
    let (late, s) = accept_beside_a_hog(gosched::PreemptMode::Migrate);
    assert!(
        late < Duration::from_millis(300),
        "accepted after {late:?}: {s:?}"
    );
}

#[test]
fn eof_reset_and_half_close_behave_as_std() {
    let _w = watchdog();
    let rt = Runtime::new().unwrap();
    rt.block_on(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // EOF: the peer closes; a parked read returns 0, then 0 again.
        let mut c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let h = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(10));
            drop(s);
        });
        assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
        assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
        h.join().unwrap();
        // Reset: the peer closes with SO_LINGER 0 (RST).
        let mut c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let h = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(10));
            let lin = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid linger struct for SO_LINGER on an open socket.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&lin as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0);
            drop(s);
        });
        let e = c.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
        h.join().unwrap();
        // Half-close: the client stops writing; the server reads to EOF
        // and can still answer.
        let mut c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let h = gosched::spawn(move || {
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            s.write_all(&v).unwrap();
            s.write_all(b"!").unwrap();
        });
        c.write_all(b"half").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"half!");
        h.join().unwrap();
        // Refused: nobody listens.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = free.local_addr().unwrap();
        drop(free);
        let e = TcpStream::connect(gone).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    });
}

#[test]
fn udp_round_trips_between_goroutines() {
    let _w = watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let saddr = server.local_addr().unwrap();
        let h = gosched::spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                if &buf[..n] == b"quit" {
                    return;
                }
                server.send_to(&buf[..n], from).unwrap();
            }
        });
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.connect(saddr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for i in 0..1000u32 {
            c.send(&i.to_le_bytes()).unwrap();
            let mut buf = [0u8; 4];
            assert_eq!(c.recv(&mut buf).unwrap(), 4);
            assert_eq!(u32::from_le_bytes(buf), i);
        }
        c.send(b"quit").unwrap();
        h.join().unwrap();
        // A receive with nothing to read times out, and the socket stays
        // usable.
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(
            c.recv(&mut [0u8; 4]).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
    });
}

#[test]
fn the_same_calls_work_on_a_plain_thread() {
    let _w = watchdog();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap(); // blocks the thread
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    assert_eq!(
        c.read(&mut [0u8; 1]).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    c.write_all(b"abc").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 3];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abc");
    t.join().unwrap();
    let c2 = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(c2.is_err(), "the listener is gone");
    // UDP on plain threads.
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.send_to(b"x", b.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(b.recv_from(&mut buf).unwrap(), (1, a.local_addr().unwrap()));
    // A socket made on a plain thread, then used in a goroutine (it
    // registers there), then back on a plain thread.
    let baddr = b.local_addr().unwrap();
    let rt = Runtime::new().unwrap();
    let b = rt.block_on(move || {
        let h = gosched::spawn(move || {
            let mut buf = [0u8; 2];
            b.recv_from(&mut buf).unwrap();
            b
        });
        gosched::sleep(Duration::from_millis(5));
        a.send_to(b"yo", baddr).unwrap();
        h.join().unwrap()
    });
    drop(rt);
    b.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    assert_eq!(
        b.recv(&mut [0u8; 1]).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
}

#[test]
fn a_runtime_dropped_with_goroutines_parked_on_sockets_leaks_no_fd() {
    in_child(
        "a_runtime_dropped_with_goroutines_parked_on_sockets_leaks_no_fd",
        || {
            let _w = watchdog();
            let before = fd_count();
            let rt = Builder::new().procs(2).build().unwrap();
            rt.block_on(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                for _ in 0..50 {
                    let mut c = TcpStream::connect(addr).unwrap();
                    let (mut s, _) = l.accept().unwrap();
                    gosched::spawn(move || c.read(&mut [0u8; 1]).map(|_| ()));
                    gosched::spawn(move || s.read(&mut [0u8; 1]).map(|_| ()));
                }
                gosched::spawn(move || l.accept().map(|_| ()));
                let u = UdpSocket::bind("127.0.0.1:0").unwrap();
                gosched::spawn(move || u.recv(&mut [0u8; 1]).map(|_| ()));
                gosched::sleep(Duration::from_millis(50)); // all park
            });
            assert!(fd_count() > before + 100);
            drop(rt);
            let after = fd_count();
            assert_eq!(after, before, "fds leaked: {before} before, {after} after");
        },
    );
}

#[test]
fn registration_parks_on_a_pipe_for_reading_and_writing() {
    let _w = watchdog();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new fds, which we then own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: fresh fds we own.
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let (r, w) = (Registration::new(r).unwrap(), Registration::new(w).unwrap());
    let rt = Builder::new().procs(1).build().unwrap();
    let total = rt.block_on(move || {
        // The writer fills the pipe and parks for writability; the reader
        // drains it.
        const BYTES: usize = 1 << 20;
        let writer = gosched::spawn(move || {
            let chunk = [7u8; 8192];
            let mut sent = 0;
            while sent < BYTES {
                sent += w.write_with(|mut f| f.write(&chunk)).unwrap();
            }
        });
        let mut got = 0;
        let mut buf = [0u8; 8192];
        while got < BYTES {
            let n = r.read_with(|mut f| f.read(&mut buf)).unwrap();
            assert!(buf[..n].iter().all(|&b| b == 7));
            got += n;
        }
        writer.join().unwrap();
        got
    });
    assert_eq!(total, 1 << 20);
    assert!(rt.stats().poll_waits > 0);
}

#[test]
fn a_runtime_idle_with_goroutines_parked_on_sockets_uses_no_cpu() {
    in_child(
        "a_runtime_idle_with_goroutines_parked_on_sockets_uses_no_cpu",
        || {
            let _w = watchdog();
            let rt = Builder::new().procs(2).build().unwrap();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let c = std::net::TcpStream::connect(addr).unwrap();
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let h = rt.spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let a = gosched::spawn(move || u.recv(&mut [0u8; 1]).map(|_| ()));
                let n = s.read(&mut [0u8; 1]).unwrap(); // parks until the end
                drop(a);
                n
            });
            std::thread::sleep(Duration::from_millis(200)); // everyone parks
            let cpu0 = common::process_cpu_time();
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs(1));
            let used = common::process_cpu_time() - cpu0;
            let wall = t.elapsed();
            drop(c); // EOF for the reader
            assert_eq!(h.join().unwrap(), 0);
            // ~0 % of a CPU: no thread polls in a loop (the one sleeper M
            // blocks in epoll with no timeout; sysmon sleeps).
            assert!(
                used < wall / 20,
                "{used:?} of CPU in {wall:?} while idle: {:?}",
                rt.stats()
            );
        },
    );
}

#[test]
fn schedtrace_shows_goroutines_waiting_on_the_netpoller() {
    if child_role().as_deref() == Some("pollwait") {
        let rt = Runtime::new().unwrap();
        rt.block_on(|| {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            u.set_read_timeout(Some(Duration::from_millis(400)))
                .unwrap();
            let e = u.recv(&mut [0u8; 1]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TimedOut);
        });
        return;
    }
    if child_role().is_some() {
        return;
    }
    let out = run_child(
        "schedtrace_shows_goroutines_waiting_on_the_netpoller",
        "pollwait",
        &[("GOSCHED_SCHEDTRACE", "50")],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("SCHED ") && l.ends_with(" pollwait=1")),
        "no SCHED line with pollwait=1:\n{}",
        out.describe()
    );
}

/// A burst of connections larger than std's 128-entry accept queue is
/// accepted by the kernel at once, before the server accepts any (Go
/// listens with somaxconn too): with std's backlog, connections past the
/// queue waited for the client's one-second SYN retry (10,000 connections
/// took 10-20 s to set up instead of ~1 s).
#[test]
fn a_burst_beyond_128_pending_connections_is_queued_at_once() {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let burst = 400.min(somaxconn.saturating_sub(8));
    if burst <= 140 {
        eprintln!("skipped: somaxconn is {somaxconn}");
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Nobody accepts: every connection must complete from the queue alone.
    let mut late = 0;
    let mut conns = Vec::new();
    for _ in 0..burst {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => conns.push(s),
            Err(_) => late += 1,
        }
    }
    assert_eq!(
        late, 0,
        "{late} of {burst} connections did not complete within 500 ms without an accept"
    );
    drop(l);
}
