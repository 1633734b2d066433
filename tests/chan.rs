//! Channels: Go's chan semantics (after the behaviours Go's chan_test.go
//! checks), from goroutines and from plain threads.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{child_role, run_child};
use gosched::chan::{
    after, channel, tick, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use gosched::{select, Builder};

fn rt(procs: usize) -> gosched::Runtime {
    Builder::new().procs(procs).build().unwrap()
}

#[test]
fn unbuffered_send_completes_only_when_the_receiver_takes_the_value() {
    let rt = rt(2);
    let (sent_after, got) = rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        let receiver = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(50));
            rx.recv()
        });
        let t = Instant::now();
        tx.send(7).unwrap();
        let sent_after = t.elapsed();
        (sent_after, receiver.join().unwrap())
    });
    assert_eq!(got, Some(7));
    assert!(
        sent_after >= Duration::from_millis(45),
        "send returned after {sent_after:?}, before the receiver took it"
    );
}

#[test]
fn unbuffered_receive_waits_for_a_sender() {
    let rt = rt(2);
    let waited = rt.block_on(|| {
        let (tx, rx) = channel::<&str>(0);
        gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(30));
            tx.send("late").unwrap();
        });
        let t = Instant::now();
        assert_eq!(rx.recv(), Some("late"));
        t.elapsed()
    });
    assert!(waited >= Duration::from_millis(25), "{waited:?}");
}

#[test]
fn buffered_channel_holds_cap_values_then_reports_full() {
    let (tx, rx) = channel::<String>(3);
    assert_eq!(tx.capacity(), 3);
    for i in 0..3 {
        tx.try_send(i.to_string()).unwrap();
    }
    assert_eq!(rx.len(), 3);
    match tx.try_send("x".to_string()) {
        Err(TrySendError::Full(v)) => assert_eq!(v, "x"),
        other => panic!("expected Full, got {other:?}"),
    }
    // FIFO.
    assert_eq!(rx.recv().as_deref(), Some("0"));
    tx.try_send("3".to_string()).unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    assert_eq!(rest, ["1", "2", "3"]);
    assert!(rx.is_empty());
}

#[test]
fn unbuffered_try_send_without_receiver_is_full() {
    let (tx, rx) = channel::<u8>(0);
    assert_eq!(tx.try_send(1), Err(TrySendError::Full(1)));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(rx.len(), 0);
    assert_eq!(rx.capacity(), 0);
}

#[test]
fn a_blocked_sender_on_a_full_buffer_resumes_when_a_receiver_makes_room() {
    let rt = rt(1);
    rt.block_on(|| {
        let (tx, rx) = channel::<u32>(1);
        tx.send(1).unwrap();
        let h = gosched::spawn(move || {
            tx.send(2).unwrap(); // full: parks
            tx.send(3).unwrap();
        });
        gosched::sleep(Duration::from_millis(5));
        assert_eq!(rx.len(), 1, "the second send must wait for room");
        assert_eq!(rx.recv(), Some(1));
        assert_eq!(rx.recv(), Some(2));
        assert_eq!(rx.recv(), Some(3));
        h.join().unwrap();
        assert_eq!(rx.recv(), None);
    });
}

#[test]
fn close_then_receivers_drain_the_buffer_then_get_none() {
    let (tx, rx) = channel::<i32>(4);
    tx.send(1).unwrap();
    tx.send(2).unwrap();
    tx.close();
    tx.close(); // idempotent
    assert!(rx.is_closed());
    assert_eq!(rx.recv(), Some(1));
    assert_eq!(rx.try_recv(), Ok(2));
    assert_eq!(rx.recv(), None);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Err(RecvTimeoutError::Disconnected)
    );
}

#[test]
fn send_after_close_returns_the_value() {
    let (tx, _rx) = channel::<Vec<u8>>(1);
    tx.close();
    let SendError(v) = tx.send(vec![1, 2, 3]).unwrap_err();
    assert_eq!(v, [1, 2, 3]);
    assert_eq!(
        tx.try_send(vec![4]),
        Err(TrySendError::Disconnected(vec![4]))
    );
}

