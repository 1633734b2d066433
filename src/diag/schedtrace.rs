//! `GOSCHED_SCHEDTRACE` and `GOSCHED_SCHEDDETAIL`: Go's `schedtrace`
//! lines, with Go's field names, so tools that read Go's read ours.

use std::sync::atomic::Ordering;

use crate::sched::g::PARKED;
use crate::sched::{RuntimeLock, Shared};

impl Shared {
    /// One `GOSCHED_SCHEDTRACE` line, in Go's format and with Go's field
    /// names (Go 1.21+'s `schedtrace`), so tools that read Go's lines read
    /// ours: `gomaxprocs`, idle Ps, Ms, spinning Ms, `needspinning` (work
    /// is queued while a P idles and no M spins, so someone must start
    /// one: Go's `sched.needspinning`), idle Ms, the global queue's length,
    /// and each live P's queue (runnext and the yield slot included); then,
    /// not in Go's line, `pollwait=N`: goroutines parked on the netpoller.
    pub(crate) fn schedtrace_line(&self) -> String {
        let ms = self.epoch.elapsed().as_millis();
        // One snapshot of the two: `procresize` changes both under the
        // idle list's lock. Read apart, a shrink from 64 Ps printed
        // `gomaxprocs=1 idleprocs=64`.
        let (procs, idle) = {
            let _idle = self.pidle.rt_lock();
            (self.procs(), self.npidle.load(Ordering::Relaxed))
        };
        let threads = self.allm.rt_lock().len();
        let idlethreads = self.midle.rt_lock().len();
        let spinning = self.nmspinning.load(Ordering::Relaxed);
        let needspinning = u8::from(idle > 0 && spinning == 0 && self.any_work());
        let runqueue = self.global_queue_len();
        let head = format!(
            "SCHED {ms}ms: gomaxprocs={procs} idleprocs={idle} threads={threads} spinningthreads={spinning} needspinning={needspinning} idlethreads={idlethreads} runqueue={runqueue}"
        );
        let pollwait = self.driver.waiters();
        if self.cfg.scheddetail {
            return format!("{head} pollwait={pollwait}") + &self.scheddetail(procs);
        }
        let local: Vec<String> = (0..procs)
            .map(|p| self.ps[p].runq.len().to_string())
            .collect();
        format!("{head} [{}] pollwait={pollwait}", local.join(" "))
    }

    /// Go's `schedtrace(detailed=true)` lines after the header: one per P,
    /// M and live G. Statuses use Go's numbers (P: 0 idle, 1 running,
    /// 2 syscall; G: 1 runnable, 2 running, 4 waiting); an id of none is
    /// -1. Fields gosched has no counterpart for, or that only their owner
    /// may read, are left out; a named goroutine's line ends with
    /// `name="..."` (not in Go's, which has no goroutine names). `procs`:
    /// the header's `gomaxprocs` (read again, it could differ).
    fn scheddetail(&self, procs: usize) -> String {
        let mut out = String::new();
        let ms: Vec<(usize, *mut crate::sched::g::G, bool)> = self
            .allm
            .rt_lock()
            .iter()
            .map(|m| {
                (
                    m.id,
                    m.curg.load(Ordering::Acquire),
                    m.spinning.load(Ordering::Relaxed),
                )
            })
            .collect();
        let mut p_of_m = vec![-1i64; ms.iter().map(|m| m.0).max().unwrap_or(0) + 1];
        for (i, p) in self.ps[..procs].iter().enumerate() {
            let status = match crate::sched::pstate(p.status.load(Ordering::Acquire)) {
                crate::sched::P_IDLE => 0,
                crate::sched::P_SYSCALL => 2,
                _ => 1,
            };
            let m = p.m.load(Ordering::Acquire);
            // SAFETY: Ms live as long as Shared.
            let m = (!m.is_null())
                .then(|| unsafe { (*m).id })
                .map_or(-1, |id| id as i64);
            if let Some(slot) = usize::try_from(m).ok().and_then(|m| p_of_m.get_mut(m)) {
                *slot = i as i64;
            }
            out.push_str(&format!(
                "\n  P{i}: status={status} schedtick={} syscalltick={} m={m} runqsize={}",
                p.schedtick.load(Ordering::Relaxed),
                p.syscalltick.load(Ordering::Relaxed),
                self.ps[i].runq.len(),
            ));
        }
        let gid = |g: *mut crate::sched::g::G| {
            // SAFETY: G structs are never freed while the runtime lives; a
            // goroutine's id is written before it is first queued.
            (!g.is_null())
                .then(|| unsafe { (*g).id.load(Ordering::Relaxed) })
                .map_or(-1, |id| id as i64)
        };
        for &(id, curg, spinning) in &ms {
            out.push_str(&format!(
                "\n  M{id}: p={} curg={} spinning={spinning}",
                p_of_m[id],
                gid(curg)
            ));
        }
        for g in self.allg.rt_lock().iter() {
            if !g.live.load(Ordering::Relaxed) {
                continue;
            }
            let (status, m) = match ms.iter().find(|m| m.1 == g.as_ptr()) {
                Some(m) => (2, m.0 as i64),
                None if g.park.load(Ordering::Acquire) == PARKED => (4, -1),
                None => (1, -1),
            };
            out.push_str(&format!(
                "\n  G{}: status={status} m={m}",
                g.id.load(Ordering::Relaxed)
            ));
            // SAFETY: we hold the `allg` lock that lists `g` (G::name).
            if let Some(name) = unsafe { g.name() } {
                out.push_str(&format!(" name={name:?}"));
            }
        }
        out
    }
}
