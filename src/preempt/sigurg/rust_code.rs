//! Which code of the main executable may be preempted: its Rust functions,
//! not the C, C++ or allocator code linked into it (safe-point rule 4).
//!
//! # Why
//!
//! Rule 4 used to admit every pc in the main executable's code. But the
//! executable is not all Rust: a `#[global_allocator]` such as mimalloc or
//! jemalloc is C compiled into it, a static musl or glibc build carries
//! `malloc`, stdio and pthread, and `cc`-built libraries (sqlite, zstd)
//! take their own locks. A goroutine preempted inside one of those, in the
//! middle of a thread-cache update or holding the allocator's lock, left
//! the scheduler to run on the same thread: g0 allocates (a run-queue block,
//! due timers, a new M's thread), and in Migrate mode the thread goes on to
//! run other goroutines that allocate. The thread cache was re-entered
//! half-updated (the same block handed out twice) or the thread waited on
//! the lock it held itself. Go refuses C code for the same reason: it
//! cannot preempt cgo calls at all.
//!
//! # The rule
//!
//! A pc of the main executable is admitted when it lies in a function
//! whose symbol is a Rust mangling (`_R...`, v0, or legacy `_ZN...17h<16
//! hex digits>E`, which C++'s `_ZN` names never end in), other than an
//! allocator's own methods: a `GlobalAlloc` implementation (its mangled
//! name contains `GlobalAlloc`) and the allocator shims the compiler
//! generates (`__rust_alloc`, `__rg_alloc`, `__rdl_alloc` & co., whose
//! names are not mangled anyway). Unmangled names are C, C++ (`_Z` without
//! the Rust hash), assembly, or `#[no_mangle]` functions: refused. A pc in
//! no named function (PLT stubs, padding) is refused too. Everything
//! refused is still preempted cooperatively, at its next runtime call, and
//! sysmon retries the signal with its usual backoff.
//!
//! # Where the names come from
//!
//! The executable's `.symtab`, read once from `/proc/self/exe` at start-up
//! (outside the handler): section headers, the symbol table and its string
//! table. Function symbols (`STT_FUNC`, non-zero size), relocated by the
//! executable's load address and sorted, give runs of admitted functions
//! with no refused one between them; each run is one `[start, end)` range
//! (a few hundred for a large program, not one per function); the handler
//! binary-searches the leaked table (no allocation, no lock, no call).
//!
//! A stripped executable (`strip = "symbols"`, or `strip` run on it) has
//! no `.symtab`: then every pc of its code is admitted, as before. With a
//! C allocator or static libc inside, keep its symbols (Cargo's default
//! release profile keeps them) or turn asynchronous preemption off.
//!
//! Not caught: a Rust allocator whose `GlobalAlloc` methods call other
//! Rust functions that take a lock (a spin-locked pool in a function of its
//! own): preempted there, the pool stays locked while g0 allocates on the
//! same thread. Such an allocator should mark its critical sections with
//! [`crate::no_preempt`], or keep them inside its `GlobalAlloc` methods.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Admitted ranges `[start, end)`, sorted and disjoint.
struct Table {
    ranges: Vec<(usize, usize)>,
}

/// Written once by `init` (Release) before the SIGURG handler is installed;
/// read by the handler (Acquire). Null: no symbol table (every pc of the
/// main executable's code is admitted).
static TABLE: AtomicPtr<Table> = AtomicPtr::new(core::ptr::null_mut());

/// Builds and publishes the table from the executable's symbol table
/// (once per process, from `preempt::install`, before the handler is
/// installed). `load` is the executable's load address (its
/// `dl_iterate_phdr` bias). Not async-signal-safe: it reads a file and
/// allocates.
pub(super) fn init(load: usize) {
    if !TABLE.load(Ordering::Acquire).is_null() {
        return;
    }
    let Some(ranges) = File::open("/proc/self/exe")
        .ok()
        .and_then(|f| rust_functions(&f, load))
    else {
        return;
    };
    // Self-check: this very function is Rust. If the table does not admit
    // it, the names are mangled in a way `admitted_name` does not know
    // (a future scheme, a linker that renames): admit the whole text, as
    // without a symbol table, rather than refuse every preemption (a
    // release build whose symbols carry LLVM's `.llvm.<n>` suffix was
    // refused everywhere until the suffix was understood).
    let me = init as *const () as usize;
    if !self_check(&ranges, me, super::handler::in_main_text(me)) {
        return;
    }
    // Pairs with the Acquire in `admits`.
    super::publish_once(&TABLE, Table { ranges });
}

/// Whether the table may be used, given where `init` itself is (`me`): it
/// must admit `init` when gosched is part of the main executable. When it
/// is not (a cdylib or staticlib loaded by a C or Python host: `init` lies
/// in another object), the check says nothing about the host's names, and
/// the table (the host's Rust functions, if any) is used: falling back to
/// the whole text there admitted the host's C code, the case rule 4 exists
/// for.
fn self_check(ranges: &[(usize, usize)], me: usize, me_in_main_text: bool) -> bool {
    if !me_in_main_text {
        return true;
    }
    let i = ranges.partition_point(|&(start, _)| start <= me);
    i != 0 && me < ranges[i - 1].1
}

