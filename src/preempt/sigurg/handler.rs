//! The SIGURG handler: checks the safe-point rules and, when they hold,
//! rewrites the interrupted context to call the trampoline in `arch`.
//!
//! # Safe-point rules (all must hold, or the handler leaves the context alone)
//!
//! 1. The thread is an M running a goroutine of a runtime with asynchronous
//!    preemption on, and that goroutine's preemption was requested.
//! 2. The goroutine's no-preempt count is zero (runtime internals and
//!    `no_preempt` raise it; every switch raises it first, so a signal that
//!    lands mid-switch, with the stack pointer between two stacks, is
//!    refused), and it is not on its way to the trampoline already (the
//!    M's `preempting`, set here, cleared by g0 after the switch): a second
//!    accepted signal in that window nested a second trampoline call, and
//!    the goroutine was preempted again as soon as it resumed.
//! 3. The interrupted stack pointer lies inside the goroutine's stack with room for
//!    the red zone, the trampoline frame, the XSAVE area and the scheduler
//!    call.
//! 4. The interrupted pc lies in a Rust function of the main executable
//!    (`rust_code`: not C, C++ or assembly linked into it, not an
//!    allocator's `GlobalAlloc` methods), not in libc, the loader, the vDSO
//!    or another shared object (preempting inside malloc would leave its
//!    locks and per-thread caches half-updated while the scheduler, on the
//!    same thread, allocates).
//!    The one exception: libc's memory and string routines and libm, which
//!    hold no lock and no thread state, when called from the main
//!    executable (`leaf` finds their address ranges at
//!    start-up and checks the caller; `GOSCHED_LEAFPREEMPTOFF=1` turns the
//!    exception off).
//! 5. Not inside a signal handler. A user handler that runs on the
//!    goroutine's stack (any handler installed without `SA_ONSTACK`; one
//!    with it runs on the M's alternate stack and fails rule 3) must not be
//!    preempted: it would resume, and `sigreturn`, on whatever thread runs
//!    the goroutine next (installing the first thread's alternate signal
//!    stack there), and a ThreadAffine goroutine would hold its handler
//!    open while others run. The check: no kernel signal frame lies
//!    between the interrupted sp and the stack top
//!    (`arch::signal_frame_above` finds one by the thread's alternate-stack
//!    words the kernel saves in it, whatever the handler's mask: the
//!    alternate stack as the preemption signal found it, which a goroutine
//!    may have replaced or disabled with `sigaltstack`). The
//!    signal mask is no evidence by itself: a goroutine may block signals
//!    with `pthread_sigmask` (and a thread's mask outlives the goroutine
//!    that set it); only on a thread without an alternate stack, where the
//!    scan has little to match, is a mask other than the M's normal one
//!    refused too. A goroutine that blocks SIGURG itself is not preempted
//!    asynchronously until it unblocks it (the signal waits, pending), nor
//!    is any goroutine after it on a thread it left so: see the crate
//!    docs' "Signal masks".
//!
//! 6. In ThreadAffine mode, fewer Ms are parked holding preempted
//!    goroutines than `max_threads` leaves for them
//!    (`Shared::affine_parked_limit`, half the threads beside one per P
//!    and sysmon): each such preemption parks one more thread, and past
//!    the limit the runtime would die of thread exhaustion. Except for a
//!    goroutine without a live P (retaken, or dropped by `set_procs`):
//!    parking its thread frees a CPU and starts no other thread.
//!
//! A refused attempt is counted by reason; the cooperative flag stays set
//! and sysmon retries at its next deadline.
//!
//! # The handler, step by step (`on_sigurg`)
//!
//! 1. If this thread is inside step 5 already (an application handler we
//!    forward to chained back to the action it replaced, which is ours),
//!    return at once instead of recursing.
//! 2. Find this thread's M (a thread-local read); none: skip to step 5.
//!    If the signal is this M's slice timer (`slice_timer`), make the
//!    preemption request sysmon would have made for the slice it timed.
//! 3. Check rules 1-6; if all hold, clear the request and `push_call` the
//!    trampoline into the ucontext; else count the refusal (in the M's
//!    `refused`, which sysmon reads, unless nothing was requested) and, if
//!    the signal was a wake-up request's, wake sysmon, which waits for that
//!    rather than look again at a request it signalled
//!    (`Shared::wakeup_signal_refused`).
//! 4. Acknowledge: clear the M's signal-pending flag, so sysmon may signal
//!    again.
//! 5. Forward the signal to the application's SIGURG action (the one
//!    installed before ours, or one installed over ours later, see below),
//!    so an application's own SIGURG handler keeps receiving every SIGURG;
//!    a thread-local flag marks the call for step 1.
//!
//! It calls nothing that is not async-signal-safe: atomics, thread-local
//! accesses, the system calls that wake sysmon (a futex wake or an
//! eventfd write, errno preserved), a slice timer's `timer_settime`, and
//! the application's handler.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{leaf, rust_code, slice_timer, FORWARD_FLAGS, FORWARD_HANDLER, FORWARD_MASK};
use crate::arch;
use crate::preempt::Refusal;

