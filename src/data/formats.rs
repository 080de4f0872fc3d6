//! The data people bring, turned into one token stream: plain text, llm.c `.bin` tokens, JSONL
//! with a `text` field, and chat data (OpenAI `messages`, alpaca `instruction`/`input`/
//! `output`, sharegpt `conversations` of `from`/`value`) rendered with the model's chat
//! template, the prompt masked from the loss.
//!
//! Masking travels in the stream itself: a token with [`PROMPT_FLAG`] set is read by the model
//! but never predicted — as a target it becomes [`crate::device::IGNORE_INDEX`], transformers'
//! label −100 — so batching stays a window over one `Vec<u32>`. Conversations are packed one
//! after another (TRL's `packing=True`); only the assistants' turns are learned (TRL's
//! `assistant_only_loss`): a token is learned when it starts inside the text an assistant
//! message adds to the rendering.
//!
//! Tokenized data is cached beside the input (`FILE.zinf-<key>.tokens`, the key hashing the
//! tokenizer, the chat template, the format and the file's bytes), written as JSONL lines are
//! read and memory-mapped from there, so neither a JSONL file nor its tokens need fit in RAM
//! and a second run starts at once; a cache that cannot be written is a warning (the tokens
//! are then held in memory). Plain text is tokenized whole (BPE merges across any cut).

use super::chat::{ChatTemplate, Message};
use super::{parse_llmc_bin, DataError, Tokenizer, Tokens};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Set on a token that is context only: not a training target (the prompt of a chat turn).
pub const PROMPT_FLAG: u32 = 1 << 31;

/// How a data file is read (`zinf.data.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// By extension and content: `.bin` llm.c tokens, `.jsonl`/`.json` lines (each line's
    /// kind by its keys), anything else plain text.
    Auto,
    /// The whole file is one text.
    Text,
    /// One JSON object a line with a `text` field.
    JsonlText,
    /// One JSON object a line with OpenAI `messages`.
    Messages,
    /// One JSON object a line with alpaca `instruction`, optional `input`, `output`.
    Alpaca,
    /// One JSON object a line with sharegpt `conversations` of `from`/`value`.
    Sharegpt,
}

impl DataFormat {
    /// The names `zinf.data.format` takes.
    pub const NAMES: &'static [&'static str] =
        &["auto", "text", "jsonl", "messages", "alpaca", "sharegpt"];

    /// From a `zinf.data.format` value (one of [`DataFormat::NAMES`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auto" => DataFormat::Auto,
            "text" => DataFormat::Text,
            "jsonl" => DataFormat::JsonlText,
            "messages" => DataFormat::Messages,
            "alpaca" => DataFormat::Alpaca,
            "sharegpt" => DataFormat::Sharegpt,
            _ => return None,
        })
    }
}

/// What a data file is tokenized with.
pub struct TokenizeWith<'a> {
    pub tokenizer: &'a Tokenizer,
    /// The model's chat template (needed for chat data).
    pub chat: Option<&'a ChatTemplate>,
}

fn fmt_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// 64-bit FNV-1a (stable across builds and machines, unlike std's hasher), fed in parts.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Ends a part (so `ab|c` and `a|bc` differ).
    fn end_part(&mut self) {
        self.bytes(&[0xff]);
    }
}

const CACHE_MAGIC: &[u8; 8] = b"ZINFTOK1";

/// The cache file of `path` for this key.
pub fn cache_path(path: &Path, key: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".zinf-{key:016x}.tokens"));
    path.with_file_name(name)
}

/// Maps a cache file: `ZINFTOK1`, the u64 token count, the tokens as little-endian u32.
fn map_cache(path: &Path) -> Option<Tokens> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: a read-only mapping of a file only zinf writes (atomically, by rename); a cache
    // changed by another process gives wrong tokens, not memory unsafety (only copied out).
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let head = map.get(..16)?;
    let n = u64::from_le_bytes(head[8..16].try_into().ok()?) as usize;
    if &head[..8] != CACHE_MAGIC || map.len() != 16usize.checked_add(n.checked_mul(4)?)? {
        return None;
    }
    Some(Tokens::mapped(map, 16, n))
}

/// Writes tokens to a cache file as they come (header first, count patched at the end), then
/// renames it into place: a killed run leaves no half cache under the real name. The first
/// write error is kept and stops further writes; `finish` returns it.
struct CacheWriter {
    tmp: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    count: u64,
    failed: Option<std::io::Error>,
}

