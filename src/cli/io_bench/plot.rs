//! The `--plot` SVG of `zinf io-bench`: GB/s against block size (log scale), one line per
//! (queue depth, threads), a read panel and a write panel, each with axis titles and round
//! y ticks (1, 2, 2.5 or 5 × 10^k apart). Plain SVG text, no dependencies.

use super::report::{size_label, PointResult};
use super::Rw;
use std::fmt::Write;

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 300.0;
const MARGIN: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

pub fn svg(results: &[PointResult]) -> String {
    let width = 2.0 * (PANEL_W + MARGIN) + MARGIN;
    let height = PANEL_H + 2.0 * MARGIN + 60.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let (ymax, ystep) = round_ticks(results.iter().map(|r| r.gbps).fold(0.1, f64::max));
    let mut sizes: Vec<u64> = results.iter().map(|r| r.block_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for (i, rw) in [Rw::Read, Rw::Write].into_iter().enumerate() {
        let x0 = MARGIN + i as f64 * (PANEL_W + MARGIN);
        panel(&mut s, results, rw, x0, (ymax, ystep), &sizes);
    }
    s.push_str("</svg>\n");
    s
}

/// The top of the y axis and the tick step for data up to `max`: a step of 1, 2, 2.5 or 5 ×
/// 10^k giving 3 to 6 ticks, and the first multiple of it at or above `max`.
pub fn round_ticks(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 6.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * pow)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * pow);
    ((max / step).ceil().max(1.0) * step, step)
}

/// Decimals that print every multiple of `step` exactly (0.25 → 2, 0.5 → 1, 2 → 0).
fn decimals(step: f64) -> usize {
    (0..4)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-9
        })
        .unwrap_or(3)
}

fn x_of(size: u64, sizes: &[u64], x0: f64) -> f64 {
    let lo = (*sizes.first().unwrap_or(&1) as f64).log2();
    let hi = (*sizes.last().unwrap_or(&1) as f64).log2();
    let t = if hi > lo {
        ((size as f64).log2() - lo) / (hi - lo)
    } else {
        0.5
    };
    x0 + 20.0 + t * (PANEL_W - 40.0)
}

fn panel(
    s: &mut String,
    results: &[PointResult],
    rw: Rw,
    x0: f64,
    (ymax, ystep): (f64, f64),
    sizes: &[u64],
) {
    let y0 = MARGIN + PANEL_H;
    let y_of = |g: f64| y0 - g / ymax * PANEL_H;
    let title = if rw == Rw::Read { "read" } else { "write" };
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"14\">{title} (GB/s)</text>",
        x0,
        MARGIN - 15.0
    );
    let _ = writeln!(s, "<rect x=\"{x0}\" y=\"{MARGIN}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#888\"/>");
    let d = decimals(ystep);
    let ticks = (ymax / ystep).round() as usize;
    for k in 0..=ticks {
        let g = ystep * k as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{g:.d$}</text>",
            x0 - 4.0,
            y_of(g) + 4.0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>",
            x0 + PANEL_W,
            y = y_of(g)
        );
    }
    // Axis titles.
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">block size (log scale)</text>",
        x0 + PANEL_W / 2.0,
        y0 + 32.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {x:.1} {y:.1})\">throughput (GB/s)</text>",
        x = x0 - 38.0,
        y = MARGIN + PANEL_H / 2.0
    );
    for &b in sizes {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x_of(b, sizes, x0),
            y0 + 16.0,
            size_label(b)
        );
    }
    let mut series: Vec<(usize, usize)> = results
        .iter()
        .filter(|r| r.rw == rw)
        .map(|r| (r.queue_depth, r.threads))
        .collect();
    series.sort_unstable();
    series.dedup();
    for (n, &(qd, th)) in series.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let mut pts: Vec<&PointResult> = results
            .iter()
            .filter(|r| r.rw == rw && (r.queue_depth, r.threads) == (qd, th))
            .collect();
        pts.sort_by_key(|r| r.block_size);
        let line: Vec<String> = pts
            .iter()
            .map(|r| format!("{:.1},{:.1}", x_of(r.block_size, sizes, x0), y_of(r.gbps)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            line.join(" ")
        );
        for r in &pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                x_of(r.block_size, sizes, x0),
                y_of(r.gbps)
            );
        }
        let ly = y0 + 54.0;
        let lx = x0 + n as f64 * 100.0;
        let _ = writeln!(
            s,
            "<text x=\"{lx}\" y=\"{ly}\" fill=\"{color}\">qd {qd}, {th} thr</text>"
        );
    }
}