#[test]
fn dropping_the_last_sender_closes_the_channel() {
    let (tx, rx) = channel::<u8>(1);
    let tx2 = tx.clone();
    drop(tx);
    assert!(!rx.is_closed(), "a clone is still alive");
    tx2.send(5).unwrap();
    drop(tx2);
    assert!(rx.is_closed());
    assert_eq!(rx.recv(), Some(5));
    assert_eq!(rx.recv(), None);
}

#[test]
fn dropping_the_last_sender_wakes_blocked_receivers() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u8>(0);
        let hs: Vec<_> = (0..100)
            .map(|_| {
                let rx = rx.clone();
                gosched::spawn(move || rx.recv())
            })
            .collect();
        gosched::sleep(Duration::from_millis(10));
        drop(tx);
        for h in hs {
            assert_eq!(h.join().unwrap(), None);
        }
    });
}

#[test]
fn dropping_the_last_receiver_fails_blocked_and_later_sends() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<String>(0);
        let tx2 = tx.clone();
        let h = gosched::spawn(move || tx2.send("blocked".into()));
        gosched::sleep(Duration::from_millis(10));
        drop(rx);
        assert_eq!(h.join().unwrap(), Err(SendError("blocked".to_string())));
        assert!(tx.send("later".into()).is_err());
    });
}

#[test]
fn close_wakes_a_blocked_sender_with_its_value() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u64>(0);
        let tx2 = tx.clone();
        let h = gosched::spawn(move || tx2.send(99));
        gosched::sleep(Duration::from_millis(10));
        tx.close();
        assert_eq!(h.join().unwrap(), Err(SendError(99)));
        assert_eq!(
            rx.recv(),
            None,
            "the value of a failed send must not be delivered"
        );
    });
}

#[test]
fn try_recv_on_a_closed_empty_channel_is_disconnected() {
    for cap in [0, 1, 8] {
        let (tx, rx) = channel::<u8>(cap);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected), "cap {cap}");
    }
}

/// 4 producers x 4 consumers; every value arrives exactly once.
fn mpmc(cap: usize, per_producer: u32) {
    let rt = rt(2);
    let seen = rt.block_on(move || {
        let (tx, rx) = channel::<u32>(cap);
        for p in 0..4u32 {
            let tx = tx.clone();
            gosched::spawn(move || {
                for i in 0..per_producer {
                    tx.send(p * per_producer + i).unwrap();
                }
            });
        }
        drop(tx);
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let rx = rx.clone();
                gosched::spawn(move || rx.iter().collect::<Vec<u32>>())
            })
            .collect();
        drop(rx);
        consumers
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let total = 4 * per_producer as usize;
    let mut once = vec![false; total];
    let mut count = 0usize;
    let mut sum = 0u64;
    for v in seen.iter().flatten() {
        assert!(!once[*v as usize], "value {v} received twice");
        once[*v as usize] = true;
        count += 1;
        sum += *v as u64;
    }
    assert_eq!(count, total);
    assert_eq!(sum, (total as u64) * (total as u64 - 1) / 2);
    // Each consumer sees each producer's values in order (FIFO per sender).
    for c in &seen {
        for p in 0..4 {
            let mine: Vec<u32> = c
                .iter()
                .copied()
                .filter(|v| v / per_producer == p)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "producer {p}'s values out of order"
            );
        }
    }
}

#[test]
fn mpmc_buffered_4_producers_4_consumers_400k_values_each_once() {
    mpmc(64, 100_000);
}

#[test]
fn mpmc_unbuffered_4_producers_4_consumers_each_value_once() {
    mpmc(0, 20_000);
}

