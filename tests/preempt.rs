//! Preemption behaviour: a loop with no calls cannot starve other goroutines
//! (asynchronous preemption), cooperative preemption at `preempt_point`,
//! fair CPU sharing among hogs, `no_preempt` regions, and `println!` from
//! goroutines preempted every ~100 µs.

mod common_preempt;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common_preempt::{child_role, hog, jain, percentile, refused, run_child, serial};
use gosched::{Builder, PreemptMode};

/// Stops `stop` after `after` from a plain thread, so that a runtime bug
/// that starves the test's own goroutines fails the test instead of hanging
/// it.
fn watchdog(stop: &Arc<AtomicBool>, after: Duration) -> std::thread::JoinHandle<()> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < after && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
    })
}

/// One ticker sleeping 1 ms 100 times next to a hog on the only P. Returns
/// the lateness of each sleep and the hog's rounds.
fn ticker_next_to_hog(rt: &gosched::Runtime, coop_hog: bool) -> (Vec<Duration>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let dog = watchdog(&stop, Duration::from_secs(30));
    let s2 = stop.clone();
    let res = rt.block_on(move || {
        let hog_stop = s2.clone();
        let h = gosched::spawn(move || {
            if coop_hog {
                let mut rounds = 0u64;
                let mut x = 1u64;
                while !hog_stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    rounds += 1;
                    gosched::preempt_point();
                }
                rounds
            } else {
                hog(&hog_stop)
            }
        });
        let mut late = Vec::with_capacity(100);
        for _ in 0..100 {
            let t = Instant::now();
            gosched::sleep(Duration::from_millis(1));
            late.push(t.elapsed().saturating_sub(Duration::from_millis(1)));
        }
        s2.store(true, Ordering::Relaxed);
        (late, h.join().unwrap())
    });
    stop.store(true, Ordering::Relaxed);
    dog.join().unwrap();
    res
}

/// Bound on the ticker's p99 lateness: many 2 ms quanta, yet far below
/// the starvation the tests guard against (the hog would hold the P until
/// the 30 s watchdog).
const P99_BOUND: Duration = Duration::from_millis(50);

/// Attempts of a ticker measurement before it fails: each preemption in
/// ThreadAffine mode is two thread hand-offs, each of which can wait for a
/// CPU on a loaded machine; a starving runtime fails every attempt.
const ATTEMPTS: usize = 3;

/// Runs `ticker_next_to_hog` on fresh runtimes from `build` until the
/// ticker's p99 lateness is under `P99_BOUND`; panics after `ATTEMPTS`.
/// Returns the stats of the passing attempt.
fn ticker_p99_bounded(
    label: &str,
    coop_hog: bool,
    build: impl Fn() -> gosched::Runtime,
) -> gosched::Stats {
    let mut seen = Vec::new();
    for _ in 0..ATTEMPTS {
        let rt = build();
        let (late, rounds) = ticker_next_to_hog(&rt, coop_hog);
        let st = rt.stats();
        let (p50, p99, max) = (
            percentile(&late, 50.0),
            percentile(&late, 99.0),
            percentile(&late, 100.0),
        );
        eprintln!(
            "{label}: ticker lateness p50={p50:?} p99={p99:?} max={max:?}; hog rounds={rounds} preempt_async={} preempt_coop={} refused={:?}",
            st.preempt_async, st.preempt_coop, st.preempt_refused_by_reason
        );
        assert!(rounds > 0, "{label}: the hog never ran");
        if p99 < P99_BOUND {
            return st;
        }
        seen.push(p99);
    }
    panic!(
        "{label}: ticker p99 lateness over {P99_BOUND:?} in every attempt (quantum 2 ms): {seen:?}"
    );
}

fn sleeper_not_starved_by_no_call_hog(mode: PreemptMode) {
    let _s = serial();
    let st = ticker_p99_bounded(&format!("{mode:?}"), false, || {
        let b = Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_millis(2))
            .preempt_mode(mode);
        // SAFETY: the preemptible goroutines are the no-call hog (register
        // arithmetic and an atomic load) and the ticker (`sleep`,
        // `Instant::now`, a push to its own Vec): neither touches a
        // thread-local or stdout; the eprintln! runs after block_on.
        unsafe { b.allow_migrate() }.build().unwrap()
    });
    assert!(
        st.preempt_async > 0,
        "{mode:?}: no asynchronous preemption: {st:?}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn no_call_hog_does_not_starve_sleeper_thread_affine() {
    sleeper_not_starved_by_no_call_hog(PreemptMode::ThreadAffine);
}

