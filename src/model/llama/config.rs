//! The shape of a Llama-family model, read from a Hugging Face `config.json`.
//!
//! Fields, defaults and per-architecture differences follow transformers'
//! `configuration_llama.py`, `modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`,
//! `modeling_mistral.py`; RoPE from `modeling_rope_utils.py` (`_compute_default_rope_parameters`,
//! `_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`,
//! `_compute_yarn_parameters`). RoPE parameters
//! come in transformers v4's form (top-level `rope_theta` + `rope_scaling`) or v5's
//! (`rope_parameters`); both are accepted and a file where they disagree is refused.

use crate::model::ModelError;
use serde_json::{Map, Value};

/// Which Hugging Face class a folder holds (`architectures[0]`, else `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    /// `LlamaForCausalLM`: Llama 2/3/3.1/3.2, TinyLlama, SmolLM.
    Llama,
    /// `MistralForCausalLM` (trained below its `sliding_window`, where it is Llama).
    Mistral,
    /// `Qwen2ForCausalLM` (Qwen 2 and 2.5): biases on q, k, v.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm of queries and keys.
    Qwen3,
}

/// The architectures zinf trains, as `config.json` names them.
pub const SUPPORTED: &[(&str, &str, Arch)] = &[
    ("LlamaForCausalLM", "llama", Arch::Llama),
    ("MistralForCausalLM", "mistral", Arch::Mistral),
    ("Qwen2ForCausalLM", "qwen2", Arch::Qwen2),
    ("Qwen3ForCausalLM", "qwen3", Arch::Qwen3),
];

impl Arch {
    /// The Hugging Face class name (`architectures` entry).
    pub fn class_name(self) -> &'static str {
        SUPPORTED.iter().find(|s| s.2 == self).map_or("", |s| s.0)
    }
}

/// How RoPE frequencies are scaled (`rope_type`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RopeScaling {
    /// `default`: `inv_freq_i = theta^(-2i/d)`.
    Default,
    /// `linear`: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `llama3` (Llama 3.1/3.2): long wavelengths divided by `factor`, short ones kept, a
    /// smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// `yarn` (YaRN, Peng et al. 2023; Qwen2.5 long context, DeepSeek): frequencies blended
    /// between interpolated (`/ factor`) and kept over a ramp of dimensions set by `beta_fast`
    /// and `beta_slow` rotations, and cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
}

/// RoPE: base and scaling.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rope {
    /// `rope_theta`.
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// Inverse frequencies `(head_dim / 2)` in fp32, as transformers computes them (in fp32:
    /// `1 / theta^(arange(0, d, 2) / d)`, then the scaling).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let d = head_dim as f32;
        let base = self.theta as f32;
        let plain = (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / d));
        match self.scaling {
            RopeScaling::Default => plain.collect(),
            RopeScaling::Linear { factor } => plain.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => plain
                .map(|f| {
                    let (factor, lo, hi, old) = (
                        factor as f32,
                        low_freq_factor as f32,
                        high_freq_factor as f32,
                        old as f32,
                    );
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen < high_wavelen || wavelen > low_wavelen {
                        scaled
                    } else {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    }
                })
                .collect(),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: old,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                // transformers' `_compute_yarn_parameters`: the correction range in f64 (Python
                // floats), the frequencies in fp32 (torch).
                let dim = head_dim as f64;
                let ln_base = 2.0 * self.theta.ln();
                let corr =
                    |rot: f64| dim * (old / (rot * 2.0 * std::f64::consts::PI)).ln() / ln_base;
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, high) = (low.max(0.0), high.min(dim - 1.0));
                let span = if low == high { 0.001 } else { high - low };
                let factor = factor as f32;
                (0..head_dim / 2)
                    .map(|i| {
                        let pos = base.powf((2 * i) as f32 / d);
                        let (extrap, interp) = (1.0 / pos, 1.0 / (factor * pos));
                        let ramp = (((i as f64 - low) / span) as f32).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        interp * (1.0 - keep) + extrap * keep
                    })
                    .collect()
            }
        }
    }

    /// The factor cos and sin are multiplied by (`attention_factor`, yarn's mscale; 1 for
    /// the other scalings).
    pub fn attention_scaling(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// The table `rope_forward` reads: `cos (P, HD/2)` then `sin (P, HD/2)` for positions
    /// `0..positions`, angles `pos * inv_freq` rounded to fp32 as transformers' fp32 product.
    pub fn table(&self, head_dim: usize, positions: usize) -> Vec<f32> {
        let inv = self.inv_freq(head_dim);
        let half = inv.len();
        let mut out = vec![0.0f32; 2 * positions * half];
        let (cos, sin) = out.split_at_mut(positions * half);
        let scale = self.attention_scaling();
        for p in 0..positions {
            for (j, &f) in inv.iter().enumerate() {
                let angle = p as f32 * f;
                cos[p * half + j] = angle.cos() * scale;
                sin[p * half + j] = angle.sin() * scale;
            }
        }
        out
    }
}

