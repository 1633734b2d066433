//! The goroutine scheduler (Go's proc.go).
//!
//! # Glossary (Go's words)
//!
//! - **G**, a goroutine: a stack, a saved context, park state ([`g`]).
//! - **M**, a worker OS thread ([`m`]). It runs the scheduler loop on its own
//!   thread stack ("g0", [`schedule`]) and switches into Gs; a G switches
//!   back to g0 to yield, park or exit, so the scheduler never runs on a
//!   goroutine's stack.
//! - **P**, a processor: the right to run goroutines; GOMAXPROCS of them
//!   ([`p`]). Each has a run queue ([`runq`]: `runnext`, a yield slot and a
//!   FIFO deque thieves take half of), a `schedtick`, and caches of free Gs
//!   and stacks.
//! - **sched** ([`Shared`]): the global run queue, the queue of goroutines
//!   woken outside any P, the idle P and idle M lists, the spinning-M
//!   count, the timers and the driver.
//!
//! # Go's names here
//!
//! | Go (runtime) | gosched | file |
//! | --- | --- | --- |
//! | `g`, `m`, `p` | `G`, `M`, `P` | `g.rs`, `m.rs`, `p.rs` |
//! | `sched`, `allp`, `allm` | `Shared`, `Shared::ps`, `Shared::allm` | `shared.rs` |
//! | `getg()` | `current_g()`, `this_m()` | `current.rs` |
//! | `runqput`, `runqget`, `runqsteal`, `runnext` | `runq::Owner::{put_next, put_tail, take_next, pop}`, `RunQueue::steal_into` | `runq/` |
//! | `newproc`, `gfget`, `gfput`, goid cache | `Shared::spawn_raw`, `gget_global`, `PLocal::put_free` | `newproc.rs`, `p.rs` |
//! | `schedule`, `execute`, `mstart` | `G0::run`, `G0::execute`, `mstart` | `schedule.rs` |
//! | `findRunnable`, `stealWork` | `G0::find_runnable`, `G0::steal_work` | `findrunnable.rs` |
//! | `stopm`, `stoplockedm`, `startlockedm` | the same, on `G0` (`stoplockedm` hands its P straight to the thread the P's next goroutine needs, or with that goroutine to an idle M: `G0::take_ready`, `M::nextg`; Go hands it to any M) | `idle.rs` |
//! | `gopark`, `goready`, `Gosched`, `mcall` | `gopark`, `ready`, `goyield`, `switch_to_g0` | `park.rs` |
//! | (none: Go's `Gosched` always enters the scheduler) | `yield_direct` | `direct_yield.rs` |
//! | `wakep`, `startm`, `handoffp`, `pidleget`/`pidleput`, `retake` | the same, on `Shared` | `handoff.rs` |
//! | `entersyscall`/`exitsyscall`, `LockOSThread` | `blocking`, `lock_os_thread` | `syscall.rs` |
//! | `procresize` | `procresize`, `destroyp` | `procresize.rs` |
//! | timers (time.go) | `Timers`, `Shared::add_timer` | `timer.rs` |
//! | `cheaprand` | `rand::next`, `fastrand_below` | `rand.rs` |
//! | (none: golang/go#51071) | wake-up preemption | `wakeup.rs` |
//! | (none: only `sysmon` ends slices) | slice timers, armed in `G0::execute` for a goroutine that used its whole previous slice (`G::hog`) | `schedule.rs`, `crate::preempt` |
//! | runtime teardown | `Shared::shutdown`, `abandon_goroutines` | `teardown.rs` |
//!
//! Elsewhere: preemption (`preemptone`, the signal handler, `sysmon`) is in
//! `crate::preempt`, stacks in `crate::stack`, the netpoller in
//! `crate::driver`, `checkdead` and `schedtrace` in `crate::diag`.
//!
//! # Finding work (`find_runnable`, Go's findRunnable)
//!
//! 1. Fire due timers (one atomic load when none is pending), then take a
//!    goroutine woken from outside any P (`Shared::woken`), so a woken
//!    goroutine never waits behind the runnable crowd.
//! 2. Every 61st slice take one G from the global queue first, so the global
//!    queue cannot starve behind a busy local one.
//! 3. `runnext` (the G it names inherits the current time slice), then the
//!    rest of the local queue, then a batch from the global queue.
//! 4. Ready I/O: a non-blocking poll of the netpoller, only while
//!    goroutines wait on it (`crate::driver`).
//! 5. Steal: at most (busy Ps)/2 Ms spin; a spinning M visits every other P
//!    in a random order (random start, step coprime to the count) and takes
//!    half of a victim's queue, its `runnext` only on the last of 4 passes.
//! 6. Give up: release the P, stop spinning, re-check every source, park
//!    (one parked M waits in the driver: timers, I/O and wake-ups).
//!
//! # Spinning and wake-ups (Go's "Worker thread parking/unparking")
//!
//! The problem: enough Ms must be awake to use every P that has work, yet
//! idle Ms must sleep (an idle runtime uses no CPU), and a G must never sit
//! in a queue while all Ms sleep. The protocol:
//!
//! 1. A submitter (spawn, ready, a timer) enqueues the G, then (SeqCst
//!    fence) calls `wakep`, which starts one spinning M if a P is idle and
//!    no M is already spinning.
//! 2. A spinning M that finds work stops spinning and calls `wakep`, so a
//!    successor keeps looking (parallelism ramps up one M at a time, without
//!    a thundering herd).
//! 3. The last spinning M to give up decrements the count, (SeqCst fence)
//!    re-checks every queue, and if anything is there takes a P back and
//!    spins again. Steps 1 and 3 are a Dekker pair: either the submitter sees
//!    no spinning M and wakes one, or the M sees the work.
//!
//! Rejected: waking an M on every ready (thundering herd); a central run
//! queue only (contention); handing a G directly to a woken thread (the
//! woken thread may be slow to run while others are idle).
//!
//! # Ownership of a P
//!
//! A P's local data (its `Worker`, caches) is touched only by the M that
//! owns it, and only on g0. Ownership is the P's `status` word, so that
//! sysmon can take a P from an M whose goroutine sits in a blocking call or
//! is blocked in the kernel, while that M is not looking:
//!
//! - `SCHED(m)`: M `m` is on g0 using the P.
//! - `USER(m)`: M `m` is running a goroutine; g0 is not touching the P.
//!   g0 reclaims it with a CAS `USER(m) -> SCHED(m)` when the G switches
//!   back; sysmon retakes it with a CAS `USER(m) -> HANDOFF`. The running
//!   goroutine itself may touch the P's local data for a moment (to queue a
//!   goroutine it readies or spawns, or itself when it yields) under a
//!   *claim*: it raises its M's `claiming` flag, then checks that the status
//!   is still `USER(m)`. A retake, after its CAS, waits until that flag is
//!   down. The two form a Dekker pair whose fences are asymmetric
//!   (`crate::os::membarrier`): the goroutine's side, taken millions of times a
//!   second, costs a store and a load; sysmon's, taken when a thread is
//!   stuck in the kernel, a `membarrier` system call.
//! - `SYSCALL(m)`: the goroutine is in `blocking()`; it takes the P back
//!   with a CAS, or sysmon retakes it.
//! - `HANDOFF`: in transit to another M (via its `nextp`).
//! - `IDLE`: on the idle list.
//!
//! Go keeps Ps in a global `allp` array for the same reason; we do too, and
//! hand Ps between Ms by index.

/// Every `GLOBAL_CHECK`-th slice a P looks at the global queue first (Go: 61,
/// a prime, so it does not beat in step with application patterns).
const GLOBAL_CHECK: u64 = 61;

/// Passes over all Ps a spinning M makes before giving up (Go: stealTries).
const STEAL_TRIES: usize = 4;

mod current;
mod direct_yield;
mod findrunnable;
pub(crate) mod g;
mod handoff;
mod idle;
mod m;
mod newproc;
mod p;
mod park;
mod procresize;
pub(crate) mod rand;
pub(crate) mod runq;
mod schedule;
mod shared;
pub(crate) mod syscall;
mod teardown;
pub(crate) mod timer;
mod wakeup;

pub(crate) use self::current::*;
pub(crate) use self::m::*;
pub(crate) use self::newproc::*;
pub(crate) use self::p::*;
pub(crate) use self::park::*;
pub(crate) use self::shared::*;
pub(crate) use self::wakeup::WAKEUP_GRANULARITY;
pub(crate) use crate::preempt::nopreempt::*;
