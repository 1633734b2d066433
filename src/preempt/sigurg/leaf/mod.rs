//! Preemptible libc leaf routines: the code outside the main executable
//! where the SIGURG handler may still inject a preemption (an exception to
//! safe-point rule 4).
//!
//! # Why
//!
//! Safe-point rule 4 (see `super::handler`) refuses every pc outside the
//! main executable: preempting inside `malloc` or `printf` would park a
//! goroutine while it holds a libc lock or per-thread cache. But a
//! goroutine that spends its time in glibc's `memcpy` (a large
//! `copy_from_slice` loop) or libm's `sin` holds nothing: those routines take
//! no locks and keep their state in registers and on the stack. Refusing
//! them starved a 1 ms ticker for up to 1.0 s at a 1 ms quantum beside a
//! `copy_from_slice` loop, and gave it a 53 ms p99 beside an `f64::sin`
//! loop. Go cannot preempt C code at all; gosched can, for code known to be
//! leaf code.
//!
//! # What is admitted
//!
//! A pc is a safe point under this exception when both hold:
//!
//! 1. It lies in an admitted routine:
//!    - in `libc.so.6`, the routines named in [`objects::LIBC_LEAVES`] (memory and
//!      byte-string routines: `memcpy`, `memmove`, `memset`, `memcmp`,
//!      `bcmp`, `strlen`, ...; nothing locale-dependent, nothing that
//!      allocates or locks) and the clock wrappers (`clock_gettime`,
//!      `gettimeofday`, `time`: a call into the vDSO, or the system call,
//!      and an `errno` store on failure). Everything else in libc stays
//!      refused;
//!    - in `libm.so.6`, every function it exports and every implementation
//!      its IFUNCs chose for its internal calls. libm imports no lock, no
//!      allocator and no thread function (its imports are `errno`, the
//!      stack protector, `__assert_fail`, `fputs`/`fwrite` for the old SVID
//!      error messages, `qsort` and the `__strto*_nan` parsers), so a pc in
//!      libm code never holds a lock. Its ELF constructors are not
//!      exported and stay refused (they run under the loader lock);
//!    - in the vDSO (`linux-vdso.so.1`), its clocks and `getcpu`: loads
//!      from the kernel's data page under a sequence count, `rdtscp`, and
//!      for clocks that page does not cover (the CPU-time clocks) a system
//!      call. The kernel itself preempts and migrates threads anywhere in
//!      them; resumed later or on another CPU, the sequence-count loop
//!      retries. Their bodies realign the stack behind rbp, so their rows
//!      are rbp-based. A release-built loop reading
//!      `CLOCK_THREAD_CPUTIME_ID` (every signal delivered on the system
//!      call's return, in the vDSO) was never preempted before.
//! 2. Its caller is the main executable: unwinding from the interrupted
//!    rsp through admitted frames only (at most `MAX_DEPTH`, using each
//!    frame's CFA offset at its pc: from rsp, or from the interrupted rbp
//!    for the interrupted frame only), the first return address outside
//!    them lies in code rule 4 admits there (a Rust function, see
//!    `super::rust_code`: not a C allocator's `memcpy` call). This matters: libc itself
//!    calls `memcpy` from `realloc` with the arena locked and from
//!    `fwrite` with the `FILE` locked; preempting there would let the
//!    scheduler, on the same thread, call `malloc` into that arena and
//!    deadlock on itself (ThreadAffine), or resume the lock holder's
//!    thread-local malloc state on another thread (Migrate). With the
//!    caller check, interrupting `memcpy` is exactly as safe as
//!    interrupting its Rust caller at the `call` instruction, which rule 4
//!    already allows; the routine itself holds nothing.
//!
//! # How the ranges are found (at start-up, outside the handler)
//!
//! `objects` walks libc's and libm's dynamic symbol tables and resolves
//! their IFUNCs to the functions admitted; `cfi` reads each function's
//! extent and stack-pointer rules from the unwind tables (`.eh_frame`).
//! `init` merges them into one sorted table of [`Row`]s.
//!
//! # Why preempting there is correct
//!
//! The trampoline (`crate::arch`) already handles a pc at an arbitrary
//! instruction with an arbitrary rsp (Rust code is interrupted that way):
//! it skips the 128-byte red zone, aligns its own frame, saves every
//! general register, rflags and the full XSAVE state (the vector registers
//! `memcpy` copies through, MXCSR and the x87 control word libm may change
//! for a rounding mode) and clears DF before calling the scheduler. A
//! `rep movsb` interrupted mid-copy resumes with the kernel's updated
//! rsi/rdi/rcx. Non-temporal stores (large `memcpy`s use `movntdq` before
//! an `sfence`) are flushed by the interrupt that delivers the signal and by
//! the scheduler's locked instructions before the goroutine can resume on
//! another CPU.
//!
//! Thread state: the string routines never touch thread-local storage.
//! libm touches it in two ways only, each a single instruction: it stores
//! `errno` on a domain or range error (`movl $EDOM, %fs:(%rax)`, where rax
//! holds the TLS offset, the same in every thread), and reads the stack
//! protector canary at `%fs:0x28` (the same value in every thread). In
//! `ThreadAffine` mode the goroutine resumes on its own thread, so nothing
//! changes. In `Migrate` mode an `errno` store lands on the thread the
//! goroutine runs on at that instruction — as any Rust code's would; a
//! later read of `errno` on another thread is exactly the hazard the user
//! accepted with `allow_migrate`, and the caller check (the main
//! executable, the user's code) keeps foreign callers with their own
//! thread state out. So the table applies in both modes.
//!
//! # Publication to the handler
//!
//! `init` runs once, from `preempt::install`, before our SIGURG handler is
//! installed. It builds a sorted, disjoint `Vec` of rows, leaks it, and
//! stores a pointer to it in [`TABLE`] with Release; the handler loads it
//! with Acquire, binary-searches the immutable slice and reads return
//! addresses from the interrupted goroutine's own stack (inside the bounds
//! rule 3 checked): no allocation, no lock, no call into libc. The table
//! is never freed or changed (libc and libm are never unloaded: `init`
//! keeps a handle to each).
//!
//! Objects loaded later with `dlopen` are not in the table (their pcs stay
//! refused). `GOSCHED_LEAFPREEMPTOFF=1` in the environment of the first
//! runtime's start leaves the table empty: every pc outside the main
//! executable is refused, as before.

