//! `zinf io-bench`: read/write throughput of a folder's drive through zinf's own I/O engine.
//!
//! It creates one data file in `--dir`, fills it, then measures every (rw, block size, queue
//! depth, threads) point `--repeat` times, interleaving the points so that noise spreads
//! evenly, and reports medians. O_DIRECT is used unless `--buffered`, in which case the table
//! says so and the engine drops each range from the page cache; the page cache is never what
//! is measured. The data file is removed at exit, also on Ctrl-C. This file does not know
//! how the engine works; `io_bench/report.rs` formats results and `io_bench/plot.rs` draws them.

mod plot;
mod report;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use zinf_aio::{wait_any, AioConfig, AioEngine, BackendChoice, BufferPool, OpenMode, Request};

#[derive(clap::Args, Debug)]
pub struct IoBenchArgs {
    /// Boxed: the options are large and clap's command enum holds every subcommand inline.
    #[command(flatten)]
    pub opts: Box<IoBenchOpts>,
}

/// The options of `zinf io-bench`.
#[derive(clap::Args, Debug)]
pub struct IoBenchOpts {
    /// Folder on the drive to measure; a data file is created there and removed at exit.
    #[arg(long)]
    pub dir: PathBuf,
    /// Block sizes (bytes per I/O), comma-separated, with K/M/G suffixes.
    #[arg(long, default_value = "1M,8M", value_delimiter = ',', value_parser = parse_size)]
    pub block_size: Vec<u64>,
    /// Queue depths (I/Os in flight per thread), comma-separated; 1 to 4096 (aio's limit).
    #[arg(long, default_value = "8,32", value_delimiter = ',',
          value_parser = super::count_usize(1, crate::config::AIO_MAX_QUEUE_DEPTH))]
    pub queue_depth: Vec<usize>,
    /// I/O threads (one ring each: `intra_op_parallelism`), comma-separated; 1 to 256.
    #[arg(long, default_value = "1", value_delimiter = ',',
          value_parser = super::count_usize(1, crate::config::AIO_MAX_THREADS))]
    pub threads: Vec<usize>,
    /// Size of the data file, and bytes moved per run unless --seconds is given.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub io_size: u64,
    /// Run each measurement for this long, cycling over the file (like fio's time_based);
    /// a finite number of seconds above 0.
    #[arg(long, value_parser = super::parse_positive)]
    pub seconds: Option<f64>,
    /// Directions to measure, comma-separated: read, write.
    #[arg(long, default_value = "read,write", value_delimiter = ',')]
    pub rw: Vec<Rw>,
    /// I/O backend: uring, pread or auto.
    #[arg(long, default_value = "uring", value_parser = backend_name)]
    pub backend: String,
    /// Measurements per point (the median is reported); 1 to 1000.
    #[arg(long, default_value_t = 3, value_parser = super::count_usize(1, 1000))]
    pub repeat: usize,
    /// Buffered I/O instead of O_DIRECT (each range is dropped from the page cache).
    #[arg(long)]
    pub buffered: bool,
    /// Write one JSON object per point to this file (a JSON array).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw GB/s against block size (one line per queue depth, read and write panels).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the best `aio` config block as JSON.
    #[arg(long)]
    pub tune: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    Read,
    Write,
}

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub rw: Rw,
    pub block_size: u64,
    pub queue_depth: usize,
    pub threads: usize,
}

/// One run of one point.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub gbps: f64,
    pub cpu_s_per_gb: f64,
}

/// `--backend`: a name `BackendChoice` knows.
fn backend_name(s: &str) -> Result<String, String> {
    s.parse::<BackendChoice>()
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// Parses `4096`, `64K`, `1M`, `2G` (binary multiples; `k`/`m`/`g` and a trailing `B`/`iB` allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        Some((i, 't' | 'T')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (e.g. 4096, 64K, 1M, 2G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C / SIGTERM into a flag the measuring loop checks, so the data file is removed.
/// (No signal crate is available to this workspace; this is the one unsafe call of the CLI.)
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(super::Interrupted.into());
    }
    Ok(())
}

