//! Wake-up preemption: a goroutine woken while every P runs a CPU hog gets
//! a P at once, and the hogs keep their share.
//!
//! Every test here runs loops that make no runtime call: they need
//! asynchronous preemption.
#![cfg(feature = "preempt-signal")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::watchdog;
use gosched::Builder;

/// These tests measure latency beside CPU hogs: one at a time on the
/// 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns a no-call loop on `rt` that adds 1 to `work` every 4,096 rounds
/// (a measure of the CPU it got) until `stop`.
fn counting_hog(
    rt: &gosched::Runtime,
    stop: &Arc<AtomicBool>,
    work: &Arc<AtomicU64>,
) -> gosched::JoinHandle<()> {
    let (stop, work) = (stop.clone(), work.clone());
    rt.spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n = std::hint::black_box(n + 1);
            if n.is_multiple_of(4096) {
                work.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Lateness of `n` sleeps of `d` by a goroutine beside `hogs` no-call loops
/// on `procs` Ps; returns (sorted lateness, hog iterations, stats).
fn ticker_beside_hogs(
    procs: usize,
    hogs: usize,
    wakeup: bool,
    n: usize,
    d: Duration,
) -> (Vec<Duration>, u64, gosched::Stats) {
    let rt = Builder::new()
        .procs(procs)
        .wakeup_preempt(wakeup)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..hogs).map(|_| counting_hog(&rt, &stop, &work)).collect();
    std::thread::sleep(Duration::from_millis(30));
    let late = rt.block_on(move || {
        let mut late = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            gosched::sleep(d);
            late.push(t.elapsed().saturating_sub(d));
        }
        late
    });
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let mut late = late;
    late.sort();
    (late, work.load(Ordering::Relaxed), rt.stats())
}

fn p99(v: &[Duration]) -> Duration {
    v[(v.len() - 1) * 99 / 100]
}

/// A hog on every P and a 1 ms ticker at the default 10 ms quantum: with
/// wake-up preemption the ticker typically runs within ~0.1 ms; without
/// it, it waits most of a
/// quantum (the old behaviour, kept as the control). The bounds are loose:
/// a wake-up that lands while a hog is being time-sliced off its P waits
/// for thread hand-offs, which take milliseconds on a loaded 2-vCPU
/// machine (p99 0.2-7 ms measured there).
#[test]
fn woken_ticker_runs_at_once_beside_a_hog_on_every_p() {
    let _s = serial();
    let _w = watchdog();
    let (on, _, s) = ticker_beside_hogs(2, 2, true, 200, Duration::from_millis(1));
    eprintln!(
        "wake-up preemption on: p50 {:?} p99 {:?} ({} requests)",
        on[on.len() / 2],
        p99(&on),
        s.preempt_wakeup
    );
    assert!(s.preempt_wakeup > 0, "{s:?}");
    // Typically p50 ~0.1 ms; a mode where most wake-ups wait ~3 ms has been
    // seen on a loaded machine (under investigation), hence 4 ms here.
    assert!(
        on[on.len() / 2] < Duration::from_millis(4),
        "p50 {:?}",
        on[on.len() / 2]
    );
    assert!(p99(&on) < Duration::from_millis(20), "p99 {:?}", p99(&on));
    let (off, _, s) = ticker_beside_hogs(2, 2, false, 60, Duration::from_millis(1));
    eprintln!("off: p50 {:?} p99 {:?}", off[off.len() / 2], p99(&off));
    assert_eq!(s.preempt_wakeup, 0);
    assert!(
        off[off.len() / 2] > Duration::from_millis(3),
        "p50 {:?}",
        off[off.len() / 2]
    );
    assert!(on[on.len() / 2] < off[off.len() / 2]);
}

/// A goroutine woken by a timer queues ahead of a crowd of preempted hogs
/// even without wake-up preemption (it used to wait behind every one of
/// them: N x quantum / P).
#[test]
fn woken_sleeper_goes_ahead_of_a_crowd_of_hogs() {
    let _s = serial();
    let _w = watchdog();
    let (late, _, _) = ticker_beside_hogs(2, 40, false, 10, Duration::from_millis(10));
    eprintln!(
        "40 hogs, wake-up preemption off: p50 {:?} max {:?}",
        late[late.len() / 2],
        late[late.len() - 1]
    );
    // Go's runnext bound: about one quantum (10 ms); behind 40 hogs on 2 Ps
    // it was ~200 ms.
    assert!(
        late[late.len() / 2] < Duration::from_millis(40),
        "p50 {:?}",
        late[late.len() / 2]
    );
    let (late, _, _) = ticker_beside_hogs(2, 40, true, 10, Duration::from_millis(10));
    eprintln!(
        "40 hogs, on: p50 {:?} max {:?}",
        late[late.len() / 2],
        late[late.len() - 1]
    );
    assert!(
        late[late.len() / 2] < Duration::from_millis(5),
        "p50 {:?}",
        late[late.len() / 2]
    );
}

