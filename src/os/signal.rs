//! Process-wide signal plumbing: installing actions (keeping the one
//! replaced, to forward to), forwarding to it, per-M alternate signal
//! stacks, and async-signal-safe output.

/// An `SA_SIGINFO` handler.
pub(crate) type SigInfoHandler =
    extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// The action gosched installs: `handler` with `SA_SIGINFO | flags` and an
/// empty `sa_mask` (only the signal itself is blocked while it runs).
pub(crate) fn action(handler: SigInfoHandler, flags: libc::c_int) -> libc::sigaction {
    // SAFETY: sigaction is plain data; all-zero is SIG_DFL with no flags.
    let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
    sa.sa_sigaction = handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | flags;
    // SAFETY: initialises the mask of our own struct.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    sa
}

/// `sigaction(2)`: installs `new` for `sig` (None: only reads) and stores
/// the action it replaced in `*old`. The kernel writes `*old` before the
/// new action can run, so a handler may read what it replaced from there.
///
/// # Safety
/// `old` is valid for a write of a `sigaction`; `new`'s handler, if any,
/// is async-signal-safe and may run at once, on any thread.
pub(crate) unsafe fn swap_action(
    sig: libc::c_int,
    new: Option<&libc::sigaction>,
    old: *mut libc::sigaction,
) {
    let new = new.map_or(core::ptr::null(), |n| n as *const libc::sigaction);
    // SAFETY: forwarded from the caller's contract; `new` is null or a
    // valid action.
    unsafe { libc::sigaction(sig, new, old) };
}

/// The action installed for `sig` now.
pub(crate) fn current_action(sig: libc::c_int) -> libc::sigaction {
    let mut cur = zeroed_sigaction();
    // SAFETY: `cur` is ours to write; a null new action only reads.
    unsafe { swap_action(sig, None, &mut cur) };
    cur
}

/// An all-zero `sigaction`: SIG_DFL, no flags, empty mask.
pub(crate) const fn zeroed_sigaction() -> libc::sigaction {
    // SAFETY: sigaction is plain old data; all-zero is SIG_DFL, empty mask.
    unsafe { core::mem::zeroed() }
}

/// Calls the handler `h` of an action saved when ours was installed (its
/// `sa_sigaction` word and `sa_flags`) with the kernel's arguments. Returns
/// false, calling nothing, when `h` is SIG_DFL or SIG_IGN.
/// Async-signal-safe.
pub(crate) fn forward(
    h: usize,
    flags: libc::c_int,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
) -> bool {
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        return false;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed as an SA_SIGINFO
        // handler with this signature; we forward the kernel's arguments.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(h) };
        f(sig, info, uc);
    } else {
        // SAFETY: a plain sa_handler takes the signal number only.
        let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(h) };
        f(sig);
    }
    true
}

/// The kernel's 64-bit view of a `sigset_t` (glibc's is 128 bytes; the
/// kernel reads and writes the first 8): signal `s` is bit `s - 1`.
pub(crate) fn kernel_mask(set: &libc::sigset_t) -> u64 {
    // SAFETY: a sigset_t is at least 8 bytes of plain data.
    unsafe {
        (set as *const libc::sigset_t)
            .cast::<u64>()
            .read_unaligned()
    }
}

/// Before calling a handler we forward to (`forward`), sets the thread's
/// signal mask as the kernel would have on delivering to it: the
/// interrupted code's mask (`uc`'s, which `sigreturn` restores when we
/// return), plus the action's `sa_mask` (`mask`, `kernel_mask` of it), plus
/// the signal itself unless `SA_NODEFER` is in `flags` (then minus it).
/// Without it the handler ran with our mask: a fault-driven collector's
/// `SA_NODEFER` SIGSEGV handler that touched a second protected page died
/// of the nested fault (SIGSEGV blocked), and an action's `sa_mask` did
/// not hold. Async-signal-safe.
pub(crate) fn mask_as_kernel(
    mask: u64,
    flags: libc::c_int,
    sig: libc::c_int,
    uc: *mut libc::c_void,
) {
    let uc = uc.cast::<libc::ucontext_t>();
    // SAFETY: `uc` is the running handler's ucontext.
    let mut bits = kernel_mask(unsafe { &(*uc).uc_sigmask }) | mask;
    let own = 1u64 << (sig - 1);
    if flags & libc::SA_NODEFER == 0 {
        bits |= own;
    } else {
        bits &= !own;
    }
    let mut set = zeroed_sigset();
    // SAFETY: a sigset_t is at least 8 bytes of plain data, the kernel's
    // mask; pthread_sigmask (sigprocmask on Linux: async-signal-safe) only
    // reads `set`, and drops glibc's internal signals itself.
    unsafe {
        (&mut set as *mut libc::sigset_t)
            .cast::<u64>()
            .write_unaligned(bits);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, core::ptr::null_mut());
    }
}

