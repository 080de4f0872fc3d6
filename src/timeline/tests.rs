//! Tests of the timeline (lanes, the Chrome JSON a viewer loads, the disabled no-op) and of the
//! overlap accumulator (hand-made cases, a slow reference, bounded memory).

use super::*;
use serde_json::Value;
use std::time::Duration;

fn us(base: Instant, t: u64) -> Instant {
    base + Duration::from_micros(t)
}

fn epoch(tl: &Timeline) -> Instant {
    lock(tl.inner.as_ref().expect("enabled")).epoch
}

/// Writes the trace and parses it back.
fn written(tl: &Timeline) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    tl.write_chrome_json(&path).unwrap();
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        names.len(),
        1,
        "the temporary file is renamed, not left behind"
    );
    serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
}

fn events(trace: &Value) -> &Vec<Value> {
    trace["traceEvents"].as_array().expect("traceEvents array")
}

/// (name, tid, ts_us, dur_us) of every complete event.
fn spans(trace: &Value) -> Vec<(String, u64, f64, f64)> {
    events(trace)
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["tid"].as_u64().unwrap(),
                e["ts"].as_f64().unwrap(),
                e["dur"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// tid → thread name, from the "M" events.
fn thread_names(trace: &Value) -> HashMap<u64, String> {
    events(trace)
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            let name = e["args"]["name"].as_str().unwrap().to_string();
            (e["tid"].as_u64().unwrap(), name)
        })
        .collect()
}

/// Asserts that no two spans on one I/O lane overlap; returns the number of lanes used.
fn assert_lanes_disjoint(trace: &Value) -> usize {
    let mut by_lane: HashMap<u64, Vec<(f64, f64)>> = HashMap::new();
    for (_, tid, ts, dur) in spans(trace) {
        by_lane.entry(tid).or_default().push((ts, ts + dur));
    }
    for (tid, mut v) in by_lane.clone() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in v.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "lane tid {tid}: {:?} overlaps {:?}",
                w[0],
                w[1]
            );
        }
    }
    by_lane.len()
}

#[test]
fn io_goes_on_the_lowest_free_lane() {
    let tl = Timeline::enabled();
    let b = epoch(&tl);
    tl.io("a", 1, us(b, 0), us(b, 10));
    tl.io("b", 1, us(b, 5), us(b, 15));
    tl.io("c", 1, us(b, 10), us(b, 11)); // lane 0 freed at 10
    tl.io("d", 1, us(b, 12), us(b, 20));
    tl.io("e", 1, us(b, 13), us(b, 14)); // lanes 0 and 1 busy: a third lane
    tl.io("f", 1, us(b, 16), us(b, 17)); // lane 1 freed at 15, lane 0 still busy
    let lane: HashMap<String, u64> = spans(&written(&tl))
        .into_iter()
        .map(|(n, tid, _, _)| (n, tid - Track::Io(0).tid()))
        .collect();
    let want = [("a", 0), ("b", 1), ("c", 0), ("d", 0), ("e", 2), ("f", 1)];
    for (name, l) in want {
        assert_eq!(lane[name], l, "{name}");
    }
}

#[test]
fn lanes_never_overlap_and_match_peak_concurrency() {
    let tl = Timeline::enabled();
    let b = epoch(&tl);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let mut reqs = Vec::new();
    let mut t = 0;
    for i in 0..2000 {
        t += rand(30);
        reqs.push((format!("read param.h.{i}"), t, t + 1 + rand(200)));
    }
    for (name, s, e) in &reqs {
        tl.io(name, 4096, us(b, *s), us(b, *e));
    }
    let trace = written(&tl);
    let lanes = assert_lanes_disjoint(&trace);
    // Requests recorded in start order are packed into as many lanes as were ever in flight
    // at once, so the trace shows the real queue depth.
    let peak = reqs
        .iter()
        .map(|(_, s, _)| reqs.iter().filter(|(_, s2, e2)| s2 <= s && s < e2).count())
        .max()
        .unwrap();
    assert_eq!(lanes, peak.min(MAX_IO_LANES));
    let names = thread_names(&trace);
    for k in 0..lanes {
        assert_eq!(
            names[&Track::Io(k).tid()],
            format!("I/O lane {k} (requests in flight)")
        );
    }
}

#[test]
fn at_the_lane_cap_the_first_lane_to_free_is_reused() {
    let tl = Timeline::enabled();
    let b = epoch(&tl);
    for i in 0..MAX_IO_LANES as u64 {
        tl.io(&format!("r{i}"), 1, us(b, 0), us(b, 1000 - i));
    }
    tl.io("late", 1, us(b, 1), us(b, 2000));
    let trace = written(&tl);
    let late = spans(&trace).into_iter().find(|s| s.0 == "late").unwrap();
    // Lane 63 ends first (at 1000 - 63), so it takes the extra request.
    assert_eq!(late.1, Track::Io(MAX_IO_LANES - 1).tid());
    assert_eq!(thread_names(&trace).len(), MAX_IO_LANES);
}

