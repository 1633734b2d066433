//! Goroutine stacks: one `MAP_NORESERVE` reservation carved into fixed slots,
//! each with a guard region (`GUARD`, 64 KiB) at its low end.
//!
//! ```text
//!   reservation (RESERVATION bytes, nothing committed until touched)
//!   +-------+----------------+-------+----------------+-------+----- ...
//!   | guard | stack 0  <-sp  | guard | stack 1  <-sp  | guard |
//!   +-------+----------------+-------+----------------+-------+----- ...
//!   ^base    \_ stack_size _/
//! ```
//!
//! 1. A slot is carved (bump index) the first time the pool has no free
//!    stack; its guard is installed then, with `madvise(MADV_GUARD_INSTALL)`
//!    (Linux 6.13+, costs no VMA) or, where the kernel answers EINVAL,
//!    `mprotect(PROT_NONE)` (two VMAs a stack; we warn before
//!    `vm.max_map_count` would be reached).
//! 2. A finished goroutine's stack goes back to its P's cache, then to the
//!    pool. Its hot top pages stay committed; a stack that was used deeply
//!    (a non-zero word at `DEEP` below its top) is `MADV_DONTNEED`-ed down to
//!    `KEEP_HOT` first, so resident memory follows live usage.
//! 3. The reservation is registered process-wide so the SIGSEGV handler can
//!    tell a guard-page hit (a goroutine stack overflow) from any other fault
//!    without locks (see `crate::os::signal`).
//! 4. At runtime shutdown the reservation is unmapped, unless goroutines
//!    were abandoned with their stacks: then it stays mapped, the memory of
//!    its other stacks released, and the next pool with the same layout
//!    takes it over (`Retired`).
//!
//! The guard is 64 KiB, not one page, because the stack below it is another
//! goroutine's: a C function whose frame is larger than the guard and that
//! does not touch every page of it (code built without
//! `-fstack-clash-protection`; Rust always probes frames over a page) would
//! step over a one-page guard into the neighbouring stack's oldest frames
//! and corrupt them silently. `MADV_GUARD_INSTALL` makes the size free (no
//! memory, no VMA); it costs address space only, ~6 % of the reservation's
//! slots at the default 1 MiB stack.
//!
//! Rejected: one `mmap` per stack (a VMA and a syscall per spawn; the
//! mapping count caps a process near 32k goroutines), and segmented or
//! copied stacks (Rust code holds raw pointers into its stack, so a stack
//! can never move).

mod overflow;

use crate::sched::RuntimeLock;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes of the guard region below each stack (a multiple of the page
/// size on every Linux page size up to 64 KiB; see the module docs).
pub(crate) const GUARD: usize = 64 << 10;

/// Virtual bytes reserved per runtime. Nothing is committed until touched.
pub(crate) const RESERVATION: usize = 256 << 30;

/// Largest `stack_size` accepted: 1 GiB, Go's maximum on 64-bit.
pub(crate) const MAX_STACK: usize = 1 << 30;

/// Smallest `stack_size` accepted: the preemption trampoline's frame with a
/// full XSAVE area, the scheduler call under it, and room for user code.
pub(crate) const MIN_STACK: usize = 16 << 10;

/// Default stack size: 1 MiB.
pub(crate) const DEFAULT_STACK: usize = 1 << 20;

/// A freed stack with a non-zero word this far below its top was used
/// deeply and is trimmed before reuse.
const DEEP: usize = 64 << 10;

/// Bytes at the top of a trimmed stack that stay committed (the hot part).
const KEEP_HOT: usize = 16 << 10;

/// `madvise` advice that installs guard regions (Linux 6.13).
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// Stacks a P keeps for itself before returning them to the pool.
pub(crate) const P_CACHE: usize = 32;

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// One goroutine stack: the usable range `[bottom, top)`. The guard region is
/// just below `bottom`.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) bottom: usize,
    pub(crate) top: usize,
}

impl Stack {
    /// Releases the committed pages of a deeply used stack, keeping the top
    /// `KEEP_HOT` bytes.
    fn trim_if_deep(&self) {
        let probe = self.top - DEEP;
        if probe <= self.bottom {
            return;
        }
        // SAFETY: [probe, probe + 64) lies inside this stack's slot, which is
        // mapped read-write and owned by the pool (no goroutine runs on it).
        // Reading an untouched page maps the shared zero page and commits
        // nothing.
        let deep = unsafe { (0..8).any(|i| (probe as *const u64).add(i).read_volatile() != 0) };
        if deep {
            let end = self.top - KEEP_HOT;
            // SAFETY: [bottom, end) is inside our slot, above its guard; no
            // one references its contents (the goroutine finished).
            unsafe {
                libc::madvise(
                    self.bottom as *mut _,
                    end - self.bottom,
                    libc::MADV_DONTNEED,
                )
            };
        }
    }
}

