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
//! While a run goes on, a progress line on stderr (once a second) shows the
//! elapsed time, each loop's iterations so far and the ticker's wake-ups and
//! lateness so far (`--no-progress` turns it off). `--csv PATH` (`-` for
//! stdout) also writes the results as CSV; the columns are listed in
//! `--help`.
//!
//! With preemption off, a loop that never calls the runtime keeps its P
//! forever: `procs` loops run, the others and the ticker starve until a plain
//! OS thread raises the stop flag at the end of the run. With preemption on,
//! sysmon interrupts each loop after one quantum, so every loop gets its
//! share, and the ticker, queued behind the loops like any other goroutine,
//! wakes within a few quanta (about `loops / procs`).

use std::ffi::OsString;
use std::fs::File;
use std::hint::black_box;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::{Builder, PreemptMode, Stats, MAX_PROCS};
use hdrhistogram::Histogram;

const HELP: &str = "\
fairness: CPU-bound goroutines with asynchronous preemption off, then on

USAGE:
    cargo run --release --example fairness -- [OPTIONS]

OPTIONS:
    --procs N           Ps (GOMAXPROCS), 1..=1024 [default: 2]
    --loops N           CPU-bound loops that never call the runtime, 1..=10000 [default: 4]
    --quantum D         preemption quantum, e.g. 10ms, 500us [default: 10ms]
    --mode M            where a preempted loop resumes: affine | migrate [default: affine]
    --duration D        length of each of the two runs, e.g. 4s, 1500ms [default: 4s]
    --csv PATH          also write the results as CSV to PATH; `-` writes them to
                        stdout (the table then goes to stderr)
    --no-progress       no progress line on stderr while the runs go on
    -h, --help          print this help

Durations take a unit: ns, us (or µs), ms, s; fractions are allowed (1.5s).
Bad options exit with status 2 and a message naming the bad value.

PROGRESS: once a second, on stderr (rewritten in place on a terminal, one
line per second otherwise): the run (async off/on), elapsed time, each
loop's iterations so far (the first 8 loops), the ticker's wake-ups and its
lateness p50/p99 so far.

CSV COLUMNS (one header line, then for each run one `loop` row per loop, one
`ticker` row and one `run` row; fields that do not apply are empty):
    procs,loops,quantum_us,mode,duration_s   the options of the run
    async           off | on
    kind            loop | ticker | run
    loop            the loop's index (loop rows)
    iterations      the loop's iterations (run row: all loops)
    share           the loop's part of all iterations, 0..1
    iterations_per_s  iterations / duration_s
    jain            Jain's fairness index over the loops (run row)
    ticks           ticker wake-ups (ticker row)
    p50_us,p90_us,p99_us,p999_us,max_us   ticker lateness (ticker row)
    preempt_async,preempt_coop,preempt_refused,switches,threads
                    the runtime's counters (run row)
";

/// The ticker's sleep.
const TICK: Duration = Duration::from_millis(1);
/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the ticker republishes its lateness percentiles.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// Loop iterations between two publications of a loop's count.
const COUNT_CHUNK: u64 = 1 << 14;
/// The most loops `--loops` accepts.
const MAX_LOOPS: usize = 10_000;
/// Loops shown on the progress line.
const PROGRESS_LOOPS: usize = 8;

/// Where `--csv` writes.
#[derive(Debug, PartialEq)]
enum CsvDest {
    Stdout,
    File(PathBuf),
}

#[derive(Debug)]
struct Opts {
    procs: usize,
    loops: usize,
    quantum: Duration,
    mode: PreemptMode,
    duration: Duration,
    csv: Option<CsvDest>,
    progress: bool,
}

/// The options that take a value.
const VALUE_FLAGS: [&str; 6] = [
    "--procs",
    "--loops",
    "--quantum",
    "--duration",
    "--mode",
    "--csv",
];

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

/// Parses a count in `1..=max`.
fn parse_count(flag: &str, value: &str, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{flag}: {n} is out of range (1..={max})")),
        Err(_) => Err(format!(
            "{flag}: cannot parse {value:?} (expected an integer in 1..={max})"
        )),
    }
}

