//! The store on the real path: zinf-aio (io_uring or its fallback) over extent files in a
//! temporary folder on the build disk. Round trips through every tier, reopen with full
//! verification, and a bit flipped in an extent file caught at read. (The optimizer pipeline on
//! this path is `zinf::tiers`'s, tested there.)

use std::io::{Read, Seek, SeekFrom, Write};
use zinf_aio::AioConfig;
use zinf_swap::{AioBackend, PoolConfig, ShardSpec, Store, StoreConfig, SwapError};

fn backend(budget: u64) -> AioBackend {
    let pool = PoolConfig {
        budget_bytes: Some(budget),
        ..PoolConfig::deepspeed_default()
    };
    AioBackend::new(&AioConfig::default(), &pool).unwrap()
}

fn bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn round_trip_on_disk_striped_and_reopened() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let paths = vec![tmp.path().join("nvme0"), tmp.path().join("nvme1")];
    let chunk = 256 << 10;
    let lens = [
        1u64,
        3,
        4096,
        4097,
        100_000,
        chunk,
        3 * chunk + 17,
        2_000_000,
    ];
    let specs: Vec<_> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| ShardSpec::new(format!("transformer.h.{i}.attn.c_attn.weight"), l, "bf16"))
        .collect();
    let cfg = StoreConfig::new(paths.clone()).chunk_bytes(chunk);
    let mut store = Store::create(backend(4 << 20), &cfg, &specs).unwrap();
    for round in 0..2u64 {
        for (i, s) in specs.iter().enumerate() {
            store
                .write_slice(&s.name, &bytes(s.len_bytes, i as u64 + 10 * round))
                .unwrap();
        }
        store.commit().unwrap();
    }
    assert!(store.counters().bytes_written >= 2 * lens.iter().sum::<u64>());
    drop(store);
    let mut store = Store::open(backend(4 << 20), &paths[0], true).unwrap();
    for (i, s) in specs.iter().enumerate() {
        assert_eq!(
            store.read_vec(&s.name).unwrap(),
            bytes(s.len_bytes, i as u64 + 10)
        );
        assert_eq!(store.version(&s.name).unwrap(), 2);
    }
    assert!(
        paths[1].join("zinf-swap.1.extents").exists(),
        "striped over both paths"
    );

    // Flip one bit of the committed copy of shard 6 in its extent file.
    let m = store.manifest().clone();
    let sh = &m.shards[6];
    let e = sh.slots[sh.live as usize][1];
    let path = &m.files[e.file].path;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(e.offset + 5)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x10;
    f.seek(SeekFrom::Start(e.offset + 5)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
    drop(f);
    match store.read_vec(&sh.name) {
        Err(SwapError::Checksum { shard, offset, .. }) => {
            assert_eq!((shard.as_str(), offset), (sh.name.as_str(), e.offset))
        }
        other => panic!("bit flip not caught: {:?}", other.map(|v| v.len())),
    }
}

#[test]
fn missing_or_truncated_extent_file_is_a_clear_error() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let specs = [ShardSpec::new("transformer.wte.weight", 50_000, "bf16")];
    let cfg = StoreConfig::new(vec![tmp.path().to_path_buf()]);
    drop(Store::create(backend(1 << 20), &cfg, &specs).unwrap());
    let file = tmp.path().join("zinf-swap.0.extents");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let err = Store::open(backend(1 << 20), tmp.path(), false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("zinf-swap.0.extents"), "{err}");
    std::fs::remove_file(&file).unwrap();
    let err = Store::open(backend(1 << 20), tmp.path(), false)
        .err()
        .unwrap();
    assert!(
        matches!(err, SwapError::Io { .. }) && err.to_string().contains("extents"),
        "{err}"
    );
}
