//! How many OS threads preempted ThreadAffine goroutines cost.
//!
//! ```text
//! cargo run --release --example thread_growth -- [hogs] [quantum_us] [work_ms] [affine|migrate]
//! ```
//!
//! Starts `hogs` goroutines (default 2,000) on 2 Ps, each spinning without
//! calls for `work_ms` of CPU (default 2 ms), with a `quantum_us` quantum
//! (default 50 µs), and samples the process's OS threads every millisecond.
//! In ThreadAffine mode a goroutine preempted asynchronously resumes on the
//! same thread, which parks with it until then: the thread count follows the
//! number of goroutines preempted and not yet resumed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let hogs = arg(0, 2000) as usize;
    let quantum = Duration::from_micros(arg(1, 50));
    let work = Duration::from_millis(arg(2, 2));
    let migrate = args.get(3).is_some_and(|m| m == "migrate");
    let mut b = gosched::Builder::new().procs(2).preempt_quantum(quantum);
    if migrate {
        b = b.preempt_mode(gosched::PreemptMode::Migrate);
    }
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("build: {e}");
            std::process::exit(2);
        }
    };
    let before = threads();
    let peak = Arc::new(AtomicUsize::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(threads(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let t = Instant::now();
    rt.block_on(|| {
        let hs: Vec<_> = (0..hogs)
            .map(|_| {
                gosched::spawn(move || {
                    // CPU time of this thread would follow the goroutine only
                    // in ThreadAffine mode: measure wall time on the CPU
                    // instead, with a call-free inner loop between checks.
                    let t = Instant::now();
                    let mut x = 0u64;
                    while t.elapsed() < work {
                        for _ in 0..1000 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                        }
                    }
                    x
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let s = rt.stats();
    println!(
        "mode={} hogs={hogs} quantum={quantum:?} work={work:?}: {:?}, threads before={before} peak={} (Ms started: {}), async preemptions={}",
        if migrate { "migrate" } else { "affine" },
        t.elapsed(),
        peak.load(Ordering::Relaxed),
        s.threads,
        s.preempt_async
    );
}