/// A goroutine woken in a tight loop from a plain thread beside a hog on
/// 1 P: the granularity bounds the preemptions, and the hog keeps at least
/// a third of the P.
#[test]
fn hog_keeps_its_share_beside_a_goroutine_woken_in_a_loop() {
    let _s = serial();
    let _w = watchdog();
    let rate = |pinger: bool| {
        let rt = Builder::new().procs(1).build().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicU64::new(0));
        let hog = counting_hog(&rt, &stop, &work);
        let (tx, rx) = gosched::chan::channel::<u32>(0);
        let (back_tx, back_rx) = gosched::chan::channel::<u32>(0);
        let echo = rt.spawn(move || {
            while let Some(v) = rx.recv() {
                if back_tx.send(v).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        let w0 = work.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut rounds = 0u32;
        while t.elapsed() < Duration::from_millis(400) {
            if pinger {
                tx.send(rounds).unwrap();
                assert_eq!(back_rx.recv(), Some(rounds));
                rounds += 1;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let w = work.load(Ordering::Relaxed) - w0;
        drop(tx);
        echo.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        (
            w as f64 / t.elapsed().as_secs_f64(),
            rounds,
            rt.stats().preempt_wakeup,
        )
    };
    let (alone, _, _) = rate(false);
    let (beside, rounds, asked) = rate(true);
    eprintln!("hog rate alone {alone:.0}/s, beside {rounds} pings {beside:.0}/s ({asked} wake-up preemptions)");
    assert!(rounds > 10, "the pinger made progress: {rounds}");
    assert!(
        beside >= alone / 3.0,
        "hog kept {:.2} of its rate",
        beside / alone
    );
}

/// ThreadAffine (the default): the hog preempted to make room for a woken
/// goroutine resumes on its own thread; its loop never sees another.
#[test]
fn hog_preempted_for_a_wakeup_keeps_its_thread() {
    let _s = serial();
    let _w = watchdog();
    let rt = Builder::new().procs(1).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        rt.spawn(move || {
            // No runtime call in this loop: in ThreadAffine mode it must
            // never change threads, however often it is preempted.
            let tid = common::os_tid();
            let mut moved = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // ~40 µs of user code per gettid: a thread that enters the
                // kernel more often than a cross-CPU signal takes to
                // arrive (tens of µs on some VMs) gets every signal at a
                // system call's return, in libc, and is never preempted
                // (see `a_refused_wakeup_request_is_retried_within_the_slice`).
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(40) {
                    for _ in 0..100 {
                        std::hint::black_box(0u64);
                    }
                }
                moved += u64::from(common::os_tid() != tid);
            }
            moved
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let woken = rt.block_on(|| {
        let mut n = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            gosched::sleep(Duration::from_micros(500));
            n += 1;
        }
        n
    });
    stop.store(true, Ordering::Relaxed);
    assert_eq!(hog.join().unwrap(), 0, "the hog ran on another thread");
    assert!(woken > 5, "the sleeper ran {woken} times in 200 ms");
    assert!(rt.stats().preempt_wakeup > 0);
}

/// Wake-up preemption must not freeze the time slices: 4 no-call loops on
/// 2 Ps beside a 1 ms ticker each get a fair share. (A goroutine preempted
/// for a wake-up resumed with a fresh slice, so the two loops that held
/// the Ps were preempted by every tick, never reached their quantum, and
/// the other two never ran: Jain's index 0.5.)
#[test]
fn wakeups_do_not_starve_queued_hogs() {
    let _s = serial();
    let _w = watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let hs: Vec<_> = counts.iter().map(|c| counting_hog(&rt, &stop, c)).collect();
    rt.block_on(|| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(600) {
            gosched::sleep(Duration::from_millis(1));
        }
    });
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let v: Vec<f64> = counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed) as f64)
        .collect();
    let total: f64 = v.iter().sum();
    eprintln!(
        "shares: {:?}",
        v.iter().map(|x| x / total).collect::<Vec<_>>()
    );
    assert!(rt.stats().preempt_wakeup > 0);
    for (i, x) in v.iter().enumerate() {
        assert!(
            *x >= total * 0.08,
            "loop {i} got {:.3} of the work",
            x / total
        );
    }
}

/// A hog that spends much of its time in a system call (a signal that
/// arrives then is delivered on the way back, at a pc in libc, where
/// asynchronous preemption is refused: safe-point rule 4) (safe-point rule 4): a wake-up
/// request that lands there must be retried soon (with a backoff), not
/// left to the end of the hog's 10 ms slice. 1 P, a 1 ms ticker.
#[test]
fn a_refused_wakeup_request_is_retried_within_the_slice() {
    let _w = watchdog();
    let _s = serial();
    let rt = Builder::new().procs(1).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let hog = rt.spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            // SAFETY: getppid has no preconditions.
            std::hint::black_box(unsafe { libc::getppid() });
            // Tens of microseconds in user code between calls: on some VMs
            // a signal to a thread running on another CPU arrives only
            // after ~10-50 µs, so a thread that enters the kernel more often
            // than that has every signal delivered at a system call's
            // return, in libc (measured on an Intel Xeon VM with a 300-step
            // loop here: 1,995 of 2,000 signals; with 40 µs between calls
            // about half), and cannot be preempted asynchronously at all.
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(40) {
                for i in 0..100u32 {
                    std::hint::black_box(i);
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(30));
    let mut late = rt.block_on(|| {
        (0..100)
            .map(|_| {
                let t = Instant::now();
                gosched::sleep(Duration::from_millis(1));
                t.elapsed().saturating_sub(Duration::from_millis(1))
            })
            .collect::<Vec<_>>()
    });
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    late.sort();
    let p50 = late[late.len() / 2];
    let p90 = late[late.len() * 9 / 10];
    eprintln!(
        "libc hog: ticker lateness p50 {p50:?} p90 {p90:?} p99 {:?}",
        p99(&late)
    );
    // Refused requests used to wait for the slice's end: p90 ~9 ms (more
    // than one wake-up in ten had a refused first request). The retries
    // start at 50 µs and double up to 2 ms: p90 0.1-0.3 ms.
    assert!(
        p90 < Duration::from_millis(4),
        "p90 {p90:?}: {:?}",
        rt.stats()
    );
}

/// A busy server's shape: 64 goroutines, each woken from a plain thread
/// (through a channel) to do 20 µs of work, on 2 Ps; the woken queue is
/// never empty, but every P switches goroutines every 20 µs, so nobody
/// needs to be preempted. sysmon used to look again every time the
/// longest-running goroutine would reach the 100 µs granularity (and was
/// woken by the wakers in between): ~4,000-10,000 sleeps a second, each
/// taking a CPU from a worker on a 2-CPU machine. Now its looks back off to
/// 1 ms while the Ps keep switching.
#[test]
fn sysmon_backs_off_while_every_p_keeps_switching() {
    let _w = watchdog();
    let _s = serial();
    let rt = Builder::new().procs(2).build().unwrap();
    const N: usize = 64;
    let stop = Arc::new(AtomicBool::new(false));
    let (txs, handles): (Vec<_>, Vec<_>) = (0..N)
        .map(|_| {
            let (tx, rx) = gosched::chan::channel::<()>(1);
            let h = rt.spawn(move || {
                while rx.recv().is_some() {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                }
            });
            (tx, h)
        })
        .unzip();
    let stop2 = stop.clone();
    let feeder = std::thread::spawn(move || {
        // At nice 19: on 2 CPUs this busy thread took a CPU from a worker
        // for a kernel time slice every few milliseconds, and each such
        // pause is a goroutine past the granularity that sysmon must ask and
        // re-ask (on the AMD VM 2,500-4,300 looks a second at nice 0, which
        // measured the kernel's scheduling of the feeder, not sysmon's
        // back-off; 1,200-1,800 at nice 19, with 40,000 wake-ups a second).
        // SAFETY: setpriority of this thread only (its tid); no memory.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        let mut sent = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            for tx in &txs {
                tx.send(()).unwrap();
                sent += 1;
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(100));
    // Up to three 500 ms windows, the quietest counts: a moment in which
    // the kernel kept a worker off its CPU (so its P stopped switching)
    // raised one window to 2,718 once in a full CI run (1,660-2,180
    // alone), while the behaviour this guards against gives 4,000+ in
    // every window.
    let mut per_sec = f64::INFINITY;
    for _ in 0..3 {
        let before = common::voluntary_switches("gosched-sysmon");
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let looks = common::switches_since(&before, &common::voluntary_switches("gosched-sysmon"));
        per_sec = per_sec.min(looks as f64 / t.elapsed().as_secs_f64());
        if per_sec < 2_500.0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = feeder.join().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    let stats = rt.stats();
    eprintln!("sysmon slept {per_sec:.0} times/s; {sent} wake-ups; {stats:?}");
    assert!(sent > 1_000, "the goroutines barely ran: {sent} wake-ups");
    // 1 ms looks: ~1,000/s plus its other duties; generous for a loaded
    // machine, and well below the ~4,000+ of a look per granularity.
    assert!(
        per_sec < 2_500.0,
        "sysmon slept {per_sec:.0} times a second while every P kept switching"
    );
}

/// A burst of goroutines woken together while the only P runs a hog is
/// served in one turn: the hog, kept aside for the first of them, resumes
/// once they have all run or had their turn (`WAKEUP_TURN`, 400 µs), not
/// after each one. (It used to resume after the first; each of the others
/// then waited for a new wake-up request, one per 100 µs of hog time: the
/// last of 16 sleepers woken by one timer tick ran ~2 ms late, past the
/// whole of a busy server's short requests queued behind a long one.)
#[test]
fn a_burst_of_wakeups_is_served_in_one_turn_beside_a_hog() {
    let _s = serial();
    let _w = watchdog();
    const SLEEPERS: usize = 16;
    const ROUNDS: usize = 40;
    let bound = Duration::from_millis(2);
    // The quieter of up to two runs counts: on the AMD VM one CI run in a
    // few gave a median of 3.2 ms (others 0.19-0.50 ms, p90 up to 3.5 ms),
    // while the behaviour this guards against is late in every run.
    for attempt in 0..2 {
        let rt = Builder::new().procs(1).build().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicU64::new(0));
        let hog = counting_hog(&rt, &stop, &work);
        std::thread::sleep(Duration::from_millis(20));
        let spans = rt.block_on(|| {
            let base = Instant::now() + Duration::from_millis(5);
            let (tx, rx) = gosched::chan::channel::<(usize, Duration)>(SLEEPERS * ROUNDS);
            let hs: Vec<_> = (0..SLEEPERS)
                .map(|_| {
                    let tx = tx.clone();
                    gosched::spawn(move || {
                        for r in 0..ROUNDS {
                            let at = base + Duration::from_millis(3 * r as u64);
                            gosched::sleep(at.saturating_duration_since(Instant::now()));
                            tx.send((r, at.elapsed())).unwrap();
                        }
                    })
                })
                .collect();
            drop(tx);
            for h in hs {
                h.join().unwrap();
            }
            // Per round, the lateness of the last sleeper to run.
            let mut last = [Duration::ZERO; ROUNDS];
            while let Some((r, late)) = rx.recv() {
                last[r] = last[r].max(late);
            }
            let mut v = last.to_vec();
            v.sort();
            v
        });
        stop.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        if attempt == 0 && spans[spans.len() / 2] >= bound {
            eprintln!("first run: median {:?}; once more", spans[spans.len() / 2]);
            continue;
        }
        check_burst_spans(&rt, &spans, &format!("last of {SLEEPERS} sleepers"), bound);
        break;
    }
}

/// Prints the per-round spans of a burst test (sorted) and checks that
/// wake-up preemption was used and the median round stayed under `bound`.
fn check_burst_spans(rt: &gosched::Runtime, spans: &[Duration], what: &str, bound: Duration) {
    let n = spans.len();
    let s = rt.stats();
    eprintln!(
        "{what} per round: p50 {:?} p90 {:?} max {:?} ({} wake-up preemptions)",
        spans[n / 2],
        spans[n * 9 / 10],
        spans[n - 1],
        s.preempt_wakeup
    );
    assert!(s.preempt_wakeup > 0, "{s:?}");
    assert!(
        spans[n / 2] < bound,
        "{what} started {:?} late at p50",
        spans[n / 2]
    );
}

/// A burst of I/O wake-ups too long for one turn, beside a long request
/// with no runtime calls on the only P, is served in a few turns: the
/// request, kept aside for the burst, resumes after a turn of it
/// (`WAKEUP_TURN`, 400 µs), and the readers still waiting get the next
/// wake-up preemption once it has run the granularity (200 µs) again
/// (measured with 100 µs for both: the last of 8 readers of 80 µs each
/// started 1.6-1.9 ms after the packets), not at the end of its 10 ms
/// slice.
#[test]
fn the_rest_of_a_long_burst_is_served_in_the_next_turns() {
    let _s = serial();
    let _w = watchdog();
    const READERS: usize = 8;
    const ROUNDS: usize = 30;
    const SPIN: Duration = Duration::from_micros(80);
    let rt = Builder::new().procs(1).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Long requests: 4 ms of work with no runtime call, then a yield (a
    // fresh start each: the hog is kept aside for wake-ups, not queued).
    let hog = {
        let stop = stop.clone();
        rt.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                spin_cpu(Duration::from_millis(4));
                gosched::yield_now();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (late_tx, late_rx) = std::sync::mpsc::channel::<(usize, Duration)>();
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; ROUNDS]));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (addr_tx, late_tx, sent) = (addr_tx.clone(), late_tx.clone(), sent.clone());
            rt.spawn(move || {
                let s = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                addr_tx.send(s.local_addr().unwrap()).unwrap();
                let mut buf = [0u8; 8];
                for _ in 0..ROUNDS {
                    let (n, _) = s.recv_from(&mut buf).unwrap();
                    assert_eq!(n, 8);
                    let r = u64::from_le_bytes(buf) as usize;
                    // When it started running, then 80 µs of work with no
                    // runtime call: 640 µs for the burst, several turns.
                    let at = sent.lock().unwrap()[r].unwrap();
                    let late = at.elapsed();
                    let t = Instant::now();
                    while t.elapsed() < SPIN {
                        std::hint::spin_loop();
                    }
                    late_tx.send((r, late)).unwrap();
                }
            })
        })
        .collect();
    drop(late_tx);
    let addrs: Vec<_> = (0..READERS).map(|_| addr_rx.recv().unwrap()).collect();
    let out = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for r in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(15));
        sent.lock().unwrap()[r] = Some(Instant::now());
        for a in &addrs {
            out.send_to(&(r as u64).to_le_bytes(), a).unwrap();
        }
    }
    // Per round, when the last reader started.
    let mut last = [Duration::ZERO; ROUNDS];
    while let Ok((r, late)) = late_rx.recv() {
        last[r] = last[r].max(late);
    }
    for h in readers {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    let mut spans = last.to_vec();
    spans.sort();
    // Served in a few turns: ~1-2 ms. Left for the slice end: ~10 ms.
    check_burst_spans(
        &rt,
        &spans,
        &format!("last of {READERS} readers (80 µs each)"),
        Duration::from_millis(5),
    );
}

