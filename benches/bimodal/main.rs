//! The bimodal server latency benchmark (issue 11 part 5; hand-written,
//! `harness = false`): can a short request get through while the server's
//! only CPU is busy with a long one?
//!
//! ```text
//! cargo bench --bench bimodal                          # the 8 contenders, saturation + 9 loads x 3 s (~5 min)
//! BIMODAL_SECS=5 cargo bench --bench bimodal           # longer load points
//! BIMODAL_ONLY=gosched,go cargo bench --bench bimodal  # some contenders
//! BIMODAL_QUICK=1 cargo bench --bench bimodal          # CI smoke run (~3 s, no Go, no tokio)
//! BIMODAL_ROUNDS=5 BIMODAL_LOADS=50 cargo bench --bench bimodal  # medians of 5 interleaved rounds
//! ```
//!
//! A TCP server on 127.0.0.1 serves requests that each carry a service
//! time, which the handler spins as CPU work calling nothing (see
//! `spin.rs`): 99.5 % short (10 µs), 0.5 % long (5 ms), the
//! Shinjuku/Skyloft mix. One handler per connection (a goroutine, a
//! thread, a task), all on one CPU. An open-loop client in another process
//! on another CPU (`client.rs`) sends Poisson arrivals at a fixed offered
//! rate over 32 connections and measures each request from its intended
//! send time. The offered load sweeps 10 % to 90 % of the measured
//! capacity: `1 / mean service time` is 28,612 requests/s (34.95 µs), but
//! system calls and the loopback stack cost each request more, so each
//! server is first offered 1.5 x that rate and the best throughput any of
//! them achieves is 100 % (`BIMODAL_CAPACITY` fixes it instead).
//!
//! Contenders (same handler logic, same client, same schedule per load):
//!
//! - `gosched-10ms`: gosched, 1 P, default 10 ms quantum, wake-up
//!   preemption on (the default);
//! - `gosched-10ms-rt`: the same with sysmon at real-time priority
//!   (`GOSCHED_SYSMONRT=1`; needs root or an `RLIMIT_RTPRIO`, else the
//!   server warns and runs as `gosched-10ms`);
//! - `gosched-10ms-nowake`: the same with wake-up preemption off;
//! - `gosched-1ms`, `gosched-100us`: shorter quanta, wake-up preemption on;
//! - `go`: the Go 1.19 twin, `benches/go/bimodal`, GOMAXPROCS=1;
//! - `tokio`: tokio `current_thread`, `benches/tokio-bimodal` (a separate
//!   crate: gosched never depends on tokio);
//! - `std`: a thread per connection, std::net: the kernel's scheduler;
//! - `gosched-10ms-migrate` (only when named in `BIMODAL_ONLY`): like
//!   `gosched-10ms` in Migrate mode, so a preempted request resumes on any
//!   thread and a wake-up preemption needs no thread hand-off;
//! - `gosched-10ms-nice0` (only when named in `BIMODAL_ONLY`): like
//!   `gosched-10ms` with sysmon at nice 0 (`GOSCHED_SYSMONNICE=0`; by
//!   default it asks for -20, which a process without `CAP_SYS_NICE` does
//!   not get: this is what such a process sees).
//!
//! This binary is the driver and the client, and re-executes itself as the
//! gosched and std servers (`bimodal serve gosched QUANTUM_US WAKEUP` /
//! `bimodal serve std`). Servers run on CPU 0, the client on CPU 1 (when
//! the machine has two). Output: a table on stdout, `target/bimodal.csv`,
//! and `target/bimodal.svg` (short-request p99 against load, one line per
//! contender).
//!
//! Knobs: `BIMODAL_SECS` (seconds per load point, default 3; the first
//! 10 % is warm-up), `BIMODAL_LOADS` (percent list, default
//! `10,20,...,90`), `BIMODAL_ONLY` (comma list of contender names;
//! `gosched` means the four gosched ones), `BIMODAL_CONNS` (default 32),
//! `BIMODAL_PROCS` (Ps of the gosched servers, default 1),
//! `BIMODAL_CAPACITY` (requests/s that 100 % means; default: measured),
//! `BIMODAL_PIN=0` (no CPU pinning), `BIMODAL_STATS=1` (the gosched
//! servers print their scheduler counters every second), `BIMODAL_QUICK=1`,
//! `BIMODAL_ROUNDS` (default 1).
//!
//! **Rounds.** On a shared or virtual machine one load point's p99 moves
//! by 2-4x between minutes (the same binary's short p99 at 50 % load gave
//! 1.3 to 6.5 ms within ten minutes on a 2-vCPU VM), so one run compares
//! the contenders' windows as much as the contenders. With
//! `BIMODAL_ROUNDS=N` the sweep runs N times, each round starting with the
//! next contender (a different order per round, so no contender always
//! runs first or last); every round's rows are printed as they come, then
//! a table of medians over the rounds (per contender and load, each column
//! its own median), from which the summary, the targets, the CSV's
//! `median` rows and the plot are made. The capacity is measured once.
//! Without `--bench` on the command line (`cargo test --benches`) it runs
//! the quick variant: `gosched-10ms` and `std` at 10 % and 50 %, 0.3 s
//! each, and fails if a request goes unanswered.

