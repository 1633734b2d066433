//! Fairness of CPU-bound goroutines, with asynchronous preemption off and on.
//!
//! The main job to run first:
//!
//! ```text
//! cargo run --release --example fairness
//! cargo run --release --example fairness -- --procs 1 --loops 3 --quantum 500us --mode migrate
//! ```
//!
//! It starts `--loops` goroutines that spin in a tight loop which calls
//! nothing (no runtime call, no yield, no `preempt_point`: a multiply-add on
//! a register and a counter increment), plus a *ticker* goroutine that sleeps
//! 1 ms in a loop and records how late each wake-up is. It does this twice on
//! a fresh runtime with `--procs` Ps: once with asynchronous (signal)
//! preemption off, once with it on, and prints side by side:
//!
//! - each loop's share of all loop iterations, and Jain's fairness index
//!   `(Σx)² / (n·Σx²)` over the per-loop counts (1.0 = perfectly even,
//!   `1/n` = one loop got everything);
//! - the ticker's wake-up count and its lateness (p50, p99, max);
//! - the runtime's preemption counters ([`gosched::Stats`]).
//!
//! With preemption off, a loop that never calls the runtime keeps its P
//! forever: `procs` loops run, the others and the ticker starve until a plain
//! OS thread raises the stop flag at the end of the run. With preemption on,
//! sysmon interrupts each loop after one quantum, so every loop gets its
//! share, and the ticker, queued behind the loops like any other goroutine,
//! wakes within a few quanta (about `loops / procs`).

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::{Builder, PreemptMode, Stats};
use hdrhistogram::Histogram;

const HELP: &str = "\
fairness: CPU-bound goroutines with asynchronous preemption off, then on

USAGE:
    cargo run --release --example fairness -- [OPTIONS]

OPTIONS:
    --procs N           Ps (GOMAXPROCS) [default: 2]
    --loops N           CPU-bound loops that never call the runtime [default: 4]
    --quantum D         preemption quantum, e.g. 10ms, 500us [default: 10ms]
    --mode M            where a preempted loop resumes: affine | migrate [default: affine]
    --duration D        length of each of the two runs, e.g. 4s, 1500ms [default: 4s]
    -h, --help          print this help
";

/// The ticker's sleep.
const TICK: Duration = Duration::from_millis(1);

struct Opts {
    procs: usize,
    loops: usize,
    quantum: Duration,
    mode: PreemptMode,
    duration: Duration,
}

/// Parses "10ms", "500us", "500µs", "4s", "1.5s", "250000ns".
fn parse_duration(s: &str) -> Option<Duration> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(v * scale).ok()
}

fn parse_args() -> Result<Option<Opts>, String> {
    let mut o = Opts {
        procs: 2,
        loops: 4,
        quantum: gosched::DEFAULT_QUANTUM,
        mode: PreemptMode::ThreadAffine,
        duration: Duration::from_secs(4),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        // Accept both `--flag value` and `--flag=value`.
        let (flag, value) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
                (flag, v)
            }
        };
        let bad = || format!("{flag}: cannot parse {value:?}");
        match flag.as_str() {
            "--procs" => o.procs = value.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?,
            "--loops" => o.loops = value.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?,
            "--quantum" => o.quantum = parse_duration(&value).ok_or_else(bad)?,
            "--duration" => {
                o.duration = parse_duration(&value)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(bad)?
            }
            "--mode" => {
                o.mode = match value.as_str() {
                    "affine" | "thread-affine" | "threadaffine" => PreemptMode::ThreadAffine,
                    "migrate" => PreemptMode::Migrate,
                    _ => return Err(format!("--mode: expected affine or migrate, got {value:?}")),
                }
            }
            _ => return Err(format!("unknown option {flag:?} (try --help)")),
        }
    }
    Ok(Some(o))
}

/// What one run measured.
struct Run {
    /// Iterations of each loop.
    counts: Vec<u64>,
    /// Ticker lateness in µs (how long after the 1 ms each sleep returned).
    late_us: Histogram<u64>,
    stats: Stats,
}

/// A CPU-bound loop that calls nothing: only asynchronous preemption can
/// take its P away. `black_box` is an empty inline-asm barrier (no call); it
/// keeps the multiply-add from being folded away. Returns its iterations.
fn spin(stop: &AtomicBool) -> u64 {
    let mut x = 1u64;
    let mut count = 0u64;
    while !stop.load(Relaxed) {
        x = black_box(x)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        count += 1;
    }
    black_box(x);
    count
}

