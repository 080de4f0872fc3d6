//! GPT-2 forward and backward on a [`Device`], one block at a time.
//!
//! `forward` is: embed, then `block_forward` for each layer, then final LayerNorm and the tied
//! LM head; `backward` is that loop read bottom-up, one call per line. Each block reads only
//! its own parameter buffer (one contiguous group of the layout), so an engine can fetch a
//! block's parameters before its call and release them after. With activation checkpointing
//! only each block's input is kept; backward recomputes the block's forward into one scratch
//! set of activations just before its backward.
//!
//! All buffers — fp32 working parameters, fp32 gradients, activations — are allocated in
//! [`Gpt::new`], so an over-budget model fails there, before any step runs.

use super::layout::{param_layout, BlockOffsets, Group, ParamLayout};
use super::params::{HostParams, ParamInit};
use super::stages::{
    decoder_stages, fetched, fetched_mut, DecoderStep, GroupBuffers, GroupSpec, Model, ParamSource,
    Stages,
};
use super::{GptConfig, ModelError};
use crate::device::{AttnShape, Device, DeviceError};

/// Activations of one block kept for its backward (llm.c names).
pub struct BlockActs<B> {
    ln1: B,      // (B,T,C)
    ln1_mean: B, // (B,T)
    ln1_rstd: B, // (B,T)
    qkv: B,      // (B,T,3C)
    atty: B,     // (B,T,C)
    att: B,      // (B,NH,T,T)
    resid2: B,   // (B,T,C)
    ln2: B,      // (B,T,C)
    ln2_mean: B, // (B,T)
    ln2_rstd: B, // (B,T)
    fch: B,      // (B,T,4C)
    fch_gelu: B, // (B,T,4C)
}

impl<B> BlockActs<B> {
    fn alloc<D: Device<Buffer = B>>(dev: &D, s: AttnShape, l: usize) -> Result<Self, DeviceError> {
        let (n, c) = (s.b * s.t, s.q_width());
        let a = |name: &str, len: usize| dev.alloc(&format!("activations h.{l}.{name}"), len);
        Ok(BlockActs {
            ln1: a("ln1", n * c)?,
            ln1_mean: a("ln1_mean", n)?,
            ln1_rstd: a("ln1_rstd", n)?,
            qkv: a("qkv", n * 3 * c)?,
            atty: a("atty", n * c)?,
            att: a("att", s.b * s.nh * s.t * s.t)?,
            resid2: a("resid2", n * c)?,
            ln2: a("ln2", n * c)?,
            ln2_mean: a("ln2_mean", n)?,
            ln2_rstd: a("ln2_rstd", n)?,
            fch: a("fch", n * 4 * c)?,
            fch_gelu: a("fch_gelu", n * 4 * c)?,
        })
    }
}

/// Elements of fp32 device memory [`Gpt::without_groups`] allocates for a micro-batch of `b`
/// sequences of `t` tokens: the activations kept for backward (every block's, or with
/// activation checkpointing one block's, recomputed in turn), the residual stream, the logits,
/// and the backward scratch shared by all blocks. Exactly what those allocations sum to (a
/// test holds them together); `zinf estimate` prices the device with it. u128: an absurd
/// config must not overflow.
pub fn activation_elems(cfg: &GptConfig, b: usize, t: usize, checkpointing: bool) -> u128 {
    let (b, t) = (b as u128, t as u128);
    let (c, v, nh, l) = (
        cfg.n_embd as u128,
        cfg.vocab_size as u128,
        cfg.n_head as u128,
        cfg.n_layer as u128,
    );
    let n = b * t;
    let att = b * nh * t * t;
    // BlockActs: ln1, atty, resid2, ln2 (C each), qkv (3C), fch and fch_gelu (4C each); four
    // LayerNorm means/rstds; the attention matrix.
    let block = 15 * n * c + 4 * n + att;
    let kept = if checkpointing { 1 } else { l };
    // TopActs: L + 1 residuals, tmp, ln_f (C each), ln_f mean/rstd and losses, the logits.
    let top = (l + 3) * n * c + 3 * n + n * v;
    // GradScratch: dres, dln, datty (C), dqkv (3C), dfch, dfch_gelu (4C), datt, dlogits.
    let scratch = 14 * n * c + att + n * v;
    kept * block + top + scratch
}

