//! Where the netpoller is polled while every P is busy: I/O readiness must
//! reach its goroutine promptly even when no M ever runs out of work (so the
//! poll before stealing never happens) and no M sleeps in the poller.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::watchdog;
use gosched::net::{TcpListener, TcpStream};
use gosched::{Builder, PreemptMode};

/// One P, one M (Migrate: no second M exists to sleep in the poller), a
/// goroutine that yields in a loop (so the P always has work) and a reader
/// parked on a socket. The yielding goroutine writes a byte and measures
/// how long the reader takes to see it. Without the scheduler's periodic
/// poll only sysmon's poll (every <= 1 ms) finds the readiness: a median
/// of ~0.5 ms. With it, a P polls on its `GLOBAL_CHECK`-th slice when the
/// last poll is 50 µs old: tens of microseconds.
#[test]
fn ready_io_is_seen_within_microseconds_while_the_only_p_keeps_switching() {
    let _s = common::serial();
    let _w = watchdog();
    let b = Builder::new()
        .procs(1)
        .preempt_mode(PreemptMode::Migrate)
        .preempt_quantum(Duration::from_secs(1));
    // SAFETY: the goroutines here use no thread-locals and hold no
    // thread-bound value across a cooperative point.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    const ROUNDS: u64 = 200;
    let mut lat: Vec<Duration> = rt.block_on(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut writer = TcpStream::connect(addr).unwrap();
        let (mut reader, _) = l.accept().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let seen2 = seen.clone();
        let r = gosched::spawn(move || {
            let mut b = [0u8; 1];
            for i in 1..=ROUNDS {
                reader.read_exact(&mut b).unwrap();
                seen2.store(i, Ordering::Release);
            }
        });
        // Let the reader park first.
        gosched::sleep(Duration::from_millis(10));
        let mut lat = Vec::new();
        for i in 1..=ROUNDS {
            let t = Instant::now();
            writer.write_all(&[i as u8]).unwrap();
            while seen.load(Ordering::Acquire) != i {
                gosched::yield_now();
                assert!(t.elapsed() < Duration::from_secs(10), "round {i} lost");
            }
            lat.push(t.elapsed());
            // Next round starts at a random point of sysmon's cycle.
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_micros(37 * (i % 7)) {
                gosched::yield_now();
            }
        }
        r.join().unwrap();
        lat
    });
    lat.sort();
    eprintln!("STATS {:?}", rt.stats());
    let p50 = lat[lat.len() / 2];
    // ~10-30 µs on a quiet machine; sysmon alone gives ~500 µs.
    assert!(
        p50 < Duration::from_micros(250),
        "median wake-up {p50:?} (p90 {:?}): readiness waited for sysmon",
        lat[lat.len() * 9 / 10]
    );
}

/// One P, one M, a pair of goroutines playing channel ping-pong (each hand-off
/// goes through `runnext` and inherits the slice, so the P keeps switching
/// and its slice count barely moves: the scheduler's periodic poll rarely
/// comes round), and a goroutine serving a request/reply protocol on a
/// socket to a plain thread. sysmon's poll (every <= 1 ms while
/// descriptors are registered) must serve every round, not only the first:
/// the reader parks again right after each poll.
#[test]
fn a_reader_beside_busy_goroutines_is_served_every_round_within_the_poll_bound() {
    let _s = common::serial();
    let _w = watchdog();
    let b = Builder::new().procs(1).preempt_mode(PreemptMode::Migrate);
    // SAFETY: the goroutines here use no thread-locals and hold no
    // thread-bound value across a cooperative point.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    const ROUNDS: usize = 60;
    let l = rt.block_on(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = l.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        let mut rtts = Vec::new();
        let mut b = [0u8; 1];
        for i in 0..ROUNDS {
            let t = Instant::now();
            c.write_all(&[i as u8]).unwrap();
            c.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
            rtts.push(t.elapsed());
            // Vary where in sysmon's cycle the next request lands.
            std::thread::sleep(Duration::from_micros(300 + 211 * (i as u64 % 5)));
        }
        rtts
    });
    rt.block_on(move || {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ping_tx, ping_rx) = gosched::chan::channel::<u64>(0);
        let (pong_tx, pong_rx) = gosched::chan::channel::<u64>(0);
        let stop2 = stop.clone();
        let ping = gosched::spawn(move || {
            let mut n = 0;
            while !stop2.load(Ordering::Relaxed) {
                ping_tx.send(n).unwrap();
                n = pong_rx.recv().unwrap();
            }
        });
        let pong = gosched::spawn(move || {
            while let Some(n) = ping_rx.recv() {
                if pong_tx.send(n + 1).is_err() {
                    break;
                }
            }
        });
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        for _ in 0..ROUNDS {
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        ping.join().unwrap();
        pong.join().unwrap();
    });
    let mut rtts = client.join().unwrap();
    rtts.sort();
    let p50 = rtts[ROUNDS / 2];
    // ~0.5 ms (half the poll bound).
    assert!(
        p50 < Duration::from_millis(4),
        "median round trip {p50:?} (max {:?}): {:?}",
        rtts[ROUNDS - 1],
        rt.stats()
    );
}

