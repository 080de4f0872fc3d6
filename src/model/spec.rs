//! Which model a run trains ([`ModelSpec`]: GPT-2 or a Llama-family shape) and the one model
//! type the engine holds for either ([`AnyModel`]).
//!
//! A spec comes from the config's `zinf.model` block (GPT-2 dimensions) or from a Hugging Face
//! folder's `config.json` (`zinf.model.from`, `--init-from`): [`ModelSpec::from_folder`]
//! reads `architectures`/`model_type` and picks GPT-2 or the Llama family. Everything that
//! prices or lays out a run (estimate, tier layout, config "auto" values, saves) asks the spec.

use super::layout::TensorSpec;
use super::llama::{self, Llama, LlamaConfig};
use super::stages::{GroupBuffers, GroupSpec, Model, ParamSource, Stages};
use super::{gpt, Gpt, GptConfig, ModelError};
use crate::device::Device;
use std::ops::Range;
use std::path::Path;

/// The model of a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ModelSpec {
    /// zinf's GPT-2 (`GPT2LMHeadModel`).
    Gpt2(GptConfig),
    /// `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`.
    Llama(LlamaConfig),
}

impl ModelSpec {
    /// Reads a Hugging Face folder's `config.json`: GPT-2 (`GPT2LMHeadModel` / `gpt2`) or a
    /// Llama-family model; anything else is an error listing what zinf trains.
    pub fn from_folder(dir: &Path) -> Result<Self, ModelError> {
        let (path, text) = super::hf::read_config_text(dir)?;
        let v: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|e| ModelError::Checkpoint {
                path: path.display().to_string(),
                message: format!("not valid JSON: {e}"),
            })?;
        let is_gpt2 = v["model_type"] == "gpt2"
            || v["architectures"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "GPT2LMHeadModel"));
        if is_gpt2 {
            return Ok(ModelSpec::Gpt2(super::checkpoint::load_hf_config(dir)?));
        }
        let file = path.display().to_string();
        LlamaConfig::from_json(&text, &file)
            .map(ModelSpec::Llama)
            .map_err(|e| match e {
                ModelError::Unsupported {
                    path,
                    what,
                    mut supported,
                } => {
                    supported.push("GPT2LMHeadModel");
                    ModelError::Unsupported {
                        path,
                        what,
                        supported,
                    }
                }
                e => e,
            })
    }

    /// For logs: `GPT-2 (12 layers, 12 heads, 768 wide, vocab 50257)`.
    pub fn describe(&self) -> String {
        match self {
            ModelSpec::Gpt2(c) => format!(
                "GPT-2 ({} layers, {} heads, {} wide, vocab {})",
                c.n_layer, c.n_head, c.n_embd, c.vocab_size
            ),
            ModelSpec::Llama(c) => format!(
                "{} ({} layers, {} heads / {} kv heads of {}, {} wide, mlp {}, vocab {})",
                c.arch.class_name(),
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim,
                c.hidden_size,
                c.intermediate_size,
                c.vocab_size
            ),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelSpec::Gpt2(c) => c.vocab_size,
            ModelSpec::Llama(c) => c.vocab_size,
        }
    }

    /// Channels of the residual stream (DeepSpeed's "hidden_size" for its `"auto"` values).
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelSpec::Gpt2(c) => c.n_embd,
            ModelSpec::Llama(c) => c.hidden_size,
        }
    }

    /// Longest sequence the model takes (`n_positions` / `max_position_embeddings`).
    pub fn max_positions(&self) -> usize {
        match self {
            ModelSpec::Gpt2(c) => c.block_size,
            ModelSpec::Llama(c) => c.max_position_embeddings,
        }
    }

    /// Every tensor and the group ranges, in layout order.
    pub fn layout(&self) -> (Vec<TensorSpec>, Vec<Range<usize>>) {
        match self {
            ModelSpec::Gpt2(c) => {
                let l = super::param_layout(c);
                (l.tensors, l.groups.into_iter().map(|(_, r)| r).collect())
            }
            ModelSpec::Llama(c) => {
                let l = llama::llama_layout(c);
                (l.tensors, l.groups.into_iter().map(|(_, r)| r).collect())
            }
        }
    }

    /// Total parameter count.
    pub fn num_params(&self) -> usize {
        match self {
            ModelSpec::Gpt2(c) => c.num_params(),
            ModelSpec::Llama(c) => c.num_params(),
        }
    }

    /// fp32 elements of activations and scratch the model allocates on the device for
    /// micro-batches of `b` x `t` (exact; see each model's `activation_elems`).
    pub fn activation_elems(&self, b: usize, t: usize, checkpointing: bool) -> u128 {
        match self {
            ModelSpec::Gpt2(c) => gpt::activation_elems(c, b, t, checkpointing),
            ModelSpec::Llama(c) => llama::activation_elems(c, b, t, checkpointing),
        }
    }

    /// Matmul FLOPs of forward + backward per token at sequence length `t`.
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        match self {
            ModelSpec::Gpt2(c) => c.train_flops_per_token(t),
            ModelSpec::Llama(c) => c.train_flops_per_token(t),
        }
    }

    /// The model for micro-batches of `b` x `t` on `dev`, without parameter or gradient
    /// buffers (the engine installs them).
    pub fn build<D: Device>(
        &self,
        dev: &D,
        b: usize,
        t: usize,
        checkpointing: bool,
    ) -> Result<AnyModel<D>, ModelError> {
        Ok(match self {
            ModelSpec::Gpt2(c) => {
                AnyModel::Gpt2(Gpt::without_groups(dev, *c, b, t, checkpointing)?)
            }
            ModelSpec::Llama(c) => {
                AnyModel::Llama(Llama::without_groups(dev, c.clone(), b, t, checkpointing)?)
            }
        })
    }
}