/// Spins until this thread has used `d` more of CPU time, calling nothing
/// of the runtime (ThreadAffine: an asynchronously preempted goroutine
/// resumes on its thread, so the thread's clock is the goroutine's). The
/// clock is read every 4,096 rounds (a system call, where preemption is
/// refused).
fn spin_cpu(d: Duration) {
    spin_cpu_chunks(d, |_| {});
}

/// `spin_cpu`, calling `after` with the CPU time of each 4,096-round chunk
/// (between two reads of the clock) as it ends.
fn spin_cpu_chunks(d: Duration, mut after: impl FnMut(Duration)) {
    let mut last = thread_cpu();
    let end = last + d;
    let mut x = 0u64;
    while last < end {
        for _ in 0..4096 {
            x = std::hint::black_box(x + 1);
        }
        let now = thread_cpu();
        after(now.saturating_sub(last));
        last = now;
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec and clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One P and a quantum far longer than the tests below: only wake-up
/// preemption moves their requests (time-slicing sends a goroutine to the
/// global queue, a round robin of its own).
fn one_p_no_time_slicing() -> gosched::Runtime {
    Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// A long request: 20 ms of CPU with no runtime call; returns when it
/// finished, measured from `t0`.
fn long_request(t0: Instant) -> Duration {
    spin_cpu(Duration::from_millis(20));
    t0.elapsed()
}

/// The request that began first finished first.
fn assert_in_order(first: Duration, second: Duration) {
    eprintln!("first finished at {first:?}, second at {second:?}");
    assert!(
        first < second,
        "the request that began first finished at {first:?}, after the second ({second:?})"
    );
}

/// Two long requests on one P, each preempted in turn for a stream of
/// wake-ups, finish in the order they began, as under any fair policy (the
/// first has less left to do). Each one preempted for a wake-up used to
/// push the one kept before it out of `runnext` to the run queue's tail,
/// behind every later arrival: the oldest long request waited for all the
/// newer ones (the bimodal benchmark's long-request p99 at 50 % load was
/// 120-140 ms for a 5 ms request, std's 70 ms).
#[test]
fn long_requests_preempted_for_wakeups_finish_in_order() {
    let _s = serial();
    let _w = watchdog();
    let rt = one_p_no_time_slicing();
    let (first, second) = rt.block_on(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            gosched::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    gosched::sleep(Duration::from_micros(300));
                }
            })
        };
        let done = a_long_request_then_a_woken_one();
        stop.store(true, Ordering::Relaxed);
        ticker.join().unwrap();
        done
    });
    assert_in_order(first, second);
}

