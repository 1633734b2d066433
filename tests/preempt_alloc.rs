//! Asynchronous preemption never lands inside the global allocator, when
//! that allocator is compiled into the executable (a `#[global_allocator]`
//! such as mimalloc or jemalloc: C code; here a spin-locked C-like wrapper
//! of libc's allocator). Preempted there, the goroutine kept the allocator's lock (or
//! its half-updated thread cache) while the scheduler went on allocating
//! on the same thread: a deadlock here, heap corruption with a thread-cache
//! allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gosched::Builder;

/// The allocator's lock (0 free, 1 held).
static LOCK: AtomicU64 = AtomicU64::new(0);

/// Takes `LOCK`, spinning; then holds it for a few hundred nanoseconds of
/// work, so that signals often land while it is held. Assembly, pasted
/// into the function that uses it: the whole critical section stays in one
/// unmangled function, as a C allocator's does (a debug build would
/// otherwise call out to `core`'s atomics, which are Rust functions).
macro_rules! lock_and_hold {
    () => {
        // SAFETY: a compare-and-swap loop on a static AtomicU64 (aligned,
        // live for the whole program), then a register-only loop.
        unsafe {
            core::arch::asm!(
                "2:",
                "xor eax, eax",
                "mov ecx, 1",
                "lock cmpxchg qword ptr [{lock}], rcx",
                "je 3f",
                "pause",
                "jmp 2b",
                "3:",
                "mov ecx, 300",
                "4:",
                "dec ecx",
                "jnz 4b",
                lock = in(reg) &LOCK,
                out("rax") _,
                out("rcx") _,
            )
        }
    };
}

/// Releases `LOCK` (a plain store is a release on x86-64).
macro_rules! unlock {
    () => {
        // SAFETY: a store to a static AtomicU64.
        unsafe {
            core::arch::asm!(
                "mov qword ptr [{lock}], 0",
                lock = in(reg) &LOCK,
            )
        }
    };
}

/// A C-like allocator entry: no Rust mangling, its critical section in its
/// own code and libc's. (Everything Rust is done outside the lock: in a
/// debug build even `ptr::null_mut` is a call into `core`, Rust code that
/// may be preempted, which a C allocator never makes.)
#[no_mangle]
#[inline(never)]
extern "C" fn gosched_test_c_alloc(size: usize, align: usize) -> *mut u8 {
    let align = align.max(8);
    let mut p: *mut libc::c_void = std::ptr::null_mut();
    let out: *mut *mut libc::c_void = &mut p;
    lock_and_hold!();
    // SAFETY: posix_memalign writes the block's address through `out`;
    // `align` is a power of two and at least the pointer size.
    let r = unsafe { libc::posix_memalign(out, align, size) };
    unlock!();
    if r == 0 {
        p.cast()
    } else {
        std::ptr::null_mut()
    }
}

#[no_mangle]
#[inline(never)]
extern "C" fn gosched_test_c_free(p: *mut u8) {
    let p: *mut libc::c_void = p.cast();
    lock_and_hold!();
    // SAFETY: `p` came from posix_memalign in `gosched_test_c_alloc`.
    unsafe { libc::free(p) };
    unlock!();
}

/// The global allocator: the C-like entries above.
struct CLike;

// SAFETY: blocks come from posix_memalign with the layout's size and
// alignment and go back to free.
unsafe impl GlobalAlloc for CLike {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        gosched_test_c_alloc(layout.size(), layout.align())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        gosched_test_c_free(ptr)
    }
}

#[global_allocator]
static ALLOC: CLike = CLike;

/// Three goroutines that do nothing but allocate and free, beside a
/// sleeper whose timers fire on whichever thread runs the scheduler, on
/// one P at a 100 µs quantum (ThreadAffine, the default), for 2 s: every
/// preemption is by signal and most signals land inside the allocator.
/// The child must finish; it used to deadlock within a second.
#[test]
#[cfg_attr(
    not(feature = "preempt-signal"),
    ignore = "needs asynchronous preemption (the preempt-signal feature)"
)]
fn preemption_never_lands_inside_a_compiled_in_allocator() {
    if common::child_role().is_some() {
        let rt = Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_micros(100))
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let allocs = Arc::new(AtomicU64::new(0));
        let ticks = rt.block_on(|| {
            let hogs: Vec<_> = (0..3)
                .map(|i| {
                    let (stop, allocs) = (stop.clone(), allocs.clone());
                    gosched::spawn(move || {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let v: Vec<u64> = Vec::with_capacity(16 + i);
                            black_box(&v);
                            drop(v);
                            n += 1;
                        }
                        allocs.fetch_add(n, Ordering::Relaxed);
                    })
                })
                .collect();
            let t = Instant::now();
            let mut ticks = 0u64;
            while t.elapsed() < Duration::from_secs(2) {
                gosched::sleep(Duration::from_micros(100));
                ticks += 1;
            }
            stop.store(true, Ordering::Relaxed);
            for h in hogs {
                h.join().unwrap();
            }
            ticks
        });
        let s = rt.stats();
        println!(
            "allocs={} ticks={ticks} preempt_async={} refused={}",
            allocs.load(Ordering::Relaxed),
            s.preempt_async,
            s.preempt_refused
        );
        return;
    }
    let out = common::run_child(
        "preemption_never_lands_inside_a_compiled_in_allocator",
        "alloc",
        &[],
    );
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout_u64("allocs=") > 0, "{}", out.describe());
    assert!(out.stdout_u64("ticks=") > 0, "{}", out.describe());
    // The loops were still preempted (between their allocations), not
    // only refused.
    assert!(out.stdout_u64("preempt_async=") > 0, "{}", out.describe());
}
