//! The flat parameter layout of a Llama-family model: every tensor's Hugging Face name, shape
//! and offset, grouped so each decoder layer is one contiguous range (what the engine fetches
//! and releases).
//!
//! Groups and order: `Embed` = `model.embed_tokens.weight [V,C]`; `Block(i)` =
//! `input_layernorm.weight [C]`, `self_attn.{q,k,v}_proj.weight` (`[out, in]`, as `nn.Linear`
//! stores them, so one product with the three stacked gives the packed `qkv` rows), their
//! biases (Qwen2, `attention_bias`), `self_attn.{q,k}_norm.weight [HD]` (Qwen3),
//! `self_attn.o_proj.weight [C, NH*HD]` (+ bias), `post_attention_layernorm.weight [C]`,
//! `mlp.{gate,up}_proj.weight [I, C]` stacked (+ biases), `mlp.down_proj.weight [C, I]` (+ bias);
//! `Final` = `model.norm.weight [C]` and, untied, `lm_head.weight [V, C]`. Tensor names carry
//! the `model.layers.{i}.` prefix of the safetensors files, so loading and export map names 1:1.

use super::config::LlamaConfig;
use crate::device::{Linear, QkNorm, RmsNorm};
use crate::model::layout::{Group, TensorSpec};
use std::ops::Range;

/// Offsets of a decoder layer's tensors relative to the start of its group.
#[derive(Clone, Copy, Debug)]
pub struct LlamaBlockOffsets {
    /// `input_layernorm`.
    pub ln1: RmsNorm,
    /// q, k, v stacked: `(N,C) -> (N, (NH + 2 KV) HD)`.
    pub qkv: Linear,
    /// Qwen3's `q_norm` / `k_norm`.
    pub qk_norm: Option<QkNorm>,
    /// `o_proj`: `(N, NH HD) -> (N, C)`.
    pub o: Linear,
    /// `post_attention_layernorm`.
    pub ln2: RmsNorm,
    /// gate and up stacked: `(N,C) -> (N, 2I)`, rows `[gate | up]`.
    pub gate_up: Linear,
    /// `down_proj`: `(N, I) -> (N, C)`.
    pub down: Linear,
}

/// Every tensor, every group range, and the relative offsets the forward pass uses.
#[derive(Clone, Debug)]
pub struct LlamaLayout {
    pub tensors: Vec<TensorSpec>,
    /// `Embed`, `Block(0)..Block(L-1)`, `Final`, in memory order.
    pub groups: Vec<(Group, Range<usize>)>,
    pub total: usize,
    pub block: LlamaBlockOffsets,
    /// `model.norm` inside the final group.
    pub norm: RmsNorm,
    /// The LM head: logits (N,V) = x (N,C) @ W^T, W `[V, C]` at `head.w_off` of the embed
    /// group when tied, of the final group when not.
    pub head: Linear,
    pub tied: bool,
}

/// The layout's total element count with overflow checked (`None` when a config is too large
/// to address), for validation before anything is allocated.
pub fn llama_layout_checked(cfg: &LlamaConfig) -> Option<usize> {
    let u = |x: usize| x as u128;
    let (c, v, i, l) = (
        u(cfg.hidden_size),
        u(cfg.vocab_size),
        u(cfg.intermediate_size),
        u(cfg.num_hidden_layers),
    );
    let (q, w, hd) = (
        u(cfg.num_attention_heads) * u(cfg.head_dim),
        (u(cfg.num_attention_heads) + 2 * u(cfg.num_key_value_heads)) * u(cfg.head_dim),
        u(cfg.head_dim),
    );
    let b = |on: bool, n: u128| if on { n } else { 0 };
    let block = 2 * c
        + w * c
        + b(cfg.qkv_bias, w)
        + b(cfg.qk_norm, 2 * hd)
        + c * q
        + b(cfg.o_proj_bias, c)
        + 3 * c * i
        + b(cfg.mlp_bias, 2 * i + c);
    let total = v * c + l * block + c + b(!cfg.tie_word_embeddings, v * c);
    // Elements are also addressed as bytes (x4) and as u64 store offsets.
    (total <= (isize::MAX as u128) / 8).then_some(total as usize)
}

fn linear(w_off: usize, c: usize, oc: usize, bias: Option<usize>) -> Linear {
    Linear {
        w_off,
        b_off: bias,
        c,
        oc,
        w_out_in: true,
    }
}

