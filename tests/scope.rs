//! Scoped goroutines: borrowing from the caller, joining every goroutine
//! before `scope` returns (also when something panics), panic propagation,
//! nesting, and plain-thread callers through `Runtime::scope`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gosched::Builder;

fn rt2() -> gosched::Runtime {
    Builder::new().procs(2).build().unwrap()
}

/// CPU-bound work on a borrowed chunk (no runtime calls: preemption has to
/// share the Ps).
fn crunch(c: &[u64]) -> u64 {
    let mut acc = 0u64;
    for &x in c {
        let mut y = x;
        for _ in 0..200 {
            y = y
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        acc = acc.wrapping_add(y);
    }
    acc
}

#[test]
fn split_a_borrowed_slice_among_cpu_bound_goroutines() {
    let rt = rt2();
    let data: Vec<u64> = (0..200_000).collect();
    let expect = crunch(&data);
    let (sum, threads) = rt.block_on(|| {
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let sum = gosched::scope(|s| {
            let hs: Vec<_> = data
                .chunks(data.len() / 8)
                .map(|c| {
                    let threads = &threads;
                    s.spawn(move || {
                        let r = crunch(c);
                        threads.lock().unwrap().insert(std::thread::current().id());
                        r
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .fold(0u64, u64::wrapping_add)
        });
        (sum, threads.into_inner().unwrap().len())
    });
    assert_eq!(sum, expect);
    assert!(threads >= 1);
}

#[test]
fn goroutines_write_disjoint_mutable_chunks() {
    let rt = rt2();
    let mut v = vec![0u32; 10_000];
    rt.block_on(|| {
        gosched::scope(|s| {
            for (i, c) in v.chunks_mut(1000).enumerate() {
                s.spawn(move || {
                    for x in c.iter_mut() {
                        *x = i as u32 + 1;
                    }
                });
            }
        })
    });
    for (i, c) in v.chunks(1000).enumerate() {
        assert!(c.iter().all(|&x| x == i as u32 + 1), "chunk {i}");
    }
}

#[test]
fn scope_joins_unjoined_goroutines_before_returning() {
    let rt = rt2();
    let done = AtomicUsize::new(0);
    rt.block_on(|| {
        gosched::scope(|s| {
            for i in 0..20 {
                let done = &done;
                s.spawn(move || {
                    gosched::sleep(Duration::from_millis(1 + i % 5));
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        // Every goroutine finished before scope returned.
        assert_eq!(done.load(Ordering::Relaxed), 20);
    });
}

#[test]
fn waiting_parks_the_goroutine_on_one_p() {
    // On one P, the waiting goroutine must let its children run.
    let rt = Builder::new().procs(1).build().unwrap();
    let n = AtomicUsize::new(0);
    rt.block_on(|| {
        gosched::scope(|s| {
            for _ in 0..50 {
                s.spawn(|| {
                    gosched::yield_now();
                    n.fetch_add(1, Ordering::Relaxed);
                });
            }
        })
    });
    assert_eq!(n.load(Ordering::Relaxed), 50);
}

#[test]
fn a_child_panic_propagates_after_all_are_joined() {
    let rt = rt2();
    let sibling_done = AtomicBool::new(false);
    let r = rt.block_on(|| {
        catch_unwind(AssertUnwindSafe(|| {
            gosched::scope(|s| {
                s.spawn(|| {
                    gosched::sleep(Duration::from_millis(30));
                    sibling_done.store(true, Ordering::Relaxed);
                });
                s.spawn(|| panic!("child boom"));
            })
        }))
    });
    let payload = r.expect_err("scope must panic when a child panicked");
    assert_eq!(
        common::payload_str(&*payload),
        Some("a scoped goroutine panicked")
    );
    assert!(
        sibling_done.load(Ordering::Relaxed),
        "scope unwound before joining"
    );
}

#[test]
fn a_panic_in_the_closure_propagates_after_all_are_joined() {
    let rt = rt2();
    let child_done = AtomicBool::new(false);
    let r = rt.block_on(|| {
        catch_unwind(AssertUnwindSafe(|| {
            gosched::scope(|s| {
                s.spawn(|| {
                    gosched::sleep(Duration::from_millis(30));
                    child_done.store(true, Ordering::Relaxed);
                });
                panic!("closure boom");
            })
        }))
    });
    let payload = r.expect_err("scope must resume the closure's panic");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"closure boom"));
    assert!(
        child_done.load(Ordering::Relaxed),
        "scope unwound before joining"
    );
}

#[test]
fn a_joined_panic_does_not_make_the_scope_panic() {
    let rt = rt2();
    let ok = rt.block_on(|| {
        gosched::scope(|s| {
            let h = s.spawn(|| panic!("handled"));
            h.join().is_err()
        })
    });
    assert!(ok);
}

#[test]
fn unjoined_results_are_dropped_before_scope_returns() {
    struct Bump<'a>(&'a AtomicUsize);
    impl Drop for Bump<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let rt = rt2();
    let drops = AtomicUsize::new(0);
    rt.block_on(|| {
        gosched::scope(|s| {
            for _ in 0..10 {
                // The result borrows from the caller; its handle is dropped.
                s.spawn(|| Bump(&drops));
            }
        });
        assert_eq!(drops.load(Ordering::Relaxed), 10);
    });
}

#[test]
fn nested_scopes_and_spawning_from_a_scoped_goroutine() {
    let rt = rt2();
    let data: Vec<u64> = (1..=64).collect();
    let total = AtomicUsize::new(0);
    rt.block_on(|| {
        gosched::scope(|outer| {
            for half in data.chunks(32) {
                let total = &total;
                outer.spawn(move || {
                    // An inner scope inside a scoped goroutine...
                    gosched::scope(|inner| {
                        for quarter in half.chunks(8) {
                            inner.spawn(move || {
                                let s: u64 = quarter.iter().sum();
                                total.fetch_add(s as usize, Ordering::Relaxed);
                            });
                        }
                    });
                });
            }
            // ...and a goroutine spawning into the outer scope.
            outer.spawn(|| {
                outer.spawn(|| total.fetch_add(1_000_000, Ordering::Relaxed));
            });
        })
    });
    assert_eq!(total.load(Ordering::Relaxed), 2080 + 1_000_000);
}

#[test]
fn runtime_scope_from_a_plain_thread() {
    let rt = rt2();
    let words = ["a", "bb", "ccc"];
    let lens = rt.scope(|s| {
        let hs: Vec<_> = words.iter().map(|w| s.spawn(move || w.len())).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(lens, [1, 2, 3]);
    // The goroutines ran on the runtime, not on this thread.
    let ids = rt.scope(|s| s.spawn(gosched::current_id).join().unwrap());
    assert!(ids.is_some());
}

#[test]
fn runtime_scope_propagates_a_child_panic_to_a_plain_thread() {
    let rt = rt2();
    let r = catch_unwind(AssertUnwindSafe(|| {
        rt.scope(|s| {
            s.spawn(|| panic!("boom"));
        })
    }));
    assert!(r.is_err());
}

#[test]
fn scope_outside_a_goroutine_panics_with_a_clear_message() {
    let r = catch_unwind(|| gosched::scope(|_| ()));
    let msg = r.unwrap_err();
    let msg = common::payload_str(&*msg).unwrap().to_string();
    assert!(msg.contains("outside a goroutine"), "{msg}");
    assert!(msg.contains("Runtime::scope"), "{msg}");
}
