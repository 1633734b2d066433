//! The preemption latency benchmark (hand-written, `harness = false`).
//!
//! ```text
//! cargo bench --bench latency                  # ~2 s per cell, ~45 s in all, then the Go twin
//! LATENCY_SECS=5 cargo bench --bench latency   # longer cells
//! LATENCY_QUICK=1 cargo bench --bench latency  # 0.3 s per cell: a CI smoke run
//! ```
//!
//! 1. **The grid.** For each quantum in 10 ms, 1 ms, 200 µs, 100 µs, each
//!    [`PreemptMode`], and asynchronous preemption off and on: one P runs a
//!    *hog* (a loop that calls nothing) beside a *ticker* (a goroutine that
//!    sleeps 1 ms in a loop and records how late each sleep returns). We
//!    report the ticker's lateness (p50/p99/p99.9/max, HDR histogram) and
//!    the hog's iterations/s relative to the async-off run at the same
//!    quantum and mode (off, the ticker starves and the hog has the P to
//!    itself).
//! 2. **The cost of one asynchronous preemption** (Migrate mode): 2 Ps, 2
//!    hogs and the ticker, quantum 100 µs, on vs a baseline with no
//!    preemption at all (async off, a one-hour quantum: sysmon sleeps).
//!    Lost hog time `(1 - on/off) × hogs × seconds`, divided by the
//!    preemptions, is the cost of one (signal, handler, trampoline, two
//!    switches, resume, and sysmon's own CPU on a 2-vCPU machine). The
//!    hogs also time their own pauses with the TSC (a gap between two reads
//!    is time the hog did not run), which gives the same cost without the
//!    noise of the machine's speed, and its distribution.
//!    **Two loops on one P** (issue 11's measure, both modes): 1 P, 2 hogs,
//!    no ticker, quantum 100 µs, async on vs off. Every preemption switches
//!    from one hog to the other, so every moment of the hogs' window in
//!    which neither ran (TSC) is the cost of preempting; per preemption,
//!    next to the floor.
//!    **Three hogs on two Ps** beside the ticker, 100 µs, both modes
//!    (issue 11's tail scenario, `fairness --procs 2 --loops 3`): ticker
//!    p99 and both Ps' throughput, on vs off.
//!    **The floor**, measured right after (and, for the two-loops rows,
//!    in between their segments, which is what they are judged by: the
//!    VM's floor moves by a third from one minute to the next): the same hog on a plain thread
//!    (no runtime) while another thread sends it a signal with an empty
//!    handler every `FLOOR_PERIOD` (SIGUSR2: SIGURG is gosched's), vs no
//!    signals, interleaved the same way. What a signal alone costs a
//!    spinning thread on this machine (a VM: 6-17 µs seen) is the floor a
//!    preemption cannot beat; the target is at most 1.5× it.
//!    **ThreadAffine's floor besides**: a ThreadAffine preemption also
//!    switches OS threads (the preempted goroutine keeps its thread, which
//!    runs nothing else meanwhile), so two plain threads hand one CPU back
//!    and forth as its hand-offs do (pin the woken thread to the CPU, futex
//!    wake and wait, the woken one unpins itself), and, for comparison,
//!    while both stay pinned (the bare switch): signal + hand-off is what
//!    that mode cannot beat. With more threads than CPUs, before the
//!    "2 Ps, 3 hogs" rows: three plain threads take turns on two CPUs
//!    every 100 µs with that hand-off and no signal; the share of the CPUs'
//!    time they run bounds ThreadAffine's throughput there.
//!    **The timer floor**, in between the "2 Ps, 3 hogs" rows' segments:
//!    with every CPU busy, slice timers end the slices, so each signal is
//!    a timer's, fired on the hog's own CPU. The same hog on a plain thread
//!    with its own one-shot timer (`SIGEV_THREAD_ID`), re-armed from its
//!    handler every `FLOOR_PERIOD` as a slice timer is armed once per
//!    slice, vs no timer. On this VM that costs about twice a signal sent
//!    from the other CPU; the row prints the throughput the measured count
//!    of such signals alone leaves (and, for ThreadAffine, the rotation
//!    floor's hand-offs besides).
//! 3. **The Go twin** (`benches/go/latency`, one P, Go's fixed 10 ms
//!    quantum), run side by side when `go` is installed (`LATENCY_GO=0`
//!    skips it; quick runs skip it unless `LATENCY_GO=1`).
//!
//! The machine is shared and its speed drifts, so each cell is split into
//! segments of about 0.5 s, and the off and on runs of a cell alternate
//! segment by segment (off, on, on, off, ...): drift hits both sides alike.
//! Each segment is a fresh runtime. The table is printed and written as CSV
//! to `target/latency.csv` (the path is printed). Each cell's ticker
//! lateness also goes to `target/latency/`: an HdrHistogram percentile
//! distribution per run (`<cell>-off.hgrm`, `<cell>-on.hgrm`, in µs) and a
//! percentile-spectrum plot of both (`<cell>.svg`), plus `grid.svg` with
//! every async-on cell of part 1. Without `--bench` on the command line
//! (`cargo test --benches`) it runs the quick variant.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::{Builder, PreemptMode};
use hdrhistogram::Histogram;

#[path = "common/hdr.rs"]
mod hdr;
#[path = "common/svg.rs"]
mod svg;

const TICK: Duration = Duration::from_millis(1);
const QUANTA: [Duration; 4] = [
    Duration::from_millis(10),
    Duration::from_millis(1),
    Duration::from_micros(200),
    Duration::from_micros(100),
];
const MODES: [PreemptMode; 2] = [PreemptMode::ThreadAffine, PreemptMode::Migrate];
/// Hog iterations between two TSC reads (~0.1-0.2 µs of work).
const CHUNK: u64 = 64;
/// A TSC gap longer than this between two chunks is a pause: the hog's
/// thread did not run it (interrupt, preemption, host).
const PAUSE: Duration = Duration::from_micros(1);
/// An async-off hog that ran less than this share of its wall time was
/// held off its CPU by other processes: the row is flagged as unreliable.
const BUSY: f64 = 0.95;
/// The quantum of the baseline of part 2: none to speak of, so sysmon stays
/// asleep. (With async preemption off and a short quantum, sysmon keeps
/// re-checking the overrunning Ps; on 2 vCPUs that steals from 2 hogs.)
const NO_QUANTUM: Duration = Duration::from_secs(3600);
/// Target segment length; cells are cut into segments this long.
const SEGMENT: Duration = Duration::from_millis(500);

