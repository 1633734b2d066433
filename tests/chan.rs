//! Channels: Go's chan semantics (after the behaviours Go's chan_test.go
//! checks), from goroutines and from plain threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::chan::{
    after, channel, tick, RecvTimeoutError, SendError, TryRecvError, TrySendError,
};
use gosched::Builder;

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
