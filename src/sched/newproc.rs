//! Creating goroutines (Go's newproc), goroutine ids, free Gs, and the
//! P-local access that spawning and readying use (`with_local`).

use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use super::runq::Owner;
use super::*;
use crate::sched::g::{GRef, EMPTY, G};

/// Free Gs a P keeps before returning half to the global list.
pub(crate) const G_CACHE: usize = 64;

/// Free Gs a P takes from the global list at once.
const G_BATCH: usize = 32;

/// Goroutine ids a P takes from the global counter at once (Go's
/// `_GoidCacheBatch`).
const GOID_BATCH: u64 = 16;

/// Process-wide goroutine ids (Go's goid starts at 1).
static NEXT_GID: AtomicU64 = AtomicU64::new(1);

impl Shared {
    /// Creates a goroutine running `body` (which must catch its own panics)
    /// and makes it runnable. From a goroutine of this runtime it goes to the
    /// current P's `runnext` (Go's newproc), else to the global queue.
    pub(crate) fn spawn_raw(
        &self,
        body: Arc<dyn crate::sched::g::Body>,
        at: Option<&'static std::panic::Location<'static>>,
    ) -> u64 {
        self.spawn_named(body, at, None)
    }

    /// `spawn_raw` with a name (`GoroutineBuilder::name`; see `G::name`).
    pub(crate) fn spawn_named(
        &self,
        body: Arc<dyn crate::sched::g::Body>,
        at: Option<&'static std::panic::Location<'static>>,
        name: Option<Box<str>>,
    ) -> u64 {
        crate::os::fork::check();
        let _np = NoPreempt::enter();
        let mut name = Some(name);
        let mut init = |g: GRef, id: u64, body: Arc<dyn crate::sched::g::Body>| {
            let name = name.take().expect("a G initialised once");
            // SAFETY: we own the free G, so nobody writes its name; readers
            // on other threads only read.
            if name.is_some() || unsafe { g.name() }.is_some() {
                // Readers on other threads (the deadlock report, schedtrace,
                // the goroutine dump) hold `allg` while they read the name
                // of any G it lists, this one included: writing under the
                // same lock is what keeps them from reading a name being
                // replaced or freed. Unnamed goroutines after unnamed ones
                // (the common case) skip the lock.
                let old = {
                    let _allg = self.allg.rt_lock();
                    // SAFETY: we own the free G and hold `allg` (G::name).
                    std::mem::replace(unsafe { &mut *g.name.get() }, name)
                };
                drop(old);
            }
            g.id.store(id, Ordering::Relaxed);
            g.spawned_at.store(
                at.map_or(ptr::null_mut(), |l| ptr::from_ref(l).cast_mut()),
                Ordering::Relaxed,
            );
            g.live.store(true, Ordering::Relaxed);
            // SAFETY: a free G is owned by whoever took it from a free list.
            unsafe { *g.entry.get() = Some(body) };
            g.park.store(EMPTY, Ordering::Relaxed);
            g.no_preempt.store(1, Ordering::Relaxed);
            g.preempt.store(false, Ordering::Relaxed);
            g.wakeup_signal.store(false, Ordering::Relaxed);
        };
        let mut body = Some(body);
        // From a goroutine (or g0) of this runtime: Go's newproc, all on the
        // P: a cached G, an id from the P's batch, into runnext (the previous
        // runnext is kicked to the local queue's tail).
        let local = self.with_local(|p, q, l| {
            let g = l
                .gfree
                .pop()
                .unwrap_or_else(|| self.gget_global(&mut l.gfree));
            if l.goid_next == l.goid_end {
                l.goid_next = NEXT_GID.fetch_add(GOID_BATCH, Ordering::Relaxed);
                l.goid_end = l.goid_next + GOID_BATCH;
            }
            let id = l.goid_next;
            l.goid_next += 1;
            init(g, id, body.take().expect("body taken once"));
            bump(&p.counters.spawned);
            if p.keeps_for_wakeup() && q.has_next() {
                // Not in front of a goroutine preempted for a wake-up
                // (`sched::wakeup`, step 3): it would go to the tail.
                q.put_tail(g);
            } else {
                q.put_next(g);
            }
            id
        });
        let id = match local {
            Some(id) => id,
            None => {
                // From a plain thread (or a goroutine that lost its P):
                // with the goroutines woken from outside any P, which every
                // P takes first, and with a wake-up preemption if every P is
                // busy (`sched::wakeup`). In the global queue it waited for
                // a P to reach a scheduling point: beside a CPU hog on every
                // P, `block_on`'s goroutine started a quantum late (never,
                // with time slicing turned off by a huge quantum).
                let mut spare = Vec::new();
                let g = self.gget_global(&mut spare);
                self.gfree.rt_lock().extend(spare);
                let id = NEXT_GID.fetch_add(1, Ordering::Relaxed);
                init(g, id, body.take().expect("body taken once"));
                self.counters_spawned_outside
                    .fetch_add(1, Ordering::Relaxed);
                self.ready_woken(g);
                return id;
            }
        };
        fence(Ordering::SeqCst);
        self.wakep();
        id
    }

