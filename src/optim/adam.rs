//! The Adam / AdamW driver: DeepSpeed's `DeepSpeedCPUAdam` semantics over one parameter group's
//! fp32 master weights and moments, split over the run's compute pool (`crate::threads`) in
//! contiguous, cache-line-aligned chunks (the same split every step, so pages first touched through
//! [`Adam::for_each_partition`] stay local to the thread that updates them). It does not own the
//! state, know about tensors, or decide whether a step is skipped; the engine does.

use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use super::kernels::{
    self, GradElem, Kernel, NoOut, OutElem, StepConsts, DECAY_ADAMW, DECAY_L2, DECAY_NONE,
};
use super::stats::{grad_stats_with, GradStats};
use super::OptimError;
use crate::threads::{partition, ThreadPool};

/// Below this many elements a step runs on the calling thread only: waking the pool costs more
/// than it saves. Results do not depend on it (the update is element-wise).
const PARALLEL_MIN_ELEMS: usize = 1 << 16;

/// Chunk boundaries are multiples of this many f32 (one 64-byte cache line).
const CHUNK_ALIGN_ELEMS: usize = 16;

/// Adam hyper-parameters, named and defaulted exactly as DeepSpeed's `optimizer.params` for
/// `"type": "Adam"` / `"AdamW"` (`AdamW` forces `adam_w_mode = true`; `Adam` defaults to it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamConfig {
    pub lr: f32,
    pub betas: (f32, f32),
    pub eps: f32,
    pub weight_decay: f32,
    /// Decoupled weight decay (AdamW) when true, L2 added to the gradient when false.
    pub adam_w_mode: bool,
    pub bias_correction: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            adam_w_mode: true,
            bias_correction: true,
        }
    }
}

/// One parameter group's gradient, in the dtype it arrived in.
#[derive(Debug, Clone, Copy)]
pub enum Grad<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Grad<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Grad::F32(g) => g.len(),
            Grad::F16(g) => g.len(),
            Grad::Bf16(g) => g.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the updated parameters are also written in half precision (the copy the forward pass
/// uses), or nowhere.
#[derive(Debug)]
pub enum ParamOut<'a> {
    None,
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
}

/// What changes from step to step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScalars {
    /// Learning rate of this step (from the scheduler, or `AdamConfig::lr`).
    pub lr: f32,
    /// 1-based step count of this parameter group (skipped steps do not count).
    pub step: u64,
    /// Multiplies the raw gradient before anything else: `clip_coef / loss_scale`
    /// (see [`combined_grad_scale`](super::combined_grad_scale)).
    pub grad_scale: f32,
}

impl StepConsts {
    /// The per-step constants, computed in f64 and rounded once to f32 (DeepSpeed computes
    /// `1 - beta^step` with `std::pow` in double as well).
    pub fn new(cfg: &AdamConfig, s: &StepScalars) -> Result<Self, OptimError> {
        validate(cfg, s)?;
        let (b1, b2) = (cfg.betas.0 as f64, cfg.betas.1 as f64);
        let (bc1, bc2) = if cfg.bias_correction {
            let t = s.step as f64;
            (1.0 - b1.powf(t), 1.0 / (1.0 - b2.powf(t)).sqrt())
        } else {
            (1.0, 1.0)
        };
        let lr = s.lr as f64;
        let wd = cfg.weight_decay;
        let decay_mode = match (wd > 0.0, cfg.adam_w_mode) {
            (false, _) => DECAY_NONE,
            (true, true) => DECAY_ADAMW,
            (true, false) => DECAY_L2,
        };
        Ok(Self {
            beta1: cfg.betas.0,
            beta2: cfg.betas.1,
            one_minus_beta1: (1.0 - b1) as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            step_size: (-lr / bc1) as f32,
            bias_correction2: bc2 as f32,
            eps: cfg.eps,
            weight_decay: wd,
            adamw_decay: (-lr * wd as f64) as f32,
            grad_scale: s.grad_scale,
            decay_mode,
        })
    }
}

