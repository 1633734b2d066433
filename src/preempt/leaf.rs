//! Preemptible libc leaf routines: the code outside the main executable
//! where the SIGURG handler may still inject a preemption (an exception to
//! safe-point rule 4).
//!
//! # Why
//!
//! Safe-point rule 4 (see `crate::preempt`) refuses every pc outside the
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
//!    - in `libc.so.6`, the routines named in [`LIBC_LEAVES`] (memory and
//!      byte-string routines: `memcpy`, `memmove`, `memset`, `memcmp`,
//!      `bcmp`, `strlen`, ...; nothing locale-dependent, nothing that
//!      allocates or locks). Everything else in libc stays refused;
//!    - in `libm.so.6`, every function it exports and every implementation
//!      its IFUNCs chose for its internal calls. libm imports no lock, no
//!      allocator and no thread function (its imports are `errno`, the
//!      stack protector, `__assert_fail`, `fputs`/`fwrite` for the old SVID
//!      error messages, `qsort` and the `__strto*_nan` parsers), so a pc in
//!      libm code never holds a lock. Its ELF constructors are not
//!      exported and stay refused (they run under the loader lock).
//! 2. Its caller is the main executable: unwinding from the interrupted
//!    rsp through admitted frames only (at most `MAX_DEPTH`, using each
//!    frame's CFA offset at its pc), the first return address outside
//!    them lies in the main executable's code. This matters: libc itself
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
//! glibc's shared objects are stripped of `.symtab`, so only the dynamic
//! symbol table (`.dynsym`) names functions, and glibc's string routines
//! are IFUNCs: the `.dynsym` entry of `memcpy` is its *resolver*, and the
//! implementation chosen for this CPU (`__memmove_avx_unaligned_erms` and
//! its family) is a local symbol with no name or size anywhere in memory.
//! The steps, per loaded object (`dl_iterate_phdr`):
//!
//! 1. Walk `.dynsym` (`DT_SYMTAB`, `DT_STRTAB`, the count from
//!    `DT_GNU_HASH` or `DT_HASH`). A plain `STT_FUNC` symbol admits
//!    `[st_value, st_value + st_size)`.
//! 2. An `STT_GNU_IFUNC` symbol is resolved as the program's own calls are:
//!    `dlsym` on the object's handle runs its resolver and returns the
//!    chosen implementation (`dlsym(RTLD_DEFAULT)` could return an
//!    `LD_PRELOAD` interposer, which must not be admitted). Its extent
//!    comes from the unwind tables:
//!    every function of glibc, assembly included (the `ENTRY`/`END` macros
//!    emit CFI), has an FDE in `.eh_frame`, which the loader maps and strip
//!    never removes; `.eh_frame_hdr` (`PT_GNU_EH_FRAME`) is a sorted table
//!    of FDE start addresses, and the FDE holds the function's exact length
//!    (`pc_range`). For `memcpy` on an AVX2 machine (glibc 2.36) this
//!    admits the 1,758 bytes of `__memmove_avx_unaligned_erms`, the
//!    large-copy loops included.
//! 3. libm's own calls to IFUNC'd internals (its `exp`, `log` and `pow`
//!    wrappers call `__exp_fma` & co. through libm's PLT) are resolved by
//!    the loader at load time: each `R_X86_64_IRELATIVE` relocation's GOT
//!    slot holds the chosen implementation, whose extent again comes from
//!    its FDE.
//! 4. Each admitted function's FDE program (the CIE's initial instructions,
//!    then the FDE's) is run once to split the function into rows
//!    `(start, end, cfa)` wherever the CFA is rsp plus a constant: that is
//!    what the handler's caller check reads. A stretch where the CFA is
//!    rbp-based or an expression gets no row and stays refused. glibc's
//!    string routines never move rsp (one row, CFA = rsp + 8); libm's C
//!    functions have a few rows each.
//!
//! Rejected alternatives: reading `.symtab` from the file on disk (Debian
//! and most distributions strip it; the debug file is not installed);
//! taking an IFUNC target up to the next `.dynsym` symbol (the gap holds
//! local functions such as `_int_malloc`, which must stay refused);
//! admitting all of libc's text (malloc, stdio, pthread).
//!
//! Every range must lie in an executable segment of its object; anything
//! that does not parse as expected (an FDE in an unusual encoding, a
//! 64-bit `.eh_frame` length) admits nothing: the pc stays refused, as
//! before.
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

