//! The bounded queue of swap-store requests in flight (parameter prefetches, optimizer-state
//! prefetches, write-behinds, writes held in the pool), and the residency table of every
//! store shard it moves ([`ShardTable`]).
//!
//! Every pool allocation goes through [`SwapQueue::alloc`], which never waits on buffers this
//! same thread holds: when the pool is full it first sends held writes, then finishes the
//! oldest write-behind, then gives up the furthest prefetch, and only when it holds nothing
//! left to give back does it report the pool as too small (a config error), instead of waiting
//! forever. A read of a shard whose newest version is still in the pool (held, or being
//! written) is served from that buffer: never written, waited on and read back.
//! This file does not decide *what* to prefetch; the engine's loops do.

use super::residency::{ShardState, ShardTable};
use super::TierError;
use crate::timeline::{Overlap, Timeline, Track};
use std::collections::VecDeque;
use std::time::Instant;
use zinf_swap::{BlockIo, ReadHandle, ShardBuf, Store, WriteHandle};

/// What the queue did, for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounters {
    /// Parameter reads that were already in flight when the group was needed.
    pub param_prefetch_hits: u64,
    /// Parameter reads started on demand.
    pub param_misses: u64,
    pub opt_prefetch_hits: u64,
    pub opt_misses: u64,
    /// Shards served from the pool buffer of their pending write instead of a read.
    pub pending_write_hits: u64,
    /// Held writes dropped because a newer version of the shard replaced them.
    pub writes_superseded: u64,
    /// Prefetches given up to make room in the pool.
    pub prefetches_dropped: u64,
    /// Time the compute thread was blocked on reads and writes.
    pub io_wait_ns: u64,
    /// Time spent making room in the pool (finishing writes early, dropping prefetches).
    pub pool_wait_ns: u64,
    /// Most writes in flight at once (never above the queue's limit).
    pub writes_in_flight_peak: u64,
}

impl QueueCounters {
    /// The counts since `earlier`; `writes_in_flight_peak` is the run's.
    pub fn since(&self, b: &QueueCounters) -> QueueCounters {
        QueueCounters {
            param_prefetch_hits: self.param_prefetch_hits - b.param_prefetch_hits,
            param_misses: self.param_misses - b.param_misses,
            opt_prefetch_hits: self.opt_prefetch_hits - b.opt_prefetch_hits,
            opt_misses: self.opt_misses - b.opt_misses,
            pending_write_hits: self.pending_write_hits - b.pending_write_hits,
            writes_superseded: self.writes_superseded - b.writes_superseded,
            prefetches_dropped: self.prefetches_dropped - b.prefetches_dropped,
            io_wait_ns: self.io_wait_ns - b.io_wait_ns,
            pool_wait_ns: self.pool_wait_ns - b.pool_wait_ns,
            writes_in_flight_peak: self.writes_in_flight_peak,
        }
    }
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

    /// The store names of its shards, in order.
    pub fn names(self) -> Vec<String> {
        match self {
            Shards::Param(gi) => vec![super::layout::param_shard(gi)],
            Shards::Opt(u) => (0..3).map(|t| super::layout::opt_shard(u, t)).collect(),
        }
    }
}

type Pending<B> = <B as BlockIo>::Pending;
/// A shard's bytes in pool buffers.
pub type Buf<B> = ShardBuf<<B as BlockIo>::Buf>;

struct Read<B: BlockIo> {
    what: Shards,
    handles: Vec<ReadHandle<Pending<B>>>,
    ids: Vec<usize>,
    names: Vec<String>,
    bytes: u64,
    start: Instant,
}

struct Write<B: BlockIo> {
    name: String,
    id: usize,
    handle: WriteHandle<Pending<B>>,
    bytes: u64,
    start: Instant,
}

struct Held<B: BlockIo> {
    name: String,
    id: usize,
    buf: Buf<B>,
}

