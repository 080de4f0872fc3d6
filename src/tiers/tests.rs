//! `Tiers` on the real path: optimizer state on NVMe through zinf-aio (io_uring or its
//! fallback) over extent files on the build disk, driven as the engine's update loop drives it
//! (units in update order, two read ahead, writes behind). The store reopened with full
//! verification must hold exactly what a plain loop over host arrays computes.

use super::*;
use zinf_swap::{AioBackend, PoolConfig};

fn backend(budget: u64) -> AioBackend {
    let pool = PoolConfig {
        budget_bytes: Some(budget),
        ..PoolConfig::deepspeed_default()
    };
    AioBackend::new(&zinf_aio::AioConfig::default(), &pool).unwrap()
}

fn grad(i: usize) -> f32 {
    (i % 7) as f32
}

/// Master after two steps of `m += g; master -= m` from `master = i`.
fn want_master(i: usize) -> f32 {
    i as f32 - 3.0 * grad(i)
}

/// m after two steps.
fn want_m(i: usize) -> f32 {
    2.0 * grad(i)
}

#[test]
fn optimizer_state_on_disk_matches_a_host_reference() {
    let tmp = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
    let n = 300_000;
    // Two groups of several units each, the last unit of each shorter.
    let layout = TierLayout::new(
        vec![0..100_000, 100_000..n],
        &[],
        |r| r,
        65_536,
        ParamDtype::Bf16,
    );
    let config = StoreConfig::new(vec![tmp.path().to_path_buf()]).chunk_bytes(256 << 10);
    let setup = NvmeSetup::new(backend(4 << 20), config, 3);
    let place = NvmePlacement {
        params: false,
        optimizer: true,
    };
    let mut t = Tiers::new(layout.clone(), place, Some(setup), 0, Recorder::untraced()).unwrap();
    for (gi, g) in layout.groups.iter().enumerate() {
        let master: Vec<f32> = g.clone().map(|i| i as f32).collect();
        t.init_group(
            gi,
            &HostParams::from_f32(ParamDtype::Bf16, &master),
            &master,
        )
        .unwrap();
    }
    t.commit().unwrap();
    for _ in 0..2 {
        for gi in (0..layout.groups.len()).rev() {
            t.begin_group_update();
            for u in layout.group_units[gi].clone() {
                if let Some(next) = layout.next_unit(u) {
                    t.prefetch_opt(next, true).unwrap();
                    if let Some(after) = layout.next_unit(next) {
                        t.prefetch_opt(after, false).unwrap();
                    }
                }
                let r = layout.units[u].range.clone();
                t.update_unit::<TierError>(u, |master, m, v, out, out_range| {
                    let HostParams::Bf16(p) = out else {
                        unreachable!("bf16 layout")
                    };
                    for (j, i) in r.clone().enumerate() {
                        m[j] += grad(i);
                        v[j] += grad(i) * grad(i);
                        master[j] -= m[j];
                        p[out_range.start + j] = half::bf16::from_f32(master[j]);
                    }
                    Ok(())
                })
                .unwrap();
            }
            t.finish_group_update(gi).unwrap();
        }
        t.commit().unwrap();
        t.assert_invariants();
    }
    let params = t.export_params(u64::MAX).unwrap().unwrap().to_f32();
    for i in (0..n).step_by(997) {
        assert_eq!(
            params[i],
            half::bf16::from_f32(want_master(i)).to_f32(),
            "param {i}"
        );
    }
    let q = t.queue_counters();
    assert!(q.opt_prefetch_hits > 0, "units were read ahead: {q:?}");
    drop(t);
    let mut store = Store::open(backend(4 << 20), tmp.path(), true).unwrap();
    for (u, unit) in layout.units.iter().enumerate() {
        for (t, want) in [(0, want_master as fn(usize) -> f32), (1, want_m)] {
            let v = store.read_vec(&layout::opt_shard(u, t)).unwrap();
            for (j, c) in v.chunks_exact(4).enumerate() {
                let i = unit.range.start + j;
                assert_eq!(
                    f32::from_ne_bytes(c.try_into().unwrap()),
                    want(i),
                    "{u}.{t}"
                );
            }
        }
    }
}
