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
    /// Bytes those shards would have read (padded chunks, as the store counts reads).
    pub pending_write_hit_bytes: u64,
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
            pending_write_hit_bytes: self.pending_write_hit_bytes - b.pending_write_hit_bytes,
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
    /// A recorder that writes no trace (a save, a resume, a bench): spans go to the overlap
    /// account only.
    pub fn untraced() -> Self {
        Recorder {
            timeline: Timeline::disabled(),
            overlap: Overlap::default(),
        }
    }

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
}

/// The store ids of every parameter and optimizer shard, resolved once when the queue is built
/// (the step never formats or hashes a shard name).
struct ShardIds {
    param: Vec<usize>,
    opt: Vec<[usize; 3]>,
}

impl ShardIds {
    fn of(&self, what: Shards) -> &[usize] {
        match what {
            Shards::Param(gi) => std::slice::from_ref(&self.param[gi]),
            Shards::Opt(u) => &self.opt[u],
        }
    }
}

type Pending<B> = <B as BlockIo>::Pending;
/// A shard's bytes in pool buffers.
pub type Buf<B> = ShardBuf<<B as BlockIo>::Buf>;

struct Read<B: BlockIo> {
    what: Shards,
    handles: Vec<ReadHandle<Pending<B>>>,
    bytes: u64,
    start: Instant,
}

struct Write<B: BlockIo> {
    id: usize,
    handle: WriteHandle<Pending<B>>,
    bytes: u64,
    start: Instant,
}

struct Held<B: BlockIo> {
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
    ids: ShardIds,
    pub counters: QueueCounters,
}

impl<B: BlockIo> SwapQueue<B> {
    /// A queue over `store` whose parameter shards are those of `n_groups` groups and whose
    /// optimizer shards are those of `n_units` units (0 for a kind the store does not hold);
    /// `max_writes`: write-behinds kept in flight before the oldest is waited for (0: every
    /// write is waited at once). Fails when the store lacks one of those shards.
    pub fn new(
        max_writes: usize,
        store: &Store<B>,
        n_groups: usize,
        n_units: usize,
    ) -> Result<Self, TierError> {
        let param = (0..n_groups)
            .map(|gi| store.shard_id(&super::layout::param_shard(gi)))
            .collect::<Result<_, _>>()?;
        let mut opt = Vec::with_capacity(n_units);
        for u in 0..n_units {
            let mut ids = [0; 3];
            for (t, id) in ids.iter_mut().enumerate() {
                *id = store.shard_id(&super::layout::opt_shard(u, t))?;
            }
            opt.push(ids);
        }
        Ok(SwapQueue {
            reads: [VecDeque::new(), VecDeque::new()],
            writes: VecDeque::new(),
            held: VecDeque::new(),
            defer: false,
            max_writes,
            table: ShardTable::new(store.shard_count()),
            ids: ShardIds { param, opt },
            counters: QueueCounters::default(),
        })
    }

    /// The store id of optimizer state `t` (master, m, v) of unit `u`.
    pub fn opt_id(&self, u: usize, t: usize) -> usize {
        self.ids.opt[u][t]
    }

