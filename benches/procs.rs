//! `Runtime::set_procs` under load (issue target: under 10 ms with 10,000
//! runnable goroutines).
//!
//! 4 Ps, each running a goroutine that filled its P's local queue with
//! 2,500 runnable goroutines and then spins without calls; from a plain
//! thread, `set_procs(1)` drops three of the Ps: it must get three no-call
//! loops off their Ps (by signal) and move 7,500 queued goroutines to the
//! global queue. Then `set_procs(4)` grows back. Prints the distribution of
//! both over the rounds.
//!
//! ```text
//! cargo bench --bench procs
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::Builder;

const ROUNDS: usize = 30;
const PER_P: usize = 2_500;

fn main() {
    let mut shrink = Vec::new();
    let mut grow = Vec::new();
    for _ in 0..ROUNDS {
        let rt = Arc::new(Builder::new().procs(4).build().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let filled = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let hogs: Vec<_> = (0..4)
            .map(|_| {
                let (stop, filled, ran) = (stop.clone(), filled.clone(), ran.clone());
                rt.spawn(move || {
                    for _ in 0..PER_P {
                        let ran = ran.clone();
                        // Into this P's runnext / local queue (Go's newproc).
                        gosched::spawn(move || {
                            ran.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    filled.fetch_add(1, Ordering::SeqCst);
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        while filled.load(Ordering::SeqCst) < 4 {
            std::thread::sleep(Duration::from_micros(100));
        }
        let queued = 4 * PER_P - ran.load(Ordering::Relaxed);
        let t = Instant::now();
        rt.set_procs(1).unwrap();
        shrink.push((t.elapsed(), queued));
        let t = Instant::now();
        rt.set_procs(4).unwrap();
        grow.push(t.elapsed());
        stop.store(true, Ordering::Relaxed);
        for h in hogs {
            h.join().unwrap();
        }
        while ran.load(Ordering::Relaxed) < 4 * PER_P {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let q_min = shrink.iter().map(|s| s.1).min().unwrap();
    let mut s: Vec<Duration> = shrink.iter().map(|s| s.0).collect();
    s.sort();
    grow.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    println!(
        "set_procs(4 -> 1), 4 no-call hogs, >= {q_min} runnable goroutines queued: p50 {:?} p90 {:?} max {:?} ({ROUNDS} rounds)",
        pct(&s, 0.5),
        pct(&s, 0.9),
        s[s.len() - 1]
    );
    println!(
        "set_procs(1 -> 4): p50 {:?} p90 {:?} max {:?}",
        pct(&grow, 0.5),
        pct(&grow, 0.9),
        grow[grow.len() - 1]
    );
}
