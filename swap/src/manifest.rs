//! The layout (offset table) and the manifest that records it with every shard's committed
//! version and checksums. The manifest is JSON behind a one-line header carrying the body's
//! crc32c and length, so a torn or edited manifest is refused rather than half-believed.
//!
//! Layout: every shard owns `slots_per_shard` slots, two (A/B, double-buffered, the default) or
//! one (single-slot, half the disk). A slot is a list of extents (one per chunk of at most
//! `chunk_bytes`), placed round-robin over the extent files, each 4 KiB-aligned. Double-buffered,
//! writes go to the slot that is not live and a commit flips the live slot in a new manifest;
//! single-slot, writes go in place and the manifest's `dirty` flag says a write may have torn the
//! committed bytes. Manifests written before these two fields read as double-buffered and clean.
//! Nothing here does I/O.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Result, SwapError};

/// Format tag written in every manifest.
pub const FORMAT: &str = "zinf-swap/1";
/// File name of the manifest, in the first path of the store.
pub const MANIFEST_NAME: &str = "zinf-swap.manifest.json";

/// One shard to lay out: a stable name, its length in bytes and a dtype tag the store never reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub name: String,
    pub len_bytes: u64,
    pub dtype: String,
}

impl ShardSpec {
    pub fn new(name: impl Into<String>, len_bytes: u64, dtype: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            len_bytes,
            dtype: dtype.into(),
        }
    }
}

/// One chunk of a slot on disk: `len_bytes` of data at `offset` in file `file`; the on-disk span
/// is `len_bytes` rounded up to the alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub file: usize,
    pub offset: u64,
    pub len_bytes: u64,
}

/// One extent file of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: PathBuf,
    pub len_bytes: u64,
}

/// A shard as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub name: String,
    pub dtype: String,
    pub len_bytes: u64,
    /// Which of `slots` holds the committed version (always 0 with one slot per shard).
    pub live: u8,
    /// Committed version of this shard (0: laid out, never written; reads as zeros).
    pub version: u64,
    /// `slots_per_shard` slots; the JSON is the same array of arrays the A/B pair always was.
    pub slots: Vec<Vec<Extent>>,
    /// crc32c of each chunk of the live slot, over its `len_bytes`.
    pub crc32c: Vec<u32>,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Number of commits so far; each commit writes a manifest with this one higher.
    pub commit: u64,
    pub alignment: u64,
    pub chunk_bytes: u64,
    /// 2: double-buffered (A/B); 1: single-slot, written in place. Absent in older manifests,
    /// which were all double-buffered.
    #[serde(default = "two_slots")]
    pub slots_per_shard: u8,
    /// Single-slot only: set durably before the first in-place write after a commit, cleared by
    /// the next commit. A dirty manifest on disk means the extents may hold a torn mix of versions.
    #[serde(default)]
    pub dirty: bool,
    pub files: Vec<FileEntry>,
    pub shards: Vec<ShardEntry>,
}

fn two_slots() -> u8 {
    2
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    crc32c: u32,
    body_len: u64,
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub fn round_up(n: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    n.div_ceil(align) * align
}

/// Lays out `specs` over one extent file per path: `slots_per_shard` (1 or 2) slots per shard,
/// chunks of at most `chunk_bytes`, round-robin over files so consecutive chunks land on
/// different drives.
pub fn lay_out(
    specs: &[ShardSpec],
    paths: &[PathBuf],
    chunk_bytes: u64,
    alignment: u64,
    slots_per_shard: u8,
) -> Result<Manifest> {
    assert!(
        matches!(slots_per_shard, 1 | 2),
        "slots_per_shard {slots_per_shard}"
    );
    if paths.is_empty() {
        return Err(SwapError::Config("no path to put extent files in".into()));
    }
    if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(alignment) {
        return Err(SwapError::Config(format!(
            "chunk_bytes {chunk_bytes} must be a positive multiple of {alignment}"
        )));
    }
    let mut seen = HashMap::new();
    // Chunks share a handful of lengths; a crc of a few GB of zeros per store would be seconds.
    let mut zeros_crcs: HashMap<u64, u32> = HashMap::new();
    let mut cursor_bytes = vec![0u64; paths.len()];
    let mut next_file = 0usize;
    let mut shards = Vec::with_capacity(specs.len());
    for spec in specs {
        if seen.insert(spec.name.clone(), ()).is_some() {
            return Err(SwapError::Config(format!(
                "shard `{}` named twice",
                spec.name
            )));
        }
        let mut slots = vec![Vec::new(); slots_per_shard as usize];
        for slot in &mut slots {
            let mut left = spec.len_bytes;
            loop {
                let len_bytes = left.min(chunk_bytes);
                let file = next_file % paths.len();
                next_file += 1;
                slot.push(Extent {
                    file,
                    offset: cursor_bytes[file],
                    len_bytes,
                });
                cursor_bytes[file] += round_up(len_bytes.max(1), alignment);
                left -= len_bytes;
                if left == 0 {
                    break;
                }
            }
        }
        let crc32c = slots[0]
            .iter()
            .map(|e| {
                *zeros_crcs
                    .entry(e.len_bytes)
                    .or_insert_with(|| zeros_crc(e.len_bytes))
            })
            .collect();
        shards.push(ShardEntry {
            name: spec.name.clone(),
            dtype: spec.dtype.clone(),
            len_bytes: spec.len_bytes,
            live: 0,
            version: 0,
            slots,
            crc32c,
        });
    }
    let files = paths
        .iter()
        .enumerate()
        .map(|(i, dir)| FileEntry {
            path: dir.join(format!("zinf-swap.{i}.extents")),
            len_bytes: cursor_bytes[i].max(alignment),
        })
        .collect();
    Ok(Manifest {
        format: FORMAT.into(),
        commit: 0,
        alignment,
        chunk_bytes,
        slots_per_shard,
        dirty: false,
        files,
        shards,
    })
}

/// crc32c of `len` zero bytes: what a freshly preallocated extent reads as.
pub fn zeros_crc(len: u64) -> u32 {
    const BLOCK: [u8; 4096] = [0; 4096];
    let mut crc = 0u32;
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK.len() as u64) as usize;
        crc = crc32c::crc32c_append(crc, &BLOCK[..n]);
        left -= n as u64;
    }
    crc
}

