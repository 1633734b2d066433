//! Channel and mutex benchmarks, twins of `benches/go/chan/*/main.go`.
//!
//! A hand-written harness (harness = false): each measurement runs once to
//! warm up, then `RUNS` times; the table shows the median (and the min and
//! max). Setup (runtime, goroutines, channels) happens outside the timed
//! part where the primitive allows it.
//!
//! ```text
//! cargo bench --bench chan            # everything
//! cargo bench --bench chan -- pingpong   # only rows whose name contains it
//! ```
//!
//! Rows:
//!
//! - `pingpong/1P`, `pingpong/2P`: unbuffered ping-pong between two
//!   goroutines, nanoseconds per round trip (two sends, two receives).
//! - `buffered/4x4`: 4 producers and 4 consumers on a 128-slot channel,
//!   nanoseconds per value (and millions of values per second).
//! - `mutex/8g`: 8 goroutines each incrementing a shared counter under
//!   `sync::Mutex`, nanoseconds per lock+unlock.
//! - `parked/100k`: resident memory added per goroutine parked in a channel
//!   receive, from /proc/self/statm, with 100,000 goroutines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::chan::channel;
use gosched::sync::{Mutex, WaitGroup};
use gosched::Builder;

const RUNS: usize = 7;

struct Row {
    name: String,
    median: f64,
    min: f64,
    max: f64,
    unit: &'static str,
    extra: String,
}

/// Runs `f` (which returns one measurement) once to warm up and `RUNS`
/// times; the median, min and max.
fn measure(mut f: impl FnMut() -> f64) -> (f64, f64, f64) {
    f();
    let mut v: Vec<f64> = (0..RUNS).map(|_| f()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[RUNS / 2], v[0], v[RUNS - 1])
}

fn pingpong(procs: usize) -> Row {
    const N: u32 = 200_000;
    let rt = Builder::new().procs(procs).build().unwrap();
    let (median, min, max) = measure(|| {
        rt.block_on(|| {
            let (ping_tx, ping_rx) = channel::<u32>(0);
            let (pong_tx, pong_rx) = channel::<u32>(0);
            let echo = gosched::spawn(move || {
                for v in &ping_rx {
                    pong_tx.send(v).unwrap();
                }
            });
            // One exchange outside the clock: both goroutines are running.
            ping_tx.send(0).unwrap();
            pong_rx.recv().unwrap();
            let t = Instant::now();
            for i in 0..N {
                ping_tx.send(i).unwrap();
                pong_rx.recv().unwrap();
            }
            let ns = t.elapsed().as_nanos() as f64 / N as f64;
            drop(ping_tx);
            echo.join().unwrap();
            ns
        })
    });
    Row {
        name: format!("pingpong/{procs}P"),
        median,
        min,
        max,
        unit: "ns/roundtrip",
        extra: String::new(),
    }
}

fn buffered() -> Row {
    const N: usize = 2_000_000;
    const SIDES: usize = 4;
    let rt = Builder::new().build().unwrap();
    let procs = rt.stats().procs;
    let (median, min, max) = measure(|| {
        rt.block_on(|| {
            let (tx, rx) = channel::<usize>(128);
            let start = WaitGroup::new();
            start.add(1);
            let consumers: Vec<_> = (0..SIDES)
                .map(|_| {
                    let rx = rx.clone();
                    gosched::spawn(move || rx.iter().fold(0usize, |a, v| a.wrapping_add(v)))
                })
                .collect();
            drop(rx);
            let producers: Vec<_> = (0..SIDES)
                .map(|p| {
                    let (tx, start) = (tx.clone(), start.clone());
                    gosched::spawn(move || {
                        start.wait();
                        for i in 0..N / SIDES {
                            tx.send(p + i).unwrap();
                        }
                    })
                })
                .collect();
            drop(tx);
            let t = Instant::now();
            start.done();
            for p in producers {
                p.join().unwrap();
            }
            let sum: usize = consumers
                .into_iter()
                .map(|c| c.join().unwrap())
                .fold(0, usize::wrapping_add);
            let ns = t.elapsed().as_nanos() as f64 / N as f64;
            // Producer p sends p, p+1, ..., p + N/SIDES - 1.
            let per = N / SIDES;
            let want: usize = (0..SIDES).map(|p| p * per + per * (per - 1) / 2).sum();
            assert_eq!(sum, want, "values lost or duplicated");
            ns
        })
    });
    Row {
        name: "buffered/4x4".into(),
        median,
        min,
        max,
        unit: "ns/value",
        extra: format!("{:.1} Mvalues/s, {procs} Ps", 1e3 / median),
    }
}

