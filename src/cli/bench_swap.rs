//! `zinf bench swap`: one optimizer step over fp32 master/m/v state on disk, through the path a
//! training step takes — `Tiers` (`src/tiers/`) with the optimizer state on NVMe, its bounded
//! request queue and the swap store on zinf-aio. It times the step with a no-op update (the I/O
//! alone), the update alone in memory, and the step with an Adam update, and reports `step_s`,
//! `io_only_s`, `update_only_s`, bytes moved, `io_gbps` and the peak RSS.
//!
//! The step drives the tiers as `src/engine/update.rs` does: units in update order, each one's
//! successors read ahead (`prefetch_opt`), Adam run where the state lives (`update_unit`),
//! written behind, then every write finished (`flush`). The update is the real CPU AdamW
//! (`crate::optim::Adam`, SIMD kernel chosen at run time) with bf16 gradients from host memory
//! and the bf16 parameter copy-out into the tiers' host array. Gradients are one unit's worth,
//! reused for every unit, so host memory stays at the pool, the bf16 parameters (2 bytes per
//! parameter) and a few unit buffers whatever `--params` is.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use half::bf16;
use zinf_aio::AioConfig;

use crate::host::{HostParams, ParamDtype};
use crate::optim::{Adam, AdamConfig, Grad, ParamOut, StepScalars};
use crate::tiers::{NvmePlacement, NvmeSetup, Recorder, TierError, TierLayout, Tiers};
use zinf_swap::{AioBackend, BlockIo, PoolConfig, Store, StoreConfig};

