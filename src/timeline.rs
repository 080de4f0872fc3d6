//! The run's timeline: spans of compute, optimizer work, pool waits and I/O requests, written at
//! the end as a Chrome trace-event JSON file that ui.perfetto.dev and chrome://tracing load; and
//! [`Overlap`], the always-on accumulator behind the summary's "I/O hidden behind compute"
//! fraction.
//!
//! This module only records and reports. It decides nothing, reads no clock on its own except
//! in [`Scope`], and a disabled [`Timeline`] costs one branch per call. Recording is bounded:
//! at most [`MAX_SPANS`] spans are kept (later ones are counted, not stored) and at most
//! [`MAX_IO_LANES`] I/O lanes are opened; [`Overlap`] folds old intervals into running totals
//! so its memory stays fixed however long the run.

use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Spans kept by an enabled timeline; later spans are dropped and counted. At ~56 bytes each
/// this bounds a trace at about 60 MiB of memory and a file Perfetto still opens quickly.
pub const MAX_SPANS: usize = 1 << 20;

/// I/O lanes opened at most; beyond this a request goes on the lane that frees first, and
/// spans on that lane may overlap.
pub const MAX_IO_LANES: usize = 64;

/// Where a span is drawn: one row (thread) per track in the trace viewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Track {
    /// One span per optimizer step ("step 12"), so a step is easy to find.
    Step,
    Compute,
    Optimizer,
    PoolWait,
    /// I/O lane k. [`Timeline::io`] picks the lane; `span(Track::Io(k), ..)` forces one.
    Io(usize),
}

impl Track {
    /// Thread id in the trace: fixed tracks first, then the I/O lanes in order.
    fn tid(self) -> u64 {
        match self {
            Track::Step => 0,
            Track::Compute => 1,
            Track::Optimizer => 2,
            Track::PoolWait => 3,
            Track::Io(k) => 10 + k as u64,
        }
    }

    /// The row's name in the viewer.
    fn label(self) -> String {
        match self {
            Track::Step => "steps".to_string(),
            Track::Compute => "compute".to_string(),
            Track::Optimizer => "optimizer".to_string(),
            Track::PoolWait => "pool wait".to_string(),
            Track::Io(k) => format!("I/O lane {k} (requests in flight)"),
        }
    }
}

/// A recording handle, cheap to clone and share between threads. Disabled, every call is a
/// no-op that takes no lock and allocates nothing.
#[derive(Clone, Default)]
pub struct Timeline {
    inner: Option<Arc<Mutex<Inner>>>,
}

/// One recorded span; times are nanoseconds since the timeline's epoch.
struct Span {
    track: Track,
    name: u32,
    start_ns: u64,
    dur_ns: u64,
    bytes: Option<u64>,
}

struct Inner {
    epoch: Instant,
    spans: Vec<Span>,
    dropped: u64,
    /// Span names are interned: a run repeats the same few hundred names every step.
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
    /// The latest end (ns since epoch) of any span on each I/O lane.
    lane_end_ns: Vec<u64>,
}

impl Inner {
    fn ns(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.epoch);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.name_ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.name_ids.insert(name.to_string(), id);
        id
    }

    fn push(&mut self, track: Track, name: &str, start_ns: u64, end_ns: u64, bytes: Option<u64>) {
        if let Track::Io(k) = track {
            if k >= self.lane_end_ns.len() && k < MAX_IO_LANES {
                self.lane_end_ns.resize(k + 1, 0);
            }
            if let Some(lane_end) = self.lane_end_ns.get_mut(k) {
                *lane_end = (*lane_end).max(end_ns);
            }
        }
        if self.spans.len() >= MAX_SPANS {
            self.dropped += 1;
            return;
        }
        let name = self.intern(name);
        self.spans.push(Span {
            track,
            name,
            start_ns,
            dur_ns: end_ns.saturating_sub(start_ns),
            bytes,
        });
    }

    /// The lowest-numbered lane whose every span ended by `start_ns`; a new lane if none is
    /// free; at the cap, the lane that frees first.
    fn pick_lane(&self, start_ns: u64) -> usize {
        if let Some(k) = self.lane_end_ns.iter().position(|&end| end <= start_ns) {
            return k;
        }
        if self.lane_end_ns.len() < MAX_IO_LANES {
            return self.lane_end_ns.len();
        }
        let mut best = 0;
        for (k, &end) in self.lane_end_ns.iter().enumerate() {
            if end < self.lane_end_ns[best] {
                best = k;
            }
        }
        best
    }
}