#[test]
fn after_never_fires_early() {
    let rt = rt(2);
    rt.block_on(|| {
        for ms in [0u64, 1, 3, 10, 25] {
            let d = Duration::from_millis(ms);
            let start = Instant::now();
            let fired = after(d)
                .recv()
                .expect("after's channel closed without a value");
            assert!(
                fired.duration_since(start) >= d,
                "{ms} ms timer fired after {:?}",
                fired - start
            );
            assert!(start.elapsed() >= d);
        }
    });
    // And from a plain thread (the fallback timer thread).
    let start = Instant::now();
    let fired = after(Duration::from_millis(15)).recv().unwrap();
    assert!(fired.duration_since(start) >= Duration::from_millis(15));
}

#[test]
fn tick_delivers_periodically_and_drops_ticks_for_a_slow_receiver() {
    let rt = rt(2);
    rt.block_on(|| {
        let period = Duration::from_millis(3);
        let start = Instant::now();
        let t = tick(period);
        let mut last = start;
        for k in 1..=5u32 {
            let at = t.recv().unwrap();
            assert!(
                at.duration_since(start) >= period * k,
                "tick {k} early: {:?}",
                at - start
            );
            assert!(at >= last);
            last = at;
        }
        // A slow receiver: the buffer holds one tick, the rest are dropped.
        gosched::sleep(Duration::from_millis(30));
        assert!(
            t.len() <= 1,
            "a ticker buffers at most one tick, has {}",
            t.len()
        );
        assert!(t.recv().is_some());
    });
    // Plain thread.
    let t = tick(Duration::from_millis(2));
    let start = Instant::now();
    t.recv().unwrap();
    t.recv().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(2));
}

#[test]
fn recv_timeout_times_out_then_receives() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u8>(0);
        let t = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(
            t.elapsed() >= Duration::from_millis(20),
            "timed out early: {:?}",
            t.elapsed()
        );
        // The timed-out receiver left no entry behind that could swallow a
        // value: nobody waits now, so an unbuffered try_send must fail.
        assert_eq!(tx.try_send(1), Err(TrySendError::Full(1)));

        gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(5));
            tx.send(2).unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(2));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(RecvTimeoutError::Disconnected)
        );
    });
    // Plain thread, both outcomes.
    let (tx, rx) = channel::<u8>(1);
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(5)),
        Err(RecvTimeoutError::Timeout)
    );
    tx.send(3).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Ok(3));
}

#[test]
fn values_are_conserved_when_receivers_time_out_while_senders_send() {
    let rt = rt(2);
    let (sent, received) = rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        let received = Arc::new(AtomicUsize::new(0));
        let receivers: Vec<_> = (0..4)
            .map(|_| {
                let (rx, received) = (rx.clone(), received.clone());
                gosched::spawn(move || loop {
                    match rx.recv_timeout(Duration::from_micros(50)) {
                        Ok(_) => drop(received.fetch_add(1, Ordering::Relaxed)),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                })
            })
            .collect();
        let mut sent = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            if tx.try_send(1).is_ok() {
                sent += 1;
            }
            gosched::yield_now();
        }
        drop(tx);
        for r in receivers {
            r.join().unwrap();
        }
        (sent, received.load(Ordering::Relaxed))
    });
    assert!(sent > 0, "no send ever met a waiting receiver");
    assert_eq!(sent, received, "a value was lost or duplicated");
}

#[test]
fn plain_thread_and_goroutine_talk_over_an_unbuffered_channel() {
    let rt = rt(2);
    let (to_g, from_thread) = channel::<u32>(0);
    let (to_thread, from_g) = channel::<u32>(0);
    let h = rt.spawn(move || {
        let mut n = 0;
        while let Some(v) = from_thread.recv() {
            to_thread.send(v * 2).unwrap();
            n += 1;
        }
        n
    });
    for i in 0..1000 {
        to_g.send(i).unwrap(); // the thread blocks until the goroutine takes it
        assert_eq!(from_g.recv(), Some(i * 2));
    }
    drop(to_g);
    assert_eq!(h.join().unwrap(), 1000);
    assert_eq!(from_g.recv(), None);
}

