//! Training data: GPT-2 BPE tokenization of any UTF-8 text file (tiktoken's `r50k_base`,
//! which is the `gpt2` encoding), llm.c's pre-tokenized `.bin` files of u16 tokens, a
//! train/validation split, and batches drawn deterministically from a seed.
//!
//! A batch is `b` windows of `t + 1` consecutive tokens: inputs are the first `t`, targets the
//! last `t`. Training windows start at offsets drawn from ChaCha8 seeded by the run's seed, so
//! the same seed gives the same batches on every machine. Validation walks its split in order.

pub mod chat;
pub mod formats;
pub mod tokenizer;

pub use tokenizer::Tokenizer;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// The GPT-2 vocabulary size.
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// `<|endoftext|>`.
pub const GPT2_EOT: u32 = 50256;
/// llm.c's `.bin` header: 256 little-endian i32, magic first.
const LLMC_MAGIC: i32 = 20240520;
const LLMC_HEADER_BYTES: usize = 256 * 4;

/// Errors reading or tokenizing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Reads tokens from `path`: llm.c `.bin` (by extension) or UTF-8 text tokenized with GPT-2 BPE
/// (see [`formats::load`] for every format and tokenizer).
pub fn load_tokens(path: &Path) -> Result<Vec<u32>, DataError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: p.clone(),
        source,
    })?;
    if path.extension().is_some_and(|e| e == "bin") {
        return parse_llmc_bin(&bytes).map_err(|message| DataError::Format { path: p, message });
    }
    let text = String::from_utf8(bytes).map_err(|e| DataError::Format {
        path: p.clone(),
        message: format!(
            "not UTF-8 text (byte {}); pass a .bin of u16 tokens for pre-tokenized data",
            e.utf8_error().valid_up_to()
        ),
    })?;
    Tokenizer::gpt2().encode(&text)
}

/// Parses llm.c's token file: header (magic 20240520, version 1, token count, 253 zeros), u16s.
pub fn parse_llmc_bin(bytes: &[u8]) -> Result<Vec<u32>, String> {
    if bytes.len() < LLMC_HEADER_BYTES {
        return Err(format!(
            "{} bytes, shorter than llm.c's 1024-byte header",
            bytes.len()
        ));
    }
    let word = |i: usize| {
        i32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    if word(0) != LLMC_MAGIC {
        return Err(format!(
            "bad magic {} (llm.c token files start with {LLMC_MAGIC})",
            word(0)
        ));
    }
    if word(1) != 1 {
        return Err(format!("unsupported llm.c token file version {}", word(1)));
    }
    let n = usize::try_from(word(2)).map_err(|_| "negative token count".to_string())?;
    let body = &bytes[LLMC_HEADER_BYTES..];
    if body.len() != 2 * n {
        return Err(format!(
            "header says {n} tokens, file holds {} bytes of tokens",
            body.len()
        ));
    }
    Ok(body
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
        .collect())
}

/// Writes tokens in llm.c's `.bin` format (all ids must fit in u16).
pub fn llmc_bin_bytes(tokens: &[u32]) -> Vec<u8> {
    let mut out = vec![0u8; LLMC_HEADER_BYTES];
    out[0..4].copy_from_slice(&LLMC_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&1i32.to_le_bytes());
    out[8..12].copy_from_slice(&(tokens.len() as i32).to_le_bytes());
    out.extend(tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()));
    out
}

/// A token stream in memory, or a view of a memory-mapped token cache file (a tokenized
/// dataset larger than RAM is paged in by the kernel as batches read it). Reads as `[u32]`.
#[derive(Clone)]
pub struct Tokens(TokensInner);

#[derive(Clone)]
enum TokensInner {
    Owned(std::sync::Arc<Vec<u32>>, std::ops::Range<usize>),
    Mapped(std::sync::Arc<memmap2::Mmap>, std::ops::Range<usize>),
}

impl Tokens {
    /// A view of `map` (whose bytes from `byte_start` are little-endian u32 tokens, 4-byte
    /// aligned) holding `len` tokens.
    pub fn mapped(map: memmap2::Mmap, byte_start: usize, len: usize) -> Self {
        assert!(byte_start.is_multiple_of(4) && byte_start + 4 * len <= map.len());
        let start = byte_start / 4;
        Tokens(TokensInner::Mapped(
            std::sync::Arc::new(map),
            start..start + len,
        ))
    }

    /// Whether the tokens are a view of a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, TokensInner::Mapped(..))
    }

    /// The tokens `r` of this stream, sharing its storage.
    pub fn slice(&self, r: std::ops::Range<usize>) -> Self {
        assert!(r.end <= self.len());
        match &self.0 {
            TokensInner::Owned(v, base) => Tokens(TokensInner::Owned(
                v.clone(),
                base.start + r.start..base.start + r.end,
            )),
            TokensInner::Mapped(m, base) => Tokens(TokensInner::Mapped(
                m.clone(),
                base.start + r.start..base.start + r.end,
            )),
        }
    }
}

