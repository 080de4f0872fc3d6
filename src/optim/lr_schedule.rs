//! DeepSpeed's learning-rate schedulers (`deepspeed/runtime/lr_schedules.py`): WarmupLR,
//! WarmupDecayLR, WarmupCosineLR, OneCycle (with momentum cycling) and LRRangeTest, with
//! DeepSpeed's parameter names, defaults, and values at every step (computed in f64, as Python
//! does). The config enum deserializes DeepSpeed's `{"type": ..., "params": {...}}` block.
//! A scheduler only computes numbers; the engine calls `step()` after every *applied* optimizer
//! step, as DeepSpeed's engine does (overflow-skipped steps do not advance it).

use serde::{Deserialize, Serialize};

use super::OptimError;

/// Shape of the warmup phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmupType {
    /// `log(iteration + 1) / log(warmup_num_steps)`.
    #[default]
    Log,
    /// `iteration / warmup_num_steps`.
    Linear,
}

fn d_warmup_max_lr() -> f64 {
    0.001
}
fn d_warmup_num_steps() -> u64 {
    1000
}
fn d_cos_min_ratio() -> f64 {
    0.0001
}
fn d_cycle_first_step_size() -> u64 {
    2000
}
fn d_true() -> bool {
    true
}
fn d_cycle_min_mom() -> f64 {
    0.8
}
fn d_cycle_max_mom() -> f64 {
    0.9
}
fn d_lr_range_test_min_lr() -> f64 {
    1e-3
}
fn d_lr_range_test_step_size() -> u64 {
    2000
}
fn d_one() -> f64 {
    1.0
}

/// `WarmupLR`: min -> max over `warmup_num_steps`, then constant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupLRConfig {
    #[serde(default)]
    pub warmup_min_lr: f64,
    #[serde(default = "d_warmup_max_lr")]
    pub warmup_max_lr: f64,
    #[serde(default = "d_warmup_num_steps")]
    pub warmup_num_steps: u64,
    #[serde(default)]
    pub warmup_type: WarmupType,
}

impl Default for WarmupLRConfig {
    fn default() -> Self {
        Self {
            warmup_min_lr: 0.0,
            warmup_max_lr: d_warmup_max_lr(),
            warmup_num_steps: d_warmup_num_steps(),
            warmup_type: WarmupType::Log,
        }
    }
}

/// `WarmupDecayLR`: WarmupLR, then linear decay to 0 at `total_num_steps` (required).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupDecayLRConfig {
    pub total_num_steps: u64,
    #[serde(default)]
    pub warmup_min_lr: f64,
    #[serde(default = "d_warmup_max_lr")]
    pub warmup_max_lr: f64,
    #[serde(default = "d_warmup_num_steps")]
    pub warmup_num_steps: u64,
    #[serde(default)]
    pub warmup_type: WarmupType,
}

impl WarmupDecayLRConfig {
    /// DeepSpeed's defaults around the one required value.
    pub fn new(total_num_steps: u64) -> Self {
        let w = WarmupLRConfig::default();
        Self {
            total_num_steps,
            warmup_min_lr: w.warmup_min_lr,
            warmup_max_lr: w.warmup_max_lr,
            warmup_num_steps: w.warmup_num_steps,
            warmup_type: w.warmup_type,
        }
    }
}

/// `WarmupCosineLR`: ratios of the optimizer's own `lr`; warmup from `warmup_min_ratio` to 1,
/// then cosine down to `cos_min_ratio` at `total_num_steps` (required).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupCosineLRConfig {
    pub total_num_steps: u64,
    #[serde(default)]
    pub warmup_min_ratio: f64,
    #[serde(default = "d_warmup_num_steps")]
    pub warmup_num_steps: u64,
    #[serde(default = "d_cos_min_ratio")]
    pub cos_min_ratio: f64,
    #[serde(default)]
    pub warmup_type: WarmupType,
}

