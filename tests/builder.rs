//! `Builder` validation and the `GOSCHED_*` environment knobs. Invalid
//! settings are an `InvalidInput` error naming the setting and the value,
//! never a panic. Environment variables are process-global, so every case
//! that sets one runs in a child process (this test binary re-executed).

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{child_role, run_child, ChildOutput};
use gosched::{Builder, Runtime};

/// Child side: build from the environment and report on stderr.
fn report_build(b: Builder) {
    match b.build() {
        Ok(rt) => {
            let s = rt.stats();
            eprintln!(
                "BUILD-OK procs={} quantum={:?} async_preempt={}",
                s.procs, s.quantum, s.async_preempt
            );
            assert_eq!(rt.block_on(|| gosched::spawn(|| 2 + 2).join().unwrap()), 4);
        }
        Err(e) => eprintln!("BUILD-ERR {:?}: {e}", e.kind()),
    }
    match Runtime::new() {
        Ok(_) => eprintln!("NEW-OK"),
        Err(e) => eprintln!("NEW-ERR {:?}: {e}", e.kind()),
    }
}

/// Parent side: the child's line that starts with `prefix`.
fn line<'a>(out: &'a ChildOutput, prefix: &str) -> &'a str {
    assert!(out.status.success(), "{}", out.describe());
    out.stderr
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line\n{}", out.describe()))
}

#[test]
fn procs_zero_is_an_invalid_input_error() {
    let e = Builder::new().procs(0).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("procs(0)"), "{e}");
    // The smallest valid value works.
    let rt = Builder::new().procs(1).build().unwrap();
    assert_eq!(rt.stats().procs, 1);
}

#[test]
fn stack_size_outside_its_range_is_an_error_naming_the_value() {
    for bad in [100usize, 2 << 30] {
        let e = Builder::new().stack_size(bad).build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains(&format!("stack_size({bad})")), "{e}");
    }
    // The minimum (16 KiB) is accepted and runs goroutines.
    let rt = Builder::new()
        .procs(1)
        .stack_size(16 << 10)
        .build()
        .unwrap();
    assert_eq!(rt.stats().stack_size, 16 << 10);
    assert_eq!(rt.block_on(|| gosched::spawn(|| 1).join().unwrap()), 1);
}

#[test]
fn preempt_quantum_below_the_minimum_is_an_error() {
    let e = Builder::new()
        .preempt_quantum(Duration::from_micros(10))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(
        msg.contains("preempt_quantum(") && msg.contains("10µs"),
        "{msg}"
    );
    let rt = Builder::new()
        .preempt_quantum(gosched::MIN_QUANTUM)
        .build()
        .unwrap();
    assert_eq!(rt.stats().quantum, gosched::MIN_QUANTUM);
}

#[test]
fn malformed_environment_variables_are_errors_naming_them() {
    if child_role().is_some() {
        return report_build(Builder::new());
    }
    // Each malformed variable, alone and beside settings that make it moot
    // (a flag that only matters with asynchronous preemption on is still
    // checked with it off: a typo is never silently ignored).
    type Beside = &'static [(&'static str, &'static str)];
    let cases: [(&str, &str, Beside); 12] = [
        ("GOSCHED_MAXPROCS", "abc", &[]),
        ("GOSCHED_MAXPROCS", "0", &[]),
        ("GOSCHED_MAXPROCS", "-1", &[]),
        ("GOSCHED_QUANTUM", "fast", &[]),
        ("GOSCHED_ASYNCPREEMPTOFF", "yes", &[]),
        ("GOSCHED_SCHEDTRACE", "x", &[]),
        ("GOSCHED_SLICETIMEROFF", "yes", &[]),
        (
            "GOSCHED_SLICETIMEROFF",
            "yes",
            &[("GOSCHED_ASYNCPREEMPTOFF", "1")],
        ),
        (
            "GOSCHED_SLICETIMEROFF",
            "2",
            &[("GOSCHED_WAKEUPPREEMPTOFF", "1")],
        ),
        (
            "GOSCHED_WAKEUPPREEMPTOFF",
            "on",
            &[("GOSCHED_ASYNCPREEMPTOFF", "1")],
        ),
        // Read once per process by the leaf table; used to be ignored
        // unless exactly "1".
        ("GOSCHED_LEAFPREEMPTOFF", "yes", &[]),
        (
            "GOSCHED_LEAFPREEMPTOFF",
            "2",
            &[("GOSCHED_ASYNCPREEMPTOFF", "1")],
        ),
    ];
    for (var, value, beside) in cases {
        let mut vars = vec![(var, value)];
        vars.extend_from_slice(beside);
        let out = run_child(
            "malformed_environment_variables_are_errors_naming_them",
            "env",
            &vars,
        );
        for prefix in ["BUILD-", "NEW-"] {
            let l = line(&out, prefix);
            assert!(
                l.starts_with(&format!("{prefix}ERR InvalidInput: ")),
                "{var}={value}: {l}"
            );
            assert!(
                l.contains(var) && l.contains(value),
                "{var}={value}: the error names neither: {l}"
            );
        }
    }
}

