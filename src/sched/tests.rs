//! Unit tests of the run-queue plumbing the scheduler relies on: the FIFO
//! order of a P's local queue, how much one steal takes, that concurrent
//! stealing neither loses nor duplicates a goroutine, and that
//! `coprime_step` gives a visiting order that covers every P.
//!
//! The Gs here are dummies (never run, no runtime): only their addresses
//! and ids matter.

use std::collections::HashSet;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crossbeam_deque::Worker;

use super::schedule::{coprime_step, steal_one};
use crate::sched::g::{GRef, G};

/// `n` dummy Gs with ids `0..n`. The vector must outlive, unmoved and
/// unresized, every `GRef` made from it.
fn dummy_gs(n: usize) -> Vec<G> {
    (0..n)
        .map(|i| {
            let g = G::new(ptr::null_mut());
            g.id.set(i as u64);
            g
        })
        .collect()
}

fn gref(g: &G) -> GRef {
    GRef(NonNull::from(g))
}

fn ids(w: &Worker<GRef>) -> Vec<u64> {
    std::iter::from_fn(|| w.pop()).map(|g| g.id.get()).collect()
}

#[test]
fn local_queue_is_fifo_for_its_owner_and_for_thieves() {
    let gs = dummy_gs(100);
    let w = Worker::new_fifo();
    gs.iter().for_each(|g| w.push(gref(g)));
    assert_eq!(ids(&w), (0..100).collect::<Vec<_>>());

    // A thief takes from the same end: the oldest first.
    gs.iter().for_each(|g| w.push(gref(g)));
    let s = w.stealer();
    let first: Vec<u64> = (0..10)
        .map(|_| steal_one(|| s.steal()).unwrap().id.get())
        .collect();
    assert_eq!(first, (0..10).collect::<Vec<_>>());
    assert_eq!(ids(&w), (10..100).collect::<Vec<_>>());
    assert!(steal_one(|| s.steal()).is_none());
}

#[test]
fn one_steal_takes_half_the_victims_queue_capped_at_32() {
    // `steal_from` uses `steal_batch_and_pop`: it returns the oldest G and
    // moves more into the thief's queue. crossbeam takes ceil(n/2) in all,
    // at most 32 (its MAX_BATCH), oldest first, in order.
    let gs = dummy_gs(200);
    for n in 1..=200usize {
        let victim = Worker::new_fifo();
        gs[..n].iter().for_each(|g| victim.push(gref(g)));
        let thief = Worker::new_fifo();
        let got =
            steal_one(|| victim.stealer().steal_batch_and_pop(&thief)).expect("non-empty victim");
        let want = n.div_ceil(2).min(32);
        assert_eq!(got.id.get(), 0, "n={n}: the popped G is the oldest");
        let batch = ids(&thief);
        assert_eq!(
            1 + batch.len(),
            want,
            "n={n}: took {} in all",
            1 + batch.len()
        );
        assert_eq!(batch, (1..want as u64).collect::<Vec<_>>(), "n={n}");
        assert_eq!(
            ids(&victim),
            (want as u64..n as u64).collect::<Vec<_>>(),
            "n={n}"
        );
    }
    // An empty victim gives nothing and moves nothing.
    let victim = Worker::<GRef>::new_fifo();
    let thief = Worker::new_fifo();
    assert!(steal_one(|| victim.stealer().steal_batch_and_pop(&thief)).is_none());
    assert!(thief.is_empty());
}

