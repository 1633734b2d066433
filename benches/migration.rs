//! How often a goroutine resumes on another OS thread after a cooperative
//! point; twin of `benches/go/migration/main.go` (issue 9 §1).
//!
//! At a cooperative point (sleep, channel operation, mutex wait, socket
//! wait, yield) a goroutine may resume on another M, as in Go: see
//! "Soundness" in the README. Each workload runs on 2 Ps for
//! `MIGRATION_SECS` (default 1 s) and wraps every cooperative call in user
//! code with `gettid()` before and after; a resumption *migrated* when the
//! two differ. Every call counts, also one that did not have to wait (an
//! uncontended lock, a send to a waiting receiver): that is what user code
//! sees.
//!
//! ```text
//! cargo bench --bench migration                 # both preempt modes
//! MIGRATION_SECS=3 cargo bench --bench migration
//! MIGRATION_ONLY=sleep,net cargo bench --bench migration   # some workloads
//! MIGRATION_MODES=affine cargo bench --bench migration     # affine, migrate
//! (cd benches/go/migration && go run .)         # the Go 1.19 twin
//! ```
//!
//! Workloads (ops are what the throughput column counts):
//!
//! - `sleep`: 16 goroutines looping `sleep(50 µs)`; op = one sleep.
//! - `pingpong`: 4 pairs over unbuffered `channel(0)`, one value there and
//!   back; op = one round trip (4 cooperative calls).
//! - `mutex`: 8 goroutines locking one `sync::Mutex` around a short
//!   critical section (~50 ns of arithmetic); op = one lock.
//! - `net`: 16 client goroutines each sending 64 B requests to its own
//!   server goroutine over loopback TCP and reading the 64 B reply (client
//!   and server calls both count); op = one round trip.
//! - `yield`: 4 goroutines looping `yield_now`; op = one yield.
//!
//! Run without `--bench` (as `cargo test --benches` does) it runs each
//! workload for 0.1 s in the default mode only, as a smoke test.

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::chan::channel;
use gosched::net::{TcpListener, TcpStream};
use gosched::sync::Mutex;
use gosched::{Builder, PreemptMode, Runtime};

const PROCS: usize = 2;

/// Cooperative calls of one goroutine and how many resumed elsewhere.
#[derive(Default, Clone, Copy)]
struct Tally {
    calls: u64,
    moved: u64,
    ops: u64,
}

impl Tally {
    /// Runs `f` (one cooperative call) and notes whether we came back on
    /// another OS thread.
    #[inline]
    fn point<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let before = tid();
        let r = f();
        self.calls += 1;
        self.moved += u64::from(tid() != before);
        r
    }

    fn add(mut self, o: Tally) -> Tally {
        self.calls += o.calls;
        self.moved += o.moved;
        self.ops += o.ops;
        self
    }
}

fn tid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

struct Result {
    tally: Tally,
    secs: f64,
    threads: usize,
    steals: u64,
}

/// Spawns `n` goroutines running `body(i, stop)` until `stop`, lets them
/// run `secs`, stops them and sums their tallies.
fn run_for(
    n: usize,
    secs: f64,
    body: impl Fn(usize, Arc<AtomicBool>) -> Tally + Send + Sync + Clone + 'static,
) -> (Tally, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let (stop, body) = (stop.clone(), body.clone());
            gosched::spawn(move || body(i, stop))
        })
        .collect();
    let t = Instant::now();
    gosched::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let tally = hs
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold(Tally::default(), Tally::add);
    (tally, t.elapsed().as_secs_f64())
}

fn sleep(secs: f64) -> (Tally, f64) {
    run_for(16, secs, |_, stop| {
        let mut t = Tally::default();
        while !stop.load(Ordering::Relaxed) {
            t.point(|| gosched::sleep(Duration::from_micros(50)));
            t.ops += 1;
        }
        t
    })
}

fn pingpong(secs: f64) -> (Tally, f64) {
    // Each of the 4 pingers owns its echo goroutine; the echo's tally comes
    // back through its join handle, joined by the pinger.
    run_for(4, secs, |_, stop| {
        let (ping_tx, ping_rx) = channel::<u64>(0);
        let (pong_tx, pong_rx) = channel::<u64>(0);
        let echo = gosched::spawn(move || {
            let mut t = Tally::default();
            while let Some(v) = t.point(|| ping_rx.recv()) {
                t.point(|| pong_tx.send(v)).unwrap();
            }
            t
        });
        let mut t = Tally::default();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            t.point(|| ping_tx.send(i)).unwrap();
            let v = t.point(|| pong_rx.recv()).unwrap();
            assert_eq!(v, i);
            i += 1;
            t.ops += 1;
        }
        drop(ping_tx);
        t.add(echo.join().unwrap())
    })
}

fn mutex(secs: f64) -> (Tally, f64) {
    let m = Arc::new(Mutex::new(0u64));
    let (t, secs) = run_for(8, secs, {
        let m = m.clone();
        move |_, stop| {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let mut g = t.point(|| m.lock());
                // A short critical section: ~50 ns of dependent arithmetic.
                let mut x = *g;
                for _ in 0..16 {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
                black_box(x);
                *g = g.wrapping_add(1);
                drop(g);
                t.ops += 1;
            }
            t
        }
    });
    assert_eq!(*m.lock(), t.ops, "lost increments");
    (t, secs)
}

