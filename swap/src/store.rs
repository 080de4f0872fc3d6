//! The tiered tensor store: shards by stable name in a few preallocated extent files, every chunk
//! checksummed, committed by atomically replacing the manifest. Two modes, chosen at `create`:
//!
//! - Double-buffered (default, 2x disk): an A/B slot per shard. A crash at any instant leaves the
//!   last committed version readable: writes only ever touch the slot that is not live, and the
//!   live slot flips only in a durable manifest.
//! - Single-slot (`StoreConfig::double_buffered(false)`, 1x disk): writes go in place. Before the
//!   first write after a commit (or create/open) the manifest is durably marked dirty; a commit
//!   syncs the data and writes a clean one. A crash between the two is detected, not survived:
//!   `open` refuses the store with `SwapError::Dirty`, and `rollback` cannot restore old bytes.
//!
//! Requests are asynchronous (`read_begin`/`wait_read`, `write_begin`/`wait_write`) so the
//! caller (zinf's `tiers` queue) can keep the disk busy. The store moves bytes: dtypes are tags it never interprets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::blockio::{BlockIo, FileNo, IoFault};
use crate::error::{Op, Result, SwapError};
use crate::manifest::{lay_out, round_up, Extent, Manifest, ShardSpec, MANIFEST_NAME};

/// Where and how a store lays out its files.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// One extent file per path; chunks are striped over them.
    pub paths: Vec<PathBuf>,
    /// Largest chunk, in bytes (one pool buffer and one request each); a multiple of 4096.
    pub chunk_bytes: u64,
    /// Two slots per shard, so a crash keeps the last commit (true, the default); or one,
    /// written in place, so the store takes half the disk and a crash mid-step loses it.
    pub double_buffered: bool,
    /// `create` lays a fresh store over one already in the folder (false, the default:
    /// refused). For scratch stores whose owner already made sure nothing else uses the
    /// folder (a run's swap store, under its lock).
    pub overwrite: bool,
}

impl StoreConfig {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            chunk_bytes: 8 << 20,
            double_buffered: true,
            overwrite: false,
        }
    }

    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    pub fn chunk_bytes(mut self, chunk_bytes: u64) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }

    pub fn double_buffered(mut self, double_buffered: bool) -> Self {
        self.double_buffered = double_buffered;
        self
    }

    fn slots_per_shard(&self) -> u8 {
        if self.double_buffered {
            2
        } else {
            1
        }
    }
}

/// Bytes the extent files of a store of `specs` laid out by `cfg` will take (the manifest aside),
/// so a caller can check free space before `Store::create`; `alignment` is the backend's
/// (`BlockIo::alignment`). Fails as `create` would on a layout it refuses.
pub fn disk_bytes_needed(specs: &[ShardSpec], cfg: &StoreConfig, alignment: u64) -> Result<u64> {
    Ok(disk_bytes_per_path(specs, cfg, alignment)?
        .iter()
        .map(|(_, b)| b)
        .sum())
}

/// Bytes the extent files of a store of `specs` laid out by `cfg` will take under each of
/// `cfg.paths`, in that order (what a free-space check compares with each drive's free space
/// before `Store::create`). Fails as `create` would on a layout it refuses.
pub fn disk_bytes_per_path(
    specs: &[ShardSpec],
    cfg: &StoreConfig,
    alignment: u64,
) -> Result<Vec<(PathBuf, u64)>> {
    let m = lay_out(
        specs,
        &cfg.paths,
        cfg.chunk_bytes,
        alignment,
        cfg.slots_per_shard(),
    )?;
    // One extent file per path, in order.
    Ok(cfg
        .paths
        .iter()
        .zip(&m.files)
        .map(|(p, f)| (p.clone(), f.len_bytes))
        .collect())
}

/// Byte and time counters of one store (one tier).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Time spent in `wait_read`/`wait_write`/`commit` waiting on the device.
    pub io_wait_ns: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Staged {
    Clean,
    InFlight,
    Written(Vec<u32>),
    Poisoned,
}

/// A shard's bytes in pool buffers, one per chunk.
pub struct ShardBuf<T> {
    chunks: Vec<T>,
    lens: Vec<usize>,
}

