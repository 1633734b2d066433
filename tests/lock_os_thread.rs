//! `lock_os_thread`: a locked goroutine stays on its thread, that thread
//! runs nothing else, calls nest, and a goroutine may exit while locked
//! (its thread's signal mask and affinity are put back:
//! tests/thread_state.rs).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::os_tid;
use gosched::Builder;

/// Spawns `n` goroutines that record, a few times each with yields and
/// short sleeps in between, the OS threads they run on; waits for them and
/// returns the set. Call from a goroutine.
fn threads_used_by_others(n: usize) -> HashSet<i32> {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let seen = seen.clone();
            gosched::spawn(move || {
                for round in 0..4 {
                    seen.lock().unwrap().insert(os_tid());
                    if (i + round) % 2 == 0 {
                        gosched::yield_now();
                    } else {
                        gosched::sleep(Duration::from_millis(1));
                    }
                }
                seen.lock().unwrap().insert(os_tid());
            })
        })
        .collect();
    // Park the caller too, so its thread would be free for others if it
    // were not locked.
    gosched::sleep(Duration::from_millis(5));
    for h in hs {
        h.join().unwrap();
    }
    let s = seen.lock().unwrap().clone();
    s
}

#[test]
fn locked_goroutine_keeps_its_thread() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(AtomicU64::new(0));
    let checks = rt.block_on(|| {
        // Busy goroutines competing for both Ps.
        let busy: Vec<_> = (0..6)
            .map(|_| {
                let (stop, work) = (stop.clone(), work.clone());
                gosched::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut x = 0u64;
                        for i in 0..2_000u64 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                        work.fetch_add(x & 1, Ordering::Relaxed);
                        gosched::yield_now();
                    }
                })
            })
            .collect();
        let locked = gosched::spawn(|| {
            gosched::lock_os_thread();
            let tid = os_tid();
            let std_id = std::thread::current().id();
            let mut checks = 0;
            for i in 0..300u64 {
                gosched::yield_now();
                assert_eq!(os_tid(), tid, "moved after yield_now (iteration {i})");
                if i % 10 == 0 {
                    gosched::sleep(Duration::from_millis(1));
                    assert_eq!(os_tid(), tid, "moved after sleep (iteration {i})");
                }
                if i % 5 == 0 {
                    assert_eq!(gosched::spawn(move || i * 2).join().unwrap(), i * 2);
                    assert_eq!(os_tid(), tid, "moved after spawn+join (iteration {i})");
                }
                checks += 1;
            }
            assert_eq!(std::thread::current().id(), std_id);
            gosched::unlock_os_thread();
            checks
        });
        let checks = locked.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        for h in busy {
            h.join().unwrap();
        }
        checks
    });
    assert_eq!(checks, 300);
}

#[test]
fn unlocked_goroutine_keeps_working_wherever_it_runs() {
    let _wd = common::watchdog();
    // After unlocking, the goroutine may move (not asserted); it must keep
    // its identity and go on yielding, sleeping and joining normally.
    let rt = Builder::new().procs(2).build().unwrap();
    let ok = rt.block_on(|| {
        let id = gosched::current_id();
        gosched::lock_os_thread();
        gosched::unlock_os_thread();
        let mut sum = 0;
        for i in 0..200u64 {
            gosched::yield_now();
            if i % 20 == 0 {
                gosched::sleep(Duration::from_millis(1));
            }
            sum += gosched::spawn(move || i).join().unwrap();
            assert_eq!(gosched::current_id(), id);
        }
        sum
    });
    assert_eq!(ok, 199 * 200 / 2);
}

#[test]
fn locked_thread_runs_no_other_goroutine() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        gosched::lock_os_thread();
        let mine = os_tid();
        // While we are parked (sleeping, joining) 50 others run.
        let others = threads_used_by_others(50);
        assert_eq!(os_tid(), mine);
        assert!(!others.is_empty());
        assert!(
            !others.contains(&mine),
            "another goroutine ran on the locked thread {mine}: {others:?}"
        );
        gosched::unlock_os_thread();
    });
}

