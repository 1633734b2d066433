//! CPU affinity of the calling thread.

/// The calling thread's CPU affinity.
pub(crate) fn thread_cpu_mask() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data, filled by the kernel; 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let ok = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0;
        ok.then_some(set)
    }
}
