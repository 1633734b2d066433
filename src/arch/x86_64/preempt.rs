//! x86-64 pieces of asynchronous preemption (the `preempt-signal` feature):
//! the trampoline a rewritten signal context enters, the XSAVE size it
//! needs, the ucontext accessors, the kernel signal-frame scan, and the
//! DWARF numbers the leaf-routine table reads `.eh_frame` with.
//!
//! # The trampoline
//!
//! The signal handler (`crate::preempt::sigurg::handler`) rewrites the interrupted context:
//! it stores the interrupted rip just below the 128-byte red zone, points rsp
//! at it and sets rip to the trampoline. On return from the handler the
//! thread runs the trampoline as if the interrupted instruction had called
//! it, except that the call skipped the red zone:
//!
//! ```text
//! a goroutine just after preempt injection
//!
//!   | live frame of the interrupted function |
//!   | ...                                    |  <- interrupted rsp (any alignment)
//!   | red zone: 128 bytes the leaf may use   |
//!   | resume rip                             |  <- rsp on entry to the trampoline
//!   | interrupted rbp                        |  <- trampoline's rbp
//!   | rflags                                 |
//!   | rax rbx rcx rdx rsi rdi r8 ... r15     |  14 words
//!   | padding to 64 bytes                    |
//!   | XSAVE area (size from CPUID 0xD)       |  <- 64-byte aligned; XSAVEC's
//!   |                                        |     compacted format if the CPU has it
//!   | frames of async_preempt_yield and switch      |
//! ```
//!
//! The resume rip and the saved rbp sit exactly where a `call` and a
//! `push rbp; mov rbp, rsp` prologue would put them, so a frame-pointer
//! unwinder walking from the scheduler's frames reads `[rbp + 8]` = the
//! interrupted pc and `[rbp]` = the interrupted function's rbp, and goes on
//! into its callers; the CFI says the same for DWARF unwinders (CFA = the
//! interrupted rsp, return address at CFA - 136, rbp at CFA - 144). rflags
//! is pushed after `mov rbp, rsp`, which does not change flags.
//!
//! It returns with `ret 128`: pop the resume rip, then drop the red zone, so
//! rsp is exactly the interrupted one again.

use core::arch::global_asm;

/// DWARF register number of rsp (x86-64 psABI), for reading `.eh_frame`.
pub(crate) const DWARF_SP: u64 = 7;

/// DWARF register number of rbp, the frame pointer (x86-64 psABI).
pub(crate) const DWARF_FP: u64 = 6;

/// DWARF column of the return address (x86-64 psABI).
pub(crate) const DWARF_RA: u64 = 16;

/// Bytes below rsp that a leaf function may use without moving rsp.
pub(crate) const RED_ZONE: usize = 128;

/// Bytes the trampoline pushes before the XSAVE area: resume rip, rbp,
/// rflags, fourteen general registers, and up to 63 bytes of alignment
/// padding.
pub(crate) const PREEMPT_FRAME: usize = 8 + 8 + 8 + 14 * 8 + 64;

