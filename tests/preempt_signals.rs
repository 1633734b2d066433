//! The preemption signal and the rest of the program: system calls
//! interrupted by SIGURG restart instead of failing with EINTR, an
//! application's own SIGURG handler keeps receiving every SIGURG, and
//! preemption never lands inside libc (malloc-heavy goroutines run clean).
#![cfg(feature = "preempt-signal")]

mod common_preempt;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common_preempt::{child_role, hog, refused, run_child, serial, spin_for};
use gosched::{Builder, PreemptMode};

/// A pipe whose ends close on drop.
struct Pipe {
    r: libc::c_int,
    w: libc::c_int,
}

impl Pipe {
    fn new() -> Pipe {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "pipe: {}", std::io::Error::last_os_error());
        Pipe {
            r: fds[0],
            w: fds[1],
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both descriptors are ours and closed exactly once.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

const MSG: &[u8] = b"through the SIGURG storm";

/// One `read(2)` into a fresh buffer: (return value, errno, bytes).
fn read_once(fd: libc::c_int) -> (isize, i32, Vec<u8>) {
    let mut buf = vec![0u8; 64];
    // SAFETY: `buf` is valid for writes of its length; `fd` is open.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let errno = if n < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    buf.truncate(n.max(0) as usize);
    (n, errno, buf)
}

/// A goroutine blocked in read(2) on a pipe while SIGURG flies (sysmon
/// preempting hogs every 100 µs on the same runtime, plus a plain thread
/// sending SIGURG to the process and to the reader's own thread every
/// 100 µs) gets the bytes written 300 ms later, never -1/EINTR.
fn read_survives_sigurg_storm(through_blocking: bool) {
    let _s = serial();
    let rt = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(100))
        .build()
        .unwrap();
    let pipe = Arc::new(Pipe::new());
    let stop = Arc::new(AtomicBool::new(false));
    let reader_tid = Arc::new(AtomicI32::new(0));
    let sent_to_reader = Arc::new(AtomicU64::new(0));
    let sent_to_process = Arc::new(AtomicU64::new(0));

    let signaller = {
        let (stop, tid, to_r, to_p) = (
            stop.clone(),
            reader_tid.clone(),
            sent_to_reader.clone(),
            sent_to_process.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: kill/tgkill of our own process with SIGURG, whose
                // action (the runtime's handler, forwarding to the default,
                // which ignores it) cannot terminate anything.
                unsafe {
                    if libc::kill(libc::getpid(), libc::SIGURG) == 0 {
                        to_p.fetch_add(1, Ordering::Relaxed);
                    }
                    let t = tid.load(Ordering::Acquire);
                    if t != 0
                        && libc::syscall(libc::SYS_tgkill, libc::getpid(), t, libc::SIGURG) == 0
                    {
                        to_r.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };

    let (p, s, tid) = (pipe.clone(), stop.clone(), reader_tid.clone());
    let (result, waited) = rt.block_on(move || {
        let hogs: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                gosched::spawn(move || hog(&s))
            })
            .collect();
        let rp = p.clone();
        let reader = gosched::spawn(move || {
            let fd = rp.r;
            let t = Instant::now();
            let r = if through_blocking {
                gosched::blocking(|| {
                    // SAFETY: gettid has no preconditions.
                    tid.store(unsafe { libc::gettid() }, Ordering::Release);
                    read_once(fd)
                })
            } else {
                // SAFETY: as above.
                tid.store(unsafe { libc::gettid() }, Ordering::Release);
                read_once(fd)
            };
            tid.store(0, Ordering::Release);
            (r, t.elapsed())
        });
        let wp = p.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: MSG is valid for reads of its length; the fd is open.
            unsafe { libc::write(wp.w, MSG.as_ptr().cast(), MSG.len()) }
        });
        let res = reader.join().unwrap();
        assert_eq!(writer.join().unwrap(), MSG.len() as isize);
        s.store(true, Ordering::Relaxed);
        for h in hogs {
            h.join().unwrap();
        }
        res
    });
    stop.store(true, Ordering::Relaxed);
    signaller.join().unwrap();
    let st = rt.stats();
    let ((n, errno, bytes), to_r, to_p) = (
        result,
        sent_to_reader.load(Ordering::Relaxed),
        sent_to_process.load(Ordering::Relaxed),
    );
    eprintln!(
        "read (blocking: {through_blocking}) returned {n} after {waited:?}; SIGURG sent to reader {to_r}, to process {to_p}; preempt_async={}",
        st.preempt_async
    );
    assert!(
        n >= 0,
        "read failed: errno {errno} ({})",
        std::io::Error::from_raw_os_error(errno)
    );
    assert_eq!(bytes, MSG);
    assert!(
        waited >= Duration::from_millis(250),
        "the read did not block: {waited:?}"
    );
    assert!(
        to_r >= 20,
        "too few signals reached the blocked reader's thread to prove anything: {to_r}"
    );
    assert!(st.preempt_async > 0, "sysmon never preempted the hogs");
}

#[test]
fn read_in_blocking_call_is_not_interrupted_by_sigurg() {
    read_survives_sigurg_storm(true);
}

#[test]
fn raw_read_in_goroutine_is_not_interrupted_by_sigurg() {
    read_survives_sigurg_storm(false);
}

