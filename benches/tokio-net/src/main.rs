//! tokio twin of gosched's benches/net.rs: a 64-byte echo round trip on
//! one connection (p50, p99, p99.9), then 64 connections pipelined
//! (throughput); server and client in one process on 127.0.0.1. Runs on
//! `current_thread` and on the multi-thread runtime (`TOKIO_THREADS`
//! workers, default: all CPUs).

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MSG: usize = 64;
const RTT_WARMUP: usize = 2_000;
const RTT_N: usize = 50_000;
const CONNS: usize = 64;
const PER_CONN: usize = 80_000;

async fn server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
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

async fn rtt(flavor: &str, addr: std::net::SocketAddr) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    let msg = [7u8; MSG];
    let mut back = [0u8; MSG];
    let mut ds = Vec::with_capacity(RTT_N);
    for i in 0..RTT_WARMUP + RTT_N {
        let t = Instant::now();
        c.write_all(&msg).await.unwrap();
        c.read_exact(&mut back).await.unwrap();
        if i >= RTT_WARMUP {
            ds.push(t.elapsed());
        }
    }
    ds.sort();
    let q = |f: f64| ds[(f * (ds.len() - 1) as f64) as usize].as_nanos() as f64 / 1e3;
    println!(
        "tokio {flavor:<14} net/rtt        1 connection, {MSG} B echo, {RTT_N} round trips: p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs",
        q(0.5),
        q(0.99),
        q(0.999)
    );
}

async fn pipelined(flavor: &str, addr: std::net::SocketAddr) {
    let t = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..CONNS {
        let c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        let (mut r, mut w) = c.into_split();
        tokio::spawn(async move {
            let batch = [1u8; MSG * 16];
            for _ in 0..PER_CONN / 16 {
                w.write_all(&batch).await.unwrap();
            }
            // Keep the write half open until the reader is done.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        hs.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = (PER_CONN / 16) * 16 * MSG;
            while left > 0 {
                let n = r.read(&mut buf[..left.min(64 * 1024)]).await.unwrap();
                assert!(n > 0, "early EOF");
                left -= n;
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let msgs = (CONNS * (PER_CONN / 16) * 16) as f64;
    println!(
        "tokio {flavor:<14} net/pipelined  {CONNS} connections x {} messages of {MSG} B: {:.2} M msg/s, {:.1} MB/s each way ({:.2} s)",
        PER_CONN / 16 * 16,
        msgs / secs / 1e6,
        msgs * MSG as f64 / secs / 1e6,
        secs
    );
}

fn run(flavor: &str, rt: tokio::runtime::Runtime) {
    rt.block_on(async {
        let addr = server().await;
        rtt(flavor, addr).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        pipelined(flavor, addr).await;
    });
    rt.shutdown_background();
}

fn main() {
    let ct = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    run("current_thread", ct);
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("TOKIO_THREADS").ok().and_then(|v| v.parse().ok()) {
        b.worker_threads(n);
    }
    run("multi_thread", b.enable_all().build().unwrap());
}
