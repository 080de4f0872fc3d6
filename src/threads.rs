//! The CPU compute pool: one persistent fork-join pool per run, shared by the CPU device's layer
//! kernels and the CPU optimizer, so the two never oversubscribe the cores with threads of their
//! own. `threads - 1` workers are parked on a condition variable; `run(job)` calls `job(i)` for
//! every `i in 0..threads`, index 0 on the calling thread. A call spawns nothing and allocates
//! nothing.
//!
//! It is not a general task queue (no futures, no work stealing, no nesting): every call is one
//! fork-join over exactly `threads` indices. Calls from different threads take turns; a job that
//! calls `run` on its own pool is a programmer error and panics (it would otherwise deadlock).
//! `gemm`'s matrix products do not run here: that crate only parallelises over rayon's global
//! pool (see `device::cpu::kernels::gemm_acc`).

use std::any::Any;
use std::cell::Cell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A worker thread could not be started (the OS refused a thread).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not start compute thread {index}: {message}")]
pub struct SpawnError {
    /// Index of the worker that failed (1-based: index 0 is the caller).
    pub index: usize,
    /// The OS's reason.
    pub message: String,
}

/// A type-erased pointer to the job of the current generation. It only lives while
/// [`ThreadPool::run`] is blocked waiting for every worker to finish with it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync` (we only store `dyn Fn + Sync`), so sharing a pointer to it
// between threads is sound; `run` keeps the referent alive until every worker is done with it.
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<JobPtr>,
    remaining: usize,
    /// The first panic payload of this generation's workers, re-raised by `run`.
    panic: Option<Box<dyn Any + Send>>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    /// Held for the whole of a `run`: callers on different threads take turns.
    turn: Mutex<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker never panics while holding the lock (jobs run unlocked, under catch_unwind),
        // so a poisoned mutex still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Identity of the pool, for the re-entrance check.
    fn id(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }
}

thread_local! {
    /// The pool whose job this thread is running (0: none). Workers hold their pool's id for
    /// life; a caller holds it for the length of its `run`.
    static INSIDE: Cell<usize> = const { Cell::new(0) };
}