mod client;
mod spin;
mod svg;

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use client::{Mix, Point, Run};
use spin::Spinner;

const MIX: Mix = Mix {
    short: Duration::from_micros(10),
    long: Duration::from_millis(5),
    long_share: 0.005,
};
/// The latency whose crossing load the summary reports.
const CROSS_US: f64 = 1_000.0;
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Gosched {
        quantum: Duration,
        wakeup: bool,
        migrate: bool,
        /// sysmon at real-time priority (`GOSCHED_SYSMONRT=1`).
        rt: bool,
        /// sysmon at nice 0 (`GOSCHED_SYSMONNICE=0`), as before 0.x.
        nice0: bool,
    },
    Go,
    Tokio,
    Std,
}

struct Contender {
    name: &'static str,
    kind: Kind,
}

/// The contenders run by default; the ones after them only when named in
/// `BIMODAL_ONLY`.
const DEFAULT_CONTENDERS: usize = 8;

const CONTENDERS: [Contender; 10] = [
    Contender {
        name: "gosched-10ms",
        kind: Kind::Gosched {
            quantum: Duration::from_millis(10),
            wakeup: true,
            migrate: false,
            rt: false,
            nice0: false,
        },
    },
    // The same with sysmon at real-time priority (needs root or an
    // RLIMIT_RTPRIO; otherwise the server warns and runs as gosched-10ms).
    Contender {
        name: "gosched-10ms-rt",
        kind: Kind::Gosched {
            quantum: Duration::from_millis(10),
            wakeup: true,
            migrate: false,
            rt: true,
            nice0: false,
        },
    },
    Contender {
        name: "gosched-10ms-nowake",
        kind: Kind::Gosched {
            quantum: Duration::from_millis(10),
            wakeup: false,
            migrate: false,
            rt: false,
            nice0: false,
        },
    },
    Contender {
        name: "gosched-1ms",
        kind: Kind::Gosched {
            quantum: Duration::from_millis(1),
            wakeup: true,
            migrate: false,
            rt: false,
            nice0: false,
        },
    },
    Contender {
        name: "gosched-100us",
        kind: Kind::Gosched {
            quantum: Duration::from_micros(100),
            wakeup: true,
            migrate: false,
            rt: false,
            nice0: false,
        },
    },
    Contender {
        name: "go",
        kind: Kind::Go,
    },
    Contender {
        name: "tokio",
        kind: Kind::Tokio,
    },
    Contender {
        name: "std",
        kind: Kind::Std,
    },
    // Not in the issue's list: where the preempted goroutine resumes on
    // any thread, so a wake-up preemption needs no thread hand-off.
    Contender {
        name: "gosched-10ms-migrate",
        kind: Kind::Gosched {
            quantum: Duration::from_millis(10),
            wakeup: true,
            migrate: true,
            rt: false,
            nice0: false,
        },
    },
    // Not in the issue's list: sysmon at nice 0 (where the process may not
    // lower a nice value, or with GOSCHED_SYSMONNICE=0), for comparison.
    Contender {
        name: "gosched-10ms-nice0",
        kind: Kind::Gosched {
            quantum: Duration::from_millis(10),
            wakeup: true,
            migrate: false,
            rt: false,
            nice0: true,
        },
    },
];

// ---------------------------------------------------------------- servers