fn mutex() -> Row {
    const PER: usize = 100_000;
    const G: usize = 8;
    let rt = Builder::new().build().unwrap();
    let procs = rt.stats().procs;
    let (median, min, max) = measure(|| {
        rt.block_on(|| {
            let m = Arc::new(Mutex::new(0u64));
            let start = WaitGroup::new();
            start.add(1);
            let hs: Vec<_> = (0..G)
                .map(|_| {
                    let (m, start) = (m.clone(), start.clone());
                    gosched::spawn(move || {
                        start.wait();
                        for _ in 0..PER {
                            *m.lock() += 1;
                        }
                    })
                })
                .collect();
            let t = Instant::now();
            start.done();
            for h in hs {
                h.join().unwrap();
            }
            let ns = t.elapsed().as_nanos() as f64 / (G * PER) as f64;
            assert_eq!(*m.lock(), (G * PER) as u64);
            ns
        })
    });
    Row {
        name: "mutex/8g".into(),
        median,
        min,
        max,
        unit: "ns/lock+unlock",
        extra: format!("{procs} Ps"),
    }
}

/// Resident bytes of this process (/proc/self/statm, field 2, in pages).
fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

fn parked() -> Row {
    const N: usize = 100_000;
    let rt = Builder::new().build().unwrap();
    let stack = rt.stats().stack_size;
    let one = || {
        rt.block_on(|| {
            let (tx, rx) = channel::<()>(0);
            let parked = Arc::new(AtomicUsize::new(0));
            let wg = WaitGroup::new();
            let before = rss_bytes();
            wg.add(N);
            for _ in 0..N {
                let (rx, parked, wg) = (rx.clone(), parked.clone(), wg.clone());
                gosched::spawn(move || {
                    parked.fetch_add(1, Ordering::Relaxed);
                    rx.recv();
                    wg.done();
                });
            }
            while parked.load(Ordering::Relaxed) < N {
                gosched::sleep(Duration::from_millis(1));
            }
            gosched::sleep(Duration::from_millis(20)); // the last ones park
            let per = (rss_bytes().saturating_sub(before)) as f64 / N as f64;
            drop(tx); // closes: everyone wakes and exits
            drop(rx);
            wg.wait();
            per
        })
    };
    // The first run includes the stack pool's growth; later runs reuse it,
    // so report the first (what a fresh program pays) and skip `measure`.
    let first = one();
    Row {
        name: "parked/100k".into(),
        median: first,
        min: first,
        max: first,
        unit: "bytes/goroutine",
        extra: format!("stack reservation {} KiB", stack / 1024),
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    type Bench = (&'static str, fn() -> Row);
    let benches: [Bench; 5] = [
        ("pingpong/1P", || pingpong(1)),
        ("pingpong/2P", || pingpong(2)),
        ("buffered/4x4", buffered),
        ("mutex/8g", mutex),
        ("parked/100k", parked),
    ];
    println!(
        "{:<14} {:>12} {:>12} {:>12}  {:<16} notes",
        "bench", "median", "min", "max", "unit"
    );
    for (name, f) in benches {
        if !wanted(name) {
            continue;
        }
        let r = f();
        println!(
            "{:<14} {:>12.1} {:>12.1} {:>12.1}  {:<16} {}",
            r.name, r.median, r.min, r.max, r.unit, r.extra
        );
    }
}