impl CacheWriter {
    fn create(path: &Path) -> std::io::Result<Self> {
        let tmp = path.with_extension("tokens.tmp");
        let mut out = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(&tmp)?);
        out.write_all(CACHE_MAGIC)?;
        out.write_all(&0u64.to_le_bytes())?;
        Ok(CacheWriter {
            tmp,
            out,
            count: 0,
            failed: None,
        })
    }

    fn push(&mut self, tokens: &[u32]) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = tokens
            .iter()
            .try_for_each(|t| self.out.write_all(&t.to_le_bytes()))
        {
            self.failed = Some(e);
        }
        self.count += tokens.len() as u64;
    }

    /// Removes the temporary file (the input had an error).
    fn discard(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.tmp);
    }

    /// Patches the count, syncs and renames to `path`; on any error the temporary file is
    /// removed.
    fn finish(mut self, path: &Path) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let tmp = self.tmp.clone();
        let r = (|| {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            self.out.flush()?;
            let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
            f.seek(SeekFrom::Start(8))?;
            f.write_all(&self.count.to_le_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}

/// Reads `path` as `format` into one token stream (prompt tokens flagged with
/// [`PROMPT_FLAG`]). The stream is written to a cache beside the file as it is made and
/// mapped from there (a tokenized dataset larger than RAM is paged, not held); the next run
/// with the same tokenizer, template, format and bytes maps the cache at once.
///
/// # Errors
/// The file unreadable or not UTF-8 (naming the byte), a line that is not a JSON object or
/// lacks the fields of its format (naming file and line), chat data without a chat
/// template, a template whose renderings are not prefixes of each other.
pub fn load(path: &Path, format: DataFormat, with: &TokenizeWith<'_>) -> Result<Tokens, DataError> {
    let io_err = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let is_bin = path.extension().is_some_and(|e| e == "bin");
    if is_bin && matches!(format, DataFormat::Auto) {
        let bytes = std::fs::read(path).map_err(io_err)?;
        return parse_llmc_bin(&bytes)
            .map(Tokens::from)
            .map_err(|m| fmt_err(path, m));
    }
    let mut h = Fnv::new();
    h.bytes(&with.tokenizer.identity());
    h.end_part();
    h.bytes(with.chat.map_or(String::new(), |c| c.identity()).as_bytes());
    h.end_part();
    h.bytes(format!("{format:?}").as_bytes());
    h.end_part();
    {
        let mut f =
            std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(io_err)?);
        loop {
            let buf = f.fill_buf().map_err(io_err)?;
            if buf.is_empty() {
                break;
            }
            h.bytes(buf);
            let n = buf.len();
            f.consume(n);
        }
    }
    let cache = cache_path(path, h.0);
    if let Some(tokens) = map_cache(&cache) {
        tracing::info!(
            "data: {} tokens mapped from the cache {}",
            tokens.len(),
            cache.display()
        );
        return Ok(tokens);
    }
    // Into the cache file as the tokens come, then mapped; when the cache cannot be written
    // (a read-only folder, a full disk), tokenized again into memory.
    match CacheWriter::create(&cache) {
        Ok(mut w) => {
            if let Err(e) = tokenize(path, format, with, &mut |t| w.push(t)) {
                w.discard();
                return Err(e);
            }
            let mapped = w.finish(&cache).and_then(|_| {
                map_cache(&cache)
                    .ok_or_else(|| std::io::Error::other("the written cache does not map"))
            });
            match mapped {
                Ok(t) => return Ok(t),
                Err(e) => tracing::warn!(
                    "data: cannot write the token cache {}: {e}; tokenizing into memory",
                    cache.display()
                ),
            }
        }
        Err(e) => tracing::warn!(
            "data: cannot write the token cache {}: {e}; tokenizing into memory",
            cache.display()
        ),
    }
    let mut tokens = Vec::new();
    tokenize(path, format, with, &mut |t| tokens.extend_from_slice(t))?;
    Ok(Tokens::from(tokens))
}

/// Tokenizes `path` as `format`, handing the tokens to `out` in order: a text file whole, JSONL
/// a line at a time.
fn tokenize(
    path: &Path,
    format: DataFormat,
    with: &TokenizeWith<'_>,
    out: &mut dyn FnMut(&[u32]),
) -> Result<(), DataError> {
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    match format {
        DataFormat::Text => out(&with.tokenizer.encode(&read_text(path)?)?),
        DataFormat::Auto if !jsonl => out(&with.tokenizer.encode(&read_text(path)?)?),
        _ => load_lines(path, format, with, out)?,
    }
    Ok(())
}

/// The whole file as UTF-8 text.
fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        fmt_err(
            path,
            format!(
                "not UTF-8 text (byte {}); pass a .bin of u16 tokens for pre-tokenized data",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// JSONL: each non-empty line one object, tokenized by its format and handed to `out`, read
/// one line at a time.
fn load_lines(
    path: &Path,
    format: DataFormat,
    with: &TokenizeWith<'_>,
    out: &mut dyn FnMut(&[u32]),
) -> Result<(), DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut raw = Vec::new();
    let mut i = 0usize;
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|source| DataError::Io {
                path: path.display().to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        i += 1;
        let at = |msg: String| fmt_err(path, format!("line {i}: {msg}"));
        let line = std::str::from_utf8(&raw)
            .map_err(|e| at(format!("not UTF-8 (byte {} of the line)", e.valid_up_to())))?
            .trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| at("not a JSON object".into()))?;
        let kind = match format {
            DataFormat::Auto => {
                if obj.contains_key("messages") {
                    DataFormat::Messages
                } else if obj.contains_key("conversations") {
                    DataFormat::Sharegpt
                } else if obj.contains_key("instruction") {
                    DataFormat::Alpaca
                } else if obj.contains_key("text") {
                    DataFormat::JsonlText
                } else {
                    return Err(at(
                        "no \"text\", \"messages\", \"conversations\" or \"instruction\" key; \
                         set zinf.data.format to say what the lines are"
                            .into(),
                    ));
                }
            }
            f => f,
        };
        if kind == DataFormat::JsonlText {
            let t = obj
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| at("\"text\" missing or not a string".into()))?;
            let tokens = with.tokenizer.encode(t).map_err(|e| at(e.to_string()))?;
            out(&tokens);
            continue;
        }
        let messages = to_messages(obj, kind).map_err(at)?;
        let chat = with.chat.ok_or_else(|| {
            at(
                "chat data needs the model's chat_template (tokenizer_config.json or \
                chat_template.jinja in the model folder)"
                    .into(),
            )
        })?;
        let tokens = render_masked(&messages, chat, with.tokenizer).map_err(|e| match e {
            DataError::Tokenizer(m) => at(m),
            e => e,
        })?;
        out(&tokens);
    }
    Ok(())
}

