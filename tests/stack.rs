//! Goroutine stacks: deep use within the reservation works; running off
//! the end is reported with the goroutine's id and the stack size and
//! aborts; other segmentation faults stay plain SIGSEGVs. The crashes run
//! in a child process (this test binary re-executed).

mod common;

use std::hint::black_box;

use common::{child_role, run_child};
use gosched::Builder;

const SIGABRT: i32 = 6;
const SIGSEGV: i32 = 11;

/// Uses about `frames` * 4 KiB of stack; returns a value that depends on
/// every frame so none is optimised away.
fn deep(frames: u32) -> u64 {
    let mut buf = [0u8; 4096];
    buf[frames as usize % 4096] = frames as u8;
    let buf = black_box(&mut buf);
    if frames == 0 {
        return buf.iter().map(|&b| u64::from(b)).sum();
    }
    deep(frames - 1) + u64::from(buf[frames as usize % 4096])
}

/// Recurses until the stack runs out (the condition is opaque to the
/// compiler, so this is neither a lint nor a loop).
fn unbounded(depth: u64) -> u64 {
    let mut buf = [0u8; 1024];
    buf[depth as usize % 1024] = depth as u8;
    let buf = black_box(&mut buf);
    if black_box(depth) == u64::MAX {
        return 0;
    }
    unbounded(depth + 1) + u64::from(buf[depth as usize % 1024])
}

/// Child body: spawn a goroutine on a runtime with `stack_size` (None: the
/// default) that prints its id and overflows its stack.
fn overflow_in_goroutine(stack_size: Option<usize>) {
    overflow_among_runtimes(stack_size, 0);
}

/// As `overflow_in_goroutine`, with `others` more runtimes alive (built
/// first, so the overflowing one registers its stacks last).
fn overflow_among_runtimes(stack_size: Option<usize>, others: usize) {
    let _others: Vec<_> = (0..others)
        .map(|_| Builder::new().procs(1).build().unwrap())
        .collect();
    let mut b = Builder::new().procs(2);
    if let Some(s) = stack_size {
        b = b.stack_size(s);
    }
    let rt = b.build().unwrap();
    rt.block_on(|| {
        gosched::spawn(|| {
            eprintln!("child goroutine id: {}", gosched::current_id().unwrap());
            unbounded(0)
        })
        .join()
        .unwrap();
    });
    unreachable!("the goroutine overflowed its stack and returned");
}

/// Parent side: the child died by SIGABRT after printing the report for the
/// goroutine it named, with `size` bytes.
fn assert_overflow_report(test: &str, size: usize) {
    let out = run_child(test, "overflow", &[]);
    let id: u64 = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("child goroutine id: "))
        .unwrap_or_else(|| panic!("the child printed no goroutine id\n{}", out.describe()))
        .trim()
        .parse()
        .unwrap();
    let want = format!("fatal: goroutine {id} overflowed its stack ({size} bytes)");
    assert!(
        out.stderr.lines().any(|l| l == want),
        "no line {want:?}\n{}",
        out.describe()
    );
    assert_eq!(out.signal(), Some(SIGABRT), "{}", out.describe());
}