impl WarmupCosineLRConfig {
    /// DeepSpeed's defaults around the one required value.
    pub fn new(total_num_steps: u64) -> Self {
        Self {
            total_num_steps,
            warmup_min_ratio: 0.0,
            warmup_num_steps: d_warmup_num_steps(),
            cos_min_ratio: d_cos_min_ratio(),
            warmup_type: WarmupType::Log,
        }
    }
}

/// `OneCycle`: one triangular lr cycle (momentum inversely), then optional decay.
/// The stair counts are accepted and, as in DeepSpeed, do not change the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneCycleConfig {
    pub cycle_min_lr: f64,
    pub cycle_max_lr: f64,
    #[serde(default)]
    pub decay_lr_rate: f64,
    #[serde(default = "d_cycle_first_step_size")]
    pub cycle_first_step_size: u64,
    /// Defaults to `cycle_first_step_size`.
    #[serde(default)]
    pub cycle_second_step_size: Option<u64>,
    #[serde(default)]
    pub cycle_first_stair_count: u64,
    #[serde(default)]
    pub cycle_second_stair_count: Option<u64>,
    /// 0 disables the post-cycle decay of lr and momentum.
    #[serde(default)]
    pub decay_step_size: u64,
    #[serde(default = "d_true")]
    pub cycle_momentum: bool,
    #[serde(default = "d_cycle_min_mom")]
    pub cycle_min_mom: f64,
    #[serde(default = "d_cycle_max_mom")]
    pub cycle_max_mom: f64,
    #[serde(default)]
    pub decay_mom_rate: f64,
}

impl OneCycleConfig {
    /// DeepSpeed's defaults around the two required values.
    pub fn new(cycle_min_lr: f64, cycle_max_lr: f64) -> Self {
        Self {
            cycle_min_lr,
            cycle_max_lr,
            decay_lr_rate: 0.0,
            cycle_first_step_size: d_cycle_first_step_size(),
            cycle_second_step_size: None,
            cycle_first_stair_count: 0,
            cycle_second_stair_count: None,
            decay_step_size: 0,
            cycle_momentum: true,
            cycle_min_mom: d_cycle_min_mom(),
            cycle_max_mom: d_cycle_max_mom(),
            decay_mom_rate: 0.0,
        }
    }
}

/// `LRRangeTest`: `min_lr * (1 + step_rate * interval)`, continuous or staircase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LRRangeTestConfig {
    #[serde(default = "d_lr_range_test_min_lr")]
    pub lr_range_test_min_lr: f64,
    #[serde(default = "d_lr_range_test_step_size")]
    pub lr_range_test_step_size: u64,
    #[serde(default = "d_one")]
    pub lr_range_test_step_rate: f64,
    #[serde(default)]
    pub lr_range_test_staircase: bool,
}

impl Default for LRRangeTestConfig {
    fn default() -> Self {
        Self {
            lr_range_test_min_lr: d_lr_range_test_min_lr(),
            lr_range_test_step_size: d_lr_range_test_step_size(),
            lr_range_test_step_rate: 1.0,
            lr_range_test_staircase: false,
        }
    }
}

/// DeepSpeed's `scheduler` block: `{"type": "WarmupLR", "params": {...}}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "params")]
pub enum SchedulerConfig {
    WarmupLR(WarmupLRConfig),
    WarmupDecayLR(WarmupDecayLRConfig),
    WarmupCosineLR(WarmupCosineLRConfig),
    OneCycle(OneCycleConfig),
    LRRangeTest(LRRangeTestConfig),
}

/// What a checkpoint stores (DeepSpeed's `state_dict`: the last batch iteration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrSchedulerState {
    pub last_batch_iteration: i64,
}

/// A scheduler instance: the config, the optimizer's base lr (WarmupCosineLR scales it) and
/// DeepSpeed's `last_batch_iteration` (-1 before the first `step()`).
#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    config: SchedulerConfig,
    base_lr: f64,
    last_batch_iteration: i64,
}