fn serve(args: &[String]) -> io::Result<()> {
    let sp = Spinner::calibrate();
    match args.first().map(String::as_str) {
        Some("gosched") => {
            let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("serve {args:?}"));
            let quantum: u64 = args.get(1).and_then(|a| a.parse().ok()).ok_or_else(bad)?;
            let wakeup = args.get(2).map(String::as_str) == Some("1");
            let procs: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
            let mut b = gosched::Builder::new()
                .procs(procs)
                .preempt_quantum(Duration::from_micros(quantum))
                .wakeup_preempt(wakeup);
            if args.get(4).map(String::as_str) == Some("migrate") {
                // SAFETY: what can be preempted asynchronously here is the
                // handler (`spin::handle`: arithmetic on locals, socket I/O
                // through gosched::net) and the accept loop; neither holds a
                // thread-local or the stdout/stderr lock across an
                // instruction: the only prints (`announce`, `stats_loop`)
                // run inside `no_preempt`.
                b = unsafe { b.preempt_mode(gosched::PreemptMode::Migrate).allow_migrate() };
            }
            let rt = b.build()?;
            rt.block_on(move || -> io::Result<()> {
                let l = gosched::net::TcpListener::bind("127.0.0.1:0")?;
                let addr = l.local_addr()?;
                gosched::no_preempt(|| announce(addr, &sp));
                if std::env::var("BIMODAL_STATS").is_ok_and(|v| v == "1") {
                    gosched::spawn(stats_loop);
                }
                for s in l.incoming() {
                    let s = s?;
                    s.set_nodelay(true)?;
                    gosched::spawn(move || spin::handle(s, sp));
                }
                Ok(())
            })
        }
        Some("std") => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            announce(l.local_addr()?, &sp);
            for s in l.incoming() {
                let s = s?;
                s.set_nodelay(true)?;
                std::thread::spawn(move || spin::handle(s, sp));
            }
            Ok(())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "bimodal serve {args:?}: expected `gosched QUANTUM_US 0|1 [PROCS [migrate]]` or `std`"
            ),
        )),
    }
}

/// `bimodal spin-check`: how long the calibrated loop really takes for the
/// two service times (median and max of 21 runs), to check the calibration.
fn spin_check() {
    let sp = Spinner::calibrate();
    for want in [MIX.short, MIX.long] {
        let mut ds: Vec<Duration> = (0..21)
            .map(|_| {
                let t = std::time::Instant::now();
                sp.spin(want.as_nanos() as u64);
                t.elapsed()
            })
            .collect();
        ds.sort();
        println!(
            "spin {want:?}: min {:?} median {:?} max {:?} ({:.2} steps/ns)",
            ds[0], ds[10], ds[20], sp.steps_per_ns
        );
    }
}

/// `BIMODAL_STATS=1`: the gosched server prints its scheduler counters on
/// stderr every second (what preempted what, how I/O was polled).
fn stats_loop() {
    loop {
        gosched::sleep(Duration::from_secs(1));
        let Some(s) = gosched::stats() else { return };
        // No async preemption while stderr is locked (Migrate mode).
        gosched::no_preempt(|| {
            eprintln!(
            "  [server] threads {} switches {} preempt coop {} async {} refused {:?} wakeup {} poll waits {} wake-ups {}; runnable-to-running p50 {:?} p99 {:?} p99.9 {:?}",
            s.threads,
            s.switches,
            s.preempt_coop,
            s.preempt_async,
            s.preempt_refused_by_reason,
            s.preempt_wakeup,
            s.poll_waits,
            s.poll_wakeups,
            s.sched_latency_quantile(0.5),
            s.sched_latency_quantile(0.99),
            s.sched_latency_quantile(0.999),
        )
        });
    }
}

fn announce(addr: SocketAddr, sp: &Spinner) {
    spin::announce(addr, sp.steps_per_ns);
}

/// Restricts the calling thread (and what it forks later) to `cpu`.
fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data, all-zero is the empty set; CPU_SET
    // writes inside `set` for any `cpu` below its 1024 bits, which the two
    // CPUs we use are.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    };
    // SAFETY: `set` is a valid cpu_set_t of the size we pass; pid 0 is the
    // calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ----------------------------------------------------------------- driver

struct Config {
    secs: Duration,
    loads: Vec<u32>,
    conns: usize,
    procs: usize,
    /// `BIMODAL_CAPACITY`; measured when `None`.
    capacity: Option<f64>,
    only: Option<Vec<String>>,
    quick: bool,
    pin: bool,
    /// `BIMODAL_ROUNDS`: sweeps to run, reported as medians.
    rounds: usize,
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(x) => Some(x),
        Err(_) => {
            eprintln!("bimodal: {name}={v:?} does not parse");
            std::process::exit(2);
        }
    }
}

