//! Spawning and joining goroutines: results, panics, ids, the goroutine
//! count, yielding, and the misuse that must panic with a clear message.

mod common;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::payload_str;
use gosched::{Builder, Runtime};

#[test]
fn hundred_thousand_goroutines_spawn_and_join_with_their_results() {
    let _wd = common::watchdog();
    const N: u64 = 100_000;
    let rt = Builder::new().procs(2).build().unwrap();
    let sum = rt.block_on(|| {
        let hs: Vec<_> = (0..N).map(|i| gosched::spawn(move || i * 3 + 1)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    assert_eq!(sum, 3 * (N * (N - 1) / 2) + N);
    assert!(rt.stats().spawned > N, "{:?}", rt.stats());
}

/// Each node spawns two children and returns the size of its subtree.
fn tree(depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let l = gosched::spawn(move || tree(depth - 1));
    let r = gosched::spawn(move || tree(depth - 1));
    l.join().unwrap() + r.join().unwrap() + 1
}

#[test]
fn recursive_spawn_tree_counts_every_node() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    let nodes = rt.block_on(|| tree(12));
    assert_eq!(nodes, (1 << 13) - 1);
}

#[test]
fn panic_payload_comes_back_through_join_and_the_runtime_goes_on() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        let n = 7;
        let e = gosched::spawn(move || -> u32 { panic!("formatted boom {n}") })
            .join()
            .unwrap_err();
        assert_eq!(
            e.downcast_ref::<String>().map(String::as_str),
            Some("formatted boom 7")
        );

        let e = gosched::spawn(|| -> u32 { panic!("static boom") })
            .join()
            .unwrap_err();
        assert_eq!(e.downcast_ref::<&str>(), Some(&"static boom"));

        let e = gosched::spawn(|| std::panic::panic_any(42i32))
            .join()
            .unwrap_err();
        assert_eq!(e.downcast_ref::<i32>(), Some(&42));

        // The runtime and this goroutine carry on.
        assert_eq!(gosched::spawn(|| 6 * 7).join().unwrap(), 42);
    });
    // So does the runtime after block_on, for a panic in the main goroutine
    // (resumed in the caller).
    let e = catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(|| panic!("main goroutine boom"))
    }))
    .unwrap_err();
    assert_eq!(payload_str(&*e), Some("main goroutine boom"));
    assert_eq!(rt.block_on(|| gosched::spawn(|| 1 + 1).join().unwrap()), 2);
}

#[test]
fn runtime_spawn_from_plain_threads_and_join_there() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    std::thread::scope(|s| {
        let ts: Vec<_> = (0..4u64)
            .map(|t| {
                let rt = &rt;
                s.spawn(move || {
                    let hs: Vec<_> = (0..250u64)
                        .map(|i| {
                            rt.spawn(move || {
                                assert!(
                                    gosched::current_id().is_some(),
                                    "Runtime::spawn body not in a goroutine"
                                );
                                gosched::yield_now();
                                t * 1000 + i
                            })
                        })
                        .collect();
                    assert_eq!(gosched::current_id(), None);
                    hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
                })
            })
            .collect();
        let total: u64 = ts.into_iter().map(|t| t.join().unwrap()).sum();
        let want: u64 = (0..4u64)
            .map(|t| (0..250u64).map(|i| t * 1000 + i).sum::<u64>())
            .sum();
        assert_eq!(total, want);
    });
}

#[test]
fn goroutine_ids_are_distinct_and_match_their_handles() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    let (main_id, pairs) = rt.block_on(|| {
        let hs: Vec<_> = (0..10_000)
            .map(|_| gosched::spawn(|| gosched::current_id().unwrap()))
            .collect();
        let pairs: Vec<(u64, u64)> = hs
            .into_iter()
            .map(|h| {
                let id = h.id();
                (id, h.join().unwrap())
            })
            .collect();
        (gosched::current_id().unwrap(), pairs)
    });
    let mut seen = HashSet::new();
    assert!(seen.insert(main_id));
    for (handle_id, inside_id) in pairs {
        assert_eq!(
            handle_id, inside_id,
            "JoinHandle::id differs from current_id() inside"
        );
        assert!(handle_id >= 1);
        assert!(
            seen.insert(inside_id),
            "goroutine id {inside_id} seen twice"
        );
    }
    assert_eq!(seen.len(), 10_001);
}

#[test]
fn num_goroutines_counts_parked_goroutines() {
    let _wd = common::watchdog();
    const N: usize = 100;
    let rt = Builder::new().procs(2).build().unwrap();
    rt.block_on(|| {
        assert_eq!(gosched::num_goroutines(), 1);
        let hs: Vec<_> = (0..N)
            .map(|_| gosched::spawn(|| gosched::sleep(Duration::from_millis(300))))
            .collect();
        // Let them all start and park in sleep.
        gosched::sleep(Duration::from_millis(20));
        let live = gosched::num_goroutines();
        assert!(
            live > N,
            "num_goroutines() = {live} with {N} sleepers and main"
        );
        assert!(rt.stats().goroutines > N, "{:?}", rt.stats());
        for h in hs {
            h.join().unwrap();
        }
        // A joined goroutine's exit is counted when it leaves its stack,
        // just after it hands over its result: allow a moment.
        let t = Instant::now();
        while gosched::num_goroutines() != 1 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "num_goroutines() stuck at {}",
                gosched::num_goroutines()
            );
            gosched::sleep(Duration::from_millis(1));
        }
    });
    assert_eq!(gosched::num_goroutines(), 0, "outside a goroutine");
}

