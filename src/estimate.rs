//! What a run will cost before it starts: bytes per tier (device, pinned host, pageable host,
//! NVMe) at peak, NVMe capacity against the free space under `nvme_path`, bytes moved per
//! optimizer step, the step time those bytes imply, and DeepSpeed's own
//! `estimate_zero3_model_states_mem_needs_all_live` table beside ours.
//!
//! This is arithmetic over the config and the model's parameter layout; it allocates nothing.
//! The engine reports its measured peaks beside these figures at start-up.

use crate::config::{Config, OffloadDevice};
use crate::tiers::layout::{
    chunk_bytes, is_persistent, opt_store_bytes, store_bytes, DEFAULT_CHUNK_BYTES,
};
use serde::Serialize;

/// Parameter statistics the estimate needs, from the model's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelStats {
    pub params: u64,
    /// Elements of the largest single tensor (DeepSpeed's "largest layer": GPT-2's `wte`).
    pub largest_tensor: u64,
    /// Elements of the largest group fetched at once (one transformer block, or the embeddings).
    pub largest_group: u64,
    /// Elements of groups of at most `stage3_param_persistence_threshold` elements, kept
    /// resident (the engine's rule, `tiers::layout::is_persistent`).
    pub persistent: u64,
    /// Bytes one write of every parameter shard moves to the swap store (chunks padded to
    /// 4 KiB, as the store moves them).
    pub param_store_bytes: u64,
    /// Bytes one read (or write) of every optimizer unit's state moves (three fp32 shards a
    /// unit of at most `sub_group_size` elements, padded).
    pub opt_store_bytes: u64,
}

impl ModelStats {
    /// From the config's model and its persistence threshold, via the one parameter layout.
    pub fn from_config(config: &Config) -> ModelStats {
        let layout = crate::model::param_layout(&config.zinf.model);
        let threshold = config.zero_optimization.param_persistence_threshold;
        let largest_tensor = layout.tensors.iter().map(|t| t.numel()).max().unwrap_or(0);
        let group_lens = || layout.groups.iter().map(|(_, r)| r.len() as u64);
        // Persistent groups by the engine's own rule (whole groups are fetched and kept).
        let persistent = group_lens()
            .filter(|&n| is_persistent(n, threshold))
            .fold(0, u64::saturating_add);
        let d = config.param_dtype_bytes();
        let sub_group_size = config.zero_optimization.sub_group_size.max(1);
        let largest_group = group_lens().max().unwrap_or(0);
        let chunk = chunk_bytes(DEFAULT_CHUNK_BYTES, sub_group_size.min(largest_group));
        ModelStats {
            params: layout.total as u64,
            largest_tensor: largest_tensor as u64,
            largest_group,
            persistent,
            param_store_bytes: group_lens()
                .map(|n| store_bytes(n.saturating_mul(d), chunk))
                .fold(0, u64::saturating_add),
            opt_store_bytes: group_lens()
                .map(|n| opt_store_bytes(n, sub_group_size, chunk))
                .fold(0, u64::saturating_add),
        }
    }
}

/// One contribution to a tier's peak, named so users see where the bytes go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub what: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tier {
    pub bytes: u64,
    pub items: Vec<Item>,
}

impl Tier {
    fn add(&mut self, what: impl Into<String>, bytes: u64) {
        if bytes > 0 {
            self.bytes = self.bytes.saturating_add(bytes);
            self.items.push(Item {
                what: what.into(),
                bytes,
            });
        }
    }
}

/// Bytes moved per optimizer step (all micro-batches of one step).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Traffic {
    pub nvme_read_bytes: u64,
    pub nvme_write_bytes: u64,
    pub host_to_device_bytes: u64,
    pub device_to_host_bytes: u64,
}

/// One row of DeepSpeed's `estimate_zero3_model_states_mem_needs_all_live` (1 GPU, 1 node).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeepSpeedRow {
    pub offload_param: &'static str,
    pub offload_optimizer: &'static str,
    pub zero_init: bool,
    pub cpu_bytes: u64,
    pub gpu_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NvmeSpace {
    pub path: String,
    pub needed_bytes: u64,
    /// Free bytes on the filesystem of `path` (or its nearest existing parent); none if unknown.
    pub available_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub model: ModelStats,
    pub param_dtype: &'static str,
    pub device: Tier,
    pub pinned_host: Tier,
    pub pageable_host: Tier,
    pub nvme: Tier,
    pub nvme_space: Vec<NvmeSpace>,
    pub traffic_per_step: Traffic,
    pub nvme_gbps: f64,
    /// (NVMe bytes per step) / bandwidth: no step can be faster than this.
    pub min_step_s_nvme: f64,
    pub deepspeed_all_live: Vec<DeepSpeedRow>,
    pub warnings: Vec<String>,
}