/// How guards are installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GuardMode {
    Madvise,
    Mprotect,
}

/// An anonymous `MAP_NORESERVE` mapping of `len` bytes at `base`,
/// unmapped on drop.
struct Reservation {
    base: usize,
    len: usize,
}

impl Reservation {
    fn new(len: usize) -> io::Result<Reservation> {
        // SAFETY: a fresh private anonymous mapping; it aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Reservation {
            base: p as usize,
            len,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: our own mapping, which nothing uses any more (its owner
        // dropped it after every goroutine on it was gone).
        let r = unsafe { libc::munmap(self.base as *mut _, self.len) };
        debug_assert_eq!(r, 0, "munmap of a stack reservation failed");
    }
}

/// A reservation whose runtime was dropped with goroutines it abandoned:
/// their stacks (slots `kept`) must stay mapped, since other threads may
/// still reach into them (see `StackPool::unmap_except`). The memory of
/// its other stacks is released; the next pool with the same layout
/// adopts the reservation (`StackPool::new`) instead of reserving another.
/// Unmapped around the kept stacks instead, each kept stack was a mapping
/// of its own (400 drops with 200 abandoned goroutines each passed
/// `vm.max_map_count`), and each drop left a hole just short of a
/// reservation (after 510 drops with 20 each, `build` failed in 1 run of
/// 3 with "cannot reserve 256 GiB").
struct Retired {
    res: Reservation,
    slot: usize,
    guard: usize,
    /// Slots carved (guards installed) so far.
    carved: usize,
    /// Sorted slot indices.
    kept: Vec<usize>,
}

/// Reservations kept for the stacks of abandoned goroutines.
static RETIRED: Mutex<Vec<Retired>> = Mutex::new(Vec::new());

/// The stacks of one runtime.
pub(crate) struct StackPool {
    /// The reservation; taken by `unmap_except` at runtime shutdown.
    map: Mutex<Option<Reservation>>,
    /// Slots holding the stacks of goroutines another runtime abandoned
    /// (sorted; see `Retired`): never handed out, never unmapped.
    kept: Vec<usize>,
    base: usize,
    /// Distance between two slots: guard + usable stack.
    slot: usize,
    guard: usize,
    nslots: usize,
    /// Next never-carved slot. Bumped under `free`'s lock.
    carved: AtomicUsize,
    free: Mutex<Vec<Stack>>,
    mode: Mutex<GuardMode>,
    warned: AtomicBool,
    /// Our entry in the overflow handler's registry; dropped by `unmap`.
    registration: Mutex<Option<overflow::Registration>>,
}

impl StackPool {
    /// Reserves the address space for stacks of `stack_size` usable bytes
    /// (already validated and page-rounded by the builder).
    pub(crate) fn new(stack_size: usize) -> io::Result<StackPool> {
        let guard = GUARD.max(page_size());
        let slot = stack_size + guard;
        let adopted = {
            let mut retired = RETIRED.rt_lock();
            let i = retired
                .iter()
                .position(|r| r.slot == slot && r.guard == guard);
            i.map(|i| retired.swap_remove(i))
        };
        let (map, carved, kept) = match adopted {
            Some(r) => (r.res, r.carved, r.kept),
            None => (
                Reservation::new(RESERVATION).map_err(reservation_error)?,
                0,
                Vec::new(),
            ),
        };
        let nslots = RESERVATION / slot;
        let base = map.base;
        // An adopted reservation's carved slots have their guards; all but
        // the kept ones are free (their memory released, zero on first
        // touch).
        let free = (0..carved)
            .filter(|i| kept.binary_search(i).is_err())
            .map(|i| Stack {
                bottom: base + i * slot + guard,
                top: base + (i + 1) * slot,
            })
            .collect();
        let registration = overflow::register_stacks(base, nslots * slot, slot, guard);
        Ok(StackPool {
            map: Mutex::new(Some(map)),
            kept,
            base,
            slot,
            guard,
            nslots,
            carved: AtomicUsize::new(carved),
            free: Mutex::new(free),
            mode: Mutex::new(GuardMode::Madvise),
            warned: AtomicBool::new(false),
            registration: Mutex::new(Some(registration)),
        })
    }

    /// Whether `addr` lies in this pool's reservation (some goroutine's
    /// stack or guard). Debug builds check `current_g` with it.
    #[cfg(debug_assertions)]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.nslots * self.slot
    }

    /// Usable bytes of each stack.
    pub(crate) fn stack_size(&self) -> usize {
        self.slot - self.guard
    }

