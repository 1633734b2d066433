//! `Builder::sysmon_realtime`: sysmon at `SCHED_FIFO`, never the Ms it
//! starts; a clear error (or, from the environment, a warning) where the
//! process may not use real-time priorities. Each scenario runs in a child
//! process: thread policies and capabilities are process state.

mod common;

use std::time::Duration;

use common::{child_role, run_child};

/// `(comm, policy)` of every thread of this process (policy: field 41 of
/// /proc/self/task/TID/stat; 0 = SCHED_OTHER, 1 = SCHED_FIFO).
fn thread_policies() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = e.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // The thread ended meanwhile.
        };
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // Fields after the parenthesised command name start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .unwrap()
            .parse()
            .unwrap();
        out.push((comm.trim().to_owned(), policy));
    }
    out
}

/// Drops every capability of this process (root included) and its
/// real-time priority limit, so that `SCHED_FIFO` is refused.
fn forbid_realtime() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let d = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a valid v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for a valid resource.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_RTPRIO, &lim) }, 0);
}

#[test]
fn sysmon_is_fifo_and_the_threads_it_starts_are_not() {
    if child_role().is_some() {
        let rt = match gosched::Builder::new()
            .procs(1)
            .sysmon_realtime(true)
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                // Not permitted where this runs: the refusal must say so.
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                println!("REFUSED {e}");
                return;
            }
        };
        assert!(rt.stats().sysmon_realtime);
        rt.block_on(|| {
            // A goroutine blocked in a system call: sysmon takes its P and
            // starts an M for the other goroutine (Go's handoffp).
            let blocker = gosched::spawn(|| std::thread::sleep(Duration::from_millis(300)));
            let other = gosched::spawn(|| gosched::sleep(Duration::from_millis(50)));
            other.join().unwrap();
            blocker.join().unwrap();
        });
        let policies = thread_policies();
        let ms: Vec<_> = policies
            .iter()
            .filter(|(c, _)| c.starts_with("gosched-m"))
            .collect();
        assert!(ms.len() >= 2, "a second M was started: {policies:?}");
        assert!(
            ms.iter().all(|(_, p)| *p == 0),
            "every M is SCHED_OTHER: {policies:?}"
        );
        assert!(
            policies.contains(&("gosched-sysmon".to_owned(), 1)),
            "sysmon is SCHED_FIFO: {policies:?}"
        );
        println!("CHECKED {}", ms.len());
        return;
    }
    let out = run_child("sysmon_is_fifo_and_the_threads_it_starts_are_not", "x", &[]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("CHECKED") || out.stdout.contains("REFUSED"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_refused_request_is_an_error_from_the_builder_and_a_warning_from_the_environment() {
    match child_role().as_deref() {
        Some("builder") => {
            forbid_realtime();
            let e = gosched::Builder::new()
                .sysmon_realtime(true)
                .build()
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
            let msg = e.to_string();
            assert!(msg.contains("sysmon_realtime(true)"), "{msg}");
            assert!(msg.contains("RLIMIT_RTPRIO"), "{msg}");
            // Off is always fine.
            let rt = gosched::Builder::new()
                .sysmon_realtime(false)
                .build()
                .unwrap();
            assert!(!rt.stats().sysmon_realtime);
            println!("OK");
        }
        Some("env") => {
            forbid_realtime();
            let rt = gosched::Builder::new().build().unwrap();
            assert!(!rt.stats().sysmon_realtime);
            assert_eq!(rt.block_on(|| 7), 7);
            println!("OK");
        }
        _ => {
            let test =
                "a_refused_request_is_an_error_from_the_builder_and_a_warning_from_the_environment";
            let out = run_child(test, "builder", &[]);
            assert!(out.status.success(), "{}", out.describe());
            assert!(out.stdout.contains("OK"), "{}", out.describe());
            let out = run_child(test, "env", &[("GOSCHED_SYSMONRT", "1")]);
            assert!(out.status.success(), "{}", out.describe());
            assert!(out.stdout.contains("OK"), "{}", out.describe());
            assert!(
                out.stderr.contains("GOSCHED_SYSMONRT=1 ignored"),
                "{}",
                out.describe()
            );
        }
    }
}

#[test]
fn a_malformed_environment_value_is_an_error() {
    if child_role().is_some() {
        let e = gosched::Builder::new().build().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("GOSCHED_SYSMONRT"), "{e}");
        println!("OK");
        return;
    }
    let out = run_child(
        "a_malformed_environment_value_is_an_error",
        "x",
        &[("GOSCHED_SYSMONRT", "yes")],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("OK"), "{}", out.describe());
}