/// Bytes of fp32 activations kept for backward for one micro-batch (llm.c's accounting:
/// per block 18·B·T·C + 2·B·NH·T² + 4·B·T floats, plus embeddings and logits/probabilities).
pub fn activation_bytes(config: &Config) -> u64 {
    // u128: a config may ask for a batch and context whose activations overflow u64; the
    // estimate then says u64::MAX bytes (and the budget warning), never wraps or panics.
    let m = &config.zinf.model;
    let (b, t) = (
        u128::from(config.train_micro_batch_size_per_gpu),
        u128::from(config.zinf.data.seq_len),
    );
    let (c, nh, v, l) = (
        m.n_embd as u128,
        m.n_head as u128,
        m.vocab_size as u128,
        m.n_layer as u128,
    );
    let per_block = 18 * b * t * c + 2 * b * nh * t * t + 4 * b * t;
    let blocks_kept = if config.activation_checkpointing.enabled {
        // Only each block's input is kept; one block's full set lives during recompute.
        l * b * t * c + per_block
    } else {
        l * per_block
    };
    let outer = 2 * b * t * c + 2 * b * t * v;
    u64::try_from(4 * (blocks_kept + outer)).unwrap_or(u64::MAX)
}

/// The product of byte counts and multipliers, saturating at `u64::MAX` instead of wrapping.
fn mul(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, f| acc.saturating_mul(*f))
}

/// `*total += bytes`, saturating.
fn acc(total: &mut u64, bytes: u64) {
    *total = total.saturating_add(bytes);
}

