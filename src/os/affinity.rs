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

/// Does `mask` allow more than one CPU? A thread allowed one CPU only (a
/// process started under `taskset -c N`) runs there anyway: pinning it to
/// the CPU it runs on changes nothing.
pub(crate) fn several_cpus(mask: &libc::cpu_set_t) -> bool {
    // SAFETY: CPU_COUNT only reads the set.
    unsafe { libc::CPU_COUNT(mask) > 1 }
}

#[cfg(test)]
mod tests {
    use super::several_cpus;

    #[test]
    fn one_cpu_is_not_several() {
        // SAFETY: cpu_set_t is plain data; CPU_SET writes bits inside it.
        let (one, two) = unsafe {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut one);
            let mut two = one;
            libc::CPU_SET(1, &mut two);
            (one, two)
        };
        assert!(!several_cpus(&one));
        assert!(several_cpus(&two));
    }
}
