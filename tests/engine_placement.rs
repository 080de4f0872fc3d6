//! The offload engine gives the resident trainer's numbers bit for bit, whatever the
//! placement of parameters and optimizer state (device, host, NVMe), in fp16 and bf16, with
//! gradient accumulation and clipping on, and on the streaming path (no clipping).

mod engine_common;

use engine_common::*;
use zinf::engine::{Start, Tier};
use zinf::model::ParamDtype;
use zinf_swap::fake::FakeDisk;

const STEPS: usize = 4;

fn placements(dir: &std::path::Path) -> Vec<(Tier, Tier)> {
    let cpu = Tier::Cpu { pin_memory: false };
    vec![
        (Tier::Device, Tier::Device),
        (cpu.clone(), cpu.clone()),
        (nvme(dir), nvme(dir)),
        (Tier::Device, nvme(dir)),
        (nvme(dir), cpu),
    ]
}

fn check_all(dtype: ParamDtype, clip: f64, gas: usize) {
    let s = train_settings(dtype, clip, gas);
    let (want, want_val) = resident_run_and_validate(s.clone(), STEPS);
    assert!(want.iter().all(|m| m.loss.is_finite()));
    let dir = std::path::PathBuf::from("/nvme");
    for (p, o) in placements(&dir) {
        let disk = FakeDisk::new(1);
        let es = engine_settings(s.clone(), placement(p.clone(), o.clone()));
        let mut e = fake_engine(es, &disk, 8 << 20, Start::Fresh(None));
        let got = engine_run(&mut e, STEPS);
        let val = e.validate().expect("validate").expect("validation data");
        assert_eq!(
            val.to_bits(),
            want_val.to_bits(),
            "validation loss, params {}",
            p.name()
        );
        let c = e.counters();
        if p.is_nvme() || o.is_nvme() {
            assert!(c.nvme_bytes_read > 0 && c.nvme_bytes_written > 0, "{c:?}");
        } else {
            assert_eq!(c.nvme_bytes_read, 0);
        }
        if p != Tier::Device {
            assert!(c.device_fetches > 10, "groups are fetched each pass: {c:?}");
        }
        assert_eq!(
            bits(&got),
            bits(&want),
            "{dtype:?} clip {clip} gas {gas}: params {} optimizer {}: losses {:?} vs resident {:?}",
            p.name(),
            o.name(),
            got.iter().map(|m| m.loss).collect::<Vec<_>>(),
            want.iter().map(|m| m.loss).collect::<Vec<_>>()
        );
        if clip > 0.0 || dtype == ParamDtype::F16 {
            let gn: Vec<u64> = got.iter().map(|m| m.grad_norm.to_bits()).collect();
            let wn: Vec<u64> = want.iter().map(|m| m.grad_norm.to_bits()).collect();
            assert_eq!(
                gn,
                wn,
                "grad norms, params {} optimizer {}",
                p.name(),
                o.name()
            );
        }
    }
}

#[test]
fn bf16_with_accumulation_and_clipping_matches_resident_everywhere() {
    check_all(ParamDtype::Bf16, 1.0, 2);
}

#[test]
fn fp16_with_accumulation_and_clipping_matches_resident_everywhere() {
    check_all(ParamDtype::F16, 1.0, 2);
}

#[test]
fn streaming_update_without_clipping_matches_resident() {
    check_all(ParamDtype::Bf16, 0.0, 1);
    check_all(ParamDtype::Bf16, 0.0, 2);
}

#[test]
fn nvme_parameters_cached_in_host_memory_match_resident() {
    let s = train_settings(ParamDtype::Bf16, 1.0, 2);
    let want = bits(&resident_run(s.clone(), STEPS));
    let d = std::path::Path::new("/nvme");
    let mut es = engine_settings(s, placement(nvme(d), nvme(d)));
    es.max_in_cpu = 20_000; // some groups fit, some do not
    let disk = FakeDisk::new(2);
    let mut e = fake_engine(es, &disk, 8 << 20, Start::Fresh(None));
    assert_eq!(bits(&engine_run(&mut e, STEPS)), want);
    let c = e.counters();
    assert!(
        c.tiers.cache_hits > 0 && c.queue.param_misses + c.queue.param_prefetch_hits > 0,
        "{c:?}"
    );
}

#[test]
fn fp32_parameters_match_resident() {
    check_all(ParamDtype::F32, 0.5, 1);
}

/// With a device whose copies hold a GPU's rules — gradient downloads copy only when finished
/// and overlap the next stage, an upload's source must stay unchanged until its event is
/// waited (asserted) — the engine keeps one group in flight and still matches the resident
/// trainer bit for bit: streaming and accumulated, in every placement (NVMe ones upload from
/// pool buffers, held writes and the staging buffer), and no upload's source changed before
/// its event was waited.
#[test]
fn late_gradient_copies_change_nothing() {
    for (clip, gas) in [(0.0, 1), (0.0, 2), (1.0, 2)] {
        let s = train_settings(ParamDtype::Bf16, clip, gas);
        let want = bits(&resident_run(s.clone(), STEPS));
        let dir = std::path::PathBuf::from("/nvme");
        for (p, o) in placements(&dir) {
            let disk = FakeDisk::new(1);
            let es = engine_settings(s.clone(), placement(p.clone(), o.clone()));
            // SAFETY: the engine waits every upload before its source (a host array, the
            // staging buffer, a pool buffer) is written or given back.
            let dev = unsafe { zinf::device::CpuDevice::new(1, 1 << 30).with_late_copies() };
            let mut e = fake_engine_on(dev, es, &disk, 8 << 20, Start::Fresh(None));
            assert_eq!(
                bits(&engine_run(&mut e, STEPS)),
                want,
                "clip {clip} gas {gas}: params {} optimizer {}",
                p.name(),
                o.name()
            );
        }
    }
}
