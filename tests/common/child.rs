//! Re-running one test of the current test binary as a child process: the
//! part both helper modules (`common`, `common_preempt`) share. Each adds
//! its own view of the result (`ChildOutput`, `ChildOutcome`).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a child left behind.
pub struct Finished {
    /// Exit status; `None` if it was killed for running past its time.
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

/// A command that re-runs test `test` (its full name) of this binary, alone,
/// with `env_key=role`, without any `GOSCHED_*` variable of the parent (the
/// child sees only what the test sets) and without core dumps (a
/// deliberately crashing child must not spend time and disk on one).
pub fn child_command(test: &str, env_key: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        test,
        "--exact",
        "--nocapture",
        "--include-ignored",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GOSCHED_") {
            cmd.env_remove(k);
        }
    }
    // Keep a panicking child's report short.
    cmd.env("RUST_BACKTRACE", "0");
    // SAFETY: the closure runs in the forked child before exec and calls
    // only `setrlimit`, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    cmd.env(env_key, role);
    cmd
}

/// Runs `child_command(test, env_key, role)` (plus `configure`'s changes)
/// like [`run`], then checks that libtest ran exactly that one test in the
/// child: a misspelt or renamed test name would otherwise match nothing, and
/// the child would "pass" having run no test at all. libtest prints
/// `running N tests` before the test starts, so the line is there even when
/// the child then crashes or is killed.
pub fn run_test(
    test: &str,
    env_key: &str,
    role: &str,
    timeout: Duration,
    configure: impl FnOnce(&mut Command),
) -> Finished {
    let mut cmd = child_command(test, env_key, role);
    configure(&mut cmd);
    let done = run(cmd, timeout);
    assert!(
        done.stdout.lines().any(|l| l == "running 1 test"),
        "the child for {test} (role {role}) did not run exactly one test; stdout:\n{}",
        done.stdout
    );
    done
}

/// Runs `cmd` with stdout and stderr collected, killing it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Finished {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the child test process");
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out_t = collect(Box::new(child.stdout.take().expect("child stdout")));
    let err_t = collect(Box::new(child.stderr.take().expect("child stderr")));
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the child") {
            break Some(st);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Finished {
        status,
        elapsed: t.elapsed(),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}