#[test]
fn gosched_maxprocs_sets_the_number_of_ps() {
    if child_role().is_some() {
        return report_build(Builder::new());
    }
    let out = run_child(
        "gosched_maxprocs_sets_the_number_of_ps",
        "env",
        &[("GOSCHED_MAXPROCS", "3")],
    );
    assert!(
        line(&out, "BUILD-").starts_with("BUILD-OK procs=3 "),
        "{}",
        out.describe()
    );
    let out = run_child(
        "gosched_maxprocs_sets_the_number_of_ps",
        "env",
        &[
            ("GOSCHED_QUANTUM", "500us"),
            ("GOSCHED_ASYNCPREEMPTOFF", "1"),
        ],
    );
    let l = line(&out, "BUILD-");
    assert!(
        l.contains(" quantum=500µs ") && l.ends_with("async_preempt=false"),
        "{l}"
    );
}

#[test]
fn explicit_builder_calls_win_over_the_environment() {
    if child_role().is_some() {
        return report_build(
            Builder::new()
                .procs(1)
                .preempt_quantum(Duration::from_millis(2))
                .async_preempt(false),
        );
    }
    let out = run_child(
        "explicit_builder_calls_win_over_the_environment",
        "env",
        &[
            ("GOSCHED_MAXPROCS", "3"),
            ("GOSCHED_QUANTUM", "500us"),
            ("GOSCHED_ASYNCPREEMPTOFF", "0"),
        ],
    );
    let l = line(&out, "BUILD-");
    assert_eq!(
        l,
        "BUILD-OK procs=1 quantum=2ms async_preempt=false",
        "{}",
        out.describe()
    );
    // Runtime::new() takes everything from the environment.
    assert_eq!(line(&out, "NEW-"), "NEW-OK");
}

#[test]
fn schedtrace_prints_sched_lines() {
    if child_role().is_some() {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let t = std::time::Instant::now();
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    gosched::spawn(move || {
                        while t.elapsed() < Duration::from_millis(300) {
                            gosched::sleep(Duration::from_millis(1));
                            gosched::yield_now();
                        }
                    })
                })
                .collect();
            hs.into_iter().for_each(|h| h.join().unwrap());
        });
        return;
    }
    let out = run_child(
        "schedtrace_prints_sched_lines",
        "trace",
        &[("GOSCHED_SCHEDTRACE", "100")],
    );
    assert!(out.status.success(), "{}", out.describe());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("SCHED "))
        .collect();
    assert!(
        !lines.is_empty(),
        "no SCHED line in 300 ms at a 100 ms period\n{}",
        out.describe()
    );
    // Go's field names, in Go's order, so tools that read Go's lines read
    // ours.
    let fields = [
        "gomaxprocs",
        "idleprocs",
        "threads",
        "spinningthreads",
        "needspinning",
        "idlethreads",
        "runqueue",
    ];
    for l in &lines {
        let (head, queues) = l.split_once(" [").expect("per-P queue lengths in brackets");
        let kv: Vec<(&str, &str)> = head
            .split_once(": ")
            .expect("SCHED <t>ms: ...")
            .1
            .split(' ')
            .map(|f| f.split_once('=').expect("name=value"))
            .collect();
        let names: Vec<&str> = kv.iter().map(|f| f.0).collect();
        assert_eq!(names, fields, "{l}");
        assert!(kv.iter().all(|f| f.1.parse::<u64>().is_ok()), "{l}");
        assert_eq!(kv[0].1, "2", "{l}");
        // Then gosched's own field: goroutines parked on the netpoller.
        let (queues, extra) = queues.split_once("] ").expect("[...] pollwait=N");
        assert_eq!(queues.split(' ').count(), 2, "{l}");
        assert!(extra.starts_with("pollwait="), "{l}");
    }
    // And without the variable, nothing.
    let quiet = run_child("schedtrace_prints_sched_lines", "trace", &[]);
    assert!(quiet.status.success(), "{}", quiet.describe());
    assert!(!quiet.stderr.contains("SCHED "), "{}", quiet.describe());
}

