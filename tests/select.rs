//! `select!`: uniform choice among ready arms, `default`, send arms, and
//! parking on every arm with exactly one firing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::chan::{after, channel, SendError};
use gosched::{select, Builder};

fn rt(procs: usize) -> gosched::Runtime {
    Builder::new().procs(procs).build().unwrap()
}

#[test]
fn choice_between_two_always_ready_channels_is_fair() {
    let (a_tx, a_rx) = channel::<u8>(1);
    let (b_tx, b_rx) = channel::<u8>(1);
    a_tx.send(0).unwrap();
    b_tx.send(1).unwrap();
    const N: usize = 20_000;
    let mut a = 0usize;
    for _ in 0..N {
        select! {
            recv(a_rx) -> v => {
                a += 1;
                a_tx.send(v.unwrap()).unwrap(); // ready again
            }
            recv(b_rx) -> v => b_tx.send(v.unwrap()).unwrap(),
        }
    }
    let share = a as f64 / N as f64;
    assert!(
        (0.45..=0.55).contains(&share),
        "first arm chosen {:.1}% of the time",
        share * 100.0
    );
}

#[test]
fn choice_among_eight_ready_arms_covers_them_all() {
    let chans: Vec<_> = (0..8).map(|_| channel::<usize>(1)).collect();
    for (i, (tx, _)) in chans.iter().enumerate() {
        tx.send(i).unwrap();
    }
    let r: Vec<_> = chans.iter().map(|c| &c.1).collect();
    let mut hits = [0usize; 8];
    for _ in 0..8000 {
        let i = select! {
            recv(r[0]) -> v => v.unwrap(),
            recv(r[1]) -> v => v.unwrap(),
            recv(r[2]) -> v => v.unwrap(),
            recv(r[3]) -> v => v.unwrap(),
            recv(r[4]) -> v => v.unwrap(),
            recv(r[5]) -> v => v.unwrap(),
            recv(r[6]) -> v => v.unwrap(),
            recv(r[7]) -> v => v.unwrap(),
        };
        hits[i] += 1;
        chans[i].0.send(i).unwrap();
    }
    for (i, h) in hits.iter().enumerate() {
        assert!(
            (700..=1300).contains(h),
            "arm {i} chosen {h} times of 8000 (expected ~1000): {hits:?}"
        );
    }
}

#[test]
fn default_runs_when_nothing_is_ready_and_not_otherwise() {
    let (tx, rx) = channel::<u8>(1);
    let r = select! {
        recv(rx) -> _ => "recv",
        default => "default",
    };
    assert_eq!(r, "default");
    tx.send(1).unwrap();
    let r = select! {
        recv(rx) -> v => { assert_eq!(v, Some(1)); "recv" }
        default => "default",
    };
    assert_eq!(r, "recv");
    // A default-only select just runs it.
    assert_eq!(select! { default => 5 }, 5);
}

#[test]
fn send_arms_fire_when_there_is_room_or_a_receiver() {
    let rt = rt(2);
    rt.block_on(|| {
        // Room in a buffer.
        let (tx, rx) = channel::<String>(1);
        let r = select! {
            send(tx, "a".to_string()) -> r => r,
            default => panic!("a buffer with room makes the send arm ready"),
        };
        assert_eq!(r, Ok(()));
        // Full now: default.
        let fired = select! {
            send(tx, "b".to_string()) -> _ => true,
            default => false,
        };
        assert!(!fired);
        assert_eq!(rx.recv().as_deref(), Some("a"));

        // Unbuffered, a receiver arrives later: the select parks, then sends.
        let (tx, rx) = channel::<u32>(0);
        let h = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(10));
            rx.recv()
        });
        let r = select! {
            send(tx, 42) -> r => r,
            recv(after(Duration::from_secs(10))) -> _ => panic!("timed out"),
        };
        assert_eq!(r, Ok(()));
        assert_eq!(h.join().unwrap(), Some(42));
    });
}

#[test]
fn send_arm_on_a_closed_channel_fires_with_the_value() {
    let (tx, rx) = channel::<Vec<u8>>(0);
    drop(rx);
    let r = select! {
        send(tx, vec![7]) -> r => r,
    };
    assert_eq!(r, Err(SendError(vec![7])));
}