/// Rule 4 for a pc of the main executable: `Some(true)` if it lies in an
/// admitted Rust function, `Some(false)` if not, `None` if there is no
/// table (stripped executable: the caller admits the whole text).
/// Async-signal-safe: an atomic load and a binary search of an immutable
/// slice.
pub(super) fn admits(pc: usize) -> Option<bool> {
    // Pairs with the Release in `init`.
    let t = TABLE.load(Ordering::Acquire);
    if t.is_null() {
        return None;
    }
    // SAFETY: a published table is leaked and never changed.
    let ranges = unsafe { &(*t).ranges };
    let i = ranges.partition_point(|&(start, _)| start <= pc);
    Some(i > 0 && pc < ranges[i - 1].1)
}

/// Is `name` a Rust function that may be preempted (module docs, "The
/// rule")?
fn admitted_name(name: &[u8]) -> bool {
    let rust = name.starts_with(b"_R") || is_legacy_rust(name);
    rust && !contains(name, b"GlobalAlloc")
}

/// `_ZN` ... `17h` + 16 lowercase hex digits + `E`: the legacy Rust
/// mangling, whose hash suffix C++ names do not have; LLVM may append
/// `.llvm.<digits>` (a symbol promoted across codegen units) or `.cold`
/// (a split-off cold part) after it.
fn is_legacy_rust(name: &[u8]) -> bool {
    const HASH: usize = 3 + 16 + 1;
    if !name.starts_with(b"_ZN") {
        return false;
    }
    // The hash ends the mangled name proper: at the end, or before the
    // first '.' that follows an `E` (mangled paths spell `::` as `..`, so
    // search from the right for a hash that ends at the end or at a '.').
    (3..name.len()).rev().any(|i| {
        let end = i + HASH;
        end <= name.len()
            && name[i..].starts_with(b"17h")
            && name[end - 1] == b'E'
            && (end == name.len() || name[end] == b'.')
            && name[i + 3..end - 1]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const SHT_SYMTAB: u32 = 2;
const STT_FUNC: u8 = 2;
const EHDR: usize = 64;
const SHDR: usize = 64;
const SYM: usize = 24;

/// The admitted ranges of the ELF file `f` loaded at `load`, or None if it
/// has no symbol table or does not parse as a 64-bit little-endian ELF.
fn rust_functions(f: &File, load: usize) -> Option<Vec<(usize, usize)>> {
    let mut eh = [0u8; EHDR];
    f.read_exact_at(&mut eh, 0).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let shoff = u64_at(&eh, 0x28)?;
    let shentsize = usize::from(u16_at(&eh, 0x3a)?);
    let shnum = usize::from(u16_at(&eh, 0x3c)?);
    if shentsize != SHDR || shnum == 0 {
        return None;
    }
    let mut sh = vec![0u8; shnum.checked_mul(SHDR)?];
    f.read_exact_at(&mut sh, shoff).ok()?;
    let section = |i: usize| sh.get(i * SHDR..(i + 1) * SHDR);
    let (symtab, link) = (0..shnum).find_map(|i| {
        let s = section(i)?;
        (u32_at(s, 4)? == SHT_SYMTAB).then(|| (s, u32_at(s, 40)))
    })?;
    let strtab = section(usize::try_from(link?).ok()?)?;
    let syms = read_section(f, symtab)?;
    let strs = read_section(f, strtab)?;
    // Every function, admitted or not: (start, end, admitted).
    let mut funcs: Vec<(usize, usize, bool)> = syms
        .chunks_exact(SYM)
        .filter_map(|s| {
            let (name, info) = (u32_at(s, 0)?, s[4]);
            let (value, size) = (u64_at(s, 8)?, u64_at(s, 16)?);
            if info & 0xf != STT_FUNC || size == 0 || value == 0 {
                return None;
            }
            let name = strs.get(usize::try_from(name).ok()?..)?;
            let name = &name[..name.iter().position(|&c| c == 0)?];
            let start = load.checked_add(usize::try_from(value).ok()?)?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            Some((start, end, admitted_name(name)))
        })
        .collect();
    // By start; at one start the admitted first, so that a refused alias
    // of the same code cuts it out (refusal wins).
    funcs.sort_unstable_by_key(|&(start, end, ok)| (start, !ok, end));
    // Merge runs of admitted functions with nothing refused between them
    // (only alignment padding, never executed): the table stays small
    // (tens of ranges, not one per function) and the handler's search
    // touches few cache lines. A refused function (or an alias of one)
    // ends the run and is cut out of any admitted range overlapping it.
    let mut merged: Vec<(usize, usize)> = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    for (start, end, ok) in funcs {
        match (ok, run.as_mut()) {
            (true, Some(r)) => r.1 = r.1.max(end),
            (true, None) => run = Some((start, end)),
            (false, Some(r)) => {
                let (s, e) = (r.0, r.1.min(start));
                if s < e {
                    merged.push((s, e));
                }
                run = None;
            }
            (false, None) => {
                // An admitted range already closed may overlap this one.
                if let Some(last) = merged.last_mut() {
                    last.1 = last.1.min(start).max(last.0);
                }
            }
        }
    }
    merged.extend(run);
    merged.retain(|&(s, e)| s < e);
    merged.shrink_to_fit();
    Some(merged)
}

/// The bytes of the section whose header is `sh`.
fn read_section(f: &File, sh: &[u8]) -> Option<Vec<u8>> {
    let (off, size) = (u64_at(sh, 24)?, u64_at(sh, 32)?);
    let mut buf = vec![0u8; usize::try_from(size).ok()?];
    f.read_exact_at(&mut buf, off).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};

    /// The self-check falls back to the whole text only when gosched is in
    /// the main executable and the table does not admit its own `init`;
    /// gosched in a library loaded by a C host keeps the table (it used to
    /// fall back, admitting the host's C code).
    #[test]
    fn self_check_keeps_the_table_for_a_host_executable() {
        let ranges = [(0x1000, 0x2000), (0x3000, 0x4000)];
        assert!(self_check(&ranges, 0x1800, true));
        assert!(!self_check(&ranges, 0x2800, true));
        assert!(!self_check(&ranges, 0x800, true));
        assert!(self_check(&ranges, 0x7f00_0000_0000, false));
        assert!(self_check(&[], 0x7f00_0000_0000, false));
    }

    /// An allocator type whose methods the table must refuse.
    struct Counting;

    // SAFETY: forwards to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[inline(never)]
    fn a_rust_function(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(3)
    }

    #[no_mangle]
    #[inline(never)]
    extern "C" fn gosched_test_unmangled_function(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_add(7)
    }

    fn table() -> &'static [(usize, usize)] {
        crate::preempt::install();
        let t = TABLE.load(Ordering::Acquire);
        assert!(!t.is_null(), "the test binary has a symbol table");
        // SAFETY: published tables are leaked and immutable.
        unsafe { &(*t).ranges }
    }

    #[test]
    fn rust_functions_are_admitted_and_c_and_allocators_are_not() {
        assert!(!table().is_empty());
        assert_eq!(admits(a_rust_function as *const () as usize), Some(true));
        assert_eq!(
            admits(a_rust_function as *const () as usize + 1),
            Some(true)
        );
        assert_eq!(
            admits(gosched_test_unmangled_function as *const () as usize),
            Some(false),
            "an unmangled (C-like) function"
        );
        let alloc = <Counting as GlobalAlloc>::alloc as unsafe fn(&Counting, Layout) -> *mut u8;
        let dealloc = <Counting as GlobalAlloc>::dealloc as unsafe fn(&Counting, *mut u8, Layout);
        assert_eq!(admits(alloc as usize), Some(false), "a GlobalAlloc method");
        assert_eq!(
            admits(dealloc as usize),
            Some(false),
            "a GlobalAlloc method"
        );
        // Keep them used.
        assert_eq!(a_rust_function(2), 6);
        assert_eq!(gosched_test_unmangled_function(1), 8);
        let l = Layout::new::<u64>();
        // SAFETY: a valid layout; the block is freed with the same one.
        unsafe { Counting.dealloc(Counting.alloc(l), l) };
    }

    #[test]
    fn the_table_is_sorted_and_disjoint() {
        let t = table();
        assert!(t.iter().all(|&(s, e)| s < e));
        assert!(t.windows(2).all(|w| w[0].1 < w[1].0));
    }

    #[test]
    fn names_are_judged_by_their_mangling() {
        assert!(admitted_name(
            b"_ZN4core3ptr13drop_in_place17h0123456789abcdefE"
        ));
        assert!(admitted_name(b"_RNvCs1234_7mycrate4main"));
        // LLVM's suffixes after the hash (ThinLTO promotion, cold splits).
        assert!(admitted_name(
            b"_ZN76_$LT$gosched..join..Task$LT$F$C$R$GT$$u20$as$u20$gosched..sched..g..Body$GT$3run17h4db76539f09d1ccdE.llvm.14220034456478276340"
        ));
        assert!(admitted_name(b"_ZN3foo3bar17h0123456789abcdefE.cold"));
        assert!(admitted_name(b"_RNvCs1234_7mycrate4main.llvm.42"));
        // C++: `_ZN` without Rust's hash.
        assert!(!admitted_name(b"_ZN7rocksdb2DB4OpenEv"));
        assert!(!admitted_name(b"_ZN4core3ptr4drop17h0123456789abcdeE"));
        assert!(!admitted_name(b"malloc"));
        assert!(!admitted_name(b"mi_malloc_aligned"));
        assert!(!admitted_name(b"__rust_alloc"));
        assert!(!admitted_name(b"__rg_alloc"));
        assert!(!admitted_name(
            b"_ZN73_$LT$mimalloc..MiMalloc$u20$as$u20$core..alloc..global..GlobalAlloc$GT$5alloc17h0123456789abcdefE"
        ));
    }
}
