//! Hugging Face GPT-2 checkpoints: `model.safetensors` with HF tensor names and layouts
//! (`transformer.h.{i}.attn.c_attn.weight` as Conv1D `[in, out]`, the LM head tied to `wte`)
//! and a `config.json` in HF's GPT-2 format, so `GPT2LMHeadModel.from_pretrained(dir)` loads it.
//!
//! Our flat layout already uses HF shapes, so export and import are copies of ranges; the
//! dtype on disk is the parameters' storage dtype. Import accepts names with or without the
//! `transformer.` prefix (HF's own `gpt2` repo has none) and any of F32/F16/BF16 on disk.

use super::hf::{ckpt_err, io_err, open_weights};
use super::layout::param_layout;
use super::params::{HostParams, ParamDtype};
use super::{GptConfig, ModelError};
use std::path::Path;

/// File names inside a checkpoint folder.
pub use super::hf::{CONFIG_FILE, WEIGHTS_FILE};

/// HF GPT-2 `config.json` for `cfg`.
pub fn hf_config_json(cfg: &GptConfig, dtype: ParamDtype) -> serde_json::Value {
    let torch_dtype = match dtype {
        ParamDtype::F32 => "float32",
        ParamDtype::F16 => "float16",
        ParamDtype::Bf16 => "bfloat16",
    };
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": torch_dtype,
        "use_cache": true
    })
}

/// Writes `dir/model.safetensors` and `dir/config.json` (creating `dir`) from parameters held
/// whole in memory: [`super::export::write_folder`] over them, one file.
pub fn save_hf(dir: &Path, cfg: &GptConfig, params: &HostParams) -> Result<(), ModelError> {
    let layout = param_layout(cfg);
    if params.len() != layout.total {
        return Err(ckpt_err(
            dir,
            format!(
                "{} values for a {}-parameter layout",
                params.len(),
                layout.total
            ),
        ));
    }
    let groups: Vec<_> = layout.groups.iter().map(|(_, r)| r.clone()).collect();
    super::export::write_folder::<ModelError>(
        dir,
        &super::ModelSpec::Gpt2(*cfg),
        params.dtype(),
        None,
        u64::MAX,
        super::export::group_reader(params, &groups),
    )?;
    Ok(())
}

/// Reads the model shape from an HF GPT-2 `config.json`.
pub fn load_hf_config(dir: &Path) -> Result<GptConfig, ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ckpt_err(&path, e.to_string()))?;
    let get = |k: &str| -> Result<usize, ModelError> {
        v.get(k)
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .ok_or_else(|| ckpt_err(&path, format!("missing or non-integer \"{k}\"")))
    };
    let cfg = GptConfig {
        n_layer: get("n_layer")?,
        n_head: get("n_head")?,
        n_embd: get("n_embd")?,
        vocab_size: get("vocab_size")?,
        block_size: get("n_positions")?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Loads a checkpoint folder (single or sharded safetensors, F32/F16/BF16, names with or
/// without the `transformer.` prefix) into parameters of `dtype` (values already in `dtype`
/// on disk are taken bit for bit: half → f32 → half round-trips exactly). Returns the model
/// shape from `config.json`. Read through [`open_weights`], which checks every tensor first.
pub fn load_hf(dir: &Path, dtype: ParamDtype) -> Result<(GptConfig, HostParams), ModelError> {
    let cfg = load_hf_config(dir)?;
    let (weights, tensors, _) = open_weights(dir, &super::ModelSpec::Gpt2(cfg))?;
    let flat = weights.read_range(&tensors, 0..cfg.num_params())?;
    Ok((cfg, HostParams::from_f32(dtype, &flat)))
}