    /// Runs `f` on the P-local data of the calling thread's P, if the caller
    /// is a goroutine (or g0) of this runtime whose M holds a P; None
    /// otherwise. Call it inside a no-preempt region, and never switch
    /// inside `f`.
    ///
    /// A goroutine's M holds its P in state USER(m), in which only sysmon may
    /// touch it (to retake it). So the goroutine claims it for the duration
    /// of `f` (`claim_p`; a retake waits for the claim to end). On g0 the P
    /// is in SCHED(m) already.
    ///
    /// `#[inline]`: small, and on every wake-up (`park::ready`, another
    /// module and so another codegen unit, where it would stay a call).
    #[inline]
    pub(crate) fn with_local<R>(
        &self,
        f: impl FnOnce(&P, Owner<'_>, &mut PLocal) -> R,
    ) -> Option<R> {
        let m = cur_m();
        if m.is_null() {
            return None;
        }
        // SAFETY: non-null `m` is this thread's live M; in a no-preempt
        // region we cannot move to another thread.
        let m = unsafe { &*m };
        if !ptr::eq(m.shared, self) {
            return None;
        }
        let p = &self.ps[m.p.get()?];
        if m.curg.load(Ordering::Relaxed).is_null() {
            // SAFETY: g0 of the M that holds this P in state SCHED: the only
            // one allowed to touch its run queue and local data.
            return Some(unsafe { f(p, p.runq.owner(), &mut *p.local.get()) });
        }
        if !claim_p(m, p) {
            return None;
        }
        // SAFETY: we hold a claim on the P: nobody else touches its run
        // queue or local data until we end it.
        let r = unsafe { f(p, p.runq.owner(), &mut *p.local.get()) };
        unclaim_p(m);
        Some(r)
    }

    /// A free G from the global list, moving up to `G_BATCH - 1` more into
    /// `spare` (a P's cache), or a new one.
    pub(crate) fn gget_global(&self, spare: &mut Vec<GRef>) -> GRef {
        {
            let mut free = self.gfree.rt_lock();
            if let Some(g) = free.pop() {
                let k = free.len().min(G_BATCH - 1);
                let at = free.len() - k;
                spare.extend(free.drain(at..));
                return g;
            }
        }
        let me = Arc::into_raw(self.me.upgrade().expect("runtime alive")) as *mut Shared;
        let pooled = teardown::G_POOL.rt_lock().pop();
        let g = match pooled {
            Some(g) => {
                g.shared.store(me, Ordering::Release);
                g
            }
            None => GRef(NonNull::from(Box::leak(Box::new(G::new(me))))),
        };
        self.allg.rt_lock().push(g);
        g
    }

    /// Goroutines spawned so far.
    pub(crate) fn spawned(&self) -> u64 {
        self.used_ps()
            .iter()
            .map(|p| p.counters.spawned.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.counters_spawned_outside.load(Ordering::Relaxed)
    }

    /// Live goroutines.
    pub(crate) fn goroutines(&self) -> usize {
        self.spawned().saturating_sub(self.exited()) as usize
    }

    /// Goroutines exited so far.
    pub(crate) fn exited(&self) -> u64 {
        self.used_ps()
            .iter()
            .map(|p| p.counters.exited.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.counters_exited_outside.load(Ordering::Relaxed)
    }
}
