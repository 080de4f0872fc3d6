//! Exit codes and flag checks as a user meets them (issue #12, item 7): 0 done, 2 bad input
//! (config, flags, invalid UTF-8), 1 a failure while running, 130 interrupted — the same in
//! every subcommand; flags are refused before any work starts.

use clap::Parser;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use zinf::cli::Cli;

fn zinf<S: AsRef<OsStr>>(args: &[S]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zinf"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run zinf")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write");
    path.to_str().expect("utf-8 path").to_string()
}

/// Flag values refused by the parser, so by every entry point, with exit status 2.
fn refused(args: &[&str], needle: &str) {
    match Cli::try_parse_from(args) {
        Ok(_) => panic!("{args:?} accepted"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(needle), "{args:?}: {e}");
        }
    }
}

#[test]
fn flags_are_validated_like_config_keys() {
    let io = |flag: &'static str, v: &'static str| vec!["zinf", "io-bench", "--dir", ".", flag, v];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["zinf", "generate", "--from", "x", "--temperature", "nan"],
            "not a finite number at or above 0",
        ),
        (
            vec!["zinf", "generate", "--from", "x", "--threads", "0"],
            "between 1 and 4096",
        ),
        (
            vec!["zinf", "train", "--device", "gpu"],
            "use \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"",
        ),
        (
            vec![
                "zinf", "eval", "--from", "x", "--data", "y", "--device", "cuda:",
            ],
            "is not a device",
        ),
        (io("--seconds", "0"), "above 0"),
        (io("--seconds", "inf"), "above 0"),
        (
            io("--queue-depth", "8,100000"),
            "100000 is out of range: must be between 1 and 4096",
        ),
        (io("--threads", "0"), "between 1 and 256"),
        (io("--repeat", "0"), "between 1 and 1000"),
        (
            vec!["zinf", "estimate", "--config", "c", "--nvme-gbps", "0"],
            "above 0",
        ),
    ];
    for (args, needle) in &cases {
        refused(args, needle);
    }
    // bench adam and bench swap agree on what a count is.
    for bench in [
        &["zinf", "bench", "adam"][..],
        &["zinf", "bench", "swap", "--dir", "."],
    ] {
        let with = |v: &'static str| [bench, &["--params", v]].concat();
        refused(&with("0"), "between 1");
        refused(&with("1.5"), "whole");
        refused(&with("1e30"), "whole");
        Cli::try_parse_from(with("1e8")).unwrap_or_else(|e| panic!("{bench:?} 1e8: {e}"));
    }
    refused(
        &[
            "zinf",
            "bench",
            "swap",
            "--dir",
            ".",
            "--queue-depth",
            "100000",
        ],
        "between 1 and 4096",
    );
    // The parser train's --threads will use (see zinf::cli::parse_threads).
    assert!(zinf::cli::parse_threads("0").is_err());
    assert_eq!(zinf::cli::parse_threads("8"), Ok(8));
    assert_eq!(zinf::cli::parse_threads("1e2"), Ok(100));
}

#[test]
fn bad_input_exits_2_in_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let huge = write(
        &dir,
        "huge.json",
        br#"{"zinf": {"model": {"n_layer": 18446744073709551616}}}"#,
    );
    let batch = write(&dir, "batch.json", br#"{"train_batch_size": 1e12}"#);
    let latin1 = write(
        &dir,
        "latin1.json",
        b"{\"train_batch_size\": 8, \"x\": \"caf\xE9\"}",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["config", "check", &huge], "zinf.model.n_layer"),
        (vec!["estimate", "--config", &huge], "zinf.model.n_layer"),
        (vec!["estimate", "--config", &batch], "train_batch_size"),
        (
            vec!["config", "check", &latin1],
            "not valid UTF-8 at byte 33",
        ),
        (
            vec!["config", "check", "no/such/file.json"],
            "cannot read config file",
        ),
        (
            vec!["train", "--config", &batch, "--no-progress"],
            "train_batch_size",
        ),
        (
            vec!["io-bench", "--dir", ".", "--seconds", "0"],
            "--seconds",
        ),
    ];
    for (args, needle) in cases {
        let out = zinf(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{args:?}");
    }
    // A flag that is not UTF-8 where text is expected.
    let out = zinf(&[
        OsStr::new("io-bench"),
        OsStr::new("--dir"),
        OsStr::new("."),
        OsStr::new("--backend"),
        OsStr::from_bytes(b"ur\xFFing"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn config_check_speaks_deepspeed_and_logs_without_colour_off_a_terminal() {
    let out = zinf(&[
        "config",
        "check",
        "tests/data/configs/windows_bom_auto.json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("offload_param: cpu, offload_optimizer: none"),
        "{stdout}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("my_block: not a key zinf uses; ignored"),
        "{err}"
    );
    assert!(
        err.contains("zero_optimization.stage3_max_live_parameters: auto -> 1000000000"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "ANSI colour in a pipe: {err:?}");
}

/// `--device cuda` where CUDA cannot run (a build without the feature, or no driver) is bad
/// input (exit 2) that says why and how to run on the CPU, before any work starts.
#[test]
fn cuda_where_there_is_none_is_refused_with_the_way_out() {
    if zinf::device_cuda_compiled() && zinf_has_gpu() {
        eprintln!("SKIPPED: this machine has a GPU");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let out = zinf(&[
        "train",
        "--device",
        "cuda",
        "--steps",
        "1",
        "--out",
        out_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("zinf.device") && e.contains("--device cpu"),
        "{e}"
    );
}

fn zinf_has_gpu() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}