/// Either model, as the engine holds it: every [`Model`] call goes to the one inside.
pub enum AnyModel<D: Device> {
    Gpt2(Gpt<D>),
    Llama(Llama<D>),
}

impl<D: Device> AnyModel<D> {
    /// Logits of position `pos` in sequence `seq` after the head's forward.
    pub fn logits_at(&self, dev: &D, seq: usize, pos: usize) -> Result<Vec<f32>, ModelError> {
        match self {
            AnyModel::Gpt2(m) => m.logits_at(dev, seq, pos),
            AnyModel::Llama(m) => m.logits_at(dev, seq, pos),
        }
    }
}

impl<D: Device> Model<D> for AnyModel<D> {
    fn groups(&self) -> &[GroupSpec] {
        match self {
            AnyModel::Gpt2(m) => m.groups(),
            AnyModel::Llama(m) => m.groups(),
        }
    }

    fn num_params(&self) -> usize {
        match self {
            AnyModel::Gpt2(m) => Model::<D>::num_params(m),
            AnyModel::Llama(m) => Model::<D>::num_params(m),
        }
    }

    fn stages(&self) -> &Stages {
        match self {
            AnyModel::Gpt2(m) => m.stages(),
            AnyModel::Llama(m) => m.stages(),
        }
    }

    fn forward(
        &mut self,
        dev: &D,
        stage: usize,
        tokens: &[u32],
        targets: &[u32],
    ) -> Result<Option<f32>, ModelError> {
        match self {
            AnyModel::Gpt2(m) => Model::forward(m, dev, stage, tokens, targets),
            AnyModel::Llama(m) => Model::forward(m, dev, stage, tokens, targets),
        }
    }

    fn backward(
        &mut self,
        dev: &D,
        stage: usize,
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<(), ModelError> {
        match self {
            AnyModel::Gpt2(m) => Model::backward(m, dev, stage, tokens, targets, grad_scale),
            AnyModel::Llama(m) => Model::backward(m, dev, stage, tokens, targets, grad_scale),
        }
    }

    fn seeded_init(&self, seed: u64) -> ParamSource {
        match self {
            AnyModel::Gpt2(m) => m.seeded_init(seed),
            AnyModel::Llama(m) => m.seeded_init(seed),
        }
    }

    fn buffers_mut(&mut self) -> &mut GroupBuffers<D::Buffer> {
        match self {
            AnyModel::Gpt2(m) => m.buffers_mut(),
            AnyModel::Llama(m) => m.buffers_mut(),
        }
    }
}
