//! Asynchronous preemption by signal (the `preempt-signal` feature): the
//! SIGURG handler, its safe-point rules and context rewrite (`handler`),
//! the libc/libm leaf routines it may also interrupt (`leaf`), and here
//! the ownership of SIGURG: installing the handler, forwarding to the
//! application's, re-installing it when replaced, and sending the signal.
//!
//! # Why a signal, and why inject a call
//!
//! Cooperative preemption (a flag checked at every runtime call and
//! `preempt_point`) cannot stop a loop that makes no calls. So sysmon also
//! sends the goroutine's thread SIGURG (`tgkill`), at most one in flight per
//! M. SIGURG, as Go argues (preempt.go, design 24543): debuggers pass it
//! through, libc does not use it, a spurious one is harmless, and it is not
//! a real-time signal.
//!
//! The handler does not run the scheduler itself: a signal handler may not
//! allocate or take locks, and the scheduler does both. Instead it rewrites
//! the interrupted context so that, when the handler returns, the thread
//! *calls* the trampoline in `arch` as if the interrupted instruction had:
//! the trampoline saves every register and the extended state on the
//! goroutine's own stack, switches to the scheduler like any yield, and on
//! resume restores everything and returns to the exact instruction.
//!
//! # Who owns SIGURG
//!
//! While any runtime with asynchronous preemption exists, gosched's handler
//! must be the installed SIGURG action; it forwards every SIGURG to the
//! application's handler. Install your own SIGURG handler *before* building
//! the first runtime and it is chained from the start. One installed
//! *after* replaces ours and would silently stop asynchronous preemption (a
//! no-call loop then starves its P): sysmon checks the installed action
//! every `HANDLER_CHECK` (10 ms) while busy, and when it finds another one it
//! re-installs ours, makes that handler the forward target (it still
//! receives every SIGURG) and prints one warning on stderr. Setting SIGURG
//! to `SIG_IGN`/`SIG_DFL` is undone the same way.

mod handler;
mod leaf;
mod rust_code;
mod slice_timer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use crate::arch;
use crate::os::signal;
use crate::sched::{RuntimeLock, Shared, M};

pub(crate) use handler::async_preempt_yield;
use handler::{on_sigurg, read_text_ranges};
pub(crate) use slice_timer::{
    arm as arm_slice_timer, disarm as disarm_slice_timer, release as release_slice_timer,
    NO_SLICE_TIMER,
};

/// The SIGURG handler `on_sigurg` forwards to, as its `sa_sigaction` word
/// and `sa_flags`: the action installed before ours (written by `install`
/// before our handler can run), or one an application installed over ours
/// later (written by `reclaim_sigurg`). Writers store the handler SIG_DFL,
/// then the flags, then the handler (Release); the handler loads the
/// handler (Acquire), then the flags, so it never pairs a new handler with
/// old flags.
static FORWARD_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static FORWARD_FLAGS: AtomicUsize = AtomicUsize::new(0);
/// Its `sa_mask` (`os::signal::kernel_mask`), written with the flags.
static FORWARD_MASK: AtomicU64 = AtomicU64::new(0);

fn set_forward(prev: &libc::sigaction) {
    let h = if prev.sa_sigaction == on_sigurg as *const () as usize {
        libc::SIG_DFL // never forward to ourselves
    } else {
        prev.sa_sigaction
    };
    FORWARD_HANDLER.store(libc::SIG_DFL, Ordering::Relaxed);
    FORWARD_MASK.store(
        crate::os::signal::kernel_mask(&prev.sa_mask),
        Ordering::Relaxed,
    );
    FORWARD_FLAGS.store(prev.sa_flags as usize, Ordering::Release);
    // Pairs with the Acquire load in `on_sigurg`.
    FORWARD_HANDLER.store(h, Ordering::Release);
}

/// Our SIGURG action.
fn our_action() -> libc::sigaction {
    signal::action(on_sigurg, libc::SA_ONSTACK | libc::SA_RESTART)
}