/// Starts a long request, and another one woken 3 ms later; returns when
/// each finished.
fn a_long_request_then_a_woken_one() -> (Duration, Duration) {
    let t0 = Instant::now();
    let a = gosched::spawn(move || long_request(t0));
    let b = gosched::spawn(move || {
        gosched::sleep(Duration::from_millis(3));
        long_request(t0)
    });
    (a.join().unwrap(), b.join().unwrap())
}

/// The same with the second request spawned by a woken goroutine (an
/// accept loop starting a handler) while the first one is kept aside: the
/// new goroutine queues behind the kept one instead of taking its place.
#[test]
fn a_goroutine_spawned_during_a_wakeup_turn_queues_behind_the_kept_one() {
    let _s = serial();
    let _w = watchdog();
    let rt = one_p_no_time_slicing();
    let (first, second) = rt.block_on(|| {
        let t0 = Instant::now();
        let a = gosched::spawn(move || long_request(t0));
        // Woken every 300 µs beside the first request; the tenth time it
        // starts the second one.
        let spawner = gosched::spawn(move || {
            for _ in 0..10 {
                gosched::sleep(Duration::from_micros(300));
            }
            let b = gosched::spawn(move || long_request(t0));
            for _ in 0..200 {
                gosched::sleep(Duration::from_micros(300));
            }
            b.join().unwrap()
        });
        (a.join().unwrap(), spawner.join().unwrap())
    });
    assert_in_order(first, second);
}

