//! The Llama family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM`) forward and backward on a [`Device`], one decoder layer at a time.
//!
//! A decoder layer is transformers' `LlamaDecoderLayer`: `input_layernorm` (RMSNorm) → q, k, v
//! (one product over the stacked weights) → Qwen3's per-head `q_norm`/`k_norm` → RoPE on q and
//! k → causal grouped-query attention → `o_proj` → residual; `post_attention_layernorm` →
//! gate and up (one product) → SwiGLU → `down_proj` → residual. Then `model.norm` and the LM
//! head (tied to `embed_tokens` or `lm_head`). The loss is the mean cross-entropy over targets
//! that are not [`IGNORE_INDEX`] (transformers' `ForCausalLMLoss`, labels −100 ignored).
//!
//! Like [`crate::model::Gpt`], every buffer is allocated in [`Llama::without_groups`] (an
//! over-budget model fails there), each layer reads only its own group, and activation
//! checkpointing keeps each layer's input and recomputes the layer before its backward.

pub mod config;
pub mod layout;

pub use config::{Arch, LlamaConfig, Rope, RopeScaling};
pub use layout::{llama_layout, LlamaLayout};

use super::layout::Group;
use super::params::{Fill, SeededInit};
use super::stages::{
    decoder_stages, fetched, fetched_mut, DecoderStep, GroupBuffers, GroupSpec, Model, ParamSource,
    Stages,
};
use super::ModelError;
use crate::device::{AttnShape, Device, DeviceError, HostSlice};

/// Activations of one decoder layer kept for its backward.
struct LayerActs<B> {
    ln1: B,             // (N,C)
    ln1_rstd: B,        // (N)
    qkv_raw: Option<B>, // (N,W) before Qwen3's q/k norm
    qk_rstd: Option<B>, // (N, NH+KV)
    qkv: B,             // (N,W) after norm and RoPE
    atty: B,            // (N, NH*HD)
    att: B,             // (B,NH,T,T)
    resid2: B,          // (N,C)
    ln2: B,             // (N,C)
    ln2_rstd: B,        // (N)
    gate_up: B,         // (N,2I)
    mlp_h: B,           // (N,I)
}

/// Backward scratch shared by all layers.
struct Scratch<B> {
    dres: B,             // (N,C)
    dln: B,              // (N,C)
    datty: B,            // (N, NH*HD)
    dqkv: B,             // (N,W)
    dqkv_raw: Option<B>, // (N,W)
    datt: B,             // (B,NH,T,T)
    dgate_up: B,         // (N,2I)
    dmlp_h: B,           // (N,I)
    dlogits: B,          // (N,V)
}

/// Forward-only buffers outside the layers.
struct Top<B> {
    resid: Vec<B>, // L+1 x (N,C): resid[l] is layer l's input
    tmp: B,        // (N,C)
    normf: B,      // (N,C)
    normf_rstd: B, // (N)
    logits: B,     // (N,V), probabilities after the loss
    losses: B,     // (N)
    rope: B,       // cos (T, HD/2) then sin (T, HD/2)
}

/// Elements of fp32 device memory [`Llama::without_groups`] allocates for `b` sequences of `t`
/// tokens (activations, residuals, logits, scratch, the RoPE table); exactly what those
/// allocations sum to (a test holds them together). u128: an absurd config must not overflow.
pub fn activation_elems(cfg: &LlamaConfig, b: usize, t: usize, checkpointing: bool) -> u128 {
    let u = |x: usize| x as u128;
    let (b, t) = (u(b), u(t));
    let n = b * t;
    let (c, v, i, l) = (
        u(cfg.hidden_size),
        u(cfg.vocab_size),
        u(cfg.intermediate_size),
        u(cfg.num_hidden_layers),
    );
    let (nh, kv, hd) = (
        u(cfg.num_attention_heads),
        u(cfg.num_key_value_heads),
        u(cfg.head_dim),
    );
    let (q, w) = (nh * hd, (nh + 2 * kv) * hd);
    let att = b * nh * t * t;
    let qk = if cfg.qk_norm {
        n * w + n * (nh + kv)
    } else {
        0
    };
    // LayerActs: ln1, resid2, ln2 (C); 2 rstd; qkv (W); atty (Q); att; gate_up (2I); mlp_h (I).
    let layer = 3 * n * c + 2 * n + n * w + n * q + att + 3 * n * i + qk;
    let kept = if checkpointing { 1 } else { l };
    // Top: L+1 residuals, tmp, normf (C); normf_rstd, losses; logits; the RoPE table.
    let top = (l + 3) * n * c + 2 * n + n * v + t * hd;
    // Scratch: dres, dln (C); datty (Q); dqkv (W) (+ dqkv_raw); datt; dgate_up (2I);
    // dmlp_h (I); dlogits.
    let dqk = if cfg.qk_norm { n * w } else { 0 };
    let scratch = 2 * n * c + n * q + n * w + dqk + att + 3 * n * i + n * v;
    kept * layer + top + scratch
}

