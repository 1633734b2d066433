//! Observability and Go's `checkdead`: schedtrace lines, the deadlock
//! check, and the deadlock report.

use crate::sched::RuntimeLock;
use std::sync::atomic::Ordering;

use crate::g::PARKED;
use crate::sched::{Shared, LIVE_RUNTIMES};

impl Shared {
    /// One `GOSCHED_SCHEDTRACE` line, in Go's format, plus `pollwait=N`
    /// (goroutines waiting on the netpoller) at the end.
    pub(crate) fn schedtrace_line(&self) -> String {
        let ms = self.epoch.elapsed().as_millis();
        let idle = self.npidle.load(Ordering::Relaxed);
        let threads = self.allm.rt_lock().len();
        let idlethreads = self.midle.rt_lock().len();
        let spinning = self.nmspinning.load(Ordering::Relaxed);
        let runqueue = self.injector.len();
        let local: Vec<String> = self
            .ps
            .iter()
            .map(|p| {
                (p.stealer.len()
                    + usize::from(!p.runnext.load(Ordering::Relaxed).is_null())
                    + usize::from(!p.yielded.load(Ordering::Relaxed).is_null()))
                .to_string()
            })
            .collect();
        format!(
            "SCHED {ms}ms: procs={} idleprocs={idle} threads={threads} spinningthreads={spinning} idlethreads={idlethreads} runqueue={runqueue} [{}] pollwait={}",
            self.cfg.procs,
            local.join(" "),
            // Not in Go's line: goroutines parked on the netpoller.
            self.driver.waiters()
        )
    }

    /// Go's checkdead: is every goroutine parked with nothing that could
    /// wake it? True only when all of these hold: this is the only runtime
    /// in the process; every P is idle and no G is queued or running; no
    /// timer is pending, no `blocking()` call is in flight and no goroutine
    /// waits for I/O (Go: netpoll waiters keep checkdead quiet); some goroutine
    /// is alive and all live ones are parked; and every thread of the process
    /// is accounted for as one of our Ms, sysmon, or a plain thread parked on
    /// a runtime object (so no other thread exists that could still send on a
    /// channel). The caller re-checks after a pause to rule out races.
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
        threads == nm + 1 + crate::g::THREADS_PARKED.load(Ordering::SeqCst)
    }

    /// A number that changes whenever anything in this runtime makes
    /// progress (for the deadlock check's second look).
    pub(crate) fn progress(&self) -> u64 {
        let sw: u64 = self
            .ps
            .iter()
            .map(|p| p.counters.switches.load(Ordering::Relaxed))
            .sum();
        sw.wrapping_add(self.spawned())
            .wrapping_add(crate::g::THREAD_WAKES.load(Ordering::Relaxed))
    }

    /// Prints Go's deadlock report and exits with status 2 (DESIGN.md:
    /// unwinding out of `block_on` would free what the parked main goroutine
    /// still borrows).
    pub(crate) fn die_deadlocked(&self) -> ! {
        use std::io::Write;
        let mut out = String::from("fatal error: all goroutines are asleep - deadlock!\n");
        for g in self.allg.rt_lock().iter() {
            if g.live.load(Ordering::Relaxed) && g.park.load(Ordering::Acquire) == PARKED {
                out.push_str(&format!(
                    "\ngoroutine {} [{}]:\n",
                    g.id.get(),
                    g.wait_reason.get()
                ));
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
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
        std::process::exit(2)
    }
}