/// Two Ps kept busy by goroutines that yield in a loop, a request/reply
/// ping-pong between two goroutines over loopback TCP, and a spare M (the
/// thread of a `blocking` call, which finds no idle P when the call
/// returns). Every P always has work, so no worker should sleep:
/// readiness is found by the Ps' own polls. Before, the spare M, parking
/// while goroutines waited for I/O, took the poller-sleeper role: it woke
/// for each event, found no idle P, queued the goroutines and blocked
/// again, about one thread sleep per round trip; in a server on two CPUs
/// each of those wake-ups took a CPU from a worker.
#[test]
fn no_worker_sleeps_in_the_poller_while_every_p_has_work() {
    let _s = common::serial();
    let _w = watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    const ROUNDS: u64 = 2_000;
    let (switches, ms) = rt.block_on(|| {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let yielders: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                gosched::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        gosched::yield_now();
                    }
                })
            })
            .collect();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        s.set_nodelay(true).unwrap();
        let echo = gosched::spawn(move || {
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 {
                s.write_all(&b).unwrap();
            }
        });
        let (stop2, rounds2) = (stop.clone(), rounds.clone());
        let client = gosched::spawn(move || {
            let mut b = [0u8; 1];
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                c.write_all(&[i as u8]).unwrap();
                c.read_exact(&mut b).unwrap();
                assert_eq!(b[0], i as u8);
                i += 1;
                rounds2.store(i, Ordering::Relaxed);
            }
        });
        // A timer pending throughout, so that a parking M always has a
        // reason to wait in the driver (the goroutine is abandoned when
        // the runtime drops).
        let _timer = gosched::spawn(|| gosched::sleep(Duration::from_secs(3600)));
        // Long enough for sysmon to hand our P to another thread; when it
        // returns, every P is busy and our thread parks.
        gosched::blocking(|| std::thread::sleep(Duration::from_millis(30)));
        gosched::sleep(Duration::from_millis(5));
        let before = common::voluntary_switches("gosched-m");
        let start = rounds.load(Ordering::Relaxed);
        while rounds.load(Ordering::Relaxed) < start + ROUNDS {
            gosched::sleep(Duration::from_millis(1));
        }
        let switches = common::switches_since(&before, &common::voluntary_switches("gosched-m"));
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap();
        echo.join().unwrap();
        for y in yielders {
            y.join().unwrap();
        }
        (switches, gosched::stats().map(|s| s.threads).unwrap_or(0))
    });
    eprintln!("{switches} worker sleeps in {ROUNDS} round trips, {ms} Ms");
    assert!(
        ms >= 3,
        "no spare M was made ({ms} Ms): the test proves nothing"
    );
    assert!(
        switches < ROUNDS / 32,
        "workers slept {switches} times in {ROUNDS} round trips while every P had work"
    );
}

