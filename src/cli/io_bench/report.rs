//! Results of `zinf io-bench`: medians per point, the table, the JSON file and the tuned
//! `aio` block. Formatting only; nothing here measures.

use super::{IoBenchOpts, Point, Run, Rw};
use anyhow::Context;
use std::path::Path;

/// One point with its runs summarized (one JSON object of `--json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PointResult {
    pub rw: Rw,
    pub block_size: u64,
    pub queue_depth: usize,
    pub threads: usize,
    pub backend: String,
    /// Median GB/s (1e9 bytes per second) over the runs.
    pub gbps: f64,
    /// Median CPU seconds (user + system, all threads) per GB moved.
    pub cpu_s_per_gb: f64,
    /// GB/s of every run, in order.
    pub runs: Vec<f64>,
}

/// Median (mean of the middle two for even counts); NaN when there is nothing.
pub fn median(v: &[f64]) -> f64 {
    crate::engine::summary::median(v).unwrap_or(f64::NAN)
}

pub fn summarize(points: &[Point], runs: &[Vec<Run>], backend: &str) -> Vec<PointResult> {
    points
        .iter()
        .zip(runs)
        .map(|(p, r)| {
            let gbps: Vec<f64> = r.iter().map(|x| x.gbps).collect();
            let cpu: Vec<f64> = r.iter().map(|x| x.cpu_s_per_gb).collect();
            PointResult {
                rw: p.rw,
                block_size: p.block_size,
                queue_depth: p.queue_depth,
                threads: p.threads,
                backend: backend.to_string(),
                gbps: round3(median(&gbps)),
                cpu_s_per_gb: (median(&cpu) * 1e4).round() / 1e4,
                runs: gbps.into_iter().map(round3).collect(),
            }
        })
        .collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `1M`, `8M`, `64K`, or bytes when not a whole multiple.
pub fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

pub fn print_table(results: &[PointResult], direct: bool, args: &IoBenchOpts) {
    let mode = if direct {
        "O_DIRECT"
    } else {
        "BUFFERED (each range dropped from the page cache after use)"
    };
    let per_run = match args.seconds {
        Some(s) => format!("{s} s per run"),
        None => format!("{} per run", size_label(args.io_size)),
    };
    println!(
        "zinf io-bench {:?}: {mode}, {per_run}, median of {} runs",
        args.dir, args.repeat
    );
    println!(
        "{:<6} {:>6} {:>4} {:>8} {:>8} {:>9} {:>9} {:>11}",
        "rw", "bs", "qd", "threads", "backend", "GB/s", "min-max", "cpu s/GB"
    );
    for r in results {
        let lo = r.runs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.runs.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<6} {:>6} {:>4} {:>8} {:>8} {:>9.3} {:>4.2}-{:<4.2} {:>11.4}",
            format!("{:?}", r.rw).to_lowercase(),
            size_label(r.block_size),
            r.queue_depth,
            r.threads,
            r.backend,
            r.gbps,
            lo,
            hi,
            r.cpu_s_per_gb
        );
    }
}

pub fn write_json(path: &Path, results: &[PointResult]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {path:?}"))
}

/// The `aio` block of the best (block size, queue depth, threads): highest mean of the read
/// and write medians measured for it.
pub fn tune_block(results: &[PointResult]) -> String {
    let mut best: Option<(f64, &PointResult)> = None;
    for r in results {
        let same: Vec<f64> = results
            .iter()
            .filter(|o| {
                (o.block_size, o.queue_depth, o.threads) == (r.block_size, r.queue_depth, r.threads)
            })
            .map(|o| o.gbps)
            .collect();
        let score = same.iter().sum::<f64>() / same.len() as f64;
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, r));
        }
    }
    let Some((score, r)) = best else {
        return "{}".to_string();
    };
    let block = serde_json::json!({
        "aio": {
            "block_size": r.block_size,
            "queue_depth": r.queue_depth,
            "intra_op_parallelism": r.threads,
            "single_submit": false,
            "overlap_events": true
        }
    });
    tracing::info!("best point: {score:.3} GB/s mean of read and write");
    serde_json::to_string_pretty(&block).unwrap_or_default()
}