/// Publishes a table the SIGURG handler reads: leaks `table` into `slot`
/// (Release; the handler loads it with Acquire) unless one is there
/// already. Called from `install`, inside its `Once`, before the handler
/// is installed; a published table is never changed or freed (the handler
/// may read it until the process exits).
fn publish_once<T>(slot: &std::sync::atomic::AtomicPtr<T>, table: T) {
    let table = Box::into_raw(Box::new(table));
    if slot
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

static INSTALL: Once = Once::new();

/// Installs the SIGURG handler (once per process) and reads the main
/// executable's code ranges and the XSAVE size it needs.
pub(crate) fn install() {
    INSTALL.call_once(|| {
        arch::init_extended_state();
        let load = read_text_ranges();
        rust_code::init(load);
        leaf::init();
        let _g = RECLAIM.lock().unwrap_or_else(|e| e.into_inner());
        // Read the current action and record it as the forward target,
        // then install ours; whatever it replaced (the same action unless
        // another thread raced us) becomes the target, so no SIGURG misses
        // the application's handler.
        let mut prev = signal::current_action(libc::SIGURG);
        set_forward(&prev);
        // SAFETY: `prev` is ours to write; `on_sigurg` is async-signal-safe.
        unsafe { signal::swap_action(libc::SIGURG, Some(&our_action()), &mut prev) };
        set_forward(&prev);
    });
}

/// Serialises `install` and `reclaim_sigurg` (sysmon threads of several
/// runtimes may notice a replaced handler at once).
static RECLAIM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Times `reclaim_sigurg` re-installed our handler (a generation: each
/// runtime's sysmon clears the stale `signal_pending` of its Ms when it
/// changes, since the signals they wait on went to the other handler).
static RECLAIMS: AtomicUsize = AtomicUsize::new(0);

/// Printed once per process.
static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Checks that our SIGURG handler is still installed; if the application
/// replaced it (after the first runtime was built), re-installs ours,
/// forwarding every SIGURG to the application's handler from then on, and
/// warns once on stderr. Returns the reclaim generation (see `RECLAIMS`).
/// Called by sysmon every `HANDLER_CHECK`; not from a signal handler.
pub(crate) fn reclaim_sigurg() -> usize {
    if !INSTALL.is_completed() {
        return 0;
    }
    let ours = on_sigurg as *const () as usize;
    if signal::current_action(libc::SIGURG).sa_sigaction == ours {
        return RECLAIMS.load(Ordering::Acquire);
    }
    let _g = RECLAIM.lock().unwrap_or_else(|e| e.into_inner());
    // `theirs` receives the application's action, recorded as the forward
    // target right after (until then we forward to the previous target,
    // which is harmless).
    let mut theirs = signal::current_action(libc::SIGURG);
    // SAFETY: as in `install`.
    unsafe { signal::swap_action(libc::SIGURG, Some(&our_action()), &mut theirs) };
    if theirs.sa_sigaction != ours {
        set_forward(&theirs);
        if !WARNED.swap(true, Ordering::Relaxed) {
            crate::diag::stderr_line(format_args!(
                "gosched: warning: the SIGURG handler was replaced after the runtime started \
                 (handler {:#x}); asynchronous preemption needs SIGURG: gosched re-installed its \
                 handler and forwards every SIGURG to the application's. Install SIGURG handlers \
                 before building the first runtime.",
                theirs.sa_sigaction
            ));
        }
        RECLAIMS.fetch_add(1, Ordering::AcqRel);
    }
    RECLAIMS.load(Ordering::Acquire)
}

/// Called by every M when it starts: SIGURG must never be blocked on an M.
pub(crate) fn on_m_start() {
    // SAFETY: unblocking one signal in this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGURG);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, core::ptr::null_mut());
    }
}

/// Sends the preemption signal to `m` unless one is already in flight (Go's
/// preemptM with signalPending). Returns whether a signal was sent.
pub(crate) fn signal_m(m: &M) -> bool {
    // Pairs with the handler's Release store of false.
    if m.signal_pending
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    let tid = m.tid.load(Ordering::Acquire);
    // SAFETY: tgkill to a thread of our own process; a stale tid at worst
    // signals a thread that has exited (ESRCH).
    let r = unsafe { libc::syscall(libc::SYS_tgkill, crate::os::fork::pid(), tid, libc::SIGURG) };
    if r != 0 {
        m.signal_pending.store(false, Ordering::Release);
        return false;
    }
    true
}

/// How often sysmon checks that gosched's SIGURG handler is still installed
/// (one `sigaction` query; a replaced handler starves no-call loops until
/// the next check).
const HANDLER_CHECK: Duration = Duration::from_millis(10);

/// How long a preemption signal may stay pending on a thread that runs a
/// goroutine before sysmon looks at the thread's signal mask: a thread the
/// kernel has not run for that long is rare, one that blocks SIGURG never
/// takes the signal (see the crate docs' "Signal masks").
const STUCK_SIGNAL: Duration = Duration::from_millis(200);

/// sysmon's watch over the SIGURG handler (see `reclaim_sigurg`) and over
/// signals that stay pending.
#[derive(Default)]
pub(crate) struct HandlerWatch {
    /// When to check next (ns since the epoch).
    next: u64,
    /// The reclaim generation this runtime has caught up with.
    seen: usize,
    /// Threads whose signal was pending at the last check: (tid, since
    /// when in ns since the epoch, the M's `sigurg_seq` then).
    pending: Vec<(i32, u64, u64)>,
    /// The blocked-SIGURG warning was printed (once per runtime).
    warned: bool,
}

/// Since when (ns) thread `tid`, seen at `now` with a signal pending and
/// handler sequence `seq` (`M::sigurg_seq`), has waited for one signal,
/// given the last check's `before`; `None` while a handler runs there
/// (odd `seq`: the kernel blocks SIGURG inside it, and may leave the
/// thread waiting for a CPU there on a loaded machine). A thread that took
/// a signal since (`seq` moved) waits for a new one: counted from now.
/// Counting from the first sighting whatever happened in between, a busy
/// thread signalled at every check, or one descheduled inside the handler,
/// looked stuck: a false "SIGURG blocked" warning at load averages of
/// 11-18.
fn pending_since(before: &[(i32, u64, u64)], tid: i32, seq: u64, now: u64) -> Option<u64> {
    if seq % 2 == 1 {
        return None;
    }
    Some(
        before
            .iter()
            .find(|&&(t, _, s)| t == tid && s == seq)
            .map_or(now, |&(_, since, _)| since),
    )
}

impl HandlerWatch {
    pub(crate) fn new() -> HandlerWatch {
        HandlerWatch::default()
    }

    /// Every `HANDLER_CHECK` while asynchronous preemption is on: re-install
    /// our handler if the application replaced it, and after any re-install
    /// clear every M's `signal_pending` (the signals it waited on went to
    /// the other handler, which never acknowledges them, so `signal_m`
    /// would otherwise never signal that M again).
    pub(crate) fn check(&mut self, sh: &Shared, now: u64) {
        if !sh.cfg.async_preempt || now < self.next {
            return;
        }
        self.next = now.saturating_add(HANDLER_CHECK.as_nanos() as u64);
        let generation = reclaim_sigurg();
        if generation != self.seen {
            self.seen = generation;
            for m in sh.allm.rt_lock().iter() {
                // Pairs with `signal_m`'s CAS, as the handler's store does.
                m.signal_pending.store(false, Ordering::Release);
            }
        }
        if !self.warned {
            self.check_pending(sh, now);
        }
    }

    /// Warns once if a thread that runs a goroutine has had a preemption
    /// signal pending for `STUCK_SIGNAL` because it blocks SIGURG: nothing
    /// else would say why the goroutines waiting for its P never run.
    fn check_pending(&mut self, sh: &Shared, now: u64) {
        let mut stuck = None;
        let before = std::mem::take(&mut self.pending);
        for m in sh.allm.rt_lock().iter() {
            if !m.signal_pending.load(Ordering::Acquire) || m.curg.load(Ordering::Relaxed).is_null()
            {
                continue;
            }
            let tid = m.tid.load(Ordering::Relaxed);
            let seq = m.sigurg_seq.load(Ordering::Relaxed);
            let Some(since) = pending_since(&before, tid, seq, now) else {
                continue;
            };
            self.pending.push((tid, since, seq));
            if now.saturating_sub(since) >= STUCK_SIGNAL.as_nanos() as u64 {
                stuck = Some((tid, now.saturating_sub(since)));
            }
        }
        let Some((tid, for_ns)) = stuck else {
            return;
        };
        if crate::os::signal::thread_blocks(tid, libc::SIGURG) == Some(true) {
            self.warned = true;
            crate::diag::stderr_line(format_args!(
                "gosched: warning: thread {tid} runs a goroutine with SIGURG blocked (its preemption \
                 signal has waited {:?}): it cannot be preempted asynchronously, and goroutines \
                 waiting for its P do not run until it reaches a runtime call. A goroutine that \
                 blocks SIGURG with pthread_sigmask should unblock it before it blocks, yields or \
                 returns (or use gosched::no_preempt). Printed once.",
                Duration::from_nanos(for_ns)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs checks 10 ms apart on one thread whose signal is pending at
    /// each, with the handler sequence `seqs` seen at each; returns how
    /// long it has waited at the last.
    fn waited(seqs: &[u64]) -> Option<u64> {
        let mut before = Vec::new();
        let mut last = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let now = 1_000 * MS + i as u64 * 10 * MS;
            last = pending_since(&before, 7, seq, now).map(|since| now - since);
            before = last.map(|w| vec![(7, now - w, seq)]).unwrap_or_default();
        }
        last
    }

    #[test]
    fn one_signal_that_never_arrives_waits_from_its_first_sighting() {
        assert_eq!(waited(&[4; 21]), Some(200 * MS));
    }

    #[test]
    fn a_thread_that_takes_a_signal_between_checks_waits_from_the_last() {
        // Signalled again after each one it took: never one stuck signal.
        let seqs: Vec<u64> = (0..21).map(|i| 2 * i).collect();
        assert_eq!(waited(&seqs), Some(0));
        // Took one after 150 ms, then waits again.
        let mut seqs = vec![4; 16];
        seqs.extend([6; 5]);
        assert_eq!(waited(&seqs), Some(40 * MS));
    }

    #[test]
    fn a_thread_inside_the_handler_is_not_waiting() {
        // The kernel blocks SIGURG while the handler runs; a thread left
        // waiting for a CPU there is not one that blocks it.
        assert_eq!(waited(&[5; 21]), None);
        let mut seqs = vec![5; 20];
        seqs.push(6);
        assert_eq!(waited(&seqs), Some(0));
    }
}