#[test]
fn buffered_values_left_in_a_dropped_channel_are_dropped() {
    let live = Arc::new(());
    let (tx, rx) = channel::<Arc<()>>(4);
    for _ in 0..3 {
        tx.send(live.clone()).unwrap();
    }
    assert_eq!(Arc::strong_count(&live), 4);
    drop((tx, rx));
    assert_eq!(Arc::strong_count(&live), 1);
}

#[test]
fn iterating_a_receiver_ends_at_close() {
    let rt = rt(1);
    let v = rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        gosched::spawn(move || (0..5).for_each(|i| tx.send(i).unwrap()));
        let mut v = Vec::new();
        for x in &rx {
            v.push(x);
        }
        v
    });
    assert_eq!(v, [0, 1, 2, 3, 4]);
}

#[test]
fn ping_pong_on_one_p_in_both_directions() {
    let rt = rt(1);
    let n = rt.block_on(|| {
        let (ping_tx, ping_rx) = channel::<u32>(0);
        let (pong_tx, pong_rx) = channel::<u32>(0);
        gosched::spawn(move || {
            for v in &ping_rx {
                pong_tx.send(v + 1).unwrap();
            }
        });
        let mut v = 0;
        for _ in 0..10_000 {
            ping_tx.send(v).unwrap();
            v = pong_rx.recv().unwrap();
        }
        v
    });
    assert_eq!(n, 10_000);
}

#[test]
fn blocking_call_on_one_p_does_not_stop_other_goroutines() {
    let rt = rt(1);
    let (sleeps_done, blocking_done) = rt.block_on(|| {
        let (tx, rx) = channel::<Instant>(1);
        gosched::spawn(move || {
            for _ in 0..50 {
                gosched::sleep(Duration::from_millis(1));
            }
            tx.send(Instant::now()).unwrap();
        });
        gosched::blocking(|| std::thread::sleep(Duration::from_millis(400)));
        let blocking_done = Instant::now();
        (rx.recv().unwrap(), blocking_done)
    });
    assert!(
        sleeps_done < blocking_done,
        "the fifty 1 ms sleeps finished {:?} after the 400 ms blocking call returned",
        sleeps_done - blocking_done
    );
}

/// Durations past anything a clock can reach: `Duration::MAX`, and 2^64 ns
/// (~584 years), which `Instant` can hold but whose nanoseconds truncated
/// to `u64` are 0 (a timer that fires at once).
const HUGE: [Duration; 2] = [Duration::MAX, Duration::new(18_446_744_073, 709_551_616)];

#[test]
fn recv_timeout_with_a_huge_timeout_receives_a_value_sent_later() {
    let rt = rt(2);
    rt.block_on(|| {
        for timeout in HUGE {
            let (tx, rx) = channel::<u32>(0);
            gosched::spawn(move || {
                gosched::sleep(Duration::from_millis(20));
                tx.send(5).unwrap();
            });
            assert_eq!(rx.recv_timeout(timeout), Ok(5), "{timeout:?}");
        }
    });
    // A plain thread too.
    for timeout in HUGE {
        let (tx, rx) = channel::<u32>(0);
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(6).unwrap();
        });
        assert_eq!(rx.recv_timeout(timeout), Ok(6), "{timeout:?}");
        h.join().unwrap();
    }
}

#[test]
fn after_with_a_huge_duration_never_fires_within_a_select_window() {
    let check = || {
        for d in HUGE {
            let fired = select! {
                recv(after(d)) -> _ => true,
                recv(after(Duration::from_millis(30))) -> _ => false,
            };
            assert!(!fired, "after({d:?}) fired within 30 ms");
        }
    };
    rt(2).block_on(check);
    check();
}

#[test]
fn tick_with_a_huge_period_never_ticks() {
    let check = || {
        for d in HUGE {
            let t = tick(d);
            assert_eq!(
                t.recv_timeout(Duration::from_millis(30)),
                Err(RecvTimeoutError::Timeout),
                "tick({d:?})"
            );
        }
    };
    rt(2).block_on(check);
    check();
}

