//! `BlockIo` over zinf-aio: io_uring (or its pread fallback) with O_DIRECT extent files and the
//! pinned `BufferPool` whose budget is fixed here, at start-up, from the config. This is the
//! real path; the fake in `crate::fake` only stands in for it in fault tests.
//!
//! Small metadata files (the manifest) are replaced with plain std::fs calls: write a new file,
//! fsync it, rename it over the old one, fsync the directory.

use std::io::Write;
use std::path::Path;
use std::sync::RwLock;

use zinf_aio::{AioConfig, AioEngine, AioError, AlignedBuf, BufferPool, FileId, OpenMode, Request};

use crate::blockio::{BlockIo, FaultKind, FileNo, IoFault};
use crate::error::{Result, SwapError};

/// How big the pinned pool is: DeepSpeed's `buffer_count` x `buffer_size`, or an explicit budget
/// (the `zinf` block) that wins when set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    pub buffer_count: u64,
    pub buffer_size: u64,
    pub budget_bytes: Option<u64>,
    /// DeepSpeed `pin_memory`: false means the pool is not mlocked.
    pub pin_memory: bool,
}

impl PoolConfig {
    /// DeepSpeed's `offload_optimizer` defaults: 4 buffers of 1e8 bytes, not pinned.
    pub fn deepspeed_default() -> Self {
        Self {
            buffer_count: 4,
            buffer_size: 100_000_000,
            budget_bytes: None,
            pin_memory: false,
        }
    }

    /// The byte budget this config asks for.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
            .unwrap_or(self.buffer_count.saturating_mul(self.buffer_size))
    }
}

/// zinf-aio's engine and pool as a `BlockIo`.
pub struct AioBackend {
    engine: AioEngine,
    pool: BufferPool,
    files: RwLock<Vec<FileId>>,
}

fn fault(e: &AioError) -> IoFault {
    IoFault::from_aio(e)
}

impl AioBackend {
    /// Builds the pool (budget fixed now, reported in the log) and an engine registered with it.
    pub fn new(aio: &AioConfig, pool: &PoolConfig) -> Result<Self> {
        let budget = pool.budget_bytes();
        if budget == 0 {
            return Err(SwapError::Config("the pool budget is 0 bytes".into()));
        }
        let to_err = |e: AioError| SwapError::Config(format!("aio setup: {e}"));
        let p = BufferPool::new(budget as usize, pool.pin_memory).map_err(to_err)?;
        let engine = AioEngine::with_pool(aio, &p).map_err(to_err)?;
        let st = p.stats();
        tracing::info!(
            budget_bytes = st.capacity_bytes,
            pinned = st.pinned,
            huge_pages = ?st.huge_pages,
            backend = %engine.backend(),
            "swap buffer pool"
        );
        Ok(Self {
            engine,
            pool: p,
            files: RwLock::new(Vec::new()),
        })
    }

    /// The engine (backend name, config).
    pub fn engine(&self) -> &AioEngine {
        &self.engine
    }

    /// The pool (its stats: peak bytes, waits).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    fn id(&self, f: FileNo) -> FileId {
        self.files.read().unwrap_or_else(|p| p.into_inner())[f.0]
    }
}

impl BlockIo for AioBackend {
    fn pool_arena(&self) -> Option<(*const u8, usize)> {
        Some(self.pool.arena())
    }

    type Buf = AlignedBuf;
    type Pending = Request;

    fn alignment(&self) -> usize {
        zinf_aio::PAGE_BYTES
    }

    fn alloc(&self, len: usize) -> std::result::Result<AlignedBuf, IoFault> {
        self.pool.alloc(len).map_err(|e| fault(&e))
    }

    fn try_alloc(&self, len: usize) -> Option<AlignedBuf> {
        self.pool.try_alloc(len)
    }

    fn pool_budget_bytes(&self) -> u64 {
        self.pool.capacity_bytes() as u64
    }

    fn pool_in_use_bytes(&self) -> u64 {
        self.pool.stats().in_use_bytes as u64
    }

    fn pool_pinned(&self) -> bool {
        self.pool.stats().pinned
    }

    fn pool_wait_ns(&self) -> u64 {
        self.pool.stats().wait_time.as_nanos() as u64
    }

    fn pool_reserve_bytes(&self, len: u64) -> u64 {
        pool_reserve_bytes(len, self.pool.capacity_bytes() as u64)
    }

    fn open(
        &self,
        path: &Path,
        len_bytes: u64,
        create: bool,
    ) -> std::result::Result<FileNo, IoFault> {
        let mode = if create {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| IoFault::from_io(&e))?;
            }
            OpenMode::CreateReadWrite
        } else {
            OpenMode::ReadWrite
        };
        let id = self.engine.open(path, mode).map_err(|e| fault(&e))?;
        if create {
            self.engine
                .preallocate(id, len_bytes)
                .map_err(|e| fault(&e))?;
        } else {
            let have = self.engine.file_len(id).map_err(|e| fault(&e))?;
            if have < len_bytes {
                let msg = format!(
                    "{} holds {have} bytes, the layout needs {len_bytes}",
                    path.display()
                );
                return Err(IoFault::new(FaultKind::Short, msg));
            }
        }
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        files.push(id);
        Ok(FileNo(files.len() - 1))
    }

    fn submit_read(
        &self,
        file: FileNo,
        offset: u64,
        buf: AlignedBuf,
    ) -> std::result::Result<Request, IoFault> {
        Ok(self.engine.read(self.id(file), offset, buf))
    }

    fn submit_write(
        &self,
        file: FileNo,
        offset: u64,
        buf: AlignedBuf,
    ) -> std::result::Result<Request, IoFault> {
        Ok(self.engine.write(self.id(file), offset, buf))
    }

    fn is_done(&self, req: &Request) -> bool {
        req.is_done()
    }

    fn wait(&self, req: Request) -> std::result::Result<AlignedBuf, IoFault> {
        req.wait().map_err(|e| fault(&e))
    }

    fn sync(&self, file: FileNo) -> std::result::Result<(), IoFault> {
        self.engine.fdatasync(self.id(file)).map_err(|e| fault(&e))
    }

    fn replace_file(&self, path: &Path, bytes: &[u8]) -> std::result::Result<(), IoFault> {
        replace_file(path, bytes).map_err(|e| IoFault::from_io(&e))
    }

    fn read_file(&self, path: &Path) -> std::result::Result<Option<Vec<u8>>, IoFault> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IoFault::from_io(&e)),
        }
    }
}

/// Budget bytes zinf-aio's pool takes for `len`: 2 MiB granules from 2 MiB up, else 4 KiB.
pub fn pool_reserve_bytes(len: u64, capacity_bytes: u64) -> u64 {
    let huge = zinf_aio::HUGE_PAGE_BYTES as u64;
    let page = zinf_aio::PAGE_BYTES as u64;
    if len >= huge && len.div_ceil(huge) * huge <= capacity_bytes {
        len.div_ceil(huge) * huge
    } else {
        len.max(1).div_ceil(page) * page
    }
}

/// Write new, fsync, rename over, fsync the directory: after a crash the file is old or new.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".new");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
