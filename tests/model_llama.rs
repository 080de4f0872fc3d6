//! The Llama family against Hugging Face transformers: for each tiny random model under
//! `tests/data/llama/` (GQA, tied head, llama3 RoPE in v4 and v5 form, linear and yarn RoPE,
//! explicit head_dim, a sharded folder, Qwen2 biases, Qwen3 q/k norm, Mistral), zinf loads the folder,
//! runs the batch of `batch.json` (labels −100 masked) and compares with what transformers
//! computed in fp32: the loss, every parameter's gradient, and every parameter after 3 AdamW
//! steps (hyper-parameters in `adamw.json`).
//!
//! The fixtures are made once by `scripts/llama_fixtures.py` (its docstring says how to
//! regenerate them); nothing here needs Python.

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use zinf::device::{CpuDevice, Device, IGNORE_INDEX};
use zinf::model::hf::HfWeights;
use zinf::model::llama::{llama_layout, Llama, LlamaConfig};
use zinf::optim::{Adam, AdamConfig, Grad, ParamOut, StepScalars};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama")
}

/// input_ids (B,T) and targets (B,T): HF labels shifted left by one, −100 and the last
/// position as [`IGNORE_INDEX`].
fn batch(dir: &Path) -> (usize, usize, Vec<u32>, Vec<u32>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let rows = |k: &str| -> Vec<Vec<i64>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (ids, labels) = (rows("input_ids"), rows("labels"));
    let (b, t) = (ids.len(), ids[0].len());
    let tokens = ids.iter().flatten().map(|&x| x as u32).collect();
    let mut targets = Vec::with_capacity(b * t);
    for row in &labels {
        for i in 0..t {
            let next = row.get(i + 1).copied().unwrap_or(-100);
            targets.push(if next < 0 { IGNORE_INDEX } else { next as u32 });
        }
    }
    (b, t, tokens, targets)
}

fn expected(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("expected.safetensors")).unwrap()
}