#[test]
fn recv_arm_on_a_closed_channel_fires_with_none() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u8>(0);
        let (_keep, never) = channel::<u8>(0);
        gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(5));
            drop(tx); // closes while the select is parked
        });
        let r = select! {
            recv(never) -> _ => panic!("nobody sends here"),
            recv(rx) -> v => v,
        };
        assert_eq!(r, None);
    });
}

#[test]
fn a_parked_select_takes_exactly_one_value_and_leaves_the_other() {
    let rt = rt(2);
    rt.block_on(|| {
        for round in 0..50u32 {
            let (a_tx, a_rx) = channel::<u32>(0);
            let (b_tx, b_rx) = channel::<u32>(0);
            let sa = gosched::spawn(move || {
                gosched::sleep(Duration::from_millis(1));
                a_tx.send(round * 2)
            });
            let sb = gosched::spawn(move || {
                gosched::sleep(Duration::from_millis(1));
                b_tx.send(round * 2 + 1)
            });
            // Both senders arrive while we are parked on both arms.
            let (first, from_a) = select! {
                recv(a_rx) -> v => (v.unwrap(), true),
                recv(b_rx) -> v => (v.unwrap(), false),
            };
            // The other value was not consumed: a plain receive gets it.
            let second = if from_a { b_rx.recv() } else { a_rx.recv() };
            let second = second.expect("the other sender's value was lost");
            assert_eq!(
                first + second,
                round * 4 + 1,
                "round {round}: values {first} and {second}"
            );
            assert_eq!(sa.join().unwrap(), Ok(()));
            assert_eq!(sb.join().unwrap(), Ok(()));
            assert_eq!(a_rx.try_recv().ok(), None);
            assert_eq!(b_rx.try_recv().ok(), None);
        }
    });
}

