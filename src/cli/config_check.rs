//! `zinf config check FILE [--json]`: validate a DeepSpeed config and print it resolved (every
//! default filled in, every `"auto"` resolved), or every problem found with its JSON path.
//! It runs `zinf train`'s whole pre-flight ([`Session::draft`] and [`Session::refusals`]:
//! placement, pinned pool, device and host budgets, the swap store against the free space
//! under each `nvme_path`), so a config it passes is one `train` starts.
//! Exit status 0 when valid, 2 when not (or the file cannot be read).

use crate::config::Config;
use crate::engine::summary::human_bytes;
use crate::estimate::{estimate, statvfs_free_bytes};
use crate::session::{Overrides, Session};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The DeepSpeed JSON config to check.
    pub file: PathBuf,
    /// Print the resolved config as JSON on stdout (diagnostics go to stderr).
    #[arg(long)]
    pub json: bool,
    /// A Hugging Face folder whose shape the run trains (sets zinf.model.from, as
    /// `zinf train --init-from` does).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Data-parallel ranks the run will have (as `zinf train --nproc-per-node`):
    /// `train_batch_size` counts them and the pre-flight is rank 0's.
    #[arg(long, default_value_t = 1, value_parser = super::count_in(1, crate::cli::MAX_RANKS as u64))]
    pub nproc_per_node: u64,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let world = args.nproc_per_node;
    let loaded = match Config::load_for_world(Some(&args.file), args.init_from.as_deref(), world) {
        Ok(l) => l,
        // A missing or unreadable file is bad input too: exit 2, like every config error.
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::EXIT_BAD_INPUT));
        }
    };
    loaded.log();
    let c = &loaded.config;
    let o = Overrides {
        partition: Some(crate::engine::Partition {
            rank: 0,
            world_size: world as usize,
        }),
        ..Overrides::default()
    };
    let plan = match Session::draft(c, &o) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            return Ok(ExitCode::from(super::exit_code(&e.into())));
        }
    };
    let est = estimate(
        c,
        &plan,
        2.0,
        crate::config::host_memory_bytes(),
        &statvfs_free_bytes,
    );
    let refused = plan.refusals(c, &est);
    if !refused.is_empty() {
        eprintln!(
            "error: {}: {} problem(s) zinf train would refuse before its first step:",
            args.file.display(),
            refused.len()
        );
        for r in &refused {
            eprintln!("  {r}");
        }
        return Ok(ExitCode::from(super::EXIT_BAD_INPUT));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: valid", args.file.display());
    println!(
        "  batch {} = micro {} × accumulation {}; {} params ({}), ZeRO stage {}",
        c.train_batch_size,
        c.train_micro_batch_size_per_gpu,
        c.gradient_accumulation_steps,
        c.zinf.model.num_params(),
        c.param_dtype_name(),
        c.zero_optimization.stage
    );
    println!(
        "  offload_param: {}, offload_optimizer: {}",
        c.zero_optimization.offload_param.device, c.zero_optimization.offload_optimizer.device
    );
    println!(
        "  device peak {} of a {} budget; host {} (pinned pool {}); swap store {}",
        human_bytes(est.device.bytes),
        human_bytes(plan.settings.train.device_memory_budget),
        human_bytes(est.host_bytes()),
        human_bytes(plan.pool_bytes),
        human_bytes(est.nvme.bytes)
    );
    for s in &est.nvme_space {
        println!(
            "  {} {}: needs {}, {} free",
            s.key,
            s.path,
            human_bytes(s.needed_bytes),
            s.available_bytes.map_or("unknown".into(), human_bytes)
        );
    }
    println!("  (--json prints every resolved key; `zinf estimate` itemizes the bytes)");
    Ok(ExitCode::SUCCESS)
}
