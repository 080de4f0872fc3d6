//! ZeRO-3 across ranks on CPU thread ranks: world 2 gives the numbers of one rank with twice
//! the accumulation bit for bit, for every placement; world 4 too, and within fp32 rounding
//! when ranks also accumulate; a rank that dies mid-step fails every rank at once (no hang),
//! and the last save resumes; `zinf train --nproc-per-node 2` matches the one-rank run.

mod engine_common;

use engine_common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zinf::device::{CpuBuffer, CpuDevice};
use zinf::dist::threads::{ThreadComm, ThreadGroup};
use zinf::dist::{Collective, DistError};
use zinf::engine::timeline::Timeline;
use zinf::engine::{Engine, EngineSettings, Partition, Start, Tier};
use zinf::model::ParamDtype;
use zinf::settings::StepMetrics;
use zinf_swap::fake::FakeDisk;

const STEPS: usize = 3;

fn placements() -> Vec<(Tier, Tier)> {
    let cpu = Tier::Cpu { pin_memory: false };
    let dir = std::path::PathBuf::from("/nvme");
    vec![
        (Tier::Device, Tier::Device),
        (cpu.clone(), cpu.clone()),
        (nvme(&dir), nvme(&dir)),
        (Tier::Device, nvme(&dir)),
        (nvme(&dir), cpu),
    ]
}

/// What one rank saw: step metrics, the validation loss, every group's parameters gathered.
struct RankRun {
    metrics: Vec<StepMetrics>,
    val: f32,
    params: Vec<Vec<u8>>,
}

/// Settings of rank `rank` of `world` (the placement's NVMe folders per rank).
fn rank_settings(s: &EngineSettings, rank: usize, world: usize) -> EngineSettings {
    let mut s = s.clone();
    s.partition = Partition {
        rank,
        world_size: world,
    };
    s.placement = s.placement.for_rank(rank);
    s
}

/// `world` thread ranks (one rank: no collective), each over its own fake disk, `steps`
/// steps, validation, and the gathered parameters. Every rank must report the same.
fn world_run(s: &EngineSettings, world: usize, steps: usize) -> RankRun {
    world_run_with(s, world, steps, world > 1)
}

