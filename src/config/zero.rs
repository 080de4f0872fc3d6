//! `zero_optimization` (with `offload_param` / `offload_optimizer`) and `aio`: where state lives
//! and how bytes move. Every stage-3 key is accepted under its name and its `stage3_` alias,
//! deprecated keys are mapped with a warning, and `"auto"` follows Hugging Face's rules
//! (bucket sizes from the hidden size).

use super::reader::{Auto, Section};
use super::{Diagnostics, ZinfConfig};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffloadDevice {
    None,
    Cpu,
    Nvme,
}

/// DeepSpeed's spelling (`none`, `cpu`, `nvme`), the one users write and read.
impl std::fmt::Display for OffloadDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OffloadDevice::None => "none",
            OffloadDevice::Cpu => "cpu",
            OffloadDevice::Nvme => "nvme",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffloadParam {
    pub device: OffloadDevice,
    pub nvme_path: Option<String>,
    pub pin_memory: bool,
    pub buffer_count: u64,
    /// Elements per swap buffer (DeepSpeed sizes its param buffers in elements).
    pub buffer_size: u64,
    /// Elements of parameters kept cached in host memory when offloaded to NVMe.
    pub max_in_cpu: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffloadOptimizer {
    pub device: OffloadDevice,
    pub nvme_path: Option<String>,
    pub pin_memory: bool,
    pub buffer_count: u64,
    /// Read sub-group k+1 while k updates. On by default in zinf (DeepSpeed: off).
    pub pipeline_read: bool,
    /// Write sub-group k−1 while k updates. On by default in zinf (DeepSpeed: off).
    pub pipeline_write: bool,
    pub fast_init: bool,
    pub ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZeroConfig {
    pub stage: u64,
    pub contiguous_gradients: bool,
    pub overlap_comm: bool,
    pub reduce_bucket_size: u64,
    pub sub_group_size: u64,
    pub prefetch_bucket_size: u64,
    pub param_persistence_threshold: u64,
    pub model_persistence_threshold: u64,
    pub max_live_parameters: u64,
    pub max_reuse_distance: u64,
    pub gather_16bit_weights_on_model_save: bool,
    pub offload_param: OffloadParam,
    pub offload_optimizer: OffloadOptimizer,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AioSection {
    pub block_size: u64,
    pub queue_depth: u64,
    pub intra_op_parallelism: u64,
    pub single_submit: bool,
    pub overlap_events: bool,
    pub use_gds: bool,
}

/// Keys DeepSpeed's ZeRO config has that do not change anything on one rank.
const ZERO_ACCEPTED: &[&str] = &[
    "reduce_scatter",
    "use_multi_rank_bucket_allreduce",
    "allgather_partitions",
    "allgather_bucket_size",
    "load_from_fp32_weights",
    "elastic_checkpoint",
    "ignore_unused_parameters",
    "legacy_stage1",
    "round_robin_gradients",
    "zero_hpz_partition_size",
    "zero_quantized_weights",
    "zero_quantized_nontrainable_weights",
    "zero_quantized_gradients",
    "zeropp_loco_param",
    "mics_shard_size",
    "mics_hierarchical_params_gather",
    "memory_efficient_linear",
    "pipeline_loading_checkpoint",
    "override_module_apply",
    "log_trace_cache_warnings",
    "module_granularity_threshold",
    "stage3_module_granularity_threshold",
    "use_all_reduce_for_fetch_params",
    "stage3_use_all_reduce_for_fetch_params",
];

pub fn read_zero(root: &mut Section<'_>, zinf: &ZinfConfig, diag: &mut Diagnostics) -> ZeroConfig {
    let raw = root.raw("zero_optimization");
    let mut s = Section::new("zero_optimization", raw, diag);
    let hidden = zinf.model.hidden_size() as u64;
    let stage = s.u64("stage", 0, diag);
    if stage > 3 {
        diag.error(
            "zero_optimization.stage",
            format!("{stage} is not a ZeRO stage (0, 1, 2 or 3)"),
        );
    }
    let contiguous_gradients = s.bool("contiguous_gradients", true, diag);
    let overlap_comm = s.bool("overlap_comm", stage == 3, diag);
    let reduce_bucket_size = auto_count(
        &mut s,
        "reduce_bucket_size",
        None,
        500_000_000,
        hidden * hidden,
        "hidden_size², hidden_size of zinf.model",
        diag,
    );
    let sub_group_size = s.u64("sub_group_size", 1_000_000_000, diag);
    if sub_group_size == 0 {
        diag.error("zero_optimization.sub_group_size", "must be at least 1");
    }
    let prefetch_bucket_size = auto_count(
        &mut s,
        "prefetch_bucket_size",
        Some("stage3_prefetch_bucket_size"),
        50_000_000,
        (0.9 * (hidden * hidden) as f64) as u64,
        "0.9 × hidden_size², hidden_size of zinf.model",
        diag,
    );
    let param_persistence_threshold = auto_count(
        &mut s,
        "param_persistence_threshold",
        Some("stage3_param_persistence_threshold"),
        100_000,
        10 * hidden,
        "10 × hidden_size, hidden_size of zinf.model",
        diag,
    );
    let model_persistence_threshold =
        aliased_u64(&mut s, "model_persistence_threshold", i64::MAX as u64, diag);
    let max_live_parameters = aliased_u64(&mut s, "max_live_parameters", 1_000_000_000, diag);
    let max_reuse_distance = aliased_u64(&mut s, "max_reuse_distance", 1_000_000_000, diag);
    let (g16, _) = s.raw_aliased(
        "gather_16bit_weights_on_model_save",
        "stage3_gather_16bit_weights_on_model_save",
        diag,
    );
    let mut gather_16bit = match g16 {
        Some(v) if super::reader::is_auto(v) => {
            diag.resolved(
                "zero_optimization.gather_16bit_weights_on_model_save",
                "auto -> false (DeepSpeed's default; DeepSpeed drops \"auto\" keys)",
            );
            false
        }
        v => super::reader::as_bool(
            v,
            "zero_optimization.gather_16bit_weights_on_model_save",
            diag,
        )
        .unwrap_or(false),
    };
    if let Some(v) = deprecated_bool(
        &mut s,
        "stage3_gather_fp16_weights_on_model_save",
        "gather_16bit_weights_on_model_save",
        diag,
    ) {
        gather_16bit = v;
    }
    let mut offload_param = read_offload_param(&mut s, &zinf.model, diag);
    let mut offload_optimizer = read_offload_optimizer(&mut s, diag);
    map_deprecated_offload(&mut s, &mut offload_param, &mut offload_optimizer, diag);
    s.accept(ZERO_ACCEPTED);
    s.finish(diag);
    if offload_param.device != OffloadDevice::None && stage != 3 {
        diag.error(
            "zero_optimization.offload_param",
            format!("parameter offload needs zero_optimization.stage 3 (stage is {stage})"),
        );
    }
    if offload_optimizer.ratio < 1.0 && stage != 3 {
        diag.error(
            "zero_optimization.offload_optimizer.ratio",
            "partial offloading is only supported with stage 3",
        );
    }
    explain_zero_sizes(
        &[
            ("reduce_bucket_size", reduce_bucket_size),
            ("stage3_prefetch_bucket_size", prefetch_bucket_size),
            (
                "stage3_param_persistence_threshold",
                param_persistence_threshold,
            ),
            (
                "stage3_model_persistence_threshold",
                model_persistence_threshold,
            ),
            ("stage3_max_live_parameters", max_live_parameters),
            ("stage3_max_reuse_distance", max_reuse_distance),
            ("offload_param.max_in_cpu", offload_param.max_in_cpu),
        ],
        diag,
    );
    ZeroConfig {
        stage,
        contiguous_gradients,
        overlap_comm,
        reduce_bucket_size,
        sub_group_size,
        prefetch_bucket_size,
        param_persistence_threshold,
        model_persistence_threshold,
        max_live_parameters,
        max_reuse_distance,
        gather_16bit_weights_on_model_save: gather_16bit,
        offload_param,
        offload_optimizer,
    }
}

/// Says what a DeepSpeed size set to 0 means, so none is silently ignored: each is a
/// meaningful setting (DeepSpeed's own meaning where it has one), logged with the resolved
/// keys.
fn explain_zero_sizes(sizes: &[(&str, u64)], diag: &mut Diagnostics) {
    for &(key, v) in sizes {
        if v != 0 {
            continue;
        }
        let meaning = match key {
            "reduce_bucket_size" => {
                "every gradient is reduced on its own (no bucketing); zinf reduce-scatters each \
                 parameter group's gradients as one bucket whatever this says"
            }
            "stage3_prefetch_bucket_size" => {
                "no read-ahead beyond the next parameter group (zinf always reads that one ahead)"
            }
            "stage3_param_persistence_threshold" => {
                "no parameter group stays on the device between uses"
            }
            "stage3_model_persistence_threshold" => {
                "no budget for persistent parameters (zinf keeps groups by \
                 stage3_param_persistence_threshold only)"
            }
            "stage3_max_live_parameters" => {
                "only the groups in use stay on the device: nothing kept or read ahead"
            }
            "stage3_max_reuse_distance" => "a released group is never kept for reuse",
            "offload_param.max_in_cpu" => "no NVMe parameters are cached in host memory",
            _ => continue,
        };
        diag.resolved(&format!("zero_optimization.{key}"), format!("0: {meaning}"));
    }
}

/// An element count under `key` (or its `alias`) that may be `"auto"`, resolved to `auto` with
/// the reason `why` (the hidden size, as Hugging Face does, or DeepSpeed's default).
#[allow(clippy::too_many_arguments)]
fn auto_count(
    s: &mut Section<'_>,
    key: &'static str,
    alias: Option<&'static str>,
    default: u64,
    auto: u64,
    why: &str,
    diag: &mut Diagnostics,
) -> u64 {
    let (raw, path) = match alias {
        Some(a) => s.raw_aliased(key, a, diag),
        None => (s.raw(key), s.key_path(key)),
    };
    match super::reader::auto_u64_at(raw, &path, diag) {
        Some(Auto::Set(v)) => v,
        Some(Auto::Auto) => {
            diag.resolved(&path, format!("auto -> {auto} ({why})"));
            auto
        }
        None => default,
    }
}

/// A stage-3 count under its name or its `stage3_` alias; `"auto"` keeps DeepSpeed's default
/// (Hugging Face fills only the bucket sizes and the persistence threshold, DeepSpeed drops the
/// rest).
fn aliased_u64(
    s: &mut Section<'_>,
    key: &'static str,
    default: u64,
    diag: &mut Diagnostics,
) -> u64 {
    let alias: &'static str = match key {
        "model_persistence_threshold" => "stage3_model_persistence_threshold",
        "max_live_parameters" => "stage3_max_live_parameters",
        _ => "stage3_max_reuse_distance",
    };
    let why = "DeepSpeed's default; DeepSpeed drops \"auto\" keys";
    auto_count(s, key, Some(alias), default, default, why, diag)
}

fn deprecated_bool(
    s: &mut Section<'_>,
    key: &'static str,
    new: &str,
    diag: &mut Diagnostics,
) -> Option<bool> {
    let path = s.key_path(key);
    let v = super::reader::as_bool(s.raw(key), &path, diag)?;
    diag.warn(&path, format!("deprecated; mapped to {new}"));
    Some(v)
}

fn map_deprecated_offload(
    s: &mut Section<'_>,
    param: &mut OffloadParam,
    opt: &mut OffloadOptimizer,
    diag: &mut Diagnostics,
) {
    if let Some(true) =
        deprecated_bool(s, "cpu_offload", "offload_optimizer.device = \"cpu\"", diag)
    {
        if opt.device == OffloadDevice::None {
            opt.device = OffloadDevice::Cpu;
        }
    }
    if let Some(true) = deprecated_bool(
        s,
        "cpu_offload_param",
        "offload_param.device = \"cpu\"",
        diag,
    ) {
        if param.device == OffloadDevice::None {
            param.device = OffloadDevice::Cpu;
        }
    }
    if let Some(true) = deprecated_bool(
        s,
        "cpu_offload_params",
        "offload_param.device = \"cpu\"",
        diag,
    ) {
        if param.device == OffloadDevice::None {
            param.device = OffloadDevice::Cpu;
        }
    }
    if let Some(pin) = deprecated_bool(
        s,
        "cpu_offload_use_pin_memory",
        "offload_*.pin_memory",
        diag,
    ) {
        param.pin_memory |= pin;
        opt.pin_memory |= pin;
    }
}

fn read_device(s: &mut Section<'_>, diag: &mut Diagnostics) -> (OffloadDevice, Option<String>) {
    let device = match s.choice("device", &["none", "cpu", "nvme"], "none", diag) {
        "cpu" => OffloadDevice::Cpu,
        "nvme" => OffloadDevice::Nvme,
        _ => OffloadDevice::None,
    };
    let nvme_path = s.opt_string("nvme_path", diag);
    if device == OffloadDevice::Nvme && nvme_path.is_none() {
        diag.error(
            &s.key_path("nvme_path"),
            "required when device is \"nvme\": a folder on the drive to offload to",
        );
    }
    (device, nvme_path)
}

/// Most swap buffers of one offload block: DeepSpeed's defaults are 4 and 5.
pub const MAX_BUFFER_COUNT: u64 = 1024;
/// Most elements of one parameter swap buffer (2^40: 2 TiB of fp16).
pub const MAX_BUFFER_SIZE: u64 = 1 << 40;

fn read_offload_param(
    parent: &mut Section<'_>,
    model: &crate::model::ModelSpec,
    diag: &mut Diagnostics,
) -> OffloadParam {
    let raw = parent.raw("offload_param");
    let mut s = Section::new("zero_optimization.offload_param", raw, diag);
    let (device, nvme_path) = read_device(&mut s, diag);
    let pin_memory = s.bool("pin_memory", false, diag);
    let buffer_count = s.u64_in("buffer_count", 5, (1, MAX_BUFFER_COUNT), diag);
    let buffer_size = match s.auto_u64("buffer_size", diag) {
        Some(Auto::Set(v)) => {
            let path = s.key_path("buffer_size");
            super::reader::check_range(v, 1, MAX_BUFFER_SIZE, &path, diag).unwrap_or(100_000_000)
        }
        Some(Auto::Auto) => {
            // DeepSpeed's swapper needs one buffer to hold the largest parameter.
            let largest = super::limits::spec_largest_tensor(model);
            let v = largest.max(100_000_000);
            diag.resolved(
                &s.key_path("buffer_size"),
                format!(
                    "auto -> {v} (DeepSpeed's default 1e8, at least the largest tensor's \
                     {largest} elements, which one buffer must hold)"
                ),
            );
            v
        }
        None => 100_000_000,
    };
    let c = OffloadParam {
        device,
        nvme_path,
        pin_memory,
        buffer_count,
        buffer_size,
        max_in_cpu: s.u64("max_in_cpu", 1_000_000_000, diag),
    };
    s.finish(diag);
    c
}

fn read_offload_optimizer(parent: &mut Section<'_>, diag: &mut Diagnostics) -> OffloadOptimizer {
    let raw = parent.raw("offload_optimizer");
    let mut s = Section::new("zero_optimization.offload_optimizer", raw, diag);
    let (device, nvme_path) = read_device(&mut s, diag);
    let c = OffloadOptimizer {
        device,
        nvme_path,
        pin_memory: s.bool("pin_memory", false, diag),
        buffer_count: s.u64_in("buffer_count", 4, (1, MAX_BUFFER_COUNT), diag),
        pipeline_read: s.bool("pipeline_read", true, diag),
        pipeline_write: s.bool("pipeline_write", true, diag),
        fast_init: s.bool("fast_init", false, diag),
        ratio: s.f64("ratio", 1.0, diag),
    };
    if !(0.0..=1.0).contains(&c.ratio) {
        diag.error(
            "zero_optimization.offload_optimizer.ratio",
            format!("{} must be in [0, 1]", c.ratio),
        );
    }
    s.accept(&["pipeline"]);
    s.finish(diag);
    c
}

/// `aio` limits, the same as zinf-aio's `AioConfig::validate`: a block is at most 1 GiB, a ring
/// at most 4096 deep, at most 256 I/O threads.
pub const AIO_MAX_QUEUE_DEPTH: u64 = 4096;
pub const AIO_MAX_THREADS: u64 = 256;

pub fn read_aio(root: &mut Section<'_>, diag: &mut Diagnostics) -> AioSection {
    let raw = root.raw("aio");
    let mut s = Section::new("aio", raw, diag);
    let max_block = zinf_aio::MAX_BLOCK_BYTES as u64;
    let block_size = s.u64_in("block_size", 1_048_576, (1, max_block), diag);
    let queue_depth = s.u64_in("queue_depth", 8, (1, AIO_MAX_QUEUE_DEPTH), diag);
    let intra = s.opt_u64("intra_op_parallelism", diag);
    let thread_count = s.opt_u64("thread_count", diag);
    if thread_count.is_some() {
        diag.warn(
            "aio.thread_count",
            "deprecated; mapped to intra_op_parallelism",
        );
    }
    let (threads, threads_path) = match (intra, thread_count) {
        (Some(v), _) => (v, "aio.intra_op_parallelism"),
        (None, Some(v)) => (v, "aio.thread_count"),
        (None, None) => (1, "aio.intra_op_parallelism"),
    };
    let c = AioSection {
        block_size,
        queue_depth,
        intra_op_parallelism: super::reader::check_range(
            threads,
            1,
            AIO_MAX_THREADS,
            threads_path,
            diag,
        )
        .unwrap_or(1),
        single_submit: s.bool("single_submit", false, diag),
        overlap_events: s.bool("overlap_events", true, diag),
        use_gds: s.bool("use_gds", false, diag),
    };
    if c.use_gds {
        diag.warn(
            "aio.use_gds",
            "GPUDirect Storage is not supported; bytes go through the pinned pool",
        );
    }
    if !c.block_size.is_multiple_of(4096) {
        diag.error(
            "aio.block_size",
            format!(
                "{} is not a multiple of 4096 (O_DIRECT needs aligned blocks)",
                c.block_size
            ),
        );
    }
    s.finish(diag);
    c
}