fn tensor(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture lacks {name}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Largest |a - b| relative to the largest |b| of the tensor (at least `floor`).
fn rel_err(a: &[f32], b: &[f32], floor: f32) -> f32 {
    let scale = b.iter().fold(floor, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn adamw() -> AdamConfig {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("adamw.json")).unwrap())
            .unwrap();
    AdamConfig {
        lr: v["lr"].as_f64().unwrap() as f32,
        betas: (
            v["betas"][0].as_f64().unwrap() as f32,
            v["betas"][1].as_f64().unwrap() as f32,
        ),
        eps: v["eps"].as_f64().unwrap() as f32,
        weight_decay: v["weight_decay"].as_f64().unwrap() as f32,
        adam_w_mode: true,
        bias_correction: true,
    }
}

fn check_case(name: &str) {
    let dir = fixtures().join(name);
    let cfg = LlamaConfig::from_folder(&dir).unwrap();
    let layout = llama_layout(&cfg);
    let weights = HfWeights::open(&dir).unwrap();
    let unused = weights.check(&layout.tensors).unwrap();
    assert!(unused.is_empty(), "{name}: unused tensors {unused:?}");
    let mut params = weights
        .read_range(&layout.tensors, 0..layout.total)
        .unwrap();
    let (b, t, tokens, targets) = batch(&dir);
    let exp_bytes = expected(&dir);
    let exp = SafeTensors::deserialize(&exp_bytes).unwrap();
    let losses = tensor(&exp, "losses");

    let dev = CpuDevice::new(2, 1 << 30);
    let mut model = Llama::new(&dev, cfg, b, t, false).unwrap();
    let mut adam = Adam::new(adamw(), 2).unwrap();
    let (mut m, mut v) = (vec![0.0f32; layout.total], vec![0.0f32; layout.total]);
    let mut grads = vec![0.0f32; layout.total];
    let mut first_grads = Vec::new();
    for (step, &want_loss) in losses.iter().enumerate() {
        model.load_params(&dev, &params).unwrap();
        model.zero_grads(&dev).unwrap();
        let loss = model.forward_all(&dev, &tokens, &targets).unwrap();
        assert!(
            (loss - want_loss).abs() <= 2e-5 * want_loss.abs(),
            "{name}: step {step} loss {loss}, transformers {want_loss}"
        );
        model.backward_all(&dev, &tokens, &targets, 1.0).unwrap();
        model.download_grads(&dev, &mut grads).unwrap();
        if step == 0 {
            first_grads = grads.clone();
            for spec in &layout.tensors {
                let want = tensor(&exp, &format!("grad.{}", spec.name));
                let err = rel_err(&grads[spec.range()], &want, 1e-6);
                assert!(
                    err < 1e-4,
                    "{name}: gradient of {} off by {err:e}",
                    spec.name
                );
            }
        }
        let scalars = StepScalars {
            lr: adamw().lr,
            step: step as u64 + 1,
            grad_scale: 1.0,
        };
        adam.step(
            &mut params,
            &mut m,
            &mut v,
            Grad::F32(&grads),
            ParamOut::None,
            scalars,
        )
        .unwrap();
    }
    // Adam divides by sqrt(v), so a gradient error `d` moves an element's update by about
    // `lr * d / |g|` a step: with the gradients matched to `d = 1e-4` of their tensor's
    // largest (checked above), an element may differ by 1e-4 of the tensor's scale plus
    // `3 lr min(1, d / |g|)`. Elements whose gradient is exactly zero on both sides (rows of
    // tokens not in the batch) only decay, and match to 1e-4 of the scale.
    let lr = adamw().lr;
    for spec in &layout.tensors {
        let want = tensor(&exp, &format!("after.{}", spec.name));
        let g0 = tensor(&exp, &format!("grad.{}", spec.name));
        let d = 1e-4 * g0.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = want.iter().fold(1e-2f32, |m, x| m.max(x.abs()));
        let ours = &first_grads[spec.range()];
        let rows = params[spec.range()].iter().zip(&want).zip(&g0).zip(ours);
        for (i, (((got, want), g), mine)) in rows.enumerate() {
            let err = (got - want).abs();
            let sensitivity = if *g == 0.0 && *mine == 0.0 {
                0.0
            } else {
                3.0 * lr * (d / g.abs()).min(1.0)
            };
            assert!(
                err <= 1e-4 * scale + sensitivity,
                "{name}: {}[{i}] after 3 AdamW steps off by {err:e} (scale {scale}, gradient {g})",
                spec.name
            );
        }
    }
}

#[test]
fn gqa_matches_transformers() {
    check_case("gqa");
}

#[test]
fn tied_head_matches_transformers() {
    check_case("tied");
}

#[test]
fn llama3_rope_matches_transformers() {
    check_case("llama3_rope");
}

#[test]
fn rope_v5_form_matches_transformers() {
    check_case("rope_v5");
}

#[test]
fn linear_rope_matches_transformers() {
    check_case("rope_linear");
}

#[test]
fn explicit_head_dim_matches_transformers() {
    check_case("head_dim");
}

#[test]
fn sharded_folder_matches_transformers() {
    check_case("sharded");
}

#[test]
fn qwen2_biases_match_transformers() {
    check_case("qwen2_bias");
}

#[test]
fn qwen3_qk_norm_matches_transformers() {
    check_case("qwen3_qk_norm");
}

#[test]
fn mistral_matches_transformers() {
    check_case("mistral");
}

#[test]
fn yarn_rope_matches_transformers() {
    check_case("rope_yarn");
}

fn gqa_model(dev: &CpuDevice, checkpointing: bool) -> (Llama<CpuDevice>, Vec<f32>) {
    let dir = fixtures().join("gqa");
    let cfg = LlamaConfig::from_folder(&dir).unwrap();
    let layout = llama_layout(&cfg);
    let w = HfWeights::open(&dir).unwrap();
    let p = w.read_range(&layout.tensors, 0..layout.total).unwrap();
    (Llama::new(dev, cfg, 2, 32, checkpointing).unwrap(), p)
}

#[test]
fn checkpointing_gives_bit_identical_gradients_and_allocations_match_the_count() {
    let dir = fixtures().join("gqa");
    let (_, _, tokens, targets) = batch(&dir);
    let mut out = Vec::new();
    for ckpt in [false, true] {
        let dev = CpuDevice::new(2, 1 << 30);
        let (mut m, p) = gqa_model(&dev, ckpt);
        let params_bytes = 2 * 4 * p.len() as u64;
        let acts = zinf::model::llama::activation_elems(&m.cfg, 2, 32, ckpt) as u64 * 4;
        assert_eq!(
            dev.budget().used_bytes(),
            params_bytes + acts,
            "checkpointing {ckpt}"
        );
        m.load_params(&dev, &p).unwrap();
        m.zero_grads(&dev).unwrap();
        let loss = m.forward_all(&dev, &tokens, &targets).unwrap();
        m.backward_all(&dev, &tokens, &targets, 1.0).unwrap();
        let mut g = vec![0.0f32; p.len()];
        m.download_grads(&dev, &mut g).unwrap();
        out.push((
            loss.to_bits(),
            g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        ));
    }
    assert!(
        out[0] == out[1],
        "activation checkpointing changed the gradients"
    );
}

fn config_error(json: &str) -> String {
    LlamaConfig::from_json(json, "config.json")
        .unwrap_err()
        .to_string()
}

#[test]
fn config_errors_name_the_problem() {
    let base = r#""vocab_size": 96, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4"#;
    let e = config_error(&format!(
        r#"{{"architectures": ["GPTNeoXForCausalLM"], {base}}}"#
    ));
    assert!(
        e.contains("GPTNeoXForCausalLM") && e.contains("Qwen2ForCausalLM"),
        "{e}"
    );
    let e = config_error(&format!(
        r#"{{"model_type": "llama", {base}, "rope_theta": 10000.0,
            "rope_parameters": {{"rope_type": "default", "rope_theta": 500000.0}}}}"#
    ));
    assert!(e.contains("rope_theta") && e.contains("disagree"), "{e}");
    let e = config_error(&format!(
        r#"{{"model_type": "llama", {base},
            "rope_scaling": {{"rope_type": "linear", "factor": 2.0}},
            "rope_parameters": {{"rope_type": "default", "rope_theta": 10000.0}}}}"#
    ));
    assert!(e.contains("rope_scaling") && e.contains("disagree"), "{e}");
    let e = config_error(&format!(
        r#"{{"model_type": "llama", {base}, "rope_scaling": {{"rope_type": "dynamic", "factor": 4.0}}}}"#
    ));
    assert!(
        e.contains("rope_scaling.rope_type") && e.contains("dynamic"),
        "{e}"
    );
    let e = config_error(&format!(
        r#"{{"model_type": "llama", {base}, "num_key_value_heads": 3}}"#
    ));
    assert!(e.contains("num_key_value_heads 3"), "{e}");
    let e = config_error(r#"{"model_type": "llama", "hidden_size": 32}"#);
    assert!(e.contains("num_attention_heads: missing"), "{e}");
    let e = config_error(&format!(
        r#"{{"model_type": "llama", {base}, "hidden_act": "gelu"}}"#
    ));
    assert!(e.contains("hidden_act"), "{e}");
}

