//! x86-64 System V: context switch, fresh-stack layout, the cycle counter
//! and the thread base; with the `preempt-signal` feature also the
//! asynchronous preemption trampoline and the ucontext accessors the signal
//! handler uses (`preempt.rs`).
//!
//! # The context switch
//!
//! A suspended context is nothing but a stack pointer: everything the
//! System V ABI says a callee must preserve is pushed on the context's own
//! stack before the pointer is stored. The caller-saved registers need no
//! saving: `switch` is an ordinary `extern "C"` call, so the compiler has
//! already spilled whatever it needs from them.
//!
//! ```text
//! a suspended goroutine (saved sp points at the lowest word)
//!
//!   higher addresses
//!   | ...caller frames...      |
//!   | return address           |  <- into the code that called `switch`
//!   | rbp                      |
//!   | rbx                      |
//!   | r12                      |
//!   | r13                      |
//!   | r14                      |
//!   | r15                      |
//!   | fpucw (u16) | mxcsr (u32)|  <- saved sp (16-byte aligned)
//!   lower addresses
//! ```
//!
//! A fresh goroutine's stack is laid out so that the first `switch` into it
//! "returns" into `gosched_arch_start`'s code with r12 = the entry function:
//!
//! ```text
//! a fresh goroutine
//!
//!   | 0                        |  <- top (16-aligned); two zero words end the
//!   | 0                        |     frame-pointer chain
//!   | gosched_arch_start       |  <- "return address" popped by switch's ret
//!   | rbp = 0                  |
//!   | rbx = 0                  |
//!   | r12 = entry              |
//!   | r13 = 0                  |
//!   | r14 = 0                  |
//!   | r15 = 0                  |
//!   | 0x037f | 0x1f80          |  <- saved sp: default x87 control word, MXCSR
//! ```

#[cfg(feature = "preempt-signal")]
mod preempt;

use core::arch::global_asm;

#[cfg(feature = "preempt-signal")]
pub(crate) use preempt::*;

/// Alignment of the stack pointer at a call instruction.
pub(crate) const STACK_ALIGN: usize = 16;

/// Size of the frame `switch` pushes (and `init_stack` fakes): MXCSR and
/// x87 control word in one word, six callee-saved registers, and the return
/// address.
const SWITCH_FRAME: usize = 8 + 6 * 8 + 8;

/// MXCSR at reset: all exceptions masked, round to nearest.
const MXCSR_DEFAULT: u64 = 0x1f80;

/// x87 control word at reset: all exceptions masked, 64-bit precision.
const FPUCW_DEFAULT: u64 = 0x037f;

// The context switch.
//
// On entry: rdi = where to store the current stack pointer (*mut usize),
// rsi = the stack pointer of the context to resume, rdx = a word handed to
// the resumed context as the return value (rax) of its own `switch`.
// rsp = 8 mod 16 (a call just pushed the return address).
global_asm!(
    ".pushsection .text.gosched_arch_switch,\"ax\",@progbits",
    ".globl gosched_arch_switch",
    ".hidden gosched_arch_switch",
    ".type gosched_arch_switch,@function",
    ".p2align 4",
    "gosched_arch_switch:",
    ".cfi_startproc",
    "    push rbp", // callee-saved registers, rbp first
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset rbp, 0",
    "    push rbx",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset rbx, 0",
    "    push r12",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r12, 0",
    "    push r13",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r13, 0",
    "    push r14",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r14, 0",
    "    push r15",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_rel_offset r15, 0",
    "    sub rsp, 8", // one word for the FP control state
    ".cfi_adjust_cfa_offset 8",
    "    stmxcsr [rsp]",                 // MXCSR: SSE rounding mode and masks
    "    fnstcw [rsp + 4]",              // x87 control word
    "    mov eax, [rsp]",                // keep ours to compare (same-size loads: they
    "    movzx ecx, word ptr [rsp + 4]", // forward from the stores)
    "    mov [rdi], rsp",                // publish our stack pointer (16-aligned)
    "    mov rsp, rsi",                  // adopt the other context's stack
    // Its FP control state: loading MXCSR and the x87 control word costs
    // more than the rest of the switch, and they almost never differ.
    "    cmp eax, [rsp]",
    "    jne 3f",
    "2:",
    "    cmp cx, [rsp + 4]",
    "    jne 5f",
    "4:",
    "    add rsp, 8",
    "    pop r15", // its callee-saved registers
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    mov rax, rdx", // hand over `arg` as its return value
    "    ret",          // to wherever it called switch (or start)
    "3:",
    "    ldmxcsr [rsp]",
    "    jmp 2b",
    "5:",
    "    fldcw [rsp + 4]",
    "    jmp 4b",
    ".cfi_endproc",
    ".size gosched_arch_switch, . - gosched_arch_switch",
    ".popsection",
);

// The first frame of every goroutine.
//
// On entry (from switch's `ret` into a fresh stack): rax = the word passed to
// switch (the goroutine), r12 = the entry function, rsp = top - 16
// (16-aligned), rbp = 0. `.cfi_undefined rip` marks this as the outermost
// frame: unwinders and debuggers stop here instead of walking into garbage.
global_asm!(
    ".pushsection .text.gosched_arch_start,\"ax\",@progbits",
    ".globl gosched_arch_start",
    ".hidden gosched_arch_start",
    ".type gosched_arch_start,@function",
    ".p2align 4",
    "gosched_arch_start:",
    ".cfi_startproc",
    ".cfi_undefined rip",
    "    mov rdi, rax", // entry(arg)
    "    call r12",     // never returns: a goroutine exits by switching away
    "    ud2",
    ".cfi_endproc",
    ".size gosched_arch_start, . - gosched_arch_start",
    ".popsection",
);