#[test]
fn migrate_without_allow_migrate_is_an_error_naming_both() {
    use gosched::PreemptMode;
    let e = Builder::new()
        .preempt_mode(PreemptMode::Migrate)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(
        msg.contains("preempt_mode(Migrate)") && msg.contains("allow_migrate"),
        "{msg}"
    );
    // ThreadAffine, the default, needs no acknowledgement.
    let rt = Builder::new()
        .preempt_mode(PreemptMode::ThreadAffine)
        .build()
        .unwrap();
    assert_eq!(rt.stats().mode, PreemptMode::ThreadAffine);
    // allow_migrate alone does not choose Migrate.
    // SAFETY: no goroutine runs on this runtime.
    let rt = unsafe { Builder::new().allow_migrate() }.build().unwrap();
    assert_eq!(rt.stats().mode, PreemptMode::ThreadAffine);
    // Both together: Migrate.
    let b = Builder::new().procs(1).preempt_mode(PreemptMode::Migrate);
    // SAFETY: the only goroutine adds two integers: it holds no thread
    // identity (no thread-locals, no stdout) at any instruction.
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    assert_eq!(rt.stats().mode, PreemptMode::Migrate);
    assert_eq!(rt.block_on(|| 40 + 2), 42);
}

#[test]
fn procs_above_max_procs_is_an_error_naming_the_value() {
    for bad in [gosched::MAX_PROCS + 1, 10_000_000, usize::MAX] {
        let e = Builder::new().procs(bad).build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("procs({bad})")) && msg.contains("MAX_PROCS"),
            "{msg}"
        );
    }
    // The maximum itself is accepted and runs goroutines.
    let rt = Builder::new().procs(gosched::MAX_PROCS).build().unwrap();
    assert_eq!(rt.stats().procs, gosched::MAX_PROCS);
    assert_eq!(rt.block_on(|| gosched::spawn(|| 3).join().unwrap()), 3);
}

#[test]
fn gosched_maxprocs_above_max_procs_is_an_error_naming_it() {
    if child_role().is_some() {
        return report_build(Builder::new());
    }
    for value in [
        "1025",
        "10000000",
        "18446744073709551615",
        "18446744073709551616",
    ] {
        let out = run_child(
            "gosched_maxprocs_above_max_procs_is_an_error_naming_it",
            "env",
            &[("GOSCHED_MAXPROCS", value)],
        );
        for prefix in ["BUILD-", "NEW-"] {
            let l = line(&out, prefix);
            assert!(
                l.starts_with(&format!("{prefix}ERR InvalidInput: "))
                    && l.contains("GOSCHED_MAXPROCS")
                    && l.contains(value),
                "GOSCHED_MAXPROCS={value}: {l}"
            );
        }
    }
}

/// `preempt_quantum(Duration::MAX)` means "no time-slice preemption": the
/// runtime runs goroutines that sleep, yield, block and spin past any
/// ordinary quantum, and sysmon never asks anyone to yield. (Its deadline
/// arithmetic once overflowed: a panic on a worker thread, then a hang.)
/// In a child process, so a panic or hang is caught.
#[test]
fn huge_preempt_quantum_means_no_time_slice_preemption() {
    if child_role().is_some() {
        // The last one from GOSCHED_QUANTUM (set by the parent), which
        // saturates at u64::MAX ns.
        let from_env = Duration::from_nanos(u64::MAX);
        for quantum in [Duration::MAX, Duration::from_secs(u64::MAX / 2), from_env] {
            // Wake-up preemption is another kind, with its own knob; off
            // here so that every preemption counted is a time-slice one.
            let b = Builder::new().procs(2).wakeup_preempt(false);
            let b = if quantum == from_env {
                b
            } else {
                b.preempt_quantum(quantum)
            };
            let rt = b.build().unwrap();
            assert_eq!(rt.stats().quantum, quantum);
            let sum = rt.block_on(|| {
                // Every P idle, so sysmon sleeps idle until the far timer;
                // a plain thread's send makes a P busy again first (sysmon's
                // wake-up check compares against now + quantum).
                let far = gosched::chan::after(Duration::from_secs(600));
                let (tx, rx) = gosched::chan::channel(0);
                let th = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    tx.send(()).unwrap();
                });
                rx.recv().unwrap();
                th.join().unwrap();
                gosched::sleep(Duration::from_millis(30));
                let hs: Vec<_> = (0..4u64)
                    .map(|i| {
                        gosched::spawn(move || {
                            // A no-call spin well past the 10 ms default.
                            let t = std::time::Instant::now();
                            let mut x = i;
                            while t.elapsed() < Duration::from_millis(60) {
                                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                            }
                            gosched::yield_now();
                            gosched::blocking(|| std::thread::sleep(Duration::from_millis(5)));
                            gosched::sleep(Duration::from_millis(1));
                            i
                        })
                    })
                    .collect();
                let sum = hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>();
                drop(far);
                sum
            });
            assert_eq!(sum, 6);
            let st = rt.stats();
            eprintln!(
                "QUANTUM-OK {quantum:?} preempt_coop={} preempt_async={}",
                st.preempt_coop, st.preempt_async
            );
        }
        return;
    }
    let out = run_child(
        "huge_preempt_quantum_means_no_time_slice_preemption",
        "quantum",
        &[("GOSCHED_QUANTUM", "100000000000000s")],
    );
    assert!(out.status.success(), "{}", out.describe());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("QUANTUM-OK"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.describe());
    for l in lines {
        assert!(
            l.ends_with("preempt_coop=0 preempt_async=0"),
            "sysmon preempted under a huge quantum: {l}"
        );
    }
}

