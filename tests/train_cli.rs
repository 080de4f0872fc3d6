//! `zinf train` end to end through its library entry point: the embedded tiny config learns,
//! losses are bit-identical across runs and thread counts, an over-budget model fails before
//! any step, and a checkpoint written by one run starts the next bit-exactly.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use zinf::cli::train::{train, TrainArgs};

fn small_config(dir: &Path, extra: &str, budget: &str) -> std::path::PathBuf {
    let text = format!(
        r#"{{
  "train_micro_batch_size_per_gpu": 4,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 1.0,
  "steps_per_print": 100,
  "optimizer": {{ "type": "AdamW", "params": {{ "lr": 1e-3, "weight_decay": 0.01 }} }},
  {extra}
  "zinf": {{
    "seed": 42,
    "train_steps": 4,
    "model": {{ "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 50257, "block_size": 32 }},
    "data": {{ "seq_len": 32, "val_fraction": 0.1, "eval_interval": 2, "eval_batches": 1 }},
    "device_memory_budget": "{budget}"
  }}
}}"#
    );
    let p = dir.join("small.json");
    std::fs::write(&p, text).unwrap();
    p
}

fn args(config: Option<&Path>, out: &Path, steps: u64, threads: usize) -> TrainArgs {
    TrainArgs {
        config: config.map(Path::to_path_buf),
        steps: Some(steps),
        out: Some(out.to_path_buf()),
        threads: Some(threads),
        no_progress: true,
        ..TrainArgs::default()
    }
}

#[test]
fn the_embedded_first_run_learns_shakespeare_with_state_on_nvme() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(None, dir.path(), 60, 2);
    a.summary_json = Some(dir.path().join("summary.json"));
    let s = train(&a, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.steps, 60);
    assert!(
        s.first_loss > 10.0,
        "starts near ln(50257): {}",
        s.first_loss
    );
    // Shakespeare, not template sentences: 10.8 -> about 6.4 in 60 steps (release and debug
    // give the same losses).
    assert!(
        s.final_loss < 0.7 * s.first_loss,
        "loss {} -> {}",
        s.first_loss,
        s.final_loss
    );
    assert!(s.val_loss.expect("validation ran") < 7.0);
    // Parameters and optimizer state went through the NVMe tier under the output folder,
    // and the scratch store is gone after the run.
    assert_eq!(
        (s.offload_param.as_str(), s.offload_optimizer.as_str()),
        ("nvme", "nvme")
    );
    assert!(s.bytes_read > 0 && s.bytes_written > 0);
    assert!(dir.path().join("nvme").is_dir() && !dir.path().join("nvme/zinf_swap").exists());
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "step,loss,lr,loss_scale,grad_norm,step_s,tokens_per_s,val_loss"
    );
    assert_eq!(lines.count(), 60);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["steps"], 60);
    assert!(
        dir.path().join("model.safetensors").exists() && dir.path().join("config.json").exists()
    );
}

#[test]
fn same_seed_gives_bit_identical_losses_across_runs_and_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), "", "256MiB");
    let run = |threads: usize, sub: &str| {
        train(
            &args(Some(&cfg), &dir.path().join(sub), 4, threads),
            &AtomicBool::new(false),
        )
        .unwrap()
    };
    let a = run(1, "a");
    let b = run(2, "b");
    let c = run(2, "c");
    assert_eq!(a.losses.len(), 4);
    assert_eq!(a.losses, b.losses, "1 vs 2 threads");
    assert_eq!(b.losses, c.losses, "two runs");
    assert_eq!(a.val_loss, c.val_loss);
    assert!(a.losses.iter().all(|l| l.is_finite()));
}

#[test]
fn fp16_with_dynamic_loss_scaling_and_checkpointing_trains() {
    let dir = tempfile::tempdir().unwrap();
    let extra = r#""fp16": { "enabled": true, "initial_scale_power": 8 }, "activation_checkpointing": { "partition_activations": false },"#;
    let cfg = small_config(dir.path(), extra, "256MiB");
    let s = train(&args(Some(&cfg), dir.path(), 6, 2), &AtomicBool::new(false)).unwrap();
    assert_eq!(s.steps, 6);
    assert!(s.losses.iter().all(|l| l.is_finite()));
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let scale: f64 = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(scale, 256.0, "fp16 starts at 2^initial_scale_power");
}

#[test]
fn over_budget_device_memory_fails_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), "", "4MiB");
    let err = train(
        &args(Some(&cfg), &dir.path().join("o"), 4, 2),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    // Refused by the pre-flight (the estimate's device peak), before anything is allocated.
    assert!(
        msg.contains("zinf.device_memory_budget: the device peak of this run is")
            && msg.contains("above the 4.00 MiB budget"),
        "{msg}"
    );
    assert_eq!(zinf::cli::exit_code(&err), zinf::cli::EXIT_BAD_INPUT);
    assert!(
        !dir.path().join("o/metrics.csv").exists(),
        "no step may have run"
    );
}

#[test]
fn init_from_a_checkpoint_starts_where_it_ended() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), "", "256MiB");
    train(
        &args(Some(&cfg), &dir.path().join("first"), 2, 2),
        &AtomicBool::new(false),
    )
    .unwrap();
    let mut a = args(Some(&cfg), &dir.path().join("second"), 0, 2);
    a.init_from = Some(dir.path().join("first"));
    train(&a, &AtomicBool::new(false)).unwrap();
    let first = std::fs::read(dir.path().join("first/model.safetensors")).unwrap();
    let second = std::fs::read(dir.path().join("second/model.safetensors")).unwrap();
    assert_eq!(first, second, "load then save must be bit-exact");
}

#[test]
fn stop_flag_ends_the_run_after_the_current_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path(), "", "256MiB");
    let s = train(&args(Some(&cfg), dir.path(), 4, 2), &AtomicBool::new(true)).unwrap();
    assert_eq!(s.steps, 1);
    assert!(s.interrupted);
    assert!(s.val_loss.is_some(), "validation still runs at the stop");
    assert!(
        dir.path().join("model.safetensors").exists(),
        "an interrupted run still saves"
    );
}