/// Gradient scratch shared by all blocks during backward.
pub struct GradScratch<B> {
    dres: B,      // (B,T,C) gradient of the residual stream
    dln: B,       // (B,T,C)
    datty: B,     // (B,T,C)
    dqkv: B,      // (B,T,3C)
    datt: B,      // (B,NH,T,T)
    dfch: B,      // (B,T,4C)
    dfch_gelu: B, // (B,T,4C)
    dlogits: B,   // (B,T,V)
}

/// Forward-only buffers outside the blocks.
struct TopActs<B> {
    resid: Vec<B>, // L+1 x (B,T,C): resid[l] is block l's input
    tmp: B,        // (B,T,C) projection output before the residual add
    lnf: B,        // (B,T,C)
    lnf_mean: B,   // (B,T)
    lnf_rstd: B,   // (B,T)
    logits: B,     // (B,T,V), softmax probabilities after the loss
    losses: B,     // (B,T)
}

/// A GPT-2 model resident on a device for micro-batches of `b` sequences of `t` tokens.
pub struct Gpt<D: Device> {
    pub cfg: GptConfig,
    pub layout: ParamLayout,
    pub b: usize,
    pub t: usize,
    pub checkpointing: bool,
    // One fp32 working copy and one fp32 gradient per group, layout order. `None` while an
    // engine has the group released; an op that reads a released group is a programmer error.
    bufs: GroupBuffers<D::Buffer>,
    blocks: Vec<BlockActs<D::Buffer>>,
    top: TopActs<D::Buffer>,
    g: GradScratch<D::Buffer>,
    group_specs: Vec<GroupSpec>,
    stages: Stages,
}

impl<D: Device> Gpt<D> {
    /// Allocates every device buffer for batches of `b` x `t` tokens (`t <= block_size`):
    /// activations and every group's parameters and gradients (the resident model).
    pub fn new(
        dev: &D,
        cfg: GptConfig,
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

    /// Allocates activations and scratch only; an engine installs each group's parameter and
    /// gradient buffers before the ops that read them ([`Model::install_params`]).
    pub fn without_groups(
        dev: &D,
        cfg: GptConfig,
        b: usize,
        t: usize,
        checkpointing: bool,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        if b == 0 || t == 0 || t > cfg.block_size {
            return Err(ModelError::Shape(format!(
                "micro-batch {b} x {t} tokens: need b >= 1 and 1 <= t <= block_size {}",
                cfg.block_size
            )));
        }
        let layout = param_layout(&cfg);
        let s = AttnShape::mha(b, t, cfg.n_embd, cfg.n_head);
        let (n, c, v) = (b * t, cfg.n_embd, cfg.vocab_size);
        let bufs = GroupBuffers::new(layout.groups.iter().map(|(_, r)| r.len()).collect());
        let kept = if checkpointing { 1 } else { cfg.n_layer };
        let blocks = (0..kept)
            .map(|l| BlockActs::alloc(dev, s, l))
            .collect::<Result<_, _>>()?;
        let a = |name: &str, len: usize| dev.alloc(name, len);
        let top = TopActs {
            resid: (0..=cfg.n_layer)
                .map(|l| a(&format!("residual {l}"), n * c))
                .collect::<Result<_, _>>()?,
            tmp: a("activations tmp", n * c)?,
            lnf: a("activations ln_f", n * c)?,
            lnf_mean: a("activations ln_f mean", n)?,
            lnf_rstd: a("activations ln_f rstd", n)?,
            logits: a("logits", n * v)?,
            losses: a("losses", n)?,
        };
        let g = GradScratch {
            dres: a("grad scratch dres", n * c)?,
            dln: a("grad scratch dln", n * c)?,
            datty: a("grad scratch datty", n * c)?,
            dqkv: a("grad scratch dqkv", n * 3 * c)?,
            datt: a("grad scratch datt", b * cfg.n_head * t * t)?,
            dfch: a("grad scratch dfch", n * 4 * c)?,
            dfch_gelu: a("grad scratch dfch_gelu", n * 4 * c)?,
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
        Ok(Gpt {
            cfg,
            layout,
            b,
            t,
            checkpointing,
            bufs,
            blocks,
            top,
            g,
            group_specs,
            stages: decoder_stages(cfg.n_layer, true),
        })
    }

    fn shape(&self) -> AttnShape {
        AttnShape::mha(self.b, self.t, self.cfg.n_embd, self.cfg.n_head)
    }

    /// Index of a group in layout order.
    pub fn group_index(&self, g: Group) -> usize {
        match g {
            Group::Embed => 0,
            Group::Block(i) => 1 + i,
            Group::Final => self.cfg.n_layer + 1,
        }
    }

    /// Uploads one group's parameters (fp16/bf16 widened to the fp32 working copy) into its
    /// installed buffer.
    pub fn fetch_group(&mut self, dev: &D, g: Group, host: &HostParams) -> Result<(), ModelError> {
        let i = self.group_index(g);
        let r = self.layout.groups[i].1.clone();
        let ev = dev.upload(fetched_mut(&mut self.bufs.params, i), 0, host.slice(r))?;
        dev.wait(ev)?;
        Ok(())
    }

    /// Uploads every group (the resident trainer does this after each optimizer step).
    pub fn load_params(&mut self, dev: &D, host: &HostParams) -> Result<(), ModelError> {
        if host.len() != self.layout.total {
            return Err(ModelError::Shape(format!(
                "{} parameters given, the layout has {}",
                host.len(),
                self.layout.total
            )));
        }
        let groups: Vec<Group> = self.layout.groups.iter().map(|(g, _)| *g).collect();
        for g in groups {
            self.fetch_group(dev, g, host)?;
        }
        Ok(())
    }

    /// Sets every gradient to zero (its own step, before a batch's first micro-batch).
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
            let ev = dev.download(fetched(&self.bufs.grads, i), 0, &mut out[r.clone()])?;
            dev.wait(ev)?;
        }
        Ok(())
    }