/// Computes the estimate. `free_bytes` answers the free space under a path (statvfs in the CLI,
/// a fixed number in tests); `host_ram` is physical memory for the pinned-memory warning.
pub fn estimate(
    config: &Config,
    model: ModelStats,
    nvme_gbps: f64,
    host_ram: Option<u64>,
    free_bytes: &dyn Fn(&str) -> Option<u64>,
) -> Estimate {
    let z = &config.zero_optimization;
    let p = model.params;
    let d = config.param_dtype_bytes();
    let gas = config.gradient_accumulation_steps;
    let stage3 = z.stage == 3;
    // The swap store keeps two versions of each shard unless single-slot mode is asked for.
    let (versions, versions_note) = if config.zinf.swap_double_buffered {
        (2, ", two versions")
    } else {
        (1, "")
    };
    let param_dev = if stage3 {
        z.offload_param.device
    } else {
        OffloadDevice::None
    };
    let opt_dev = z.offload_optimizer.device;
    let (mut device, mut pinned, mut pageable, mut nvme) = (
        Tier::default(),
        Tier::default(),
        Tier::default(),
        Tier::default(),
    );
    let mut traffic = Traffic::default();
    let mut warnings = Vec::new();

    // Parameters.
    let working = if param_dev == OffloadDevice::None {
        p
    } else {
        z.prefetch_bucket_size
            .saturating_add(model.largest_group)
            .min(p)
            .max(model.largest_group)
    };
    match param_dev {
        OffloadDevice::None => device.add(
            format!("{}-bit parameters (all resident)", 8 * d),
            mul(&[d, p]),
        ),
        _ => device.add(
            format!(
                "{}-bit parameters: live working set and persistent ones",
                8 * d
            ),
            mul(&[d, working.saturating_add(model.persistent).min(p)]),
        ),
    }
    device.add(
        "fp32 compute copy of the live parameter groups",
        4 * working.min(2 * model.largest_group),
    );
    let host_params = if z.offload_param.pin_memory {
        &mut pinned
    } else {
        &mut pageable
    };
    match param_dev {
        OffloadDevice::None => {}
        OffloadDevice::Cpu => {
            host_params.add(
                format!("{}-bit parameters (offload_param cpu)", 8 * d),
                mul(&[d, p]),
            );
            acc(
                &mut traffic.host_to_device_bytes,
                mul(&[2, gas, d, p - model.persistent.min(p)]),
            );
        }
        OffloadDevice::Nvme => {
            let buffers = mul(&[z.offload_param.buffer_count, z.offload_param.buffer_size, d]);
            host_params.add(
                "parameter swap buffers (buffer_count × buffer_size)",
                buffers,
            );
            let cached = z.offload_param.max_in_cpu.min(p);
            host_params.add(
                "parameters cached in host memory (max_in_cpu)",
                mul(&[cached, d]),
            );
            nvme.add(
                format!("{}-bit parameters{versions_note}", 8 * d),
                mul(&[versions, d, p]),
            );
            // Every fetch of an uncached group reads it, forward and backward (an upper bound:
            // groups kept between the two, or served from host copies, are not read again).
            let uncached = (u128::from(model.param_store_bytes) * u128::from(p - cached))
                .checked_div(u128::from(p))
                .unwrap_or(0);
            let uncached = u64::try_from(uncached).unwrap_or(u64::MAX);
            acc(&mut traffic.nvme_read_bytes, mul(&[2, gas, uncached]));
            acc(&mut traffic.nvme_write_bytes, model.param_store_bytes);
            acc(
                &mut traffic.host_to_device_bytes,
                mul(&[2, gas, d, p - model.persistent.min(p)]),
            );
        }
    }

    // Gradients and optimizer state (fp32 master, m, v: 12 bytes per parameter).
    let opt_bytes = mul(&[12, p]);
    match opt_dev {
        OffloadDevice::None => {
            device.add("fp32 gradients", mul(&[4, p]));
            device.add("fp32 master weights, Adam m and v", opt_bytes);
        }
        _ => {
            device.add(
                "fp32 gradients of one block in flight",
                mul(&[4, model.largest_group]),
            );
            let host = if z.offload_optimizer.pin_memory {
                &mut pinned
            } else {
                &mut pageable
            };
            // The engine keeps whole-model gradients only when the update must wait for the
            // global norm (clipping, fp16) or sums micro-batches; otherwise each group's
            // gradients stream into its update (one group of scratch).
            let streams =
                crate::optim::update_streams(config.gradient_clipping, config.fp16.enabled);
            let whole = !streams || gas > 1;
            if whole {
                host.add(
                    "fp32 gradients, accumulated across micro-batches",
                    mul(&[4, p]),
                );
            } else {
                host.add(
                    "fp32 gradients of one group on their way to the update",
                    mul(&[4, model.largest_group]),
                );
            }
            acc(&mut traffic.device_to_host_bytes, mul(&[gas, 4, p]));
            if param_dev == OffloadDevice::None {
                // The updated 16-bit parameters go back to their resident device copy.
                acc(&mut traffic.host_to_device_bytes, mul(&[d, p]));
            }
        }
    }
    match opt_dev {
        OffloadDevice::None => {}
        OffloadDevice::Cpu => {
            let host = if z.offload_optimizer.pin_memory {
                &mut pinned
            } else {
                &mut pageable
            };
            host.add(
                "fp32 master weights, Adam m and v (offload_optimizer cpu)",
                opt_bytes,
            );
        }
        OffloadDevice::Nvme => {
            let oo = &z.offload_optimizer;
            let stages = 1 + u64::from(oo.pipeline_read) + u64::from(oo.pipeline_write);
            let sub_group = z.sub_group_size.min(p);
            let host = if oo.pin_memory {
                &mut pinned
            } else {
                &mut pageable
            };
            host.add(
                format!("optimizer swap buffers: {stages} sub-groups × 12 B × sub_group_size"),
                mul(&[stages, 12, sub_group]),
            );
            nvme.add(
                format!("fp32 master weights, Adam m and v{versions_note}"),
                mul(&[versions, opt_bytes]),
            );
            acc(&mut traffic.nvme_read_bytes, model.opt_store_bytes);
            acc(&mut traffic.nvme_write_bytes, model.opt_store_bytes);
        }
    }
    device.add(
        "activations kept for backward (fp32, one micro-batch)",
        activation_bytes(config),
    );
    if let Some(budget) = config.zinf.pinned_memory_budget {
        if budget < pinned.bytes {
            warnings.push(format!(
                "zinf.pinned_memory_budget ({budget} B) is below the {} B this placement pins; \
                 swaps will wait for buffers (slower, not an error)",
                pinned.bytes
            ));
        }
    }
    check_limits(
        config,
        model,
        &device,
        &pinned,
        &pageable,
        host_ram,
        &mut warnings,
    );
    let nvme_space = nvme_space(config, p, d, free_bytes, &mut warnings);
    let nvme_bytes = traffic
        .nvme_read_bytes
        .saturating_add(traffic.nvme_write_bytes);
    Estimate {
        model,
        param_dtype: config.param_dtype_name(),
        device,
        pinned_host: pinned,
        pageable_host: pageable,
        nvme,
        nvme_space,
        traffic_per_step: traffic,
        nvme_gbps,
        min_step_s_nvme: nvme_bytes as f64 / (nvme_gbps * 1e9),
        deepspeed_all_live: deepspeed_all_live(p, model.largest_tensor),
        warnings,
    }
}