    /// Takes a stack from the pool, carving a new slot when none is free.
    /// When the reservation is exhausted, or the guard of a new slot cannot
    /// be installed, this is a fatal error (Go's out-of-memory throw, with
    /// the numbers and what to change; see `die_out_of_stacks`).
    pub(crate) fn get(&self) -> Stack {
        let mut free = self.free.rt_lock();
        if let Some(s) = free.pop() {
            return s;
        }
        let i = self.carved.load(Ordering::Relaxed);
        if i >= self.nslots {
            drop(free);
            self.die_out_of_stacks(
                &format!(
                    "all {} stacks of the fixed {} GiB stack reservation are in use",
                    self.nslots,
                    RESERVATION >> 30
                ),
                "Lower Builder::stack_size (every goroutine reserves that much address space), \
                 or keep fewer goroutines alive at once",
            );
        }
        self.carved.store(i + 1, Ordering::Relaxed);
        drop(free);
        let lo = self.base + i * self.slot;
        self.install_guard(lo, i + 1);
        Stack {
            bottom: lo + self.guard,
            top: lo + self.slot,
        }
    }

    /// Takes up to `n` stacks at once (refilling a P's cache).
    pub(crate) fn get_batch(&self, out: &mut Vec<Stack>, n: usize) {
        let mut free = self.free.rt_lock();
        let k = free.len().min(n);
        let at = free.len() - k;
        out.extend(free.drain(at..));
        drop(free);
        if k == 0 {
            out.push(self.get());
        }
    }

    /// Returns stacks to the pool.
    pub(crate) fn put_batch(&self, stacks: impl IntoIterator<Item = Stack>) {
        let stacks: Vec<Stack> = stacks.into_iter().inspect(Stack::trim_if_deep).collect();
        self.free.rt_lock().extend(stacks);
    }

    /// Unmaps every stack (runtime shutdown, after every M has exited:
    /// nothing runs on them any more).
    pub(crate) fn unmap(&self) {
        self.unmap_except(Vec::new());
    }

    /// Unmaps every stack except the `[bottom, top)` ranges in `keep`,
    /// which stay mapped (leaked) for the life of the process: the stacks
    /// of goroutines abandoned at runtime shutdown. Such a goroutine may be
    /// parked with a waiter entry on its stack linked into a channel's
    /// queue, and a later send or close from another thread walks that
    /// queue; unmapping the stack made it fault (or worse, once the
    /// address range is reused).
    ///
    /// With stacks to keep, the reservation stays mapped whole, the memory
    /// of every other stack released, for the next pool of the same layout
    /// to adopt (`Retired`).
    pub(crate) fn unmap_except(&self, keep: Vec<(usize, usize)>) {
        // Unregister first: the addresses may be reused by any mapping.
        drop(self.registration.rt_lock().take());
        let map = self.map.rt_lock().take();
        self.free.rt_lock().clear();
        let Some(map) = map else { return };
        let mut kept = self.kept.clone();
        kept.extend(keep.into_iter().map(|(lo, hi)| {
            let i = (lo - self.guard - self.base) / self.slot;
            debug_assert!(
                i < self.nslots
                    && lo == self.base + i * self.slot + self.guard
                    && hi == lo + self.stack_size(),
                "a stack outside the pool"
            );
            i
        }));
        if kept.is_empty() {
            return drop(map);
        }
        kept.sort_unstable();
        kept.dedup();
        let carved = self.carved.load(Ordering::Relaxed);
        let mut at = 0;
        for k in kept.iter().copied().chain([carved]) {
            if k > at {
                // SAFETY: slots [at, k) lie inside our reservation and hold
                // no kept stack; every M has exited, so nothing runs on
                // them. Guards survive (`MADV_GUARD_INSTALL` markers are
                // not zapped by `MADV_DONTNEED`; `mprotect`ed ones keep
                // their protection).
                unsafe {
                    libc::madvise(
                        (self.base + at * self.slot) as *mut _,
                        (k - at) * self.slot,
                        libc::MADV_DONTNEED,
                    )
                };
            }
            at = at.max(k + 1);
        }
        RETIRED.rt_lock().push(Retired {
            res: map,
            slot: self.slot,
            guard: self.guard,
            carved,
            kept,
        });
    }

    /// Prepares a stack for a P cache: trims it if it was used deeply.
    pub(crate) fn recycle(&self, s: &Stack) {
        s.trim_if_deep();
    }

