//! Configs as Hugging Face Trainer, accelerate and LLaMA-Factory write them (issue #12): "auto"
//! wherever DeepSpeed or HF accept it, top-level keys DeepSpeed ignores, batch sizes written for
//! several GPUs, keys in the wrong section, duplicate keys, a byte-order mark, and schedules that
//! follow the steps a run actually takes.

use zinf::config::{Config, ConfigError, Loaded, SchedulerType};

fn sample_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(text: &str) -> Result<Loaded, ConfigError> {
    Config::parse(text, "test.json")
}

fn valid(text: &str) -> Loaded {
    parse(text).unwrap_or_else(|e| panic!("rejected: {e}\n{text}"))
}

/// Every issue of an invalid config, as "path: message" lines.
fn issues(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("config unexpectedly valid: {text}"),
        Err(ConfigError::Invalid { issues, .. }) => issues.iter().map(|i| i.to_string()).collect(),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

fn lines(issues: &[zinf::config::Issue]) -> Vec<String> {
    issues.iter().map(|i| i.to_string()).collect()
}

fn has(all: &[String], needle: &str) -> bool {
    all.iter().any(|l| l.contains(needle))
}

#[test]
fn the_real_file_zinf_rejected_now_runs_with_every_auto_said() {
    let text = r#"{"zero_optimization": {"stage": 3, "stage3_max_live_parameters": "auto",
                   "offload_param": {"device": "cpu", "buffer_size": "auto"}}}"#;
    let loaded = valid(text);
    let z = &loaded.config.zero_optimization;
    assert_eq!(z.max_live_parameters, 1_000_000_000, "DeepSpeed's default");
    // DeepSpeed's 1e8 default holds GPT-2's largest tensor (wte, 50257 × 768 = 38.6M).
    assert_eq!(z.offload_param.buffer_size, 100_000_000);
    let said = lines(&loaded.diagnostics.resolutions);
    assert!(
        has(
            &said,
            "zero_optimization.stage3_max_live_parameters: auto -> 1000000000"
        ),
        "{said:#?}"
    );
    assert!(
        has(
            &said,
            "zero_optimization.offload_param.buffer_size: auto -> 100000000"
        ),
        "{said:#?}"
    );
    // No batch-size key at all: Hugging Face's default, logged.
    assert_eq!(loaded.config.train_micro_batch_size_per_gpu, 8);
    assert_eq!(loaded.config.train_batch_size, 8);
    assert!(
        has(&said, "train_micro_batch_size_per_gpu: not set -> 8"),
        "{said:#?}"
    );
}

#[test]
fn auto_buffer_size_grows_to_hold_the_largest_tensor() {
    let text = r#"{"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu",
        "buffer_size": "auto"}}, "zinf": {"model": {"vocab_size": 200000, "n_embd": 1024,
        "n_head": 16}}}"#;
    let c = valid(text).config;
    assert_eq!(
        c.zero_optimization.offload_param.buffer_size,
        200_000 * 1024
    );
}

#[test]
fn auto_is_accepted_in_every_section_deepspeed_reads() {
    let loaded = Config::parse_bytes(&sample_bytes("hf_auto_everywhere.json"), "hf")
        .unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.config;
    assert!(c.zero_optimization.overlap_comm, "stage 3's default");
    assert_eq!(c.zero_optimization.sub_group_size, 1_000_000_000);
    assert_eq!(c.zero_optimization.offload_param.buffer_count, 5);
    assert_eq!(c.aio.block_size, 1_048_576);
    assert_eq!(c.aio.queue_depth, 8);
    assert_eq!(c.steps_per_print, 10);
    let s = c.scheduler.as_ref().expect("scheduler");
    assert_eq!(s.kind, SchedulerType::WarmupCosineLR);
    assert_eq!(s.num("total_num_steps"), 40.0, "from zinf.train_steps");
    assert_eq!(s.num("cos_min_ratio"), 0.0001);
    assert_eq!(s.text("warmup_type"), "log");
    let said = lines(&loaded.diagnostics.resolutions);
    for path in [
        "zero_optimization.overlap_comm",
        "zero_optimization.stage3_max_reuse_distance",
        "zero_optimization.offload_param.pin_memory",
        "aio.queue_depth",
        "steps_per_print",
        "scheduler.params.cos_min_ratio",
    ] {
        assert!(
            has(&said, &format!("{path}: auto -> ")),
            "{path}: {said:#?}"
        );
    }
}