#[test]
fn lock_calls_nest_and_extra_unlocks_are_ignored() {
    let _wd = common::watchdog();
    // One P: while the main goroutine parks, the thread holding the P runs
    // the others. Unlocked, that is our thread; locked, never.
    let rt = Builder::new().procs(1).build().unwrap();
    rt.block_on(|| {
        let ran_on_mine = || threads_used_by_others(20).contains(&os_tid());
        // Unlocked, our thread runs the others while we park, unless the
        // P moved on without it: on a loaded machine our thread can lose
        // its CPU past a quantum, and the preemption pins us to it
        // (ThreadAffine) while another thread takes the P. So an unlocked
        // check gets a few tries; a locked one fails at the first sight of
        // another goroutine on our thread.
        let ran_on_mine_once_of_5 = || (0..5).any(|_| ran_on_mine());
        assert!(
            ran_on_mine_once_of_5(),
            "unlocked: our thread should run the others on one P"
        );

        // Locking is not a scheduling point: we stay where we are (an
        // unlocked goroutine may have moved while it parked above).
        let here = os_tid();
        gosched::lock_os_thread();
        gosched::lock_os_thread();
        assert_eq!(os_tid(), here);
        assert!(!ran_on_mine(), "locked twice");
        gosched::unlock_os_thread();
        assert!(!ran_on_mine(), "locked twice, unlocked once: still locked");
        gosched::unlock_os_thread();
        assert!(
            ran_on_mine_once_of_5(),
            "locked twice, unlocked twice: unlocked"
        );

        // An extra unlock is a no-op: it does not leave a debt that would
        // cancel the next lock.
        gosched::unlock_os_thread();
        gosched::unlock_os_thread();
        assert!(ran_on_mine_once_of_5(), "extra unlocks");
        let here = os_tid();
        gosched::lock_os_thread();
        assert!(!ran_on_mine(), "a lock after extra unlocks still locks");
        assert_eq!(os_tid(), here);
        gosched::unlock_os_thread();
        assert!(ran_on_mine_once_of_5(), "unlocked again");
    });
    // On a plain thread both are no-ops.
    gosched::lock_os_thread();
    gosched::unlock_os_thread();
    gosched::unlock_os_thread();
}

#[test]
fn goroutine_exiting_while_locked_leaves_the_runtime_working() {
    let _wd = common::watchdog();
    for procs in [1, 2] {
        let rt = Builder::new().procs(procs).build().unwrap();
        let sum = rt.block_on(|| {
            let mut sum = 0u64;
            for round in 0..20u64 {
                let h = gosched::spawn(move || {
                    gosched::lock_os_thread();
                    if round % 2 == 0 {
                        gosched::lock_os_thread(); // exits locked twice
                    }
                    gosched::yield_now();
                    round
                });
                sum += h.join().unwrap();
                let hs: Vec<_> = (0..50u64).map(|i| gosched::spawn(move || i)).collect();
                sum += hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>();
            }
            // Goroutines that sleep still get woken and run.
            let hs: Vec<_> = (0..20)
                .map(|_| gosched::spawn(|| gosched::sleep(Duration::from_millis(2))))
                .collect();
            hs.into_iter().for_each(|h| h.join().unwrap());
            sum
        });
        assert_eq!(sum, 19 * 20 / 2 + 20 * (49 * 50 / 2), "procs {procs}");
        // And the runtime takes new work from outside afterwards.
        assert_eq!(rt.spawn(|| 5).join().unwrap(), 5);
    }
}

/// ThreadAffine pins a preempted goroutine's thread until it resumes; with
/// many call-free hogs, starting fresh ones while hundreds wait pinned
/// cost a thread each (1,000+ Ms for 2,000 hogs at a 50 µs quantum). The
/// scheduler resumes pinned ones first once 64 wait (8 per P on larger
/// machines), so the number of Ms stays near that.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn many_preempted_affine_hogs_need_few_threads() {
    let _w = common::watchdog();
    let rt = affine_rt(quantum_50us());
    let hogs = 1000;
    run_hogs(&rt, hogs, 300_000);
    let s = rt.stats();
    eprintln!("{} Ms, {} async preemptions", s.threads, s.preempt_async);
    assert!(s.preempt_async > 0, "no asynchronous preemption: {s:?}");
    // About the cap (64 parked) + procs + a few idle Ms; 300 leaves room
    // for a loaded machine (194 seen once at load 7 on 2 CPUs). Without the
    // cap: about one per hog (700-1,000).
    assert!(
        s.threads < 300,
        "{} Ms for {hogs} hogs on 2 Ps ({} async preemptions)",
        s.threads,
        s.preempt_async
    );
}

