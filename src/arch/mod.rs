//! Architecture-specific code: every line of assembly in gosched lives below
//! this module.
//!
//! Each architecture file provides the same small contract (corosensei's
//! arrangement):
//!
//! | item | what it is |
//! | --- | --- |
//! | `STACK_ALIGN` | alignment of a stack pointer at a call boundary |
//! | `RED_ZONE` | bytes below the stack pointer that leaf code may use without moving it |
//! | `init_stack(top, entry)` | lay out a fresh goroutine stack so that the first `switch` into it calls `entry(arg)`; returns the saved stack pointer |
//! | `switch(save, to, arg)` | save the callee-saved state on the current stack, store its stack pointer in `*save`, resume the context saved at `to`, which sees `arg` as the return value of its own `switch` |
//! | `async_preempt_trampoline` | entered (by a rewritten signal context) on a goroutine's stack: saves every register and the extended state, calls `crate::preempt::async_preempt_yield`, restores, and resumes at the interrupted instruction |
//! | `PREEMPT_FRAME` | bytes the trampoline frame needs beyond the red zone, the extended state excluded |
//! | `set_thread_base(p)`, `thread_base_word::<OFF>()` | point a per-thread register at the thread's M; read a word of it in one instruction, so that a goroutine migrating between threads always reads the M it runs on |
//! | `signal_frame_above(sp, top, alt_sp, alt_size)` | whether a kernel signal frame (the one `sigreturn` unwinds) lies on the stack between `sp` and `top`, recognised by the thread's alternate-stack words saved in it (safe-point rule 5) |
//! | `xsave_area_size()` | bytes of the extended-state (XSAVE) area for the features enabled by the OS |
//!
//! aarch64 Linux is the next port: its file needs the same items (a context
//! switch saving x19-x29, lr, sp, d8-d15, FPCR; a trampoline that saves all
//! of x0-x30, NZCV, the FP/SIMD and SVE state).

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86_64;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) use self::x86_64::*;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "gosched supports only x86_64 Linux for now: the context switch, the \
     preemption trampoline and the ucontext rewrite are written for that ABI \
     (aarch64 Linux is the next port; see src/arch/mod.rs for the contract)"
);