/// A poisoned lock only means another thread panicked mid-record; the spans are still usable.
fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Timeline {
    /// A timeline that records nothing.
    pub fn disabled() -> Self {
        Timeline { inner: None }
    }

    /// A recording timeline whose epoch (t = 0 in the trace) is now.
    pub fn enabled() -> Self {
        Timeline {
            inner: Some(Arc::new(Mutex::new(Inner {
                epoch: Instant::now(),
                spans: Vec::new(),
                dropped: 0,
                names: Vec::new(),
                name_ids: HashMap::new(),
                lane_end_ns: Vec::new(),
            }))),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Records a finished span on a fixed track (compute, optimizer, pool wait), or on a given
    /// I/O lane. Times before the epoch are clamped to it; an end before the start gives a
    /// zero-length span.
    pub fn span(&self, track: Track, name: &str, start: Instant, end: Instant) {
        let Some(inner) = &self.inner else { return };
        let mut g = lock(inner);
        let (s, e) = (g.ns(start), g.ns(end));
        g.push(track, name, s, e, None);
    }

    /// Records an I/O request that was in flight from `start` to `end` (e.g. "read param.h.3",
    /// "write opt.h.3.sg0"). It goes on the lowest-numbered I/O lane free at `start`, so spans
    /// on one lane never overlap; lanes are added as needed up to [`MAX_IO_LANES`], after which
    /// the lane that frees first is reused.
    pub fn io(&self, name: &str, bytes: u64, start: Instant, end: Instant) {
        let Some(inner) = &self.inner else { return };
        let mut g = lock(inner);
        let (s, e) = (g.ns(start), g.ns(end));
        let lane = g.pick_lane(s);
        g.push(Track::Io(lane), name, s, e, Some(bytes));
    }

    /// Records a span on `track` from now until the returned guard is dropped.
    pub fn scope(&self, track: Track, name: &str) -> Scope<'_> {
        // The name is copied because callers often pass a `format!` temporary.
        let active = self
            .inner
            .as_ref()
            .map(|_| (name.to_string(), Instant::now()));
        Scope {
            timeline: self,
            track,
            active,
        }
    }

    /// Spans not stored because [`MAX_SPANS`] was reached.
    pub fn dropped_spans(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| lock(i).dropped)
    }

    /// Spans stored so far.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| lock(i).spans.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes Chrome trace-event JSON (`{"traceEvents":[...], "displayTimeUnit":"ms"}`): one
    /// "X" event per span with `ts`/`dur` in microseconds, pid 1, a tid per track, "M" events
    /// naming the process and each used track ("steps", "compute", "optimizer", "pool wait",
    /// "I/O lane 0 (requests in flight)",
    /// ...), and `args: {"bytes": n}` on I/O spans. A disabled timeline writes an empty trace.
    /// The file is written beside `path` and renamed over it, so a reader never sees half a
    /// trace. Recording threads wait while the file is written.
    pub fn write_chrome_json(&self, path: &Path) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = Path::new(&tmp);
        let result = self.write_events(tmp).and_then(|()| fs::rename(tmp, path));
        if result.is_err() {
            // Best effort: the write already failed, and that error is the one to report.
            let _ = fs::remove_file(tmp);
        }
        result
    }

    fn write_events(&self, path: &Path) -> io::Result<()> {
        let mut w = BufWriter::new(fs::File::create(path)?);
        w.write_all(b"{\"traceEvents\":[")?;
        let dropped = match &self.inner {
            Some(inner) => {
                let g = lock(inner);
                write_trace_body(&mut w, &g)?;
                g.dropped
            }
            None => 0,
        };
        w.write_all(b"],\"displayTimeUnit\":\"ms\"")?;
        if dropped > 0 {
            write!(w, ",\"otherData\":{{\"dropped_spans\":{dropped}}}")?;
        }
        w.write_all(b"}\n")?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("enabled", &self.is_enabled())
            .field("spans", &self.len())
            .finish()
    }
}

