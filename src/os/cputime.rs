//! CPU time another thread of this process has used: what sysmon reads
//! before it interrupts a goroutine for a wake-up, to tell a thread that ran
//! from one the kernel left waiting for a CPU (see `sched::wakeup`).

/// Nanoseconds of CPU time thread `tid` (of this process) has used, or
/// `None` if it has exited or the clock cannot be read.
///
/// Linux encodes a thread's CPU clock in the clock id (what
/// `pthread_getcpuclockid` returns, without needing a `pthread_t`):
/// `(!tid << 3) | CPUCLOCK_PERTHREAD_MASK (4) | CPUCLOCK_SCHED (2)`, the
/// scheduler's `sum_exec_runtime`, in ns. One system call (~0.3-1 µs; the
/// vDSO serves only the global clocks).
pub(crate) fn thread_cpu_ns(tid: i32) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    let clock = ((!tid) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id (a
    // thread that exited) is an error return, not UB.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    if r != 0 {
        return None;
    }
    Some(
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::thread_cpu_ns;
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn gettid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    /// A spinning thread's clock advances by about the CPU it got; a
    /// sleeping thread's does not; an exited thread has none.
    #[test]
    fn another_threads_cpu_time_counts_running_not_waiting() {
        let stop = Arc::new(AtomicBool::new(false));
        let tids = Arc::new([AtomicI32::new(0), AtomicI32::new(0)]);
        let (s1, t1) = (stop.clone(), tids.clone());
        let spinner = std::thread::spawn(move || {
            t1[0].store(gettid(), Ordering::Release);
            while !s1.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let (s2, t2) = (stop.clone(), tids.clone());
        let sleeper = std::thread::spawn(move || {
            t2[1].store(gettid(), Ordering::Release);
            while !s2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let tid = |i: usize| loop {
            let t = tids[i].load(Ordering::Acquire);
            if t != 0 {
                break t;
            }
            std::thread::yield_now();
        };
        let (spin, sleep) = (tid(0), tid(1));
        let (a0, b0) = (thread_cpu_ns(spin).unwrap(), thread_cpu_ns(sleep).unwrap());
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        let (a1, b1) = (thread_cpu_ns(spin).unwrap(), thread_cpu_ns(sleep).unwrap());
        let wall = t.elapsed().as_nanos() as u64;
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        sleeper.join().unwrap();
        // Generous for a loaded 2-core machine: the spinner got at least
        // a tenth of the wall time, the sleeper well under that.
        assert!(a1 - a0 > wall / 10, "spinner used {} of {wall} ns", a1 - a0);
        assert!(b1 - b0 < wall / 20, "sleeper used {} of {wall} ns", b1 - b0);
        // `join` returns once the kernel cleared the thread's tid, which it
        // does as the thread exits, a moment before the task is released:
        // its clock may still answer briefly (seen once in CI).
        let gone = Instant::now();
        while thread_cpu_ns(spin).is_some() && gone.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(thread_cpu_ns(spin), None, "an exited thread has no clock");
        assert_eq!(thread_cpu_ns(0), None);
    }
}
