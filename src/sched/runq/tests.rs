//! Unit tests of a P's run queue: the order the owner takes goroutines
//! in, what counts as work, how much one steal takes, and that concurrent
//! stealing neither loses nor duplicates a goroutine.
//!
//! The Gs here are dummies (never run, no runtime): only their addresses
//! and ids matter.

use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::{steal_one, Owner, RunQueue};
use crate::sched::g::{GRef, G};

/// `n` dummy Gs with ids `0..n`. The vector must outlive, unmoved and
/// unresized, every `GRef` made from it.
fn dummy_gs(n: usize) -> Vec<G> {
    (0..n)
        .map(|i| {
            let g = G::new(ptr::null_mut());
            g.id.store(i as u64, Ordering::Relaxed);
            g
        })
        .collect()
}

fn gref(g: &G) -> GRef {
    GRef(NonNull::from(g))
}

/// The owner side of a queue the test thread owns.
fn own(q: &RunQueue) -> Owner<'_> {
    // SAFETY: the queue belongs to no P; the calling thread is its only
    // owner for the test's duration (thieves use `steal_into` only).
    unsafe { q.owner() }
}

/// Everything the owner would take, in order.
fn ids(q: &RunQueue) -> Vec<u64> {
    let o = own(q);
    std::iter::from_fn(|| o.take_next().or_else(|| o.pop()))
        .map(|g| g.id.load(Ordering::Relaxed))
        .collect()
}

#[test]
fn the_queue_is_fifo_for_its_owner_and_for_thieves() {
    let gs = dummy_gs(100);
    let q = RunQueue::new();
    gs.iter().for_each(|g| own(&q).put_tail(gref(g)));
    assert_eq!(ids(&q), (0..100).collect::<Vec<_>>());

    // A thief takes from the same end: the oldest first.
    gs.iter().for_each(|g| own(&q).put_tail(gref(g)));
    let thief = RunQueue::new();
    let first = q.steal_into(own(&thief), false, false).unwrap();
    assert_eq!(first.id.load(Ordering::Relaxed), 0);
    assert_eq!(ids(&thief), (1..32).collect::<Vec<_>>());
    assert_eq!(ids(&q), (32..100).collect::<Vec<_>>());
    assert!(q.steal_into(own(&thief), true, false).is_none());
}

#[test]
fn next_runs_first_and_the_goroutine_it_displaces_goes_to_the_tail() {
    let gs = dummy_gs(4);
    let q = RunQueue::new();
    let o = own(&q);
    o.put_tail(gref(&gs[0]));
    o.put_next(gref(&gs[1]));
    o.put_next(gref(&gs[2]));
    o.put_tail(gref(&gs[3]));
    assert_eq!(ids(&q), [2, 0, 1, 3]);
}

#[test]
fn a_lone_yielder_waits_in_the_slot_and_runs_before_later_arrivals() {
    let gs = dummy_gs(3);
    let q = RunQueue::new();
    let o = own(&q);
    o.put_yielded(gref(&gs[0]));
    assert_eq!(q.len(), 1);
    // In the slot: work for its P, but nothing a thief can take, so an
    // idle M must not wake for it.
    assert!(q.has_work());
    assert!(!q.has_stealable_work());
    let thief = RunQueue::new();
    assert!(q.steal_into(own(&thief), true, false).is_none());
    // A second yielder finds the slot taken and queues behind it.
    o.put_yielded(gref(&gs[1]));
    o.put_tail(gref(&gs[2]));
    assert!(q.has_stealable_work());
    assert_eq!(q.len(), 3);
    assert_eq!(ids(&q), [0, 1, 2]);
    assert!(!q.has_work() && q.len() == 0);
}

#[test]
fn a_thief_takes_next_only_when_asked() {
    let gs = dummy_gs(2);
    let (q, thief) = (RunQueue::new(), RunQueue::new());
    own(&q).put_next(gref(&gs[0]));
    assert!(q.has_stealable_work());
    assert!(q.steal_into(own(&thief), false, false).is_none());
    let t = Instant::now();
    let got = q
        .steal_into(own(&thief), true, true)
        .map(|g| g.id.load(Ordering::Relaxed));
    assert_eq!(got, Some(0));
    // `victim_running` waits the grace period first.
    assert!(t.elapsed() >= super::NEXT_GRACE);
    assert!(!q.has_work());
    own(&q).put_next(gref(&gs[1]));
    let mut drained = Vec::new();
    own(&q).drain(|g| drained.push(g.id.load(Ordering::Relaxed)));
    assert_eq!(drained, [1]);
}

#[test]
fn one_steal_takes_half_the_victims_queue_capped_at_32() {
    // crossbeam's `steal_batch_and_pop` returns the oldest G and moves
    // more into the thief's queue: ceil(n/2) in all, at most 32 (its
    // MAX_BATCH), oldest first, in order.
    let gs = dummy_gs(200);
    for n in 1..=200usize {
        let victim = RunQueue::new();
        gs[..n].iter().for_each(|g| own(&victim).put_tail(gref(g)));
        let thief = RunQueue::new();
        let got = victim
            .steal_into(own(&thief), false, false)
            .expect("non-empty victim");
        let want = n.div_ceil(2).min(32);
        assert_eq!(
            got.id.load(Ordering::Relaxed),
            0,
            "n={n}: the popped G is the oldest"
        );
        let batch = ids(&thief);
        assert_eq!(batch, (1..want as u64).collect::<Vec<_>>(), "n={n}");
        assert_eq!(
            ids(&victim),
            (want as u64..n as u64).collect::<Vec<_>>(),
            "n={n}"
        );
    }
}

#[test]
fn concurrent_stealing_loses_and_duplicates_nothing() {
    const N: usize = 100_000;
    const THIEVES: usize = 3;
    let gs = dummy_gs(N);
    let q = RunQueue::new();
    let done = AtomicBool::new(false);
    let stolen = AtomicUsize::new(0);
    let start = Barrier::new(THIEVES + 1);
    let (mine, theirs) = std::thread::scope(|s| {
        let thieves: Vec<_> = (0..THIEVES)
            .map(|_| {
                let (q, done, stolen, start) = (&q, &done, &stolen, &start);
                s.spawn(move || {
                    let local = RunQueue::new();
                    let mut seen = Vec::new();
                    start.wait();
                    loop {
                        match q.steal_into(own(&local), false, false) {
                            Some(g) => {
                                seen.push(g.id.load(Ordering::Relaxed));
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
            own(&q).put_tail(gref(g));
            if i % 4 == 0 {
                seen.extend(own(&q).pop().map(|g| g.id.load(Ordering::Relaxed)));
            }
        }
        // Make sure the thieves raced with us at least once, even on a
        // loaded machine, so the test exercises what it claims to.
        let t = Instant::now();
        while stolen.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        seen.extend(ids(&q));
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
    assert_eq!(
        (got.map(|g| g.id.load(Ordering::Relaxed)), calls),
        (Some(0), 5)
    );
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
