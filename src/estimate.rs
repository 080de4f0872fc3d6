//! What a run will cost before it starts: bytes per tier (device, pinned host, pageable host,
//! NVMe) at peak, the swap store's size against the free space under each `nvme_path`, bytes
//! moved per optimizer step, the step time those bytes imply, and DeepSpeed's own
//! `estimate_zero3_model_states_mem_needs_all_live` table beside ours.
//!
//! Every figure is worked out from the run's own plan ([`crate::session::Session`]): its
//! placement, the tiers' layout (units, padding, chunk size), its pinned pool, and the swap
//! store `Engine::new` would create ([`crate::engine::swap_store`]). So the estimate, the
//! refusals of `zinf config check` / `zinf train`, and the engine's allocations are one set of
//! facts; `tests/engine_estimate.rs` checks them against the engine's counters.
//!
//! This is arithmetic; it allocates nothing of the run.

use crate::config::Config;
use crate::engine::Tier as Placed;
use crate::session::Session;
use crate::tiers::layout::{is_persistent, store_bytes};
use serde::Serialize;
use std::path::Path;

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
    /// Bytes one read (or write) of every optimizer unit's state moves (three fp32 shards per
    /// unit, padded).
    pub opt_store_bytes: u64,
    /// Optimizer units (DeepSpeed sub-groups) of this rank.
    pub units: u64,
    /// Parameters this rank owns (its ZeRO-3 partition of every group; all on one rank):
    /// what its host and NVMe tiers hold.
    pub owned: u64,
    /// Data-parallel ranks of the run.
    pub world_size: u64,
}