// The asynchronous preemption trampoline.
//
// On entry (from sigreturn into a rewritten context): rsp = interrupted
// rsp - 128 - 8, [rsp] = the interrupted rip; every other register, rflags
// and the extended state hold the interrupted values. rsp may have any
// alignment. Calls `async_preempt_yield(frame)` with rdi = its rbp (the address of
// the saved rbp, just below the resume rip).
global_asm!(
    ".pushsection .text.gosched_arch_async_preempt,\"ax\",@progbits",
    ".globl gosched_arch_async_preempt",
    ".hidden gosched_arch_async_preempt",
    ".type gosched_arch_async_preempt,@function",
    ".p2align 4",
    "gosched_arch_async_preempt:",
    ".cfi_startproc",
    // A signal frame ('S' augmentation): the return address it records is
    // the interrupted pc itself, not the address after a call, so an
    // unwinder must not step back one byte to find the caller's unwind
    // info. Without this, a goroutine interrupted on the first instruction
    // of a function was unwound with the previous function's rules
    // (backtraces ended at `<unknown>` or faulted, ~1 preemption in 10 of
    // a debug-build loop calling `black_box`).
    ".cfi_signal_frame",
    ".cfi_def_cfa rsp, 136",        // the interrupted rsp is CFA ...
    ".cfi_offset 16, -136",         // ... and the resume rip sits 136 below it
    "    push rbp",                 // right below the resume rip, as a call's
    ".cfi_adjust_cfa_offset 8",     // prologue would: [rbp + 8] = interrupted
    ".cfi_offset rbp, -144",        // pc for frame-pointer unwinders
    "    mov rbp, rsp",             // anchor: everything below is found from rbp
    ".cfi_def_cfa_register rbp",    // (push and mov leave rflags alone)
    "    pushfq",                   // rflags before any arithmetic touches them
    "    push rax",                 // the fourteen other general registers
    "    push rbx",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    sub rsp, [rip + {xsave_size}]", // room for the extended state
    "    and rsp, -64",             // XSAVE needs a 64-byte aligned area
    "    xor eax, eax",             // zero the XSAVE header (bytes 512..575):
    "    mov [rsp + 512], rax",     // XRSTOR faults on a header with stale bits
    "    mov [rsp + 520], rax",
    "    mov [rsp + 528], rax",
    "    mov [rsp + 536], rax",
    "    mov [rsp + 544], rax",
    "    mov [rsp + 552], rax",
    "    mov [rsp + 560], rax",
    "    mov [rsp + 568], rax",
    "    mov eax, -1",              // request every component XCR0 enables
    "    mov edx, -1",
    "    cmp byte ptr [rip + {xsavec}], 0",
    "    je 2f",
    "    xsavec64 [rsp]",           // compacted: skips components in their
    "    jmp 3f",                   // initial state (AMX tiles, unused AVX-512)
    "2:",
    "    xsave64 [rsp]",            // x87, SSE, AVX (and AVX-512 where enabled)
    "3:",
    // The state the ABI promises at a call, for the scheduler and for
    // whatever it runs or starts before this goroutine resumes: an empty
    // x87 register stack and default control words (a thread created now
    // inherits its creator's x87 registers), DF clear. XRSTOR brings the
    // interrupted state back; MXCSR is also kept by hand, in bytes of the
    // legacy area the processor leaves to software (464..512), since
    // XRSTOR may load its default instead where the SSE state was initial.
    "    stmxcsr [rsp + 464]",
    "    ldmxcsr [rip + {mxcsr_init}]", // round to nearest, exceptions masked
    "    fninit",                   // empty x87 stack, control word 0x37f
    "    cld",                      // the ABI wants DF clear at a call
    "    mov rdi, rbp",             // park(frame): the trampoline frame (test hook)
    "    call {park}",              // into the scheduler; returns when resumed
    "    mov eax, -1",
    "    mov edx, -1",
    "    xrstor64 [rsp]",           // either format (XCOMP_BV bit 63), x87 included
    "    ldmxcsr [rsp + 464]",      // the interrupted MXCSR
    "    lea rsp, [rbp - 15 * 8]",  // back to the general registers (rflags,
    "    pop r15",                  // then fourteen, below rbp)
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rbx",
    "    pop rax",
    "    popfq",                    // rflags: nothing below changes them
    "    pop rbp",                  // the interrupted rbp; CFA is rsp-based again
    ".cfi_def_cfa rsp, 136",
    ".cfi_same_value rbp",
    "    ret 128",                  // pop the resume rip, then skip the red zone
    ".cfi_endproc",
    ".size gosched_arch_async_preempt, . - gosched_arch_async_preempt",
    ".popsection",
    xsave_size = sym XSAVE_SIZE,
    xsavec = sym USE_XSAVEC,
    mxcsr_init = sym MXCSR_INIT,
    park = sym crate::preempt::async_preempt_yield,
);

extern "C" {
    fn gosched_arch_async_preempt();
}

/// MXCSR at process start (SysV ABI): round to nearest, every exception
/// masked, no flush-to-zero. The trampoline loads it for the scheduler.
static MXCSR_INIT: u32 = 0x1f80;

/// Bytes of the XSAVE area for the features XCR0 enables (CPUID 0xD.0 EBX),
/// rounded up to 64; 0 until [`init_extended_state`] ran or when the CPU lacks XSAVE.
/// Written once by `init_extended_state` before any signal handler can run; read by
/// the trampoline and the handler.
static mut XSAVE_SIZE: usize = 0;

/// 1 if the CPU has XSAVEC (CPUID 0xD.1 EAX bit 1): the trampoline then
/// saves in the compacted format, which leaves out the components in their
/// initial state. Where XCR0 enables AMX the standard area is 11 KB (an
/// Intel Xeon VM here), nearly all of it tile data no goroutine uses: one
/// XSAVE + XRSTOR pair took ~300 ns there, XSAVEC + XRSTOR ~110 ns. Written
/// once with `XSAVE_SIZE`, before any signal handler can run.
static mut USE_XSAVEC: u8 = 0;

