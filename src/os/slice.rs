//! Asking the kernel for a short time slice for the calling thread.
//!
//! Linux's EEVDF scheduler (6.6+) lets a `SCHED_NORMAL` thread request its
//! slice length through `sched_setattr`'s `sched_runtime` (no privilege
//! needed; the kernel clamps it to 0.1-100 ms), and from 6.12 a waking
//! thread with a shorter slice than the running one preempts it at once
//! instead of waiting for the running thread's slice or the next tick.
//! sysmon asks for the shortest: it runs for microseconds at a time, but
//! when every CPU runs a CPU-bound goroutine, each of its wake-ups
//! (preempting a goroutine, firing a timer) waited for a tick before.
//!
//! That is not always enough. Measured on Linux 6.18 (a 2-vCPU VM): a
//! thread that sleeps 50 µs at a time beside two CPU-bound threads on its
//! CPU is woken on time, but every ~25 ms it is then left runnable for 4-9
//! ms (two or three scheduler ticks) while the CPU-bound threads take
//! turns, whatever its slice or nice value (-20 included); with one
//! CPU-bound thread this happens more rarely (max 3-4 ms over 20,000
//! sleeps). A `SCHED_FIFO` thread is never kept waiting so (max 30-100
//! µs). So sysmon can ask for `SCHED_FIFO` priority 1 (see
//! `Builder::sysmon_realtime`): [`request_realtime`] sets it with
//! `SCHED_RESET_ON_FORK`, so threads sysmon starts (Ms it hands a P to) do
//! not inherit it.

/// `struct sched_attr` of sched_setattr(2), version 1 (56 bytes).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// Requests a `slice` long time slice for the calling thread, keeping its
/// policy and nice value. Best effort: returns false where the kernel
/// refuses (older kernels, another policy than `SCHED_NORMAL`), and then
/// nothing changed.
pub(crate) fn request_slice(slice: std::time::Duration) -> bool {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: sched_getattr writes at most `size` bytes into `attr`, a
    // valid, writable SchedAttr; pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if r != 0 || attr.sched_policy != libc::SCHED_OTHER as u32 {
        return false;
    }
    attr.size = size;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid SchedAttr of the size we pass; pid 0 is the
    // calling thread; the kernel validates every field.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    r == 0
}

/// `SCHED_RESET_ON_FORK` (sched.h): threads the caller creates get
/// `SCHED_OTHER`, nice 0, whatever the caller's policy.
const SCHED_RESET_ON_FORK: libc::c_int = 0x4000_0000;

/// Makes the calling thread `SCHED_FIFO` priority 1 (the lowest real-time
/// priority), not inherited by threads it creates. Needs `CAP_SYS_NICE` or
/// an `RLIMIT_RTPRIO` of at least 1; the error is the kernel's (`EPERM`).
pub(crate) fn request_realtime() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread
    // (sched_setscheduler acts on one thread on Linux).
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | SCHED_RESET_ON_FORK, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Would [`request_realtime`] succeed in this process? Asks from a
/// short-lived thread, so that nothing of the caller's changes.
pub(crate) fn realtime_allowed() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gosched-rt-probe".into())
        .spawn(request_realtime)?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the probe thread panicked")))
}

#[cfg(test)]
mod tests {
    /// Where the kernel supports it (6.6+, as on the development
    /// machine), the request sticks: sched_getattr reads it back.
    #[test]
    fn a_slice_request_is_read_back_or_refused_cleanly() {
        let t = std::thread::spawn(|| {
            let ok = super::request_slice(std::time::Duration::from_micros(100));
            let mut attr = super::SchedAttr::default();
            let size = std::mem::size_of::<super::SchedAttr>() as u32;
            // SAFETY: as in request_slice.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_sched_getattr,
                    0,
                    &mut attr as *mut super::SchedAttr,
                    size,
                    0,
                )
            };
            (ok, r, attr.sched_runtime)
        });
        let (ok, r, runtime) = t.join().unwrap();
        assert_eq!(r, 0);
        if ok {
            assert_eq!(runtime, 100_000);
        }
    }

    /// The calling thread's scheduling policy (`SCHED_OTHER`, `SCHED_FIFO`,
    /// ...), without the reset-on-fork flag.
    fn policy() -> libc::c_int {
        // SAFETY: no arguments but the calling thread's pid 0.
        unsafe { libc::sched_getscheduler(0) & !super::SCHED_RESET_ON_FORK }
    }

    /// A real-time request succeeds where the process may (root here) and
    /// then holds for the thread alone: a thread it creates is
    /// `SCHED_OTHER` (reset on fork), and so is the caller of the probe.
    #[test]
    fn realtime_is_not_inherited() {
        if super::realtime_allowed().is_err() {
            return; // Not permitted here: nothing to check.
        }
        let (mine, child) = std::thread::spawn(|| {
            super::request_realtime().unwrap();
            let child = std::thread::spawn(policy).join().unwrap();
            (policy(), child)
        })
        .join()
        .unwrap();
        assert_eq!(mine, libc::SCHED_FIFO);
        assert_eq!(child, libc::SCHED_OTHER);
        assert_eq!(policy(), libc::SCHED_OTHER);
    }
}
