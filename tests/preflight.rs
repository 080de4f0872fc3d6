//! `zinf config check` is `zinf train`'s pre-flight: for the configs the issue found passing
//! the check and failing in train, and for valid neighbours of them, both commands agree —
//! exit 2 naming the same JSON key, or both start. Also: the free-space refusal (with an
//! injected free-space figure), `sub_group_size` costs that stay linear in the model, and a
//! failed store creation that leaves nothing on the drive.

use std::path::Path;
use std::process::Command;
use zinf::config::Config;
use zinf::estimate::estimate;
use zinf::session::{Overrides, Session};

/// A tiny GPT with parameters and optimizer state on NVMe under `dir`; `patch` edits the JSON.
fn config_text(dir: &Path, patch: impl FnOnce(&mut serde_json::Value)) -> String {
    let nvme = dir.join("nvme");
    let mut v = serde_json::json!({
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
        "bf16": {"enabled": true},
        "zero_optimization": {"stage": 3,
            "offload_param": {"device": "nvme", "nvme_path": nvme},
            "offload_optimizer": {"device": "nvme", "nvme_path": nvme}},
        "csv_monitor": {"enabled": false},
        "zinf": {"train_steps": 1, "seed": 3, "threads": 1,
            "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 50257, "block_size": 16},
            "data": {"seq_len": 16, "eval_interval": 0},
            "device_memory_budget": "256MiB"}
    });
    patch(&mut v);
    serde_json::to_string_pretty(&v).expect("serialize")
}

fn zinf(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zinf"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run zinf")
}

fn set(v: &mut serde_json::Value, path: &str, x: serde_json::Value) {
    let mut at = v;
    let keys: Vec<&str> = path.split('.').collect();
    for k in &keys[..keys.len() - 1] {
        at = at
            .as_object_mut()
            .expect("object")
            .entry(*k)
            .or_insert(serde_json::json!({}));
    }
    at[keys[keys.len() - 1]] = x;
}

#[test]
fn config_check_and_train_agree() {
    use serde_json::json;
    // (name, key, value, the key the refusal names; None: both start)
    let cases: &[(&str, &str, serde_json::Value, Option<&str>)] = &[
        (
            "pool 0",
            "zinf.pinned_memory_budget",
            json!(0),
            Some("zinf.pinned_memory_budget"),
        ),
        (
            "pool below one shard",
            "zinf.pinned_memory_budget",
            json!(4096),
            Some("zinf.pinned_memory_budget"),
        ),
        (
            "device budget 0",
            "zinf.device_memory_budget",
            json!(0),
            Some("zinf.device_memory_budget"),
        ),
        (
            "device budget below the peak",
            "zinf.device_memory_budget",
            json!("100KiB"),
            Some("zinf.device_memory_budget"),
        ),
        (
            "host budget below the state",
            "zinf.host_memory_budget",
            json!("64KiB"),
            Some("zinf.host_memory_budget"),
        ),
        (
            "empty nvme_path",
            "zero_optimization.offload_optimizer.nvme_path",
            json!(""),
            Some("zero_optimization.offload_optimizer.nvme_path"),
        ),
        (
            "device cuda before the CUDA backend runs the model",
            "zinf.device",
            json!("cuda"),
            Some("zinf.device"),
        ),
        (
            "device that is not one",
            "zinf.device",
            json!("gpu"),
            Some("zinf.device"),
        ),
        ("device cpu", "zinf.device", json!("cpu"), None),
        (
            "cosine with no decay phase: warned, runs",
            "scheduler",
            json!({"type": "WarmupCosineLR",
                   "params": {"total_num_steps": 10, "warmup_num_steps": 10}}),
            None,
        ),
        (
            "reduce_bucket_size 0: explained, runs",
            "zero_optimization.reduce_bucket_size",
            json!(0),
            None,
        ),
        (
            "sub_group_size 1: raised, runs",
            "zero_optimization.sub_group_size",
            json!(1),
            None,
        ),
    ];
    for (name, key, value, refused_at) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text(dir.path(), |v| set(v, key, value.clone()));
        let cfg = dir.path().join("c.json");
        std::fs::write(&cfg, text).expect("write");
        let cfg = cfg.to_str().expect("utf-8");
        let check = zinf(&["config", "check", cfg]);
        let out = dir.path().join("out");
        let train = zinf(&[
            "train",
            "--config",
            cfg,
            "--steps",
            "1",
            "--no-progress",
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        let text = |o: &std::process::Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        match refused_at {
            Some(k) => {
                for (cmd, o) in [("config check", &check), ("train", &train)] {
                    assert_eq!(o.status.code(), Some(2), "{name}: {cmd}: {}", text(o));
                    assert!(
                        text(o).contains(&format!("{k}:")),
                        "{name}: {cmd} names {k}: {}",
                        text(o)
                    );
                }
                // Refused before anything was allocated: no swap store was created.
                assert!(
                    !dir.path().join("nvme/zinf_swap").exists(),
                    "{name}: a refused run created its swap store"
                );
            }
            None => {
                assert_eq!(check.status.code(), Some(0), "{name}: {}", text(&check));
                assert_eq!(train.status.code(), Some(0), "{name}: {}", text(&train));
            }
        }
    }
}

#[test]
fn a_swap_store_larger_than_the_free_space_is_refused_naming_the_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), |_| {});
    let cfg = Config::parse(&text, "t").expect("valid").config;
    let plan = Session::draft(&cfg, &Overrides::default()).expect("plan");
    let roomy = estimate(&cfg, &plan, 2.0, None, &|_| Some(1 << 40));
    assert!(plan.refusals(&cfg, &roomy).is_empty());
    let need = roomy.nvme_space[0].needed_bytes;
    assert_eq!(need, roomy.nvme.bytes.next_multiple_of(4096).max(need));
    let tight = estimate(&cfg, &plan, 2.0, None, &|_| Some(need - 1));
    let refused = plan.refusals(&cfg, &tight).join("\n");
    assert!(
        refused.contains("zero_optimization.offload_param.nvme_path and zero_optimization.offload_optimizer.nvme_path: the swap store needs"),
        "{refused}"
    );
    assert!(
        refused.contains(&dir.path().join("nvme").display().to_string()),
        "{refused}"
    );
    // The store of an earlier unsaved run there is removed by a fresh start: its blocks
    // count as free.
    let old = dir.path().join("nvme/zinf_swap");
    std::fs::create_dir_all(&old).expect("mkdir");
    std::fs::write(old.join("zinf-swap.0.extents"), vec![1u8; 1 << 20]).expect("write");
    let refused = plan.refusals(&cfg, &tight);
    assert!(refused.is_empty(), "{refused:?}");
}

