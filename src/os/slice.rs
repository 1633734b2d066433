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
}
