//! `GoroutineBuilder`: names seen by `current_name` across migrations and
//! where users see goroutines (panic messages, the goroutine dump,
//! schedtrace's per-G lines; the deadlock report: tests/deadlock.rs),
//! stack-size checks, and errors (never panics) on bad input.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{child_role, run_child};
use gosched::{Builder, GoroutineBuilder};

#[test]
fn a_named_goroutine_keeps_its_name_across_sleeps_and_others_have_none() {
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                GoroutineBuilder::new()
                    .name(format!("w{i}"))
                    .spawn(move || {
                        for _ in 0..20 {
                            gosched::sleep(Duration::from_micros(50));
                            assert_eq!(gosched::current_name(), Some(format!("w{i}")));
                        }
                        // A child spawned plainly has no name.
                        gosched::spawn(gosched::current_name).join().unwrap()
                    })
                    .unwrap()
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), None);
        }
        assert_eq!(gosched::current_name(), None);
    });
}

#[test]
fn bad_settings_are_errors_naming_the_value() {
    let rt = Builder::new().stack_size(128 * 1024).build().unwrap();
    let e = GoroutineBuilder::new()
        .stack_size(1 << 20)
        .spawn_on(&rt, || ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("1048576"), "{e}");
    let e = GoroutineBuilder::new()
        .stack_size(0)
        .spawn_on(&rt, || ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = GoroutineBuilder::new()
        .name("bad\0name".into())
        .spawn_on(&rt, || ())
        .unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
    // Outside a goroutine, `spawn` is an error too (not a panic).
    let e = GoroutineBuilder::new().spawn(|| ()).unwrap_err();
    assert!(e.to_string().contains("outside a goroutine"), "{e}");
    // A fitting stack size works, and a panic is the join's Err.
    let h = GoroutineBuilder::new()
        .stack_size(128 * 1024)
        .spawn_on(&rt, || -> () { panic!("named boom") })
        .unwrap();
    assert!(h.join().is_err());
}

/// Runs, in the child, a goroutine named "worker-1" and an unnamed one that
/// both panic, and a plain thread that panics; prints their goroutine ids.
fn panic_in_named_and_unnamed_goroutines() {
    let rt = Builder::new().procs(2).build().unwrap();
    let named = GoroutineBuilder::new()
        .name("worker-1".into())
        .spawn_on(&rt, || -> () { panic!("boom in worker") })
        .unwrap();
    let unnamed = rt.spawn(|| -> () { panic!("boom unnamed") });
    let (a, b) = (named.id(), unnamed.id());
    assert!(named.join().is_err() && unnamed.join().is_err());
    let plain = std::thread::Builder::new()
        .name("plain".into())
        .spawn(|| -> () { panic!("boom on a plain thread") })
        .unwrap();
    assert!(plain.join().is_err());
    // On a line of its own: libtest's "test ... " has no newline yet.
    println!("\nIDS {a} {b}");
}

/// The goroutine ids the child printed.
fn ids(out: &common::ChildOutput) -> (u64, u64) {
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("IDS "))
        .unwrap_or_else(|| panic!("no ids: {}", out.describe()));
    let mut it = line.split(' ').map(|s| s.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// A panicking goroutine's message names the goroutine (id, and name if it
/// has one), not the worker thread, once; a plain thread's panic is std's
/// report, untouched; RUST_BACKTRACE still selects a backtrace.
#[test]
fn panic_messages_name_the_goroutine() {
    if child_role().is_some() {
        panic_in_named_and_unnamed_goroutines();
        return;
    }
    let test = "panic_messages_name_the_goroutine";
    let out = run_child(test, "panic", &[]);
    assert!(out.status.success(), "{}", out.describe());
    let (a, b) = ids(&out);
    let err = &out.stderr;
    let named = format!("\ngoroutine {a} \"worker-1\" panicked at tests/goroutine_builder.rs:");
    assert_eq!(err.matches(&named).count(), 1, "{}", out.describe());
    assert_eq!(
        err.matches(":\nboom in worker\n").count(),
        1,
        "{}",
        out.describe()
    );
    let unnamed = format!("\ngoroutine {b} panicked at tests/goroutine_builder.rs:");
    assert_eq!(err.matches(&unnamed).count(), 1, "{}", out.describe());
    assert_eq!(
        err.matches(":\nboom unnamed\n").count(),
        1,
        "{}",
        out.describe()
    );
    // No worker thread named, and no second report of the same panic.
    assert!(!err.contains("gosched-m"), "{}", out.describe());
    assert_eq!(err.matches("panicked at").count(), 3, "{}", out.describe());
    assert!(err.contains("thread 'plain'"), "{}", out.describe());
    assert!(!err.contains("stack backtrace:"), "{}", out.describe());

    let bt = run_child(test, "panic", &[("RUST_BACKTRACE", "1")]);
    assert!(bt.status.success(), "{}", bt.describe());
    let (a, _) = ids(&bt);
    let named = format!("\ngoroutine {a} \"worker-1\" panicked at ");
    let at = bt
        .stderr
        .find(&named)
        .unwrap_or_else(|| panic!("{}", bt.describe()));
    assert!(
        bt.stderr[at..].contains("boom in worker\nstack backtrace:\n"),
        "{}",
        bt.describe()
    );
}

/// A hook the program installs is never swallowed: installed before the
/// first runtime, it gets goroutines' panics (and can name them with
/// `current_name`); installed after, it replaces ours, and if it calls the
/// hook it took, the goroutine is named once.
#[test]
fn panic_hooks_of_the_program_still_run() {
    match child_role().as_deref() {
        Some("before") => {
            std::panic::set_hook(Box::new(|_| {
                eprintln!("USER HOOK {:?}", gosched::current_name());
            }));
            panic_in_named_and_unnamed_goroutines();
            return;
        }
        Some("after") => {
            let _rt = Builder::new().build().unwrap();
            let ours = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                eprintln!("USER HOOK {:?}", gosched::current_name());
                ours(info);
            }));
            panic_in_named_and_unnamed_goroutines();
            return;
        }
        _ => {}
    }
    let test = "panic_hooks_of_the_program_still_run";
    let before = run_child(test, "before", &[]);
    assert!(before.status.success(), "{}", before.describe());
    let err = &before.stderr;
    assert_eq!(
        err.matches("USER HOOK Some(\"worker-1\")").count(),
        1,
        "{}",
        before.describe()
    );
    assert_eq!(
        err.matches("USER HOOK None").count(),
        2,
        "{}",
        before.describe()
    );
    assert!(!err.contains("panicked"), "{}", before.describe());

    let after = run_child(test, "after", &[]);
    assert!(after.status.success(), "{}", after.describe());
    let (a, _) = ids(&after);
    let err = &after.stderr;
    assert_eq!(
        err.matches("USER HOOK Some(\"worker-1\")").count(),
        1,
        "{}",
        after.describe()
    );
    assert_eq!(
        err.matches("USER HOOK None").count(),
        2,
        "{}",
        after.describe()
    );
    let named = format!("\ngoroutine {a} \"worker-1\" panicked at ");
    assert_eq!(err.matches(&named).count(), 1, "{}", after.describe());
    assert_eq!(
        err.matches("panicked at").count(),
        3,
        "{}",
        after.describe()
    );
}