impl Manifest {
    /// Bytes the extent files take on disk (what must be free before the store is created).
    pub fn disk_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len_bytes).sum()
    }

    /// Whether every shard has an A and a B slot (commits flip) rather than one (in place).
    pub fn double_buffered(&self) -> bool {
        self.slots_per_shard == 2
    }

    /// Serializes with the header line that carries the body's checksum.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers cannot fail.
        let body = serde_json::to_vec(self).expect("manifest serializes");
        let header = Header {
            format: FORMAT.into(),
            crc32c: crc32c::crc32c(&body),
            body_len: body.len() as u64,
        };
        let mut out = serde_json::to_vec(&header).expect("header serializes");
        out.push(b'\n');
        out.extend_from_slice(&body);
        out
    }

    /// Parses and verifies a manifest read from `path`.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| SwapError::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no header line".into()))?;
        let header: Header =
            serde_json::from_slice(&bytes[..nl]).map_err(|e| bad(format!("bad header: {e}")))?;
        let body = &bytes[nl + 1..];
        if header.format != FORMAT || body.len() as u64 != header.body_len {
            return Err(bad(format!(
                "format {} with {} body bytes, expected {FORMAT} with {}",
                header.format,
                body.len(),
                header.body_len
            )));
        }
        let crc = crc32c::crc32c(body);
        if crc != header.crc32c {
            return Err(bad(format!(
                "body checksum {crc:08x} != recorded {:08x}",
                header.crc32c
            )));
        }
        let m: Manifest =
            serde_json::from_slice(body).map_err(|e| bad(format!("bad body: {e}")))?;
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Checks the invariants a reader relies on: extents inside their files, aligned, the chunk
    /// count of each slot matching the shard length, one checksum per live chunk, as many slots
    /// as the manifest says, and a dirty flag only where writes go in place.
    fn validate(&self) -> std::result::Result<(), String> {
        if !self.alignment.is_power_of_two() {
            return Err(format!(
                "alignment {} is not a power of two",
                self.alignment
            ));
        }
        if !matches!(self.slots_per_shard, 1 | 2) {
            return Err(format!("slots_per_shard {}", self.slots_per_shard));
        }
        if self.dirty && self.double_buffered() {
            return Err("dirty flag on a double-buffered store".into());
        }
        for s in &self.shards {
            if s.slots.len() != self.slots_per_shard as usize {
                return Err(format!("shard `{}`: {} slots", s.name, s.slots.len()));
            }
            if s.live as usize >= s.slots.len() {
                return Err(format!("shard `{}`: live slot {}", s.name, s.live));
            }
            for slot in &s.slots {
                let total: u64 = slot.iter().map(|e| e.len_bytes).sum();
                if total != s.len_bytes {
                    return Err(format!("shard `{}`: extents hold {total} bytes", s.name));
                }
                for e in slot {
                    let f = self
                        .files
                        .get(e.file)
                        .ok_or_else(|| format!("shard `{}`: file {}", s.name, e.file))?;
                    let end = e.offset + round_up(e.len_bytes.max(1), self.alignment);
                    if !e.offset.is_multiple_of(self.alignment) || end > f.len_bytes {
                        return Err(format!("shard `{}`: extent {e:?} outside file", s.name));
                    }
                }
            }
            if s.crc32c.len() != s.slots[s.live as usize].len() {
                return Err(format!("shard `{}`: checksum count", s.name));
            }
        }
        Ok(())
    }
}