/// One signal per wake-up: a hog on every P and a 1 ms ticker; each
/// wake-up preempts one hog, not both (with the signal sent at once,
/// sysmon's next look used to come while the asked P was being handed to
/// another thread, and it asked the other P too: ~1.3 preemptions per
/// wake-up).
#[test]
fn one_wakeup_preempts_one_hog() {
    let _s = serial();
    let _w = watchdog();
    let n = 500;
    let (late, _, s) = ticker_beside_hogs(2, 2, true, n, Duration::from_millis(1));
    eprintln!(
        "{} wake-up requests, {} async preemptions for {n} wake-ups; p50 {:?}",
        s.preempt_wakeup,
        s.preempt_async,
        late[n / 2]
    );
    // A few quantum-end preemptions come on top (each hog runs ~0.6 s,
    // so at most ~120 at 10 ms; only when someone waits, so far fewer).
    let bound = n as u64 + n as u64 / 10 + 20;
    assert!(
        s.preempt_async <= bound,
        "{} asynchronous preemptions for {n} wake-ups (bound {bound})",
        s.preempt_async
    );
}

/// The same at a 100 µs quantum, where a wake-up used to cost two signals:
/// the hog preempted for the ticker, its ran quantum up, waited in the
/// global queue while the ticker ran, so sysmon's next look saw a goroutine
/// waiting and preempted the other P's hog as well; or the hog, resumed,
/// had its next slice timed although nobody waited, and the timer's signal
/// found nothing to do (`not_requested`). Counts every signal the handler
/// saw: preemptions and refusals.
#[test]
fn one_wakeup_costs_one_signal_at_a_short_quantum() {
    let _s = serial();
    let _w = watchdog();
    let n = 500;
    // The two-signal behaviour gave 1,138-1,368 signals in every run (the
    // Intel VM); one signal per wake-up gives 521-562 there and 627-663 on
    // the AMD VM, where a run now and then reaches 886-1,094 (a hog's
    // thread kept off its CPU by the kernel ignores its request, which is
    // repeated): the quietest of up to three runs counts.
    let bound = 2 * n as u64;
    let mut best = u64::MAX;
    for _ in 0..3 {
        best = best.min(signals_for_wakeups(n));
        if best <= bound {
            break;
        }
    }
    assert!(
        best <= bound,
        "{best} signals for {n} wake-ups (bound {bound})"
    );
}

/// Signals (preemptions and refusals) sent while a goroutine sleeps 1 ms
/// `n` times beside a hog on each of 2 Ps at a 100 µs quantum.
fn signals_for_wakeups(n: usize) -> u64 {
    let rt = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(100))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..2).map(|_| counting_hog(&rt, &stop, &work)).collect();
    std::thread::sleep(Duration::from_millis(30));
    let before = rt.stats();
    rt.block_on(move || {
        for _ in 0..n {
            gosched::sleep(Duration::from_millis(1));
        }
    });
    let s = rt.stats();
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let signals =
        (s.preempt_async + s.preempt_refused) - (before.preempt_async + before.preempt_refused);
    eprintln!(
        "{signals} signals for {n} wake-ups: {} preemptions, refusals {:?}",
        s.preempt_async - before.preempt_async,
        s.preempt_refused_by_reason
    );
    signals
}

/// ThreadAffine: a goroutine that did not yield at a runtime call when
/// asked to make room for a woken goroutine is signalled at once the next
/// time, instead of after another `WAKEUP_RETRY` (20 µs) of cooperative
/// grace. Paired, so that the machine's speed cancels out: beside each of
/// many fresh hogs on one P, a goroutine sleeps twice; its first wake-up
/// pays the grace (the hog is asked cooperatively first), its second no
/// longer does. Before, both took as long. Time slicing is off (1 s
/// quantum), so that no quantum-end preemption serves a wake-up early.
#[test]
fn a_hog_that_ignored_a_request_is_signalled_at_once_next_time() {
    let _s = serial();
    let _w = watchdog();
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_secs(1))
        .build()
        .unwrap();
    let d = Duration::from_micros(300);
    let pairs = rt.block_on(move || {
        (0..300)
            .map(|_| {
                let stop = Arc::new(AtomicBool::new(false));
                let hog = {
                    let stop = stop.clone();
                    gosched::spawn(move || {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            n = std::hint::black_box(n + 1);
                        }
                    })
                };
                let mut late = [Duration::ZERO; 2];
                for l in &mut late {
                    let t = Instant::now();
                    gosched::sleep(d);
                    *l = t.elapsed().saturating_sub(d);
                }
                stop.store(true, Ordering::Relaxed);
                hog.join().unwrap();
                late
            })
            .collect::<Vec<_>>()
    });
    let median = |i: usize| {
        let mut v: Vec<_> = pairs.iter().map(|p| p[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    let (first, second) = (median(0), median(1));
    let faster = pairs.iter().filter(|p| p[1] < p[0]).count();
    eprintln!(
        "median lateness: first wake-up beside a hog {first:?}, second {second:?}; second faster in {faster} of {}",
        pairs.len()
    );
    // The grace is 20 µs; a quarter of it must show, in 60 % of the pairs
    // (with no difference, 50 % +- 2.9 %: 60 % is 3.5 standard
    // deviations). On the Intel VM the medians differed by 20-30 µs and
    // 2/3 of the pairs were faster; on the AMD VM, where a wake-up beside a
    // hog takes 100-160 µs, by 9-46 µs and in 62-91 % of the pairs.
    assert!(
        second + Duration::from_micros(5) < first,
        "first {first:?}, second {second:?}"
    );
    assert!(faster * 5 >= pairs.len() * 3, "{faster} of {}", pairs.len());
}

/// A goroutine started from outside the runtime (`block_on`, `spawn` from
/// a plain thread) beside a hog on every P starts at once, like a woken
/// one, even with time slicing off (a one-hour quantum): it used to wait
/// in the global queue for a scheduling point, which the hog never
/// reaches.
#[test]
fn block_on_beside_a_hog_on_every_p_starts_at_once() {
    let _s = serial();
    let _w = watchdog();
    let rt = Arc::new(
        Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_secs(3600))
            .build()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(AtomicU64::new(0));
    let hog = counting_hog(&rt, &stop, &work);
    std::thread::sleep(Duration::from_millis(20));
    let (tx, rx) = std::sync::mpsc::channel();
    let caller = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                let t = Instant::now();
                let started = rt.block_on(move || t.elapsed());
                tx.send(started).unwrap();
            }
        })
    };
    let mut waits = Vec::new();
    let outcome = loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(w) => waits.push(w),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // Free the P either way, so that a failing run still ends.
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    caller.join().unwrap();
    assert!(
        outcome.is_ok(),
        "block_on did not start within 5 s beside the hog"
    );
    waits.sort();
    eprintln!("block_on start: p50 {:?} max {:?}", waits[10], waits[19]);
    assert_eq!(waits.len(), 20);
    assert!(waits[10] < Duration::from_millis(50), "p50 {:?}", waits[10]);
}

