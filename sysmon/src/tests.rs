//! Deterministic tests of the monitor against [`FakeTarget`] and hand-advanced time.

use crate::fake::{Call, FakeTarget};
use crate::{Config, Monitor, PStatus, PView, Sleep, Target};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn preempts(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Preempt { .. }))
        .count()
}

fn count(calls: &[Call], call: Call) -> usize {
    calls.iter().filter(|&&c| c == call).count()
}

fn sleep_for(s: Sleep) -> Duration {
    match s {
        Sleep::For(d) => d,
        Sleep::Idle(_) => panic!("expected Sleep::For, got {s:?}"),
    }
}

// ---------------------------------------------------------------- preemption

#[test]
fn no_preempt_before_quantum() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    for now in [us(0), ms(3), ms(9), us(9_999)] {
        m.tick(&mut t, now);
    }
    assert!(t.calls().is_empty());
    assert_eq!(m.counters().preempt_requests, 0);
}

#[test]
fn only_when_contended_skips_a_lone_overrunning_goroutine() {
    let cfg = Config {
        only_when_contended: true,
        ..Config::default()
    };
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0)), PView::running(1, ms(0))]);
    let mut m = Monitor::new(cfg, 2);
    // Nothing waits: no request, and a look again a quantum later.
    assert_eq!(sleep_for(m.tick(&mut t, ms(10))), ms(10));
    assert!(t.take_calls().is_empty());
    // Work on the global queue: both overrunning slices are preempted.
    t.global_work = true;
    m.tick(&mut t, ms(20));
    assert_eq!(preempts(&t.take_calls()), 2);
    // Work queued on P 1 alone also counts for P 0 (any goroutine waiting).
    t.global_work = false;
    t.ps[1].runq_nonempty = true;
    m.tick(&mut t, ms(30));
    assert_eq!(preempts(&t.take_calls()), 2);
}

/// Two Ps running goroutines since 0 with nothing waiting, 100 µs quantum,
/// `only_when_contended` (as the runtime configures it).
fn two_uncontended_hogs_at_100us() -> (FakeTarget, Monitor) {
    let cfg = Config {
        quantum: us(100),
        only_when_contended: true,
        ..Config::default()
    };
    let t = FakeTarget::new(vec![PView::running(1, ms(0)), PView::running(1, ms(0))]);
    (t, Monitor::new(cfg, 2))
}

/// Beside goroutines nothing waits for, sysmon looks every
/// `uncontended_look_max` rather than every quantum: at a 100 µs quantum
/// it looked every 100 µs, each look taking a CPU from one of them.
#[test]
fn looks_back_off_while_nobody_waits() {
    let (mut t, mut m) = two_uncontended_hogs_at_100us();
    let mut now = us(100);
    for _ in 0..3 {
        let d = sleep_for(m.tick(&mut t, now));
        assert_eq!(d, ms(1));
        now += d;
    }
    assert!(t.take_calls().is_empty());
    // A goroutine waits: both overrunning slices are asked at once, and
    // the next look is the ordinary retry.
    t.global_work = true;
    let d = sleep_for(m.tick(&mut t, now));
    assert_eq!(preempts(&t.take_calls()), 2);
    assert_eq!(d, us(25));
    // Both start new slices; nobody waits: their quanta count again (the
    // backoff ended with the contended look), then the backoff resumes.
    t.global_work = false;
    now += d;
    t.ps[0] = PView::running(2, now);
    t.ps[1] = PView::running(2, now);
    assert_eq!(sleep_for(m.tick(&mut t, now)), us(100));
    now += us(100);
    assert_eq!(sleep_for(m.tick(&mut t, now)), ms(1));
    assert!(t.take_calls().is_empty());
}

/// During the backoff a slice that begins does not wake sysmon at its
/// quantum (nobody waits for its P), until the backoff's next look; a
/// wake-up by the runtime ends the backoff.
#[test]
fn a_new_slice_does_not_end_an_uncontended_backoff() {
    let (mut t, mut m) = two_uncontended_hogs_at_100us();
    assert_eq!(sleep_for(m.tick(&mut t, us(1_000))), ms(1));
    // P 1 starts a slice 100 µs later (sysmon woken early by a timer):
    // its quantum would end at 1.2 ms; sysmon sleeps to the backoff's look.
    t.ps[1] = PView::running(2, us(1_100));
    assert_eq!(sleep_for(m.tick(&mut t, us(1_100))), us(900));
    assert!(t.take_calls().is_empty());
    // A wake-up by the runtime ends the backoff: the slice's own quantum
    // counts again.
    m.woken();
    assert_eq!(sleep_for(m.tick(&mut t, us(1_120))), us(80));
}

/// The backoff is bounded by the quantum when that is longer than
/// `uncontended_look_max`: at the default 10 ms quantum nothing changes.
#[test]
fn the_uncontended_backoff_never_looks_less_often_than_a_quantum() {
    let cfg = Config {
        only_when_contended: true,
        ..Config::default()
    };
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(cfg, 1);
    let mut now = ms(10);
    for _ in 0..5 {
        let d = sleep_for(m.tick(&mut t, now));
        assert_eq!(d, ms(10));
        now += d;
    }
}