fn validate(cfg: &AdamConfig, s: &StepScalars) -> Result<(), OptimError> {
    let bad = |name, value: f32, why| OptimError::InvalidHyperParameter {
        name,
        value: value as f64,
        why,
    };
    if s.step == 0 {
        return Err(OptimError::ZeroStep(0));
    }
    for (name, b) in [("betas[0]", cfg.betas.0), ("betas[1]", cfg.betas.1)] {
        if !(0.0..1.0).contains(&b) {
            return Err(bad(name, b, "must be in [0, 1)"));
        }
    }
    if !(cfg.eps >= 0.0 && cfg.eps.is_finite()) {
        return Err(bad("eps", cfg.eps, "must be finite and >= 0"));
    }
    if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
        return Err(bad(
            "weight_decay",
            cfg.weight_decay,
            "must be finite and >= 0",
        ));
    }
    if !s.lr.is_finite() {
        return Err(bad("lr", s.lr, "must be finite"));
    }
    if !s.grad_scale.is_finite() {
        return Err(bad("grad_scale", s.grad_scale, "must be finite"));
    }
    Ok(())
}

/// Raw views of one group's buffers, shared by the pool's threads; each thread rebuilds only its
/// own disjoint sub-slices.
struct Parts<G, O> {
    master: *mut f32,
    m: *mut f32,
    v: *mut f32,
    grad: *const G,
    out: *mut O,
    len: usize,
}

impl<G, O> Parts<G, O> {
    fn len(&self) -> usize {
        self.len
    }

    /// The sub-slices `s..e` of every buffer.
    ///
    /// # Safety
    /// `s <= e <= len`, no other live reference may overlap `s..e` of any buffer, and the
    /// borrows the pointers came from must outlive `'a`.
    #[allow(clippy::type_complexity)]
    unsafe fn range<'a>(
        &self,
        s: usize,
        e: usize,
    ) -> (
        &'a mut [f32],
        &'a mut [f32],
        &'a mut [f32],
        &'a [G],
        &'a mut [O],
    ) {
        debug_assert!(s <= e && e <= self.len);
        // SAFETY: the caller guarantees the range is in bounds and exclusively ours; the
        // buffers all have `len` elements (checked by `Adam::step`).
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.master.add(s), e - s),
                std::slice::from_raw_parts_mut(self.m.add(s), e - s),
                std::slice::from_raw_parts_mut(self.v.add(s), e - s),
                std::slice::from_raw_parts(self.grad.add(s), e - s),
                std::slice::from_raw_parts_mut(self.out.add(s), e - s),
            )
        }
    }
}

// SAFETY: the pointers come from slices that `Adam::step` borrows (mutably where written) for
// the whole parallel region, and every thread touches a disjoint range of them.
unsafe impl<G: Sync, O: Send> Sync for Parts<G, O> {}

/// CPU Adam / AdamW for one or more parameter groups (one `step` call per group).
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    kernel: Kernel,
    pool: Arc<ThreadPool>,
}