fn config() -> Config {
    let bench = std::env::args().any(|a| a == "--bench");
    let quick = std::env::var("BIMODAL_QUICK").is_ok_and(|v| v == "1") || !bench;
    let secs: f64 = env_parse("BIMODAL_SECS").unwrap_or(if quick { 0.3 } else { 3.0 });
    let secs = match Duration::try_from_secs_f64(secs) {
        Ok(d) if d >= Duration::from_millis(50) => d,
        _ => {
            eprintln!("bimodal: BIMODAL_SECS={secs}: expected at least 0.05 seconds");
            std::process::exit(2);
        }
    };
    let loads: Vec<u32> = match std::env::var("BIMODAL_LOADS") {
        Ok(v) => v
            .split(',')
            .map(|s| match s.trim().parse() {
                Ok(p) if p > 0 && p <= 200 => p,
                _ => {
                    eprintln!("bimodal: BIMODAL_LOADS={v:?}: expected percents in 1..=200");
                    std::process::exit(2);
                }
            })
            .collect(),
        Err(_) if quick => vec![10, 50],
        Err(_) => (1..=9).map(|i| i * 10).collect(),
    };
    let only = std::env::var("BIMODAL_ONLY")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .or_else(|| quick.then(|| vec!["gosched-10ms".into(), "std".into()]));
    if let Some(only) = &only {
        for o in only {
            if o != "gosched" && !CONTENDERS.iter().any(|c| c.name == o) {
                let names: Vec<_> = CONTENDERS.iter().map(|c| c.name).collect();
                eprintln!(
                    "bimodal: BIMODAL_ONLY names {o:?}; known: gosched, {}",
                    names.join(", ")
                );
                std::process::exit(2);
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Config {
        secs,
        loads,
        conns: env_parse("BIMODAL_CONNS").unwrap_or(32).max(1),
        procs: env_parse("BIMODAL_PROCS").unwrap_or(1).max(1),
        capacity: env_parse("BIMODAL_CAPACITY"),
        only,
        quick,
        pin: cpus >= 2 && !std::env::var("BIMODAL_PIN").is_ok_and(|v| v == "0"),
        rounds: match env_parse::<usize>("BIMODAL_ROUNDS") {
            None => 1,
            Some(n) if (1..=100).contains(&n) => n,
            Some(n) => {
                eprintln!("bimodal: BIMODAL_ROUNDS={n}: expected 1 to 100");
                std::process::exit(2);
            }
        },
    }
}

fn selected(cfg: &Config, c: &Contender) -> bool {
    match &cfg.only {
        None => CONTENDERS[..DEFAULT_CONTENDERS]
            .iter()
            .any(|d| d.name == c.name),
        Some(only) => only
            .iter()
            .any(|o| o == c.name || (o == "gosched" && matches!(c.kind, Kind::Gosched { .. }))),
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// CPU time (clock ticks) used so far by every process except `ours`,
/// from `/proc/*/stat` (utime + stime, fields 14 and 15). The load
/// average cannot tell other work apart from the benchmark itself (a
/// gosched server has several runnable threads); this can. Processes that
/// start and exit between two readings are missed.
fn others_ticks(ours: &[u32]) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut sum = 0u64;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if ours.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The command name (field 2) may hold spaces: count from its ')'.
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): utime is field 14, stime 15.
        let t = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        sum = sum.saturating_add(t(14)).saturating_add(t(15));
    }
    sum
}

/// CPUs' worth of time other processes used during a row above which the
/// row is flagged: they took time from the server's or the client's CPU.
const BUSY_CPUS: f64 = 0.1;

/// Clock ticks per second of `/proc/*/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Builds a twin; returns the program to run or why it cannot.
fn build(kind: Kind) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut cmd, bin) = match kind {
        Kind::Go => {
            let bin = target_dir().join("bimodal-go-server");
            let mut cmd = Command::new("go");
            cmd.arg("build")
                .arg("-o")
                .arg(&bin)
                .arg(".")
                .current_dir(root.join("benches/go/bimodal"));
            (cmd, bin)
        }
        Kind::Tokio => {
            let dir = target_dir().join("tokio-bimodal");
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.args(["build", "--release", "--quiet", "--manifest-path"])
                .arg(root.join("benches/tokio-bimodal/Cargo.toml"))
                .arg("--target-dir")
                .arg(&dir);
            (cmd, dir.join("release/gosched-tokio-bimodal-twin"))
        }
        _ => return std::env::current_exe().map_err(|e| e.to_string()),
    };
    match cmd.stdout(Stdio::null()).output() {
        Ok(o) if o.status.success() => Ok(bin),
        Ok(o) => Err(format!(
            "build failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{:?}: {e}", cmd.get_program())),
    }
}