#[test]
fn top_level_keys_deepspeed_ignores_are_one_warning_each() {
    let loaded = valid(r#"{"train_batch_size": 8, "my_block": {"x": 1}, "tpyo": 3}"#);
    let w = lines(&loaded.diagnostics.warnings);
    assert!(
        w.contains(&"my_block: not a key zinf uses; ignored".to_string()),
        "{w:#?}"
    );
    assert_eq!(w.iter().filter(|l| l.starts_with("my_block")).count(), 1);
    assert!(has(&w, "tpyo: not a key zinf uses; ignored"), "{w:#?}");
    // Inside DeepSpeed's strict sections an unknown key stays an error.
    let all = issues(r#"{"train_batch_size": 8, "zero_optimization": {"my_knob": 1}}"#);
    assert!(
        all.contains(&"zero_optimization.my_knob: unknown key".to_string()),
        "{all:#?}"
    );
    let all = issues(
        r#"{"train_batch_size": 8, "zero_optimization": {"offload_param": {"devcie": "cpu"}}}"#,
    );
    assert!(
        has(
            &all,
            "zero_optimization.offload_param.devcie: unknown key; did you mean device?"
        ),
        "{all:#?}"
    );
}

#[test]
fn a_key_in_the_wrong_section_points_to_the_right_one() {
    let cases = [
        (
            r#"{"train_batch_size": 8, "offload_optimizer": {"device": "cpu"}}"#,
            "offload_optimizer: unknown key; did you mean zero_optimization.offload_optimizer?",
        ),
        (
            r#"{"train_batch_size": 8, "stage3_max_live_parameters": 1e9}"#,
            "stage3_max_live_parameters: unknown key; did you mean zero_optimization.stage3_max_live_parameters?",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 3, "queue_depth": 8}}"#,
            "zero_optimization.queue_depth: unknown key; did you mean aio.queue_depth?",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"nvme_path": "/x"}}"#,
            "did you mean zero_optimization.offload_param.nvme_path or zero_optimization.offload_optimizer.nvme_path?",
        ),
        (
            r#"{"train_batch_size": 8, "scheduler": {"type": "WarmupLR"}, "warmup_num_steps": 5}"#,
            "warmup_num_steps: unknown key; did you mean scheduler.params.warmup_num_steps?",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"n_layer": 2}}"#,
            "zinf.n_layer: unknown key; did you mean zinf.model.n_layer?",
        ),
    ];
    for (text, want) in cases {
        let all = issues(text);
        assert!(has(&all, want), "want {want:?}, got {all:#?}");
    }
}

#[test]
fn batch_sizes_written_for_eight_gpus_say_how_to_fix_them() {
    let bytes = sample_bytes("eight_gpu_batch.json");
    let err = Config::parse_bytes(&bytes, "eight").expect_err("8 ranks");
    let text = err.to_string();
    assert!(
        text.contains(
            "train_batch_size: 64 = 2 × 4 × 8 implies 8 ranks; this run has 1: start 8 ranks \
             (--nproc-per-node 8), set gradient_accumulation_steps to 32 to keep the global \
             batch, or train_batch_size to 8"
        ),
        "{text}"
    );
    // The same file on the eight ranks it was written for resolves.
    let loaded = Config::parse_bytes_for_world(&bytes, "eight", 8).expect("8 ranks");
    assert_eq!(
        (
            loaded.config.train_batch_size,
            loaded.config.train_micro_batch_size_per_gpu,
            loaded.config.gradient_accumulation_steps
        ),
        (64, 2, 4)
    );
    // Two GPUs, accumulation written out.
    let all = issues(
        r#"{"train_batch_size": 24, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 4}"#,
    );
    assert!(has(&all, "implies 2 ranks"), "{all:#?}");
    assert!(has(&all, "gradient_accumulation_steps to 8"), "{all:#?}");
    // Not a whole number of ranks: the plain DeepSpeed equation.
    let all = issues(
        r#"{"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}"#,
    );
    assert!(has(&all, "10 != 4 × 2 × 1"), "{all:#?}");
    let all = issues(r#"{"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4}"#);
    assert!(
        has(
            &all,
            "train_batch_size: 10 is not a multiple of train_micro_batch_size_per_gpu 4"
        ),
        "{all:#?}"
    );
}

#[test]
fn duplicate_keys_are_errors_naming_their_path() {
    let text = r#"{"train_batch_size": 8,
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "device": "nvme"}},
        "train_batch_size": 16}"#;
    let all = issues(text);
    assert!(
        has(
            &all,
            "zero_optimization.offload_param.device: key written twice"
        ),
        "{all:#?}"
    );
    assert!(has(&all, "train_batch_size: key written twice"), "{all:#?}");
}

