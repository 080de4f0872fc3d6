//! zinf-swap: a crash-safe (or, single-slot, crash-detecting) tensor store on NVMe — its
//! extent files and checksummed manifest, the `BlockIo` trait it is generic over (implemented by
//! zinf-aio on the real path and by a seeded fault-injecting fake disk in tests), and the
//! crc32c checksums. It is not the swap pipeline: what to read ahead, write behind or keep in
//! the pool is zinf's `tiers` (`src/tiers/`), the one owner of every byte's home. It knows
//! nothing of models: shards are named byte ranges with a dtype tag.

pub mod aio_backend;
pub mod blockio;
pub mod checksum;
pub mod error;
pub mod fake;
pub mod manifest;
pub mod store;

pub use aio_backend::{pool_reserve_bytes, AioBackend, PoolConfig};
pub use blockio::{BlockIo, FaultKind, FileNo, IoFault};
pub use error::{Op, Result, SwapError};
pub use manifest::{Manifest, ShardSpec};
pub use store::{
    disk_bytes_needed, disk_bytes_per_path, IoCounters, ReadHandle, ShardBuf, Store, StoreConfig,
    WriteHandle,
};
