//! Property test: random sequences of writes, reads, commits and power cuts on a fake disk that
//! injects random faults and crashes at a random operation. Whatever happens, a read never
//! returns wrong bytes, and after every power cut a double-buffered store reopens at exactly the
//! last committed version with every checksum valid. A single-slot store does the same, except
//! that after a power cut following a write since the last commit it may instead be refused as
//! `Dirty`; it is never opened with bytes other than the last commit's.

use proptest::prelude::*;
use std::path::PathBuf;
use zinf_swap::fake::{FakeDisk, FakeIo, Faults};
use zinf_swap::{Op, ShardSpec, Store, StoreConfig, SwapError};

const LENS: [u64; 4] = [1, 5000, 8192, 20_000];

#[derive(Debug, Clone)]
enum Action {
    Write(usize, u64),
    Read(usize),
    Commit,
    PowerCut(u64),
}

#[derive(Clone, PartialEq)]
enum Staged {
    None,
    Some(Vec<u8>),
    Unknown,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..LENS.len(), any::<u64>()).prop_map(|(s, x)| Action::Write(s, x)),
        3 => (0..LENS.len()).prop_map(Action::Read),
        2 => Just(Action::Commit),
        1 => any::<u64>().prop_map(Action::PowerCut),
    ]
}

fn bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn faults(x: u64, rate: f64) -> Faults {
    Faults {
        read_eio: rate,
        read_short: rate,
        read_bit_flip: rate,
        write_eio_torn: rate,
        write_enospc: rate,
        sync_eio: rate / 2.0,
        manifest_enospc: rate / 2.0,
        crash_after_ops: (!x.is_multiple_of(3)).then_some(x % 60),
        ..Faults::default()
    }
}

fn cfg(double_buffered: bool) -> StoreConfig {
    StoreConfig::new(vec![PathBuf::from("/a"), PathBuf::from("/b")])
        .chunk_bytes(8192)
        .double_buffered(double_buffered)
}

fn name(i: usize) -> String {
    format!("opt.sg{i}.exp_avg")
}

type S = Store<FakeIo>;

/// Cuts power and reopens. `None`: refused as dirty, which only a single-slot store written
/// since its last commit (`written`) may be.
fn reopen_and_check(
    disk: &FakeDisk,
    committed: &[Vec<u8>],
    double_buffered: bool,
    written: bool,
) -> Option<S> {
    disk.power_cut();
    let mut store = match Store::open(FakeIo::new(disk, 1 << 20), &cfg(true).paths[0], true) {
        Err(SwapError::Dirty { .. }) if !double_buffered && written => return None,
        res => res.expect("store reopens with every checksum valid after a power cut"),
    };
    assert_eq!(store.double_buffered(), double_buffered);
    for (i, want) in committed.iter().enumerate() {
        assert_eq!(
            &store.read_vec(&name(i)).unwrap(),
            want,
            "shard {i} at last commit"
        );
    }
    Some(store)
}

fn run(double_buffered: bool, seed: u64, rate: f64, first_crash: u64, actions: &[Action]) {
    let disk = FakeDisk::new(seed);
    let specs: Vec<_> = (0..LENS.len())
        .map(|i| ShardSpec::new(name(i), LENS[i], "f32"))
        .collect();
    let cfg = cfg(double_buffered);
    let mut store = Store::create(FakeIo::new(&disk, 1 << 20), &cfg, &specs).unwrap();
    let mut committed: Vec<Vec<u8>> = LENS.iter().map(|&l| vec![0; l as usize]).collect();
    let mut staged = vec![Staged::None; LENS.len()];
    // Whether a write was attempted since the last successful commit (or open).
    let mut written = false;
    disk.set_faults(faults(first_crash, rate));
    for a in actions {
        match *a {
            Action::Write(i, x) => {
                let d = bytes(LENS[i], x);
                written = true;
                staged[i] = match store.write_slice(&name(i), &d) {
                    Ok(()) => Staged::Some(d),
                    // Single-slot: marking the manifest dirty failed; no byte was written.
                    Err(SwapError::Io {
                        op: Op::Manifest, ..
                    }) => staged[i].clone(),
                    Err(_) => Staged::Unknown,
                };
            }
            Action::Read(i) => {
                if let Ok(got) = store.read_vec(&name(i)) {
                    match &staged[i] {
                        Staged::None => assert_eq!(got, committed[i], "committed bytes"),
                        Staged::Some(d) => assert_eq!(&got, d, "staged bytes"),
                        Staged::Unknown => panic!("read of a shard whose write failed succeeded"),
                    }
                }
            }
            Action::Commit => {
                if store.commit().is_ok() {
                    written = false;
                    for (c, s) in committed.iter_mut().zip(staged.iter_mut()) {
                        match std::mem::replace(s, Staged::None) {
                            Staged::Some(d) => *c = d,
                            Staged::None => {}
                            Staged::Unknown => panic!("commit accepted a failed write"),
                        }
                    }
                }
            }
            Action::PowerCut(x) => {
                drop(store);
                match reopen_and_check(&disk, &committed, double_buffered, written) {
                    Some(s) => store = s,
                    None => return,
                }
                written = false;
                staged.fill(Staged::None);
                disk.set_faults(faults(x, rate));
            }
        }
    }
    drop(store);
    reopen_and_check(&disk, &committed, double_buffered, written);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn random_ops_and_crashes_keep_last_commit(
        seed in any::<u64>(),
        rate in prop_oneof![Just(0.0), Just(0.02), Just(0.1)],
        first_crash in any::<u64>(),
        actions in proptest::collection::vec(action(), 1..40),
    ) {
        run(true, seed, rate, first_crash, &actions);
    }

    #[test]
    fn single_slot_random_ops_and_crashes_keep_last_commit_or_refuse(
        seed in any::<u64>(),
        rate in prop_oneof![Just(0.0), Just(0.02), Just(0.1)],
        first_crash in any::<u64>(),
        actions in proptest::collection::vec(action(), 1..40),
    ) {
        run(false, seed, rate, first_crash, &actions);
    }
}