impl Adam {
    /// An optimizer with the fastest kernel of this CPU and `threads` threads (0: one per
    /// available CPU), on a compute pool of its own. A training run shares one pool between
    /// the device and the optimizer instead: see [`Adam::with_pool`].
    pub fn new(config: AdamConfig, threads: usize) -> Result<Self, OptimError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        Ok(Self::with_pool(config, Arc::new(ThreadPool::new(threads)?)))
    }

    /// An optimizer with the fastest kernel of this CPU running on `pool` (the run's one compute
    /// pool, also given to `CpuDevice::with_pool`); it uses all of the pool's threads.
    pub fn with_pool(config: AdamConfig, pool: Arc<ThreadPool>) -> Self {
        let kernel = Kernel::detect();
        tracing::debug!(kernel = kernel.name(), threads = pool.threads(), "cpu adam");
        Self {
            config,
            kernel,
            pool,
        }
    }

    /// Forces a kernel (tests and benchmarks); an error if this CPU cannot run it.
    pub fn with_kernel(mut self, kernel: Kernel) -> Result<Self, OptimError> {
        if !kernel.is_available() {
            return Err(OptimError::KernelUnavailable(kernel.name()));
        }
        self.kernel = kernel;
        Ok(self)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Replaces the betas (OneCycle's momentum cycling sets `betas.0` every step).
    pub fn set_betas(&mut self, betas: (f32, f32)) {
        self.config.betas = betas;
    }

    /// The kernel every step runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Threads a step runs on (those of its pool).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The compute pool the steps run on.
    pub fn pool(&self) -> &Arc<ThreadPool> {
        &self.pool
    }

    /// Calls `f` once per thread, on that thread, with the element range of `0..len` it owns in
    /// every `step` of a group of `len` elements: initializing buffers through it places their
    /// pages (first touch) next to the thread that will stream them.
    pub fn for_each_partition(&self, len: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let threads = self.pool.threads();
        self.pool.run(&|t| {
            let (s, e) = partition(len, threads, t, CHUNK_ALIGN_ELEMS);
            f(s..e);
        });
    }

    /// Global gradient statistics over several groups with this optimizer's kernel and threads;
    /// bit-identical to [`grad_stats`](super::grad_stats).
    pub fn grad_stats(&self, grads: &[Grad<'_>]) -> GradStats {
        grad_stats_with(self.kernel, Some(&self.pool), grads)
    }

    /// One Adam step over one parameter group, in a single pass: unscale and clip the gradient
    /// (`grad_scale`), update `m`, `v` and `master`, and write the half copy to `out`.
    /// The caller skips the call on overflow (see `LossScaler::update`).
    pub fn step(
        &mut self,
        master: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grad: Grad<'_>,
        out: ParamOut<'_>,
        scalars: StepScalars,
    ) -> Result<(), OptimError> {
        let n = master.len();
        check_len("m", n, m.len())?;
        check_len("v", n, v.len())?;
        check_len("grad", n, grad.len())?;
        let c = StepConsts::new(&self.config, &scalars)?;
        match out {
            ParamOut::None => {
                // `Vec` never allocates for a zero-sized element type.
                self.step_out(&c, master, m, v, grad, &mut vec![NoOut; n]);
            }
            ParamOut::F16(o) => {
                check_len("param copy", n, o.len())?;
                self.step_out(&c, master, m, v, grad, o);
            }
            ParamOut::Bf16(o) => {
                check_len("param copy", n, o.len())?;
                self.step_out(&c, master, m, v, grad, o);
            }
        }
        Ok(())
    }

    fn step_out<O: OutElem>(
        &self,
        c: &StepConsts,
        master: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grad: Grad<'_>,
        out: &mut [O],
    ) {
        match grad {
            Grad::F32(g) => self.run(c, master, m, v, g, out),
            Grad::F16(g) => self.run(c, master, m, v, g, out),
            Grad::Bf16(g) => self.run(c, master, m, v, g, out),
        }
    }

    fn run<G: GradElem, O: OutElem>(
        &self,
        c: &StepConsts,
        master: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grad: &[G],
        out: &mut [O],
    ) {
        let n = master.len();
        let threads = self.pool.threads();
        if threads == 1 || n < PARALLEL_MIN_ELEMS {
            kernels::adam_chunk(self.kernel, c, master, m, v, grad, out);
            return;
        }
        let parts = Parts {
            master: master.as_mut_ptr(),
            m: m.as_mut_ptr(),
            v: v.as_mut_ptr(),
            grad: grad.as_ptr(),
            out: out.as_mut_ptr(),
            len: n,
        };
        let kernel = self.kernel;
        self.pool.run(&|t| {
            let (s, e) = partition(parts.len(), threads, t, CHUNK_ALIGN_ELEMS);
            // SAFETY: partitions of different `t` are disjoint and lie within `0..len`.
            let (p, mm, vv, g, o) = unsafe { parts.range(s, e) };
            kernels::adam_chunk(kernel, c, p, mm, vv, g, o);
        });
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), OptimError> {
    if expected == got {
        Ok(())
    } else {
        Err(OptimError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}