fn field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<&'a str, String> {
    obj.get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("\"{key}\" missing or not a string"))
}

/// One line of chat data as messages.
fn to_messages(
    obj: &serde_json::Map<String, serde_json::Value>,
    kind: DataFormat,
) -> Result<Vec<Message>, String> {
    let msg = |role: &str, content: &str| Message {
        role: role.into(),
        content: content.into(),
    };
    let mut out = Vec::new();
    match kind {
        DataFormat::Messages => {
            let list = obj
                .get("messages")
                .and_then(|m| m.as_array())
                .ok_or("\"messages\" is not a list")?;
            for (j, m) in list.iter().enumerate() {
                let m = m
                    .as_object()
                    .ok_or(format!("messages[{j}] is not an object"))?;
                let role = field(m, "role").map_err(|e| format!("messages[{j}]: {e}"))?;
                let content = field(m, "content").map_err(|e| format!("messages[{j}]: {e}"))?;
                out.push(msg(role, content));
            }
        }
        DataFormat::Alpaca => {
            // LLaMA-Factory's alpaca converter: the prompt is `instruction\ninput`.
            if let Some(sys) = obj.get("system").and_then(|s| s.as_str()) {
                out.push(msg("system", sys));
            }
            let instruction = field(obj, "instruction")?;
            let input = obj.get("input").and_then(|i| i.as_str()).unwrap_or("");
            let prompt = if input.is_empty() {
                instruction.to_string()
            } else {
                format!("{instruction}\n{input}")
            };
            out.push(msg("user", &prompt));
            out.push(msg("assistant", field(obj, "output")?));
        }
        _ => {
            let list = obj
                .get("conversations")
                .and_then(|m| m.as_array())
                .ok_or("\"conversations\" is not a list")?;
            for (j, m) in list.iter().enumerate() {
                let m = m
                    .as_object()
                    .ok_or(format!("conversations[{j}] is not an object"))?;
                let from = field(m, "from").map_err(|e| format!("conversations[{j}]: {e}"))?;
                let role = match from {
                    "human" | "user" => "user",
                    "gpt" | "assistant" | "chatgpt" | "bard" => "assistant",
                    "system" => "system",
                    other => {
                        return Err(format!(
                            "conversations[{j}].from: \"{other}\" is not human, gpt or system"
                        ))
                    }
                };
                let value = field(m, "value").map_err(|e| format!("conversations[{j}]: {e}"))?;
                out.push(msg(role, value));
            }
        }
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return Err("no assistant turn: nothing to learn from this line".into());
    }
    Ok(out)
}

/// Renders a conversation and tokenizes it, flagging every token that does not start inside
/// the text an assistant message adds (its rendering after the prompt that opens its turn).
pub fn render_masked(
    messages: &[Message],
    chat: &ChatTemplate,
    tok: &Tokenizer,
) -> Result<Vec<u32>, DataError> {
    let full = chat.render(messages, false)?;
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = chat.render(&messages[..i], true)?;
        let upto = chat.render(&messages[..=i], false)?;
        if !upto.starts_with(&prompt) || !full.starts_with(&upto) {
            return Err(DataError::Tokenizer(
                "the chat template does not render a conversation as the prefix of its \
                 continuation, so the prompt cannot be masked"
                    .into(),
            ));
        }
        spans.push(prompt.len()..upto.len());
    }
    let (ids, offsets) = tok.encode_with_offsets(&full)?;
    Ok(ids
        .into_iter()
        .zip(offsets)
        .map(|(id, (start, _))| {
            if spans.iter().any(|s| s.contains(&start)) {
                id
            } else {
                id | PROMPT_FLAG
            }
        })
        .collect())
}
