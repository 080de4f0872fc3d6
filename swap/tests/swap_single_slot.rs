//! Single-slot stores on the seeded fake disk: in-place writes read back after commit and reopen,
//! a power cut between a write and its commit is refused at open as `Dirty` (never half-read),
//! a power cut after a commit is harmless, the extent files take half the bytes of a
//! double-buffered store, manifests from before the mode existed still open double-buffered, and
//! rollback either does nothing or stops the store.

use std::path::PathBuf;
use zinf_swap::fake::{FakeDisk, FakeIo, Faults};
use zinf_swap::manifest::MANIFEST_NAME;
use zinf_swap::{
    disk_bytes_needed, BlockIo, Manifest, Op, ShardSpec, Store, StoreConfig, SwapError,
};

const CHUNK: u64 = 16 << 10;
const LENS: [u64; 7] = [1, 2, 4095, 4096, 4097, CHUNK, 3 * CHUNK + 123];

fn cfg(double_buffered: bool) -> StoreConfig {
    StoreConfig::new(vec![PathBuf::from("/nvme0"), PathBuf::from("/nvme1")])
        .chunk_bytes(CHUNK)
        .double_buffered(double_buffered)
}

fn name(i: usize) -> String {
    format!("transformer.h.{i}.mlp.c_fc.weight")
}

fn data(len: u64, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(7919)) as u8)
        .collect()
}

fn specs(lens: &[u64]) -> Vec<ShardSpec> {
    lens.iter()
        .enumerate()
        .map(|(i, &l)| ShardSpec::new(name(i), l, "bf16"))
        .collect()
}

fn create(disk: &FakeDisk, double_buffered: bool) -> Store<FakeIo> {
    Store::create(
        FakeIo::new(disk, 1 << 20),
        &cfg(double_buffered),
        &specs(&LENS),
    )
    .unwrap()
}

fn open(disk: &FakeDisk) -> zinf_swap::Result<Store<FakeIo>> {
    Store::open(FakeIo::new(disk, 1 << 20), &cfg(true).paths[0], true)
}

fn manifest_path() -> PathBuf {
    cfg(true).paths[0].join(MANIFEST_NAME)
}

/// The manifest as it is on disk now (not as the store holds it).
fn manifest_on_disk(disk: &FakeDisk) -> Manifest {
    let bytes = FakeIo::new(disk, 4096)
        .read_file(&manifest_path())
        .unwrap()
        .unwrap();
    Manifest::decode(&bytes, &manifest_path()).unwrap()
}

fn assert_dirty(res: zinf_swap::Result<Store<FakeIo>>) {
    match res {
        Err(e @ SwapError::Dirty { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&manifest_path().display().to_string()),
                "{msg}"
            );
            assert!(msg.contains("not a consistent version"), "{msg}");
            assert!(msg.contains("start fresh"), "{msg}");
            assert!(msg.contains("double-buffered"), "{msg}");
        }
        Err(e) => panic!("expected Dirty, got {e}"),
        Ok(_) => panic!("a store torn mid-write opened"),
    }
}

#[test]
fn single_slot_writes_in_place_and_reads_back_after_reopen() {
    let disk = FakeDisk::new(11);
    let mut store = create(&disk, false);
    assert!(!store.double_buffered());
    assert!(store.manifest().shards.iter().all(|s| s.slots.len() == 1));
    for round in 1..=2u64 {
        for (i, &l) in LENS.iter().enumerate() {
            store
                .write_slice(&name(i), &data(l, round * 10 + i as u64))
                .unwrap();
            assert_eq!(
                store.read_vec(&name(i)).unwrap(),
                data(l, round * 10 + i as u64),
                "read your write"
            );
        }
        assert_eq!(store.commit().unwrap(), round);
    }
    drop(store);
    disk.power_cut();
    let mut store = open(&disk).unwrap();
    assert!(!store.double_buffered());
    for (i, &l) in LENS.iter().enumerate() {
        assert_eq!(store.read_vec(&name(i)).unwrap(), data(l, 20 + i as u64));
        assert_eq!(store.version(&name(i)).unwrap(), 2);
    }
}