fn net(secs: f64) -> (Tally, f64) {
    const CONNS: usize = 16;
    const MSG: usize = 64;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Servers: one goroutine per accepted connection, echoing 64 B
    // requests until the client closes.
    let acceptor = gosched::spawn(move || {
        let servers: Vec<_> = (0..CONNS)
            .map(|_| {
                let (s, _) = l.accept().unwrap();
                s.set_nodelay(true).unwrap();
                gosched::spawn(move || {
                    let mut t = Tally::default();
                    let mut buf = [0u8; MSG];
                    while t.point(|| (&s).read_exact(&mut buf)).is_ok() {
                        t.point(|| (&s).write_all(&buf)).unwrap();
                    }
                    t
                })
            })
            .collect();
        servers
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold(Tally::default(), Tally::add)
    });
    let (clients, secs) = run_for(CONNS, secs, move |i, stop| {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut t = Tally::default();
        let mut buf = [i as u8; MSG];
        while !stop.load(Ordering::Relaxed) {
            t.point(|| (&s).write_all(&buf)).unwrap();
            t.point(|| (&s).read_exact(&mut buf)).unwrap();
            t.ops += 1;
        }
        t
    });
    let servers = acceptor.join().unwrap();
    let ops = clients.ops;
    (
        Tally {
            ops,
            ..clients.add(servers)
        },
        secs,
    )
}

fn yields(secs: f64) -> (Tally, f64) {
    run_for(4, secs, |_, stop| {
        let mut t = Tally::default();
        while !stop.load(Ordering::Relaxed) {
            t.point(gosched::yield_now);
            t.ops += 1;
        }
        t
    })
}

type Workload = fn(f64) -> (Tally, f64);

const WORKLOADS: [(&str, &str, Workload); 5] = [
    ("sleep", "16 g x sleep(50µs)", sleep),
    ("pingpong", "4 pairs, chan(0)", pingpong),
    ("mutex", "8 g, one Mutex", mutex),
    ("net", "16 conns, 64 B req/reply", net),
    ("yield", "4 g x yield_now", yields),
];

fn runtime(mode: PreemptMode) -> Runtime {
    let b = Builder::new().procs(PROCS).preempt_mode(mode);
    let b = if mode == PreemptMode::Migrate {
        // SAFETY: the goroutines here keep no thread-identity state live
        // across arbitrary instructions: they read `gettid()` around calls
        // and touch only atomics, channels, a gosched Mutex and sockets; the
        // bench prints only from the main thread.
        unsafe { b.allow_migrate() }
    } else {
        b
    };
    b.build().unwrap()
}

fn measure(rt: &Runtime, w: Workload, secs: f64) -> Result {
    let before = rt.stats();
    let (tally, secs) = rt.block_on(move || w(secs));
    let after = rt.stats();
    Result {
        tally,
        secs,
        threads: after.threads,
        steals: after.steals - before.steals,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let secs: f64 = match std::env::var("MIGRATION_SECS") {
        Ok(s) => s.parse().expect("MIGRATION_SECS: seconds, e.g. 1 or 0.5"),
        Err(_) if bench => 1.0,
        Err(_) => 0.1,
    };
    let only = std::env::var("MIGRATION_ONLY").ok();
    let modes: Vec<(&str, PreemptMode)> = [
        ("affine", PreemptMode::ThreadAffine),
        ("migrate", PreemptMode::Migrate),
    ]
    .into_iter()
    .filter(|(name, _)| match std::env::var("MIGRATION_MODES") {
        Ok(m) => m.split(',').any(|x| x == *name),
        Err(_) => bench || *name == "affine",
    })
    .collect();
    println!("gosched migration at cooperative points: {PROCS} Ps, {secs} s per workload");
    println!("load average at start: {}", loadavg());
    println!(
        "{:<9} {:<26} {:<8} {:>11} {:>9} {:>10} {:>12} {:>8} {:>8}",
        "workload",
        "what",
        "mode",
        "resumptions",
        "migrated",
        "% migrated",
        "ops/s",
        "threads",
        "steals"
    );
    for (mode_name, mode) in &modes {
        let rt = runtime(*mode);
        for (name, what, w) in WORKLOADS {
            if let Some(only) = &only {
                if !only.split(',').any(|o| o == name) {
                    continue;
                }
            }
            let r = measure(&rt, w, secs);
            let t = r.tally;
            assert!(t.calls > 0, "{name}: no cooperative call ran");
            println!(
                "{:<9} {:<26} {:<8} {:>11} {:>9} {:>9.1} % {:>12.0} {:>8} {:>8}",
                name,
                what,
                mode_name,
                t.calls,
                t.moved,
                100.0 * t.moved as f64 / t.calls as f64,
                t.ops as f64 / r.secs,
                r.threads,
                r.steals,
            );
        }
    }
    println!("load average at end: {}", loadavg());
}