/// Work with no calls at all, so every preemption lands in preemptible
/// code.
fn spin(iters: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..iters {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    x
}

/// Spawns `hogs` goroutines that each `spin(iters)`, and joins them.
fn run_hogs(rt: &gosched::Runtime, hogs: usize, iters: u64) {
    rt.block_on(move || {
        let hs: Vec<_> = (0..hogs)
            .map(|_| gosched::spawn(move || spin(iters)))
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
}

/// Past the cap, queued goroutines used to get a fixed turn (every 61st
/// slice), each one started pinning one more thread while a pinned one
/// frees its thread only when done: hogs that need more slices than that
/// drove the count up to one thread per hog (about 600 Ms for 600 hogs of
/// ~300 slices). The turn now grows rarer as the count grows.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn affine_hogs_longer_than_the_queue_turn_still_need_few_threads() {
    let _w = common::watchdog();
    let quantum = quantum_50us();
    // About 300 quanta of work per hog, calibrated here (debug and release
    // builds differ threefold).
    let t = std::time::Instant::now();
    spin(1_000_000);
    let per_iter = t.elapsed().as_secs_f64() / 1e6;
    let iters = (300.0 * quantum.as_secs_f64() / per_iter) as u64;
    let rt = affine_rt(quantum);
    let hogs = 600;
    run_hogs(&rt, hogs, iters);
    let s = rt.stats();
    eprintln!("{} Ms, {} async preemptions", s.threads, s.preempt_async);
    assert!(
        s.preempt_async > (hogs * 20) as u64,
        "too few asynchronous preemptions for the test to mean anything: {s:?}"
    );
    // Where the turn (61 * k³ slices, k = parked / 64) matches ~300
    // slices per hog: k ≈ 1.7, so about 110, and what the walk, idle Ms
    // and a loaded machine add (113-199 seen). Without the shrinking
    // turn: about one per hog.
    assert!(
        s.threads < 300,
        "{} Ms for {hogs} long hogs on 2 Ps ({} async preemptions)",
        s.threads,
        s.preempt_async
    );
}

/// Past the cap, time-sliced goroutines come first, but a goroutine queued
/// behind call-free hogs that never finish still starts: the turn of
/// everything else grows rarer, it never stops.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn a_goroutine_queued_behind_endless_pinned_hogs_still_starts() {
    let _w = common::watchdog();
    let rt = affine_rt(quantum_50us());
    let hogs = 120; // Nearly twice the cap (64).
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let waited = rt.block_on({
        let (stop, started) = (stop.clone(), started.clone());
        move || {
            for _ in 0..hogs {
                let (stop, started) = (stop.clone(), started.clone());
                gosched::spawn(move || {
                    started.fetch_add(1, Ordering::Relaxed);
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                    }
                    x
                });
            }
            // Every hog starts (those past the cap on the turn), pinning
            // its thread; then nothing else is queued.
            let t = std::time::Instant::now();
            while started.load(Ordering::Relaxed) < hogs && t.elapsed() < Duration::from_secs(20) {
                gosched::sleep(Duration::from_millis(5));
            }
            let t = std::time::Instant::now();
            // The second spawn takes `runnext` and pushes the first to the
            // local queue, which only the turn serves at the cap.
            let first = gosched::spawn(|| ());
            let second = gosched::spawn(|| ());
            first.join().unwrap();
            let waited = t.elapsed();
            second.join().unwrap();
            waited
        }
    });
    stop.store(true, Ordering::Relaxed);
    let s = rt.stats();
    let started = started.load(Ordering::Relaxed);
    eprintln!(
        "{started} hogs started; the queued one after {waited:?}; {} Ms, {} async preemptions",
        s.threads, s.preempt_async
    );
    assert_eq!(
        started, hogs,
        "hogs queued behind pinned ones never started"
    );
    assert!(
        s.preempt_async > 1000,
        "the hogs were hardly preempted: {s:?}"
    );
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
}

fn quantum_50us() -> Duration {
    gosched::MIN_QUANTUM.max(Duration::from_micros(50))
}

/// A ThreadAffine (default mode) runtime on 2 Ps.
fn affine_rt(quantum: Duration) -> gosched::Runtime {
    Builder::new()
        .procs(2)
        .preempt_quantum(quantum)
        .build()
        .unwrap()
}

/// Voluntary context switches so far of this process's worker threads
/// (`gosched-m*`): each is an M parking in the kernel.
fn worker_thread_parks() -> u64 {
    let mut n = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("gosched-m") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

/// A goroutine preempted in ThreadAffine mode waits for its own thread, so
/// two hogs on one P trade the P between two threads at every preemption.
/// The preempted hog's thread hands the P straight to the thread the next
/// goroutine needs: one thread parks per preemption. (Handed first to an
/// idle M, which then passed it on, two did: a third of the P's time lost
/// at a 100 µs quantum.) In a child process: the count covers every worker
/// thread, so no other test's runtime may run beside it.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn an_affine_preemption_hands_the_p_to_the_next_thread_directly() {
    const TEST: &str = "an_affine_preemption_hands_the_p_to_the_next_thread_directly";
    if common::child_role().as_deref() == Some("count") {
        let rt = Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_micros(500))
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let before = worker_thread_parks();
        rt.block_on({
            let stop = stop.clone();
            move || {
                let hogs: Vec<_> = (0..2)
                    .map(|_| {
                        let stop = stop.clone();
                        gosched::spawn(move || {
                            let mut x = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                x = std::hint::black_box(spin(1000).wrapping_add(x));
                            }
                            x
                        })
                    })
                    .collect();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(400));
                    stop.store(true, Ordering::Relaxed);
                });
                for h in hogs {
                    h.join().unwrap();
                }
            }
        });
        let parks = worker_thread_parks() - before;
        println!("parks={parks} preempted={}", rt.stats().preempt_async);
        return;
    }
    let _w = common::watchdog();
    let out = common::run_child(TEST, "count", &[]);
    assert!(out.status.success(), "{}", out.describe());
    let (parks, preempted) = (out.stdout_u64("parks="), out.stdout_u64("preempted="));
    eprintln!("{parks} thread parks for {preempted} asynchronous preemptions");
    // About 800 preemptions in 0.4 s; fewer on a loaded machine, but always
    // some: 0.4 s is 800 quanta.
    assert!(
        preempted >= 20,
        "only {preempted} preemptions\n{}",
        out.describe()
    );
    // One park per preemption, plus a few at start and end; two per
    // preemption before the direct hand-off.
    assert!(
        parks <= preempted + preempted / 4 + 20,
        "{parks} thread parks for {preempted} preemptions (one each expected)"
    );
}