impl<T: std::ops::DerefMut<Target = [u8]>> ShardBuf<T> {
    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
    /// The data of chunk `i` (without alignment padding).
    pub fn chunk(&self, i: usize) -> &[u8] {
        &self.chunks[i][..self.lens[i]]
    }
    /// The data of chunk `i`, writable.
    pub fn chunk_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.chunks[i][..self.lens[i]]
    }
    /// Pool bytes the shard's buffers take (aligned chunk capacities, before any rounding
    /// the pool adds; see `BlockIo::pool_reserve_bytes`).
    pub fn buffer_lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.chunks.iter().map(|c| c.len())
    }
    /// Length of the shard in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.lens.iter().map(|&l| l as u64).sum()
    }
    /// Copies the shard out into `out` (which must be exactly the shard's length).
    pub fn copy_to(&self, out: &mut [u8]) {
        assert_eq!(out.len() as u64, self.len_bytes(), "copy_to length");
        let mut at = 0;
        for i in 0..self.chunks.len() {
            out[at..at + self.lens[i]].copy_from_slice(self.chunk(i));
            at += self.lens[i];
        }
    }
    /// Fills the shard from `data` (which must be exactly the shard's length).
    pub fn copy_from(&mut self, data: &[u8]) {
        assert_eq!(data.len() as u64, self.len_bytes(), "copy_from length");
        let mut at = 0;
        for i in 0..self.chunks.len() {
            let n = self.lens[i];
            self.chunk_mut(i).copy_from_slice(&data[at..at + n]);
            at += n;
        }
    }
    /// The shard as one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len_bytes() as usize];
        self.copy_to(&mut v);
        v
    }
}

/// A read in flight; finish it with `Store::wait_read`.
pub struct ReadHandle<P> {
    shard: usize,
    slot: usize,
    crcs: Vec<u32>,
    reqs: Vec<P>,
    lens: Vec<usize>,
}

/// A write in flight; finish it with `Store::wait_write`.
pub struct WriteHandle<P> {
    shard: usize,
    crcs: Vec<u32>,
    reqs: Vec<P>,
    lens: Vec<usize>,
}

/// The store over one backend (one tier).
pub struct Store<B: BlockIo> {
    io: B,
    manifest: Manifest,
    manifest_path: PathBuf,
    files: Vec<FileNo>,
    index: HashMap<String, usize>,
    staged: Vec<Staged>,
    /// Single-slot: whether the manifest on disk is the dirty one (a write may have begun).
    dirty_on_disk: bool,
    broken: Option<String>,
    counters: IoCounters,
}

impl<B: BlockIo> Store<B> {
    /// Lays out `specs` in fresh extent files and commits version 0 (every shard reads as zeros).
    /// Refuses to overwrite an existing store.
    pub fn create(io: B, cfg: &StoreConfig, specs: &[ShardSpec]) -> Result<Self> {
        let align = io.alignment() as u64;
        let slots = cfg.slots_per_shard();
        let manifest = lay_out(specs, &cfg.paths, cfg.chunk_bytes, align, slots)?;
        let manifest_path = cfg.paths[0].join(MANIFEST_NAME);
        let existing = io
            .read_file(&manifest_path)
            .map_err(|e| meta_err(Op::Manifest, &manifest_path, e))?;
        if existing.is_some() && !cfg.overwrite {
            return Err(SwapError::Config(format!(
                "a store already exists at {}; open it or remove it",
                manifest_path.display()
            )));
        }
        let mut files = Vec::new();
        for f in &manifest.files {
            let no = io
                .open(&f.path, f.len_bytes, true)
                .map_err(|e| meta_err(Op::Open, &f.path, e))?;
            files.push(no);
        }
        io.replace_file(&manifest_path, &manifest.encode())
            .map_err(|e| meta_err(Op::Manifest, &manifest_path, e))?;
        tracing::debug!(
            shards = specs.len(),
            files = files.len(),
            disk_bytes = manifest.disk_bytes(),
            double_buffered = cfg.double_buffered,
            "swap store laid out"
        );
        Ok(Self::assemble(io, manifest, manifest_path, files))
    }

