//! The one error type of zinf-aio, and the one place where an errno becomes a typed error.
//!
//! Every variant carries what a user needs to find the fault: the operation, the file, the
//! byte range and the OS error. Nothing in this crate builds an `AioError` from an errno
//! except [`AioError::os`], and nothing in the workspace classifies an errno except
//! [`ErrorKind::from_errno`] (through [`AioError::kind`] or [`ErrorKind::of_io`]).

use std::fmt;
use std::path::PathBuf;

/// What the engine was doing when an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Open,
    Read,
    Write,
    Fsync,
    Fdatasync,
    Preallocate,
    Stat,
    Alloc,
    RingSetup,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Fsync => "fsync",
            Op::Fdatasync => "fdatasync",
            Op::Preallocate => "preallocate",
            Op::Stat => "statx",
            Op::Alloc => "allocate buffer",
            Op::RingSetup => "io_uring setup",
        };
        f.write_str(s)
    }
}

/// Errors of the I/O engine and its buffer pool.
#[derive(Debug, thiserror::Error)]
pub enum AioError {
    /// The kernel refused or failed an operation; `errno` is the raw OS error.
    #[error("{op} {path:?} at offset {offset} length {len}: {desc} (errno {errno})", desc = errno_text(*errno))]
    Os {
        op: Op,
        path: PathBuf,
        offset: u64,
        len: u64,
        errno: i32,
    },
    /// The file ended inside the requested range.
    #[error("read {path:?} at offset {offset} length {len}: end of file after {done} bytes")]
    UnexpectedEof {
        path: PathBuf,
        offset: u64,
        len: u64,
        done: u64,
    },
    /// A write made no progress (the kernel accepted zero bytes) inside the range.
    #[error(
        "write {path:?} at offset {offset} length {len}: the kernel wrote 0 bytes after {done}"
    )]
    WriteZero {
        path: PathBuf,
        offset: u64,
        len: u64,
        done: u64,
    },
    /// The range or buffer does not meet the file's O_DIRECT alignment.
    #[error("{op} {path:?} at offset {offset} length {len}: not aligned to {alignment} bytes as O_DIRECT requires (buffer address {buf_addr:#x}); use ranges and lengths that are multiples of the alignment")]
    Misaligned {
        op: Op,
        path: PathBuf,
        offset: u64,
        len: u64,
        alignment: usize,
        buf_addr: usize,
    },
    /// A pool allocation larger than the pool's whole budget can never succeed.
    #[error("buffer of {requested_bytes} bytes exceeds the pool's whole budget of {capacity_bytes} bytes")]
    ExceedsBudget {
        requested_bytes: usize,
        capacity_bytes: usize,
    },
    /// The file id does not name an open file of this engine.
    #[error("file id {0} is not open in this engine")]
    UnknownFile(u32),
    /// A request was queued but never started because its engine was dropped.
    #[error("{op} {path:?} at offset {offset} length {len}: cancelled, the engine was dropped")]
    Cancelled {
        op: Op,
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// The result of this request was already taken by `try_wait`.
    #[error("the result of this request was already taken")]
    AlreadyTaken,
    /// The configuration cannot work (e.g. a zero queue depth).
    #[error("invalid aio configuration: {0}")]
    Config(String),
}

/// The class of a failure, for callers that react to each differently (report a full disk,
/// give up on a failing device, treat a truncated file as corrupt). `zinf-swap` takes its fault
/// kinds from here, so errno numbers are interpreted in this one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// EIO: the device failed the request.
    Io,
    /// ENOSPC or EDQUOT: the file system (or the user's quota) is full.
    NoSpace,
    /// Fewer bytes moved than asked for and retrying did not help: end of file on a read, a
    /// write the kernel would not advance.
    Short,
    /// Any other OS error, by (positive) errno.
    Os(i32),
    /// A failure without an errno: configuration, alignment, a cancelled or unknown request.
    Other,
}

impl ErrorKind {
    /// The one errno → kind mapping (positive or negative errno, as io_uring reports it).
    pub fn from_errno(errno: i32) -> Self {
        match errno.abs() {
            libc::EIO => ErrorKind::Io,
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            n => ErrorKind::Os(n),
        }
    }

