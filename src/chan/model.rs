//! An exhaustive model check of the park/wake handshake between a channel
//! waiter and its wakers (loom is not a dependency, so this is a small
//! hand-written model checker).
//!
//! What it models: a receiver that found the channel empty (the "owner")
//! and, concurrently, a sender (the "waker"), optionally a `close`, and
//! optionally the owner's timeout timer plus the clock. Each actor is a
//! state machine whose steps are exactly the atomic steps of the real code:
//!
//! - owner: `Receiver::recv`/`recv_timeout` -> `Sel::wait`/`wait_until` ->
//!   `g::park`/`park_until` -> `sched::gopark` (the fast-path token CAS,
//!   the switch to g0, the M's `EMPTY -> PARKED` CAS) -> on timeout
//!   `Sel::abort` and the cleanup under the lock;
//! - waker: `Chan::send_now` -> `WaitQueue::hand_to_receiver` under the lock
//!   (pop, clone the waiter, fill the slot, claim CAS, or take the value
//!   back), then `Waiter::unpark` -> `GRef::unpark` after the unlock;
//! - closer: `Chan::close` -> `release_all`, then unpark;
//! - timer: `timer::add_current` when parking with a deadline; the heap may
//!   take it out (deadline passed) and run it (an unpark) later, even after
//!   the owner cancelled it (`Timers::fire` runs tasks after unlocking).
//!
//! A section done under the channel lock is one step (the lock serialises
//! them). The checker explores every reachable state by depth-first search
//! over all enabled steps of all actors, i.e. every interleaving, and checks
//! in each final state that the owner was never left asleep with its
//! operation decided (a lost wake-up), that the value went to exactly one
//! side, and that no entry is left queued after the owner returned. Two
//! deliberately broken variants (park without a token; unpark before the
//! claim) must be caught, which shows the checker can fail.

use std::collections::HashSet;

const EMPTY: u8 = 0;
const PARKED: u8 = 1;
const NOTIFIED: u8 = 2;