/// Store requests in flight, each queue bounded, and the state of every shard.
pub struct SwapQueue<B: BlockIo> {
    /// Reads started ahead, per kind (parameters, optimizer state), oldest first.
    reads: [VecDeque<Read<B>>; 2],
    writes: VecDeque<Write<B>>,
    /// Writes held in the pool while `defer` is on, in order.
    held: VecDeque<Held<B>>,
    defer: bool,
    max_writes: usize,
    table: ShardTable,
    pub counters: QueueCounters,
}

impl<B: BlockIo> SwapQueue<B> {
    /// A queue for a store of `n_shards` shards; `max_writes`: write-behinds kept in flight
    /// before the oldest is waited for (0: every write is waited at once).
    pub fn new(max_writes: usize, n_shards: usize) -> Self {
        SwapQueue {
            reads: [VecDeque::new(), VecDeque::new()],
            writes: VecDeque::new(),
            held: VecDeque::new(),
            defer: false,
            max_writes,
            table: ShardTable::new(n_shards),
            counters: QueueCounters::default(),
        }
    }

    /// The residency table of the store's shards.
    pub fn table(&self) -> &ShardTable {
        &self.table
    }

    /// Groups whose parameter reads are in flight.
    pub fn param_reads_in_flight(&self) -> impl Iterator<Item = usize> + '_ {
        self.reads[0].iter().filter_map(|r| match r.what {
            Shards::Param(gi) => Some(gi),
            Shards::Opt(_) => None,
        })
    }

    /// Whether every shard of `what` has its newest version in the pool (held or being
    /// written): a read of it needs no disk.
    pub fn pending_in_pool(&self, store: &Store<B>, what: Shards) -> Result<bool, TierError> {
        for n in what.names() {
            let s = self.table.get(store.shard_id(&n)?);
            if !matches!(s, ShardState::Held | ShardState::Writing) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Frees pool room this queue holds, cheapest first: send held writes, finish the oldest
    /// write, and, with `drop_reads`, give up the furthest prefetch (parameters first). False
    /// when nothing was left to free.
    fn make_room(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        drop_reads: bool,
    ) -> Result<bool, TierError> {
        if !self.held.is_empty() {
            self.submit_held_n(store, rec, usize::MAX)?;
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
    ) -> Result<Buf<B>, TierError> {
        let t = Instant::now();
        let res = loop {
            if let Some(b) = store.try_alloc(name)? {
                break Ok(b);
            }
            if !self.make_room(store, rec, true)? {
                break Err(TierError::Config(format!(
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

    /// Writes `bytes` (exactly the shard's length) as the new version of `name`, behind.
    pub fn write_bytes(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), TierError> {
        // A version still held or in flight is superseded first, so its buffer is free.
        let id = store.shard_id(name)?;
        self.finish_pending(store, rec, id, name)?;
        let mut buf = self.alloc(store, rec, name)?;
        buf.copy_from(bytes);
        self.write(store, rec, name, buf)
    }

    fn drop_read(&mut self, store: &mut Store<B>, r: Read<B>) {
        for h in r.handles {
            let _ = store.wait_read(h);
        }
        for id in r.ids {
            self.table.set(id, ShardState::Home);
        }
    }

    fn start_read(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        what: Shards,
        demand: bool,
        next: bool,
    ) -> Result<Option<Read<B>>, TierError> {
        let names = what.names();
        let mut bufs = Vec::with_capacity(names.len());
        for n in &names {
            let b = if demand {
                self.alloc(store, rec, n)?
            } else if next {
                // The read needed next goes before writes that only free memory.
                loop {
                    if let Some(b) = store.try_alloc(n)? {
                        break b;
                    }
                    if !self.make_room(store, rec, false)? {
                        return Ok(None);
                    }
                }
            } else {
                match store.try_alloc(n)? {
                    Some(b) => b,
                    None => return Ok(None), // taken buffers go back to the pool on drop
                }
            };
            bufs.push(b);
        }
        let start = Instant::now();
        let mut handles = Vec::with_capacity(names.len());
        let mut ids = Vec::with_capacity(names.len());
        let mut bytes = 0;
        for (n, b) in names.iter().zip(bufs) {
            bytes += b.len_bytes();
            let id = store.shard_id(n)?;
            match store.read_begin(n, b) {
                Ok(h) => {
                    handles.push(h);
                    self.table.set(id, ShardState::Reading);
                    ids.push(id);
                }
                Err(e) => {
                    self.drop_read(
                        store,
                        Read {
                            what,
                            handles,
                            ids,
                            names: Vec::new(),
                            bytes,
                            start,
                        },
                    );
                    return Err(e.into());
                }
            }
        }
        Ok(Some(Read {
            what,
            handles,
            ids,
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
    ) -> Result<Vec<Buf<B>>, TierError> {
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
        let to = match first_err {
            Some(_) => ShardState::Home,
            None => ShardState::InHand,
        };
        for &id in &r.ids {
            self.table.set(id, to);
        }
        match first_err {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    /// Starts reading `what`: if the pool has room now, or, when `next` (it is needed next),
    /// after finishing writes that hold the room. True when the read is (or already was) in
    /// flight, or when its newest bytes are in the pool already (nothing to read).
    pub fn prefetch(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        what: Shards,
        next: bool,
    ) -> Result<bool, TierError> {
        if self.reads[what.kind()].iter().any(|r| r.what == what) {
            return Ok(true);
        }
        for n in what.names() {
            if self.table.get(store.shard_id(&n)?) != ShardState::Home {
                return Ok(true); // held or being written: served from the pool
            }
        }
        match self.start_read(store, rec, what, false, next)? {
            Some(r) => {
                self.reads[what.kind()].push_back(r);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The shards of `what` in hand (one buffer per shard, in name order): the prefetch in
    /// flight, the pool buffer of a pending write, or a read started now. The caller writes
    /// each back ([`SwapQueue::write`]) or gives it up ([`SwapQueue::done_with`]).
    pub fn read(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        what: Shards,
    ) -> Result<Vec<Buf<B>>, TierError> {
        let queue = &mut self.reads[what.kind()];
        if let Some(i) = queue.iter().position(|r| r.what == what) {
            let r = queue.remove(i).expect("position is in range");
            self.count_read(what, true);
            return self.finish_read(store, rec, r);
        }
        let names = what.names();
        if let Shards::Param(_) = what {
            let id = store.shard_id(&names[0])?;
            assert_ne!(
                self.table.get(id),
                ShardState::Held,
                "a held parameter shard is served in place (`held`), not read"
            );
        }
        let mut served = Vec::with_capacity(names.len());
        for n in &names {
            let id = store.shard_id(n)?;
            served.push(self.take_pending(store, rec, id)?);
        }
        if served.iter().all(Option::is_some) {
            self.counters.pending_write_hits += served.len() as u64;
            return Ok(served.into_iter().flatten().collect());
        }
        // Some shard is only on disk: pending ones go out first, then one read of all.
        for (n, b) in names.iter().zip(served) {
            if let Some(b) = b {
                self.write(store, rec, n, b)?;
            }
            let id = store.shard_id(n)?;
            self.finish_pending(store, rec, id, n)?;
        }
        self.count_read(what, false);
        let r = self
            .start_read(store, rec, what, true, true)?
            .expect("a demand read always starts");
        self.finish_read(store, rec, r)
    }

    fn count_read(&mut self, what: Shards, hit: bool) {
        let c = &mut self.counters;
        let n = match (what, hit) {
            (Shards::Param(_), true) => &mut c.param_prefetch_hits,
            (Shards::Param(_), false) => &mut c.param_misses,
            (Shards::Opt(_), true) => &mut c.opt_prefetch_hits,
            (Shards::Opt(_), false) => &mut c.opt_misses,
        };
        *n += 1;
    }

    /// The pool buffer of shard `id`'s pending write, in hand: a held one taken out of the
    /// hold, one being written waited for. `None` when the newest version is only on disk.
    fn take_pending(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
    ) -> Result<Option<Buf<B>>, TierError> {
        match self.table.get(id) {
            ShardState::Held => {
                let i = self.held.iter().position(|h| h.id == id);
                let h = self.held.remove(i.expect("a held shard is in the hold"));
                self.table.set(id, ShardState::InHand);
                Ok(h.map(|h| h.buf))
            }
            ShardState::Writing => {
                let i = self.writes.iter().position(|w| w.id == id);
                let w = self.writes.remove(i.expect("a writing shard is in flight"));
                let w = w.expect("position is in range");
                let buf = self.wait_write(store, rec, w)?;
                self.table.set(id, ShardState::InHand);
                Ok(Some(buf))
            }
            _ => Ok(None),
        }
    }

    /// The pool buffer of shard `name` when its newest version is held there (not yet
    /// submitted): served in place, it stays held. A held parameter shard is uploaded from
    /// here; [`SwapQueue::read`] never takes a held parameter shard out of the hold.
    pub fn held(&self, store: &Store<B>, name: &str) -> Result<Option<&Buf<B>>, TierError> {
        let id = store.shard_id(name)?;
        if self.table.get(id) != ShardState::Held {
            return Ok(None);
        }
        Ok(self.held.iter().find(|h| h.id == id).map(|h| &h.buf))
    }

    /// Gives up the shard `name` in hand without writing it (its disk copy is current).
    pub fn done_with(&mut self, store: &Store<B>, name: &str) -> Result<(), TierError> {
        self.table.set(store.shard_id(name)?, ShardState::Home);
        Ok(())
    }

    /// Writes `buf` as the new version of `name` behind the caller's back. While writes are
    /// held (see [`SwapQueue::defer_writes`]) the buffer waits in the pool; otherwise at most
    /// `max_writes` stay in flight. A version of `name` still held is dropped unwritten
    /// (superseded); one being written is waited for first.
    pub fn write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        name: &str,
        buf: Buf<B>,
    ) -> Result<(), TierError> {
        let id = store.shard_id(name)?;
        self.finish_pending(store, rec, id, name)?;
        if self.defer {
            self.table.set(id, ShardState::Held);
            self.held.push_back(Held {
                name: name.to_string(),
                id,
                buf,
            });
            return Ok(());
        }
        self.submit_write(store, rec, id, name.to_string(), buf)
    }

    /// Brings shard `id` back to `Home` or `InHand` before a new version is written or read:
    /// a held version is dropped (superseded), one in flight is waited for.
    fn finish_pending(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
        name: &str,
    ) -> Result<(), TierError> {
        match self.table.get(id) {
            ShardState::Held => {
                let i = self.held.iter().position(|h| h.id == id);
                drop(self.held.remove(i.expect("a held shard is in the hold")));
                self.counters.writes_superseded += 1;
                self.table.set(id, ShardState::InHand);
                self.table.set(id, ShardState::Home);
            }
            ShardState::Writing => {
                let i = self.writes.iter().position(|w| w.id == id);
                let w = self.writes.remove(i.expect("a writing shard is in flight"));
                drop(self.wait_write(store, rec, w.expect("position is in range"))?);
                self.table.set(id, ShardState::Home);
            }
            ShardState::Reading => {
                // A prefetch of an older version: give it up.
                for k in 0..2 {
                    if let Some(i) = self.reads[k].iter().position(|r| r.ids.contains(&id)) {
                        let r = self.reads[k].remove(i).expect("position is in range");
                        self.drop_read(store, r);
                    }
                }
            }
            ShardState::Home | ShardState::InHand => {}
        }
        debug_assert!(!name.is_empty());
        Ok(())
    }

    fn submit_write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
        name: String,
        buf: Buf<B>,
    ) -> Result<(), TierError> {
        let bytes = buf.len_bytes();
        let start = Instant::now();
        let handle = store.write_begin(&name, buf)?;
        self.table.set(id, ShardState::Writing);
        self.writes.push_back(Write {
            name,
            id,
            handle,
            bytes,
            start,
        });
        while self.writes.len() > self.max_writes {
            self.wait_oldest_write(store, rec)?;
        }
        let n = self.writes.len() as u64;
        self.counters.writes_in_flight_peak = self.counters.writes_in_flight_peak.max(n);
        Ok(())
    }

    /// Holds writes in the pool instead of submitting them (`true`), or submits every held
    /// write and goes back to writing behind at once (`false`). The engine holds during the
    /// updates, whose reads of optimizer state then have the drive to themselves, and spreads
    /// the held writes over the next forward, which reads little
    /// ([`SwapQueue::submit_held`]). A full pool submits held writes early (`alloc`).
    pub fn defer_writes(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        defer: bool,
    ) -> Result<(), TierError> {
        self.defer = defer;
        if !defer {
            self.submit_held_n(store, rec, usize::MAX)?;
        }
        Ok(())
    }

    /// Stops holding new writes but keeps the held ones for [`SwapQueue::submit_held`].
    pub fn stop_deferring(&mut self) {
        self.defer = false;
    }

    /// Submits a `1/parts` share of the held writes (all of them when `parts` is 1): the
    /// forward spreads them over its stages so its own reads are never stuck behind a burst.
    pub fn submit_held(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        parts: usize,
    ) -> Result<(), TierError> {
        let n = self.held.len().div_ceil(parts.max(1));
        self.submit_held_n(store, rec, n)
    }

    fn submit_held_n(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        n: usize,
    ) -> Result<(), TierError> {
        for _ in 0..n {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.submit_write(store, rec, h.id, h.name, h.buf)?;
        }
        Ok(())
    }

    fn wait_write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        w: Write<B>,
    ) -> Result<Buf<B>, TierError> {
        let t = Instant::now();
        let res = store.wait_write(w.handle);
        let end = Instant::now();
        self.counters.io_wait_ns += (end - t).as_nanos() as u64;
        rec.io("write", &w.name, w.bytes, w.start, end);
        if res.is_err() {
            self.table.set(w.id, ShardState::Home);
        }
        res.map_err(Into::into)
    }

    fn wait_oldest_write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
    ) -> Result<(), TierError> {
        if let Some(w) = self.writes.pop_front() {
            let id = w.id;
            drop(self.wait_write(store, rec, w)?);
            self.table.set(id, ShardState::Home);
        }
        Ok(())
    }

    /// Finishes every write and gives up every prefetch (before a commit, or on the way out).
    pub fn flush(&mut self, store: &mut Store<B>, rec: &mut Recorder) -> Result<(), TierError> {
        let mut first_err = self.submit_held_n(store, rec, usize::MAX).err();
        while !self.writes.is_empty() {
            if let Err(e) = self.wait_oldest_write(store, rec) {
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

    /// Checks the queue's invariants (programmer errors panic): no shard is left in hand;
    /// the table agrees with the queues; writes in flight never exceeded their limit; every
    /// pool byte checked out is held by a request of this queue.
    pub fn assert_invariants(&self, store: &Store<B>) {
        let t = &self.table;
        assert_eq!(t.count(ShardState::InHand), 0, "a shard was left in hand");
        let reading: usize = self.reads.iter().flatten().map(|r| r.ids.len()).sum();
        assert_eq!(t.count(ShardState::Reading), reading, "reads vs table");
        assert_eq!(t.count(ShardState::Held), self.held.len(), "held vs table");
        assert_eq!(
            t.count(ShardState::Writing),
            self.writes.len(),
            "writes vs table"
        );
        assert!(
            self.counters.writes_in_flight_peak <= self.max_writes.max(1) as u64,
            "writes in flight {} above the limit {}",
            self.counters.writes_in_flight_peak,
            self.max_writes
        );
        let reserve = |name: &str| store.pool_reserve_bytes(name).unwrap_or(0);
        let mut held_bytes = 0;
        for r in self.reads.iter().flatten() {
            held_bytes += r.names.iter().map(|n| reserve(n)).sum::<u64>();
        }
        held_bytes += self.writes.iter().map(|w| reserve(&w.name)).sum::<u64>();
        held_bytes += self.held.iter().map(|h| reserve(&h.name)).sum::<u64>();
        assert_eq!(
            store.io().pool_in_use_bytes(),
            held_bytes,
            "pool bytes checked out vs held by requests: a pool buffer was not returned"
        );
    }
}
