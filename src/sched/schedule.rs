//! The M side of the scheduler: the loop each worker thread runs on its own
//! stack (g0): `schedule`, `execute`, `find_runnable`, stealing, parking and
//! the LockOSThread hand-offs. See the parent module for the protocol.
//!
//! # A goroutine that exits locked
//!
//! Go ends the thread of a goroutine that exits while still locked to it
//! (`goexit0` returning to `mstart`, then `mexit`): the goroutine may have
//! locked the thread precisely to change its state. gosched keeps the
//! thread and puts back what it can: the signal mask and the CPU affinity
//! the M started with (`G0::reset_thread_state`), so neither leaks to the
//! next goroutine on that thread (a changed mask also made the SIGURG
//! handler refuse every asynchronous preemption there: safe-point rule 5
//! compares the interrupted mask with `M::sigmask`). A network namespace,
//! credentials or a scheduling policy are not put back (documented on
//! `lock_os_thread`).
//!
//! Why not end the thread: a goroutine that ran on it earlier and moved to
//! another thread at a cooperative point may still use, in compiled code,
//! the address of this thread's thread-locals (LLVM computes a
//! thread-local's address once per function; see "Soundness" in the crate
//! docs). While the thread lives that is a stale value; once it ended it
//! is a read of freed memory. Ending it was tried: in release builds the
//! main goroutine's `gosched::spawn` after a `join` on a goroutine that
//! exited locked read the ended thread's thread-locals and found no
//! runtime (tests/thread_state.rs, tests/lock_os_thread.rs).

use crate::sched::RuntimeLock;
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::runq::Owner;
use super::*;
use crate::arch;
use crate::builder::PreemptMode;
use crate::os::affinity::{several_cpus, thread_cpu_mask};
use crate::sched::g::{GRef, EMPTY, PARKED};
use crate::stack::Stack;
use crossbeam_deque::Injector;

/// Body of every M thread.
pub(super) fn mstart(sh: Arc<Shared>, m: Arc<M>) {
    m.this.store(Arc::as_ptr(&m) as *mut M, Ordering::Relaxed);
    // The thread base first, CUR_M second: `current_g` relies on that
    // order.
    if let Err(e) = arch::set_thread_base(Arc::as_ptr(&m) as usize) {
        // Only a seccomp filter that forbids the system call gets here,
        // and no goroutine could run.
        crate::diag::stderr_line(format_args!(
            "fatal: gosched could not set up an M thread: {e}"
        ));
        std::process::abort();
    }
    set_cur_m(Arc::as_ptr(&m));
    // Before `tid` is published: whoever pins this thread (and so needs
    // the tid) finds the mask to restore recorded.
    m.cpu_mask.set(thread_cpu_mask());
    // Allowed one CPU only, the thread is where a pin would put it: no
    // `sched_setaffinity` pair per hand-off (two per ThreadAffine wake-up
    // preemption in a server started under `taskset -c N`).
    m.unpinnable.store(
        m.cpu_mask.get().is_some_and(|mask| several_cpus(&mask)),
        Ordering::Release,
    );
    // SAFETY: gettid has no preconditions.
    m.tid.store(unsafe { libc::gettid() }, Ordering::Release);
    let _alt = crate::os::signal::AltStack::install();
    // SIGURG must never be blocked on an M; then record the mask goroutines
    // run with (safe-point rule 5 compares against it).
    crate::preempt::on_m_start();
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer
    // slack (1 ns: timers fire when asked, not up to 50 µs later);
    // pthread_sigmask with a null new set only reads the current mask.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        libc::pthread_sigmask(libc::SIG_SETMASK, ptr::null(), m.sigmask.get());
    }
    let g0 = G0 { sh: &sh, m: &m };
    if let Some(p) = m.take_nextp() {
        g0.acquirep(p);
        g0.run();
    }
    crate::preempt::release_slice_timer(&m);
    set_cur_m(ptr::null());
    // Cannot fail: the same call succeeded above.
    let _ = arch::set_thread_base(0);
}