use std::ffi::CStr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// libc routines whose implementation may be preempted: memory and string
/// routines that use only registers and the stack (no locale, no errno, no
/// allocation, no lock). IFUNCs are resolved to the implementation chosen
/// for this CPU.
pub(crate) const LIBC_LEAVES: &[&str] = &[
    "memcpy",
    "memmove",
    "mempcpy",
    "__mempcpy",
    "memset",
    "bzero",
    "explicit_bzero",
    "memcmp",
    "bcmp",
    "__memcmpeq",
    "memchr",
    "memrchr",
    "rawmemchr",
    "strlen",
    "strnlen",
    "strchr",
    "strchrnul",
    "strrchr",
    "strcmp",
    "strncmp",
    "strcpy",
    "stpcpy",
    "strncpy",
    "stpncpy",
    "strcat",
    "strncat",
    "strspn",
    "strcspn",
    "strpbrk",
    "wmemset",
    "wmemchr",
    "wmemcmp",
    "wcslen",
    "wcsnlen",
    "wcschr",
    "wcsrchr",
    "wcscmp",
    "wcsncmp",
    "__memcpy_chk",
    "__memmove_chk",
    "__mempcpy_chk",
    "__memset_chk",
];

/// One stretch of an admitted routine: for every pc in `[start, end)` the
/// canonical frame address (the caller's rsp before its `call`) is
/// `rsp + cfa`, so the return address is at `rsp + cfa - 8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Row {
    start: usize,
    end: usize,
    cfa: usize,
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

/// Longest function admitted: a guard against a misread FDE (glibc's
/// largest string routine is a few KiB).
const MAX_FN_LEN: usize = 1 << 16;

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
    let off = std::env::var(OFF_ENV).is_ok_and(|v| v == "1");
    let rows = if off { Vec::new() } else { collect() };
    let table = Box::into_raw(Box::new(Table { rows }));
    // Pairs with the Acquire load in `rows`. `install` calls us inside its
    // `Once`, so there is a single writer; the table is leaked on purpose
    // (the handler may read it until the process exits).
    if TABLE
        .compare_exchange(
            core::ptr::null_mut(),
            table,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: `table` came from Box::into_raw above and was not
        // published.
        drop(unsafe { Box::from_raw(table) });
    }
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

/// The CFA offset at `pc` if it lies in an admitted routine.
/// Async-signal-safe: one atomic load and a binary search over an
/// immutable slice.
fn cfa_at(pc: usize) -> Option<usize> {
    let r = rows();
    let i = r.partition_point(|row| row.start <= pc);
    let row = r.get(i.checked_sub(1)?)?;
    (pc < row.end).then_some(row.cfa)
}

/// Whether the code interrupted at `pc` with stack pointer `rsp` may be
/// preempted: `pc` lies in an admitted routine and, unwinding through
/// admitted frames only (at most `MAX_DEPTH`), the first return address
/// outside them satisfies `in_main_text`. Called by the SIGURG handler:
/// async-signal-safe (atomic loads, a binary search, stack reads).
///
/// # Safety
/// `[rsp, top)` must be readable memory: the interrupted goroutine's live
/// stack (rule 3 checked it).
pub(crate) unsafe fn admits(
    pc: usize,
    rsp: usize,
    top: usize,
    in_main_text: impl Fn(usize) -> bool,
) -> bool {
    // The interrupted frame is looked up at its pc; a caller's at its
    // return address - 1, the call instruction (the return address itself
    // may begin a stretch with another CFA rule, after a noreturn call).
    let (mut at, mut sp) = (pc, rsp);
    for _ in 0..MAX_DEPTH {
        let Some(cfa) = cfa_at(at).and_then(|off| sp.checked_add(off)) else {
            return false;
        };
        if cfa > top {
            return false;
        }
        // SAFETY: rsp <= sp < sp + 8 <= cfa <= top (every row's offset is
        // at least 8), so the word lies in the live stack the caller
        // vouched for; read unaligned, as nothing forces rsp's alignment.
        let ra = unsafe { ((cfa - 8) as *const usize).read_unaligned() };
        if in_main_text(ra) {
            return true;
        }
        (at, sp) = (ra.wrapping_sub(1), cfa);
    }
    false
}