#[test]
fn chrome_json_has_names_times_and_bytes() {
    let tl = Timeline::enabled();
    let b = epoch(&tl);
    tl.span(Track::Compute, "block 3 fwd", us(b, 1500), us(b, 4000));
    tl.span(Track::Optimizer, "adam sg0", us(b, 4000), us(b, 9000));
    tl.span(Track::PoolWait, "pinned", us(b, 10), us(b, 20));
    tl.io("read param.h.3", 1 << 20, us(b, 1000), us(b, 2000));
    tl.io("write opt.h.3.sg0", 4096, us(b, 1500), us(b, 1750));
    let trace = written(&tl);
    assert_eq!(trace["displayTimeUnit"], "ms");
    let names = thread_names(&trace);
    let mut got: Vec<&str> = names.values().map(String::as_str).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "I/O lane 0 (requests in flight)",
            "I/O lane 1 (requests in flight)",
            "compute",
            "optimizer",
            "pool wait"
        ]
    );
    let process = events(&trace)
        .iter()
        .find(|e| e["name"] == "process_name")
        .unwrap();
    assert_eq!(process["args"]["name"], "zinf");

    let find = |name: &str| {
        events(&trace)
            .iter()
            .find(|e| e["name"] == name && e["ph"] == "X")
            .unwrap_or_else(|| panic!("no span {name}"))
            .clone()
    };
    let block = find("block 3 fwd");
    assert_eq!(block["ts"].as_f64(), Some(1500.0));
    assert_eq!(block["dur"].as_f64(), Some(2500.0));
    assert_eq!(block["pid"], 1);
    assert_eq!(names[&block["tid"].as_u64().unwrap()], "compute");
    assert!(block.get("args").is_none());
    let adam = find("adam sg0");
    assert_eq!(adam["ts"].as_f64(), Some(4000.0));
    assert_eq!(adam["dur"].as_f64(), Some(5000.0));
    assert_eq!(names[&adam["tid"].as_u64().unwrap()], "optimizer");
    let read = find("read param.h.3");
    assert_eq!(read["args"]["bytes"], 1 << 20);
    assert_eq!(
        names[&read["tid"].as_u64().unwrap()],
        "I/O lane 0 (requests in flight)"
    );
    let write = find("write opt.h.3.sg0");
    assert_eq!(write["args"]["bytes"], 4096);
    assert_eq!(write["dur"].as_f64(), Some(250.0));
    assert_eq!(
        names[&write["tid"].as_u64().unwrap()],
        "I/O lane 1 (requests in flight)"
    );
}

#[test]
fn times_before_the_epoch_and_reversed_spans_are_clamped() {
    let tl = Timeline::enabled();
    let b = epoch(&tl);
    let before = b.checked_sub(Duration::from_millis(5)).unwrap_or(b);
    tl.span(Track::Compute, "early", before, us(b, 7));
    tl.span(Track::Compute, "reversed", us(b, 50), us(b, 40));
    let s = spans(&written(&tl));
    assert_eq!((s[0].2, s[0].3), (0.0, 7.0));
    assert_eq!((s[1].2, s[1].3), (50.0, 0.0));
}

#[test]
fn scope_records_until_dropped() {
    let tl = Timeline::enabled();
    {
        let _s = tl.scope(Track::Compute, &format!("block {} bwd", 7));
        std::thread::sleep(Duration::from_millis(2));
        assert!(tl.is_empty(), "nothing is recorded before the guard drops");
    }
    let s = spans(&written(&tl));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, "block 7 bwd");
    assert_eq!(s[0].1, Track::Compute.tid());
    assert!(s[0].3 >= 2000.0, "dur {} us", s[0].3);
}

#[test]
fn disabled_records_nothing_and_writes_an_empty_trace() {
    let tl = Timeline::disabled();
    assert!(!tl.is_enabled());
    let now = Instant::now();
    tl.span(Track::Compute, "x", now, now);
    tl.io("read", 1, now, now);
    drop(tl.scope(Track::Optimizer, "y"));
    assert_eq!(tl.len(), 0);
    assert_eq!(tl.dropped_spans(), 0);
    let trace = written(&tl);
    assert_eq!(
        trace,
        serde_json::json!({"traceEvents": [], "displayTimeUnit": "ms"})
    );
    assert!(!Timeline::default().is_enabled());
}

#[test]
fn clones_record_into_one_trace_from_many_threads() {
    let tl = Timeline::enabled();
    let b = epoch(&tl);
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let tl = tl.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let s = us(b, i * 10 + k);
                    tl.io(&format!("t{k}.{i}"), 1, s, s + Duration::from_micros(25));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(tl.len(), 2000);
    assert_lanes_disjoint(&written(&tl));
}

#[test]
fn spans_past_the_cap_are_counted_not_stored() {
    let tl = Timeline::enabled();
    let now = Instant::now();
    for _ in 0..MAX_SPANS + 5 {
        tl.span(Track::Compute, "step", now, now);
    }
    assert_eq!(tl.len(), MAX_SPANS);
    assert_eq!(tl.dropped_spans(), 5);
}