/// A Llama-family model on a device for micro-batches of `b` sequences of `t` tokens.
pub struct Llama<D: Device> {
    pub cfg: LlamaConfig,
    pub layout: LlamaLayout,
    pub b: usize,
    pub t: usize,
    pub checkpointing: bool,
    bufs: GroupBuffers<D::Buffer>,
    layers: Vec<LayerActs<D::Buffer>>,
    top: Top<D::Buffer>,
    g: Scratch<D::Buffer>,
    group_specs: Vec<GroupSpec>,
    stages: Stages,
}

impl<D: Device> Llama<D> {
    /// Allocates every device buffer (activations and every group's parameters and
    /// gradients): the resident model.
    pub fn new(
        dev: &D,
        cfg: LlamaConfig,
        b: usize,
        t: usize,
        checkpointing: bool,
    ) -> Result<Self, ModelError> {
        let mut m = Self::without_groups(dev, cfg, b, t, checkpointing)?;
        for (i, (g, r)) in m.layout.groups.iter().enumerate() {
            m.bufs.params[i] = Some(dev.alloc(&format!("parameters {g:?}"), r.len())?);
            m.bufs.grads[i] = Some(dev.alloc(&format!("gradients {g:?}"), r.len())?);
        }
        Ok(m)
    }

    /// Allocates activations, scratch and the RoPE table only; an engine installs each
    /// group's parameter and gradient buffers before the stages that read them.
    pub fn without_groups(
        dev: &D,
        cfg: LlamaConfig,
        b: usize,
        t: usize,
        checkpointing: bool,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        if b == 0 || t == 0 || t > cfg.max_position_embeddings {
            return Err(ModelError::Shape(format!(
                "micro-batch {b} x {t} tokens: need b >= 1 and 1 <= t <= \
                 max_position_embeddings {}",
                cfg.max_position_embeddings
            )));
        }
        if let Some(w) = cfg.sliding_window.filter(|&w| t > w) {
            return Err(ModelError::Shape(format!(
                "sequences of {t} tokens are longer than the model's sliding_window ({w}); zinf \
                 trains within the window, where the attention is plainly causal: set \
                 zinf.data.seq_len to at most {w}"
            )));
        }
        let layout = llama_layout(&cfg);
        let s = shape(&cfg, b, t);
        let (n, c, v, im) = (
            b * t,
            cfg.hidden_size,
            cfg.vocab_size,
            cfg.intermediate_size,
        );
        let (q, w) = (s.q_width(), s.qkv_width());
        let heads = cfg.num_attention_heads + cfg.num_key_value_heads;
        let qk = cfg.qk_norm;
        let a = |name: &str, len: usize| dev.alloc(name, len);
        let kept = if checkpointing {
            1
        } else {
            cfg.num_hidden_layers
        };
        let layers = (0..kept)
            .map(|l| {
                let a = |name: &str, len: usize| {
                    dev.alloc(&format!("activations layers.{l}.{name}"), len)
                };
                Ok(LayerActs {
                    ln1: a("ln1", n * c)?,
                    ln1_rstd: a("ln1_rstd", n)?,
                    qkv_raw: qk.then(|| a("qkv_raw", n * w)).transpose()?,
                    qk_rstd: qk.then(|| a("qk_rstd", n * heads)).transpose()?,
                    qkv: a("qkv", n * w)?,
                    atty: a("atty", n * q)?,
                    att: a("att", b * s.nh * t * t)?,
                    resid2: a("resid2", n * c)?,
                    ln2: a("ln2", n * c)?,
                    ln2_rstd: a("ln2_rstd", n)?,
                    gate_up: a("gate_up", n * 2 * im)?,
                    mlp_h: a("mlp_h", n * im)?,
                })
            })
            .collect::<Result<Vec<_>, DeviceError>>()?;
        let mut rope = a("rope table", t * cfg.head_dim)?;
        let table = cfg.rope.table(cfg.head_dim, t);
        dev.wait(dev.upload(&mut rope, 0, HostSlice::F32(&table))?)?;
        let top = Top {
            resid: (0..=cfg.num_hidden_layers)
                .map(|l| a(&format!("residual {l}"), n * c))
                .collect::<Result<_, _>>()?,
            tmp: a("activations tmp", n * c)?,
            normf: a("activations norm", n * c)?,
            normf_rstd: a("activations norm rstd", n)?,
            logits: a("logits", n * v)?,
            losses: a("losses", n)?,
            rope,
        };
        let g = Scratch {
            dres: a("grad scratch dres", n * c)?,
            dln: a("grad scratch dln", n * c)?,
            datty: a("grad scratch datty", n * q)?,
            dqkv: a("grad scratch dqkv", n * w)?,
            dqkv_raw: qk.then(|| a("grad scratch dqkv_raw", n * w)).transpose()?,
            datt: a("grad scratch datt", b * s.nh * t * t)?,
            dgate_up: a("grad scratch dgate_up", n * 2 * im)?,
            dmlp_h: a("grad scratch dmlp_h", n * im)?,
            dlogits: a("grad scratch dlogits", n * v)?,
        };
        let group_specs = layout
            .groups
            .iter()
            .map(|(g, r)| GroupSpec {
                name: group_name(*g),
                range: r.clone(),
                tensor_starts: layout
                    .tensors
                    .iter()
                    .filter(|t| t.group == *g)
                    .map(|t| t.offset)
                    .collect(),
            })
            .collect();
        let stages = decoder_stages(cfg.num_hidden_layers, cfg.tie_word_embeddings);
        Ok(Llama {
            bufs: GroupBuffers::new(layout.groups.iter().map(|(_, r)| r.len()).collect()),
            cfg,
            layout,
            b,
            t,
            checkpointing,
            layers,
            top,
            g,
            group_specs,
            stages,
        })
    }

