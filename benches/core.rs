//! Core scheduler micro-benchmarks (criterion), one primitive each:
//!
//! - `spawn_join/1k_batches`: spawn goroutines that return their index, in
//!   batches of 1,000, and join them all; the time is per goroutine.
//! - `spawn_join/1M_batch`: one batch of 1,000,000 goroutines, as the Go twin
//!   `benches/go/core/spawn` does it; the time is per batch (divide by 1M, or
//!   read the throughput line).
//! - `yield/round_trip`: two goroutines on one P ping-ponging with
//!   `yield_now`; the time is one round trip (both yield once: two switches
//!   through the scheduler). Go twin: `benches/go/core/yield`.
//! - `sleep_1ms/lateness`: `sleep(1 ms)` on an otherwise idle runtime; the
//!   time criterion reports is the mean *lateness* (elapsed - 1 ms). Then
//!   `sleep_1ms/percentiles` runs 2,000 sleeps and prints p50/p90/p99/p99.9/max
//!   (criterion only gives means). Go twin: `benches/go/core/sleep`.
//! - `local_with/goroutine_local`: one `LocalKey::with` reading a
//!   goroutine-local `Cell<u64>` (already initialised) from a goroutine;
//!   `local_with/thread_local` is the same read of a `thread_local!` for
//!   comparison (Go has no goroutine-local storage to twin).
//!
//! Every runtime is built once, outside the timed closures, and each timed
//! loop runs inside one `block_on` so that entering the runtime from a plain
//! thread is not measured.
//!
//! ```text
//! cargo bench --bench core
//! cargo bench --bench core -- yield     # one group
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use gosched::{Builder, Runtime};
use hdrhistogram::Histogram;

const BATCH: u64 = 1_000;
const BIG_BATCH: u64 = 1_000_000;
const SLEEP: Duration = Duration::from_millis(1);
const SLEEP_SAMPLES: usize = 2_000;

/// Spawns `n` goroutines that return their index, joins them all, and
/// checks the sum (so nothing is optimised away).
fn spawn_join(n: u64) {
    let hs: Vec<_> = (0..n)
        .map(|i| gosched::spawn(move || black_box(i)))
        .collect();
    let sum: u64 = hs
        .into_iter()
        .map(|h| h.join().expect("goroutine panicked"))
        .sum();
    assert_eq!(sum, n * (n - 1) / 2);
}

fn bench_spawn(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("spawn_join");
    g.throughput(Throughput::Elements(1));
    g.bench_function("1k_batches", |b| {
        // One criterion iteration = one goroutine.
        b.iter_custom(|iters| {
            rt.block_on(|| {
                let t = Instant::now();
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH);
                    spawn_join(n);
                    left -= n;
                }
                t.elapsed()
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("spawn_join");
    g.throughput(Throughput::Elements(BIG_BATCH));
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("1M_batch", |b| {
        // One criterion iteration = one batch of a million goroutines.
        b.iter_custom(|iters| {
            rt.block_on(|| {
                let t = Instant::now();
                for _ in 0..iters {
                    spawn_join(BIG_BATCH);
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

fn bench_yield(c: &mut Criterion) {
    let rt = Builder::new().procs(1).build().expect("runtime");
    let mut g = c.benchmark_group("yield");
    g.bench_function("round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(|| {
                let stop = Arc::new(AtomicBool::new(false));
                let partner = {
                    let stop = stop.clone();
                    gosched::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            gosched::yield_now();
                        }
                    })
                };
                gosched::yield_now(); // let the partner start
                let t = Instant::now();
                for _ in 0..iters {
                    // We go to the back of the queue, the partner runs and
                    // yields, we run again: one round trip.
                    gosched::yield_now();
                }
                let d = t.elapsed();
                stop.store(true, Ordering::Relaxed);
                partner.join().expect("partner panicked");
                d
            })
        })
    });
    g.finish();
}

gosched::local! {
    static LOCAL: std::cell::Cell<u64> = std::cell::Cell::new(1);
}

thread_local! {
    static TLS: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

fn bench_local(c: &mut Criterion) {
    let rt = Builder::new().procs(1).build().expect("runtime");
    let mut g = c.benchmark_group("local_with");
    g.bench_function("goroutine_local", |b| {
        b.iter_custom(|iters| {
            rt.block_on(|| {
                LOCAL.with(|v| black_box(v.get())); // initialise outside the timing
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(LOCAL.with(|v| black_box(v).get()));
                }
                t.elapsed()
            })
        })
    });
    g.bench_function("thread_local", |b| {
        b.iter_custom(|iters| {
            rt.block_on(|| {
                TLS.with(|v| black_box(v.get()));
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(TLS.with(|v| black_box(v).get()));
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

/// Lateness of one `sleep(SLEEP)`.
fn one_sleep() -> Duration {
    let t = Instant::now();
    gosched::sleep(SLEEP);
    t.elapsed().saturating_sub(SLEEP)
}

/// Whether the command line names a benchmark filter that `id` fails.
fn filtered_out(id: &str) -> bool {
    let mut filters = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .peekable();
    filters.peek().is_some() && !filters.any(|f| id.contains(&f))
}

fn bench_sleep(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("sleep_1ms");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    // The reported time is the mean lateness: we return the summed lateness.
    g.bench_with_input(BenchmarkId::new("lateness", "idle"), &rt, |b, rt| {
        b.iter_custom(|iters| rt.block_on(|| (0..iters).map(|_| one_sleep()).sum()))
    });
    g.finish();

    if filtered_out("sleep_1ms/percentiles") {
        return;
    }
    // `cargo test --benches` runs us without `--bench`: a smoke run.
    let samples = if std::env::args().any(|a| a == "--bench") {
        SLEEP_SAMPLES
    } else {
        50
    };
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram bounds");
    rt.block_on(|| {
        for _ in 0..samples {
            h.saturating_record(one_sleep().as_nanos() as u64);
        }
    });
    let us = |ns: u64| ns as f64 / 1e3;
    println!(
        "sleep_1ms/percentiles   lateness over {} sleeps on an idle runtime: mean {:.1} µs, p50 {:.1} µs, \
         p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        h.len(),
        h.mean() / 1e3,
        us(h.value_at_quantile(0.50)),
        us(h.value_at_quantile(0.90)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    );
}

/// criterion's macro makes an undocumented `pub fn`; keep it out of the lint.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, bench_spawn, bench_yield, bench_sleep, bench_local);
}
criterion_main!(group::benches);