/// The data file, removed when dropped (normal exit, error or interrupt).
struct DataFile(PathBuf);
impl Drop for DataFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(args: &IoBenchArgs) -> anyhow::Result<ExitCode> {
    let args = &*args.opts;
    let backend: BackendChoice = args.backend.parse()?;
    let points = points(args)?;
    let depth_bytes = pool_bytes(&points)?;
    catch_interrupts();
    let pool = BufferPool::new(depth_bytes as usize, true).context("allocating the buffer pool")?;
    let data = DataFile(
        args.dir
            .join(format!("zinf-io-bench.{}.dat", std::process::id())),
    );
    let base = AioConfig {
        backend,
        direct: !args.buffered,
        ..AioConfig::default()
    };
    let bar = progress(args, &points);
    bar.set_message("filling the data file");
    fill_file(&data.0, args.io_size, &base, &pool)?;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); points.len()];
    let mut backend_name = String::new();
    let mut direct = !args.buffered;
    for rep in 0..args.repeat {
        for (i, p) in points.iter().enumerate() {
            bar.set_message(format!(
                "run {}/{} {:?} bs {} qd {} threads {}",
                rep + 1,
                args.repeat,
                p.rw,
                report::size_label(p.block_size),
                p.queue_depth,
                p.threads
            ));
            let cfg = AioConfig {
                block_size: p.block_size as usize,
                queue_depth: p.queue_depth,
                intra_op_parallelism: p.threads,
                ..base.clone()
            };
            let (r, name, dio) = measure(&data.0, args, *p, &cfg, &pool, &bar)?;
            backend_name = name;
            direct = dio;
            runs[i].push(r);
        }
    }
    bar.finish_and_clear();
    let results = report::summarize(&points, &runs, &backend_name);
    report::print_table(&results, direct, args);
    if let Some(path) = &args.json {
        report::write_json(path, &results)?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&results)).with_context(|| format!("writing {path:?}"))?;
    }
    if args.tune {
        println!("{}", report::tune_block(&results));
    }
    let s = pool.stats();
    tracing::info!(
        "buffer pool: {} MiB, peak {} MiB, {:?} pages, pinned {}",
        s.capacity_bytes >> 20,
        s.peak_bytes >> 20,
        s.huge_pages,
        s.pinned
    );
    Ok(ExitCode::SUCCESS)
}

/// Bytes in flight at the deepest point (the pool's size), refused before anything is allocated
/// when it is more than this machine's RAM.
fn pool_bytes(points: &[Point]) -> anyhow::Result<u64> {
    let depth_bytes = points
        .iter()
        .map(|p| {
            p.block_size
                .saturating_mul(p.queue_depth as u64)
                .saturating_mul(p.threads as u64)
        })
        .max()
        .unwrap_or(1 << 20);
    if let Some(ram) = crate::config::host_memory_bytes() {
        if depth_bytes > ram / 2 {
            let m = "--block-size × --queue-depth × --threads";
            return Err(super::BadInput(format!(
                "{m} puts {depth_bytes} B in flight, more than half of this machine's {ram} B \
                 of RAM; lower one of them"
            ))
            .into());
        }
    }
    Ok(depth_bytes)
}

