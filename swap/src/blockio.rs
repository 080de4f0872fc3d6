//! The block-I/O trait the store is generic over, and the fault type its implementations report
//! (classified by zinf-aio's `ErrorKind`: swap never reads an errno number itself).
//!
//! The shape follows an io_uring engine: a request takes ownership of a pool buffer when it is
//! submitted and hands it back only with its completion, so a backend can keep many requests in
//! flight and the store can overlap reads, compute and writes. Implementations: zinf-aio's engine
//! (`crate::aio_backend`) on the real path and the seeded fake (`crate::fake`) in tests. This
//! trait knows nothing of shards or checksums; the store adds those.

use std::ops::DerefMut;
use std::path::Path;

/// Index of an open extent file within one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileNo(pub usize);

/// The kind of a device failure, as the store and its users need to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// EIO: the device failed the request.
    Eio,
    /// ENOSPC or EDQUOT: the file system (or the quota) is full.
    NoSpace,
    /// Fewer bytes moved than asked for, and resubmitting did not help (end of file).
    Short,
    /// The device is gone (the fake's model of a power cut): nothing after it lands.
    Crashed,
    /// Any other OS error, by errno.
    Os(i32),
    /// A failure without an errno (a closed engine, a bad argument to the backend).
    Other,
}

impl From<zinf_aio::ErrorKind> for FaultKind {
    /// Swap does not read errno numbers itself: zinf-aio classifies them (`ErrorKind`).
    fn from(k: zinf_aio::ErrorKind) -> Self {
        match k {
            zinf_aio::ErrorKind::Io => FaultKind::Eio,
            zinf_aio::ErrorKind::NoSpace => FaultKind::NoSpace,
            zinf_aio::ErrorKind::Short => FaultKind::Short,
            zinf_aio::ErrorKind::Os(errno) => FaultKind::Os(errno),
            zinf_aio::ErrorKind::Other => FaultKind::Other,
        }
    }
}

/// A failure reported by a backend, before the store adds shard and file names.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct IoFault {
    /// What kind of failure it was.
    pub kind: FaultKind,
    /// What failed, for the user.
    pub message: String,
}

impl IoFault {
    /// A fault of `kind` with a message for the user.
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Maps an OS error to a fault, classified by zinf-aio.
    pub fn from_io(e: &std::io::Error) -> Self {
        Self::new(zinf_aio::ErrorKind::of_io(e).into(), e.to_string())
    }

    /// Maps a zinf-aio error to a fault, classified by zinf-aio.
    pub fn from_aio(e: &zinf_aio::AioError) -> Self {
        Self::new(e.kind().into(), e.to_string())
    }
}

/// Block I/O with owned buffers and per-request completions.
///
/// Contract: `submit_*` moves the buffer into the request; `wait` returns it once every byte of
/// it has moved (backends resubmit short transfers themselves; one that cannot complete is a
/// `FaultKind::Short` fault). Offsets and buffer lengths are multiples of `alignment()`.
/// `sync` makes every completed write to the file durable. `replace_file` atomically replaces a
/// small metadata file (write new, fsync, rename, fsync directory).
pub trait BlockIo: Send + Sync {
    /// A pool buffer: aligned, from a budget fixed when the backend was built.
    type Buf: DerefMut<Target = [u8]> + Send;
    /// One request in flight.
    type Pending: Send;

    /// Alignment of offsets, lengths and buffers, in bytes (4096 on O_DIRECT paths).
    fn alignment(&self) -> usize;
    /// Takes `len` bytes from the pool, waiting while the budget is exhausted.
    fn alloc(&self, len: usize) -> Result<Self::Buf, IoFault>;
    /// Takes `len` bytes from the pool if they are free right now.
    fn try_alloc(&self, len: usize) -> Option<Self::Buf>;
    /// The pool's budget in bytes, fixed at start-up.
    fn pool_budget_bytes(&self) -> u64;
    /// Bytes of the pool checked out now (what every buffer not yet returned reserves).
    fn pool_in_use_bytes(&self) -> u64;
    /// Whether the pool's memory is locked in RAM (`pin_memory`).
    fn pool_pinned(&self) -> bool;
    /// Total time callers of `alloc` waited for the budget, in nanoseconds.
    fn pool_wait_ns(&self) -> u64;
    /// Bytes of budget an `alloc(len)` takes (pools may round up to their granule).
    fn pool_reserve_bytes(&self, len: u64) -> u64 {
        len
    }
    /// The one memory region every pool buffer lives in (start, bytes), when there is one: a
    /// GPU device page-locks it once so copies from pool buffers are DMA. Valid while the
    /// backend lives.
    fn pool_arena(&self) -> Option<(*const u8, usize)> {
        None
    }
    /// Opens (and with `create`, creates and preallocates to `len_bytes`) an extent file.
    fn open(&self, path: &Path, len_bytes: u64, create: bool) -> Result<FileNo, IoFault>;
    /// Starts reading `buf.len()` bytes at `offset` into `buf`.
    fn submit_read(
        &self,
        file: FileNo,
        offset: u64,
        buf: Self::Buf,
    ) -> Result<Self::Pending, IoFault>;
    /// Starts writing all of `buf` at `offset`.
    fn submit_write(
        &self,
        file: FileNo,
        offset: u64,
        buf: Self::Buf,
    ) -> Result<Self::Pending, IoFault>;
    /// Whether a request has completed (a `wait` on it returns without blocking).
    fn is_done(&self, req: &Self::Pending) -> bool;
    /// Waits for one request and hands its buffer back.
    fn wait(&self, req: Self::Pending) -> Result<Self::Buf, IoFault>;
    /// Makes completed writes to `file` durable (fdatasync).
    fn sync(&self, file: FileNo) -> Result<(), IoFault>;
    /// Atomically replaces a small file with `bytes`, durably.
    fn replace_file(&self, path: &Path, bytes: &[u8]) -> Result<(), IoFault>;
    /// Reads a small file whole; `None` when it does not exist.
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, IoFault>;
}
