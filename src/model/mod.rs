//! The GPT-2 model: its shape, the one parameter layout, initialisation, forward and backward
//! over a [`crate::device::Device`] one block at a time, and Hugging Face checkpoints.
//!
//! Parameters live on the host in fp16, bf16 or fp32 ([`HostParams`]); each group (embeddings,
//! one group per block, final LayerNorm) is one contiguous range of [`param_layout`], which is
//! what a ZeRO-3 engine fetches to the device (as an fp32 working copy) and releases.
//! Gradients are fp32 in the same layout. This module does not own an optimizer.

pub mod checkpoint;
pub mod export;
pub mod gpt;
pub mod hf;
pub mod layout;
pub mod llama;
pub mod params;
pub mod spec;
pub mod stages;
pub mod train;

pub use gpt::Gpt;
pub use layout::{param_layout, BlockOffsets, Group, ParamLayout, TensorSpec};
pub use llama::{Llama, LlamaConfig};
pub use params::{init_params, HostParams, ParamDtype, ParamInit};
pub use spec::{AnyModel, ModelSpec};
pub use stages::{GroupSpec, Model, ParamSource, Stage, Stages};

use crate::device::DeviceError;

/// Errors of model construction, checkpoints and data.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("invalid model shape: {0}")]
    Shape(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    /// A `config.json` naming a model zinf does not train.
    #[error("checkpoint {path}: {what}; zinf trains {}", supported.join(", "))]
    Unsupported {
        path: String,
        what: String,
        supported: Vec<&'static str>,
    },
}

/// Refuses data holding a token id the model has no embedding for.
pub fn check_vocab(data: &crate::data::Dataset, vocab_size: usize) -> Result<(), ModelError> {
    let max_tok = data
        .train
        .iter()
        .chain(data.val.iter())
        .map(|&k| crate::data::input(k))
        .max()
        .unwrap_or(0);
    if max_tok as usize >= vocab_size {
        return Err(ModelError::Shape(format!(
            "the data holds token id {max_tok}, the model's vocab_size is {vocab_size}"
        )));
    }
    Ok(())
}

/// The shape of a GPT-2 family model (Hugging Face names in comments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Number of transformer blocks (`n_layer`).
    pub n_layer: usize,
    /// Attention heads per block (`n_head`).
    pub n_head: usize,
    /// Channels (`n_embd`).
    pub n_embd: usize,
    /// Vocabulary size (`vocab_size`), 50257 for the GPT-2 BPE.
    pub vocab_size: usize,
    /// Longest sequence, the number of position embeddings (`n_positions`).
    pub block_size: usize,
}

impl GptConfig {
    /// GPT-2 small, 124M parameters.
    pub fn gpt2_124m() -> Self {
        GptConfig {
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            vocab_size: 50257,
            block_size: 1024,
        }
    }

    /// Checks the shape is one the kernels can run.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fields = [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return Err(ModelError::Shape(format!("{name} must be at least 1")));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::Shape(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            )));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(ModelError::Shape(
                "vocab_size does not fit in u32 token ids".into(),
            ));
        }
        Ok(())
    }

    /// Matmul FLOPs of forward + backward per token at sequence length `t` (PaLM's count:
    /// 6 per weight of every block and of the tied head, plus 12·L·T·C for attention scores
    /// and values; embeddings, norms and element-wise ops are not counted).
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        let (l, c, v) = (
            self.n_layer as f64,
            self.n_embd as f64,
            self.vocab_size as f64,
        );
        6.0 * (l * 12.0 * c * c + c * v) + 12.0 * l * t as f64 * c
    }

    /// Total parameter count (the LM head is tied to `wte`).
    pub fn num_params(&self) -> usize {
        param_layout(self).total
    }
}