/// A running server process; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    steps_per_ns: f64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(cfg: &Config, kind: Kind, program: &Path) -> io::Result<Server> {
    let mut cmd = Command::new(program);
    match kind {
        Kind::Gosched {
            quantum,
            wakeup,
            migrate,
            rt,
            nice0,
        } => {
            cmd.env("GOSCHED_SYSMONRT", if rt { "1" } else { "0" });
            cmd.env("GOSCHED_SYSMONNICE", if nice0 { "0" } else { "-20" });
            cmd.args(["serve", "gosched"])
                .arg(quantum.as_micros().to_string())
                .arg(if wakeup { "1" } else { "0" })
                .arg(cfg.procs.to_string())
                .arg(if migrate { "migrate" } else { "affine" });
        }
        Kind::Std => {
            cmd.args(["serve", "std"]);
        }
        Kind::Go => {
            cmd.env("GOMAXPROCS", "1");
        }
        Kind::Tokio => {}
    }
    if cfg.pin {
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one system call (sched_setaffinity) on a stack value:
        // async-signal-safe, no allocation, no locks.
        unsafe {
            cmd.pre_exec(|| pin(SERVER_CPU));
        }
    }
    let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn()?;
    let mut line = String::new();
    let out = child.stdout.take().expect("piped stdout");
    BufReader::new(out).read_line(&mut line)?;
    let mut f = line.split_whitespace();
    let parsed = match (f.next(), f.next(), f.next()) {
        (Some("ADDR"), Some(a), Some(s)) => a.parse().ok().zip(s.parse().ok()),
        _ => None,
    };
    match parsed {
        Some((addr, steps_per_ns)) => Ok(Server {
            child,
            addr,
            steps_per_ns,
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("server's first line: {line:?}"),
            ))
        }
    }
}

/// A duration in ns as a short human string.
fn human(ns: u64) -> String {
    let us = ns as f64 / 1e3;
    if us < 1e3 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// What a row reports of one load point: throughput, counts and the
/// latency quantiles (ns) of the short and the long requests.
#[derive(Clone, Copy)]
struct Stats {
    achieved: f64,
    short_n: u64,
    /// p50, p99, p99.9.
    short: [u64; 3],
    long_n: u64,
    long: [u64; 3],
    lost: u64,
}

const QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

impl Stats {
    fn of(p: &Point) -> Stats {
        let q = |h: &hdrhistogram::Histogram<u64>| {
            QUANTILES.map(|q| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(q)
                }
            })
        };
        Stats {
            achieved: p.achieved,
            short_n: p.short.len(),
            short: q(&p.short),
            long_n: p.long.len(),
            long: q(&p.long),
            lost: p.lost,
        }
    }

    /// Each field's median over `all` (not empty).
    fn median(all: &[Stats]) -> Stats {
        let f = |get: &dyn Fn(&Stats) -> f64| median(all.iter().map(get).collect());
        let u = |get: &dyn Fn(&Stats) -> u64| f(&|s| get(s) as f64).round() as u64;
        Stats {
            achieved: f(&|s| s.achieved),
            short_n: u(&|s| s.short_n),
            short: [0, 1, 2].map(|i| u(&|s| s.short[i])),
            long_n: u(&|s| s.long_n),
            long: [0, 1, 2].map(|i| u(&|s| s.long[i])),
            lost: u(&|s| s.lost),
        }
    }
}

/// The median of `v` (the mean of the middle two for an even count); 0
/// for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Row {
    name: &'static str,
    load: u32,
    offered: f64,
    stats: Stats,
    /// CPUs' worth of time other processes used during the row (for a
    /// median row: the median over the rounds).
    others: f64,
    /// The round it was measured in (from 1); `None`: medians over rounds.
    round: Option<usize>,
}

impl Row {
    fn print(&self) {
        let p = &self.stats;
        let (s, l) = (p.short, p.long);
        println!(
            "{:<20} {:>3} % {:>8.0} {:>8.0} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>4} {:>5}",
            self.name,
            self.load,
            self.offered,
            p.achieved,
            human(s[0]),
            human(s[1]),
            human(s[2]),
            human(l[0]),
            human(l[1]),
            human(l[2]),
            p.long_n,
            p.lost,
        );
        if self.others > BUSY_CPUS {
            println!(
                "  ^ busy machine: other processes used {:.2} CPUs meanwhile; this row is not comparable",
                self.others
            );
        }
    }