/// Parses the command line (without the program name). `Ok(None)` asks for
/// the help text; `Err` names the bad option or value.
fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Option<Opts>, String> {
    let mut o = Opts {
        procs: 2,
        loops: 4,
        quantum: gosched::DEFAULT_QUANTUM,
        mode: PreemptMode::ThreadAffine,
        duration: Duration::from_secs(4),
        csv: None,
        progress: true,
    };
    let utf8 = |a: OsString| {
        a.into_string()
            .map_err(|a| format!("argument {a:?} is not valid UTF-8"))
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let flag = utf8(flag)?;
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--no-progress" => {
                o.progress = false;
                continue;
            }
            _ => {}
        }
        // Accept both `--flag value` and `--flag=value`.
        let name = flag.split_once('=').map_or(flag.as_str(), |(f, _)| f);
        if !VALUE_FLAGS.contains(&name) {
            return Err(format!("unknown option {name:?} (try --help)"));
        }
        let (flag, value) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
                (flag, utf8(v)?)
            }
        };
        let bad = || format!("{flag}: cannot parse {value:?}");
        match flag.as_str() {
            "--procs" => o.procs = parse_count(&flag, &value, MAX_PROCS)?,
            "--loops" => o.loops = parse_count(&flag, &value, MAX_LOOPS)?,
            "--quantum" => {
                o.quantum = parse_duration(&value)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(bad)?
            }
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
            "--csv" => {
                o.csv = Some(match value.as_str() {
                    "" => return Err("--csv: expected a path or `-`, got \"\"".into()),
                    "-" => CsvDest::Stdout,
                    _ => CsvDest::File(PathBuf::from(value)),
                })
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

/// A counter on its own cache line, so that loops publishing their counts
/// do not share a line.
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// What the goroutines of a run publish for the progress line, read by a
/// plain OS thread.
struct Live {
    /// Each loop's iterations so far (published every `COUNT_CHUNK`).
    counts: Vec<Slot>,
    /// Ticker wake-ups so far.
    ticks: Slot,
    /// Ticker lateness p50 and p99 so far, in µs (every `PUBLISH_EVERY`).
    p50_us: Slot,
    p99_us: Slot,
}

impl Live {
    fn new(loops: usize) -> Live {
        Live {
            counts: (0..loops).map(|_| Slot::default()).collect(),
            ticks: Slot::default(),
            p50_us: Slot::default(),
            p99_us: Slot::default(),
        }
    }
}

/// A CPU-bound loop that calls nothing: only asynchronous preemption can
/// take its P away. `black_box` is an empty inline-asm barrier (no call); it
/// keeps the multiply-add from being folded away. It stores its count in
/// `live` every `COUNT_CHUNK` iterations (a plain store to its own cache
/// line) and returns its iterations.
fn spin(stop: &AtomicBool, live: &AtomicU64) -> u64 {
    let mut x = 1u64;
    let mut count = 0u64;
    'run: loop {
        for _ in 0..COUNT_CHUNK {
            if stop.load(Relaxed) {
                break 'run;
            }
            x = black_box(x)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            count += 1;
        }
        live.store(count, Relaxed);
    }
    live.store(count, Relaxed);
    black_box(x);
    count
}

/// The ticker: sleeps `TICK` in a loop and records how late each sleep
/// returned, in µs; publishes its count and percentiles in `live`.
fn tick(stop: &AtomicBool, live: &Live) -> Histogram<u64> {
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds");
    let mut published = Instant::now();
    let publish = |h: &Histogram<u64>| {
        live.p50_us.0.store(h.value_at_quantile(0.5), Relaxed);
        live.p99_us.0.store(h.value_at_quantile(0.99), Relaxed);
    };
    while !stop.load(Relaxed) {
        let t = Instant::now();
        gosched::sleep(TICK);
        let late = t.elapsed().saturating_sub(TICK);
        h.saturating_record(late.as_micros().try_into().unwrap_or(u64::MAX));
        live.ticks.0.store(h.len(), Relaxed);
        if published.elapsed() >= PUBLISH_EVERY || h.len() == 1 {
            publish(&h);
            published = Instant::now();
        }
    }
    publish(&h);
    h
}

/// Iteration counts with an SI suffix: 1234567 -> "1.23M".
fn si(n: u64) -> String {
    let n = n as f64;
    for (scale, suffix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if n >= scale {
            return format!("{:.2}{suffix}", n / scale);
        }
    }
    format!("{n}")
}

/// The progress line of a run at `elapsed` of `total`.
fn progress_line(name: &str, elapsed: Duration, total: Duration, live: &Live) -> String {
    let mut line = format!(
        "{name}: {:.1}/{:.1} s  loops",
        elapsed.as_secs_f64(),
        total.as_secs_f64()
    );
    for c in live.counts.iter().take(PROGRESS_LOOPS) {
        line.push(' ');
        line.push_str(&si(c.0.load(Relaxed)));
    }
    if live.counts.len() > PROGRESS_LOOPS {
        line.push_str(&format!(" (+{} more)", live.counts.len() - PROGRESS_LOOPS));
    }
    let ticks = live.ticks.0.load(Relaxed);
    line.push_str(&format!("  ticker {ticks} wake-ups"));
    if ticks > 0 {
        line.push_str(&format!(
            ", late p50 {} p99 {}",
            fmt_us(live.p50_us.0.load(Relaxed)),
            fmt_us(live.p99_us.0.load(Relaxed))
        ));
    }
    line
}

/// Sleeps for the run's duration on a plain OS thread, printing the
/// progress line every `PROGRESS_EVERY` if `progress`; then raises `stop`.
fn stopper(duration: Duration, progress: bool, name: &str, live: &Live, stop: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    loop {
        let left = duration.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(PROGRESS_EVERY));
        if progress {
            let line = progress_line(name, start.elapsed(), duration, live);
            // `\r` and "erase to end of line" rewrite the line in place.
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
    }
    stop.store(true, Relaxed);
    if progress && tty {
        eprint!("\r\x1b[K");
    }
}

fn run(o: &Opts, async_preempt: bool) -> std::io::Result<Run> {
    let b = Builder::new()
        .procs(o.procs)
        .preempt_quantum(o.quantum)
        .async_preempt(async_preempt)
        .preempt_mode(o.mode);
    // SAFETY: `--mode migrate` is only sound because the loops (`spin`:
    // register arithmetic, an atomic load and store) and the ticker (sleep,
    // the clock, its own histogram, atomic stores) hold no thread identity;
    // everything is printed after block_on returns or from a plain thread.
    let rt = unsafe { b.allow_migrate() }.build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live::new(o.loops));
    let name = if async_preempt {
        "async on "
    } else {
        "async off"
    };
    let (counts, late_us) = rt.block_on(|| {
        let loops: Vec<_> = (0..o.loops)
            .map(|i| {
                let (stop, live) = (stop.clone(), live.clone());
                gosched::spawn(move || spin(&stop, &live.counts[i].0))
            })
            .collect();
        let ticker = {
            let (stop, live) = (stop.clone(), live.clone());
            gosched::spawn(move || tick(&stop, &live))
        };
        // A plain OS thread ends the run and prints the progress: with
        // preemption off, no goroutine (not even this one) may get a P back
        // before the loops stop. (Not `std::thread::scope`: its end parks
        // the thread that opened it, and this goroutine may resume on
        // another one after the joins.)
        let stopper = {
            let (stop, live) = (stop.clone(), live.clone());
            let (duration, progress) = (o.duration, o.progress);
            std::thread::spawn(move || stopper(duration, progress, name, &live, &stop))
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

/// Writes the side-by-side table of the two runs to `out`.
fn print_table(out: &mut dyn Write, o: &Opts, off: &Run, on: &Run) -> std::io::Result<()> {
    let mut row = |name: &str, a: String, b: String| writeln!(out, "{name:<30} {a:>16} {b:>16}");
    row("", "async OFF".into(), "async ON".into())?;
    row("", "---------".into(), "--------".into())?;
    let total = |r: &Run| r.counts.iter().sum::<u64>().max(1) as f64;
    for i in 0..o.loops {
        row(
            &format!("loop {i} share of iterations"),
            format!("{:.1} %", 100.0 * off.counts[i] as f64 / total(off)),
            format!("{:.1} %", 100.0 * on.counts[i] as f64 / total(on)),
        )?;
    }
    row(
        "all loops, iterations/s",
        format!("{:.3e}", total(off) / o.duration.as_secs_f64()),
        format!("{:.3e}", total(on) / o.duration.as_secs_f64()),
    )?;
    row(
        "Jain's fairness index",
        format!("{:.3}", jain(&off.counts)),
        format!("{:.3}", jain(&on.counts)),
    )?;
    let ideal = (o.duration.as_secs_f64() / TICK.as_secs_f64()) as u64;
    row(
        &format!("ticker wake-ups (ideal ~{ideal})"),
        off.late_us.len().to_string(),
        on.late_us.len().to_string(),
    )?;
    for (name, q) in [("ticker lateness p50", 0.5), ("ticker lateness p99", 0.99)] {
        row(
            name,
            fmt_us(off.late_us.value_at_quantile(q)),
            fmt_us(on.late_us.value_at_quantile(q)),
        )?;
    }
    row(
        "ticker lateness max",
        fmt_us(off.late_us.max()),
        fmt_us(on.late_us.max()),
    )?;
    let counters = |s: &Stats| {
        [
            ("preempt_async", s.preempt_async),
            ("preempt_coop", s.preempt_coop),
            ("preempt_refused", s.preempt_refused),
            ("context switches", s.switches),
            ("worker threads (Ms)", s.threads as u64),
        ]
    };
    for ((name, a), (_, b)) in counters(&off.stats).into_iter().zip(counters(&on.stats)) {
        row(name, a.to_string(), b.to_string())?;
    }
    Ok(())
}

/// The CSV header; the columns are described in `HELP`.
const CSV_HEADER: &str = "procs,loops,quantum_us,mode,duration_s,async,kind,loop,iterations,share,\
iterations_per_s,jain,ticks,p50_us,p90_us,p99_us,p999_us,max_us,\
preempt_async,preempt_coop,preempt_refused,switches,threads";

/// The CSV rows of one run: a `loop` row per loop, a `ticker` row, a `run`
/// row (see `HELP`).
fn csv_rows(o: &Opts, async_on: bool, r: &Run) -> String {
    let mode = match o.mode {
        PreemptMode::Migrate => "migrate",
        _ => "affine",
    };
    let prefix = format!(
        "{},{},{},{mode},{},{}",
        o.procs,
        o.loops,
        o.quantum.as_micros(),
        o.duration.as_secs_f64(),
        if async_on { "on" } else { "off" },
    );
    let secs = o.duration.as_secs_f64();
    let total: u64 = r.counts.iter().sum();
    let mut out = String::new();
    for (i, &n) in r.counts.iter().enumerate() {
        let share = n as f64 / total.max(1) as f64;
        let rate = n as f64 / secs;
        out.push_str(&format!(
            "{prefix},loop,{i},{n},{share:.6},{rate:.6e},,,,,,,,,,,,\n"
        ));
    }
    let h = &r.late_us;
    let q = |q: f64| h.value_at_quantile(q);
    out.push_str(&format!(
        "{prefix},ticker,,,,,,{},{},{},{},{},{},,,,,\n",
        h.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max()
    ));
    let s = &r.stats;
    out.push_str(&format!(
        "{prefix},run,,{total},1,{:.6e},{:.6},,,,,,,{},{},{},{},{}\n",
        total as f64 / secs,
        jain(&r.counts),
        s.preempt_async,
        s.preempt_coop,
        s.preempt_refused,
        s.switches,
        s.threads
    ));
    out
}

/// Runs the example with the command line `args` (without the program
/// name); returns the process's exit status: 0, 1 (the runtime could not
/// be built or the output not written), 2 (a bad option).
fn cli<I: IntoIterator<Item = OsString>>(args: I) -> u8 {
    let o = match parse_args(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return 0;
        }
        Err(e) => {
            eprintln!("fairness: {e}\n\n{HELP}");
            return 2;
        }
    };
    // Open the CSV file first: a bad path fails now, not after the runs.
    let csv: Option<Box<dyn Write>> = match &o.csv {
        None => None,
        Some(CsvDest::Stdout) => Some(Box::new(std::io::stdout())),
        Some(CsvDest::File(p)) => match File::create(p) {
            Ok(f) => Some(Box::new(std::io::BufWriter::new(f))),
            Err(e) => {
                eprintln!("fairness: --csv {}: {e}", p.display());
                return 1;
            }
        },
    };
    // With the CSV on stdout, the human-readable text goes to stderr.
    let mut human: Box<dyn Write> = if o.csv == Some(CsvDest::Stdout) {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    match run_and_report(&o, &mut *human, csv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fairness: cannot write the results: {e}");
            1
        }
    }
}

/// The two runs, the table, the CSV. `Ok(1)` if a runtime could not be built.
fn run_and_report(
    o: &Opts,
    human: &mut dyn Write,
    csv: Option<Box<dyn Write>>,
) -> std::io::Result<u8> {
    if cfg!(debug_assertions) {
        writeln!(
            human,
            "note: a debug build; use --release for meaningful numbers\n"
        )?;
    }
    writeln!(
        human,
        "gosched fairness: {} CPU-bound loops + a {:?} ticker on {} P(s), quantum {:?}, mode {:?}, {:?} per run\n",
        o.loops, TICK, o.procs, o.quantum, o.mode, o.duration
    )?;
    writeln!(
        human,
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
    )?;
    human.flush()?;
    let off = match run(o, false) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fairness: cannot build the runtime: {e}");
            return Ok(1);
        }
    };
    let on = match run(o, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fairness: cannot build the runtime with asynchronous preemption: {e}");
            return Ok(1);
        }
    };
    print_table(human, o, &off, &on)?;
    human.flush()?;
    if let Some(mut csv) = csv {
        writeln!(csv, "{CSV_HEADER}")?;
        csv.write_all(csv_rows(o, false, &off).as_bytes())?;
        csv.write_all(csv_rows(o, true, &on).as_bytes())?;
        csv.flush()?;
        if let Some(CsvDest::File(p)) = &o.csv {
            writeln!(human, "\nCSV written to {}", p.display())?;
        }
    }
    Ok(0)
}

