//! Reading Hugging Face checkpoint folders: `config.json` and `model.safetensors`, or shards
//! `model-0000k-of-0000n.safetensors` listed by `model.safetensors.index.json`.
//!
//! Every shard is memory-mapped (`memmap2`) and its header parsed once; tensors are read one
//! contiguous range of the flat layout at a time ([`HfWeights::read_range`]), converted to
//! fp32 straight from the mapping, so a checkpoint larger than RAM loads group by group into
//! its tier and a shard is never copied whole into host memory. As transformers' loader does,
//! the index's `weight_map` decides which file holds a tensor and `metadata.total_size` is
//! not trusted. Every expected tensor's presence, shape and dtype is checked before the first
//! byte is converted; an error names the tensor and the file.

use super::layout::TensorSpec;
use super::ModelError;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The single-file weights name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The model config name.
pub const CONFIG_FILE: &str = "config.json";

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn ckpt_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// A tensor's header entry: dtype, shape, and byte range inside the file's data section.
#[derive(Clone, Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: (usize, usize),
}

/// One memory-mapped safetensors file and its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Where tensor data begins in the file (8 + header length).
    data_start: usize,
    tensors: HashMap<String, Entry>,
}

impl Shard {
    fn open(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: the mapping is read-only and the bytes are only copied out and converted. A
        // file rewritten in place by another process while mapped gives wrong values; one
        // truncated while mapped raises SIGBUS on the next read (the process dies, nothing is
        // written). zinf's own export never rewrites a mapped file in place: it writes a new
        // file and renames it over the old one.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        let (header, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| ckpt_err(path, format!("not a valid safetensors file: {e}")))?;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: info.data_offsets,
                };
                (name, entry)
            })
            .collect();
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header,
            tensors,
        })
    }
}

