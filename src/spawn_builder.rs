//! `GoroutineBuilder`: per-goroutine settings in `std::thread::Builder`'s
//! shape (the name `Builder` is the runtime's).
//!
//! The name is kept in the G itself (`G::name`, one source for every
//! reader): set by `spawn_raw` before the goroutine is first made runnable,
//! read by [`current_name`] and the panic hook on the goroutine, and by the
//! deadlock report, schedtrace's per-G lines and the SIGQUIT goroutine dump
//! on other threads (see `G::name` for why that does not race). Goroutines
//! without a name take no lock and allocate nothing for it.
//!
//! A panicking goroutine is reported by name (`goroutine 17 "worker-1"
//! panicked at ...`) by the panic hook of `crate::diag::panic`, which
//! documents how it chains with hooks the program installs.

use std::io;

use crate::sched::Shared;
use crate::{JoinHandle, Runtime};

/// Settings for one goroutine, in `std::thread::Builder`'s shape: a name
/// ([`current_name`] returns it inside the goroutine; panic messages, the
/// deadlock report, `GOSCHED_SCHEDDETAIL`'s per-G lines and the
/// `GOSCHED_SIGQUITDUMP` dump show it) and the stack it needs. Bad settings are an `Err` naming the value, never a panic.
///
/// Stacks are fixed-size slots of the runtime ([`crate::Builder::stack_size`],
/// 1 MiB by default), so `stack_size` states a requirement: spawning fails
/// with `InvalidInput` if the runtime's stacks are smaller than asked.
///
/// # Examples
///
/// ```
/// use gosched::GoroutineBuilder;
///
/// let rt = gosched::Runtime::new().unwrap();
/// let name = rt.block_on(|| {
///     let h = GoroutineBuilder::new()
///         .name("worker-1".into())
///         .stack_size(64 * 1024)
///         .spawn(|| gosched::current_name())
///         .unwrap();
///     h.join().unwrap()
/// });
/// assert_eq!(name.as_deref(), Some("worker-1"));
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a GoroutineBuilder does nothing until spawn is called"]
pub struct GoroutineBuilder {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl GoroutineBuilder {
    /// A builder with no name and the runtime's stack size.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let h = gosched::GoroutineBuilder::new().spawn_on(&rt, || 1).unwrap();
    /// assert_eq!(h.join().unwrap(), 1);
    /// ```
    pub fn new() -> GoroutineBuilder {
        GoroutineBuilder::default()
    }

    /// Names the goroutine (no NUL bytes, like a thread name).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let h = gosched::GoroutineBuilder::new()
    ///     .name("a\0b".into())
    ///     .spawn_on(&rt, || ());
    /// assert!(h.is_err());
    /// ```
    pub fn name(mut self, name: String) -> GoroutineBuilder {
        self.name = Some(name);
        self
    }

    /// The stack the goroutine needs, in bytes (checked against the
    /// runtime's stack size when spawning).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Builder::new().stack_size(256 * 1024).build().unwrap();
    /// let b = gosched::GoroutineBuilder::new().stack_size(1 << 30);
    /// let e = b.spawn_on(&rt, || ()).unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> GoroutineBuilder {
        self.stack_size = Some(bytes);
        self
    }

    /// Spawns the goroutine on the calling goroutine's runtime (like
    /// [`crate::spawn`]).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a name with a NUL byte, a zero stack size, or one
    /// larger than the runtime's stacks; `Other` outside a goroutine (use
    /// [`spawn_on`](Self::spawn_on)).
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// rt.block_on(|| {
    ///     let h = gosched::GoroutineBuilder::new().spawn(|| 2 + 2).unwrap();
    ///     assert_eq!(h.join().unwrap(), 4);
    /// });
    /// assert!(gosched::GoroutineBuilder::new().spawn(|| ()).is_err()); // not in a goroutine
    /// ```
    #[track_caller]
    pub fn spawn<F, R>(self, f: F) -> io::Result<JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let g = crate::sched::current_g().ok_or_else(|| {
            io::Error::other(
                "GoroutineBuilder::spawn called outside a goroutine: use spawn_on with a Runtime",
            )
        })?;
        // SAFETY: a running goroutine's runtime is alive (the G holds a
        // count on it).
        let sh = unsafe { &*g.shared.load(std::sync::atomic::Ordering::Acquire) };
        self.spawn_in(sh, f)
    }

    /// Spawns the goroutine on `rt`, from anywhere (like [`Runtime::spawn`]).
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn), except that it works outside a goroutine.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = gosched::Runtime::new().unwrap();
    /// let h = gosched::GoroutineBuilder::new()
    ///     .name("bg".into())
    ///     .spawn_on(&rt, || gosched::current_name().unwrap())
    ///     .unwrap();
    /// assert_eq!(h.join().unwrap(), "bg");
    /// ```
    #[track_caller]
    pub fn spawn_on<F, R>(self, rt: &Runtime, f: F) -> io::Result<JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn_in(rt.shared(), f)
    }

    #[track_caller]
    fn spawn_in<F, R>(self, sh: &Shared, f: F) -> io::Result<JoinHandle<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if let Some(n) = &self.name {
            if n.contains('\0') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("goroutine name {n:?} contains a NUL byte"),
                ));
            }
        }
        if let Some(s) = self.stack_size {
            let have = sh.stacks.stack_size();
            if s == 0 || s > have {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "goroutine stack_size {s} bytes: must be between 1 and the runtime's stack size \
                         ({have} bytes; set it with Builder::stack_size)"
                    ),
                ));
            }
        }
        Ok(crate::join::spawn_named(
            sh,
            f,
            self.name.map(String::into_boxed_str),
        ))
    }
}

/// The calling goroutine's name, if it was spawned with
/// [`GoroutineBuilder::name`]; `None` otherwise and outside goroutines.
///
/// # Examples
///
/// ```
/// assert_eq!(gosched::current_name(), None);
/// let rt = gosched::Runtime::new().unwrap();
/// assert_eq!(rt.block_on(gosched::current_name), None); // unnamed
/// ```
pub fn current_name() -> Option<String> {
    let g = crate::sched::current_g()?;
    // SAFETY: we are that goroutine (see `G::name`).
    unsafe { g.name() }.map(str::to_owned)
}