static USER_SIGURGS: AtomicU64 = AtomicU64::new(0);

extern "C" fn user_sigurg(sig: libc::c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    if sig == libc::SIGURG && !info.is_null() && unsafe { (*info).si_signo } == libc::SIGURG {
        USER_SIGURGS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Installs `handler` (an `sa_handler`, or an `sa_sigaction` with
/// `SA_SIGINFO` in `flags`) for `sig` with an empty `sa_mask`.
///
/// # Safety
/// `handler` must be async-signal-safe and have the signature `flags` says.
unsafe fn install_handler(sig: libc::c_int, handler: usize, flags: libc::c_int) {
    // SAFETY: a zeroed sigaction is valid; the caller vouches for `handler`.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// Child: installs its own SIGURG handler, then starts a runtime whose
/// sysmon sends SIGURG constantly, then sends SIGURG itself.
fn user_handler_child() {
    // SAFETY: an async-signal-safe SA_SIGINFO handler (one atomic add),
    // installed before any runtime exists in this fresh process.
    unsafe {
        install_handler(
            libc::SIGURG,
            user_sigurg as *const () as usize,
            libc::SA_SIGINFO | libc::SA_RESTART,
        )
    };
    let rt = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(100))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    rt.block_on(move || {
        let hogs: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                gosched::spawn(move || hog(&s))
            })
            .collect();
        gosched::sleep(Duration::from_millis(300));
        s.store(true, Ordering::Relaxed);
        for h in hogs {
            h.join().unwrap();
        }
    });
    let st = rt.stats();
    // No goroutine runs now, so sysmon sends nothing more.
    std::thread::sleep(Duration::from_millis(20));
    let during = USER_SIGURGS.load(Ordering::Relaxed);
    for _ in 0..10 {
        // SAFETY: SIGURG to our own process; our handler counts it.
        unsafe { libc::kill(libc::getpid(), libc::SIGURG) };
        std::thread::sleep(Duration::from_millis(3));
    }
    std::thread::sleep(Duration::from_millis(20));
    let own = USER_SIGURGS.load(Ordering::Relaxed) - during;
    eprintln!(
        "USER_DURING_RUNTIME={during} USER_OWN={own} PREEMPT_ASYNC={} REFUSED={}",
        st.preempt_async, st.preempt_refused
    );
    assert!(
        own >= 10,
        "the application's SIGURG handler saw {own} of its own 10 signals"
    );
    assert!(st.preempt_async > 0);
    // Every SIGURG the runtime's handler took on an M either preempted or
    // was refused; each must also have reached the application's handler.
    assert!(
        during >= st.preempt_async + st.preempt_refused,
        "the runtime's SIGURGs were not all forwarded: the application's handler saw {during}, the runtime handled {} + {}",
        st.preempt_async,
        st.preempt_refused
    );
}

/// A SIGURG handler installed before the first runtime keeps receiving
/// every SIGURG: the application's own, and the runtime's preemption
/// signals too (the runtime forwards them).
#[test]
fn sigurg_handler_installed_before_runtime_still_receives_sigurg() {
    if child_role().as_deref() == Some("user_handler") {
        return user_handler_child();
    }
    let _s = serial();
    let out = run_child(
        "sigurg_handler_installed_before_runtime_still_receives_sigurg",
        "user_handler",
        Duration::from_secs(60),
    );
    out.assert_success("user SIGURG handler child");
    eprintln!(
        "child: user handler saw {:?} SIGURGs while the runtime ran (preempt_async {:?}), {:?} of its own 10",
        out.report("USER_DURING_RUNTIME"),
        out.report("PREEMPT_ASYNC"),
        out.report("USER_OWN")
    );
    assert!(out.report("USER_OWN").is_some_and(|n| n >= 10));
}

/// Allocation churn with self-checking contents: Vecs of random sizes,
/// boxed slices (some above glibc's mmap threshold), formatted Strings in a
/// HashMap. Returns the number of rounds.
fn churn(seed: u64, stop: &AtomicBool) -> u64 {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let tag = |len: usize| (len as u8) ^ 0x5a;
    let mut vecs: Vec<Vec<u8>> = Vec::new();
    let mut boxes: Vec<Box<[u8]>> = Vec::new();
    let mut map: HashMap<u64, String> = HashMap::new();
    let mut rounds = 0u64;
    while !stop.load(Ordering::Relaxed) {
        rounds += 1;
        let len = (next() % 4096) as usize + 1;
        vecs.push(vec![tag(len); len]);
        if vecs.len() > 64 {
            let v = vecs.swap_remove((next() % 64) as usize);
            assert!(
                v.iter().all(|&b| b == tag(v.len())),
                "Vec contents corrupted"
            );
        }
        let big = if next() % 64 == 0 {
            200_000
        } else {
            (next() % 20_000) as usize + 1
        };
        boxes.push(vec![tag(big); big].into_boxed_slice());
        if boxes.len() > 16 {
            let b = boxes.swap_remove((next() % 16) as usize);
            assert!(
                b.iter().all(|&x| x == tag(b.len())),
                "Box<[u8]> contents corrupted"
            );
        }
        let k = next() % 512;
        map.insert(
            k,
            format!("key {k} round {rounds} {}", "x".repeat((k % 40) as usize)),
        );
        let r = next() % 512;
        if let Some(s) = map.remove(&r) {
            assert!(
                s.starts_with(&format!("key {r} round ")),
                "String corrupted: {s:?}"
            );
            assert!(
                s.ends_with(&"x".repeat((r % 40) as usize)),
                "String corrupted: {s:?}"
            );
        }
    }
    rounds
}

/// Child: 4 malloc-heavy goroutines on 2 Ps under a 100 µs quantum for ~1 s.
fn malloc_child(mode: PreemptMode) {
    let b = Builder::new()
        .procs(2)
        .preempt_quantum(Duration::from_micros(100))
        .preempt_mode(mode);
    // SAFETY: the goroutines allocate, fill and free buffers and sleep; the
    // allocator's per-thread state is touched only inside libc's malloc,
    // which is never preempted asynchronously (rule 4). No thread-locals or
    // stdout in our code (the eprintln! runs after block_on).
    let rt = unsafe { b.allow_migrate() }.build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let rounds: Vec<u64> = rt.block_on(move || {
        let hs: Vec<_> = (0..4u64)
            .map(|i| {
                let s = s.clone();
                gosched::spawn(move || churn(0x1234_5678_9abc + i, &s))
            })
            .collect();
        gosched::sleep(Duration::from_secs(1));
        s.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let st = rt.stats();
    eprintln!(
        "ROUNDS={} PREEMPT_ASYNC={} FOREIGN_CODE={} BLOCKED_HANDOFFS={} REFUSED={:?}",
        rounds.iter().sum::<u64>(),
        st.preempt_async,
        refused(&st, "foreign_code"),
        st.blocked_handoffs,
        st.preempt_refused_by_reason
    );
}

fn malloc_churn_runs_clean(mode: PreemptMode, test: &str) {
    let role = format!("malloc_{mode:?}");
    if child_role().as_deref() == Some(role.as_str()) {
        return malloc_child(mode);
    }
    let _s = serial();
    let out = run_child(test, &role, Duration::from_secs(60));
    out.assert_success("malloc churn child");
    for bad in [
        "malloc",
        "corrupted",
        "double free",
        "free():",
        "realloc",
        "panicked",
    ] {
        assert!(
            !out.stderr.contains(bad),
            "{mode:?}: child stderr mentions {bad:?}:\n{}",
            out.stderr
        );
    }
    let (pa, fc) = (
        out.report("PREEMPT_ASYNC").unwrap(),
        out.report("FOREIGN_CODE").unwrap(),
    );
    eprintln!(
        "{mode:?}: malloc churn child {:?}: rounds {:?}, preempt_async {pa}, refused foreign_code {fc}",
        out.elapsed,
        out.report("ROUNDS")
    );
    assert!(out.report("ROUNDS").is_some_and(|r| r > 0));
    assert!(
        pa > 0,
        "{mode:?}: the allocating goroutines were never preempted asynchronously"
    );
}

/// Goroutines that spend much of their time inside malloc/free are
/// preempted only outside libc: heavy allocation under a 100 µs quantum
/// never corrupts the heap (run in a child, so an abort is caught).
#[test]
fn malloc_heavy_goroutines_run_clean_under_preemption_thread_affine() {
    malloc_churn_runs_clean(
        PreemptMode::ThreadAffine,
        "malloc_heavy_goroutines_run_clean_under_preemption_thread_affine",
    );
}

#[test]
fn malloc_heavy_goroutines_run_clean_under_preemption_migrate() {
    malloc_churn_runs_clean(
        PreemptMode::Migrate,
        "malloc_heavy_goroutines_run_clean_under_preemption_migrate",
    );
}

/// User SIGUSR1 handlers currently running (entered, not yet returned).
static IN_USR1: AtomicU64 = AtomicU64::new(0);
/// Handler runs completed.
static USR1_RUNS: AtomicU64 = AtomicU64::new(0);

/// An `SA_NODEFER` SIGUSR1 handler: no mask change at all, so safe-point
/// rule 5's mask comparison cannot see it. Spins ~20k multiply-adds (tens
/// of µs, no calls) with `IN_USR1` raised.
extern "C" fn slow_usr1(_sig: libc::c_int) {
    IN_USR1.fetch_add(1, Ordering::SeqCst);
    let mut x = 1u64;
    for _ in 0..20_000 {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    std::hint::black_box(x);
    IN_USR1.fetch_sub(1, Ordering::SeqCst);
    USR1_RUNS.fetch_add(1, Ordering::Relaxed);
}

/// The builder of the SA_NODEFER child for `mode` (Migrate may come to
/// need an `unsafe` acknowledgement: this is the one place to add it).
fn nodefer_builder(mode: PreemptMode, procs: usize) -> Builder {
    let b = Builder::new()
        .procs(procs)
        .preempt_quantum(Duration::from_micros(100))
        .preempt_mode(mode);
    // SAFETY: the goroutines of these children raise a signal, count in
    // atomics and spin; the handler only touches atomics. None holds a
    // thread-local or the stdout lock while it can be preempted.
    unsafe { b.allow_migrate() }
}

/// Child: 4 goroutines raise SIGUSR1 (handled by `slow_usr1` on their own
/// stack, `SA_NODEFER`, empty `sa_mask`) in a loop for 500 ms, beside a
/// no-call hog, on `procs` Ps. Every goroutine, between two raises, checks
/// how many handlers are running: a handler that was preempted stays
/// "running" while other goroutines run, so more than `procs - 1` (the
/// other Ps' goroutines) is a handler preempted mid-way.
/// Which alternate signal stack the raising goroutines' threads have when
/// they raise SIGUSR1.
#[derive(Clone, Copy, Debug, PartialEq)]
enum AltStack {
    /// The one the runtime gave the M.
    Runtime,
    /// One the goroutine installs with `sigaltstack` (per thread).
    Own,
    /// None: the goroutine disables it (`SS_DISABLE`).
    Disabled,
}

/// Gives the calling thread its own alternate signal stack (one leaked
/// 256 KiB buffer per thread: a buffer shared by two threads would be
/// corrupted by their concurrent handlers), or none.
#[inline(never)]
fn replace_altstack(alt: AltStack) {
    thread_local! {
        static OWN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    let ss = match alt {
        AltStack::Runtime => return,
        AltStack::Own => {
            let sp = OWN.with(|o| {
                if o.get() == 0 {
                    let buf = Box::leak(vec![0u8; 256 << 10].into_boxed_slice());
                    o.set(buf.as_mut_ptr() as usize);
                }
                o.get()
            });
            libc::stack_t {
                ss_sp: sp as *mut libc::c_void,
                ss_flags: 0,
                ss_size: 256 << 10,
            }
        }
        AltStack::Disabled => libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        },
    };
    // SAFETY: a valid stack_t naming this thread's own buffer (or none);
    // we are not running on the alternate stack now.
    assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
}

fn nodefer_child(mode: PreemptMode, procs: usize, alt: AltStack) {
    // SAFETY: an async-signal-safe sa_handler (atomics and arithmetic).
    unsafe {
        install_handler(
            libc::SIGUSR1,
            slow_usr1 as *const () as usize,
            libc::SA_NODEFER | libc::SA_RESTART,
        )
    };
    let rt = nodefer_builder(mode, procs).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicU64::new(0));
    let limit = procs as u64 - 1;
    let (s, b) = (stop.clone(), bad.clone());
    rt.block_on(move || {
        let mut hs: Vec<_> = (0..4)
            .map(|_| {
                let (s, b) = (s.clone(), b.clone());
                gosched::spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        if IN_USR1.load(Ordering::SeqCst) > limit {
                            b.fetch_add(1, Ordering::Relaxed);
                        }
                        // (In Migrate mode a preemption may come between
                        // the two: the raise then finds a thread with the
                        // runtime's alternate stack, the case above.)
                        gosched::no_preempt(|| replace_altstack(alt));
                        // SAFETY: raise(3) runs our own handler on this thread.
                        unsafe { libc::raise(libc::SIGUSR1) };
                        // A cooperative point between raises: these
                        // goroutines spend >99.9 % of their time in the
                        // handler or in libc, where no signal may preempt
                        // them, so on a quiet machine a signal could take
                        // seconds to land in the few instructions between
                        // (the main goroutine's wake-up waited on it). The
                        // signals sysmon keeps sending still test the
                        // handler; only their liveness role moves here.
                        gosched::preempt_point();
                    }
                    0
                })
            })
            .collect();
        let (s2, b2) = (s.clone(), b.clone());
        hs.push(gosched::spawn(move || {
            let mut rounds = 0u64;
            while !s2.load(Ordering::Relaxed) {
                if IN_USR1.load(Ordering::SeqCst) > limit {
                    b2.fetch_add(1, Ordering::Relaxed);
                }
                rounds += std::hint::black_box(1);
            }
            rounds
        }));
        gosched::sleep(Duration::from_millis(500));
        s.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().unwrap();
        }
    });
    let st = rt.stats();
    eprintln!(
        "RUNS={} PREEMPTED_IN_HANDLER={} PREEMPT_ASYNC={} SIGMASK={} REFUSED={:?}",
        USR1_RUNS.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        st.preempt_async,
        refused(&st, "sigmask"),
        st.preempt_refused_by_reason
    );
}