/// Reads the time-stamp counter: a single instruction, no call.
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions; every x86-64 CPU has it (the crate
    // builds only for x86-64).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per second, measured against `Instant` over 50 ms.
fn tsc_hz() -> f64 {
    let (t, c) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(50));
    (rdtsc() - c) as f64 / t.elapsed().as_secs_f64()
}

/// CPU seconds used by the process so far (user + system, every thread).
fn process_cpu() -> f64 {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF needs nothing else.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("histogram bounds")
}

/// What one hog saw.
struct HogOut {
    iters: u64,
    secs: f64,
    /// TSC ticks spent in pauses, and each pause's length in ticks.
    paused: u64,
    pauses: Histogram<u64>,
}

/// The hog: a loop that calls nothing (`black_box` is an empty asm barrier,
/// RDTSC one instruction), so only asynchronous preemption can take its P.
/// It records its own pauses (TSC gaps longer than `pause` ticks).
fn hog(stop: &AtomicBool, pause: u64) -> HogOut {
    let mut pauses = histogram();
    let t0 = Instant::now();
    let (mut x, mut iters, mut paused) = (1u64, 0u64, 0u64);
    let mut last = rdtsc();
    while !stop.load(Relaxed) {
        for _ in 0..CHUNK {
            x = black_box(x)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        iters += CHUNK;
        let now = rdtsc();
        let gap = now.wrapping_sub(last);
        last = now;
        if gap > pause {
            paused += gap;
            pauses.saturating_record(gap);
        }
    }
    black_box(x);
    HogOut {
        iters,
        secs: t0.elapsed().as_secs_f64(),
        paused,
        pauses,
    }
}

#[derive(Clone, Copy)]
struct Setup {
    name: &'static str,
    procs: usize,
    hogs: usize,
    /// A 1 ms sleep ticker runs beside the hogs.
    ticker: bool,
}

const ONE_P: Setup = Setup {
    name: "1p_1hog",
    procs: 1,
    hogs: 1,
    ticker: true,
};
const TWO_P: Setup = Setup {
    name: "2p_2hogs",
    procs: 2,
    hogs: 2,
    ticker: true,
};
/// Issue 11's tail scenario (`fairness --procs 2 --loops 3`): three hogs
/// time-sliced on two Ps beside the ticker.
const TWO_P_THREE: Setup = Setup {
    name: "2p_3hogs",
    procs: 2,
    hogs: 3,
    ticker: true,
};
/// Issue 11's measure of what one preemption costs: two loops on one P and
/// nothing else, so every preemption switches from one hog to the other
/// and all time neither hog runs is overhead.
const ONE_P_TWO: Setup = Setup {
    name: "1p_2hogs",
    procs: 1,
    hogs: 2,
    ticker: false,
};

/// Everything measured for one (setup, quantum, mode, async) cell, summed
/// over its segments.
struct Acc {
    late: Histogram<u64>,
    pauses: Histogram<u64>,
    iters: u64,
    hog_secs: f64,
    paused_ticks: u64,
    /// Per segment, the longest-running hog's seconds (the first to start
    /// and about the last to stop): the window the hogs shared.
    window: f64,
    wall: f64,
    /// CPU seconds the whole process used (every thread).
    cpu: f64,
    preempt_async: u64,
    preempt_coop: u64,
    preempt_refused: u64,
    switches: u64,
}

impl Acc {
    fn new() -> Acc {
        Acc {
            late: histogram(),
            pauses: histogram(),
            iters: 0,
            hog_secs: 0.0,
            paused_ticks: 0,
            window: 0.0,
            wall: 0.0,
            cpu: 0.0,
            preempt_async: 0,
            preempt_coop: 0,
            preempt_refused: 0,
            switches: 0,
        }
    }

    /// Iterations per second per hog.
    fn rate(&self) -> f64 {
        self.iters as f64 / self.hog_secs
    }

    /// CPUs the process kept busy on average: about the number of hogs
    /// when the runtime adds nothing; more means threads burning CPU.
    fn cores(&self) -> f64 {
        self.cpu / self.wall
    }

    /// Fraction of its wall time the hog was running (TSC gaps removed).
    fn running(&self, hz: f64) -> f64 {
        1.0 - self.paused_ticks as f64 / hz / self.hog_secs
    }

    /// Iterations per second of the hogs' windows, all hogs together: the
    /// throughput of the Ps they share.
    fn window_rate(&self) -> f64 {
        self.iters as f64 / self.window
    }

    /// CPU seconds of the hogs' windows on `procs` Ps in which no hog ran:
    /// the time the Ps spent on anything but the hogs (the hogs' seconds
    /// minus their pauses is the time they ran). With more hogs than Ps.
    fn idle_secs(&self, hz: f64, procs: usize) -> f64 {
        procs as f64 * self.window - (self.hog_secs - self.paused_ticks as f64 / hz)
    }

    /// Seconds lost per asynchronous preemption by TSC: `self` (on) idled
    /// this much more than `off` did in as long a window, over the count.
    fn lost_per_preemption(&self, off: &Acc, hz: f64, procs: usize) -> f64 {
        let n = self.preempt_async.max(1) as f64;
        (self.idle_secs(hz, procs) - off.idle_secs(hz, procs) * self.window / off.window) / n
    }
}

/// One segment: a fresh runtime, `setup.hogs` hogs and the ticker for `secs`.
fn segment(
    setup: Setup,
    quantum: Duration,
    mode: PreemptMode,
    async_on: bool,
    secs: Duration,
    pause: u64,
    acc: &mut Acc,
) {
    let b = Builder::new()
        .procs(setup.procs)
        .preempt_quantum(quantum)
        .preempt_mode(mode)
        .async_preempt(async_on);
    // SAFETY: the goroutines are no-call hogs (register arithmetic, an atomic
    // load, rdtsc, their own histogram) and a ticker that sleeps and records
    // into its own histogram: no thread-locals, no stdout; all printing
    // happens after block_on, on the bench's main thread.
    let rt = unsafe { b.allow_migrate() }.build().expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let cpu0 = process_cpu();
    let (hogs, late) = rt.block_on(|| {
        let hogs: Vec<_> = (0..setup.hogs)
            .map(|_| {
                let stop = stop.clone();
                gosched::spawn(move || hog(&stop, pause))
            })
            .collect();
        let ticker = setup.ticker.then(|| {
            let stop = stop.clone();
            gosched::spawn(move || {
                let mut h = histogram();
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    gosched::sleep(TICK);
                    h.saturating_record(t.elapsed().saturating_sub(TICK).as_nanos() as u64);
                }
                h
            })
        });
        // A plain thread ends the segment: with preemption off no goroutine
        // gets the P back before the hog stops.
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(secs);
                stop.store(true, Relaxed);
            })
        };
        let hogs: Vec<HogOut> = hogs
            .into_iter()
            .map(|h| h.join().expect("hog panicked"))
            .collect();
        let late = ticker.map_or_else(histogram, |t| t.join().expect("ticker panicked"));
        stopper.join().expect("stopper panicked");
        (hogs, late)
    });
    acc.wall += t.elapsed().as_secs_f64();
    acc.cpu += process_cpu() - cpu0;
    acc.window += hogs.iter().map(|h| h.secs).fold(0.0, f64::max);
    for h in hogs {
        acc.iters += h.iters;
        acc.hog_secs += h.secs;
        acc.paused_ticks += h.paused;
        acc.pauses.add(&h.pauses).expect("histogram add");
    }
    acc.late.add(&late).expect("histogram add");
    let s = rt.stats();
    acc.preempt_async += s.preempt_async;
    acc.preempt_coop += s.preempt_coop;
    acc.preempt_refused += s.preempt_refused;
    acc.switches += s.switches;
}

