//! Panic messages that name the goroutine: `goroutine 17 "worker-1"
//! panicked at src/x.rs:3:5:` instead of std's `thread 'gosched-m3'
//! panicked at ...` (the worker thread says nothing to the user).
//!
//! # Mechanism
//!
//! std prints panic messages from its process-wide panic hook, which
//! names the OS thread. The first runtime built in the process chains a
//! hook in front of the one installed then (`take_hook`, then `set_hook`
//! with ours, which keeps the previous one):
//!
//! - A panic outside a goroutine (a plain thread, a scheduler thread) goes
//!   to the previous hook, unchanged.
//! - A panic in a goroutine, when the previous hook is std's default one:
//!   we print the report std would, naming the goroutine (id, and name if it
//!   has one) instead of the thread; the backtrace follows `RUST_BACKTRACE`
//!   as std's does (unset or `0`: none, with std's note on the first such
//!   panic; `full`: full; anything else: short).
//! - A panic in a goroutine when the previous hook is the program's own:
//!   it goes to that hook, which decides what to print
//!   ([`crate::current_id`] and [`crate::current_name`] work there). We never
//!   swallow a hook.
//!
//! Whether the previous hook is std's default: `take_hook` boxes the
//! default hook (a zero-sized function item) afresh each time, always
//! through the same code in std, so a second `take_hook` right after the
//! first returns a box of the same type with the same vtable; a program's
//! hook is another type with another vtable. If that comparison ever said
//! "not the default" for the default (vtables duplicated), the goroutine's
//! panic would simply go to std's hook and name the thread as before: the
//! check fails safe.
//!
//! So, for a program that installs its own hook:
//! - before the first runtime is built: it keeps receiving every panic,
//!   goroutines' included (ours only forwards them);
//! - after: it replaces ours (std keeps one hook). If it calls the hook it
//!   took (ours), goroutine panics are reported by name, once; if not, std
//!   never calls ours again.
//!
//! `std::panic::set_hook` from another thread between our `take_hook` and
//! `set_hook` would be lost (std offers no atomic update on stable Rust);
//! runtimes are normally built before such threads start.
//!
//! The report is written to the process's stderr in one piece, errors
//! ignored, as std's hook does. Unlike std's, it does not go to libtest's
//! output capture (std offers no way to reach it except `eprint!`, which
//! panics when stderr fails, and a panic inside a panic hook aborts the
//! process).

use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

static INSTALL: Once = Once::new();

/// Chains our hook in front of the current one (once per process; see the
/// module docs). Call it when a runtime is built.
pub(crate) fn install() {
    // `set_hook` panics on a panicking thread (a runtime built in a `Drop`
    // during unwinding): leave the hook alone then, and try again with the
    // next runtime.
    if std::thread::panicking() || INSTALL.is_completed() {
        return;
    }
    INSTALL.call_once(|| {
        let prev = std::panic::take_hook();
        let default = std::panic::take_hook();
        let prev_is_default = std::ptr::eq(
            &*prev as *const (dyn Fn(&PanicHookInfo<'_>) + Sync + Send),
            &*default as *const (dyn Fn(&PanicHookInfo<'_>) + Sync + Send),
        );
        drop(default);
        std::panic::set_hook(Box::new(move |info| hook(info, &prev, prev_is_default)));
    });
}

fn hook(info: &PanicHookInfo<'_>, prev: &Hook, prev_is_default: bool) {
    match crate::sched::current_g() {
        Some(g) if prev_is_default => {
            // SAFETY: we are that goroutine (see `G::name`).
            let name = unsafe { g.name() };
            // The goroutine's stack left below this frame.
            let here = 0u8;
            let sp = std::hint::black_box(&here) as *const u8 as usize;
            let room = sp.saturating_sub(g.stack_lo.load(Ordering::Relaxed));
            report(info, g.id.load(Ordering::Relaxed), name, room);
        }
        _ => prev(info),
    }
}

/// Stack that resolving a backtrace's symbols may use on the panicking
/// goroutine's own stack (std's debug-info reader has deep frames: on a
/// 16 KiB stack, `RUST_BACKTRACE=1` turned a caught panic into a stack
/// overflow that killed the process; 24 KiB sufficed). With less left, the
/// frames are captured there (an unwinder walk: little stack) and resolved
/// on a thread of their own.
const RESOLVE_ROOM: usize = 256 << 10;

/// std's default report with the goroutine in place of the thread.
/// `room`: the goroutine's stack left.
fn report(info: &PanicHookInfo<'_>, id: u64, name: Option<&str>, room: usize) {
    let mut out = format!("\ngoroutine {id}");
    if let Some(name) = name {
        out.push_str(&format!(" {name:?}"));
    }
    out.push_str(" panicked");
    if let Some(at) = info.location() {
        out.push_str(&format!(" at {at}"));
    }
    // std's rule (`PanicHookInfo::payload_as_str` is newer than our MSRV).
    let p = info.payload();
    let msg = p
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    out.push_str(&format!(":\n{msg}\n"));
    let style = std::env::var("RUST_BACKTRACE");
    if matches!(style.as_deref(), Err(_) | Ok("0")) {
        static FIRST: AtomicBool = AtomicBool::new(true);
        if FIRST.swap(false, Ordering::Relaxed) {
            out.push_str(
                "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
            );
        }
    }
    if let Some(style) = style.ok().filter(|s| s != "0") {
        let bt = std::backtrace::Backtrace::force_capture();
        let text = move || {
            if style == "full" {
                format!("stack backtrace:\n{bt:#}")
            } else {
                format!(
                    "stack backtrace:\n{bt}note: Some details are omitted, run with \
                     `RUST_BACKTRACE=full` for a verbose backtrace.\n"
                )
            }
        };
        let text = if room >= RESOLVE_ROOM {
            text()
        } else {
            match std::thread::Builder::new()
                .name("gosched-backtrace".into())
                .spawn(text)
                .map(|t| t.join())
            {
                Ok(Ok(text)) => text,
                Ok(Err(_)) => "stack backtrace omitted: resolving it panicked\n".to_owned(),
                Err(e) => format!(
                    "stack backtrace omitted: the goroutine has {room} bytes of stack left and \
                     no thread could be started to resolve it: {e}\n"
                ),
            }
        };
        out.push_str(&text);
    }
    // In one piece, under std's stderr lock, so that neither goroutines
    // panicking at once on several Ps nor a program's `eprintln!` (a hook
    // of its own that calls ours) cut into the report. Unlike sysmon (see
    // `diag::write_stderr`), a goroutine may wait for that lock: if its
    // holder is parked, sysmon hands our P on while this thread waits.
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), out.as_bytes());
}
