//! The M side of the scheduler: the loop each worker thread runs on its own
//! stack (g0): `schedule`, `execute`, `find_runnable`, stealing, parking and
//! the LockOSThread hand-offs. See the parent module for the protocol.

use crate::sched::RuntimeLock;
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_deque::Steal;

use super::direct_yield::OwnerSwap;
use super::*;
use crate::arch;
use crate::builder::PreemptMode;
use crate::os::affinity::thread_cpu_mask;
use crate::sched::g::{GRef, EMPTY, PARKED};
use crate::stack::{Stack, P_CACHE};

/// Body of every M thread.
pub(super) fn mstart(sh: Arc<Shared>, m: Arc<M>) {
    m.this.store(Arc::as_ptr(&m) as *mut M, Ordering::Relaxed);
    // GS first, CUR_M second: `current_g` relies on that order.
    if let Err(e) = arch::set_thread_base(Arc::as_ptr(&m) as usize) {
        // Every x86-64 Linux has arch_prctl; only a seccomp filter that
        // forbids it gets here, and no goroutine could run.
        eprintln!("fatal: gosched could not set up an M thread: arch_prctl(ARCH_SET_GS): {e}");
        std::process::abort();
    }
    set_cur_m(Arc::as_ptr(&m));
    // Before `tid` is published: whoever pins this thread (and so needs
    // the tid) finds the mask to restore recorded.
    m.cpu_mask.set(thread_cpu_mask());
    m.unpinnable
        .store(m.cpu_mask.get().is_some(), Ordering::Release);
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
    let s = Sched { sh: &sh, m: &m };
    if let Some(p) = m.take_nextp() {
        s.acquirep(p);
        s.run();
    }
    set_cur_m(ptr::null());
    // Cannot fail: the same call succeeded above.
    let _ = arch::set_thread_base(0);
}

/// One M's view of the scheduler: the code that runs on g0.
struct Sched<'a> {
    sh: &'a Shared,
    m: &'a Arc<M>,
}