/// Runs a cell with async preemption off and on, interleaved by segment.
/// Returns (off, on).
fn cell_pair(
    setup: Setup,
    quantum: Duration,
    off_quantum: Duration,
    mode: PreemptMode,
    cell: Duration,
    pause: u64,
) -> (Acc, Acc) {
    cell_pair_with(setup, [off_quantum, quantum], mode, cell, pause, None)
}

/// `cell`'s segments: how many, and how long each.
fn segments(cell: Duration) -> (u32, Duration) {
    let n = ((cell.as_secs_f64() / SEGMENT.as_secs_f64()).round() as u32).max(1);
    (n, cell / n)
}

/// `cell_pair` with quanta [off, on]; with `floor`, each round of segments
/// also runs a floor segment pair first (floor off, floor on, cell off,
/// cell on; the next round in reverse), so that a ratio of the two sees
/// the same machine.
fn cell_pair_with(
    setup: Setup,
    [off_quantum, quantum]: [Duration; 2],
    mode: PreemptMode,
    cell: Duration,
    pause: u64,
    mut floor: Option<&mut FloorAcc>,
) -> (Acc, Acc) {
    if floor.is_some() {
        install_floor_handler();
    }
    let (n, seg) = segments(cell);
    let (mut off, mut on) = (Acc::new(), Acc::new());
    for k in 0..n {
        // off, on, on, off, off, on, ...: neither side always goes first.
        let order = if k % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        if let Some(floor) = floor.as_deref_mut() {
            for signal in order {
                floor.segment(signal, seg, pause);
            }
        }
        for async_on in order {
            let acc = if async_on { &mut on } else { &mut off };
            let q = if async_on { quantum } else { off_quantum };
            segment(setup, q, mode, async_on, seg, pause, acc);
        }
    }
    (off, on)
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{:.2} µs", ns as f64 / 1e3),
        10_000..=999_999 => format!("{:.0} µs", ns as f64 / 1e3),
        1_000_000..=99_999_999 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.0} ms", ns as f64 / 1e6),
    }
}

fn fmt_quantum(q: Duration) -> String {
    if q >= NO_QUANTUM {
        "none".into()
    } else if q >= Duration::from_millis(1) {
        format!("{}ms", q.as_millis())
    } else {
        format!("{}us", q.as_micros())
    }
}

fn mode_name(m: PreemptMode) -> &'static str {
    match m {
        PreemptMode::Migrate => "Migrate",
        _ => "ThreadAffine",
    }
}

/// One row of the table and the CSV.
struct Row<'a> {
    setup: Setup,
    quantum: Duration,
    mode: PreemptMode,
    async_on: bool,
    acc: &'a Acc,
    off: &'a Acc,
}

/// Prints (and appends to `csv`) the async-off and async-on rows of one
/// cell; `quanta` is the quantum each ran with.
fn print_pair(
    setup: Setup,
    quanta: [Duration; 2],
    mode: PreemptMode,
    (off, on): (&Acc, &Acc),
    hz: f64,
    csv: &mut String,
) {
    for ((async_on, acc), quantum) in [(false, off), (true, on)].into_iter().zip(quanta) {
        let row = Row {
            setup,
            quantum,
            mode,
            async_on,
            acc,
            off,
        };
        row.print(hz);
        row.csv(hz, csv);
    }
}

const HEADER: &str = "setup,quantum_us,mode,async,hog_secs,ticks,p50_us,p99_us,p999_us,max_us,\
hog_iters_per_s,thr_vs_off,hog_running,running_vs_off,cpu_cores,preempt_async,preempt_coop,preempt_refused,switches";

impl Row<'_> {
    fn print(&self, hz: f64) {
        let a = self.acc;
        let h = &a.late;
        println!(
            "{:>7} {:<12} {:<5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10.4e} {:>7.3} {:>7.2}% {:>7.3} {:>5.2} {:>8} {:>8}{}",
            fmt_quantum(self.quantum),
            mode_name(self.mode),
            if self.async_on { "on" } else { "off" },
            h.len(),
            fmt_ns(h.value_at_quantile(0.5)),
            fmt_ns(h.value_at_quantile(0.99)),
            fmt_ns(h.value_at_quantile(0.999)),
            fmt_ns(h.max()),
            a.rate(),
            a.rate() / self.off.rate(),
            100.0 * a.running(hz),
            a.running(hz) / self.off.running(hz),
            a.cores(),
            a.preempt_async,
            a.preempt_refused,
            if self.off.running(hz) < BUSY { "  (busy machine)" } else { "" },
        );
    }

    fn csv(&self, hz: f64, out: &mut String) {
        let a = self.acc;
        let h = &a.late;
        let us = |ns: u64| ns as f64 / 1e3;
        writeln!(
            out,
            "{},{},{},{},{:.3},{},{:.1},{:.1},{:.1},{:.1},{:.6e},{:.4},{:.4},{:.4},{:.3},{},{},{},{}",
            self.setup.name,
            self.quantum.as_micros(),
            mode_name(self.mode),
            if self.async_on { "on" } else { "off" },
            a.hog_secs,
            h.len(),
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            a.rate(),
            a.rate() / self.off.rate(),
            a.running(hz),
            a.running(hz) / self.off.running(hz),
            a.cores(),
            a.preempt_async,
            a.preempt_coop,
            a.preempt_refused,
            a.switches,
        )
        .expect("write to String");
    }
}