/// A timed slice is the runtime's timer's to end: sysmon sleeps past its
/// quantum and only asks `timer_grace` later (the timer's backstop), then
/// retries as for any slice.
#[test]
fn a_timed_slice_is_left_to_its_timer_until_the_grace_ends() {
    let timed = PView {
        timed: true,
        ..PView::running(1, ms(0))
    };
    let mut t = FakeTarget::new(vec![timed, PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 2);
    // P 1 (untimed) is due at 10 ms; P 0 at 10 + 2.5 (quantum / 4 is
    // longer than the 1 ms grace).
    assert_eq!(sleep_for(m.tick(&mut t, ms(0))), ms(10));
    m.tick(&mut t, ms(10));
    assert_eq!(t.take_calls(), vec![Call::Preempt { p: 1, signal: true }]);
    m.tick(&mut t, us(12_499));
    assert_eq!(
        count(&t.take_calls(), Call::Preempt { p: 0, signal: true }),
        0
    );
    m.tick(&mut t, us(12_500));
    assert_eq!(
        count(&t.take_calls(), Call::Preempt { p: 0, signal: true }),
        1
    );
}

/// At a short quantum the grace is `timer_grace`, and a new timed slice
/// sets the next look a quantum plus the grace after its start: sysmon
/// does not wake for every slice end.
#[test]
fn timed_slices_at_a_short_quantum_wake_sysmon_once_per_grace() {
    let cfg = Config {
        quantum: us(100),
        ..Config::default()
    };
    let mut t = FakeTarget::new(vec![PView {
        timed: true,
        ..PView::running(1, us(0))
    }]);
    let mut m = Monitor::new(cfg, 1);
    assert_eq!(sleep_for(m.tick(&mut t, us(0))), us(1_100));
    // The timer ended slice 1 at 100 µs; slice 2, timed too, began at
    // 150 µs: sysmon, waking at 1,100 µs, sleeps until 1,250 µs.
    t.ps[0] = PView {
        timed: true,
        ..PView::running(2, us(150))
    };
    assert_eq!(sleep_for(m.tick(&mut t, us(1_100))), us(150));
    assert!(t.take_calls().is_empty());
    // Untimed, the same slice is sysmon's at its quantum.
    t.ps[0].timed = false;
    assert_eq!(sleep_for(m.tick(&mut t, us(200))), us(50));
}

#[test]
fn go_semantics_preempt_even_when_nothing_waits() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, ms(10));
    assert_eq!(preempts(&t.take_calls()), 1);
}

#[test]
fn overrun_slice_gets_exactly_one_preempt_per_tick() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, ms(10));
    assert_eq!(t.take_calls(), vec![Call::Preempt { p: 0, signal: true }]);
    for (i, now) in [us(12_500), ms(15), ms(30)].into_iter().enumerate() {
        m.tick(&mut t, now);
        let calls = t.take_calls();
        assert_eq!(preempts(&calls), 1, "tick {i}: {calls:?}");
    }
    let c = m.counters();
    assert_eq!(c.preempt_requests, 4);
    // The first request signalled; the fake keeps the signal pending after that.
    assert_eq!(c.signals, 1);
}

#[test]
fn preempt_requested_without_prior_observation() {
    // Unlike Go, the first sighting of an old slice is enough: its start is published.
    let mut t = FakeTarget::new(vec![PView::running(77, ms(100))]);
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, ms(110));
    assert_eq!(t.calls(), vec![Call::Preempt { p: 0, signal: true }]);
}

#[test]
fn advanced_schedtick_is_not_preempted() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    assert_eq!(m.tick(&mut t, ms(9)), Sleep::For(ms(1)));
    // The goroutine yielded and a new slice began at 9.5 ms.
    t.ps[0] = PView::running(2, us(9_500));
    let s = m.tick(&mut t, ms(12));
    assert!(t.calls().is_empty());
    assert_eq!(s, Sleep::For(us(7_500)));
}

#[test]
fn only_overrunning_ps_are_preempted() {
    let mut t = FakeTarget::new(vec![
        PView::running(1, ms(0)),
        PView::running(1, ms(5)),
        PView::IDLE,
        PView::running(3, ms(1)),
    ]);
    let mut m = Monitor::new(Config::default(), 4);
    m.tick(&mut t, ms(12));
    assert_eq!(
        t.calls(),
        vec![
            Call::Preempt { p: 0, signal: true },
            Call::Preempt { p: 3, signal: true },
        ]
    );
}

#[test]
fn async_off_sends_no_signal() {
    let cfg = Config {
        async_preempt: false,
        ..Config::default()
    };
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(cfg, 1);
    m.tick(&mut t, ms(10));
    m.tick(&mut t, ms(13));
    let calls: Vec<Call> = t
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Preempt { .. }))
        .collect();
    assert_eq!(
        calls,
        vec![
            Call::Preempt {
                p: 0,
                signal: false
            },
            Call::Preempt {
                p: 0,
                signal: false
            },
        ]
    );
    assert_eq!(m.counters().signals, 0);
    assert_eq!(m.counters().preempt_requests, 2);
}

#[test]
fn p_in_syscall_is_never_preempted() {
    let mut t = FakeTarget::new(vec![PView {
        schedtick: 1,
        slice_start: ms(0),
        ..PView::in_syscall(1, ms(0))
    }]);
    t.idle_or_spinning = 1;
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, ms(20));
    m.tick(&mut t, us(20_010));
    assert_eq!(preempts(&t.calls()), 0);
}

// ------------------------------------------------------------------- sleeping

#[test]
fn sleeps_until_earliest_slice_deadline() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    assert_eq!(m.tick(&mut t, ms(3)), Sleep::For(ms(7)));

    let mut t = FakeTarget::new(vec![
        PView::running(1, ms(4)),
        PView::running(1, ms(2)),
        PView::IDLE,
    ]);
    let mut m = Monitor::new(Config::default(), 3);
    assert_eq!(m.tick(&mut t, ms(5)), Sleep::For(ms(7)));
}

