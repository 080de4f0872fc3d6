//! `zinf estimate --config FILE [--json]`: what the run will hold in each tier at peak, what it
//! moves per step, whether the NVMe folder has room, and DeepSpeed's own estimate beside ours.

use crate::config::Config;
use crate::estimate::{estimate, statvfs_free_bytes, Estimate, Tier};
use crate::session::{Overrides, Session};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct EstimateArgs {
    /// The DeepSpeed JSON config (with the model in its "zinf" block).
    #[arg(long)]
    pub config: PathBuf,
    /// NVMe bandwidth in GB/s for the minimum step time (measure yours with `zinf io-bench`).
    #[arg(long, default_value_t = 2.0, value_parser = super::parse_positive)]
    pub nvme_gbps: f64,
    /// Print the estimate as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// A Hugging Face folder whose shape the run trains (sets zinf.model.from, as
    /// `zinf train --init-from` does); its config.json is enough.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Data-parallel ranks of the run (as `zinf train --nproc-per-node`): figures per rank.
    #[arg(long, default_value_t = 1, value_parser = super::count_in(1, crate::cli::MAX_RANKS as u64))]
    pub nproc_per_node: u64,
}

pub fn run(args: &EstimateArgs) -> anyhow::Result<ExitCode> {
    let world = args.nproc_per_node;
    let loaded = match Config::load_for_world(Some(&args.config), args.init_from.as_deref(), world)
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::EXIT_BAD_INPUT));
        }
    };
    loaded.log();
    let config = &loaded.config;
    let host_ram = crate::config::host_memory_bytes();
    // The same plan `zinf train` makes; what it would refuse is an error here too.
    // A shape is enough to estimate: the folder may hold only its config.json.
    let o = Overrides {
        shape_only: true,
        partition: Some(crate::engine::Partition {
            rank: 0,
            world_size: world as usize,
        }),
        ..Overrides::default()
    };
    let plan = match Session::draft(config, &o) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::exit_code(&e.into())));
        }
    };
    let e = estimate(config, &plan, args.nvme_gbps, host_ram, &statvfs_free_bytes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print_human(&e);
    }
    for w in &e.warnings {
        tracing::warn!("{w}");
    }
    let refused = plan.refusals(config, &e);
    if refused.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("error: zinf train would refuse this config:");
    for r in &refused {
        eprintln!("  {r}");
    }
    Ok(ExitCode::from(super::EXIT_BAD_INPUT))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn print_tier(name: &str, t: &Tier) {
    println!("  {name:<14} {:>12}", gib(t.bytes));
    for item in &t.items {
        println!("      {:>12}  {}", gib(item.bytes), item.what);
    }
}

fn print_human(e: &Estimate) {
    println!(
        "model: {} parameters ({}), largest tensor {} elements, largest group {} elements",
        e.model.params, e.param_dtype, e.model.largest_tensor, e.model.largest_group
    );
    if e.model.world_size > 1 {
        println!(
            "{} ranks: rank 0 owns {} parameters (figures below are per rank; the host holds \
             every rank's)",
            e.model.world_size, e.model.owned
        );
    }
    println!("peak bytes per tier:");
    print_tier("device", &e.device);
    print_tier("pinned host", &e.pinned_host);
    print_tier("pageable host", &e.pageable_host);
    print_tier("nvme", &e.nvme);
    for s in &e.nvme_space {
        let avail = s
            .available_bytes
            .map(gib)
            .unwrap_or_else(|| "unknown".into());
        println!(
            "  {} {:?}: the swap store needs {}, free {}",
            s.key,
            s.path,
            gib(s.needed_bytes),
            avail
        );
    }
    println!("  a save (--save DIR) takes {} there", gib(e.save_bytes));
    let t = &e.traffic_per_step;
    println!("per optimizer step:");
    println!(
        "  nvme read {}, nvme write {}",
        gib(t.nvme_read_bytes),
        gib(t.nvme_write_bytes)
    );
    println!(
        "  host->device {}, device->host {}",
        gib(t.host_to_device_bytes),
        gib(t.device_to_host_bytes)
    );
    if e.model.world_size > 1 {
        println!(
            "  collectives (received: all-gathers and reduce-scatters) {}",
            gib(t.collective_bytes)
        );
    }
    println!(
        "  minimum step time from NVMe traffic at {} GB/s: {:.3} s",
        e.nvme_gbps, e.min_step_s_nvme
    );
    println!("DeepSpeed estimate_zero3_model_states_mem_needs_all_live (1 GPU, 1 node):");
    for r in &e.deepspeed_all_live {
        println!(
            "  offload_param={:<4} offload_optimizer={:<4} zero_init={}  cpu {:>10}  gpu {:>10}",
            r.offload_param,
            r.offload_optimizer,
            u8::from(r.zero_init),
            gib(r.cpu_bytes),
            gib(r.gpu_bytes)
        );
    }
}