/// Files written under `plot_dir()`, and the first error.
#[derive(Default)]
struct Files {
    written: usize,
    error: Option<std::io::Error>,
}

impl Files {
    fn record(&mut self, r: std::io::Result<usize>) {
        match r {
            Ok(n) => self.written += n,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// A target from the issues, checked against a measurement.
struct Target {
    what: String,
    goal: String,
    got: String,
    met: bool,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Runs the Go twin; returns its CSV fields (ticks, p50, p99, p99.9, max in
/// µs, iterations/s, ratio), printing its output.
fn run_go(secs: Duration) -> Option<Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/go/latency");
    let out = std::process::Command::new("go")
        .args(["run", "."])
        .current_dir(&dir)
        .env("LATENCY_SECS", format!("{}", secs.as_secs_f64()))
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!(
                "go twin failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            println!("go twin not run (`go`: {e})");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = None;
    for line in text.lines() {
        match line.strip_prefix("CSV ") {
            Some(f) => fields = Some(f.split(',').map(str::to_string).collect()),
            None => println!("  {line}"),
        }
    }
    fields
}

/// Where the per-cell histograms and plots go.
fn plot_dir() -> PathBuf {
    target_dir().join("latency")
}

/// A file-name stem for a cell: `1p_1hog-10ms-ThreadAffine`.
fn cell_stem(setup: Setup, quantum: Duration, mode: PreemptMode) -> String {
    format!(
        "{}-{}-{}",
        setup.name,
        fmt_quantum(quantum),
        mode_name(mode)
    )
}

/// A value in ns as an axis label: "1 µs", "10 ms", "1 s".
fn axis_ns(ns: f64) -> String {
    match ns {
        v if v >= 1e9 => format!("{} s", v / 1e9),
        v if v >= 1e6 => format!("{} ms", v / 1e6),
        v if v >= 1e3 => format!("{} µs", v / 1e3),
        v => format!("{v} ns"),
    }
}

/// The spectrum series of a ticker lateness histogram (ns).
fn series(label: String, h: &Histogram<u64>) -> svg::Series {
    svg::Series {
        label,
        points: hdr::spectrum_points(h, 1.0),
        count: h.len(),
    }
}

/// The percentile spectrum of ticker lateness for `series`.
fn lateness_plot(title: &str, series: &[svg::Series]) -> String {
    svg::percentile_spectrum(title, "ticker lateness (sleep 1 ms)", series, 1e3, &axis_ns)
}

/// Writes a cell's histograms (`<stem>-off.hgrm`, `<stem>-on.hgrm`, µs)
/// and its plot (`<stem>.svg`); returns how many files it wrote.
fn write_cell(
    setup: Setup,
    quanta: [Duration; 2],
    mode: PreemptMode,
    (off, on): (&Acc, &Acc),
) -> std::io::Result<usize> {
    let dir = plot_dir();
    std::fs::create_dir_all(&dir)?;
    let stem = cell_stem(setup, quanta[1], mode);
    for (name, acc) in [("off", off), ("on", on)] {
        let text = hdr::percentile_distribution(&acc.late, 1e3);
        std::fs::write(dir.join(format!("{stem}-{name}.hgrm")), text)?;
    }
    let title = format!(
        "{}: ticker lateness, {} hog(s) on {} P(s), {} quantum {}",
        setup.name,
        setup.hogs,
        setup.procs,
        mode_name(mode),
        fmt_quantum(quanta[1])
    );
    let plot = lateness_plot(
        &title,
        &[
            series(
                format!("async off (quantum {})", fmt_quantum(quanta[0])),
                &off.late,
            ),
            series("async on".into(), &on.late),
        ],
    );
    std::fs::write(dir.join(format!("{stem}.svg")), plot)?;
    Ok(3)
}

/// Period of the floor's signals: the preemption rate of a 100 µs quantum.
const FLOOR_PERIOD: Duration = Duration::from_micros(100);

/// How a floor segment interrupts its hog.
#[derive(Clone, Copy, Default, PartialEq)]
enum FloorSignal {
    /// Another thread sends SIGUSR2 every `FLOOR_PERIOD` (`tgkill`): what
    /// sysmon's signal costs, sent from a CPU of its own.
    #[default]
    Sent,
    /// The hog's own one-shot timer (`SIGEV_THREAD_ID`, SIGUSR1), re-armed
    /// from its handler for `FLOOR_PERIOD`: what a slice timer costs, armed
    /// once per slice and fired on the goroutine's own CPU.
    Timer,
}

extern "C" fn empty_handler(_: libc::c_int) {}

/// The timer floor's kernel timer id (-1: none) and how often it fired.
static FLOOR_TIMER: AtomicI32 = AtomicI32::new(-1);
static FLOOR_FIRED: AtomicU64 = AtomicU64::new(0);

/// Arms kernel timer `id` (one-shot) for `FLOOR_PERIOD`. Async-signal-safe
/// (one system call).
fn arm_floor_timer(id: i32) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: FLOOR_PERIOD.as_nanos() as libc::c_long,
        },
    };
    // SAFETY: timer_settime reads `spec` and writes nothing (null old
    // value); an id that is no longer valid gets EINVAL.
    unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &spec as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    };
}

/// The timer floor's SIGUSR1 handler: count, re-arm. It runs on the hog's
/// thread, the only one that sets `FLOOR_TIMER`, so the id it reads is live
/// (the thread clears it before deleting the timer).
extern "C" fn rearm_handler(_: libc::c_int) {
    FLOOR_FIRED.fetch_add(1, Relaxed);
    let id = FLOOR_TIMER.load(Relaxed);
    if id >= 0 {
        arm_floor_timer(id);
    }
}

/// Runs the hog on the calling thread with its own `FloorSignal::Timer`
/// timer until `stop`; returns the hog's result and the signals received.
fn hog_under_timer(stop: &AtomicBool, pause: u64) -> (HogOut, u64) {
    // SAFETY: sigevent is plain data; zeroed is a valid "no notification"
    // value that the fields below complete.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_notify = libc::SIGEV_THREAD_ID;
    ev.sigev_signo = libc::SIGUSR1;
    // SAFETY: gettid has no preconditions.
    ev.sigev_notify_thread_id = unsafe { libc::gettid() };
    let mut id: libc::c_int = -1;
    // SAFETY: timer_create reads `ev` and writes the new id into `id`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            libc::CLOCK_MONOTONIC,
            &mut ev as *mut libc::sigevent,
            &mut id as *mut libc::c_int,
        )
    };
    if r != 0 || id < 0 {
        return (hog(stop, pause), 0);
    }
    let fired = FLOOR_FIRED.load(Relaxed);
    FLOOR_TIMER.store(id, Relaxed);
    arm_floor_timer(id);
    let out = hog(stop, pause);
    FLOOR_TIMER.store(-1, Relaxed);
    // SAFETY: deletes the timer created above; a signal still pending
    // finds FLOOR_TIMER cleared.
    unsafe { libc::syscall(libc::SYS_timer_delete, id) };
    (out, FLOOR_FIRED.load(Relaxed) - fired)
}