#[test]
fn power_cut_between_write_and_commit_is_refused_as_dirty() {
    let disk = FakeDisk::new(12);
    let mut store = create(&disk, false);
    store.write_slice(&name(6), &data(LENS[6], 1)).unwrap();
    store.commit().unwrap();
    assert!(
        !manifest_on_disk(&disk).dirty,
        "a commit leaves a clean manifest"
    );
    store.write_slice(&name(6), &data(LENS[6], 2)).unwrap();
    assert!(
        manifest_on_disk(&disk).dirty,
        "the manifest is dirty on disk before the data is"
    );
    drop(store);
    disk.power_cut();
    assert_dirty(open(&disk));
    assert_dirty(Store::open(
        FakeIo::new(&disk, 1 << 20),
        &cfg(false).paths[0],
        false,
    ));
}

#[test]
fn power_cut_after_commit_reopens_and_marks_dirty_again() {
    let disk = FakeDisk::new(13);
    let mut store = create(&disk, false);
    store.write_slice(&name(5), &data(LENS[5], 3)).unwrap();
    store.commit().unwrap();
    drop(store);
    disk.power_cut();
    let mut store = open(&disk).unwrap();
    assert_eq!(store.read_vec(&name(5)).unwrap(), data(LENS[5], 3));
    // The first write after an open marks the store dirty again.
    store.write_slice(&name(5), &data(LENS[5], 4)).unwrap();
    drop(store);
    disk.power_cut();
    assert_dirty(open(&disk));
}

#[test]
fn only_the_first_write_after_a_commit_touches_the_manifest() {
    let disk = FakeDisk::new(14);
    let mut store = create(&disk, false);
    store.write_slice(&name(0), &data(LENS[0], 1)).unwrap();
    // From here every manifest write fails: further writes must not need one, the commit must.
    disk.set_faults(Faults {
        manifest_enospc: 1.0,
        ..Faults::default()
    });
    store.write_slice(&name(1), &data(LENS[1], 1)).unwrap();
    assert!(store.commit().is_err());
    assert!(
        store.read_vec(&name(1)).is_err(),
        "a failed commit stops the store"
    );
    drop(store);
    disk.power_cut();
    assert_dirty(open(&disk));
}

#[test]
fn failed_dirty_mark_writes_nothing_and_the_store_goes_on() {
    let disk = FakeDisk::new(15);
    let mut store = create(&disk, false);
    store.write_slice(&name(6), &data(LENS[6], 1)).unwrap();
    store.commit().unwrap();
    disk.set_faults(Faults {
        manifest_enospc: 1.0,
        ..Faults::default()
    });
    match store.write_slice(&name(6), &data(LENS[6], 2)) {
        Err(SwapError::Io {
            op: Op::Manifest, ..
        }) => {}
        other => panic!("expected a manifest error, got {other:?}"),
    }
    assert_eq!(
        store.read_vec(&name(6)).unwrap(),
        data(LENS[6], 1),
        "the committed bytes were not touched"
    );
    disk.set_faults(Faults::default());
    store.write_slice(&name(6), &data(LENS[6], 3)).unwrap();
    store.commit().unwrap();
    drop(store);
    disk.power_cut();
    assert_eq!(
        open(&disk).unwrap().read_vec(&name(6)).unwrap(),
        data(LENS[6], 3)
    );
}