#[test]
fn goroutine_uses_200_kib_of_its_default_stack() {
    let _wd = common::watchdog();
    let rt = Builder::new().procs(2).build().unwrap();
    assert_eq!(rt.stats().stack_size, 1 << 20);
    let sums = rt.block_on(|| {
        let hs: Vec<_> = (0..8).map(|_| gosched::spawn(|| deep(50))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let want = deep(50);
    assert!(sums.iter().all(|&s| s == want), "{sums:?} != {want}");
}

#[test]
fn stack_overflow_reports_goroutine_id_and_aborts() {
    if child_role().is_some() {
        return overflow_in_goroutine(None);
    }
    assert_overflow_report("stack_overflow_reports_goroutine_id_and_aborts", 1 << 20);
}

#[test]
fn stack_overflow_reports_a_custom_stack_size() {
    if child_role().is_some() {
        return overflow_in_goroutine(Some(64 << 10));
    }
    assert_overflow_report("stack_overflow_reports_a_custom_stack_size", 64 << 10);
}

#[test]
fn stack_overflow_is_reported_with_100_live_runtimes() {
    // The overflow handler once knew only the first 64 runtimes' stacks;
    // past them an overflow was a silent SIGSEGV.
    if child_role().is_some() {
        return overflow_among_runtimes(Some(64 << 10), 99);
    }
    assert_overflow_report(
        "stack_overflow_is_reported_with_100_live_runtimes",
        64 << 10,
    );
}

/// Writes to an address in the never-mapped first page (a null-pointer
/// dereference at a small offset; not null itself, because debug builds
/// check `write_volatile`'s pointer for null and would abort instead).
fn segfault() {
    let p = std::ptr::without_provenance_mut::<u64>(16);
    // SAFETY: not safe at all: this deliberately faults, in a child process
    // whose only purpose is to die by SIGSEGV.
    unsafe { std::ptr::write_volatile(p, 1) };
}

fn assert_plain_segv(test: &str) {
    let out = run_child(test, "segv", &[]);
    assert!(
        out.stderr.contains("about to fault"),
        "the child did not get there\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("overflowed its stack"),
        "{}",
        out.describe()
    );
    assert_eq!(out.signal(), Some(SIGSEGV), "{}", out.describe());
}

#[test]
fn segfault_on_a_plain_thread_stays_a_sigsegv() {
    if child_role().is_some() {
        // A runtime exists (and has run goroutines), so its SIGSEGV handler
        // is installed; the fault is on a thread that is no M.
        let rt = Builder::new().procs(2).build().unwrap();
        assert_eq!(
            rt.block_on(|| gosched::spawn(|| deep(4)).join().unwrap()),
            deep(4)
        );
        std::thread::spawn(|| {
            eprintln!("about to fault");
            segfault();
        })
        .join()
        .unwrap();
        unreachable!("the write did not fault");
    }
    assert_plain_segv("segfault_on_a_plain_thread_stays_a_sigsegv");
}

/// A frame that steps more than a page below the stack without touching
/// the pages in between (C code built without stack-clash probes; Rust
/// probes every page of a large frame) lands in the 64 KiB guard region and
/// is reported as a stack overflow. Below a one-page guard it landed in the
/// neighbouring goroutine's stack (the slot below), and corrupted that
/// goroutine's oldest frames silently.
#[test]
fn a_frame_stepping_8_kib_below_the_stack_is_an_overflow() {
    const SIZE: usize = 64 << 10;
    if child_role().is_some() {
        let rt = Builder::new().procs(1).stack_size(SIZE).build().unwrap();
        rt.block_on(|| {
            gosched::spawn(|| {
                eprintln!("child goroutine id: {}", gosched::current_id().unwrap());
                // Near the stack's top (the goroutine's first frames); the
                // stack's bottom is SIZE below the top.
                let local = 0u8;
                let here = std::hint::black_box(&local) as *const u8 as usize;
                let below = here - SIZE - (8 << 10);
                // SAFETY: none: this write is the fault under test (it lies
                // 8-16 KiB below this goroutine's stack).
                unsafe { std::ptr::write_volatile(below as *mut u8, 1) };
            })
            .join()
            .unwrap();
        });
        unreachable!("the write 8 KiB below the stack did not fault");
    }
    assert_overflow_report(
        "a_frame_stepping_8_kib_below_the_stack_is_an_overflow",
        SIZE,
    );
}

#[test]
fn segfault_in_a_goroutine_off_its_guard_page_stays_a_sigsegv() {
    if child_role().is_some() {
        let rt = Builder::new().procs(2).build().unwrap();
        rt.block_on(|| {
            gosched::spawn(|| {
                eprintln!("about to fault");
                segfault();
            })
            .join()
            .unwrap();
        });
        unreachable!("the write did not fault");
    }
    assert_plain_segv("segfault_in_a_goroutine_off_its_guard_page_stays_a_sigsegv");
}

/// Builds a runtime with `stack_size`, runs `done` short goroutines (so
/// slots are carved) and leaves `abandoned` goroutines parked for good,
/// then drops it: their stacks stay mapped.
fn drop_with_abandoned(stack_size: usize, done: usize, abandoned: usize) {
    let rt = Builder::new()
        .procs(1)
        .stack_size(stack_size)
        .build()
        .unwrap();
    let (started_tx, started_rx) = gosched::chan::channel::<()>(abandoned);
    let (never_tx, never_rx) = gosched::chan::channel::<()>(0);
    let hs: Vec<_> = (0..done).map(|i| rt.spawn(move || black_box(i))).collect();
    for h in hs {
        h.join().unwrap();
    }
    for _ in 0..abandoned {
        let (started, never) = (started_tx.clone(), never_rx.clone());
        rt.spawn(move || {
            started.send(()).unwrap();
            let _ = never.recv();
        });
        started_rx.recv().unwrap();
    }
    drop(rt);
    // Kept alive: the parked goroutines' waiter entries stay linked.
    std::mem::forget(never_tx);
}

/// Runtimes dropped with goroutines still parked keep those goroutines'
/// stacks mapped; the rest of their 256 GiB reservation goes to the next
/// runtime with the same stack size. The rest used to be unmapped around
/// the kept stacks: each kept stack became a mapping of its own, and 400
/// drops with 200 such goroutines each passed `vm.max_map_count` (65,530:
/// a failed `munmap`, the debug assertion's panic here); and each drop left
/// a hole just short of a reservation: with 20 such goroutines a drop,
/// `build` failed after 510 drops in 1 run of 3 ("cannot reserve 256 GiB of
/// address space"; the user address space is 128 TiB).
#[test]
fn runtimes_dropped_with_parked_goroutines_leave_room_for_more() {
    if child_role().is_some() {
        for i in 0..400 {
            drop_with_abandoned(64 << 10, 0, 200);
            if i % 50 == 0 {
                eprintln!("{i} runtimes dropped");
            }
        }
        println!("built=400");
        return;
    }
    let out = run_child(
        "runtimes_dropped_with_parked_goroutines_leave_room_for_more",
        "drops",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout_u64("built="), 400, "{}", out.describe());
}

/// A runtime that takes over the reservation of one dropped with parked
/// goroutines (same stack size) runs its goroutines on the stacks the
/// other one had used: their guards still catch an overflow.
#[test]
fn stack_overflow_is_reported_on_a_stack_an_older_runtime_used() {
    if child_role().is_some() {
        drop_with_abandoned(64 << 10, 40, 3);
        return overflow_in_goroutine(Some(64 << 10));
    }
    assert_overflow_report(
        "stack_overflow_is_reported_on_a_stack_an_older_runtime_used",
        64 << 10,
    );
}

/// How many times the application's SIGSEGV handlers below ran.
static APP_SEGVS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Installs `h` as the SIGSEGV action with `flags` (plus `SA_SIGINFO`,
/// `SA_ONSTACK`), before any runtime exists in the child.
fn install_app_segv(
    h: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
    flags: libc::c_int,
) {
    // SAFETY: a valid action for a synchronous signal; the handlers below
    // are async-signal-safe (atomics, write, mprotect).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = h as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | flags;
        libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
    }
}

/// A crash reporter's handler: logs and returns (the fault runs again).
extern "C" fn crash_reporter(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    APP_SEGVS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let line = b"crash reporter ran\n";
    // SAFETY: write(2) from a static buffer.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// A crash reporter installed with `SA_RESETHAND` before the runtime: a
/// fault in a goroutine runs it once, then the default action kills the
/// process with SIGSEGV, as without gosched. Forwarded as a plain call, the
/// action was never reset: the fault repeated for ever at full CPU (the
/// reporter ran ~1.4 million times in 5 s) and the process never died.
#[test]
fn a_resethand_crash_reporter_runs_once_and_the_process_dies() {
    if child_role().is_some() {
        install_app_segv(crash_reporter, libc::SA_RESETHAND);
        let rt = Builder::new().procs(1).build().unwrap();
        rt.block_on(|| {
            eprintln!("about to fault");
            segfault();
        });
        unreachable!("the fault returned");
    }
    let out = run_child(
        "a_resethand_crash_reporter_runs_once_and_the_process_dies",
        "reporter",
        &[],
    );
    assert_eq!(out.signal(), Some(SIGSEGV), "{}", out.describe());
    assert_eq!(
        out.stderr.matches("crash reporter ran").count(),
        1,
        "{}",
        out.describe()
    );
}

/// Two pages a fault-driven collector protects; its handler unprotects the
/// faulting one, reading the second first (a nested fault).
static PAGE_A: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PAGE_B: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn collector(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    use std::sync::atomic::Ordering::Relaxed;
    APP_SEGVS.fetch_add(1, Relaxed);
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let page = unsafe { (*info).si_addr() } as usize & !4095;
    if page == PAGE_A.load(Relaxed) {
        // SAFETY: page B is ours; reading it while protected faults, and
        // this handler (SA_NODEFER) fixes that nested fault first.
        black_box(unsafe { std::ptr::read_volatile(PAGE_B.load(Relaxed) as *const u64) });
    }
    if page == PAGE_A.load(Relaxed) || page == PAGE_B.load(Relaxed) {
        // SAFETY: our own anonymous page.
        unsafe { libc::mprotect(page as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE) };
    }
}

/// An `SA_NODEFER` SIGSEGV handler that takes a nested fault (the pattern
/// of fault-driven collectors and JITs) works in a goroutine as without
/// gosched. Forwarded with SIGSEGV still blocked (gosched's own handler's
/// mask), the nested fault killed the process, 4 runs of 4.
#[test]
fn an_app_sigsegv_handler_may_take_a_nested_fault() {
    if child_role().is_some() {
        use std::sync::atomic::Ordering::Relaxed;
        let page = || {
            // SAFETY: a fresh private anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            p as usize
        };
        PAGE_A.store(page(), Relaxed);
        PAGE_B.store(page(), Relaxed);
        install_app_segv(collector, libc::SA_NODEFER);
        let rt = Builder::new().procs(1).build().unwrap();
        let seen = rt.block_on(|| {
            // SAFETY: page A is ours; the write faults until the handler
            // unprotects it.
            unsafe { std::ptr::write_volatile(PAGE_A.load(Relaxed) as *mut u64, 42) };
            APP_SEGVS.load(Relaxed)
        });
        println!("handled={seen}");
        return;
    }
    let out = run_child(
        "an_app_sigsegv_handler_may_take_a_nested_fault",
        "collector",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(out.stdout_u64("handled="), 2, "{}", out.describe());
}
