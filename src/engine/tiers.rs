//! The engine's side of the swap store: shard names, optimizer units, and the bounded queue of
//! store requests in flight (parameter prefetches, optimizer-state prefetches, write-behinds).
//!
//! Every pool allocation goes through [`SwapQueue::alloc`], which never waits on buffers this
//! same thread holds: when the pool is full it first finishes the oldest write-behind, then
//! gives up the furthest prefetch, and only when it holds nothing left to give back does it
//! report the pool as too small (a config error), instead of waiting forever.
//! This file does not decide *what* to prefetch; the engine's loops do.

use super::partition::Partition;
use super::timeline::{Overlap, Timeline, Track};
use super::EngineError;
use crate::model::ParamLayout;
use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;
use zinf_swap::{BlockIo, ReadHandle, ShardBuf, ShardSpec, Store, WriteHandle};

/// Names of the optimizer state tensors of a unit, in order (master, m, v).
pub const OPT_STATES: [&str; 3] = ["fp32", "exp_avg", "exp_avg_sq"];

/// One optimizer unit: a slice of one parameter group of at most `sub_group_size` elements.
/// Units are what the optimizer reads, updates and writes in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Index of the group in layout order.
    pub group: usize,
    /// Element range in the flat parameter array.
    pub range: Range<usize>,
}

/// Splits the partition this rank owns of every group into units of at most
/// `sub_group_size` elements (layout order).
pub fn units(layout: &ParamLayout, part: Partition, sub_group_size: u64) -> Vec<Unit> {
    let step = sub_group_size.max(1) as usize;
    let mut v = Vec::new();
    for (gi, (_, g)) in layout.groups.iter().enumerate() {
        let r = part.owned(g.clone());
        let mut s = r.start;
        while s < r.end {
            let e = (s + step).min(r.end);
            v.push(Unit {
                group: gi,
                range: s..e,
            });
            s = e;
        }
    }
    v
}

/// Store name of group `gi`'s 16-bit (or fp32) parameters.
pub fn param_shard(gi: usize) -> String {
    format!("param.g{gi}")
}

/// Store name of optimizer state `t` (index into [`OPT_STATES`]) of unit `u`.
pub fn opt_shard(u: usize, t: usize) -> String {
    format!("opt.u{u}.{}", OPT_STATES[t])
}

/// The shards of the parameters of every group.
pub fn param_specs(layout: &ParamLayout, elem_bytes: usize, dtype: &str) -> Vec<ShardSpec> {
    layout
        .groups
        .iter()
        .enumerate()
        .map(|(gi, (_, r))| ShardSpec::new(param_shard(gi), (r.len() * elem_bytes) as u64, dtype))
        .collect()
}

/// The shards of the optimizer state of every unit.
pub fn opt_specs(units: &[Unit]) -> Vec<ShardSpec> {
    let mut v = Vec::with_capacity(units.len() * 3);
    for (u, unit) in units.iter().enumerate() {
        for t in 0..3 {
            v.push(ShardSpec::new(
                opt_shard(u, t),
                unit.range.len() as u64 * 4,
                "f32",
            ));
        }
    }
    v
}

/// What the queue did, for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounters {
    /// Parameter reads that were already in flight when the group was needed.
    pub param_prefetch_hits: u64,
    /// Parameter reads started on demand.
    pub param_misses: u64,
    pub opt_prefetch_hits: u64,
    pub opt_misses: u64,
    /// Prefetches given up to make room in the pool.
    pub prefetches_dropped: u64,
    /// Time the compute thread was blocked on reads and writes.
    pub io_wait_ns: u64,
    /// Time spent making room in the pool (finishing writes early, dropping prefetches).
    pub pool_wait_ns: u64,
}

/// Where the queue records spans: the trace (optional) and the overlap account (always).
pub struct Recorder {
    pub timeline: Timeline,
    pub overlap: Overlap,
}

impl Recorder {
    /// Records one request (`verb` "read" or "write" of shard `name`) that was in flight from
    /// `start` to `end`; its label is built only when a trace is being written.
    fn io(&mut self, verb: &str, name: &str, bytes: u64, start: Instant, end: Instant) {
        if self.timeline.is_enabled() {
            self.timeline
                .io(&format!("{verb} {name}"), bytes, start, end);
        }
        self.overlap.io(start, end);
    }
}