mod cfi;
mod objects;

use std::sync::atomic::{AtomicPtr, Ordering};

use objects::{kind_of, loaded_objects};

/// One stretch of an admitted routine: for every pc in `[start, end)` the
/// canonical frame address (the caller's rsp before its `call`) is
/// `rsp + cfa` (`rbp + cfa` when `fp`), so the return address is at
/// `cfa - 8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Row {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) cfa: usize,
    /// The CFA is rbp-based (the vDSO's time functions realign the stack
    /// behind a frame pointer). Admitted only for the interrupted frame,
    /// whose rbp the signal context holds.
    pub(super) fp: bool,
}

/// The admitted rows, sorted by `start` and disjoint.
struct Table {
    rows: Vec<Row>,
}

/// Written once by `init` (Release) before the SIGURG handler is installed;
/// read by the handler (Acquire). Null: nothing admitted.
static TABLE: AtomicPtr<Table> = AtomicPtr::new(core::ptr::null_mut());

/// The environment variable that disables the table.
const OFF_ENV: &str = "GOSCHED_LEAFPREEMPTOFF";

/// Admitted frames the handler unwinds through before it must reach the
/// main executable (libm's `exp` wrapper calling `__exp_fma` is two).
const MAX_DEPTH: usize = 4;

/// Builds and publishes the table (once per process, from
/// `preempt::install`, before the handler is installed). Not
/// async-signal-safe: it allocates and calls the loader.
pub(crate) fn init() {
    if !TABLE.load(Ordering::Acquire).is_null() {
        return;
    }
    let off = std::env::var(OFF_ENV).is_ok_and(|v| v.trim() == "1");
    let rows = if off { Vec::new() } else { collect() };
    // Pairs with the Acquire load in `rows`.
    super::publish_once(&TABLE, Table { rows });
}

/// The admitted rows (empty before `init` or when disabled).
fn rows() -> &'static [Row] {
    // Pairs with the Release in `init`.
    let t = TABLE.load(Ordering::Acquire);
    if t.is_null() {
        return &[];
    }
    // SAFETY: a non-null TABLE points at a leaked, never-mutated Table.
    unsafe { &(*t).rows }
}

/// The row of the admitted routine `pc` lies in, if any.
/// Async-signal-safe: one atomic load and a binary search over an
/// immutable slice.
fn row_at(pc: usize) -> Option<Row> {
    let r = rows();
    let i = r.partition_point(|row| row.start <= pc);
    let row = r.get(i.checked_sub(1)?)?;
    (pc < row.end).then_some(*row)
}

/// The rsp-based CFA offset at `pc` if it lies in an admitted routine.
#[cfg(test)]
fn cfa_at(pc: usize) -> Option<usize> {
    row_at(pc).filter(|r| !r.fp).map(|r| r.cfa)
}