/// A goroutine kept aside for a wake-up resumes once the woken goroutine
/// has had its turn, even when that one makes no runtime call and no
/// further wake-up comes: a long request woken while another runs gets a
/// turn, then the older one resumes and finishes first. The turn rule was
/// applied only at the P's next scheduling point, which a call-free
/// goroutine never reaches (with time slicing off): the newer request ran
/// to its end first. (It made `long_requests_preempted_for_wakeups_finish_in_order`
/// fail about one run in a hundred, when its ticker was itself preempted
/// and stopped waking.)
#[test]
fn a_kept_goroutine_resumes_after_the_woken_ones_turn() {
    let _s = serial();
    let _w = watchdog();
    let rt = one_p_no_time_slicing();
    let (first, second) = rt.block_on(a_long_request_then_a_woken_one);
    assert_in_order(first, second);
    assert!(rt.stats().preempt_wakeup >= 2, "{:?}", rt.stats());
}

/// A goroutine is preempted only when asked: beside a hog on one P with
/// time slicing off, every asynchronous preemption answers a wake-up
/// request. The hog reads its CPU clock often (a system call made from the
/// vDSO, on whose return most signals are delivered: refused until the
/// vDSO's clocks became leaf routines; the release build's hog was then
/// never preempted and this test hung), so sysmon repeats requests; a
/// repeat that arrived
/// after the handler had accepted the previous signal but before the
/// goroutine reached the scheduler was accepted too, nesting a second
/// trampoline call: the goroutine was preempted again as soon as it
/// resumed, outside any request, and sent to the global queue's tail.
#[test]
fn no_preemption_without_a_request() {
    let _s = serial();
    let _w = watchdog();
    let rt = one_p_no_time_slicing();
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        rt.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                spin_cpu(Duration::from_micros(1));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    // Warm-up, not counted: the first goroutine run on a new thread (the
    // hog's keeps its own) can outlast its wake-up turn (110-370 µs in a
    // debug build) and then waits behind the hog for the rest of the
    // quantum, whose end is a preemption no wake-up asked for (2 of 60
    // runs on an AMD EPYC VM; a known limitation, see `sched::wakeup`).
    rt.block_on(|| {
        for _ in 0..20 {
            gosched::sleep(Duration::from_micros(300));
        }
    });
    let before = rt.stats();
    // ~1.5 s; without the fix about one run in three saw a phantom.
    rt.block_on(|| {
        for _ in 0..4000 {
            gosched::sleep(Duration::from_micros(300));
        }
    });
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    let s = rt.stats();
    let (requests, async_, coop) = (
        s.preempt_wakeup - before.preempt_wakeup,
        s.preempt_async - before.preempt_async,
        s.preempt_coop - before.preempt_coop,
    );
    eprintln!(
        "{requests} requests, {async_} asynchronous and {coop} cooperative preemptions, refused {:?}",
        s.preempt_refused - before.preempt_refused
    );
    assert!(requests > 1000, "{s:?}");
    assert!(
        async_ <= requests,
        "{async_} asynchronous preemptions for {requests} requests"
    );
}

