//! Memory per idle connection (issue 10, "10,000 idle connections — memory
//! per connection vs Go"). Go twin: `benches/go/net/idle`.
//!
//! ```text
//! cargo bench --bench net_idle                 # 10,000 connections
//! NET_IDLE_N=2000 cargo bench --bench net_idle
//! ```
//!
//! The server (this process) runs a gosched `TcpListener` on 127.0.0.1; an
//! acceptor goroutine spawns one goroutine per connection, which reads into
//! a 64-byte buffer on its stack and so parks in the netpoller (the
//! connection never sends). The client is a separate process (this binary
//! started again with `NET_IDLE_CLIENT` set) that opens N plain blocking
//! std connections and holds them: with both ends in one process, 10,000
//! connections would need 20,000 descriptors plus the runtime's, over this
//! machine's limit of 20,000.
//!
//! The result is the growth of the server's resident memory (`VmRSS` of
//! /proc/self/status) from before the first connection to when all N
//! goroutines are parked, divided by N. Kernel socket buffers are not in
//! RSS (on either side of the comparison). The connect time is printed
//! too: `TcpListener::bind` listens with std's backlog of 128 where Go
//! uses `net.core.somaxconn` (4096 here), so 10,000 quick connects
//! overflow the queue and dropped SYNs wait for the client's 1 s
//! retransmission (~10-20 s here; 0.9 s with the backlog raised to 4096).
//! Without `--bench` on the
//! command line (`cargo test --benches`) it runs a quick 200 connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::net::TcpListener;

/// The variable that makes this binary the client; its value is the
/// server's address.
const CLIENT_ENV: &str = "NET_IDLE_CLIENT";
/// How long to wait for all connections to be parked.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// A `kB` line of /proc/self/status (`VmRSS`, `RssAnon`, ...), in bytes.
fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resident bytes of the mappings of at least 1 GiB: the runtime's stack
/// reservation (256 GiB, one mapping when guard pages are madvise guard
/// regions, Linux 6.13+). From /proc/self/smaps.
fn big_mappings_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (mut big, mut total) = (false, 0u64);
    for l in s.lines() {
        let kb = |f: &str| {
            l.strip_prefix(f)
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        if let Some(size) = kb("Size:") {
            big = size >= 1 << 20;
        } else if let Some(rss) = kb("Rss:") {
            if big {
                total += rss * 1024;
            }
        }
    }
    total
}

/// The client: `n` blocking connections to `addr`, held until stdin closes.
fn client(addr: &str, n: usize) {
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        match std::net::TcpStream::connect(addr) {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("net_idle client: connection {i} of {n}: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("ready {} {:.3}", conns.len(), t.elapsed().as_secs_f64());
    let _ = std::io::stdout().flush();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

fn main() {
    let n: usize = match std::env::var("NET_IDLE_N") {
        Ok(v) => match v.trim().parse() {
            Ok(n) if (1..=100_000).contains(&n) => n,
            _ => {
                eprintln!("net_idle: NET_IDLE_N={v:?}: expected an integer in 1..=100000");
                std::process::exit(2);
            }
        },
        Err(_) if std::env::args().any(|a| a == "--bench") => 10_000,
        Err(_) => 200,
    };
    if let Ok(addr) = std::env::var(CLIENT_ENV) {
        client(&addr, n);
        return;
    }

    let rt = gosched::Builder::new().build().expect("runtime");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local_addr");
    let parked = Arc::new(AtomicUsize::new(0));
    let acceptor = {
        let parked = parked.clone();
        rt.spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let parked = parked.clone();
                gosched::spawn(move || {
                    let mut buf = [0u8; 64];
                    parked.fetch_add(1, Relaxed);
                    // Parks until the client closes (EOF) or sends.
                    while let Ok(1..) = s.read(&mut buf) {}
                    parked.fetch_sub(1, Relaxed);
                });
            }
        })
    };
    // Let the runtime's threads and the acceptor settle before the baseline.
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, anon0) = (status_kb("VmRSS"), status_kb("RssAnon"));
    let stacks0 = big_mappings_rss();

    let t = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(CLIENT_ENV, addr.to_string())
        .env("NET_IDLE_N", n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client process");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("client stdout"));
    if out.read_line(&mut line).is_err() || !line.starts_with("ready") {
        eprintln!("net_idle: the client failed ({:?})", child.wait());
        std::process::exit(1);
    }
    let connect_secs = line.split_whitespace().nth(2).unwrap_or("?").to_string();
    // Every connection accepted and its goroutine about to read; then a
    // moment for the last ones to park.
    while parked.load(Relaxed) < n {
        if t.elapsed() > SETTLE_LIMIT {
            eprintln!(
                "net_idle: only {} of {n} connections served after {SETTLE_LIMIT:?}",
                parked.load(Relaxed)
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let setup = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (rss1, anon1) = (status_kb("VmRSS"), status_kb("RssAnon"));
    let stacks1 = big_mappings_rss();
    let stats = rt.stats();
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());

    // Close the client: every reader sees EOF and ends.
    drop(child.stdin.take());
    let _ = child.wait();
    let t2 = Instant::now();
    while parked.load(Relaxed) > 0 && t2.elapsed() < SETTLE_LIMIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = parked.load(Relaxed);
    drop(acceptor);

    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / n as f64;
    println!(
        "net/idle       {n} idle connections, one parked goroutine each (client in another process): \
         {:.0} B per connection (VmRSS {:.1} -> {:.1} MiB; RssAnon {:.0} B per connection)",
        per(rss0, rss1),
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        per(anon0, anon1)
    );
    println!(
        "net/idle       of which goroutine stacks (resident pages of the stack reservation): {:.0} B per connection",
        per(stacks0, stacks1)
    );
    println!(
        "net/idle       connected and parked in {:.2} s (the client's connects: {connect_secs} s); threads {}, open fds {fds}, poll waits {}; \
         {} readers left after the client closed",
        setup.as_secs_f64(),
        stats.threads,
        stats.poll_waits,
        left
    );
}