    /// Opens the store whose manifest is in `first_path` (files laid out beside the manifest
    /// are looked for in `first_path`, wherever the store was created); with `verify`, reads
    /// every shard and
    /// checks every checksum before returning. A single-slot store that was being written when
    /// its process stopped is refused with `SwapError::Dirty`.
    pub fn open(io: B, first_path: &std::path::Path, verify: bool) -> Result<Self> {
        let manifest_path = first_path.join(MANIFEST_NAME);
        let bytes = io
            .read_file(&manifest_path)
            .map_err(|e| meta_err(Op::Manifest, &manifest_path, e))?
            .ok_or_else(|| SwapError::Manifest {
                path: manifest_path.clone(),
                reason: "not found".into(),
            })?;
        let mut manifest = Manifest::decode(&bytes, &manifest_path)?;
        // The files laid out in the manifest's own folder follow the folder: a store kept in
        // one folder can be copied or moved with it (files on other paths keep theirs).
        if let Some(home) = manifest
            .files
            .first()
            .and_then(|f| f.path.parent())
            .map(std::path::Path::to_path_buf)
        {
            for f in &mut manifest.files {
                if f.path.parent() == Some(home.as_path()) {
                    if let Some(name) = f.path.file_name() {
                        f.path = first_path.join(name);
                    }
                }
            }
        }
        if manifest.dirty {
            return Err(SwapError::Dirty {
                path: manifest_path,
            });
        }
        if manifest.alignment != io.alignment() as u64 {
            return Err(SwapError::Manifest {
                path: manifest_path,
                reason: format!("laid out for alignment {}", manifest.alignment),
            });
        }
        let mut files = Vec::new();
        for f in &manifest.files {
            let no = io
                .open(&f.path, f.len_bytes, false)
                .map_err(|e| meta_err(Op::Open, &f.path, e))?;
            files.push(no);
        }
        let mut store = Self::assemble(io, manifest, manifest_path, files);
        if verify {
            store.verify_all()?;
        }
        Ok(store)
    }

    fn assemble(io: B, manifest: Manifest, manifest_path: PathBuf, files: Vec<FileNo>) -> Self {
        let index = manifest
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let staged = vec![Staged::Clean; manifest.shards.len()];
        Self {
            io,
            manifest,
            manifest_path,
            files,
            index,
            staged,
            dirty_on_disk: false,
            broken: None,
            counters: IoCounters::default(),
        }
    }

    /// The backend (for its pool and counters).
    pub fn io(&self) -> &B {
        &self.io
    }

    /// The committed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether shards have A/B slots (a crash keeps the last commit) rather than one written in
    /// place (a crash mid-step leaves a store `open` refuses).
    pub fn double_buffered(&self) -> bool {
        self.manifest.double_buffered()
    }

    /// Byte and wait counters of this store.
    pub fn counters(&self) -> IoCounters {
        self.counters
    }

    /// Committed version of a shard.
    pub fn version(&self, name: &str) -> Result<u64> {
        Ok(self.manifest.shards[self.shard(name)?].version)
    }

    /// Length of a shard in bytes.
    pub fn len_bytes(&self, name: &str) -> Result<u64> {
        Ok(self.manifest.shards[self.shard(name)?].len_bytes)
    }

    /// Dtype tag of a shard.
    pub fn dtype(&self, name: &str) -> Result<&str> {
        Ok(&self.manifest.shards[self.shard(name)?].dtype)
    }

    /// The id of shard `name` (its index in the manifest, `0..shard_count()`), for callers
    /// that keep a table per shard.
    pub fn shard_id(&self, name: &str) -> Result<usize> {
        self.shard(name)
    }

    /// Number of shards in the store.
    pub fn shard_count(&self) -> usize {
        self.index.len()
    }

    /// The name of shard `id`.
    pub fn shard_name(&self, id: usize) -> &str {
        &self.manifest.shards[id].name
    }

