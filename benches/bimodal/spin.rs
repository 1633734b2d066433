//! What every Rust server of the bimodal benchmark shares (gosched, std,
//! and the tokio twin, which includes this file with `#[path]`): the wire
//! format, the service-time loop and the request handler.
//!
//! - Request: 16 bytes, little-endian: the request id (`u64`), then the
//!   service time in nanoseconds (`u64`).
//! - Reply: 8 bytes, the request id, sent when the service time has been
//!   spun.
//!
//! The service time is CPU work, not a deadline: a loop of dependent
//! multiply-adds (an LCG step, ~4 cycles each) that calls nothing, so a
//! preemptive scheduler can stop it anywhere and a request that was
//! preempted still does all its work when it resumes (a loop that spun
//! until `start + service` on a clock would finish early after being
//! preempted and flatter preemptive servers). Each server calibrates the
//! loop at start-up (the fastest of several timed runs, so a moment of
//! interference does not make it slow); the Go twin does the same with the
//! same loop.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::Instant;

/// Bytes in a request: id, service time in ns.
pub const REQUEST: usize = 16;
/// Bytes in a reply: the id.
pub const REPLY: usize = 8;

/// `n` dependent LCG steps from `x`. Never inlined, so the compiler sees
/// one opaque loop (and cannot hoist it out of the handler).
#[inline(never)]
pub fn lcg(x: u64, n: u64) -> u64 {
    let mut x = x;
    for _ in 0..n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
    }
    x
}

/// The loop's speed on this machine.
#[derive(Clone, Copy, Debug)]
pub struct Spinner {
    /// LCG steps per nanosecond.
    pub steps_per_ns: f64,
}

impl Spinner {
    /// Times 2 ms worth of steps 15 times and keeps the fastest run.
    pub fn calibrate() -> Spinner {
        const N: u64 = 1_000_000;
        let mut best = f64::MAX;
        for _ in 0..15 {
            let t = Instant::now();
            black_box(lcg(black_box(1), black_box(N)));
            best = best.min(t.elapsed().as_nanos().max(1) as f64);
        }
        Spinner {
            steps_per_ns: N as f64 / best,
        }
    }

    /// Spins `ns` nanoseconds of CPU work.
    pub fn spin(&self, ns: u64) {
        let steps = (ns as f64 * self.steps_per_ns) as u64;
        black_box(lcg(black_box(ns), steps));
    }
}

/// Serves one connection until EOF or an error: read a request, spin its
/// service time, reply with its id.
pub fn handle<S: Read + Write>(mut s: S, sp: Spinner) -> io::Result<()> {
    let mut req = [0u8; REQUEST];
    loop {
        match s.read_exact(&mut req) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (id, ns) = parse(&req);
        sp.spin(ns);
        s.write_all(&id.to_le_bytes())?;
    }
}

/// The id and service time of a request.
pub fn parse(req: &[u8; REQUEST]) -> (u64, u64) {
    let mut id = [0u8; 8];
    let mut ns = [0u8; 8];
    id.copy_from_slice(&req[..8]);
    ns.copy_from_slice(&req[8..]);
    (u64::from_le_bytes(id), u64::from_le_bytes(ns))
}

/// The line a server prints on stdout once it listens, which the driver
/// waits for: `ADDR 127.0.0.1:port STEPS_PER_NS`.
pub fn announce(addr: std::net::SocketAddr, steps_per_ns: f64) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "ADDR {addr} {steps_per_ns:.4}");
    let _ = out.flush();
}