/// Stack the scheduler call below the trampoline may use (the Rust frames of
/// `async_preempt_yield` and the switch to g0).
const SCHED_CALL_ROOM: usize = 4096;

/// Executable ranges of the main program: [start, end) pairs, written once
/// before the handler is installed.
const MAX_RANGES: usize = 16;
static TEXT: [AtomicUsize; 2 * MAX_RANGES] = [const { AtomicUsize::new(0) }; 2 * MAX_RANGES];

/// Records the main executable's code ranges (rule 4), once, before the
/// handler is installed; returns its load address (0 if not found).
pub(super) fn read_text_ranges() -> usize {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for each object; the
        // first object is the main program.
        let info = unsafe { &*info };
        let out = data.cast::<[usize; 2]>();
        // SAFETY: `data` is the [count, load address] pair passed below.
        unsafe { (*out)[1] = info.dlpi_addr as usize };
        // SAFETY: as above; the count is its first word.
        let n = unsafe { core::ptr::addr_of_mut!((*out)[0]) };
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr has dlpi_phnum entries.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                // SAFETY: `data` is the counter passed below.
                let k = unsafe { *n };
                if k < MAX_RANGES {
                    let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                    TEXT[2 * k].store(start, Ordering::Relaxed);
                    TEXT[2 * k + 1].store(start + ph.p_memsz as usize, Ordering::Relaxed);
                    // SAFETY: as above.
                    unsafe { *n = k + 1 };
                }
            }
        }
        1 // the main program is first: stop after it
    }
    let mut out = [0usize; 2];
    // SAFETY: the callback only reads the headers it is given and writes
    // `out`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut out as *mut [usize; 2]).cast()) };
    out[1]
}

pub(super) fn in_main_text(pc: usize) -> bool {
    (0..MAX_RANGES).any(|k| {
        let s = TEXT[2 * k].load(Ordering::Relaxed);
        s != 0 && pc >= s && pc < TEXT[2 * k + 1].load(Ordering::Relaxed)
    })
}

/// Rule 4 inside the main executable: its code, and there a Rust function
/// that is not an allocator's (`rust_code`; the whole text when the
/// executable has no symbol table).
fn preemptible_main(pc: usize) -> bool {
    in_main_text(pc) && rust_code::admits(pc).unwrap_or(true)
}

/// Rule 6's exception: does this M's goroutine run with a P that goes on
/// after it (one a preemption hands to another thread)? Not if a retake
/// took its P (`M::pless_run` names this run) or `set_procs` dropped it
/// (its owner destroys it when the goroutine yields). Parking such a
/// goroutine's thread starts no other (the thread runs it now either
/// way), and the goroutine stops running beyond GOMAXPROCS: refused, a
/// call-free loop on a dropped P ran on without a P until it ended.
fn holds_a_live_p(m: &crate::sched::M, sh: &crate::sched::Shared) -> bool {
    let pless = m.pless_run.load(Ordering::Relaxed);
    if pless != 0 && pless == m.runs.load(Ordering::Relaxed) {
        return false;
    }
    // `M::p` changes only on g0; this handler interrupted the goroutine
    // (rules 1 and 2), so g0 is not writing it.
    !m.p.get().is_some_and(|p| sh.p_dropped(p))
}