impl Sched<'_> {
    fn p(&self) -> &P {
        &self.sh.ps[self.m.p.get().expect("M without a P")]
    }

    #[allow(clippy::mut_from_ref)]
    fn local(&self) -> &mut PLocal {
        // SAFETY: we are on g0 of the M that owns this P (state SCHED); no
        // other reference to its local data exists.
        unsafe { &mut *self.p().local.get() }
    }

    fn acquirep(&self, p: usize) {
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
        self.sh.note_busy();
    }

    fn releasep(&self) -> usize {
        let p = self.m.p.take().expect("releasep without a P");
        self.sh.ps[p].status.store(P_HANDOFF, Ordering::Release);
        p
    }

    /// The scheduler loop (Go's schedule): runs until shutdown.
    fn run(&self) {
        let mut next: Option<(GRef, bool)> = None;
        loop {
            if self.sh.shutdown.load(Ordering::Acquire) {
                break;
            }
            let (g, inherit) = match next.take() {
                Some(x) => x,
                None => match self.m.locked_g.get() {
                    // A locked M runs only its G (Go's stoplockedm).
                    Some(lg) => {
                        if !self.stoplockedm() {
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
    fn execute(&self, g: GRef, inherit: bool) -> GRef {
        let p = self.p();
        if !inherit || self.m.new_p.get() {
            self.m.new_p.set(false);
            p.slice_start
                .store(self.sh.slice_clock(), Ordering::Relaxed);
            p.schedtick
                .store(p.schedtick.load(Ordering::Relaxed) + 1, Ordering::Release);
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
    fn after(&self, g: GRef) -> Option<(GRef, bool)> {
        let reason = self.m.reason.replace(Reason::None);
        // Kept only by a wake-up preemption (see `requeue_preempted_for_wakeup`).
        let origin = g.run_origin.replace(0);
        if reason != Reason::AsyncPreempt && g.affine.get() {
            // A cooperative scheduling point ends ThreadAffine pinning.
            g.affine.set(false);
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
                if !self.requeue_preempted_for_wakeup(g, origin) {
                    self.globrunqput(g, false);
                }
            }
            Reason::AsyncPreempt => {
                self.sh
                    .counters
                    .preempt_async
                    .fetch_add(1, Ordering::Relaxed);
                if self.sh.cfg.mode == PreemptMode::ThreadAffine {
                    g.affine.set(true);
                    g.locked_m.set(Some(NonNull::from(&**self.m)));
                    self.m.locked_g.set(Some(g));
                }
                // Unlocked, the goroutine may run anywhere: wake a P for it
                // (Go's preemptPark/gopreempt_m). Locked to us, our P
                // follows it: `stoplockedm` hands the P on, and `handoffp`
                // sees the goroutine in the global queue (or our runnext).
                if !self.requeue_preempted_for_wakeup(g, origin) {
                    self.globrunqput(g, self.m.locked_g.get().is_none());
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
    /// to the global queue's tail, as a time-sliced goroutine does.
    fn requeue_preempted_for_wakeup(&self, g: GRef, origin: u64) -> bool {
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
        if ran_ns >= self.sh.cfg.quantum.as_nanos() as f64 {
            return false;
        }
        g.run_origin.set(origin.max(1));
        if let Some(old) = NonNull::new(pp.runnext.swap(g.as_ptr(), Ordering::AcqRel)) {
            self.local().worker.push(GRef(old));
        }
        true
    }

    /// Ends `g`'s lock to this M unless something still holds it there:
    /// `lock_os_thread`, ThreadAffine pinning, or a panic in progress.
    fn unlock_if_free(&self, g: GRef) {
        if g.lock_count.get() == 0 && !g.affine.get() && !g.unwinding.get() {
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
    fn lock_if_panicking(&self, g: GRef) {
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

    fn runqput_tail(&self, g: GRef) {
        match self.m.p.get() {
            Some(_) => self.local().worker.push(g),
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
    fn globrunqput(&self, g: GRef, wake: bool) {
        self.sh.injector.push(g);
        if wake || self.m.p.get().is_none() {
            // Dekker with the spinning protocol (see `wakep`).
            fence(Ordering::SeqCst);
            self.sh.wakep();
        }
    }

    /// Returns a finished G and its stack to the caches.
    fn gfput(&self, g: GRef) {
        g.live.store(false, Ordering::Relaxed);
        if let Some(lm) = g.locked_m.take() {
            debug_assert!(ptr::eq(lm.as_ptr(), Arc::as_ptr(self.m)));
            self.m.locked_g.set(None);
        }
        g.lock_count.set(0);
        g.affine.set(false);
        g.unwinding.set(false);
        // SAFETY: owner access: the G finished on this M.
        let stack = unsafe { (*g.stack.get()).take() };
        g.stack_lo.store(0, Ordering::Relaxed);
        g.stack_hi.store(0, Ordering::Relaxed);
        match self.m.p.get() {
            Some(pi) => {
                bump(&self.sh.ps[pi].counters.exited);
                let local = self.local();
                if let Some(s) = stack {
                    self.sh.stacks.recycle(&s);
                    local.stacks.push(s);
                    if local.stacks.len() > P_CACHE {
                        let half = local.stacks.len() / 2;
                        self.sh.stacks.put_batch(local.stacks.drain(..half));
                    }
                }
                local.gfree.push(g);
                if local.gfree.len() > G_CACHE {
                    let half = local.gfree.len() / 2;
                    self.sh.gfree.rt_lock().extend(local.gfree.drain(..half));
                }
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
    }

    fn stack_get(&self) -> Stack {
        let local = self.local();
        if local.stacks.is_empty() {
            self.sh.stacks.get_batch(&mut local.stacks, P_CACHE / 2);
        }
        local.stacks.pop().expect("stack batch is never empty")
    }

    /// Go's findRunnable. Returns None only at shutdown.
    ///
    /// One departure from Go, for ThreadAffine mode: when
    /// `affine_parked_cap()` Ms are parked with asynchronously preempted
    /// goroutines, the global queue (where those goroutines wait)
    /// comes right after `runnext`, before the local queue, and the local
    /// queue gets the every-61st-slice turn instead.
    /// Each such goroutine pins its thread until it resumes, so starting
    /// fresh goroutines from the local queue, which get preempted in turn,
    /// would add a thread per goroutine (1,000+ threads with 2,000 hogs at a
    /// 50 µs quantum); resuming the oldest parked ones first keeps the count
    /// near the cap.
    fn find_runnable(&self) -> Option<(GRef, bool)> {
        loop {
            if self.sh.shutdown.load(Ordering::Acquire) {
                return None;
            }
            if self.retire_p() {
                if !self.stopm() {
                    return None;
                }
                continue;
            }
            self.sh.fire_timers();
            // Goroutines woken from outside any P first (see `Shared::woken`).
            if !self.sh.woken.is_empty() {
                if let Some(g) = steal_one(|| self.sh.woken.steal()) {
                    return Some((g, false));
                }
            }
            let p = self.p();
            let global_turn = p
                .schedtick
                .load(Ordering::Relaxed)
                .is_multiple_of(GLOBAL_CHECK);
            let affine_full =
                self.sh.affine_parked.load(Ordering::Relaxed) >= self.sh.affine_parked_cap();
            if global_turn && !affine_full {
                if let Some(g) = steal_one(|| self.sh.injector.steal()) {
                    return Some((g, false));
                }
            }
            if let Some(g) = NonNull::new(p.runnext.swap(ptr::null_mut(), Ordering::AcqRel)) {
                return Some((GRef(g), true));
            }
            if affine_full && !global_turn {
                if let Some(g) = steal_one(|| self.sh.injector.steal()) {
                    return Some((g, false));
                }
            }
            if let Some(g) = NonNull::new(p.yielded.swap_owner(ptr::null_mut())) {
                return Some((GRef(g), false));
            }
            if let Some(g) = self.local().worker.pop() {
                return Some((g, false));
            }
            if let Some(g) =
                steal_one(|| self.sh.injector.steal_batch_and_pop(&self.local().worker))
            {
                return Some((g, false));
            }
            // Ready I/O before stealing (Go's findRunnable step 6); one
            // Relaxed load when no goroutine waits on the poller.
            if self.sh.driver.should_poll() && self.sh.netpoll_now() > 0 {
                continue;
            }
            let busy = self
                .sh
                .procs()
                .saturating_sub(self.sh.npidle.load(Ordering::SeqCst));
            if self.m.spinning.load(Ordering::Relaxed)
                || 2 * self.sh.nmspinning.load(Ordering::SeqCst) < busy
            {
                if !self.m.spinning.load(Ordering::Relaxed) {
                    self.m.spinning.store(true, Ordering::Relaxed);
                    self.sh.nmspinning.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(g) = self.steal_work() {
                    return Some((g, false));
                }
            }
            // Nothing: give up the P (step 5 of the module docs).
            let was_spinning = self.m.spinning.swap(false, Ordering::Relaxed);
            let pi = self.releasep();
            self.sh.pidleput(pi);
            if was_spinning {
                self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
            }
            fence(Ordering::SeqCst);
            if self.sh.any_work() {
                if let Some(pi) = self.sh.pidleget() {
                    self.acquirep(pi);
                    if was_spinning {
                        self.m.spinning.store(true, Ordering::Relaxed);
                        self.sh.nmspinning.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
            }
            if !self.stopm() {
                return None;
            }
        }
    }

    /// Go's stealWork: up to 4 passes over the other Ps in random order.
    fn steal_work(&self) -> Option<GRef> {
        let n = self.sh.procs();
        let me = self.p().id;
        for pass in 0..STEAL_TRIES {
            let last = pass == STEAL_TRIES - 1;
            let (start, step) = {
                let local = self.local();
                local.rng ^= local.rng << 13;
                local.rng ^= local.rng >> 7;
                local.rng ^= local.rng << 17;
                let r = local.rng;
                (r as usize % n, coprime_step(n, (r >> 32) as usize))
            };
            let mut i = start;
            for _ in 0..n {
                if i != me {
                    if let Some(g) = self.steal_from(i, last) {
                        bump(&self.p().counters.steals);
                        return Some(g);
                    }
                }
                i = (i + step) % n;
            }
        }
        None
    }

    fn steal_from(&self, victim: usize, take_runnext: bool) -> Option<GRef> {
        let v = &self.sh.ps[victim];
        if let Some(g) = steal_one(|| v.stealer.steal_batch_and_pop(&self.local().worker)) {
            return Some(g);
        }
        if take_runnext {
            let g = v.runnext.load(Ordering::Acquire);
            if g.is_null() {
                return None;
            }
            if matches!(v.status.load(Ordering::Relaxed) & 0xff, P_USER | P_SCHED) {
                // Go's runqgrab: the victim is running, and a goroutine that
                // just readied `g` often blocks right after (a channel
                // ping-pong). Give its P time to run `g` itself rather than
                // bounce the pair between threads. Like Go, sleep rather
                // than watch: the sleep also slows a thief that would
                // otherwise keep snatching the pair (watching runnext for
                // 3 µs instead gained half as much on the 2-P ping-pong).
                std::thread::sleep(RUNNEXT_GRACE);
            }
            if v.runnext
                .compare_exchange(g, ptr::null_mut(), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return NonNull::new(g).map(GRef);
            }
        }
        None
    }

    /// If `set_procs` dropped our P, destroy it (Go's procresize does it
    /// for every dropped P while the world is stopped; see
    /// `sched::procresize`). Returns whether it did: we have no P now.
    #[inline]
    fn retire_p(&self) -> bool {
        match self.m.p.get() {
            Some(p) if self.sh.p_dropped(p) => {}
            _ => return false,
        }
        if self.m.spinning.swap(false, Ordering::Relaxed) {
            self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
        }
        let p = self.releasep();
        self.sh.destroyp(p);
        true
    }

    /// Go's resetspinning.
    fn resetspinning(&self) {
        self.m.spinning.store(false, Ordering::Relaxed);
        self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
        self.sh.wakep();
    }

    /// Go's stopm: park this M (without a P) until handed one. Returns false
    /// at shutdown. While parked it may be the sleeper, waiting in the
    /// driver (`crate::driver`): it wakes at the earliest deadline or on
    /// I/O, fires due timers, and tries to run what woke itself.
    fn stopm(&self) -> bool {
        debug_assert!(self.m.p.get().is_none());
        self.sh.midle.rt_lock().push(self.m.clone());
        let me = Arc::as_ptr(self.m) as *mut M;
        loop {
            if self.sh.shutdown.load(Ordering::Acquire) {
                return false;
            }
            // The sleeper role: the one M that waits in the driver (until
            // the next timer, I/O, or `wake_m`); see `crate::driver`.
            let sleeper = (self.sh.timers.next().is_some() || self.sh.driver.waiters() != 0)
                && self
                    .sh
                    .timer_m
                    .compare_exchange(ptr::null_mut(), me, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok();
            let (woken, io) = if sleeper {
                let timeout = self
                    .sh
                    .timers
                    .next()
                    .map(|next| Duration::from_nanos(next.saturating_sub(self.sh.nanotime())));
                self.sh.park_in_driver(self.m, timeout)
            } else {
                (self.m.note.wait(None), Vec::new())
            };
            self.sh.unpin(self.m);
            if sleeper {
                self.sh.timer_m.store(ptr::null_mut(), Ordering::SeqCst);
                // Dekker with `wake_m`, which skips the futex wake while it
                // sees us as the sleeper: our leaving the role comes before
                // our next look at the note.
                fence(Ordering::SeqCst);
            }
            // Goroutines the poll woke: queued now, their wake-up below
            // (ourselves if we get a P, else `wakep`).
            let io_ready = io.len();
            self.sh.inject(io, false);
            if self.sh.shutdown.load(Ordering::Acquire) {
                return false;
            }
            if let Some(p) = self.m.take_nextp() {
                self.acquirep(p);
                self.wake_for_io(io_ready, 0);
                return true;
            }
            let timer_due = !woken
                && self
                    .sh
                    .timers
                    .next()
                    .is_some_and(|n| n <= self.sh.nanotime());
            if !timer_due && io_ready == 0 {
                continue;
            }
            // A timer is due or I/O woke goroutines. If a P is idle, leave
            // the idle list (unless someone already took us off it and is
            // about to hand us a P), take the P and run them ourselves.
            let mut idle = self.sh.midle.rt_lock();
            if let Some(pos) = idle.iter().position(|m| Arc::ptr_eq(m, self.m)) {
                if let Some(p) = self.sh.pidleget() {
                    idle.swap_remove(pos);
                    drop(idle);
                    self.acquirep(p);
                    self.sh.fire_timers();
                    self.wake_for_io(io_ready, 1);
                    return true;
                }
            }
            drop(idle);
            // No P for us (every P is busy): fire the timers anyway. The
            // goroutines they (and the poll) wake wait on the global queue
            // for a P, and the deadline moves on, so we sleep instead of
            // spinning on it. sysmon preempts only while someone waits, and
            // may be asleep for a quantum: tell it someone waits now.
            self.wake_for_io(io_ready, 0);
            if self.sh.fire_timers() + io_ready > 0 {
                self.sh.sysmon_note.wake();
            }
        }
    }

    /// After a driver wait in `stopm` made `n` goroutines runnable (on the
    /// global queue), of which we run `ours` ourselves: wake an M for the
    /// rest (the spinning protocol ramps up from there).
    fn wake_for_io(&self, n: usize, ours: usize) {
        if n > ours {
            fence(Ordering::SeqCst);
            self.sh.wakep();
        }
    }

    /// Go's stoplockedm: our locked G is not running; give our P away and
    /// sleep until someone hands us a P to run it with.
    fn stoplockedm(&self) -> bool {
        // Our locked G waits in a run queue after an asynchronous
        // preemption (ThreadAffine): count us until it resumes (see
        // `find_runnable`).
        let affine = self.m.locked_g.get().is_some_and(|g| g.affine.get());
        if affine {
            self.sh.affine_parked.fetch_add(1, Ordering::Relaxed);
        }
        let ok = self.stoplockedm_wait();
        if affine {
            self.sh.affine_parked.fetch_sub(1, Ordering::Relaxed);
        }
        ok
    }

    fn stoplockedm_wait(&self) -> bool {
        if let Some(p) = self.m.p.get() {
            if self.m.spinning.swap(false, Ordering::Relaxed) {
                self.sh.nmspinning.fetch_sub(1, Ordering::SeqCst);
            }
            self.m.p.set(None);
            self.sh.ps[p].status.store(P_HANDOFF, Ordering::Release);
            // We park right below: hand over our CPU with the P.
            self.sh.handoffp(p, true);
        }
        loop {
            self.m.note.wait(None);
            self.sh.unpin(self.m);
            if self.sh.shutdown.load(Ordering::Acquire) {
                return false;
            }
            if let Some(p) = self.m.take_nextp() {
                self.acquirep(p);
                return true;
            }
        }
    }

    /// Go's startlockedm: the goroutine we dequeued may run only on `lm`
    /// (which runs its `locked_g` once it has a P): give it our P.
    fn startlockedm(&self, lm: NonNull<M>) {
        let p = self.releasep();
        // SAFETY: Ms live as long as Shared.
        let lm = unsafe { lm.as_ref() };
        lm.nextp.store(p + 1, Ordering::Release);
        // We park right after this (see `run`): hand over our CPU too.
        self.sh.pin_to_this_cpu(lm);
        lm.note.wake();
    }
}

/// Ms parked with an asynchronously preempted ThreadAffine goroutine above
/// which `find_runnable` serves the global queue (where those goroutines
/// wait) before the local one: `max(AFFINE_PARKED_MIN, AFFINE_PARKED_PER_P
/// * procs)`. A soft cap on the threads ThreadAffine preemption costs.
///
/// The cap trades thread count for start latency: at the cap a goroutine
/// waiting in a local queue starts only on the every-61st-slice turn (each
/// one started is preempted in turn and pins one more thread). Below it
/// Go's order holds. So it is high enough that ordinary loads (tens of
/// call-free loops) never reach it (40 loops on 2 Ps: fairness index 0.99
/// either way, while a cap of 16 dropped it to 0.58 in a 2 s run), and low
/// enough that a burst of thousands of short hogs stays at tens of threads
/// instead of one per hog.
const AFFINE_PARKED_PER_P: usize = 8;
const AFFINE_PARKED_MIN: usize = 64;

impl Shared {
    /// See `AFFINE_PARKED_PER_P`.
    fn affine_parked_cap(&self) -> usize {
        (AFFINE_PARKED_PER_P * self.procs()).max(AFFINE_PARKED_MIN)
    }
}

/// Retries a crossbeam steal until it is not `Retry`.
pub(super) fn steal_one(mut f: impl FnMut() -> Steal<GRef>) -> Option<GRef> {
    loop {
        match f() {
            Steal::Success(g) => return Some(g),
            Steal::Empty => return None,
            Steal::Retry => std::hint::spin_loop(),
        }
    }
}

/// A step in 1..n coprime to n, so `start + k*step mod n` visits every P
/// once (Go's randomOrder).
pub(super) fn coprime_step(n: usize, r: usize) -> usize {
    if n <= 1 {
        return 1;
    }
    let mut s = r % n;
    loop {
        s = s % (n - 1) + 1;
        if gcd(s, n) == 1 {
            return s;
        }
        s += 1;
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
