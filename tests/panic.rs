//! Panics in goroutines. std keeps a thread's panic state (the count behind
//! `std::thread::panicking`, "inside the panic hook") per OS thread, so a
//! goroutine that parks mid-panic must keep its thread to itself until the
//! panic is over: healthy goroutines never see `panicking() == true`, never
//! poison a `std::sync::Mutex`, and a second panic elsewhere never aborts
//! the process as "thread panicked while processing panic".

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{child_role, payload_str, run_child, watchdog};
use gosched::chan::{self, Receiver, Sender};

/// Runs `f` as the main goroutine of a one-P runtime (with one P, a
/// goroutine readied by the running one runs next on the same thread unless
/// that thread is kept for a panicking goroutine).
fn one_p<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let _w = watchdog();
    let rt = gosched::Builder::new().procs(1).build().unwrap();
    rt.block_on(f)
}

/// Sends on `started` and then waits on `release` when dropped: a `Drop`
/// guard that parks while its goroutine unwinds.
struct ParkingGuard {
    started: Sender<()>,
    release: Receiver<()>,
}

impl Drop for ParkingGuard {
    fn drop(&mut self) {
        assert!(std::thread::panicking());
        self.started.send(()).unwrap();
        self.release.recv();
        // Still unwinding when resumed: the thread's panic state is ours.
        assert!(std::thread::panicking());
    }
}

#[test]
fn healthy_goroutine_does_not_see_a_parked_unwinders_panic() {
    let (started_tx, started_rx) = chan::channel::<()>(0);
    let (release_tx, release_rx) = chan::channel::<()>(0);
    let held = Mutex::new(0u32);
    let (main_panicking, poisoned, others) = one_p(|| {
        // Held across the park below: dropped on whichever thread the main
        // goroutine resumes on.
        let guard = held.lock().unwrap();
        let unwinder = gosched::spawn(move || {
            let _g = ParkingGuard {
                started: started_tx,
                release: release_rx,
            };
            panic!("unwinding with a parked guard");
        });
        // The unwinder runs on our thread, readies us from its guard (we run
        // next on the only P), then parks mid-unwind.
        started_rx.recv().unwrap();
        let main_panicking = std::thread::panicking();
        drop(guard);
        let poisoned = held.is_poisoned();
        let others: Vec<bool> = (0..8)
            .map(|_| gosched::spawn(std::thread::panicking))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        release_tx.send(()).unwrap();
        let err = unwinder.join().unwrap_err();
        assert_eq!(payload_str(&*err), Some("unwinding with a parked guard"));
        (main_panicking, poisoned, others)
    });
    assert!(
        !main_panicking,
        "a healthy goroutine saw std::thread::panicking() == true"
    );
    assert!(
        !poisoned,
        "a healthy goroutine's std Mutex guard poisoned the mutex"
    );
    assert!(
        others.iter().all(|p| !p),
        "goroutines spawned meanwhile saw panicking(): {others:?}"
    );
}

#[test]
fn goroutine_that_catches_its_own_panic_is_unlocked_again() {
    // A guard that sleeps (parks on a timer) mid-unwind; the goroutine
    // catches the panic and goes on: afterwards it can run anywhere again,
    // and it still works (yields, parks) normally.
    struct Sleepy;
    impl Drop for Sleepy {
        fn drop(&mut self) {
            gosched::sleep(Duration::from_millis(5));
        }
    }
    let ok = one_p(|| {
        let h = gosched::spawn(|| {
            let r = std::panic::catch_unwind(|| {
                let _s = Sleepy;
                panic!("caught inside");
            });
            assert!(r.is_err());
            assert!(!std::thread::panicking());
            for _ in 0..10 {
                gosched::yield_now();
                gosched::sleep(Duration::from_millis(1));
            }
            true
        });
        let helpers: Vec<_> = (0..4)
            .map(|_| gosched::spawn(|| (0..10).for_each(|_| gosched::yield_now())))
            .collect();
        helpers.into_iter().for_each(|h| h.join().unwrap());
        h.join().unwrap()
    });
    assert!(ok);
}

/// The channel the parking panic hook of the child below reports on.
static HOOK_TX: OnceLock<Sender<String>> = OnceLock::new();

#[test]
fn panic_hook_that_parks_does_not_abort_other_goroutines_panics() {
    if child_role().is_some() {
        // A hook that parks its goroutine twice (a sleep, then an unbuffered
        // send the main goroutine receives), while eight goroutines on one P
        // panic at about the same time. Run on the panicking goroutine's
        // thread, a second panic there while the first is still in its hook
        // aborted the process.
        let (tx, rx) = chan::channel::<String>(0);
        HOOK_TX.set(tx).unwrap();
        std::panic::set_hook(Box::new(|info| {
            gosched::sleep(Duration::from_millis(2));
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            HOOK_TX.get().unwrap().send(msg).unwrap();
        }));
        let rt = gosched::Builder::new().procs(1).build().unwrap();
        let (mut hooked, joined) = rt.block_on(move || {
            let hs: Vec<_> = (0..8)
                .map(|i| gosched::spawn(move || -> u32 { panic!("goroutine {i}") }))
                .collect();
            let hooked: Vec<String> = (0..8).map(|_| rx.recv().unwrap()).collect();
            let joined = hs
                .into_iter()
                .map(|h| h.join())
                .filter(Result::is_err)
                .count();
            (hooked, joined)
        });
        hooked.sort();
        println!("HOOKED {}", hooked.join(","));
        println!("JOINED {joined}");
        return;
    }
    let out = run_child(
        "panic_hook_that_parks_does_not_abort_other_goroutines_panics",
        "hook",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..8).map(|i| format!("goroutine {i}")).collect();
        v.sort();
        v
    };
    assert!(
        out.stdout.contains(&format!("HOOKED {}\n", want.join(","))),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("JOINED 8\n"), "{}", out.describe());
}