/// A loaded object as `dl_iterate_phdr` reports it.
struct Object {
    base: usize,
    name: std::ffi::CString,
    /// Loaded segments: (start, end, executable).
    segs: Vec<(usize, usize, bool)>,
    dynamic: usize,
    eh_frame_hdr: usize,
}

/// Which policy an object gets, by file name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Libc,
    Libm,
}

fn kind_of(path: &CStr) -> Option<Kind> {
    let p = path.to_bytes();
    let file = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
    if file.starts_with(b"libc.so.") {
        Some(Kind::Libc)
    } else if file.starts_with(b"libm.so.") {
        Some(Kind::Libm)
    } else {
        None
    }
}

fn loaded_objects() -> Vec<Object> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for each object and
        // `data` is the Vec passed below.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<Object>>()) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a non-null dlpi_name is a NUL-terminated path.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) };
        if kind_of(name).is_none() {
            return 0;
        }
        let base = info.dlpi_addr as usize;
        let mut obj = Object {
            base,
            name: name.to_owned(),
            segs: Vec::new(),
            dynamic: 0,
            eh_frame_hdr: 0,
        };
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr has dlpi_phnum entries.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            let start = base.wrapping_add(ph.p_vaddr as usize);
            match ph.p_type {
                libc::PT_LOAD => obj.segs.push((
                    start,
                    start.saturating_add(ph.p_memsz as usize),
                    ph.p_flags & libc::PF_X != 0,
                )),
                libc::PT_DYNAMIC => obj.dynamic = start,
                libc::PT_GNU_EH_FRAME => obj.eh_frame_hdr = start,
                _ => {}
            }
        }
        out.push(obj);
        0
    }
    let mut out: Vec<Object> = Vec::new();
    // SAFETY: the callback only reads the headers it is given and pushes
    // onto `out`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut out as *mut Vec<Object>).cast()) };
    out
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

const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_RELA: u64 = 7;
const DT_RELASZ: u64 = 8;
const DT_STRSZ: u64 = 10;
const DT_JMPREL: u64 = 23;
const DT_PLTRELSZ: u64 = 2;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const R_X86_64_IRELATIVE: u64 = 37;
const SYM_SIZE: usize = 24;
const RELA_SIZE: usize = 24;

/// Elf64_Sym, read field by field.
struct Sym {
    name: u32,
    kind: u8,
    shndx: u16,
    value: usize,
    size: usize,
}

impl Object {
    /// Reads a `T` at `addr` if all of it lies in one loaded segment.
    fn read<T: Copy>(&self, addr: usize) -> Option<T> {
        let end = addr.checked_add(core::mem::size_of::<T>())?;
        self.segs.iter().find(|s| addr >= s.0 && end <= s.1)?;
        // SAFETY: [addr, end) lies in a segment the loader mapped for this
        // object (readable: every PT_LOAD of a shared object is), which
        // stays mapped (we never unload it); unaligned reads are allowed.
        Some(unsafe { (addr as *const T).read_unaligned() })
    }

    /// Whether `[start, end)` lies in one executable segment.
    fn in_text(&self, start: usize, end: usize) -> bool {
        start < end && self.segs.iter().any(|s| s.2 && start >= s.0 && end <= s.1)
    }

    /// A `d_ptr` of the dynamic section as an address: glibc relocates them
    /// in place on x86-64, other loaders may not.
    fn dptr(&self, p: u64) -> usize {
        let p = p as usize;
        if p < self.base {
            self.base.wrapping_add(p)
        } else {
            p
        }
    }

    /// The dynamic entries we use, by tag.
    fn dyn_entry(&self, tag: u64) -> Option<u64> {
        if self.dynamic == 0 {
            return None;
        }
        let mut at = self.dynamic;
        loop {
            let t: u64 = self.read(at)?;
            if t == DT_NULL {
                return None;
            }
            if t == tag {
                return self.read(at + 8);
            }
            at = at.checked_add(16)?;
        }
    }