    /// The kind of a `std::io::Error`: by its errno when it has one; else end of file and zero
    /// writes are `Short`, "not found" is ENOENT's kind (as a failed `open` reports it) and
    /// anything else is `Other`.
    pub fn of_io(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => Self::from_errno(errno),
            None => match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::WriteZero => {
                    ErrorKind::Short
                }
                std::io::ErrorKind::NotFound => Self::from_errno(libc::ENOENT),
                _ => ErrorKind::Other,
            },
        }
    }
}

impl AioError {
    /// The single errno → error mapping of the crate. Positive or negative errno are accepted
    /// (io_uring completions carry `-errno`).
    pub fn os(op: Op, path: impl Into<PathBuf>, offset: u64, len: u64, errno: i32) -> AioError {
        AioError::Os {
            op,
            path: path.into(),
            offset,
            len,
            errno: errno.abs(),
        }
    }

    /// A transfer that returned 0 bytes before the range was done: end of file for a read,
    /// a write the kernel would not advance. Both backends report it through here.
    pub(crate) fn no_progress(
        dir: crate::engine::Dir,
        path: PathBuf,
        offset: u64,
        len: u64,
        done: u64,
    ) -> AioError {
        match dir {
            crate::engine::Dir::Read => AioError::UnexpectedEof {
                path,
                offset,
                len,
                done,
            },
            crate::engine::Dir::Write => AioError::WriteZero {
                path,
                offset,
                len,
                done,
            },
        }
    }

    /// The errno of the last failed libc call, mapped as [`AioError::os`] does.
    pub fn last_os(op: Op, path: impl Into<PathBuf>, offset: u64, len: u64) -> AioError {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        AioError::os(op, path, offset, len, errno)
    }

    /// The raw OS error, when the kernel reported one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            AioError::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// What kind of failure this is (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            AioError::Os { errno, .. } => ErrorKind::from_errno(*errno),
            AioError::UnexpectedEof { .. } | AioError::WriteZero { .. } => ErrorKind::Short,
            _ => ErrorKind::Other,
        }
    }

    /// True when the device or filesystem is full (ENOSPC or EDQUOT).
    pub fn is_no_space(&self) -> bool {
        self.kind() == ErrorKind::NoSpace
    }
}

/// Whether an io_uring or syscall result says "try the same thing again".
pub(crate) fn is_retryable(errno: i32) -> bool {
    let e = errno.abs();
    e == libc::EINTR || e == libc::EAGAIN
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_short_transfers_are_classified_in_one_place() {
        let os = |errno| AioError::os(Op::Write, "/x", 0, 4096, errno);
        assert_eq!(os(libc::EIO).kind(), ErrorKind::Io);
        assert_eq!(
            os(-libc::EIO).kind(),
            ErrorKind::Io,
            "io_uring's negative errno"
        );
        assert_eq!(os(libc::ENOSPC).kind(), ErrorKind::NoSpace);
        assert_eq!(os(libc::EDQUOT).kind(), ErrorKind::NoSpace);
        assert!(os(libc::ENOSPC).is_no_space() && !os(libc::EIO).is_no_space());
        assert_eq!(os(libc::ENOENT).kind(), ErrorKind::Os(libc::ENOENT));
        let eof = AioError::UnexpectedEof {
            path: "/x".into(),
            offset: 0,
            len: 8192,
            done: 4096,
        };
        assert_eq!(eof.kind(), ErrorKind::Short);
        assert_eq!(AioError::UnknownFile(3).kind(), ErrorKind::Other);
        let io = |k| ErrorKind::of_io(&std::io::Error::from(k));
        assert_eq!(io(std::io::ErrorKind::UnexpectedEof), ErrorKind::Short);
        assert_eq!(io(std::io::ErrorKind::InvalidData), ErrorKind::Other);
        assert_eq!(
            io(std::io::ErrorKind::NotFound),
            ErrorKind::Os(libc::ENOENT)
        );
        let raw = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(ErrorKind::of_io(&raw), ErrorKind::NoSpace);
    }
}