    fn shard(&self, name: &str) -> Result<usize> {
        if let Some(why) = &self.broken {
            return Err(SwapError::Config(format!("store must be reopened: {why}")));
        }
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| SwapError::UnknownShard(name.into()))
    }

    /// Pool bytes the buffers of shard `id` reserve while checked out (each chunk padded to
    /// the alignment, then rounded as the pool does), for callers that account the pool.
    pub fn pool_reserve_bytes(&self, id: usize) -> u64 {
        let s = &self.manifest.shards[id];
        let align = self.manifest.alignment;
        s.slots[0]
            .iter()
            .map(|e| {
                self.io
                    .pool_reserve_bytes(round_up(e.len_bytes.max(1), align))
            })
            .sum()
    }

    /// Takes pool buffers for shard `name` (waits while the pool is exhausted).
    pub fn alloc(&self, name: &str) -> Result<ShardBuf<B::Buf>> {
        self.alloc_with(name, true)
            .map(|b| b.expect("a blocking alloc always returns buffers"))
    }

    /// Takes pool buffers for shard `name` if the pool has room now (`None` otherwise).
    pub fn try_alloc(&self, name: &str) -> Result<Option<ShardBuf<B::Buf>>> {
        self.alloc_with(name, false)
    }

    /// [`Store::try_alloc`] by shard id.
    pub fn try_alloc_id(&self, id: usize) -> Result<Option<ShardBuf<B::Buf>>> {
        self.alloc_at(id, false)
    }

    fn alloc_with(&self, name: &str, block: bool) -> Result<Option<ShardBuf<B::Buf>>> {
        self.alloc_at(self.shard(name)?, block)
    }

    fn alloc_at(&self, id: usize, block: bool) -> Result<Option<ShardBuf<B::Buf>>> {
        let name = self.manifest.shards[id].name.as_str();
        let s = &self.manifest.shards[id];
        let align = self.manifest.alignment;
        let mut chunks = Vec::new();
        let mut lens = Vec::new();
        for e in &s.slots[0] {
            let padded = round_up(e.len_bytes.max(1), align) as usize;
            if padded as u64 > self.io.pool_budget_bytes() {
                return Err(SwapError::Config(format!(
                    "chunk of {padded} bytes exceeds the pool budget of {} bytes",
                    self.io.pool_budget_bytes()
                )));
            }
            let buf = if block {
                self.io.alloc(padded).map_err(|source| SwapError::Io {
                    op: Op::Alloc,
                    shard: name.into(),
                    file: PathBuf::new(),
                    offset: 0,
                    len: padded as u64,
                    source,
                })?
            } else {
                match self.io.try_alloc(padded) {
                    Some(b) => b,
                    None => return Ok(None),
                }
            };
            chunks.push(buf);
            lens.push(e.len_bytes as usize);
        }
        Ok(Some(ShardBuf { chunks, lens }))
    }
}

pub(crate) fn meta_err(op: Op, path: &std::path::Path, source: IoFault) -> SwapError {
    SwapError::Io {
        op,
        shard: String::new(),
        file: path.to_path_buf(),
        offset: 0,
        len: 0,
        source,
    }
}

impl<B: BlockIo> Store<B> {
    /// The slot staged writes of shard `i` go to: the non-live one, or the only one.
    fn staged_slot(&self, i: usize) -> usize {
        let s = &self.manifest.shards[i];
        if self.manifest.double_buffered() {
            1 - s.live as usize
        } else {
            0
        }
    }

    /// Single-slot: durably marks the manifest dirty before the first in-place write since the
    /// last commit, so a crash in the middle of the writes is detected at `open`. Nothing has
    /// been written when this fails, so the store stays usable.
    fn mark_dirty(&mut self) -> Result<()> {
        if self.manifest.double_buffered() || self.dirty_on_disk {
            return Ok(());
        }
        let start = Instant::now();
        let mut dirty = self.manifest.clone();
        dirty.dirty = true;
        let res = self.io.replace_file(&self.manifest_path, &dirty.encode());
        self.counters.io_wait_ns += start.elapsed().as_nanos() as u64;
        res.map_err(|e| meta_err(Op::Manifest, &self.manifest_path, e))?;
        self.dirty_on_disk = true;
        Ok(())
    }

