//! `zinf export --from SAVE --to DIR --config CFG`: writes the parameters of a save (`--save`
//! of `zinf train`) as a Hugging Face folder transformers loads, as the end of a run does.
//!
//! The save is opened the way `--resume` opens it (the run's config says the placement and
//! the model; a Llama-family run also names the folder it started from, `--init-from` or
//! `zinf.model.from`, whose `config.json` and tokenizer files the export keeps), then the
//! parameters stream one group at a time from the tiers into sharded safetensors.

use crate::config::Config;
use crate::data::Dataset;
use crate::dist::threads::ThreadComm;
use crate::engine::summary::human_bytes;
use crate::engine::Partition;
use crate::model::export::DEFAULT_MAX_SHARD_BYTES;
use crate::session::{Overrides, Session};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// The save folder (`zinf train --save DIR`).
    #[arg(long = "from")]
    pub from: PathBuf,
    /// The folder to write (created; files of the same names are replaced).
    #[arg(long)]
    pub to: PathBuf,
    /// The run's DeepSpeed config (placement and model of the save).
    #[arg(long)]
    pub config: PathBuf,
    /// The Hugging Face folder the run started from (sets zinf.model.from).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Largest safetensors file, bytes (transformers' default "5GB").
    #[arg(long, default_value_t = DEFAULT_MAX_SHARD_BYTES)]
    pub max_shard_bytes: u64,
}

pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    // A save of N ranks holds N partitions: N thread ranks open one each and gather every
    // group; rank 0 writes the folder.
    let world = crate::engine::checkpoint::saved_world_size(&args.from)?;
    if world == 1 {
        return export_rank(args, Partition::single(), None);
    }
    crate::cli::on_thread_ranks(world, |partition, comm| {
        export_rank(args, partition, Some(comm))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One rank's part of the export: opens its partition of the save and gathers the groups
/// (rank 0 writes the folder).
fn export_rank(
    args: &ExportArgs,
    partition: Partition,
    comm: Option<ThreadComm>,
) -> anyhow::Result<ExitCode> {
    let world = partition.world_size;
    let loaded =
        Config::load_for_world(Some(&args.config), args.init_from.as_deref(), world as u64)?;
    if partition.reports() {
        loaded.log();
    }
    let cfg = &loaded.config;
    let o = Overrides {
        resume: Some(args.from.clone()),
        // The export moves bytes from the tiers to files; no product runs.
        device: Some(crate::config::DeviceChoice::Cpu),
        threads: (world > 1).then_some(1),
        partition: Some(partition),
        ..Overrides::default()
    };
    let (plan, _) = Session::plan(cfg, &o)?;
    // The engine never steps here: a window of token 0 satisfies its data check.
    let t = plan.settings.train.seq_len;
    let data = Dataset {
        train: vec![0; t + 1].into(),
        val: vec![0; t + 1].into(),
    };
    let dev = crate::session::open_cpu_device(&plan.settings.train);
    let comm = comm.map(|c| Box::new(c) as Box<dyn crate::dist::Collective<_>>);
    let mut engine = plan.build(dev, data, comm)?;
    let source = cfg.zinf.model_from.as_ref().map(PathBuf::from);
    let start = std::time::Instant::now();
    let report = engine.export_hf(&args.to, source.as_deref(), args.max_shard_bytes)?;
    if partition.reports() {
        println!(
            "exported step {} of {}{}: {} in {} file(s) to {} in {:.1} s",
            engine.steps(),
            args.from.display(),
            if world > 1 {
                format!(" ({world} ranks' partitions gathered)")
            } else {
                String::new()
            },
            human_bytes(report.bytes),
            report.files.len(),
            args.to.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
