//! Config reading as users meet it: configs written the way real projects write them
//! (tests/data/configs/), and every error path naming its JSON path.

use zinf::config::{Config, ConfigError, OffloadDevice, SchedulerType};

fn sample(name: &str) -> String {
    let path = format!("{}/tests/data/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(text: &str) -> Result<zinf::config::Loaded, ConfigError> {
    Config::parse(text, "test.json")
}

/// The issues of an invalid config, as "path: message" lines.
fn issues(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("config unexpectedly valid: {text}"),
        Err(ConfigError::Invalid { issues, .. }) => issues.iter().map(|i| i.to_string()).collect(),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

fn assert_issue(text: &str, path: &str, needle: &str) {
    let all = issues(text);
    assert!(
        all.iter()
            .any(|i| i.starts_with(&format!("{path}: ")) && i.contains(needle)),
        "no issue at {path} containing {needle:?}; got {all:#?}"
    );
}

#[test]
fn hugging_face_zero3_auto_config_resolves_every_auto() {
    let loaded = parse(&sample("hf_transformers_zero3_auto.json")).expect("valid");
    let c = &loaded.config;
    assert_eq!(c.zero_optimization.stage, 3);
    assert_eq!(c.zero_optimization.offload_param.device, OffloadDevice::Cpu);
    assert!(c.zero_optimization.offload_param.pin_memory);
    // hidden size 768 (the default GPT-2 small in the zinf block)
    assert_eq!(c.zero_optimization.reduce_bucket_size, 768 * 768);
    assert_eq!(
        c.zero_optimization.prefetch_bucket_size,
        (0.9 * 768.0 * 768.0) as u64
    );
    assert_eq!(c.zero_optimization.param_persistence_threshold, 7680);
    assert_eq!(c.zero_optimization.sub_group_size, 1_000_000_000);
    assert!(c.zero_optimization.gather_16bit_weights_on_model_save);
    assert_eq!(c.gradient_clipping, 1.0);
    assert_eq!(c.train_micro_batch_size_per_gpu, 8);
    assert_eq!(c.train_batch_size, 8);
    let sched = c.scheduler.as_ref().expect("scheduler");
    assert_eq!(sched.kind, SchedulerType::WarmupLR);
    assert_eq!(sched.num("warmup_max_lr"), c.optimizer.params.lr);
    // every "auto" is said in the log, with its value
    let resolved: Vec<_> = loaded
        .diagnostics
        .resolutions
        .iter()
        .map(|r| r.path.as_str())
        .collect();
    for p in [
        "train_micro_batch_size_per_gpu",
        "gradient_clipping",
        "optimizer.params.lr",
        "zero_optimization.stage3_prefetch_bucket_size",
        "scheduler.params.warmup_num_steps",
    ] {
        assert!(
            resolved.contains(&p),
            "{p} not reported as resolved: {resolved:?}"
        );
    }
}

#[test]
fn real_world_samples_are_accepted() {
    for name in [
        "hf_transformers_zero2.json",
        "accelerate_zero3_nvme.json",
        "llama_factory_z3_offload.json",
        "deprecated_keys.json",
        "windows_crlf.json",
    ] {
        if let Err(e) = parse(&sample(name)) {
            panic!("{name} rejected: {e}");
        }
    }
}

#[test]
fn megatron_typo_key_is_rejected_with_suggestion_and_accepted_when_not_strict() {
    let text = sample("megatron_zero_infinity_typo.json");
    assert_issue(
        &text,
        "zero_optimization.stage3_param_persitance_threshold",
        "did you mean stage3_param_persistence_threshold?",
    );
    let lenient = text.replacen('{', "{\"zinf\": {\"strict_config\": false},", 1);
    let loaded = parse(&lenient).expect("non-strict accepts unknown keys");
    let w: Vec<_> = loaded
        .diagnostics
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert!(
        w.iter()
            .any(|w| w.contains("stage3_param_persitance_threshold")),
        "{w:?}"
    );
    assert!(w.iter().any(|w| w.starts_with("aio.thread_count")), "{w:?}");
    let c = loaded.config;
    assert_eq!(c.aio.intra_op_parallelism, 2);
    assert_eq!(c.aio.queue_depth, 16);
    assert_eq!(c.zero_optimization.offload_param.buffer_size, 1_000_000_000);
    assert!(!c.zero_optimization.offload_optimizer.pipeline_read);
    assert!(c.activation_checkpointing.enabled);
    // fp16 with dynamic args given: DeepSpeed's 2^16 start, hysteresis as written
    assert_eq!(c.fp16.initial_scale_power, 16);
    assert_eq!(c.fp16.hysteresis, 2);
}

#[test]
fn deprecated_keys_map_with_one_warning_each() {
    let loaded = parse(&sample("deprecated_keys.json")).expect("valid");
    let c = &loaded.config;
    assert_eq!(
        c.zero_optimization.offload_optimizer.device,
        OffloadDevice::Cpu
    );
    assert_eq!(c.zero_optimization.offload_param.device, OffloadDevice::Cpu);
    assert!(c.zero_optimization.offload_param.pin_memory);
    assert!(c.zero_optimization.gather_16bit_weights_on_model_save);
    assert_eq!(c.aio.intra_op_parallelism, 4);
    let paths: Vec<_> = loaded
        .diagnostics
        .warnings
        .iter()
        .map(|w| w.path.clone())
        .collect();
    for p in [
        "zero_optimization.cpu_offload",
        "zero_optimization.cpu_offload_params",
        "zero_optimization.cpu_offload_use_pin_memory",
        "zero_optimization.stage3_gather_fp16_weights_on_model_save",
        "aio.thread_count",
    ] {
        assert_eq!(
            paths.iter().filter(|x| *x == p).count(),
            1,
            "{p}: {paths:?}"
        );
    }
    // no dynamic loss-scale keys: DeepSpeed starts at 2^32 with hysteresis 1
    assert_eq!(c.fp16.initial_scale_power, 32);
    assert_eq!(c.fp16.hysteresis, 1);
}

#[test]
fn crlf_line_endings_parse_like_lf() {
    let crlf = parse(&sample("windows_crlf.json")).expect("valid").config;
    let lf = parse(&sample("windows_crlf.json").replace("\r\n", "\n"))
        .expect("valid")
        .config;
    assert_eq!(crlf.gradient_accumulation_steps, 8);
    assert_eq!(format!("{crlf:?}"), format!("{lf:?}"));
}

#[test]
fn batch_sizes_follow_deepspeed_rules() {
    let c = |t: &str| parse(t).expect("valid").config;
    let a = c(r#"{"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4}"#);
    assert_eq!(
        (
            a.train_batch_size,
            a.train_micro_batch_size_per_gpu,
            a.gradient_accumulation_steps
        ),
        (32, 4, 8)
    );
    let b = c(r#"{"train_batch_size": 32, "gradient_accumulation_steps": 4}"#);
    assert_eq!(b.train_micro_batch_size_per_gpu, 8);
    let d = c(r#"{"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}"#);
    assert_eq!(d.train_batch_size, 6);
    let e = c(r#"{"train_batch_size": 5}"#);
    assert_eq!(
        (
            e.train_micro_batch_size_per_gpu,
            e.gradient_accumulation_steps
        ),
        (5, 1)
    );
    assert_issue(
        r#"{"train_batch_size": 16, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2}"#,
        "train_batch_size",
        "16 != 3 × 2 × 1",
    );
    // No micro-batch size anywhere (Hugging Face fills it): its default, said in the log.
    let f = c(r#"{"gradient_accumulation_steps": 2}"#);
    assert_eq!(
        (
            f.train_batch_size,
            f.train_micro_batch_size_per_gpu,
            f.gradient_accumulation_steps
        ),
        (16, 8, 2)
    );
}

#[test]
fn every_error_names_its_json_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"train_batch_size": "eight"}"#,
            "train_batch_size",
            "expected a non-negative integer, found string \"eight\"",
        ),
        (
            r#"{"train_batch_size": 8, "gradient_clipping": true}"#,
            "gradient_clipping",
            "expected a number",
        ),
        (
            r#"{"train_batch_size": 8, "fp16": {"enabled": 1}}"#,
            "fp16.enabled",
            "expected a boolean, found number 1",
        ),
        (
            r#"{"train_batch_size": 8, "fp16": {"loss_scal": 0}}"#,
            "fp16.loss_scal",
            "did you mean loss_scale?",
        ),
        (
            r#"{"train_batch_size": 8, "fp16": {"enabled": true}, "bf16": {"enabled": true}}"#,
            "bf16.enabled",
            "cannot both",
        ),
        (
            r#"{"train_batch_size": 8, "optimizer": {"type": "Lamb"}}"#,
            "optimizer.type",
            "use \"Adam\" or \"AdamW\"",
        ),
        (
            r#"{"train_batch_size": 8, "optimizer": {"params": {"betas": [0.9]}}}"#,
            "optimizer.params.betas",
            "expected [beta1, beta2]",
        ),
        (
            r#"{"train_batch_size": 8, "optimizer": {"params": {"betas": [0.9, 1.5]}}}"#,
            "optimizer.params.betas[1]",
            "must be in [0, 1)",
        ),
        (
            r#"{"train_batch_size": 8, "optimizer": {"params": {"lr": "fast"}}}"#,
            "optimizer.params.lr",
            "found string \"fast\"",
        ),
        (
            r#"{"train_batch_size": 8, "scheduler": {"type": "WarmupLr"}}"#,
            "scheduler.type",
            "did you mean WarmupLR?",
        ),
        (
            r#"{"train_batch_size": 8, "scheduler": {"type": "WarmupDecayLR"}}"#,
            "scheduler.params.total_num_steps",
            "required",
        ),
        (
            r#"{"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_step": 5}}}"#,
            "scheduler.params.warmup_num_step",
            "did you mean warmup_num_steps?",
        ),
        (
            r#"{"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cubic"}}}"#,
            "scheduler.params.warmup_type",
            "\"log\" or \"linear\"",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 4}}"#,
            "zero_optimization.stage",
            "not a ZeRO stage",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 3, "prefetch_bucket_size": 1, "stage3_prefetch_bucket_size": 2}}"#,
            "zero_optimization.stage3_prefetch_bucket_size",
            "both",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}"#,
            "zero_optimization.offload_param",
            "stage 3",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}"#,
            "zero_optimization.offload_param.nvme_path",
            "required",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "disk"}}}"#,
            "zero_optimization.offload_optimizer.device",
            "not one of none, cpu, nvme",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 3, "sub_group_size": -1}}"#,
            "zero_optimization.sub_group_size",
            "non-negative integer",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": {"stage": 3, "sub_group_size": 1.5e3}}"#,
            "zero_optimization.sub_group_size",
            "unused",
        ),
        (
            r#"{"train_batch_size": 8, "aio": {"block_size": 1000}}"#,
            "aio.block_size",
            "multiple of 4096",
        ),
        (
            r#"{"train_batch_size": 8, "aio": {"queue_dept": 8}}"#,
            "aio.queue_dept",
            "did you mean queue_depth?",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"model": {"n_embd": 100, "n_head": 3}}}"#,
            "zinf.model.n_embd",
            "not divisible",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"device_memory_budget": "lots"}}"#,
            "zinf.device_memory_budget",
            "not a size",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"device": "gpu"}}"#,
            "zinf.device",
            "\"cuda:N\"",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"device": "cuda:x"}}"#,
            "zinf.device",
            "is not a device",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"device": 0}}"#,
            "zinf.device",
            "expected",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"modle": {}}}"#,
            "zinf.modle",
            "did you mean model?",
        ),
        (
            r#"{"train_batch_size": 8, "zinf": {"data": {"seq_len": 5000}}}"#,
            "zinf.data.seq_len",
            "block_size",
        ),
        (
            r#"{"train_batch_size": 8, "zero_optimization": []}"#,
            "zero_optimization",
            "expected an object, found an array",
        ),
        (
            r#"{"train_batch_size": 8, "activation_checkpointing": {"number_checkpoints": "x"}}"#,
            "activation_checkpointing.number_checkpoints",
            "integer",
        ),
    ];
    for (text, path, needle) in cases {
        if *needle == "unused" {
            // 1.5e3 = 1500 is integral: DeepSpeed's float-written integers are accepted.
            parse(text).expect("integral float accepted");
            continue;
        }
        assert_issue(text, path, needle);
    }
}

#[test]
fn all_errors_are_reported_not_just_the_first() {
    let all = issues(
        r#"{"train_batch_size": 8, "fp16": {"enabled": "yes"}, "aio": {"queue_depth": "deep"},
            "zero_optimization": {"stage": 9}, "steps_per_prnt": 1}"#,
    );
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(all
        .iter()
        .any(|i| i.starts_with("steps_per_prnt: unknown key; did you mean steps_per_print?")));
}

#[test]
fn json_syntax_errors_give_line_and_column() {
    match parse("{\n  \"train_batch_size\": 8,\n}") {
        Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 3),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn embedded_default_and_shipped_configs_are_valid() {
    Config::embedded_default().expect("embedded default");
    let dir = format!("{}/configs", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            // Llama configs are for `--init-from DIR`: resolved with a Llama-family folder.
            let llama = path.to_string_lossy().contains("llama");
            let folder = format!("{}/tests/data/llama/chat", env!("CARGO_MANIFEST_DIR"));
            let from = llama.then(|| std::path::PathBuf::from(&folder));
            Config::load_from(Some(&path), from.as_deref())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 4, "expected at least 4 shipped configs, found {n}");
}
