//! Top-level DeepSpeed sections other than ZeRO and aio: batch sizes, `optimizer`, `scheduler`,
//! `fp16`, `bf16`, `activation_checkpointing`, monitors and the flops profiler. Defaults and
//! semantics are DeepSpeed's (deepspeed/runtime/config.py, lr_schedules.py, fp16/loss_scaler.py);
//! `"auto"` follows Hugging Face's integration, which is where users meet it.

use super::limits::MAX_BATCH;
use super::reader::{as_f64, as_u64, auto_u64_at, check_range, describe, Auto, Section};
use super::{Diagnostics, ZinfConfig};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fp16Config {
    pub enabled: bool,
    pub auto_cast: bool,
    /// 0 = dynamic loss scaling; > 0 = this static scale.
    pub loss_scale: f64,
    pub initial_scale_power: u64,
    pub loss_scale_window: u64,
    pub hysteresis: u64,
    pub consecutive_hysteresis: bool,
    pub min_loss_scale: f64,
    /// Whether any dynamic-scaling key was written. DeepSpeed's quirk: when none is, the scaler
    /// starts at 2^32 with hysteresis 1 (its `DynamicLossScaler` defaults), not 2^16 and 2.
    pub dynamic_args_given: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bf16Config {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptimizerConfig {
    /// "Adam" or "AdamW" (the CPU Adam serves both).
    #[serde(rename = "type")]
    pub kind: String,
    pub params: AdamParams,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdamParams {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW) instead of L2; forced on by type "AdamW", as DeepSpeed.
    pub adam_w_mode: bool,
    pub bias_correction: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SchedulerType {
    WarmupLR,
    WarmupDecayLR,
    WarmupCosineLR,
    OneCycle,
    LRRangeTest,
}

/// A scheduler with every DeepSpeed parameter resolved (defaults filled in), by DeepSpeed name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerConfig {
    #[serde(rename = "type")]
    pub kind: SchedulerType,
    pub params: BTreeMap<String, Value>,
    /// `total_num_steps` was `"auto"`: it follows the steps the run takes
    /// ([`super::Loaded::with_train_steps`]), as Hugging Face sets it from `max_steps`.
    #[serde(skip)]
    pub auto_total_num_steps: bool,
}

impl SchedulerConfig {
    /// A numeric parameter (every one is present after resolution).
    pub fn num(&self, name: &str) -> f64 {
        self.params.get(name).and_then(Value::as_f64).unwrap_or(0.0)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.params
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn text(&self, name: &str) -> &str {
        self.params.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivationCheckpointing {
    /// Recompute each block's activations in backward. On when the section is present.
    pub enabled: bool,
    pub partition_activations: bool,
    pub cpu_checkpointing: bool,
    pub contiguous_memory_optimization: bool,
    pub number_checkpoints: Option<u64>,
    pub synchronize_checkpoint_boundary: bool,
    pub profile: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorConfig {
    pub enabled: bool,
    pub output_path: String,
    pub job_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlopsProfiler {
    pub enabled: bool,
    pub profile_step: u64,
}

pub fn read_fp16(root: &mut Section<'_>, diag: &mut Diagnostics) -> Fp16Config {
    let raw = root.raw("fp16");
    let mut s = Section::new("fp16", raw, diag);
    let enabled = resolve_enabled(&mut s, diag);
    let dynamic_keys = [
        "initial_scale_power",
        "loss_scale_window",
        "min_loss_scale",
        "hysteresis",
        "consecutive_hysteresis",
    ];
    let dynamic_args_given = dynamic_keys.iter().any(|k| s.has(k));
    let (power_default, hysteresis_default) = if dynamic_args_given { (16, 2) } else { (32, 1) };
    let c = Fp16Config {
        enabled,
        auto_cast: s.bool("auto_cast", false, diag),
        loss_scale: s.f64("loss_scale", 0.0, diag),
        initial_scale_power: s.u64("initial_scale_power", power_default, diag),
        loss_scale_window: s.u64("loss_scale_window", 1000, diag),
        hysteresis: s.u64("hysteresis", hysteresis_default, diag),
        consecutive_hysteresis: s.bool("consecutive_hysteresis", false, diag),
        min_loss_scale: s.f64("min_loss_scale", 1.0, diag),
        dynamic_args_given,
    };
    s.accept(&["fp16_master_weights_and_grads", "fp16_opt_level"]);
    if enabled && c.loss_scale == 0.0 && !dynamic_args_given {
        diag.resolved(
            "fp16",
            "no dynamic loss-scale keys given: initial scale 2^32, hysteresis 1 (DeepSpeed's default)",
        );
    }
    if c.loss_scale < 0.0 {
        diag.error(
            "fp16.loss_scale",
            "must be 0 (dynamic) or a positive static scale",
        );
    }
    s.finish(diag);
    c
}

pub fn read_bf16(root: &mut Section<'_>, diag: &mut Diagnostics) -> Bf16Config {
    let (raw, path) = root.raw_aliased("bf16", "bfloat16", diag);
    let mut s = Section::new(&path, raw, diag);
    let enabled = resolve_enabled(&mut s, diag);
    s.accept(&[
        "immediate_grad_update",
        "check_grad_overflow",
        "bf16_master_weights_and_grads",
    ]);
    s.finish(diag);
    Bf16Config { enabled }
}

fn resolve_enabled(s: &mut Section<'_>, diag: &mut Diagnostics) -> bool {
    match s.auto_bool("enabled", diag) {
        Some(Auto::Set(b)) => b,
        Some(Auto::Auto) => {
            diag.resolved(
                &s.key_path("enabled"),
                "auto -> false (no --fp16/--bf16 trainer flag)",
            );
            false
        }
        None => false,
    }
}

/// `train_batch_size = micro × accumulation × world` (`world` ranks); any two give the third,
/// as DeepSpeed's `_configure_train_batch_size` (deepspeed/runtime/config.py). `"auto"` and
/// absent keys take Hugging Face's `TrainingArguments` defaults where the others cannot
/// determine them (HF fills them before DeepSpeed sees the file). Each key is at most
/// [`MAX_BATCH`]. Returns `(train, micro, accumulation)`.
pub fn read_batch(root: &mut Section<'_>, world: u64, diag: &mut Diagnostics) -> (u64, u64, u64) {
    const KEYS: [&str; 3] = [
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
    ];
    let t = root.auto_u64(KEYS[0], diag);
    let m = root.auto_u64(KEYS[1], diag);
    let g = root.auto_u64(KEYS[2], diag);
    let mut bad = false;
    let mut set = |name: &str, a: Option<Auto<u64>>| match a {
        Some(Auto::Set(v)) => {
            if check_range(v, 1, MAX_BATCH, name, diag).is_none() {
                bad = true;
            }
            Some(v)
        }
        _ => None,
    };
    let (ts, mut ms, mut gs) = (set(KEYS[0], t), set(KEYS[1], m), set(KEYS[2], g));
    if bad {
        return (1, 1, 1);
    }
    let auto_micro = m == Some(Auto::Auto) && !(ts.is_some() && gs.is_some());
    if auto_micro || (ts.is_none() && ms.is_none()) {
        ms = Some(8);
        let how = if auto_micro { "auto" } else { "not set" };
        diag.resolved(
            KEYS[1],
            format!("{how} -> 8 (Hugging Face's per_device_train_batch_size default)"),
        );
    }
    if g == Some(Auto::Auto) && !(ts.is_some() && ms.is_some()) {
        gs = Some(1);
        diag.resolved(KEYS[2], "auto -> 1 (Hugging Face's default)");
    }
    let divide = |t: u64, by: u64, what: &str, diag: &mut Diagnostics| {
        if t.is_multiple_of(by) {
            Some(t / by)
        } else {
            diag.error(
                KEYS[0],
                format!("{t} is not a multiple of {what} {by}; DeepSpeed needs it whole"),
            );
            None
        }
    };
    // One rank's share of the global batch, when that is whole.
    let per_rank = |t: u64, diag: &mut Diagnostics| divide(t, world, "the world size", diag);
    let resolved = match (ts, ms, gs) {
        (Some(t), Some(m), Some(g)) => Some((t, m, g)),
        (Some(t), Some(m), None) => per_rank(t, diag)
            .and_then(|r| divide(r, m, KEYS[1], diag))
            .map(|g| (t, m, g)),
        (Some(t), None, Some(g)) => per_rank(t, diag)
            .and_then(|r| divide(r, g, KEYS[2], diag))
            .map(|m| (t, m, g)),
        (Some(t), None, None) => per_rank(t, diag).map(|r| (t, r, 1)),
        (None, Some(m), g) => Some((m * g.unwrap_or(1) * world, m, g.unwrap_or(1))),
        (None, None, _) => unreachable!("micro is defaulted above when neither is set"),
    };
    let Some((train, micro, gas)) = resolved else {
        return (1, 1, 1);
    };
    if t == Some(Auto::Auto) {
        diag.resolved(
            KEYS[0],
            format!(
                "auto -> {} (micro × accumulation × {world} rank(s))",
                micro * gas * world
            ),
        );
    }
    if train != micro * gas * world {
        diag.error(KEYS[0], rank_mismatch(train, micro, gas, world));
        return (micro * gas * world, micro, gas);
    }
    (train, micro, gas)
}

/// Why `train != micro × gas × world`, and what to set instead.
fn rank_mismatch(train: u64, micro: u64, gas: u64, world: u64) -> String {
    let per_step = micro * gas * world;
    if train > per_step && train.is_multiple_of(per_step) {
        let ranks = train / (micro * gas);
        format!(
            "{train} = {micro} × {gas} × {ranks} implies {ranks} ranks; this run has {world}: \
             start {ranks} ranks (--nproc-per-node {ranks}), set gradient_accumulation_steps \
             to {} to keep the global batch, or train_batch_size to {per_step}",
            gas * (train / per_step)
        )
    } else {
        format!(
            "train_batch_size is not equal to train_micro_batch_size_per_gpu × \
             gradient_accumulation_steps × world size: {train} != {micro} × {gas} × {world}"
        )
    }
}

pub fn read_optimizer(root: &mut Section<'_>, diag: &mut Diagnostics) -> OptimizerConfig {
    let raw = root.raw("optimizer");
    let mut s = Section::new("optimizer", raw, diag);
    let kind = match s.opt_string("type", diag) {
        None => "Adam".to_string(),
        Some(t) if t.eq_ignore_ascii_case("adam") => "Adam".to_string(),
        Some(t) if t.eq_ignore_ascii_case("adamw") => "AdamW".to_string(),
        Some(t) => {
            diag.error(
                "optimizer.type",
                format!(
                    "{t:?} is not supported by zinf's CPU optimizer; use \"Adam\" or \"AdamW\""
                ),
            );
            "Adam".to_string()
        }
    };
    let params = s.raw("params");
    s.accept(&["legacy_fusion"]);
    s.finish(diag);
    let mut p = Section::new("optimizer.params", params, diag);
    let lr = auto_f64_or(
        &mut p,
        "lr",
        1e-3,
        5e-5,
        "Hugging Face's learning_rate default",
        diag,
    );
    let betas = read_betas(&mut p, diag);
    let eps = auto_f64_or(&mut p, "eps", 1e-8, 1e-8, "adam_epsilon default", diag);
    let weight_decay = auto_f64_or(
        &mut p,
        "weight_decay",
        0.0,
        0.0,
        "weight_decay default",
        diag,
    );
    let adam_w_mode = p.bool("adam_w_mode", true, diag) || kind == "AdamW";
    let bias_correction = p.bool("bias_correction", true, diag);
    if p.bool("amsgrad", false, diag) {
        diag.error(
            "optimizer.params.amsgrad",
            "AMSGrad is not supported by zinf's CPU Adam",
        );
    }
    p.accept(&["torch_adam", "fused", "foreach", "capturable", "maximize"]);
    p.finish(diag);
    let params = AdamParams {
        lr,
        betas,
        eps,
        weight_decay,
        adam_w_mode,
        bias_correction,
    };
    OptimizerConfig { kind, params }
}

fn auto_f64_or(
    s: &mut Section<'_>,
    key: &'static str,
    default: f64,
    auto: f64,
    why: &str,
    diag: &mut Diagnostics,
) -> f64 {
    match s.auto_f64(key, diag) {
        Some(Auto::Set(v)) => v,
        Some(Auto::Auto) => {
            diag.resolved(&s.key_path(key), format!("auto -> {auto} ({why})"));
            auto
        }
        None => default,
    }
}

fn read_betas(p: &mut Section<'_>, diag: &mut Diagnostics) -> (f64, f64) {
    let path = p.key_path("betas");
    match p.raw("betas") {
        None => (0.9, 0.999),
        Some(Value::String(s)) if s == "auto" => {
            diag.resolved(
                &path,
                "auto -> [0.9, 0.999] (adam_beta1/adam_beta2 defaults)",
            );
            (0.9, 0.999)
        }
        Some(Value::Array(a)) if a.len() == 2 => {
            let b1 = as_f64(a.first(), &format!("{path}[0]"), diag).unwrap_or(0.9);
            let b2 = as_f64(a.get(1), &format!("{path}[1]"), diag).unwrap_or(0.999);
            for (i, b) in [b1, b2].into_iter().enumerate() {
                if !(0.0..1.0).contains(&b) {
                    diag.error(&format!("{path}[{i}]"), format!("{b} must be in [0, 1)"));
                }
            }
            (b1, b2)
        }
        Some(other) => {
            diag.error(
                &path,
                format!("expected [beta1, beta2], found {}", describe(other)),
            );
            (0.9, 0.999)
        }
    }
}

/// Each scheduler's parameter names, as DeepSpeed's lr_schedules.py spells them.
fn scheduler_params(kind: SchedulerType) -> &'static [&'static str] {
    use SchedulerType::*;
    const WARMUP: &[&str] = &[
        "warmup_min_lr",
        "warmup_max_lr",
        "warmup_num_steps",
        "warmup_type",
        "last_batch_iteration",
    ];
    match kind {
        WarmupLR => WARMUP,
        WarmupDecayLR => &[
            "warmup_min_lr",
            "warmup_max_lr",
            "warmup_num_steps",
            "warmup_type",
            "last_batch_iteration",
            "total_num_steps",
        ],
        WarmupCosineLR => &[
            "total_num_steps",
            "warmup_min_ratio",
            "warmup_num_steps",
            "cos_min_ratio",
            "warmup_type",
            "last_batch_iteration",
        ],
        OneCycle => &[
            "cycle_min_lr",
            "cycle_max_lr",
            "decay_lr_rate",
            "cycle_first_step_size",
            "cycle_second_step_size",
            "cycle_first_stair_count",
            "cycle_second_stair_count",
            "decay_step_size",
            "cycle_momentum",
            "cycle_min_mom",
            "cycle_max_mom",
            "decay_mom_rate",
            "last_batch_iteration",
        ],
        LRRangeTest => &[
            "lr_range_test_min_lr",
            "lr_range_test_step_size",
            "lr_range_test_step_rate",
            "lr_range_test_staircase",
            "last_batch_iteration",
        ],
    }
}

/// DeepSpeed's default for a scheduler parameter; `None` when the parameter is required or
/// derived from another (OneCycle's second step size/stair count follow the first).
fn scheduler_default(name: &str, opt: &OptimizerConfig) -> Option<Value> {
    let v = match name {
        "warmup_min_lr" => Value::from(0.0),
        "warmup_max_lr" => Value::from(0.001),
        "warmup_num_steps" => Value::from(1000),
        "warmup_type" => Value::from("log"),
        "last_batch_iteration" => Value::from(-1),
        "warmup_min_ratio" => Value::from(0.0),
        "cos_min_ratio" => Value::from(0.0001),
        "decay_lr_rate" => Value::from(0.0),
        "cycle_first_step_size" => Value::from(2000),
        "cycle_first_stair_count" => Value::from(0),
        "decay_step_size" => Value::from(0),
        "cycle_momentum" => Value::from(true),
        "cycle_min_mom" => Value::from(0.8),
        "cycle_max_mom" => Value::from(0.9),
        "decay_mom_rate" => Value::from(0.0),
        "lr_range_test_min_lr" => Value::from(0.001),
        "lr_range_test_step_size" => Value::from(2000),
        "lr_range_test_step_rate" => Value::from(1.0),
        "lr_range_test_staircase" => Value::from(false),
        "cycle_min_lr" => Value::from(opt.params.lr / 10.0),
        "cycle_max_lr" => Value::from(opt.params.lr),
        _ => return None,
    };
    Some(v)
}

pub fn read_scheduler(
    root: &mut Section<'_>,
    opt: &OptimizerConfig,
    zinf: &ZinfConfig,
    diag: &mut Diagnostics,
) -> Option<SchedulerConfig> {
    let raw = root.raw("scheduler")?;
    let mut s = Section::new("scheduler", Some(raw), diag);
    let kind = match s.choice(
        "type",
        &[
            "WarmupLR",
            "WarmupDecayLR",
            "WarmupCosineLR",
            "OneCycle",
            "LRRangeTest",
        ],
        "WarmupLR",
        diag,
    ) {
        "WarmupDecayLR" => SchedulerType::WarmupDecayLR,
        "WarmupCosineLR" => SchedulerType::WarmupCosineLR,
        "OneCycle" => SchedulerType::OneCycle,
        "LRRangeTest" => SchedulerType::LRRangeTest,
        _ => SchedulerType::WarmupLR,
    };
    if !s.has("type") {
        diag.error(
            "scheduler.type",
            "missing; one of WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest",
        );
    }
    let params_raw = s.raw("params");
    s.finish(diag);
    let empty = Map::new();
    let given = match params_raw {
        Some(Value::Object(m)) => m,
        Some(other) => {
            diag.error(
                "scheduler.params",
                format!("expected an object, found {}", describe(other)),
            );
            &empty
        }
        None => &empty,
    };
    let names = scheduler_params(kind);
    // Known for "did you mean scheduler.params.…?" when one is written elsewhere; the unknown
    // keys of this block are reported below, with the scheduler's name.
    diag.section_read("scheduler.params", names.to_vec(), Vec::new());
    let mut params = BTreeMap::new();
    let auto_total_num_steps = given
        .get("total_num_steps")
        .is_some_and(super::reader::is_auto);
    for name in names {
        let path = format!("scheduler.params.{name}");
        let value = match given.get(*name) {
            Some(Value::String(a)) if a == "auto" => {
                Some(resolve_sched_auto(name, opt, zinf, &path, diag))
            }
            Some(v) => check_sched_value(name, v, &path, diag),
            None => scheduler_default(name, opt),
        };
        if let Some(v) = value.filter(|v| !v.is_null()) {
            params.insert(name.to_string(), v);
        }
    }
    finish_scheduler(kind, &mut params, diag);
    for key in given.keys() {
        if !names.contains(&key.as_str()) {
            let hint = super::reader::nearest(key, names.iter().copied())
                .map(|n| format!("; did you mean {n}?"))
                .unwrap_or_default();
            diag.unknown_key(super::Issue {
                path: format!("scheduler.params.{key}"),
                message: format!("unknown key for {kind:?}{hint}"),
            });
        }
    }
    Some(SchedulerConfig {
        kind,
        params,
        auto_total_num_steps,
    })
}

/// Most steps a schedule parameter may count: 2^53, where f64 (DeepSpeed computes in Python
/// floats) still counts every step.
const MAX_SCHEDULE_STEPS: u64 = 1 << 53;

/// The one warning a run longer than its schedule gets: past `total_num_steps` WarmupDecayLR
/// stays at 0 and WarmupCosineLR at `cos_min_ratio` × lr, as DeepSpeed's do
/// (deepspeed/runtime/lr_schedules.py). `None` when the schedule covers `steps`.
pub fn schedule_overrun(s: &SchedulerConfig, steps: u64) -> Option<super::Issue> {
    let total = s.params.get("total_num_steps").and_then(Value::as_u64)?;
    let after = match s.kind {
        SchedulerType::WarmupDecayLR => "the lr stays at 0".to_string(),
        SchedulerType::WarmupCosineLR => format!(
            "the lr stays at cos_min_ratio ({}) × lr",
            s.num("cos_min_ratio")
        ),
        _ => return None,
    };
    (steps > total).then(|| super::Issue {
        path: "scheduler.params.total_num_steps".into(),
        message: format!(
            "the run takes {steps} steps but the {:?} schedule ends at {total}; after it {after} \
             (as DeepSpeed)",
            s.kind
        ),
    })
}

fn check_sched_value(name: &str, v: &Value, path: &str, diag: &mut Diagnostics) -> Option<Value> {
    match name {
        "warmup_type" => match v.as_str() {
            Some("log") | Some("linear") => Some(v.clone()),
            _ => {
                diag.error(
                    path,
                    format!("expected \"log\" or \"linear\", found {}", describe(v)),
                );
                None
            }
        },
        "cycle_momentum" | "lr_range_test_staircase" => match v {
            Value::Bool(_) => Some(v.clone()),
            _ => {
                diag.error(path, format!("expected a boolean, found {}", describe(v)));
                None
            }
        },
        "last_batch_iteration" => v.as_i64().map(Value::from).or_else(|| {
            diag.error(path, format!("expected an integer, found {}", describe(v)));
            None
        }),
        n if n.ends_with("steps") || n.ends_with("step_size") || n.ends_with("stair_count") => {
            as_u64(Some(v), path, diag)
                .and_then(|n| check_range(n, 0, MAX_SCHEDULE_STEPS, path, diag))
                .map(Value::from)
        }
        _ => as_f64(Some(v), path, diag).map(Value::from),
    }
}

/// A scheduler parameter written `"auto"`: the ones Hugging Face fills (deepspeed.py's
/// `trainer_config_process`) from the optimizer and the run, every other one DeepSpeed's default
/// (DeepSpeed drops `"auto"` keys).
fn resolve_sched_auto(
    name: &str,
    opt: &OptimizerConfig,
    zinf: &ZinfConfig,
    path: &str,
    diag: &mut Diagnostics,
) -> Value {
    let (v, why) = match name {
        "warmup_max_lr" | "cycle_max_lr" => (Value::from(opt.params.lr), "optimizer.params.lr"),
        "warmup_min_lr" => (Value::from(0.0), "Hugging Face's default"),
        "warmup_num_steps" => (Value::from(0), "Hugging Face's warmup_steps default"),
        "total_num_steps" => (
            Value::from(zinf.train_steps),
            "the steps the run takes: zinf.train_steps, or zinf train --steps",
        ),
        other => match scheduler_default(other, opt) {
            Some(v) => (v, "DeepSpeed's default; DeepSpeed drops \"auto\" keys"),
            // OneCycle's second step size / stair count follow the first (finish_scheduler).
            None => (Value::Null, "follows the first phase"),
        },
    };
    diag.resolved(path, format!("auto -> {v} ({why})"));
    v
}

fn finish_scheduler(
    kind: SchedulerType,
    params: &mut BTreeMap<String, Value>,
    diag: &mut Diagnostics,
) {
    use SchedulerType::*;
    if matches!(kind, WarmupDecayLR | WarmupCosineLR) && !params.contains_key("total_num_steps") {
        diag.error(
            "scheduler.params.total_num_steps",
            format!("required by {kind:?}"),
        );
    }
    if matches!(kind, WarmupDecayLR | WarmupCosineLR) {
        let get = |k: &str| params.get(k).and_then(Value::as_u64);
        if let (Some(total), Some(warmup)) = (get("total_num_steps"), get("warmup_num_steps")) {
            if total <= warmup {
                let after = if kind == WarmupCosineLR {
                    "the lr stays at cos_min_ratio × lr (DeepSpeed divides by zero here)"
                } else {
                    "the lr drops to 0 (DeepSpeed's WarmupDecayLR does the same)"
                };
                diag.warn(
                    "scheduler.params.warmup_num_steps",
                    format!(
                        "{warmup} is not below total_num_steps {total}: no decay phase; after \
                         the warmup {after}"
                    ),
                );
            }
        }
    }
    if kind == OneCycle {
        let first = params
            .get("cycle_first_step_size")
            .cloned()
            .unwrap_or(Value::from(2000));
        params
            .entry("cycle_second_step_size".into())
            .or_insert(first);
        let stairs = params
            .get("cycle_first_stair_count")
            .cloned()
            .unwrap_or(Value::from(0));
        params
            .entry("cycle_second_stair_count".into())
            .or_insert(stairs);
    }
    if let (Some(lo), Some(hi)) = (
        params.get("warmup_min_lr").and_then(Value::as_f64),
        params.get("warmup_max_lr").and_then(Value::as_f64),
    ) {
        if lo > hi {
            diag.error(
                "scheduler.params.warmup_min_lr",
                format!("{lo} is above warmup_max_lr {hi}"),
            );
        }
    }
}

pub fn read_activation_checkpointing(
    root: &mut Section<'_>,
    diag: &mut Diagnostics,
) -> ActivationCheckpointing {
    let raw = root.raw("activation_checkpointing");
    let mut s = Section::new("activation_checkpointing", raw, diag);
    let number_path = s.key_path("number_checkpoints");
    let number_checkpoints = match s.raw("number_checkpoints") {
        Some(Value::Bool(false)) => None, // seen in the wild: "number_checkpoints": false
        v => auto_u64_at(v, &number_path, diag).and_then(|a| match a {
            Auto::Set(n) => Some(n),
            Auto::Auto => None,
        }),
    };
    let c = ActivationCheckpointing {
        enabled: s.is_present(),
        partition_activations: s.bool("partition_activations", false, diag),
        cpu_checkpointing: s.bool("cpu_checkpointing", false, diag),
        contiguous_memory_optimization: s.bool("contiguous_memory_optimization", false, diag),
        number_checkpoints,
        synchronize_checkpoint_boundary: s.bool("synchronize_checkpoint_boundary", false, diag),
        profile: s.bool("profile", false, diag),
    };
    if c.cpu_checkpointing {
        diag.warn(
            "activation_checkpointing.cpu_checkpointing",
            "not supported yet; checkpoints stay in device memory",
        );
    }
    s.finish(diag);
    c
}

pub fn read_monitor(
    root: &mut Section<'_>,
    key: &'static str,
    diag: &mut Diagnostics,
) -> MonitorConfig {
    let raw = root.raw(key);
    let mut s = Section::new(key, raw, diag);
    let c = MonitorConfig {
        enabled: s.bool("enabled", false, diag),
        output_path: s.opt_string("output_path", diag).unwrap_or_default(),
        job_name: s
            .opt_string("job_name", diag)
            .unwrap_or_else(|| "DeepSpeedJobName".into()),
    };
    s.finish(diag);
    if key == "tensorboard" && c.enabled {
        diag.warn(
            "tensorboard.enabled",
            "TensorBoard event files are not written yet; use csv_monitor",
        );
    }
    c
}

pub fn read_flops_profiler(root: &mut Section<'_>, diag: &mut Diagnostics) -> FlopsProfiler {
    let raw = root.raw("flops_profiler");
    let mut s = Section::new("flops_profiler", raw, diag);
    let c = FlopsProfiler {
        enabled: s.bool("enabled", false, diag),
        profile_step: s.u64("profile_step", 1, diag),
    };
    s.accept(&[
        "module_depth",
        "top_modules",
        "detailed",
        "output_file",
        "recompute_fwd_factor",
    ]);
    if c.enabled {
        diag.warn(
            "flops_profiler.enabled",
            "the flops profiler is not supported; the step summary reports FLOP/s",
        );
    }
    s.finish(diag);
    c
}