/// Two goroutines in a request/reply exchange over loopback TCP on 2 Ps,
/// nothing else running. A write to loopback makes the peer readable at
/// once, so the writer's thread, parking to wait for the reply, finds the
/// peer in its own poll and runs it: one thread carries the exchange, as
/// in Go. Before, that poll woke a second thread for the goroutine it
/// found (which it then ran itself); the second thread found nothing, gave
/// up its P and blocked in the poller, and from then on each message woke
/// it: ~1.8 thread sleeps per round trip, and a 26 µs round trip where Go
/// takes 19 µs.
#[test]
fn a_request_reply_pair_is_carried_by_one_thread() {
    let _s = common::serial();
    let _w = watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    const ROUNDS: u64 = 2_000;
    let switches = rt.block_on(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        s.set_nodelay(true).unwrap();
        let echo = gosched::spawn(move || {
            let mut b = [0u8; 64];
            loop {
                match s.read(&mut b).unwrap() {
                    0 => break,
                    n => s.write_all(&b[..n]).unwrap(),
                }
            }
        });
        let mut round = |i: u64| {
            let msg = [i as u8; 64];
            let mut b = [0u8; 64];
            c.write_all(&msg).unwrap();
            c.read_exact(&mut b).unwrap();
            assert_eq!(b, msg);
        };
        // Warm up: the first rounds start the second M.
        for i in 0..200 {
            round(i);
        }
        let before = common::voluntary_switches("gosched-m");
        for i in 0..ROUNDS {
            round(i);
        }
        let switches = common::switches_since(&before, &common::voluntary_switches("gosched-m"));
        drop(c);
        echo.join().unwrap();
        switches
    });
    eprintln!("{switches} worker sleeps in {ROUNDS} round trips");
    assert!(
        switches < ROUNDS / 4,
        "workers slept {switches} times in {ROUNDS} round trips: the exchange hopped between threads"
    );
}

/// One P running a goroutine that makes no calls (a CPU hog: no P ever
/// switches or polls) and a reader parked on a socket that a plain thread
/// writes to at random moments. sysmon watches the poller while no M polls
/// (`crate::driver`, "Who waits in the poller", step 5), so the reader is
/// woken, and the hog preempted for it, within tens of microseconds of the
/// write. (Before, only sysmon's periodic poll, every <= 1 ms, found the
/// readiness: a median of ~0.5 ms.)
#[cfg(feature = "preempt-signal")]
#[test]
fn a_reader_beside_a_no_call_hog_is_woken_within_microseconds() {
    use std::sync::atomic::AtomicBool;
    let _s = common::serial();
    let _w = watchdog();
    let b = Builder::new().procs(1).preempt_mode(PreemptMode::Migrate);
    // SAFETY: the goroutines here use no thread-locals and hold no
    // thread-bound value across an instruction.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    const ROUNDS: usize = 200;
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        rt.spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        })
    };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let epoch = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut ack = [0u8; 1];
        for i in 0..ROUNDS {
            // Random points of sysmon's cycle.
            std::thread::sleep(Duration::from_micros(700 + (i as u64 * 7919) % 900));
            let at = epoch.elapsed().as_nanos() as u64;
            s.write_all(&at.to_le_bytes()).unwrap();
            s.read_exact(&mut ack).unwrap();
        }
    });
    let mut lat: Vec<Duration> = rt.block_on(move || {
        let l = TcpListener::from_std(l).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut lat = Vec::with_capacity(ROUNDS);
        let mut b = [0u8; 8];
        for _ in 0..ROUNDS {
            s.read_exact(&mut b).unwrap();
            let now = epoch.elapsed().as_nanos() as u64;
            lat.push(Duration::from_nanos(
                now.saturating_sub(u64::from_le_bytes(b)),
            ));
            s.write_all(&[1]).unwrap();
        }
        lat
    });
    writer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    lat.sort();
    let p50 = lat[ROUNDS / 2];
    eprintln!(
        "write to read beside a hog: p50 {p50:?} p90 {:?} p99 {:?}",
        lat[ROUNDS * 9 / 10],
        lat[ROUNDS * 99 / 100]
    );
    // ~50 µs on a quiet machine; sysmon's poll alone gives ~500 µs.
    assert!(
        p50 < Duration::from_micros(250),
        "median wake-up {p50:?}: readiness waited for sysmon's poll"
    );
}

