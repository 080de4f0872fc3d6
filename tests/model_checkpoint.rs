//! Hugging Face checkpoints: export -> import is bit-exact in every storage dtype, tensor
//! names and shapes match HF GPT-2's table, and config.json carries HF's keys.

use std::collections::HashMap;
use zinf::model::checkpoint::{load_hf, save_hf, CONFIG_FILE, WEIGHTS_FILE};
use zinf::model::{init_params, param_layout, GptConfig, HostParams, ParamDtype};

fn tiny() -> GptConfig {
    GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        vocab_size: 37,
        block_size: 8,
    }
}

#[test]
fn layout_matches_hf_gpt2_124m_table() {
    let cfg = GptConfig::gpt2_124m();
    let layout = param_layout(&cfg);
    // HF `GPT2LMHeadModel.from_pretrained("gpt2").num_parameters()` with tied embeddings.
    assert_eq!(layout.total, 124_439_808);
    let table: HashMap<&str, Vec<usize>> = layout
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.clone()))
        .collect();
    assert_eq!(table.len(), 2 + 12 * 12 + 2);
    assert_eq!(table["wte.weight"], [50257, 768]);
    assert_eq!(table["wpe.weight"], [1024, 768]);
    for i in 0..12 {
        let s = |n: &str| table[format!("h.{i}.{n}").as_str()].clone();
        assert_eq!(s("ln_1.weight"), [768]);
        assert_eq!(s("attn.c_attn.weight"), [768, 2304]);
        assert_eq!(s("attn.c_attn.bias"), [2304]);
        assert_eq!(s("attn.c_proj.weight"), [768, 768]);
        assert_eq!(s("ln_2.bias"), [768]);
        assert_eq!(s("mlp.c_fc.weight"), [768, 3072]);
        assert_eq!(s("mlp.c_fc.bias"), [3072]);
        assert_eq!(s("mlp.c_proj.weight"), [3072, 768]);
        assert_eq!(s("mlp.c_proj.bias"), [768]);
    }
    assert_eq!(table["ln_f.weight"], [768]);
    // Each block is one contiguous group, back to back.
    for w in layout.groups.windows(2) {
        assert_eq!(w[0].1.end, w[1].1.start);
    }
}

#[test]
fn export_import_round_trip_is_bit_exact_in_every_dtype() {
    let cfg = tiny();
    let layout = param_layout(&cfg);
    let p = init_params(&layout, cfg.n_layer, 5);
    for dtype in [ParamDtype::F32, ParamDtype::F16, ParamDtype::Bf16] {
        let dir = tempfile::tempdir().unwrap();
        let params = HostParams::from_f32(dtype, &p);
        save_hf(dir.path(), &cfg, &params).unwrap();
        let (cfg2, back) = load_hf(dir.path(), dtype).unwrap();
        assert_eq!(cfg2, cfg);
        assert_eq!(back, params, "{dtype:?} round trip");
    }
}

#[test]
fn exported_file_has_hf_names_dtype_and_config() {
    let cfg = tiny();
    let layout = param_layout(&cfg);
    let params = HostParams::from_f32(ParamDtype::Bf16, &init_params(&layout, cfg.n_layer, 5));
    let dir = tempfile::tempdir().unwrap();
    save_hf(dir.path(), &cfg, &params).unwrap();
    let bytes = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("transformer.h.1.attn.c_attn.weight").unwrap();
    assert_eq!(t.shape(), [16, 48]);
    assert_eq!(t.dtype(), safetensors::Dtype::BF16);
    assert_eq!(st.names().len(), layout.tensors.len());
    assert!(
        st.tensor("lm_head.weight").is_err(),
        "the head is tied, HF omits it"
    );
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(c["model_type"], "gpt2");
    assert_eq!(c["architectures"][0], "GPT2LMHeadModel");
    assert_eq!(c["n_embd"], 16);
    assert_eq!(c["n_positions"], 8);
    assert_eq!(c["activation_function"], "gelu_new");
    assert_eq!(c["torch_dtype"], "bfloat16");
}

#[test]
fn import_reports_missing_tensor_and_wrong_shape() {
    let cfg = tiny();
    let layout = param_layout(&cfg);
    let params = HostParams::from_f32(ParamDtype::F32, &init_params(&layout, cfg.n_layer, 5));
    let dir = tempfile::tempdir().unwrap();
    save_hf(dir.path(), &cfg, &params).unwrap();
    // Claim one more layer than the weights hold.
    let bigger = GptConfig { n_layer: 3, ..cfg };
    let json = zinf::model::checkpoint::hf_config_json(&bigger, ParamDtype::F32);
    std::fs::write(dir.path().join(CONFIG_FILE), json.to_string()).unwrap();
    let err = load_hf(dir.path(), ParamDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("transformer.h.2.ln_1.weight is missing"),
        "{err}"
    );
    let wider = GptConfig { n_embd: 32, ..cfg };
    let json = zinf::model::checkpoint::hf_config_json(&wider, ParamDtype::F32);
    std::fs::write(dir.path().join(CONFIG_FILE), json.to_string()).unwrap();
    let err = load_hf(dir.path(), ParamDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn streamed_export_reimports_bit_exact_in_every_dtype_single_and_sharded() {
    use zinf::model::export::{group_reader, write_folder};
    use zinf::model::{ModelError, ModelSpec};
    let cfg = tiny();
    let layout = param_layout(&cfg);
    let groups: Vec<_> = layout.groups.iter().map(|(_, r)| r.clone()).collect();
    let spec = ModelSpec::Gpt2(cfg);
    for dtype in [ParamDtype::F32, ParamDtype::F16, ParamDtype::Bf16] {
        let p = HostParams::from_f32(dtype, &init_params(&layout, cfg.n_layer, 5));
        for max_shard in [u64::MAX, 4096] {
            let dir = tempfile::tempdir().unwrap();
            let report = write_folder::<ModelError>(
                dir.path(),
                &spec,
                dtype,
                None,
                max_shard,
                group_reader(&p, &groups),
            )
            .unwrap();
            assert_eq!(report.bytes, (layout.total * dtype.bytes()) as u64);
            if max_shard == u64::MAX {
                assert_eq!(report.files.len(), 1);
                let (got_cfg, got) = load_hf(dir.path(), dtype).unwrap();
                assert_eq!(got_cfg, cfg);
                assert_eq!(got.range_bytes(0..got.len()), p.range_bytes(0..p.len()));
            } else {
                // Sharded as transformers shards: an index naming every tensor's file.
                assert!(report.files.len() > 2, "{:?}", report.files);
                let idx = dir.path().join("model.safetensors.index.json");
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(idx).unwrap()).unwrap();
                assert_eq!(
                    v["weight_map"].as_object().unwrap().len(),
                    layout.tensors.len()
                );
                let w = zinf::model::hf::HfWeights::open(dir.path()).unwrap();
                // Names in the files carry the `transformer.` prefix.
                let named: Vec<_> = layout
                    .tensors
                    .iter()
                    .map(|t| zinf::model::TensorSpec {
                        name: format!("transformer.{}", t.name),
                        ..t.clone()
                    })
                    .collect();
                assert!(w.check(&named).unwrap().is_empty());
                let back = w.read_range(&named, 0..layout.total).unwrap();
                let back = HostParams::from_f32(dtype, &back);
                assert_eq!(back.range_bytes(0..back.len()), p.range_bytes(0..p.len()));
            }
        }
    }
}