#[test]
fn selects_on_shared_channels_conserve_every_value() {
    // Several selecting receivers and several senders on two unbuffered
    // channels: each value is received exactly once.
    let rt = rt(2);
    let (count, sum) = rt.block_on(|| {
        let (a_tx, a_rx) = channel::<u64>(0);
        let (b_tx, b_rx) = channel::<u64>(0);
        let count = Arc::new(AtomicUsize::new(0));
        let sum = Arc::new(AtomicU64::new(0));
        let receivers: Vec<_> = (0..4)
            .map(|_| {
                let (a_rx, b_rx, count, sum) =
                    (a_rx.clone(), b_rx.clone(), count.clone(), sum.clone());
                gosched::spawn(move || {
                    let mut open = 2;
                    while open > 0 {
                        let v = select! {
                            recv(a_rx) -> v => v,
                            recv(b_rx) -> v => v,
                        };
                        match v {
                            Some(v) => {
                                count.fetch_add(1, Ordering::Relaxed);
                                sum.fetch_add(v, Ordering::Relaxed);
                            }
                            None => {
                                open -= 1;
                                if open == 0 {
                                    break;
                                }
                                // One closed arm is always ready now: finish
                                // the other channel with plain receives.
                                let rest = if a_rx.is_closed() { &b_rx } else { &a_rx };
                                for v in rest {
                                    count.fetch_add(1, Ordering::Relaxed);
                                    sum.fetch_add(v, Ordering::Relaxed);
                                }
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        drop((a_rx, b_rx));
        let senders: Vec<_> = (0..4u64)
            .map(|s| {
                let tx = if s % 2 == 0 {
                    a_tx.clone()
                } else {
                    b_tx.clone()
                };
                gosched::spawn(move || {
                    for i in 0..5_000u64 {
                        tx.send(s * 5_000 + i).unwrap();
                    }
                })
            })
            .collect();
        drop((a_tx, b_tx));
        for s in senders {
            s.join().unwrap();
        }
        for r in receivers {
            r.join().unwrap();
        }
        (count.load(Ordering::Relaxed), sum.load(Ordering::Relaxed))
    });
    assert_eq!(count, 20_000);
    assert_eq!(sum, 20_000 * 19_999 / 2);
}

#[test]
fn opposite_selects_pair_up_without_deadlock() {
    // Each goroutine offers to send on one channel and receive on the
    // other; every round one direction must win in both.
    let rt = rt(2);
    rt.block_on(|| {
        let (a_tx, a_rx) = channel::<u32>(0);
        let (b_tx, b_rx) = channel::<u32>(0);
        let peer = gosched::spawn(move || {
            let mut got = 0;
            for i in 0..2_000 {
                select! {
                    send(a_tx, i) -> r => r.unwrap(),
                    recv(b_rx) -> v => { v.unwrap(); got += 1; }
                }
            }
            got
        });
        let mut got = 0;
        for i in 0..2_000 {
            select! {
                send(b_tx, i) -> r => r.unwrap(),
                recv(a_rx) -> v => { v.unwrap(); got += 1; }
            }
        }
        let peer_got = peer.join().unwrap();
        // Every exchange is one send matched with one receive.
        assert_eq!(got + peer_got, 2_000, "mine {got}, peer {peer_got}");
    });
}

#[test]
fn a_select_never_pairs_its_send_arm_with_its_own_recv_arm() {
    let (tx, rx) = channel::<u8>(0);
    let r = select! {
        send(tx, 1) -> _ => "sent",
        recv(rx) -> _ => "received",
        default => "default",
    };
    assert_eq!(r, "default");
    // And when parked, the arms stay unmatched until a real peer comes.
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u8>(0);
        let (tx2, rx2) = (tx.clone(), rx.clone());
        let peer = gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(10));
            rx2.recv()
        });
        let r = select! {
            send(tx, 1) -> r => { r.unwrap(); "sent" }
            recv(rx) -> _ => "received",
        };
        assert_eq!(r, "sent");
        assert_eq!(peer.join().unwrap(), Some(1));
        drop(tx2);
    });
}

#[test]
fn select_with_timeout_arm_times_out_and_mixed_types_work() {
    let rt = rt(2);
    rt.block_on(|| {
        let (_s_tx, s_rx) = channel::<String>(0);
        let (_n_tx, n_rx) = channel::<u64>(0);
        let (unit_tx, _unit_rx) = channel::<()>(0);
        let t = Instant::now();
        let r = select! {
            recv(s_rx) -> v => v.map(|s| s.len()),
            recv(n_rx) -> v => v.map(|n| n as usize),
            send(unit_tx, ()) -> _ => Some(0),
            recv(after(Duration::from_millis(20))) -> _ => None,
        };
        assert_eq!(r, None);
        assert!(t.elapsed() >= Duration::from_millis(20));
    });
}

#[test]
fn select_bodies_can_break_and_continue_the_enclosing_loop() {
    let (tx, rx) = channel::<u32>(8);
    for i in 0..5 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let mut odd = Vec::new();
    loop {
        select! {
            recv(rx) -> v => {
                let Some(v) = v else { break };
                if v % 2 == 0 {
                    continue;
                }
                odd.push(v);
            }
        }
    }
    assert_eq!(odd, [1, 3]);
}

#[test]
fn select_from_a_plain_thread_blocks_until_a_goroutine_sends() {
    let rt = rt(2);
    let (tx, rx) = channel::<u32>(0);
    let (_idle_tx, idle_rx) = channel::<u32>(0);
    let h = rt.spawn(move || {
        gosched::sleep(Duration::from_millis(10));
        tx.send(5).unwrap();
    });
    let v = select! {
        recv(idle_rx) -> _ => 0,
        recv(rx) -> v => v.unwrap(),
    };
    assert_eq!(v, 5);
    h.join().unwrap();
}

#[test]
fn many_goroutines_parked_in_select_all_get_served() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<usize>(0);
        let (stop_tx, stop_rx) = channel::<()>(0);
        let hs: Vec<_> = (0..200)
            .map(|_| {
                let (rx, stop_rx) = (rx.clone(), stop_rx.clone());
                gosched::spawn(move || {
                    select! {
                        recv(rx) -> v => v,
                        recv(stop_rx) -> _ => None,
                    }
                })
            })
            .collect();
        gosched::sleep(Duration::from_millis(5));
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        drop(stop_tx); // releases the other 100
        let mut got: Vec<usize> = hs.into_iter().filter_map(|h| h.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    });
}

// ---- default(timeout) ----