/// Copies a fixture folder to a temporary one.
fn copy_case(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load_error(dir: &Path) -> String {
    let cfg = LlamaConfig::from_folder(dir).unwrap();
    let layout = llama_layout(&cfg);
    match HfWeights::open(dir).and_then(|w| w.check(&layout.tensors)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn weights_that_do_not_match_the_config_are_refused_naming_the_tensor_and_file() {
    // A config whose intermediate_size disagrees with the weights.
    let tmp = copy_case("gqa");
    let cfg_path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"intermediate_size\": 176", "\"intermediate_size\": 64"),
    )
    .unwrap();
    let e = load_error(tmp.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("model.safetensors"),
        "{e}"
    );
    // An index naming a shard that is not there.
    let tmp = copy_case("sharded");
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    // An index placing a tensor in a shard that does not hold it.
    let tmp = copy_case("sharded");
    let idx = tmp.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    v["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&idx, v.to_string()).unwrap();
    let e = load_error(tmp.path());
    assert!(
        e.contains("model.norm.weight") && e.contains("does not hold it"),
        "{e}"
    );
    // A tied config over an untied checkpoint leaves lm_head.weight unused.
    let tmp = copy_case("gqa");
    let text = std::fs::read_to_string(cfg_path_of(&tmp)).unwrap();
    std::fs::write(
        cfg_path_of(&tmp),
        text.replace(
            "\"tie_word_embeddings\": false",
            "\"tie_word_embeddings\": true",
        ),
    )
    .unwrap();
    let cfg = LlamaConfig::from_folder(tmp.path()).unwrap();
    let unused = HfWeights::open(tmp.path())
        .unwrap()
        .check(&llama_layout(&cfg).tensors)
        .unwrap();
    assert_eq!(unused, vec!["lm_head.weight".to_string()]);
    // A folder without weights.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("gqa/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains("not a Hugging Face checkpoint folder"), "{e}");
}

fn cfg_path_of(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("config.json")
}

#[test]
fn mistral_is_trained_within_its_sliding_window() {
    let text = std::fs::read_to_string(fixtures().join("mistral/config.json"))
        .unwrap()
        .replace("\"sliding_window\": 4096", "\"sliding_window\": 16");
    let cfg = LlamaConfig::from_json(&text, "config.json").unwrap();
    assert_eq!(cfg.sliding_window, Some(16));
    let dev = CpuDevice::new(1, 1 << 30);
    let e = Llama::new(&dev, cfg.clone(), 1, 32, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("sliding_window (16)") && e.contains("seq_len"),
        "{e}"
    );
    assert!(Llama::new(&dev, cfg, 1, 16, false).is_ok());
}

#[test]
fn absent_keys_take_each_classes_defaults_and_bad_values_are_refused() {
    let base = r#""vocab_size": 96, "hidden_size": 64, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 32"#;
    let cfg = |extra: &str| LlamaConfig::from_json(&format!("{{{base}{extra}}}"), "config.json");
    // Qwen3: head_dim 128, 32 kv heads, 32768 positions, no bos/eos (configuration_qwen3.py).
    let q3 = cfg(r#", "model_type": "qwen3""#).unwrap();
    assert_eq!((q3.head_dim, q3.num_key_value_heads), (128, 32));
    assert_eq!(q3.max_position_embeddings, 32768);
    assert!(q3.eos_token_ids.is_empty() && q3.sliding_window.is_none());
    // Mistral: 8 kv heads, 131072 positions, a 4096 window unless null, bos 1 / eos 2.
    let m = cfg(r#", "model_type": "mistral""#).unwrap();
    assert_eq!(
        (m.num_key_value_heads, m.max_position_embeddings),
        (8, 131072)
    );
    assert_eq!(
        (m.sliding_window, m.bos_token_id, m.eos_token_ids.clone()),
        (Some(4096), Some(1), vec![2])
    );
    let m = cfg(r#", "model_type": "mistral", "sliding_window": null"#).unwrap();
    assert_eq!(m.sliding_window, None);
    // Llama: kv heads = heads, 2048 positions, head_dim = hidden / heads.
    let l = cfg(r#", "model_type": "llama""#).unwrap();
    assert_eq!(
        (l.num_key_value_heads, l.head_dim, l.max_position_embeddings),
        (32, 2, 2048)
    );
    for (extra, want) in [
        (r#", "model_type": "llama", "rope_theta": 0"#, "rope_theta"),
        (
            r#", "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 0}"#,
            "original_max_position_embeddings",
        ),
        (
            r#", "model_type": "llama", "num_key_value_heads": 6148914691236517206, "head_dim": 2"#,
            "num_attention_heads",
        ),
    ] {
        let e = cfg(extra).unwrap_err().to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
}
