//! The open-loop client: Poisson arrivals at a fixed offered rate, sent at
//! their intended times whatever the server does, with each request's
//! latency measured from its *intended* send time to the arrival of its
//! reply (no coordinated omission: a server that stalls is charged for
//! every request that should have been sent meanwhile).
//!
//! One thread, pinned by the caller to its own CPU, busy-polls: it sends
//! every request whose time has come, then collects replies with a
//! non-blocking `epoll_wait`, and loops. Requests go over `conns`
//! connections, each to the connection with the fewest replies
//! outstanding (ties in turn), as a connection pool would: a short request
//! queues behind a long one on the same connection only when every
//! connection is busy. The schedule (arrival times and which requests are
//! long) comes from a seeded generator, so every contender sees the same
//! sequence at a given load.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::spin::{REPLY, REQUEST};

/// The request mix.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Service time of a short request.
    pub short: Duration,
    /// Service time of a long request.
    pub long: Duration,
    /// Share of long requests (0.005: 0.5 %).
    pub long_share: f64,
}

impl Mix {
    /// Mean service time in ns.
    pub fn mean_ns(&self) -> f64 {
        self.short.as_nanos() as f64 * (1.0 - self.long_share)
            + self.long.as_nanos() as f64 * self.long_share
    }
}

/// One run of the client at one offered rate.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Offered requests per second.
    pub rate: f64,
    /// How long requests are sent.
    pub secs: Duration,
    /// Requests intended before this are sent but not measured.
    pub warmup: Duration,
    /// Connections.
    pub conns: usize,
    /// Seed of the schedule.
    pub seed: u64,
    /// How long to wait for the last replies after the last send.
    pub drain: Duration,
}

/// What one run measured.
pub struct Point {
    /// Latencies of short requests (ns).
    pub short: Histogram<u64>,
    /// Latencies of long requests (ns).
    pub long: Histogram<u64>,
    /// Replies that arrived during the measured window, per second.
    pub achieved: f64,
    /// Requests never answered before the drain ended (recorded in the
    /// histograms with their age at that moment, a lower bound).
    pub lost: u64,
}

/// SplitMix64: a small, good generator for the schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// One scheduled request: intended send time (ns after the start) and kind.
#[derive(Clone, Copy)]
struct Req {
    at: u64,
    long: bool,
}

fn schedule(run: &Run, mix: &Mix) -> Vec<Req> {
    let mut rng = Rng(run.seed);
    let end = run.secs.as_nanos() as f64;
    let mut t = 0.0;
    let mut v = Vec::with_capacity((run.rate * run.secs.as_secs_f64() * 1.1) as usize + 16);
    loop {
        // Exponential inter-arrival times: a Poisson process of `rate`.
        t += -rng.unit().ln() / run.rate * 1e9;
        if t >= end {
            return v;
        }
        v.push(Req {
            at: t as u64,
            long: rng.unit() <= mix.long_share,
        });
    }
}

struct Conn {
    s: TcpStream,
    outstanding: u32,
    /// Bytes of a partly received reply.
    rbuf: Vec<u8>,
    /// Bytes of requests the socket did not take yet.
    wbuf: Vec<u8>,
}