    /// Number of `.dynsym` entries, from the hash table.
    fn sym_count(&self) -> Option<usize> {
        if let Some(h) = self.dyn_entry(DT_HASH) {
            let h = self.dptr(h);
            return self.read::<u32>(h + 4).map(|n| n as usize);
        }
        let h = self.dptr(self.dyn_entry(DT_GNU_HASH)?);
        let nbuckets = self.read::<u32>(h)? as usize;
        let symoffset = self.read::<u32>(h + 4)? as usize;
        let bloom = self.read::<u32>(h + 8)? as usize;
        let buckets = h + 16 + bloom.checked_mul(8)?;
        let chains = buckets + nbuckets.checked_mul(4)?;
        let mut last = 0usize;
        for i in 0..nbuckets {
            last = last.max(self.read::<u32>(buckets + 4 * i)? as usize);
        }
        if last < symoffset {
            return Some(symoffset);
        }
        // Follow the last bucket's chain to its end (low bit set).
        loop {
            let hash = self.read::<u32>(chains + 4 * (last - symoffset))?;
            if hash & 1 != 0 {
                return Some(last + 1);
            }
            last += 1;
        }
    }

    fn sym(&self, symtab: usize, i: usize) -> Option<Sym> {
        let at = symtab.checked_add(i.checked_mul(SYM_SIZE)?)?;
        let info: u8 = self.read(at + 4)?;
        Some(Sym {
            name: self.read(at)?,
            kind: info & 0xf,
            shndx: self.read(at + 6)?,
            value: self.read::<u64>(at + 8)? as usize,
            size: self.read::<u64>(at + 16)? as usize,
        })
    }