impl LrScheduler {
    /// A scheduler at iteration -1. `optimizer_lr` is `optimizer.params.lr` (used only by
    /// WarmupCosineLR, whose values are ratios of it).
    pub fn new(config: SchedulerConfig, optimizer_lr: f64) -> Result<Self, OptimError> {
        validate(&config)?;
        Ok(Self {
            config,
            base_lr: optimizer_lr,
            last_batch_iteration: -1,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Advances one iteration (DeepSpeed's `scheduler.step()`).
    pub fn step(&mut self) {
        self.last_batch_iteration += 1;
    }

    /// The lr the optimizer holds now: what DeepSpeed's scheduler wrote into the param group at
    /// construction (before any `step()`) or at the last `step()`.
    pub fn get_lr(&self) -> f64 {
        self.lr_at(self.last_batch_iteration)
    }

    /// OneCycle with `cycle_momentum`: the `(beta1, beta2)` the optimizer holds now.
    pub fn get_mom(&self) -> Option<(f64, f64)> {
        self.mom_at(self.last_batch_iteration)
    }

    pub fn last_batch_iteration(&self) -> i64 {
        self.last_batch_iteration
    }

    pub fn state(&self) -> LrSchedulerState {
        LrSchedulerState {
            last_batch_iteration: self.last_batch_iteration,
        }
    }

    pub fn load_state(&mut self, state: LrSchedulerState) {
        self.last_batch_iteration = state.last_batch_iteration;
    }

    /// The lr when `last_batch_iteration == it`; `it = -1` is the value set at construction.
    pub fn lr_at(&self, it: i64) -> f64 {
        match &self.config {
            SchedulerConfig::WarmupLR(c) => {
                let w = Warmup::new(c.warmup_num_steps, c.warmup_type);
                if it < 0 {
                    return c.warmup_min_lr;
                }
                let gamma = w.gamma(it).unwrap_or(1.0);
                c.warmup_min_lr + (c.warmup_max_lr - c.warmup_min_lr) * gamma
            }
            SchedulerConfig::WarmupDecayLR(c) => {
                let w = Warmup::new(c.warmup_num_steps, c.warmup_type);
                if it < 0 {
                    return c.warmup_min_lr;
                }
                let gamma = w.gamma(it).unwrap_or_else(|| {
                    let total = c.total_num_steps as f64;
                    ((total - it as f64) / (total - w.steps as f64).max(1.0)).max(0.0)
                });
                c.warmup_min_lr + (c.warmup_max_lr - c.warmup_min_lr) * gamma
            }
            SchedulerConfig::WarmupCosineLR(c) => self.base_lr * cosine_ratio(c, it),
            SchedulerConfig::OneCycle(c) => one_cycle_lr(c, it),
            SchedulerConfig::LRRangeTest(c) => {
                let x = (it + 1) as f64 / c.lr_range_test_step_size as f64;
                let interval = if c.lr_range_test_staircase {
                    x.floor()
                } else {
                    x
                };
                c.lr_range_test_min_lr * (1.0 + c.lr_range_test_step_rate * interval)
            }
        }
    }

    /// OneCycle's `(beta1, beta2)` when `last_batch_iteration == it` (beta2 is DeepSpeed's fixed
    /// 0.99); `None` for other schedulers or without `cycle_momentum`.
    pub fn mom_at(&self, it: i64) -> Option<(f64, f64)> {
        match &self.config {
            SchedulerConfig::OneCycle(c) if c.cycle_momentum => Some((one_cycle_mom(c, it), 0.99)),
            _ => None,
        }
    }
}

/// The warmup shared by WarmupLR, WarmupDecayLR and WarmupCosineLR.
struct Warmup {
    /// `max(2, warmup_num_steps)`, as DeepSpeed clamps it.
    steps: u64,
    kind: WarmupType,
}

impl Warmup {
    fn new(warmup_num_steps: u64, kind: WarmupType) -> Self {
        Self {
            steps: warmup_num_steps.max(2),
            kind,
        }
    }

    /// The warmup fraction at iteration `it >= 0`, or `None` once warmup is over.
    fn gamma(&self, it: i64) -> Option<f64> {
        if it >= self.steps as i64 {
            return None;
        }
        Some(match self.kind {
            WarmupType::Log => (1.0 / (self.steps as f64).ln()) * ((it + 1) as f64).ln(),
            WarmupType::Linear => it as f64 / self.steps as f64,
        })
    }
}

fn cosine_ratio(c: &WarmupCosineLRConfig, it: i64) -> f64 {
    if it < 0 {
        return 0.0;
    }
    let w = Warmup::new(c.warmup_num_steps, c.warmup_type);
    if let Some(r) = w.gamma(it) {
        return c.warmup_min_ratio + r * (1.0 - c.warmup_min_ratio);
    }
    // DeepSpeed clamps the cosine's progress to 1, so past `total_num_steps` (and with no decay
    // window at all, total <= warmup) the ratio stays at `cos_min_ratio` instead of climbing
    // back to the peak (deepspeed/runtime/lr_schedules.py, WarmupCosineLR.get_lr_ratio).
    let real_last_step = (it - w.steps as i64 + 1) as f64;
    let real_total_steps = (c.total_num_steps as f64 - w.steps as f64).max(1.0);
    let progress = (real_last_step / real_total_steps).min(1.0);
    let ratio = (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0;
    (c.cos_min_ratio + (1.0 - c.cos_min_ratio) * ratio).max(0.0)
}

/// `(total_size, step_ratio)` of a OneCycle config.
fn one_cycle_shape(c: &OneCycleConfig) -> (f64, f64) {
    let first = c.cycle_first_step_size as f64;
    let second = c.cycle_second_step_size.map_or(first, |s| s as f64);
    let total = first + second;
    (total, first / total)
}

/// DeepSpeed's `_get_scale_factor` at `last_batch_iteration == it`.
fn one_cycle_scale(c: &OneCycleConfig, it: i64) -> f64 {
    let (total, ratio) = one_cycle_shape(c);
    let bi = (it + 1) as f64;
    let cycle = (1.0 + bi / total).floor();
    let x = 1.0 + bi / total - cycle;
    if x <= ratio {
        x / ratio
    } else {
        (x - 1.0) / (ratio - 1.0)
    }
}

fn one_cycle_lr(c: &OneCycleConfig, it: i64) -> f64 {
    let (total, _) = one_cycle_shape(c);
    if (it as f64) < total {
        return c.cycle_min_lr + (c.cycle_max_lr - c.cycle_min_lr) * one_cycle_scale(c, it);
    }
    if c.decay_step_size == 0 || c.decay_lr_rate == 0.0 {
        return c.cycle_min_lr;
    }
    let interval = (it as f64 - total + 1.0) / c.decay_step_size as f64;
    c.cycle_min_lr / (1.0 + c.decay_lr_rate * interval)
}

fn one_cycle_mom(c: &OneCycleConfig, it: i64) -> f64 {
    if it < 0 {
        // Construction writes `cycle_min_mom`, not the formula's value at -1.
        return c.cycle_min_mom;
    }
    let (total, _) = one_cycle_shape(c);
    if (it as f64) < total {
        return c.cycle_max_mom - (c.cycle_max_mom - c.cycle_min_mom) * one_cycle_scale(c, it);
    }
    if c.decay_step_size == 0 || c.decay_mom_rate == 0.0 {
        return c.cycle_max_mom;
    }
    let interval = (it as f64 - total + 1.0) / c.decay_step_size as f64;
    c.cycle_max_mom * (1.0 + c.decay_mom_rate * interval)
}

fn validate(config: &SchedulerConfig) -> Result<(), OptimError> {
    let bad = |name, value: f64, why| Err(OptimError::InvalidSchedule { name, value, why });
    match config {
        SchedulerConfig::OneCycle(c) if one_cycle_shape(c).0 == 0.0 => bad(
            "cycle_first_step_size",
            0.0,
            "the cycle has zero length (first + second step size = 0)",
        ),
        SchedulerConfig::LRRangeTest(c) if c.lr_range_test_step_size == 0 => {
            bad("lr_range_test_step_size", 0.0, "must be >= 1")
        }
        _ => Ok(()),
    }
}