/// `GOSCHED_SCHEDDETAIL=1` adds Go's per-P, per-M and per-G lines.
#[test]
fn scheddetail_prints_p_m_and_g_lines() {
    if child_role().is_some() {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let (tx, rx) = gosched::chan::channel::<()>(0);
            let h = gosched::spawn(move || rx.recv());
            std::thread::sleep(Duration::from_millis(250));
            tx.send(()).unwrap();
            h.join().unwrap();
        });
        return;
    }
    let out = run_child(
        "scheddetail_prints_p_m_and_g_lines",
        "detail",
        &[("GOSCHED_SCHEDTRACE", "100"), ("GOSCHED_SCHEDDETAIL", "1")],
    );
    assert!(out.status.success(), "{}", out.describe());
    let err = &out.stderr;
    assert!(err.contains("SCHED "), "{}", out.describe());
    assert!(err.contains("\n  P0: status="), "{}", out.describe());
    assert!(err.contains("\n  P1: status="), "{}", out.describe());
    assert!(err.contains(" schedtick="), "{}", out.describe());
    assert!(err.contains("\n  M1: p="), "{}", out.describe());
    // The main goroutine is running (it sleeps its thread) and the spawned
    // one waits on the channel: Go's status numbers 2 and 4.
    assert!(err.contains(" status=2 m="), "{}", out.describe());
    assert!(err.contains(" status=4 m=-1"), "{}", out.describe());
    let bad = run_child(
        "scheddetail_prints_p_m_and_g_lines",
        "detail",
        &[
            ("GOSCHED_SCHEDTRACE", "100"),
            ("GOSCHED_SCHEDDETAIL", "yes"),
        ],
    );
    assert!(
        !bad.status.success()
            && bad.stderr.contains("GOSCHED_SCHEDDETAIL=")
            && bad.stderr.contains("yes"),
        "{}",
        bad.describe()
    );
}

/// More Ps than `max_threads` can run (`2 * procs + 2` threads) is an
/// `InvalidInput` error naming both numbers, from the builder and from the
/// environment. It used to build, and the program died of thread
/// exhaustion (exit 2) as soon as the Ps were busy.
#[test]
fn procs_that_max_threads_cannot_run_are_an_error_naming_both() {
    if child_role().is_some() {
        report_build(Builder::new());
        return;
    }
    let e = Builder::new().procs(8).max_threads(3).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string()
            .contains("procs 8 needs max_threads >= 18, have 3"),
        "{e}"
    );
    let e = Builder::new().procs(1).max_threads(3).build().unwrap_err();
    assert!(
        e.to_string()
            .contains("procs 1 needs max_threads >= 4, have 3"),
        "{e}"
    );
    let rt = Builder::new().procs(1).max_threads(4).build().unwrap();
    assert_eq!(rt.block_on(|| 1), 1);
    drop(rt);
    let out = run_child(
        "procs_that_max_threads_cannot_run_are_an_error_naming_both",
        "env",
        &[("GOSCHED_MAXPROCS", "3"), ("GOSCHED_MAXTHREADS", "7")],
    );
    let l = line(&out, "BUILD-ERR");
    assert!(
        l.contains("InvalidInput") && l.contains("procs 3 needs max_threads >= 8, have 7"),
        "{l}"
    );
    let out = run_child(
        "procs_that_max_threads_cannot_run_are_an_error_naming_both",
        "env",
        &[("GOSCHED_MAXPROCS", "3"), ("GOSCHED_MAXTHREADS", "8")],
    );
    assert!(
        line(&out, "BUILD-OK").contains("procs=3"),
        "{}",
        out.describe()
    );
}
