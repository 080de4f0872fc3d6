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
//! tokenizer, the chat template, the format and the file's bytes), so a second run starts at
//! once; a cache that cannot be written is only a warning.

use super::chat::{ChatTemplate, Message};
use super::{parse_llmc_bin, DataError, Tokenizer};
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

/// 64-bit FNV-1a (stable across builds and machines, unlike std's hasher).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff; // separates the parts
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const CACHE_MAGIC: &[u8; 8] = b"ZINFTOK1";

/// The cache file of `path` for this key.
pub fn cache_path(path: &Path, key: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".zinf-{key:016x}.tokens"));
    path.with_file_name(name)
}

fn read_cache(path: &Path) -> Option<Vec<u32>> {
    let bytes = std::fs::read(path).ok()?;
    let (head, body) = bytes.split_at_checked(16)?;
    let n = u64::from_le_bytes(head[8..16].try_into().ok()?) as usize;
    if &head[..8] != CACHE_MAGIC || body.len() != n.checked_mul(4)? {
        return None;
    }
    Some(
        body.chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn write_cache(path: &Path, tokens: &[u32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(16 + 4 * tokens.len());
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    let tmp = path.with_extension("tokens.tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads `path` as `format` into one token stream (prompt tokens flagged with
/// [`PROMPT_FLAG`]), from the cache beside it when the tokenizer, template, format and bytes
/// are unchanged.
///
/// # Errors
/// The file unreadable or not UTF-8 (naming the byte), a line that is not a JSON object or
/// lacks the fields of its format (naming file and line), chat data without a chat
/// template, a template whose renderings are not prefixes of each other.
pub fn load(
    path: &Path,
    format: DataFormat,
    with: &TokenizeWith<'_>,
) -> Result<Vec<u32>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let is_bin = path.extension().is_some_and(|e| e == "bin");
    if is_bin && matches!(format, DataFormat::Auto) {
        return parse_llmc_bin(&bytes).map_err(|m| fmt_err(path, m));
    }
    let template = with.chat.map_or("", |c| c.source.as_str());
    let key = fnv1a(&[
        &with.tokenizer.identity(),
        template.as_bytes(),
        format!("{format:?}").as_bytes(),
        &bytes,
    ]);
    let cache = cache_path(path, key);
    if let Some(tokens) = read_cache(&cache) {
        tracing::info!(
            "data: {} tokens from the cache {}",
            tokens.len(),
            cache.display()
        );
        return Ok(tokens);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        fmt_err(
            path,
            format!(
                "not UTF-8 text (byte {}); pass a .bin of u16 tokens for pre-tokenized data",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let tokens = match format {
        DataFormat::Text => with.tokenizer.encode(&text)?,
        DataFormat::Auto if !jsonl => with.tokenizer.encode(&text)?,
        _ => load_lines(path, &text, format, with)?,
    };
    if let Err(e) = write_cache(&cache, &tokens) {
        tracing::warn!(
            "data: cannot write the token cache {}: {e}",
            cache.display()
        );
    }
    Ok(tokens)
}

/// JSONL: each non-empty line one object, tokenized by its format and appended.
fn load_lines(
    path: &Path,
    text: &str,
    format: DataFormat,
    with: &TokenizeWith<'_>,
) -> Result<Vec<u32>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |msg: String| fmt_err(path, format!("line {}: {msg}", i + 1));
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
            out.extend(with.tokenizer.encode(t)?);
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
        out.extend(
            render_masked(&messages, chat, with.tokenizer).map_err(|e| match e {
                DataError::Tokenizer(m) => at(m),
                e => e,
            })?,
        );
    }
    Ok(out)
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
