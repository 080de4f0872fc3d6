//! The one error type of zinf-swap. Every I/O failure names the operation, the shard, the file
//! and the byte offset it hit, so a user can tell which state is affected and where on disk.
//! It is not a place for programmer errors: those are assertions.

use std::path::PathBuf;

use crate::blockio::IoFault;

/// What the store was doing when an I/O failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Sync,
    Open,
    Manifest,
    Alloc,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Sync => "sync",
            Op::Open => "open",
            Op::Manifest => "manifest",
            Op::Alloc => "alloc",
        };
        f.write_str(s)
    }
}

/// Errors of the swap store and its block I/O.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The block device failed (EIO, ENOSPC, a short transfer, a crashed device, ...).
    #[error("{op} of shard `{shard}` failed at {}:{offset} ({len} bytes): {source}", file.display())]
    Io {
        op: Op,
        shard: String,
        file: PathBuf,
        offset: u64,
        len: u64,
        #[source]
        source: IoFault,
    },
    /// Bytes read back do not match the checksum recorded when they were written.
    #[error("checksum mismatch in shard `{shard}` at {}:{offset} ({len} bytes): stored {expected:08x}, read {actual:08x}", file.display())]
    Checksum {
        shard: String,
        file: PathBuf,
        offset: u64,
        len: u64,
        expected: u32,
        actual: u32,
    },
    /// The manifest is missing, unreadable or inconsistent with the layout.
    #[error("manifest {}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    /// A shard name the store does not hold.
    #[error("no shard named `{0}` in the store")]
    UnknownShard(String),
    /// A shard was written with a length other than the one it was laid out with.
    #[error("shard `{shard}` holds {expected} bytes, got {actual}")]
    Length {
        shard: String,
        expected: u64,
        actual: u64,
    },
    /// The configuration cannot work (pool too small for the pipeline, no paths, ...).
    #[error("invalid swap configuration: {0}")]
    Config(String),
    /// A single-slot store whose manifest says a write had begun since the last commit: its
    /// extents may hold a torn mix of versions, so `open` refuses it.
    #[error("swap store {} was being written when the process stopped: its contents are not a consistent version, so a run cannot resume from it; start fresh, or resume from a double-buffered store", path.display())]
    Dirty { path: PathBuf },
    /// A shard was requested whose staged write failed; it must be rewritten before use.
    #[error("shard `{0}` has an uncommitted write that failed; write it again or reopen")]
    Poisoned(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SwapError>;
