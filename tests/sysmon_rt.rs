//! `Builder::sysmon_realtime`: sysmon at `SCHED_FIFO`, never the Ms it
//! starts; a clear error (or, from the environment, a warning) where the
//! process may not use real-time priorities. `Builder::sysmon_nice`: sysmon
//! at nice -20 by default where permitted, never the Ms it starts; what
//! `RLIMIT_NICE` allows where not. Each scenario runs in a child process:
//! thread policies, nice values and capabilities are process state.

mod common;

use std::time::Duration;

use common::{child_role, run_child};

/// `(comm, policy)` of every thread of this process (policy: field 41 of
/// /proc/self/task/TID/stat; 0 = SCHED_OTHER, 1 = SCHED_FIFO).
fn thread_policies() -> Vec<(String, u32)> {
    thread_stat_field(41)
        .into_iter()
        .map(|(c, v)| (c, v as u32))
        .collect()
}

/// `(comm, nice)` of every thread of this process (field 19).
fn thread_nices() -> Vec<(String, i64)> {
    thread_stat_field(19)
}

/// `(comm, field)` of every thread of this process: a numeric field of
/// /proc/self/task/TID/stat, counted from 1 as in proc(5).
fn thread_stat_field(field: usize) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = e.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // The thread ended meanwhile.
        };
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // Fields after the parenthesised command name start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let value = rest
            .split_whitespace()
            .nth(field - 3)
            .unwrap()
            .parse()
            .unwrap();
        out.push((comm.trim().to_owned(), value));
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

/// A goroutine blocked in a system call: sysmon takes its P and starts an
/// M for the other goroutine (Go's handoffp), so that some M was created by
/// sysmon's thread.
fn make_sysmon_start_an_m(rt: &gosched::Runtime) {
    rt.block_on(|| {
        let blocker = gosched::spawn(|| std::thread::sleep(Duration::from_millis(300)));
        let other = gosched::spawn(|| gosched::sleep(Duration::from_millis(50)));
        other.join().unwrap();
        blocker.join().unwrap();
    });
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
        make_sysmon_start_an_m(&rt);
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

/// Where the process may (root: CI), sysmon runs at nice -20 by default
/// and every M at 0, those sysmon started included (reset on fork).
#[test]
fn sysmon_is_nice_minus_20_by_default_and_the_threads_it_starts_are_not() {
    if child_role().is_some() {
        let rt = gosched::Builder::new().procs(1).build().unwrap();
        make_sysmon_start_an_m(&rt);
        let got = rt.stats().sysmon_nice;
        let nices = thread_nices();
        assert!(
            nices.contains(&("gosched-sysmon".to_owned(), got.into())),
            "Stats::sysmon_nice ({got}) is sysmon's nice value: {nices:?}"
        );
        let ms: Vec<_> = nices
            .iter()
            .filter(|(c, _)| c.starts_with("gosched-m"))
            .collect();
        assert!(ms.len() >= 2, "a second M was started: {nices:?}");
        assert!(
            ms.iter().all(|(_, n)| *n == 0),
            "every M at nice 0: {nices:?}"
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(got, -20, "root may lower a nice value");
        }
        println!("CHECKED {got}");
        return;
    }
    let out = run_child(
        "sysmon_is_nice_minus_20_by_default_and_the_threads_it_starts_are_not",
        "x",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("CHECKED"), "{}", out.describe());
}

/// Without `CAP_SYS_NICE`, sysmon takes the lowest nice value
/// `RLIMIT_NICE` allows (20 - limit) and the runtime works as before; with
/// `GOSCHED_SYSMONNICE=0` it asks for nothing even where it may.
#[test]
fn sysmon_takes_what_rlimit_nice_allows_and_nothing_when_told() {
    match child_role().as_deref() {
        Some(role @ ("limit30" | "limit0")) => {
            let limit = if role == "limit30" { 30 } else { 0 };
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: a valid rlimit for a valid resource. Raising the
            // hard limit needs CAP_SYS_RESOURCE (root may lack it, as on
            // the development VM): skip where it is refused (the mapping
            // is unit-tested in os::slice).
            if unsafe { libc::setrlimit(libc::RLIMIT_NICE, &lim) } != 0 {
                println!("SKIPPED");
                return;
            }
            forbid_realtime();
            let rt = gosched::Builder::new().procs(1).build().unwrap();
            assert_eq!(rt.block_on(|| gosched::spawn(|| 7).join().unwrap()), 7);
            let want = if limit == 30 { -10 } else { 0 };
            assert_eq!(rt.stats().sysmon_nice, want);
            println!("OK");
        }
        Some("off") => {
            let rt = gosched::Builder::new().build().unwrap();
            assert_eq!(rt.block_on(|| 7), 7);
            assert_eq!(rt.stats().sysmon_nice, 0);
            // sysmon's thread may still be starting (seen once in CI).
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut nices = thread_nices();
            while !nices.iter().any(|(c, _)| c == "gosched-sysmon")
                && std::time::Instant::now() < until
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
                nices = thread_nices();
            }
            assert!(
                nices.contains(&("gosched-sysmon".to_owned(), 0)),
                "{nices:?}"
            );
            println!("OK");
        }
        _ => {
            let test = "sysmon_takes_what_rlimit_nice_allows_and_nothing_when_told";
            for (role, env) in [
                ("limit30", vec![]),
                ("limit0", vec![]),
                ("off", vec![("GOSCHED_SYSMONNICE", "0")]),
            ] {
                let out = run_child(test, role, &env);
                assert!(out.status.success(), "{role}: {}", out.describe());
                assert!(
                    out.stdout.contains("OK") || out.stdout.contains("SKIPPED"),
                    "{role}: {}",
                    out.describe()
                );
            }
        }
    }
}

#[test]
fn a_malformed_or_out_of_range_nice_is_an_error() {
    if let Some(role) = child_role() {
        let e = gosched::Builder::new().build().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("GOSCHED_SYSMONNICE"), "{e}");
        assert!(e.to_string().contains(&role), "names the value: {e}");
        println!("OK");
        return;
    }
    for bad in ["-21", "1", "low"] {
        let out = run_child(
            "a_malformed_or_out_of_range_nice_is_an_error",
            bad,
            &[("GOSCHED_SYSMONNICE", bad)],
        );
        assert!(out.status.success(), "{bad}: {}", out.describe());
        assert!(out.stdout.contains("OK"), "{bad}: {}", out.describe());
    }
    let e = gosched::Builder::new()
        .sysmon_nice(-21)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("sysmon_nice(-21)"), "{e}");
}