/// One floor segment: the hog on a plain thread for `secs`, interrupted
/// (`signal`) as `kind` says every `FLOOR_PERIOD`, or not at all. Returns
/// the hog's result and the signals it received.
fn floor_segment(kind: FloorSignal, signal: bool, secs: Duration, pause: u64) -> (HogOut, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let hog_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).expect("send tid");
            if signal && kind == FloorSignal::Timer {
                hog_under_timer(&stop, pause)
            } else {
                (hog(&stop, pause), 0)
            }
        })
    };
    let tid = rx.recv().expect("hog tid");
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed() < secs {
        std::thread::sleep(if kind == FloorSignal::Sent {
            FLOOR_PERIOD
        } else {
            secs
        });
        if signal && kind == FloorSignal::Sent {
            // SAFETY: tgkill to a live thread of this process (the hog runs
            // until `stop`), with a signal whose handler is installed.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR2) };
            sent += 1;
        }
    }
    stop.store(true, Relaxed);
    let (out, fired) = hog_thread.join().expect("floor hog panicked");
    (out, sent + fired)
}

/// Installs the floors' handlers: an empty one for SIGUSR2, the timer
/// floor's re-arming one for SIGUSR1.
fn install_floor_handler() {
    let install = |sig: libc::c_int, handler: extern "C" fn(libc::c_int)| {
        // SAFETY: installs a handler for a signal nothing else in this
        // benchmark uses; both handlers are async-signal-safe (an atomic
        // add and a system call at most).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    };
    install(libc::SIGUSR2, empty_handler);
    install(libc::SIGUSR1, rearm_handler);
}

/// Floor segments with and without signals, summed.
#[derive(Default)]
struct FloorAcc {
    kind: FloorSignal,
    /// (iterations, seconds, paused ticks) without signals and with.
    off: (u64, f64, u64),
    on: (u64, f64, u64),
    sent: u64,
}

impl FloorAcc {
    fn new(kind: FloorSignal) -> FloorAcc {
        FloorAcc {
            kind,
            ..FloorAcc::default()
        }
    }

    fn segment(&mut self, signal: bool, seg: Duration, pause: u64) {
        let (h, n) = floor_segment(self.kind, signal, seg, pause);
        let acc = if signal { &mut self.on } else { &mut self.off };
        acc.0 += h.iters;
        acc.1 += h.secs;
        acc.2 += h.paused;
        self.sent += n;
    }

    /// Seconds of hog time lost per signal, from throughput and from the
    /// hog's own pause time (TSC); and the count.
    fn result(&self, hz: f64) -> (f64, f64, u64) {
        let (off, on) = (self.off, self.on);
        let n = self.sent.max(1) as f64;
        let thr = (on.0 as f64 / on.1) / (off.0 as f64 / off.1);
        let lost_tsc = on.2 as f64 / hz - off.2 as f64 / hz * (on.1 / off.1);
        ((1.0 - thr) * on.1 / n, lost_tsc / n, self.sent)
    }
}

/// The floor (see the module docs): seconds of hog time lost per signal,
/// from throughput and from the hog's own pause time (TSC); and the count.
fn signal_floor(cell: Duration, pause: u64, hz: f64) -> (f64, f64, u64) {
    install_floor_handler();
    let (nseg, seg) = segments(cell);
    let mut acc = FloorAcc::default();
    for i in 0..nseg * 2 {
        // off, on, on, off, ...: drift hits both sides alike.
        acc.segment((i % 4 == 1) || (i % 4 == 2), seg, pause);
    }
    acc.result(hz)
}

/// Futex wait on `key` while it is 0, then consume it.
fn futex_wait(key: &AtomicU32) {
    while key.swap(0, Ordering::Acquire) == 0 {
        // SAFETY: FUTEX_WAIT on a live, aligned u32; it only reads it.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                key.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0,
                std::ptr::null::<libc::timespec>(),
            )
        };
    }
}

/// Set `key` and wake its waiter.
fn futex_wake(key: &AtomicU32) {
    key.store(1, Ordering::Release);
    // SAFETY: FUTEX_WAKE on a live u32 touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            key.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
}

/// Restricts thread `tid` (0: the caller) to `cpus`.
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (CPU
    // numbers come from the kernel); sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The CPUs this thread may run on.
fn own_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, filled by the kernel.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        set
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads bit `c` of the set, inside it.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// The CPU the calling thread runs on.
fn this_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    unsafe { libc::sched_getcpu() }.max(0) as usize
}