#[test]
fn single_slot_takes_half_the_disk() {
    let double = disk_bytes_needed(&specs(&LENS), &cfg(true), 4096).unwrap();
    let single = disk_bytes_needed(&specs(&LENS), &cfg(false), 4096).unwrap();
    assert_eq!(double, 2 * single);
    let disk = FakeDisk::new(16);
    assert_eq!(create(&disk, false).manifest().disk_bytes(), single);
    let disk = FakeDisk::new(17);
    assert_eq!(create(&disk, true).manifest().disk_bytes(), double);
    // 2.5B parameters at 14 bytes each, in 100 shards of 8 MiB chunks: 35 GB, not 70 GB.
    let big: Vec<_> = (0..100)
        .map(|i| ShardSpec::new(format!("opt.sg{i}"), 350_000_000, "f32"))
        .collect();
    let cfg = |db| StoreConfig::new(vec![PathBuf::from("/nvme0")]).double_buffered(db);
    let single = disk_bytes_needed(&big, &cfg(false), 4096).unwrap();
    let double = disk_bytes_needed(&big, &cfg(true), 4096).unwrap();
    assert!(
        (35_000_000_000..35_001_000_000).contains(&single),
        "{single}"
    );
    assert_eq!(double, 2 * single);
    assert!(matches!(
        disk_bytes_needed(&big, &cfg(false).chunk_bytes(1000), 4096),
        Err(SwapError::Config(_))
    ));
}

/// Rewrites the manifest on disk as the code before single-slot mode wrote it: without
/// `slots_per_shard` and `dirty`, under a header with the body's checksum.
fn strip_to_old_manifest(disk: &FakeDisk) {
    let io = FakeIo::new(disk, 4096);
    let bytes = io.read_file(&manifest_path()).unwrap().unwrap();
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
    let mut body: serde_json::Value = serde_json::from_slice(&bytes[nl + 1..]).unwrap();
    let obj = body.as_object_mut().unwrap();
    assert!(obj.remove("slots_per_shard").is_some() && obj.remove("dirty").is_some());
    let body = serde_json::to_vec(&body).unwrap();
    let header = serde_json::json!({
        "format": zinf_swap::manifest::FORMAT,
        "crc32c": crc32c::crc32c(&body),
        "body_len": body.len(),
    });
    let mut out = serde_json::to_vec(&header).unwrap();
    out.push(b'\n');
    out.extend_from_slice(&body);
    io.replace_file(&manifest_path(), &out).unwrap();
}

#[test]
fn old_manifest_without_the_field_opens_double_buffered() {
    let disk = FakeDisk::new(18);
    let mut store = create(&disk, true);
    store.write_slice(&name(6), &data(LENS[6], 1)).unwrap();
    store.commit().unwrap();
    drop(store);
    strip_to_old_manifest(&disk);
    let mut store = open(&disk).unwrap();
    assert!(store.double_buffered());
    assert_eq!(store.read_vec(&name(6)).unwrap(), data(LENS[6], 1));
    // Still crash-safe: an uncommitted write vanishes in a power cut, the store reopens.
    store.write_slice(&name(6), &data(LENS[6], 2)).unwrap();
    drop(store);
    disk.power_cut();
    assert_eq!(
        open(&disk).unwrap().read_vec(&name(6)).unwrap(),
        data(LENS[6], 1)
    );
}

#[test]
fn rollback_is_a_no_op_when_clean_and_stops_the_store_after_a_write() {
    let disk = FakeDisk::new(19);
    let mut store = create(&disk, false);
    store.write_slice(&name(4), &data(LENS[4], 1)).unwrap();
    store.commit().unwrap();
    store.rollback();
    assert_eq!(store.read_vec(&name(4)).unwrap(), data(LENS[4], 1));
    store.write_slice(&name(4), &data(LENS[4], 2)).unwrap();
    store.rollback();
    let err = store.read_vec(&name(4)).unwrap_err();
    assert!(err.to_string().contains("must be reopened"), "{err}");
    assert!(err.to_string().contains(&name(4)), "{err}");
    assert!(store.commit().is_err());
    drop(store);
    assert_dirty(open(&disk));

    // Double-buffered, the same rollback restores the committed bytes.
    let disk = FakeDisk::new(20);
    let mut store = create(&disk, true);
    store.write_slice(&name(4), &data(LENS[4], 1)).unwrap();
    store.commit().unwrap();
    store.write_slice(&name(4), &data(LENS[4], 2)).unwrap();
    store.rollback();
    assert_eq!(store.read_vec(&name(4)).unwrap(), data(LENS[4], 1));
    assert_eq!(store.commit().unwrap(), 2);
}