fn nodefer_handler_is_never_preempted(mode: PreemptMode, procs: usize, test: &str) {
    handler_is_never_preempted(mode, procs, AltStack::Runtime, test);
}

fn handler_is_never_preempted(mode: PreemptMode, procs: usize, alt: AltStack, test: &str) {
    let role = format!("nodefer_{mode:?}_{alt:?}");
    if child_role().as_deref() == Some(role.as_str()) {
        return nodefer_child(mode, procs, alt);
    }
    let _s = serial();
    let out = run_child(test, &role, Duration::from_secs(60));
    out.assert_success("SA_NODEFER handler child");
    eprintln!(
        "{mode:?} {alt:?}: {}",
        out.stderr.lines().last().unwrap_or("")
    );
    assert!(out.report("RUNS").is_some_and(|r| r > 0), "{}", out.stderr);
    assert_eq!(
        out.report("PREEMPTED_IN_HANDLER"),
        Some(0),
        "{mode:?} {alt:?}: a goroutine was preempted inside its SA_NODEFER signal handler\n{}",
        out.stderr
    );
    assert!(
        out.report("SIGMASK").is_some_and(|n| n > 0),
        "{mode:?}: no preemption was refused inside a handler (the test exercised nothing)\n{}",
        out.stderr
    );
}