/// ThreadAffine's floor with more threads than CPUs, without signals: three
/// plain threads take turns on two CPUs, each running `slice` then handing
/// its CPU to the thread that waited longest as a ThreadAffine preemption
/// does (pin it to this CPU, futex wake, futex wait; the woken one widens
/// its affinity again). Returns the share of the two CPUs' time spent in
/// the threads' slices (1.0: hand-offs cost nothing), or None with fewer
/// than two CPUs.
fn rotation_floor(slice: Duration, secs: Duration) -> Option<f64> {
    const THREADS: usize = 3;
    let all = own_cpus();
    if all.len() < 2 {
        return None;
    }
    let keys: Arc<[AtomicU32; THREADS]> = Arc::new(Default::default());
    let tids: Arc<[AtomicI32; THREADS]> = Arc::new(Default::default());
    let stop = Arc::new(AtomicBool::new(false));
    let slices = Arc::new(AtomicU64::new(0));
    // Who waits for a CPU, longest first: the last thread, to begin with.
    let waiting = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from([
        THREADS - 1,
    ])));
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|me| {
            let (keys, tids, stop, slices, waiting, all) = (
                keys.clone(),
                tids.clone(),
                stop.clone(),
                slices.clone(),
                waiting.clone(),
                all.clone(),
            );
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tids[me].store(unsafe { libc::gettid() }, Relaxed);
                if me == THREADS - 1 {
                    futex_wait(&keys[me]);
                }
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    while t.elapsed() < slice {
                        std::hint::spin_loop();
                    }
                    slices.fetch_add(1, Relaxed);
                    let next = {
                        let mut q = waiting.lock().expect("rotation queue");
                        q.push_back(me);
                        q.pop_front().expect("a thread waits")
                    };
                    while tids[next].load(Relaxed) == 0 {
                        std::thread::yield_now();
                    }
                    set_affinity(tids[next].load(Relaxed), &[this_cpu()]);
                    futex_wake(&keys[next]);
                    futex_wait(&keys[me]);
                    set_affinity(0, &all);
                }
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Relaxed);
    let elapsed = start.elapsed();
    for k in keys.iter() {
        futex_wake(k);
    }
    for t in threads {
        t.join().expect("rotation thread panicked");
    }
    let ran = slices.load(Relaxed) as f64 * slice.as_secs_f64();
    Some(ran / (2.0 * elapsed.as_secs_f64()))
}

