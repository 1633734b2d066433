//! sysmon's standing with the kernel's scheduler: a short slice, a low nice
//! value, optionally a real-time policy.
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
//! That is not enough. Measured on Linux 6.18 (a 2-vCPU VM): a thread that
//! sleeps 50 µs at a time beside two CPU-bound threads on its CPU is woken
//! on time, but every ~25 ms it is then left runnable for 4-9 ms (two or
//! three scheduler ticks) while the CPU-bound threads take turns, whatever
//! its slice (42 waits over 1 ms in 3 s; at nice -20: 1-2). sysmon beside one CPU-bound M in the bimodal benchmark: ~27
//! waits of 3-4.7 ms a second. EEVDF runs a waking thread at once only
//! while it is owed CPU time (its lag is not negative); sysmon wakes
//! thousands of times a second and each run leaves it slightly in debt,
//! so its wake-up often finds it ineligible and it waits for the next tick
//! (no high-resolution tick). Weight is what helps: at nice -20 (weight
//! 88,761 against 1,024) a run costs it 1/87 of the virtual time, and the
//! waits almost vanished (3 in 4 s). So sysmon asks for nice -20 by
//! default ([`request_nice`], best effort: it needs `CAP_SYS_NICE` or an
//! `RLIMIT_NICE` above 20; see `Builder::sysmon_nice`), and may ask for
//! `SCHED_FIFO` priority 1 (see `Builder::sysmon_realtime`):
//! [`request_realtime`] sets it with `SCHED_RESET_ON_FORK`. Both are reset
//! on fork, so threads sysmon starts (Ms it hands a P to) do not inherit
//! them. Raising the Ms' nice value instead needs no privilege (nice +5:
//! p99 2.6 ms instead of 3.5) but would hand CPU to every other process
//! and could not be undone; a long slice for the Ms, `SCHED_BATCH` Ms or no
//! slice request for sysmon changed nothing or made it worse.

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

/// The calling thread's `sched_attr`, or None where the kernel has no
/// sched_getattr.
fn get_attr() -> Option<SchedAttr> {
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
    attr.size = size;
    (r == 0).then_some(attr)
}

/// Applies `attr` to the calling thread; false where the kernel refuses.
fn set_attr(attr: &SchedAttr) -> bool {
    // SAFETY: `attr` is a valid SchedAttr whose `size` field is its size;
    // pid 0 is the calling thread; the kernel validates every field.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) };
    r == 0
}

/// Requests a `slice` long time slice for the calling thread, keeping its
/// policy and nice value. Best effort: returns false where the kernel
/// refuses (older kernels, another policy than `SCHED_NORMAL`), and then
/// nothing changed.
pub(crate) fn request_slice(slice: std::time::Duration) -> bool {
    let Some(mut attr) = get_attr().filter(|a| a.sched_policy == libc::SCHED_OTHER as u32) else {
        return false;
    };
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    set_attr(&attr)
}

/// `SCHED_FLAG_RESET_ON_FORK` of sched_setattr(2): threads the caller
/// creates start at nice 0 (and `SCHED_OTHER`), whatever the caller's.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// The lowest nice value `RLIMIT_NICE` lets an unprivileged thread take
/// (the limit is `20 - nice`), or 0 when it allows none below 0.
fn rlimit_nice_floor() -> i32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, valid and writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut lim) } != 0 {
        return 0;
    }
    nice_floor(lim.rlim_cur)
}

/// The lowest nice value an `RLIMIT_NICE` of `limit` allows (its ceiling
/// is `20 - nice`), at most 0: a limit of 30 allows -10, 40 or more -20,
/// 20 or less nothing below 0.
fn nice_floor(limit: libc::rlim_t) -> i32 {
    let limit = i32::try_from(limit.min(40)).unwrap_or(40);
    (20 - limit).clamp(-20, 0)
}

/// Gives the calling `SCHED_NORMAL` thread nice value `nice` (-20 ..= 0)
/// or, where that is refused, the lowest `RLIMIT_NICE` allows, keeping its
/// slice; threads it creates start at nice 0 (reset on fork). Returns the
/// nice value the thread has afterwards (0: nothing changed). Best effort:
/// a lower nice value needs `CAP_SYS_NICE` (root has it) or an
/// `RLIMIT_NICE` above 20.
pub(crate) fn request_nice(nice: i32) -> i32 {
    let Some(mut attr) = get_attr().filter(|a| a.sched_policy == libc::SCHED_OTHER as u32) else {
        return 0;
    };
    let was = attr.sched_nice;
    let nice = nice.clamp(-20, 0);
    for n in [nice, nice.max(rlimit_nice_floor())] {
        if n >= was {
            break; // Nothing to gain (and raising it could not be undone).
        }
        attr.sched_nice = n;
        attr.sched_flags |= SCHED_FLAG_RESET_ON_FORK;
        if set_attr(&attr) {
            return n;
        }
    }
    was
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
            let attr = super::get_attr();
            (ok, attr.is_some(), attr.map_or(0, |a| a.sched_runtime))
        });
        let (ok, read, runtime) = t.join().unwrap();
        assert!(read);
        if ok {
            assert_eq!(runtime, 100_000);
        }
    }

    #[test]
    fn rlimit_nice_maps_to_the_lowest_nice_value_it_allows() {
        use super::nice_floor;
        assert_eq!(nice_floor(0), 0);
        assert_eq!(nice_floor(20), 0);
        assert_eq!(nice_floor(21), -1);
        assert_eq!(nice_floor(30), -10);
        assert_eq!(nice_floor(40), -20);
        assert_eq!(nice_floor(libc::RLIM_INFINITY), -20);
    }

    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: getpriority has no memory arguments; errno is not needed
        // (a thread's own nice value is always readable).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    /// The nice request holds for the thread alone and keeps its slice:
    /// where it is granted (root here), the thread reads back the value
    /// returned while a thread it creates starts at 0; where it is
    /// refused, nothing changed. Never below -20, never raised.
    #[test]
    fn a_nice_request_is_not_inherited_and_keeps_the_slice() {
        let (got, mine, child, slice_kept, raised) = std::thread::spawn(|| {
            let sliced = super::request_slice(std::time::Duration::from_micros(100));
            let got = super::request_nice(-40);
            let slice_kept = !sliced || super::get_attr().unwrap().sched_runtime == 100_000;
            let child = std::thread::spawn(nice).join().unwrap();
            // Asking for more than it has is a no-op, not a rise.
            let raised = super::request_nice(0) != got || nice() != got;
            (got, nice(), child, slice_kept, raised)
        })
        .join()
        .unwrap();
        assert!((-20..=0).contains(&got), "{got}");
        assert_eq!(mine, got);
        assert_eq!(child, 0, "threads it creates start at nice 0");
        assert!(slice_kept);
        assert!(!raised);
        assert_eq!(nice(), 0, "the test thread is untouched");
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