#[test]
fn sleep_is_clamped_to_min_and_max() {
    let cfg = Config::default();
    // 5 µs to the deadline: clamped up to min_sleep.
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(cfg.clone(), 1);
    assert_eq!(m.tick(&mut t, us(9_995)), Sleep::For(cfg.min_sleep));

    // 50 ms quantum: clamped down to max_sleep.
    let cfg = Config {
        quantum: ms(50),
        ..Config::default()
    };
    let mut m = Monitor::new(cfg.clone(), 1);
    assert_eq!(m.tick(&mut t, ms(0)), Sleep::For(cfg.max_sleep));
}

#[test]
fn overrun_slice_is_retried_after_a_quarter_quantum() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    assert_eq!(m.tick(&mut t, ms(10)), Sleep::For(us(2_500)));

    // Tiny quantum: the retry interval never drops below min_sleep.
    let cfg = Config {
        quantum: us(40),
        ..Config::default()
    };
    let mut m = Monitor::new(cfg.clone(), 1);
    assert_eq!(m.tick(&mut t, ms(1)), Sleep::For(cfg.min_sleep));
}

/// One P running a slice that started at 0, its quantum (1 ms in the
/// callers) over at 1 ms.
fn one_overrunning_p(cfg: Config) -> (FakeTarget, Monitor, Duration) {
    let t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    (t, Monitor::new(cfg, 1), ms(1))
}

/// `n` ticks, each at the time the previous one asked to be woken; their
/// sleeps.
fn tick_sleeps(m: &mut Monitor, t: &mut FakeTarget, now: &mut Duration, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let d = sleep_for(m.tick(t, *now));
            *now += d;
            d
        })
        .collect()
}

/// A signal that stays undelivered (its thread waits for a CPU) is not
/// followed by a request every quarter quantum: from the second request
/// that finds it pending, the retry interval doubles up to
/// `max_refused_retry`; a delivered signal restarts it.
#[test]
fn retries_back_off_while_the_signal_stays_pending() {
    let cfg = Config {
        quantum: ms(1),
        ..Config::default()
    };
    let (mut t, mut m, mut now) = one_overrunning_p(cfg);
    let sleeps = tick_sleeps(&mut m, &mut t, &mut now, 6);
    // Signalled, pending once (a race with the handler), then backing off
    // to the 2 ms cap.
    assert_eq!(sleeps, vec![us(250), us(250), us(500), ms(1), ms(2), ms(2)]);
    assert_eq!(count(&t.calls(), Call::Preempt { p: 0, signal: true }), 6);
    // The handler ran: back to a quarter quantum.
    t.signal_pending[0] = false;
    assert_eq!(sleep_for(m.tick(&mut t, now)), us(250));
}

#[test]
fn flag_only_retries_back_off_with_async_preemption_off() {
    let cfg = Config {
        quantum: ms(1),
        async_preempt: false,
        ..Config::default()
    };
    let (mut t, mut m, mut now) = one_overrunning_p(cfg);
    let sleeps = tick_sleeps(&mut m, &mut t, &mut now, 6);
    // The first request sets the flag; the repeats back off to the cap.
    assert_eq!(sleeps, vec![us(250), us(500), ms(1), ms(2), ms(2), ms(2)]);
    assert_eq!(
        count(
            &t.calls(),
            Call::Preempt {
                p: 0,
                signal: false
            }
        ),
        6
    );
    // The goroutine gave way: a new slice starts at the base interval.
    t.ps[0] = PView::running(2, now);
    now += ms(1);
    assert_eq!(sleep_for(m.tick(&mut t, now)), us(250));
}

#[test]
fn all_idle_parks_until_next_timer() {
    let mut t = FakeTarget::new(vec![PView::IDLE; 3]);
    let mut m = Monitor::new(Config::default(), 3);
    assert_eq!(m.tick(&mut t, ms(1)), Sleep::Idle(None));
    t.timers = vec![ms(40), ms(25)];
    assert_eq!(m.tick(&mut t, ms(2)), Sleep::Idle(Some(ms(25))));
    assert!(t.calls().is_empty());
}

#[test]
fn a_p_in_syscall_is_not_idle() {
    let mut t = FakeTarget::new(vec![PView::IDLE, PView::in_syscall(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 2);
    assert_eq!(m.tick(&mut t, ms(1)), Sleep::For(us(20)));
}

/// Run the monitor for one simulated second on a target with no deadline and
/// return the sleeps.
fn one_second_without_deadlines(cfg: Config) -> Vec<Duration> {
    // Busy Ps with preemption disabled: nothing has a deadline.
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0)), PView::running(1, ms(0))]);
    let mut m = Monitor::new(cfg, 2);
    let mut now = Duration::ZERO;
    let mut sleeps = Vec::new();
    while now < Duration::from_secs(1) {
        let d = sleep_for(m.tick(&mut t, now));
        sleeps.push(d);
        now += d;
    }
    assert!(t.calls().is_empty());
    sleeps
}

#[test]
fn idle_backoff_sequence() {
    let cfg = Config {
        quantum: Duration::MAX,
        ..Config::default()
    };
    let sleeps = one_second_without_deadlines(cfg.clone());
    // Never below min_sleep, never above max_sleep.
    assert!(sleeps
        .iter()
        .all(|&d| d >= cfg.min_sleep && d <= cfg.max_sleep));
    // 50 ticks at min_sleep, then doubling each tick up to max_sleep.
    assert!(sleeps[..50].iter().all(|&d| d == cfg.min_sleep));
    assert_eq!(sleeps[50], cfg.min_sleep * 2);
    assert_eq!(sleeps[51], cfg.min_sleep * 4);
    assert!(sleeps.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*sleeps.last().unwrap(), cfg.max_sleep);
    let first_max = sleeps.iter().position(|&d| d == cfg.max_sleep).unwrap();
    assert!(
        first_max < 50 + 12,
        "reached max_sleep after {first_max} ticks"
    );
    // Go without backoff would wake 1 s / min_sleep = 50 000 times; with it,
    // at most ~100 more times per second once backed off.
    let limit = Duration::from_secs(1).as_nanos() / cfg.min_sleep.as_nanos();
    assert!((sleeps.len() as u128) <= limit);
    assert!(sleeps.len() - 50 <= 200, "{} wake-ups", sleeps.len());
}