/// [`world_run`], with a collective even for one rank when `collective`.
fn world_run_with(s: &EngineSettings, world: usize, steps: usize, collective: bool) -> RankRun {
    let comms: Vec<Option<ThreadComm>> = if collective {
        ThreadGroup::new(world).into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let runs: Vec<RankRun> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let s = rank_settings(s, rank, world);
                scope.spawn(move || {
                    let disk = FakeDisk::new(1);
                    // Ranks run on the device with a GPU's copy rules (late downloads kept in
                    // flight, upload sources checked): results must not change.
                    let mut dev = CpuDevice::new(1, s.train.device_memory_budget);
                    if comm.is_some() {
                        // SAFETY: the engine waits every upload before its source is written
                        // or given back.
                        dev = unsafe { dev.with_late_copies() };
                    }
                    let comm = comm.map(|c| Box::new(c) as Box<dyn Collective<CpuDevice>>);
                    let mut e = Engine::new(
                        s,
                        dev,
                        dataset(),
                        fake_factory(&disk, 8 << 20),
                        Start::Fresh(None),
                        Timeline::disabled(),
                        comm,
                    )
                    .expect("engine builds");
                    let metrics = engine_run(&mut e, steps);
                    let val = e.validate().expect("validate").expect("validation data");
                    let n = e.tiers().layout().groups.len();
                    let params = (0..n)
                        .map(|gi| e.gathered_group_bytes(gi).expect("gather"))
                        .collect();
                    RankRun {
                        metrics,
                        val,
                        params,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank"))
            .collect()
    });
    for (r, run) in runs.iter().enumerate().skip(1) {
        assert_eq!(bits(&run.metrics), bits(&runs[0].metrics), "rank {r}");
        assert_eq!(run.params, runs[0].params, "rank {r}'s gathered parameters");
    }
    runs.into_iter().next().expect("rank 0")
}

fn with_gas(s: &EngineSettings, micro: usize, gas: usize) -> EngineSettings {
    let mut s = s.clone();
    s.train.micro_batch = micro;
    s.train.gradient_accumulation_steps = gas;
    s
}

fn assert_same(a: &RankRun, b: &RankRun, what: &str) {
    assert_eq!(
        bits(&a.metrics),
        bits(&b.metrics),
        "{what}: losses {:?} vs {:?}",
        a.metrics.iter().map(|m| m.loss).collect::<Vec<_>>(),
        b.metrics.iter().map(|m| m.loss).collect::<Vec<_>>()
    );
    assert_eq!(a.val.to_bits(), b.val.to_bits(), "{what}: validation loss");
    assert!(a.params == b.params, "{what}: parameters after the steps");
}

/// World 2 with micro-batch b against world 1 with accumulation 2: the same samples, the
/// same sums of two in the same order.
fn check_world_2(dtype: ParamDtype, clip: f64) {
    for (p, o) in placements() {
        let base = engine_settings(train_settings(dtype, clip, 1), placement(p.clone(), o));
        let one = world_run(&with_gas(&base, 2, 2), 1, STEPS);
        let two = world_run(&with_gas(&base, 2, 1), 2, STEPS);
        assert!(one.metrics.iter().all(|m| m.loss.is_finite()));
        assert_same(
            &one,
            &two,
            &format!("{dtype:?} clip {clip} params {}", p.name()),
        );
    }
}

#[test]
fn world_2_equals_one_rank_with_twice_the_accumulation_streaming() {
    check_world_2(ParamDtype::Bf16, 0.0);
}

#[test]
fn world_2_equals_one_rank_with_twice_the_accumulation_with_clipping_and_fp16() {
    // The fixture's gradient norm stays below 1, so the clip coefficient is exactly 1 on
    // both; a norm that clips is the sum of partition sums (rank order), which can differ
    // from one rank's sum in the last bits.
    check_world_2(ParamDtype::Bf16, 1.0);
    check_world_2(ParamDtype::F16, 1.0);
}

#[test]
fn one_rank_through_the_collective_path_changes_nothing() {
    // How the NCCL path is checked on one GPU: a world of 1 with a collective runs every
    // gather and reduction, and must give the plain engine's numbers.
    for (p, o) in placements() {
        let s = engine_settings(
            train_settings(ParamDtype::Bf16, 0.0, 2),
            placement(p.clone(), o),
        );
        let plain = world_run_with(&s, 1, STEPS, false);
        let through = world_run_with(&s, 1, STEPS, true);
        assert_same(&plain, &through, &format!("params {}", p.name()));
    }
}

#[test]
fn world_4_matches_one_rank_and_within_rounding_when_ranks_also_accumulate() {
    let dir = std::path::PathBuf::from("/nvme");
    let base = engine_settings(
        train_settings(ParamDtype::Bf16, 0.0, 1),
        placement(nvme(&dir), nvme(&dir)),
    );
    let one = world_run(&with_gas(&base, 1, 4), 1, STEPS);
    let four = world_run(&with_gas(&base, 1, 1), 4, STEPS);
    assert_same(&one, &four, "world 4 vs accumulation 4");
    // Two ranks accumulating two each: the sums are grouped (g0 + g1) + (g2 + g3).
    let two = world_run(&with_gas(&base, 1, 2), 2, STEPS);
    for (a, b) in one.metrics.iter().zip(&two.metrics) {
        let rel = ((a.loss - b.loss) / a.loss).abs();
        assert!(rel < 1e-4, "world 2 × gas 2: {} vs {}", a.loss, b.loss);
    }
}

#[test]
fn ranks_with_empty_parts_of_small_groups_still_match() {
    // Nine ranks over the fixture: the final norm's 64 elements leave rank 8 nothing of it
    // (parts of ceil(64 / 9) = 8), with the update after backward (clipping) and state on NVMe.
    let dir = std::path::PathBuf::from("/nvme");
    for (p, o) in [
        (nvme(&dir), nvme(&dir)),
        (Tier::Device, nvme(&dir)),
        (
            Tier::Cpu { pin_memory: false },
            Tier::Cpu { pin_memory: false },
        ),
    ] {
        let base = engine_settings(
            train_settings(ParamDtype::Bf16, 1.0, 1),
            placement(p.clone(), o),
        );
        let one = world_run(&with_gas(&base, 1, 9), 1, 2);
        let nine = world_run(&with_gas(&base, 1, 1), 9, 2);
        assert_same(&one, &nine, &format!("world 9, params {}", p.name()));
    }
}

/// A rank's end of the group that dies (drops its comm, as a killed rank's connection
/// closes) at the collective where its countdown `left` reaches zero.
struct DiesAt {
    inner: Mutex<Option<ThreadComm>>,
    left: Arc<AtomicUsize>,
    rank: usize,
    world: usize,
}

impl DiesAt {
    /// Runs `f` on the live comm, or dies (drops it) when the countdown reaches zero.
    fn call<T>(&self, f: impl FnOnce(&ThreadComm) -> Result<T, DistError>) -> Result<T, DistError> {
        let mut g = self.inner.lock().unwrap();
        if self.left.fetch_sub(1, Ordering::SeqCst) <= 1 || g.is_none() {
            g.take();
            return Err(DistError::Aborted {
                rank: self.rank,
                why: "killed".into(),
            });
        }
        f(g.as_ref().expect("alive"))
    }
}

impl Collective<CpuDevice> for DiesAt {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_gather(
        &self,
        dev: &CpuDevice,
        send: &CpuBuffer,
        send_off: usize,
        n: usize,
        recv: &mut CpuBuffer,
        recv_off: usize,
    ) -> Result<(), DistError> {
        self.call(|c| c.all_gather(dev, send, send_off, n, recv, recv_off))
    }
    fn reduce_scatter(
        &self,
        dev: &CpuDevice,
        send: &CpuBuffer,
        send_off: usize,
        n: usize,
        recv: &mut CpuBuffer,
        recv_off: usize,
    ) -> Result<(), DistError> {
        self.call(|c| c.reduce_scatter(dev, send, send_off, n, recv, recv_off))
    }
    fn all_reduce(
        &self,
        dev: &CpuDevice,
        buf: &mut CpuBuffer,
        off: usize,
        n: usize,
    ) -> Result<(), DistError> {
        self.call(|c| c.all_reduce(dev, buf, off, n))
    }
    fn broadcast(
        &self,
        dev: &CpuDevice,
        buf: &mut CpuBuffer,
        off: usize,
        n: usize,
        root: usize,
    ) -> Result<(), DistError> {
        self.call(|c| c.broadcast(dev, buf, off, n, root))
    }
    fn barrier(&self, dev: &CpuDevice) -> Result<(), DistError> {
        self.call(|c| c.barrier(dev))
    }
}

#[test]
fn a_rank_that_dies_mid_step_fails_every_rank_at_once_and_the_save_resumes() {
    let dir = tempdir("ranks-kill");
    let save = dir.join("save");
    let cpu = Tier::Cpu { pin_memory: false };
    let base = with_gas(
        &engine_settings(
            train_settings(ParamDtype::Bf16, 0.0, 1),
            placement(nvme(&dir.join("swap")), cpu),
        ),
        2,
        1,
    );
    let world = 2;
    // Real io_uring stores: the swap stores under `swap/rank{r}`, the save under `save`.
    let build = |rank: usize, comm: Box<dyn Collective<CpuDevice>>, start: Start| {
        Engine::new(
            rank_settings(&base, rank, world),
            CpuDevice::new(1, 1 << 30),
            dataset(),
            aio_factory(8 << 20),
            start,
            Timeline::disabled(),
            Some(comm),
        )
    };
    // Uninterrupted: 3 steps.
    let want: Vec<Vec<StepMetrics>> = std::thread::scope(|scope| {
        let hs: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .enumerate()
            .map(|(rank, c)| {
                let build = &build;
                scope.spawn(move || {
                    let mut e = build(rank, Box::new(c), Start::Fresh(None)).unwrap();
                    engine_run(&mut e, 3)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Step 1, a save, then rank 1 dies at its 8th collective of step 2 (of about 17).
    let t0 = Instant::now();
    let left = Arc::new(AtomicUsize::new(usize::MAX / 2));
    let errors: Vec<String> = std::thread::scope(|scope| {
        let hs: Vec<_> = ThreadGroup::with_timeout(world, Duration::from_secs(120))
            .into_iter()
            .enumerate()
            .map(|(rank, c)| {
                let (build, save, left) = (&build, &save, left.clone());
                scope.spawn(move || {
                    let comm: Box<dyn Collective<CpuDevice>> = if rank == 1 {
                        Box::new(DiesAt {
                            inner: Mutex::new(Some(c)),
                            left: left.clone(),
                            rank,
                            world,
                        })
                    } else {
                        Box::new(c)
                    };
                    let mut e = build(rank, comm, Start::Fresh(None)).unwrap();
                    e.step().unwrap();
                    e.save(save).unwrap();
                    if rank == 1 {
                        left.store(8, Ordering::SeqCst);
                    }
                    match e.step() {
                        Ok(_) => panic!("rank {rank}: a step completed without rank 1"),
                        Err(err) => err.to_string(),
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "a rank waited for the timeout: {:?}",
        t0.elapsed()
    );
    assert!(errors[1].contains("killed"), "{errors:?}");
    assert!(
        errors[0].contains("rank 1 left the group"),
        "rank 0 names the rank that left: {errors:?}"
    );
    // The save of step 1 resumes on two ranks and continues as if nothing had happened.
    let got: Vec<Vec<StepMetrics>> = std::thread::scope(|scope| {
        let hs: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .enumerate()
            .map(|(rank, c)| {
                let build = &build;
                let save = save.clone();
                scope.spawn(move || {
                    let mut e = build(rank, Box::new(c), Start::Resume(save)).unwrap();
                    assert_eq!(e.steps(), 1);
                    engine_run(&mut e, 2)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for rank in 0..world {
        assert_eq!(bits(&got[rank]), bits(&want[rank][1..]), "rank {rank}");
    }
    // A different world size is refused, naming both.
    let one = Engine::new(
        rank_settings(&base, 0, 1),
        CpuDevice::new(1, 1 << 30),
        dataset(),
        aio_factory(8 << 20),
        Start::Resume(save.clone()),
        Timeline::disabled(),
        None,
    );
    let err = one
        .err()
        .expect("world 1 cannot resume a world-2 save")
        .to_string();
    assert!(
        err.contains("saved by 2 rank(s), and this run has 1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zinf_train_with_two_ranks_matches_one_rank_with_accumulation() {
    use zinf::cli::train::{train, TrainArgs};
    let dir = tempdir("ranks-cli");
    let config = |name: &str, gas: u64| {
        let text = format!(
            r#"{{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": {gas},
  "gradient_clipping": 1.0,
  "steps_per_print": 100,
  "optimizer": {{ "type": "AdamW", "params": {{ "lr": 1e-3, "weight_decay": 0.01 }} }},
  "zero_optimization": {{ "stage": 3,
    "offload_param": {{ "device": "nvme", "nvme_path": "{swap}" }},
    "offload_optimizer": {{ "device": "nvme", "nvme_path": "{swap}" }} }},
  "zinf": {{
    "seed": 42,
    "train_steps": 3,
    "model": {{ "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 50257, "block_size": 32 }},
    "data": {{ "seq_len": 32, "val_fraction": 0.1, "eval_interval": 3, "eval_batches": 1 }},
    "device_memory_budget": "1GiB"
  }}
}}"#,
            swap = dir.join(format!("swap-{name}")).display()
        );
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let run = |name: &str, gas: u64, ranks: u64| {
        let a = TrainArgs {
            config: Some(config(name, gas)),
            out: Some(dir.join(name)),
            threads: Some(2),
            no_progress: true,
            nproc_per_node: ranks,
            device: Some(zinf::config::DeviceChoice::Cpu),
            save: Some(dir.join(format!("{name}-save"))),
            ..TrainArgs::default()
        };
        train(&a, &AtomicBool::new(false)).expect("train")
    };
    let one = run("one", 2, 1);
    let two = run("two", 1, 2);
    let b = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b(&one.losses), b(&two.losses));
    assert_eq!(
        one.val_loss.map(f32::to_bits),
        two.val_loss.map(f32::to_bits)
    );
    assert_eq!(one.tokens, two.tokens, "tokens count every rank's");
    let weights = |name: &str| std::fs::read(dir.join(name).join("model.safetensors")).unwrap();
    assert!(
        weights("one") == weights("two"),
        "the exports are identical"
    );
    // `zinf export` of the two-rank save gathers both partitions into the same weights.
    let e = zinf::cli::export::ExportArgs {
        from: dir.join("two-save"),
        to: dir.join("two-export"),
        config: dir.join("two.json"),
        init_from: None,
        max_shard_bytes: zinf::model::export::DEFAULT_MAX_SHARD_BYTES,
    };
    zinf::cli::export::run(&e).expect("export of a two-rank save");
    assert!(
        weights("two-export") == weights("two"),
        "the save's export is the run's"
    );
    assert!(
        dir.join("swap-two/rank1").exists(),
        "each rank has its own swap folder"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_process_launched_as_a_cpu_rank_is_told_how_to_run_cpu_ranks() {
    // torchrun's variables, no GPU build: a clear refusal (exit 2), not a hang at the
    // rendezvous.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zinf"))
        .args(["train", "--device", "cpu", "--steps", "1", "--no-progress"])
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", "1")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "1")
        .output()
        .expect("zinf runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rank 1 of 2") && err.contains("--nproc-per-node N --device cpu"),
        "{err}"
    );
}