/// Reads the XSAVE area size and XSAVEC support from CPUID. Idempotent;
/// call before the preemption signal handler is installed.
pub(crate) fn init_extended_state() {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    let leaf1 = __cpuid(1);
    let osxsave = leaf1.ecx & (1 << 27) != 0;
    let (size, compact) = if osxsave {
        // Leaf 0xD exists when OSXSAVE is set. The standard format's size
        // is an upper bound of the compacted one's.
        let d = __cpuid_count(0xd, 0);
        let d1 = __cpuid_count(0xd, 1);
        (
            (d.ebx as usize).next_multiple_of(64),
            d1.eax & (1 << 1) != 0,
        )
    } else {
        (0, false)
    };
    // SAFETY: single aligned stores; every writer stores the same values
    // and no reader runs before the first call returns (install order).
    unsafe {
        core::ptr::addr_of_mut!(USE_XSAVEC).write_volatile(u8::from(compact));
        core::ptr::addr_of_mut!(XSAVE_SIZE).write_volatile(size);
    }
}

/// Bytes of the extended-state area the trampoline saves (0: no XSAVE, so
/// asynchronous preemption must be refused).
pub(crate) fn extended_state_size() -> usize {
    // SAFETY: a plain aligned word read of a value written before use.
    unsafe { core::ptr::addr_of!(XSAVE_SIZE).read_volatile() }
}

/// Address of the trampoline a rewritten signal context jumps to.
pub(crate) fn async_preempt_trampoline() -> usize {
    gosched_arch_async_preempt as *const () as usize
}

/// Whether a kernel signal frame lies on the stack in `[sp, top)`: that is,
/// whether the code interrupted at `sp` runs inside a signal handler that
/// was entered on this stack (rather than on the alternate signal stack).
///
/// The kernel (arch/x86/kernel/signal.c, `get_sigframe`) builds a
/// `struct rt_sigframe` below the interrupted code's red zone and enters
/// the handler with rsp pointing at it:
///
/// ```text
///   | interrupted frames             |  <- rsp of the code the signal interrupted
///   | red zone (128 bytes)           |
///   | XSAVE image (64-aligned)       |  <- uc_mcontext.fpregs points here
///   | siginfo                        |
///   | ucontext: uc_flags, uc_link,   |
///   |   uc_stack = the thread's      |
///   |   sigaltstack (sp, flags, size)|
///   |   uc_mcontext (gregs: .. rsp ..|
///   | pretcode (sa_restorer)         |  <- frame start, 8 mod 16
///   | the handler's frames           |
/// ```
///
/// The scan looks, at every address `a` = 8 mod 16 from `sp` up, for that
/// shape: `uc_stack` equal to the thread's alternate signal stack as it is
/// now (`alt`: the `uc_stack` of the preemption signal's own frame, since
/// a goroutine may have replaced the runtime's with `sigaltstack`), and a
/// saved rsp in `(a, top]`. An alternate stack's address and size are two
/// exact words that ordinary data on a goroutine stack does not hold. With
/// the alternate stack disabled (`alt` is `None`) the frame holds zeros
/// and `SS_DISABLE`, which zeroed data can mimic but for the flag: it then
/// also needs `uc_mcontext.fpregs` to point, 64-aligned, between the
/// machine context and the saved rsp (a false match refuses one
/// preemption). It does not depend on the signal mask (an `SA_NODEFER`
/// handler with an empty `sa_mask` leaves it unchanged) nor on the
/// handler's restorer. Cost: one compare per 16 bytes of live stack.
/// Async-signal-safe.
///
/// # Safety
/// `[sp, top)` must be readable (the live part of the interrupted thread's
/// current stack, the thread being stopped in our handler).
pub(crate) unsafe fn signal_frame_above(
    sp: usize,
    top: usize,
    alt: Option<(usize, usize)>,
) -> bool {
    use core::mem::offset_of;
    const UC: usize = 8; // the ucontext follows pretcode
    const SS_SP: usize =
        UC + offset_of!(libc::ucontext_t, uc_stack) + offset_of!(libc::stack_t, ss_sp);
    const SS_FLAGS: usize =
        UC + offset_of!(libc::ucontext_t, uc_stack) + offset_of!(libc::stack_t, ss_flags);
    const SS_SIZE: usize =
        UC + offset_of!(libc::ucontext_t, uc_stack) + offset_of!(libc::stack_t, ss_size);
    const RSP: usize = UC
        + offset_of!(libc::ucontext_t, uc_mcontext)
        + offset_of!(libc::mcontext_t, gregs)
        + 8 * libc::REG_RSP as usize;
    const FPREGS: usize =
        UC + offset_of!(libc::ucontext_t, uc_mcontext) + offset_of!(libc::mcontext_t, fpregs);
    const END: usize = UC + core::mem::size_of::<libc::ucontext_t>();
    if top < END || sp > top - END {
        return false;
    }
    let word = |a: usize| {
        // SAFETY: the callers below keep `a + 8 <= top`; the range is
        // readable per the contract.
        unsafe { (a as *const usize).read_volatile() }
    };
    // The first address >= sp that is 8 mod 16.
    let mut a = ((sp + 8 + 15) & !15) - 8;
    while a <= top - END {
        let shape = match alt {
            Some((alt_sp, alt_size)) => word(a + SS_SP) == alt_sp && word(a + SS_SIZE) == alt_size,
            None => {
                // `ss_flags` is an int: the padding after it is not written.
                word(a + SS_SP) == 0
                    && word(a + SS_SIZE) == 0
                    && word(a + SS_FLAGS) as u32 == libc::SS_DISABLE as u32
                    && {
                        let fp = word(a + FPREGS);
                        fp.is_multiple_of(64) && fp > a + FPREGS && fp < word(a + RSP)
                    }
            }
        };
        if shape {
            let saved_sp = word(a + RSP);
            if saved_sp > a && saved_sp <= top {
                return true;
            }
        }
        a += 16;
    }
    false
}