    /// The NUL-terminated name at `strtab + off`, bounded by `strsz`.
    fn name_at(&self, strtab: usize, strsz: usize, off: u32) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = off as usize;
        while i < strsz {
            let b: u8 = self.read(strtab + i)?;
            if b == 0 {
                return Some(out);
            }
            out.push(b);
            i += 1;
        }
        None
    }

    /// Adds this object's admitted ranges to `out` (see the module docs).
    fn admit(&self, kind: Kind, out: &mut Vec<(usize, usize)>) {
        let Some(handle) = self.handle() else { return };
        let (Some(symtab), Some(strtab), Some(strsz), Some(count)) = (
            self.dyn_entry(DT_SYMTAB),
            self.dyn_entry(DT_STRTAB),
            self.dyn_entry(DT_STRSZ),
            self.sym_count(),
        ) else {
            return;
        };
        let (symtab, strtab) = (self.dptr(symtab), self.dptr(strtab));
        for i in 1..count {
            let Some(s) = self.sym(symtab, i) else { break };
            if s.shndx == 0 || (s.kind != STT_FUNC && s.kind != STT_GNU_IFUNC) {
                continue; // undefined, or not a function
            }
            let Some(name) = self.name_at(strtab, strsz as usize, s.name) else {
                continue;
            };
            if kind == Kind::Libc && !LIBC_LEAVES.iter().any(|l| l.as_bytes() == name) {
                continue;
            }
            let range = if s.kind == STT_FUNC {
                let start = self.base.wrapping_add(s.value);
                Some((start, start.saturating_add(s.size)))
            } else {
                self.resolve_ifunc(handle, name)
                    .and_then(|a| self.fn_extent(a))
            };
            if let Some((a, b)) = range {
                if self.in_text(a, b) {
                    out.push((a, b));
                }
            }
        }
        if kind == Kind::Libm {
            for (rel, sz) in [(DT_RELA, DT_RELASZ), (DT_JMPREL, DT_PLTRELSZ)] {
                if let (Some(r), Some(n)) = (self.dyn_entry(rel), self.dyn_entry(sz)) {
                    self.admit_irelative(self.dptr(r), n as usize / RELA_SIZE, out);
                }
            }
        }
    }

    /// The targets the loader chose for this object's IRELATIVE relocations.
    fn admit_irelative(&self, rela: usize, n: usize, out: &mut Vec<(usize, usize)>) {
        for i in 0..n {
            let at = rela + i * RELA_SIZE;
            let (Some(offset), Some(info)) = (self.read::<u64>(at), self.read::<u64>(at + 8))
            else {
                return;
            };
            if info & 0xffff_ffff != R_X86_64_IRELATIVE {
                continue;
            }
            let slot = self.base.wrapping_add(offset as usize);
            if let Some((a, b)) = self.read::<usize>(slot).and_then(|t| self.fn_extent(t)) {
                if self.in_text(a, b) {
                    out.push((a, b));
                }
            }
        }
    }

    /// A loader handle for this object (already loaded: RTLD_NOLOAD). Never
    /// closed, which keeps the object, and so the table, valid.
    fn handle(&self) -> Option<*mut libc::c_void> {
        // SAFETY: `name` is a NUL-terminated path of a loaded object;
        // RTLD_NOLOAD never loads anything new.
        let h = unsafe { libc::dlopen(self.name.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
        (!h.is_null()).then_some(h)
    }

    /// The implementation the IFUNC `name` resolves to, if it lies in this
    /// object's code.
    fn resolve_ifunc(&self, handle: *mut libc::c_void, name: Vec<u8>) -> Option<usize> {
        let name = std::ffi::CString::new(name).ok()?;
        // SAFETY: `handle` is a live dlopen handle and `name` a C string;
        // dlsym runs the object's own resolver, as the loader did for the
        // program's calls.
        let a = unsafe { libc::dlsym(handle, name.as_ptr()) } as usize;
        self.in_text(a, a + 1).then_some(a)
    }

    /// The extent `[start, end)` of the function containing `pc`, from its
    /// FDE.
    fn fn_extent(&self, pc: usize) -> Option<(usize, usize)> {
        self.rows(pc, 0, 0, &mut Vec::new())
    }

    /// The FDE of the function containing `pc`, from `.eh_frame_hdr`'s
    /// sorted table: (function start, FDE address). None for any table
    /// encoding other than the one binutils emits.
    fn find_fde(&self, pc: usize) -> Option<(usize, usize)> {
        let hdr = self.eh_frame_hdr;
        if hdr == 0 || self.read::<u8>(hdr)? != 1 {
            return None;
        }
        let ptr_enc: u8 = self.read(hdr + 1)?;
        let count_enc: u8 = self.read(hdr + 2)?;
        let table_enc: u8 = self.read(hdr + 3)?;
        // The table must be datarel|sdata4 pairs and the count udata4.
        if count_enc != 0x03 || table_enc != 0x3b {
            return None;
        }
        let count_at = hdr + 4 + enc_size(ptr_enc)?;
        let n = self.read::<u32>(count_at)? as usize;
        let table = count_at + 4;
        let rel = |at: usize| -> Option<usize> {
            Some(hdr.wrapping_add_signed(self.read::<i32>(at)? as isize))
        };
        // Last entry starting at or below pc.
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if rel(table + 8 * mid)? <= pc {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let i = lo.checked_sub(1)?;
        Some((rel(table + 8 * i)?, rel(table + 8 * i + 4)?))
    }

    /// The rows of the function containing `pc` (see [`Row`]), clipped to
    /// `[lo, hi)`, and returns the function's extent: its CFI program (the CIE's initial instructions, then the
    /// FDE's) run from the function start, keeping the stretches where the
    /// CFA is rsp + a constant. None if the FDE or CIE is in a form we do
    /// not parse, the function is implausibly long, or it does not cover
    /// `pc`.
    fn rows(&self, pc: usize, lo: usize, hi: usize, out: &mut Vec<Row>) -> Option<(usize, usize)> {
        let (start, fde) = self.find_fde(pc)?;
        let len: u32 = self.read(fde)?;
        if len == 0 || len == u32::MAX {
            return None; // terminator, or a 64-bit length we do not parse
        }
        let fde_end = fde + 4 + len as usize;
        let cie_off: u32 = self.read(fde + 4)?;
        let cie = self.cie((fde + 4).checked_sub(cie_off as usize)?)?;
        let size = enc_size(cie.enc)?;
        let at = fde + 8 + size; // after pc_begin
        let range = match size {
            2 => self.read::<u16>(at)? as usize,
            4 => self.read::<u32>(at)? as usize,
            8 => self.read::<u64>(at)? as usize,
            _ => return None,
        };
        let end = start.checked_add(range)?;
        if !(start <= pc && pc < end && range <= MAX_FN_LEN) {
            return None;
        }
        let mut insns = at + size;
        if cie.augmented {
            let (aug_len, next) = self.leb(insns)?;
            insns = next.checked_add(aug_len as usize)?;
        }
        let mut st = CfiState {
            pc: start,
            reg: RSP,
            off: 8,
            saved: Vec::new(),
            rows: Vec::new(),
        };
        self.run_cfi(&cie, cie.insns.0, cie.insns.1, &mut st)?;
        self.run_cfi(&cie, insns, fde_end, &mut st)?;
        st.emit(end);
        for r in st.rows {
            let (s, e) = (r.start.max(lo), r.end.min(hi));
            if s < e {
                out.push(Row {
                    start: s,
                    end: e,
                    cfa: r.cfa,
                });
            }
        }
        Some((start, end))
    }

    /// The CIE at `cie`: pointer encoding ('R'), alignment factors, and its
    /// initial instructions.
    fn cie(&self, cie: usize) -> Option<Cie> {
        let len: u32 = self.read(cie)?;
        if len == u32::MAX || self.read::<u32>(cie + 4)? != 0 {
            return None;
        }
        let end = cie + 4 + len as usize;
        let version: u8 = self.read(cie + 8)?;
        let mut at = cie + 9;
        let mut aug = Vec::new();
        loop {
            let b: u8 = self.read(at)?;
            at += 1;
            if b == 0 {
                break;
            }
            aug.push(b);
        }
        let (code_align, next) = self.leb(at)?;
        let (data_align, next) = self.sleb(next)?;
        let (ra, next) = if version == 1 {
            (self.read::<u8>(next)? as u64, next + 1)
        } else {
            self.leb(next)?
        };
        if ra != RA {
            return None;
        }
        at = next;
        let mut enc = 0u8; // absptr without 'R'
        let augmented = aug.first() == Some(&b'z');
        if augmented {
            let (aug_len, data) = self.leb(at)?;
            let mut p = data;
            for &c in &aug[1..] {
                match c {
                    b'R' => {
                        enc = self.read(p)?;
                        p += 1;
                    }
                    b'L' => p += 1,
                    b'P' => {
                        let penc: u8 = self.read(p)?;
                        p += 1 + enc_size(penc)?;
                    }
                    b'S' | b'B' => {}
                    _ => return None,
                }
            }
            at = data.checked_add(aug_len as usize)?;
        } else if !aug.is_empty() {
            return None;
        }
        Some(Cie {
            enc,
            augmented,
            code_align,
            data_align,
            insns: (at, end),
        })
    }

    /// Runs the CFI instructions in `[at, end)`, tracking only the CFA rule.
    fn run_cfi(&self, cie: &Cie, mut at: usize, end: usize, st: &mut CfiState) -> Option<()> {
        while at < end {
            let op: u8 = self.read(at)?;
            at += 1;
            let advance = |st: &mut CfiState, d: u64| -> Option<()> {
                let to = st
                    .pc
                    .checked_add((d.checked_mul(cie.code_align)?) as usize)?;
                st.emit(to);
                st.pc = to;
                Some(())
            };
            match op >> 6 {
                1 => {
                    advance(st, u64::from(op & 0x3f))?;
                    continue;
                }
                2 => {
                    at = self.leb(at)?.1; // offset: where a register is saved
                    continue;
                }
                3 => continue, // restore a register
                _ => {}
            }
            match op {
                0x00 => {}
                0x02 => {
                    advance(st, u64::from(self.read::<u8>(at)?))?;
                    at += 1;
                }
                0x03 => {
                    advance(st, u64::from(self.read::<u16>(at)?))?;
                    at += 2;
                }
                0x04 => {
                    advance(st, u64::from(self.read::<u32>(at)?))?;
                    at += 4;
                }
                // offset_extended, register, val_offset: two ULEBs.
                0x05 | 0x09 | 0x14 => at = self.leb(self.leb(at)?.1)?.1,
                // restore_extended, undefined, same_value, GNU_args_size.
                0x06..=0x08 | 0x2e => at = self.leb(at)?.1,
                0x0a => st.saved.push((st.reg, st.off)),
                0x0b => (st.reg, st.off) = st.saved.pop()?,
                0x0c => {
                    let (reg, next) = self.leb(at)?;
                    let (off, next) = self.leb(next)?;
                    (st.reg, st.off, at) = (reg, i64::try_from(off).ok()?, next);
                }
                0x0d => (st.reg, at) = self.leb(at)?,
                0x0e => {
                    let (off, next) = self.leb(at)?;
                    (st.off, at) = (i64::try_from(off).ok()?, next);
                }
                0x0f => {
                    // def_cfa_expression: the CFA is no longer rsp + k.
                    let (n, next) = self.leb(at)?;
                    st.reg = NO_REG;
                    at = next.checked_add(n as usize)?;
                }
                // expression, val_expression: a register and a block.
                0x10 | 0x16 => {
                    let (n, next) = self.leb(self.leb(at)?.1)?;
                    at = next.checked_add(n as usize)?;
                }
                // offset_extended_sf, val_offset_sf: ULEB, SLEB.
                0x11 | 0x15 => at = self.sleb(self.leb(at)?.1)?.1,
                0x12 => {
                    let (reg, next) = self.leb(at)?;
                    let (off, next) = self.sleb(next)?;
                    (st.reg, st.off, at) = (reg, off.checked_mul(cie.data_align)?, next);
                }
                0x13 => {
                    let (off, next) = self.sleb(at)?;
                    (st.off, at) = (off.checked_mul(cie.data_align)?, next);
                }
                _ => return None, // set_loc and vendor opcodes: not parsed
            }
        }
        Some(())
    }

    fn leb(&self, mut at: usize) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b: u8 = self.read(at)?;
            at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some((v, at));
            }
        }
        None
    }

    fn sleb(&self, mut at: usize) -> Option<(i64, usize)> {
        let mut v = 0i64;
        for shift in (0..64).step_by(7) {
            let b: u8 = self.read(at)?;
            at += 1;
            v |= i64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift + 7 < 64 && b & 0x40 != 0 {
                    v |= -1i64 << (shift + 7);
                }
                return Some((v, at));
            }
        }
        None
    }
}