#[test]
fn default_timeout_runs_after_the_timeout_when_nothing_is_ready() {
    let rt = rt(2);
    rt.block_on(|| {
        let (_tx, rx) = channel::<u32>(0);
        let (stx, srx) = channel::<u32>(0);
        let start = Instant::now();
        let got = select! {
            recv(rx) -> v => Some(v),
            send(stx, 1) -> _ => None,
            default(Duration::from_millis(50)) => Some(None),
        };
        let waited = start.elapsed();
        assert_eq!(got, Some(None));
        assert!(
            waited >= Duration::from_millis(50),
            "timed out after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "timed out after {waited:?}"
        );
        // The timed-out send arm left nothing behind: its value was not sent
        // and no stale entry pairs with a later receive.
        assert!(srx.recv_timeout(Duration::from_millis(20)).is_err());
    });
}

#[test]
fn default_timeout_does_not_run_when_an_arm_becomes_ready_first() {
    let rt = rt(2);
    rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        gosched::spawn(move || {
            gosched::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        let start = Instant::now();
        let got = select! {
            recv(rx) -> v => v,
            default(Duration::from_secs(10)) => panic!("timed out"),
        };
        assert_eq!(got, Some(7));
        assert!(start.elapsed() < Duration::from_secs(5));
        // Ready at once: the arm wins even with a zero timeout.
        let (tx, rx) = channel::<u32>(1);
        tx.send(8).unwrap();
        let got = select! {
            recv(rx) -> v => v,
            default(Duration::ZERO) => None,
        };
        assert_eq!(got, Some(8));
        // Duration::MAX is accepted (effectively forever).
        gosched::spawn(move || tx.send(9).unwrap());
        let got = select! {
            recv(rx) -> v => v,
            default(Duration::MAX) => None,
        };
        assert_eq!(got, Some(9));
    });
}

#[test]
fn default_timeout_from_a_plain_thread_and_with_no_arms() {
    let (tx, rx) = channel::<u32>(0);
    let start = Instant::now();
    let timed_out = select! {
        recv(rx) -> _ => false,
        default(Duration::from_millis(30)) => true,
    };
    assert!(timed_out);
    assert!(start.elapsed() >= Duration::from_millis(30));
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        tx.send(1).unwrap();
    });
    let got = select! {
        recv(rx) -> v => v,
        default(Duration::from_secs(10)) => None,
    };
    assert_eq!(got, Some(1));
    h.join().unwrap();
    // No arms: it just waits out the timeout.
    let start = Instant::now();
    let v = select! { default(Duration::from_millis(20)) => 5 };
    assert_eq!(v, 5);
    assert!(start.elapsed() >= Duration::from_millis(20));
}

#[test]
fn selects_timing_out_while_values_arrive_neither_lose_nor_duplicate_any() {
    let rt = rt(2);
    let (sent, received) = rt.block_on(|| {
        let (tx, rx) = channel::<u64>(0);
        let producer = gosched::spawn(move || {
            let mut sent = 0;
            for v in 1..=2_000u64 {
                if tx.send_timeout(v, Duration::from_micros(100)).is_ok() {
                    sent += v;
                }
            }
            sent
        });
        let mut received = 0;
        let mut quiet = 0;
        while quiet < 50 {
            select! {
                recv(rx) -> v => match v {
                    Some(v) => received += v,
                    None => break,
                },
                default(Duration::from_micros(80)) => quiet += 1,
            }
        }
        (producer.join().unwrap(), received + rx.iter().sum::<u64>())
    });
    assert_eq!(sent, received);
}

/// The engine the macro calls (public but hidden) refuses one case passed
/// twice with a panic before it touches a channel: registering the case
/// twice queued its entry twice, and in a release build the channel's
/// wait queue then linked that entry to itself (the next operation on the
/// channel read a dead stack slot or looped for ever).
#[test]
fn the_select_engine_refuses_a_case_passed_twice() {
    let rt = rt(1);
    rt.block_on(|| {
        let (tx, rx) = channel::<u32>(0);
        let case = gosched::chan::select::RecvCase::new(&rx);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gosched::chan::select::run(&[&case, &case], false)
        }));
        let err = r.expect_err("a case passed twice must be refused");
        let msg = err
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| err.downcast_ref::<&str>().copied())
            .unwrap_or("");
        assert!(msg.contains("the same case twice (arms 0 and 1)"), "{msg}");
        // Nothing was queued: the channel works as before.
        drop(case);
        gosched::spawn(move || tx.send(7).unwrap());
        assert_eq!(rx.recv(), Some(7));
    });
}
