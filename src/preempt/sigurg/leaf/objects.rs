//! Which routines are admitted, and where they are: libc's allowlist,
//! libm's exports, and the IFUNC implementations the loader chose, found
//! in each loaded object's dynamic section.
//!
//! # How
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
//! 4. Each function's rows come from its FDE program (`super::cfi`).
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

use std::ffi::CStr;

/// libc routines whose implementation may be preempted: memory and string
/// routines that use only registers and the stack (no locale, no errno, no
/// allocation, no lock), and the clock wrappers, which call the vDSO (or
/// make the system call) and at most store `errno` on failure, as libm
/// does. IFUNCs are resolved to the implementation chosen for this CPU
/// (glibc's `time` and `gettimeofday` may resolve into the vDSO, admitted
/// there).
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
    "clock_gettime",
    "__clock_gettime",
    "gettimeofday",
    "time",
];

/// The vDSO's functions admitted: the clocks and `getcpu` (a few loads
/// from the kernel's data page, `rdtscp`, and for clocks the page does not
/// cover a `syscall`: no lock, no thread state, and the kernel itself
/// preempts and migrates threads anywhere in them). Not
/// `__vdso_sgx_enter_enclave`.
const VDSO_LEAVES: &[&str] = &[
    "clock_gettime",
    "__vdso_clock_gettime",
    "clock_getres",
    "__vdso_clock_getres",
    "gettimeofday",
    "__vdso_gettimeofday",
    "time",
    "__vdso_time",
    "getcpu",
    "__vdso_getcpu",
];

/// A loaded object as `dl_iterate_phdr` reports it.
pub(super) struct Object {
    base: usize,
    pub(super) name: std::ffi::CString,
    /// Loaded segments: (start, end, executable).
    segs: Vec<(usize, usize, bool)>,
    dynamic: usize,
    pub(super) eh_frame_hdr: usize,
}

/// Which policy an object gets, by file name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Libc,
    Libm,
    Vdso,
}

pub(super) fn kind_of(path: &CStr) -> Option<Kind> {
    let p = path.to_bytes();
    let file = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
    if file.starts_with(b"libc.so.") {
        Some(Kind::Libc)
    } else if file.starts_with(b"libm.so.") {
        Some(Kind::Libm)
    } else if file.starts_with(b"linux-vdso.so.") {
        Some(Kind::Vdso)
    } else {
        None
    }
}

pub(super) fn loaded_objects() -> Vec<Object> {
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
    pub(super) fn read<T: Copy>(&self, addr: usize) -> Option<T> {
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
    pub(super) fn admit(&self, kind: Kind, out: &mut Vec<(usize, usize)>) {
        // For IFUNCs only (the vDSO has none, and no loader handle).
        let handle = if kind == Kind::Vdso {
            None
        } else {
            let Some(h) = self.handle() else { return };
            Some(h)
        };
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
            let allowlist = match kind {
                Kind::Libc => Some(LIBC_LEAVES),
                Kind::Vdso => Some(VDSO_LEAVES),
                Kind::Libm => None, // every function
            };
            if allowlist.is_some_and(|l| !l.iter().any(|f| f.as_bytes() == name)) {
                continue;
            }
            let range = if s.kind == STT_FUNC {
                let start = self.base.wrapping_add(s.value);
                Some((start, start.saturating_add(s.size)))
            } else {
                handle
                    .and_then(|h| self.resolve_ifunc(h, name))
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
}

/// Test support: the vDSO's executable segment, if one is mapped.
#[cfg(test)]
pub(super) fn vdso_text() -> Option<(usize, usize)> {
    loaded_objects()
        .into_iter()
        .find(|o| kind_of(&o.name) == Some(Kind::Vdso))?
        .segs
        .iter()
        .find(|s| s.2)
        .map(|s| (s.0, s.1))
}

/// Test support: the names of the functions libc defines and exports that
/// start with `prefix`.
#[cfg(test)]
pub(super) fn libc_exports(prefix: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
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
            if s.shndx != 0 && n.starts_with(prefix) {
                names.push(String::from_utf8(n).unwrap());
            }
        }
    }
    names
}
