//! Ps and Ms changing hands (Go's pidleget/pidleput, wakep, startm, newm,
//! handoffp, retake, preemptone): the parent module's "Spinning and
//! wake-ups" and "Ownership of a P" protocols.

use std::cell::{Cell, UnsafeCell};
use std::ptr::{self, NonNull};
use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::os::note::Note;
use crate::sched::g::{GRef, G};
use crate::sched::RuntimeLock;

/// How long `startm` waits for an M to go idle at the thread limit before
/// `newm` dies of thread exhaustion (`Shared::idle_m_at_the_limit`).
const LIMIT_WAIT: Duration = Duration::from_millis(50);

impl Shared {
    pub(crate) fn pidleget(&self) -> Option<usize> {
        let mut l = self.pidle.rt_lock();
        let p = l.pop()?;
        // In transit to whoever took it; sysmon counts it as busy.
        self.ps[p].status.store(P_HANDOFF, Ordering::Relaxed);
        self.npidle.fetch_sub(1, Ordering::SeqCst);
        Some(p)
    }

    /// Puts P `p`, owned by the caller, on the idle list, or destroys it
    /// if `set_procs` dropped it (checked under the `pidle` lock, which
    /// `procresize` holds while it changes `gomaxprocs`).
    pub(crate) fn pidleput(&self, p: usize) {
        let mut l = self.pidle.rt_lock();
        if self.p_dropped(p) {
            drop(l);
            return self.destroyp(p);
        }
        self.ps[p].m.store(ptr::null_mut(), Ordering::Relaxed);
        // Counted before it says idle (see `Shared::npidle`).
        self.npidle.fetch_add(1, Ordering::SeqCst);
        #[cfg(test)]
        tests::between_idle_stores();
        self.ps[p].status.store(P_IDLE, Ordering::Release);
        l.push(p);
    }

    /// Go's wakep: start a spinning M if a P is idle and nobody spins.
    pub(crate) fn wakep(&self) {
        if self.npidle.load(Ordering::SeqCst) == 0 {
            return;
        }
        if self.nmspinning.load(Ordering::SeqCst) != 0
            || self
                .nmspinning
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        self.startm(None, true, false);
    }

    /// Go's startm: run some M with P `p` (or an idle P). `pin`: the
    /// caller parks right after; see `pin_to_this_cpu`.
    pub(crate) fn startm(&self, p: Option<usize>, spinning: bool, pin: bool) {
        self.startm_with(p, None, spinning, pin);
    }

    /// `startm`, and the M runs `g` first (`M::nextg`): a goroutine the
    /// caller took off `p` to look at. At shutdown `g` goes to the global
    /// queue with the rest.
    pub(crate) fn startm_with(&self, p: Option<usize>, g: Option<GRef>, spinning: bool, pin: bool) {
        let p = if self.shutdown.load(Ordering::Acquire) {
            if let Some(p) = p {
                self.pidleput(p);
            }
            None
        } else {
            p.or_else(|| self.pidleget())
        };
        let Some(p) = p else {
            if spinning {
                self.nmspinning.fetch_sub(1, Ordering::SeqCst);
            }
            if let Some(g) = g {
                self.injector.push(g);
            }
            return;
        };
        self.ps[p].status.store(P_HANDOFF, Ordering::Relaxed);
        let m = self.midle.rt_lock().pop();
        let m = m.or_else(|| self.idle_m_at_the_limit());
        match m {
            Some(m) => {
                m.spinning.store(spinning, Ordering::Relaxed);
                m.nextg.store(nextg_ptr(g), Ordering::Relaxed);
                m.nextp.store(p + 1, Ordering::Release);
                if pin {
                    self.pin_to_this_cpu(&m);
                }
                self.wake_m(&m);
            }
            None => self.newm(p, g, spinning),
        }
    }