#[derive(clap::Args, Debug)]
pub struct BenchSwapArgs {
    /// Parameters (elements) of optimizer state; `1e8` style accepted.
    #[arg(long, default_value = "5e7", value_parser = super::count_in(1, super::bench_adam::MAX_PARAMS))]
    pub params: u64,
    /// Folder for the extent files; repeat to stripe over several drives.
    #[arg(long, required = true)]
    pub dir: Vec<PathBuf>,
    /// Elements per optimizer unit (DeepSpeed `sub_group_size`).
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
    /// Units read ahead of the one updating: the next one even if writes must finish first,
    /// further ones only while the pool has room. The default is the engine's (2);
    /// DeepSpeed's pipeline_read is 1.
    #[arg(long, default_value_t = 2)]
    pub read_ahead: usize,
    /// Unit writes (three shards each) kept in flight behind. The default is the engine's (4:
    /// 12 shard writes); DeepSpeed's pipeline_write is 1.
    #[arg(long, default_value_t = 4)]
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

/// One AdamW step on one unit: bf16 gradient in, bf16 parameter copy out.
fn adam_update(
    adam: &mut Adam,
    (master, m, v): (&mut [f32], &mut [f32], &mut [f32]),
    grads: &[bf16],
    out: &mut [bf16],
    step: u64,
) -> Result<(), crate::optim::OptimError> {
    let scalars = StepScalars {
        lr: 1e-3,
        step,
        grad_scale: 1.0,
    };
    let n = master.len();
    adam.step(
        master,
        m,
        v,
        Grad::Bf16(&grads[..n]),
        ParamOut::Bf16(out),
        scalars,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What one measured step took and moved.
struct StepTimes {
    step_s: f64,
    bytes_read: u64,
    bytes_written: u64,
}

struct Bench {
    tiers: Tiers<AioBackend>,
    adam: Adam,
    /// One unit's gradients, reused for every unit.
    grads: Vec<bf16>,
    read_ahead: usize,
    step: u64,
}

impl Bench {
    fn store(&self) -> &Store<AioBackend> {
        &self.tiers.nvme().expect("optimizer state on NVMe").store
    }

    /// Starts reading the `read_ahead` units after `u` in update order: the next one even if
    /// writes must finish first, the others only if the pool has room (`engine/update.rs`).
    fn prefetch_after(&mut self, u: usize) -> Result<(), TierError> {
        let mut at = u;
        for k in 0..self.read_ahead {
            let Some(n) = self.tiers.layout().next_unit(at) else {
                break;
            };
            self.tiers.prefetch_opt(n, k == 0)?;
            at = n;
        }
        Ok(())
    }

    /// One optimizer step over the tiers (Adam or a no-op), every write finished.
    fn step(&mut self, adam: bool) -> anyhow::Result<StepTimes> {
        let t = Instant::now();
        let (r0, w0) = self.tiers.nvme_bytes();
        self.step += 1;
        for gi in (0..self.tiers.layout().groups.len()).rev() {
            self.tiers.begin_group_update();
            for u in self.tiers.layout().group_units[gi].clone() {
                self.prefetch_after(u)?;
                let (opt, grads, step) = (&mut self.adam, &self.grads, self.step);
                self.tiers
                    .update_unit::<anyhow::Error>(u, |master, m, v, out, range| {
                        let HostParams::Bf16(p) = out else {
                            unreachable!("the bench lays out bf16 parameters")
                        };
                        if adam {
                            adam_update(opt, (master, m, v), grads, &mut p[range], step)?;
                        }
                        Ok(())
                    })?;
            }
            self.tiers.finish_group_update(gi)?;
        }
        self.tiers.flush()?;
        let (r1, w1) = self.tiers.nvme_bytes();
        Ok(StepTimes {
            step_s: t.elapsed().as_secs_f64(),
            bytes_read: r1 - r0,
            bytes_written: w1 - w0,
        })
    }

    /// The update alone over every unit's worth of state, in memory (no I/O): one unit's
    /// arrays reused.
    fn update_only(&mut self) -> anyhow::Result<f64> {
        let layout = self.tiers.layout();
        let n = layout.max_unit_len();
        let lens: Vec<usize> = layout.units.iter().map(|u| u.range.len()).collect();
        let (mut p, mut m, mut v) = (vec![0.5f32; n], vec![0f32; n], vec![0f32; n]);
        let mut out = vec![bf16::ZERO; n];
        let t = Instant::now();
        for len in lens {
            let state = (&mut p[..len], &mut m[..len], &mut v[..len]);
            adam_update(&mut self.adam, state, &self.grads, &mut out[..len], 1)?;
        }
        std::hint::black_box(&p);
        Ok(t.elapsed().as_secs_f64())
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

/// The parameters as groups of `sub_group_size` elements, one unit each.
fn bench_layout(params: u64, sub_group_size: u64) -> TierLayout {
    let (n, g) = (params as usize, sub_group_size as usize);
    let groups = (0..n).step_by(g).map(|s| s..(s + g).min(n)).collect();
    TierLayout::new(groups, &[], |r| r, sub_group_size, ParamDtype::Bf16)
}

fn open_bench(args: &BenchSwapArgs, dirs: &[PathBuf]) -> anyhow::Result<Bench> {
    let layout = bench_layout(args.params, args.sub_group_size);
    let (read_ahead, write_behind) = match args.no_pipeline {
        true => (0, 0),
        false => (args.read_ahead, args.write_behind),
    };
    // One pool buffer per shard; each unit's three fp32 tensors are one chunk apiece.
    let chunk = (layout.max_unit_len() as u64 * 4).next_multiple_of(4096);
    let stages = (1 + read_ahead + write_behind) as u64;
    let need = 3 * stages * zinf_swap::aio_backend::pool_reserve_bytes(chunk, u64::MAX);
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
    let config = StoreConfig::new(dirs.to_vec()).chunk_bytes(chunk);
    let setup = NvmeSetup::new(AioBackend::new(&aio, &pool)?, config, 3 * write_behind);
    let place = NvmePlacement {
        params: false,
        optimizer: true,
    };
    let mut tiers = Tiers::new(layout, place, Some(setup), 0, Recorder::untraced())?;
    for gi in 0..tiers.layout().groups.len() {
        let len = tiers.layout().numel(gi);
        let stored = HostParams::from_f32(ParamDtype::Bf16, &vec![0.5; len]);
        tiers.init_group(gi, &stored, &stored.to_f32())?;
    }
    tiers.commit()?;
    let n = tiers.layout().max_unit_len();
    let grads: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i % 1000) as f32 - 500.0) * 1e-4))
        .collect();
    let adam_cfg = AdamConfig {
        weight_decay: 0.01,
        ..AdamConfig::default()
    };
    Ok(Bench {
        tiers,
        adam: Adam::new(adam_cfg, args.adam_threads)?,
        grads,
        read_ahead,
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
    let (mut io_s, mut upd_s, mut step_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut commit_s = Vec::new();
    let (mut bytes_read, mut bytes_written) = (0, 0);
    for _ in 0..args.reps {
        let io = b.step(false)?;
        io_s.push(io.step_s);
        (bytes_read, bytes_written) = (io.bytes_read, io.bytes_written);
        // The store's commit (sync, manifest), timed apart: a training step does not commit.
        let c = Instant::now();
        b.tiers.commit()?;
        commit_s.push(c.elapsed().as_secs_f64());
        upd_s.push(b.update_only()?);
        step_s.push(b.step(true)?.step_s);
    }
    b.tiers.assert_invariants();
    let (io_only_s, update_only_s, step_s) = (median(io_s), median(upd_s), median(step_s));
    let io_gbps = (bytes_read + bytes_written) as f64 / io_only_s / 1e9;
    let overlap = step_s / io_only_s.max(update_only_s);
    let store = b.store();
    let q = b.tiers.queue_counters();
    let report = serde_json::json!({
        "params": args.params,
        "sub_group_size": args.sub_group_size,
        "sub_groups": b.tiers.layout().units.len(),
        "read_ahead": b.read_ahead,
        "write_behind": if args.no_pipeline { 0 } else { args.write_behind },
        "backend": store.io().engine().backend().to_string(),
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
        "opt_prefetch_hits": q.opt_prefetch_hits,
        "opt_misses": q.opt_misses,
        "pool_budget_bytes": store.io().pool_budget_bytes(),
        "pool_pinned": store.io().pool_pinned(),
        "pool_peak_bytes": store.io().pool().stats().peak_bytes,
        "pool_wait_s": q.pool_wait_ns as f64 / 1e9,
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
        "optimizer step over {} params on disk ({} units, read ahead {}, write behind {}, {})",
        r["params"],
        r["sub_groups"],
        r["read_ahead"],
        r["write_behind"],
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