    fn io_err(&self, op: Op, shard: usize, e: &Extent, source: IoFault) -> SwapError {
        SwapError::Io {
            op,
            shard: self.manifest.shards[shard].name.clone(),
            file: self.manifest.files[e.file].path.clone(),
            offset: e.offset,
            len: e.len_bytes,
            source,
        }
    }

    /// Starts reading shard `name` into `buf` (from `alloc`): the staged version if one was
    /// written since the last commit, else the committed one.
    pub fn read_begin(
        &mut self,
        name: &str,
        buf: ShardBuf<B::Buf>,
    ) -> Result<ReadHandle<B::Pending>> {
        let i = self.shard(name)?;
        self.read_begin_id(i, buf)
    }

    /// [`Store::read_begin`] by shard id ([`Store::shard_id`]), for callers that resolved
    /// their names once. Panics on an id out of range (a programmer error).
    pub fn read_begin_id(
        &mut self,
        i: usize,
        buf: ShardBuf<B::Buf>,
    ) -> Result<ReadHandle<B::Pending>> {
        let s = &self.manifest.shards[i];
        let (slot, crcs) = match &self.staged[i] {
            Staged::Clean => (s.live as usize, s.crc32c.clone()),
            Staged::Written(c) => (self.staged_slot(i), c.clone()),
            Staged::InFlight | Staged::Poisoned => return Err(SwapError::Poisoned(s.name.clone())),
        };
        assert_eq!(
            buf.lens.len(),
            s.slots[slot].len(),
            "buffer from another shard"
        );
        let mut reqs = Vec::with_capacity(buf.chunks.len());
        for (chunk, e) in buf.chunks.into_iter().zip(&s.slots[slot]) {
            match self.io.submit_read(self.files[e.file], e.offset, chunk) {
                Ok(p) => reqs.push(p),
                Err(f) => {
                    let err = self.io_err(Op::Read, i, e, f);
                    self.drain(reqs);
                    return Err(err);
                }
            }
        }
        Ok(ReadHandle {
            shard: i,
            slot,
            crcs,
            reqs,
            lens: buf.lens,
        })
    }

    fn drain(&self, reqs: Vec<B::Pending>) {
        for r in reqs {
            let _ = self.io.wait(r);
        }
    }