    /// The store id of group `gi`'s parameter shard.
    pub fn param_id(&self, gi: usize) -> usize {
        self.ids.param[gi]
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

    /// Frees pool room this queue holds, cheapest first: take back writes that have
    /// completed, send held writes up to the in-flight limit, finish the oldest write, and,
    /// with `drop_reads`, give up the furthest prefetch (parameters first). False when nothing
    /// was left to free.
    fn make_room(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        drop_reads: bool,
    ) -> Result<bool, TierError> {
        if self.reap_done_writes(store, rec)? {
            return Ok(true);
        }
        if !self.held.is_empty() && self.writes.len() < self.write_limit() {
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

    /// Writes allowed in flight at once (held writes are submitted at most up to it).
    fn write_limit(&self) -> usize {
        self.max_writes.max(1)
    }

    /// Takes back every write that has completed, without blocking; true when one was.
    fn reap_done_writes(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
    ) -> Result<bool, TierError> {
        let mut any = false;
        let mut i = 0;
        while i < self.writes.len() {
            if store.write_done(&self.writes[i].handle) {
                let w = self.writes.remove(i).expect("index is in range");
                let id = w.id;
                drop(self.wait_write(store, rec, w)?);
                self.table.set(id, ShardState::Home);
                any = true;
            } else {
                i += 1;
            }
        }
        Ok(any)
    }

    /// Pool buffers for shard `id`, making room when the pool is full (see the file header).
    pub fn alloc(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
    ) -> Result<Buf<B>, TierError> {
        let t = Instant::now();
        let res = loop {
            if let Some(b) = store.try_alloc_id(id)? {
                break Ok(b);
            }
            if !self.make_room(store, rec, true)? {
                break Err(TierError::Config(format!(
                    "the pinned pool ({} bytes) cannot hold shard `{}` ({} bytes) next to \
                     the buffers in use: raise zinf.pinned_memory_budget (or the offload \
                     buffer_count x buffer_size), or lower sub_group_size",
                    store.io().pool_budget_bytes(),
                    store.shard_name(id),
                    store.pool_reserve_bytes(id)
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

    /// Writes `bytes` (exactly the shard's length) as the new version of shard `id`, behind.
    pub fn write_bytes(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
        bytes: &[u8],
    ) -> Result<(), TierError> {
        // A version still held or in flight is superseded first, so its buffer is free.
        self.finish_pending(store, rec, id)?;
        let mut buf = self.alloc(store, rec, id)?;
        buf.copy_from(bytes);
        self.write(store, rec, id, buf)
    }

    fn drop_read(&mut self, store: &mut Store<B>, r: Read<B>) {
        let started = r.handles.len();
        for h in r.handles {
            let _ = store.wait_read(h);
        }
        for &id in &self.ids.of(r.what)[..started] {
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
        let n = self.ids.of(what).len();
        let mut bufs = Vec::with_capacity(n);
        for k in 0..n {
            let id = self.ids.of(what)[k];
            let b = if demand {
                self.alloc(store, rec, id)?
            } else if next {
                // The read needed next goes before writes that only free memory.
                loop {
                    if let Some(b) = store.try_alloc_id(id)? {
                        break b;
                    }
                    if !self.make_room(store, rec, false)? {
                        return Ok(None);
                    }
                }
            } else {
                match store.try_alloc_id(id)? {
                    Some(b) => b,
                    None => return Ok(None), // taken buffers go back to the pool on drop
                }
            };
            bufs.push(b);
        }
        let mut r = Read {
            what,
            handles: Vec::with_capacity(n),
            bytes: 0,
            start: Instant::now(),
        };
        for (k, b) in bufs.into_iter().enumerate() {
            let id = self.ids.of(what)[k];
            r.bytes += b.len_bytes();
            match store.read_begin_id(id, b) {
                Ok(h) => {
                    r.handles.push(h);
                    self.table.set(id, ShardState::Reading);
                }
                Err(e) => {
                    self.drop_read(store, r);
                    return Err(e.into());
                }
            }
        }
        Ok(Some(r))
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
        let ids = self.ids.of(r.what);
        rec.io("read", store.shard_name(ids[0]), r.bytes, r.start, end);
        let to = match first_err {
            Some(_) => ShardState::Home,
            None => ShardState::InHand,
        };
        for &id in ids {
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
        if self
            .ids
            .of(what)
            .iter()
            .any(|&id| self.table.get(id) != ShardState::Home)
        {
            return Ok(true); // held or being written: served from the pool
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
        let n = self.ids.of(what).len();
        if let Shards::Param(gi) = what {
            assert_ne!(
                self.table.get(self.ids.param[gi]),
                ShardState::Held,
                "a held parameter shard is served in place (`held_param`), not read"
            );
        }
        let mut served = Vec::with_capacity(n);
        for k in 0..n {
            let id = self.ids.of(what)[k];
            served.push(self.take_pending(store, rec, id)?);
        }
        if served.iter().all(Option::is_some) {
            self.counters.pending_write_hits += n as u64;
            self.counters.pending_write_hit_bytes += served
                .iter()
                .flatten()
                .flat_map(|b| b.buffer_lens())
                .map(|l| l as u64)
                .sum::<u64>();
            return Ok(served.into_iter().flatten().collect());
        }
        // Some shard is only on disk: pending ones go out first, then one read of all.
        for (k, b) in served.into_iter().enumerate() {
            let id = self.ids.of(what)[k];
            if let Some(b) = b {
                self.write(store, rec, id, b)?;
            }
            self.finish_pending(store, rec, id)?;
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

    /// The pool buffer of group `gi`'s parameter shard when its newest version is held there
    /// (not yet submitted): served in place, it stays held. A held parameter shard is uploaded
    /// from here; [`SwapQueue::read`] never takes a held parameter shard out of the hold.
    pub fn held_param(&self, gi: usize) -> Option<&Buf<B>> {
        let id = self.ids.param[gi];
        if self.table.get(id) != ShardState::Held {
            return None;
        }
        self.held.iter().find(|h| h.id == id).map(|h| &h.buf)
    }

    /// Gives up the shards of `what` in hand without writing them (their disk copies are
    /// current).
    pub fn done_with(&mut self, what: Shards) {
        for &id in self.ids.of(what) {
            self.table.set(id, ShardState::Home);
        }
    }

    /// Writes `buf` as the new version of shard `id` behind the caller's back. While writes
    /// are held (see [`SwapQueue::defer_writes`]) the buffer waits in the pool; otherwise at
    /// most `max_writes` stay in flight. A version still held is dropped unwritten
    /// (superseded); one being written is waited for first.
    pub fn write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
        buf: Buf<B>,
    ) -> Result<(), TierError> {
        self.finish_pending(store, rec, id)?;
        if self.defer {
            self.table.set(id, ShardState::Held);
            self.held.push_back(Held { id, buf });
            return Ok(());
        }
        self.submit_write(store, rec, id, buf)
    }

    /// Brings shard `id` back to `Home` or `InHand` before a new version is written or read:
    /// a held version is dropped (superseded), one in flight is waited for.
    fn finish_pending(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
    ) -> Result<(), TierError> {
        if self.table.get(id) == ShardState::Reading {
            // A prefetch of an older version: give it up.
            for k in 0..2 {
                let ids = &self.ids;
                if let Some(i) = self.reads[k]
                    .iter()
                    .position(|r| ids.of(r.what).contains(&id))
                {
                    let r = self.reads[k].remove(i).expect("position is in range");
                    self.drop_read(store, r);
                }
            }
            return Ok(());
        }
        let superseded = self.table.get(id) == ShardState::Held;
        if let Some(buf) = self.take_pending(store, rec, id)? {
            drop(buf);
            self.counters.writes_superseded += u64::from(superseded);
            self.table.set(id, ShardState::Home);
        }
        Ok(())
    }

    fn submit_write(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        id: usize,
        buf: Buf<B>,
    ) -> Result<(), TierError> {
        let bytes = buf.len_bytes();
        let start = Instant::now();
        let handle = store.write_begin_id(id, buf)?;
        self.table.set(id, ShardState::Writing);
        self.writes.push_back(Write {
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

    /// Holds new writes in the pool instead of submitting them (`true`), or goes back to
    /// writing behind at once (`false`; writes already held go out as room under the
    /// in-flight limit allows: [`SwapQueue::submit_held`], `alloc`, or a flush). The engine
    /// holds during the updates, whose reads of optimizer state then have the drive to
    /// themselves, and spreads the held writes over the next forward, which reads little.
    pub fn defer_writes(&mut self, defer: bool) {
        self.defer = defer;
    }

    /// Submits a `1/parts` share of the held writes (all of them when `parts` is 1), never
    /// more than the in-flight limit allows and never waiting: completed writes are taken
    /// back first. The forward spreads them over its stages so its own reads are never stuck
    /// behind a burst, and the compute thread never blocks on a write it does not need.
    pub fn submit_held(
        &mut self,
        store: &mut Store<B>,
        rec: &mut Recorder,
        parts: usize,
    ) -> Result<(), TierError> {
        self.reap_done_writes(store, rec)?;
        let share = self.held.len().div_ceil(parts.max(1));
        let room = self.write_limit().saturating_sub(self.writes.len());
        self.submit_held_n(store, rec, share.min(room))
    }

    /// Submits the `n` oldest held writes (each waits for room under the limit).
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
            self.submit_write(store, rec, h.id, h.buf)?;
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
        rec.io("write", store.shard_name(w.id), w.bytes, w.start, end);
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
        let reading: usize = self.reads.iter().flatten().map(|r| r.handles.len()).sum();
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
        let ids = self
            .reads
            .iter()
            .flatten()
            .flat_map(|r| self.ids.of(r.what));
        let held_bytes: u64 = ids
            .chain(self.writes.iter().map(|w| &w.id))
            .chain(self.held.iter().map(|h| &h.id))
            .map(|&id| store.pool_reserve_bytes(id))
            .sum();
        assert_eq!(
            store.io().pool_in_use_bytes(),
            held_bytes,
            "pool bytes checked out vs held by requests: a pool buffer was not returned"
        );
    }
}