#[test]
fn concurrent_stealing_loses_and_duplicates_nothing() {
    const N: usize = 100_000;
    const THIEVES: usize = 3;
    let gs = dummy_gs(N);
    let owner = Worker::new_fifo();
    let stealer = owner.stealer();
    let done = AtomicBool::new(false);
    let stolen = AtomicUsize::new(0);
    let start = Barrier::new(THIEVES + 1);
    let (mine, theirs) = std::thread::scope(|s| {
        let thieves: Vec<_> = (0..THIEVES)
            .map(|_| {
                let (stealer, done, stolen, start) = (stealer.clone(), &done, &stolen, &start);
                s.spawn(move || {
                    let local = Worker::new_fifo();
                    let mut seen = Vec::new();
                    start.wait();
                    loop {
                        match steal_one(|| stealer.steal_batch_and_pop(&local)) {
                            Some(g) => {
                                seen.push(g.id.get());
                                seen.extend(ids(&local));
                                stolen.store(seen.len(), Ordering::Relaxed);
                            }
                            None if done.load(Ordering::Acquire) => break,
                            None => std::hint::spin_loop(),
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut seen = Vec::new();
        start.wait();
        for (i, g) in gs.iter().enumerate() {
            owner.push(gref(g));
            if i % 4 == 0 {
                seen.extend(owner.pop().map(|g| g.id.get()));
            }
        }
        // Make sure the thieves raced with us at least once, even on a
        // loaded machine, so the test exercises what it claims to.
        let t = Instant::now();
        while stolen.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        seen.extend(ids(&owner));
        done.store(true, Ordering::Release);
        let theirs: Vec<Vec<u64>> = thieves.into_iter().map(|t| t.join().unwrap()).collect();
        (seen, theirs)
    });
    let stolen_total: usize = theirs.iter().map(Vec::len).sum();
    assert!(stolen_total > 0, "no thief ever got anything");
    let mut count = vec![0u32; N];
    for id in mine.iter().chain(theirs.iter().flatten()) {
        count[*id as usize] += 1;
    }
    let lost: Vec<_> = (0..N).filter(|&i| count[i] == 0).take(10).collect();
    let twice: Vec<_> = (0..N).filter(|&i| count[i] > 1).take(10).collect();
    assert!(
        lost.is_empty() && twice.is_empty(),
        "lost {lost:?}, seen twice {twice:?}"
    );
    assert_eq!(mine.len() + stolen_total, N);
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[test]
fn coprime_step_visits_every_p_exactly_once_from_any_start() {
    let mut rs: Vec<usize> = (0..300).collect();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rs.push(x as usize);
    }
    rs.extend([usize::MAX, usize::MAX - 1, 1 << 63]);
    for n in 1..=64usize {
        for &r in &rs {
            let step = coprime_step(n, r);
            if n > 1 {
                assert!((1..n).contains(&step), "n={n} r={r}: step {step}");
            }
            for start in 0..n {
                let mut visits = vec![0u8; n];
                let mut i = start;
                for _ in 0..n {
                    visits[i] += 1;
                    i = (i + step) % n;
                }
                assert!(
                    visits.iter().all(|&v| v == 1),
                    "n={n} r={r} step={step} start={start}: {visits:?}"
                );
            }
        }
    }
}

#[test]
fn coprime_step_reaches_every_coprime_step() {
    // The steal order is random only if every valid step can come up.
    for n in 2..=64usize {
        let got: HashSet<usize> = (0..4 * n).map(|r| coprime_step(n, r)).collect();
        let want: HashSet<usize> = (1..n).filter(|&s| gcd(s, n) == 1).collect();
        assert_eq!(got, want, "n={n}");
    }
    assert_eq!(coprime_step(1, 12345), 1);
}

#[test]
fn steal_one_retries_until_success_or_empty() {
    use crossbeam_deque::Steal;
    let gs = dummy_gs(1);
    let mut calls = 0;
    let got = steal_one(|| {
        calls += 1;
        if calls < 5 {
            Steal::Retry
        } else {
            Steal::Success(gref(&gs[0]))
        }
    });
    assert_eq!((got.map(|g| g.id.get()), calls), (Some(0), 5));
    let mut calls = 0;
    let got = steal_one(|| {
        calls += 1;
        if calls < 3 {
            Steal::Retry
        } else {
            Steal::Empty
        }
    });
    assert_eq!((got, calls), (None, 3));
}
