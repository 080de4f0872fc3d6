//! `zinf train`: a GPT-2 training run on the ZeRO-3 offload engine from a DeepSpeed config
//! (the embedded `configs/first_run.json` when none is given — parameters and optimizer state
//! on NVMe under `OUT/nvme` — on the built-in Shakespeare when it names no data). Parameters and optimizer state go where `offload_param` / `offload_optimizer` say.
//!
//! The run itself is built by [`crate::session::Session`] (config → settings → checks → device
//! → tiers → engine); this file parses flags and reports: placement and budgets at start-up
//! (beside `zinf estimate`'s figures), a progress bar, `steps_per_print` log lines, a CSV of step
//! metrics, validation loss every `eval_interval` steps, saves (`--save`, `--save-every`), an
//! optional Perfetto trace, and a final summary with I/O, overlap and memory figures
//! (optionally JSON). Ctrl-C stops after the current step and still saves and reports.

use crate::cli::BadInput;
use crate::config::DeviceChoice;
use crate::config::{Config, Loaded};
use crate::device::Device;
use crate::dist::env::DistEnv;
use crate::dist::threads::ThreadComm;
use crate::engine::summary::{human_bytes, median, peak_rss_bytes, wear_bytes_per_1000_steps};
use crate::engine::Partition;
use crate::engine::{Engine, EngineCounters, Tier};
use crate::model::export::DEFAULT_MAX_SHARD_BYTES;
use crate::session::{load_data, AnyDevice, Overrides, Session};
use crate::settings::StepMetrics;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use zinf_swap::AioBackend;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// DeepSpeed JSON config; the embedded configs/first_run.json when omitted.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Optimizer steps (overrides zinf.train_steps).
    #[arg(long, value_parser = crate::cli::count_in(1, 1 << 53))]
    pub steps: Option<u64>,
    /// Text, llm.c .bin tokens, or JSONL (text, chat messages, alpaca, sharegpt; prompts masked)
    /// (overrides zinf.data.path; none: built-in corpus).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder for metrics.csv and the HF checkpoint
    /// (default: csv_monitor.output_path/job_name).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start from a Hugging Face folder (config.json + safetensors, sharded or not): GPT-2 or
    /// Llama/Mistral/Qwen2/Qwen3; sets zinf.model.from. Its tokenizer.json tokenizes the data.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Also write the final summary as JSON here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Compute device: auto, cpu, cuda or cuda:N (overrides zinf.device).
    #[arg(long, value_parser = crate::config::DeviceChoice::parse)]
    pub device: Option<crate::config::DeviceChoice>,
    /// Compute threads (overrides zinf.threads).
    #[arg(long, value_parser = crate::cli::parse_threads)]
    pub threads: Option<usize>,
    /// No progress bar (log lines only).
    #[arg(long)]
    pub no_progress: bool,
    /// Save the run here (at exit, and every --save-every steps) so --resume can continue it.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// With --save: also save every N steps (0: only at exit).
    #[arg(long, default_value_t = 0, value_parser = crate::cli::parse_count)]
    pub save_every: u64,
    /// Continue the run saved in this folder (bit-identical to an uninterrupted run).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write a Chrome/Perfetto trace of compute, optimizer and I/O here (overrides zinf.trace).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Data-parallel ranks to start on this node (ZeRO-3: each keeps 1/N of the parameters,
    /// gradients and optimizer state and reads 1/N of every global batch); with --device
    /// cpu they are threads of this process. train_batch_size = micro × accumulation × N.
    #[arg(long, default_value_t = 1, value_parser = crate::cli::count_in(1, crate::cli::MAX_RANKS as u64))]
    pub nproc_per_node: u64,
}

/// What a run did, printed at the end and written by `--summary-json`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub steps: u64,
    pub skipped_steps: u64,
    pub interrupted: bool,
    pub params: usize,
    pub first_loss: f32,
    pub final_loss: f32,
    pub val_loss: Option<f32>,
    pub tokens: u64,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub checkpoint: String,
    pub csv: Option<String>,
    pub losses: Vec<f32>,
    /// Step the run started from (0, or the resumed step).
    pub start_step: u64,
    pub offload_param: String,
    pub offload_optimizer: String,
    pub step_s_median: f64,
    pub peak_rss_bytes: u64,
    pub device_peak_bytes: u64,
    pub device_budget_bytes: u64,
    pub pinned_pool_bytes: u64,
    /// `zinf estimate`'s peak figures for this config, beside the measured ones.
    pub estimate_device_bytes: u64,
    pub estimate_host_bytes: u64,
    pub estimate_nvme_bytes: u64,
    /// NVMe tier bytes read and written over the run.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Host <-> device bytes.
    pub device_bytes_in: u64,
    pub device_bytes_out: u64,
    pub io_wait_s: f64,
    pub pool_wait_s: f64,
    pub compute_s: f64,
    pub optimizer_s: f64,
    /// Parameter and optimizer reads that were already in flight when needed.
    pub prefetch_hit_rate: f64,
    /// Fraction of the time I/O was in flight during which compute ran too.
    pub overlap_fraction: f64,
    pub io_busy_s: f64,
    /// Estimated drive wear: bytes written per 1,000 steps.
    pub wear_bytes_per_1000_steps: u64,
    pub trace: Option<String>,
    pub saved: Option<String>,
    pub counters: EngineCounters,
    /// Rank processes this command started and waited for (their rank 0 printed the run's
    /// summary); 0 when this process trained.
    pub launched_ranks: usize,
}