    /// Before waking M `m` to take over our P while this thread is about to
    /// park: restrict `m`'s thread to the CPU we run on, which is about to
    /// fall idle. Linux places a futex wake-up by load, not by "the waker
    /// is going to sleep" (only pipes and sockets say that, WF_SYNC): left
    /// alone it often queues `m` behind a busy thread on the other CPU,
    /// while this one idles until the next load balance (0.3-5 ms here,
    /// 12-19 % of the fairness example's CPU in ThreadAffine mode). `m`
    /// widens its affinity again as soon as it runs (`unpin`). Best effort:
    /// errors (a CPU outside a cpuset, a sandbox) leave placement to Linux.
    pub(crate) fn pin_to_this_cpu(&self, m: &M) {
        if !m.unpinnable.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: sched_getcpu has no preconditions (vDSO).
        let cpu = unsafe { libc::sched_getcpu() };
        let tid = m.tid.load(Ordering::Acquire);
        let Ok(cpu) = usize::try_from(cpu) else {
            return;
        };
        if tid == 0 || cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return;
        }
        // SAFETY: cpu_set_t is plain data; CPU_SET writes bit `cpu`, inside
        // the set (checked above); sched_setaffinity only reads `set` and
        // changes only thread `tid` of this process.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                m.pinned.store(true, Ordering::Release);
            }
        }
    }

    /// Undoes `pin_to_this_cpu` on the calling M's own thread: back to
    /// the affinity it started with.
    pub(crate) fn unpin(&self, m: &M) {
        // A plain load first: almost every wake-up finds nothing to undo.
        if !m.pinned.load(Ordering::Relaxed) || !m.pinned.swap(false, Ordering::Acquire) {
            return;
        }
        if let Some(mask) = m.cpu_mask.get() {
            // SAFETY: `mask` is this thread's own earlier affinity; 0 means
            // the calling thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mask) };
        }
    }

    /// With no idle M and no room for a new one (`newm` would die of
    /// thread exhaustion): waits up to `LIMIT_WAIT` for an M to go idle
    /// and takes it. Ms are often on their way there: one that handed its
    /// P on, one destroying a P `set_procs` dropped, a spinning one giving
    /// up. The fewest threads `set_procs` accepts count one such M per P;
    /// right after a shrink there can be more (1 <-> 2 Ps under
    /// `max_threads(6)` beside loops preempted in ThreadAffine mode died of
    /// thread exhaustion in 9 runs of 20, with two Ms a few instructions
    /// from the idle list). None if none goes idle in time (then the
    /// limit is real, and `newm` reports it).
    fn idle_m_at_the_limit(&self) -> Option<Arc<M>> {
        if self.allm.rt_lock().len() + 2 <= self.cfg.max_threads {
            return None;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < LIMIT_WAIT {
            std::thread::sleep(Duration::from_micros(50));
            if let Some(m) = self.midle.rt_lock().pop() {
                return Some(m);
            }
        }
        None
    }

    /// Go's newm: a new M (OS thread) to run P `p`, `g` first. The only
    /// place an M is created. Exceeding `max_threads`, or the OS refusing
    /// the thread, is a fatal error (exit status 2), as in Go.
    pub(crate) fn newm(&self, p: usize, g: Option<GRef>, spinning: bool) {
        let mut all = self.allm.rt_lock();
        // Go's checkmcount: the new M plus sysmon must fit the limit.
        if all.len() + 2 > self.cfg.max_threads {
            drop(all);
            self.die_thread_exhaustion();
        }
        let m = Arc::new(M {
            id: all.len() + 1,
            shared: self as *const Shared,
            tid: AtomicI32::new(0),
            note: Note::new(),
            nextp: AtomicUsize::new(p + 1),
            nextg: AtomicPtr::new(nextg_ptr(g)),
            spinning: AtomicBool::new(spinning),
            curg: AtomicPtr::new(ptr::null_mut()),
            locked_g: Cell::new(None),
            g0_sp: UnsafeCell::new(0),
            p: Cell::new(None),
            new_p: Cell::new(false),
            yield_p: Cell::new(ptr::null()),
            reason: Cell::new(Reason::None),
            #[cfg(feature = "preempt-signal")]
            signal_pending: AtomicBool::new(false),
            #[cfg(feature = "preempt-signal")]
            sigurg_seq: AtomicU64::new(0),
            #[cfg(feature = "preempt-signal")]
            preempting: AtomicBool::new(false),
            #[cfg(feature = "preempt-signal")]
            timer_id: AtomicI32::new(crate::preempt::NO_SLICE_TIMER),
            #[cfg(feature = "preempt-signal")]
            timer_p: AtomicUsize::new(0),
            #[cfg(feature = "preempt-signal")]
            timer_tick: AtomicU64::new(crate::sched::NO_TIMER),
            #[cfg(feature = "preempt-signal")]
            timer_armed: AtomicBool::new(false),
            claiming: AtomicBool::new(false),
            pinned: AtomicBool::new(false),
            cpu_mask: Cell::new(None),
            unpinnable: AtomicBool::new(false),
            this: AtomicPtr::new(ptr::null_mut()),
            refused: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            pless_run: AtomicU64::new(0),
            // SAFETY: sigset_t is plain data; filled in by the M at start.
            sigmask: UnsafeCell::new(unsafe { std::mem::zeroed() }),
        });
        all.push(m.clone());
        drop(all);
        let sh = self.me.upgrade().expect("runtime alive");
        let started = std::thread::Builder::new()
            .name(format!("gosched-m{}", m.id))
            .spawn(move || schedule::mstart(sh, m));
        match started {
            Ok(t) => self.threads.rt_lock().push(t),
            // Go's newosproc throw. Not a panic: the caller (a spawn, a
            // wake-up, sysmon's retake) has taken P `p` and maybe counted
            // a spinning M, which nobody would undo, and `block_on` would
            // unwind while its goroutine stays queued.
            Err(e) => self.die_thread_create_failed(&e),
        }
    }

    /// Go's handoffp: give P away, starting an M for it only if it is
    /// needed. `then_park`: the caller parks right after, so an M woken
    /// for the P takes over this CPU too (`pin_to_this_cpu`).
    pub(crate) fn handoffp(&self, p: usize, then_park: bool) {
        if self.p_dropped(p) {
            // `set_procs` dropped it: its work goes to the global queue,
            // and `destroyp` wakes an M for any work waiting anywhere (the
            // global work we would have started an M for below).
            return self.destroyp(p);
        }
        if self.ps[p].runq.has_work() || self.global_has_work() {
            return self.startm(Some(p), false, then_park);
        }
        if self.nmspinning.load(Ordering::SeqCst) + self.npidle.load(Ordering::SeqCst) == 0
            && self
                .nmspinning
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return self.startm(Some(p), true, then_park);
        }
        self.pidleput(p);
        // Re-check after publishing the idle P (Dekker with submitters).
        fence(Ordering::SeqCst);
        if self.global_has_work() {
            self.wakep();
        }
    }

    /// Sysmon's retake of a P whose goroutine is in a blocking call or
    /// blocked in the kernel. `expect` is the state it saw (P_USER or
    /// P_SYSCALL). Returns whether the P was taken.
    pub(crate) fn retake(&self, p: usize, expect: u64) -> bool {
        let s = self.ps[p].status.load(Ordering::Acquire);
        if pstate(s) != expect {
            return false;
        }
        // Pairs with the owner's CAS back to SCHED: exactly one wins.
        if self.ps[p]
            .status
            .compare_exchange(s, P_HANDOFF, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let mp = self.ps[p].m.load(Ordering::Acquire);
        if expect == P_USER && !mp.is_null() {
            // Its goroutine runs on without a P: sysmon signals the M until
            // this run ends (`preempt_pless`). The run our CAS took the P
            // from, read at once: the M stored it before the `USER` status
            // our CAS read (a later run would need a P first, after it
            // saw the loss; at worst sysmon then asks a goroutine that has
            // one again: the signal finds no request).
            // SAFETY: Ms live as long as Shared.
            let m = unsafe { &*mp };
            let run = m.runs.load(Ordering::Acquire);
            if self.cfg.async_preempt && m.pless_run.swap(run, Ordering::AcqRel) == 0 {
                self.npless.fetch_add(1, Ordering::SeqCst);
            }

            // A goroutine of that M may hold a claim on the P (Dekker with
            // `claim_p`, see "Ownership of a P"): wait for it to end. Claims
            // are a few dozen instructions in no-preempt regions.
            // SAFETY: Ms live as long as Shared.
            let owner = unsafe { (*mp).id } as u64;
            debug_assert_eq!(owner, powner(s), "P owned by another M");
            crate::os::membarrier::heavy();
            // SAFETY: Ms live as long as Shared.
            while unsafe { (*mp).claiming.load(Ordering::Acquire) } {
                std::thread::yield_now();
            }
        }
        if !mp.is_null() {
            // SAFETY: Ms live as long as Shared.
            let g = unsafe { (*mp).curg.load(Ordering::Relaxed) };
            if let Some(g) = NonNull::new(g) {
                // It must give way as soon as it can: it has no P any more.
                // SAFETY: a running G is live.
                unsafe { g.as_ref().preempt.store(true, Ordering::Relaxed) };
            }
        }
        self.ps[p].m.store(ptr::null_mut(), Ordering::Relaxed);
        self.handoffp(p, false);
        true
    }

    /// Does a global queue (`injector`, `woken`, `sliced`) hold work?
    pub(crate) fn global_has_work(&self) -> bool {
        !self.woken.is_empty() || !self.injector.is_empty() || !self.sliced.is_empty()
    }

    /// Goroutines in the global queues (for diagnostics).
    pub(crate) fn global_queue_len(&self) -> usize {
        self.woken.len() + self.injector.len() + self.sliced.len()
    }

    /// Is every P idle (on the idle list)?
    pub(crate) fn all_idle(&self) -> bool {
        self.npidle.load(Ordering::SeqCst) >= self.procs()
    }

    /// A P left the idle state: wake sysmon if it sleeps because all were
    /// idle and would not wake before this P's slice could end (Go wakes
    /// sysmon from exitsyscall and startTheWorld likewise). When sysmon
    /// sleeps until a timer that is about to fire anyway (the usual way an
    /// idle runtime becomes busy), the wake-up, a system call on the path
    /// to running the timer's goroutine, is skipped.
    pub(crate) fn note_busy(&self) {
        // Pairs with the SeqCst store in monitor::run (Dekker: either we see
        // sysmon asleep, or it sees this P busy before it sleeps).
        let until = self.sysmon_idle_until.load(Ordering::SeqCst);
        let slice_end = self
            .nanotime()
            .saturating_add(crate::sched::timer::nanos(self.cfg.quantum));
        if until != 0 && until > slice_end {
            self.wake_sysmon();
        }
    }

    /// Sysmon's preemption request for P `p` (Go's preemptone): sets the
    /// running goroutine's cooperative flag and, if asked, signals its M.
    pub(crate) fn preempt_p(&self, p: usize, send_signal: bool) -> gosched_sysmon::Preempt {
        self.preempt_slice(p, None, send_signal)
    }

    /// `preempt_p`, only if P `p` still runs slice `tick` (its `schedtick`)
    /// when its goroutine is looked up: a wake-up request (or its repeat)
    /// must not land in a later slice, where its flag and signal would
    /// preempt the goroutine that runs next outside any request (it then
    /// goes to the global queue's tail, as if time-sliced). The window
    /// left, between the check and the flag, is nanoseconds, as in Go's
    /// preemptone.
    pub(crate) fn preempt_slice(
        &self,
        p: usize,
        tick: Option<u64>,
        send_signal: bool,
    ) -> gosched_sysmon::Preempt {
        use gosched_sysmon::Preempt;
        let pp = &self.ps[p];
        let st = pp.status.load(Ordering::Acquire);
        if pstate(st) != P_USER {
            return Preempt::NotRunning;
        }
        let mp = pp.m.load(Ordering::Acquire);
        if mp.is_null() {
            return Preempt::NotRunning;
        }
        // SAFETY: Ms live as long as Shared.
        let m = unsafe { &*mp };
        let g = m.curg.load(Ordering::Acquire);
        if g.is_null() || tick.is_some_and(|t| pp.schedtick.load(Ordering::Acquire) != t) {
            return Preempt::NotRunning;
        }
        // SAFETY: a running G is live (G structs are never freed while the
        // runtime runs). Best effort, as in Go: the G may have just changed.
        unsafe { (*g).preempt.store(true, Ordering::Relaxed) };
        if !(send_signal && self.cfg.async_preempt) {
            return Preempt::FlagOnly;
        }
        if crate::preempt::signal_m(m) {
            Preempt::Signalled
        } else {
            Preempt::AlreadyPending
        }
    }

    /// Does any goroutine wait for a P (a local queue, the yield slot or a
    /// global queue)? Atomic loads only: the signal handler asks it
    /// (`preempt::slice_timer`).
    #[cfg(feature = "preempt-signal")]
    pub(crate) fn runnable_waiting(&self) -> bool {
        self.global_has_work() || self.ps[..self.procs()].iter().any(|p| p.runq.has_work())
    }

    /// Is there a runnable G an idle M could take (the last spinning M's
    /// re-check)? Not a P's yield slot: see `RunQueue::has_stealable_work`.
    pub(crate) fn any_work(&self) -> bool {
        self.global_has_work()
            || self.ps[..self.procs()]
                .iter()
                .any(|p| p.runq.has_stealable_work())
    }
}

