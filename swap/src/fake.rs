//! A seeded fake block device for tests: in-memory files with a volatile page cache and a
//! durable image, and injectable faults — short reads, EIO, ENOSPC, torn writes (a prefix of the
//! block lands), bit flips, and power cuts at a chosen operation. It is a test double of the
//! disk only; it is never used on the real path. The same seed gives the same faults.
//!
//! Crash model: a completed write is visible to reads at once but durable only after `sync`;
//! `power_cut` keeps, drops or tears (keeps a prefix of) each unsynced write at random.
//! `replace_file` is atomic and durable, as write-fsync-rename-fsync(dir) is on a real disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use zinf_aio::{AlignedBuf, BufferPool};

use crate::blockio::{BlockIo, FaultKind, FileNo, IoFault};

/// Probabilities of each injected fault, per operation, and an optional power cut.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub read_eio: f64,
    pub read_short: f64,
    pub read_bit_flip: f64,
    pub write_eio_torn: f64,
    pub write_enospc: f64,
    pub sync_eio: f64,
    pub manifest_enospc: f64,
    /// Every operation after this many fails with `FaultKind::Crashed` and has no effect.
    pub crash_after_ops: Option<u64>,
    /// A slow disk: every read and write takes at least this long.
    pub op_delay: std::time::Duration,
}

#[derive(Default)]
struct FakeFile {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
}

struct DiskState {
    files: Vec<(PathBuf, FakeFile)>,
    small: HashMap<PathBuf, Vec<u8>>,
    rng: u64,
    ops: u64,
    faults: Faults,
}

/// The shared disk: it outlives the stores built on it, so a test can cut power and reopen.
#[derive(Clone)]
pub struct FakeDisk(Arc<Mutex<DiskState>>);