#[test]
fn a_tiny_sub_group_size_costs_what_the_default_does() {
    // The example: sub_group_size 256 on a 3M-parameter model (GPT-2's vocabulary).
    let dir = tempfile::tempdir().expect("tempdir");
    let text = |sub: u64| {
        config_text(dir.path(), |v| {
            set(
                v,
                "zero_optimization.sub_group_size",
                serde_json::json!(sub),
            );
            set(
                v,
                "zinf.model",
                serde_json::json!({"n_layer": 2, "n_head": 2, "n_embd": 64,
                    "vocab_size": 50257, "block_size": 32}),
            );
        })
    };
    let stats = |sub: u64| {
        let cfg = Config::parse(&text(sub), "t").expect("valid").config;
        let plan = Session::draft(&cfg, &Overrides::default()).expect("plan");
        estimate(&cfg, &plan, 2.0, None, &|_| Some(1 << 40))
    };
    let default = stats(1_000_000_000);
    for sub in [1, 256, 4096] {
        let e = stats(sub);
        // Units at most tensors + elements / 4096; disk within 1% of the default's.
        assert!(
            e.model.units <= 26 + e.model.params / 4096 + 1,
            "{sub}: {} units",
            e.model.units
        );
        assert!(
            e.nvme.bytes <= default.nvme.bytes + default.nvme.bytes / 100,
            "{sub}: {} B on disk vs {} B",
            e.nvme.bytes,
            default.nvme.bytes
        );
    }
}

/// A drive that fills up while the store is created (the free-space check passed, then
/// something else took the space): the failed start removes what it allocated. Needs a
/// 16 MiB tmpfs (root); skipped, saying so, where mounting is not allowed.
#[test]
fn a_failed_store_creation_leaves_nothing_on_the_drive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    // Two folders on the drive: the store stripes over them (about 11.5 MB each), so the first
    // extent file is allocated whole before the second runs out of room.
    let text = config_text(dir.path(), |v| {
        let (a, b) = (mnt.join("a"), mnt.join("b"));
        set(
            v,
            "zero_optimization.offload_param.nvme_path",
            serde_json::json!(a),
        );
        set(
            v,
            "zero_optimization.offload_optimizer.nvme_path",
            serde_json::json!(b),
        );
    });
    let cfg = Config::parse(&text, "t").expect("valid").config;
    // Plan as if the drive had room (the check is what a full drive would beat).
    let plan = Session::draft(&cfg, &Overrides::default()).expect("plan");
    let data =
        zinf::data::Dataset::split((0..4000).map(|i| i % 500).collect::<Vec<u32>>(), 0.1, 16)
            .expect("dataset");
    let dev = zinf::session::open_cpu_device(&plan.settings.train);
    let err = plan
        .build(dev, data, None)
        .err()
        .expect("a 16 MiB drive cannot hold the store");
    // The removed files' blocks return when io_uring's workers close them: allow 5 s.
    let mut used = used_bytes(&mnt);
    for _ in 0..50 {
        if used <= 2 * 4096 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        used = used_bytes(&mnt);
    }
    // io_uring's workers may still hold the closed files for a moment: detach lazily.
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    assert!(
        format!("{err}").contains("zinf_swap"),
        "the error names the store: {err}"
    );
    // What stays: the two folders' lock files (a page each, holding a pid), nothing else.
    assert!(
        used <= 2 * 4096,
        "the failed start left {used} bytes on the drive"
    );
}

/// Bytes in use on the filesystem mounted at `p` (blocks, not apparent file lengths: a
/// failed `fallocate` may keep blocks of a file whose length is 0), as `df` counts them.
fn used_bytes(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(p)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the used bytes")
}
