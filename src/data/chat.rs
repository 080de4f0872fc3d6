//! Chat templates: a Hugging Face folder's `chat_template` (Jinja, in `tokenizer_config.json`
//! or `chat_template.jinja`) rendered with `minijinja` as transformers'
//! `apply_chat_template` renders it (`tokenization_utils_base.py`: a sandboxed Jinja
//! environment with `trim_blocks` and `lstrip_blocks`, variables `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, the function `raise_exception`, and
//! `strftime_now` for Llama 3.1's templates). Python string methods the templates call
//! (`.strip()`, `.startswith()`) come from `minijinja-contrib`'s pycompat.

use super::DataError;
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One chat turn (OpenAI's `messages` entries).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A folder's chat template, ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template source.
    pub source: String,
}

fn fmt_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// A special token in `tokenizer_config.json`: a string or an AddedToken object.
fn token_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31), the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Python's `strftime` for the date specifiers chat templates use (`%d %b %Y %B %m %y %%`),
/// today in UTC.
fn strftime_now(fmt: &str) -> Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: %{} is not supported", other.unwrap_or(' ')),
                ))
            }
        }
    }
    Ok(out)
}

impl ChatTemplate {
    /// The chat template of a Hugging Face folder: `chat_template.jinja` when present, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of
    /// which `default` is used). `None` when the folder has none.
    ///
    /// # Errors
    /// `tokenizer_config.json` unreadable or not JSON; a template minijinja cannot parse.
    pub fn from_folder(dir: &Path) -> Result<Option<Self>, DataError> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => serde_json::from_str(t.trim_start_matches('\u{feff}'))
                .map_err(|e| fmt_err(&cfg_path, format!("not valid JSON: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => {
                return Err(DataError::Io {
                    path: cfg_path.display().to_string(),
                    source: e,
                })
            }
        };
        let jinja = dir.join("chat_template.jinja");
        let from_jinja = jinja.is_file();
        let source = if from_jinja {
            Some(std::fs::read_to_string(&jinja).map_err(|e| DataError::Io {
                path: jinja.display().to_string(),
                source: e,
            })?)
        } else {
            match &cfg["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| fmt_err(&cfg_path, e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        let template_path = if from_jinja { &jinja } else { &cfg_path };
        env.add_template_owned("chat", source.clone())
            .map_err(|e| fmt_err(template_path, format!("chat_template: {e}")))?;
        Ok(Some(ChatTemplate {
            env,
            bos_token: token_text(&cfg["bos_token"]),
            eos_token: token_text(&cfg["eos_token"]),
            source,
        }))
    }

    /// What the rendering depends on (the tokenized-data cache key): the template and the
    /// bos/eos token texts it may print.
    pub fn identity(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.source, self.bos_token, self.eos_token
        )
    }

    /// Renders `messages` (with the assistant's turn opened when `add_generation_prompt`).
    ///
    /// # Errors
    /// The template raised an exception (`raise_exception`) or failed; the message says why.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| DataError::Tokenizer(format!("chat_template: {e}")))
    }
}
