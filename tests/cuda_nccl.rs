//! NCCL on one GPU (world size 1): every collective returns its input where a world of one
//! must, and the ZeRO-3 engine run through its collective path with an NCCL communicator
//! gives the plain engine's losses bit for bit in every placement.
//!
//! Needs the feature `nccl`; compiled in CI (`cargo clippy --features cuda,nccl`), and each
//! test prints SKIPPED and returns without a GPU or `libnccl.so.2` (`scripts/gpu_check.sh`
//! runs it on one). Several GPUs: not run anywhere yet.
#![cfg(feature = "nccl")]

mod engine_common;

use engine_common::*;
use std::path::Path;
use std::time::Duration;
use zinf::device::cuda::{device_count, CudaDevice, MatmulPrecision};
use zinf::device::{Device, HostSlice};
use zinf::dist::env::DistEnv;
use zinf::dist::nccl::NcclComm;
use zinf::dist::Collective;
use zinf::engine::timeline::Timeline;
use zinf::engine::{Engine, Start, Tier};
use zinf::model::ParamDtype;
use zinf_swap::fake::FakeDisk;

fn ready(test: &str) -> bool {
    if device_count() == 0 {
        eprintln!("SKIPPED {test}: no CUDA GPU (or no driver) on this machine");
        return false;
    }
    // SAFETY: only probes whether the library loads.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        eprintln!("SKIPPED {test}: libnccl.so.2 not found");
        return false;
    }
    true
}

fn gpu() -> CudaDevice {
    CudaDevice::new(0, 1 << 30, MatmulPrecision::Fp32).expect("GPU opens")
}

fn comm(dev: &CudaDevice) -> NcclComm {
    NcclComm::new(dev, &DistEnv::single(), Duration::from_secs(30)).expect("NCCL world of 1")
}

fn upload(dev: &CudaDevice, v: &[f32]) -> zinf::device::cuda::CudaBuffer {
    let mut b = dev.alloc("test", v.len()).unwrap();
    dev.wait(dev.upload(&mut b, 0, HostSlice::F32(v)).unwrap())
        .unwrap();
    b
}

fn download(dev: &CudaDevice, b: &zinf::device::cuda::CudaBuffer) -> Vec<f32> {
    let mut v = vec![0.0; zinf::device::DeviceBuffer::len(b)];
    dev.wait(dev.download(b, 0, &mut v).unwrap()).unwrap();
    v
}

#[test]
fn every_collective_of_a_world_of_one_is_the_identity() {
    if !ready("every_collective_of_a_world_of_one_is_the_identity") {
        return;
    }
    let dev = gpu();
    let c = comm(&dev);
    assert_eq!((c.rank(), c.world_size()), (0, 1));
    let x: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let send = upload(&dev, &x);
    let mut recv = dev.alloc("recv", 1010).unwrap();
    c.all_gather(&dev, &send, 10, 990, &mut recv, 20).unwrap();
    assert_eq!(&download(&dev, &recv)[20..1010], &x[10..1000]);
    let mut part = dev.alloc("part", 1000).unwrap();
    c.reduce_scatter(&dev, &send, 0, 1000, &mut part, 0)
        .unwrap();
    assert_eq!(download(&dev, &part), x);
    let mut b = upload(&dev, &x);
    c.all_reduce(&dev, &mut b, 5, 100).unwrap();
    c.broadcast(&dev, &mut b, 0, 1000, 0).unwrap();
    c.barrier(&dev).unwrap();
    assert_eq!(download(&dev, &b), x);
    assert!(
        c.all_gather(&dev, &send, 0, 2000, &mut recv, 0).is_err(),
        "an extent outside the buffer is an error"
    );
}

#[test]
fn the_engine_through_nccl_at_world_one_matches_the_plain_engine() {
    if !ready("the_engine_through_nccl_at_world_one_matches_the_plain_engine") {
        return;
    }
    let (cpu, nvme) = (Tier::Cpu { pin_memory: false }, nvme(Path::new("/nvme")));
    for (p, o) in [
        (Tier::Device, Tier::Device),
        (cpu.clone(), cpu),
        (nvme.clone(), nvme),
    ] {
        let s = engine_settings(
            train_settings(ParamDtype::Bf16, 0.0, 2),
            placement(p.clone(), o),
        );
        let run = |with_comm: bool| {
            let dev = gpu();
            let c = with_comm.then(|| Box::new(comm(&dev)) as Box<dyn Collective<CudaDevice>>);
            let disk = FakeDisk::new(1);
            let mut e = Engine::new(
                s.clone(),
                dev,
                dataset(),
                fake_factory(&disk, 8 << 20),
                Start::Fresh(None),
                Timeline::disabled(),
                c,
            )
            .expect("engine builds");
            bits(&engine_run(&mut e, 3))
        };
        assert_eq!(run(false), run(true), "params {}", p.name());
    }
}
