//! One run per swap folder: the lock a run holds on each `nvme_path` for its whole life.
//!
//! `NVME_PATH/zinf_swap.lock` is locked with `flock(LOCK_EX | LOCK_NB)` and holds the owner's
//! pid; the kernel releases the lock when the process ends, however it ends (kill -9
//! included), so a stale lock never blocks a later run. While it is held, a second run on the
//! same folder is refused at once, naming the folder and the owner's pid. The swap store in
//! `NVME_PATH/zinf_swap` is scratch (saves are separate snapshots, `checkpoint.rs`): the owner
//! removes a store an earlier run left behind when it takes the lock, and its own store when
//! the lock is dropped at the end of the run. Nothing removes a store whose lock another
//! process holds.

use super::{Placement, SWAP_DIR};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file in each `nvme_path`.
pub const LOCK_FILE: &str = "zinf_swap.lock";

/// Errors of taking a swap folder.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the folder.
    #[error(
        "{folder} is in use by another zinf run (pid {pid}, lock {lock}); give this run another \
         nvme_path, or stop that run first"
    )]
    Busy {
        folder: PathBuf,
        pid: String,
        lock: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The locks of a run's swap folders; dropping it removes the run's swap store.
#[derive(Debug)]
pub struct SwapLock {
    held: Vec<(PathBuf, File)>,
}

impl SwapLock {
    /// Locks every `nvme_path` of `p` (creating the folders), then removes the swap store an
    /// earlier run left in each. Refused when another process holds one.
    pub fn acquire(p: &Placement) -> Result<Self, LockError> {
        let mut held = Vec::new();
        for path in p.nvme_paths() {
            std::fs::create_dir_all(&path).map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
            let file = lock(&path, true)?;
            held.push((path, file));
        }
        for (path, _) in &held {
            let store = path.join(SWAP_DIR);
            if store.exists() {
                tracing::info!(
                    "removing the swap store an earlier run left in {} (scratch, not a save)",
                    store.display()
                );
                std::fs::remove_dir_all(&store).map_err(|source| LockError::Io {
                    path: store.clone(),
                    source,
                })?;
            }
        }
        Ok(SwapLock { held })
    }

    /// The pid holding `nvme_path`'s lock, when another process holds it now (a pre-flight
    /// check: the lock is taken and released at once when free).
    pub fn holder(nvme_path: &Path) -> Option<String> {
        match lock(nvme_path, false) {
            Err(LockError::Busy { pid, .. }) => Some(pid),
            _ => None,
        }
    }
}

impl Drop for SwapLock {
    /// Removes the run's swap stores, then releases the locks (closing the files).
    fn drop(&mut self) {
        for (path, _) in &self.held {
            let store = path.join(SWAP_DIR);
            if store.exists() {
                if let Err(e) = std::fs::remove_dir_all(&store) {
                    tracing::warn!("could not remove the swap store {}: {e}", store.display());
                }
            }
        }
    }
}

/// Opens (`create`: creating it) and locks `nvme_path/zinf_swap.lock`, writing this process's
/// pid into it.
fn lock(nvme_path: &Path, create: bool) -> Result<File, LockError> {
    let path = nvme_path.join(LOCK_FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a file descriptor this function owns for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Busy {
                folder: nvme_path.join(SWAP_DIR),
                pid: pid.trim().to_string(),
                lock: path,
            });
        }
        return Err(io(err));
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}
