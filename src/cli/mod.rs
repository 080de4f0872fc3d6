//! Subcommands of the `zinf` binary. Each lives in its own file with a clap `Args` struct and a
//! `run` function; this file wires them together, sets up logging, and holds what every
//! subcommand shares: the exit codes ([`exit_code`]) and the flag value parsers that validate a
//! flag the way a config key is validated, before any work starts.

pub mod bench_adam;
pub mod bench_swap;
pub mod config_check;
pub mod estimate;
pub mod eval;
pub mod export;
pub mod generate;
pub mod io_bench;
pub mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "zinf",
    version = VERSION,
    about = "ZeRO-Infinity-style offload training from a DeepSpeed config"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// `zinf --version`: the release and whether this build has the CUDA backend.
#[cfg(feature = "cuda")]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (CUDA support compiled in: CUDA 13 driver API, cuBLAS, NVRTC-compiled kernels; \
     --device cuda)"
);
/// `zinf --version`: the release and whether this build has the CUDA backend.
#[cfg(not(feature = "cuda"))]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (CPU only: no CUDA support compiled in; build with --features cuda)"
);

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train from a DeepSpeed JSON config: zinf's GPT-2, or a Hugging Face folder with
    /// --init-from (embedded tiny default when no config is given).
    Train(train::TrainArgs),
    /// Inspect a DeepSpeed JSON config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Memory, disk and traffic per tier for the model and placement in a config.
    Estimate(estimate::EstimateArgs),
    /// Measure read/write throughput of a folder's drive with zinf's I/O engine.
    IoBench(io_bench::IoBenchArgs),
    /// Micro-benchmarks of one subsystem.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Generate text from a saved checkpoint.
    Generate(generate::GenerateArgs),
    /// Mean loss and perplexity of a Hugging Face folder's model over a data file.
    Eval(eval::EvalArgs),
    /// Write a save's parameters as a Hugging Face folder.
    Export(export::ExportArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config and print it with every default filled in.
    Check(config_check::CheckArgs),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// CPU Adam step throughput against this machine's memory bandwidth.
    Adam(bench_adam::BenchAdamArgs),
    /// Optimizer step over state on disk (swap store pipeline).
    Swap(bench_swap::BenchSwapArgs),
}

/// Exit status of a command that finished its work.
pub const EXIT_DONE: u8 = 0;
/// Exit status of a failure while running (I/O error, out of budget, a bug).
pub const EXIT_FAILED: u8 = 1;
/// Exit status of bad input: the config, a flag, a file that is not UTF-8. clap uses it for
/// flags it cannot parse, so every subcommand agrees.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status after Ctrl-C / SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Input the user can fix (a flag value, a file's contents): exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The command stopped on Ctrl-C / SIGTERM: exit status 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// The exit status for an error a command returned: 2 when anything in its chain is bad input
/// (a config error, [`BadInput`], a config section the optimizer refused), 130 when
/// [`Interrupted`], else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Interrupted>() {
            return EXIT_INTERRUPTED;
        }
        use crate::engine::EngineError;
        use crate::session::SessionError;
        // `SessionError::Engine` is transparent: the chain skips the engine error inside it.
        let refused_plan = matches!(
            cause.downcast_ref::<SessionError>(),
            Some(SessionError::Config(_) | SessionError::Engine(EngineError::Config(_)))
        ) || matches!(
            cause.downcast_ref::<crate::engine::EngineError>(),
            Some(crate::engine::EngineError::Config(_))
        );
        if cause.is::<crate::config::ConfigError>()
            || cause.is::<crate::config::ConvertError>()
            || cause.is::<BadInput>()
            || refused_plan
        {
            return EXIT_BAD_INPUT;
        }
    }
    EXIT_FAILED
}

/// A whole, non-negative count as configs write them: `200000000`, `2e8`, `1.5e3`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    crate::config::whole_u64(v).ok_or_else(|| format!("{s:?} is not a whole, non-negative count"))
}

/// A count in `[min, max]` (inclusive), for clap: `value_parser = count_in(1, 4096)`.
pub fn count_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |s| {
        let v = parse_count(s)?;
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "{v} is out of range: must be between {min} and {max}"
            ))
        }
    }
}

/// [`count_in`] as a `usize` (on 64-bit targets every `u64` count fits).
pub fn count_usize(min: u64, max: u64) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |s| count_in(min, max)(s).and_then(|v| usize::try_from(v).map_err(|e| e.to_string()))
}