    fn csv(&self, out: &mut String) {
        let p = &self.stats;
        let us = |ns: u64| ns as f64 / 1e3;
        let _ = writeln!(
            out,
            "{},{},{:.0},{:.0},{},{:.1},{:.1},{:.1},{},{:.1},{:.1},{:.1},{},{},{:.3},{}",
            self.name,
            self.load,
            self.offered,
            p.achieved,
            p.short_n,
            us(p.short[0]),
            us(p.short[1]),
            us(p.short[2]),
            p.long_n,
            us(p.long[0]),
            us(p.long[1]),
            us(p.long[2]),
            p.lost,
            loadavg().replace(' ', "/"),
            self.others,
            self.round.map_or("median".to_string(), |r| r.to_string()),
        );
    }

    fn short_p99_us(&self) -> f64 {
        self.stats.short[1] as f64 / 1e3
    }
}

/// One row per contender and load: each column's median over `rows`
/// (every round's), in the order they first appear.
fn median_rows(rows: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        if out.iter().any(|m| m.name == r.name && m.load == r.load) {
            continue;
        }
        let same: Vec<&Row> = rows
            .iter()
            .filter(|x| x.name == r.name && x.load == r.load)
            .collect();
        let stats: Vec<Stats> = same.iter().map(|x| x.stats).collect();
        out.push(Row {
            name: r.name,
            load: r.load,
            offered: r.offered,
            stats: Stats::median(&stats),
            others: median(same.iter().map(|x| x.others).collect()),
            round: None,
        });
    }
    out.sort_by_key(|r| (CONTENDERS.iter().position(|c| c.name == r.name), r.load));
    out
}

const HEADER: &str = "contender,load_pct,offered_per_s,achieved_per_s,short_n,short_p50_us,short_p99_us,short_p999_us,long_n,long_p50_us,long_p99_us,long_p999_us,lost,loadavg,other_cpus,round";

/// The load (percent) at which short p99 crosses `CROSS_US`, interpolated
/// on a log scale between the two points around it; `None` if it never
/// does, `Some(first load)` if it already does at the first.
fn crossing(rows: &[&Row]) -> Option<f64> {
    let mut prev: Option<&Row> = None;
    for r in rows {
        let y = r.short_p99_us();
        if y > CROSS_US {
            return Some(match prev {
                None => r.load as f64,
                Some(p) => {
                    let (x0, y0) = (p.load as f64, p.short_p99_us().max(1.0));
                    let t = (CROSS_US.ln() - y0.ln()) / (y.ln() - y0.ln());
                    x0 + (r.load as f64 - x0) * t
                }
            });
        }
        prev = Some(r);
    }
    None
}

fn summary(cfg: &Config, rows: &[Row], saturation: &[(&str, f64)]) {
    let names: Vec<&str> = CONTENDERS
        .iter()
        .map(|c| c.name)
        .filter(|n| rows.iter().any(|r| r.name == *n))
        .collect();
    let last = cfg.loads.iter().copied().max().unwrap_or(0);
    let first = cfg.loads.iter().copied().min().unwrap_or(0);
    let p99_at = |name: &str, load: u32| {
        rows.iter()
            .find(|r| r.name == name && r.load == load)
            .map(Row::short_p99_us)
    };
    let cross = |name: &str| {
        let mut rs: Vec<&Row> = rows.iter().filter(|r| r.name == name).collect();
        rs.sort_by_key(|r| r.load);
        crossing(&rs)
    };
    println!(
        "\nshort-request p99 at 50 % load, the load where it crosses 1 ms, saturation throughput{}:",
        if cfg.rounds > 1 {
            format!(" (p99: medians over {} rounds)", cfg.rounds)
        } else {
            String::new()
        }
    );
    for n in &names {
        let at50 = p99_at(n, 50).map_or("-".into(), |u| human((u * 1e3) as u64));
        let c = match cross(n) {
            None => format!("> {last} %"),
            Some(x) if x <= first as f64 => format!("<= {first} %"),
            Some(x) => format!("{x:.0} %"),
        };
        let sat = saturation
            .iter()
            .find(|s| s.0 == *n)
            .map_or("-".into(), |s| format!("{:.0} req/s", s.1));
        println!("  {n:<20} p99@50% {at50:>9}   crosses 1 ms at {c:>7}   saturation {sat}");
    }
    // The issue's targets, for gosched at its defaults and with sysmon at
    // real-time priority.
    for me in ["gosched-10ms", "gosched-10ms-rt"] {
        targets(me, &names, last, &p99_at, &cross);
    }
}