/// A Llama-family shape (Hugging Face `config.json` names).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Defaults to `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    /// Biases on q, k, v (Llama's `attention_bias` also puts one on `o_proj`; Qwen2 always has
    /// them on q, k, v and never on `o_proj`).
    pub qkv_bias: bool,
    pub o_proj_bias: bool,
    /// `mlp_bias` (Llama only).
    pub mlp_bias: bool,
    /// Qwen3's `q_norm`, `k_norm`.
    pub qk_norm: bool,
    pub tie_word_embeddings: bool,
    pub rope: Rope,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`, an int or a list.
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written (`bfloat16`, `float16`, `float32`), if any.
    pub torch_dtype: Option<String>,
    /// The attention window when one applies (Mistral's `sliding_window`; Qwen2/3's when
    /// `use_sliding_window` is true): zinf trains sequences no longer than it, where
    /// sliding-window attention is plain causal attention.
    pub sliding_window: Option<usize>,
}

/// A `config.json` error naming the file and the key.
fn bad(file: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: file.to_string(),
        message: msg.into(),
    }
}

fn get_usize(obj: &Map<String, Value>, file: &str, key: &str) -> Result<Option<usize>, ModelError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                bad(
                    file,
                    format!("{key}: expected a positive integer, found {v}"),
                )
            }),
    }
}

fn need_usize(obj: &Map<String, Value>, file: &str, key: &str) -> Result<usize, ModelError> {
    get_usize(obj, file, key)?.ok_or_else(|| bad(file, format!("{key}: missing")))
}

fn get_f64(obj: &Map<String, Value>, file: &str, key: &str) -> Result<Option<f64>, ModelError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| bad(file, format!("{key}: expected a number, found {v}"))),
    }
}

fn get_bool(obj: &Map<String, Value>, file: &str, key: &str) -> Result<Option<bool>, ModelError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(
            file,
            format!("{key}: expected true or false, found {v}"),
        )),
    }
}

fn token_ids(obj: &Map<String, Value>, file: &str, key: &str) -> Result<Vec<u32>, ModelError> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(file, format!("{key}: expected a token id, found {v}")))
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// Reads RoPE from one parameter object (v4's `rope_scaling` or v5's `rope_parameters`);
/// `theta` is the base already known (v4's top-level `rope_theta`).
fn read_rope_params(
    p: &Map<String, Value>,
    file: &str,
    section: &str,
    theta: Option<f64>,
    max_pos: usize,
) -> Result<Rope, ModelError> {
    let key = |k: &str| format!("{section}.{k}");
    let kind = match (p.get("rope_type"), p.get("type")) {
        (Some(Value::String(a)), Some(Value::String(b))) if a != b => {
            return Err(bad(
                file,
                format!("{section}: rope_type \"{a}\" and type \"{b}\" disagree"),
            ))
        }
        (Some(Value::String(a)), _) | (None, Some(Value::String(a))) => a.as_str(),
        (None, None) => "default",
        (Some(v), _) | (None, Some(v)) => {
            return Err(bad(
                file,
                format!("{}: expected a string, found {v}", key("rope_type")),
            ))
        }
    };
    let theta = match (get_f64(p, file, "rope_theta")?, theta) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                file,
                format!(
                    "rope_theta {b} and {} {a} disagree: fix the file so both say the same base",
                    key("rope_theta")
                ),
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => 10000.0,
    };
    if theta <= 0.0 {
        return Err(bad(file, format!("rope_theta {theta} must be positive")));
    }
    if let Some(f) = get_f64(p, file, "partial_rotary_factor")? {
        if f != 1.0 {
            return Err(bad(
                file,
                format!(
                    "{}: {f} is not supported (only 1.0)",
                    key("partial_rotary_factor")
                ),
            ));
        }
    }
    let factor = || {
        get_f64(p, file, "factor")?
            .filter(|f| *f > 0.0)
            .ok_or_else(|| bad(file, format!("{}: missing or not positive", key("factor"))))
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => {
            let need = |k: &str| {
                get_f64(p, file, k)?
                    .filter(|f| *f > 0.0)
                    .ok_or_else(|| bad(file, format!("{}: missing or not positive", key(k))))
            };
            let (lo, hi) = (need("low_freq_factor")?, need("high_freq_factor")?);
            if hi <= lo {
                return Err(bad(
                    file,
                    format!("{section}: high_freq_factor {hi} must exceed low_freq_factor {lo}"),
                ));
            }
            RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: match get_f64(
                    p,
                    file,
                    "original_max_position_embeddings",
                )? {
                    Some(o) if o < 1.0 => {
                        return Err(bad(
                            file,
                            format!(
                                "{}: {o} must be at least 1",
                                key("original_max_position_embeddings")
                            ),
                        ))
                    }
                    Some(o) => o,
                    None => max_pos as f64,
                },
            }
        }
        "yarn" => {
            let old =
                get_f64(p, file, "original_max_position_embeddings")?.unwrap_or(max_pos as f64);
            if old < 1.0 {
                return Err(bad(
                    file,
                    format!(
                        "{}: {old} must be at least 1",
                        key("original_max_position_embeddings")
                    ),
                ));
            }
            let factor = match get_f64(p, file, "factor")? {
                Some(f) if f > 0.0 => f,
                Some(_) => return Err(bad(file, format!("{}: not positive", key("factor")))),
                None => max_pos as f64 / old,
            };
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match (
                get_f64(p, file, "attention_factor")?,
                get_f64(p, file, "mscale")?.filter(|m| *m != 0.0),
                get_f64(p, file, "mscale_all_dim")?.filter(|m| *m != 0.0),
            ) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                _ => mscale(factor, 1.0),
            };
            let beta = |k: &str, default: f64| -> Result<f64, ModelError> {
                Ok(get_f64(p, file, k)?
                    .filter(|b| *b != 0.0)
                    .unwrap_or(default))
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: old,
                beta_fast: beta("beta_fast", 32.0)?,
                beta_slow: beta("beta_slow", 1.0)?,
                attention_factor,
                truncate: get_bool(p, file, "truncate")?.unwrap_or(true),
            }
        }
        other => {
            return Err(bad(
                file,
                format!(
                    "{}: \"{other}\" is not supported; zinf supports default, linear, llama3 \
                     and yarn",
                    key("rope_type")
                ),
            ))
        }
    };
    Ok(Rope { theta, scaling })
}

impl LlamaConfig {
    /// Parses `config.json` text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the file and key: not JSON, an architecture zinf does
    /// not train (listing those it does), a missing or malformed field, a RoPE form it does
    /// not support, v4 and v5 RoPE fields that disagree, a shape the kernels cannot run.
    pub fn from_json(text: &str, file: &str) -> Result<Self, ModelError> {
        let v: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
            .map_err(|e| bad(file, format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(file, "expected a JSON object"))?;
        let arch = Self::read_arch(obj, file)?;
        let hidden_size = need_usize(obj, file, "hidden_size")?;
        let num_attention_heads = need_usize(obj, file, "num_attention_heads")?;
        // Defaults of each configuration class when a key is absent (`configuration_*.py`);
        // an explicit null means "as many as the attention heads" / "hidden / heads".
        let absent = |k: &str| !obj.contains_key(k);
        let num_key_value_heads = match (get_usize(obj, file, "num_key_value_heads")?, arch) {
            (Some(n), _) => n,
            (None, Arch::Qwen2 | Arch::Qwen3) if absent("num_key_value_heads") => 32,
            (None, Arch::Mistral) if absent("num_key_value_heads") => 8,
            (None, _) => num_attention_heads,
        };
        let head_dim = match (get_usize(obj, file, "head_dim")?, arch) {
            (Some(d), _) => d,
            (None, Arch::Qwen3) if absent("head_dim") => 128,
            (None, _) => hidden_size / num_attention_heads,
        };
        let max_position_embeddings =
            get_usize(obj, file, "max_position_embeddings")?.unwrap_or(match arch {
                Arch::Llama => 2048,
                Arch::Qwen2 | Arch::Qwen3 => 32768,
                Arch::Mistral => 4096 * 32,
            });
        if let Some(act) = obj
            .get("hidden_act")
            .or_else(|| obj.get("hidden_activation"))
        {
            if act.as_str() != Some("silu") {
                return Err(bad(
                    file,
                    format!("hidden_act: {act} is not supported (only \"silu\")"),
                ));
            }
        }
        let attention_bias = get_bool(obj, file, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_proj_bias, mlp_bias) = match arch {
            Arch::Llama => (
                attention_bias,
                attention_bias,
                get_bool(obj, file, "mlp_bias")?.unwrap_or(false),
            ),
            Arch::Qwen3 => (attention_bias, attention_bias, false),
            Arch::Qwen2 => (true, false, false),
            Arch::Mistral => (false, false, false),
        };
        let rope = Self::read_rope(obj, file, max_position_embeddings)?;
        // Mistral: 4096 when absent, none when null; Qwen: only with use_sliding_window.
        let window = || -> Result<Option<usize>, ModelError> {
            Ok(match get_usize(obj, file, "sliding_window")? {
                Some(w) => Some(w),
                None if absent("sliding_window") => Some(4096),
                None => None,
            })
        };
        let qwen_window = get_bool(obj, file, "use_sliding_window")? == Some(true);
        let sliding_window = match arch {
            Arch::Mistral => window()?,
            Arch::Qwen2 | Arch::Qwen3 if qwen_window => window()?,
            _ => None,
        };
        // bos/eos: Llama's and Mistral's classes default to 1 and 2; Qwen's to none.
        let (bos_default, eos_default) = match arch {
            Arch::Llama | Arch::Mistral => (Some(1), vec![2]),
            Arch::Qwen2 | Arch::Qwen3 => (None, vec![]),
        };
        let bos_token_id = if absent("bos_token_id") {
            bos_default
        } else {
            token_ids(obj, file, "bos_token_id")?.first().copied()
        };
        let eos_token_ids = if absent("eos_token_id") {
            eos_default
        } else {
            token_ids(obj, file, "eos_token_id")?
        };
        let torch_dtype = ["torch_dtype", "dtype"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(|v| v.as_str()).map(str::to_string));
        let cfg = LlamaConfig {
            arch,
            vocab_size: need_usize(obj, file, "vocab_size")?,
            hidden_size,
            intermediate_size: need_usize(obj, file, "intermediate_size")?,
            num_hidden_layers: need_usize(obj, file, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(obj, file, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
            max_position_embeddings,
            qkv_bias,
            o_proj_bias,
            mlp_bias,
            qk_norm: arch == Arch::Qwen3,
            tie_word_embeddings: get_bool(obj, file, "tie_word_embeddings")?.unwrap_or(false),
            rope,
            bos_token_id,
            eos_token_ids,
            torch_dtype,
            sliding_window,
        };
        cfg.validate().map_err(|e| bad(file, e.to_string()))?;
        Ok(cfg)
    }

    fn read_arch(obj: &Map<String, Value>, file: &str) -> Result<Arch, ModelError> {
        let class = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        let model_type = obj.get("model_type").and_then(|m| m.as_str());
        let by_class = class.map(|c| SUPPORTED.iter().find(|s| s.0 == c));
        let by_type = model_type.map(|m| SUPPORTED.iter().find(|s| s.1 == m));
        let unsupported = |what: String| ModelError::Unsupported {
            path: file.to_string(),
            what,
            supported: SUPPORTED.iter().map(|s| s.0).collect(),
        };
        match (by_class, by_type) {
            (Some(Some(a)), Some(Some(b))) if a.2 != b.2 => Err(bad(
                file,
                format!(
                    "architectures [\"{}\"] and model_type \"{}\" disagree",
                    a.0, b.1
                ),
            )),
            (Some(Some(a)), _) | (None, Some(Some(a))) => Ok(a.2),
            (Some(None), _) => Err(unsupported(format!(
                "architecture {} is not supported",
                class.unwrap_or_default()
            ))),
            (None, Some(None)) => Err(unsupported(format!(
                "model_type \"{}\" is not supported",
                model_type.unwrap_or_default()
            ))),
            (None, None) => Err(unsupported(
                "neither architectures nor model_type is given".into(),
            )),
        }
    }

    /// Both RoPE forms; refused where they disagree.
    fn read_rope(obj: &Map<String, Value>, file: &str, max_pos: usize) -> Result<Rope, ModelError> {
        let theta = get_f64(obj, file, "rope_theta")?;
        let section = |key: &str| match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(bad(file, format!("{key}: expected an object, found {v}"))),
        };
        let v4 = section("rope_scaling")?
            .map(|p| read_rope_params(p, file, "rope_scaling", theta, max_pos))
            .transpose()?;
        let v5 = section("rope_parameters")?
            .map(|p| read_rope_params(p, file, "rope_parameters", theta, max_pos))
            .transpose()?;
        match (v4, v5) {
            (Some(a), Some(b)) if a != b => Err(bad(
                file,
                format!("rope_scaling ({a:?}) and rope_parameters ({b:?}) disagree: keep one form"),
            )),
            (Some(r), _) | (None, Some(r)) => Ok(r),
            (None, None) => match theta.unwrap_or(10000.0) {
                t if t > 0.0 => Ok(Rope {
                    theta: t,
                    scaling: RopeScaling::Default,
                }),
                t => Err(bad(file, format!("rope_theta {t} must be positive"))),
            },
        }
    }

    /// Checks the shape is one the kernels can run.
    pub fn validate(&self) -> Result<(), ModelError> {
        let (nh, kv) = (self.num_attention_heads, self.num_key_value_heads);
        if !nh.is_multiple_of(kv) {
            return Err(ModelError::Shape(format!(
                "num_attention_heads {nh} is not a multiple of num_key_value_heads {kv}"
            )));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return Err(ModelError::Shape(format!(
                "head_dim {} must be even (RoPE rotates pairs)",
                self.head_dim
            )));
        }
        if self.vocab_size > u32::MAX as usize - 1 {
            return Err(ModelError::Shape(
                "vocab_size does not fit in u32 token ids".into(),
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(ModelError::Shape("rms_norm_eps must be positive".into()));
        }
        let total = super::layout::llama_layout_checked(self);
        if total.is_none() {
            return Err(ModelError::Shape(
                "the parameter count overflows this machine's address space".into(),
            ));
        }
        Ok(())
    }

    /// Width of a packed qkv row, `(heads + 2 kv_heads) * head_dim`.
    pub fn qkv_width(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }

    /// Total parameter count.
    pub fn num_params(&self) -> usize {
        super::layout::llama_layout(self).total
    }

    /// Matmul FLOPs of forward + backward per token at sequence length `t` (PaLM's count, as
    /// [`crate::model::GptConfig::train_flops_per_token`]: 6 per weight of every block and of
    /// the head, plus `12 L T (heads * head_dim)` for scores and values).
    pub fn train_flops_per_token(&self, t: usize) -> f64 {
        let (l, c, v) = (
            self.num_hidden_layers as f64,
            self.hidden_size as f64,
            self.vocab_size as f64,
        );
        let (i, q, w) = (
            self.intermediate_size as f64,
            (self.num_attention_heads * self.head_dim) as f64,
            self.qkv_width() as f64,
        );
        let block = c * w + q * c + 3.0 * c * i;
        6.0 * (l * block + c * v) + 12.0 * l * t as f64 * q
    }
}

impl LlamaConfig {
    /// Reads `dir/config.json`.
    pub fn from_folder(dir: &std::path::Path) -> Result<Self, ModelError> {
        let (path, text) = crate::model::hf::read_config_text(dir)?;
        Self::from_json(&text, &path.display().to_string())
    }
}
