//! Architecture-specific code: every line of assembly in gosched, and
//! every name of a register, an instruction or an architecture-specific
//! system call, lives below this module. The rest of the crate speaks of a
//! "pc", an "sp", a "thread base" and "extended state".
//!
//! # The contract
//!
//! Each architecture module provides these items (corosensei's arrangement;
//! `x86_64/` is the one port today). The items marked *(signal)* serve
//! only asynchronous preemption: they live in the port's `preempt.rs` and
//! are built only with the `preempt-signal` feature; a port may start
//! without them (cooperative preemption only) and add them second.
//!
//! | item | what it is |
//! | --- | --- |
//! | `STACK_ALIGN` | alignment of a stack pointer at a call boundary |
//! | `RED_ZONE` *(signal)* | bytes below the stack pointer that leaf code may use without moving it (x86-64 System V: 128; AAPCS64: 0) |
//! | `PREEMPT_FRAME` *(signal)* | bytes the trampoline frame needs beyond the red zone, the extended state excluded |
//! | `init_stack(top, entry)` | lay out a fresh goroutine stack so that the first `switch` into it calls `entry(arg)`; returns the saved stack pointer |
//! | `switch(save, to, arg)` | save the callee-saved state on the current stack, store its stack pointer in `*save`, resume the context saved at `to`, which sees `arg` as the return value of its own `switch` |
//! | `init_extended_state()`, `extended_state_size()` *(signal)* | find (once, before the preemption handler is installed) and report the bytes of the FP/SIMD/vector state the trampoline saves (x86-64: the XSAVE area for the features the OS enabled, from CPUID; 0 = cannot save it, so asynchronous preemption is refused) |
//! | `async_preempt_trampoline()` *(signal)* | address of the code a rewritten signal context enters on a goroutine's stack: it saves every register and the extended state, calls `crate::preempt::async_preempt_yield`, restores, and resumes at the interrupted instruction |
//! | `SigContext` *(signal)* | the interrupted machine context in a signal handler: `pc()`, `sp()`, `sigmask()`, and `push_call(target)`, which makes the thread, on return from the handler, behave as if the interrupted instruction had called `target` from below the red zone |
//! | `signal_frame_above(sp, top, alt)` *(signal)* | whether a kernel signal frame (the one `sigreturn` unwinds) lies on the stack between `sp` and `top`, recognised by the thread's alternate-stack words saved in it (`alt`, from `SigContext::altstack`; safe-point rule 5) |
//! | `set_thread_base(m)`, `thread_base_word::<OFF>()` | how the current M is found: point a per-thread register at the thread's M; read a word of it in **one instruction**, so that a goroutine migrating between threads always reads the M it runs on (see below) |
//! | `DWARF_SP`, `DWARF_FP`, `DWARF_RA` *(signal)* | DWARF numbers of the stack pointer, the frame pointer and the return-address column, for the unwind-table reading of `crate::preempt::sigurg::leaf` (which also assumes, as x86-64 guarantees, that a `call` pushes the return address at the new stack pointer) |
//! | `ticks()`, `ticks_are_time()` | the cycle counter: a cheap monotonic timestamp, and whether its differences measure time (an invariant TSC) |
//! | `store_then_load(a, b)` (tests) | a store and a load as two adjacent instructions with no fence, the hot side of `crate::os::membarrier`'s Dekker pair, for the test that shows the asymmetric fence is needed |
//!
//! # How an M finds itself
//!
//! A goroutine may be preempted between any two instructions and, in
//! Migrate mode, resumed on another thread. So "load this thread's M, then
//! load a field of it" may read an M the goroutine no longer runs on; the
//! current M and goroutine must be read with one instruction relative to a
//! per-thread register. On x86-64 that register is GS: glibc and Rust's
//! thread-locals use FS, and `arch_prctl(ARCH_SET_GS)` points GS at the M.
//!
//! aarch64 has no spare segment register. Go reserves a general register
//! for `g` (R28) in all Go code, which Rust cannot do for code it does not
//! compile; libc owns `TPIDR_EL0` (the TLS pointer). A port would read
//! `TPIDR_EL0` and then load the M pointer from a fixed thread-local
//! offset: two instructions. The window between them is the one place
//! where a migration would read the old thread's M, so the port adds an
//! architecture rule to the safe-point check: a pc inside a
//! `thread_base_word` sequence (its instructions carry a known address
//! range, like a restartable sequence) is refused, and the signal retried.
//! ThreadAffine mode, the default, needs nothing: the goroutine resumes on
//! its own thread.
//!
//! # Which safe-point rules depend on the architecture
//!
//! (The rules are in `crate::preempt::sigurg::handler`.) Rules 1, 2 and 4 do not: they read
//! the G, the no-preempt count and the pc against the executable's text
//! ranges. Rule 3 needs the red zone, `PREEMPT_FRAME` and the extended-state
//! size. Rule 5's second half (`signal_frame_above`) knows the kernel's
//! signal-frame layout. `push_call` is where the ABI shows most: x86-64
//! pushes the resume pc on the stack, as a `call` would; an aarch64 port
//! would save the interrupted `lr` in the trampoline frame and set `lr` to
//! the resume pc (a `bl` overwrites `lr`, which the interrupted code may
//! still need), and must save all of x0-x30, NZCV, FPCR/FPSR, the SIMD
//! registers and, where present, the SVE state. Its `switch` saves
//! x19-x29, lr, sp, d8-d15 and FPCR.

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