fn run(o: &Opts, async_preempt: bool) -> std::io::Result<Run> {
    let b = Builder::new()
        .procs(o.procs)
        .preempt_quantum(o.quantum)
        .async_preempt(async_preempt)
        .preempt_mode(o.mode);
    // SAFETY: `--mode migrate` is only sound because the loops (`spin`:
    // register arithmetic and an atomic load) and the ticker (sleep, the
    // clock, a push to its own Vec) hold no thread identity; everything is
    // printed after block_on returns.
    let rt = unsafe { b.allow_migrate() }.build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, late_us) = rt.block_on(|| {
        let loops: Vec<_> = (0..o.loops)
            .map(|_| {
                let stop = stop.clone();
                gosched::spawn(move || spin(&stop))
            })
            .collect();
        let ticker = {
            let stop = stop.clone();
            gosched::spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("histogram bounds");
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    gosched::sleep(TICK);
                    let late = t.elapsed().saturating_sub(TICK);
                    h.saturating_record(late.as_micros() as u64);
                }
                h
            })
        };
        // A plain OS thread ends the run: with preemption off, no goroutine
        // (not even this one) may get a P back before the loops stop.
        let stopper = {
            let stop = stop.clone();
            let d = o.duration;
            std::thread::spawn(move || {
                std::thread::sleep(d);
                stop.store(true, Relaxed);
            })
        };
        let counts: Vec<u64> = loops
            .into_iter()
            .map(|h| h.join().expect("loop panicked"))
            .collect();
        let late = ticker.join().expect("ticker panicked");
        stopper.join().expect("stopper panicked");
        (counts, late)
    });
    Ok(Run {
        counts,
        late_us,
        stats: rt.stats(),
    })
}

/// Jain's fairness index: (Σx)² / (n·Σx²); 1 when all equal, 1/n when one
/// gets everything.
fn jain(xs: &[u64]) -> f64 {
    let sum: f64 = xs.iter().map(|&x| x as f64).sum();
    let sq: f64 = xs.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if sq == 0.0 {
        return 0.0;
    }
    sum * sum / (xs.len() as f64 * sq)
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn print_table(o: &Opts, off: &Run, on: &Run) {
    let row = |name: &str, a: String, b: String| println!("{name:<30} {a:>16} {b:>16}");
    row("", "async OFF".into(), "async ON".into());
    row("", "---------".into(), "--------".into());
    let total = |r: &Run| r.counts.iter().sum::<u64>().max(1) as f64;
    for i in 0..o.loops {
        row(
            &format!("loop {i} share of iterations"),
            format!("{:.1} %", 100.0 * off.counts[i] as f64 / total(off)),
            format!("{:.1} %", 100.0 * on.counts[i] as f64 / total(on)),
        );
    }
    row(
        "all loops, iterations/s",
        format!("{:.3e}", total(off) / o.duration.as_secs_f64()),
        format!("{:.3e}", total(on) / o.duration.as_secs_f64()),
    );
    row(
        "Jain's fairness index",
        format!("{:.3}", jain(&off.counts)),
        format!("{:.3}", jain(&on.counts)),
    );
    let ideal = (o.duration.as_secs_f64() / TICK.as_secs_f64()) as u64;
    row(
        &format!("ticker wake-ups (ideal ~{ideal})"),
        off.late_us.len().to_string(),
        on.late_us.len().to_string(),
    );
    for (name, q) in [("ticker lateness p50", 0.5), ("ticker lateness p99", 0.99)] {
        row(
            name,
            fmt_us(off.late_us.value_at_quantile(q)),
            fmt_us(on.late_us.value_at_quantile(q)),
        );
    }
    row(
        "ticker lateness max",
        fmt_us(off.late_us.max()),
        fmt_us(on.late_us.max()),
    );
    row(
        "preempt_async",
        off.stats.preempt_async.to_string(),
        on.stats.preempt_async.to_string(),
    );
    row(
        "preempt_coop",
        off.stats.preempt_coop.to_string(),
        on.stats.preempt_coop.to_string(),
    );
    row(
        "preempt_refused",
        off.stats.preempt_refused.to_string(),
        on.stats.preempt_refused.to_string(),
    );
    row(
        "context switches",
        off.stats.switches.to_string(),
        on.stats.switches.to_string(),
    );
    row(
        "worker threads (Ms)",
        off.stats.threads.to_string(),
        on.stats.threads.to_string(),
    );
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fairness: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        println!("note: a debug build; use --release for meaningful numbers\n");
    }
    println!(
        "gosched fairness: {} CPU-bound loops + a {:?} ticker on {} P(s), quantum {:?}, mode {:?}, {:?} per run\n",
        o.loops, TICK, o.procs, o.quantum, o.mode, o.duration
    );
    println!(
        "Each loop spins without calling anything, so only asynchronous preemption can take its P \
away. \"share\" is the loop's part of all iterations: with preemption OFF the first {} loop(s) keep \
their Ps for the whole run and the rest get 0 %; with it ON each loop should get about {:.1} %. \
Jain's index sums that up: 1.0 is perfectly fair, {:.2} means one loop got everything. The ticker \
sleeps {:?} in a loop; its lateness is how long after that each sleep returned. OFF, it starves \
until the run ends (one wake-up, a whole run late); ON, it waits its turn behind the loops, so it \
should wake within about {} quantum(s) of {:?}. preempt_async counts loops interrupted by SIGURG, preempt_coop goroutines that yielded at \
a runtime call when asked, preempt_refused signals that landed where preemption is not allowed \
(e.g. inside libc).\n",
        o.procs.min(o.loops),
        100.0 / o.loops as f64,
        1.0 / o.loops as f64,
        TICK,
        o.loops.div_ceil(o.procs),
        o.quantum,
    );
    let off = match run(&o, false) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fairness: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let on = match run(&o, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fairness: cannot build the runtime with asynchronous preemption: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_table(&o, &off, &on);
    ExitCode::SUCCESS
}