/// More CPU-bound goroutines than Ps at a 100 µs quantum, in the default
/// ThreadAffine mode, beside a 1 ms ticker: every goroutine that has used
/// a whole slice has its next one ended by its own thread's timer, not by
/// sysmon. sysmon used to wake for every slice end (~30,000 times a second
/// here, each taking a CPU from a goroutine), and in ThreadAffine mode,
/// where the threads sleep and wake at every hand-off, the kernel often
/// left it waiting for a CPU until the next scheduler tick (4 ms): no slice
/// ended and no timer fired on that P meanwhile (ticker p99 3.7-3.9 ms,
/// against 0.12-0.14 ms with slice timers).
#[test]
fn hogs_on_every_p_are_time_sliced_by_their_own_timers() {
    let _w = watchdog();
    let _s = serial();
    // A P per CPU (slices are timed only while every CPU runs a P), and one
    // loop more than Ps (2 and 3 on the 2-CPU machine measured below).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = Builder::new()
        .procs(cpus)
        .preempt_quantum(Duration::from_micros(100))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..=cpus)
        .map(|_| counting_hog(&rt, &stop, &work))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    // Up to three rounds; the first that meets every bound counts. Another
    // process taking a CPU from the hogs' threads breaks the premise (a
    // thread off its CPU cannot answer its timer, and sysmon retries every
    // quarter quantum): 2.1 sysmon sleeps per preemption and p99 0.4 ms in
    // one round beside a concurrent build, while the behaviour this guards
    // against fails every round.
    let mut failure = String::new();
    for _ in 0..3 {
        let before = common::voluntary_switches("gosched-sysmon");
        let (async0, timer0) = (rt.stats().preempt_async, rt.stats().preempt_timer);
        let mut late = rt.block_on(|| {
            let d = Duration::from_millis(1);
            let mut late = Vec::with_capacity(400);
            for _ in 0..400 {
                let t = Instant::now();
                gosched::sleep(d);
                late.push(t.elapsed().saturating_sub(d));
            }
            late
        });
        let looks = common::switches_since(&before, &common::voluntary_switches("gosched-sysmon"));
        let stats = rt.stats();
        let preemptions = stats.preempt_async - async0;
        let by_timer = stats.preempt_timer - timer0;
        late.sort();
        let p99 = p99(&late);
        eprintln!(
            "ticker p50 {:?} p99 {p99:?}; {preemptions} asynchronous preemptions ({by_timer} asked by slice timers), sysmon slept {looks} times",
            late[late.len() / 2],
        );
        failure = if preemptions <= 1_000 {
            format!("the hogs were barely preempted: {preemptions}")
        } else if by_timer * 2 <= preemptions {
            format!("{by_timer} of {preemptions} preemptions were asked by slice timers")
        } else if looks >= preemptions {
            // 1.8-3.4 sysmon sleeps per preemption before; 0.17-0.51 now
            // (the ticker's timer and wake-up requests still need it).
            format!("sysmon woke {looks} times for {preemptions} preemptions")
        } else if p99 >= Duration::from_millis(3) {
            // 2 quanta + 100 µs is the target; generous for a busy
            // machine, and below the scheduler tick (4 ms) a delayed
            // sysmon waited for (3.7-5.7 ms without slice timers).
            format!("ticker p99 {p99:?}")
        } else {
            String::new()
        };
        if failure.is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    assert!(failure.is_empty(), "{failure}");
}

/// Three long requests on one P, each started by a wake-up, beside a
/// 500 µs ticker (ThreadAffine, time slicing off): the first two are
/// preempted for the ticker's wake-ups and kept, each with its thread
/// parked, which is the cap on threads parked for wake-ups at one P
/// (`WAKEUP_PARKED_PER_P`). The cap then left the third request holding the
/// P until it finished, and the ticker waited all that time (40 ms here,
/// in every run; the bimodal benchmark's short requests waited ~5 ms behind
/// a third long one even at 20 % load). A goroutine that has run 1 ms
/// (600 µs since 2026-12-07) is now preempted whatever the cap: the
/// ticker is never more than a few milliseconds late. The better of two
/// runs: about one run in 90 a tick came 10-45 ms late for another
/// reason: the ticker's timer fell due while the only P was being handed
/// to a kept request's thread, and sysmon, finding no P running a
/// goroutine to ask, slept its 10 ms maximum (traced; fixed: it looks
/// again within the granularity, 0 runs in 350 since). Also about one run
/// in 40 the ticker, slow to finish its turn after a slow thread hand-off,
/// yielded for the kept request's turn and was queued behind it, where
/// nothing looked for it (31-42 ms late): fixed, it now waits among the
/// woken goroutines (`G0::requeue_preempted_for_wakeup`).
#[test]
fn a_third_long_request_is_preempted_beside_two_kept_ones() {
    ticker_beside_three_long_requests_within("the worst tick", 1.0, Duration::from_millis(10));
}

/// Three long requests and a ticker, as above: while two of them are kept
/// aside for the ticker's wake-ups, each with its thread parked (the cap,
/// `WAKEUP_PARKED_PER_P`), the one that runs was left a cooperative
/// request it never answers until it had run 600 µs in its slice, at
/// every tick, although it had been preempted by signal before and still
/// held its thread (parking it parks no new one). Now it is preempted at
/// once.
///
/// Measured as the CPU the requests got while a tick was due, over the
/// ticks when all three were in service (`request_cpu_while_a_tick_is_due`,
/// a 250 µs ticker): the median is 0 (no chunk of a request's spin ended
/// after the tick fell due) in 8 runs of 8 with the rule, and 280-313 µs
/// in 8 of 8 without it (the `affine` clause of `wakeup_signal_allowed`
/// removed), on a 2-vCPU VM with a load average of 10. It used to compare
/// the ticks' wall-clock lateness (90th percentile under 550 µs), which
/// thread hand-offs and the host's scheduling made 340 µs-1.1 ms with the
/// rule and 160-900 µs without it: it failed a CI run, and was ignored.
#[test]
fn a_long_request_holding_its_thread_is_preempted_at_once_beside_two_kept_ones() {
    let _s = serial();
    let _w = watchdog();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (ticks, stats) = request_cpu_while_a_tick_is_due();
        let mut kept: Vec<Duration> = ticks.iter().filter(|t| t.1 == 3).map(|t| t.0).collect();
        kept.sort();
        eprintln!(
            "{} ticks, {} with three requests in service: {kept:?}; {stats:?}",
            ticks.len(),
            kept.len()
        );
        if kept.len() < 20 {
            // The machine held the requests up so that they were rarely
            // in service together: not this rule's test.
            continue;
        }
        let median = kept[kept.len() / 2];
        if median < Duration::from_micros(150) {
            return;
        }
        runs.push(median);
    }
    assert!(
        !runs.is_empty(),
        "in none of 3 runs were three requests in service at 20 ticks"
    );
    panic!("the requests ran {runs:?} (median per tick) while a tick was due beside two kept ones");
}

/// Runs `ticker_beside_three_long_requests` up to twice and passes when, in
/// either run, the ticks' lateness at quantile `q` (1.0: the worst) is
/// below `bound`; `what` names the quantile in the failure message.
fn ticker_beside_three_long_requests_within(what: &str, q: f64, bound: Duration) {
    let _s = serial();
    let _w = watchdog();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (mut late, stats) = ticker_beside_three_long_requests();
        late.sort();
        let i = ((late.len() as f64 * q) as usize).min(late.len().saturating_sub(1));
        let at_q = late.get(i).copied().unwrap_or_default();
        eprintln!("{} ticks, {what} {at_q:?} late; {stats:?}", late.len());
        assert!(late.len() >= 20, "{} ticks", late.len());
        if at_q < bound {
            return;
        }
        runs.push(at_q);
    }
    panic!("{what} was {runs:?} late beside three long requests, in each run");
}

