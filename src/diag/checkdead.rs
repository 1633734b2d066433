//! Go's `checkdead` and the fatal reports: the deadlock check and report,
//! thread exhaustion, the goroutine dump (also used by SIGQUIT), and the
//! exit with status 2.

use std::sync::atomic::Ordering;

use crate::sched::g::PARKED;
use crate::sched::{RuntimeLock, Shared, LIVE_RUNTIMES};

impl Shared {
    /// Go's checkdead: is every goroutine parked with nothing that could
    /// wake it? True only when all of these hold: this is the only runtime
    /// in the process; every P is idle and no G is queued or running; no
    /// timer is pending, no `blocking()` call is in flight and no goroutine
    /// waits for I/O (Go: netpoll waiters keep checkdead quiet); some goroutine
    /// is alive and all live ones are parked; and every thread of the process
    /// is accounted for as one of our Ms, sysmon, a plain thread parked on
    /// a runtime object with no deadline, or a helper thread that can wake
    /// nobody (`gosched-sigquit`; `gosched-chan-timer` while no timer of
    /// plain threads is pending), so no other thread exists that could
    /// still send on a channel. Any other thread, whatever it does (a timed
    /// wait such as `recv_timeout`, `std::thread::sleep`, a system call, a
    /// lock of another library), might wake a goroutine, so its existence
    /// alone rules a deadlock out: Go reports one only when no goroutine can
    /// ever run again, and a false report kills a correct program. Last,
    /// every thread but the caller must be asleep in the kernel
    /// (`others_asleep`): a plain thread woken but not yet run still counts
    /// as parked. The caller re-checks after a pause to rule out races.
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
            && others_asleep()
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

    /// Prints Go's deadlock report and exits with status 2. Not a panic:
    /// unwinding out of `block_on` would free what the parked main
    /// goroutine still borrows (its closure's captures live on the caller's
    /// stack).
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

    /// Go's `newosproc` throw ("runtime: failed to create new OS thread"):
    /// the OS refused the thread of a new M (`err`, from
    /// `std::thread::Builder::spawn`). Unwinding instead would leave the P
    /// the new M was to run in hand-off and the spinning count raised (no
    /// M would ever be started again), kill sysmon when it was the caller,
    /// and let `block_on` return while its goroutine, which borrows from
    /// the caller's stack, is still queued. Prints the error, the likely
    /// limit, and every goroutine, and exits with status 2. Called without
    /// runtime locks held.
    pub(crate) fn die_thread_create_failed(&self, err: &std::io::Error) -> ! {
        let ms = self.allm.rt_lock().len();
        let mut out = format!(
            "gosched: failed to create new OS thread (have {} worker threads of this runtime and {} threads \
             in the process already): {err}\ngosched: {}\nfatal error: newosproc\n",
            ms.saturating_sub(1),
            process_threads(),
            Self::thread_limit_hint(err),
        );
        out.push_str(&self.goroutine_dump());
        die(&out)
    }

    /// What to change when the OS refuses a thread with `err` (for
    /// `die_thread_create_failed` and the sysmon start in `Builder::build`;
    /// an associated function because `diag::checkdead` is private).
    /// glibc reports a thread stack it cannot map as EAGAIN too, so only
    /// ENOMEM rules the task limits out.
    pub(crate) fn thread_limit_hint(err: &std::io::Error) -> String {
        const TASKS: &str = "the process may be at its task limit (the pids cgroup's pids.max, \
                             RLIMIT_NPROC (ulimit -u), or kernel.threads-max)";
        const MEMORY: &str = "the thread's stack may not fit in the address space or memory \
                              (RLIMIT_AS (ulimit -v), vm.overcommit_memory=2, or vm.max_map_count)";
        let cause = match err.raw_os_error() {
            Some(libc::ENOMEM) => MEMORY.to_owned(),
            _ => format!("{TASKS}, or {MEMORY}"),
        };
        format!(
            "the OS refused a thread: {cause}. Raise that limit, or keep fewer goroutines in \
             gosched::blocking or locked to their threads at once"
        )
    }