impl Shard {
    /// Drops the pages of `len` bytes at `offset` from this process's resident set once read
    /// (they stay in the page cache): loading a checkpoint larger than RAM keeps the RSS at
    /// one group, not the whole mapping. Advice only; a failure changes nothing.
    fn release(&self, offset: usize, len: usize) {
        let page = 4096;
        let start = offset.div_ceil(page) * page;
        let end = (offset + len) / page * page;
        if end > start {
            // SAFETY: MADV_DONTNEED on a read-only, file-backed mapping only discards this
            // process's copies of the pages; a later read faults them in again from the file,
            // unchanged. No reference into the range is held past this point by `read_range`.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }
}

/// The weights of a checkpoint folder, mapped and indexed by tensor name.
pub struct HfWeights {
    shards: Vec<Shard>,
    /// tensor name -> shard index.
    owner: HashMap<String, usize>,
}

impl HfWeights {
    /// Opens the folder's weights: the index and every shard it names, or the single file.
    ///
    /// # Errors
    /// No weights file, an index that is not JSON or lacks `weight_map`, a shard named by the
    /// index that is missing or not safetensors, a tensor the index places in a file that
    /// does not hold it.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(WEIGHTS_FILE);
        // transformers' `from_pretrained` takes `model.safetensors` when both are there.
        if index.exists() && !single.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ckpt_err(&index, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ckpt_err(&index, "no \"weight_map\" object"))?;
            let mut files: Vec<String> = Vec::new();
            let mut owner = HashMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    ckpt_err(&index, format!("weight_map.{name}: not a file name"))
                })?;
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(ckpt_err(
                        &index,
                        format!("weight_map.{name}: \"{file}\" is not a file in this folder"),
                    ));
                }
                let i = match files.iter().position(|f| f == file) {
                    Some(i) => i,
                    None => {
                        files.push(file.to_string());
                        files.len() - 1
                    }
                };
                owner.insert(name.clone(), i);
            }
            if files.is_empty() {
                return Err(ckpt_err(&index, "weight_map names no tensor"));
            }
            let shards = files
                .iter()
                .map(|f| Shard::open(&dir.join(f)))
                .collect::<Result<Vec<_>, _>>()?;
            for (name, &i) in &owner {
                if !shards[i].tensors.contains_key(name) {
                    return Err(ckpt_err(
                        &shards[i].path,
                        format!(
                            "{name}: listed in {INDEX_FILE} for this file, which does not hold it"
                        ),
                    ));
                }
            }
            Ok(HfWeights { shards, owner })
        } else if single.exists() {
            let shard = Shard::open(&single)?;
            let owner = shard.tensors.keys().map(|k| (k.clone(), 0)).collect();
            Ok(HfWeights {
                shards: vec![shard],
                owner,
            })
        } else {
            Err(ckpt_err(
                dir,
                format!("no {WEIGHTS_FILE} or {INDEX_FILE}: not a Hugging Face checkpoint folder"),
            ))
        }
    }

    /// The files holding the weights.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.owner.keys().map(String::as_str)
    }

    /// Checks every tensor of `layout` is present with its shape and a float dtype zinf reads
    /// (F32, F16, BF16). Returns the names in the checkpoint the layout does not use (the
    /// caller logs them; transformers ignores them too, e.g. old `rotary_emb.inv_freq`).
    pub fn check(&self, layout: &[TensorSpec]) -> Result<Vec<String>, ModelError> {
        for t in layout {
            let (shard, e) = self.find(&t.name)?;
            let (dtype, shape) = (e.dtype, e.shape.as_slice());
            if shape != t.shape.as_slice() {
                return Err(ckpt_err(
                    &shard.path,
                    format!(
                        "{}: shape {shape:?}, the config implies {:?}",
                        t.name, t.shape
                    ),
                ));
            }
            if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(ckpt_err(
                    &shard.path,
                    format!("{}: dtype {dtype:?}; zinf reads F32, F16 and BF16", t.name),
                ));
            }
        }
        let used: std::collections::HashSet<&str> =
            layout.iter().map(|t| t.name.as_str()).collect();
        let mut unused: Vec<String> = self
            .owner
            .keys()
            .filter(|n| !used.contains(n.as_str()))
            .cloned()
            .collect();
        unused.sort();
        Ok(unused)
    }

    fn find(&self, name: &str) -> Result<(&Shard, &Entry), ModelError> {
        let i = *self.owner.get(name).ok_or_else(|| {
            let files: Vec<String> = self
                .files()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let dir = self
                .shards
                .first()
                .and_then(|s| s.path.parent())
                .unwrap_or(Path::new("."));
            ckpt_err(
                dir,
                format!("tensor {name} is missing (looked in {})", files.join(", ")),
            )
        })?;
        let shard = &self.shards[i];
        Ok((shard, &shard.tensors[name]))
    }

    /// The values of the flat range `r` (whole tensors of `layout`, in layout order) in fp32,
    /// read straight from the mapped files. Call [`HfWeights::check`] first.
    pub fn read_range(
        &self,
        layout: &[TensorSpec],
        r: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0.0f32; r.len()];
        for t in layout.iter().filter(|t| r.contains(&t.offset)) {
            let tr = t.range();
            if tr.end > r.end {
                return Err(ModelError::Shape(format!(
                    "{}: straddles the range {r:?} asked for",
                    t.name
                )));
            }
            let (shard, e) = self.find(&t.name)?;
            let (dtype, (a, b)) = (e.dtype, e.bytes);
            let bytes = &shard.map[shard.data_start + a..shard.data_start + b];
            let dst = &mut out[tr.start - r.start..tr.end - r.start];
            let width = match dtype {
                Dtype::F32 => 4,
                _ => 2,
            };
            if bytes.len() != dst.len() * width {
                return Err(ckpt_err(
                    &shard.path,
                    format!("{}: {} bytes for {} values", t.name, bytes.len(), dst.len()),
                ));
            }
            convert(dtype, bytes, dst);
            shard.release(shard.data_start + a, b - a);
        }
        Ok(out)
    }
}

/// Little-endian F32/F16/BF16 bytes -> fp32 (half values widen exactly).
fn convert(dtype: Dtype, bytes: &[u8], dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
    }
}

/// Reads `dir/config.json` as text (BOM allowed by the parser).
pub fn read_config_text(dir: &Path) -> Result<(PathBuf, String), ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    Ok((path, text))
}

/// A folder's weights for `spec`, opened and checked (every tensor present, its shape and a
/// dtype zinf reads), with the model's tensors named as the files name them (GPT-2's with or
/// without transformers' `transformer.` prefix, whichever the files use). Names the files hold
/// that the model does not use are returned too (the caller logs them; transformers ignores
/// them, e.g. old `rotary_emb.inv_freq`).
pub fn open_weights(
    dir: &Path,
    spec: &super::ModelSpec,
) -> Result<(HfWeights, Vec<TensorSpec>, Vec<String>), ModelError> {
    let weights = HfWeights::open(dir)?;
    let (mut tensors, _) = spec.layout();
    if let super::ModelSpec::Gpt2(_) = spec {
        if weights.names().any(|n| n.starts_with("transformer.")) {
            for t in &mut tensors {
                t.name = format!("transformer.{}", t.name);
            }
        }
    }
    let unused = weights.check(&tensors)?;
    Ok((weights, tensors, unused))
}

impl HfWeights {
    /// The weights as the engine's initial parameters: each group range read from the
    /// mapped files when the engine asks for it (call [`HfWeights::check`] first).
    pub fn into_source(self, tensors: Vec<TensorSpec>) -> super::ParamSource {
        Box::new(move |r| self.read_range(&tensors, r))
    }
}
