//! Goroutine stack overflow: the registry of stack reservations and the
//! SIGSEGV handler that reports a fault in a guard page.
//!
//! A fault in a guard page is reported as
//! `fatal: goroutine N overflowed its stack (S bytes)` and the process
//! aborts (SIGABRT). Any other SIGSEGV goes to whatever handler was installed
//! before ours (normally std's, which reports main-thread overflows), or to
//! the default action.
//!
//! signal-hook-registry refuses SIGSEGV (it cannot be handled by returning),
//! so the handler is installed with `sigaction` directly, once per process.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Once;

use crate::os::signal::{action, forward, swap_action, zeroed_sigaction, SigBuf};

/// Entries per chunk of the registry of stack reservations.
const CHUNK: usize = 64;

/// One registered reservation. `base` is written last on registration
/// (Release) and first on removal, so the handler (Acquire) sees either a
/// complete entry or none.
struct Region {
    base: AtomicUsize,
    len: AtomicUsize,
    slot: AtomicUsize,
    guard: AtomicUsize,
    /// 1 while a `Registration` owns this entry (CAS by `register_stacks`,
    /// cleared by `Registration::drop`).
    claimed: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Region = Region {
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    slot: AtomicUsize::new(0),
    guard: AtomicUsize::new(0),
    claimed: AtomicUsize::new(0),
};

/// The registry is a singly linked list of fixed chunks, append-only: a
/// chunk, once linked, is never unlinked or freed, so the SIGSEGV handler
/// can walk it with plain Acquire loads while other threads register and
/// unregister (no lock, no allocation, no reclamation in the handler).
/// Chunks are allocated by `register_stacks`, outside any handler, when
/// every entry of every chunk is taken; entries are reused after
/// `Registration::drop`. So any number of live runtimes is covered, and the
/// memory kept is bounded by the peak number of live runtimes (one chunk of
/// about 2.5 KiB per 64).
///
/// Rejected: a fixed table (beyond its size an overflow silently became a
/// plain SIGSEGV), and a lock-protected `Vec` (the handler cannot take a
/// lock: the faulting thread may hold it).
struct Chunk {
    regions: [Region; CHUNK],
    /// The next chunk, or null. Written once (CAS from null, Release);
    /// read with Acquire.
    next: AtomicPtr<Chunk>,
}

/// The first chunk, static so that a process with at most `CHUNK` live
/// runtimes never allocates one.
static FIRST: Chunk = Chunk {
    regions: [EMPTY; CHUNK],
    next: AtomicPtr::new(core::ptr::null_mut()),
};

/// The chunks of the registry, first to last. Async-signal-safe.
fn chunks() -> impl Iterator<Item = &'static Chunk> {
    let mut next: *const Chunk = &FIRST;
    core::iter::from_fn(move || {
        // SAFETY: `next` is null or a linked chunk; linked chunks are never
        // freed (see `Chunk`), so the reference is valid for 'static.
        let c: &'static Chunk = unsafe { next.as_ref()? };
        // Pairs with the Release CAS in `register_stacks`.
        next = c.next.load(Ordering::Acquire);
        Some(c)
    })
}

/// A stack reservation's entry in the overflow handler's registry; dropping
/// it removes the entry.
pub(crate) struct Registration(&'static Region);

/// Registers a stack reservation of `len` bytes at `base`, carved into
/// slots of `slot` bytes whose lowest `guard` bytes are the guard page.
pub(crate) fn register_stacks(base: usize, len: usize, slot: usize, guard: usize) -> Registration {
    install_segv_handler();
    let claim = |r: &'static Region| {
        r.claimed
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    };
    let r = loop {
        let mut last = &FIRST;
        if let Some(r) = chunks()
            .inspect(|c| last = c)
            .find_map(|c| c.regions.iter().find(|r| claim(r)))
        {
            break r;
        }
        // Every entry is taken: append a chunk. Its first entry is ours
        // before anyone can see it.
        let fresh: &'static Chunk = Box::leak(Box::new(Chunk {
            regions: [EMPTY; CHUNK],
            next: AtomicPtr::new(core::ptr::null_mut()),
        }));
        fresh.regions[0].claimed.store(1, Ordering::Relaxed);
        let fresh_ptr = fresh as *const Chunk as *mut Chunk;
        // Pairs with the Acquire load in `chunks`.
        match last.next.compare_exchange(
            core::ptr::null_mut(),
            fresh_ptr,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => break &fresh.regions[0],
            Err(_) => {
                // Another thread appended first: drop ours (nobody else saw
                // it) and look again, its chunk has free entries.
                // SAFETY: `fresh_ptr` came from Box::leak above and was never
                // published.
                drop(unsafe { Box::from_raw(fresh_ptr) });
            }
        }
    };
    r.len.store(len, Ordering::Relaxed);
    r.slot.store(slot, Ordering::Relaxed);
    r.guard.store(guard, Ordering::Relaxed);
    // Pairs with the Acquire load in `guard_hit`.
    r.base.store(base, Ordering::Release);
    Registration(r)
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.base.store(0, Ordering::Release);
        self.0.claimed.store(0, Ordering::Release);
    }
}