    /// Finishes a read: every chunk's checksum is checked before the bytes are handed out.
    pub fn wait_read(&mut self, h: ReadHandle<B::Pending>) -> Result<ShardBuf<B::Buf>> {
        let start = Instant::now();
        let mut chunks = Vec::with_capacity(h.reqs.len());
        let mut first_err = None;
        let extents = &self.manifest.shards[h.shard].slots[h.slot];
        for (k, req) in h.reqs.into_iter().enumerate() {
            let e = &extents[k];
            match self.io.wait(req) {
                Ok(buf) if first_err.is_none() => {
                    self.counters.bytes_read += buf.len() as u64;
                    chunks.push(buf);
                }
                Ok(_) => {}
                Err(f) => {
                    if first_err.is_none() {
                        first_err = Some(self.io_err(Op::Read, h.shard, e, f));
                    }
                }
            }
        }
        self.counters.io_wait_ns += start.elapsed().as_nanos() as u64;
        if first_err.is_none() {
            // Every chunk arrived: check them all (on several threads when large).
            let datas: Vec<&[u8]> = chunks.iter().zip(&h.lens).map(|(c, &l)| &c[..l]).collect();
            let actual = crate::checksum::crcs(&datas);
            if let Some(k) = (0..actual.len()).find(|&k| actual[k] != h.crcs[k]) {
                let e = &extents[k];
                first_err = Some(SwapError::Checksum {
                    shard: self.manifest.shards[h.shard].name.clone(),
                    file: self.manifest.files[e.file].path.clone(),
                    offset: e.offset,
                    len: e.len_bytes,
                    expected: h.crcs[k],
                    actual: actual[k],
                });
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(ShardBuf {
                chunks,
                lens: h.lens,
            }),
        }
    }

    /// Starts writing `buf` as the new (staged) version of shard `name`. It becomes the committed
    /// version at the next successful `commit`. Double-buffered, the old version stays on disk
    /// until then; single-slot, it is overwritten now (after the manifest is marked dirty), so a
    /// read of this shard still in flight may fail its checksum (it never returns mixed bytes).
    pub fn write_begin(
        &mut self,
        name: &str,
        buf: ShardBuf<B::Buf>,
    ) -> Result<WriteHandle<B::Pending>> {
        let i = self.shard(name)?;
        self.write_begin_id(i, buf)
    }

    /// [`Store::write_begin`] by shard id ([`Store::shard_id`]). Panics on an id out of
    /// range (a programmer error).
    pub fn write_begin_id(
        &mut self,
        i: usize,
        mut buf: ShardBuf<B::Buf>,
    ) -> Result<WriteHandle<B::Pending>> {
        let s = &self.manifest.shards[i];
        if buf.len_bytes() != s.len_bytes || buf.lens.len() != s.slots[0].len() {
            return Err(SwapError::Length {
                shard: s.name.clone(),
                expected: s.len_bytes,
                actual: buf.len_bytes(),
            });
        }
        if self.staged[i] == Staged::InFlight {
            return Err(SwapError::Poisoned(s.name.clone()));
        }
        self.mark_dirty()?;
        let slot = self.staged_slot(i);
        for (chunk, &len) in buf.chunks.iter_mut().zip(&buf.lens) {
            chunk[len..].fill(0);
        }
        let datas: Vec<&[u8]> = buf
            .chunks
            .iter()
            .zip(&buf.lens)
            .map(|(c, &l)| &c[..l])
            .collect();
        let crcs = crate::checksum::crcs(&datas);
        self.staged[i] = Staged::InFlight;
        let mut reqs = Vec::with_capacity(buf.chunks.len());
        let extents = &self.manifest.shards[i].slots[slot];
        for (chunk, e) in buf.chunks.into_iter().zip(extents) {
            self.counters.bytes_written += chunk.len() as u64;
            match self.io.submit_write(self.files[e.file], e.offset, chunk) {
                Ok(p) => reqs.push(p),
                Err(f) => {
                    let err = self.io_err(Op::Write, i, e, f);
                    self.drain(reqs);
                    self.staged[i] = Staged::Poisoned;
                    return Err(err);
                }
            }
        }
        Ok(WriteHandle {
            shard: i,
            crcs,
            reqs,
            lens: buf.lens,
        })
    }

    /// Whether every chunk of a write has completed (`wait_write` would not block).
    pub fn write_done(&self, h: &WriteHandle<B::Pending>) -> bool {
        h.reqs.iter().all(|r| self.io.is_done(r))
    }

    /// Finishes a write and hands the buffers back. On failure the shard is poisoned: it must be
    /// written again (or the staged state rolled back) before it is read or committed.
    pub fn wait_write(&mut self, h: WriteHandle<B::Pending>) -> Result<ShardBuf<B::Buf>> {
        let start = Instant::now();
        let mut chunks = Vec::with_capacity(h.reqs.len());
        let mut first_err = None;
        let extents = &self.manifest.shards[h.shard].slots[self.staged_slot(h.shard)];
        for (k, req) in h.reqs.into_iter().enumerate() {
            match self.io.wait(req) {
                Ok(buf) => chunks.push(buf),
                Err(f) if first_err.is_none() => {
                    first_err = Some(self.io_err(Op::Write, h.shard, &extents[k], f));
                }
                Err(_) => {}
            }
        }
        self.counters.io_wait_ns += start.elapsed().as_nanos() as u64;
        match first_err {
            Some(e) => {
                self.staged[h.shard] = Staged::Poisoned;
                Err(e)
            }
            None => {
                self.staged[h.shard] = Staged::Written(h.crcs);
                Ok(ShardBuf {
                    chunks,
                    lens: h.lens,
                })
            }
        }
    }
}

impl<B: BlockIo> Store<B> {
    /// Makes every staged write durable and the new committed version, atomically: data files
    /// are synced first, then a new manifest (double-buffered: naming the flipped slots;
    /// single-slot: clean) replaces the old one. If this fails the previous version stays
    /// committed on disk (single-slot: the dirty manifest stays, and `open` refuses the store);
    /// after a failed sync or manifest write the store refuses further work until it is
    /// reopened (the disk's state is unknown).
    pub fn commit(&mut self) -> Result<u64> {
        if let Some(why) = &self.broken {
            return Err(SwapError::Config(format!("store must be reopened: {why}")));
        }
        for (i, st) in self.staged.iter().enumerate() {
            if matches!(st, Staged::InFlight | Staged::Poisoned) {
                return Err(SwapError::Poisoned(self.manifest.shards[i].name.clone()));
            }
        }
        let start = Instant::now();
        for (k, &f) in self.files.iter().enumerate() {
            if let Err(e) = self.io.sync(f) {
                let path = self.manifest.files[k].path.clone();
                self.broken = Some(format!("sync of {} failed", path.display()));
                return Err(meta_err(Op::Sync, &path, e));
            }
        }
        let mut next = self.manifest.clone();
        next.commit += 1;
        let flip = next.double_buffered();
        for (s, st) in next.shards.iter_mut().zip(&self.staged) {
            if let Staged::Written(crcs) = st {
                if flip {
                    s.live = 1 - s.live;
                }
                s.version += 1;
                s.crc32c = crcs.clone();
            }
        }
        let res = self.io.replace_file(&self.manifest_path, &next.encode());
        self.counters.io_wait_ns += start.elapsed().as_nanos() as u64;
        if let Err(e) = res {
            self.broken = Some("manifest replace failed".into());
            return Err(meta_err(Op::Manifest, &self.manifest_path, e));
        }
        self.manifest = next;
        self.staged.fill(Staged::Clean);
        self.dirty_on_disk = false;
        Ok(self.manifest.commit)
    }