    fn shape(&self) -> AttnShape {
        shape(&self.cfg, self.b, self.t)
    }

    fn final_group(&self) -> usize {
        self.cfg.num_hidden_layers + 1
    }

    /// Uploads a flat fp32 parameter array (layout order) into the installed buffers (the
    /// resident model; tests).
    pub fn load_params(&mut self, dev: &D, flat: &[f32]) -> Result<(), ModelError> {
        if flat.len() != self.layout.total {
            return Err(ModelError::Shape(format!(
                "{} parameters given, the layout has {}",
                flat.len(),
                self.layout.total
            )));
        }
        for (i, (_, r)) in self.layout.groups.iter().enumerate() {
            let buf = fetched_mut(&mut self.bufs.params, i);
            dev.wait(dev.upload(buf, 0, HostSlice::F32(&flat[r.clone()]))?)?;
        }
        Ok(())
    }

    /// Sets every installed gradient to zero.
    pub fn zero_grads(&mut self, dev: &D) -> Result<(), ModelError> {
        for g in self.bufs.grads.iter_mut().flatten() {
            dev.zero(g)?;
        }
        Ok(())
    }

    /// Downloads all gradients into `out` (flat, layout order).
    pub fn download_grads(&self, dev: &D, out: &mut [f32]) -> Result<(), ModelError> {
        assert_eq!(out.len(), self.layout.total, "download_grads: wrong length");
        for (i, (_, r)) in self.layout.groups.iter().enumerate() {
            dev.wait(dev.download(fetched(&self.bufs.grads, i), 0, &mut out[r.clone()])?)?;
        }
        Ok(())
    }

    /// The whole forward: tokens, targets (B,T) -> mean loss over non-ignored targets.
    pub fn forward_all(
        &mut self,
        dev: &D,
        tokens: &[u32],
        targets: &[u32],
    ) -> Result<f32, ModelError> {
        self.embed_forward(dev, tokens)?;
        for l in 0..self.cfg.num_hidden_layers {
            self.layer_forward(dev, l)?;
        }
        self.head_forward(dev)?;
        self.loss_forward(dev, targets)
    }

