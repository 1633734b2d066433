//! Helpers shared by the preemption tests: a no-call CPU hog, latency and
//! fairness statistics, refusal counters by reason, and a child-process
//! runner for scenarios that may crash or hang.

#![allow(dead_code)]

#[path = "../common/child.rs"]
mod child;

use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Environment variable telling a re-executed test binary which child part
/// to run.
pub const CHILD_ENV: &str = "GOSCHED_PREEMPT_TEST_CHILD";

/// The child role this process was started with, if it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Serialises the CPU-heavy tests of one test binary: they measure
/// scheduling behaviour, which a concurrent test hogging both cores of the
/// CI machine would distort.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CPU hog with no calls into the runtime: an arithmetic loop that only
/// reads `stop` (Relaxed) between rounds. Returns the rounds it completed
/// (64 multiply-adds each), a measure of the CPU time it got.
#[inline(never)]
pub fn hog(stop: &AtomicBool) -> u64 {
    let mut rounds = 0u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            x = std::hint::black_box(
                x.wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407),
            );
        }
        rounds += 1;
    }
    std::hint::black_box(x);
    rounds
}

/// Spins without runtime calls for at least `d` (reads the clock every few
/// thousand multiply-adds; the clock is the vDSO, not the runtime).
#[inline(never)]
pub fn spin_for(d: Duration) -> u64 {
    let t = Instant::now();
    let mut x = 1u64;
    let mut rounds = 0u64;
    while t.elapsed() < d {
        for _ in 0..256 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        rounds += 1;
    }
    std::hint::black_box(x);
    rounds
}

/// The `p`-th percentile (0 < p <= 100) of `v`, nearest-rank.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    assert!(!v.is_empty());
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Jain's fairness index of `xs`: (sum x)^2 / (n * sum x^2); 1 is perfectly
/// fair, 1/n is one taker.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    if sq == 0.0 {
        return 0.0;
    }
    sum * sum / (xs.len() as f64 * sq)
}

/// The refusal count of `reason` in a stats snapshot (0 if unknown).
pub fn refused(s: &gosched::Stats, reason: &str) -> u64 {
    s.preempt_refused_by_reason
        .iter()
        .find(|(n, _)| *n == reason)
        .map_or(0, |r| r.1)
}

/// What a child process did.
#[derive(Debug)]
pub struct ChildOutcome {
    /// Exit status; None if it was killed for running past the deadline.
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl ChildOutcome {
    /// Panics with the child's output unless it exited with status 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            !self.timed_out && self.status.is_some_and(|s| s.success()),
            "{what}: child {} (after {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            if self.timed_out {
                "timed out: hang or deadlock".to_string()
            } else {
                format!("{:?}", self.status)
            },
            self.elapsed,
            tail(&self.stdout, 4000),
            tail(&self.stderr, 4000),
        );
    }

    /// The value of a `KEY=value` token the child printed on stderr.
    pub fn report(&self, key: &str) -> Option<u64> {
        let pat = format!("{key}=");
        self.stderr
            .split_whitespace()
            .filter_map(|w| w.strip_prefix(&pat))
            .find_map(|v| v.parse().ok())
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Re-runs this test binary restricted to test `test` with
/// `CHILD_ENV=role`, collecting its output; kills it after `timeout`.
pub fn run_child(test: &str, role: &str, timeout: Duration) -> ChildOutcome {
    let done = child::run_test(test, CHILD_ENV, role, timeout, |_| {});
    ChildOutcome {
        status: done.status,
        timed_out: done.status.is_none(),
        elapsed: done.elapsed,
        stdout: done.stdout,
        stderr: done.stderr,
    }
}
