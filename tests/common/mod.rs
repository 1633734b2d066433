//! Helpers shared by the integration tests: re-running one test of the
//! current test binary as a child process (for crashes and process-global
//! state such as environment variables), process counters (CPU time, OS
//! threads), and small utilities (a PRNG, panic payloads, polling).

#![allow(dead_code)]

mod child;

use std::any::Any;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable that tells a re-executed test binary which
/// role its test plays; its value is the role.
pub const CHILD_ENV: &str = "GOSCHED_TEST_CHILD";

/// How long a child may run before the parent kills it and fails.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Serialises the timing-sensitive tests of one test binary: they measure
/// how soon something happens, which a concurrent test keeping both cores
/// of the CI machine busy would distort.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The role this process was started with by [`run_child`], or `None` in
/// the parent (a normal test run).
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// What a finished child process left behind.
pub struct ChildOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ChildOutput {
    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    /// The number after `key` (e.g. `"parks="`) in the child's stdout,
    /// where the child printed `key<number>`; fails the test if absent.
    pub fn stdout_u64(&self, key: &str) -> u64 {
        self.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the child's output\n{}", self.describe()))
    }

    /// Everything about the child, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?} (signal {:?})\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.status,
            self.signal(),
            self.stderr,
            self.stdout
        )
    }
}

/// Runs test `test` (its full name) of the current test binary in a child
/// process, with `GOSCHED_TEST_CHILD=role` and the extra variables `envs`.
/// Every other `GOSCHED_*` variable of ours is removed, so the child sees
/// only what the test sets. Fails the test if the child runs longer than
/// [`CHILD_TIMEOUT`] (it is killed first).
pub fn run_child(test: &str, role: &str, envs: &[(&str, &str)]) -> ChildOutput {
    let done = child::run_test(test, CHILD_ENV, role, CHILD_TIMEOUT, |cmd| {
        for (k, v) in envs {
            cmd.env(k, v);
        }
    });
    let Some(status) = done.status else {
        panic!(
            "child {test} (role {role}) ran longer than {CHILD_TIMEOUT:?}: killed\n{}",
            done.stderr
        );
    };
    ChildOutput {
        status,
        stdout: done.stdout,
        stderr: done.stderr,
    }
}

/// Runs `body` in a child process (role: the test's name) when called
/// from the parent, asserting that it exits with status 0, and runs it
/// directly in the child.
pub fn in_child(test: &str, body: fn()) {
    match child_role() {
        Some(r) if r == test => body(),
        Some(_) => {}
        None => {
            let out = run_child(test, test, &[]);
            assert!(out.status.success(), "{}", out.describe());
        }
    }
}

/// The command [`run_child`] would start for `test` in role `role`, for a
/// test that must run the child itself (e.g. concurrently with its own
/// work, talking to it over a socket). The caller adds variables, pipes
/// and waits.
pub fn child_command(test: &str, role: &str) -> std::process::Command {
    child::child_command(test, CHILD_ENV, role)
}

/// How long a test may block on a runtime before [`watchdog`] ends the
/// process: far beyond what any test here needs, even on a loaded machine.
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// Turns a hang of the calling test into a quick failure: unless the
/// returned guard is dropped within [`HANG_LIMIT`], prints that the test
/// (named after the calling thread, as libtest names it) hung and exits
/// the whole test process with status 97. A scheduler bug that loses a
/// wake-up then costs a minute of CI, not its whole budget.
pub fn watchdog() -> Watchdog {
    let name = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_owned();
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(HANG_LIMIT) {
            // Straight to the file descriptor: libtest captures `eprintln!`
            // of test threads, and we are about to exit.
            let _ = writeln!(
                std::io::stderr(),
                "watchdog: test `{name}` still running after {HANG_LIMIT:?}: hung (lost wake-up or deadlock?)"
            );
            std::process::exit(97);
        }
    });
    Watchdog { _alive: tx }
}

/// The guard of [`watchdog`]; dropping it (also by a panic) disarms it.
pub struct Watchdog {
    _alive: mpsc::Sender<()>,
}

/// CPU time (user + system) consumed by the whole process so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: `getrusage` writes a plain-data struct that we own; all-zero
    // is a valid value of it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0, "getrusage");
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Voluntary context switches (sleeps: futex, epoll, ...) made so far by
/// each thread of this process whose name starts with `prefix`
/// (`gosched-m`: the workers; `gosched-sysmon`), by thread id. Subtract
/// two samples with `switches_since`.
pub fn voluntary_switches(prefix: &str) -> std::collections::HashMap<u32, u64> {
    let mut out = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .flatten()
    {
        let dir = e.path();
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        if let Some(n) = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            out.insert(tid, n);
        }
    }
    out
}

/// Switches between two `voluntary_switches` samples, over the threads in
/// the later one (a thread new since `before` counts from zero).
pub fn switches_since(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// OS threads of this process now (entries of `/proc/self/task`).
pub fn os_thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}

/// The kernel thread id of the calling thread. A real call each time (never
/// inlined, not a cached thread-local), so it stays right in a goroutine
/// that may have moved to another thread since the last call.
#[inline(never)]
pub fn os_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The message of a panic payload (`&str` or `String`), if it has one.
pub fn payload_str(p: &(dyn Any + Send)) -> Option<&str> {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
}

/// Polls `cond` every millisecond until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Marsaglia's xorshift64: deterministic test data without a rand crate.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
