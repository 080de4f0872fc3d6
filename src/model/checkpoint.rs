//! Hugging Face GPT-2 checkpoints: `model.safetensors` with HF tensor names and layouts
//! (`transformer.h.{i}.attn.c_attn.weight` as Conv1D `[in, out]`, the LM head tied to `wte`)
//! and a `config.json` in HF's GPT-2 format, so `GPT2LMHeadModel.from_pretrained(dir)` loads it.
//!
//! Our flat layout already uses HF shapes, so export and import are copies of ranges; the
//! dtype on disk is the parameters' storage dtype. Import accepts names with or without the
//! `transformer.` prefix (HF's own `gpt2` repo has none) and any of F32/F16/BF16 on disk.

use super::hf::{ckpt_err, io_err};
use super::layout::param_layout;
use super::params::{HostParams, ParamDtype};
use super::{GptConfig, ModelError};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// File names inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

fn to_bytes(p: &HostParams, r: std::ops::Range<usize>) -> (Dtype, Vec<u8>) {
    match p {
        HostParams::F32(v) => (
            Dtype::F32,
            v[r].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        HostParams::F16(v) => (
            Dtype::F16,
            v[r].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        HostParams::Bf16(v) => (
            Dtype::BF16,
            v[r].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    }
}

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

/// Writes `dir/model.safetensors` and `dir/config.json` (creating `dir`).
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
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let blobs: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = layout
        .tensors
        .iter()
        .map(|t| {
            let (dt, bytes) = to_bytes(params, t.range());
            (
                format!("transformer.{}", t.name),
                t.shape.clone(),
                dt,
                bytes,
            )
        })
        .collect();
    let mut views = Vec::with_capacity(blobs.len());
    for (name, shape, dt, bytes) in &blobs {
        let view = safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
            .map_err(|e| ckpt_err(dir, format!("{name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join(WEIGHTS_FILE);
    safetensors::serialize_to_file(views, Some(meta), &path)
        .map_err(|e| ckpt_err(&path, e.to_string()))?;
    let cfg_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&hf_config_json(cfg, params.dtype()))
        .map_err(|e| ckpt_err(&cfg_path, e.to_string()))?;
    std::fs::write(&cfg_path, text + "\n").map_err(|e| io_err(&cfg_path, e))
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

fn read_values(
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
    path: &Path,
) -> Result<Vec<f32>, ModelError> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(ckpt_err(
                path,
                format!("{name}: unsupported dtype {other:?}"),
            ))
        }
    })
}

/// Loads a checkpoint folder into parameters of `dtype` (values already in `dtype` on disk
/// are taken bit for bit). Returns the model shape from `config.json`.
pub fn load_hf(dir: &Path, dtype: ParamDtype) -> Result<(GptConfig, HostParams), ModelError> {
    let cfg = load_hf_config(dir)?;
    let layout = param_layout(&cfg);
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ckpt_err(&path, e.to_string()))?;
    let mut flat = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let prefixed = format!("transformer.{}", t.name);
        let view = st
            .tensor(&prefixed)
            .or_else(|_| st.tensor(&t.name))
            .map_err(|_| ckpt_err(&path, format!("tensor {prefixed} is missing")))?;
        if view.shape() != t.shape.as_slice() {
            return Err(ckpt_err(
                &path,
                format!(
                    "{prefixed}: shape {:?}, expected {:?}",
                    view.shape(),
                    t.shape
                ),
            ));
        }
        flat[t.range()].copy_from_slice(&read_values(&prefixed, &view, &path)?);
    }
    // fp16/bf16 -> f32 -> same dtype round-trips exactly, so import is bit-exact.
    Ok((cfg, HostParams::from_f32(dtype, &flat)))
}
