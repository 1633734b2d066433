//! Network round trips and throughput through the netpoller, server and
//! client in one process on 127.0.0.1 (hand-written: percentiles, not
//! criterion means). Go twin: `benches/go/net`; tokio twin:
//! `benches/tokio-net` (a separate crate).
//!
//! - `rtt`: one connection, 64-byte echo round trips (p50, p99, p99.9);
//! - `pipelined`: 64 connections, each with a writer goroutine streaming
//!   64-byte messages and a reader goroutine reading the echo back;
//!   throughput in messages and bytes per second each way.
//!
//! ```text
//! cargo bench --bench net                 # both
//! NET_PROCS=2 cargo bench --bench net     # Ps (default: all CPUs)
//! ```

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use gosched::net::{TcpListener, TcpStream};
use hdrhistogram::Histogram;

const MSG: usize = 64;
const RTT_WARMUP: usize = 2_000;
const RTT_N: usize = 50_000;
const CONNS: usize = 64;
const PER_CONN: usize = 80_000;

/// An echo server: one goroutine per connection. Returns its address.
fn server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    gosched::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            s.set_nodelay(true).unwrap();
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
    });
    addr
}

fn rtt(addr: std::net::SocketAddr) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let msg = [7u8; MSG];
    let mut back = [0u8; MSG];
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for i in 0..RTT_WARMUP + RTT_N {
        let t = Instant::now();
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
        if i >= RTT_WARMUP {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "net/rtt        1 connection, {MSG} B echo, {RTT_N} round trips: p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs",
        us(0.5),
        us(0.99),
        us(0.999)
    );
}

fn pipelined(addr: std::net::SocketAddr) {
    let t = Instant::now();
    let hs: Vec<_> = (0..CONNS)
        .map(|_| {
            let c = TcpStream::connect(addr).unwrap();
            c.set_nodelay(true).unwrap();
            let w = c.try_clone().unwrap();
            let writer = gosched::spawn(move || {
                let mut w = w;
                let batch = [1u8; MSG * 16];
                for _ in 0..PER_CONN / 16 {
                    w.write_all(&batch).unwrap();
                }
            });
            gosched::spawn(move || {
                let mut c = c;
                let mut buf = vec![0u8; 64 * 1024];
                let mut left = (PER_CONN / 16) * 16 * MSG;
                while left > 0 {
                    let n = c.read(&mut buf[..left.min(64 * 1024)]).unwrap();
                    assert!(n > 0, "early EOF");
                    left -= n;
                }
                writer.join().unwrap();
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let msgs = (CONNS * (PER_CONN / 16) * 16) as f64;
    println!(
        "net/pipelined  {CONNS} connections x {} messages of {MSG} B: {:.2} M msg/s, {:.1} MB/s each way ({:.2} s)",
        PER_CONN / 16 * 16,
        msgs / secs / 1e6,
        msgs * MSG as f64 / secs / 1e6,
        secs
    );
}

fn main() {
    let mut b = gosched::Builder::new();
    if let Some(p) = std::env::var("NET_PROCS").ok().and_then(|v| v.parse().ok()) {
        b = b.procs(p);
    }
    let rt = b.build().unwrap();
    rt.block_on(|| {
        let addr = server();
        rtt(addr);
        gosched::sleep(Duration::from_millis(10));
        pipelined(addr);
    });
    let s = rt.stats();
    println!(
        "net            threads {}, poll waits {}, poll wake-ups {}",
        s.threads, s.poll_waits, s.poll_wakeups
    );
}