#[test]
fn yield_alternates_two_goroutines_on_one_p() {
    let _wd = common::watchdog();
    const ROUNDS: u64 = 10_000;
    let rt = Builder::new().procs(1).build().unwrap();
    let turn = Arc::new(AtomicU64::new(0));
    let yields = Arc::new(AtomicU64::new(0));
    let (a, b) = rt.block_on(|| {
        let player = |me: u64| {
            let turn = turn.clone();
            let yields = yields.clone();
            gosched::spawn(move || {
                let start = Instant::now();
                let mut mine = 0;
                for _ in 0..ROUNDS {
                    // Only the other goroutine can make it our turn, and on
                    // one P it runs only if we yield.
                    while turn.load(Ordering::Acquire) % 2 != me {
                        yields.fetch_add(1, Ordering::Relaxed);
                        gosched::yield_now();
                        assert!(
                            start.elapsed() < Duration::from_secs(60),
                            "ping-pong stalled"
                        );
                    }
                    turn.fetch_add(1, Ordering::AcqRel);
                    mine += 1;
                }
                mine
            })
        };
        let a = player(0);
        let b = player(1);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a, b), (ROUNDS, ROUNDS));
    assert_eq!(turn.load(Ordering::SeqCst), 2 * ROUNDS);
    assert!(
        yields.load(Ordering::SeqCst) >= ROUNDS,
        "they cannot alternate without yielding"
    );
}

/// `yield_now` puts the goroutine at the tail of the run queue (Go's
/// Gosched): three goroutines yielding on one P take turns in a fixed
/// cycle, whichever path each yield takes (straight to the next
/// goroutine, through the scheduler, or via the P's one-goroutine slot).
#[test]
fn yielding_goroutines_take_turns_round_robin() {
    const ROUNDS: usize = 200;
    let rt = Builder::new().procs(1).build().unwrap();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    rt.block_on(|| {
        let hs: Vec<_> = (0..3u8)
            .map(|me| {
                let log = log.clone();
                gosched::spawn(move || {
                    for _ in 0..ROUNDS {
                        log.lock().unwrap().push(me);
                        gosched::yield_now();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3 * ROUNDS);
    // The first turn depends on spawn order (the newest goroutine runs
    // first, Go's runnext); from then on the cycle repeats exactly.
    for i in 3..log.len() {
        assert_eq!(
            log[i],
            log[i - 3],
            "turn {i} broke the cycle: {:?}",
            &log[..i + 1]
        );
    }
    let first: std::collections::BTreeSet<u8> = log[..3].iter().copied().collect();
    assert_eq!(
        first.len(),
        3,
        "each goroutine once per cycle: {:?}",
        &log[..3]
    );
}

#[test]
fn spawn_outside_a_goroutine_panics_naming_runtime_spawn() {
    let e = catch_unwind(|| gosched::spawn(|| 1)).unwrap_err();
    let msg = payload_str(&*e).expect("a message");
    assert!(msg.contains("Runtime::spawn"), "{msg}");
}

#[test]
fn block_on_inside_a_goroutine_panics_through_join() {
    let _wd = common::watchdog();
    let rt = Arc::new(Builder::new().procs(2).build().unwrap());
    let other = Arc::new(Runtime::new().unwrap());
    let (same, different) = {
        let (rt2, other2) = (rt.clone(), other.clone());
        rt.block_on(move || {
            let same = gosched::spawn(move || rt2.block_on(|| 1))
                .join()
                .unwrap_err();
            let different = gosched::spawn(move || other2.block_on(|| 1))
                .join()
                .unwrap_err();
            (
                payload_str(&*same).map(str::to_owned),
                payload_str(&*different).map(str::to_owned),
            )
        })
    };
    for msg in [same, different] {
        let msg = msg.expect("a message");
        assert!(
            msg.contains("block_on") && msg.contains("inside a goroutine"),
            "{msg}"
        );
    }
    // Both runtimes still work.
    assert_eq!(rt.block_on(|| gosched::spawn(|| 3).join().unwrap()), 3);
    assert_eq!(other.block_on(|| 4), 4);
}

#[test]
fn block_on_borrows_from_the_callers_stack() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    let words = [String::from("go"), String::from("routine")];
    let mut counts = [0u64; 64];
    let total = rt.block_on(|| {
        for (i, c) in counts.iter_mut().enumerate() {
            *c = i as u64;
            if i % 8 == 0 {
                gosched::yield_now(); // may resume on another thread
            }
        }
        words.iter().map(String::len).sum::<usize>()
    });
    assert_eq!(total, 9);
    assert_eq!(counts.iter().sum::<u64>(), 63 * 64 / 2);
}
