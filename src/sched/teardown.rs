//! Runtime shutdown: stopping every M, and what happens to the G structs.

use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::*;
use crate::sched::g::GRef;
use crate::sched::RuntimeLock;

impl Shared {
    /// Has `Runtime` drop begun? Then no timer of this runtime fires any
    /// more, even while the last references to it are being dropped.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Stops every M and waits for them (Runtime drop).
    pub(crate) fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake_sysmon();
        loop {
            // Wake parked Ms; ask running goroutines to yield (and signal
            // their threads, so a loop without calls stops too). Not an M
            // whose goroutine is inside `blocking()`: it holds its M's
            // `signal_pending` for the call, so `signal_m` sends nothing
            // there (a signal would make poll, nanosleep and the like fail
            // with EINTR; the drop waits for the call anyway). The call
            // returned, the goroutine is signalled again until it yields.
            for m in self.allm.rt_lock().iter() {
                self.wake_m(m);
                let g = m.curg.load(Ordering::Acquire);
                if !g.is_null() {
                    // SAFETY: G structs live as long as Shared.
                    unsafe { (*g).preempt.store(true, Ordering::Relaxed) };
                    if self.cfg.async_preempt {
                        crate::preempt::signal_m(m);
                    }
                }
            }
            let mut threads = self.threads.rt_lock();
            if threads.is_empty() {
                break;
            }
            let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads)
                .into_iter()
                .partition(|t| t.is_finished());
            *threads = running;
            drop(threads);
            for t in done {
                let _ = t.join();
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        // The stacks of abandoned goroutines stay mapped: other threads may
        // still reach into them (see `StackPool::unmap_except`).
        let keep: Vec<(usize, usize)> = self
            .allg
            .rt_lock()
            .iter()
            .filter(|g| g.live.load(Ordering::Relaxed))
            .map(|g| {
                (
                    g.stack_lo.load(Ordering::Relaxed),
                    g.stack_hi.load(Ordering::Relaxed),
                )
            })
            .filter(|&(_, hi)| hi != 0)
            .collect();
        self.stacks.unmap_except(keep);
    }

    /// Completes the `JoinHandle` of every goroutine that will never finish
    /// now (Runtime drop, after `shutdown`): its `join` returns `Err`, its
    /// `is_finished` says true, and a thread or goroutine (of another
    /// runtime) already waiting in `join` is woken. Without this, `join`
    /// after the drop waited forever.
    ///
    /// Nothing else of the goroutine is touched: its stack is unmapped and
    /// its closure (started or not) stays where it is, leaked with the G.
    pub(crate) fn abandon_goroutines(&self) {
        debug_assert!(self.threads.rt_lock().is_empty(), "an M still runs");
        for g in self.allg.rt_lock().iter() {
            if !g.live.load(Ordering::Relaxed) {
                continue;
            }
            // SAFETY: every M has exited (`shutdown` joined them), so no
            // goroutine runs and nothing else touches `entry`; a live G's
            // body is still there (see `G::entry`).
            if let Some(body) = unsafe { (*g.entry.get()).as_ref() } {
                body.abandon(self);
            }
        }
    }

    /// Returns the G structs of finished goroutines to the process-wide
    /// pool and reports whether any goroutine was abandoned (still parked or
    /// runnable).
    ///
    /// G structs are never freed (Go never frees its `allgs` either): a
    /// `Waiter` held by a plain thread, a channel or a timer may still name
    /// a finished goroutine after its runtime is gone, and its late `unpark`
    /// must find memory, not a dangling pointer. A pooled G is EMPTY or
    /// NOTIFIED, never PARKED, so such an unpark only leaves a token, which
    /// its next user treats as a spurious wake-up. An abandoned goroutine
    /// keeps its reference to the runtime, so a late wake-up of a parked one
    /// finds the (stopped) runtime's queues, not freed memory.
    pub(crate) fn free_dead_gs(&self) -> bool {
        let mut free: Vec<GRef> = std::mem::take(&mut *self.gfree.rt_lock());
        for p in self.ps.iter() {
            // SAFETY: every M has exited; nobody else touches P-local data.
            free.append(unsafe { &mut (*p.local.get()).gfree });
        }
        let all = std::mem::take(&mut *self.allg.rt_lock());
        let abandoned = all.len() > free.len();
        for g in &free {
            let sh = g.shared.swap(ptr::null_mut(), Ordering::AcqRel);
            // SAFETY: `shared` came from Arc::into_raw in `gget_global`.
            drop(unsafe { Arc::from_raw(sh) });
        }
        G_POOL.rt_lock().extend(free);
        abandoned
    }
}

/// G structs of finished goroutines of dropped runtimes, for reuse by any
/// runtime (see `Shared::free_dead_gs`).
pub(super) static G_POOL: Mutex<Vec<GRef>> = Mutex::new(Vec::new());