/// `GOSCHED_SCHEDDETAIL=1`: a named goroutine's per-G line ends with its
/// name; unnamed ones have none.
#[test]
fn scheddetail_g_lines_show_the_name() {
    if child_role().is_some() {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let (tx, rx) = gosched::chan::channel::<()>(0);
            let h = GoroutineBuilder::new()
                .name("detail-g".into())
                .spawn(move || rx.recv())
                .unwrap();
            std::thread::sleep(Duration::from_millis(350));
            tx.send(()).unwrap();
            h.join().unwrap();
        });
        return;
    }
    let out = run_child(
        "scheddetail_g_lines_show_the_name",
        "detail",
        &[("GOSCHED_SCHEDTRACE", "100"), ("GOSCHED_SCHEDDETAIL", "1")],
    );
    assert!(out.status.success(), "{}", out.describe());
    let g_lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("  G"))
        .collect();
    assert!(
        g_lines
            .iter()
            .any(|l| l.ends_with(": status=4 m=-1 name=\"detail-g\"")),
        "{}",
        out.describe()
    );
    // The main goroutine (running, unnamed) has no name field.
    assert!(
        g_lines
            .iter()
            .any(|l| l.contains(" status=2 m=") && !l.contains("name=")),
        "{}",
        out.describe()
    );
}

/// `GOSCHED_SIGQUITDUMP=1`: the goroutine dump shows a named goroutine's
/// name in its header.
#[test]
fn sigquit_dump_shows_the_name() {
    if child_role().is_some() {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let (_tx, rx) = gosched::chan::channel::<()>(0);
            let _waiter = GoroutineBuilder::new()
                .name("dump-me".into())
                .spawn(move || rx.recv())
                .unwrap();
            gosched::sleep(Duration::from_millis(100));
            // SAFETY: raise has no preconditions.
            unsafe { libc::raise(libc::SIGQUIT) };
            gosched::sleep(Duration::from_secs(5));
        });
        eprintln!("UNEXPECTED: still alive after SIGQUIT");
        return;
    }
    let out = run_child(
        "sigquit_dump_shows_the_name",
        "dump",
        &[("GOSCHED_SIGQUITDUMP", "1")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.starts_with("SIGQUIT: quit"),
        "{}",
        out.describe()
    );
    assert_eq!(
        out.stderr
            .matches(" \"dump-me\" [waiting]:\n\tspawned at tests/goroutine_builder.rs:")
            .count(),
        1,
        "{}",
        out.describe()
    );
}