/// Fork-join pool: `run(f)` calls `f(0)` on the caller and `f(1..threads)` on the workers.
/// Share it between the device and the optimizer with an `Arc`.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl ThreadPool {
    /// Starts `threads - 1` workers (`threads` is clamped to at least 1).
    pub fn new(threads: usize) -> Result<Self, SpawnError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                remaining: 0,
                panic: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            turn: Mutex::new(()),
        });
        let mut pool = Self {
            shared,
            workers: Vec::with_capacity(threads - 1),
            threads,
        };
        for index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("zinf-cpu-{index}"))
                .spawn(move || worker_loop(&shared, index))
                .map_err(|e| SpawnError {
                    index,
                    message: e.to_string(),
                })?;
            // On an early return, dropping `pool` shuts down the workers started so far.
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Number of indices every `run` covers (workers plus the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(i)` for every `i in 0..threads` in parallel and returns when all are done.
    /// A panic in any of them is re-raised here (with its own payload) after every index has
    /// finished.
    ///
    /// # Panics
    /// When called from inside a job of this same pool: the workers are all busy with the outer
    /// job, so the inner call could never finish.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let id = self.shared.id();
        let outer = INSIDE.with(Cell::get);
        assert_ne!(
            outer, id,
            "ThreadPool::run called from inside a job of the same pool (nested parallelism is \
             not supported: run the inner work sequentially)"
        );
        if self.threads == 1 {
            let _inside = Inside::enter(id, outer);
            job(0);
            return;
        }
        let _turn = self.shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        let _inside = Inside::enter(id, outer);
        // SAFETY: only the lifetime is erased. `WaitGuard` below blocks (also while unwinding)
        // until every worker has finished this generation and the job pointer is cleared, so no
        // worker dereferences it after `job` goes out of scope.
        let ptr: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), _>(
                job as *const (dyn Fn(usize) + Sync),
            )
        };
        {
            let mut st = self.shared.lock();
            st.generation = st.generation.wrapping_add(1);
            st.job = Some(JobPtr(ptr));
            st.remaining = self.threads - 1;
            st.panic = None;
        }
        self.shared.work.notify_all();
        let guard = WaitGuard(&self.shared);
        job(0);
        drop(guard);
        let panic = self.shared.lock().panic.take();
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
    }

    /// Splits `0..len` into one contiguous range per thread (boundaries on multiples of
    /// `align`, see [`partition`]) and runs `f` on each range, on its own thread. Runs on the
    /// caller alone when there is a single thread or `len < min_len`: which thread handles a
    /// range never changes what is computed, only when.
    pub fn for_ranges(
        &self,
        len: usize,
        align: usize,
        min_len: usize,
        f: &(dyn Fn(Range<usize>) + Sync),
    ) {
        if self.threads == 1 || len < min_len.max(2) {
            f(0..len);
            return;
        }
        let threads = self.threads;
        self.run(&|t| {
            let (s, e) = partition(len, threads, t, align);
            if s < e {
                f(s..e);
            }
        });
    }
}

/// Marks the current thread as inside a pool's `run` and restores the outer mark on drop (also
/// when the job unwinds).
struct Inside(usize);

impl Inside {
    fn enter(id: usize, outer: usize) -> Self {
        INSIDE.with(|c| c.set(id));
        Inside(outer)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        INSIDE.with(|c| c.set(self.0));
    }
}

/// Waits for the workers of the current generation on drop, so that `run` never returns (or
/// unwinds) while a worker may still use the borrowed job.
struct WaitGuard<'a>(&'a Shared);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        while st.remaining > 0 {
            st = self.0.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.job = None;
    }
}

fn worker_loop(shared: &Arc<Shared>, index: usize) {
    INSIDE.with(|c| c.set(shared.id()));
    let mut seen = 0u64;
    loop {
        let job = {
            let mut st = shared.lock();
            while st.generation == seen && !st.shutdown {
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job
        };
        let result = match job {
            // SAFETY: the pointer was set for this generation by `run`, which does not return
            // until `remaining` reaches zero, i.e. until after this call ends.
            Some(JobPtr(p)) => catch_unwind(AssertUnwindSafe(|| unsafe { (*p)(index) })),
            None => Ok(()),
        };
        let mut st = shared.lock();
        if let Err(payload) = result {
            st.panic.get_or_insert(payload);
        }
        st.remaining -= 1;
        if st.remaining == 0 {
            shared.done.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The contiguous range of `0..len` that index `part` of `parts` owns. Boundaries are multiples
/// of `align` elements (a cache line of f32 is 16), so no two threads write the same line.
pub fn partition(len: usize, parts: usize, part: usize, align: usize) -> (usize, usize) {
    let parts = parts.max(1);
    let align = align.max(1);
    let units = len.div_ceil(align);
    let start = (units * part / parts * align).min(len);
    let end = (units * (part + 1) / parts * align).min(len);
    (start, end)
}

/// A mutable slice that the jobs of one `run` share, each taking a disjoint range of it. It
/// borrows the slice mutably for `'a`, so nothing else can touch it meanwhile.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T> SharedMut<'a, T> {
    /// Shares `slice` for the length of the borrow.
    pub fn new(slice: &'a mut [T]) -> Self {
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements `r` of the slice.
    ///
    /// # Safety
    /// No other reference to any element of `r` may be live while the returned one is: callers
    /// take ranges that are disjoint across the jobs of a run (e.g. from [`partition`]).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, r: Range<usize>) -> &'a mut [T] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "SharedMut range out of bounds"
        );
        // SAFETY: in bounds (asserted), the slice is mutably borrowed for 'a, and the caller
        // guarantees that no other live reference overlaps `r`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

// SAFETY: a `SharedMut` hands out `&mut T` to disjoint ranges on several threads, which is what
// sending `&mut [T]` pieces would do: sound when `T: Send`.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}
// SAFETY: as above; moving the view moves only the pointer to a slice of `T: Send`.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_index_runs_exactly_once_per_call_and_the_pool_is_reused() {
        let pool = ThreadPool::new(4).unwrap();
        let hits: [AtomicUsize; 4] = Default::default();
        for _ in 0..100 {
            pool.run(&|t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 100));
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_with_its_message_and_the_pool_still_works() {
        let pool = ThreadPool::new(3).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|t| {
                if t == 2 {
                    panic!("boom in worker");
                }
            })
        }));
        let payload = r.expect_err("the panic must reach the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in worker"));
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_job_calling_run_on_its_own_pool_panics_instead_of_deadlocking() {
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let r = catch_unwind(AssertUnwindSafe(|| pool.run(&|_| pool.run(&|_| {}))));
            let payload = r.expect_err("nested run must panic");
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            assert!(msg.contains("inside a job of the same pool"), "{msg}");
            // The pool is usable afterwards, and from the same thread.
            let n = AtomicUsize::new(0);
            pool.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), threads);
        }
    }

    #[test]
    fn a_job_may_use_another_pool_and_callers_on_several_threads_take_turns() {
        let (a, b) = (
            ThreadPool::new(2).unwrap(),
            Arc::new(ThreadPool::new(2).unwrap()),
        );
        let n = AtomicUsize::new(0);
        a.run(&|_| {
            b.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(n.load(Ordering::Relaxed), 4);
        let total = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let (b, total) = (Arc::clone(&b), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        b.run(&|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        callers.into_iter().for_each(|c| c.join().unwrap());
        assert_eq!(total.load(Ordering::Relaxed), 3 * 50 * 2);
    }

    #[test]
    fn ranges_cover_every_element_once() {
        let pool = ThreadPool::new(3).unwrap();
        for len in [0, 1, 5, 1000] {
            let mut seen = vec![0u8; len];
            let shared = SharedMut::new(&mut seen);
            pool.for_ranges(len, 16, 0, &|r| {
                // SAFETY: `for_ranges` hands each job a disjoint range.
                unsafe { shared.range(r) }.iter_mut().for_each(|x| *x += 1);
            });
            assert!(seen.iter().all(|&x| x == 1), "{len}");
        }
    }

    #[test]
    fn partitions_tile_the_range_on_cache_line_boundaries() {
        for (len, parts) in [(0, 3), (1, 2), (1000, 3), (1_000_003, 7), (15, 4)] {
            let mut next = 0;
            for p in 0..parts {
                let (s, e) = partition(len, parts, p, 16);
                assert_eq!(s, next, "{len} {parts} {p}");
                assert!(s <= e && (s % 16 == 0 || s == len));
                next = e;
            }
            assert_eq!(next, len);
        }
    }
}