/// Every combination of the arguments' lists, checked.
fn points(args: &IoBenchOpts) -> anyhow::Result<Vec<Point>> {
    let bad = |m: String| -> anyhow::Error { super::BadInput(m).into() };
    let mut out = Vec::new();
    for &rw in &args.rw {
        for &block_size in &args.block_size {
            for &queue_depth in &args.queue_depth {
                for &threads in &args.threads {
                    if block_size == 0
                        || block_size % 4096 != 0
                        || block_size > args.io_size
                        || block_size > zinf_aio::MAX_BLOCK_BYTES as u64
                    {
                        return Err(bad(format!(
                            "--block-size {block_size} must be a multiple of 4096, at most \
                             --io-size and at most 1 GiB"
                        )));
                    }
                    out.push(Point {
                        rw,
                        block_size,
                        queue_depth,
                        threads,
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return Err(bad("nothing to measure".into()));
    }
    Ok(out)
}

fn progress(args: &IoBenchOpts, points: &[Point]) -> ProgressBar {
    let bar = ProgressBar::new((points.len() * args.repeat) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Writes the whole data file once (real data: reading holes would measure nothing).
fn fill_file(path: &Path, size: u64, base: &AioConfig, pool: &BufferPool) -> anyhow::Result<()> {
    let cfg = AioConfig {
        block_size: 8 << 20,
        queue_depth: 8,
        ..base.clone()
    };
    let eng = AioEngine::with_pool(&cfg, pool)?;
    let f = eng.open(path, OpenMode::CreateReadWrite)?;
    eng.preallocate(f, size)?;
    let chunk = (size as usize).min(pool.capacity_bytes()).min(64 << 20);
    let mut buf = pool.alloc(chunk)?;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
    }
    let mut off = 0u64;
    while off < size {
        check_interrupt()?;
        let n = chunk.min((size - off) as usize);
        buf.set_len(n);
        buf = eng.write(f, off, buf).wait()?;
        off += n as u64;
    }
    eng.fdatasync(f)?;
    Ok(())
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given; all-zero is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One run: `queue_depth × threads` block-sized requests kept in flight over the file.
fn measure(
    path: &Path,
    args: &IoBenchOpts,
    p: Point,
    cfg: &AioConfig,
    pool: &BufferPool,
    bar: &ProgressBar,
) -> anyhow::Result<(Run, String, bool)> {
    let eng = AioEngine::with_pool(cfg, pool)?;
    let f = eng.open(path, OpenMode::ReadWrite)?;
    let direct = eng.is_direct(f)?;
    let bs = p.block_size;
    let blocks = args.io_size / bs;
    let depth = p.queue_depth * p.threads;
    let mut free: Vec<_> = (0..depth)
        .map(|_| pool.alloc(bs as usize))
        .collect::<Result<_, _>>()?;
    let deadline = args.seconds.map(Duration::from_secs_f64);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let (mut next, mut moved) = (0u64, 0u64);
    let mut inflight: Vec<Request> = Vec::with_capacity(depth);
    loop {
        let more = match deadline {
            Some(d) => t0.elapsed() < d,
            None => next < blocks,
        };
        while more && inflight.len() < depth {
            let Some(buf) = free.pop() else { break };
            let off = (next % blocks) * bs;
            next += 1;
            inflight.push(match p.rw {
                Rw::Read => eng.read(f, off, buf),
                Rw::Write => eng.write(f, off, buf),
            });
        }
        if inflight.is_empty() {
            break;
        }
        let i = wait_any(&mut inflight);
        free.push(inflight.swap_remove(i).wait()?);
        moved += bs;
        check_interrupt()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    bar.inc(1);
    let gb = moved as f64 / 1e9;
    let run = Run {
        gbps: gb / secs,
        cpu_s_per_gb: cpu / gb,
    };
    Ok((run, eng.backend().name().to_string(), direct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("fast").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    fn result(rw: Rw, bs: u64, qd: usize, gbps: f64) -> report::PointResult {
        report::PointResult {
            rw,
            block_size: bs,
            queue_depth: qd,
            threads: 1,
            backend: "uring".into(),
            gbps,
            cpu_s_per_gb: 0.01,
            runs: vec![gbps],
        }
    }

    #[test]
    fn tune_picks_the_best_mean_of_read_and_write_and_plot_draws_both_panels() {
        let rs = vec![
            result(Rw::Read, 1 << 20, 8, 3.0),
            result(Rw::Write, 1 << 20, 8, 1.0),
            result(Rw::Read, 8 << 20, 32, 2.5),
            result(Rw::Write, 8 << 20, 32, 2.0),
        ];
        let block: serde_json::Value = serde_json::from_str(&report::tune_block(&rs)).unwrap();
        assert_eq!(block["aio"]["block_size"], 8 << 20);
        assert_eq!(block["aio"]["queue_depth"], 32);
        let svg = plot::svg(&rs);
        assert!(svg.contains(">read (GB/s)<") && svg.contains(">write (GB/s)<"));
        assert_eq!(
            svg.matches("<polyline").count(),
            4,
            "one line per queue depth per panel"
        );
        assert_eq!(report::median(&[3.0, 1.0, 2.0]), 2.0);
        // Axis titles, and round ticks: data up to 3.0 GB/s gives 0, 0.5, ..., 3.0.
        assert!(svg.contains(">block size (log scale)<") && svg.contains(">throughput (GB/s)<"));
        assert!(svg.contains(">0.5<") && svg.contains(">3.0<") && !svg.contains(">0.75<"));
    }

    #[test]
    fn plot_ticks_are_round() {
        for (max, top, step) in [
            (3.0, 3.0, 0.5),
            (2.37, 2.5, 0.5),
            (0.1, 0.1, 0.02),
            (7.3, 8.0, 2.0),
            (12.0, 12.0, 2.0),
            (45.0, 50.0, 10.0),
        ] {
            let (t, s) = plot::round_ticks(max);
            assert!(
                (t - top).abs() < 1e-9 && (s - step).abs() < 1e-9,
                "{max}: {t} by {s}"
            );
        }
    }
}