/// A user signal handler installed with `SA_NODEFER` and an empty
/// `sa_mask` (the signal mask inside it is the normal one) is never
/// preempted asynchronously: with one P, no goroutine ever sees another's
/// handler half-run.
#[test]
fn sa_nodefer_handler_is_not_preempted_thread_affine() {
    nodefer_handler_is_never_preempted(
        PreemptMode::ThreadAffine,
        1,
        "sa_nodefer_handler_is_not_preempted_thread_affine",
    );
}

/// As above in Migrate mode on 2 Ps, where resuming a preempted handler on
/// another thread used to crash the process (its `sigreturn` installs the
/// first thread's alternate signal stack on the second).
#[test]
fn sa_nodefer_handler_is_not_preempted_migrate() {
    nodefer_handler_is_never_preempted(
        PreemptMode::Migrate,
        2,
        "sa_nodefer_handler_is_not_preempted_migrate",
    );
}

/// The same handler on threads whose alternate signal stack the goroutine
/// replaced with its own (`sigaltstack`: thread state, like the mask). The
/// kernel saves the thread's alternate stack in every signal frame, and
/// rule 5 recognised a handler's frame by the stack the runtime had
/// installed: after the goroutine's own, it found none and preempted the
/// handler (1 P: nearly every run of the handler; Migrate on 2 Ps: the
/// handler's `sigreturn` on another thread left two threads with one
/// alternate stack, and the process died of SIGSEGV or SIGABRT in 9 runs
/// of 10). Rule 5 now takes the words to look for from the preemption
/// signal's own frame: the thread's alternate stack as it is.
#[test]
fn a_handler_on_a_thread_with_its_own_altstack_is_not_preempted_thread_affine() {
    handler_is_never_preempted(
        PreemptMode::ThreadAffine,
        1,
        AltStack::Own,
        "a_handler_on_a_thread_with_its_own_altstack_is_not_preempted_thread_affine",
    );
}

