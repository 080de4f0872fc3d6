//! Bounds on the sizes a config may ask for, so that nothing downstream (the parameter layout,
//! `zinf estimate`'s arithmetic, the engine's allocations) can overflow, abort or spin on a
//! number a user typed. Two kinds: per-key ranges (a model dimension past any real model's is a
//! typo, not a plan), and the machine check: a model whose state cannot fit this machine's RAM
//! plus the free disk it would offload to is refused with the numbers.
//!
//! Counting is checked arithmetic (`None` on overflow); the shape's closed form is tested
//! against the one `param_layout`.

use super::{Config, Issue, OffloadDevice};
use crate::model::{GptConfig, ModelSpec};

/// Inclusive ranges of the `zinf.model` keys. Real models stay well inside them (Llama 3.1
/// 405B: 126 layers, 16384 wide, 128 heads, 128256 tokens, 131072 positions).
pub const MODEL_LIMITS: [(&str, u64, u64); 5] = [
    ("n_layer", 1, 4096),
    ("n_head", 1, 65_536),
    ("n_embd", 1, 65_536),
    ("vocab_size", 1, 1 << 22),
    ("block_size", 1, 1 << 22),
];

/// The largest batch-size key (sequences): 2^20 = 1,048,576.
pub const MAX_BATCH: u64 = 1 << 20;

/// Parameters of a GPT-2 shape, computed without building the layout (which would allocate a
/// name per tensor): wte + wpe + per block 12·C² + 13·C + the final LayerNorm. `None` on
/// overflow.
pub fn param_count(m: &GptConfig) -> Option<u64> {
    let (l, c, v, t) = (
        m.n_layer as u64,
        m.n_embd as u64,
        m.vocab_size as u64,
        m.block_size as u64,
    );
    let block = c
        .checked_mul(c)?
        .checked_mul(12)?
        .checked_add(c.checked_mul(13)?)?;
    v.checked_add(t)?
        .checked_mul(c)?
        .checked_add(block.checked_mul(l)?)?
        .checked_add(c.checked_mul(2)?)
}

/// Elements of the largest single tensor: `wte` (vocab × C), `wpe` (positions × C) or an MLP
/// weight (4·C × C). Saturates instead of overflowing.
pub fn largest_tensor(m: &GptConfig) -> u64 {
    let c = m.n_embd as u64;
    [
        m.vocab_size as u64,
        m.block_size as u64,
        4u64.saturating_mul(c),
    ]
    .into_iter()
    .map(|rows| rows.saturating_mul(c))
    .max()
    .unwrap_or(0)
}

/// Parameters of any model, counted without building its layout; `None` on overflow.
pub fn spec_param_count(m: &ModelSpec) -> Option<u64> {
    match m {
        ModelSpec::Gpt2(c) => param_count(c),
        ModelSpec::Llama(c) => {
            crate::model::llama::layout::llama_layout_checked(c).map(|n| n as u64)
        }
    }
}

/// Elements of the largest single tensor of any model. Saturates instead of overflowing.
pub fn spec_largest_tensor(m: &ModelSpec) -> u64 {
    match m {
        ModelSpec::Gpt2(c) => largest_tensor(c),
        ModelSpec::Llama(c) => {
            let (h, i, v) = (
                c.hidden_size as u64,
                c.intermediate_size as u64,
                c.vocab_size as u64,
            );
            let q = (c.num_attention_heads as u64).saturating_mul(c.head_dim as u64);
            [v, i, q]
                .into_iter()
                .map(|r| r.saturating_mul(h))
                .max()
                .unwrap_or(0)
        }
    }
}

/// The least bytes of model state a run needs somewhere (device, RAM or disk): the stored
/// parameters plus DeepSpeed's 12 B of fp32 master, m and v per parameter (gradients can
/// stream, so they are not counted). `None` on overflow.
pub fn min_state_bytes(c: &Config) -> Option<u64> {
    spec_param_count(&c.zinf.model)?.checked_mul(c.param_dtype_bytes() + 12)
}

impl Config {
    /// Refuses a model whose state cannot fit this machine: `ram` bytes of memory plus the free
    /// bytes `free` reports under each `nvme_path` (or the working folder when nothing goes to
    /// NVMe). Unknown sizes (`None`) are not held against the config. The error is at
    /// `zinf.model` and carries both numbers.
    pub fn check_fits(
        &self,
        ram: Option<u64>,
        free: &dyn Fn(&str) -> Option<u64>,
    ) -> Result<(), Issue> {
        let z = &self.zero_optimization;
        fn nvme(d: OffloadDevice, p: &Option<String>) -> Option<&str> {
            (d == OffloadDevice::Nvme).then_some(p.as_deref()).flatten()
        }
        let mut paths: Vec<&str> = [
            nvme(z.offload_param.device, &z.offload_param.nvme_path),
            nvme(z.offload_optimizer.device, &z.offload_optimizer.nvme_path),
        ]
        .into_iter()
        .flatten()
        .collect();
        paths.dedup();
        if paths.is_empty() {
            paths.push(".");
        }
        let disk = paths
            .iter()
            .filter_map(|p| free(p))
            .fold(0u64, u64::saturating_add);
        if ram.is_none() && disk == 0 {
            return Ok(());
        }
        let capacity = ram.unwrap_or(0).saturating_add(disk);
        let params = spec_param_count(&self.zinf.model);
        let need = min_state_bytes(self);
        if need.is_some_and(|n| n <= capacity) {
            return Ok(());
        }
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let count = params.map_or("more than 2^64".into(), |p| format!("{p}"));
        let bytes = need.map_or("more than 2^64 B".into(), |n| format!("{:.1} GiB", gib(n)));
        Err(Issue {
            path: "zinf.model".into(),
            message: format!(
                "{count} parameters need at least {bytes} of model state ({} B parameters + \
                 12 B fp32 master, m and v each) but this machine has {:.1} GiB of RAM + \
                 {:.1} GiB free under {}; make the model smaller",
                self.param_dtype_bytes(),
                gib(ram.unwrap_or(0)),
                gib(disk),
                paths.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form_count_matches_the_layout() {
        let small = GptConfig::gpt2_124m();
        for m in [
            small,
            GptConfig {
                n_layer: 3,
                n_head: 4,
                n_embd: 64,
                vocab_size: 1000,
                block_size: 77,
            },
        ] {
            assert_eq!(param_count(&m), Some(m.num_params() as u64));
        }
        assert_eq!(largest_tensor(&small), 50257 * 768);
        let huge = GptConfig {
            n_layer: usize::MAX,
            ..small
        };
        assert_eq!(param_count(&huge), None);
    }
}
