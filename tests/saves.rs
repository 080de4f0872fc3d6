//! Runs that never lose work (`zinf train --save / --resume`): every placement saves and
//! resumes bit-identically (the resident default included); a save is a snapshot that can be
//! copied, moved and kept — a copy resumes at its own step, whatever the run did since; one
//! run per swap folder (a second is refused naming the owner); a finished run removes its
//! scratch swap store.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use zinf::cli::train::{train, Summary, TrainArgs};

mod engine_common;

/// A tiny GPT; `offload` is `(offload_param, offload_optimizer)`, NVMe under `dir/nvme`.
fn config(dir: &Path, offload: (&str, &str)) -> PathBuf {
    let nvme = dir.join("nvme");
    let dev = |d: &str| {
        if d == "nvme" {
            format!(r#"{{"device": "nvme", "nvme_path": "{}"}}"#, nvme.display())
        } else {
            format!(r#"{{"device": "{d}"}}"#)
        }
    };
    let text = format!(
        r#"{{
  "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
  "gradient_clipping": 1.0, "steps_per_print": 1000,
  "optimizer": {{"type": "AdamW", "params": {{"lr": 1e-3, "weight_decay": 0.01}}}},
  "scheduler": {{"type": "WarmupLR", "params": {{"warmup_num_steps": 3}}}},
  "bf16": {{"enabled": true}},
  "zero_optimization": {{"stage": 3, "sub_group_size": 200000,
    "offload_param": {op}, "offload_optimizer": {oo}}},
  "csv_monitor": {{"enabled": false}},
  "zinf": {{"seed": 11, "train_steps": 6, "threads": 1,
    "model": {{"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": 50257, "block_size": 32}},
    "data": {{"seq_len": 32, "eval_interval": 0}},
    "device_memory_budget": "512MiB", "pinned_memory_budget": "64MiB"}}
}}"#,
        op = dev(offload.0),
        oo = dev(offload.1),
    );
    let p = dir.join(format!("cfg-{}-{}.json", offload.0, offload.1));
    std::fs::write(&p, text).unwrap();
    p
}

fn run(
    config: Option<&Path>,
    out: &Path,
    steps: u64,
    save: Option<&Path>,
    resume: Option<&Path>,
) -> Summary {
    let a = TrainArgs {
        config: config.map(Path::to_path_buf),
        out: Some(out.to_path_buf()),
        steps: Some(steps),
        threads: Some(1),
        no_progress: true,
        save: save.map(Path::to_path_buf),
        resume: resume.map(Path::to_path_buf),
        ..TrainArgs::default()
    };
    train(&a, &AtomicBool::new(false)).expect("train")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn every_placement_saves_and_resumes_bit_identically() {
    for offload in [
        ("none", "none"),
        ("cpu", "cpu"),
        ("nvme", "nvme"),
        ("none", "nvme"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), offload);
        let want = run(Some(&cfg), &dir.path().join("a"), 4, None, None);
        let save = dir.path().join("save");
        run(Some(&cfg), &dir.path().join("b"), 2, Some(&save), None);
        assert!(save.join("checkpoint.json").exists(), "{offload:?}");
        assert!(save.join("step-00000002").is_dir(), "{offload:?}");
        // The swap store is scratch: the finished run removed it; the save is in DIR.
        assert!(!dir.path().join("nvme/zinf_swap").exists(), "{offload:?}");
        // Resumed and saved into the same folder: the newer save replaces the older.
        let again = run(
            Some(&cfg),
            &dir.path().join("b2"),
            3,
            Some(&save),
            Some(&save),
        );
        assert_eq!(again.start_step, 2);
        assert!(save.join("step-00000003").is_dir() && !save.join("step-00000002").exists());
        let got = run(Some(&cfg), &dir.path().join("c"), 4, None, Some(&save));
        assert_eq!(got.start_step, 3, "{offload:?}");
        assert_eq!(bits(&got.losses), bits(&want.losses[3..]), "{offload:?}");
    }
}

