//! `sync::RwLock`, `sync::Condvar`, `sync::Semaphore` and `sync::OnceLock`:
//! invariants under contention and preemption on 2 Ps, Go's writer
//! preference, a bounded producer/consumer queue, FIFO fairness of weighted
//! requests, a OnceLock whose waiters park, and the misuse panics.

mod common;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use gosched::sync::{Condvar, Mutex, OnceLock, RwLock, Semaphore};
use gosched::Builder;

fn rt2() -> gosched::Runtime {
    Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(500))
        .build()
        .unwrap()
}

#[test]
fn rwlock_excludes_writers_from_readers_under_contention() {
    let rt = rt2();
    let (reads, writes) = rt.block_on(|| {
        let l = Arc::new(RwLock::new((0u64, 0u64)));
        // Who is inside: +1 per reader, -1_000_000 per writer.
        let inside = Arc::new(AtomicI64::new(0));
        let reads = Arc::new(AtomicUsize::new(0));
        // Joined (not a WaitGroup): a failed check must fail the test, not
        // leave `wait` hanging.
        let mut hs = Vec::new();
        for i in 0..12 {
            let (l, inside, reads) = (l.clone(), inside.clone(), reads.clone());
            hs.push(gosched::spawn(move || {
                let mut rng = common::XorShift::new(i + 1);
                for _ in 0..2_000 {
                    if i % 3 == 0 {
                        let mut g = l.write();
                        let was = inside.fetch_sub(1_000_000, Ordering::SeqCst);
                        assert_eq!(was, 0, "writer entered beside others");
                        let a = std::hint::black_box(g.0);
                        if rng.below(8) == 0 {
                            gosched::yield_now(); // hold it across a switch
                        }
                        g.0 = a + 1;
                        g.1 += 1;
                        inside.fetch_add(1_000_000, Ordering::SeqCst);
                    } else {
                        let g = l.read();
                        let was = inside.fetch_add(1, Ordering::SeqCst);
                        assert!(was >= 0, "reader entered beside a writer");
                        assert_eq!(g.0, g.1, "torn write seen");
                        if rng.below(8) == 0 {
                            gosched::yield_now();
                        }
                        inside.fetch_sub(1, Ordering::SeqCst);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(g) = l.try_read() {
                        assert_eq!(g.0, g.1);
                    }
                    if let Some(mut g) = l.try_write() {
                        assert_eq!(inside.load(Ordering::SeqCst), 0);
                        g.0 += 1;
                        g.1 += 1;
                    }
                }
            }));
        }
        hs.into_iter().for_each(|h| h.join().unwrap());
        let g = l.read();
        assert_eq!(g.0, g.1);
        (reads.load(Ordering::Relaxed), g.0)
    });
    assert_eq!(reads, 8 * 2_000);
    assert!(writes >= 4 * 2_000, "{writes}");
}

#[test]
fn rwlock_a_waiting_writer_blocks_new_readers() {
    let rt = rt2();
    let log = rt.block_on(|| {
        let l = Arc::new(RwLock::new(()));
        let log = Arc::new(StdMutex::new(Vec::new()));
        let r1 = l.read();
        let writer = {
            let (l, log) = (l.clone(), log.clone());
            gosched::spawn(move || {
                let _w = l.write();
                log.lock().unwrap().push("writer");
                gosched::sleep(Duration::from_millis(5));
            })
        };
        // Wait until the writer is pending: then new readers are refused
        // although only readers hold the lock.
        let mut n = 0;
        while l.try_read().is_some() {
            gosched::sleep(Duration::from_millis(1));
            n += 1;
            assert!(n < 10_000, "the writer never became pending");
        }
        let reader2 = {
            let (l, log) = (l.clone(), log.clone());
            gosched::spawn(move || {
                let _r = l.read(); // parks behind the writer
                log.lock().unwrap().push("reader2");
            })
        };
        gosched::sleep(Duration::from_millis(20));
        assert!(log.lock().unwrap().is_empty(), "someone got in beside r1");
        drop(r1);
        writer.join().unwrap();
        reader2.join().unwrap();
        let v = log.lock().unwrap().clone();
        v
    });
    assert_eq!(log, ["writer", "reader2"]);
}

#[test]
fn rwlock_from_plain_threads_and_goroutines() {
    let rt = rt2();
    let l = Arc::new(RwLock::new(0u64));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || {
                for _ in 0..1_000 {
                    *l.write() += 1;
                    let _ = *l.read();
                }
            })
        })
        .collect();
    let l2 = l.clone();
    rt.block_on(move || {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let l = l2.clone();
                gosched::spawn(move || {
                    for _ in 0..1_000 {
                        *l.write() += 1;
                        let _ = *l.read();
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    });
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(*l.read(), 6_000);
}

/// A bounded queue (capacity 4) built from a Mutex and two Condvars.
struct Bounded {
    q: Mutex<VecDeque<u64>>,
    not_empty: Condvar,
    not_full: Condvar,
}

impl Bounded {
    fn new() -> Bounded {
        Bounded {
            q: Mutex::new(VecDeque::new()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }
    fn push(&self, v: u64) {
        let mut q = self.not_full.wait_while(self.q.lock(), |q| q.len() >= 4);
        q.push_back(v);
        drop(q);
        self.not_empty.notify_one();
    }
    fn pop(&self) -> u64 {
        let mut q = self.not_empty.wait_while(self.q.lock(), |q| q.is_empty());
        let v = q.pop_front().unwrap();
        drop(q);
        self.not_full.notify_one();
        v
    }
}

#[test]
fn condvar_producer_consumer_on_two_ps() {
    let rt = rt2();
    let b = Arc::new(Bounded::new());
    let sum = rt.block_on(|| {
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let b = b.clone();
                gosched::spawn(move || {
                    for i in 0..2_000 {
                        b.push(p * 10_000 + i);
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                gosched::spawn(move || (0..2_000).map(|_| b.pop()).sum::<u64>())
            })
            .collect();
        producers.into_iter().for_each(|h| h.join().unwrap());
        consumers
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<u64>()
    });
    let expect: u64 = (0..4u64)
        .map(|p| (0..2_000).map(|i| p * 10_000 + i).sum::<u64>())
        .sum();
    assert_eq!(sum, expect);
    assert!(b.q.lock().is_empty());
}

#[test]
fn condvar_between_a_plain_thread_and_a_goroutine() {
    let rt = rt2();
    let b = Arc::new(Bounded::new());
    let b2 = b.clone();
    let producer = std::thread::spawn(move || (0..500).for_each(|i| b2.push(i)));
    let sum = rt.block_on(|| (0..500).map(|_| b.pop()).sum::<u64>());
    producer.join().unwrap();
    assert_eq!(sum, (0..500).sum::<u64>());
}

#[test]
fn condvar_notify_all_wakes_every_waiter_and_notify_one_one() {
    let rt = Builder::new().procs(1).build().unwrap();
    rt.block_on(|| {
        let s = Arc::new((Mutex::new(0u32), Condvar::new()));
        let woke = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..5)
            .map(|_| {
                let (s, woke) = (s.clone(), woke.clone());
                gosched::spawn(move || {
                    let g = s.0.lock();
                    let _g = s.1.wait(g);
                    woke.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        gosched::sleep(Duration::from_millis(5)); // all five wait
        s.1.notify_one();
        gosched::sleep(Duration::from_millis(5));
        assert_eq!(woke.load(Ordering::SeqCst), 1);
        s.1.notify_all();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(woke.load(Ordering::SeqCst), 5);
    });
}

#[test]
fn semaphore_grants_in_arrival_order_and_a_large_head_is_not_overtaken() {
    // One P, and a sleep after each spawn: each waiter queues before the
    // next is spawned, so arrival order is A, B, C, D. Without wake-up
    // preemption: on a loaded machine a waiter descheduled by the OS for
    // 100 µs before it queues could be preempted for the main goroutine's
    // wake-up, and the next spawn would then run first.
    let rt = Builder::new()
        .procs(1)
        .wakeup_preempt(false)
        .build()
        .unwrap();
    rt.block_on(|| {
        let sem = Arc::new(Semaphore::new(10));
        let log = Arc::new(StdMutex::new(Vec::new()));
        sem.acquire(10);
        let mut hs = Vec::new();
        for (name, n) in [("A", 5), ("B", 1), ("C", 5), ("D", 1)] {
            let (sem, log) = (sem.clone(), log.clone());
            hs.push(gosched::spawn(move || {
                sem.acquire(n);
                log.lock().unwrap().push(name);
            }));
            gosched::sleep(Duration::from_millis(2));
        }
        let settle = || gosched::sleep(Duration::from_millis(5));
        sem.release(4); // 4 free: A (5) does not fit; B and D must not pass it
        settle();
        assert_eq!(*log.lock().unwrap(), Vec::<&str>::new());
        assert!(!sem.try_acquire(1), "try_acquire overtook the queue");
        sem.release(1); // 5 free: A
        settle();
        assert_eq!(*log.lock().unwrap(), ["A"]);
        sem.release(5); // the rest of ours: B (1), then C (5) does not fit in 4
        settle();
        assert_eq!(*log.lock().unwrap(), ["A", "B"]);
        sem.release(5); // A's permits, on its behalf: C, then D
                        // Both granted by that call (before either runs again)...
        assert_eq!(sem.available(), 3); // B, C and D hold 1 + 5 + 1
        hs.into_iter().for_each(|h| h.join().unwrap());
        // ...so the order they log in is the scheduler's, not the grant's.
        let mut rest = log.lock().unwrap()[2..].to_vec();
        rest.sort();
        assert_eq!(rest, ["C", "D"]);
    });
}

#[test]
fn semaphore_weighted_stress_never_exceeds_its_permits() {
    let rt = rt2();
    let max = rt.block_on(|| {
        let sem = Arc::new(Semaphore::new(7));
        let held = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..16u64)
            .map(|i| {
                let (sem, held, max) = (sem.clone(), held.clone(), max.clone());
                gosched::spawn(move || {
                    let mut rng = common::XorShift::new(i + 7);
                    for _ in 0..500 {
                        let n = 1 + rng.below(7) as usize;
                        sem.acquire(n);
                        let now = held.fetch_add(n, Ordering::SeqCst) + n;
                        assert!(now <= 7, "{now} permits held of 7");
                        max.fetch_max(now, Ordering::SeqCst);
                        if rng.below(4) == 0 {
                            gosched::yield_now();
                        }
                        held.fetch_sub(n, Ordering::SeqCst);
                        sem.release(n);
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(sem.available(), 7);
        max.load(Ordering::SeqCst)
    });
    assert!(max >= 2, "{max}");
}

#[test]
fn semaphore_misuse_panics_instead_of_hanging() {
    let sem = Semaphore::new(3);
    let r = std::panic::catch_unwind(|| sem.acquire(4));
    let p = r.unwrap_err();
    let msg = common::payload_str(&*p).unwrap();
    assert!(
        msg.contains("acquire(4)") && msg.contains("3 permits"),
        "{msg}"
    );
    let r = std::panic::catch_unwind(|| sem.release(1));
    let p = r.unwrap_err();
    let msg = common::payload_str(&*p).unwrap();
    assert!(msg.contains("released more than held"), "{msg}");
    assert_eq!(sem.available(), 3);
    assert!(!sem.try_acquire(4));
}

#[test]
fn oncelock_runs_one_initialiser_while_the_others_park() {
    static CELL: OnceLock<u64> = OnceLock::new();
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    // One P: if waiters blocked their thread, the initialiser (which
    // sleeps) could never finish.
    let rt = Builder::new().procs(1).build().unwrap();
    let vals = rt.block_on(|| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                gosched::spawn(move || {
                    *CELL.get_or_init(|| {
                        CALLS.fetch_add(1, Ordering::SeqCst);
                        gosched::sleep(Duration::from_millis(20));
                        100 + i
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    assert!(vals.iter().all(|&v| v == vals[0]), "{vals:?}");
    // A plain thread sees it without waiting.
    assert_eq!(CELL.get(), Some(&vals[0]));
}

#[test]
fn oncelock_a_panicking_initialiser_lets_a_waiter_retry() {
    let rt = rt2();
    let v = rt.block_on(|| {
        let cell = Arc::new(OnceLock::new());
        let c1 = cell.clone();
        let first = gosched::spawn(move || {
            *c1.get_or_init(|| {
                gosched::sleep(Duration::from_millis(20));
                panic!("init failed")
            })
        });
        gosched::sleep(Duration::from_millis(5)); // `first` is initialising
        let c2 = cell.clone();
        let second = gosched::spawn(move || *c2.get_or_init(|| 7u32));
        assert!(first.join().is_err());
        second.join().unwrap()
    });
    assert_eq!(v, 7);
}

#[test]
fn oncelock_set_and_plain_thread_waiters() {
    let rt = rt2();
    let cell = Arc::new(OnceLock::new());
    let c2 = cell.clone();
    let init = rt.spawn(move || {
        c2.get_or_init(|| {
            gosched::sleep(Duration::from_millis(20));
            String::from("ready")
        })
        .clone()
    });
    std::thread::sleep(Duration::from_millis(5));
    // A plain thread blocks until the goroutine's initialiser is done.
    let seen = cell.get_or_init(|| String::from("thread"));
    assert_eq!(seen, &init.join().unwrap());
    assert_eq!(cell.set(String::from("late")), Err(String::from("late")));
}

/// A waiter woken by a panicking initialiser that finds the cell RUNNING
/// again (a retry won the CAS before it ran) must wait for that retry too:
/// it used to park again without re-registering, so the retry's success
/// never woke it (deadlock report, or a hang).
#[test]
fn oncelock_waiter_woken_by_a_panic_waits_for_the_retry() {
    let _w = common::watchdog();
    for _ in 0..3 {
        let cell: Arc<OnceLock<u32>> = Arc::new(OnceLock::new());
        // One P, no wake-up preemption: the woken waiter runs only after
        // the panicking caller's retry has started (it sleeps).
        let rt = Builder::new()
            .procs(1)
            .wakeup_preempt(false)
            .build()
            .unwrap();
        let c = cell.clone();
        let v = rt.block_on(move || {
            let cw = c.clone();
            let waiter = gosched::spawn(move || *cw.get_or_init(|| 1));
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                c.get_or_init(|| {
                    // The waiter runs now, finds RUNNING and registers.
                    gosched::sleep(Duration::from_millis(20));
                    panic!("first initialiser fails")
                })
            }));
            assert!(r.is_err());
            // Retry at once: RUNNING again before the woken waiter runs.
            assert_eq!(
                *c.get_or_init(|| {
                    gosched::sleep(Duration::from_millis(20));
                    7
                }),
                7
            );
            waiter.join().unwrap()
        });
        assert_eq!(v, 7);
        assert_eq!(cell.get(), Some(&7));
    }
}

/// Stray `done()` calls (each panics, caught) racing with `wait()` and with
/// a legitimate final `done()`. `done` used to take the counter to -1 for
/// an instant before restoring it: a `wait` that saw -1 parked with the
/// counter back at 0 and nobody left to wake it, and a final `done` (1 ->
/// 0) that saw -1 under the lock woke nobody. Both hung. Run in a child
/// process, with a silent panic hook (thousands of caught panics).
#[test]
fn waitgroup_stray_done_panics_without_hanging_waiters() {
    use gosched::sync::WaitGroup;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::time::Instant;

    const ROLE: &str = "waitgroup-stray-done";
    if common::child_role().as_deref() == Some(ROLE) {
        std::panic::set_hook(Box::new(|_| {}));
        let wg = WaitGroup::new();
        let stop = Arc::new(AtomicBool::new(false));
        let strays = {
            let (wg, stop) = (wg.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut panics = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if std::panic::catch_unwind(|| wg.done()).is_err() {
                        panics += 1;
                    }
                }
                panics
            })
        };
        // Each part runs for `BUDGET` (the windows are nanoseconds wide);
        // a waiter that does not come back within `HUNG` is stuck for good.
        const BUDGET: Duration = Duration::from_secs(2);
        const HUNG: Duration = Duration::from_secs(20);
        let finish = |what: &str, rx: mpsc::Receiver<u64>| match rx.recv_timeout(HUNG) {
            Ok(n) => println!("{what}={n}"),
            Err(_) => {
                println!("hung: {what}, counter {}", wg.count());
                std::process::exit(3);
            }
        };

        // 1. `wait` on a zero counter while stray `done`s run.
        let (tx, rx) = mpsc::channel();
        let w = wg.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < BUDGET {
                w.wait();
                n += 1;
            }
            let _ = tx.send(n);
        });
        finish("waits", rx);

        // 2. Rounds of add(1), a final done() on another thread, wait().
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let d = wg.clone();
        std::thread::spawn(move || {
            for () in go_rx {
                // A stray may have taken this round's count: then ours
                // is the stray one and panics.
                let _ = std::panic::catch_unwind(|| d.done());
            }
        });
        let (tx, rx) = mpsc::channel();
        let w = wg.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < BUDGET {
                w.add(1);
                go_tx.send(()).unwrap();
                w.wait();
                n += 1;
            }
            let _ = tx.send(n);
        });
        finish("rounds", rx);

        stop.store(true, Ordering::Relaxed);
        println!("stray-panics={}", strays.join().unwrap());
        assert_eq!(wg.count(), 0);
        println!("wg-ok");
        return;
    }
    let out = common::run_child(
        "waitgroup_stray_done_panics_without_hanging_waiters",
        ROLE,
        &[],
    );
    assert!(
        out.status.success() && out.stdout.contains("wg-ok"),
        "{}",
        out.describe()
    );
    assert!(out.stdout_u64("stray-panics=") > 0, "{}", out.describe());
}

/// What a [`hooked_waker`] does when cloned, woken or dropped.
#[derive(Default)]
struct WakerHooks {
    /// Spin in `clone` / `drop` / `wake` until another goroutine has run
    /// (`ticks` moved), recording whether it did.
    spin_clone: std::sync::atomic::AtomicBool,
    spin_drop: std::sync::atomic::AtomicBool,
    spin_wake: std::sync::atomic::AtomicBool,
    /// Panic in `wake`.
    panic_wake: std::sync::atomic::AtomicBool,
    /// 0: no spin yet; 1: the last spin saw `ticks` move; 2: it did not.
    spun: std::sync::atomic::AtomicU8,
    wakes: AtomicUsize,
    ticks: Arc<std::sync::atomic::AtomicU64>,
}

impl WakerHooks {
    /// Spins (preemptible, unless the caller is in a no-preempt region)
    /// until the ticker goroutine has run, for at most 5 s.
    fn spin(&self) {
        let t0 = std::time::Instant::now();
        let start = self.ticks.load(Ordering::SeqCst);
        while self.ticks.load(Ordering::SeqCst) == start && t0.elapsed() < Duration::from_secs(5) {
            std::hint::spin_loop();
        }
        let moved = self.ticks.load(Ordering::SeqCst) != start;
        self.spun.store(if moved { 1 } else { 2 }, Ordering::SeqCst);
    }
}

/// A `Waker` backed by an `Arc<WakerHooks>` whose clone, wake and drop run
/// the hooks' code (std's `Wake` does not let clone or drop run any).
fn hooked_waker(h: &Arc<WakerHooks>) -> std::task::Waker {
    use std::task::{RawWaker, RawWakerVTable, Waker};
    unsafe fn clone(p: *const ()) -> RawWaker {
        // SAFETY: `p` is an `Arc<WakerHooks>` pointer that this waker owns
        // a count on; the clone takes another.
        let h = unsafe {
            Arc::increment_strong_count(p as *const WakerHooks);
            &*(p as *const WakerHooks)
        };
        if h.spin_clone.load(Ordering::SeqCst) {
            h.spin();
        }
        RawWaker::new(p, &VTABLE)
    }
    unsafe fn wake(p: *const ()) {
        // SAFETY: as in `clone`; `wake` consumes the waker: drop it after.
        unsafe {
            wake_by_ref(p);
            drop(p);
        }
    }
    unsafe fn wake_by_ref(p: *const ()) {
        // SAFETY: the waker owns a count on the `Arc` (see `clone`).
        let h = unsafe { &*(p as *const WakerHooks) };
        h.wakes.fetch_add(1, Ordering::SeqCst);
        if h.spin_wake.load(Ordering::SeqCst) {
            h.spin();
        }
        if h.panic_wake.load(Ordering::SeqCst) {
            panic!("waker boom");
        }
    }
    unsafe fn drop(p: *const ()) {
        // SAFETY: the waker owns a count on the `Arc` (see `clone`); it is
        // released last.
        unsafe {
            let h = &*(p as *const WakerHooks);
            if h.spin_drop.load(Ordering::SeqCst) {
                h.spin();
            }
            Arc::decrement_strong_count(p as *const WakerHooks);
        }
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop);
    let p = Arc::into_raw(h.clone()) as *const ();
    // SAFETY: the vtable's functions keep the contract above: each waker
    // owns one count on the `Arc`, and every function is thread-safe.
    unsafe { Waker::from_raw(RawWaker::new(p, &VTABLE)) }
}

/// Polls `h` once with `w`.
fn poll_once<R>(
    h: &mut gosched::JoinHandle<R>,
    w: &std::task::Waker,
) -> std::task::Poll<std::thread::Result<R>> {
    use std::future::Future;
    std::pin::Pin::new(h).poll(&mut std::task::Context::from_waker(w))
}

/// A task's `Waker` is foreign code: `JoinHandle::poll` used to clone it
/// and drop the one it replaced while holding the runtime's lock in a
/// no-preempt region, and the finishing goroutine woke it in its own
/// no-preempt region, so a slow waker held the only P (nothing else ran).
/// Each hook spins until another goroutine has run; on one P that happens
/// only if the spinning goroutine can be preempted.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn join_handle_waker_code_runs_preemptible() {
    let _w = common::watchdog();
    let rt = Builder::new()
        .procs(1)
        .async_preempt(true)
        .preempt_quantum(Duration::from_millis(2))
        .build()
        .unwrap();
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hooks = |f: fn(&WakerHooks) -> &std::sync::atomic::AtomicBool| {
        let h = Arc::new(WakerHooks {
            ticks: ticks.clone(),
            ..WakerHooks::default()
        });
        f(&h).store(true, Ordering::SeqCst);
        h
    };
    let (a, b) = (hooks(|h| &h.spin_clone), hooks(|h| &h.spin_wake));
    let (a2, b2) = (a.clone(), b.clone());
    let (clone_ran, drop_ran, wake_ran) = rt.block_on(move || {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (t, s) = (ticks.clone(), stop.clone());
        let ticker = gosched::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                t.fetch_add(1, Ordering::SeqCst);
                gosched::sleep(Duration::from_millis(1));
            }
        });
        let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = release.clone();
        let mut h = gosched::spawn(move || {
            while !r.load(Ordering::SeqCst) {
                gosched::sleep(Duration::from_millis(1));
            }
            5
        });
        let (wa, wb) = (hooked_waker(&a2), hooked_waker(&b2));
        // Registers a clone of `wa` (its clone spins).
        assert!(poll_once(&mut h, &wa).is_pending());
        let clone_ran = a2.spun.swap(0, Ordering::SeqCst);
        drop(wa); // ours, not the registered clone
        a2.spin_drop.store(true, Ordering::SeqCst);
        // Replaces it with a clone of `wb` (the old one's drop spins).
        assert!(poll_once(&mut h, &wb).is_pending());
        let drop_ran = a2.spun.swap(0, Ordering::SeqCst);
        // The goroutine's end wakes `wb`'s clone (its wake spins).
        release.store(true, Ordering::SeqCst);
        while b2.spun.load(Ordering::SeqCst) == 0 {
            gosched::sleep(Duration::from_millis(1));
        }
        let wake_ran = b2.spun.load(Ordering::SeqCst);
        match poll_once(&mut h, &wb) {
            std::task::Poll::Ready(r) => assert_eq!(r.unwrap(), 5),
            std::task::Poll::Pending => panic!("woken but not ready"),
        }
        stop.store(true, Ordering::SeqCst);
        ticker.join().unwrap();
        (clone_ran, drop_ran, wake_ran)
    });
    // Per hook (clone, drop of the replaced waker, wake): 1 if another
    // goroutine ran while it spun, 2 if not (it ran unpreemptible).
    assert_eq!((clone_ran, drop_ran, wake_ran), (1, 1, 1));
    assert_eq!(b.wakes.load(Ordering::SeqCst), 1);
    assert_eq!(a.wakes.load(Ordering::SeqCst), 0);
}

/// A `Waker` that panics when the goroutine it waits for finishes: the
/// panic used to unwind out of the goroutine's entry (`extern "C"`) and
/// abort the process. It is now caught and discarded (the panic hook has
/// reported it), like tokio does for a `JoinHandle`'s waker; the goroutine
/// and the runtime carry on. Run in a child process (the old abort).
#[test]
fn join_handle_waker_panic_does_not_abort() {
    const ROLE: &str = "waker-panic";
    if common::child_role().as_deref() == Some(ROLE) {
        let rt = Builder::new().procs(2).build().unwrap();
        let hooks = Arc::new(WakerHooks::default());
        hooks.panic_wake.store(true, Ordering::SeqCst);
        let hk = hooks.clone();
        let v = rt.block_on(move || {
            let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let r = release.clone();
            let mut h = gosched::spawn(move || {
                while !r.load(Ordering::SeqCst) {
                    gosched::sleep(Duration::from_millis(1));
                }
                5
            });
            let w = hooked_waker(&hk);
            assert!(poll_once(&mut h, &w).is_pending());
            release.store(true, Ordering::SeqCst);
            while hk.wakes.load(Ordering::SeqCst) == 0 {
                gosched::sleep(Duration::from_millis(1));
            }
            let v = loop {
                match poll_once(&mut h, std::task::Waker::noop()) {
                    std::task::Poll::Ready(r) => break r.unwrap(),
                    std::task::Poll::Pending => gosched::sleep(Duration::from_millis(1)),
                }
            };
            // The runtime still works.
            v + gosched::spawn(|| 1).join().unwrap()
        });
        println!("v={v}");
        return;
    }
    let out = common::run_child("join_handle_waker_panic_does_not_abort", ROLE, &[]);
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout_u64("v="), 6, "{}", out.describe());
    assert!(out.stderr.contains("waker boom"), "{}", out.describe());
}