pub fn run(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C, SIGTERM (Slurm, Kubernetes, systemd, `timeout`) and SIGHUP: the first lets the
    // current step finish, then the run saves (with --save), exports and exits 130; a second
    // signal exits at once — except in a rank process `--nproc-per-node` started, which can
    // get a scheduler's signal and its launcher's: it always finishes the step (and dies with
    // its launcher if that aborts).
    let launched = std::env::var_os(LAUNCHED_BY_ZINF).is_some();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) && !launched {
            std::process::exit(i32::from(crate::cli::EXIT_INTERRUPTED));
        }
        eprintln!(
            "\ninterrupted (Ctrl-C or SIGTERM): stopping after the current step, then saving \
             and exporting (a second signal aborts)"
        );
    });
    let summary = train(args, &stop)?;
    if summary.launched_ranks == 0 {
        print_summary(&summary);
    }
    Ok(if summary.interrupted {
        ExitCode::from(crate::cli::EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

fn load_config(args: &TrainArgs, rank: Partition) -> anyhow::Result<Loaded> {
    if args.config.is_none() && rank.reports() {
        tracing::info!("no --config: running the embedded configs/first_run.json");
    }
    // `--init-from DIR` is `zinf.model.from`: the folder's shape resolves the config.
    let loaded = Config::load_for_world(
        args.config.as_deref(),
        args.init_from.as_deref(),
        rank.world_size as u64,
    )?;
    // `--steps` overrides zinf.train_steps, and "auto" schedule lengths follow it.
    let loaded = loaded.with_train_steps(args.steps);
    if rank.reports() {
        loaded.log();
    }
    Ok(loaded)
}

/// How a rank reaches the others.
enum RankComm {
    /// One rank.
    Alone,
    /// A thread rank of `--nproc-per-node N --device cpu`.
    Thread(ThreadComm),
    /// A process started by a launcher (torchrun, DeepSpeed's, mpirun, Slurm, or `zinf train
    /// --nproc-per-node N` on GPUs): NCCL over the GPU `LOCAL_RANK`.
    Launched(DistEnv),
}

/// Runs training to the end (or to Ctrl-C via `stop`) and returns the summary (rank 0's,
/// with several ranks).
///
/// Ranks: a process whose environment names several ranks (`WORLD_SIZE` and the rest, see
/// [`DistEnv`]) is one of them and trains on GPU `LOCAL_RANK` over NCCL; `--nproc-per-node N`
/// starts N ranks here — threads with `--device cpu`, processes (one GPU each) on GPUs.
pub fn train(args: &TrainArgs, stop: &AtomicBool) -> anyhow::Result<Summary> {
    check_flags(args)?;
    let env = DistEnv::from_env().map_err(|e| BadInput(e.to_string()))?;
    let world = args.nproc_per_node as usize;
    if env.world_size > 1 {
        if world > 1 && std::env::var_os(LAUNCHED_BY_ZINF).is_none() {
            return Err(BadInput(format!(
                "--nproc-per-node {world} in a process {} started as rank {} of {}: let one \
                 of them start the ranks (drop --nproc-per-node, or start zinf directly)",
                env.launcher, env.rank, env.world_size
            ))
            .into());
        }
        if !cfg!(feature = "nccl") || args.device == Some(DeviceChoice::Cpu) {
            return Err(BadInput(launched_needs_nccl(&env)).into());
        }
        let partition = Partition {
            rank: env.rank,
            world_size: env.world_size,
        };
        return train_rank(args, stop, partition, RankComm::Launched(env));
    }
    if world == 1 {
        let partition = Partition::single();
        return train_rank(args, stop, partition, RankComm::Alone);
    }
    // Read once more for the node's choices (not logged: rank 0 logs it).
    let node = Config::load_for_world(
        args.config.as_deref(),
        args.init_from.as_deref(),
        world as u64,
    )?;
    if resolves_to_gpu(args, &node.config)? {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| default_out_dir(&node.config));
        return launch_gpu_ranks(world, &out, stop);
    }
    // Thread ranks over the CPU device: one collective group, one thread per rank. A rank
    // that fails drops its end of the group, so the others fail at their next collective
    // instead of waiting.
    let mut summaries = crate::cli::on_thread_ranks(world, |partition, comm| {
        train_rank(args, stop, partition, RankComm::Thread(comm))
    })?;
    Ok(summaries.swap_remove(0))
}

/// One rank's run: plan, build, train, export (rank 0 reports and writes).
fn train_rank(
    args: &TrainArgs,
    stop: &AtomicBool,
    rank: Partition,
    comm: RankComm,
) -> anyhow::Result<Summary> {
    // With several ranks every log line says whose it is (`rank{r=1}: ...`).
    let _span = (rank.world_size > 1).then(|| tracing::info_span!("rank", r = rank.rank).entered());
    let mut loaded = load_config(args, rank)?;
    if args.config.is_none() {
        // The embedded default offloads to a folder under the run's output.
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| default_out_dir(&loaded.config));
        let swap = out.join("nvme").display().to_string();
        tracing::info!("embedded default: parameters and optimizer state offloaded to {swap}");
        let z = &mut loaded.config.zero_optimization;
        z.offload_param.nvme_path = Some(swap.clone());
        z.offload_optimizer.nvme_path = Some(swap);
    }
    let cfg = &loaded.config;
    let world = rank.world_size;
    // The node's compute threads are shared among its ranks.
    let on_this_node = match &comm {
        RankComm::Launched(env) => env.local_world_size,
        _ => world,
    };
    let threads = (on_this_node > 1).then(|| {
        let all = args
            .threads
            .or(cfg.zinf.threads.map(|t| t as usize))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        (all / on_this_node).max(1)
    });
    let overrides = Overrides {
        threads: args.threads.filter(|_| on_this_node == 1).or(threads),
        data: args.data.clone(),
        init_from: args.init_from.clone(),
        resume: args.resume.clone(),
        trace: args.trace.is_some() || cfg.zinf.trace.is_some(),
        shape_only: false,
        device: match &comm {
            // A launched rank trains on its own GPU.
            RankComm::Launched(env) => Some(DeviceChoice::Cuda(env.local_rank)),
            _ => args.device,
        },
        partition: Some(rank),
    };
    let (plan, est) = Session::plan(cfg, &overrides)?;
    let data = load_data(cfg, args.data.clone(), plan.settings.train.seq_len)?;
    let out_dir = args.out.clone().unwrap_or_else(|| default_out_dir(cfg));
    let trace_path = args
        .trace
        .clone()
        .or(cfg.zinf.trace.as_ref().map(PathBuf::from));
    let steps = args.steps.unwrap_or(cfg.zinf.train_steps);
    if rank.reports() {
        check_outputs(args, &out_dir, trace_path.as_deref(), &plan)?;
    }
    let run = Run {
        args,
        cfg,
        est,
        out_dir,
        trace_path,
        steps,
        stop,
        rank,
    };
    // The one place the backend is chosen for the run: the engine is generic over it.
    match (plan.open_device()?, comm) {
        (dev, RankComm::Alone) => {
            crate::with_device!(dev, |dev| run.train(plan.build(dev, data, None)?))
        }
        (AnyDevice::Cpu(dev), RankComm::Thread(c)) => {
            run.train(plan.build(dev, data, Some(Box::new(c)))?)
        }
        #[cfg(feature = "nccl")]
        (AnyDevice::Cuda(dev), RankComm::Launched(env)) => {
            let c = crate::dist::nccl::NcclComm::new(&dev, &env, RANK_TIMEOUT)?;
            run.train(plan.build(dev, data, Some(Box::new(c)))?)
        }
        (_, RankComm::Launched(env)) => Err(BadInput(launched_needs_nccl(&env)).into()),
        #[allow(unreachable_patterns)]
        (_, RankComm::Thread(_)) => unreachable!("thread ranks run on the CPU device"),
    }
}

/// Why a process started as one of several ranks cannot train here.
fn launched_needs_nccl(env: &DistEnv) -> String {
    let why = if cfg!(feature = "nccl") {
        "and this run is on the CPU"
    } else {
        "and this zinf was built without NCCL (cargo build --release --features nccl)"
    };
    format!(
        "rank {} of {} (started by {}): ranks started as processes train on GPUs over NCCL, \
         {why}; for ranks on the CPU run one process with --nproc-per-node N --device cpu",
        env.rank, env.world_size, env.launcher
    )
}

/// How long a rank waits for the others (rendezvous, a collective) before failing.
#[cfg(feature = "nccl")]
const RANK_TIMEOUT: std::time::Duration = crate::dist::threads::DEFAULT_TIMEOUT;

/// Set in the environment of the rank processes `zinf train --nproc-per-node N` starts, so
/// they know their `--nproc-per-node` is their launcher's.
const LAUNCHED_BY_ZINF: &str = "ZINF_LAUNCHED_RANK";

/// Whether this run's device is a GPU (`--device`, else the config's `zinf.device`).
fn resolves_to_gpu(args: &TrainArgs, cfg: &Config) -> anyhow::Result<bool> {
    let choice = args.device.unwrap_or(cfg.zinf.device);
    Ok(matches!(
        crate::session::pick_device(choice)?,
        crate::session::DeviceKind::Cuda(_)
    ))
}

/// `--nproc-per-node N` on GPUs: starts this command again as N processes, rank `r` on GPU
/// `r` (torchrun's variables set, the rendezvous on a free local port), rank 0's output here
/// and rank `r`'s in `OUT/rank{r}.log`, and waits for them ([`wait_ranks`]). The ranks run in
/// their own process group (a terminal's Ctrl-C reaches this process only) and die with it
/// (`PR_SET_PDEATHSIG`).
fn launch_gpu_ranks(world: usize, out: &Path, stop: &AtomicBool) -> anyhow::Result<Summary> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the ranks' rendezvous")?
        .port();
    let exe = std::env::current_exe().context("finding the zinf executable")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut children = Vec::new();
    if let Err(e) = start_ranks(&exe, world, port, out, &mut children) {
        // Ranks already started are stopped when a later one cannot be.
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(e);
    }
    tracing::info!(
        "started {world} rank processes (rank r on cuda:r; ranks 1.. log to {}/rank*.log)",
        out.display()
    );
    wait_ranks(&mut children, out, stop)
}