#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn no_call_hog_does_not_starve_sleeper_migrate() {
    sleeper_not_starved_by_no_call_hog(PreemptMode::Migrate);
}

/// Without asynchronous preemption a loop with no calls keeps the only P:
/// the sleeper runs only once the hog stops. (The control for the test
/// above: it shows the hog really holds the P unless it is interrupted.)
#[test]
fn without_async_preemption_no_call_hog_starves_sleeper() {
    let _s = serial();
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_millis(2))
        .async_preempt(false)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let (first, rounds) = rt.block_on(move || {
        let hs = s2.clone();
        let h = gosched::spawn(move || hog(&hs));
        // The watchdog stops the hog 300 ms from now.
        let dog = watchdog(&s2, Duration::from_millis(300));
        let t = Instant::now();
        gosched::sleep(Duration::from_millis(1));
        let first = t.elapsed();
        for _ in 0..5 {
            gosched::sleep(Duration::from_millis(1));
        }
        let rounds = h.join().unwrap();
        dog.join().unwrap();
        (first, rounds)
    });
    let st = rt.stats();
    eprintln!("async off: first 1 ms sleep took {first:?}; hog rounds={rounds} preempt_async={} preempt_coop={}", st.preempt_async, st.preempt_coop);
    assert!(rounds > 0);
    assert!(
        first >= Duration::from_millis(250),
        "the sleeper ran while a no-call hog held the only P: {first:?}"
    );
    assert_eq!(st.preempt_async, 0);
    assert!(!st.async_preempt);
}

/// With asynchronous preemption off, a hog that calls `preempt_point` in
/// its loop yields at sysmon's request and does not starve a sleeper.
#[test]
fn preempt_point_yields_with_async_preemption_off() {
    let _s = serial();
    let st = ticker_p99_bounded("coop", true, || {
        Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_millis(2))
            .async_preempt(false)
            .build()
            .unwrap()
    });
    assert!(st.preempt_coop > 0, "{st:?}");
    assert_eq!(st.preempt_async, 0);
}

fn hogs_share_cpu_fairly(mode: PreemptMode, quantum: Duration) {
    let _s = serial();
    let b = Builder::new()
        .procs(2)
        .preempt_quantum(quantum)
        .preempt_mode(mode);
    // SAFETY: the goroutines are 8 hogs (register arithmetic and an atomic
    // load) and a main goroutine that sleeps and joins them: no
    // thread-locals, no stdout (the eprintln! runs after block_on).
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dog = watchdog(&stop, Duration::from_secs(30));
    let s2 = stop.clone();
    let rounds: Vec<u64> = rt.block_on(move || {
        let hogs: Vec<_> = (0..8)
            .map(|_| {
                let s = s2.clone();
                gosched::spawn(move || hog(&s))
            })
            .collect();
        gosched::sleep(Duration::from_secs(2));
        s2.store(true, Ordering::Relaxed);
        hogs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    stop.store(true, Ordering::Relaxed);
    dog.join().unwrap();
    let st = rt.stats();
    let xs: Vec<f64> = rounds.iter().map(|&r| r as f64).collect();
    let j = jain(&xs);
    eprintln!("{mode:?} quantum {quantum:?}: 8 hogs on 2 Ps, rounds {rounds:?}, Jain index {j:.4}, preempt_async={}", st.preempt_async);
    assert!(rounds.iter().all(|&r| r > 0), "a hog never ran: {rounds:?}");
    assert!(
        j >= 0.9,
        "{mode:?}: unfair CPU sharing, Jain index {j:.4}: {rounds:?}"
    );
    assert!(st.preempt_async > 0);
}

#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn eight_hogs_on_two_procs_share_fairly_thread_affine() {
    hogs_share_cpu_fairly(PreemptMode::ThreadAffine, Duration::from_millis(10));
}

#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn eight_hogs_on_two_procs_share_fairly_migrate() {
    hogs_share_cpu_fairly(PreemptMode::Migrate, Duration::from_millis(2));
}