/// Whether the code interrupted at `pc` with stack pointer `rsp` and frame
/// pointer `fp` may be preempted: `pc` lies in an admitted routine and,
/// unwinding through admitted frames only (at most `MAX_DEPTH`), the first
/// return address outside them satisfies `in_main_text`. Called by the
/// SIGURG handler: async-signal-safe (atomic loads, a binary search, stack
/// reads).
///
/// # Safety
/// `[rsp, top)` must be readable memory: the interrupted goroutine's live
/// stack (rule 3 checked it).
pub(crate) unsafe fn admits(
    pc: usize,
    rsp: usize,
    fp: usize,
    top: usize,
    in_main_text: impl Fn(usize) -> bool,
) -> bool {
    // The interrupted frame is looked up at its pc; a caller's at its
    // return address - 1, the call instruction (the return address itself
    // may begin a stretch with another CFA rule, after a noreturn call).
    let (mut at, mut sp) = (pc, rsp);
    for depth in 0..MAX_DEPTH {
        let Some(row) = row_at(at) else {
            return false;
        };
        // An rbp-based rule only where rbp is known: the interrupted frame.
        let base = match (row.fp, depth) {
            (false, _) => sp,
            (true, 0) => fp,
            (true, _) => return false,
        };
        let Some(cfa) = base.checked_add(row.cfa) else {
            return false;
        };
        // The return address slot [cfa - 8, cfa) must lie in [sp, top):
        // rsp-based rows guarantee the lower bound (every offset is at
        // least 8), an rbp-based one is checked.
        if cfa > top || cfa < sp.saturating_add(8) {
            return false;
        }
        // SAFETY: rsp <= sp <= cfa - 8 < cfa <= top (checked above), so the
        // word lies in the live stack the caller vouched for; read
        // unaligned, as nothing forces rsp's alignment.
        let ra = unsafe { ((cfa - 8) as *const usize).read_unaligned() };
        if in_main_text(ra) {
            return true;
        }
        (at, sp) = (ra.wrapping_sub(1), cfa);
    }
    false
}