/// As above in Migrate mode on 2 Ps.
#[test]
fn a_handler_on_a_thread_with_its_own_altstack_is_not_preempted_migrate() {
    handler_is_never_preempted(
        PreemptMode::Migrate,
        2,
        AltStack::Own,
        "a_handler_on_a_thread_with_its_own_altstack_is_not_preempted_migrate",
    );
}

/// As above on threads whose alternate signal stack the goroutine
/// disabled: the frames then hold no stack at all, and the handler leaves
/// the mask as it was (`SA_NODEFER`).
#[test]
fn a_handler_on_a_thread_without_an_altstack_is_not_preempted_thread_affine() {
    handler_is_never_preempted(
        PreemptMode::ThreadAffine,
        1,
        AltStack::Disabled,
        "a_handler_on_a_thread_without_an_altstack_is_not_preempted_thread_affine",
    );
}

/// As above in Migrate mode on 2 Ps.
#[test]
fn a_handler_on_a_thread_without_an_altstack_is_not_preempted_migrate() {
    handler_is_never_preempted(
        PreemptMode::Migrate,
        2,
        AltStack::Disabled,
        "a_handler_on_a_thread_without_an_altstack_is_not_preempted_migrate",
    );
}

/// SIGURGs the application's late handler saw.
static LATE_SIGURGS: AtomicU64 = AtomicU64::new(0);
/// The action `late_sigurg_chaining` replaced (gosched's), as
/// (sa_sigaction, sa_flags); written before the handler is installed.
static LATE_PREV: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

extern "C" fn late_sigurg(_sig: libc::c_int, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    LATE_SIGURGS.fetch_add(1, Ordering::Relaxed);
}

/// A well-behaved late handler: counts, then chains to the action it
/// replaced (which is gosched's, so gosched is re-entered from its own
/// forwarding once it has reclaimed SIGURG).
extern "C" fn late_sigurg_chaining(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    uc: *mut libc::c_void,
) {
    LATE_SIGURGS.fetch_add(1, Ordering::Relaxed);
    let h = LATE_PREV[0].load(Ordering::Acquire) as usize;
    if h != libc::SIG_DFL && h != libc::SIG_IGN {
        // SAFETY: the replaced action is an SA_SIGINFO handler (gosched's).
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, uc);
    }
}

