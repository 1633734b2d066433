//! One-shot wake-up notes on a futex (Go's `note`: lock_futex.go), used to
//! park idle Ms and sysmon. No polling: a parked thread sleeps in the kernel
//! until `wake` or its timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A wake-up flag one thread sleeps on and any thread sets.
///
/// `wake` before `wait` is remembered: the next `wait` returns at once.
#[derive(Default)]
pub(crate) struct Note {
    /// 0: nothing pending; 1: woken. Written by `wake` (any thread) and
    /// consumed by `wait` (the owner thread).
    key: AtomicU32,
}

impl Note {
    pub(crate) const fn new() -> Note {
        Note {
            key: AtomicU32::new(0),
        }
    }

    /// Sets the note and wakes its sleeper, if any.
    pub(crate) fn wake(&self) {
        if self.set() {
            self.wake_futex();
        }
    }

    /// `wake` in two halves, for a waker that knows the owner may be asleep
    /// elsewhere (the driver's poller): sets the note; returns true if it
    /// was not set, so the owner may be asleep in `wait` and needs
    /// `wake_futex`. A `wait` that starts after `set` returns at once.
    pub(crate) fn set(&self) -> bool {
        // Pairs with the Acquire swap in `wait`/`take`: what the waker
        // wrote before waking is visible to the woken thread.
        self.key.swap(1, Ordering::Release) == 0
    }

    /// The second half of `wake`.
    pub(crate) fn wake_futex(&self) {
        futex_wake(&self.key);
    }

    /// Consumes the note if it is set, without sleeping.
    pub(crate) fn take(&self) -> bool {
        self.key.swap(0, Ordering::Acquire) == 1
    }

    /// Sleeps until the note is set or `timeout` passes; consumes the note.
    /// Returns true if it was woken, false on timeout.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(crate::sched::timer::deadline_after);
        loop {
            if self.key.swap(0, Ordering::Acquire) == 1 {
                return true;
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return self.key.swap(0, Ordering::Acquire) == 1,
                },
            };
            futex_wait(&self.key, 0, left);
        }
    }
}

/// `d` as a kernel timespec (seconds saturate).
pub(crate) fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

fn futex_wait(key: &AtomicU32, expect: u32, timeout: Option<Duration>) {
    let ts = timeout.map(timespec);
    let tsp = ts
        .as_ref()
        .map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `key` is a live, aligned u32; FUTEX_WAIT only reads it and
    // sleeps while it equals `expect`; `tsp` is null or points at `ts`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            key.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expect,
            tsp,
        );
    }
}

fn futex_wake(key: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on the address of a live u32 wakes at most one
    // sleeper and touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            key.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wake_before_wait_is_remembered() {
        let n = Note::new();
        n.wake();
        assert!(n.wait(Some(Duration::from_secs(5))));
        assert!(!n.wait(Some(Duration::from_millis(10))));
    }

    #[test]
    fn wake_from_another_thread() {
        let n = Arc::new(Note::new());
        let n2 = n.clone();
        let t = std::thread::spawn(move || n2.wait(None));
        std::thread::sleep(Duration::from_millis(20));
        n.wake();
        assert!(t.join().unwrap());
    }
}