    /// Go's "fatal error: out of memory" for a goroutine stack of
    /// `stack_size` bytes (`StackPool::get`): `what` failed, `fix` says
    /// what to change; `stacks` were carved so far. `sh`, the runtime of
    /// the pool when the caller is one of its Ms (g0, no runtime locks
    /// held), adds the live goroutine count and the goroutine dump.
    /// Exits with status 2.
    pub(crate) fn die_out_of_stacks(
        sh: Option<&Shared>,
        stack_size: usize,
        stacks: usize,
        what: &str,
        fix: &str,
    ) -> ! {
        let count = match sh {
            Some(sh) => {
                let live = sh
                    .allg
                    .rt_lock()
                    .iter()
                    .filter(|g| g.live.load(Ordering::Relaxed))
                    .count();
                format!("{live} live goroutines, {stacks} stacks made so far")
            }
            None => format!("{stacks} stacks made so far"),
        };
        let mut out = format!(
            "gosched: cannot allocate a goroutine stack of {stack_size} bytes ({}; {count}): {what}. \
             {fix}\nfatal error: out of memory\n",
            human_size(stack_size),
        );
        if let Some(sh) = sh {
            out.push_str(&sh.goroutine_dump());
        }
        die(&out)
    }

    /// Every live goroutine, Go's traceback header style: `goroutine N
    /// [state]:` (with its name, if it has one) and where it was spawned. The state comes from atomics
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

/// One goroutine of a report: `goroutine N [state]:` (`goroutine N
/// "name" [state]:` for a named one) and where it was spawned. Call it
/// while holding `allg` (for the name: see `G::name`).
fn push_goroutine(out: &mut String, g: &crate::sched::g::GRef, state: &str) {
    out.push_str(&format!("\ngoroutine {}", g.id.load(Ordering::Relaxed)));
    // SAFETY: our callers hold the `allg` lock that lists `g`.
    if let Some(name) = unsafe { g.name() } {
        out.push_str(&format!(" {name:?}"));
    }
    out.push_str(&format!(" [{state}]:\n"));
    // SAFETY: null or a `&'static Location` stored by `spawn_raw`.
    match unsafe { g.spawned_at.load(Ordering::Relaxed).as_ref() } {
        Some(at) => out.push_str(&format!(
            "\tspawned at {}:{}:{}\n",
            at.file(),
            at.line(),
            at.column()
        )),
        None => out.push_str("\tthe main goroutine (Runtime::block_on)\n"),
    }
}

/// `bytes` in the largest binary unit that divides it (`1 GiB`, `64 KiB`).
fn human_size(bytes: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

/// Is every thread of the process but the caller asleep ('S' in
/// `/proc/self/task/TID/stat`)? A plain thread counts in `THREADS_PARKED`
/// from its park until it has returned from it, so a thread woken but not
/// yet run (runnable, 'R': no CPU for it yet on a loaded or throttled
/// machine, or a low priority) is still counted, and the goroutine that
/// woke it may have parked since: the count alone looked like a deadlock
/// for as long as the thread waited for a CPU (sysmon's second look,
/// 100 ms later, saw nothing move either). Only 'S' (an interruptible
/// sleep: a futex, a pipe read) counts as asleep; any other state, and a
/// thread we cannot read, rules a deadlock out for this look.
fn others_asleep() -> bool {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    dir.into_iter().all(|e| {
        let Some(tid) = e
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|t| t.parse::<i32>().ok()))
        else {
            return false;
        };
        tid == me || thread_state(tid) == Some('S')
    })
}

/// The state letter of thread `tid` of this process (`R`, `S`, `D`, ...),
/// if it can be read.
fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may contain
    // spaces or parentheses itself: take the last ')'.
    let i = stat.rfind(')')?;
    stat[i + 1..].trim_start().chars().next()
}

/// Threads of the process now (`/proc/self/task`; 0 if unreadable).
fn process_threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Writes `msg` to stderr in one piece and exits with status 2 (Go's exit
/// status for a fatal error). Past std's `Stderr` lock (see
/// `diag::write_stderr`: a goroutine parked holding it left a fatal
/// report waiting for good); a second report (say, SIGQUIT during a
/// deadlock report) waits for the first one's exit instead.
pub(crate) fn die(msg: &str) -> ! {
    static DYING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = DYING.lock();
    crate::diag::write_stderr(msg.as_bytes());
    std::process::exit(2)
}