fn collect() -> Vec<Row> {
    let mut rows = Vec::new();
    for obj in loaded_objects() {
        if let Some(kind) = kind_of(&obj.name) {
            let mut fns = Vec::new();
            obj.admit(kind, &mut fns);
            fns.sort_unstable();
            fns.dedup();
            for (start, end) in fns {
                let _ = obj.rows(start, start, end, &mut rows);
            }
        }
    }
    rows.sort_unstable();
    rows.dedup();
    // Aliases give identical rows (deduplicated above); keep the table
    // disjoint whatever else overlaps by dropping the later row.
    let mut out: Vec<Row> = Vec::with_capacity(rows.len());
    for r in rows {
        if out.last().is_none_or(|l| l.end <= r.start) {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr_of(name: &str) -> usize {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: RTLD_DEFAULT and a C string: a plain symbol lookup.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) as usize }
    }

    fn table() -> &'static [Row] {
        init();
        let r = rows();
        assert!(
            std::env::var(OFF_ENV).is_ok() || !r.is_empty(),
            "no leaf ranges resolved"
        );
        r
    }

    /// The routines a `copy_from_slice` loop and an `f64::sin` loop spend
    /// their time in are admitted, at the address the program calls.
    #[test]
    fn leaf_table_admits_memcpy_and_sin() {
        // Links libm into the test binary (with --as-needed it is loaded
        // only when something calls it).
        assert!(std::hint::black_box(1.0f64).sin() > 0.8);
        let _ = table();
        for f in [
            "memcpy", "memmove", "memset", "memcmp", "bcmp", "strlen", "sin", "cos",
        ] {
            let a = addr_of(f);
            assert_ne!(a, 0, "{f} not found");
            assert_eq!(cfa_at(a), Some(8), "{f} at {a:#x} not admitted");
        }
    }

    /// The allowlist never admits the allocator, stdio or any pthread
    /// function, nor anything near them: every byte of each (its entry and
    /// the next 64 bytes) is refused.
    #[test]
    fn leaf_table_never_admits_malloc_stdio_or_pthread() {
        let _ = table();
        let mut names: Vec<String> = [
            "malloc",
            "free",
            "calloc",
            "realloc",
            "posix_memalign",
            "printf",
            "fprintf",
            "puts",
            "fputs",
            "fwrite",
            "fread",
            "fflush",
            "fopen",
            "write",
            "open",
            "dlopen",
            "dlsym",
            "dl_iterate_phdr",
            "__libc_malloc",
            "abort",
            "qsort",
            "strcoll",
            "strcasecmp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every pthread_* function libc exports.
        names.extend(objects::libc_exports(b"pthread_"));
        let pthreads = names.iter().filter(|n| n.starts_with("pthread_")).count();
        assert!(pthreads > 50, "found only {pthreads} pthread_* symbols");
        for n in &names {
            let a = addr_of(n);
            if a == 0 {
                continue;
            }
            for off in 0..64 {
                assert!(
                    cfa_at(a + off).is_none(),
                    "{n}+{off} at {:#x} is admitted",
                    a + off
                );
            }
        }
    }

    /// The table is sorted and disjoint (the binary search relies on it).
    #[test]
    fn leaf_table_is_sorted_and_disjoint() {
        let r = table();
        for w in r.windows(2) {
            assert!(w[0].start < w[0].end && w[0].end <= w[1].start, "{w:x?}");
        }
    }

    /// memcpy is a safe point only when the main executable called it: the
    /// same pc with a return address into libc (realloc and fwrite call
    /// memcpy holding the arena or FILE lock) is refused, and so is a
    /// frame that would read past the stack top.
    #[test]
    fn leaf_routine_is_admitted_only_under_a_main_executable_caller() {
        let _ = table();
        let memcpy = addr_of("memcpy");
        let main_ra = 0x1234_5678usize;
        let libc_ra = addr_of("realloc") + 16;
        let in_main = |a: usize| a == main_ra;
        for (ra, want) in [(main_ra, true), (libc_ra, false), (0, false)] {
            let stack = [ra, 0, 0, 0];
            let rsp = stack.as_ptr() as usize;
            // SAFETY: [rsp, rsp + 32) is `stack`.
            let got = unsafe { admits(memcpy, rsp, 0, rsp + 32, in_main) };
            assert_eq!(got, want, "return address {ra:#x}");
        }
        let stack = [main_ra];
        let rsp = stack.as_ptr() as usize;
        // SAFETY: only [rsp, rsp + 4) would be read, and it is refused.
        assert!(!unsafe { admits(memcpy, rsp, 0, rsp + 4, in_main) });
        // A pc outside every admitted routine.
        // SAFETY: as above; nothing is read.
        assert!(!unsafe { admits(addr_of("malloc"), rsp, 0, rsp + 8, in_main) });
    }

    /// The time functions a clock-reading loop spends its time in are
    /// admitted: libc's `clock_gettime` wrapper (rsp-based) and the vDSO's
    /// (framed by rbp in its body). A release-built loop reading
    /// `CLOCK_THREAD_CPUTIME_ID` (a system call made from the vDSO, where
    /// every signal is delivered on its return) was never preempted.
    #[test]
    fn leaf_table_admits_the_clock_routines() {
        let r = table();
        let wrapper = addr_of("clock_gettime");
        assert_ne!(wrapper, 0);
        assert_eq!(row_at(wrapper).map(|r| (r.cfa, r.fp)), Some((8, false)));
        let vdso = objects::vdso_text().expect("no vDSO mapped");
        let rows: Vec<&Row> = r
            .iter()
            .filter(|row| row.start >= vdso.0 && row.end <= vdso.1)
            .collect();
        assert!(
            rows.iter().any(|row| row.fp),
            "no rbp-framed vDSO row: {rows:x?}"
        );
    }

    /// An rbp-based row is used only for the interrupted frame, with the
    /// interrupted rbp; the return address slot it names must lie between
    /// rsp and the stack top; as a caller's row it refuses.
    #[test]
    fn an_rbp_framed_leaf_is_admitted_only_as_the_interrupted_frame() {
        let r = table();
        let Some(row) = r.iter().find(|row| row.fp).copied() else {
            panic!("no rbp-framed row in the table");
        };
        let main_ra = 0x1234_5678usize;
        let in_main = |a: usize| a == main_ra;
        // A frame as the vDSO builds it: [.., saved rbp, return address],
        // rbp pointing at the saved rbp (CFA = rbp + 16). `main_ra` also
        // sits below rsp and above the top passed in the refused cases, so
        // that only the bound checks refuse them.
        let stack = [0usize, main_ra, 0, 0, 0, 0, main_ra, 0];
        let base = stack.as_ptr() as usize;
        let rsp = base + 8 * 2;
        let top = base + 8 * stack.len();
        // The rbp whose row puts the return address slot at `stack[k]`.
        let fp_for = |k: usize| base + 8 * k + 8 - row.cfa;
        // SAFETY: admitted reads lie in [rsp, top) within `stack`; the
        // refused cases read nothing.
        unsafe {
            assert!(admits(row.start, rsp, fp_for(6), top, in_main));
            // Its return address slot below rsp (stack[1]), or at or past
            // the top (stack[6], top lowered to stack[6]): refused.
            assert!(!admits(row.start, rsp, fp_for(1), top, in_main));
            assert!(!admits(row.start, rsp, fp_for(6), base + 8 * 6, in_main));
        }
        // As a caller (reached from a memcpy frame whose return address
        // points into it): refused, its rbp is unknown.
        let memcpy = addr_of("memcpy");
        let stack = [row.start + 1, main_ra, 0, 0];
        let rsp = stack.as_ptr() as usize;
        // SAFETY: reads lie in `stack`.
        assert!(!unsafe { admits(memcpy, rsp, rsp, rsp + 32, in_main) });
    }
}