/// `tick(Duration::ZERO)` (Go's NewTicker panics) ticks at the minimum
/// period, 100 µs: it delivers, never early, and does not keep a thread
/// busy.
#[test]
fn tick_zero_ticks_at_the_minimum_period_without_spinning() {
    let run = || {
        let start = Instant::now();
        let t = tick(Duration::ZERO);
        let mut last = start;
        for _ in 0..5 {
            last = t.recv().unwrap();
        }
        // Tick k is due k periods after `tick` was called.
        let five = last - start;
        assert!(five >= Duration::from_micros(500), "5 ticks in {five:?}");
        // Nobody receives for 300 ms: the ticker must not spin meanwhile.
        let cpu0 = common::process_cpu_time();
        let wall = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        let (cpu, wall) = (common::process_cpu_time() - cpu0, wall.elapsed());
        drop(t);
        (cpu, wall)
    };
    // In a child: CPU time is per process, and other tests run in parallel.
    if child_role().is_some() {
        let (cpu_rt, wall_rt) = rt(2).block_on(run);
        let (cpu_th, wall_th) = run();
        eprintln!(
            "TICK0 rt_cpu_us={} rt_wall_us={} thread_cpu_us={} thread_wall_us={}",
            cpu_rt.as_micros(),
            wall_rt.as_micros(),
            cpu_th.as_micros(),
            wall_th.as_micros()
        );
        return;
    }
    let out = run_child(
        "tick_zero_ticks_at_the_minimum_period_without_spinning",
        "tick0",
        &[],
    );
    let lines = report_lines(&out, "TICK0 ");
    let line = lines[0];
    let num = |k: &str| field(line, k);
    // A spinning ticker burns a whole CPU (cpu >= wall); a 100 µs one costs
    // 10-35 % in a debug build. Two thirds of a CPU separates them.
    for (cpu, wall) in [
        ("rt_cpu_us=", "rt_wall_us="),
        ("thread_cpu_us=", "thread_wall_us="),
    ] {
        assert!(num(cpu) * 3 < num(wall) * 2, "a zero tick spins: {line}");
    }
}

/// A ticker nobody receives from, in an otherwise idle runtime, wakes one
/// thread per tick: the M asleep in the driver fires it and sleeps on.
/// (That M used to give up its sleeper role before firing; the ticker's
/// re-arm then found no sleeper and woke a second thread every tick:
/// sysmon with 1 P, an M to take the role with 2.)
#[test]
fn an_unread_ticker_wakes_one_thread_per_tick() {
    const PERIOD: Duration = Duration::from_micros(500);
    // Per-thread counts: in a child, away from other tests' runtimes.
    if child_role().is_some() {
        for procs in [1, 2] {
            let (ticks, switches) = rt(procs).block_on(|| {
                let t = tick(PERIOD);
                t.recv().unwrap();
                let before = common::voluntary_switches("gosched-");
                let start = Instant::now();
                gosched::sleep(Duration::from_millis(300));
                let ticks = start.elapsed().as_micros() / PERIOD.as_micros();
                let after = common::voluntary_switches("gosched-");
                drop(t);
                (ticks, common::switches_since(&before, &after))
            });
            eprintln!("UNREAD procs={procs} ticks={ticks} switches={switches}");
        }
        return;
    }
    let out = run_child("an_unread_ticker_wakes_one_thread_per_tick", "unread", &[]);
    for line in report_lines(&out, "UNREAD ") {
        let (ticks, switches) = (field(line, "ticks="), field(line, "switches="));
        assert!(ticks >= 500, "{line}");
        // One per tick, plus a few (sysmon's backstop looks, the sleep's
        // own wake-up); two per tick before.
        assert!(switches * 10 < ticks * 14, "{line}");
    }
}

/// The report lines a successful child printed with `prefix` (at least
/// one); echoed for the test log.
fn report_lines<'a>(out: &'a common::ChildOutput, prefix: &str) -> Vec<&'a str> {
    assert!(out.status.success(), "{}", out.describe());
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert!(!lines.is_empty(), "no {prefix} line\n{}", out.describe());
    for l in &lines {
        eprintln!("{l}");
    }
    lines
}

