//! `zinf config check` and `zinf estimate` as a user runs them: exit codes, JSON on stdout,
//! every problem on stderr.

use std::process::Command;

fn zinf(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zinf"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run zinf")
}

#[test]
fn config_check_prints_resolved_json_for_a_valid_file() {
    let out = zinf(&[
        "config",
        "check",
        "configs/zero3_nvme_offload.json",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["zero_optimization"]["offload_param"]["device"], "nvme");
    assert_eq!(v["aio"]["queue_depth"], 32);
    // defaults are filled in
    assert_eq!(v["zero_optimization"]["offload_optimizer"]["ratio"], 1.0);
    assert_eq!(v["fp16"]["enabled"], false);
}

#[test]
fn config_check_exits_2_with_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"train_batch_size": 8, "fp16": {"loss_scal": 0}, "aio": {"queue_depth": "deep"}}"#,
    )
    .expect("write");
    let out = zinf(&["config", "check", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fp16.loss_scal: unknown key; did you mean loss_scale?"),
        "{err}"
    );
    assert!(
        err.contains("aio.queue_depth: expected a non-negative integer"),
        "{err}"
    );
}

#[test]
fn estimate_json_has_the_tiers_and_deepspeed_table() {
    let out = zinf(&[
        "estimate",
        "--config",
        "configs/zero3_cpu_offload.json",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["model"]["params"], 124_439_808u64);
    // pin_memory: bf16 parameters (2 B) and fp32 master, m, v (12 B) per parameter.
    assert_eq!(v["pinned_host"]["bytes"], 14 * 124_439_808u64);
    assert_eq!(v["deepspeed_all_live"].as_array().map(Vec::len), Some(6));
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = zinf(&["config", "check", "no/such/file.json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file no/such/file.json"),
        "{err}"
    );
}