/// `--threads` of `train` (and `generate`): 1 to `zinf.threads`' limit (4096), `1e2` style
/// accepted; 0 is refused (leave the flag out to use every core).
pub fn parse_threads(s: &str) -> Result<usize, String> {
    count_in(1, crate::config::MAX_THREADS)(s).map(|v| v as usize)
}

/// A finite number above zero (seconds, GB/s, GiB).
pub fn parse_positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number above 0")),
    }
}

/// A finite number at or above zero (a temperature: 0 is greedy).
pub fn parse_non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a finite number at or above 0")),
    }
}

/// Runs one parsed command line; the exit code is the command's own (e.g. 2 for an invalid config).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(a) => train::run(&a),
        Command::Config(ConfigCommand::Check(a)) => config_check::run(&a),
        Command::Estimate(a) => estimate::run(&a),
        Command::IoBench(a) => io_bench::run(&a),
        Command::Bench(BenchCommand::Adam(a)) => bench_adam::run(&a),
        Command::Bench(BenchCommand::Swap(a)) => bench_swap::run(&a),
        Command::Generate(a) => generate::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Export(a) => export::run(&a),
    }
}

/// Logs go to stderr so that `--json` output on stdout stays machine-readable.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only when a person reads it: not into a file, a pipe or CI logs, nor with NO_COLOR.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The most data-parallel ranks `--nproc-per-node` (and a save) may name.
pub const MAX_RANKS: usize = 256;

/// Runs `f` on `world` thread ranks of one collective group (rank `r` in a thread named
/// `rank{r}` with its partition and its end of the group) and returns their results in rank
/// order. When ranks fail, the error reported is the first that is not merely another rank's
/// absence ("left the group"): the cause, not its echo. A rank that panics is an error.
pub fn on_thread_ranks<T: Send>(
    world: usize,
    f: impl Fn(crate::engine::Partition, crate::dist::threads::ThreadComm) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    let comms = crate::dist::threads::ThreadGroup::new(world);
    let results: Vec<anyhow::Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let partition = crate::engine::Partition {
                    rank,
                    world_size: world,
                };
                let f = &f;
                std::thread::Builder::new()
                    .name(format!("rank{rank}"))
                    .spawn_scoped(scope, move || f(partition, comm))
                    .map_err(anyhow::Error::from)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a rank panicked"))),
                Err(e) => Err(e.context("starting a rank thread")),
            })
            .collect()
    });
    let mut values = Vec::with_capacity(world);
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(v) => values.push(v),
            Err(e) => errors.push(e),
        }
    }
    let secondary = |e: &anyhow::Error| e.to_string().contains("left the group");
    match errors.iter().position(|e| !secondary(e)) {
        Some(i) => Err(errors.swap_remove(i)),
        None if !errors.is_empty() => Err(errors.swap_remove(0)),
        None => Ok(values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `zinf train`'s flags, parsed as the binary parses them.
    #[derive(clap::Parser, Debug)]
    struct TrainFlags {
        #[command(flatten)]
        args: train::TrainArgs,
    }

    #[test]
    fn train_flag_parsers_refuse_zero_threads_and_accept_config_style_counts() {
        let ok = TrainFlags::try_parse_from(["t", "--threads", "4", "--steps", "1e3"])
            .expect("valid flags");
        let a = ok.args;
        assert_eq!((a.threads, a.steps, a.save_every), (Some(4), Some(1000), 0));
        for bad in [
            &["t", "--threads", "0"][..],
            &["t", "--threads", "5000"],
            &["t", "--steps", "0"],
            &["t", "--save-every", "-1"],
        ] {
            let e = TrainFlags::try_parse_from(bad).expect_err("refused");
            assert_eq!(e.exit_code(), i32::from(EXIT_BAD_INPUT), "{bad:?}");
        }
    }

    #[test]
    fn errors_map_to_one_exit_code_per_kind() {
        let cfg = crate::config::Config::parse("{", "x").expect_err("syntax");
        let e = anyhow::Error::from(cfg).context("loading the config");
        assert_eq!(exit_code(&e), EXIT_BAD_INPUT);
        assert_eq!(
            exit_code(&anyhow::Error::from(Interrupted)),
            EXIT_INTERRUPTED
        );
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), EXIT_FAILED);
    }
}