    /// tokens (B,T) -> logits (B,T,V), left in the logits buffer.
    pub fn forward_logits(&mut self, dev: &D, tokens: &[u32]) -> Result<(), ModelError> {
        self.embed_forward(dev, tokens)?;
        for l in 0..self.cfg.n_layer {
            self.block_forward(dev, l)?;
        }
        self.head_forward(dev)
    }

    /// tokens, targets (B,T) -> mean cross-entropy loss; keeps what backward needs.
    pub fn forward(&mut self, dev: &D, tokens: &[u32], targets: &[u32]) -> Result<f32, ModelError> {
        self.forward_logits(dev, tokens)?;
        self.loss_forward(dev, targets)
    }

    /// Adds `loss_scale * d(mean loss)/d(params)` into the gradients; call after `forward`.
    /// The forward loop read bottom-up; with checkpointing each block is recomputed first.
    pub fn backward(
        &mut self,
        dev: &D,
        tokens: &[u32],
        targets: &[u32],
        loss_scale: f32,
    ) -> Result<(), ModelError> {
        self.head_backward(dev, targets, loss_scale)?;
        for l in (0..self.cfg.n_layer).rev() {
            if self.checkpointing {
                self.block_forward(dev, l)?;
            }
            self.block_backward(dev, l)?;
        }
        self.embed_backward(dev, tokens)
    }

    /// tokens (B,T) -> resid[0] (B,T,C) = wte[tokens] + wpe. Reads the `Embed` group.
    pub fn embed_forward(&mut self, dev: &D, tokens: &[u32]) -> Result<(), ModelError> {
        self.check_len("tokens", tokens)?;
        let (t, c, v) = (self.t, self.cfg.n_embd, self.cfg.vocab_size);
        let (emb, wpe) = (fetched(&self.bufs.params, 0), self.layout.wpe_off);
        dev.encoder_forward(&mut self.top.resid[0], tokens, emb, 0, Some(wpe), t, c, v)?;
        Ok(())
    }

    /// resid[L] (B,T,C) -> ln_f -> logits (B,T,V). Reads the `Final` and `Embed` groups.
    pub fn head_forward(&mut self, dev: &D) -> Result<(), ModelError> {
        let top = &mut self.top;
        let last = &top.resid[self.cfg.n_layer];
        let fin = fetched(&self.bufs.params, self.cfg.n_layer + 1);
        let (lnf, mean, rstd) = (&mut top.lnf, &mut top.lnf_mean, &mut top.lnf_rstd);
        dev.layernorm_forward(lnf, mean, rstd, last, fin, self.layout.ln_f)?;
        let emb = fetched(&self.bufs.params, 0);
        dev.matmul_forward(&mut top.logits, &top.lnf, emb, self.layout.head)?;
        Ok(())
    }

