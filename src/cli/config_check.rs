//! `zinf config check FILE [--json]`: validate a DeepSpeed config and print it resolved (every
//! default filled in, every `"auto"` resolved), or every problem found with its JSON path.
//! Exit status 0 when valid, 2 when not (or the file cannot be read).

use crate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The DeepSpeed JSON config to check.
    pub file: PathBuf,
    /// Print the resolved config as JSON on stdout (diagnostics go to stderr).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    match Config::load(&args.file) {
        Ok(loaded) => {
            loaded.log();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&loaded.config)?);
            } else {
                let c = &loaded.config;
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
                    c.zero_optimization.offload_param.device,
                    c.zero_optimization.offload_optimizer.device
                );
                println!("  (--json prints every resolved key)");
            }
            Ok(ExitCode::SUCCESS)
        }
        // A missing or unreadable file is bad input too: exit 2, like every config error.
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(super::EXIT_BAD_INPUT))
        }
    }
}