/// Spins with no calls for `d`, reading the clock every 4096 rounds.
#[inline(never)]
fn no_call_spin(d: Duration) {
    let t = Instant::now();
    let mut x = 1u64;
    loop {
        for _ in 0..4096 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        if t.elapsed() >= d {
            break;
        }
    }
    std::hint::black_box(x);
}

/// A `no_preempt` region is never interrupted asynchronously: on the only
/// P, a ticker cannot run while the region spins; it runs before (control)
/// and after it, and sysmon's attempts inside it are refused.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn no_preempt_region_is_never_preempted_asynchronously() {
    let _s = serial();
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_micros(200))
        .build()
        .unwrap();
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (t, s) = (ticks.clone(), stop.clone());
    let (control, during, after) = rt.block_on(move || {
        let (t2, s2) = (t.clone(), s.clone());
        let ticker = gosched::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                gosched::sleep(Duration::from_millis(1));
                t2.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Let the ticker start.
        while t.load(Ordering::Relaxed) < 3 {
            gosched::sleep(Duration::from_millis(1));
        }
        // Control: the same spin outside a region is preempted and the
        // ticker runs meanwhile.
        let c0 = t.load(Ordering::Relaxed);
        no_call_spin(Duration::from_millis(100));
        let control = t.load(Ordering::Relaxed) - c0;
        // The region: nothing else may run on our P.
        let during = gosched::no_preempt(|| {
            let d0 = t.load(Ordering::Relaxed);
            no_call_spin(Duration::from_millis(100));
            t.load(Ordering::Relaxed) - d0
        });
        // After it, the ticker runs again.
        let a0 = t.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.load(Ordering::Relaxed) == a0 && Instant::now() < deadline {
            no_call_spin(Duration::from_millis(1));
        }
        let after = t.load(Ordering::Relaxed) - a0;
        s.store(true, Ordering::Relaxed);
        ticker.join().unwrap();
        (control, during, after)
    });
    let st = rt.stats();
    let np = refused(&st, "no_preempt");
    eprintln!(
        "no_preempt: ticks during control spin={control}, during region={during}, after={after}; refused no_preempt={np}, preempt_async={}",
        st.preempt_async
    );
    assert!(
        control > 0,
        "control: the ticker did not run during a preemptible spin"
    );
    assert_eq!(
        during, 0,
        "another goroutine ran inside a no_preempt region on the only P"
    );
    assert!(
        after > 0,
        "the ticker did not run after the no_preempt region"
    );
    assert!(
        np > 0,
        "sysmon never tried (and was refused) inside the region: {:?}",
        st.preempt_refused_by_reason
    );
}

const PAYLOAD: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX";
const PRINTERS: u64 = 4;
const LINES: u64 = 2000;