/// One trace event as Chrome's JSON format spells it.
#[derive(Serialize)]
struct Event<'a> {
    name: &'a str,
    ph: &'static str,
    pid: u32,
    tid: u64,
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Args<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Args<'a> {
    Bytes { bytes: u64 },
    Name { name: &'a str },
    SortIndex { sort_index: u64 },
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The metadata events first (process name, then each used track's name and sort order), then
/// one complete ("X") event per span.
fn write_trace_body(w: &mut impl Write, g: &Inner) -> io::Result<()> {
    let meta = |name, tid, args| Event {
        name,
        ph: "M",
        pid: 1,
        tid,
        ts: 0.0,
        dur: None,
        args: Some(args),
    };
    let mut events = vec![meta("process_name", 0, Args::Name { name: "zinf" })];
    let tracks: BTreeSet<Track> = g.spans.iter().map(|s| s.track).collect();
    let labels: Vec<(Track, String)> = tracks.iter().map(|&t| (t, t.label())).collect();
    for (track, label) in &labels {
        events.push(meta("thread_name", track.tid(), Args::Name { name: label }));
        let sort_index = Args::SortIndex {
            sort_index: track.tid(),
        };
        events.push(meta("thread_sort_index", track.tid(), sort_index));
    }
    let mut first = true;
    let mut put = |w: &mut dyn Write, e: &Event| -> io::Result<()> {
        if !first {
            w.write_all(b",\n")?;
        }
        first = false;
        serde_json::to_writer(w, e).map_err(io::Error::from)
    };
    for e in &events {
        put(w, e)?;
    }
    for s in &g.spans {
        let e = Event {
            name: &g.names[s.name as usize],
            ph: "X",
            pid: 1,
            tid: s.track.tid(),
            ts: us(s.start_ns),
            dur: Some(us(s.dur_ns)),
            args: s.bytes.map(|bytes| Args::Bytes { bytes }),
        };
        put(w, &e)?;
    }
    Ok(())
}

/// Records a span from its creation until it is dropped; see [`Timeline::scope`].
#[must_use = "the span ends when this guard is dropped"]
pub struct Scope<'a> {
    timeline: &'a Timeline,
    track: Track,
    active: Option<(String, Instant)>,
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        if let Some((name, start)) = self.active.take() {
            self.timeline.span(self.track, &name, start, Instant::now());
        }
    }
}

/// Intervals of one kind are merged and folded into totals once this many are waiting.
const COMPACT_AT: usize = 4096;
/// Merged intervals kept unfolded after a compaction, per kind: the window within which late,
/// out-of-order intervals are still counted exactly.
const KEEP: usize = 1024;

type Interval = (Instant, Instant);

/// Busy intervals of compute and of I/O over a run, for the overlap fraction.
///
/// Intervals may arrive out of order and overlap one another. Memory is bounded: once a kind
/// holds [`COMPACT_AT`] intervals both kinds are merged, and everything older than about the
/// newest [`KEEP`] merged intervals of each kind is folded into running totals. An interval
/// arriving later than that window is clipped to it (its older part is not counted); recorded
/// in completion order, as the engine records them, none is anywhere near that late.
#[derive(Default, Debug)]
pub struct Overlap {
    compute: Vec<Interval>,
    io: Vec<Interval>,
    /// Everything before this instant has been folded into the totals below.
    folded_until: Option<Instant>,
    folded_compute_s: f64,
    folded_io_s: f64,
    folded_both_s: f64,
}

impl Overlap {
    /// An empty account that ignores whatever ran before now (a run's set-up I/O).
    pub fn starting_now() -> Self {
        Overlap {
            folded_until: Some(Instant::now()),
            ..Overlap::default()
        }
    }

    pub fn compute(&mut self, start: Instant, end: Instant) {
        if let Some(iv) = self.clip(start, end) {
            self.compute.push(iv);
            if self.compute.len() > COMPACT_AT {
                self.compact();
            }
        }
    }

    pub fn io(&mut self, start: Instant, end: Instant) {
        if let Some(iv) = self.clip(start, end) {
            self.io.push(iv);
            if self.io.len() > COMPACT_AT {
                self.compact();
            }
        }
    }

    /// Seconds during which I/O was in flight (union of io intervals).
    pub fn io_busy_s(&self) -> f64 {
        let mut io = self.io.clone();
        merge(&mut io);
        self.folded_io_s + length_s(&io)
    }