/// An empty `sigset_t`.
const fn zeroed_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain old data; all-zero is the empty set.
    unsafe { core::mem::zeroed() }
}

/// A fixed buffer for composing messages inside signal handlers: no
/// allocation, no locks, no `fmt`.
pub(crate) struct SigBuf {
    buf: [u8; 256],
    len: usize,
}

impl SigBuf {
    pub(crate) const fn new() -> SigBuf {
        SigBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    pub(crate) fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    pub(crate) fn write_stderr(&self) {
        crate::diag::write_stderr(&self.buf[..self.len]);
    }
}

/// Size of each M's alternate signal stack: the kernel's signal frame with
/// a full XSAVE image (about 3.5 KiB with AVX-512) plus our handlers.
const ALTSTACK_SIZE: usize = 64 << 10;

/// An M's alternate signal stack, installed for the life of the M thread.
pub(crate) struct AltStack {
    base: *mut libc::c_void,
    len: usize,
    old: libc::stack_t,
}

impl AltStack {
    /// Maps a guard page plus `ALTSTACK_SIZE` and makes it this thread's
    /// signal stack.
    pub(crate) fn install() -> AltStack {
        let page = crate::stack::page_size();
        let len = ALTSTACK_SIZE + page;
        // SAFETY: anonymous private mapping; checked below.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            base != libc::MAP_FAILED,
            "gosched: cannot map a signal stack"
        );
        // SAFETY: the lowest page of our fresh mapping becomes the guard,
        // the rest the signal stack of this thread; `old` receives the
        // previous one (std's), restored on drop.
        unsafe {
            libc::mprotect(base, page, libc::PROT_NONE);
            let ss = libc::stack_t {
                ss_sp: base.add(page),
                ss_flags: 0,
                ss_size: ALTSTACK_SIZE,
            };
            let mut old: libc::stack_t = core::mem::zeroed();
            libc::sigaltstack(&ss, &mut old);
            AltStack { base, len, old }
        }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: restores the thread's previous signal stack (dropped on the
        // same thread that installed it, outside any handler), then unmaps
        // ours, which is no longer in use.
        unsafe {
            libc::sigaltstack(&self.old, core::ptr::null_mut());
            libc::munmap(self.base, self.len);
        }
    }
}

/// Whether thread `tid` of this process blocks signal `sig`, from the
/// `SigBlk` line of its `/proc` status (None if unreadable). Allocates:
/// for sysmon, never for a signal handler.
#[cfg(feature = "preempt-signal")]
pub(crate) fn thread_blocks(tid: i32, sig: libc::c_int) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    sigblk_has(&status, sig)
}

/// `SigBlk` of a `/proc/*/status` text includes signal `sig` (1-based).
#[cfg(feature = "preempt-signal")]
fn sigblk_has(status: &str, sig: libc::c_int) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    let bit = u32::try_from(sig).ok()?.checked_sub(1)?;
    Some(mask.checked_shr(bit).is_some_and(|m| m & 1 == 1))
}

#[cfg(all(test, feature = "preempt-signal"))]
mod tests {
    use super::*;

    #[test]
    fn sigblk_is_read_from_proc_status_text() {
        // SIGURG is 23: bit 22 (0x400000).
        let text = "Name:\tx\nSigPnd:\t0000000000000000\nSigBlk:\t0000000000400000\n";
        assert_eq!(sigblk_has(text, libc::SIGURG), Some(true));
        assert_eq!(sigblk_has(text, libc::SIGPIPE), Some(false));
        assert_eq!(sigblk_has("SigBlk:\tzz\n", libc::SIGURG), None);
        assert_eq!(sigblk_has("Name:\tx\n", libc::SIGURG), None);
        assert_eq!(sigblk_has(text, 0), None);
    }

    #[test]
    fn a_blocked_signal_of_this_thread_shows_in_proc() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let block = |how| {
            // SAFETY: sigset_t is plain data initialised by sigemptyset;
            // pthread_sigmask changes only this (test) thread's mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGURG);
                libc::pthread_sigmask(how, &set, std::ptr::null_mut());
            }
        };
        block(libc::SIG_BLOCK);
        let blocked = thread_blocks(tid, libc::SIGURG);
        block(libc::SIG_UNBLOCK);
        assert_eq!(blocked, Some(true));
        assert_eq!(thread_blocks(tid, libc::SIGURG), Some(false));
    }
}