    /// Drops every staged (uncommitted) write: reads see the committed version again; a
    /// caller's host copies of shards (a cache) must be dropped too. Single-slot, the committed bytes
    /// of a shard written since the last commit are gone: the store then refuses further work
    /// (as after a failed commit); with nothing written, this does nothing.
    pub fn rollback(&mut self) {
        assert!(
            !self.staged.contains(&Staged::InFlight),
            "rollback with writes in flight"
        );
        if !self.manifest.double_buffered() {
            if let Some(i) = self.staged.iter().position(|st| *st != Staged::Clean) {
                let name = &self.manifest.shards[i].name;
                self.broken = Some(format!(
                    "rollback of a single-slot store cannot restore shard `{name}`, \
                     overwritten in place since the last commit"
                ));
            }
        }
        self.staged.fill(Staged::Clean);
    }

    /// Number of commits of this store so far.
    pub fn commit_count(&self) -> u64 {
        self.manifest.commit
    }

    /// Reads every shard and checks every checksum (of the version a read would return).
    pub fn verify_all(&mut self) -> Result<()> {
        let names: Vec<String> = self.index.keys().cloned().collect();
        for name in names {
            self.read_vec(&name)?;
        }
        Ok(())
    }

    /// Reads a whole shard into a vector (allocates pool buffers for the duration).
    pub fn read_vec(&mut self, name: &str) -> Result<Vec<u8>> {
        let buf = self.alloc(name)?;
        let h = self.read_begin(name, buf)?;
        Ok(self.wait_read(h)?.to_vec())
    }

    /// Writes a whole shard from a slice (staged until the next commit).
    pub fn write_slice(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let len = self.len_bytes(name)?;
        if data.len() as u64 != len {
            return Err(SwapError::Length {
                shard: name.into(),
                expected: len,
                actual: data.len() as u64,
            });
        }
        let mut buf = self.alloc(name)?;
        buf.copy_from(data);
        let h = self.write_begin(name, buf)?;
        self.wait_write(h).map(drop)
    }

    /// Names of all shards, in layout order.
    pub fn shard_names(&self) -> impl Iterator<Item = &str> {
        self.manifest.shards.iter().map(|s| s.name.as_str())
    }
}