const WAITING: u8 = 0;
const FIRED: u8 = 1;
const ABORTED: u8 = 2;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Owner {
    /// Lock; the channel is empty: queue the entry; unlock.
    Enqueue,
    /// `Sel::decision()` load (top of the wait loop).
    Check,
    /// `wait_until`: has the deadline passed?
    CheckClock,
    /// `park_until`: arm the timer (only with a timeout).
    ArmTimer,
    /// gopark fast path: CAS NOTIFIED -> EMPTY.
    ParkFast,
    /// On g0: CAS EMPTY -> PARKED (else reset to EMPTY and resume).
    ParkG0,
    /// Suspended; only `ready` (a PARKED -> EMPTY unpark) resumes it.
    Asleep,
    /// Back from park: cancel this round's timer.
    Cancel,
    /// `Sel::abort`: CAS WAITING -> ABORTED.
    Abort,
    /// Lock; remove the entry if still queued; unlock.
    Cleanup,
    /// Decided: take the slot.
    Take,
    Done(Outcome),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Outcome {
    Value,
    Closed,
    Timeout,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Waker {
    /// Lock; pop the entry if queued, fill the slot, claim; unlock.
    Claim,
    /// Unpark the owner (after unlocking).
    Unpark,
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct State {
    // Shared memory.
    park: u8,
    sel: u8,
    queued: bool,
    slot: bool,
    closed: bool,
    deadline_passed: bool,
    // The owner's timer: armed in the heap, and tasks taken out of the heap
    // but not yet run (each will unpark).
    timer_armed: bool,
    timer_taken: u8,
    owner: Owner,
    sender: Waker,
    /// The sender still holds its value (it did not hand it over).
    sender_kept: bool,
    closer: Waker,
}

#[derive(Clone, Copy)]
struct Scenario {
    timeout: bool,
    close: bool,
    /// Correct park: an unpark before park leaves a token (g.rs). Broken:
    /// EMPTY stays EMPTY.
    token: bool,
    /// Correct waker: claim, then unpark. Broken: unpark, then claim.
    claim_first: bool,
}

/// `GRef::unpark` as one atomic transition (its CAS loop takes effect at
/// the successful CAS).
fn unpark(s: &mut State, sc: Scenario) {
    match s.park {
        EMPTY if sc.token => s.park = NOTIFIED,
        EMPTY => {}
        PARKED => {
            s.park = EMPTY;
            debug_assert_eq!(s.owner, Owner::Asleep);
            s.owner = Owner::Cancel; // `ready`: it resumes after gopark
        }
        _ => {}
    }
}

/// Every state reachable in one step, each tagged with the actor that took
/// it.
fn successors(s: &State, sc: Scenario) -> Vec<State> {
    let mut out = Vec::new();
    // Owner.
    let mut n = *s;
    let owner_moved = match s.owner {
        Owner::Enqueue => {
            // Under the lock: an earlier close makes recv return at once.
            if s.closed {
                n.owner = Owner::Done(Outcome::Closed);
            } else {
                n.queued = true;
                n.owner = Owner::Check;
            }
            true
        }
        Owner::Check => {
            n.owner = if s.sel != WAITING {
                Owner::Take
            } else if sc.timeout {
                Owner::CheckClock
            } else {
                Owner::ParkFast
            };
            true
        }
        Owner::CheckClock => {
            n.owner = if s.deadline_passed {
                Owner::Abort
            } else {
                Owner::ArmTimer
            };
            true
        }
        Owner::ArmTimer => {
            n.timer_armed = true;
            n.owner = Owner::ParkFast;
            true
        }
        Owner::ParkFast => {
            if s.park == NOTIFIED {
                n.park = EMPTY;
                n.owner = Owner::Cancel;
            } else {
                n.owner = Owner::ParkG0;
            }
            true
        }
        Owner::ParkG0 => {
            if s.park == EMPTY {
                n.park = PARKED;
                n.owner = Owner::Asleep;
            } else {
                n.park = EMPTY;
                n.owner = Owner::Cancel;
            }
            true
        }
        Owner::Asleep => false,
        Owner::Cancel => {
            n.timer_armed = false;
            n.owner = Owner::Check;
            true
        }
        Owner::Abort => {
            if s.sel == WAITING {
                n.sel = ABORTED;
                n.owner = Owner::Cleanup;
            } else {
                n.owner = Owner::Take;
            }
            true
        }
        Owner::Cleanup => {
            n.queued = false;
            n.owner = Owner::Done(Outcome::Timeout);
            true
        }
        Owner::Take => {
            assert!(
                !s.queued,
                "owner returned with its entry still queued: {s:?}"
            );
            n.owner = Owner::Done(if s.slot {
                Outcome::Value
            } else {
                Outcome::Closed
            });
            n.slot = false;
            true
        }
        Owner::Done(_) => false,
    };
    if owner_moved {
        out.push(n);
    }
    // Sender.
    let mut n = *s;
    let sender_moved = match s.sender {
        Waker::Claim if sc.claim_first => {
            // Under the lock (`send_now`): closed -> keep the value.
            if s.queued && !s.closed {
                n.queued = false;
                n.slot = true;
                if s.sel == WAITING {
                    n.sel = FIRED;
                    n.sender_kept = false;
                    n.sender = Waker::Unpark;
                } else {
                    n.slot = false; // stale: take the value back
                    n.sender = Waker::Done;
                }
            } else {
                n.sender = Waker::Done;
            }
            true
        }
        Waker::Claim => {
            // Broken order, step 2: claim after having unparked.
            if s.queued && !s.closed && s.sel == WAITING {
                n.queued = false;
                n.slot = true;
                n.sel = FIRED;
                n.sender_kept = false;
            }
            n.sender = Waker::Done;
            true
        }
        Waker::Unpark if sc.claim_first => {
            unpark(&mut n, sc);
            n.sender = Waker::Done;
            true
        }
        Waker::Unpark => {
            // Broken order, step 1: unpark first (if a receiver is queued).
            if s.queued {
                unpark(&mut n, sc);
            }
            n.sender = Waker::Claim;
            true
        }
        Waker::Done => false,
    };
    if sender_moved {
        out.push(n);
    }
    // Closer.
    if sc.close {
        let mut n = *s;
        let moved = match s.closer {
            Waker::Claim => {
                n.closed = true;
                if s.queued {
                    n.queued = false;
                    if s.sel == WAITING {
                        n.sel = FIRED;
                        n.closer = Waker::Unpark;
                    } else {
                        n.closer = Waker::Done;
                    }
                } else {
                    n.closer = Waker::Done;
                }
                true
            }
            Waker::Unpark => {
                unpark(&mut n, sc);
                n.closer = Waker::Done;
                true
            }
            Waker::Done => false,
        };
        if moved {
            out.push(n);
        }
    }
    if sc.timeout {
        // The clock passes the deadline.
        if !s.deadline_passed {
            let mut n = *s;
            n.deadline_passed = true;
            out.push(n);
        }
        // The heap takes a due timer out (`Timers::fire`, under its lock).
        if s.timer_armed && s.deadline_passed {
            let mut n = *s;
            n.timer_armed = false;
            n.timer_taken += 1;
            out.push(n);
        }
        // A taken task runs (after the heap unlocks): unpark.
        if s.timer_taken > 0 {
            let mut n = *s;
            n.timer_taken -= 1;
            unpark(&mut n, sc);
            out.push(n);
        }
    }
    out
}

/// Explores every interleaving; returns the number of distinct states, or
/// the first violation found.
fn check(sc: Scenario) -> Result<usize, String> {
    let start = State {
        park: EMPTY,
        sel: WAITING,
        queued: false,
        slot: false,
        closed: false,
        deadline_passed: false,
        timer_armed: false,
        timer_taken: 0,
        owner: Owner::Enqueue,
        sender: if sc.claim_first {
            Waker::Claim
        } else {
            Waker::Unpark
        },
        sender_kept: true,
        closer: Waker::Claim,
    };
    let mut seen = HashSet::new();
    let mut stack = vec![start];
    seen.insert(start);
    while let Some(s) = stack.pop() {
        let next = successors(&s, sc);
        if next.is_empty() {
            final_state_ok(&s, sc)?;
        }
        for n in next {
            if seen.insert(n) {
                stack.push(n);
            }
        }
    }
    Ok(seen.len())
}

/// The properties every final state (no actor can move) must have.
fn final_state_ok(s: &State, sc: Scenario) -> Result<(), String> {
    match s.owner {
        Owner::Asleep if s.sel != WAITING => {
            Err(format!("lost wake-up: decided but asleep for ever: {s:?}"))
        }
        Owner::Asleep if sc.timeout => Err(format!(
            "lost wake-up: the timeout never woke the owner: {s:?}"
        )),
        // Asleep and undecided with nobody left to act: a true block (the
        // sender came before the receiver queued), not a protocol bug.
        Owner::Asleep => Ok(()),
        Owner::Done(Outcome::Value) if s.sender_kept => Err(format!("value duplicated: {s:?}")),
        Owner::Done(Outcome::Value) => Ok(()),
        Owner::Done(_) if !s.sender_kept => Err(format!("value lost: {s:?}")),
        Owner::Done(_) if s.queued => Err(format!("entry left queued: {s:?}")),
        Owner::Done(_) => Ok(()),
        other => Err(format!("owner stuck at {other:?}: {s:?}")),
    }
}

const GOOD: Scenario = Scenario {
    timeout: false,
    close: false,
    token: true,
    claim_first: true,
};

#[test]
fn park_handshake_never_loses_a_wakeup() {
    // Owner and sender; then with close; then with a timeout and its timer;
    // then all four actors.
    for (timeout, close) in [(false, false), (false, true), (true, false), (true, true)] {
        let sc = Scenario {
            timeout,
            close,
            ..GOOD
        };
        let states = check(sc).unwrap_or_else(|e| panic!("timeout={timeout} close={close}: {e}"));
        assert!(states > 20, "suspiciously few states explored: {states}");
    }
}

#[test]
fn model_catches_a_park_without_token() {
    let sc = Scenario {
        token: false,
        ..GOOD
    };
    let e = check(sc).expect_err("a park without a token must lose a wake-up");
    assert!(e.contains("lost wake-up"), "{e}");
}

#[test]
fn model_catches_unpark_before_claim() {
    let sc = Scenario {
        claim_first: false,
        ..GOOD
    };
    let e = check(sc).expect_err("unparking before the claim must lose a wake-up");
    assert!(e.contains("lost wake-up"), "{e}");
}
