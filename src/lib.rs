//! zinf: a ZeRO-Infinity-style offload engine. It reads a DeepSpeed JSON config, builds a GPT-2
//! family model on a device backend (CPU now, CUDA behind the `cuda` feature), and trains it with
//! parameter and optimizer state tiered between device memory, a pinned host pool and NVMe.
//!
//! This crate holds everything that knows about models and training; block I/O lives in
//! `zinf-aio` and the tiered tensor store in `zinf-swap`. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod engine;
pub mod estimate;
pub mod host;
pub mod model;
pub mod optim;
pub mod session;
pub mod settings;
pub mod threads;
pub mod tiers;
pub mod timeline;

/// Whether this build has the CUDA backend (the `cuda` feature).
pub fn device_cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}