#[test]
fn woken_restarts_backoff() {
    let cfg = Config {
        quantum: Duration::MAX,
        ..Config::default()
    };
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(cfg.clone(), 1);
    let mut now = Duration::ZERO;
    for _ in 0..100 {
        now += sleep_for(m.tick(&mut t, now));
    }
    assert_eq!(m.tick(&mut t, now), Sleep::For(cfg.max_sleep));
    m.woken();
    for _ in 0..50 {
        assert_eq!(m.tick(&mut t, now), Sleep::For(cfg.min_sleep));
    }
    assert_eq!(m.tick(&mut t, now), Sleep::For(cfg.min_sleep * 2));
}

#[test]
fn successful_retake_restarts_backoff() {
    let cfg = Config {
        quantum: Duration::MAX,
        ..Config::default()
    };
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0)), PView::IDLE]);
    let mut m = Monitor::new(cfg.clone(), 2);
    let mut now = Duration::ZERO;
    for _ in 0..100 {
        now += sleep_for(m.tick(&mut t, now));
    }
    assert_eq!(m.tick(&mut t, now), Sleep::For(cfg.max_sleep));
    t.ps[1] = PView {
        runq_nonempty: true,
        ..PView::in_syscall(1, now)
    };
    assert_eq!(m.tick(&mut t, now), Sleep::For(cfg.syscall_retake));
    now += cfg.syscall_retake;
    // Retaken: nothing has a deadline any more and the backoff restarted.
    assert_eq!(m.tick(&mut t, now), Sleep::For(cfg.min_sleep));
    assert_eq!(t.calls(), vec![Call::Retake(1)]);
}

#[test]
fn idle_park_keeps_backoff_unless_woken() {
    let cfg = Config {
        quantum: Duration::MAX,
        ..Config::default()
    };
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(cfg.clone(), 1);
    for _ in 0..100 {
        m.tick(&mut t, ms(0));
    }
    t.ps[0] = PView::IDLE;
    assert_eq!(m.tick(&mut t, ms(0)), Sleep::Idle(None));
    // The park timed out (no woken()): still backed off.
    t.ps[0] = PView::running(2, ms(1));
    assert_eq!(m.tick(&mut t, ms(1)), Sleep::For(cfg.max_sleep));
    t.ps[0] = PView::IDLE;
    assert_eq!(m.tick(&mut t, ms(2)), Sleep::Idle(None));
    // The runtime woke sysmon because a P became busy.
    m.woken();
    t.ps[0] = PView::running(3, ms(3));
    assert_eq!(m.tick(&mut t, ms(3)), Sleep::For(cfg.min_sleep));
}

// --------------------------------------------------------------------- timers

#[test]
fn due_timers_are_fired_and_shorten_sleep() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    t.timers = vec![ms(1), ms(5), ms(1)];
    let mut m = Monitor::new(Config::default(), 1);
    // Nothing due yet: no fire_timers call, and the timer shortens the sleep.
    assert_eq!(m.tick(&mut t, us(500)), Sleep::For(us(500)));
    assert!(t.calls().is_empty());
    // Two due at 2 ms; the next one (5 ms) comes before the quantum's end.
    assert_eq!(m.tick(&mut t, ms(2)), Sleep::For(ms(3)));
    assert_eq!(t.take_calls(), vec![Call::FireTimers(ms(2))]);
    assert_eq!(m.counters().timers_fired, 2);
    assert_eq!(t.timers, vec![ms(5)]);
    // Exactly due counts as due.
    m.tick(&mut t, ms(5));
    assert_eq!(t.take_calls(), vec![Call::FireTimers(ms(5))]);
    assert_eq!(m.counters().timers_fired, 3);
}

#[test]
fn timers_fire_when_all_ps_are_idle() {
    let mut t = FakeTarget::new(vec![PView::IDLE]);
    t.timers = vec![ms(3)];
    let mut m = Monitor::new(Config::default(), 1);
    assert_eq!(m.tick(&mut t, ms(1)), Sleep::Idle(Some(ms(3))));
    assert_eq!(m.tick(&mut t, ms(3)), Sleep::Idle(None));
    assert_eq!(t.calls(), vec![Call::FireTimers(ms(3))]);
}

// ------------------------------------------------------------ syscall retake

fn syscall_with_work(tick: u64, start: Duration) -> PView {
    PView {
        runq_nonempty: true,
        ..PView::in_syscall(tick, start)
    }
}