#[test]
fn a_byte_order_mark_and_crlf_are_accepted_invalid_utf8_is_not() {
    let bytes = sample_bytes("windows_bom_auto.json");
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"));
    let loaded = Config::parse_bytes(&bytes, "bom").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.config.train_micro_batch_size_per_gpu, 2);
    assert!(has(
        &lines(&loaded.diagnostics.warnings),
        "my_block: not a key zinf uses"
    ));
    match Config::parse_bytes(b"{\"train_batch_size\": 8, \"x\": \"caf\xE9\"}", "latin1") {
        Err(e @ ConfigError::Encoding { .. }) => {
            assert!(e.to_string().contains("not valid UTF-8 at byte 33"), "{e}")
        }
        other => panic!("expected an encoding error, got {other:?}"),
    }
}

const COSINE: &str = r#"{"train_batch_size": 8, "optimizer": {"params": {"lr": 1e-3}},
    "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": "auto",
    "warmup_num_steps": 10}}, "zinf": {"train_steps": 100}}"#;

fn total_steps(l: &Loaded) -> f64 {
    l.config
        .scheduler
        .as_ref()
        .expect("scheduler")
        .num("total_num_steps")
}

#[test]
fn auto_total_num_steps_follows_the_steps_actually_run() {
    let loaded = valid(COSINE);
    assert_eq!(total_steps(&loaded), 100.0);
    let run = loaded.clone().with_train_steps(Some(500));
    assert_eq!(total_steps(&run), 500.0);
    assert_eq!(run.config.zinf.train_steps, 500);
    let said = lines(&run.diagnostics.resolutions);
    let total: Vec<_> = said
        .iter()
        .filter(|l| l.starts_with("scheduler.params.total_num_steps"))
        .collect();
    assert_eq!(
        total.len(),
        1,
        "said once, with the final number: {said:#?}"
    );
    assert!(total[0].contains("auto -> 500"), "{total:?}");
    // The scheduler the trainer builds ends where the run ends: the floor at step 500, not
    // back at the peak as a 100-step schedule would be by then.
    let sched = run.config.lr_scheduler().expect("converts").expect("some");
    let s = zinf::optim::LrScheduler::new(sched, 1e-3).expect("valid");
    assert!(
        s.lr_at(250) > 1e-4,
        "still decaying at 250: {}",
        s.lr_at(250)
    );
    assert!((s.lr_at(499) - 1e-7).abs() < 1e-12, "{}", s.lr_at(499));
    // None keeps the config's own steps and changes nothing.
    assert_eq!(total_steps(&loaded.with_train_steps(None)), 100.0);
}

#[test]
fn a_run_longer_than_its_schedule_gets_one_warning() {
    let text = COSINE.replace(r#""auto""#, "200");
    let fits = valid(&text);
    let overrun = |l: &Loaded| {
        lines(&l.diagnostics.warnings)
            .into_iter()
            .filter(|w| w.starts_with("scheduler.params.total_num_steps"))
            .collect::<Vec<_>>()
    };
    assert!(overrun(&fits).is_empty());
    let long = fits.with_train_steps(Some(300));
    let w = overrun(&long);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("the run takes 300 steps but the WarmupCosineLR schedule ends at 200"),
        "{w:?}"
    );
    // Written in the config itself: said at load, once; a shorter --steps withdraws it.
    let decay = r#"{"train_batch_size": 8, "scheduler": {"type": "WarmupDecayLR",
        "params": {"total_num_steps": 50}}, "zinf": {"train_steps": 80}}"#;
    let l = valid(decay);
    assert_eq!(overrun(&l).len(), 1);
    assert!(overrun(&l)[0].contains("the lr stays at 0"));
    assert!(overrun(&l.with_train_steps(Some(50))).is_empty());
    // An "auto" schedule always covers the run.
    assert!(overrun(&valid(COSINE).with_train_steps(Some(10_000))).is_empty());
}
