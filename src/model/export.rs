//! Writing a Hugging Face folder that `AutoModelForCausalLM.from_pretrained(DIR)` loads:
//! `config.json`, the weights as safetensors, sharded like transformers' `save_pretrained`
//! (`model-0000k-of-0000n.safetensors` of at most `max_shard_bytes` each, 5 GB by default, with
//! `model.safetensors.index.json`; one `model.safetensors` when everything fits), in the
//! trained dtype, and the source folder's tokenizer files copied.
//!
//! The weights are streamed: the caller hands one parameter group's stored bytes at a time
//! (from whichever tier holds them) and each tensor is written straight to its shard, so the
//! host never holds more than one group. The safetensors crate serializes only from tensors
//! all held in memory at once, so the file format (8-byte header length, JSON header, data in
//! header order; <https://github.com/huggingface/safetensors#format>) is written here.

use super::layout::TensorSpec;
use super::{ModelError, ModelSpec, ParamDtype};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Files copied from the source folder when present (tokenizer and generation settings).
pub const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportReport {
    /// Weight files, in order.
    pub files: Vec<PathBuf>,
    /// Bytes of tensor data written.
    pub bytes: u64,
}

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    super::hf::io_err(path, source)
}

fn dtype_tag(d: ParamDtype) -> &'static str {
    match d {
        ParamDtype::F32 => "F32",
        ParamDtype::F16 => "F16",
        ParamDtype::Bf16 => "BF16",
    }
}

fn torch_dtype(d: ParamDtype) -> &'static str {
    match d {
        ParamDtype::F32 => "float32",
        ParamDtype::F16 => "float16",
        ParamDtype::Bf16 => "bfloat16",
    }
}

/// The names the files use: GPT-2's carry transformers' `transformer.` prefix; Llama-family
/// layouts already use the files' names.
fn file_names(spec: &ModelSpec, tensors: &[TensorSpec]) -> Vec<String> {
    tensors
        .iter()
        .map(|t| match spec {
            ModelSpec::Gpt2(_) => format!("transformer.{}", t.name),
            ModelSpec::Llama(_) => t.name.clone(),
        })
        .collect()
}

/// `config.json` of the export: GPT-2's written from its shape; a Llama-family model's is the
/// source folder's with `torch_dtype` (and `dtype`, when present) set to the trained dtype.
fn config_json(
    spec: &ModelSpec,
    dtype: ParamDtype,
    source: Option<&Path>,
) -> Result<serde_json::Value, ModelError> {
    match (spec, source) {
        (ModelSpec::Gpt2(c), _) => Ok(super::checkpoint::hf_config_json(c, dtype)),
        (ModelSpec::Llama(_), Some(dir)) => {
            let (path, text) = super::hf::read_config_text(dir)?;
            let mut v: serde_json::Value =
                serde_json::from_str(text.trim_start_matches('\u{feff}'))
                    .map_err(|e| super::hf::ckpt_err(&path, format!("not valid JSON: {e}")))?;
            if let Some(o) = v.as_object_mut() {
                o.insert("torch_dtype".into(), torch_dtype(dtype).into());
                if o.contains_key("dtype") {
                    o.insert("dtype".into(), torch_dtype(dtype).into());
                }
            }
            Ok(v)
        }
        (ModelSpec::Llama(_), None) => Err(ModelError::Shape(
            "a Llama-family export needs the folder the run started from (its config.json)".into(),
        )),
    }
}

/// Cuts tensors (layout order) into shards of at most `max` bytes each (a tensor larger than
/// `max` alone in its shard, as transformers does). Returns each tensor's shard.
fn plan_shards(tensors: &[TensorSpec], width: u64, max: u64) -> Vec<usize> {
    let mut shard = 0;
    let mut size = 0u64;
    tensors
        .iter()
        .map(|t| {
            let b = t.numel() as u64 * width;
            if size > 0 && size + b > max {
                shard += 1;
                size = 0;
            }
            size += b;
            shard
        })
        .collect()
}

/// One shard's safetensors header: names, dtypes, shapes and data offsets in layout order,
/// padded with spaces to a multiple of 8 bytes (as the format's writer does).
fn header(names: &[&str], tensors: &[&TensorSpec], dtype: ParamDtype) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut at = 0u64;
    for (name, t) in names.iter().zip(tensors) {
        let len = t.numel() as u64 * dtype.bytes() as u64;
        map.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype_tag(dtype),
                "shape": t.shape,
                "data_offsets": [at, at + len],
            }),
        );
        at += len;
    }
    let mut h = serde_json::Value::Object(map).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    h
}

