//! Observability and Go's `checkdead`: schedtrace lines, the deadlock
//! check, and the deadlock report.

pub(crate) mod sigquit;

use crate::sched::RuntimeLock;
use std::sync::atomic::Ordering;

use crate::sched::g::PARKED;
use crate::sched::{Shared, LIVE_RUNTIMES};

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
        let procs = self.procs();
        let idle = self.npidle.load(Ordering::Relaxed);
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
            return format!("{head} pollwait={pollwait}") + &self.scheddetail();
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
    /// may read, are left out.
    fn scheddetail(&self) -> String {
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
        for (i, p) in self.ps[..self.procs()].iter().enumerate() {
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
                .then(|| unsafe { (*g).id.get() })
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
            out.push_str(&format!("\n  G{}: status={status} m={m}", g.id.get()));
        }
        out
    }

    /// Go's checkdead: is every goroutine parked with nothing that could
    /// wake it? True only when all of these hold: this is the only runtime
    /// in the process; every P is idle and no G is queued or running; no
    /// timer is pending, no `blocking()` call is in flight and no goroutine
    /// waits for I/O (Go: netpoll waiters keep checkdead quiet); some goroutine
    /// is alive and all live ones are parked; and every thread of the process
    /// is accounted for as one of our Ms, sysmon, or a plain thread parked on
    /// a runtime object with no deadline (so no other thread exists that could
    /// still send on a channel). Any other thread, whatever it does (a timed
    /// wait such as `recv_timeout`, `std::thread::sleep`, a system call, a
    /// lock of another library), might wake a goroutine, so its existence
    /// alone rules a deadlock out: Go reports one only when no goroutine can
    /// ever run again, and a false report kills a correct program. The caller
    /// re-checks after a pause to rule out races.
    pub(crate) fn deadlocked(&self) -> bool {
        if LIVE_RUNTIMES.load(Ordering::SeqCst) != 1
            || !self.all_idle()
            || self.any_work()
            || self.timers.next().is_some()
            || self.in_blocking.load(Ordering::SeqCst) != 0
            || self.driver.waiters() != 0
        {
            return false;
        }
        let nm = {
            let ms = self.allm.rt_lock();
            if ms.iter().any(|m| !m.curg.load(Ordering::SeqCst).is_null()) {
                return false;
            }
            ms.len()
        };
        let (mut live, mut parked) = (0, 0);
        for g in self.allg.rt_lock().iter() {
            if g.live.load(Ordering::Relaxed) {
                live += 1;
                parked += usize::from(g.park.load(Ordering::Acquire) == PARKED);
            }
        }
        if live == 0 || parked != live {
            return false;
        }
        let threads = std::fs::read_dir("/proc/self/task").map_or(usize::MAX, |d| d.count());
        threads == nm + 1 + crate::sched::g::THREADS_PARKED.load(Ordering::SeqCst)
    }

    /// A number that changes whenever anything in this runtime makes
    /// progress (for the deadlock check's second look).
    pub(crate) fn progress(&self) -> u64 {
        let sw: u64 = self
            .used_ps()
            .iter()
            .map(|p| p.counters.switches.load(Ordering::Relaxed))
            .sum();
        sw.wrapping_add(self.spawned())
            .wrapping_add(crate::sched::g::THREAD_WAKES.load(Ordering::Relaxed))
    }

    /// Prints Go's deadlock report and exits with status 2 (DESIGN.md:
    /// unwinding out of `block_on` would free what the parked main goroutine
    /// still borrows).
    pub(crate) fn die_deadlocked(&self) -> ! {
        let mut out = String::from("fatal error: all goroutines are asleep - deadlock!\n");
        for g in self.allg.rt_lock().iter() {
            if g.live.load(Ordering::Relaxed) && g.park.load(Ordering::Acquire) == PARKED {
                push_goroutine(&mut out, g, g.wait_reason.get());
            }
        }
        die(&out)
    }
}

impl Shared {
    /// Go's `throw("thread exhaustion")`: a new M would exceed
    /// `max_threads`. Prints the limit and the knob, then every goroutine,
    /// and exits with status 2. Called without runtime locks held.
    pub(crate) fn die_thread_exhaustion(&self) -> ! {
        let limit = self.cfg.max_threads;
        let mut out = format!(
            "gosched: program exceeds the {limit}-thread limit (raise it with Builder::max_threads or GOSCHED_MAXTHREADS)\nfatal error: thread exhaustion\n"
        );
        out.push_str(&self.goroutine_dump());
        die(&out)
    }

    /// Every live goroutine, Go's traceback header style: `goroutine N
    /// [state]:` and where it was spawned. The state comes from atomics
    /// only (a parked goroutine's wait reason is its own `Cell`, written
    /// while it runs: the deadlock report reads it only when every
    /// goroutine is parked).
    pub(crate) fn goroutine_dump(&self) -> String {
        let running: Vec<*mut crate::sched::g::G> = self
            .allm
            .rt_lock()
            .iter()
            .map(|m| m.curg.load(Ordering::Acquire))
            .filter(|g| !g.is_null())
            .collect();
        let mut out = String::new();
        for g in self.allg.rt_lock().iter() {
            if !g.live.load(Ordering::Relaxed) {
                continue;
            }
            let state = if running.contains(&g.as_ptr()) {
                "running"
            } else if g.park.load(Ordering::Acquire) == PARKED {
                "waiting"
            } else {
                "runnable"
            };
            push_goroutine(&mut out, g, state);
        }
        out
    }
}

/// One goroutine of a report: `goroutine N [state]:` and where it was
/// spawned.
fn push_goroutine(out: &mut String, g: &crate::sched::g::GRef, state: &str) {
    out.push_str(&format!("\ngoroutine {} [{state}]:\n", g.id.get()));
    match g.spawned_at.get() {
        Some(at) => out.push_str(&format!(
            "\tspawned at {}:{}:{}\n",
            at.file(),
            at.line(),
            at.column()
        )),
        None => out.push_str("\tthe main goroutine (Runtime::block_on)\n"),
    }
}

/// Writes `msg` to stderr in one piece and exits with status 2 (Go's exit
/// status for a fatal error).
pub(crate) fn die(msg: &str) -> ! {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(msg.as_bytes());
    let _ = err.flush();
    std::process::exit(2)
}