impl Conn {
    fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.s.write(&self.wbuf) {
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The epoll instance of a run.
struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call;
        // `self.0` is our open epoll fd.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ready tokens, without blocking.
    fn poll(&self, evs: &mut [libc::epoll_event]) -> io::Result<usize> {
        // SAFETY: `evs` is a writable buffer of `evs.len()` events.
        let n = unsafe { libc::epoll_wait(self.0, evs.as_mut_ptr(), evs.len() as i32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the fd and close it once.
        unsafe { libc::close(self.0) };
    }
}

/// Runs the schedule of `run` against the server at `addr`.
pub fn run(addr: SocketAddr, run: &Run, mix: &Mix) -> io::Result<Point> {
    let reqs = schedule(run, mix);
    let ep = Epoll::new()?;
    let mut conns = Vec::with_capacity(run.conns);
    for i in 0..run.conns.max(1) {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        ep.add(s.as_raw_fd(), i as u64)?;
        conns.push(Conn {
            s,
            outstanding: 0,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
        });
    }
    let mut short = Histogram::<u64>::new_with_bounds(1_000, 600_000_000_000, 3).unwrap();
    let mut long = short.clone();
    let short_ns = mix.short.as_nanos() as u64;
    let long_ns = mix.long.as_nanos() as u64;
    let warm = run.warmup.as_nanos() as u64;
    let end = run.secs.as_nanos() as u64;
    let give_up = end.saturating_add(run.drain.as_nanos() as u64);
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = [0u8; 4096];
    let mut next = 0usize;
    let mut turn = 0usize;
    let mut waiting = 0u64;
    let mut in_window = 0u64;
    let mut pending_writes = false;
    let mut answered = vec![false; reqs.len()];
    let start = Instant::now();
    loop {
        let now = start.elapsed().as_nanos() as u64;
        // 1. Send everything that is due, at once: a late send is the
        //    client's fault, and its latency still counts from `at`.
        while next < reqs.len() && reqs[next].at <= now {
            let r = reqs[next];
            let n = conns.len();
            let mut best = turn % n;
            for k in 0..n {
                let c = (turn + k) % n;
                if conns[c].outstanding < conns[best].outstanding {
                    best = c;
                }
            }
            turn = turn.wrapping_add(1);
            let mut msg = [0u8; REQUEST];
            msg[..8].copy_from_slice(&(next as u64).to_le_bytes());
            let ns = if r.long { long_ns } else { short_ns };
            msg[8..].copy_from_slice(&ns.to_le_bytes());
            let c = &mut conns[best];
            c.wbuf.extend_from_slice(&msg);
            c.flush()?;
            pending_writes |= !c.wbuf.is_empty();
            c.outstanding += 1;
            waiting += 1;
            next += 1;
        }
        if pending_writes {
            pending_writes = false;
            for c in &mut conns {
                c.flush()?;
                pending_writes |= !c.wbuf.is_empty();
            }
        }
        // 2. Collect replies.
        let n = ep.poll(&mut evs)?;
        for ev in &evs[..n] {
            let token = ev.u64 as usize;
            let c = &mut conns[token];
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed a connection",
                        ))
                    }
                    Ok(k) => c.rbuf.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let got = start.elapsed().as_nanos() as u64;
            let whole = c.rbuf.len() / REPLY * REPLY;
            for chunk in c.rbuf[..whole].chunks_exact(REPLY) {
                let mut id = [0u8; REPLY];
                id.copy_from_slice(chunk);
                let id = u64::from_le_bytes(id) as usize;
                let (Some(r), Some(false)) = (reqs.get(id), answered.get(id).copied()) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("reply for unknown or answered request {id}"),
                    ));
                };
                answered[id] = true;
                c.outstanding = c.outstanding.saturating_sub(1);
                waiting = waiting.saturating_sub(1);
                if got >= warm && got < end {
                    in_window += 1;
                }
                if r.at >= warm {
                    let h = if r.long { &mut long } else { &mut short };
                    h.saturating_record(got.saturating_sub(r.at));
                }
            }
            c.rbuf.drain(..whole);
        }
        if next == reqs.len() && (waiting == 0 || now >= give_up) {
            break;
        }
    }
    // Requests never answered count with their age at give-up: a lower
    // bound of their latency, so an overloaded point is not flattered by
    // dropping its slowest requests.
    let now = start.elapsed().as_nanos() as u64;
    for (r, _) in reqs[..next]
        .iter()
        .zip(&answered)
        .filter(|(r, a)| !**a && r.at >= warm)
    {
        let h = if r.long { &mut long } else { &mut short };
        h.saturating_record(now.saturating_sub(r.at));
    }
    let window = end.saturating_sub(warm).max(1) as f64 / 1e9;
    Ok(Point {
        short,
        long,
        achieved: in_window as f64 / window,
        lost: waiting,
    })
}