impl ModelStats {
    /// From the plan's layout: the same units, padding and chunk size the engine uses.
    pub fn from_session(s: &Session) -> ModelStats {
        let layout = &s.layout;
        let (tensors, _) = s.settings.train.model.layout();
        let largest_tensor = tensors.iter().map(|t| t.numel()).max().unwrap_or(0);
        let threshold = s.settings.param_persistence_threshold;
        let persistent = layout
            .groups
            .iter()
            .map(|g| g.len() as u64)
            .filter(|&n| is_persistent(n, threshold))
            .fold(0, u64::saturating_add);
        let chunk = layout.chunk_bytes(s.settings.chunk_bytes);
        ModelStats {
            params: layout.total as u64,
            largest_tensor: largest_tensor as u64,
            largest_group: layout.max_group_len() as u64,
            persistent,
            param_store_bytes: layout.param_store_bytes(chunk),
            opt_store_bytes: layout.opt_store_bytes(chunk),
            units: layout.units.len() as u64,
            owned: layout.owned.iter().map(|r| r.len() as u64).sum(),
            world_size: s.settings.partition.world_size as u64,
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
    /// The items as `what bytes` pairs joined by commas, largest first (for one-line
    /// messages).
    pub fn summary(&self) -> String {
        let mut items: Vec<&Item> = self.items.iter().collect();
        items.sort_by_key(|i| std::cmp::Reverse(i.bytes));
        items
            .iter()
            .map(|i| {
                format!(
                    "{} {}",
                    i.what,
                    crate::engine::summary::human_bytes(i.bytes)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

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
    /// Bytes this rank receives through collectives: all-gathers of every fetched group
    /// (fp32, the other ranks' parts) and reduce-scatters of every micro-batch's gradients.
    /// 0 on one rank.
    pub collective_bytes: u64,
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
    /// The config key(s) that name this folder, e.g. `zero_optimization.offload_param.nvme_path`.
    pub key: String,
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
    /// Host bytes of the HF export at the end of the run (0 when it is skipped), counted in
    /// `pageable_host`.
    pub export_bytes: u64,
    /// Disk bytes one `--save DIR` takes (every parameter and optimizer state shard, once).
    pub save_bytes: u64,
    pub warnings: Vec<String>,
}

impl Estimate {
    /// Pinned plus pageable host bytes at peak.
    pub fn host_bytes(&self) -> u64 {
        self.pinned_host
            .bytes
            .saturating_add(self.pageable_host.bytes)
    }

    /// The host items of both kinds, for one-line messages.
    pub fn host_summary(&self) -> String {
        let mut all = self.pinned_host.clone();
        for i in &self.pageable_host.items {
            all.add(i.what.clone(), i.bytes);
        }
        all.summary()
    }
}

/// Bytes of fp32 device memory the model allocates for one micro-batch: activations kept for
/// backward, the logits and the backward scratch ([`crate::model::ModelSpec::activation_elems`],
/// exactly what the model's buffers take). Saturates at `u64::MAX`.
pub fn activation_bytes(s: &crate::settings::TrainSettings) -> u64 {
    let elems = s
        .model
        .activation_elems(s.micro_batch, s.seq_len, s.activation_checkpointing);
    u64::try_from(elems.saturating_mul(4)).unwrap_or(u64::MAX)
}

/// The product of byte counts and multipliers, saturating at `u64::MAX` instead of wrapping.
fn mul(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, f| acc.saturating_mul(*f))
}

/// `*total += bytes`, saturating.
fn acc(total: &mut u64, bytes: u64) {
    *total = total.saturating_add(bytes);
}

/// Computes the estimate of the run `s` plans (`config` is the config it was planned from).
/// `free_bytes` answers the free space under a folder (statvfs in the CLI, a fixed number in
/// tests); `host_ram` is physical memory for the host-memory warnings.
///
/// Where the engine keeps each kind of state (`src/tiers/`): parameters live in host memory
/// unless on NVMe — with `offload_param: none` they are also kept whole on the device; the
/// fp32 master weights and Adam moments live in host memory unless on NVMe — zinf always
/// runs its CPU Adam, so `offload_optimizer: none` means host memory, not device memory;
/// gradients leave the device group by group.
pub fn estimate(
    config: &Config,
    s: &Session,
    nvme_gbps: f64,
    host_ram: Option<u64>,
    free_bytes: &dyn Fn(&Path) -> Option<u64>,
) -> Estimate {
    let model = ModelStats::from_session(s);
    let st = &s.settings;
    let t = &st.train;
    let pl = &st.placement;
    let p = model.params;
    // Host and NVMe tiers hold this rank's partition only; the device gathers whole groups.
    let owned = model.owned;
    let world = model.world_size.max(1);
    let d = t.dtype.bytes() as u64;
    // On a GPU one group's gradients stay in flight while the next stage computes (a second
    // device buffer and a second page-locked host buffer); the CPU finishes each at once.
    let copies_overlap = matches!(s.device, crate::session::DeviceKind::Cuda(_));
    let grads_in_flight = if copies_overlap { 2 } else { 1 };
    let gas = t.gradient_accumulation_steps as u64;
    let (mut device, mut pinned, mut pageable, mut nvme) = (
        Tier::default(),
        Tier::default(),
        Tier::default(),
        Tier::default(),
    );
    let mut traffic = Traffic::default();
    let mut warnings = Vec::new();

    // Device (its buffers are fp32: half precision is widened on upload): the parameters —
    // all of them when resident, else the groups one stage uses at once (two of the
    // largest: GPT-2's tied head reads the embeddings beside ln_f) and the persistent ones;
    // the gradients of the groups one backward stage writes and of the group still copying out;
    // the activations. Groups kept
    // for reuse (stage3_max_reuse_distance) are not counted: the engine evicts them when the
    // budget is short, so this is what the run needs, not what it may use.
    let live = mul(&[2, model.largest_group]).min(p);
    match pl.params {
        Placed::Device => device.add(
            "parameters, fp32 (offload_param none: all resident)",
            mul(&[4, p]),
        ),
        _ => device.add(
            "parameters, fp32: the groups in use and the persistent ones",
            mul(&[4, live.saturating_add(model.persistent).min(p)]),
        ),
    }
    // On a GPU, one group's gradients more: the last group out, still copying to the host
    // while the next stage computes.
    let out = if copies_overlap {
        model.largest_group
    } else {
        0
    };
    device.add(
        "fp32 gradients of the groups in backward at once (and, on a GPU, one on its way out)",
        mul(&[4, live.saturating_add(out)]),
    );
    device.add(
        "activations, logits and backward scratch (fp32, one micro-batch)",
        activation_bytes(t),
    );
    if copies_overlap {
        // A GPU upload lands in staging memory of the stored dtype first (widened into the
        // group's buffer on the compute stream): at most one group's at once.
        // With several ranks, one rank's part of a group.
        device.add(
            "upload staging of one group (stored dtype, on its way in)",
            mul(&[d, model.largest_group.div_ceil(world)]),
        );
    }
    if world > 1 {
        // A gather (or reduce-scatter) holds this rank's padded part and, when the group does
        // not split evenly, the padded whole beside the group's own buffer.
        let part = model.largest_group.div_ceil(world);
        device.add(
            "one group's part and padded whole for all-gather / reduce-scatter (fp32)",
            mul(&[4, part.saturating_add(part.saturating_mul(world))]),
        );
    }

    // Host: the parameters' home, the optimizer state, the gradients, the pool, the export.
    let pinned_if = |pin: bool| pin;
    match &pl.params {
        Placed::Device => pageable.add(
            format!(
                "{}-bit parameters' host copy (the CPU Adam writes it; offload_param none)",
                8 * d
            ),
            mul(&[d, owned]),
        ),
        Placed::Cpu { pin_memory } => {
            let tier = if pinned_if(*pin_memory) {
                &mut pinned
            } else {
                &mut pageable
            };
            tier.add(
                format!("{}-bit parameters (offload_param cpu)", 8 * d),
                mul(&[d, owned]),
            );
        }
        Placed::Nvme { .. } => {
            pageable.add(
                "staging buffer of one parameter group (the one updated last)",
                mul(&[d, s.layout.max_owned_len() as u64]),
            );
            pageable.add(
                "parameters cached in host memory (max_in_cpu)",
                mul(&[d, st.max_in_cpu.min(owned)]),
            );
        }
    }
    let opt_bytes = mul(&[12, owned]);
    match &pl.optimizer {
        Placed::Device => pageable.add(
            "fp32 master weights, Adam m and v (offload_optimizer none: zinf's CPU Adam keeps \
             them in host memory)",
            opt_bytes,
        ),
        Placed::Cpu { pin_memory } => {
            let tier = if *pin_memory {
                &mut pinned
            } else {
                &mut pageable
            };
            tier.add(
                "fp32 master weights, Adam m and v (offload_optimizer cpu)",
                opt_bytes,
            );
        }
        Placed::Nvme { .. } => {}
    }
    // The engine keeps whole-model gradients only when the update must wait for the global
    // norm (clipping, fp16) or sums micro-batches; either way one group's gradients land in a
    // host buffer first (two on a GPU: one copying while the other is summed or updated).
    let streams = crate::optim::update_streams(t.gradient_clipping, t.fp16);
    if !streams || gas > 1 {
        pageable.add(
            "fp32 gradients, whole (accumulated, or waiting for the global norm)",
            mul(&[4, owned]),
        );
    }
    // With several ranks only this rank's part of a group leaves the device.
    let transfer = mul(&[4, grads_in_flight, model.largest_group.div_ceil(world)]);
    if copies_overlap {
        pinned.add(
            "fp32 gradients of two groups on their way from the GPU (page-locked)",
            transfer,
        );
    } else {
        pageable.add(
            "fp32 gradients of one group on their way from the device",
            transfer,
        );
    }
    let place = pl.on_nvme();
    if place.any() {
        let tier = if s.pin_pool {
            &mut pinned
        } else {
            &mut pageable
        };
        tier.add(
            "the swap store's pool (NVMe reads, held and in-flight writes)",
            s.pool_bytes,
        );
    }
    let export_bytes = export_bytes(s);
    pageable.add(
        "HF export at the end (one parameter group streamed to the files)",
        export_bytes,
    );

    // Traffic per step.
    // Each rank uploads its part of a group; the all-gather brings the rest.
    let fetched_elems = mul(&[2, gas, p - model.persistent.min(p)]);
    let fetched = mul(&[d, fetched_elems]) / world;
    let mut gathered_elems = fetched_elems;
    match pl.params {
        // Updated 16-bit parameters go back to their resident device copy once a step.
        Placed::Device => {
            acc(&mut traffic.host_to_device_bytes, mul(&[d, p]) / world);
            gathered_elems = p;
        }
        _ => acc(&mut traffic.host_to_device_bytes, fetched),
    }
    acc(&mut traffic.device_to_host_bytes, mul(&[gas, 4, p]) / world);
    if world > 1 {
        let others = |elems: u64| mul(&[4, elems]) / world * (world - 1);
        acc(
            &mut traffic.collective_bytes,
            others(gathered_elems).saturating_add(others(mul(&[gas, p]))),
        );
    }
    if place.params {
        // Every fetch of an uncached group reads it, forward and backward (an upper bound:
        // groups kept between the two, or served from host copies, are not read again).
        let cached = st.max_in_cpu.min(owned);
        let uncached = (u128::from(model.param_store_bytes) * u128::from(owned - cached))
            .checked_div(u128::from(owned))
            .unwrap_or(0);
        let uncached = u64::try_from(uncached).unwrap_or(u64::MAX);
        acc(&mut traffic.nvme_read_bytes, mul(&[2, gas, uncached]));
        acc(&mut traffic.nvme_write_bytes, model.param_store_bytes);
    }
    if place.optimizer {
        acc(&mut traffic.nvme_read_bytes, model.opt_store_bytes);
        acc(&mut traffic.nvme_write_bytes, model.opt_store_bytes);
    }

    // NVMe: the swap store Engine::new creates, shard by shard.
    let nvme_space = if place.any() {
        nvme_tier(config, s, &mut nvme, free_bytes)
    } else {
        Vec::new()
    };
    check_limits(config, model, &pinned, &pageable, host_ram, &mut warnings);
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
        export_bytes,
        save_bytes: crate::engine::checkpoint::save_bytes(st, &s.layout),
        warnings,
    }
}

/// Host bytes the HF export at the end of a run takes: it streams one parameter group at a
/// time from the tiers to the files (`Engine::export_hf`), so one group in the run's dtype
/// plus the 8 MiB file buffer.
pub fn export_bytes(s: &Session) -> u64 {
    let group = s.layout.max_group_len() as u64 * s.settings.train.dtype.bytes() as u64;
    group.saturating_add(8 << 20)
}

/// Bytes the HF export writes under `--out`: every parameter in the run's dtype (plus
/// headers, under 1%).
pub fn export_disk_bytes(s: &Session) -> u64 {
    s.layout.total as u64 * s.settings.train.dtype.bytes() as u64
}

/// Fills the NVMe tier with the swap store's shards by kind (both versions when double
/// buffered) and returns the bytes its extent files take under each `nvme_path`.
fn nvme_tier(
    config: &Config,
    s: &Session,
    nvme: &mut Tier,
    free_bytes: &dyn Fn(&Path) -> Option<u64>,
) -> Vec<NvmeSpace> {
    let (store, specs) = crate::engine::swap_store(&s.settings, &s.layout);
    let world = s.settings.partition.world_size.max(1) as u64;
    let slots = if store.double_buffered { 2 } else { 1 };
    let versions = if slots == 2 { ", two versions" } else { "" };
    let mut by_kind = [0u64; 2];
    for spec in &specs {
        let kind = usize::from(!spec.name.starts_with("param."));
        acc(
            &mut by_kind[kind],
            mul(&[slots, store_bytes(spec.len_bytes, store.chunk_bytes)]),
        );
    }
    let d = s.settings.train.dtype.bytes();
    nvme.add(format!("{}-bit parameters{versions}", 8 * d), by_kind[0]);
    nvme.add(
        format!("fp32 master weights, Adam m and v{versions}"),
        by_kind[1],
    );
    let per_path =
        zinf_swap::disk_bytes_per_path(&specs, &store, crate::tiers::layout::STORE_ALIGN_BYTES)
            .unwrap_or_default();
    let z = &config.zero_optimization;
    per_path
        .into_iter()
        .map(|(folder, needed_bytes)| {
            // The store lives in `nvme_path/zinf_swap` (`nvme_path/rank{r}/zinf_swap` with
            // several ranks); report the configured folder.
            let mut path = folder.parent().unwrap_or(&folder).to_path_buf();
            if world > 1 {
                path = path.parent().unwrap_or(&path).to_path_buf();
            }
            let names = |o: &Option<String>| o.as_deref().map(Path::new) == Some(path.as_path());
            let mut keys = Vec::new();
            if s.settings.placement.params.is_nvme() && names(&z.offload_param.nvme_path) {
                keys.push("zero_optimization.offload_param.nvme_path");
            }
            if s.settings.placement.optimizer.is_nvme() && names(&z.offload_optimizer.nvme_path) {
                keys.push("zero_optimization.offload_optimizer.nvme_path");
            }
            NvmeSpace {
                key: keys.join(" and "),
                path: path.display().to_string(),
                // Every rank on the node keeps its store under the same folder (rank 0's, the
                // largest, for each).
                needed_bytes: needed_bytes.saturating_mul(world),
                available_bytes: free_bytes(&path),
            }
        })
        .collect()
}

fn check_limits(
    config: &Config,
    model: ModelStats,
    pinned: &Tier,
    pageable: &Tier,
    host_ram: Option<u64>,
    warnings: &mut Vec<String>,
) {
    let z = &config.zero_optimization;
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
    if z.stage == 3
        && z.offload_param.device == crate::config::OffloadDevice::Nvme
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
pub fn statvfs_free_bytes(path: &Path) -> Option<u64> {
    let mut dir = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
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