#[test]
fn syscall_not_retaken_on_first_observation() {
    let mut t = FakeTarget::new(vec![syscall_with_work(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    // The call is already 1 ms old, but this is the first sighting of it.
    assert_eq!(m.tick(&mut t, ms(1)), Sleep::For(us(20)));
    assert!(t.calls().is_empty());
    m.tick(&mut t, us(1_020));
    assert_eq!(t.calls(), vec![Call::Retake(0)]);
    assert_eq!(t.ps[0].status, PStatus::Idle);
}

#[test]
fn syscall_retaken_after_20us_when_runq_has_work() {
    let mut t = FakeTarget::new(vec![syscall_with_work(1, us(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    assert_eq!(m.tick(&mut t, us(5)), Sleep::For(us(20)));
    // 19 µs: too young; sleep until it is 20 µs old (clamped to min_sleep).
    assert_eq!(m.tick(&mut t, us(19)), Sleep::For(us(20)));
    assert!(t.calls().is_empty());
    m.tick(&mut t, us(20));
    assert_eq!(t.calls(), vec![Call::Retake(0)]);
    assert_eq!(m.counters().retakes, 1);
}

#[test]
fn syscall_retaken_for_global_work_or_when_no_p_is_free() {
    // Global work waits.
    let mut t = FakeTarget::new(vec![PView::in_syscall(1, us(0))]);
    t.idle_or_spinning = 3;
    t.global_work = true;
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, us(1));
    m.tick(&mut t, us(30));
    assert_eq!(t.calls(), vec![Call::Retake(0)]);

    // No P idle, no M spinning.
    let mut t = FakeTarget::new(vec![PView::in_syscall(1, us(0))]);
    t.idle_or_spinning = 0;
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, us(1));
    m.tick(&mut t, us(30));
    assert_eq!(t.calls(), vec![Call::Retake(0)]);
}

#[test]
fn syscall_not_retaken_at_20us_without_work_until_quantum() {
    let mut t = FakeTarget::new(vec![PView::in_syscall(1, us(0)), PView::IDLE]);
    t.idle_or_spinning = 1;
    let mut m = Monitor::new(Config::default(), 2);
    m.tick(&mut t, us(5));
    // Old enough, but nobody wants the P: wait until the call is a quantum old.
    assert_eq!(m.tick(&mut t, us(25)), Sleep::For(us(9_975)));
    m.tick(&mut t, ms(5));
    m.tick(&mut t, us(9_999));
    assert!(t.calls().is_empty());
    m.tick(&mut t, ms(10));
    assert_eq!(t.calls(), vec![Call::Retake(0)]);
}

#[test]
fn new_syscall_restarts_observation() {
    let mut t = FakeTarget::new(vec![syscall_with_work(1, us(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, us(10));
    // The first call returned and a second one began between the ticks.
    t.ps[0] = syscall_with_work(2, us(30));
    m.tick(&mut t, us(60));
    assert!(t.calls().is_empty());
    m.tick(&mut t, us(80));
    assert_eq!(t.calls(), vec![Call::Retake(0)]);
}

#[test]
fn failed_retake_is_not_counted() {
    struct Refusing(FakeTarget);
    impl Target for Refusing {
        fn procs(&self) -> usize {
            self.0.procs()
        }
        fn observe(&self, p: usize) -> PView {
            self.0.observe(p)
        }
        fn idle_or_spinning(&self) -> usize {
            0
        }
        fn global_work(&self) -> bool {
            false
        }
        fn preempt(&mut self, p: usize, s: bool) -> crate::Preempt {
            self.0.preempt(p, s)
        }
        fn retake(&mut self, _p: usize) -> bool {
            false
        }
        fn thread_blocked(&self, p: usize) -> bool {
            self.0.thread_blocked(p)
        }
        fn handoff_blocked(&mut self, p: usize) -> bool {
            self.0.handoff_blocked(p)
        }
        fn next_timer(&self) -> Option<Duration> {
            None
        }
        fn fire_timers(&mut self, _now: Duration) -> usize {
            0
        }
    }
    let mut t = Refusing(FakeTarget::new(vec![PView::in_syscall(1, us(0))]));
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, us(1));
    m.tick(&mut t, us(30));
    assert_eq!(m.counters().retakes, 0);
}

// ----------------------------------------------------------------- blocked M

/// One P whose slice began at 0 and never ends. The ticks are at 10, 12.5,
/// 15, ... ms; after each tick the runtime refuses the signal if `refuse`.
fn blocked_scenario(
    cfg: Config,
    blocked: bool,
    refuse: bool,
    ticks: usize,
) -> (FakeTarget, Monitor) {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    t.blocked[0] = blocked;
    let mut m = Monitor::new(cfg, 1);
    let mut now = ms(10);
    for _ in 0..ticks {
        now += sleep_for(m.tick(&mut t, now));
        if refuse {
            t.ps[0].refused += 1;
            t.signal_pending[0] = false;
        }
    }
    (t, m)
}

#[test]
fn blocked_m_is_handed_off_exactly_once() {
    let (t, m) = blocked_scenario(Config::default(), true, true, 10);
    let calls = t.calls();
    assert_eq!(count(&calls, Call::HandoffBlocked(0)), 1);
    assert_eq!(m.counters().blocked_handoffs, 1);
    // Tick 1 signals, ticks 2 and 3 find the thread asleep; hand-off on tick 3,
    // without a preempt in that tick.
    assert_eq!(
        &calls[..6],
        &[
            Call::Preempt { p: 0, signal: true },
            Call::ThreadBlocked(0),
            Call::Preempt { p: 0, signal: true },
            Call::ThreadBlocked(0),
            Call::HandoffBlocked(0),
            Call::Preempt { p: 0, signal: true },
        ]
    );
    // No more thread_blocked questions for the handed-off slice.
    assert_eq!(count(&calls, Call::ThreadBlocked(0)), 2);
}

#[test]
fn blocked_m_needs_the_configured_number_of_strikes() {
    let cfg = Config {
        blocked_refusals: 4,
        ..Config::default()
    };
    let (t, _) = blocked_scenario(cfg.clone(), true, true, 4);
    assert_eq!(count(&t.calls(), Call::HandoffBlocked(0)), 0);
    let (t, _) = blocked_scenario(cfg, true, true, 5);
    assert_eq!(count(&t.calls(), Call::HandoffBlocked(0)), 1);
}

#[test]
fn no_handoff_when_thread_is_not_blocked() {
    let (t, m) = blocked_scenario(Config::default(), false, true, 10);
    let calls = t.calls();
    assert_eq!(count(&calls, Call::HandoffBlocked(0)), 0);
    assert_eq!(count(&calls, Call::ThreadBlocked(0)), 9);
    assert_eq!(m.counters().blocked_handoffs, 0);
}

#[test]
fn no_thread_query_without_refusals() {
    let (t, _) = blocked_scenario(Config::default(), true, false, 10);
    let calls = t.calls();
    assert_eq!(count(&calls, Call::ThreadBlocked(0)), 0);
    assert_eq!(count(&calls, Call::HandoffBlocked(0)), 0);
}

#[test]
fn thread_blocked_never_asked_before_overrun() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    t.blocked[0] = true;
    let mut m = Monitor::new(Config::default(), 1);
    for now in 0..10 {
        m.tick(&mut t, ms(now));
        t.ps[0].refused += 1; // e.g. refusals of GC preemption requests
    }
    assert!(t.calls().is_empty());
}

#[test]
fn blocked_m_with_async_off_needs_no_refusals() {
    let cfg = Config {
        async_preempt: false,
        ..Config::default()
    };
    let (t, m) = blocked_scenario(cfg, true, false, 5);
    let calls = t.calls();
    assert_eq!(count(&calls, Call::HandoffBlocked(0)), 1);
    assert_eq!(
        count(
            &calls,
            Call::Preempt {
                p: 0,
                signal: false
            }
        ),
        4
    );
    assert_eq!(m.counters().blocked_handoffs, 1);
}

#[test]
fn blocked_detection_disabled_with_zero_refusals() {
    let cfg = Config {
        blocked_refusals: 0,
        ..Config::default()
    };
    let (t, _) = blocked_scenario(cfg, true, true, 10);
    let calls = t.calls();
    assert_eq!(count(&calls, Call::ThreadBlocked(0)), 0);
    assert_eq!(preempts(&calls), 10);
}

/// With a short quantum sysmon retries every `quantum / 4`; the costly
/// `thread_blocked` question is still asked at most once per
/// `blocked_probe_interval`, and a blocked thread is still found.
#[test]
fn thread_blocked_is_asked_at_most_once_per_probe_interval() {
    let cfg = Config {
        quantum: us(100),
        async_preempt: false,
        ..Config::default()
    };
    for blocked in [false, true] {
        let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
        t.blocked[0] = blocked;
        let mut m = Monitor::new(cfg.clone(), 1);
        let mut now = us(100);
        while now < ms(20) {
            now += sleep_for(m.tick(&mut t, now));
        }
        let calls = t.calls();
        let asked = count(&calls, Call::ThreadBlocked(0));
        let preempts = count(
            &calls,
            Call::Preempt {
                p: 0,
                signal: false,
            },
        );
        if blocked {
            // Two strikes a probe interval apart, then one hand-off.
            assert_eq!(asked, 2, "{calls:?}");
            assert_eq!(count(&calls, Call::HandoffBlocked(0)), 1);
        } else {
            // ~20 ms of retries backing off to every 2 ms, at most one
            // question per ms.
            assert!((10..=20).contains(&preempts), "retries: {preempts}");
            assert!((5..=21).contains(&asked), "asked {asked} times in 20 ms");
        }
    }
}

#[test]
fn strikes_must_be_consecutive() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    let mut m = Monitor::new(Config::default(), 1);
    let mut now = ms(10);
    // blocked, awake, blocked, awake ...: never two strikes in a row.
    for i in 0..10 {
        t.blocked[0] = i % 2 == 0;
        now += sleep_for(m.tick(&mut t, now));
        t.ps[0].refused += 1;
    }
    assert_eq!(count(&t.calls(), Call::HandoffBlocked(0)), 0);
}

#[test]
fn new_slice_resets_blocked_bookkeeping_and_allows_a_new_handoff() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    t.blocked[0] = true;
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, ms(10)); // request
    t.ps[0].refused += 1;
    m.tick(&mut t, ms(12)); // strike 1
    t.ps[0].refused += 1;
    // A new slice (already overrunning) before the second strike.
    t.ps[0].schedtick = 2;
    t.ps[0].slice_start = ms(1);
    m.tick(&mut t, ms(14)); // fresh: request only
    t.ps[0].refused += 1;
    m.tick(&mut t, ms(16)); // strike 1 of the new slice
    assert_eq!(count(&t.calls(), Call::HandoffBlocked(0)), 0);
    t.ps[0].refused += 1;
    m.tick(&mut t, ms(18)); // strike 2: hand-off
    assert_eq!(count(&t.calls(), Call::HandoffBlocked(0)), 1);
    // The P went to another M which started slice 3; it blocks too.
    t.ps[0].schedtick = 3;
    t.ps[0].slice_start = ms(19);
    let mut now = ms(29);
    for _ in 0..3 {
        now += sleep_for(m.tick(&mut t, now));
        t.ps[0].refused += 1;
    }
    assert_eq!(count(&t.calls(), Call::HandoffBlocked(0)), 2);
    assert_eq!(m.counters().blocked_handoffs, 2);
}

#[test]
fn failed_handoff_is_not_repeated_for_the_slice() {
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0))]);
    t.blocked[0] = true;
    t.handoff_succeeds = false;
    let mut m = Monitor::new(Config::default(), 1);
    let mut now = ms(10);
    for _ in 0..10 {
        now += sleep_for(m.tick(&mut t, now));
        t.ps[0].refused += 1;
    }
    assert_eq!(count(&t.calls(), Call::HandoffBlocked(0)), 1);
    assert_eq!(m.counters().blocked_handoffs, 0);
}