    /// logits (B,T,V) -> probabilities in place, and the mean loss over targets (B,T).
    pub fn loss_forward(&mut self, dev: &D, targets: &[u32]) -> Result<f32, ModelError> {
        self.check_len("targets", targets)?;
        let v = self.cfg.vocab_size;
        dev.softmax_crossentropy_forward(&mut self.top.logits, &mut self.top.losses, targets, v)?;
        let mut losses = vec![0.0f32; self.b * self.t];
        dev.wait(dev.download(&self.top.losses, 0, &mut losses)?)?;
        // Summed in f64 in token order: the same losses give the same mean on every backend.
        let sum: f64 = losses.iter().map(|&x| x as f64).sum();
        Ok((sum / super::stages::valid_targets(targets) as f64) as f32)
    }

    /// Loss -> d(resid[L]) in the residual-gradient scratch; `Embed` (tied head) and `Final`
    /// gradients (+=). `loss_scale` multiplies every gradient (fp16 loss scaling).
    pub fn head_backward(
        &mut self,
        dev: &D,
        targets: &[u32],
        loss_scale: f32,
    ) -> Result<(), ModelError> {
        self.check_len("targets", targets)?;
        let (v, nl) = (self.cfg.vocab_size, self.cfg.n_layer);
        let dloss = loss_scale / super::stages::valid_targets(targets) as f32;
        let (g, top) = (&mut self.g, &self.top);
        dev.zero(&mut g.dlogits)?;
        dev.softmax_crossentropy_backward(&mut g.dlogits, &top.logits, targets, v, dloss)?;
        dev.zero(&mut g.dln)?;
        let (demb, rest) = self.bufs.grads.split_at_mut(1);
        let (emb, fin) = (
            fetched(&self.bufs.params, 0),
            fetched(&self.bufs.params, nl + 1),
        );
        dev.matmul_backward(
            &mut g.dln,
            fetched_mut(demb, 0),
            &g.dlogits,
            &top.lnf,
            emb,
            self.layout.head,
        )?;
        dev.zero(&mut g.dres)?;
        let (mean, rstd) = (&top.lnf_mean, &top.lnf_rstd);
        let ln_f = self.layout.ln_f;
        dev.layernorm_backward(
            &mut g.dres,
            fetched_mut(rest, nl),
            &g.dln,
            &top.resid[nl],
            fin,
            mean,
            rstd,
            ln_f,
        )?;
        Ok(())
    }

    /// d(resid[0]) -> `Embed` gradients (+=).
    pub fn embed_backward(&mut self, dev: &D, tokens: &[u32]) -> Result<(), ModelError> {
        self.check_len("tokens", tokens)?;
        let (t, c, wpe) = (self.t, self.cfg.n_embd, self.layout.wpe_off);
        let demb = fetched_mut(&mut self.bufs.grads, 0);
        dev.encoder_backward(demb, 0, Some(wpe), &self.g.dres, tokens, t, c)?;
        Ok(())
    }

    /// The fp32 gradient buffer of one group (an engine streams it out after the group's
    /// backward).
    pub fn group_grads(&self, g: Group) -> &D::Buffer {
        fetched(&self.bufs.grads, self.group_index(g))
    }

    fn check_len(&self, what: &str, ids: &[u32]) -> Result<(), ModelError> {
        if ids.len() != self.b * self.t {
            return Err(ModelError::Shape(format!(
                "{what}: {} ids given, the model runs batches of {} x {}",
                ids.len(),
                self.b,
                self.t
            )));
        }
        Ok(())
    }

    /// resid[l] (B,T,C) -> resid[l+1] (B,T,C) through block l. Reads only `Block(l)`.
    pub fn block_forward(&mut self, dev: &D, l: usize) -> Result<(), ModelError> {
        let s = self.shape();
        let o: BlockOffsets = self.layout.block;
        let p = fetched(&self.bufs.params, 1 + l);
        let a = &mut self.blocks[if self.checkpointing { 0 } else { l }];
        let (ins, outs) = self.top.resid.split_at_mut(l + 1);
        let (inp, out, tmp) = (&ins[l], &mut outs[0], &mut self.top.tmp);
        dev.layernorm_forward(&mut a.ln1, &mut a.ln1_mean, &mut a.ln1_rstd, inp, p, o.ln1)?;
        dev.matmul_forward(&mut a.qkv, &a.ln1, p, o.c_attn)?;
        dev.attention_forward(&mut a.atty, &mut a.att, &a.qkv, s)?;
        dev.matmul_forward(tmp, &a.atty, p, o.attn_proj)?;
        dev.residual_forward(&mut a.resid2, inp, tmp)?;
        dev.layernorm_forward(
            &mut a.ln2,
            &mut a.ln2_mean,
            &mut a.ln2_rstd,
            &a.resid2,
            p,
            o.ln2,
        )?;
        dev.matmul_forward(&mut a.fch, &a.ln2, p, o.c_fc)?;
        dev.gelu_forward(&mut a.fch_gelu, &a.fch)?;
        dev.matmul_forward(tmp, &a.fch_gelu, p, o.mlp_proj)?;
        dev.residual_forward(out, &a.resid2, tmp)?;
        Ok(())
    }