#[test]
fn an_unwritable_path_is_an_error() {
    let tl = Timeline::enabled();
    let dir = tempfile::tempdir().unwrap();
    let err = tl.write_chrome_json(&dir.path().join("missing/trace.json"));
    assert!(err.is_err());
}

/// Builds an accumulator from intervals in microseconds after `b`.
fn overlap(b: Instant, io: &[(u64, u64)], compute: &[(u64, u64)]) -> Overlap {
    let mut o = Overlap::default();
    for &(s, e) in io {
        o.io(us(b, s), us(b, e));
    }
    for &(s, e) in compute {
        o.compute(us(b, s), us(b, e));
    }
    o
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-9)
}

#[test]
fn overlap_on_hand_made_intervals() {
    let b = Instant::now();
    assert_eq!(overlap(b, &[], &[(0, 10)]).overlap_fraction(), 0.0);
    assert_eq!(overlap(b, &[(0, 10)], &[(10, 20)]).overlap_fraction(), 0.0);
    assert_eq!(overlap(b, &[(5, 10)], &[(0, 20)]).overlap_fraction(), 1.0);
    assert_eq!(overlap(b, &[(0, 10)], &[(5, 20)]).overlap_fraction(), 0.5);

    // Out of order and overlapping: io covers 0..6 (6 us), compute 0..1 and 5..8 (4 us);
    // both are busy during 0..1 and 5..6.
    let o = overlap(b, &[(2, 6), (0, 4)], &[(5, 8), (0, 1), (6, 7)]);
    assert!(close(o.io_busy_s(), 6e-6));
    assert!(close(o.compute_busy_s(), 4e-6));
    assert!(close(o.both_busy_s(), 2e-6));
    assert!(close(o.overlap_fraction(), 1.0 / 3.0));
}

/// The slow reference: every interval kept, merged once at the end.
fn reference(io: &[(u64, u64)], compute: &[(u64, u64)]) -> (f64, f64, f64) {
    let b = Instant::now();
    let conv = |v: &[(u64, u64)]| {
        let mut v: Vec<Interval> = v.iter().map(|&(s, e)| (us(b, s), us(b, e))).collect();
        merge(&mut v);
        v
    };
    let (io, compute) = (conv(io), conv(compute));
    (
        length_s(&io),
        length_s(&compute),
        intersection_s(&io, &compute),
    )
}

#[test]
fn overlap_matches_the_slow_reference_on_shuffled_input() {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut rand = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    // (is_io, start, end), recorded when each finishes, then shuffled within windows of 64 as
    // completions of concurrent work arrive.
    let mut all = Vec::new();
    let mut t = 0;
    for _ in 0..30_000 {
        t += rand(50);
        let s = t + rand(20);
        all.push((rand(3) != 0, s, s + 1 + rand(120)));
    }
    all.sort_by_key(|iv| iv.2);
    for chunk in all.chunks_mut(64) {
        for i in (1..chunk.len()).rev() {
            chunk.swap(i, rand(i as u64 + 1) as usize);
        }
    }

    let b = Instant::now();
    let mut o = Overlap::default();
    for &(is_io, s, e) in &all {
        if is_io {
            o.io(us(b, s), us(b, e));
        } else {
            o.compute(us(b, s), us(b, e));
        }
    }
    let pick = |want: bool| -> Vec<(u64, u64)> {
        all.iter()
            .filter(|iv| iv.0 == want)
            .map(|iv| (iv.1, iv.2))
            .collect()
    };
    let (io, compute) = (pick(true), pick(false));
    assert!(o.folded_until.is_some(), "the test must exercise folding");
    let (io_s, compute_s, both_s) = reference(&io, &compute);
    assert!(close(o.io_busy_s(), io_s), "{} vs {io_s}", o.io_busy_s());
    assert!(close(o.compute_busy_s(), compute_s));
    assert!(close(o.both_busy_s(), both_s));
    assert!(close(o.overlap_fraction(), both_s / io_s));
}

#[test]
fn overlap_memory_stays_bounded() {
    // 100,000 of each: every io interval (4 us) half covered by a compute interval (6 us),
    // with gaps between steps so nothing merges away on its own.
    let b = Instant::now();
    let mut o = Overlap::default();
    let mut most = 0;
    for k in 0..100_000u64 {
        let t = k * 10;
        o.compute(us(b, t + 2), us(b, t + 8));
        o.io(us(b, t), us(b, t + 4));
        most = most.max(o.stored());
    }
    assert!(most <= 2 * (COMPACT_AT + 1), "held {most} intervals");
    assert!(close(o.io_busy_s(), 0.4));
    assert!(close(o.compute_busy_s(), 0.6));
    assert!(close(o.overlap_fraction(), 0.5));

    // I/O stops (everything now resident) while compute goes on: still bounded, and the
    // fraction is unchanged because no new I/O time was added.
    for k in 100_000..200_000u64 {
        o.compute(us(b, k * 10 + 2), us(b, k * 10 + 8));
        most = most.max(o.stored());
    }
    assert!(most <= 2 * (COMPACT_AT + 1), "held {most} intervals");
    assert!(close(o.compute_busy_s(), 1.2));
    assert!(close(o.overlap_fraction(), 0.5));
}
