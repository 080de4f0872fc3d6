//! zinf-aio: the block I/O engine of zinf. It moves byte ranges between files and aligned,
//! pinned buffers at the speed of the drive, and knows nothing of tensors.
//!
//! - [`AioEngine`]: one io_uring per I/O thread (`intra_op_parallelism`), each request split
//!   into `block_size` pieces with at most `queue_depth` in flight per ring, registered files
//!   and (with a [`BufferPool`]) registered buffers. A pread/pwrite thread pool with the same
//!   API is chosen at run time when io_uring is unavailable, or when forced.
//! - [`Request`]: the completion handle of one read or write; the buffer comes back with it.
//!   [`wait_any`] waits for the first of a set. There is no "wait for everything".
//! - [`BufferPool`] / [`AlignedBuf`]: huge-page, optionally mlocked memory with a byte budget
//!   fixed at creation; allocation waits when the budget is used up (backpressure).
//!
//! Unaligned O_DIRECT ranges are refused with [`AioError::Misaligned`] (no hidden bounce
//! buffers): callers lay out their extents on [`AioEngine::alignment`] boundaries.

mod buf;
mod engine;
mod error;
mod pool;
mod pread;
mod uring;

pub use buf::{lock_in_ram, AlignedBuf, HugePages, HUGE_PAGE_BYTES, PAGE_BYTES};
pub use engine::{wait_any, AioEngine, FileId, OpenMode, Request};
pub use error::{AioError, ErrorKind, Op};
pub use pool::{BufferPool, PoolStats};

use std::sync::atomic::{AtomicBool, Ordering};

/// Which backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, else pread/pwrite (logged once with the reason).
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// The pread/pwrite thread pool (the slow reference).
    Pread,
}

impl std::str::FromStr for BackendChoice {
    type Err = AioError;
    fn from_str(s: &str) -> Result<Self, AioError> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" => Ok(BackendChoice::Uring),
            "pread" => Ok(BackendChoice::Pread),
            other => Err(AioError::Config(format!(
                "unknown backend {other:?} (expected auto, uring or pread)"
            ))),
        }
    }
}

/// The backend an engine actually runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// io_uring; whether the buffer pool is registered (READ_FIXED/WRITE_FIXED).
    Uring { registered_buffers: bool },
    /// pread/pwrite threads; `reason` says why when io_uring was wanted but unavailable.
    Pread { reason: Option<String> },
}

impl Backend {
    /// Short name: "uring" or "pread".
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Uring { .. } => "uring",
            Backend::Pread { .. } => "pread",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Uring { registered_buffers } => write!(
                f,
                "io_uring ({} buffers)",
                if *registered_buffers {
                    "registered"
                } else {
                    "unregistered"
                }
            ),
            Backend::Pread { reason: None } => f.write_str("pread/pwrite threads"),
            Backend::Pread { reason: Some(r) } => write!(f, "pread/pwrite threads ({r})"),
        }
    }
}

/// Engine settings: DeepSpeed's `aio` block plus zinf's own switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AioConfig {
    /// Bytes per I/O piece (`aio.block_size`).
    pub block_size: usize,
    /// Pieces in flight per ring (`aio.queue_depth`).
    pub queue_depth: usize,
    /// I/O threads, one ring each (`aio.intra_op_parallelism`, alias `thread_count`).
    pub intra_op_parallelism: usize,
    /// Submit each piece with its own syscall instead of batching (`aio.single_submit`).
    pub single_submit: bool,
    /// Refill the queue as pieces complete; when false, wait for the whole batch to drain
    /// before submitting the next (`aio.overlap_events`).
    pub overlap_events: bool,
    /// Which backend to run.
    pub backend: BackendChoice,
    /// Kernel-side submission polling (zinf setting, off by default).
    pub sqpoll: bool,
    /// Open files with O_DIRECT (falls back to buffered I/O when the filesystem refuses).
    pub direct: bool,
}

impl Default for AioConfig {
    /// DeepSpeed's aio defaults.
    fn default() -> Self {
        AioConfig {
            block_size: 1 << 20,
            queue_depth: 8,
            intra_op_parallelism: 1,
            single_submit: false,
            overlap_events: true,
            backend: BackendChoice::Auto,
            sqpoll: false,
            direct: true,
        }
    }
}

/// Largest piece: the kernel caps one read/write at just under 2 GiB and a registered buffer
/// at 1 GiB.
pub const MAX_BLOCK_BYTES: usize = 1 << 30;

impl AioConfig {
    /// Checks the limits an engine relies on.
    pub fn validate(&self) -> Result<(), AioError> {
        let bad = |m: String| Err(AioError::Config(m));
        if self.block_size == 0 || !self.block_size.is_multiple_of(PAGE_BYTES) {
            return bad(format!(
                "block_size {} must be a positive multiple of {PAGE_BYTES}",
                self.block_size
            ));
        }
        if self.block_size > MAX_BLOCK_BYTES {
            return bad(format!(
                "block_size {} exceeds {MAX_BLOCK_BYTES}",
                self.block_size
            ));
        }
        if !(1..=4096).contains(&self.queue_depth) {
            return bad(format!(
                "queue_depth {} must be in 1..=4096",
                self.queue_depth
            ));
        }
        if !(1..=256).contains(&self.intra_op_parallelism) {
            return bad(format!(
                "intra_op_parallelism {} must be in 1..=256",
                self.intra_op_parallelism
            ));
        }
        Ok(())
    }
}

pub(crate) static LOGGED_MLOCK: AtomicBool = AtomicBool::new(false);
pub(crate) static LOGGED_REGBUF: AtomicBool = AtomicBool::new(false);
pub(crate) static LOGGED_DIRECT: AtomicBool = AtomicBool::new(false);
pub(crate) static LOGGED_FALLBACK: AtomicBool = AtomicBool::new(false);

/// Logs a fallback warning the first time it happens in this process.
pub(crate) fn log_once(flag: &AtomicBool, msg: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!("{msg}");
    }
}

/// The engine and its buffers are shared across threads; keep it that way.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn send<T: Send>() {}
    send_sync::<AioEngine>();
    send_sync::<BufferPool>();
    send::<AlignedBuf>();
    send::<Request>();
};