/// What a read brings in: one group's parameters, or one optimizer unit's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shards {
    /// Group `gi`'s parameter shard.
    Param(usize),
    /// Unit `u`'s three state shards (master, m, v).
    Opt(usize),
}

impl Shards {
    /// Index of the queue of reads of this kind.
    fn kind(self) -> usize {
        match self {
            Shards::Param(_) => 0,
            Shards::Opt(_) => 1,
        }
    }

    fn names(self) -> Vec<String> {
        match self {
            Shards::Param(gi) => vec![param_shard(gi)],
            Shards::Opt(u) => (0..3).map(|t| opt_shard(u, t)).collect(),
        }
    }
}

/// How a read gets its pool buffers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefetch {
    /// A demand read: make room whatever it takes (see `alloc`).
    No,
    /// Only if the pool has room now.
    IfRoom,
    /// The read needed next: finish writes in flight to make room, but never drop reads.
    Next,
}

type Pending<B> = <B as BlockIo>::Pending;
type Buf<B> = ShardBuf<<B as BlockIo>::Buf>;

struct Read<B: BlockIo> {
    what: Shards,
    handles: Vec<ReadHandle<Pending<B>>>,
    names: Vec<String>,
    bytes: u64,
    start: Instant,
}

struct Write<B: BlockIo> {
    name: String,
    handle: WriteHandle<Pending<B>>,
    bytes: u64,
    start: Instant,
}

/// Store requests in flight, each queue bounded.
pub struct SwapQueue<B: BlockIo> {
    /// Reads started ahead, per kind (parameters, optimizer state), oldest first.
    reads: [VecDeque<Read<B>>; 2],
    writes: VecDeque<Write<B>>,
    /// Writes held in the pool while `defer` is on, in order.
    deferred: VecDeque<(String, Buf<B>)>,
    defer: bool,
    max_writes: usize,
    pub counters: QueueCounters,
}

impl<B: BlockIo> SwapQueue<B> {
    /// `max_writes`: write-behinds kept in flight before the oldest is waited for.
    pub fn new(max_writes: usize) -> Self {
        SwapQueue {
            reads: [VecDeque::new(), VecDeque::new()],
            writes: VecDeque::new(),
            deferred: VecDeque::new(),
            defer: false,
            max_writes,
            counters: QueueCounters::default(),
        }
    }

