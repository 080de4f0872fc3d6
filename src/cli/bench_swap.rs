//! `zinf bench swap`: one optimizer step over fp32 master/m/v state on disk, through the swap
//! store's pipelined optimizer swapper on zinf-aio. It times the step with a no-op update (the
//! I/O alone), the update alone in memory, and the step with an Adam update, and reports
//! `step_s`, `io_only_s`, `update_only_s`, bytes moved, `io_gbps` and the peak RSS.
//!
//! The update is the real CPU AdamW (`crate::optim::Adam`, SIMD kernel chosen at run time) with
//! bf16 gradients from host memory and the bf16 parameter copy-out, as a training step runs it.
//! Gradients are one sub-group's worth, reused for every sub-group, so host memory stays at the
//! pool plus a few sub-group buffers whatever `--params` is.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use half::bf16;
use zinf_aio::AioConfig;

use crate::optim::{Adam, AdamConfig, Grad, ParamOut, StepScalars};
use zinf_swap::{
    AioBackend, OptimizerLayout, OptimizerSwapper, PoolConfig, Store, StoreConfig, SubGroup,
};

#[derive(clap::Args, Debug)]
pub struct BenchSwapArgs {
    /// Parameters (elements) of optimizer state; `1e8` style accepted.
    #[arg(long, default_value = "5e7", value_parser = super::count_in(1, super::bench_adam::MAX_PARAMS))]
    pub params: u64,
    /// Folder for the extent files; repeat to stripe over several drives.
    #[arg(long, required = true)]
    pub dir: Vec<PathBuf>,
    /// Elements per sub-group (DeepSpeed `sub_group_size`).
    #[arg(long, default_value = "4e6", value_parser = super::count_in(1, super::bench_adam::MAX_PARAMS))]
    pub sub_group_size: u64,
    /// aio `block_size` in bytes: 4096 to 1 GiB.
    #[arg(long, default_value = "1048576", value_parser = super::count_in(4096, 1 << 30))]
    pub block_size: u64,
    /// aio `queue_depth`: 1 to 4096.
    #[arg(long, default_value_t = 32, value_parser = super::count_usize(1, crate::config::AIO_MAX_QUEUE_DEPTH))]
    pub queue_depth: usize,
    /// aio `intra_op_parallelism` (I/O threads): 1 to 256.
    #[arg(long, default_value_t = 1, value_parser = super::count_usize(1, crate::config::AIO_MAX_THREADS))]
    pub threads: usize,
    /// Pool budget in bytes (default: what the pipeline needs).
    #[arg(long, value_parser = super::parse_count)]
    pub pool_bytes: Option<u64>,
    /// Lock the pool in RAM (`pin_memory`).
    #[arg(long)]
    pub pin_memory: bool,
    /// Turn off pipeline_read and pipeline_write (for comparison).
    #[arg(long)]
    pub no_pipeline: bool,
    /// Sub-groups read ahead of the one updating (DeepSpeed's pipeline_read is 1).
    #[arg(long, default_value_t = 1)]
    pub read_ahead: usize,
    /// Sub-group writes kept in flight behind (DeepSpeed's pipeline_write is 1).
    #[arg(long, default_value_t = 1)]
    pub write_behind: usize,
    /// Repetitions of each measurement (interleaved); medians are reported.
    #[arg(long, default_value_t = 3, value_parser = super::count_usize(1, 1000))]
    pub reps: usize,
    /// Threads of the CPU Adam (0: one per CPU).
    #[arg(long, default_value_t = 0, value_parser = super::count_usize(0, 4096))]
    pub adam_threads: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Keep the store's files after the run.
    #[arg(long)]
    pub keep: bool,
}