/// Child: 4 goroutines println! 2,000 lines each, with a no-call busy loop
/// between lines, preempted every ~100 µs in ThreadAffine mode.
fn println_child() {
    assert_eq!(PAYLOAD.len(), 60);
    let rt = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(100))
        .preempt_mode(PreemptMode::ThreadAffine)
        .build()
        .unwrap();
    rt.block_on(|| {
        let hs: Vec<_> = (0..PRINTERS)
            .map(|id| {
                gosched::spawn(move || {
                    let mut x = id + 1;
                    for i in 0..LINES {
                        println!("g{id} line {i} {PAYLOAD}");
                        for _ in 0..40_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                            );
                        }
                    }
                    x
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let st = rt.stats();
    eprintln!(
        "PREEMPT_ASYNC={} BLOCKED_HANDOFFS={} REFUSED={:?}",
        st.preempt_async, st.blocked_handoffs, st.preempt_refused_by_reason
    );
}

/// println! from goroutines preempted asynchronously every ~100 µs: every
/// line arrives intact and the program does not deadlock on stdout's
/// reentrant lock (ThreadAffine resumes a preempted holder on its thread).
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn println_from_preempted_goroutines_is_intact() {
    if child_role().as_deref() == Some("println") {
        return println_child();
    }
    let _s = serial();
    let out = run_child(
        "println_from_preempted_goroutines_is_intact",
        "println",
        Duration::from_secs(60),
    );
    out.assert_success("println child");
    let mut seen = vec![vec![false; LINES as usize]; PRINTERS as usize];
    let mut bad = Vec::new();
    let harness_prefix = "test println_from_preempted_goroutines_is_intact ... ";
    for line in out.stdout.lines() {
        // libtest prints the test's name without a newline before its output.
        let line = line.strip_prefix(harness_prefix).unwrap_or(line);
        let parsed = line.strip_prefix('g').and_then(|r| {
            let (id, r) = r.split_once(" line ")?;
            let (i, payload) = r.split_once(' ')?;
            let (id, i): (usize, usize) = (id.parse().ok()?, i.parse().ok()?);
            (payload == PAYLOAD && id < PRINTERS as usize && i < LINES as usize && !seen[id][i])
                .then_some((id, i))
        });
        match parsed {
            Some((id, i)) => seen[id][i] = true,
            // libtest's own lines; anything carrying our text is torn.
            None if !line.contains(" line ") && !line.contains(&PAYLOAD[..10]) => {}
            None => bad.push(line.to_string()),
        }
    }
    let missing: usize = seen.iter().map(|v| v.iter().filter(|s| !**s).count()).sum();
    let pa = out
        .report("PREEMPT_ASYNC")
        .expect("child reports PREEMPT_ASYNC");
    eprintln!(
        "println child: {:?}, {} bad lines, {missing} missing, preempt_async={pa}",
        out.elapsed,
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "torn or duplicated lines: {:?}",
        &bad[..bad.len().min(5)]
    );
    assert_eq!(missing, 0, "lines missing");
    assert!(pa > 0, "the printers were never preempted asynchronously");
}

/// A goroutine that yielded to a loop with no calls runs again within a few
/// quanta: the hog is preempted because the yielder waits for the P (a
/// yield between two goroutines parks the yielder in the P's `yielded`
/// slot, not its run queue, and sysmon must count it as waiting).
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn goroutine_that_yielded_to_a_no_call_hog_runs_again() {
    let _s = serial();
    for mode in [PreemptMode::ThreadAffine, PreemptMode::Migrate] {
        let b = Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_millis(2))
            .preempt_mode(mode);
        // SAFETY: the goroutines yield, spin on an atomic and read the
        // clock; nothing they run uses a thread-local or stdout.
        let rt = unsafe { b.allow_migrate() }.build().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dog = watchdog(&stop, Duration::from_secs(20));
        let waited = rt.block_on(|| {
            let s = stop.clone();
            let h = gosched::spawn(move || {
                // Yield once so that this goroutine has run (the direct
                // G-to-G yield needs that), then spin without calls.
                gosched::yield_now();
                while !s.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
            // The first yield goes through the scheduler (the hog has not
            // run yet); the second switches to the hog directly.
            gosched::yield_now();
            let t = Instant::now();
            gosched::yield_now();
            let waited = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            h.join().unwrap();
            waited
        });
        dog.join().unwrap();
        assert!(
            waited < Duration::from_secs(10),
            "{mode:?}: the yielder waited {waited:?} behind a no-call hog"
        );
    }
}

/// The CPU affinity of every thread of this process named `gosched-m*`.
fn worker_affinities() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("gosched-m") {
            continue;
        }
        let tid: libc::pid_t = e.file_name().to_string_lossy().parse().unwrap();
        out.push((format!("{} ({tid})", comm.trim()), affinity(tid)));
    }
    out
}

/// The CPUs thread `tid` (0: the caller) may run on.
fn affinity(tid: libc::pid_t) -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, filled in by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let r = libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(r, 0, "sched_getaffinity({tid})");
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// In ThreadAffine mode a hand-off pins the woken worker thread to the
/// CPU the parking one leaves (so Linux does not queue it behind a busy
/// thread while that CPU idles); the woken thread must widen its affinity
/// again. After hundreds of hand-offs no worker may be left pinned.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn thread_affine_hand_offs_leave_no_worker_pinned() {
    let _s = serial();
    let rt = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_millis(1))
        .preempt_mode(PreemptMode::ThreadAffine)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let dog = watchdog(&stop, Duration::from_millis(400));
    rt.block_on(|| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let s = stop.clone();
                gosched::spawn(move || hog(&s))
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    dog.join().unwrap();
    let st = rt.stats();
    assert!(st.preempt_async > 50, "too few hand-offs to tell: {st:?}");
    // Every worker is parked now; the last to wake unpinned itself.
    let want = affinity(0);
    for (name, cpus) in worker_affinities() {
        assert_eq!(
            cpus, want,
            "{name} left pinned after {} preemptions",
            st.preempt_async
        );
    }
}
