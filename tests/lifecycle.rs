//! Runtime lifecycle: dropping a runtime stops its threads, an idle runtime
//! uses no CPU, and the counters add up after work. The process-wide
//! measurements (threads, CPU time) run in a child process so that the
//! other tests of this file cannot disturb them.

mod common;

use std::time::Duration;

use common::{child_role, os_thread_count, process_cpu_time, run_child, wait_until};
use gosched::Builder;

/// Some work that wakes every P and M: spawns, yields, sleeps, a join tree.
fn some_work() -> u64 {
    let hs: Vec<_> = (0..200u64)
        .map(|i| {
            gosched::spawn(move || {
                gosched::yield_now();
                if i % 10 == 0 {
                    gosched::sleep(Duration::from_millis(1));
                }
                i
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).sum()
}

#[test]
fn dropping_runtimes_returns_the_thread_count_to_its_start() {
    if child_role().is_some() {
        let before = os_thread_count();
        let mut peak = before;
        for round in 0..20 {
            let rt = Builder::new().procs(2).build().unwrap();
            assert_eq!(rt.block_on(some_work), 199 * 200 / 2);
            peak = peak.max(os_thread_count());
            drop(rt);
            // Drop joins every thread; the kernel may list an exiting thread
            // for a moment after its join returns.
            let back = wait_until(Duration::from_secs(2), || os_thread_count() == before);
            assert!(
                back,
                "round {round}: {} threads after drop, {before} before",
                os_thread_count()
            );
        }
        // The runtimes did start threads (an M and sysmon at least), so a
        // count that returns to the start means they were all stopped.
        assert!(peak >= before + 2, "peak {peak}, before {before}");
        eprintln!("threads: before {before}, peak {peak}");
        return;
    }
    let out = run_child(
        "dropping_runtimes_returns_the_thread_count_to_its_start",
        "threads",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    out.stderr
        .lines()
        .filter(|l| l.starts_with("threads:"))
        .for_each(|l| eprintln!("child: {l}"));
}

#[test]
fn idle_runtime_uses_almost_no_cpu() {
    if child_role().is_some() {
        let rt = Builder::new().procs(2).build().unwrap();
        assert_eq!(rt.block_on(some_work), 199 * 200 / 2);
        // Let the runtime settle into idleness (spinning Ms give up, sysmon
        // backs off), then measure a second of it.
        std::thread::sleep(Duration::from_millis(100));
        let before = process_cpu_time();
        std::thread::sleep(Duration::from_secs(1));
        let used = process_cpu_time() - before;
        eprintln!("idle cpu: {used:?} in 1s");
        assert!(
            used < Duration::from_millis(50),
            "an idle 2-P runtime used {used:?} of CPU in 1 s"
        );
        drop(rt);
        return;
    }
    let out = run_child("idle_runtime_uses_almost_no_cpu", "idle", &[]);
    assert!(out.status.success(), "{}", out.describe());
    out.stderr
        .lines()
        .filter(|l| l.starts_with("idle cpu:"))
        .for_each(|l| eprintln!("child: {l}"));
}

#[test]
fn stats_add_up_after_work() {
    let _wd = common::watchdog();
    const N: u64 = 1_000;
    let rt = Builder::new().procs(2).build().unwrap();
    let s0 = rt.stats();
    assert_eq!((s0.goroutines, s0.spawned, s0.procs), (0, 0, 2), "{s0:?}");
    rt.block_on(|| {
        let hs: Vec<_> = (0..N).map(|i| gosched::spawn(move || i)).collect();
        for h in hs {
            h.join().unwrap();
        }
        // Inside block_on, once everything is joined, only main is alive.
        assert!(
            wait_until(Duration::from_secs(5), || rt.stats().goroutines == 1),
            "goroutines stuck at {} inside block_on",
            rt.stats().goroutines
        );
    });
    // The spawned goroutines plus the main one.
    assert_eq!(rt.stats().spawned, N + 1, "{:?}", rt.stats());
    assert!(
        wait_until(Duration::from_secs(5), || rt.stats().goroutines == 0),
        "goroutines stuck at {} after block_on",
        rt.stats().goroutines
    );
    let s = rt.stats();
    assert!(
        s.threads >= 1 && s.threads <= s.procs + 3,
        "{} threads for {} procs: {s:?}",
        s.threads,
        s.procs
    );
    assert!(s.switches > N, "{s:?}");
    // A second block_on adds to the counts.
    rt.block_on(|| gosched::spawn(|| ()).join().unwrap());
    assert_eq!(rt.stats().spawned, N + 3);
}

/// In the parent (a normal test run): runs test `test` in a child process,
/// which must exit 0 after printing `ok_line`, and returns its output (the
/// test is done once the caller checked what else it wants). In that
/// child: returns None (go on with the body). For bodies that hung or
/// crashed before their fix.
fn in_parent_run_as_child(test: &str, ok_line: &str) -> Option<common::ChildOutput> {
    if child_role().is_some() {
        return None;
    }
    let out = run_child(test, "child", &[]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains(ok_line), "{}", out.describe());
    Some(out)
}

/// The payload `join` returns for a goroutine its runtime abandoned.
const ABANDONED: &str = "gosched: runtime dropped before the goroutine finished";

fn assert_abandoned<T: std::fmt::Debug>(r: std::thread::Result<T>, what: &str) {
    let err = r.expect_err(what);
    assert_eq!(common::payload_str(&*err), Some(ABANDONED), "{what}");
}

#[test]
fn join_after_runtime_drop_returns_err_promptly() {
    // The join used to hang forever: in a child, killed if it runs too long.
    if in_parent_run_as_child("join_after_runtime_drop_returns_err_promptly", "ABANDON-OK")
        .is_some()
    {
        return;
    }
    let rt = Builder::new().procs(2).build().unwrap();
    let other = Builder::new().procs(1).build().unwrap();
    let (tx, rx) = gosched::chan::channel::<u32>(0);
    let (gate_tx, gate_rx) = gosched::chan::channel::<u32>(0);
    // Parked for good on a channel nobody sends on.
    let parked = rt.spawn(move || rx.recv());
    // Finished before the drop: its result survives.
    let finished = rt.spawn(|| 7);
    while !finished.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Waits on a second channel, joined by a plain thread that is already
    // blocked in `join` when the runtime drops.
    let waited = rt.spawn(move || gate_rx.recv());
    let joiner = std::thread::spawn(move || waited.join());
    // And one joined by a goroutine of another runtime.
    let waited2 = rt.spawn(|| loop {
        gosched::sleep(Duration::from_millis(1));
    });
    let other_joiner = other.spawn(move || waited2.join().map(|_| ()));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!parked.is_finished());
    let t = std::time::Instant::now();
    drop(rt);
    assert!(parked.is_finished(), "is_finished after the drop");
    assert_abandoned(parked.join(), "a goroutine parked at the drop");
    assert_eq!(finished.join().unwrap(), 7);
    assert_abandoned(joiner.join().unwrap(), "a join already waiting");
    assert_abandoned(
        other_joiner.join().unwrap(),
        "a join from another runtime's goroutine",
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    // Late senders find the abandoned goroutines' channels harmlessly.
    drop(tx);
    drop(gate_tx);
    drop(other);
    println!("ABANDON-OK");
}

#[test]
fn goroutines_never_started_before_the_drop_are_abandoned_too() {
    if in_parent_run_as_child(
        "goroutines_never_started_before_the_drop_are_abandoned_too",
        "UNSTARTED-OK",
    )
    .is_some()
    {
        return;
    }
    // One P, held by a goroutine that never yields until released (no
    // preemption): goroutines spawned meanwhile cannot start.
    let rt = Builder::new()
        .procs(1)
        .async_preempt(false)
        .build()
        .unwrap();
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = release.clone();
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let hog = rt.spawn(move || {
        up_tx.send(()).unwrap();
        while !r.load(std::sync::atomic::Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    up_rx.recv().unwrap();
    let waiting: Vec<_> = (0..10).map(|i| rt.spawn(move || i)).collect();
    // The drop asks the hog to yield; it only can once released.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        release.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    drop(rt);
    releaser.join().unwrap();
    let _ = hog.join();
    for h in waiting {
        // Each either ran (its result) or never started (abandoned); none hangs.
        match h.join() {
            Ok(_) => {}
            r => assert_abandoned(r, "a goroutine that never started"),
        }
    }
    println!("UNSTARTED-OK");
}

#[test]
fn channel_ops_after_the_drop_on_an_abandoned_goroutines_channel_are_harmless() {
    // It crashed (SIGSEGV on the unmapped stack): in a child.
    if in_parent_run_as_child(
        "channel_ops_after_the_drop_on_an_abandoned_goroutines_channel_are_harmless",
        "LATE-OK",
    )
    .is_some()
    {
        return;
    }
    let rt = Builder::new().procs(2).build().unwrap();
    // Receivers and senders parked on channels that outlive the runtime:
    // their wait entries live on their (abandoned) stacks.
    let (tx, rx) = gosched::chan::channel::<u32>(0);
    let (full_tx, full_rx) = gosched::chan::channel::<u32>(1);
    full_tx.try_send(0).unwrap();
    let mut hs = Vec::new();
    for _ in 0..4 {
        let rx = rx.clone();
        hs.push(rt.spawn(move || rx.recv().map_or(0, |_| 1)));
        let full_tx = full_tx.clone();
        hs.push(rt.spawn(move || full_tx.send(1).map_or(0, |_| 1)));
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(rt);
    // A plain thread now sends to the parked receivers, drains the full
    // channel (unblocking the parked senders), and closes both.
    let _ = tx.try_send(5);
    let _ = full_rx.try_recv();
    let _ = full_rx.try_recv();
    drop(tx);
    drop(full_rx);
    for h in hs {
        assert_abandoned(h.join(), "a goroutine parked on a channel at the drop");
    }
    println!("LATE-OK");
}

/// Runs `f` in a `fork()`ed child of this process (a test's own child) and
/// returns the child's wait status: exit 0 if `f` returned true, 1 if it
/// returned false or panicked; a child that hangs dies of SIGALRM.
fn in_forked_child(f: impl FnOnce() -> bool) -> i32 {
    // SAFETY: fork has no preconditions; the child runs `f` (which may use
    // only what survives a fork: glibc's malloc does, our runtime must
    // refuse) and leaves with `_exit`, never returning into the test.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: alarm and _exit are async-signal-safe; set_hook only
        // silences the expected panics' reports.
        unsafe { libc::alarm(20) };
        std::panic::set_hook(Box::new(|_| {}));
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(false);
        // SAFETY: see above.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is ours to write.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

/// Whether `f` panics with the forked-child message.
fn panics_as_forked(f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => false,
        Err(e) => common::payload_str(&*e).is_some_and(|m| m.contains("fork()ed child")),
    }
}

#[test]
fn runtime_calls_in_a_forked_child_panic_instead_of_hanging() {
    // Forked children hung: in a child (whose own children die by alarm).
    if let Some(out) = in_parent_run_as_child(
        "runtime_calls_in_a_forked_child_panic_instead_of_hanging",
        "FORK-OK",
    ) {
        // From the grandchild that parked.
        let msg = "fatal error: gosched: the runtime cannot be used in a fork()ed child";
        assert!(out.stderr.contains(msg), "{}", out.describe());
        return;
    }
    let rt = Builder::new().procs(2).build().unwrap();
    assert_eq!(rt.block_on(|| 1 + 1), 2);
    let (tx, rx) = gosched::chan::channel::<u32>(0);
    let pending = std::sync::Mutex::new(Some(rt.spawn(move || rx.recv())));

    // Forked from a plain thread while the runtime lives.
    let status = in_forked_child(|| {
        let spawn = panics_as_forked(|| drop(rt.spawn(|| 1)));
        let block_on = panics_as_forked(|| {
            let _ = rt.block_on(|| 1);
        });
        let join = panics_as_forked(|| {
            let h = pending.lock().unwrap().take().unwrap();
            drop(h.join());
        });
        let build = Builder::new()
            .build()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::Unsupported);
        // Dropping the runtime here must not hang either.
        // SAFETY: a bitwise copy, dropped once: this child `_exit`s without
        // dropping (or using) the original.
        drop(unsafe { std::ptr::read(&rt) });
        spawn && block_on && join && build
    });
    assert_eq!(
        status, 0,
        "forked from a plain thread: wait status {status}"
    );

    // Forked from a goroutine.
    let status =
        rt.block_on(|| in_forked_child(|| panics_as_forked(|| drop(gosched::spawn(|| 1)))));
    assert_eq!(status, 0, "forked from a goroutine: wait status {status}");
    // A goroutine that would park in the child aborts with the message
    // (unwinding out of a park could leave a wait entry dangling).
    let status = rt.block_on(|| {
        in_forked_child(|| {
            gosched::sleep(Duration::from_millis(1));
            true
        })
    });
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "a goroutine parking in a forked child: wait status {status}"
    );

    // So does one that yields, with another goroutine queued: the child's
    // copy of the scheduler ran that goroutine (its side effects twice).
    let (ran, status) = rt.block_on(|| {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r = ran.clone();
        let queued = gosched::spawn(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let status = in_forked_child(|| {
            gosched::yield_now();
            true
        });
        queued.join().unwrap();
        (ran.load(std::sync::atomic::Ordering::SeqCst), status)
    });
    assert_eq!(ran, 1);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "a goroutine yielding in a forked child: wait status {status}"
    );

    // Fork then exec keeps working, from a goroutine (`pre_exec` makes std
    // take the fork path rather than posix_spawn).
    let ok = rt.block_on(|| {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("true");
        // SAFETY: the closure does nothing (it only forces a real fork).
        unsafe { cmd.pre_exec(|| Ok(())) };
        cmd.status().unwrap().success()
    });
    assert!(ok, "fork then exec from a goroutine");
    // The parent's runtime is untouched by its children.
    assert_eq!(rt.block_on(|| gosched::spawn(|| 3).join().unwrap()), 3);
    tx.send(1).unwrap();
    println!("FORK-OK");
}

/// Runs `call` in `blocking()` on a goroutine of `rt` and returns a slot
/// for what it returned and the errno after it, filled in inside the
/// blocking call (the goroutine may be abandoned as soon as it returns);
/// waits until the goroutine is about to make the call.
#[cfg(feature = "preempt-signal")]
fn blocking_call_in(
    rt: &gosched::Runtime,
    call: impl FnOnce() -> i32 + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Option<(i32, i32, Duration)>>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let slot = Arc::new(Mutex::new(None));
    let started = Arc::new(AtomicBool::new(false));
    let (s, st) = (slot.clone(), started.clone());
    drop(rt.spawn(move || {
        st.store(true, Ordering::SeqCst);
        gosched::blocking(move || {
            let t = std::time::Instant::now();
            let r = call();
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            *s.lock().unwrap() = Some((r, errno, t.elapsed()));
        });
    }));
    assert!(
        wait_until(Duration::from_secs(20), || started
            .load(std::sync::atomic::Ordering::SeqCst)),
        "the goroutine never started"
    );
    slot
}

#[cfg(feature = "preempt-signal")]
#[test]
fn dropping_the_runtime_does_not_interrupt_blocking_calls() {
    // Runtime drop sent SIGURG to every M with a goroutine, every 200 µs,
    // those inside `blocking()` too: poll and nanosleep, never restarted
    // after a handler, failed with EINTR.
    let _w = common::watchdog();
    let rt = Builder::new().procs(2).async_preempt(true).build().unwrap();
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let rd = fds[0];
    // Nobody writes: the poll can only time out.
    let polled = blocking_call_in(&rt, move || {
        let mut pfd = libc::pollfd {
            fd: rd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 300) }
    });
    let slept = blocking_call_in(&rt, || {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 300_000_000,
        };
        // SAFETY: a valid timespec; no remainder wanted.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) }
    });
    std::thread::sleep(Duration::from_millis(20));
    // Waits for both calls.
    drop(rt);
    let (r, errno, took) = polled
        .lock()
        .unwrap()
        .expect("the poll returned before the drop did");
    assert_eq!(
        (r, errno == libc::EINTR),
        (0, false),
        "poll returned {r} (errno {errno}) after {took:?}, not 0 after 300 ms"
    );
    let (r, errno, took) = slept
        .lock()
        .unwrap()
        .expect("nanosleep returned before the drop did");
    assert_eq!(
        r, 0,
        "nanosleep returned {r} (errno {errno}) after {took:?}, not 0 after 300 ms"
    );
    assert!(
        took >= Duration::from_millis(290),
        "nanosleep took {took:?}"
    );
    // SAFETY: our descriptors, closed once.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

#[cfg(feature = "preempt-signal")]
#[test]
fn dropping_the_runtime_stops_a_loop_run_after_a_blocking_call() {
    // Signals are held back only for the call: a goroutine that returns
    // from it into a loop without calls is still stopped by the drop.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let _w = common::watchdog();
    let rt = Builder::new().procs(2).async_preempt(true).build().unwrap();
    let looping = Arc::new(AtomicBool::new(false));
    let l = looping.clone();
    drop(rt.spawn(move || {
        // Shorter than a quantum, with nothing else to run and a P idle:
        // sysmon leaves the P alone (with one P it retakes it, as Go does),
        // so the loop runs on the M that made the call.
        gosched::blocking(|| std::thread::sleep(Duration::from_millis(1)));
        l.store(true, Ordering::SeqCst);
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }));
    assert!(
        wait_until(Duration::from_secs(20), || looping.load(Ordering::SeqCst)),
        "the loop never began"
    );
    let t = std::time::Instant::now();
    drop(rt);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "drop took {:?}",
        t.elapsed()
    );

    // The same with the drop begun while the goroutine is inside the call
    // (it may yield at the call's end, preemption having been requested).
    let rt = Builder::new().procs(1).async_preempt(true).build().unwrap();
    let inside = Arc::new(AtomicBool::new(false));
    let i = inside.clone();
    drop(rt.spawn(move || {
        i.store(true, Ordering::SeqCst);
        gosched::blocking(|| std::thread::sleep(Duration::from_millis(100)));
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }));
    assert!(
        wait_until(Duration::from_secs(20), || inside.load(Ordering::SeqCst)),
        "the goroutine never started"
    );
    let t = std::time::Instant::now();
    drop(rt);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "drop took {:?}",
        t.elapsed()
    );
}

/// Goroutines that spawn in a loop, yielding now and then, while their
/// runtime is dropped: until the drop abandons them, every `spawn` is
/// made from a goroutine. Inlined into such a loop, the runtime's "is this
/// thread an M?" read used a thread-local address computed once before
/// the loop; after a yield moved the goroutine to another thread and the
/// first thread exited (the drop stops the Ms), it read the dead thread's
/// freed TLS and `spawn` panicked "called outside a goroutine" (release
/// builds: 1-7 times in 40 drops, and this test 3 of 3 runs; debug
/// builds recompute the address, so `.ci/run` also runs it in release).
#[test]
fn goroutines_spawning_while_their_runtime_drops_stay_goroutines() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static OUTSIDE: AtomicUsize = AtomicUsize::new(0);
    if in_parent_run_as_child(
        "goroutines_spawning_while_their_runtime_drops_stay_goroutines",
        "SPAWN-DROP-OK",
    )
    .is_some()
    {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        if info.to_string().contains("outside a goroutine") {
            OUTSIDE.fetch_add(1, Ordering::SeqCst);
        }
    }));
    for _ in 0..40 {
        let rt = Builder::new().procs(2).build().unwrap();
        for _ in 0..2 {
            rt.spawn(|| {
                let mut i = 0u64;
                loop {
                    let h = gosched::spawn(move || {
                        gosched::yield_now();
                        i
                    });
                    // Not joined, not dropped: its goroutine outlives the
                    // loop's view of it (abandoned at the drop).
                    std::mem::forget(h);
                    i += 1;
                    if i.is_multiple_of(16) {
                        gosched::yield_now();
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(10));
        drop(rt);
    }
    let _ = std::panic::take_hook();
    assert_eq!(OUTSIDE.load(Ordering::SeqCst), 0, "spawn saw no goroutine");
    println!("SPAWN-DROP-OK");
}