/// The machine context of an interrupted thread, as the kernel saved it for
/// a signal handler (Go's `sigctxt`).
pub(crate) struct SigContext {
    uc: *mut libc::ucontext_t,
}

impl SigContext {
    /// # Safety
    /// `uc` must be the third argument of an `SA_SIGINFO` handler, used only
    /// while that handler runs.
    pub(crate) unsafe fn new(uc: *mut libc::c_void) -> SigContext {
        SigContext { uc: uc.cast() }
    }

    fn greg(&self, r: libc::c_int) -> usize {
        // SAFETY: `uc` is the live ucontext of this handler (constructor contract).
        unsafe { (*self.uc).uc_mcontext.gregs[r as usize] as usize }
    }

    fn set_greg(&mut self, r: libc::c_int, v: usize) {
        // SAFETY: as in `greg`; the kernel reloads gregs at sigreturn.
        unsafe { (*self.uc).uc_mcontext.gregs[r as usize] = v as i64 };
    }

    /// The interrupted program counter (rip).
    pub(crate) fn pc(&self) -> usize {
        self.greg(libc::REG_RIP)
    }

    /// The interrupted stack pointer (rsp).
    pub(crate) fn sp(&self) -> usize {
        self.greg(libc::REG_RSP)
    }

    /// The interrupted frame pointer (rbp): the CFA base of a leaf routine
    /// framed by it (`leaf::admits`), and what the frame-pointer walk test
    /// compares with the trampoline frame's link.
    pub(crate) fn fp(&self) -> usize {
        self.greg(libc::REG_RBP)
    }

    /// The thread's alternate signal stack when the signal was delivered,
    /// as the kernel saved it in this frame (`uc_stack`): (ss_sp, ss_size),
    /// or `None` when it has none (`SS_DISABLE`).
    pub(crate) fn altstack(&self) -> Option<(usize, usize)> {
        // SAFETY: as in `greg`.
        let ss = unsafe { &(*self.uc).uc_stack };
        (ss.ss_flags & libc::SS_DISABLE == 0 && !ss.ss_sp.is_null())
            .then_some((ss.ss_sp as usize, ss.ss_size))
    }

    /// The signal mask that sigreturn will restore.
    pub(crate) fn sigmask(&self) -> &libc::sigset_t {
        // SAFETY: as in `greg`.
        unsafe { &(*self.uc).uc_sigmask }
    }

    /// Makes the thread, on return from the handler, behave as if the
    /// interrupted instruction had called `target` from below the red zone:
    /// the resume rip is stored at rsp - 128 - 8 and rsp points at it.
    ///
    /// # Safety
    /// The 136 bytes below the interrupted rsp must be writable stack that
    /// the interrupted code does not own beyond its red zone.
    pub(crate) unsafe fn push_call(&mut self, target: usize) {
        let rip = self.pc();
        let sp = self.sp() - RED_ZONE - 8;
        // SAFETY: the caller guarantees [sp, sp + 8) is writable stack.
        unsafe { (sp as *mut usize).write(rip) };
        self.set_greg(libc::REG_RSP, sp);
        self.set_greg(libc::REG_RIP, target);
    }
}