/// Child: build a runtime on one P, then install an application SIGURG
/// handler over gosched's, then run a no-call hog beside a sleeping main
/// goroutine. The hog can be stopped only by asynchronous preemption.
fn late_handler_child(chaining: bool) {
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_millis(1))
        .build()
        .unwrap();
    rt.block_on(|| ()); // the runtime is up and its handler installed
    let handler = if chaining {
        late_sigurg_chaining as *const () as usize
    } else {
        late_sigurg as *const () as usize
    };
    // SAFETY: reads the current action (null new action), stores it for
    // the chaining handler, then installs an async-signal-safe SA_SIGINFO
    // handler.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGURG, std::ptr::null(), &mut old);
        LATE_PREV[1].store(old.sa_flags as u64, Ordering::Relaxed);
        LATE_PREV[0].store(old.sa_sigaction as u64, Ordering::Release);
        install_handler(libc::SIGURG, handler, libc::SA_SIGINFO | libc::SA_RESTART);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = Instant::now();
    rt.block_on(move || {
        let s2 = s.clone();
        let h = gosched::spawn(move || hog(&s2));
        // With one P, this sleep returns only once the hog is preempted.
        gosched::sleep(Duration::from_millis(50));
        s.store(true, Ordering::Relaxed);
        h.join().unwrap();
    });
    let st = rt.stats();
    eprintln!(
        "SLEPT_MS={} LATE_SIGURGS={} PREEMPT_ASYNC={}",
        t.elapsed().as_millis(),
        LATE_SIGURGS.load(Ordering::Relaxed),
        st.preempt_async
    );
}

fn late_sigurg_handler_keeps_preemption(chaining: bool, test: &str) {
    let role = format!("late_handler_{chaining}");
    if child_role().as_deref() == Some(role.as_str()) {
        return late_handler_child(chaining);
    }
    let _s = serial();
    let out = run_child(test, &role, Duration::from_secs(30));
    out.assert_success("late SIGURG handler child (a timeout is a starved hog)");
    eprintln!("{}", out.stderr.lines().last().unwrap_or(""));
    let warnings = out
        .stderr
        .matches("the SIGURG handler was replaced after the runtime started")
        .count();
    assert_eq!(warnings, 1, "want one warning\n{}", out.stderr);
    assert!(
        out.report("PREEMPT_ASYNC").is_some_and(|n| n > 0),
        "{}",
        out.stderr
    );
    assert!(
        out.report("LATE_SIGURGS").is_some_and(|n| n > 0),
        "the application's handler saw no SIGURG: not forwarded\n{}",
        out.stderr
    );
}

/// A SIGURG handler the application installs after the runtime started
/// (one that does not chain to gosched's) used to stop asynchronous
/// preemption: a no-call loop on the only P starved a sleeping goroutine
/// forever. sysmon notices, warns once, re-installs gosched's handler and
/// forwards every SIGURG to the application's.
#[test]
fn sigurg_handler_installed_after_runtime_does_not_stop_preemption() {
    late_sigurg_handler_keeps_preemption(
        false,
        "sigurg_handler_installed_after_runtime_does_not_stop_preemption",
    );
}

/// As above with a handler that chains to the one it replaced (gosched's):
/// gosched forwarding to it and it calling gosched back must not recurse.
#[test]
fn chaining_sigurg_handler_installed_after_runtime_does_not_recurse() {
    late_sigurg_handler_keeps_preemption(
        true,
        "chaining_sigurg_handler_installed_after_runtime_does_not_recurse",
    );
}

/// A SIGUSR1 handler that spins for 5 ms (normal mask: SIGUSR1 is blocked
/// inside it, so safe-point rule 5 refuses every preemption there).
extern "C" fn long_usr1(_sig: libc::c_int) {
    let t = Instant::now();
    let mut x = 1u64;
    while t.elapsed() < Duration::from_millis(5) {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    std::hint::black_box(x);
}

/// CPU time (user + system) of this process's thread named `name`, from
/// /proc/self/task/*/stat, in clock ticks.
fn thread_cpu_ticks(name: &str) -> Option<u64> {
    let want = format!("({name})");
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        if !stat.contains(&want) {
            return None;
        }
        let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        // Fields 14 and 15 of stat(5), utime and stime; f[0] is field 3.
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    })
}

