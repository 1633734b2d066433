//! Cooperative preemption, the only kind in a build without the
//! `preempt-signal` feature: `async_preempt(true)` is refused there with an
//! error naming the feature; goroutines that reach cooperative points share
//! a P by the quantum; and a runtime without asynchronous preemption never
//! installs a SIGURG handler (in either build).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{child_role, run_child, watchdog};
use gosched::Builder;

/// Without the feature, asking for asynchronous preemption is an
/// `InvalidInput` error that says which feature is missing.
#[cfg(not(feature = "preempt-signal"))]
#[test]
fn async_preempt_true_is_an_error_naming_the_feature() {
    let err = Builder::new().async_preempt(true).build().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let msg = err.to_string();
    assert!(
        msg.contains("async_preempt(true)") && msg.contains("preempt-signal"),
        "{msg}"
    );
    // The default is off, and says so.
    let rt = Builder::new().build().unwrap();
    assert!(!rt.stats().async_preempt);
}

/// Three loops on one P, each calling `preempt_point` between rounds of
/// arithmetic (and never yielding otherwise), plus a goroutine sleeping
/// 1 ms in a loop: sysmon's quantum requests alone make them take turns, so
/// every loop gets a fair share of the rounds and the sleeper is served.
/// (A loop that ignored the request would keep the P to the end: the
/// others would count 0.)
#[test]
fn loops_at_cooperative_points_share_one_p() {
    let _w = watchdog();
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_millis(2))
        .async_preempt(false)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
    // If the loops never take turns, the sleeper never returns to end
    // them: stop them from a plain thread after 5 s, so the test fails on
    // its assertions instead of hanging.
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let breaker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if ended.recv_timeout(Duration::from_secs(5)).is_err() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let (wakeups, st) = rt.block_on(|| {
        let loops: Vec<_> = (0..3)
            .map(|i| {
                let (stop, counts) = (stop.clone(), counts.clone());
                gosched::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                        }
                        counts[i].fetch_add(1, Ordering::Relaxed);
                        gosched::preempt_point();
                    }
                })
            })
            .collect();
        let t = Instant::now();
        let mut wakeups = 0u32;
        while t.elapsed() < Duration::from_millis(600) {
            gosched::sleep(Duration::from_millis(1));
            wakeups += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for h in loops {
            h.join().unwrap();
        }
        (wakeups, gosched::stats().unwrap())
    });
    let _ = done.send(());
    breaker.join().unwrap();
    let xs: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let total: u64 = xs.iter().sum();
    eprintln!(
        "rounds {xs:?}, sleeper woke {wakeups} times, preempt_coop={}",
        st.preempt_coop
    );
    assert!(st.preempt_coop > 0, "no cooperative preemption: {st:?}");
    assert_eq!(st.preempt_async, 0);
    // Fair share is a third each; a loaded machine skews turns, so ask
    // only for a sixth (a loop that kept the P would leave the others 0).
    for (i, &x) in xs.iter().enumerate() {
        assert!(x * 6 >= total, "loop {i} got {x} of {total} rounds: {xs:?}");
    }
    // 600 ms of 1 ms sleeps behind 2 ms quanta: far more than 10 wake-ups
    // unless the loops starve the sleeper.
    assert!(wakeups >= 10, "the sleeper woke only {wakeups} times");
}

/// The SIGURG action now, as its `sa_sigaction` word.
fn sigurg_handler() -> usize {
    // SAFETY: sigaction with a null new action only writes `cur`.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGURG, std::ptr::null(), &mut cur);
        cur.sa_sigaction
    }
}

/// Child of the test below: a runtime without asynchronous preemption runs
/// goroutines past many quanta (so sysmon makes preemption requests) and
/// SIGURG keeps its default action; with the feature, a runtime with
/// asynchronous preemption then does install a handler (the control: the
/// check sees an installed handler).
fn sigurg_child() {
    assert_eq!(sigurg_handler(), libc::SIG_DFL, "SIGURG handled at start");
    let rt = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_millis(1))
        .async_preempt(false)
        .build()
        .unwrap();
    let st = rt.block_on(|| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                gosched::spawn(|| {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_millis(100) {
                        gosched::preempt_point();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        gosched::stats().unwrap()
    });
    assert!(st.preempt_coop > 0, "sysmon asked nothing: {st:?}");
    println!("OFF-HANDLER={:#x}", sigurg_handler());
    drop(rt);
    if cfg!(feature = "preempt-signal") {
        let rt = Builder::new().async_preempt(true).build().unwrap();
        rt.block_on(|| gosched::sleep(Duration::from_millis(1)));
        println!("ON-HANDLER={:#x}", sigurg_handler());
    }
}

/// A runtime built with `async_preempt(false)` (the only kind without the
/// feature) leaves SIGURG alone: no handler is installed, so an
/// application's SIGURG keeps its default action. In a child process: any
/// other runtime of this test binary could have installed one.
#[test]
fn runtime_without_async_preemption_installs_no_sigurg_handler() {
    if child_role().as_deref() == Some("sigurg") {
        return sigurg_child();
    }
    let out = run_child(
        "runtime_without_async_preemption_installs_no_sigurg_handler",
        "sigurg",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains(&format!("OFF-HANDLER={:#x}", libc::SIG_DFL)),
        "{}",
        out.describe()
    );
    if cfg!(feature = "preempt-signal") {
        assert!(out.stdout.contains("ON-HANDLER="), "{}", out.describe());
        assert!(
            !out.stdout
                .contains(&format!("ON-HANDLER={:#x}", libc::SIG_DFL)),
            "the control runtime installed no handler: {}",
            out.describe()
        );
    }
}
