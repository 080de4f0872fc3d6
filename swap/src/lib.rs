//! zinf-swap: a crash-safe (or, single-slot, crash-detecting) tiered tensor store and the swappers that move parameter and
//! optimizer shards through it. It knows nothing of models: shards are named byte ranges with a
//! dtype tag. Block I/O goes through the `BlockIo` trait, implemented by zinf-aio on the real
//! path and by a seeded fault-injecting fake in tests.

pub mod aio_backend;
pub mod blockio;
pub mod checksum;
pub mod counters;
pub mod error;
pub mod fake;
pub mod manifest;
pub mod optimizer;
pub mod params;
pub mod store;

pub use aio_backend::{AioBackend, PoolConfig};
pub use blockio::{BlockIo, FaultKind, FileNo, IoFault};
pub use counters::Counters;
pub use error::{Op, Result, SwapError};
pub use manifest::{Manifest, ShardSpec};
pub use optimizer::{OptimizerLayout, OptimizerSwapper, StepStats, SubGroup};
pub use params::{ParamBuf, ParamCounters, ParamSwapper};
pub use store::{
    disk_bytes_needed, IoCounters, ReadHandle, ShardBuf, Store, StoreConfig, WriteHandle,
};