impl FakeDisk {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(DiskState {
            files: Vec::new(),
            small: HashMap::new(),
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            ops: 0,
            faults: Faults::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panicking test thread leaves no half-applied state worth refusing.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the fault plan; the operation counter restarts at zero.
    pub fn set_faults(&self, faults: Faults) {
        let mut d = self.lock();
        d.faults = faults;
        d.ops = 0;
    }

    /// Power cut: each unsynced write is kept, lost, or torn (a random prefix lands); faults are
    /// cleared so the next store opens a healthy disk.
    pub fn power_cut(&self) {
        let mut d = self.lock();
        let DiskState { files, rng, .. } = &mut *d;
        for (_, f) in files.iter_mut() {
            for (offset, data) in std::mem::take(&mut f.unsynced) {
                let keep = match next(rng) % 3 {
                    0 => 0,
                    1 => data.len(),
                    _ => (next(rng) % data.len().max(1) as u64) as usize,
                };
                let at = offset as usize;
                f.durable[at..at + keep].copy_from_slice(&data[..keep]);
            }
            f.current = f.durable.clone();
        }
        d.faults = Faults::default();
    }

    /// Flips one bit of the durable and visible image of the file at `path`.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        let mut d = self.lock();
        let f = d.files.iter_mut().find(|(p, _)| p == path).map(|(_, f)| f);
        let f = f.expect("flip_bit: no such fake file");
        f.current[offset as usize] ^= 1 << (bit % 8);
        f.durable[offset as usize] ^= 1 << (bit % 8);
    }
}

fn next(state: &mut u64) -> u64 {
    // splitmix64: tiny, seedable, good enough to pick faults.
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn chance(state: &mut u64, p: f64) -> bool {
    p > 0.0 && ((next(state) >> 11) as f64 / (1u64 << 53) as f64) < p
}

impl DiskState {
    /// Counts one operation; fails it when the power is (or just went) out.
    fn tick(&mut self) -> Result<(), IoFault> {
        self.ops += 1;
        match self.faults.crash_after_ops {
            Some(n) if self.ops > n => Err(IoFault::new(FaultKind::Crashed, "power cut")),
            _ => Ok(()),
        }
    }
}

/// The fake backend: one view of a `FakeDisk` with its own buffer pool.
pub struct FakeIo {
    disk: FakeDisk,
    pool: BufferPool,
}

impl FakeIo {
    /// A view of `disk` with its own (unpinned) zinf-aio pool of `pool_budget_bytes`.
    pub fn new(disk: &FakeDisk, pool_budget_bytes: u64) -> Self {
        // The fake is a test double: a pool that cannot be mapped is a broken test host.
        let pool = BufferPool::new(pool_budget_bytes as usize, false).expect("fake pool");
        Self {
            disk: disk.clone(),
            pool,
        }
    }

    /// Highest number of pool bytes ever checked out at once.
    pub fn pool_peak_bytes(&self) -> u64 {
        self.pool.stats().peak_bytes as u64
    }

    /// The zinf-aio pool behind this fake (its stats count waits).
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Pool bytes checked out now.
    pub fn pool_used_bytes(&self) -> u64 {
        self.pool.stats().in_use_bytes as u64
    }

    /// Sleeps the configured `op_delay` (outside the disk lock).
    fn slow_disk(&self) {
        let delay = self.disk.lock().faults.op_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    fn do_read(
        &self,
        file: FileNo,
        offset: u64,
        mut buf: AlignedBuf,
    ) -> Result<AlignedBuf, IoFault> {
        self.slow_disk();
        let mut d = self.disk.lock();
        d.tick()?;
        let f = &d.faults;
        let (eio, short, flip) = (f.read_eio, f.read_short, f.read_bit_flip);
        if chance(&mut d.rng, eio) {
            return Err(IoFault::new(FaultKind::Eio, "injected EIO on read"));
        }
        let len = buf.len();
        let at = offset as usize;
        if chance(&mut d.rng, short) || at + len > d.files[file.0].1.current.len() {
            return Err(IoFault::new(FaultKind::Short, "read past end of file"));
        }
        buf.copy_from_slice(&d.files[file.0].1.current[at..at + len]);
        if len > 0 && chance(&mut d.rng, flip) {
            let i = (next(&mut d.rng) % len as u64) as usize;
            buf[i] ^= 1 << (next(&mut d.rng) % 8);
        }
        Ok(buf)
    }

    fn do_write(&self, file: FileNo, offset: u64, buf: AlignedBuf) -> Result<AlignedBuf, IoFault> {
        self.slow_disk();
        let mut d = self.disk.lock();
        d.tick()?;
        let (torn, nospc) = (d.faults.write_eio_torn, d.faults.write_enospc);
        let at = offset as usize;
        if at + buf.len() > d.files[file.0].1.current.len() {
            return Err(IoFault::new(
                FaultKind::NoSpace,
                "write past preallocated end",
            ));
        }
        if chance(&mut d.rng, nospc) {
            return Err(IoFault::new(FaultKind::NoSpace, "injected ENOSPC"));
        }
        let mut land = buf.len();
        let fault = chance(&mut d.rng, torn);
        if fault {
            land = (next(&mut d.rng) % buf.len().max(1) as u64) as usize;
        }
        let f = &mut d.files[file.0].1;
        f.current[at..at + land].copy_from_slice(&buf[..land]);
        f.unsynced.push((offset, buf[..land].to_vec()));
        if fault {
            return Err(IoFault::new(FaultKind::Eio, "injected torn write"));
        }
        Ok(buf)
    }
}

impl BlockIo for FakeIo {
    type Buf = AlignedBuf;
    type Pending = Result<AlignedBuf, IoFault>;

    fn alignment(&self) -> usize {
        4096
    }

    fn alloc(&self, len: usize) -> Result<AlignedBuf, IoFault> {
        self.pool
            .alloc(len)
            .map_err(|e| IoFault::new(FaultKind::Other, e.to_string()))
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
        false
    }

    fn pool_wait_ns(&self) -> u64 {
        self.pool.stats().wait_time.as_nanos() as u64
    }

    fn pool_reserve_bytes(&self, len: u64) -> u64 {
        crate::aio_backend::pool_reserve_bytes(len, self.pool.capacity_bytes() as u64)
    }

    fn open(&self, path: &Path, len_bytes: u64, create: bool) -> Result<FileNo, IoFault> {
        let mut d = self.disk.lock();
        d.tick()?;
        if let Some(i) = d.files.iter().position(|(p, _)| p == path) {
            return Ok(FileNo(i));
        }
        if !create {
            // Classified by zinf-aio like a real failed open (ENOENT).
            let kind = zinf_aio::ErrorKind::of_io(&std::io::ErrorKind::NotFound.into());
            return Err(IoFault::new(kind.into(), "no such fake file"));
        }
        let zeros = vec![0u8; len_bytes as usize];
        let f = FakeFile {
            current: zeros.clone(),
            durable: zeros,
            unsynced: Vec::new(),
        };
        d.files.push((path.to_path_buf(), f));
        Ok(FileNo(d.files.len() - 1))
    }

    fn submit_read(
        &self,
        file: FileNo,
        offset: u64,
        buf: AlignedBuf,
    ) -> Result<Self::Pending, IoFault> {
        Ok(self.do_read(file, offset, buf))
    }

    fn submit_write(
        &self,
        file: FileNo,
        offset: u64,
        buf: AlignedBuf,
    ) -> Result<Self::Pending, IoFault> {
        Ok(self.do_write(file, offset, buf))
    }

    fn is_done(&self, _req: &Self::Pending) -> bool {
        true // the fake completes every request at submission
    }

    fn wait(&self, req: Self::Pending) -> Result<AlignedBuf, IoFault> {
        req
    }

    fn sync(&self, file: FileNo) -> Result<(), IoFault> {
        let mut d = self.disk.lock();
        d.tick()?;
        let eio = d.faults.sync_eio;
        if chance(&mut d.rng, eio) {
            return Err(IoFault::new(FaultKind::Eio, "injected EIO on fsync"));
        }
        let f = &mut d.files[file.0].1;
        for (offset, data) in std::mem::take(&mut f.unsynced) {
            let at = offset as usize;
            f.durable[at..at + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn replace_file(&self, path: &Path, bytes: &[u8]) -> Result<(), IoFault> {
        let mut d = self.disk.lock();
        d.tick()?;
        let nospc = d.faults.manifest_enospc;
        if chance(&mut d.rng, nospc) {
            return Err(IoFault::new(
                FaultKind::NoSpace,
                "injected ENOSPC on manifest",
            ));
        }
        d.small.insert(path.to_path_buf(), bytes.to_vec());
        Ok(())
    }

    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, IoFault> {
        let mut d = self.disk.lock();
        d.tick()?;
        Ok(d.small.get(path).cloned())
    }
}