/// Starts rank processes `0..world` into `children` (see [`launch_gpu_ranks`]).
fn start_ranks(
    exe: &Path,
    world: usize,
    port: u16,
    out: &Path,
    children: &mut Vec<std::process::Child>,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    for rank in 0..world {
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1))
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env(LAUNCHED_BY_ZINF, "1")
            .process_group(0);
        // SAFETY: `prctl` and `getppid` are async-signal-safe and touch no memory of the
        // parent; a parent that died before `prctl` ran is caught by `getppid`.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the launcher exited"));
                }
                Ok(())
            });
        }
        if rank > 0 {
            let log = out.join(format!("rank{rank}.log"));
            let f = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        children.push(cmd.spawn().context("starting a rank process")?);
    }
    Ok(())
}

/// Waits for the rank processes of [`launch_gpu_ranks`]. A stop asked of this process
/// (Ctrl-C, SIGTERM: `stop`) or taken by one rank on its own (exit 130) is passed on to every
/// rank once, so all stop after the same step and exit 130; a rank that fails otherwise stops
/// the rest (a dead NCCL peer can leave them waiting) and its failure is returned.
fn wait_ranks(
    children: &mut [std::process::Child],
    out: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<Summary> {
    use std::os::unix::process::ExitStatusExt;
    let world = children.len();
    let interrupted_code = i32::from(crate::cli::EXIT_INTERRUPTED);
    let (mut failed, mut interrupted, mut forwarded) = (None, false, false);
    let mut running: Vec<usize> = (0..world).collect();
    while !running.is_empty() {
        if (stop.load(Ordering::SeqCst) || interrupted) && !forwarded {
            forwarded = true;
            for &r in &running {
                // SAFETY: a signal to a child this process started and has not reaped.
                unsafe { libc::kill(children[r].id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let mut still = Vec::new();
        for r in running {
            match children[r].try_wait() {
                Ok(Some(s)) if s.code() == Some(interrupted_code) => interrupted = true,
                // The stop reached it before its handler was installed.
                Ok(Some(s)) if forwarded && s.signal() == Some(libc::SIGTERM) => interrupted = true,
                Ok(Some(s)) if !s.success() => {
                    failed.get_or_insert((r, s.to_string()));
                }
                Ok(Some(_)) => {}
                Ok(None) => still.push(r),
                Err(e) => {
                    failed.get_or_insert((r, format!("cannot be waited for: {e}")));
                }
            }
        }
        running = still;
        if failed.is_some() {
            for &r in &running {
                let _ = children[r].kill();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    match failed {
        Some((r, status)) => Err(anyhow::anyhow!(
            "rank {r} failed ({status}); the other ranks were stopped (see {})",
            if r == 0 {
                "the output above".to_string()
            } else {
                out.join(format!("rank{r}.log")).display().to_string()
            }
        )),
        // Rank 0 printed the run's summary.
        None => Ok(Summary {
            launched_ranks: world,
            interrupted,
            ..Summary::default()
        }),
    }
}

/// What `zinf train` resolved before opening the device: the rest of a run on either backend.
struct Run<'a> {
    args: &'a TrainArgs,
    cfg: &'a Config,
    est: crate::estimate::Estimate,
    out_dir: PathBuf,
    trace_path: Option<PathBuf>,
    steps: u64,
    stop: &'a AtomicBool,
    rank: Partition,
}

impl Run<'_> {
    /// Trains `engine` to the end (or to Ctrl-C), saves, exports and writes the trace.
    fn train<D: Device>(self, mut engine: Engine<D, AioBackend>) -> anyhow::Result<Summary> {
        let Run {
            args,
            cfg,
            est,
            out_dir,
            trace_path,
            steps,
            stop,
            rank,
        } = self;
        let first = rank.reports();
        let start_step = engine.steps();
        if args.resume.is_some() && start_step >= steps {
            return Err(BadInput(format!(
                "--resume {}: the save is at step {start_step}, and the run is {steps} steps \
             (--steps or zinf.train_steps): nothing to train; ask for more than {start_step} \
             steps",
                args.resume.as_deref().unwrap_or(Path::new("")).display()
            ))
            .into());
        }
        let est = if first {
            log_start(&engine, cfg, steps, &est)
        } else {
            (0, 0, 0)
        };
        let csv_path = (first && (cfg.csv_monitor.enabled || args.out.is_some()))
            .then(|| out_dir.join("metrics.csv"));
        let mut csv = match &csv_path {
            Some(p) => Some(open_csv(p, start_step > 0)?),
            None => None,
        };
        let before = engine.counters();
        engine.reset_overlap();
        let r = run_loop(&mut engine, cfg, args, steps, csv.as_mut(), stop, first)?;
        engine.flush()?;
        // The steps' own traffic: not the initial layout, the save or the export below.
        let counters = engine.counters().since(&before);
        let saved = match &args.save {
            Some(dir) => {
                engine.save(dir)?;
                Some(dir.display().to_string())
            }
            None => None,
        };
        // The export streams one parameter group at a time from the tiers to the files.
        let source = args
            .init_from
            .clone()
            .or_else(|| cfg.zinf.model_from.as_ref().map(PathBuf::from));
        let export_start = std::time::Instant::now();
        let report = engine.export_hf(&out_dir, source.as_deref(), DEFAULT_MAX_SHARD_BYTES)?;
        if !first {
            return Ok(r);
        }
        tracing::info!(
            "exported {} in {} file(s) to {} in {:.1} s (transformers loads it with \
         AutoModelForCausalLM.from_pretrained)",
            human_bytes(report.bytes),
            report.files.len(),
            out_dir.display(),
            export_start.elapsed().as_secs_f64()
        );
        if let Some(p) = &trace_path {
            engine
                .recorder()
                .timeline
                .write_chrome_json(p)
                .with_context(|| format!("writing the trace {}", p.display()))?;
            tracing::info!(
                "trace written to {} (open it in ui.perfetto.dev)",
                p.display()
            );
        }
        let summary = finish_summary(
            r, &engine, counters, est, start_step, out_dir, csv_path, trace_path, saved,
        );
        if let Some(p) = &args.summary_json {
            std::fs::write(p, serde_json::to_string_pretty(&summary)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(summary)
    }
}

/// Flags that contradict each other are bad input (exit 2), refused before any work.
fn check_flags(args: &TrainArgs) -> Result<(), BadInput> {
    if args.init_from.is_some() && args.resume.is_some() {
        return Err(BadInput(
            "--init-from and --resume both say where the weights come from: a resume continues \
             its save (weights, optimizer state, step); drop one"
                .into(),
        ));
    }
    if args.save_every > 0 && args.save.is_none() {
        return Err(BadInput(format!(
            "--save-every {} needs --save DIR (where to save)",
            args.save_every
        )));
    }
    Ok(())
}

/// Checks every output before the first step: each folder can be created and written, and
/// the drives under `--save` and `--out` have room for what goes there (a save of the whole
/// state — two while the previous save in DIR is replaced — and the HF export). A bad path is
/// found now, not after the last step.
fn check_outputs(
    args: &TrainArgs,
    out_dir: &Path,
    trace: Option<&Path>,
    plan: &Session,
) -> anyhow::Result<()> {
    let mut need: Vec<(&Path, u64, &str)> = Vec::new();
    if let Some(dir) = &args.save {
        // Every rank's partition (rank 0's layout, the largest, for each).
        let one = crate::engine::checkpoint::save_bytes(&plan.settings, &plan.layout)
            .saturating_mul(plan.settings.partition.world_size as u64);
        let has_save = dir.join(crate::engine::checkpoint::POINTER).exists();
        need.push((dir, if has_save { 2 * one } else { one }, "--save"));
    }
    need.push((out_dir, crate::estimate::export_disk_bytes(plan), "--out"));
    for (dir, _, flag) in &need {
        writable_dir(dir, flag)?;
    }
    for (file, flag) in [
        (trace, "--trace"),
        (args.summary_json.as_deref(), "--summary-json"),
    ] {
        if let Some(f) = file {
            let parent = f.parent().filter(|p| !p.as_os_str().is_empty());
            writable_dir(parent.unwrap_or(Path::new(".")), flag)?;
        }
    }
    for (dir, bytes, flag) in need {
        if let Some(free) = crate::estimate::statvfs_free_bytes(dir) {
            if bytes > free {
                return Err(BadInput(format!(
                    "{flag} {}: needs {} there but its drive has {} free",
                    dir.display(),
                    human_bytes(bytes),
                    human_bytes(free)
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Creates `dir` and writes and removes a probe file in it.
fn writable_dir(dir: &Path, flag: &str) -> anyhow::Result<()> {
    let bad = |what: String| BadInput(format!("{flag} {}: {what}", dir.display()));
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create the folder: {e}")))?;
    let probe = dir.join(format!(".zinf-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| bad(format!("cannot write there: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `zinf estimate`'s peaks for this config: (device, host, NVMe) bytes.
type EstimatePeaks = (u64, u64, u64);

#[allow(clippy::too_many_arguments)]
fn finish_summary<D: Device>(
    r: Summary,
    e: &Engine<D, AioBackend>,
    c: EngineCounters,
    est: EstimatePeaks,
    start_step: u64,
    out_dir: PathBuf,
    csv_path: Option<PathBuf>,
    trace: Option<PathBuf>,
    saved: Option<String>,
) -> Summary {
    let q = c.queue;
    let hits = q.param_prefetch_hits + q.opt_prefetch_hits;
    let reads = hits + q.param_misses + q.opt_misses;
    let ov = &e.recorder().overlap;
    let budget = e.dev.budget();
    Summary {
        checkpoint: out_dir.display().to_string(),
        csv: csv_path.map(|p| p.display().to_string()),
        start_step,
        offload_param: e.settings.placement.params.name().into(),
        offload_optimizer: e.settings.placement.optimizer.name().into(),
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        device_peak_bytes: budget.peak_bytes(),
        device_budget_bytes: budget.budget_bytes(),
        pinned_pool_bytes: e.pool_budget_bytes(),
        estimate_device_bytes: est.0,
        estimate_host_bytes: est.1,
        estimate_nvme_bytes: est.2,
        bytes_read: c.nvme_bytes_read,
        bytes_written: c.nvme_bytes_written,
        device_bytes_in: c.device_bytes_in,
        device_bytes_out: c.device_bytes_out,
        io_wait_s: q.io_wait_ns as f64 * 1e-9,
        pool_wait_s: q.pool_wait_ns as f64 * 1e-9,
        compute_s: c.compute_s,
        optimizer_s: c.optimizer_s,
        prefetch_hit_rate: if reads > 0 {
            hits as f64 / reads as f64
        } else {
            0.0
        },
        overlap_fraction: ov.overlap_fraction(),
        io_busy_s: ov.io_busy_s(),
        wear_bytes_per_1000_steps: wear_bytes_per_1000_steps(c.nvme_bytes_written, r.steps),
        trace: trace.map(|p| p.display().to_string()),
        saved,
        counters: c,
        ..r
    }
}

/// `csv_monitor.output_path/job_name`, with `runs/` when the config names no output path.
fn default_out_dir(cfg: &Config) -> PathBuf {
    let m = &cfg.csv_monitor;
    let base = if m.output_path.is_empty() {
        "runs"
    } else {
        m.output_path.as_str()
    };
    Path::new(base).join(&m.job_name)
}

fn log_start<D: Device>(
    e: &Engine<D, AioBackend>,
    cfg: &Config,
    steps: u64,
    est: &crate::estimate::Estimate,
) -> EstimatePeaks {
    let s = &e.settings.train;
    let pl = &e.settings.placement;
    tracing::info!(
        "model: {}, {} parameters ({:?}); device {}",
        s.model.describe(),
        s.model.num_params(),
        s.dtype,
        e.dev.name(),
    );
    // Where the state lives, as the estimate counts it and the tiers hold it.
    let params = match &pl.params {
        Tier::Nvme { path } => format!("nvme ({})", path.display()),
        Tier::Cpu { .. } => "host memory (offload_param cpu)".into(),
        Tier::Device => "the device (offload_param none), host copy for the update".into(),
    };
    let optimizer = match &pl.optimizer {
        Tier::Nvme { path } => format!("nvme ({})", path.display()),
        Tier::Cpu { .. } => "host memory (offload_optimizer cpu)".into(),
        Tier::Device => "host memory (offload_optimizer none: zinf runs the CPU Adam)".into(),
    };
    tracing::info!(
        "placement: parameters on {params}, optimizer state on {optimizer}; update {}",
        if e.streams() {
            "streams group by group during backward"
        } else {
            "runs after backward (clipping/fp16 need the global norm)"
        }
    );
    tracing::info!(
        "budgets: device {} (estimate {}), pinned pool {}, host state {} (estimate {} with the \
         pool{}{}), NVMe estimate {}",
        human_bytes(e.dev.budget().budget_bytes()),
        human_bytes(est.device.bytes),
        human_bytes(e.pool_budget_bytes()),
        human_bytes(e.host_state_bytes()),
        human_bytes(est.host_bytes()),
        " and the export",
        cfg.zinf
            .host_memory_budget
            .map_or(String::new(), |b| format!(", budget {}", human_bytes(b))),
        human_bytes(est.nvme.bytes),
    );
    tracing::info!(
        "training steps {}..{steps} of {} x {} tokens x {} accumulation, checkpointing {}",
        e.steps() + 1,
        s.micro_batch,
        s.seq_len,
        s.gradient_accumulation_steps,
        s.activation_checkpointing
    );
    (est.device.bytes, est.host_bytes(), est.nvme.bytes)
}

fn open_csv(path: &Path, append: bool) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if append && path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()));
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(
        f,
        "step,loss,lr,loss_scale,grad_norm,step_s,tokens_per_s,val_loss"
    )?;
    Ok(f)
}

fn progress(steps: u64, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(steps);
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

fn run_loop<D: Device>(
    t: &mut Engine<D, AioBackend>,
    cfg: &Config,
    args: &TrainArgs,
    steps: u64,
    mut csv: Option<&mut std::fs::File>,
    stop: &AtomicBool,
    report: bool,
) -> anyhow::Result<Summary> {
    let first = t.steps() + 1;
    let pb = progress(steps.saturating_sub(first - 1), args.no_progress || !report);
    let start = Instant::now();
    let (tokens_per_step, eval_interval) =
        (t.tokens_per_step() as u64, cfg.zinf.data.eval_interval);
    let (mut losses, mut skipped, mut val_loss) = (Vec::new(), 0, None);
    let mut step_times = Vec::new();
    for i in first..=steps {
        let t0 = Instant::now();
        let m = t.step()?;
        let step_s = t0.elapsed().as_secs_f64();
        step_times.push(step_s);
        let tps = tokens_per_step as f64 / step_s;
        losses.push(m.loss);
        skipped += m.skipped as u64;
        let eval_now = eval_interval > 0 && (i.is_multiple_of(eval_interval) || i == steps);
        let v = if eval_now { t.validate()? } else { None };
        val_loss = v.or(val_loss);
        if let Some(f) = csv.as_deref_mut() {
            write_row(f, &m, step_s, tps, v)?;
        }
        pb.set_message(format!("loss {:.4} | {:.0} tok/s", m.loss, tps));
        pb.inc(1);
        if report
            && (cfg.steps_per_print > 0 && (i.is_multiple_of(cfg.steps_per_print) || i == first)
                || v.is_some())
        {
            pb.suspend(|| log_step(&m, steps, step_s, tps, v));
        }
        if let Some(dir) = &args.save {
            if args.save_every > 0 && i.is_multiple_of(args.save_every) && i < steps {
                pb.suspend(|| t.save(dir))?;
            }
        }
        // With several ranks, a stop any of them saw ends every rank after this step.
        if t.any_rank(stop.load(Ordering::SeqCst))? {
            if report {
                pb.suspend(|| tracing::warn!("interrupted: stopping after step {i}"));
            }
            break;
        }
    }
    pb.finish_and_clear();
    let elapsed_s = start.elapsed().as_secs_f64();
    let n = losses.len() as u64;
    let interrupted = t.steps() < steps;
    if interrupted && n > 0 && eval_interval > 0 {
        val_loss = t.validate()?.or(val_loss); // an interrupted run still reports where it got
    }
    Ok(Summary {
        steps: n,
        skipped_steps: skipped,
        interrupted,
        params: t.settings.train.model.num_params(),
        first_loss: losses.first().copied().unwrap_or(f32::NAN),
        final_loss: losses.last().copied().unwrap_or(f32::NAN),
        val_loss,
        tokens: n * tokens_per_step,
        elapsed_s,
        tokens_per_s: (n * tokens_per_step) as f64 / elapsed_s.max(1e-9),
        checkpoint: String::new(),
        csv: None,
        losses,
        step_s_median: median(&step_times).unwrap_or(0.0),
        ..Summary::default()
    })
}

fn write_row(
    f: &mut std::fs::File,
    m: &StepMetrics,
    step_s: f64,
    tps: f64,
    v: Option<f32>,
) -> anyhow::Result<()> {
    let v = v.map_or(String::new(), |v| format!("{v}"));
    writeln!(
        f,
        "{},{},{},{},{},{:.6},{:.1},{}",
        m.step, m.loss, m.lr, m.loss_scale, m.grad_norm, step_s, tps, v
    )?;
    Ok(())
}

fn log_step(m: &StepMetrics, steps: u64, step_s: f64, tps: f64, v: Option<f32>) {
    let val = v.map_or(String::new(), |v| format!(" | val_loss {v:.4}"));
    let skip = if m.skipped {
        " | overflow, step skipped"
    } else {
        ""
    };
    tracing::info!(
        "step {}/{steps} | loss {:.4}{val} | lr {:.3e} | loss_scale {} | grad_norm {:.3} | {:.3} s | {:.0} tok/s{skip}",
        m.step,
        m.loss,
        m.lr,
        m.loss_scale,
        m.grad_norm,
        step_s,
        tps
    );
}

fn print_summary(s: &Summary) {
    println!(
        "steps          {}{}{}",
        s.steps,
        if s.start_step > 0 {
            format!(" (resumed at step {})", s.start_step)
        } else {
            String::new()
        },
        if s.interrupted { " (interrupted)" } else { "" }
    );
    println!("parameters     {}", s.params);
    println!(
        "placement      parameters {}, optimizer {}",
        s.offload_param, s.offload_optimizer
    );
    println!("loss           {:.4} -> {:.4}", s.first_loss, s.final_loss);
    if let Some(v) = s.val_loss {
        println!("val_loss       {v:.4}");
    }
    println!("skipped steps  {}", s.skipped_steps);
    println!(
        "tokens         {} in {:.1} s ({:.0} tokens/s), median step {:.3} s",
        s.tokens, s.elapsed_s, s.tokens_per_s, s.step_s_median
    );
    println!(
        "memory         peak RSS {} (estimate {} host + the device's peak: the CPU backend's \
         device memory is RAM), device peak {} of {} (estimate {}), pinned pool {}",
        human_bytes(s.peak_rss_bytes),
        human_bytes(s.estimate_host_bytes),
        human_bytes(s.device_peak_bytes),
        human_bytes(s.device_budget_bytes),
        human_bytes(s.estimate_device_bytes),
        human_bytes(s.pinned_pool_bytes)
    );
    if s.bytes_read + s.bytes_written > 0 {
        println!(
            "nvme           read {}, written {} (wear {} per 1,000 steps)",
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_written),
            human_bytes(s.wear_bytes_per_1000_steps)
        );
        println!(
            "overlap        I/O busy {:.2} s, {:.0}% of it under compute; I/O wait {:.2} s, pool wait {:.2} s, prefetch hits {:.0}%",
            s.io_busy_s,
            100.0 * s.overlap_fraction,
            s.io_wait_s,
            s.pool_wait_s,
            100.0 * s.prefetch_hit_rate
        );
    }
    if s.counters.collective_bytes > 0 {
        println!(
            "collectives    rank 0 received {} (all-gathers of parameters, reduce-scatters of \
             gradients)",
            human_bytes(s.counters.collective_bytes)
        );
    }
    println!(
        "time           compute {:.2} s, optimizer {:.2} s",
        s.compute_s, s.optimizer_s
    );
    println!("checkpoint     {}", s.checkpoint);
    if let Some(d) = &s.saved {
        println!("saved          {d} (continue with --resume {d})");
    }
    if let Some(t) = &s.trace {
        println!("trace          {t}");
    }
    if let Some(c) = &s.csv {
        println!("metrics        {c}");
    }
}