/// An M's scheduler context: the code that runs on the M's own thread
/// stack (Go's g0; not Go's `sched`, the global state, which is `Shared`).
pub(super) struct G0<'a> {
    pub(super) sh: &'a Shared,
    pub(super) m: &'a Arc<M>,
}

impl G0<'_> {
    pub(super) fn p(&self) -> &P {
        &self.sh.ps[self.m.p.get().expect("M without a P")]
    }

    /// The P's local data, for one call of a `PLocal` method.
    ///
    /// Every use is `self.local().method(..)`, and `PLocal`'s methods take
    /// no `G0` (only the P's data and the runtime's shared pools), so
    /// they cannot reach `local()` again: the `&mut` returned here is the
    /// only one alive on this thread, and no other thread touches the data
    /// while we own the P.
    #[allow(clippy::mut_from_ref)]
    pub(super) fn local(&self) -> &mut PLocal {
        // SAFETY: we are on g0 of the M that owns this P (state SCHED);
        // see above for why no other reference to its local data exists.
        unsafe { &mut *self.p().local.get() }
    }

    /// The P's run queue (owner side).
    pub(super) fn runq(&self) -> Owner<'_> {
        // SAFETY: we are on g0 of the M that owns this P (state SCHED).
        unsafe { self.p().runq.owner() }
    }

    pub(super) fn acquirep(&self, p: usize) {
        self.acquirep_quiet(p);
        self.sh.note_busy();
    }

    /// `acquirep` without telling sysmon that a P got busy: for a P held
    /// only a moment unless work turns up (`G0::fire_as_sleeper`).
    pub(super) fn acquirep_quiet(&self, p: usize) {
        debug_assert!(self.m.p.get().is_none());
        let pp = &self.sh.ps[p];
        pp.m.store(Arc::as_ptr(self.m) as *mut M, Ordering::Relaxed);
        // Pairs with the Release of the previous owner's hand-off.
        pp.status.store(pstatus(self.m, P_SCHED), Ordering::Release);
        fence(Ordering::Acquire);
        self.m.p.set(Some(p));
        // The first goroutine we run with it starts a slice of its own, even
        // from `runnext`: sysmon judges (and hands off) a P per slice, and a
        // P handed on from a thread blocked in the kernel must not keep the
        // slice sysmon already gave up on (its next goroutine may block too).
        self.m.new_p.set(true);
    }

    pub(super) fn releasep(&self) -> usize {
        let p = self.m.p.take().expect("releasep without a P");
        self.sh.ps[p].status.store(P_HANDOFF, Ordering::Release);
        p
    }

    /// The scheduler loop (Go's schedule): runs until shutdown.
    pub(super) fn run(&self) {
        let mut next: Option<(GRef, bool)> = None;
        // The CPU affinity of this thread when its explicitly locked
        // goroutine last switched out, read before `after` publishes the
        // goroutine (from then on a waker may pin us): what `stoplockedm`
        // puts back after a pin (see `G0::unpin_locked`). None otherwise.
        let mut own_mask: Option<libc::cpu_set_t> = None;
        loop {
            if self.sh.shutdown.load(Ordering::Acquire) {
                break;
            }
            let (g, inherit) = match next.take() {
                Some(x) => x,
                None => match self.m.locked_g.get() {
                    // A locked M runs only its G (Go's stoplockedm).
                    Some(lg) => {
                        if !self.stoplockedm(own_mask.as_ref()) {
                            break;
                        }
                        (lg, false)
                    }
                    None => {
                        if self.m.p.get().is_none() && !self.stopm() {
                            break;
                        }
                        match self.find_runnable() {
                            Some(x) => x,
                            None => break,
                        }
                    }
                },
            };
            if self.m.spinning.load(Ordering::Relaxed) {
                self.resetspinning();
            }
            if self.retire_p() {
                // Our P was dropped by `set_procs`: `g` runs elsewhere.
                self.globrunqput(g, true);
                continue;
            }
            if let Some(lm) = g.locked_m.get() {
                if !ptr::eq(lm.as_ptr(), Arc::as_ptr(self.m)) {
                    self.startlockedm(lm);
                    continue;
                }
            }
            if self.m.p.get().is_none() {
                // Our P was retaken while we were away; get one first.
                self.globrunqput(g, true);
                continue;
            }
            let back = self.execute(g, inherit);
            if back.lock_count.get() > 0 && self.m.reason.get() == Reason::Exit {
                // Exited locked (module docs): the thread stays, with the
                // state the M started with.
                self.reset_thread_state();
            }
            own_mask = if back.lock_count.get() > 0 {
                thread_cpu_mask()
            } else {
                None
            };
            next = self.after(back);
        }
        if let Some(p) = self.m.p.get() {
            self.m.p.set(None);
            self.sh.pidleput(p);
        }
    }

    /// Runs `g` until it switches back (Go's execute + the return path of
    /// mcall).
    /// Returns the goroutine that switched back to g0: `g`, or another one
    /// that `g` yielded to directly (see `sched::yield_direct`).
    pub(super) fn execute(&self, g: GRef, inherit: bool) -> GRef {
        let p = self.p();
        if !inherit || self.m.new_p.get() {
            self.m.new_p.set(false);
            let now = self.sh.slice_clock();
            p.slice_start.store(now, Ordering::Relaxed);
            p.start_turn(now);
            let tick = p.schedtick.load(Ordering::Relaxed) + 1;
            p.schedtick.store(tick, Ordering::Release);
            if g.hog.get() && self.sh.cfg.slice_timer {
                crate::preempt::arm_slice_timer(self.m, p.id, tick);
            }
        }
        bump(&p.counters.switches);
        // SAFETY: owner access to a runnable G: we dequeued it.
        let stack = unsafe { &mut *g.stack.get() };
        if stack.is_none() {
            let s = self.stack_get();
            // SAFETY: a stack from the pool is ours alone and writable.
            unsafe { *g.ctx.get() = arch::init_stack(s.top, g_entry) };
            g.stack_lo.store(s.bottom, Ordering::Relaxed);
            g.stack_hi.store(s.top, Ordering::Relaxed);
            *stack = Some(s);
        }
        note_running(self.sh, p, g);
        g.preempt.store(false, Ordering::Relaxed);
        // A new run (`M::pless_run`), before the goroutine shows in
        // `curg`. Owner-only: a load and a store, no locked instruction.
        let run = self.m.runs.load(Ordering::Relaxed).wrapping_add(1).max(1);
        self.m.runs.store(run, Ordering::Relaxed);
        self.m.curg.store(g.as_ptr(), Ordering::Relaxed);
        let mine = pstatus(self.m, P_SCHED);
        // Release: our writes to P-local data happen-before a retake.
        p.status.store(pstatus(self.m, P_USER), Ordering::Release);
        // SAFETY: `g.ctx` holds a context saved by `switch` or made by
        // `init_stack`, not resumed since (we dequeued g exactly once).
        unsafe { arch::switch(self.m.g0_sp.get(), *g.ctx.get(), g.as_ptr() as usize) };
        // The goroutine now switching back may not be `g`: goroutines hand
        // the M to each other directly in `yield_now`; `curg` says who.
        let back = GRef(
            NonNull::new(self.m.curg.load(Ordering::Relaxed)).expect("a goroutine switched back"),
        );
        self.m.curg.store(ptr::null_mut(), Ordering::Relaxed);
        let pi = self.m.p.get().expect("execute without a P");
        let st = &self.sh.ps[pi].status;
        let user = pstatus(self.m, P_USER);
        if st
            .compare_exchange(user, mine, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // sysmon retook our P while the goroutine ran (blocked M).
            self.m.p.set(None);
        }
        back
    }

    /// Handles the reason `g` switched back. Returns a G to run at once.
    pub(super) fn after(&self, g: GRef) -> Option<(GRef, bool)> {
        let reason = self.m.reason.replace(Reason::None);
        // Kept only by a wake-up preemption (see `requeue_preempted_for_wakeup`).
        let origin = g.run_origin.replace(0);
        // Its next fresh slice is timed if this one was time-sliced
        // (`preempt::slice_timer`; one kept for a wake-up is not, see
        // `requeue_preempted_for_wakeup`).
        g.hog
            .set(matches!(reason, Reason::AsyncPreempt | Reason::CoopPreempt));
        if reason != Reason::AsyncPreempt && g.affine.load(Ordering::Relaxed) {
            // A cooperative scheduling point ends ThreadAffine pinning.
            g.affine.store(false, Ordering::Relaxed);
            self.unlock_if_free(g);
        }
        if reason != Reason::Exit {
            self.lock_if_panicking(g);
        }
        match reason {
            Reason::Yield => self.runqput_tail(g),
            Reason::CoopPreempt => {
                self.sh
                    .counters
                    .preempt_coop
                    .fetch_add(1, Ordering::Relaxed);
                // It answers requests at runtime calls: the next wake-up
                // request tries that first again (`sched::wakeup`).
                g.wakeup_signal.store(false, Ordering::Relaxed);
                if !self.requeue_preempted_for_wakeup(g, origin, true) {
                    self.queue_sliced(g, false);
                }
            }
            Reason::AsyncPreempt => {
                #[cfg(feature = "preempt-signal")]
                self.m.preempting.store(false, Ordering::Relaxed);
                self.sh
                    .counters
                    .preempt_async
                    .fetch_add(1, Ordering::Relaxed);
                if self.sh.cfg.mode == PreemptMode::ThreadAffine {
                    g.affine.store(true, Ordering::Relaxed);
                    g.locked_m.set(Some(NonNull::from(&**self.m)));
                    self.m.locked_g.set(Some(g));
                }
                // Unlocked, the goroutine may run anywhere: wake a P for it
                // (Go's preemptPark/gopreempt_m). Locked to us, our P
                // follows it: `stoplockedm` hands the P on, and `handoffp`
                // sees the goroutine in the global queue (or our runnext).
                let kept = self.requeue_preempted_for_wakeup(g, origin, false);
                g.wakeup_kept
                    .set(kept && self.sh.cfg.mode == PreemptMode::ThreadAffine);
                if !kept {
                    self.queue_sliced(g, self.m.locked_g.get().is_none());
                }
            }
            Reason::Park => {
                if let Some(p) = self.m.p.get() {
                    bump(&self.sh.ps[p].counters.parks);
                }
                // Step 2 of the handshake: the context is saved.
                if g.park
                    .compare_exchange(EMPTY, PARKED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    g.park.store(EMPTY, Ordering::Relaxed);
                    return Some((g, true));
                }
            }
            Reason::ExitSyscall => {
                // The goroutine needs a P; queue it (a locked one comes back
                // to us through startlockedm).
                self.sh.injector.push(g);
                fence(Ordering::SeqCst);
                self.sh.wakep();
            }
            Reason::Exit => self.gfput(g),
            Reason::None => unreachable!("goroutine switched to g0 without a reason"),
        }
        None
    }

    /// A goroutine preempted to make room for a woken one keeps its place
    /// (`sched::wakeup`, step 3): it goes to our `runnext`, and the woken
    /// goroutine, taken first from `Shared::woken`, runs before it (with a
    /// fresh slice, so the preempted goroutine, inheriting that slice when
    /// it resumes, can be asked again by the next wake-up). Not the yield
    /// slot: nobody can steal from it, so if our next goroutine blocked its
    /// thread in the kernel while another P idled, it would wait there
    /// until sysmon took our P. Returns false if `g` was preempted for
    /// another reason.
    ///
    /// It keeps its place only until it has run a quantum since it last
    /// started or was time-sliced (`origin`, carried across wake-up
    /// preemptions in `G::run_origin`): every resume starts a fresh slice,
    /// so a hog preempted by every wake-up of a 1 ms ticker would otherwise
    /// never reach its quantum, and the goroutines queued behind it would
    /// starve (Jain's index 0.5 in the fairness example). Past that it goes
    /// to the global queue's tail, as a time-sliced goroutine does, if
    /// some goroutine waits there or in a run queue: with nobody behind it
    /// nobody starves, and in the global queue it counted as waiting, so
    /// sysmon preempted the other Ps' goroutines for it (two hogs on two
    /// Ps beside a 1 ms ticker at a 100 µs quantum: 1.5-1.8 preemptions
    /// per tick). `coop`: it yielded at a runtime call (see the body for
    /// where such a goroutine waits while another one is kept).
    pub(super) fn requeue_preempted_for_wakeup(&self, g: GRef, origin: u64, coop: bool) -> bool {
        let Some(p) = self.m.p.get() else {
            return false;
        };
        if !self.sh.preempted_for_wakeup(p) {
            return false;
        }
        let pp = &self.sh.ps[p];
        let now = self.sh.slice_clock();
        let origin = match origin {
            0 => match pp.slice_start.load(Ordering::Relaxed) {
                UNSTAMPED => now,
                s => s,
            },
            o => o,
        };
        let ran_ns = now.saturating_sub(origin) as f64 * self.sh.ns_per_clock_unit();
        if ran_ns >= self.sh.cfg.quantum.as_nanos() as f64 && self.sh.waiting_besides_wakeups(None)
        {
            return false;
        }
        g.run_origin.set(origin.max(1));
        // Preempted early, for a wake-up: not a goroutine that uses whole
        // quanta (its next slice is not timed).
        g.hog.set(false);
        let tick = pp.schedtick.load(Ordering::Relaxed);
        if pp.kept_since(tick).is_some() && self.runq().has_next() {
            if coop {
                // It yielded at a runtime call for the kept one's turn: a
                // goroutine that makes calls (a short request caught in
                // its turn on a slow machine). Behind the kept one in the
                // run queue nothing tracked it, and it waited until the
                // kept one, making no calls, ended its quantum (38 ms with
                // time slicing off: a 500 µs ticker beside long requests,
                // tests/wakeup.rs). It waits among the woken goroutines
                // instead, for which sysmon asks the kept one for room
                // once it has run the granularity; being asked again costs
                // it a cooperative yield, no parked thread. (`ready_woken`
                // also wakes an idle P's M for it, if there is one; with
                // none it asks nothing of our P, which is between
                // goroutines: sysmon will.)
                self.sh.ready_woken(g);
                self.sh.look_within_granularity();
                return true;
            }
            // One preempted for an earlier wake-up is kept already: it
            // resumes first, and `g` queues behind it. Displacing it to the
            // tail would make the oldest of several long goroutines wait
            // for every newer one (LIFO: the bimodal benchmark's 5 ms
            // requests took 120-140 ms at p99 at 50 % load).
            self.runq().put_tail(g);
        } else {
            self.runq().put_next(g);
        }
        pp.keep_for_wakeup(tick);
        // sysmon applies the turn rule to whatever runs next.
        self.sh.look_at_kept_turn();
        true
    }

    /// Ends `g`'s lock to this M unless something still holds it there:
    /// `lock_os_thread`, ThreadAffine pinning, or a panic in progress.
    pub(super) fn unlock_if_free(&self, g: GRef) {
        if g.lock_count.get() == 0 && !g.affine.load(Ordering::Relaxed) && !g.unwinding.get() {
            g.locked_m.set(None);
            self.m.locked_g.set(None);
        }
    }

    /// Locks `g`, which just switched out, to this M while it is panicking
    /// (unwinding, or inside the panic hook), and unlocks it once it no
    /// longer is (it caught the panic itself).
    ///
    /// std keeps its panic state per OS thread (the count behind
    /// `std::thread::panicking`, "inside the panic hook"): another goroutine
    /// run on this thread meanwhile would see `panicking() == true`, poison
    /// every `std::sync::Mutex` whose guard it drops, and abort the process
    /// if it panicked too ("thread panicked while processing panic"). So a
    /// goroutine that parks or yields mid-panic (a `Drop` guard that sends
    /// on a channel, a panic hook that sleeps) keeps its thread to itself,
    /// as a locked goroutine does: `stoplockedm` hands our P on.
    ///
    /// We run on g0 of the thread the goroutine ran on, so the thread's panic
    /// state is the goroutine's: no other goroutine ran here since it started
    /// panicking (this rule). Cheap: `panicking()` is one Relaxed load of
    /// std's global panic count while no thread panics.
    pub(super) fn lock_if_panicking(&self, g: GRef) {
        let panicking = std::thread::panicking();
        if panicking == g.unwinding.get() {
            return;
        }
        g.unwinding.set(panicking);
        if panicking {
            g.locked_m.set(Some(NonNull::from(&**self.m)));
            self.m.locked_g.set(Some(g));
        } else {
            self.unlock_if_free(g);
        }
    }

    pub(super) fn runqput_tail(&self, g: GRef) {
        match self.m.p.get() {
            Some(_) => self.runq().put_tail(g),
            None => self.globrunqput(g, false),
        }
    }

    /// Puts `g` on the global queue and makes sure some M will look there:
    /// we will ourselves if we still hold a P and `wake` is false (we go
    /// on to `find_runnable`, or hand our P on with the queue non-empty);
    /// otherwise wake an idle P. Without a P (sysmon took it while the
    /// goroutine ran) and with every other P idle, nobody else would ever
    /// look: the goroutine was lost (a hang found under load in
    /// tests/sleep.rs: every M parked, one goroutine in the global queue).
    pub(super) fn globrunqput(&self, g: GRef, wake: bool) {
        self.queue_global(&self.sh.injector, g, wake);
    }

    /// `globrunqput` for a time-sliced goroutine: past the ThreadAffine
    /// cap, onto `Shared::sliced`, which `find_runnable` serves before
    /// anything that could pin another thread.
    pub(super) fn queue_sliced(&self, g: GRef, wake: bool) {
        let q = if self.sh.affine_full() {
            &self.sh.sliced
        } else {
            &self.sh.injector
        };
        self.queue_global(q, g, wake);
    }

    /// `globrunqput` onto one of the global queues.
    pub(super) fn queue_global(&self, q: &Injector<GRef>, g: GRef, wake: bool) {
        q.push(g);
        if wake || self.m.p.get().is_none() {
            // Dekker with the spinning protocol (see `wakep`).
            fence(Ordering::SeqCst);
            self.sh.wakep();
        }
    }

    /// Puts back the signal mask and CPU affinity this M started with,
    /// after a goroutine exited locked to it (see the module docs).
    fn reset_thread_state(&self) {
        // SAFETY: `sigmask` is this M's own mask, written at start by this
        // thread (owner-only); pthread_sigmask changes only the calling
        // thread's mask, and sched_setaffinity with pid 0 only the calling
        // thread's affinity, from a mask read from this thread at start.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, self.m.sigmask.get(), ptr::null_mut());
            if let Some(mask) = self.m.cpu_mask.get() {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mask);
            }
        }
    }

    /// Returns a finished G and its stack to the caches.
    pub(super) fn gfput(&self, g: GRef) {
        g.live.store(false, Ordering::Relaxed);
        if let Some(lm) = g.locked_m.take() {
            debug_assert!(ptr::eq(lm.as_ptr(), Arc::as_ptr(self.m)));
            self.m.locked_g.set(None);
        }
        g.lock_count.set(0);
        g.affine.store(false, Ordering::Relaxed);
        g.unwinding.set(false);
        // SAFETY: owner access: the G finished on this M.
        let stack = unsafe { (*g.stack.get()).take() };
        g.stack_lo.store(0, Ordering::Relaxed);
        g.stack_hi.store(0, Ordering::Relaxed);
        match self.m.p.get() {
            Some(pi) => {
                bump(&self.sh.ps[pi].counters.exited);
                self.local().put_free(self.sh, g, stack);
            }
            None => {
                // No P (sysmon retook it): P-local caches and counters
                // are not ours; use the global list and counter.
                self.sh
                    .counters_exited_outside
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(s) = stack {
                    self.sh.stacks.put_batch([s]);
                }
                self.sh.gfree.rt_lock().push(g);
            }
        }
        if g.finishing.replace(false) {
            self.sh.finishing.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(super) fn stack_get(&self) -> Stack {
        self.local().stack_get(&self.sh.stacks)
    }
}
