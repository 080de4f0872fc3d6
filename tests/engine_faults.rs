//! The engine under faults: resume from a save after a crash (bit-identical continuation), a
//! corrupted shard reported by name, a disk that fills up mid-run, a pinned pool too small to
//! prefetch, and a slow disk. All on the seeded fake disk, in process.

mod engine_common;

use engine_common::*;
use zinf::engine::{Engine, Start, Tier};
use zinf::model::ParamDtype;
use zinf::session::open_cpu_device;
use zinf::timeline::Timeline;
use zinf_swap::fake::{FakeDisk, FakeIo, Faults};
use zinf_swap::Store;

const POOL: u64 = 8 << 20;

fn nvme_both() -> zinf::engine::Placement {
    let d = std::path::Path::new("/nvme");
    placement(nvme(d), nvme(d))
}

#[test]
fn resume_after_a_crash_continues_bit_identically() {
    let cpu = Tier::Cpu { pin_memory: false };
    for (name, pl) in [
        ("nvme", nvme_both()),
        ("cpu", placement(cpu.clone(), cpu)),
        (
            "mixed",
            placement(nvme(std::path::Path::new("/nvme")), Tier::Device),
        ),
    ] {
        let s = engine_settings(train_settings(ParamDtype::Bf16, 1.0, 2), pl);
        let want = {
            let disk = FakeDisk::new(3);
            let mut e = fake_engine(s.clone(), &disk, POOL, Start::Fresh(None));
            bits(&engine_run(&mut e, 6))
        };
        let dir = tempdir(&format!("resume-{name}"));
        let disk = FakeDisk::new(3);
        {
            let mut e = fake_engine(s.clone(), &disk, POOL, Start::Fresh(None));
            engine_run(&mut e, 3);
            e.save(&dir).expect("save");
            // Two more steps whose writes never reach a commit, then the power goes.
            engine_run(&mut e, 2);
        }
        disk.power_cut();
        let mut e = fake_engine(s.clone(), &disk, POOL, Start::Resume(dir.clone()));
        assert_eq!(e.steps(), 3, "{name}: resumed at the save");
        let got = bits(&engine_run(&mut e, 3));
        assert_eq!(
            got,
            want[3..],
            "{name}: the continuation equals the uninterrupted run"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// File and offset of the live copy of a shard's first chunk in the store in `folder`.
fn live_extent(
    disk: &FakeDisk,
    folder: &std::path::Path,
    shard: &str,
) -> (std::path::PathBuf, u64) {
    let store = Store::open(FakeIo::new(disk, POOL), folder, false).expect("open");
    let m = store.manifest();
    let s = m.shards.iter().find(|s| s.name == shard).expect("shard");
    let e = s.slots[s.live as usize][0];
    (m.files[e.file].path.clone(), e.offset)
}

#[test]
fn a_corrupted_shard_on_resume_is_reported_by_name_not_trained_on() {
    let s = engine_settings(train_settings(ParamDtype::Bf16, 1.0, 1), nvme_both());
    let dir = tempdir("corrupt");
    let disk = FakeDisk::new(5);
    {
        let mut e = fake_engine(s.clone(), &disk, POOL, Start::Fresh(None));
        engine_run(&mut e, 2);
        e.save(&dir).expect("save");
    }
    // A bit flips in the save's copy of block 1's parameters.
    let (path, offset) = live_extent(&disk, &dir.join("step-00000002"), "param.g2");
    disk.flip_bit(&path, offset + 100, 3);
    let err = match Engine::new(
        s,
        open_cpu_device(&train_settings(ParamDtype::Bf16, 1.0, 1)),
        dataset(),
        fake_factory(&disk, POOL),
        Start::Resume(dir.clone()),
        Timeline::disabled(),
        None,
    ) {
        Ok(_) => panic!("a corrupted save must not resume"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("param.g2"), "names the shard: {err}");
    assert!(err.to_lowercase().contains("checksum"), "says why: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_disk_that_fills_up_mid_run_is_a_clear_error_and_the_last_save_survives() {
    let s = engine_settings(train_settings(ParamDtype::Bf16, 1.0, 1), nvme_both());
    let want = {
        let disk = FakeDisk::new(9);
        let mut e = fake_engine(s.clone(), &disk, POOL, Start::Fresh(None));
        bits(&engine_run(&mut e, 4))
    };
    let dir = tempdir("enospc");
    let disk = FakeDisk::new(9);
    {
        let mut e = fake_engine(s.clone(), &disk, POOL, Start::Fresh(None));
        engine_run(&mut e, 2);
        e.save(&dir).expect("save");
        disk.set_faults(Faults {
            write_enospc: 1.0,
            ..Faults::default()
        });
        // Writes are behind: the step whose writes fail, or the next one that waits on them,
        // reports it.
        let err = match e.step() {
            Err(err) => err,
            Ok(_) => e.step().expect_err("a full disk fails the run"),
        }
        .to_string();
        assert!(err.contains("/nvme/zinf_swap"), "names the file: {err}");
        assert!(
            err.to_lowercase().contains("space"),
            "says the disk is full: {err}"
        );
        let again = e.save(&dir);
        assert!(
            again.is_err(),
            "a save after a failed step must not claim success"
        );
    }
    disk.set_faults(Faults::default());
    let mut e = fake_engine(s, &disk, POOL, Start::Resume(dir.clone()));
    assert_eq!(e.steps(), 2);
    assert_eq!(
        bits(&engine_run(&mut e, 2)),
        want[2..],
        "the last save is intact"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn deep(mut s: zinf::settings::TrainSettings) -> zinf::settings::TrainSettings {
    if let zinf::model::ModelSpec::Gpt2(c) = &mut s.model {
        c.n_layer = 8;
    }
    s
}

#[test]
fn a_small_pool_and_a_slow_disk_only_slow_the_run() {
    let ts = deep(train_settings(ParamDtype::Bf16, 0.0, 1));
    let want = bits(&resident_run(ts.clone(), 3));
    for (pool, delay_ms) in [(96 << 10, 0), (POOL, 2), (128 << 10, 1)] {
        let disk = FakeDisk::new(11);
        let mut s = engine_settings(ts.clone(), nvme_both());
        s.prefetch_bucket_size = 1 << 20;
        let mut e = fake_engine(s, &disk, pool, Start::Fresh(None));
        disk.set_faults(Faults {
            op_delay: std::time::Duration::from_millis(delay_ms),
            ..Faults::default()
        });
        let got = bits(&engine_run(&mut e, 3));
        assert_eq!(got, want, "pool {pool} delay {delay_ms} ms");
        let q = e.counters().queue;
        assert!(
            q.param_prefetch_hits + q.param_misses > 0 && q.opt_prefetch_hits + q.opt_misses > 0,
            "every read is counted: {q:?}"
        );
        if pool == POOL {
            assert!(q.param_prefetch_hits > 0, "a roomy pool prefetches: {q:?}");
        }
    }
}

#[test]
fn a_pool_too_small_for_one_unit_is_a_config_error_not_a_hang() {
    let s = engine_settings(train_settings(ParamDtype::Bf16, 0.0, 1), nvme_both());
    let disk = FakeDisk::new(12);
    let dev = zinf::device::CpuDevice::new(1, 1 << 30);
    let r = zinf::engine::Engine::new(
        s,
        dev,
        dataset(),
        fake_factory(&disk, 32 << 10),
        Start::Fresh(None),
        zinf::engine::timeline::Timeline::disabled(),
        None,
    );
    let err = match r {
        Ok(mut e) => e.step().expect_err("cannot fit a unit").to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("pinned pool") || err.contains("pool budget"),
        "{err}"
    );
}