/// One AdamW step on one sub-group: bf16 gradient in, bf16 parameter copy out.
fn adam_update(adam: &mut Adam, sg: SubGroup<'_>, grads: &[bf16], out: &mut [bf16], step: u64) {
    let n = sg.master.len();
    let scalars = StepScalars {
        lr: 1e-3,
        step,
        grad_scale: 1.0,
    };
    // Lengths match by construction (all slices are cut to the sub-group's length).
    adam.step(
        sg.master,
        sg.exp_avg,
        sg.exp_avg_sq,
        Grad::Bf16(&grads[..n]),
        ParamOut::Bf16(&mut out[..n]),
        scalars,
    )
    .expect("adam step on equal-length slices");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Bench {
    store: Store<AioBackend>,
    sw: OptimizerSwapper,
    adam: Adam,
    grads: Vec<bf16>,
    out_bf16: Vec<bf16>,
    step: u64,
}

impl Bench {
    /// One optimizer step over the store (update or no-op), committed; returns seconds (of
    /// which the commit), bytes read and bytes written.
    fn step(&mut self, adam: bool) -> anyhow::Result<(f64, f64, u64, u64)> {
        let t = Instant::now();
        self.step += 1;
        let (grads, out, step) = (&self.grads, &mut self.out_bf16, self.step);
        let opt = &mut self.adam;
        let st = self.sw.for_each_subgroup(&mut self.store, |_, sg| {
            if adam {
                adam_update(opt, sg, grads, out, step);
            }
        })?;
        let c = Instant::now();
        self.store.commit()?;
        let commit_s = c.elapsed().as_secs_f64();
        Ok((
            t.elapsed().as_secs_f64(),
            commit_s,
            st.bytes_read,
            st.bytes_written,
        ))
    }

    /// The update alone over every sub-group's worth of state, in memory (no I/O).
    fn update_only(&mut self, layout: &OptimizerLayout) -> f64 {
        let n = layout.sub_group_size as usize;
        let (mut p, mut m, mut v) = (vec![0.5f32; n], vec![0f32; n], vec![0f32; n]);
        let t = Instant::now();
        for k in 0..layout.sub_groups() {
            let len = layout.range(k).len();
            let sg = SubGroup {
                range: layout.range(k),
                master: &mut p[..len],
                exp_avg: &mut m[..len],
                exp_avg_sq: &mut v[..len],
            };
            adam_update(&mut self.adam, sg, &self.grads, &mut self.out_bf16, 1);
        }
        std::hint::black_box(&p);
        t.elapsed().as_secs_f64()
    }
}

/// Removes the bench's folders when the run ends, unless `--keep`.
struct Cleanup(Vec<PathBuf>, bool);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.1 {
            for d in &self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

fn open_bench(args: &BenchSwapArgs, dirs: &[PathBuf]) -> anyhow::Result<Bench> {
    let layout = OptimizerLayout::new("optimizer", args.params, args.sub_group_size)?;
    let sw = match args.no_pipeline {
        true => OptimizerSwapper::new(layout.clone()).pipeline(false, false),
        false => OptimizerSwapper::new(layout.clone()).depth(args.read_ahead, args.write_behind),
    };
    let stages = (1 + sw.read_ahead + sw.write_behind) as u64;
    let need = 3
        * stages
        * zinf_swap::aio_backend::pool_reserve_bytes(layout.min_chunk_bytes(4096), u64::MAX);
    let pool = PoolConfig {
        budget_bytes: Some(args.pool_bytes.unwrap_or(need)),
        pin_memory: args.pin_memory,
        ..PoolConfig::deepspeed_default()
    };
    let aio = AioConfig {
        block_size: args.block_size as usize,
        queue_depth: args.queue_depth,
        intra_op_parallelism: args.threads,
        ..AioConfig::default()
    };
    let backend = AioBackend::new(&aio, &pool)?;
    let cfg = StoreConfig::new(dirs.to_vec()).chunk_bytes(layout.min_chunk_bytes(4096));
    let mut store = Store::create(backend, &cfg, &layout.specs())?;
    let n = args.sub_group_size.min(args.params) as usize;
    let grads: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i % 1000) as f32 - 500.0) * 1e-4))
        .collect();
    let adam_cfg = AdamConfig {
        weight_decay: 0.01,
        ..AdamConfig::default()
    };
    let adam = Adam::new(adam_cfg, args.adam_threads)?;
    sw.initialize(&mut store, |_, sg| sg.master.fill(0.5))?;
    store.commit()?;
    Ok(Bench {
        store,
        sw,
        adam,
        grads,
        out_bf16: vec![bf16::ZERO; n],
        step: 0,
    })
}

pub fn run(args: &BenchSwapArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    let pid = std::process::id();
    let dirs: Vec<PathBuf> = args
        .dir
        .iter()
        .map(|d| d.join(format!("zinf-bench-swap.{pid}")))
        .collect();
    let _cleanup = Cleanup(dirs.clone(), args.keep);
    let mut b = open_bench(args, &dirs).context("setting up the swap store")?;
    let layout = b.sw.layout().clone();
    let (mut io_s, mut upd_s, mut step_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut commit_s = Vec::new();
    let (mut bytes_read, mut bytes_written) = (0, 0);
    for _ in 0..args.reps {
        let (s, c, r, w) = b.step(false)?;
        io_s.push(s);
        commit_s.push(c);
        (bytes_read, bytes_written) = (r, w);
        upd_s.push(b.update_only(&layout));
        step_s.push(b.step(true)?.0);
    }
    let (io_only_s, update_only_s, step_s) = (median(io_s), median(upd_s), median(step_s));
    let io_gbps = (bytes_read + bytes_written) as f64 / io_only_s / 1e9;
    let overlap = step_s / io_only_s.max(update_only_s);
    let c = zinf_swap::Counters::gather(&b.store, None);
    let report = serde_json::json!({
        "params": args.params,
        "sub_group_size": args.sub_group_size,
        "sub_groups": layout.sub_groups(),
        "read_ahead": b.sw.read_ahead,
        "write_behind": b.sw.write_behind,
        "backend": b.store.io().engine().backend().to_string(),
        "adam_kernel": b.adam.kernel().name(),
        "adam_threads": b.adam.threads(),
        "reps": args.reps,
        "step_s": step_s,
        "io_only_s": io_only_s,
        "update_only_s": update_only_s,
        "step_over_max": overlap,
        "bytes_read": bytes_read,
        "bytes_written": bytes_written,
        "io_gbps": io_gbps,
        "commit_s": median(commit_s),
        "pool_budget_bytes": c.pool_budget_bytes,
        "pool_pinned": c.pool_pinned,
        "pool_peak_bytes": b.store.io().pool().stats().peak_bytes,
        "pool_wait_s": c.pool_wait_ns as f64 / 1e9,
        "peak_rss_bytes": crate::engine::summary::peak_rss_bytes().unwrap_or(0),
    });
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(r: &serde_json::Value) {
    println!(
        "optimizer step over {} params on disk ({} sub-groups, pipeline {}, {})",
        r["params"],
        r["sub_groups"],
        r["pipeline"],
        r["backend"].as_str().unwrap_or("?")
    );
    for k in [
        "step_s",
        "io_only_s",
        "update_only_s",
        "step_over_max",
        "io_gbps",
    ] {
        println!("  {k:<18} {:.3}", r[k].as_f64().unwrap_or(f64::NAN));
    }
    for k in [
        "bytes_read",
        "bytes_written",
        "pool_budget_bytes",
        "pool_peak_bytes",
        "peak_rss_bytes",
    ] {
        println!("  {k:<18} {}", r[k]);
    }
}