/// DWARF register numbers of the stack pointer and the return-address
/// column (the architecture's psABI).
const RSP: u64 = crate::arch::DWARF_SP;
const RA: u64 = crate::arch::DWARF_RA;
/// A CFA that is not a register plus an offset (an expression).
const NO_REG: u64 = u64::MAX;

/// What `rows` needs from a CIE.
struct Cie {
    enc: u8,
    augmented: bool,
    code_align: u64,
    data_align: i64,
    /// The initial instructions, `[start, end)`.
    insns: (usize, usize),
}

/// The CFA rule while a CFI program runs, and the rows emitted so far.
struct CfiState {
    pc: usize,
    reg: u64,
    off: i64,
    saved: Vec<(u64, i64)>,
    rows: Vec<Row>,
}

impl CfiState {
    /// Closes the stretch `[pc, to)` under the current rule: a row if the
    /// CFA is rsp plus a sane offset (at least the return address, below
    /// 64 KiB), none otherwise (pcs there stay refused).
    fn emit(&mut self, to: usize) {
        if to > self.pc && self.reg == RSP && (8..1 << 16).contains(&self.off) {
            let cfa = self.off as usize;
            match self.rows.last_mut() {
                Some(r) if r.end == self.pc && r.cfa == cfa => r.end = to,
                _ => self.rows.push(Row {
                    start: self.pc,
                    end: to,
                    cfa,
                }),
            }
        }
    }
}