fn main() -> ExitCode {
    ExitCode::from(cli(std::env::args_os().skip(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Opts>, String> {
        parse_args(args.iter().map(OsString::from))
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e,
            Ok(o) => panic!("{args:?} parsed as {o:?}"),
        }
    }

    #[test]
    fn flags_parse_in_both_spellings() {
        let o = parse(&[
            "--procs",
            "1",
            "--loops=3",
            "--quantum",
            "500us",
            "--mode=migrate",
            "--duration",
            "1.5s",
            "--csv",
            "out.csv",
            "--no-progress",
        ])
        .unwrap()
        .unwrap();
        assert_eq!((o.procs, o.loops), (1, 3));
        assert_eq!(o.quantum, Duration::from_micros(500));
        assert_eq!(o.mode, PreemptMode::Migrate);
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert_eq!(o.csv, Some(CsvDest::File("out.csv".into())));
        assert!(!o.progress);
        let o = parse(&["--csv=-"]).unwrap().unwrap();
        assert_eq!(o.csv, Some(CsvDest::Stdout));
        assert!(o.progress);
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        for (args, needle) in [
            (&["--procs", "x"][..], "--procs: cannot parse \"x\""),
            (&["--procs", "0"], "--procs: 0 is out of range (1..=1024)"),
            (&["--procs", "1025"], "1025 is out of range"),
            (&["--loops", "-1"], "--loops: cannot parse \"-1\""),
            (&["--loops", "10001"], "10001 is out of range (1..=10000)"),
            (&["--quantum", "10"], "--quantum: cannot parse \"10\""),
            (&["--quantum", "0ms"], "--quantum: cannot parse \"0ms\""),
            (
                &["--duration", "1e400s"],
                "--duration: cannot parse \"1e400s\"",
            ),
            (
                &["--duration", "99999999999999999999s"],
                "99999999999999999999s",
            ),
            (
                &["--mode", "fast"],
                "expected affine or migrate, got \"fast\"",
            ),
            (&["--csv="], "--csv: expected a path"),
            (&["--csv"], "--csv needs a value"),
            (&["--bogus"], "unknown option \"--bogus\""),
            (&["--bogus=1"], "unknown option \"--bogus\""),
            (&["--no-progress=1"], "unknown option \"--no-progress\""),
        ] {
            let e = err(args);
            assert!(e.contains(needle), "{args:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn non_utf8_argument_is_an_error_not_a_panic() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'-', b'-', 0xff]);
        let e = parse_args([bad]).unwrap_err();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn bad_flags_exit_with_status_2() {
        assert_eq!(cli(["--procs", "zero"].map(OsString::from)), 2);
        assert_eq!(cli(["--duration"].map(OsString::from)), 2);
        assert_eq!(cli(["--help"].map(OsString::from)), 0);
    }

    #[test]
    fn unwritable_csv_path_fails_before_running() {
        let t = Instant::now();
        let code = cli(["--csv", "/nonexistent-dir/x.csv"].map(OsString::from));
        assert_eq!(code, 1);
        // It did not run the two 4 s runs first.
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    #[cfg_attr(
        not(feature = "preempt-signal"),
        ignore = "needs asynchronous preemption (the preempt-signal feature)"
    )]
    fn csv_has_a_row_per_loop_and_stable_columns() {
        let o = parse(&["--loops", "2", "--duration", "100ms", "--no-progress"])
            .unwrap()
            .unwrap();
        let r = run(&o, true).unwrap();
        let rows = csv_rows(&o, true, &r);
        let ncols = CSV_HEADER.split(',').count();
        let lines: Vec<&str> = rows.lines().collect();
        assert_eq!(lines.len(), 4, "{rows}");
        for l in &lines {
            assert_eq!(l.split(',').count(), ncols, "{l}");
        }
        assert!(
            lines[0].starts_with("2,2,10000,affine,0.1,on,loop,0,"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(",loop,1,"));
        assert!(lines[2].contains(",ticker,"));
        assert!(lines[3].contains(",run,"));
        let col = |line: &str, name: &str| -> String {
            let i = CSV_HEADER.split(',').position(|c| c == name).unwrap();
            line.split(',').nth(i).unwrap().to_string()
        };
        let ticks: u64 = col(lines[2], "ticks").parse().unwrap();
        assert_eq!(ticks, r.late_us.len());
        let total: u64 = col(lines[3], "iterations").parse().unwrap();
        assert_eq!(total, r.counts.iter().sum::<u64>());
    }

    #[test]
    fn progress_line_shows_counts_and_ticker() {
        let live = Live::new(10);
        live.counts[0].0.store(1_234_567, Relaxed);
        live.ticks.0.store(5, Relaxed);
        live.p50_us.0.store(40, Relaxed);
        live.p99_us.0.store(20_000, Relaxed);
        let l = progress_line(
            "async on ",
            Duration::from_secs(1),
            Duration::from_secs(4),
            &live,
        );
        assert!(l.starts_with("async on : 1.0/4.0 s  loops 1.23M 0"), "{l}");
        assert!(l.contains("(+2 more)"), "{l}");
        assert!(
            l.contains("ticker 5 wake-ups, late p50 40 µs p99 20.0 ms"),
            "{l}"
        );
        live.ticks.0.store(0, Relaxed);
        let l = progress_line("x", Duration::ZERO, Duration::from_secs(1), &live);
        assert!(l.ends_with("ticker 0 wake-ups"), "{l}");
    }
}