#[test]
fn the_embedded_default_saves_and_resumes() {
    // The issue's example: `zinf train --steps 2 --save DIR` with no config at all.
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("save");
    let want = run(None, &dir.path().join("a"), 3, None, None);
    run(None, &dir.path().join("b"), 2, Some(&save), None);
    assert!(
        dir.path().join("b/model.safetensors").exists(),
        "the export is written too"
    );
    let got = run(None, &dir.path().join("c"), 3, None, Some(&save));
    assert_eq!(bits(&got.losses), bits(&want.losses[2..]));
}

#[test]
fn a_copied_or_moved_save_resumes_at_its_own_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ("nvme", "nvme"));
    let want = run(Some(&cfg), &dir.path().join("a"), 5, None, None);
    let save = dir.path().join("save");
    run(Some(&cfg), &dir.path().join("b"), 2, Some(&save), None);
    let backup = dir.path().join("backup");
    copy_dir(&save, &backup);
    // Training on from the save and saving into it again changes the save, not the copy.
    let on = run(
        Some(&cfg),
        &dir.path().join("c"),
        4,
        Some(&save),
        Some(&save),
    );
    assert_eq!(on.start_step, 2);
    assert!(save.join("step-00000004").is_dir() && !save.join("step-00000002").exists());
    let from_copy = run(Some(&cfg), &dir.path().join("d"), 5, None, Some(&backup));
    assert_eq!(from_copy.start_step, 2, "the copy resumes at its own step");
    assert_eq!(bits(&from_copy.losses), bits(&want.losses[2..]));
    // Moved elsewhere (paths inside a save are relative to it).
    let moved = dir.path().join("elsewhere/moved");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&save, &moved).unwrap();
    let from_moved = run(Some(&cfg), &dir.path().join("e"), 5, None, Some(&moved));
    assert_eq!(from_moved.start_step, 4);
    assert_eq!(bits(&from_moved.losses), bits(&want.losses[4..]));
}

#[test]
fn a_second_run_on_a_locked_swap_folder_is_refused_naming_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ("nvme", "nvme"));
    // Run A holds the folder (its lock, as a run's session takes it).
    let loaded = zinf::config::Config::load(&cfg).unwrap();
    let placement = zinf::engine::Placement::from_config(&loaded.config).unwrap();
    let a = zinf::engine::swap_lock::SwapLock::acquire(&placement).expect("A takes the folder");
    std::fs::create_dir_all(dir.path().join("nvme/zinf_swap")).unwrap();
    std::fs::write(dir.path().join("nvme/zinf_swap/live"), b"A's state").unwrap();
    let args = TrainArgs {
        config: Some(cfg.clone()),
        out: Some(dir.path().join("b")),
        steps: Some(1),
        threads: Some(1),
        no_progress: true,
        ..TrainArgs::default()
    };
    let err = train(&args, &AtomicBool::new(false)).expect_err("B is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("in use by another zinf run")
            && msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert_eq!(zinf::cli::exit_code(&err), zinf::cli::EXIT_BAD_INPUT);
    // The same from another process: `zinf train` and `zinf config check` both refuse.
    for cmd in [
        &["train", "--steps", "1", "--config"][..],
        &["config", "check"][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zinf"))
            .args(cmd)
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {text}");
        assert!(
            text.contains("in use by another zinf run")
                && text.contains(&format!("pid {}", std::process::id())),
            "{cmd:?}: {text}"
        );
    }
    assert!(
        dir.path().join("nvme/zinf_swap/live").exists(),
        "B deleted A's live store"
    );
    drop(a);
    // Released (A finished): B runs, and A's drop removed A's store.
    assert!(!dir.path().join("nvme/zinf_swap").exists());
    let s = train(&args, &AtomicBool::new(false)).expect("B runs once A is done");
    assert_eq!(s.steps, 1);
}

#[test]
fn sigterm_finishes_the_step_saves_and_resumes_bit_identically() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ("nvme", "nvme"));
    const STEPS: u64 = 30;
    let want = run(Some(&cfg), &dir.path().join("a"), STEPS, None, None);
    let save = dir.path().join("save");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zinf"))
        .args([
            "train",
            "--no-progress",
            "--threads",
            "1",
            "--steps",
            "30",
            "--config",
        ])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("b"))
        .arg("--save")
        .arg(&save)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until training has begun (the start-up log names the steps), then SIGTERM, as a
    // scheduler sends it.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("training steps") {
        line.clear();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit 130 after SIGTERM: {rest}");
    assert!(
        save.join("checkpoint.json").exists(),
        "saved on SIGTERM: {rest}"
    );
    assert!(
        dir.path().join("b/model.safetensors").exists(),
        "exported on SIGTERM"
    );
    let got = run(Some(&cfg), &dir.path().join("c"), STEPS, None, Some(&save));
    let s = got.start_step as usize;
    assert!(s >= 1 && s < STEPS as usize, "stopped mid-run: step {s}");
    assert_eq!(
        bits(&got.losses),
        bits(&want.losses[s..]),
        "resumed at step {s}"
    );
}