/// ThreadAffine's own floor: µs per thread switch when two plain threads
/// hand one CPU back and forth as a ThreadAffine preemption does (the one
/// leaving pins the other to its CPU and wakes it with a futex, then
/// waits; the woken one widens its affinity again), and, for comparison,
/// when both stay pinned to that CPU (the bare switch, no affinity calls).
fn handoff_floor() -> (f64, f64) {
    const SWITCHES: u32 = 20_000;
    let all = own_cpus();
    let run = |pin_each: bool| -> f64 {
        let keys = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let tids = Arc::new([AtomicI32::new(0), AtomicI32::new(0)]);
        let cpu = this_cpu();
        let start = Instant::now();
        let threads: Vec<_> = (0..2usize)
            .map(|me| {
                let (keys, tids, all) = (keys.clone(), tids.clone(), all.clone());
                std::thread::spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tids[me].store(unsafe { libc::gettid() }, Relaxed);
                    set_affinity(0, &[cpu]);
                    while tids[1 - me].load(Relaxed) == 0 {
                        std::thread::yield_now();
                    }
                    if me == 1 {
                        futex_wait(&keys[1]);
                    }
                    for _ in 0..SWITCHES / 2 {
                        if pin_each {
                            set_affinity(tids[1 - me].load(Relaxed), &[this_cpu()]);
                        }
                        futex_wake(&keys[1 - me]);
                        futex_wait(&keys[me]);
                        if pin_each {
                            set_affinity(0, &all);
                        }
                    }
                    if me == 0 {
                        futex_wake(&keys[1]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("hand-off thread panicked");
        }
        start.elapsed().as_secs_f64() / f64::from(SWITCHES)
    };
    let (mut handoff, mut bare) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        handoff = handoff.min(run(true));
        bare = bare.min(run(false));
    }
    (handoff, bare)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let quick = std::env::var("LATENCY_QUICK").is_ok_and(|v| v == "1") || !bench;
    let cell = match std::env::var("LATENCY_SECS") {
        Ok(v) => match v
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
        {
            Some(d) if !d.is_zero() => d,
            _ => {
                eprintln!("latency: LATENCY_SECS={v:?}: expected a positive number of seconds");
                std::process::exit(2);
            }
        },
        Err(_) if quick => Duration::from_millis(300),
        Err(_) => Duration::from_secs(2),
    };
    let go = match std::env::var("LATENCY_GO").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => !quick,
    };
    let hz = tsc_hz();
    let pause = (PAUSE.as_secs_f64() * hz) as u64;
    let (nseg, seg) = segments(cell);
    println!(
        "gosched preemption latency: a no-call hog beside a {TICK:?} sleep ticker, {cell:?} per cell \
         ({nseg} segment(s) of {seg:?}, async off/on interleaved); load average {}",
        loadavg()
    );
    println!(
        "thr = hog iterations/s vs the async-off run; running = share of wall time the hog ran (TSC gaps \
         removed), run = that vs off; cpus = CPUs the process kept busy (ideal: the number of hogs); rows marked (busy machine) had an async-off hog running < {:.0}%\n",
        BUSY * 100.0
    );
    println!("1) one P, one hog + ticker: ticker lateness and hog throughput");
    println!(
        "{:>7} {:<12} {:<5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>8} {:>7} {:>5} {:>8} {:>8}",
        "quantum",
        "mode",
        "async",
        "ticks",
        "p50",
        "p99",
        "p99.9",
        "max",
        "hog it/s",
        "thr",
        "running",
        "run",
        "cpus",
        "async#",
        "refused"
    );
    let mut csv = String::from(HEADER);
    csv.push('\n');
    let mut targets = Vec::new();
    let mut files = Files::default();
    // Async-on ticker lateness of every cell of part 1, for grid.svg.
    let mut grid = Vec::new();
    // Lost hog seconds per preemption in the 1-P, 100 µs, Migrate cell
    // (sysmon has the other vCPU to itself there): (throughput, TSC).
    let mut one_p_cost = None;
    for q in QUANTA {
        for mode in MODES {
            let (off, on) = cell_pair(ONE_P, q, q, mode, cell, pause);
            if q == Duration::from_micros(100) && mode == PreemptMode::Migrate {
                let n = on.preempt_async.max(1) as f64;
                let thr = on.rate() / off.rate();
                let run = on.running(hz) / off.running(hz);
                one_p_cost = Some(((1.0 - thr) * on.hog_secs / n, (1.0 - run) * on.hog_secs / n));
            }
            print_pair(ONE_P, [q, q], mode, (&off, &on), hz, &mut csv);
            files.record(write_cell(ONE_P, [q, q], mode, (&off, &on)));
            grid.push(series(
                format!("{} {}", fmt_quantum(q), mode_name(mode)),
                &on.late,
            ));
            let p99 = Duration::from_nanos(on.late.value_at_quantile(0.99));
            let thr = on.rate() / off.rate();
            let run = on.running(hz) / off.running(hz);
            let name = format!("{} {}", fmt_quantum(q), mode_name(mode));
            // At 10 ms, issue 11's targets for wake-up preemption (the
            // ticker preempts the hog at every tick: ~1,000 preemptions a
            // second where the first round's <= 11 ms and >= 0.99 were
            // set for ~100, one per quantum).
            let lat_goal = match q.as_micros() {
                10_000 => Some(Duration::from_micros(200)),
                1_000 => Some(Duration::from_micros(1500)),
                100 if mode == PreemptMode::Migrate => Some(Duration::from_micros(250)),
                _ => None,
            };
            if let Some(goal) = lat_goal {
                targets.push(Target {
                    what: format!("ticker p99, {name}"),
                    goal: format!("<= {}", fmt_ns(goal.as_nanos() as u64)),
                    got: fmt_ns(p99.as_nanos() as u64),
                    met: p99 <= goal,
                });
            }
            let thr_goal = match q.as_micros() {
                10_000 => Some(0.97),
                100 => Some(0.90),
                _ => None,
            };
            if let Some(goal) = thr_goal {
                targets.push(Target {
                    what: format!("hog throughput on/off, {name}"),
                    goal: format!(">= {goal:.2}"),
                    got: format!("{thr:.3} (running {run:.3})"),
                    met: thr >= goal,
                });
            }
        }
    }

    let q = Duration::from_micros(100);
    let mode = PreemptMode::Migrate;
    println!(
        "\n2) cost of one asynchronous preemption: Migrate, 2 Ps, 2 hogs + ticker, quantum 100us"
    );
    let (off, on) = cell_pair(TWO_P, q, NO_QUANTUM, mode, cell, pause);
    print_pair(TWO_P, [NO_QUANTUM, q], mode, (&off, &on), hz, &mut csv);
    files.record(write_cell(TWO_P, [NO_QUANTUM, q], mode, (&off, &on)));
    let n = on.preempt_async.max(1) as f64;
    let thr = on.rate() / off.rate();
    // Per hog, seconds lost = (1 - thr) × its seconds; summed over hogs.
    let lost_thr = (1.0 - thr) * on.hog_secs;
    let lost_tsc =
        on.paused_ticks as f64 / hz - off.paused_ticks as f64 / hz * (on.hog_secs / off.hog_secs);
    let per_thr = lost_thr / n;
    let per_tsc = lost_tsc / n;
    let us = |s: f64| s * 1e6;
    let p = |q: f64| fmt_ns((on.pauses.value_at_quantile(q) as f64 / hz * 1e9) as u64);
    println!(
        "   {} asynchronous preemptions in {:.2} hog-seconds ({:.0}/s per hog); hog throughput on/off {thr:.3}",
        on.preempt_async,
        on.hog_secs,
        on.preempt_async as f64 / on.hog_secs
    );
    println!(
        "   cost per preemption from lost throughput: {:.1} µs; from the hogs' own pause time (TSC): {:.1} µs",
        us(per_thr),
        us(per_tsc)
    );
    if let Some((thr, tsc)) = one_p_cost {
        println!(
            "   the same on 1 P (part 1, 100us Migrate; sysmon has the other vCPU to itself): {:.1} µs; TSC: {:.1} µs",
            us(thr),
            us(tsc)
        );
    }
    let (floor_thr, floor_tsc, floor_n) = signal_floor(cell, pause, hz);
    println!(
        "   floor: an empty SIGUSR2 handler every {FLOOR_PERIOD:?} to the same hog on a plain thread ({floor_n} signals): {:.1} µs; TSC: {:.1} µs per signal",
        us(floor_thr),
        us(floor_tsc)
    );
    let (handoff, bare) = handoff_floor();
    println!(
        "   ThreadAffine's floor besides: a thread hand-off on one CPU as its preemptions make it (pin the woken thread, futex wake and wait, it unpins itself): {:.1} µs per switch (bare switch, both pinned: {:.1} µs); signal + hand-off {:.1} µs = {:.2}x the signal floor",
        us(handoff),
        us(bare),
        us(floor_tsc + handoff),
        (floor_tsc + handoff) / floor_tsc
    );
    // Issue 11's measure: two loops on one P and nothing else (every
    // preemption switches hogs; every moment neither runs is overhead).
    // The floor these rows are judged by is measured in between their
    // segments: the VM's floor moves by a third from one minute to the next.
    for mode in MODES {
        let mut beside = FloorAcc::default();
        let (off, on) = cell_pair_with(ONE_P_TWO, [q, q], mode, cell, pause, Some(&mut beside));
        let (_, floor_tsc, _) = beside.result(hz);
        print_pair(ONE_P_TWO, [q, q], mode, (&off, &on), hz, &mut csv);
        let n = on.preempt_async.max(1) as f64;
        let thr = on.window_rate() / off.window_rate();
        let tsc = on.lost_per_preemption(&off, hz, 1);
        let name = mode_name(mode);
        println!(
            "   1 P, 2 hogs, {name}: {} preemptions, P throughput on/off {thr:.3}; lost per preemption {:.1} µs by TSC ({:.2}x the floor measured in between, {:.1} µs), {:.1} µs by throughput",
            on.preempt_async,
            us(tsc),
            tsc / floor_tsc,
            us(floor_tsc),
            us((1.0 - thr) * on.window / n),
        );
        // The TSC measure is the steadier of the two on a shared machine.
        targets.push(Target {
            what: format!("one async preemption (1 P, 2 hogs, 100us, {name}) vs the floor"),
            goal: "<= 1.5x".into(),
            got: format!(
                "{:.2}x by TSC ({:.1} vs {:.1} µs)",
                tsc / floor_tsc,
                us(tsc),
                us(floor_tsc),
            ),
            met: tsc <= 1.5 * floor_tsc,
        });
        targets.push(Target {
            what: format!("P throughput on/off, 1 P, 2 hogs, 100us {name}"),
            goal: ">= 0.90".into(),
            got: format!("{thr:.3}"),
            met: thr >= 0.90,
        });
    }
    println!(
        "   a preempted hog's pause (TSC gap > {PAUSE:?}, {} pauses on, {} off): p50 {}, p90 {}, p99 {}",
        on.pauses.len(),
        off.pauses.len(),
        p(0.5),
        p(0.9),
        p(0.99)
    );
    println!(
        "   ticker lateness at 100us: p50 {}, p99 {}, p99.9 {}, max {}",
        fmt_ns(on.late.value_at_quantile(0.5)),
        fmt_ns(on.late.value_at_quantile(0.99)),
        fmt_ns(on.late.value_at_quantile(0.999)),
        fmt_ns(on.late.max())
    );
    targets.push(Target {
        what: "hog throughput on/off, 2 Ps, 100us Migrate".into(),
        goal: ">= 0.90".into(),
        got: format!("{thr:.3}"),
        met: thr >= 0.90,
    });
    let p99_2p = on.late.value_at_quantile(0.99);
    targets.push(Target {
        what: "ticker p99, 2 Ps, 100us Migrate".into(),
        goal: "<= 300 µs".into(),
        got: fmt_ns(p99_2p),
        met: p99_2p <= 300_000,
    });
    // ThreadAffine's floor for the rows below (no signals, no runtime).
    let rotation = rotation_floor(q, cell);
    if let Some(share) = rotation {
        println!(
            "   ThreadAffine's 2-P floor besides: 3 plain threads taking turns on 2 CPUs every {q:?} with its hand-off (pin, futex wake and wait, unpin) run {share:.3} of the CPUs' time"
        );
    }
    // Issue 11's tail scenario, both modes: three hogs time-sliced on two
    // Ps beside the ticker (off: async preemption off at the same quantum,
    // one hog starves; throughput is both Ps' iterations per second). Every
    // CPU is busy, so slice timers end the slices: the floor these rows
    // are judged by is a timer's signal, fired on the hog's own CPU,
    // measured in between their segments.
    for mode in MODES {
        let mut beside = FloorAcc::new(FloorSignal::Timer);
        let (off, on) = cell_pair_with(TWO_P_THREE, [q, q], mode, cell, pause, Some(&mut beside));
        let (_, timer_floor, _) = beside.result(hz);
        print_pair(TWO_P_THREE, [q, q], mode, (&off, &on), hz, &mut csv);
        files.record(write_cell(TWO_P_THREE, [q, q], mode, (&off, &on)));
        let thr = on.window_rate() / off.window_rate();
        let p99 = on.late.value_at_quantile(0.99);
        let name = mode_name(mode);
        let procs = TWO_P_THREE.procs;
        let tsc = on.lost_per_preemption(&off, hz, procs);
        // What the signals alone would take from the Ps' time at the
        // floor's cost, and for ThreadAffine the hand-offs besides (the
        // rotation's share of the CPUs, relative to the share the hogs ran
        // with async off: both lose the kernel's ticks alike).
        let cpu_time = procs as f64 * on.window;
        let signals = on.preempt_async as f64 * timer_floor / cpu_time;
        let off_share = 1.0 - off.idle_secs(hz, procs) / (procs as f64 * off.window);
        let bound = match (mode, rotation) {
            (PreemptMode::ThreadAffine, Some(share)) => share / off_share - signals,
            _ => 1.0 - signals,
        };
        println!(
            "   2 Ps, 3 hogs, {name}: {} preemptions, throughput on/off {thr:.3}, ticker p99 {}; lost per preemption {:.1} µs by TSC ({:.2}x the timer floor measured in between: {:.1} µs per signal of a one-shot timer re-armed every {FLOOR_PERIOD:?}, fired on the hog's own CPU); those signals alone bound throughput on/off to {bound:.3}",
            on.preempt_async,
            fmt_ns(p99),
            us(tsc),
            tsc / timer_floor,
            us(timer_floor),
        );
        targets.push(Target {
            what: format!("ticker p99, 2 Ps, 3 hogs, 100us {name}"),
            goal: "<= 300 µs".into(),
            got: fmt_ns(p99),
            met: p99 <= 300_000,
        });
        targets.push(Target {
            what: format!("throughput on/off, 2 Ps, 3 hogs, 100us {name}"),
            goal: ">= 0.90".into(),
            got: format!("{thr:.3} (floors' bound {bound:.3})"),
            met: thr >= 0.90,
        });
    }
    targets.push(Target {
        what: "one async preemption, Migrate (lost throughput / count)".into(),
        goal: "<= 10 µs".into(),
        got: format!("{:.1} µs (TSC: {:.1} µs)", us(per_thr), us(per_tsc)),
        met: per_thr <= 10e-6,
    });

    if go {
        println!("\n3) Go twin (benches/go/latency, GOMAXPROCS=1, Go's 10 ms quantum), {cell:?}:");
        if let Some(f) = run_go(cell) {
            if f.len() == 7 {
                writeln!(
                    csv,
                    "go_1p_1hog,10000,go,on,{},{},{},{},{},{},{},{},,,,,,,",
                    cell.as_secs_f64(),
                    f[0],
                    f[1],
                    f[2],
                    f[3],
                    f[4],
                    f[5],
                    f[6]
                )
                .expect("write to String");
            }
        }
    }

    println!("\ntargets (load average now {}):", loadavg());
    for t in &targets {
        println!(
            "  [{}] {:<56} goal {:<9} got {}",
            if t.met { "met" } else { "MISSED" },
            t.what,
            t.goal,
            t.got
        );
    }
    let title = "1p_1hog: ticker lateness with async preemption on, every quantum and mode";
    let plot = lateness_plot(title, &grid);
    files.record(
        std::fs::create_dir_all(plot_dir())
            .and_then(|_| std::fs::write(plot_dir().join("grid.svg"), plot))
            .map(|_| 1),
    );
    match files.error {
        None => println!(
            "\n{} histograms (.hgrm, µs) and plots (.svg) written to {}/",
            files.written,
            plot_dir().display()
        ),
        Some(e) => eprintln!("\nlatency: cannot write to {}: {e}", plot_dir().display()),
    }
    let path = target_dir().join("latency.csv");
    match std::fs::create_dir_all(target_dir()).and_then(|_| std::fs::write(&path, &csv)) {
        Ok(()) => println!("\nCSV written to {}", path.display()),
        Err(e) => eprintln!("\nlatency: cannot write {}: {e}", path.display()),
    }
}