/// `M::nextg`'s value for a handed goroutine (null: none).
fn nextg_ptr(g: Option<GRef>) -> *mut G {
    g.map_or(ptr::null_mut(), GRef::as_ptr)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::{Duration, Instant};

    use crate::sched::{pstate, Shared, P_IDLE};

    /// `pidleput` stops between its two stores while this is `HOLD`, and
    /// sets `HELD` there; `RELEASE` lets it go on.
    static PAUSE: AtomicU8 = AtomicU8::new(OFF);
    const OFF: u8 = 0;
    const HOLD: u8 = 1;
    const HELD: u8 = 2;
    const RELEASE: u8 = 3;

    pub(super) fn between_idle_stores() {
        if PAUSE
            .compare_exchange(HOLD, HELD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            while PAUSE.load(Ordering::Acquire) != RELEASE {
                std::hint::spin_loop();
            }
        }
    }

    /// sysmon's view of an idle runtime: a P whose status says idle is
    /// counted in `npidle` (see its docs), also while the M that idles it
    /// is stopped between the two stores (by the kernel, for sysmon at
    /// nice -20 on its CPU). Before, `pidleput` counted it after the status
    /// store: an idle P in a runtime that was not idle, and sysmon, whose
    /// idle branch goes round its loop again at once when `all_idle`
    /// disagrees, spun there for 9 ms.
    #[test]
    fn a_p_that_says_idle_is_counted_idle() {
        let cfg = crate::Builder::new().procs(1).config().unwrap();
        let sh = Shared::new(cfg).unwrap();
        let p = sh.pidleget().expect("the only P is idle");
        PAUSE.store(HOLD, Ordering::Release);
        let idler = {
            let sh = sh.clone();
            std::thread::spawn(move || sh.pidleput(p))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while PAUSE.load(Ordering::Acquire) != HELD {
            assert!(Instant::now() < deadline, "pidleput never paused");
            std::thread::yield_now();
        }
        let says_idle = pstate(sh.ps[p].status.load(Ordering::Acquire)) == P_IDLE;
        let counted = sh.npidle.load(Ordering::SeqCst);
        PAUSE.store(RELEASE, Ordering::Release);
        idler.join().unwrap();
        assert!(
            !says_idle || counted == 1,
            "midway through pidleput the P says idle but npidle is {counted}"
        );
        assert!(sh.all_idle());
        assert_eq!(pstate(sh.ps[p].status.load(Ordering::Acquire)), P_IDLE);
    }
}