/// Step 3 of the handler: checks the rules; on success rewrites `ctx`.
fn try_preempt(m: &crate::sched::M, ctx: &mut arch::SigContext) -> Result<(), Refusal> {
    let sh = m.shared_ref();
    if !sh.cfg.async_preempt {
        return Err(Refusal::AsyncOff);
    }
    // Rule 1.
    let g = m.curg.load(Ordering::Relaxed);
    if g.is_null() {
        return Err(Refusal::NotRequested);
    }
    // SAFETY: a non-null curg is the live G running on this thread.
    let g = unsafe { &*g };
    if !g.preempt.load(Ordering::Relaxed) {
        return Err(Refusal::NotRequested);
    }
    // Rule 2, and a goroutine already on its way to the trampoline.
    if g.no_preempt.load(Ordering::Relaxed) != 0 || m.preempting.load(Ordering::Relaxed) {
        return Err(Refusal::NoPreempt);
    }
    // Rule 6: a ThreadAffine preemption parks this thread with the
    // goroutine; not past the threads `max_threads` leaves for that,
    // unless the goroutine holds no P another thread must take over.
    if sh.cfg.mode == crate::builder::PreemptMode::ThreadAffine
        && sh.affine_parked.load(Ordering::Relaxed) >= sh.affine_parked_limit()
        && holds_a_live_p(m, sh)
    {
        return Err(Refusal::Threads);
    }
    // Rule 3.
    let xsave = arch::extended_state_size();
    // SAFETY: owner access from this thread: the G runs here, and the stack
    // field changes only on g0 of this M.
    let stack = unsafe { (*g.stack.get()).as_ref() };
    let need = arch::RED_ZONE + arch::PREEMPT_FRAME + xsave + SCHED_CALL_ROOM;
    let sp = ctx.sp();
    match stack {
        Some(s) if xsave != 0 && sp <= s.top && sp >= s.bottom + need => {}
        _ => return Err(Refusal::Stack),
    }
    // Rule 4, and its exception for leaf routines called from the main
    // executable.
    let stack_top = stack.map_or(0, |s| s.top);
    let leaf = || {
        // SAFETY: rule 3 checked bottom <= sp <= top: [sp, top) is the
        // live part of the goroutine's stack.
        unsafe { leaf::admits(ctx.pc(), sp, ctx.fp(), stack_top, preemptible_main) }
    };
    if !preemptible_main(ctx.pc()) && (in_main_text(ctx.pc()) || !leaf()) {
        return Err(Refusal::ForeignCode);
    }
    // Rule 5: a handler running on the goroutine's stack is recognised by
    // the kernel's signal frame it runs above, whatever the mask (an
    // `SA_NODEFER` handler with an empty `sa_mask` changes none). A mask
    // other than the M's normal one alone is no evidence: a goroutine that
    // blocked SIGPIPE with `pthread_sigmask` (and left it so for the
    // goroutines after it on this thread) used to have every preemption
    // refused. Scanned last: it reads the goroutine's live stack.
    // The thread's alternate stack as this signal found it: the runtime's,
    // or one a goroutine installed (`sigaltstack` is thread state, like
    // the mask), which the kernel saves in every frame since. Matching the
    // runtime's own only, rule 5 missed every handler on a thread whose
    // goroutine had replaced it: preempted, and in Migrate mode resumed on
    // another thread, whose `sigreturn` then installed the first thread's
    // alternate stack there too (two threads on one stack: SIGSEGV).
    let alt = ctx.altstack();
    if alt.is_none() {
        // No alternate stack: the frame scan has only zeros and a flag to
        // match, so the mask counts too (a handler normally blocks at
        // least its own signal).
        // Compare the kernel's 64-bit mask (the rest of glibc's sigset_t
        // is padding the kernel does not write).
        let now = crate::os::signal::kernel_mask(ctx.sigmask());
        // SAFETY: `M::sigmask` is written only by this thread, at M start,
        // before any goroutine runs on it.
        let normal = crate::os::signal::kernel_mask(unsafe { &*m.sigmask.get() });
        if now != normal {
            return Err(Refusal::SigMask);
        }
    }
    let top = stack.map_or(0, |s| s.top);
    // SAFETY: rule 3 checked bottom <= sp <= top: [sp, top) is the live
    // part of the goroutine's stack, mapped and ours (this thread runs it
    // and is stopped in this handler).
    if unsafe { arch::signal_frame_above(sp, top, alt) } {
        return Err(Refusal::SigMask);
    }
    g.preempt.store(false, Ordering::Relaxed);
    m.preempting.store(true, Ordering::Relaxed);
    #[cfg(test)]
    fp_walk::on_inject(ctx.pc(), ctx.fp());
    // SAFETY: rule 3 checked that the red zone and the trampoline frame
    // below sp are inside the goroutine's stack.
    unsafe { ctx.push_call(arch::async_preempt_trampoline()) };
    Ok(())
}