/// The number after `key` (e.g. "rss_end=") in a report line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// Resident memory of this process in bytes (/proc/self/statm).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// `select!` over a ready channel and `after(10 s)` in a loop, Go's most
/// common timeout idiom: each dropped `after` receiver cancels its timer, so
/// the pending timers and the memory stay flat (each iteration used to
/// leave a live timer and its channel behind for 10 s). In a child process,
/// so the RSS is ours alone.
#[test]
fn dropped_after_receivers_cancel_their_timers_and_memory_stays_flat() {
    const N: u64 = 200_000;
    const WARM: u64 = 20_000;
    let select_loop = |timers: &dyn Fn() -> usize| -> (usize, u64, u64) {
        let (tx, rx) = channel::<u64>(1);
        let (mut max_timers, mut rss_warm) = (0, 0);
        for i in 0..N {
            tx.send(i).unwrap();
            select! {
                recv(rx) -> v => assert_eq!(v, Some(i)),
                recv(after(Duration::from_secs(10))) -> _ => panic!("timed out"),
            }
            if i % 1000 == 0 {
                max_timers = max_timers.max(timers());
            }
            if i == WARM {
                rss_warm = rss_bytes();
            }
        }
        (max_timers, rss_warm, rss_bytes())
    };
    if child_role().is_some() {
        let rt = Builder::new().procs(1).build().unwrap();
        let stats = || rt.stats().timers;
        let t = Instant::now();
        let (timers, warm, end) = rt.block_on(|| select_loop(&stats));
        eprintln!(
            "AFTER-LOOP goroutine max_timers={timers} rss_warm={warm} rss_end={end} in {:?}",
            t.elapsed()
        );
        // A plain thread: the fallback timer thread's heap.
        let t = Instant::now();
        let (_, warm, end) = select_loop(&|| 0);
        eprintln!(
            "AFTER-LOOP thread max_timers=0 rss_warm={warm} rss_end={end} in {:?}",
            t.elapsed()
        );
        return;
    }
    let out = run_child(
        "dropped_after_receivers_cancel_their_timers_and_memory_stays_flat",
        "after-loop",
        &[],
    );
    let lines = report_lines(&out, "AFTER-LOOP ");
    assert_eq!(lines.len(), 2, "{}", out.describe());
    for line in lines {
        let num = |k: &str| field(line, k);
        assert!(num("max_timers=") <= 4, "timers pile up: {line}");
        // 180,000 leaked timers with their channels are tens of MB; a flat
        // loop stays within allocator noise.
        let growth = num("rss_end=").saturating_sub(num("rss_warm="));
        assert!(growth < 8 << 20, "memory grew by {growth} bytes: {line}");
    }
}

#[test]
fn dropping_timer_channel_receivers_cancels_their_timers() {
    let rt = rt(2);
    rt.block_on(|| {
        let timers = || rt.stats().timers;
        let afters: Vec<_> = (0..100).map(|_| after(Duration::from_secs(60))).collect();
        assert_eq!(timers(), 100);
        // A cloned receiver keeps its timer; the last one cancels it.
        let a = afters[0].clone();
        drop(afters);
        assert_eq!(timers(), 1);
        drop(a);
        assert_eq!(timers(), 0);
        // A ticker that has re-armed itself a few times.
        let t = tick(Duration::from_millis(1));
        for _ in 0..3 {
            t.recv().unwrap();
        }
        drop(t);
    });
    // Cancelled at the drop; a tick being delivered meanwhile does not
    // re-arm (the receivers-gone flag and the re-arm share a lock).
    assert_eq!(rt.stats().timers, 0);
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(
        rt.stats().timers,
        0,
        "the ticker re-armed after its receiver dropped"
    );
}

// ---- send_timeout / recv_deadline ----