    /// Seconds during which compute ran (union of compute intervals).
    pub fn compute_busy_s(&self) -> f64 {
        let mut compute = self.compute.clone();
        merge(&mut compute);
        self.folded_compute_s + length_s(&compute)
    }

    /// Seconds during which both I/O and compute were busy.
    pub fn both_busy_s(&self) -> f64 {
        let (mut io, mut compute) = (self.io.clone(), self.compute.clone());
        merge(&mut io);
        merge(&mut compute);
        self.folded_both_s + intersection_s(&io, &compute)
    }

    /// Fraction of I/O-busy time during which compute was also running:
    /// |U(io) ∩ U(compute)| / |U(io)|, 0 when there was no I/O.
    pub fn overlap_fraction(&self) -> f64 {
        let io_s = self.io_busy_s();
        if io_s <= 0.0 {
            return 0.0;
        }
        (self.both_busy_s() / io_s).clamp(0.0, 1.0)
    }

    /// Intervals held unfolded, for the memory-bound test.
    #[cfg(test)]
    fn stored(&self) -> usize {
        self.compute.len() + self.io.len()
    }

    /// Drops empty intervals and the part of a late one that was already folded.
    fn clip(&self, start: Instant, end: Instant) -> Option<Interval> {
        let start = self.folded_until.map_or(start, |t| start.max(t));
        (end > start).then_some((start, end))
    }

    /// Merges both kinds, then, if either still holds more than [`KEEP`] intervals, folds
    /// everything before a cutoff into the totals. A long kind proposes the start of its
    /// `KEEP`-th newest interval; the earlier proposal wins, so a kind that lags the other is
    /// not clipped, unless that would keep too many intervals, and then the later one does.
    /// A short kind proposes nothing: it is already small, and its late arrivals are protected
    /// by the long kind's window of `KEEP` intervals in time.
    fn compact(&mut self) {
        merge(&mut self.compute);
        merge(&mut self.io);
        let propose = |v: &[Interval]| v.len().checked_sub(KEEP).map(|i| v[i].0);
        let (c, i) = (propose(&self.compute), propose(&self.io));
        let Some(late) = c.max(i) else { return };
        let early = c.min(i).unwrap_or(late);
        let kept = |v: &[Interval], t| v.len() - v.partition_point(|iv| iv.1 <= t);
        let bound = COMPACT_AT / 2;
        let cutoff = if kept(&self.compute, early) <= bound && kept(&self.io, early) <= bound {
            early
        } else {
            late
        };
        let compute_old = split_before(&mut self.compute, cutoff);
        let io_old = split_before(&mut self.io, cutoff);
        self.folded_compute_s += length_s(&compute_old);
        self.folded_io_s += length_s(&io_old);
        self.folded_both_s += intersection_s(&io_old, &compute_old);
        self.folded_until = Some(self.folded_until.map_or(cutoff, |t| t.max(cutoff)));
    }
}

/// Sorts and unions intervals in place: the result is sorted, disjoint and non-touching.
fn merge(v: &mut Vec<Interval>) {
    v.sort_unstable_by_key(|iv| iv.0);
    let mut out = 0;
    for i in 0..v.len() {
        let (s, e) = v[i];
        if out > 0 && s <= v[out - 1].1 {
            v[out - 1].1 = v[out - 1].1.max(e);
        } else {
            v[out] = (s, e);
            out += 1;
        }
    }
    v.truncate(out);
}

/// Removes and returns the parts of merged intervals before `t`; an interval spanning `t` is
/// split there.
fn split_before(v: &mut Vec<Interval>, t: Instant) -> Vec<Interval> {
    let n = v.partition_point(|iv| iv.1 <= t);
    let mut old: Vec<Interval> = v.drain(..n).collect();
    if let Some(first) = v.first_mut() {
        if first.0 < t {
            old.push((first.0, t));
            first.0 = t;
        }
    }
    old
}

/// Total length of merged intervals, seconds.
fn length_s(v: &[Interval]) -> f64 {
    v.iter().map(|(s, e)| (*e - *s).as_secs_f64()).sum()
}

/// Length of the intersection of two merged interval lists, seconds.
fn intersection_s(a: &[Interval], b: &[Interval]) -> f64 {
    let (mut i, mut j, mut total) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if e > s {
            total += (e - s).as_secs_f64();
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    total
}

#[cfg(test)]
mod tests;