    /// Groups whose parameter reads are in flight.
    pub fn param_reads_in_flight(&self) -> impl Iterator<Item = usize> + '_ {
        self.reads[0].iter().filter_map(|r| match r.what {
            Shards::Param(gi) => Some(gi),
            Shards::Opt(_) => None,
        })
    }

    /// Frees pool room this queue holds, cheapest first: send held writes, finish the oldest
    /// write, and, with `drop_reads`, give up the furthest prefetch (parameters first). False
    /// when nothing was left to free.
    fn make_room(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        drop_reads: bool,
    ) -> Result<bool, EngineError> {
        if !self.deferred.is_empty() {
            self.submit_deferred(store, usize::MAX)?;
            return Ok(true);
        }
        if !self.writes.is_empty() {
            self.wait_oldest_write(store, rec)?;
            return Ok(true);
        }
        if drop_reads {
            for k in 0..2 {
                if let Some(r) = self.reads[k].pop_back() {
                    self.counters.prefetches_dropped += 1;
                    self.drop_read(store, r);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Pool buffers for shard `name`, making room when the pool is full (see the file header).
    pub fn alloc(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        name: &str,
    ) -> Result<Buf<B>, EngineError> {
        let t = Instant::now();
        let res = loop {
            if let Some(b) = store.try_alloc(name)? {
                break Ok(b);
            }
            if !self.make_room(store, rec, true)? {
                break Err(EngineError::Config(format!(
                    "the pinned pool ({} bytes) cannot hold shard `{name}` ({} bytes) next to \
                     the buffers in use: raise zinf.pinned_memory_budget (or the offload \
                     buffer_count x buffer_size), or lower sub_group_size",
                    store.io().pool_budget_bytes(),
                    store.len_bytes(name)?
                )));
            }
        };
        let end = Instant::now();
        self.counters.pool_wait_ns += (end - t).as_nanos() as u64;
        if end - t > std::time::Duration::from_micros(50) {
            rec.timeline.span(Track::PoolWait, "make room", t, end);
        }
        res
    }

    /// Pool buffers for `name` holding `bytes` (exactly its length), written behind.
    pub fn write_bytes(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        let mut buf = self.alloc(store, rec, name)?;
        buf.copy_from(bytes);
        self.write(store, rec, name, buf)
    }

    fn drop_read(&mut self, store: &mut Store<B>, r: Read<B>) {
        for h in r.handles {
            let _ = store.wait_read(h);
        }
    }

    fn start_read(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        what: Shards,
        prefetch: Prefetch,
    ) -> Result<Option<Read<B>>, EngineError> {
        let names = what.names();
        for n in &names {
            self.wait_write_named(store, rec, n)?;
        }
        let mut bufs = Vec::with_capacity(names.len());
        for n in &names {
            let b = match prefetch {
                Prefetch::No => self.alloc(store, rec, n)?,
                Prefetch::IfRoom => match store.try_alloc(n)? {
                    Some(b) => b,
                    None => return Ok(None), // taken buffers go back to the pool on drop
                },
                // The read needed next goes before writes that only free memory.
                Prefetch::Next => loop {
                    if let Some(b) = store.try_alloc(n)? {
                        break b;
                    }
                    if !self.make_room(store, rec, false)? {
                        return Ok(None);
                    }
                },
            };
            bufs.push(b);
        }
        let start = Instant::now();
        let mut handles = Vec::with_capacity(names.len());
        let mut bytes = 0;
        for (n, b) in names.iter().zip(bufs) {
            bytes += b.len_bytes();
            match store.read_begin(n, b) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    for h in handles {
                        let _ = store.wait_read(h);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(Some(Read {
            what,
            handles,
            names,
            bytes,
            start,
        }))
    }

    fn finish_read(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        r: Read<B>,
    ) -> Result<Vec<Buf<B>>, EngineError> {
        let t = Instant::now();
        let mut out = Vec::with_capacity(r.handles.len());
        let mut first_err = None;
        for h in r.handles {
            match store.wait_read(h) {
                Ok(b) => out.push(b),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        let end = Instant::now();
        self.counters.io_wait_ns += (end - t).as_nanos() as u64;
        rec.io("read", &r.names[0], r.bytes, r.start, end);
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    /// Starts reading `what`: if the pool has room now, or, when `next` (it is needed next),
    /// after finishing writes that hold the room. True when the read is (or already was) in
    /// flight.
    pub fn prefetch(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        what: Shards,
        next: bool,
    ) -> Result<bool, EngineError> {
        if self.reads[what.kind()].iter().any(|r| r.what == what) {
            return Ok(true);
        }
        let how = if next {
            Prefetch::Next
        } else {
            Prefetch::IfRoom
        };
        match self.start_read(store, rec, what, how)? {
            Some(r) => {
                self.reads[what.kind()].push_back(r);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The shards of `what` (one buffer per shard, in name order): the prefetch in flight, or
    /// a read started now.
    pub fn read(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        what: Shards,
    ) -> Result<Vec<Buf<B>>, EngineError> {
        let queue = &mut self.reads[what.kind()];
        let hit = queue.iter().position(|r| r.what == what);
        let c = &mut self.counters;
        let (hits, misses) = match what {
            Shards::Param(_) => (&mut c.param_prefetch_hits, &mut c.param_misses),
            Shards::Opt(_) => (&mut c.opt_prefetch_hits, &mut c.opt_misses),
        };
        let r = match hit {
            Some(i) => {
                *hits += 1;
                queue.remove(i).expect("position is in range")
            }
            None => {
                *misses += 1;
                self.start_read(store, rec, what, Prefetch::No)?
                    .expect("a demand read always starts")
            }
        };
        self.finish_read(store, rec, r)
    }

    /// Writes `buf` as the new version of `name` behind the caller's back. While writes are
    /// deferred (see [`SwapQueue::defer_writes`]) the buffer waits in the pool; otherwise at
    /// most `max_writes` stay in flight.
    pub fn write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        name: &str,
        buf: Buf<B>,
    ) -> Result<(), EngineError> {
        self.wait_write_named(store, rec, name)?;
        if self.defer {
            self.deferred.push_back((name.to_string(), buf));
            return Ok(());
        }
        self.submit_write(store, rec, name, buf)
    }

    fn submit_write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        name: &str,
        buf: Buf<B>,
    ) -> Result<(), EngineError> {
        let bytes = buf.len_bytes();
        let start = Instant::now();
        let handle = store.write_begin(name, buf)?;
        self.writes.push_back(Write {
            name: name.to_string(),
            handle,
            bytes,
            start,
        });
        while self.writes.len() > self.max_writes {
            self.wait_oldest_write(store, rec)?;
        }
        Ok(())
    }

    /// Holds writes in the pool instead of submitting them (`true`), or submits every held
    /// write and goes back to writing behind at once (`false`). The engine defers during
    /// the updates, whose reads of optimizer state then have the drive to themselves, and
    /// spreads the held writes over the next forward, which reads little
    /// ([`SwapQueue::submit_held`]). A full pool submits held writes early (`alloc`); a read
    /// of a held shard submits it first.
    pub fn defer_writes(&mut self, store: &mut Store<B>, defer: bool) -> Result<(), EngineError> {
        self.defer = defer;
        if !defer {
            self.submit_deferred(store, usize::MAX)?;
        }
        Ok(())
    }

    /// Stops holding new writes but keeps the held ones for [`SwapQueue::submit_held`].
    pub fn stop_deferring(&mut self) {
        self.defer = false;
    }

    /// Submits a `1/parts` share of the held writes (all of them when `parts` is 1): the
    /// forward spreads them over its blocks so its own reads are never stuck behind a burst.
    pub fn submit_held(&mut self, store: &mut Store<B>, parts: usize) -> Result<(), EngineError> {
        let n = self.deferred.len().div_ceil(parts.max(1));
        self.submit_deferred(store, n)
    }

    fn submit_deferred(&mut self, store: &mut Store<B>, n: usize) -> Result<(), EngineError> {
        for _ in 0..n {
            let Some((name, buf)) = self.deferred.pop_front() else {
                break;
            };
            let bytes = buf.len_bytes();
            let start = Instant::now();
            let handle = store.write_begin(&name, buf)?;
            self.writes.push_back(Write {
                name,
                handle,
                bytes,
                start,
            });
        }
        Ok(())
    }

    fn wait_write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        w: Write<B>,
    ) -> Result<(), EngineError> {
        let t = Instant::now();
        let res = store.wait_write(w.handle);
        let end = Instant::now();
        self.counters.io_wait_ns += (end - t).as_nanos() as u64;
        rec.io("write", &w.name, w.bytes, w.start, end);
        res.map(drop).map_err(Into::into)
    }

    fn wait_oldest_write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
    ) -> Result<(), EngineError> {
        match self.writes.pop_front() {
            Some(w) => self.wait_write(store, rec, w),
            None => Ok(()),
        }
    }

    fn wait_write_named(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        name: &str,
    ) -> Result<(), EngineError> {
        if let Some(i) = self.deferred.iter().position(|(n, _)| n == name) {
            let (n, buf) = self.deferred.remove(i).expect("position is in range");
            self.submit_write(store, rec, &n, buf)?;
        }
        if let Some(i) = self.writes.iter().position(|w| w.name == name) {
            let w = self.writes.remove(i).expect("position is in range");
            self.wait_write(store, rec, w)?;
        }
        Ok(())
    }

    /// Finishes every write and gives up every prefetch (before a commit, or on the way out).
    pub fn flush(&mut self, store: &mut Store<B>, rec: &mut Recorder) -> Result<(), EngineError> {
        let mut first_err = self.submit_deferred(store, usize::MAX).err();
        while let Some(w) = self.writes.pop_front() {
            if let Err(e) = self.wait_write(store, rec, w) {
                first_err = first_err.or(Some(e));
            }
        }
        for k in 0..2 {
            while let Some(r) = self.reads[k].pop_front() {
                self.drop_read(store, r);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