/// The lateness of a 500 µs ticker's sleeps while three 40 ms no-call
/// requests, started 1, 3 and 5 ms in, run on one P with time slicing off.
fn ticker_beside_three_long_requests() -> (Vec<Duration>, gosched::Stats) {
    let rt = one_p_no_time_slicing();
    let late = rt.block_on(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let stop = stop.clone();
            gosched::spawn(move || {
                let mut late = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    gosched::sleep(Duration::from_micros(500));
                    late.push(t.elapsed().saturating_sub(Duration::from_micros(500)));
                }
                late
            })
        };
        let long: Vec<_> = (0..3u64)
            .map(|i| {
                gosched::spawn(move || {
                    gosched::sleep(Duration::from_millis(2 * i + 1));
                    spin_cpu(Duration::from_millis(40));
                })
            })
            .collect();
        for h in long {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        ticker.join().unwrap()
    });
    let stats = rt.stats();
    (late, stats)
}

/// The CPU the long requests got while the ticker's tick was due, per
/// tick, of a 500 µs ticker beside the same three long requests as
/// `ticker_beside_three_long_requests`, with how many requests were in
/// service (begun, not finished) when the tick ran. A request adds each
/// chunk of its spin (a few µs of its thread's CPU time) that ends after
/// the published due time to `overdue`; the ticker takes the sum when it
/// runs. Unlike the ticks' lateness, this leaves out the time no request
/// ran: thread hand-offs and the host taking the CPU, which on a shared
/// VM dwarf the policy's effect.
fn request_cpu_while_a_tick_is_due() -> (Vec<(Duration, usize)>, gosched::Stats) {
    const TICK: Duration = Duration::from_micros(250);
    let rt = one_p_no_time_slicing();
    let t0 = Instant::now();
    let ns = move || t0.elapsed().as_nanos() as u64;
    let due = Arc::new(AtomicU64::new(u64::MAX));
    let overdue = Arc::new(AtomicU64::new(0));
    let in_service = Arc::new(AtomicU64::new(0));
    let per_tick = rt.block_on(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (stop, due, overdue, in_service) = (
                stop.clone(),
                due.clone(),
                overdue.clone(),
                in_service.clone(),
            );
            gosched::spawn(move || {
                let mut per_tick = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    overdue.store(0, Ordering::Relaxed);
                    due.store(ns() + TICK.as_nanos() as u64, Ordering::Relaxed);
                    gosched::sleep(TICK);
                    due.store(u64::MAX, Ordering::Relaxed);
                    per_tick.push((
                        Duration::from_nanos(overdue.load(Ordering::Relaxed)),
                        in_service.load(Ordering::Relaxed) as usize,
                    ));
                }
                per_tick
            })
        };
        let long: Vec<_> = (0..3u64)
            .map(|i| {
                let (due, overdue, in_service) = (due.clone(), overdue.clone(), in_service.clone());
                gosched::spawn(move || {
                    gosched::sleep(Duration::from_millis(2 * i + 1));
                    in_service.fetch_add(1, Ordering::Relaxed);
                    spin_cpu_chunks(Duration::from_millis(40), |chunk| {
                        if ns() > due.load(Ordering::Relaxed) {
                            overdue.fetch_add(chunk.as_nanos() as u64, Ordering::Relaxed);
                        }
                    });
                    in_service.fetch_sub(1, Ordering::Relaxed);
                })
            })
            .collect();
        for h in long {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        ticker.join().unwrap()
    });
    (per_tick, rt.stats())
}

/// Two goroutines whose sleeps end together on one idle P (time slicing
/// off): a sleeper, then a long request (30 ms of CPU, no calls). The
/// P's scheduler fires both timers at once; the sleeper went to `runnext`
/// and the request, readied after it, took its place and pushed the
/// sleeper to the run queue's tail, where no wake-up preemption looks: it
/// waited for the whole request (20 rounds of 20, every run; a 500 µs
/// ticker's first tick came 39-49 ms late beside three long requests in
/// 5 runs of 18). Now the goroutines a scheduler's timers wake wait among
/// the woken ones: the sleeper runs first, and any left behind a
/// call-free goroutine get a wake-up preemption.
#[test]
fn a_sleeper_woken_together_with_a_long_request_is_not_queued_behind_it() {
    let _s = serial();
    let _w = watchdog();
    let rt = one_p_no_time_slicing();
    let nap = Duration::from_millis(10);
    // Sleeps until `due`; false if it was past already (the machine held
    // this goroutine up: the round does not test the timers).
    let sleep_until = |due: Instant| match due.checked_duration_since(Instant::now()) {
        Some(d) if d > Duration::from_millis(1) => {
            gosched::sleep(d);
            true
        }
        _ => false,
    };
    let rounds: Vec<Option<Duration>> = rt.block_on(|| {
        (0..20)
            .map(|_| {
                let due = Instant::now() + nap;
                let sleeper = gosched::spawn(move || sleep_until(due).then(|| due.elapsed()));
                // Due 1 µs after the sleeper: when the scheduler wakes
                // for the first, the second is due too.
                let request = gosched::spawn(move || {
                    let slept = sleep_until(due + Duration::from_micros(1));
                    spin_cpu(Duration::from_millis(30));
                    slept
                });
                let late = sleeper.join().unwrap();
                let slept = request.join().unwrap();
                late.filter(|_| slept)
            })
            .collect()
    });
    eprintln!("sleeper lateness: {rounds:?}");
    let late: Vec<Duration> = rounds.into_iter().flatten().collect();
    assert!(late.len() >= 10, "only {} of 20 rounds slept", late.len());
    let behind = late
        .iter()
        .filter(|d| **d > Duration::from_millis(20))
        .count();
    assert_eq!(
        behind,
        0,
        "{behind} of {} sleepers waited behind the request: {late:?}",
        late.len()
    );
}