/// If `addr` lies in the guard page of a registered stack slot, returns the
/// usable size of that stack. Async-signal-safe.
fn guard_hit(addr: usize) -> Option<usize> {
    chunks().flat_map(|c| c.regions.iter()).find_map(|r| {
        // Pairs with the Release store in `register_stacks`.
        let base = r.base.load(Ordering::Acquire);
        if base == 0 || addr < base || addr - base >= r.len.load(Ordering::Relaxed) {
            return None;
        }
        let slot = r.slot.load(Ordering::Relaxed);
        let guard = r.guard.load(Ordering::Relaxed);
        ((addr - base) % slot < guard).then_some(slot - guard)
    })
}

/// The SIGSEGV action that was installed before ours. Written once inside
/// `INSTALL`, before our handler can run; read only by the handler.
static mut PREV_SEGV: libc::sigaction = zeroed_sigaction();

static INSTALL: Once = Once::new();

fn install_segv_handler() {
    INSTALL.call_once(|| {
        // SAFETY: installing a handler for a synchronous signal; `on_segv`
        // is async-signal-safe, and PREV_SEGV is written here before the
        // new handler can observe it (`swap_action`).
        unsafe {
            swap_action(
                libc::SIGSEGV,
                Some(&action(on_segv, libc::SA_ONSTACK)),
                core::ptr::addr_of_mut!(PREV_SEGV),
            );
        }
    });
}

/// The SIGSEGV handler.
///
/// 1. If the faulting address is in a goroutine stack's guard page, write
///    the overflow message to stderr and abort.
/// 2. Otherwise forward to the previous handler: call it if it is a
///    function, with the mask the kernel would have set for it and, for
///    `SA_RESETHAND`, the default action restored first; for SIG_DFL or
///    SIG_IGN restore the default action and
///    return, so the faulting instruction runs again and the kernel kills the
///    process with SIGSEGV as it would have without us.
extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(size) = guard_hit(addr) {
        let gid = crate::sched::signal_safe_current_gid();
        let mut buf = SigBuf::new();
        buf.push(b"fatal: goroutine ");
        buf.push_u64(gid);
        buf.push(b" overflowed its stack (");
        buf.push_u64(size as u64);
        buf.push(b" bytes)\n");
        buf.write_stderr();
        // SAFETY: abort is async-signal-safe.
        unsafe { libc::abort() };
    }
    // SAFETY: PREV_SEGV was written before this handler was installed and
    // is never written again.
    let prev = unsafe { &*core::ptr::addr_of!(PREV_SEGV) };
    let h = prev.sa_sigaction;
    if h != libc::SIG_DFL && h != libc::SIG_IGN {
        // As the kernel would for that action: its mask, and for
        // `SA_RESETHAND` the default action from now on (called as a plain
        // function each time, a crash reporter's handler that returned
        // made the fault repeat for ever, at full CPU, instead of killing
        // the process).
        crate::os::signal::mask_as_kernel(
            crate::os::signal::kernel_mask(&prev.sa_mask),
            prev.sa_flags,
            sig,
            uc,
        );
        if prev.sa_flags & libc::SA_RESETHAND != 0 {
            let dfl = zeroed_sigaction();
            // SAFETY: resetting a signal disposition is async-signal-safe.
            unsafe { libc::sigaction(libc::SIGSEGV, &dfl, core::ptr::null_mut()) };
        }
    }
    if !forward(h, prev.sa_flags, sig, info, uc) {
        // SIG_DFL or SIG_IGN before us: restore the default action; the
        // faulting instruction runs again and the kernel kills the process.
        let dfl = zeroed_sigaction(); // SIG_DFL
                                      // SAFETY: resetting a signal disposition is async-signal-safe.
        unsafe { libc::sigaction(libc::SIGSEGV, &dfl, core::ptr::null_mut()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fake reservations (the registry only compares addresses): 200 of
    /// them, past several chunks, are all recognised; dropped entries are
    /// reused instead of growing the chain.
    #[test]
    fn registry_covers_any_number_of_reservations_and_reuses_entries() {
        // Far above any real mapping of this test process, one slot each.
        let base = |i: usize| (0x6000_0000_0000 + i * 0x10_0000) & !0xfff;
        let (slot, guard) = (0x10_0000, 0x1000);
        let regs: Vec<Registration> = (0..200)
            .map(|i| register_stacks(base(i), slot, slot, guard))
            .collect();
        for i in [0, 63, 64, 150, 199] {
            assert_eq!(
                guard_hit(base(i) + 8),
                Some(slot - guard),
                "reservation {i}"
            );
            assert_eq!(guard_hit(base(i) + guard + 8), None, "reservation {i}");
        }
        let chunks_before = chunks().count();
        drop(regs);
        assert_eq!(guard_hit(base(150) + 8), None);
        let again: Vec<Registration> = (0..200)
            .map(|i| register_stacks(base(i), slot, slot, guard))
            .collect();
        assert_eq!(guard_hit(base(199) + 8), Some(slot - guard));
        // (Other tests may register runtimes meanwhile: allow one chunk.)
        assert!(chunks().count() <= chunks_before + 1);
        drop(again);
    }
}