    fn install_guard(&self, lo: usize, carved: usize) {
        let mut mode = self.mode.rt_lock();
        if *mode == GuardMode::Madvise {
            // SAFETY: [lo, lo + guard) is the guard region of a slot inside our
            // mapping that no one has used yet.
            let r = unsafe { libc::madvise(lo as *mut _, self.guard, MADV_GUARD_INSTALL) };
            if r == 0 {
                return;
            }
            *mode = GuardMode::Mprotect;
        }
        // SAFETY: as above; PROT_NONE on our own page.
        let r = unsafe { libc::mprotect(lo as *mut _, self.guard, libc::PROT_NONE) };
        // Before anything else can overwrite errno.
        let err = (r != 0).then(io::Error::last_os_error);
        let limit = max_map_count();
        if let Some(err) = err {
            // ENOMEM: splitting the mapping would exceed vm.max_map_count.
            drop(mode);
            self.die_out_of_stacks(
                &format!(
                    "mprotect of the guard region of stack {carved} failed: {err}; this kernel lacks \
                     MADV_GUARD_INSTALL, so every stack costs 2 of the process's \
                     vm.max_map_count={limit} memory mappings"
                ),
                "Raise vm.max_map_count (sysctl -w vm.max_map_count=N, about 2 per goroutine plus \
                 the program's own mappings), or keep fewer goroutines alive at once",
            );
        }
        // At three quarters of the limit: at `limit - 1000` the warning came
        // some 470 stacks before the fatal error.
        if carved * 2 > limit / 4 * 3 && !self.warned.swap(true, Ordering::Relaxed) {
            crate::diag::stderr_line(format_args!(
                "gosched: warning: {carved} stacks with mprotect guards use ~{} of vm.max_map_count={limit} \
                 mappings (this kernel lacks MADV_GUARD_INSTALL); raise vm.max_map_count or use fewer goroutines",
                carved * 2
            ));
        }
    }

    /// Go's "fatal error: out of memory" for a stack: `what` failed, `fix`
    /// says what to change. Never a panic: this runs on g0 (in `execute`),
    /// where unwinding killed the M and left its P, and the goroutine
    /// being started, stranded (the runtime hung). On an M of the runtime
    /// that owns this pool the report has the live goroutine count and the
    /// goroutine dump.
    #[cold]
    fn die_out_of_stacks(&self, what: &str, fix: &str) -> ! {
        let m = crate::sched::cur_m();
        // SAFETY: a non-null `cur_m` is the calling thread's M, alive while
        // the thread runs, and an M's `shared` outlives it.
        let sh = unsafe { m.as_ref().map(|m| &*m.shared) };
        let sh = sh.filter(|sh| std::ptr::eq(&sh.stacks, self));
        let carved = self.carved.load(Ordering::Relaxed);
        crate::sched::Shared::die_out_of_stacks(sh, self.stack_size(), carved, what, fix)
    }
}

impl Drop for StackPool {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// The error of a refused reservation: the bare "Cannot allocate memory"
/// of `mmap` says neither what was asked for nor which limit refused it.
fn reservation_error(e: io::Error) -> io::Error {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the plain struct we own.
    let as_limit = if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 {
        "unknown".to_owned()
    } else if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        format!("{} MiB", lim.rlim_cur >> 20)
    };
    let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    io::Error::new(
        e.kind(),
        format!(
            "gosched: cannot reserve {} GiB of address space for goroutine stacks: {e}. The reservation \
             is virtual (MAP_NORESERVE: nothing is committed until a stack uses it) and its size is fixed \
             (Builder::stack_size does not change it); what refuses it is a limit on address space: \
             RLIMIT_AS (ulimit -v; now {as_limit}) must allow {} GiB more than the process uses, and \
             strict overcommit accounting (vm.overcommit_memory=2; now {overcommit}) counts it in full. \
             Lift the limit (ulimit -v unlimited) or use overcommit mode 0 or 1",
            RESERVATION >> 30,
            RESERVATION >> 30,
        ),
    )
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_distinct_and_writable() {
        let pool = StackPool::new(64 << 10).unwrap();
        let a = pool.get();
        let b = pool.get();
        assert_ne!(a.top, b.top);
        assert_eq!(a.top - a.bottom, 64 << 10);
        // SAFETY: both ranges are fresh stacks of this pool.
        unsafe {
            ((a.top - 8) as *mut u64).write(1);
            (a.bottom as *mut u64).write(2);
            ((b.top - 8) as *mut u64).write(3);
        }
        pool.put_batch([a, b]);
        let c = pool.get();
        assert!(c.top == pool.base + pool.slot || c.top == pool.base + 2 * pool.slot);
    }

    #[test]
    fn deep_stacks_are_trimmed() {
        let pool = StackPool::new(256 << 10).unwrap();
        let s = pool.get();
        let deep = s.top - DEEP;
        // SAFETY: inside the stack.
        unsafe { (deep as *mut u64).write(42) };
        pool.put_batch([s]);
        let s = pool.get();
        // SAFETY: inside the stack; trimmed pages read as zero.
        assert_eq!(unsafe { (deep as *const u64).read_volatile() }, 0);
        pool.put_batch([s]);
    }
}