/// Size of a DWARF EH pointer of encoding `enc` (fixed-size formats only).
fn enc_size(enc: u8) -> Option<usize> {
    match enc & 0x0f {
        0x00 | 0x04 | 0x0c => Some(8),
        0x02 | 0x0a => Some(2),
        0x03 | 0x0b => Some(4),
        _ => None,
    }
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
        for obj in loaded_objects() {
            if kind_of(&obj.name) != Some(Kind::Libc) {
                continue;
            }
            let symtab = obj.dptr(obj.dyn_entry(DT_SYMTAB).unwrap());
            let strtab = obj.dptr(obj.dyn_entry(DT_STRTAB).unwrap());
            let strsz = obj.dyn_entry(DT_STRSZ).unwrap() as usize;
            for i in 1..obj.sym_count().unwrap() {
                let s = obj.sym(symtab, i).unwrap();
                let n = obj.name_at(strtab, strsz, s.name).unwrap();
                if s.shndx != 0 && n.starts_with(b"pthread_") {
                    names.push(String::from_utf8(n).unwrap());
                }
            }
        }
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
            let got = unsafe { admits(memcpy, rsp, rsp + 32, in_main) };
            assert_eq!(got, want, "return address {ra:#x}");
        }
        let stack = [main_ra];
        let rsp = stack.as_ptr() as usize;
        // SAFETY: only [rsp, rsp + 4) would be read, and it is refused.
        assert!(!unsafe { admits(memcpy, rsp, rsp + 4, in_main) });
        // A pc outside every admitted routine.
        // SAFETY: as above; nothing is read.
        assert!(!unsafe { admits(addr_of("malloc"), rsp, rsp + 8, in_main) });
    }
}