// --------------------------------------------------------------------- bounds

#[test]
fn only_ps_below_procs_are_touched() {
    // Sized for more Ps than exist: the fake panics on any index >= 2.
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0)), syscall_with_work(1, ms(0))]);
    t.blocked = vec![true; 2];
    let mut m = Monitor::new(Config::default(), 16);
    let mut now = ms(10);
    for _ in 0..5 {
        now += sleep_for(m.tick(&mut t, now));
        t.ps[0].refused += 1;
    }
    assert_eq!(t.observations(), 10);

    // Sized for fewer Ps than exist: all of them are still watched.
    let mut t = FakeTarget::new(vec![PView::running(1, ms(0)); 3]);
    let mut m = Monitor::new(Config::default(), 1);
    m.tick(&mut t, ms(10));
    assert_eq!(preempts(&t.calls()), 3);

    // GOMAXPROCS shrinks between ticks.
    t.ps.truncate(1);
    t.take_calls();
    m.tick(&mut t, ms(20));
    assert_eq!(t.calls(), vec![Call::Preempt { p: 0, signal: true }]);
}

#[test]
fn no_ps_means_idle() {
    let mut t = FakeTarget::new(Vec::new());
    t.timers.push(ms(4));
    let mut m = Monitor::new(Config::default(), 0);
    assert_eq!(m.tick(&mut t, ms(1)), Sleep::Idle(Some(ms(4))));
}