    /// dres: d(resid[l+1]) -> d(resid[l]); adds into `Block(l)` gradients only. With
    /// checkpointing, call `block_forward(l)` first to recompute its activations.
    pub fn block_backward(&mut self, dev: &D, l: usize) -> Result<(), ModelError> {
        let s = self.shape();
        let o: BlockOffsets = self.layout.block;
        let (p, dp) = (
            fetched(&self.bufs.params, 1 + l),
            fetched_mut(&mut self.bufs.grads, 1 + l),
        );
        let a = &self.blocks[if self.checkpointing { 0 } else { l }];
        let inp = &self.top.resid[l];
        let g = &mut self.g;
        dev.zero(&mut g.dfch_gelu)?;
        dev.matmul_backward(&mut g.dfch_gelu, dp, &g.dres, &a.fch_gelu, p, o.mlp_proj)?;
        dev.zero(&mut g.dfch)?;
        dev.gelu_backward(&mut g.dfch, &a.fch, &g.dfch_gelu)?;
        dev.zero(&mut g.dln)?;
        dev.matmul_backward(&mut g.dln, dp, &g.dfch, &a.ln2, p, o.c_fc)?;
        dev.layernorm_backward(
            &mut g.dres,
            dp,
            &g.dln,
            &a.resid2,
            p,
            &a.ln2_mean,
            &a.ln2_rstd,
            o.ln2,
        )?;
        dev.zero(&mut g.datty)?;
        dev.matmul_backward(&mut g.datty, dp, &g.dres, &a.atty, p, o.attn_proj)?;
        dev.zero(&mut g.dqkv)?;
        dev.attention_backward(&mut g.dqkv, &mut g.datt, &g.datty, &a.qkv, &a.att, s)?;
        dev.zero(&mut g.dln)?;
        dev.matmul_backward(&mut g.dln, dp, &g.dqkv, &a.ln1, p, o.c_attn)?;
        dev.layernorm_backward(
            &mut g.dres,
            dp,
            &g.dln,
            inp,
            p,
            &a.ln1_mean,
            &a.ln1_rstd,
            o.ln1,
        )?;
        Ok(())
    }

    /// Logits of position `pos` in sequence `seq` (after `forward_logits`).
    pub fn logits_at(&self, dev: &D, seq: usize, pos: usize) -> Result<Vec<f32>, ModelError> {
        let v = self.cfg.vocab_size;
        let mut out = vec![0.0f32; v];
        dev.wait(dev.download(&self.top.logits, (seq * self.t + pos) * v, &mut out)?)?;
        Ok(out)
    }
}

/// Hugging Face-style name of a group for logs and traces.
fn group_name(g: Group) -> String {
    match g {
        Group::Embed => "embed (wte, wpe)".into(),
        Group::Block(l) => format!("h.{l}"),
        Group::Final => "ln_f".into(),
    }
}

impl<D: Device> Model<D> for Gpt<D> {
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
        match DecoderStep::forward(stage, self.cfg.n_layer) {
            DecoderStep::Embed => self.embed_forward(dev, tokens)?,
            DecoderStep::Block(l) => self.block_forward(dev, l)?,
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
        match DecoderStep::backward(stage, self.cfg.n_layer) {
            DecoderStep::Head | DecoderStep::Loss => self.head_backward(dev, targets, grad_scale),
            DecoderStep::Block(l) => self.block_backward(dev, l),
            DecoderStep::Embed => self.embed_backward(dev, tokens),
        }
    }

    fn seeded_init(&self, seed: u64) -> ParamSource {
        let layout = self.layout.clone();
        let mut gen = ParamInit::new(self.cfg.n_layer, seed);
        Box::new(move |r| Ok(gen.next_range(&layout, r)))
    }

    fn buffers_mut(&mut self) -> &mut GroupBuffers<D::Buffer> {
        &mut self.bufs
    }
}
