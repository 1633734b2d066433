//! Asymmetric fences: a free fence for a hot path, paid for by an expensive
//! one on a rare path (Linux `membarrier(2)`, as liburcu and Folly's
//! `asymmetricHeavyBarrier` use it).
//!
//! The pattern is Dekker's: the hot side stores its flag and then loads the
//! other side's word; the rare side stores its word and then loads the
//! flag. Each side needs a full fence between its store and its load, or
//! x86's store buffer lets both loads miss both stores. Here the hot side
//! (a goroutine claiming its own P, on every yield, spawn and wake-up) gets
//! away with a compiler fence, because the rare side (sysmon taking a P from
//! a blocked thread) calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`:
//! the kernel runs a full memory barrier on every CPU currently running a
//! thread of this process (an IPI), and a thread not running has passed a
//! context switch, itself a full barrier. So after [`heavy`] returns,
//! either the hot side's store is visible to the rare side, or the hot
//! side's load has not happened yet and will see the rare side's store.
//!
//! Without `membarrier` (Linux before 4.14, or a seccomp filter), [`light`]
//! is a real `fence(SeqCst)` and [`heavy`] one too: correct, and only as
//! slow as a compare-and-swap.

use std::sync::atomic::{compiler_fence, fence, AtomicU8, Ordering};

/// `membarrier` commands (linux/membarrier.h).
const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// Not yet tried, registered, or unavailable.
const UNKNOWN: u8 = 0;
const REGISTERED: u8 = 1;
const UNAVAILABLE: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Registers the process for expedited private barriers, once. Call it
/// before any thread relies on [`light`] (the runtime does when it is
/// built); calling it again is cheap.
pub(crate) fn init() {
    if STATE.load(Ordering::Acquire) != UNKNOWN {
        return;
    }
    // SAFETY: the registration command takes no pointer arguments and
    // only records a flag on the process's memory map.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) };
    let s = if r == 0 { REGISTERED } else { UNAVAILABLE };
    // Several runtimes may race here; every racer stores the same answer.
    STATE.store(s, Ordering::Release);
}

/// Whether [`light`] is only a compiler fence.
pub(crate) fn is_asymmetric() -> bool {
    STATE.load(Ordering::Relaxed) == REGISTERED
}

/// The hot side's fence between its store and its load (see the module
/// docs). Free once [`init`] registered the process.
#[inline]
pub(crate) fn light() {
    if is_asymmetric() {
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The rare side's fence: after it returns, every thread of the process
/// has executed a full barrier (see the module docs). A system call and an
/// IPI to each CPU running one of our threads: microseconds.
pub(crate) fn heavy() {
    fence(Ordering::SeqCst);
    if is_asymmetric() {
        // SAFETY: no pointer arguments; registered by `init`.
        let r = unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) };
        // Registered commands do not fail (EINVAL/EPERM only for commands
        // not registered or not supported, which `init` ruled out).
        debug_assert_eq!(r, 0, "membarrier failed after registering");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn registers_where_the_kernel_offers_it() {
        init();
        // MEMBARRIER_CMD_QUERY (0) lists the supported commands; a seccomp
        // filter that forbids the call makes it fail (then so must `init`).
        // SAFETY: the query takes no pointers.
        let supported = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
        let offered = supported > 0 && supported & libc::c_long::from(CMD_PRIVATE_EXPEDITED) != 0;
        assert_eq!(is_asymmetric(), offered, "query said {supported:#x}");
        heavy();
    }

    /// Dekker with the asymmetric pair (the store-buffering litmus test):
    /// in no round may both sides miss the other's store. The two sides
    /// (this thread and one other) start each round at the same TSC
    /// instant, so their accesses overlap; with `heavy` reduced to a plain
    /// fence, x86 lets both loads miss in about 1 round in 2,000 here
    /// (checked when this test was written).
    #[test]
    fn dekker_never_lets_both_sides_miss() {
        use std::sync::atomic::{AtomicU64, AtomicUsize};
        const ROUNDS: usize = 60_000;
        init();
        #[derive(Default)]
        struct Shared {
            /// Round number and the TSC value at which it starts.
            round: AtomicUsize,
            start: AtomicU64,
            /// On their own cache lines, as sysmon's status word and an
            /// M's claim flag are: a store then waits for the line.
            flags: [Padded; 2],
            hot_saw: AtomicBool,
            done: AtomicUsize,
        }
        #[derive(Default)]
        #[repr(align(128))]
        struct Padded(AtomicBool);
        fn wait_until(t: u64) {
            while crate::arch::ticks() < t {
                std::hint::spin_loop();
            }
        }
        let sh = Arc::new(Shared::default());
        let s = sh.clone();
        let hot = std::thread::spawn(move || {
            for r in 1..=ROUNDS {
                while s.round.load(Ordering::Acquire) != r {
                    std::hint::spin_loop();
                }
                wait_until(s.start.load(Ordering::Relaxed));
                // The hot side once registered: a store, a compiler fence
                // (no instruction) and a load.
                let saw = crate::arch::store_then_load(&s.flags[0].0, &s.flags[1].0);
                s.hot_saw.store(saw, Ordering::Relaxed);
                s.done.store(r, Ordering::Release);
            }
        });
        let mut misses = 0;
        for r in 1..=ROUNDS {
            for f in &sh.flags {
                f.0.store(false, Ordering::Relaxed);
            }
            // ~8 µs ahead: time for the other thread to see the round.
            let start = crate::arch::ticks() + 20_000;
            sh.start.store(start, Ordering::Relaxed);
            sh.round.store(r, Ordering::Release);
            wait_until(start);
            sh.flags[1].0.store(true, Ordering::Relaxed);
            heavy();
            let rare_saw = sh.flags[0].0.load(Ordering::Relaxed);
            while sh.done.load(Ordering::Acquire) != r {
                std::hint::spin_loop();
            }
            if !rare_saw && !sh.hot_saw.load(Ordering::Relaxed) {
                misses += 1;
            }
        }
        hot.join().unwrap();
        assert_eq!(
            misses, 0,
            "both sides missed each other in {misses} of {ROUNDS} rounds"
        );
    }
}