/// A pseudo-random walk through P states: the monitor never panics (so never
/// touches an out-of-range P), always sleeps within bounds, preempts only
/// overrunning slices and asks about threads only for overrunning slices.
#[test]
fn random_walk_invariants() {
    let cfg = Config::default();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut t = FakeTarget::new(vec![PView::IDLE; 4]);
    let mut m = Monitor::new(cfg.clone(), 4);
    let mut now = Duration::ZERO;
    for _ in 0..5_000 {
        for p in 0..t.ps.len() {
            let v = &mut t.ps[p];
            match next(8) {
                0 => {
                    *v = PView {
                        status: PStatus::Idle,
                        ..*v
                    }
                }
                1 => {
                    v.status = PStatus::Running;
                    v.schedtick += 1;
                    v.slice_start = now;
                }
                2 => {
                    v.status = PStatus::Syscall;
                    v.syscalltick += 1;
                    v.syscall_start = now;
                }
                3 => v.refused += 1,
                4 => v.runq_nonempty = !v.runq_nonempty,
                _ => {}
            }
            t.blocked[p] = next(2) == 0;
            t.signal_pending[p] = next(2) == 0;
        }
        t.idle_or_spinning = next(3) as usize;
        t.global_work = next(4) == 0;
        if next(10) == 0 {
            t.timers.push(now + us(next(20_000)));
        }
        let views = t.ps.clone();
        let at = now;
        match m.tick(&mut t, now) {
            Sleep::For(d) => {
                assert!(d >= cfg.min_sleep && d <= cfg.max_sleep, "{d:?}");
                now += d;
            }
            Sleep::Idle(deadline) => {
                assert!(views.iter().all(|v| v.status == PStatus::Idle));
                assert!(deadline.is_none_or(|d| d > now));
                now += us(next(5_000) + 1);
            }
        }
        for call in t.take_calls() {
            match call {
                Call::Preempt { p, .. } | Call::ThreadBlocked(p) | Call::HandoffBlocked(p) => {
                    let v = views[p];
                    assert_eq!(v.status, PStatus::Running);
                    assert!(v.slice_start + cfg.quantum <= at);
                }
                Call::Retake(p) => {
                    assert_eq!(views[p].status, PStatus::Syscall);
                }
                Call::FireTimers(_) => {}
                Call::Starved { p, overrun } => {
                    let v = views[p];
                    assert_eq!(v.status, PStatus::Running);
                    assert!(overrun >= (cfg.quantum * cfg.starved_quanta).max(cfg.starved_min));
                    assert!(v.slice_start + cfg.quantum + overrun <= at);
                }
            }
        }
    }
    let c = m.counters();
    assert_eq!(c.ticks, 5_000);
    assert!(c.preempt_requests > 0 && c.retakes > 0 && c.timers_fired > 0);
}

// ---------------------------------------------------------- refusal backoff

/// A monitor with `cfg` and a one-P target whose slice started at 0 and
/// never yields.
fn one_hog(cfg: Config) -> (Monitor, FakeTarget) {
    (
        Monitor::new(cfg, 1),
        FakeTarget::new(vec![PView::running(1, ms(0))]),
    )
}

/// `Config::default()` with `quantum` and blocked-M detection off.
fn refusing_cfg(quantum: Duration) -> Config {
    Config {
        quantum,
        blocked_refusals: 0,
        ..Config::default()
    }
}

/// Ticks `m` from `from` until `until` (or until `stop` holds for a call).
/// Each preemption request is delivered at once, and refused when
/// `refuse(now)` (counted before the next tick). Returns every call with
/// the time of its tick, and the time reached.
fn drive(
    m: &mut Monitor,
    t: &mut FakeTarget,
    from: Duration,
    until: Duration,
    refuse: impl Fn(Duration) -> bool,
    stop: impl Fn(&Call) -> bool,
) -> (Vec<(Duration, Call)>, Duration) {
    let mut now = from;
    let mut calls = Vec::new();
    while now < until {
        let d = sleep_for(m.tick(t, now));
        let these = t.take_calls();
        if these.iter().any(|c| matches!(c, Call::Preempt { .. })) {
            if refuse(now) {
                t.ps[0].refused += 1;
            }
            t.signal_pending[0] = false;
        }
        let done = these.iter().any(&stop);
        calls.extend(these.into_iter().map(|c| (now, c)));
        if done {
            break;
        }
        now += d;
    }
    (calls, now)
}