#[test]
fn contradictory_flags_and_bad_outputs_are_refused_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), ("none", "cpu"));
    let out = dir.path().join("out");
    let base = TrainArgs {
        config: Some(cfg.clone()),
        out: Some(out.clone()),
        steps: Some(2),
        threads: Some(1),
        no_progress: true,
        ..TrainArgs::default()
    };
    let refused = |a: TrainArgs, want: &str| {
        let err = train(&a, &AtomicBool::new(false)).expect_err(want);
        let msg = format!("{err:#}");
        assert!(msg.contains(want), "{msg}");
        assert_eq!(
            zinf::cli::exit_code(&err),
            zinf::cli::EXIT_BAD_INPUT,
            "{msg}"
        );
    };
    refused(
        TrainArgs {
            init_from: Some(dir.path().join("hf")),
            resume: Some(dir.path().join("save")),
            ..base.clone()
        },
        "--init-from and --resume",
    );
    refused(
        TrainArgs {
            save_every: 2,
            ..base.clone()
        },
        "--save-every 2 needs --save",
    );
    // A save path under a regular file cannot be created: found before step 1.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    refused(
        TrainArgs {
            save: Some(file.join("save")),
            ..base.clone()
        },
        "--save",
    );
    refused(
        TrainArgs {
            trace: Some(file.join("trace.json")),
            ..base.clone()
        },
        "--trace",
    );
    assert!(!out.join("metrics.csv").exists(), "no step ran");
    // Resuming a run already at --steps: said, not `loss NaN -> NaN`.
    let save = dir.path().join("save");
    run(Some(&cfg), &dir.path().join("b"), 2, Some(&save), None);
    refused(
        TrainArgs {
            resume: Some(save.clone()),
            ..base.clone()
        },
        "the save is at step 2",
    );
}

#[test]
fn a_second_save_at_the_same_step_keeps_the_first() {
    // An interrupt on a --save-every step asks for a save the loop just made: it is made once.
    use std::os::unix::fs::MetadataExt;
    use zinf::engine::{Engine, Start, Tier};
    let dir = tempfile::tempdir().unwrap();
    let train = engine_common::train_settings(zinf::model::ParamDtype::Bf16, 1.0, 1);
    let cpu = Tier::Cpu { pin_memory: false };
    let s =
        engine_common::engine_settings(train.clone(), engine_common::placement(cpu.clone(), cpu));
    let mut e = Engine::new(
        s,
        zinf::session::open_cpu_device(&train),
        engine_common::dataset(),
        engine_common::aio_factory(8 << 20),
        Start::Fresh(None),
        zinf::timeline::Timeline::disabled(),
        None,
    )
    .unwrap();
    e.step().unwrap();
    let save = dir.path().join("save");
    let first = e.save(&save).unwrap();
    let ino = std::fs::metadata(&first).unwrap().ino();
    let second = e.save(&save).unwrap();
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&second).unwrap().ino(),
        ino,
        "not written again"
    );
    e.step().unwrap();
    let third = e.save(&save).unwrap();
    assert!(
        third.ends_with("step-00000002") && !first.exists(),
        "the older save goes"
    );
}