fn targets(
    me: &str,
    names: &[&str],
    last: u32,
    p99_at: &dyn Fn(&str, u32) -> Option<f64>,
    cross: &dyn Fn(&str) -> Option<f64>,
) {
    let Some(mine) = p99_at(me, 50) else { return };
    println!("\ntargets (issue 11), {me}:");
    for (twin, factor) in [("go", 10.0), ("tokio", 10.0), ("std", 1.0)] {
        if let Some(theirs) = p99_at(twin, 50) {
            let ok = if factor > 1.0 {
                mine * factor <= theirs
            } else {
                mine < theirs
            };
            println!(
                "  short p99 at 50 %: {} vs {twin} {} ({:.3} of it; target {}): {}",
                human((mine * 1e3) as u64),
                human((theirs * 1e3) as u64),
                mine / theirs,
                if factor > 1.0 { "<= 0.1" } else { "< 1" },
                if ok { "met" } else { "MISSED" }
            );
        }
    }
    if names.contains(&"go") {
        let g = cross("go");
        let m = cross(me);
        let fmt = |x: Option<f64>| x.map_or(format!("> {last} %"), |x| format!("{x:.0} %"));
        let verdict = match (m, g) {
            (None, _) => "met (never crossed)".to_string(),
            (Some(m), Some(g)) if m >= 1.5 * g => format!("met ({:.2}x)", m / g),
            (Some(m), Some(g)) => format!("MISSED ({:.2}x)", m / g),
            (Some(_), None) => "MISSED (Go never crossed)".to_string(),
        };
        println!(
            "  1 ms crossing load: {} vs go {} (target >= 1.5x): {verdict}",
            fmt(m),
            fmt(g)
        );
    }
}

fn print_header() {
    println!(
        "\n{:<20} {:>5} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>4} {:>5}",
        "contender",
        "load",
        "offered",
        "achieved",
        "short50",
        "short99",
        "short999",
        "long50",
        "long99",
        "long999",
        "longs",
        "lost"
    );
}

