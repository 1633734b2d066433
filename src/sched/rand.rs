//! The runtime's one cheap random generator (Go's `cheaprand`/`fastrand`):
//! xorshift64 (Marsaglia), not for anything an adversary must not guess.
//! Each P keeps a state for its steal order; [`fastrand_below`] keeps one
//! per thread for select's case order.

use std::sync::atomic::{AtomicU64, Ordering};

/// Advances a xorshift64 state (never 0) and returns the new value.
#[inline]
pub(crate) fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// A number below `n` (n >= 1) from a random `x`: Lemire's multiply-shift
/// on the high half, unbiased enough for n << 2^32.
#[inline]
pub(crate) fn below(x: u64, n: usize) -> usize {
    ((x >> 32).wrapping_mul(n as u64) >> 32) as usize
}

/// A fresh non-zero seed, different per call and per process: a counter
/// mixed with the pid, the clock and a stack address (splitmix64's
/// finaliser spreads them over all 64 bits).
pub(crate) fn seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let probe = 0u8;
    let mut z = CALLS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ t
        ^ (u64::from(std::process::id()) << 32)
        ^ (std::hint::black_box(&probe) as *const u8 as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

thread_local! {
    /// This thread's state for `fastrand_below` (0: not seeded yet).
    /// Atomic because in Migrate mode a goroutine may be preempted inside
    /// `fastrand_below` and resumed on another thread, still holding this
    /// thread's address, while this thread runs another goroutine that
    /// calls it too: a lost update is harmless, a data race is not.
    static THREAD_STATE: AtomicU64 = const { AtomicU64::new(0) };
}

/// A uniformly distributed number below `n` (n >= 1), from the calling
/// thread's state.
///
/// Not inlined: a goroutine may move to another thread between calls, and
/// each call must read the current thread's state afresh.
#[inline(never)]
pub(crate) fn fastrand_below(n: usize) -> usize {
    THREAD_STATE.with(|s| {
        let mut x = s.load(Ordering::Relaxed);
        if x == 0 {
            x = seed();
        }
        let r = next(&mut x);
        s.store(x, Ordering::Relaxed);
        below(r, n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut x = seed();
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            let k = below(next(&mut x), 7);
            seen[k] += 1;
        }
        assert!(seen.iter().all(|&c| c > 700), "{seen:?}");
        assert_ne!(seed(), seed());
    }
}
