//! Dropping a runtime right after `block_on` frees it: the goroutine that
//! just published its result finishes exiting first. (Alone in its own
//! test binary: it measures the process's resident memory.)

use std::time::Duration;

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// 400 rounds of build, `block_on` (spawn and join inside), drop. The drop
/// used to abandon `block_on`'s goroutine about half the time, caught
/// between publishing its result and exiting, and an abandoned goroutine
/// keeps its runtime's state (Ps, queues, stack caches) alive: 0.4-1 MB
/// per round (1,000 rounds kept 0.4-1 GB). Now the drop waits for it.
#[test]
fn build_block_on_drop_in_a_loop_does_not_keep_the_runtimes() {
    let before = rss_kib();
    for i in 0..400u64 {
        let rt = gosched::Builder::new().procs(2).build().unwrap();
        let r = rt.block_on(move || gosched::spawn(move || i * 2).join().unwrap() + 1);
        assert_eq!(r, i * 2 + 1);
        drop(rt);
    }
    // Let the allocator settle (nothing to wait for, but harmless).
    std::thread::sleep(Duration::from_millis(10));
    let grown = rss_kib().saturating_sub(before);
    eprintln!("400 runtimes built and dropped: resident memory grew {grown} KiB");
    assert!(
        grown < 64 * 1024,
        "resident memory grew {grown} KiB over 400 runtimes: dropped runtimes were kept"
    );
}