/// One contender's sweep over the loads, on a server of its own: prints
/// each row, appends it to `rows` and `csv`. False if something failed.
fn sweep(
    cfg: &Config,
    c: &Contender,
    program: &Path,
    capacity: f64,
    round: usize,
    rows: &mut Vec<Row>,
    csv: &mut String,
) -> bool {
    let server = match start(cfg, c.kind, program) {
        Ok(s) => s,
        Err(e) => {
            println!("{:<20} server did not start: {e}", c.name);
            return false;
        }
    };
    if cfg.quick {
        println!(
            "{:<20} server at {}, {:.2} spin steps/ns",
            c.name, server.addr, server.steps_per_ns
        );
    }
    let mut ok = true;
    for &load in &cfg.loads {
        let rate = capacity * load as f64 / 100.0;
        let run = Run {
            rate,
            secs: cfg.secs,
            warmup: cfg.secs / 10,
            conns: cfg.conns,
            seed: 0x6269_6d6f_6461_6c00 | load as u64,
            drain: cfg.secs.max(Duration::from_secs(2)),
        };
        let ours = [std::process::id(), server.child.id()];
        let (t0, w0) = (others_ticks(&ours), std::time::Instant::now());
        let got = client::run(server.addr, &run, &MIX);
        let others = others_ticks(&ours).saturating_sub(t0) as f64
            / clock_ticks()
            / w0.elapsed().as_secs_f64();
        match got {
            Ok(point) => {
                let row = Row {
                    name: c.name,
                    load,
                    offered: rate,
                    stats: Stats::of(&point),
                    others,
                    round: Some(round),
                };
                row.print();
                row.csv(csv);
                if cfg.quick && (row.stats.lost > 0 || row.stats.short_n == 0) {
                    println!("  ^ unanswered requests or no short request measured");
                    ok = false;
                }
                rows.push(row);
            }
            Err(e) => {
                println!("{:<20} {load:>3} % client failed: {e}", c.name);
                return false;
            }
        }
    }
    ok
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("spin-check") {
        spin_check();
        return;
    }
    if args.get(1).map(String::as_str) == Some("serve") {
        if let Err(e) = serve(&args[2..]) {
            eprintln!("bimodal server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cfg = config();
    // Build the twins first (before the driver pins itself to one CPU).
    let programs: Vec<(&Contender, Result<PathBuf, String>)> = CONTENDERS
        .iter()
        .filter(|c| selected(&cfg, c))
        .map(|c| (c, build(c.kind)))
        .collect();
    if cfg.pin {
        if let Err(e) = pin(CLIENT_CPU) {
            println!("not pinned ({e}): server and client share the CPUs");
        }
    }
    // Keep the programs that exist.
    let programs: Vec<(&Contender, PathBuf)> = programs
        .into_iter()
        .filter_map(|(c, p)| match p {
            Ok(p) => Some((c, p)),
            Err(e) => {
                println!("{:<20} skipped: {e}", c.name);
                None
            }
        })
        .collect();
    let mut failed = false;
    let nominal = 1e9 / MIX.mean_ns();
    println!(
        "bimodal: {:.1} % x {} µs + {:.1} % x {} ms (1 / mean service time = {nominal:.0} req/s); {} connections; {:.2} s per load point; loads {:?} %; server CPU {}, client CPU {}; load average {}",
        (1.0 - MIX.long_share) * 100.0,
        MIX.short.as_micros(),
        MIX.long_share * 100.0,
        MIX.long.as_millis(),
        cfg.conns,
        cfg.secs.as_secs_f64(),
        cfg.loads,
        if cfg.pin { "0" } else { "any" },
        if cfg.pin { "1" } else { "any" },
        loadavg()
    );
    // 1. Capacity: each server's throughput when offered 1.5 x the nominal
    //    rate (per-request overhead, system calls and the loopback stack,
    //    makes it lower than 1 / mean service time); 100 % is the best.
    let mut saturation: Vec<(&str, f64)> = Vec::new();
    let capacity = match cfg.capacity {
        Some(c) => c,
        None => {
            println!(
                "
saturation throughput (offered {:.0} req/s):",
                nominal * 1.5
            );
            for (c, program) in &programs {
                let run = Run {
                    rate: nominal * 1.5,
                    secs: cfg.secs,
                    warmup: cfg.secs / 10,
                    conns: cfg.conns,
                    seed: 0x6269_6d6f_6461_6cff,
                    drain: Duration::ZERO,
                };
                let got = start(&cfg, c.kind, program)
                    .and_then(|server| client::run(server.addr, &run, &MIX));
                match got {
                    Ok(p) => {
                        println!(
                            "  {:<20} {:>6.0} req/s ({:.2} of nominal)",
                            c.name,
                            p.achieved,
                            p.achieved / nominal
                        );
                        saturation.push((c.name, p.achieved));
                    }
                    Err(e) => {
                        println!("  {:<20} failed: {e}", c.name);
                        failed = true;
                    }
                }
            }
            saturation.iter().map(|s| s.1).fold(0.0, f64::max).max(1.0)
        }
    };
    println!(
        "capacity (100 %) = {capacity:.0} req/s{}",
        if cfg.capacity.is_some() {
            " (BIMODAL_CAPACITY)"
        } else {
            ": the best saturation throughput"
        }
    );
    let mut rows = Vec::new();
    let mut csv = format!("{HEADER}\n");
    for round in 0..cfg.rounds {
        if cfg.rounds > 1 {
            println!(
                "\nround {} of {} (load average {})",
                round + 1,
                cfg.rounds,
                loadavg()
            );
        }
        print_header();
        // Each round starts with the next contender.
        for i in 0..programs.len() {
            let (c, program) = &programs[(i + round) % programs.len()];
            failed |= !sweep(&cfg, c, program, capacity, round + 1, &mut rows, &mut csv);
        }
    }
    let rows = if cfg.rounds > 1 {
        println!("\nmedians over {} rounds:", cfg.rounds);
        print_header();
        let medians = median_rows(&rows);
        for r in &medians {
            r.print();
            r.csv(&mut csv);
        }
        medians
    } else {
        rows
    };
    summary(&cfg, &rows, &saturation);
    let dir = target_dir();
    let _ = std::fs::create_dir_all(&dir);
    let csv_path = dir.join("bimodal.csv");
    let svg_path = dir.join("bimodal.svg");
    let series: Vec<svg::Series> = CONTENDERS
        .iter()
        .filter(|c| rows.iter().any(|r| r.name == c.name))
        .map(|c| svg::Series {
            name: c.name.to_string(),
            points: rows
                .iter()
                .filter(|r| r.name == c.name)
                .map(|r| (r.load as f64, r.short_p99_us()))
                .collect(),
        })
        .collect();
    let doc = svg::plot(
        "Bimodal server (99.5 % x 10 µs, 0.5 % x 5 ms), 1 CPU: short-request p99",
        &format!("offered load (% of capacity, {capacity:.0} req/s)"),
        "short-request p99 latency",
        (0.0, 100.0),
        10.0,
        CROSS_US,
        &series,
    );
    for (path, text) in [(&csv_path, &csv), (&svg_path, &doc)] {
        match std::fs::write(path, text) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => println!("could not write {}: {e}", path.display()),
        }
    }
    println!("load average {}", loadavg());
    if failed {
        std::process::exit(1);
    }
}