/// The gaps between consecutive preemption requests among `calls`.
fn request_gaps(calls: &[(Duration, Call)]) -> Vec<Duration> {
    let at: Vec<Duration> = calls
        .iter()
        .filter(|(_, c)| matches!(c, Call::Preempt { .. }))
        .map(|&(t, _)| t)
        .collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

fn starved_calls(calls: &[(Duration, Call)]) -> Vec<(Duration, usize, Duration)> {
    calls
        .iter()
        .filter_map(|&(at, c)| match c {
            Call::Starved { p, overrun } => Some((at, p, overrun)),
            _ => None,
        })
        .collect()
}

#[test]
fn refused_retries_back_off_exponentially_to_a_bound() {
    let (mut m, mut t) = one_hog(refusing_cfg(us(100)));
    let (calls, _) = drive(&mut m, &mut t, ms(0), ms(1000), |_| true, |_| false);
    let gaps = request_gaps(&calls);
    // quantum / 4 before the first refusal is known, then doubling per
    // refusal, then 2 ms apart.
    assert_eq!(&gaps[..5], &[us(25), us(50), us(100), us(200), us(400)]);
    assert!(gaps.iter().all(|&g| g <= ms(2)), "{gaps:?}");
    assert!(gaps.windows(2).all(|w| w[0] <= w[1]), "{gaps:?}");
    // Without the backoff: one request every 25 µs, 40,000 in a second.
    let n = gaps.len() + 1;
    assert!((490..510).contains(&n), "{n} requests in 1 s");
    assert!(m.counters().ticks < 550, "{:?}", m.counters());
}

#[test]
fn an_accepted_retry_restarts_the_refusal_backoff() {
    let (mut m, mut t) = one_hog(refusing_cfg(us(100)));
    // Refused until 5 ms; after that a signal is not refused (in the
    // runtime the goroutine would switch out; the fake keeps the slice
    // running, so sysmon goes on asking at the base interval).
    let (calls, _) = drive(&mut m, &mut t, ms(0), ms(30), |now| now < ms(5), |_| false);
    let gaps = request_gaps(&calls);
    assert!(gaps.iter().any(|&g| g >= ms(2)), "{gaps:?}");
    assert_eq!(*gaps.last().unwrap(), us(25), "{gaps:?}");
}

#[test]
fn a_slice_refused_for_100_quanta_is_reported_starved_once() {
    let (mut m, mut t) = one_hog(refusing_cfg(ms(1)));
    let (calls, now) = drive(&mut m, &mut t, ms(0), ms(400), |_| true, |_| false);
    let starved = starved_calls(&calls);
    assert_eq!(starved.len(), 1, "{starved:?}");
    let (at, p, overrun) = starved[0];
    assert_eq!(p, 0);
    // Refused since the first request, at the end of the quantum (1 ms).
    assert!(overrun >= ms(100) && overrun <= ms(102), "{overrun:?}");
    assert_eq!(at, ms(1) + overrun);
    assert_eq!(m.counters().starved, 1);
    // A new slice may be reported again.
    t.ps[0] = PView::running(2, now);
    let (calls, _) = drive(&mut m, &mut t, now, now + ms(200), |_| true, |_| false);
    assert_eq!(starved_calls(&calls).len(), 1);
    assert_eq!(m.counters().starved, 2);
}

#[test]
fn an_unrefused_overrun_is_not_reported_starved() {
    // Asynchronous preemption off: nothing is refused, only requested.
    let cfg = Config {
        async_preempt: false,
        ..refusing_cfg(ms(1))
    };
    let (mut m, mut t) = one_hog(cfg);
    let (calls, _) = drive(&mut m, &mut t, ms(0), ms(400), |_| false, |_| false);
    assert!(starved_calls(&calls).is_empty());
    assert_eq!(m.counters().starved, 0);
}

#[test]
fn a_thread_asleep_in_the_kernel_is_handed_off_without_backoff_delay() {
    let (mut m, mut t) = one_hog(Config::default());
    t.blocked[0] = true;
    let (calls, now) = drive(
        &mut m,
        &mut t,
        ms(0),
        ms(40),
        |_| true,
        |c| *c == Call::HandoffBlocked(0),
    );
    // Requests at 10, 12.5, 15 ms (the refusals are the sleep's, not a
    // reason to back off); two strikes hand the P away.
    assert!(calls.iter().any(|&(_, c)| c == Call::HandoffBlocked(0)));
    assert_eq!(now, ms(15));
}

#[test]
fn a_slice_refused_only_now_and_then_is_not_reported_starved() {
    // Every third request is accepted (the goroutine is often, not
    // always, in libc): the run of refusals never lasts 100 quanta.
    let (mut m, mut t) = one_hog(refusing_cfg(us(100)));
    let n = std::cell::Cell::new(0u32);
    let refuse = |_| {
        n.set(n.get() + 1);
        !n.get().is_multiple_of(3)
    };
    let (calls, _) = drive(&mut m, &mut t, ms(0), ms(500), refuse, |_| false);
    assert!(request_gaps(&calls).iter().all(|&g| g <= us(100)));
    assert!(starved_calls(&calls).is_empty());
}

#[test]
fn starvation_needs_at_least_starved_min_at_a_short_quantum() {
    // 100 quanta of 100 µs are 10 ms; the report waits for 100 ms.
    let (mut m, mut t) = one_hog(refusing_cfg(us(100)));
    let (calls, _) = drive(&mut m, &mut t, ms(0), ms(300), |_| true, |_| false);
    let starved = starved_calls(&calls);
    assert_eq!(starved.len(), 1, "{starved:?}");
    let (_, _, overrun) = starved[0];
    assert!(overrun >= ms(100) && overrun <= ms(103), "{overrun:?}");
}
