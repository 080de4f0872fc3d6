//! Tokenizers: GPT-2's BPE (tiktoken's `r50k_base`, embedded, no download) for GPT-2, and a
//! Hugging Face `tokenizer.json` (the `tokenizers` crate, pure Rust with `fancy-regex`) for
//! the Llama family: Llama 2 and 3, Qwen, Mistral folders all ship one.

use super::DataError;
use std::path::Path;

/// The `tokenizer.json` file name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A token's byte range `(start, end)` in the text it was encoded from.
pub type ByteSpan = (usize, usize);

/// Text <-> token ids.
pub enum Tokenizer {
    /// GPT-2's encoding (`r50k_base`).
    Gpt2(&'static tiktoken_rs::CoreBPE),
    /// A Hugging Face `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
}

fn tok_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// GPT-2's encoding, embedded in tiktoken-rs.
    pub fn gpt2() -> Self {
        Tokenizer::Gpt2(tiktoken_rs::r50k_base_singleton())
    }

    /// The tokenizer of a model: GPT-2's BPE for GPT-2, the folder's `tokenizer.json` for the
    /// Llama family (`dir`: the folder the model comes from).
    pub fn for_model(
        spec: &crate::model::ModelSpec,
        dir: Option<&Path>,
    ) -> Result<Self, DataError> {
        match (spec, dir) {
            (crate::model::ModelSpec::Llama(_), Some(dir)) => Self::from_folder(dir),
            (crate::model::ModelSpec::Llama(_), None) => Err(DataError::Tokenizer(
                "a Llama-family model needs its folder's tokenizer.json (zinf.model.from)".into(),
            )),
            (crate::model::ModelSpec::Gpt2(_), _) => Ok(Self::gpt2()),
        }
    }

    /// The `tokenizer.json` of a Hugging Face folder.
    ///
    /// # Errors
    /// The file is missing (a folder without one cannot tokenize text; pre-tokenized `.bin`
    /// data still works) or not a tokenizer `tokenizers` reads.
    pub fn from_folder(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(DataError::Format {
                path: path.display().to_string(),
                message: "missing: text data needs the model's tokenizer.json (or give \
                          pre-tokenized .bin data)"
                    .into(),
            });
        }
        let mut t = tokenizers::Tokenizer::from_file(&path).map_err(|e| DataError::Format {
            path: path.display().to_string(),
            message: format!("not a tokenizer.json tokenizers reads: {e}"),
        })?;
        // transformers turns a tokenizer.json's truncation and padding off for a plain
        // `tokenizer(text)` call; so does zinf (a stored truncation would cut whole files).
        t.with_padding(None);
        t.with_truncation(None).map_err(tok_err)?;
        Ok(Tokenizer::Hf(Box::new(t)))
    }

    /// Text -> token ids, as transformers' `tokenizer(text)` gives them (a Hugging Face
    /// tokenizer adds its post-processor's special tokens, e.g. Llama 3's
    /// `<|begin_of_text|>`; GPT-2 encodes special tokens as plain text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Gpt2(bpe) => Ok(bpe.encode_ordinary(text)),
            Tokenizer::Hf(t) => Ok(t.encode(text, true).map_err(tok_err)?.get_ids().to_vec()),
        }
    }

    /// Text -> token ids without added special tokens, and each token's byte range in
    /// `text` (for masking the prompt part of a rendered conversation). Special tokens
    /// written in the text (`<|im_start|>`) are recognised as such.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>), DataError> {
        match self {
            Tokenizer::Gpt2(bpe) => {
                let ids = bpe.encode_ordinary(text);
                let mut at = 0;
                let mut offsets = Vec::with_capacity(ids.len());
                for &id in &ids {
                    let len = bpe.decode_bytes(&[id]).map_err(tok_err)?.len();
                    offsets.push((at, at + len));
                    at += len;
                }
                Ok((ids, offsets))
            }
            Tokenizer::Hf(t) => {
                let e = t.encode(text, false).map_err(tok_err)?;
                Ok((e.get_ids().to_vec(), e.get_offsets().to_vec()))
            }
        }
    }

    /// Token ids -> text; invalid UTF-8 at token boundaries is replaced.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, DataError> {
        match self {
            Tokenizer::Gpt2(bpe) => {
                let bytes = bpe.decode_bytes(tokens).map_err(tok_err)?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf(t) => t.decode(tokens, false).map_err(tok_err),
        }
    }

    /// The id of a token written as text (`<|im_end|>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Tokenizer::Gpt2(bpe) => {
                let ids = bpe.encode_with_special_tokens(token);
                (ids.len() == 1).then(|| ids[0])
            }
            Tokenizer::Hf(t) => t.token_to_id(token),
        }
    }

    /// Bytes that identify the tokenizer (for the tokenized-data cache key).
    pub fn identity(&self) -> Vec<u8> {
        match self {
            Tokenizer::Gpt2(_) => b"tiktoken r50k_base".to_vec(),
            Tokenizer::Hf(t) => t.to_string(false).unwrap_or_default().into_bytes(),
        }
    }
}