thread_local! {
    /// Set while this thread's `on_sigurg` forwards to the application's
    /// handler: an application handler that itself chains to the action it
    /// replaced (ours) re-enters `on_sigurg`, which then returns at once
    /// instead of forwarding back to it forever. Const-initialised, no
    /// destructor: a plain TLS access, async-signal-safe.
    static FORWARDING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// The SIGURG handler; see the module docs for its steps.
pub(super) extern "C" fn on_sigurg(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
) {
    // Step 1.
    if FORWARDING.with(|f| f.get()) {
        return;
    }
    let m = crate::sched::signal_safe_current_m();
    if !m.is_null() {
        // SAFETY: this thread's live M.
        let m = unsafe { &*m };
        m.sigurg_seq.fetch_add(1, Ordering::Relaxed);
        // Step 2, second half.
        if slice_timer::is_ours(m, info) {
            slice_timer::request(m);
        }
        // SAFETY: `uc` is this handler's ucontext.
        let mut ctx = unsafe { arch::SigContext::new(uc) };
        if let Err(why) = try_preempt(m, &mut ctx) {
            // sysmon reads this as "the goroutine it asked to yield is at
            // an unsafe point" (blocked-M evidence, refusal backoff); a
            // signal that found no request (the goroutine already switched)
            // says nothing about it.
            if why != Refusal::NotRequested {
                m.refused.fetch_add(1, Ordering::Relaxed);
                // sysmon repeats a refused wake-up request with a backoff,
                // and waits for this wake instead of looking meanwhile
                // (`Shared::wakeup_retry`). Atomics and one system call,
                // whose errno (a full eventfd: EAGAIN) must not reach the
                // interrupted code.
                let sh = m.shared_ref();
                if sh.cfg.wakeup_preempt {
                    // SAFETY: __errno_location returns this thread's errno
                    // slot; we restore what we read.
                    unsafe {
                        let errno = *libc::__errno_location();
                        sh.wakeup_signal_refused(m);
                        *libc::__errno_location() = errno;
                    }
                }
            }
            m.shared_ref().counters.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        }
        // Step 4; pairs with sysmon's CAS before tgkill.
        m.signal_pending.store(false, Ordering::Release);
        m.sigurg_seq.fetch_add(1, Ordering::Relaxed);
    }
    // Step 5; pairs with the Release store in `set_forward`.
    let handler = FORWARD_HANDLER.load(Ordering::Acquire);
    let flags = FORWARD_FLAGS.load(Ordering::Relaxed) as libc::c_int;
    if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
        // As the kernel would deliver to that action (see
        // `os::signal::mask_as_kernel`); `SA_RESETHAND`: once (it was
        // called on every SIGURG).
        let mask = FORWARD_MASK.load(Ordering::Relaxed);
        crate::os::signal::mask_as_kernel(mask, flags, sig, uc);
        if flags & libc::SA_RESETHAND != 0 {
            let _ = FORWARD_HANDLER.compare_exchange(
                handler,
                libc::SIG_DFL,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
    FORWARDING.with(|f| f.set(true));
    crate::os::signal::forward(handler, flags, sig, info, uc);
    FORWARDING.with(|f| f.set(false));
}

/// Called by the trampoline on the goroutine's stack, with every register
/// saved: yield to the scheduler; return when resumed. `frame` is the
/// trampoline's frame pointer (only the frame-walk test looks at it).
///
/// errno is part of the interrupted state too: the goroutine may be between
/// a libc call and its read of errno (`io::Error::last_os_error`), and the
/// scheduler's own system calls on this thread meanwhile (a futex wait that
/// a signal interrupts: EINTR) overwrite it; in Migrate mode the goroutine
/// resumes on another thread, with that thread's errno. So it is saved here
/// and restored through a fresh `__errno_location` after the switch (a
/// call, not a cached thread-local address).
pub(crate) extern "C" fn async_preempt_yield(frame: usize) {
    #[cfg(test)]
    fp_walk::on_park(frame);
    #[cfg(not(test))]
    let _ = frame;
    // SAFETY: __errno_location returns the calling thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    crate::sched::async_preempted();
    // LLVM knows `__errno_location` as a function of no state (`readnone`)
    // and reused the first call's result: in release builds the errno was
    // written to the old thread's slot, under whatever goroutine runs there
    // now (Migrate, 2 Ps: 3-10 % of reads wrong). Calling through an
    // opaque pointer makes it a real call on the thread we resumed on.
    let errno_location: unsafe extern "C" fn() -> *mut libc::c_int =
        std::hint::black_box(libc::__errno_location);
    // SAFETY: as above, on the thread we resumed on.
    unsafe { *errno_location() = errno };
}

/// Test hook: what a profiler sampling a preempted goroutine would see. The
/// handler records the interrupted pc and frame pointer (thread-local: the
/// trampoline runs next on the same thread); `async_preempt_yield` of the armed
/// goroutine records the trampoline frame's links and a DWARF backtrace.
#[cfg(test)]
pub(crate) mod fp_walk {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    thread_local! {
        static INJECTED: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }

    /// The goroutine whose next preemption is recorded (0: none).
    pub(crate) static ARMED_GID: AtomicU64 = AtomicU64::new(0);

    /// What one preemption of the armed goroutine looked like.
    pub(crate) struct Walk {
        /// The interrupted pc and rbp, from the signal context.
        pub(crate) pc: usize,
        pub(crate) fp: usize,
        /// `[frame + 8]` and `[frame]`: the return address and the caller's
        /// frame pointer a frame-pointer unwinder reads.
        pub(crate) ret_at_fp: usize,
        pub(crate) link_at_fp: usize,
        /// A DWARF (CFI) backtrace taken in `async_preempt_yield`.
        pub(crate) backtrace: std::backtrace::Backtrace,
    }

    pub(crate) static RESULT: Mutex<Option<Walk>> = Mutex::new(None);

    pub(super) fn on_inject(pc: usize, fp: usize) {
        INJECTED.with(|c| c.set((pc, fp)));
    }

    pub(super) fn on_park(frame: usize) {
        let gid = crate::sched::signal_safe_current_gid();
        if gid == 0
            || ARMED_GID
                .compare_exchange(gid, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (pc, fp) = INJECTED.with(|c| c.get());
        // SAFETY: `frame` is the trampoline's rbp, which points at its
        // saved-rbp slot with the resume rip above it, on this stack.
        let (ret_at_fp, link_at_fp) = unsafe {
            (
                ((frame + 8) as *const usize).read(),
                (frame as *const usize).read(),
            )
        };
        let backtrace = std::backtrace::Backtrace::force_capture();
        *RESULT.lock().unwrap() = Some(Walk {
            pc,
            fp,
            ret_at_fp,
            link_at_fp,
            backtrace,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::fp_walk::{ARMED_GID, RESULT};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A loop without calls into the runtime (debug builds may call
    /// `black_box`/`load`, which are in this executable too).
    #[inline(never)]
    fn fp_walk_hog(stop: &AtomicBool) -> u64 {
        let mut x = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        x
    }

    /// A goroutine preempted asynchronously, seen from inside the
    /// scheduler as a sampling profiler would: the trampoline's frame links
    /// to the interrupted pc and rbp (`[rbp + 8]`, `[rbp]`), and a DWARF
    /// backtrace goes through the trampoline into the interrupted function.
    #[test]
    #[cfg_attr(
        not(feature = "preempt-signal"),
        ignore = "needs asynchronous preemption (the preempt-signal feature)"
    )]
    fn frame_pointer_and_dwarf_walks_see_the_interrupted_pc() {
        let rt = crate::Builder::new()
            .procs(1)
            .preempt_quantum(Duration::from_millis(1))
            .build()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        rt.block_on(move || {
            let s2 = s.clone();
            let h = crate::spawn(move || {
                ARMED_GID.store(crate::current_id().unwrap(), Ordering::Release);
                fp_walk_hog(&s2)
            });
            let t = Instant::now();
            while RESULT.lock().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
                crate::sleep(Duration::from_millis(2));
            }
            s.store(true, Ordering::Relaxed);
            h.join().unwrap();
        });
        let walk = RESULT
            .lock()
            .unwrap()
            .take()
            .expect("the hog was never preempted asynchronously");
        assert_eq!(
            walk.ret_at_fp, walk.pc,
            "[rbp + 8] of the trampoline frame is not the interrupted pc"
        );
        assert_eq!(
            walk.link_at_fp, walk.fp,
            "[rbp] of the trampoline frame is not the interrupted rbp"
        );
        let bt = walk.backtrace.to_string();
        let park = bt.find("async_preempt_yield").expect(&bt);
        let hog = bt
            .find("fp_walk_hog")
            .unwrap_or_else(|| panic!("no hog frame:\n{bt}"));
        assert!(park < hog, "{bt}");
    }
}