/// Computes every parameter's size and offset for `cfg` (validated).
pub fn llama_layout(cfg: &LlamaConfig) -> LlamaLayout {
    let (c, v, im) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (nh, kv, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let (q, w) = (nh * hd, cfg.qkv_width());
    let mut tensors = Vec::new();
    let mut groups = Vec::new();
    let mut off = 0usize;
    let mut push = |name: String, shape: Vec<usize>, group: Group, off: &mut usize| -> usize {
        let at = *off;
        let spec = TensorSpec {
            name,
            shape,
            offset: at,
            group,
        };
        *off += spec.numel();
        tensors.push(spec);
        at
    };
    push(
        "model.embed_tokens.weight".into(),
        vec![v, c],
        Group::Embed,
        &mut off,
    );
    groups.push((Group::Embed, 0..off));
    let mut block = None;
    for l in 0..cfg.num_hidden_layers {
        let g = Group::Block(l);
        let start = off;
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let ln1 = push(p("input_layernorm.weight"), vec![c], g, &mut off);
        let qw = push(p("self_attn.q_proj.weight"), vec![q, c], g, &mut off);
        push(p("self_attn.k_proj.weight"), vec![kv * hd, c], g, &mut off);
        push(p("self_attn.v_proj.weight"), vec![kv * hd, c], g, &mut off);
        let qkv_b = cfg.qkv_bias.then(|| {
            let at = push(p("self_attn.q_proj.bias"), vec![q], g, &mut off);
            push(p("self_attn.k_proj.bias"), vec![kv * hd], g, &mut off);
            push(p("self_attn.v_proj.bias"), vec![kv * hd], g, &mut off);
            at
        });
        let qk_norm = cfg.qk_norm.then(|| QkNorm {
            q_w_off: push(p("self_attn.q_norm.weight"), vec![hd], g, &mut off) - start,
            k_w_off: push(p("self_attn.k_norm.weight"), vec![hd], g, &mut off) - start,
            eps: cfg.rms_norm_eps,
        });
        let ow = push(p("self_attn.o_proj.weight"), vec![c, q], g, &mut off);
        let o_b = cfg
            .o_proj_bias
            .then(|| push(p("self_attn.o_proj.bias"), vec![c], g, &mut off));
        let ln2 = push(p("post_attention_layernorm.weight"), vec![c], g, &mut off);
        let gw = push(p("mlp.gate_proj.weight"), vec![im, c], g, &mut off);
        push(p("mlp.up_proj.weight"), vec![im, c], g, &mut off);
        let gu_b = cfg.mlp_bias.then(|| {
            let at = push(p("mlp.gate_proj.bias"), vec![im], g, &mut off);
            push(p("mlp.up_proj.bias"), vec![im], g, &mut off);
            at
        });
        let dw = push(p("mlp.down_proj.weight"), vec![c, im], g, &mut off);
        let d_b = cfg
            .mlp_bias
            .then(|| push(p("mlp.down_proj.bias"), vec![c], g, &mut off));
        groups.push((g, start..off));
        let rel = |x: usize| x - start;
        block.get_or_insert(LlamaBlockOffsets {
            ln1: RmsNorm {
                w_off: rel(ln1),
                c,
                eps: cfg.rms_norm_eps,
            },
            qkv: linear(rel(qw), c, w, qkv_b.map(rel)),
            qk_norm,
            o: linear(rel(ow), q, c, o_b.map(rel)),
            ln2: RmsNorm {
                w_off: rel(ln2),
                c,
                eps: cfg.rms_norm_eps,
            },
            gate_up: linear(rel(gw), c, 2 * im, gu_b.map(rel)),
            down: linear(rel(dw), im, c, d_b.map(rel)),
        });
    }
    let start = off;
    push("model.norm.weight".into(), vec![c], Group::Final, &mut off);
    let head_off = if cfg.tie_word_embeddings {
        0
    } else {
        push("lm_head.weight".into(), vec![v, c], Group::Final, &mut off) - start
    };
    groups.push((Group::Final, start..off));
    let placeholder = RmsNorm {
        w_off: 0,
        c,
        eps: cfg.rms_norm_eps,
    };
    LlamaLayout {
        tensors,
        groups,
        total: off,
        block: block.unwrap_or(LlamaBlockOffsets {
            ln1: placeholder,
            qkv: linear(0, c, w, None),
            qk_norm: None,
            o: linear(0, q, c, None),
            ln2: placeholder,
            gate_up: linear(0, c, 2 * im, None),
            down: linear(0, im, c, None),
        }),
        norm: placeholder,
        head: linear(head_off, c, v, None),
        tied: cfg.tie_word_embeddings,
    }
}