/// Writes the folder. `groups` are the layout's group ranges; `read_group(g)` returns group
/// `g`'s parameters as stored (`dtype`, little-endian), called once per group in order.
///
/// # Errors
/// Creating or writing a file (naming it), a group of the wrong length, the source folder's
/// config missing for a Llama-family model; whatever `read_group` returns.
#[allow(clippy::too_many_arguments)]
pub fn write_folder<E: From<ModelError>>(
    dir: &Path,
    spec: &ModelSpec,
    dtype: ParamDtype,
    source: Option<&Path>,
    max_shard_bytes: u64,
    mut read_group: impl FnMut(usize) -> Result<Vec<u8>, E>,
) -> Result<ExportReport, E> {
    let (tensors, groups) = spec.layout();
    let names = file_names(spec, &tensors);
    let config = config_json(spec, dtype, source)?;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    if let Some(src) = source {
        let same = match (dir.canonicalize(), src.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(ModelError::Checkpoint {
                path: dir.display().to_string(),
                message: "is the folder the run started from: exporting there would overwrite \
                          its weights; give --out / --to another folder"
                    .into(),
            }
            .into());
        }
    }
    // Weight files of an earlier export in this folder (another sharding) would shadow or mix
    // with this one's: removed first.
    remove_old_weights(dir)?;
    let width = dtype.bytes() as u64;
    let shard_of = plan_shards(&tensors, width, max_shard_bytes.max(1));
    let n_shards = shard_of.last().map_or(1, |s| s + 1);
    let file_name = |s: usize| {
        if n_shards == 1 {
            super::hf::WEIGHTS_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, n_shards)
        }
    };
    let mut report = ExportReport {
        files: Vec::new(),
        bytes: 0,
    };
    let mut open: Option<(usize, std::io::BufWriter<std::fs::File>, PathBuf)> = None;
    let mut next_tensor = 0;
    for (gi, r) in groups.iter().enumerate() {
        let bytes = read_group(gi)?;
        if bytes.len() as u64 != r.len() as u64 * width {
            return Err(ModelError::Shape(format!(
                "export: group {gi} came as {} bytes, expected {}",
                bytes.len(),
                r.len() as u64 * width
            ))
            .into());
        }
        while next_tensor < tensors.len() && tensors[next_tensor].offset < r.end {
            let t = &tensors[next_tensor];
            let s = shard_of[next_tensor];
            if open.as_ref().is_none_or(|(cur, _, _)| *cur != s) {
                if let Some((_, mut w, path)) = open.take() {
                    w.flush().map_err(|e| io_err(&path, e))?;
                }
                let path = dir.join(file_name(s));
                let members: Vec<usize> =
                    (0..tensors.len()).filter(|&i| shard_of[i] == s).collect();
                let h = header(
                    &members
                        .iter()
                        .map(|&i| names[i].as_str())
                        .collect::<Vec<_>>(),
                    &members.iter().map(|&i| &tensors[i]).collect::<Vec<_>>(),
                    dtype,
                );
                // Written under a temporary name, renamed at the end: a reader that has the
                // old file mapped keeps it whole.
                let file = std::fs::File::create(tmp_name(&path)).map_err(|e| io_err(&path, e))?;
                let mut w = std::io::BufWriter::with_capacity(8 << 20, file);
                w.write_all(&(h.len() as u64).to_le_bytes())
                    .and_then(|_| w.write_all(&h))
                    .map_err(|e| io_err(&path, e))?;
                report.files.push(path.clone());
                open = Some((s, w, path));
            }
            let (_, w, path) = open.as_mut().expect("a shard is open");
            let at = (t.offset - r.start) as u64 * width;
            let len = t.numel() as u64 * width;
            w.write_all(&bytes[at as usize..(at + len) as usize])
                .map_err(|e| io_err(path, e))?;
            report.bytes += len;
            next_tensor += 1;
        }
    }
    if let Some((_, mut w, path)) = open.take() {
        w.flush()
            .and_then(|_| w.get_ref().sync_all())
            .map_err(|e| io_err(&path, e))?;
    }
    for path in &report.files {
        std::fs::rename(tmp_name(path), path).map_err(|e| io_err(path, e))?;
    }
    if n_shards > 1 {
        let weight_map: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&shard_of)
            .map(|(n, &s)| (n.clone(), file_name(s).into()))
            .collect();
        let index = serde_json::json!({
            "metadata": { "total_size": report.bytes },
            "weight_map": weight_map,
        });
        write_json(&dir.join(super::hf::INDEX_FILE), &index)?;
    }
    write_json(&dir.join(super::hf::CONFIG_FILE), &config)?;
    if let Some(src) = source {
        for f in COPIED_FILES {
            let from = src.join(f);
            if from.is_file() {
                let to = dir.join(f);
                std::fs::copy(&from, &to).map_err(|e| io_err(&to, e))?;
            }
        }
    }
    Ok(report)
}

/// The temporary name a weight file is written under.
fn tmp_name(path: &Path) -> PathBuf {
    let mut n = path.as_os_str().to_os_string();
    n.push(".tmp");
    PathBuf::from(n)
}

/// Removes `model.safetensors`, the index and `model-*-of-*.safetensors` from `dir`.
fn remove_old_weights(dir: &Path) -> Result<(), ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let shard =
            name.starts_with("model-") && name.contains("-of-") && name.ends_with(".safetensors");
        if name == super::hf::WEIGHTS_FILE || name == super::hf::INDEX_FILE || shard {
            std::fs::remove_file(e.path()).map_err(|err| io_err(&e.path(), err))?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Shape(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| io_err(path, e))
}

/// A `read_group` for [`write_folder`] over a whole parameter array in memory
/// ([`super::checkpoint::save_hf`], tests): group `g`'s stored bytes.
pub fn group_reader<'a>(
    params: &'a super::HostParams,
    groups: &'a [Range<usize>],
) -> impl FnMut(usize) -> Result<Vec<u8>, ModelError> + 'a {
    move |g| Ok(params.range_bytes(groups[g].clone()).to_vec())
}