    /// The whole backward after [`Llama::forward_all`], adding `grad_scale * d(loss)` into the
    /// gradients.
    pub fn backward_all(
        &mut self,
        dev: &D,
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<(), ModelError> {
        self.head_backward(dev, targets, grad_scale)?;
        for l in (0..self.cfg.num_hidden_layers).rev() {
            if self.checkpointing {
                self.layer_forward(dev, l)?;
            }
            self.layer_backward(dev, l)?;
        }
        self.embed_backward(dev, tokens)
    }

    /// tokens (B,T) -> resid[0] (N,C) = embed_tokens[tokens]. Reads the `Embed` group.
    pub fn embed_forward(&mut self, dev: &D, tokens: &[u32]) -> Result<(), ModelError> {
        self.check_len("tokens", tokens)?;
        let (t, c, v) = (self.t, self.cfg.hidden_size, self.cfg.vocab_size);
        let emb = fetched(&self.bufs.params, 0);
        dev.encoder_forward(&mut self.top.resid[0], tokens, emb, 0, None, t, c, v)?;
        Ok(())
    }

    /// Decoder layer `l`: resid[l] -> resid[l+1]. Reads group `Block(l)`.
    pub fn layer_forward(&mut self, dev: &D, l: usize) -> Result<(), ModelError> {
        let s = self.shape();
        let o = self.layout.block;
        let p = fetched(&self.bufs.params, 1 + l);
        let a = &mut self.layers[if self.checkpointing { 0 } else { l }];
        let (before, after) = self.top.resid.split_at_mut(l + 1);
        let (inp, out) = (&before[l], &mut after[0]);
        let tmp = &mut self.top.tmp;
        dev.rmsnorm_forward(&mut a.ln1, &mut a.ln1_rstd, inp, p, o.ln1)?;
        match (&mut a.qkv_raw, &mut a.qk_rstd, o.qk_norm) {
            (Some(raw), Some(rstd), Some(norm)) => {
                dev.matmul_forward(raw, &a.ln1, p, o.qkv)?;
                dev.qk_norm_forward(&mut a.qkv, rstd, raw, p, norm, s)?;
            }
            _ => dev.matmul_forward(&mut a.qkv, &a.ln1, p, o.qkv)?,
        }
        dev.rope_forward(&mut a.qkv, &self.top.rope, s)?;
        dev.attention_forward(&mut a.atty, &mut a.att, &a.qkv, s)?;
        dev.matmul_forward(tmp, &a.atty, p, o.o)?;
        dev.residual_forward(&mut a.resid2, inp, tmp)?;
        dev.rmsnorm_forward(&mut a.ln2, &mut a.ln2_rstd, &a.resid2, p, o.ln2)?;
        dev.matmul_forward(&mut a.gate_up, &a.ln2, p, o.gate_up)?;
        dev.swiglu_forward(&mut a.mlp_h, &a.gate_up, self.cfg.intermediate_size)?;
        dev.matmul_forward(tmp, &a.mlp_h, p, o.down)?;
        dev.residual_forward(out, &a.resid2, tmp)?;
        Ok(())
    }

    /// resid[L] -> `model.norm` -> logits (N,V). Reads `Final` (and `Embed` when tied).
    pub fn head_forward(&mut self, dev: &D) -> Result<(), ModelError> {
        let fin = self.final_group();
        let top = &mut self.top;
        let last = &top.resid[self.cfg.num_hidden_layers];
        let pf = fetched(&self.bufs.params, fin);
        dev.rmsnorm_forward(
            &mut top.normf,
            &mut top.normf_rstd,
            last,
            pf,
            self.layout.norm,
        )?;
        let head = fetched(&self.bufs.params, if self.layout.tied { 0 } else { fin });
        dev.matmul_forward(&mut top.logits, &top.normf, head, self.layout.head)?;
        Ok(())
    }

    /// logits (N,V) -> probabilities in place; the mean loss over targets that are not
    /// [`IGNORE_INDEX`] (0 when every target is ignored).
    pub fn loss_forward(&mut self, dev: &D, targets: &[u32]) -> Result<f32, ModelError> {
        self.check_len("targets", targets)?;
        let v = self.cfg.vocab_size;
        let top = &mut self.top;
        dev.softmax_crossentropy_forward(&mut top.logits, &mut top.losses, targets, v)?;
        let mut losses = vec![0.0f32; targets.len()];
        dev.wait(dev.download(&top.losses, 0, &mut losses)?)?;
        let sum: f64 = losses.iter().map(|&x| x as f64).sum();
        Ok((sum / super::stages::valid_targets(targets) as f64) as f32)
    }

    /// The loss and head backward: dres = d(loss)/d(resid[L]) scaled by `grad_scale`; adds into
    /// the `Final` (and, tied, `Embed`) gradients.
    pub fn head_backward(
        &mut self,
        dev: &D,
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<(), ModelError> {
        let (v, fin) = (self.cfg.vocab_size, self.final_group());
        let dloss = grad_scale / super::stages::valid_targets(targets) as f32;
        let g = &mut self.g;
        dev.zero(&mut g.dlogits)?;
        dev.softmax_crossentropy_backward(&mut g.dlogits, &self.top.logits, targets, v, dloss)?;
        dev.zero(&mut g.dln)?;
        let head_group = if self.layout.tied { 0 } else { fin };
        {
            let (p, dp) = (
                fetched(&self.bufs.params, head_group),
                fetched_mut(&mut self.bufs.grads, head_group),
            );
            dev.matmul_backward(
                &mut g.dln,
                dp,
                &g.dlogits,
                &self.top.normf,
                p,
                self.layout.head,
            )?;
        }
        dev.zero(&mut g.dres)?;
        let (pf, dpf) = (
            fetched(&self.bufs.params, fin),
            fetched_mut(&mut self.bufs.grads, fin),
        );
        let last = &self.top.resid[self.cfg.num_hidden_layers];
        let rstd = &self.top.normf_rstd;
        dev.rmsnorm_backward(&mut g.dres, dpf, &g.dln, last, pf, rstd, self.layout.norm)?;
        Ok(())
    }

    /// Decoder layer `l` backward: dres = d(resid[l+1]) -> d(resid[l]); adds into group
    /// `Block(l)`'s gradients. With checkpointing, call `layer_forward(l)` first.
    pub fn layer_backward(&mut self, dev: &D, l: usize) -> Result<(), ModelError> {
        let s = self.shape();
        let o = self.layout.block;
        let im = self.cfg.intermediate_size;
        let (p, dp) = (
            fetched(&self.bufs.params, 1 + l),
            fetched_mut(&mut self.bufs.grads, 1 + l),
        );
        let a = &self.layers[if self.checkpointing { 0 } else { l }];
        let inp = &self.top.resid[l];
        let g = &mut self.g;
        dev.zero(&mut g.dmlp_h)?;
        dev.matmul_backward(&mut g.dmlp_h, dp, &g.dres, &a.mlp_h, p, o.down)?;
        dev.zero(&mut g.dgate_up)?;
        dev.swiglu_backward(&mut g.dgate_up, &a.gate_up, &g.dmlp_h, im)?;
        dev.zero(&mut g.dln)?;
        dev.matmul_backward(&mut g.dln, dp, &g.dgate_up, &a.ln2, p, o.gate_up)?;
        dev.rmsnorm_backward(&mut g.dres, dp, &g.dln, &a.resid2, p, &a.ln2_rstd, o.ln2)?;
        dev.zero(&mut g.datty)?;
        dev.matmul_backward(&mut g.datty, dp, &g.dres, &a.atty, p, o.o)?;
        dev.zero(&mut g.dqkv)?;
        dev.attention_backward(&mut g.dqkv, &mut g.datt, &g.datty, &a.qkv, &a.att, s)?;
        dev.rope_backward(&mut g.dqkv, &self.top.rope, s)?;
        let dqkv = match (&mut g.dqkv_raw, &a.qkv_raw, &a.qk_rstd, o.qk_norm) {
            (Some(draw), Some(raw), Some(rstd), Some(norm)) => {
                dev.zero(draw)?;
                dev.qk_norm_backward(draw, dp, &g.dqkv, raw, p, rstd, norm, s)?;
                &*draw
            }
            _ => &g.dqkv,
        };
        dev.zero(&mut g.dln)?;
        dev.matmul_backward(&mut g.dln, dp, dqkv, &a.ln1, p, o.qkv)?;
        dev.rmsnorm_backward(&mut g.dres, dp, &g.dln, inp, p, &a.ln1_rstd, o.ln1)?;
        Ok(())
    }

    /// dres (N,C) -> d(embed_tokens) (+=). Adds into the `Embed` gradients.
    pub fn embed_backward(&mut self, dev: &D, tokens: &[u32]) -> Result<(), ModelError> {
        let (t, c) = (self.t, self.cfg.hidden_size);
        let demb = fetched_mut(&mut self.bufs.grads, 0);
        dev.encoder_backward(demb, 0, None, &self.g.dres, tokens, t, c)?;
        Ok(())
    }

    /// Logits of position `pos` in sequence `seq` (after the head's forward).
    pub fn logits_at(&self, dev: &D, seq: usize, pos: usize) -> Result<Vec<f32>, ModelError> {
        let v = self.cfg.vocab_size;
        let mut out = vec![0.0f32; v];
        dev.wait(dev.download(&self.top.logits, (seq * self.t + pos) * v, &mut out)?)?;
        Ok(out)
    }

    fn check_len(&self, what: &str, v: &[u32]) -> Result<(), ModelError> {
        if v.len() != self.b * self.t {
            return Err(ModelError::Shape(format!(
                "{what}: {} ids given for a {} x {} micro-batch",
                v.len(),
                self.b,
                self.t
            )));
        }
        Ok(())
    }
}

fn shape(cfg: &LlamaConfig, b: usize, t: usize) -> AttnShape {
    AttnShape {
        b,
        t,
        nh: cfg.num_attention_heads,
        n_kv_head: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
    }
}

/// Hugging Face-style name of a group for logs and traces.
fn group_name(g: Group) -> String {
    match g {
        Group::Embed => "model.embed_tokens".into(),
        Group::Block(l) => format!("model.layers.{l}"),
        Group::Final => "model.norm, lm_head".into(),
    }
}

/// The seeded initial parameters of `cfg` (as [`Model::seeded_init`] gives them), one group
/// range at a time in layout order: transformers' `LlamaPreTrainedModel._init_weights` with
/// `initializer_range` 0.02 — every weight matrix and the embeddings N(0, 0.02), biases 0,
/// norm weights 1. What a random-weights folder for benchmarks is made of.
pub fn seeded_source(cfg: &LlamaConfig, seed: u64) -> ParamSource {
    let layout = llama_layout(cfg);
    let mut init = SeededInit::new(seed);
    Box::new(move |r| {
        Ok(init.next_range(&layout.tensors, r, |t| {
            if t.name.ends_with(".bias") {
                Fill::Zeros
            } else if t.shape.len() == 1 {
                Fill::Ones // RMSNorm weights
            } else {
                Fill::Normal(0.02)
            }
        }))
    })
}

impl<D: Device> Model<D> for Llama<D> {
    fn groups(&self) -> &[GroupSpec] {
        &self.group_specs
    }

    fn num_params(&self) -> usize {
        self.layout.total
    }

    fn stages(&self) -> &Stages {
        &self.stages
    }

    fn forward(
        &mut self,
        dev: &D,
        stage: usize,
        tokens: &[u32],
        targets: &[u32],
    ) -> Result<Option<f32>, ModelError> {
        match DecoderStep::forward(stage, self.cfg.num_hidden_layers) {
            DecoderStep::Embed => self.embed_forward(dev, tokens)?,
            DecoderStep::Block(l) => self.layer_forward(dev, l)?,
            DecoderStep::Head => self.head_forward(dev)?,
            DecoderStep::Loss => return self.loss_forward(dev, targets).map(Some),
        }
        Ok(None)
    }

    fn backward(
        &mut self,
        dev: &D,
        stage: usize,
        tokens: &[u32],
        targets: &[u32],
        grad_scale: f32,
    ) -> Result<(), ModelError> {
        match DecoderStep::backward(stage, self.cfg.num_hidden_layers) {
            DecoderStep::Head | DecoderStep::Loss => self.head_backward(dev, targets, grad_scale),
            DecoderStep::Block(l) => self.layer_backward(dev, l),
            DecoderStep::Embed => self.embed_backward(dev, tokens),
        }
    }

    fn seeded_init(&self, seed: u64) -> ParamSource {
        seeded_source(&self.cfg, seed)
    }

    fn buffers_mut(&mut self) -> &mut GroupBuffers<D::Buffer> {
        &mut self.bufs
    }
}
