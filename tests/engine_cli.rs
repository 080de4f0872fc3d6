//! The engine through `zinf train`: a child process killed with SIGKILL at a random moment
//! (mid-step or mid-save) resumes from its last save and continues bit-identically; the trace
//! and the summary JSON carry what a user reads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use zinf::cli::train::{train, TrainArgs};

fn nvme_config(dir: &Path, nvme: &Path, steps: u64) -> PathBuf {
    let text = format!(
        r#"{{
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 1.0,
  "steps_per_print": 1000,
  "optimizer": {{ "type": "AdamW", "params": {{ "lr": 1e-3, "weight_decay": 0.01 }} }},
  "scheduler": {{ "type": "WarmupLR", "params": {{ "warmup_num_steps": 5 }} }},
  "bf16": {{ "enabled": true }},
  "zero_optimization": {{
    "stage": 3,
    "sub_group_size": 200000,
    "offload_param": {{ "device": "nvme", "nvme_path": "{nvme}" }},
    "offload_optimizer": {{ "device": "nvme", "nvme_path": "{nvme}" }}
  }},
  "zinf": {{
    "seed": 5,
    "train_steps": {steps},
    "model": {{ "n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 50257, "block_size": 32 }},
    "data": {{ "seq_len": 32, "val_fraction": 0.1, "eval_interval": 0 }},
    "device_memory_budget": "512MiB",
    "pinned_memory_budget": "64MiB"
  }}
}}"#,
        nvme = nvme.display()
    );
    let p = dir.join(format!(
        "cfg-{}.json",
        nvme.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&p, text).unwrap();
    p
}

fn args(config: &Path, out: &Path) -> TrainArgs {
    TrainArgs {
        config: Some(config.to_path_buf()),
        out: Some(out.to_path_buf()),
        threads: Some(1),
        no_progress: true,
        ..TrainArgs::default()
    }
}

#[test]
fn a_run_killed_at_a_random_moment_resumes_bit_identically() {
    const STEPS: u64 = 24;
    let dir = tempfile::tempdir().unwrap();
    let (na, nb) = (dir.path().join("nvme-a"), dir.path().join("nvme-b"));
    let cfg_a = nvme_config(dir.path(), &na, STEPS);
    let want = train(
        &args(&cfg_a, &dir.path().join("out-a")),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(want.losses.len(), STEPS as usize);

    let cfg_b = nvme_config(dir.path(), &nb, STEPS);
    let save = dir.path().join("save");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zinf"))
        .args([
            "train",
            "--no-progress",
            "--threads",
            "1",
            "--save-every",
            "2",
        ])
        .arg("--config")
        .arg(&cfg_b)
        .arg("--save")
        .arg(&save)
        .arg("--out")
        .arg(dir.path().join("out-b"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first save, then kill after a random extra delay: mid-step or mid-save.
    let t0 = Instant::now();
    while !save.join("checkpoint.json").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no save appeared");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 700)));
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();

    let mut ra = args(&cfg_b, &dir.path().join("out-c"));
    ra.resume = Some(save.clone());
    let got = train(&ra, &AtomicBool::new(false)).unwrap();
    let s = got.start_step as usize;
    assert!(
        s >= 2 && s <= STEPS as usize,
        "resumed from a save: step {s}"
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&got.losses),
        bits(&want.losses[s..]),
        "resumed at step {s} (killed after {:?})",
        Duration::from_millis(u64::from(nanos % 700))
    );
}

#[test]
fn trace_and_summary_json_carry_the_promised_figures() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = nvme_config(dir.path(), &dir.path().join("nvme"), 3);
    let mut a = args(&cfg, &dir.path().join("out"));
    let (trace, summary) = (
        dir.path().join("trace.json"),
        dir.path().join("summary.json"),
    );
    a.trace = Some(trace.clone());
    a.summary_json = Some(summary.clone());
    train(&a, &AtomicBool::new(false)).unwrap();
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    for key in [
        "peak_rss_bytes",
        "step_s_median",
        "bytes_read",
        "bytes_written",
        "io_wait_s",
        "pool_wait_s",
        "overlap_fraction",
        "prefetch_hit_rate",
        "wear_bytes_per_1000_steps",
    ] {
        assert!(s[key].is_number(), "summary key {key}: {s}");
    }
    assert!(s["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(s["bytes_read"].as_u64().unwrap() > 0 && s["bytes_written"].as_u64().unwrap() > 0);
    let f = s["overlap_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f), "{f}");
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    for want in [
        "steps",
        "compute",
        "optimizer",
        "I/O lane 0 (requests in flight)",
    ] {
        assert!(names.contains(&want), "track {want} in {names:?}");
    }
    assert!(events
        .iter()
        .any(|e| e["ph"] == "X" && e["name"].as_str().unwrap_or("").starts_with("read param")));
    // One span per step on the steps track, named by its step.
    let step_spans: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["tid"] == 0)
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(step_spans, ["step 1", "step 2", "step 3"]);
}