impl From<Vec<u32>> for Tokens {
    fn from(v: Vec<u32>) -> Self {
        let n = v.len();
        Tokens(TokensInner::Owned(std::sync::Arc::new(v), 0..n))
    }
}

impl std::ops::Deref for Tokens {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match &self.0 {
            TokensInner::Owned(v, r) => &v[r.clone()],
            // The mapping is page-aligned and the view starts on a 4-byte boundary.
            TokensInner::Mapped(m, r) => {
                &bytemuck::cast_slice::<u8, u32>(&m[..m.len() / 4 * 4])[r.clone()]
            }
        }
    }
}

impl PartialEq for Tokens {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<u32>> for Tokens {
    fn eq(&self, other: &Vec<u32>) -> bool {
        **self == other[..]
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens({} tokens{})",
            self.len(),
            if self.is_mapped() { ", mapped" } else { "" }
        )
    }
}

/// A token stream split into a training head and a validation tail.
pub struct Dataset {
    pub train: Tokens,
    pub val: Tokens,
}

impl Dataset {
    /// Splits off the last `val_fraction` of `tokens` (at least one window of `t + 1`) for
    /// validation; errors when either side is too short for one sequence of `t` tokens. The
    /// two parts share the stream's storage (a mapped cache stays mapped).
    pub fn split(
        tokens: impl Into<Tokens>,
        val_fraction: f64,
        t: usize,
    ) -> Result<Self, DataError> {
        let tokens: Tokens = tokens.into();
        let n = tokens.len();
        let n_val = ((n as f64 * val_fraction) as usize).max(t + 1);
        if n < n_val + t + 1 {
            return Err(DataError::Format {
                path: "data".into(),
                message: format!("{n} tokens is too few for sequences of {t} tokens plus a validation split; use more text or a smaller block size"),
            });
        }
        Ok(Dataset {
            train: tokens.slice(0..n - n_val),
            val: tokens.slice(n - n_val..n),
        })
    }
}

/// Draws training batches: `b` windows at seeded random offsets.
pub struct Batcher {
    rng: ChaCha8Rng,
    b: usize,
    t: usize,
}

impl Batcher {
    /// A batcher for `b` x `t` batches from `seed`.
    pub fn new(seed: u64, b: usize, t: usize) -> Self {
        Batcher {
            rng: ChaCha8Rng::seed_from_u64(seed),
            b,
            t,
        }
    }

    /// The next (inputs, targets), each (B,T). `tokens` must hold more than `t` tokens.
    pub fn next_batch(&mut self, tokens: &[u32]) -> (Vec<u32>, Vec<u32>) {
        assert!(
            tokens.len() > self.t,
            "next_batch: fewer tokens than one window"
        );
        let span = (tokens.len() - self.t) as u64;
        let mut x = Vec::with_capacity(self.b * self.t);
        let mut y = Vec::with_capacity(self.b * self.t);
        for _ in 0..self.b {
            let start = (self.rng.random::<u64>() % span) as usize;
            x.extend(tokens[start..start + self.t].iter().map(|&k| input(k)));
            y.extend(
                tokens[start + 1..start + self.t + 1]
                    .iter()
                    .map(|&k| target(k)),
            );
        }
        (x, y)
    }
}

/// A stream token as the model reads it (its [`formats::PROMPT_FLAG`] cleared).
pub fn input(k: u32) -> u32 {
    k & !formats::PROMPT_FLAG
}

/// A stream token as a target: [`crate::device::IGNORE_INDEX`] when it is prompt (flagged),
/// else the token.
pub fn target(k: u32) -> u32 {
    if k & formats::PROMPT_FLAG != 0 {
        crate::device::IGNORE_INDEX
    } else {
        k
    }
}

/// Validation batches: consecutive windows from the start of `tokens`, at most `max_batches`.
pub fn val_batches(
    tokens: &[u32],
    b: usize,
    t: usize,
    max_batches: usize,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    let per_batch = b * t;
    let n = (tokens.len().saturating_sub(1) / per_batch).clamp(0, max_batches);
    (0..n)
        .map(|i| {
            let s = i * per_batch;
            (
                tokens[s..s + per_batch].iter().map(|&k| input(k)).collect(),
                tokens[s + 1..s + per_batch + 1]
                    .iter()
                    .map(|&k| target(k))
                    .collect(),
            )
        })
        .collect()
}

/// The built-in corpus: Shakespeare's plays as collected in "tinyshakespeare" (Andrej
/// Karpathy's char-rnn, 1.1 MB, public domain), shipped in `corpus/` and embedded in the
/// binary, so `zinf train` trains on real English on a fresh machine with no download.
pub const BUILTIN_TEXT: &str = include_str!("../../corpus/tinyshakespeare.txt");
