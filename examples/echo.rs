//! A TCP echo server, one goroutine per connection, with a built-in load
//! client that prints throughput and round-trip-time percentiles.
//!
//! ```text
//! cargo run --release --example echo -- [--connections N] [--size BYTES]
//!     [--duration SECS] [--procs P] [--server ADDR | --client ADDR]
//! ```
//!
//! - no `--server`/`--client`: runs both in one process on 127.0.0.1
//!   (server and client share the runtime's Ps);
//! - `--server ADDR`: only serve (until killed);
//! - `--client ADDR`: only load the server at ADDR (e.g. a Go or tokio one).
//!
//! Each client connection sends a message of `--size` bytes, waits for
//! the whole echo, checks it, and records the round trip; repeat until
//! `--duration` is up. The clock starts once every connection is up and
//! has had one echo (the time that took is printed as "up in").

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gosched::net::{TcpListener, TcpStream};
use hdrhistogram::Histogram;

struct Opts {
    connections: usize,
    size: usize,
    duration: Duration,
    procs: Option<usize>,
    server: Option<String>,
    client: Option<String>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        connections: 64,
        size: 64,
        duration: Duration::from_secs(5),
        procs: None,
        server: None,
        client: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--connections" => o.connections = num(val()?)?.max(1),
            "--size" => o.size = num(val()?)?.max(1),
            "--duration" => {
                let v = val()?;
                let s: f64 = v.parse().map_err(|e| format!("--duration {v}: {e}"))?;
                if !(s.is_finite() && s > 0.0 && s < 1e6) {
                    return Err(format!("--duration {v}: want seconds in (0, 1e6)"));
                }
                o.duration = Duration::from_secs_f64(s);
            }
            "--procs" => o.procs = Some(num(val()?)?.max(1)),
            "--server" => o.server = Some(val()?),
            "--client" => o.client = Some(val()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

/// Serves echo on `l` forever: one goroutine per connection.
fn serve(l: TcpListener) {
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_nodelay(true);
        gosched::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// One client connection: connects, makes one untimed round trip (it
/// waits for the server to accept, which with 1,000 connections can take
/// a second), reports in on `up`, waits for `go` (the measured period's
/// end), then measures round trips until then.
fn client(
    addr: SocketAddr,
    size: usize,
    id: usize,
    up: gosched::chan::Sender<()>,
    go: gosched::chan::Receiver<Instant>,
) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let msg: Vec<u8> = (0..size).map(|i| (i + id) as u8).collect();
    let mut back = vec![0u8; size];
    let mut c = match TcpStream::connect(addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connection {id}: connect {addr}: {e}");
            return h;
        }
    };
    let _ = c.set_nodelay(true);
    let mut round_trip = |c: &mut TcpStream| {
        let ok = c.write_all(&msg).and_then(|_| c.read_exact(&mut back));
        assert!(ok.is_err() || back == msg, "connection {id}: echo differs");
        ok
    };
    if let Err(e) = round_trip(&mut c) {
        eprintln!("connection {id}: first round trip: {e}");
        return h;
    }
    drop(up);
    let Some(until) = go.recv() else { return h };
    while Instant::now() < until {
        let t = Instant::now();
        if let Err(e) = round_trip(&mut c) {
            eprintln!("connection {id}: {e}");
            break;
        }
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    h
}

fn load(addr: SocketAddr, o: &Opts) {
    // Every connection up and echoing before the clock starts: the
    // numbers are the steady state, not the connection burst.
    let (up_tx, up_rx) = gosched::chan::channel::<()>(0);
    let (go_tx, go_rx) = gosched::chan::channel::<Instant>(o.connections);
    let t = Instant::now();
    let hs: Vec<_> = (0..o.connections)
        .map(|id| {
            let (size, up, go) = (o.size, up_tx.clone(), go_rx.clone());
            gosched::spawn(move || client(addr, size, id, up, go))
        })
        .collect();
    drop(up_tx);
    assert!(up_rx.recv().is_none());
    let setup = t.elapsed();
    let t = Instant::now();
    let until = t + o.duration;
    for _ in 0..o.connections {
        go_tx.send(until).expect("clients wait");
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    for h in hs {
        all.add(h.join().expect("client panicked"))
            .expect("same histogram shape");
    }
    let secs = t.elapsed().as_secs_f64();
    let n = all.len();
    let us = |q: f64| all.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{} connections (up in {:.2} s) x {} B for {:.1} s: {} round trips, {:.0} req/s, {:.1} MB/s each way",
        o.connections,
        setup.as_secs_f64(),
        o.size,
        secs,
        n,
        n as f64 / secs,
        n as f64 * o.size as f64 / secs / 1e6
    );
    println!(
        "RTT µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        all.max() as f64 / 1e3
    );
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("echo: {e}");
            }
            eprintln!(
                "usage: echo [--connections N] [--size BYTES] [--duration SECS] [--procs P] \
                 [--server ADDR | --client ADDR]"
            );
            std::process::exit(2);
        }
    };
    let mut b = gosched::Builder::new();
    if let Some(p) = o.procs {
        b = b.procs(p);
    }
    let rt = b.build().expect("runtime");
    rt.block_on(|| match (&o.server, &o.client) {
        (Some(a), _) => {
            let l = TcpListener::bind(a.as_str()).expect("bind");
            println!("serving echo on {}", l.local_addr().expect("local_addr"));
            serve(l);
        }
        (None, Some(a)) => {
            let addr: SocketAddr = a.parse().expect("--client wants IP:PORT");
            load(addr, &o);
        }
        (None, None) => {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("local_addr");
            gosched::spawn(move || serve(l));
            load(addr, &o);
        }
    });
    let s = rt.stats();
    eprintln!(
        "threads {}, poll waits {}, poll wake-ups {}, preemptions: wake-up requests {}, cooperative {}, by signal {}",
        s.threads, s.poll_waits, s.poll_wakeups, s.preempt_wakeup, s.preempt_coop, s.preempt_async
    );
}
