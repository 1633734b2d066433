//! A 1 ms ticker beside a goroutine that spends its time in libc or libm:
//! how late does the ticker wake up?
//!
//! ```text
//! cargo run --release --example leaf_preempt -- --load memcpy
//! cargo run --release --example leaf_preempt -- --load sin --quantum 1ms --mode migrate
//! GOSCHED_LEAFPREEMPTOFF=1 cargo run --release --example leaf_preempt -- --load memcpy
//! ```
//!
//! One P. The loop goroutine runs one of:
//!
//! - `memcpy`: `copy_from_slice` of `--size` bytes (default 8 MiB) back and
//!   forth between two buffers: nearly all its time is in glibc's `memcpy`;
//! - `sin`, `exp`: `f64::sin` (`f64::exp`) of a moving argument, summed:
//!   most of its time is in libm (`exp` goes through a wrapper into an
//!   IFUNC-chosen implementation: two libm frames);
//! - `clock`: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, the thread's CPU
//!   clock: a system call the vDSO makes, on whose return nearly every
//!   signal arrives; `now`: `Instant::now()` (`CLOCK_MONOTONIC`, read in
//!   the vDSO without a system call);
//! - `hog`: a multiply-add loop in the executable (the reference).
//!
//! Asynchronous preemption may land in a goroutine only at safe points;
//! code outside the main executable is refused except for libc's memory
//! and string routines, libm and the clocks (libc's and the vDSO's)
//! (`GOSCHED_LEAFPREEMPTOFF=1` refuses those too, the behaviour before they
//! were admitted). The ticker sleeps 1 ms
//! `--ticks` times and reports its lateness (p50, p99, max) with the
//! runtime's preemption counters.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::{Builder, PreemptMode};

const HELP: &str = "\
leaf_preempt: a 1 ms ticker beside a memcpy, sin or arithmetic loop on one P

options:
  --load memcpy|sin|exp|clock|now|hog  what the loop goroutine runs (default memcpy)
  --quantum D             preemption quantum, e.g. 1ms, 500us (default 1ms)
  --mode affine|migrate   preemption mode (default affine)
  --size BYTES            memcpy size in bytes (default 8388608)
  --ticks N               ticker wake-ups (default 1000)
";

struct Opts {
    load: String,
    quantum: Duration,
    migrate: bool,
    size: usize,
    ticks: usize,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "us" => Some(Duration::from_micros(n)),
        "s" => Some(Duration::from_secs(n)),
        _ => None,
    }
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        load: "memcpy".into(),
        quantum: Duration::from_millis(1),
        migrate: false,
        size: 8 << 20,
        ticks: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--load" => o.load = val()?,
            "--quantum" => {
                let v = val()?;
                o.quantum = parse_duration(&v).ok_or(format!("bad --quantum {v:?}"))?;
            }
            "--mode" => {
                o.migrate = match val()?.as_str() {
                    "affine" => false,
                    "migrate" => true,
                    m => return Err(format!("bad --mode {m:?}")),
                }
            }
            "--size" => {
                let v = val()?;
                o.size = v.parse().map_err(|_| format!("bad --size {v:?}"))?;
            }
            "--ticks" => {
                let v = val()?;
                o.ticks = v.parse().map_err(|_| format!("bad --ticks {v:?}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    if !["memcpy", "sin", "exp", "clock", "now", "hog"].contains(&o.load.as_str())
        || o.ticks == 0
        || o.size == 0
    {
        return Err(format!(
            "bad --load {:?}, --ticks or --size (must be > 0)",
            o.load
        ));
    }
    Ok(o)
}

/// The loop goroutine: runs `load` until `stop`; returns its rounds.
fn run_loop(load: &str, size: usize, stop: &AtomicBool) -> u64 {
    let mut rounds = 0u64;
    match load {
        "memcpy" => {
            let mut a = vec![1u8; size];
            let mut b = vec![2u8; size];
            while !stop.load(Relaxed) {
                a.copy_from_slice(black_box(&b));
                b.copy_from_slice(black_box(&a));
                rounds += 1;
            }
        }
        "sin" | "exp" => {
            let f = if load == "sin" { f64::sin } else { f64::exp };
            let (mut x, mut acc) = (0.5f64, 0.0f64);
            while !stop.load(Relaxed) {
                for _ in 0..1024 {
                    acc += f(black_box(x));
                    x = (x + 1e-3) % 8.0;
                }
                rounds += 1;
            }
            black_box(acc);
        }
        "clock" => {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let mut acc = 0i64;
            while !stop.load(Relaxed) {
                for _ in 0..64 {
                    // SAFETY: a valid clock id and a valid out-pointer.
                    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                    acc = acc.wrapping_add(ts.tv_nsec);
                }
                rounds += 1;
            }
            black_box(acc);
        }
        "now" => {
            let mut last = Instant::now();
            while !stop.load(Relaxed) {
                for _ in 0..64 {
                    last = black_box(Instant::now().max(last));
                }
                rounds += 1;
            }
        }
        _ => {
            let mut x = 1u64;
            while !stop.load(Relaxed) {
                for _ in 0..1024 {
                    x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                }
                rounds += 1;
            }
        }
    }
    rounds
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprint!("{e}{}{HELP}", if e.is_empty() { "" } else { "\n\n" });
            return ExitCode::from(2);
        }
    };
    let mut b = Builder::new().procs(1).preempt_quantum(o.quantum);
    if o.migrate {
        // SAFETY: the loop and the ticker keep no thread-local state across
        // instructions (see `Builder::allow_migrate`).
        b = unsafe { b.allow_migrate() }.preempt_mode(PreemptMode::Migrate);
    }
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leaf_preempt: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    // A plain thread ends the run even if the ticker starves.
    let s = stop.clone();
    let limit = Duration::from_millis(o.ticks as u64).saturating_mul(20) + Duration::from_secs(5);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        s.store(true, Relaxed);
    });
    let (load, size, ticks) = (o.load.clone(), o.size, o.ticks);
    let s = stop.clone();
    let (mut late, rounds) = rt.block_on(move || {
        let s2 = s.clone();
        let h = gosched::spawn(move || run_loop(&load, size, &s2));
        let mut late = Vec::with_capacity(ticks);
        for _ in 0..ticks {
            if s.load(Relaxed) {
                break;
            }
            let t = Instant::now();
            gosched::sleep(Duration::from_millis(1));
            late.push(t.elapsed().saturating_sub(Duration::from_millis(1)));
        }
        s.store(true, Relaxed);
        (late, h.join().unwrap_or(0))
    });
    late.sort();
    let pct =
        |p: f64| late[((p / 100.0 * late.len() as f64).ceil() as usize).clamp(1, late.len()) - 1];
    let st = rt.stats();
    println!(
        "load={} quantum={:?} mode={} leaf_off={} ticks={} p50={:?} p99={:?} max={:?} loop_rounds={} preempt_async={} refused={:?}",
        o.load,
        o.quantum,
        if o.migrate { "migrate" } else { "affine" },
        std::env::var("GOSCHED_LEAFPREEMPTOFF").is_ok_and(|v| v == "1"),
        late.len(),
        pct(50.0),
        pct(99.0),
        pct(100.0),
        rounds,
        st.preempt_async,
        st.preempt_refused_by_reason
            .iter()
            .filter(|r| r.1 != 0)
            .collect::<Vec<_>>(),
    );
    ExitCode::SUCCESS
}