#[test]
fn many_unwinders_parking_in_guards_all_finish() {
    // Every goroutine parks mid-unwind on a shared WaitGroup-like barrier:
    // each keeps its own thread until released, and all complete.
    let n = 16;
    let joined = one_p(move || {
        let (tx, rx) = chan::channel::<()>(n);
        let gate = Arc::new(gosched::sync::WaitGroup::new());
        gate.add(1);
        struct Wait(Arc<gosched::sync::WaitGroup>, Sender<()>);
        impl Drop for Wait {
            fn drop(&mut self) {
                self.1.send(()).unwrap();
                self.0.wait();
            }
        }
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let w = Wait(gate.clone(), tx.clone());
                gosched::spawn(move || {
                    let _w = w;
                    panic!("gate");
                })
            })
            .collect();
        for _ in 0..n {
            rx.recv().unwrap();
        }
        assert!(!std::thread::panicking());
        gate.done();
        hs.into_iter()
            .map(|h| h.join().unwrap_err())
            .filter(|e| payload_str(&**e) == Some("gate"))
            .count()
    });
    assert_eq!(joined, n);
}

#[test]
fn unwinder_that_yields_keeps_its_thread_and_its_panic_state() {
    // A guard that yields (and sleeps) mid-unwind, beside a goroutine on the
    // same P that checks, between its own yields, that it never sees the
    // panic and that the unwinder's thread is never its own.
    struct Yielder(Arc<Mutex<Vec<i32>>>);
    impl Drop for Yielder {
        fn drop(&mut self) {
            for i in 0..20 {
                self.0.lock().unwrap().push(common::os_tid());
                if i % 5 == 4 {
                    gosched::sleep(Duration::from_millis(1));
                } else {
                    gosched::yield_now();
                }
                assert!(std::thread::panicking());
            }
        }
    }
    let (saw_panicking, shared_thread) = one_p(|| {
        let tids = Arc::new(Mutex::new(Vec::new()));
        let t = tids.clone();
        let unwinder = gosched::spawn(move || {
            let _y = Yielder(t);
            panic!("yielding unwinder");
        });
        let t = tids.clone();
        let healthy = gosched::spawn(move || {
            let mut saw = false;
            let mut shared = false;
            for _ in 0..40 {
                saw |= std::thread::panicking();
                let me = common::os_tid();
                shared |= t.lock().unwrap().contains(&me);
                gosched::yield_now();
            }
            (saw, shared)
        });
        let err = unwinder.join().unwrap_err();
        assert_eq!(payload_str(&*err), Some("yielding unwinder"));
        let tids = tids.lock().unwrap();
        assert!(
            tids.windows(2).all(|w| w[0] == w[1]),
            "the unwinder moved between threads: {tids:?}"
        );
        healthy.join().unwrap()
    });
    assert!(
        !saw_panicking,
        "a healthy goroutine saw panicking() == true"
    );
    assert!(
        !shared_thread,
        "a healthy goroutine ran on the unwinder's thread"
    );
}

/// A goroutine nobody joins (its handle dropped) whose result panics when
/// dropped: the goroutine drops it on its way out, outside any
/// `catch_unwind`, and the unwinding ran off the goroutine's stack:
/// "fatal runtime error: failed to initiate panic, error 5". There is
/// nobody to hand that panic to (std aborts too, saying "thread result
/// panicked on drop"): the process aborts, saying which goroutine's
/// result it was.
#[test]
fn an_unjoined_result_that_panics_on_drop_aborts_with_a_message() {
    const TEST: &str = "an_unjoined_result_that_panics_on_drop_aborts_with_a_message";
    if child_role().as_deref() == Some(TEST) {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("bomb drop");
            }
        }
        let rt = gosched::Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            let h = gosched::spawn(|| {
                gosched::sleep(Duration::from_millis(10));
                Bomb
            });
            drop(h);
            gosched::sleep(Duration::from_millis(200));
        });
        println!("not reached");
        return;
    }
    if child_role().is_some() {
        return;
    }
    let out = run_child(TEST, TEST, &[]);
    assert_eq!(out.signal(), Some(libc::SIGABRT), "{}", out.describe());
    assert!(out.stderr.contains("bomb drop"), "{}", out.describe());
    assert!(
        out.stderr.contains("the result of goroutine") && out.stderr.contains("panicked on drop"),
        "{}",
        out.describe()
    );
    assert!(!out.stdout.contains("not reached"), "{}", out.describe());
}

/// A caught panic on the smallest stack `build` accepts (16 KiB), with
/// `RUST_BACKTRACE=1`: the report and its backtrace are printed and `join`
/// returns the panic. Resolving the backtrace's symbols on the goroutine's
/// stack overflowed it: the process died of "overflowed its stack" (exit
/// 134) before printing even the message, 10 runs of 10.
#[test]
fn a_panic_with_a_backtrace_on_the_smallest_stack_is_reported_and_caught() {
    if common::child_role().is_some() {
        let rt = gosched::Builder::new()
            .procs(1)
            .stack_size(16 << 10)
            .build()
            .unwrap();
        let r = rt.block_on(|| gosched::spawn(|| panic!("small-stack panic")).join());
        println!("caught={}", u64::from(r.is_err()));
        return;
    }
    let out = common::run_child(
        "a_panic_with_a_backtrace_on_the_smallest_stack_is_reported_and_caught",
        "small",
        &[("RUST_BACKTRACE", "1")],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout_u64("caught="), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("panicked at tests/panic.rs")
            && out.stderr.contains("small-stack panic")
            && out.stderr.contains("stack backtrace:"),
        "{}",
        out.describe()
    );
}