extern "C" {
    fn gosched_arch_switch(save: *mut usize, to: usize, arg: usize) -> usize;
    fn gosched_arch_start();
}

/// Lays out a fresh goroutine stack whose top is `top` so that the first
/// [`switch`] into it calls `entry(arg)` on that stack. Returns the stack
/// pointer to pass to `switch`.
///
/// # Safety
/// `top` must be the upper end of a writable region at least 128 bytes deep
/// that no one else uses.
pub(crate) unsafe fn init_stack(top: usize, entry: unsafe extern "C" fn(usize) -> !) -> usize {
    let top = top & !(STACK_ALIGN - 1);
    let sp = top - 16 - SWITCH_FRAME;
    let words: [u64; 10] = [
        (FPUCW_DEFAULT << 32) | MXCSR_DEFAULT, // mxcsr at +0, fpucw at +4
        0,                                     // r15
        0,                                     // r14
        0,                                     // r13
        entry as *const () as u64,             // r12
        0,                                     // rbx
        0,                                     // rbp: ends the frame chain
        gosched_arch_start as *const () as u64, // "return address"
        0,
        0,
    ];
    // SAFETY: the caller guarantees [top - 128, top) is ours and writable;
    // sp is 16-aligned and the 80 bytes written end exactly at `top`.
    unsafe { core::ptr::copy_nonoverlapping(words.as_ptr(), sp as *mut u64, words.len()) };
    sp
}

/// Saves the current context's stack pointer in `*save`, resumes the context
/// saved at `to`, and returns the `arg` that whoever switches back passes.
///
/// # Safety
/// `to` must be a stack pointer produced by [`init_stack`] or stored by a
/// previous `switch`, not resumed since; `save` must be valid for a write.
#[inline(always)]
pub(crate) unsafe fn switch(save: *mut usize, to: usize, arg: usize) -> usize {
    // SAFETY: forwarded from the caller's contract.
    unsafe { gosched_arch_switch(save, to, arg) }
}

/// Whether the time-stamp counter ticks at a constant rate in every power
/// state (CPUID 0x8000_0007 EDX bit 8, "invariant TSC"), so that `ticks`
/// differences measure time.
pub(crate) fn ticks_are_time() -> bool {
    use core::arch::x86_64::__cpuid;
    let max_ext = __cpuid(0x8000_0000).eax;
    max_ext >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

/// A cheap monotonic timestamp: the time-stamp counter (about 10 ns, a
/// third of a vDSO `clock_gettime` here). Meaningful as time only when
/// `ticks_are_time()`.
#[inline]
pub(crate) fn ticks() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and has no
    // preconditions (user-mode RDTSC is not disabled on Linux).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `arch_prctl` code that sets the GS base (asm/prctl.h).
const ARCH_SET_GS: libc::c_int = 0x1001;

/// Points this thread's GS segment base at `base` (an M; 0 to clear).
///
/// glibc and Rust's thread-locals use FS on x86-64; GS is free in user
/// space. An M thread points it at its `M`, so that [`thread_base_word`]
/// reads the M's fields with one instruction. That one instruction is the
/// point: a goroutine can be preempted and resumed on another thread
/// between any two instructions (Migrate mode), so "load this thread's M,
/// then load its field" can read a thread it no longer runs on, while a
/// GS-relative load always reads the M of the thread executing it.
pub(crate) fn set_thread_base(base: usize) -> std::io::Result<()> {
    // SAFETY: ARCH_SET_GS only changes this thread's GS base; nothing in
    // the process addresses memory through GS except `thread_base_word`,
    // which only Ms (which set it first) call.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, base) };
    if r == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(
            e.kind(),
            format!("arch_prctl(ARCH_SET_GS): {e}"),
        ))
    }
}

/// The word `OFF` bytes past this thread's GS base (see
/// [`set_thread_base`]), in one instruction.
///
/// # Safety
/// The calling thread's GS base must point at a live object with a
/// word-aligned `usize`-sized field at `OFF` (that is, the caller runs on
/// an M thread).
#[inline(always)]
pub(crate) unsafe fn thread_base_word<const OFF: usize>() -> usize {
    let v: usize;
    // SAFETY: per the caller's contract the load is in bounds. Not `pure`:
    // the result depends on which thread runs the instruction, so two
    // loads must never be merged (a goroutine may migrate in between).
    unsafe {
        core::arch::asm!(
            "mov {v}, qword ptr gs:[{off}]",
            v = out(reg) v,
            off = const OFF,
            options(nostack, readonly, preserves_flags),
        );
    }
    v
}

/// Test support: stores `true` to `a`, then loads `b`, with no fence in
/// between (what the hot side of `crate::os::membarrier`'s Dekker pair compiles
/// to), as two adjacent instructions whatever the optimisation level.
#[cfg(test)]
pub(crate) fn store_then_load(
    a: &std::sync::atomic::AtomicBool,
    b: &std::sync::atomic::AtomicBool,
) -> bool {
    let v: u32;
    // SAFETY: both pointers come from live references; byte stores and
    // loads of an AtomicBool are its own atomic accesses on x86-64.
    unsafe {
        core::arch::asm!(
            "mov byte ptr [{a}], 1",
            "movzx {v:e}, byte ptr [{b}]",
            a = in(reg) a.as_ptr(),
            b = in(reg) b.as_ptr(),
            v = out(reg) v,
            options(nostack, preserves_flags),
        );
    }
    v != 0
}