#[test]
fn send_timeout_on_a_full_channel_returns_the_value_and_a_later_send_works() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<String>(1);
        tx.send("first".into()).unwrap();
        let t = Instant::now();
        let err = tx
            .send_timeout("second".into(), Duration::from_millis(30))
            .unwrap_err();
        assert!(
            t.elapsed() >= Duration::from_millis(30),
            "{:?}",
            t.elapsed()
        );
        assert!(err.is_timeout());
        assert_eq!(err.into_inner(), "second");
        // The timed-out entry left the queue: the buffer still holds only
        // "first", and a later blocking send is served normally.
        assert_eq!(rx.len(), 1);
        assert_eq!(rx.recv().as_deref(), Some("first"));
        let r = gosched::spawn(move || (rx.recv(), rx.recv()));
        tx.send("third".into()).unwrap();
        tx.send_timeout("fourth".into(), Duration::from_secs(10))
            .unwrap();
        let (a, b) = r.join().unwrap();
        assert_eq!(
            (a.as_deref(), b.as_deref()),
            (Some("third"), Some("fourth"))
        );
    });
}

#[test]
fn send_timeout_completes_when_a_receiver_comes_before_the_deadline() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        let r = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(20));
            rx.recv()
        });
        assert_eq!(tx.send_timeout(5, Duration::MAX), Ok(()));
        assert_eq!(r.join().unwrap(), Some(5));
    });
}

#[test]
fn send_timeout_reports_a_close_that_happens_while_waiting() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(20));
            drop(rx);
        });
        let got = tx.send_timeout(9, Duration::from_secs(10));
        assert_eq!(got, Err(SendTimeoutError::Disconnected(9)));
    });
}

#[test]
fn send_timeout_and_recv_deadline_block_a_plain_thread() {
    let (tx, rx) = channel::<u32>(0);
    let t = Instant::now();
    assert_eq!(
        tx.send_timeout(1, Duration::from_millis(20)),
        Err(SendTimeoutError::Timeout(1))
    );
    assert!(t.elapsed() >= Duration::from_millis(20));
    let t = Instant::now();
    let deadline = t + Duration::from_millis(20);
    assert_eq!(rx.recv_deadline(deadline), Err(RecvTimeoutError::Timeout));
    assert!(Instant::now() >= deadline);
    // Later operations still pair up, across threads.
    let h = std::thread::spawn(move || rx.recv_deadline(Instant::now() + Duration::from_secs(10)));
    tx.send_timeout(2, Duration::from_secs(10)).unwrap();
    assert_eq!(h.join().unwrap(), Ok(2));
}

#[test]
fn recv_deadline_times_out_then_a_later_receive_gets_the_value() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        let deadline = Instant::now() + Duration::from_millis(30);
        assert_eq!(rx.recv_deadline(deadline), Err(RecvTimeoutError::Timeout));
        assert!(Instant::now() >= deadline);
        // A deadline in the past only takes what is there.
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(rx.recv_deadline(past), Err(RecvTimeoutError::Timeout));
        gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(10));
            tx.send(3).unwrap();
        });
        // Far-future instants are accepted (clamped, not overflowed).
        let far = Instant::now() + Duration::from_secs(1_000 * 365 * 24 * 3600);
        assert_eq!(rx.recv_deadline(far), Ok(3));
        assert_eq!(rx.recv_deadline(far), Err(RecvTimeoutError::Disconnected));
    });
}

#[test]
fn timed_sends_racing_receivers_neither_lose_nor_duplicate_values() {
    let rt = rt(2);
    let (sent, received) = rt.block_on(|| {
        let (tx, rx) = channel::<u64>(0);
        let recv = gosched::spawn(move || {
            let mut sum = 0u64;
            while let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
                sum += v;
                if v % 7 == 0 {
                    gosched::sleep(Duration::from_micros(300));
                }
            }
            sum
        });
        let mut sent = 0u64;
        for v in 1..=2_000u64 {
            match tx.send_timeout(v, Duration::from_micros(100)) {
                Ok(()) => sent += v,
                Err(SendTimeoutError::Timeout(back)) => assert_eq!(back, v),
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        drop(tx);
        (sent, recv.join().unwrap())
    });
    assert_eq!(sent, received);
}