/// Child: on one P with a 100 µs quantum, two goroutines spend 600 ms almost
/// entirely inside a 5 ms signal handler (every preemption refused).
/// Reports sysmon's CPU time over that stretch.
fn refused_child() {
    // SAFETY: an sa_handler that only spins and reads the clock (vDSO).
    unsafe {
        install_handler(
            libc::SIGUSR1,
            long_usr1 as *const () as usize,
            libc::SA_RESTART,
        )
    };
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_micros(100))
        .build()
        .unwrap();
    rt.block_on(|| ());
    let ticks_per_s = {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
    };
    // The thread names itself once it runs: wait for it.
    let t = Instant::now();
    let c0 = loop {
        match thread_cpu_ticks("gosched-sysmon") {
            Some(c) => break c,
            None if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            None => panic!("no thread named gosched-sysmon"),
        }
    };
    let t = Instant::now();
    rt.block_on(|| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                gosched::spawn(|| {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_millis(600) {
                        // SAFETY: runs our own handler on this thread.
                        unsafe { libc::raise(libc::SIGUSR1) };
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let wall = t.elapsed();
    let cpu_ms = (thread_cpu_ticks("gosched-sysmon").unwrap() - c0) * 1000 / ticks_per_s;
    let st = rt.stats();
    eprintln!(
        "WALL_MS={} SYSMON_CPU_MS={cpu_ms} SIGMASK={} STARVED={}",
        wall.as_millis(),
        refused(&st, "sigmask"),
        st.preempt_starved
    );
}

/// sysmon backs off when every preemption of a goroutine is refused (it is
/// inside a long signal handler): at a 100 µs quantum it used to signal
/// every 25 µs and burn a seventh of a CPU or more; the retries now double
/// up to 2 ms. The starvation is counted in `Stats::preempt_starved` and
/// reported once on stderr with its reason.
#[test]
fn sysmon_backs_off_when_preemption_keeps_being_refused() {
    if child_role().as_deref() == Some("refused") {
        return refused_child();
    }
    let _s = serial();
    let out = run_child(
        "sysmon_backs_off_when_preemption_keeps_being_refused",
        "refused",
        Duration::from_secs(60),
    );
    out.assert_success("refused-preemption child");
    eprintln!("{}", out.stderr.lines().last().unwrap_or(""));
    let (wall, cpu) = (
        out.report("WALL_MS").unwrap(),
        out.report("SYSMON_CPU_MS").unwrap(),
    );
    assert!(wall >= 600, "{}", out.stderr);
    // Each refused signal is one sysmon retry. The backoff allows one per
    // 2 ms once it has ramped up (without it: one per 25 µs, whenever the
    // previous one was handled; ~5,000 in this run).
    let signals = out.report("SIGMASK").unwrap_or(0);
    assert!(signals > 0, "{}", out.stderr);
    assert!(
        signals <= wall / 2 + wall / 4 + 50,
        "{signals} refused signals in {wall} ms: sysmon does not back off\n{}",
        out.stderr
    );
    // Generous for a loaded machine and a debug build (~2-5 %); without the
    // backoff sysmon took 14 % here, up to 50 % elsewhere.
    assert!(
        cpu * 100 <= wall * 10,
        "sysmon used {cpu} ms of CPU in {wall} ms\n{}",
        out.stderr
    );
    assert!(
        out.report("STARVED").is_some_and(|n| n > 0),
        "{}",
        out.stderr
    );
    let warnings = out
        .stderr
        .matches("every asynchronous preemption was refused, mostly `sigmask`")
        .count();
    assert_eq!(warnings, 1, "{}", out.stderr);
}

/// A goroutine that was time-sliced (so its next slice is ended by its
/// thread's slice timer) and then enters a blocking call at once: the
/// timer must not interrupt that call. `poll` returns EINTR after any
/// signal handler, `SA_RESTART` or not; without disarming the timer in
/// `blocking`, every call here failed with EINTR when the quantum ran out
/// mid-call.
#[test]
fn a_time_sliced_goroutine_entering_a_blocking_call_is_not_interrupted() {
    let _s = serial();
    // Slices are timed only while every CPU runs a P: a P per CPU, and a
    // loop on each beside the goroutine under test.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = Builder::new()
        .procs(cpus)
        .preempt_quantum(Duration::from_millis(1))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<_> = (0..cpus)
        .map(|_| {
            let stop = stop.clone();
            rt.spawn(move || hog(&stop))
        })
        .collect();
    let (interrupted, calls) = rt.block_on(|| {
        let h = gosched::spawn(|| {
            let (mut interrupted, mut calls) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(20);
            while calls < 12 && Instant::now() < deadline {
                // Spin until a gap shows we were preempted and resumed:
                // this slice is fresh, and timed.
                let mut last = Instant::now();
                loop {
                    let now = Instant::now();
                    if now - last > Duration::from_micros(500) {
                        break;
                    }
                    last = now;
                }
                calls += 1;
                // SAFETY: poll with no descriptors only sleeps.
                let r = gosched::blocking(|| unsafe { libc::poll(std::ptr::null_mut(), 0, 5) });
                if r < 0 {
                    interrupted += 1;
                }
            }
            (interrupted, calls)
        });
        h.join().unwrap()
    });
    stop.store(true, Ordering::Relaxed);
    for h in others {
        h.join().unwrap();
    }
    let st = rt.stats();
    eprintln!("{interrupted} of {calls} polls interrupted; {st:?}");
    assert!(calls >= 12, "only {calls} preemptions seen");
    assert!(st.preempt_timer > 0, "no slice was timed: {st:?}");
    assert_eq!(
        interrupted, 0,
        "{interrupted} of {calls} polls failed with EINTR"
    );
}

/// Child: one P; a goroutine blocks `sig` with `pthread_sigmask` (as
/// network code that wants EPIPE instead of SIGPIPE may) and ends with it
/// blocked, so the mask stays on its thread; then a no-call hog beside a
/// sleeping main goroutine on that thread. The sleep returns only once the
/// hog is preempted asynchronously, or (`stop_after`) once a plain thread
/// stopped the hog.
fn blocked_signal_child(sig: libc::c_int, stop_after: Option<Duration>) {
    let rt = Builder::new()
        .procs(1)
        .preempt_quantum(Duration::from_millis(1))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop_after.map(|after| {
        let s = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            s.store(true, Ordering::Relaxed);
        })
    });
    let s = stop.clone();
    let t = Instant::now();
    rt.block_on(move || {
        gosched::spawn(move || {
            // SAFETY: sigset_t is plain data, initialised by sigemptyset;
            // pthread_sigmask changes only this thread's mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
        })
        .join()
        .unwrap();
        let s2 = s.clone();
        let h = gosched::spawn(move || hog(&s2));
        gosched::sleep(Duration::from_millis(50));
        s.store(true, Ordering::Relaxed);
        h.join().unwrap();
    });
    if let Some(stopper) = stopper {
        stopper.join().unwrap();
    }
    let st = rt.stats();
    eprintln!(
        "SLEPT_MS={} PREEMPT_ASYNC={} REFUSED_SIGMASK={}",
        t.elapsed().as_millis(),
        st.preempt_async,
        refused(&st, "sigmask")
    );
}

/// A signal mask a goroutine left on its thread is not taken for a signal
/// handler: it used to have every preemption on that thread refused as
/// "inside a signal handler" (rule 5 compared masks), and a hog there
/// starved the P for good.
#[test]
fn a_blocked_sigpipe_left_on_a_thread_does_not_stop_preemption() {
    const TEST: &str = "a_blocked_sigpipe_left_on_a_thread_does_not_stop_preemption";
    if child_role().as_deref() == Some("blocked_sigpipe") {
        return blocked_signal_child(libc::SIGPIPE, None);
    }
    let _s = serial();
    let out = run_child(TEST, "blocked_sigpipe", Duration::from_secs(30));
    out.assert_success("blocked SIGPIPE child (a timeout is a starved hog)");
    eprintln!("{}", out.stderr.lines().last().unwrap_or(""));
    assert!(
        out.report("PREEMPT_ASYNC").is_some_and(|n| n > 0),
        "{}",
        out.stderr
    );
    assert!(
        out.report("SLEPT_MS").is_some_and(|ms| ms < 5_000),
        "the sleep beside the hog took too long\n{}",
        out.stderr
    );
}

/// How long the blocked-SIGURG child's hog runs.
const SIGURG_BLOCKED_FOR: Duration = Duration::from_millis(1500);

/// A thread left with SIGURG blocked cannot be preempted (the crate docs
/// say so); sysmon says so on stderr, once, instead of the P starving in
/// silence.
#[test]
fn a_thread_left_with_sigurg_blocked_is_reported() {
    const TEST: &str = "a_thread_left_with_sigurg_blocked_is_reported";
    if child_role().as_deref() == Some("blocked_sigurg") {
        return blocked_signal_child(libc::SIGURG, Some(SIGURG_BLOCKED_FOR));
    }
    let _s = serial();
    let out = run_child(TEST, "blocked_sigurg", Duration::from_secs(30));
    out.assert_success("blocked SIGURG child");
    let warnings = out
        .stderr
        .matches("runs a goroutine with SIGURG blocked")
        .count();
    assert_eq!(warnings, 1, "want one warning\n{}", out.stderr);
}

/// Profiler samples (SIGPROF handler) and how many of them landed in a
/// goroutine, by `gosched::current_id`.
static PROF_SAMPLES: AtomicU64 = AtomicU64::new(0);
static PROF_IN_GOROUTINE: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_sigprof(_: libc::c_int) {
    PROF_SAMPLES.fetch_add(1, Ordering::Relaxed);
    if gosched::current_id().is_some() {
        PROF_IN_GOROUTINE.fetch_add(1, Ordering::Relaxed);
    }
}

/// A sampling profiler's SIGPROF handler (on the alternate stack) may ask
/// which goroutine it interrupted while goroutines are preempted around
/// it. In debug builds the consistency check of `current_g` took the
/// alternate stack (or g0 mid-switch) for a wrong `curg` and aborted the
/// process, every run.
#[test]
fn a_profiler_signal_handler_may_ask_for_the_current_goroutine() {
    if child_role().as_deref() == Some("prof") {
        // SAFETY: an async-signal-safe handler (atomics and a TLS read);
        // the interval timer is this child's alone.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigprof as *const () as usize;
            sa.sa_flags = libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut());
        }
        let rt = Builder::new()
            .procs(2)
            .preempt_quantum(Duration::from_millis(1))
            .build()
            .unwrap();
        let every_ms = libc::itimerval {
            it_interval: libc::timeval {
                tv_sec: 0,
                tv_usec: 1000,
            },
            it_value: libc::timeval {
                tv_sec: 0,
                tv_usec: 1000,
            },
        };
        // SAFETY: a valid itimerval; the old value is not wanted.
        unsafe { libc::setitimer(libc::ITIMER_PROF, &every_ms, std::ptr::null_mut()) };
        rt.block_on(|| {
            let hs: Vec<_> = (0..3)
                .map(|_| gosched::spawn(|| spin_for(Duration::from_millis(500))))
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
        // SAFETY: an all-zero itimerval disarms the timer.
        unsafe { libc::setitimer(libc::ITIMER_PROF, &std::mem::zeroed(), std::ptr::null_mut()) };
        eprintln!(
            "SAMPLES={} IN_GOROUTINE={}",
            PROF_SAMPLES.load(Ordering::Relaxed),
            PROF_IN_GOROUTINE.load(Ordering::Relaxed)
        );
        return;
    }
    let out = run_child(
        "a_profiler_signal_handler_may_ask_for_the_current_goroutine",
        "prof",
        Duration::from_secs(30),
    );
    out.assert_success("profiler child");
    assert!(
        out.report("IN_GOROUTINE").is_some_and(|n| n > 0),
        "{}",
        out.stderr
    );
}