/// How many times this process's sysmon thread has run so far: the third
/// field of its schedstat (timeslices it got), or, on a kernel without
/// schedstat, its context switches (each run of a thread that sleeps ends
/// in one).
fn sysmon_runs() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "gosched-sysmon" {
            continue;
        }
        if let Ok(sched) = std::fs::read_to_string(task.path().join("schedstat")) {
            return sched.split_whitespace().nth(2).unwrap().parse().unwrap();
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        return status
            .lines()
            .filter(|l| l.contains("_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
    }
    panic!("no gosched-sysmon thread");
}

/// A server at saturation, as in the bimodal benchmark: one P, 8
/// connections with requests always queued, so handlers rarely park, and
/// a parked accept loop (so sysmon watches the poller: no M polls while
/// handlers work). Each request arriving for a handler that is still
/// working is an edge that ends sysmon's watch, and its poll then wakes
/// nobody. sysmon pauses after such an empty poll instead of watching
/// again at once: before, it ran for nearly every request, on the
/// server's own CPU (the bimodal server saturated at 0.83x Go's
/// throughput; 0.95x after). In a child process: sysmon's runs are read
/// from /proc.
#[test]
fn sysmon_does_not_run_for_every_request_to_a_busy_server() {
    use std::sync::atomic::AtomicBool;
    const TEST: &str = "sysmon_does_not_run_for_every_request_to_a_busy_server";
    const CONNS: usize = 8;
    if common::child_role().as_deref() != Some("busy") {
        let _s = common::serial();
        let _w = watchdog();
        let out = common::run_child(TEST, "busy", &[]);
        assert!(out.status.success(), "{}", out.describe());
        let (runs, requests) = (out.stdout_u64("sysmon_runs="), out.stdout_u64("requests="));
        eprintln!("sysmon ran {runs} times for {requests} requests in 300 ms");
        assert!(
            requests >= 1000,
            "only {requests} requests\n{}",
            out.describe()
        );
        // Pauses of 200-400 µs: ~750 watches in 300 ms (1,500 at most),
        // whatever the arrivals; 3,600-3,700 before, about one per three
        // requests.
        assert!(
            runs <= 1600,
            "sysmon ran {runs} times for {requests} requests to a busy server"
        );
        return;
    }
    let rt = Builder::new().procs(1).build().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    // Open loop: each connection gets a request every ~50-100 µs (a
    // sleep) whatever the replies, 8 of them: more than the server's
    // ~40,000 a second, so its handlers always have one queued.
    let clients: Vec<_> = (0..CONNS)
        .flat_map(|_| {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            let mut r = s.try_clone().unwrap();
            let mut w = s;
            let stop = stop.clone();
            let writer = std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if w.write_all(&[7u8; 16]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
            });
            [writer, reader]
        })
        .collect();
    let _server = {
        let served = served.clone();
        rt.spawn(move || {
            let l = TcpListener::from_std(l).unwrap();
            for s in l.incoming() {
                let mut s = s.unwrap();
                s.set_nodelay(true).unwrap();
                let served = served.clone();
                gosched::spawn(move || {
                    let mut req = [0u8; 16];
                    while s.read_exact(&mut req).is_ok() {
                        // ~20 µs of work that calls nothing.
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_micros(20) {
                            std::hint::spin_loop();
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                        if s.write_all(&[1u8; 8]).is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let (runs0, served0) = (sysmon_runs(), served.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(300));
    let (runs, requests) = (
        sysmon_runs() - runs0,
        served.load(Ordering::Relaxed) - served0,
    );
    println!("sysmon_runs={runs} requests={requests}");
    // The runtime, its handlers and the client threads go with the
    // process.
    stop.store(true, Ordering::Relaxed);
    drop(clients);
    std::process::exit(0);
}