fn check_limits(
    config: &Config,
    model: ModelStats,
    device: &Tier,
    pinned: &Tier,
    pageable: &Tier,
    host_ram: Option<u64>,
    warnings: &mut Vec<String>,
) {
    let z = &config.zero_optimization;
    if device.bytes > config.zinf.device_memory_budget {
        warnings.push(format!(
            "device peak {} B exceeds zinf.device_memory_budget {} B: offload more, enable \
             activation_checkpointing, or lower train_micro_batch_size_per_gpu",
            device.bytes, config.zinf.device_memory_budget
        ));
    }
    if let Some(ram) = host_ram {
        if pinned.bytes > ram {
            warnings.push(format!(
                "pinned host memory {} B exceeds this machine's RAM {ram} B: set pin_memory false \
                 or offload to nvme",
                pinned.bytes
            ));
        } else if pinned.bytes.saturating_add(pageable.bytes) > ram {
            warnings.push(format!(
                "host memory {} B exceeds this machine's RAM {ram} B: offload to nvme",
                pinned.bytes.saturating_add(pageable.bytes)
            ));
        }
    }
    if let Some(budget) = config.zinf.host_memory_budget {
        if pinned.bytes.saturating_add(pageable.bytes) > budget {
            warnings.push(format!(
                "host memory {} B exceeds zinf.host_memory_budget {budget} B",
                pinned.bytes.saturating_add(pageable.bytes)
            ));
        }
    }
    if z.stage == 3
        && z.offload_param.device == OffloadDevice::Nvme
        && z.offload_param.buffer_size < model.largest_tensor
    {
        warnings.push(format!(
            "zero_optimization.offload_param.buffer_size ({} elements) is smaller than the largest \
             parameter ({} elements): DeepSpeed fails mid-run on this; zinf splits the tensor \
             into chunks, but consider buffer_size >= {}",
            z.offload_param.buffer_size, model.largest_tensor, model.largest_tensor
        ));
    }
}

fn nvme_space(
    config: &Config,
    p: u64,
    d: u64,
    free_bytes: &dyn Fn(&str) -> Option<u64>,
    warnings: &mut Vec<String>,
) -> Vec<NvmeSpace> {
    let z = &config.zero_optimization;
    let versions = if config.zinf.swap_double_buffered {
        2
    } else {
        1
    };
    let mut needs: Vec<(String, u64)> = Vec::new();
    let mut need = |path: &Option<String>, bytes: u64| {
        let path = path.clone().unwrap_or_default();
        match needs.iter_mut().find(|(p, _)| *p == path) {
            Some((_, b)) => acc(b, bytes),
            None => needs.push((path, bytes)),
        }
    };
    if z.stage == 3 && z.offload_param.device == OffloadDevice::Nvme {
        need(&z.offload_param.nvme_path, mul(&[versions, d, p]));
    }
    if z.offload_optimizer.device == OffloadDevice::Nvme {
        need(&z.offload_optimizer.nvme_path, mul(&[versions, 12, p]));
    }
    needs
        .into_iter()
        .map(|(path, needed_bytes)| {
            let available_bytes = free_bytes(&path);
            if let Some(avail) = available_bytes {
                if avail < needed_bytes {
                    warnings.push(format!(
                        "{path} has {avail} B free but the offloaded state needs {needed_bytes} B"
                    ));
                }
            }
            NvmeSpace {
                path,
                needed_bytes,
                available_bytes,
            }
        })
        .collect()
}

/// DeepSpeed's `estimate_zero3_model_states_mem_needs` for 1 GPU on 1 node, with its
/// `additional_buffer_factor` of 1.5, for the options its `_all_live` variant prints.
pub fn deepspeed_all_live(total_params: u64, largest_layer_params: u64) -> Vec<DeepSpeedRow> {
    let p = total_params as f64;
    let largest = largest_layer_params.saturating_mul(4);
    let factor = 1.5;
    let mut rows = Vec::new();
    for (offload_param, offload_optimizer) in [("cpu", "cpu"), ("none", "cpu"), ("none", "none")] {
        for zero_init in [true, false] {
            let (cpu, gpu) = match (offload_param, offload_optimizer) {
                ("cpu", _) => {
                    let per = if zero_init { 18.0 } else { 18f64.max(4.0) };
                    (p * per * factor, largest)
                }
                ("none", "cpu") => {
                    let per = if zero_init { 16.0 } else { 16f64.max(4.0) };
                    (p * per * factor, largest.saturating_add((2.0 * p) as u64))
                }
                _ => {
                    let cpu = if zero_init {
                        largest_layer_params as f64 * 4.0 * factor
                    } else {
                        p * 4.0 * factor
                    };
                    (cpu, largest.saturating_add((18.0 * p) as u64))
                }
            };
            rows.push(DeepSpeedRow {
                offload_param,
                offload_optimizer,
                zero_init,
                cpu_bytes: cpu as u64,
                gpu_bytes: gpu,
            });
        }
    }
    rows
}

/// Free bytes on the filesystem holding `path`, walking up to the nearest existing folder.
pub fn statvfs_free_bytes(path: &str) -> Option<u64> {
    let mut dir = std::path::Path::new(if path.is_empty() { "." } else { path });
    loop {
        if dir.exists() {
            break;
        }
        dir = dir.parent()?;
        if dir.as_os_str().is_empty() {
            dir = std::path::Path::new(".");
        }
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized, writable
    // statvfs struct that lives across the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
