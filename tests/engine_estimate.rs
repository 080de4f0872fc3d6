//! `zinf estimate` and the engine agree: for several placements, three steps of the engine on
//! the fake disk move the bytes per step the estimate says (NVMe reads and writes, host ↔
//! device), within the tolerances stated at each assertion, and hold the host bytes it plans.

mod engine_common;

use engine_common::{dataset, fake_factory};
use zinf::config::Config;
use zinf::device::Device;
use zinf::engine::{Engine, Start};
use zinf::session::{open_cpu_device, Overrides, Session};
use zinf::timeline::Timeline;
use zinf_swap::fake::FakeDisk;

fn config(offload_param: &str, offload_optimizer: &str, dir: &str) -> Config {
    // max_in_cpu 0: NVMe parameters are read at every fetch, not cached in host memory.
    let dev = |d: &str, extra: &str| {
        if d == "nvme" {
            format!(r#"{{"device": "nvme", "nvme_path": "{dir}"{extra}}}"#)
        } else {
            format!(r#"{{"device": "{d}"}}"#)
        }
    };
    let text = format!(
        r#"{{
  "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
  "gradient_clipping": 0.0,
  "optimizer": {{"type": "AdamW", "params": {{"lr": 3e-3, "weight_decay": 0.01}}}},
  "bf16": {{"enabled": true}},
  "zero_optimization": {{"stage": 3, "sub_group_size": 5000,
    "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
    "offload_param": {op}, "offload_optimizer": {oo}}},
  "zinf": {{"seed": 7, "threads": 1,
    "model": {{"n_layer": 3, "n_head": 2, "n_embd": 32, "vocab_size": 96, "block_size": 16}},
    "data": {{"seq_len": 16, "eval_interval": 0}},
    "device_memory_budget": "1GiB", "pinned_memory_budget": "4MiB"}}
}}"#,
        op = dev(offload_param, r#", "max_in_cpu": 0"#),
        oo = dev(offload_optimizer, ""),
    );
    Config::parse(&text, "test").expect("valid config").config
}

#[test]
fn estimate_and_engine_counters_agree_per_placement() {
    for (p, o) in [
        ("nvme", "nvme"),
        ("cpu", "nvme"),
        ("none", "nvme"),
        ("cpu", "cpu"),
        ("nvme", "cpu"),
        ("none", "cpu"),
        ("none", "none"),
    ] {
        let dir = engine_common::tempdir(&format!("estimate-{p}-{o}"));
        let cfg = config(p, o, dir.to_str().expect("utf-8 path"));
        let (plan, est) = Session::plan(&cfg, &Overrides::default()).expect("plan");
        let s = plan.settings.clone();
        let disk = FakeDisk::new(7);
        let dev = open_cpu_device(&s.train);
        let mut e = Engine::new(
            s.clone(),
            dev,
            dataset(),
            fake_factory(&disk, plan.pool_bytes.max(4 << 20)),
            Start::Fresh(None),
            Timeline::disabled(),
            None,
        )
        .expect("engine builds");
        e.step().expect("step 1 records the trace");
        let before = e.counters();
        for _ in 0..2 {
            e.step().expect("step");
        }
        let c = e.counters().since(&before);
        let t = est.traffic_per_step.clone();
        let per_step = |x: u64| x / 2;
        let (read, written) = (per_step(c.nvme_bytes_read), per_step(c.nvme_bytes_written));
        let served = per_step(c.queue.pending_write_hit_bytes);
        eprintln!(
            "{p}/{o} per step: read {read} + served from the pool {served} (estimate {}), \
             written {written} (estimate {})",
            t.nvme_read_bytes, t.nvme_write_bytes
        );
        // Writes: every parameter shard (params on NVMe) and every unit's state (optimizer on
        // NVMe) once a step, padded chunks as the store moves them. Exact.
        assert_eq!(
            written, t.nvme_write_bytes,
            "{p}/{o}: NVMe bytes written per step"
        );
        if p != "nvme" {
            // Reads are the optimizer state only: exact once the units the engine served
            // from the pool buffers of their pending writes (no read needed) are added back.
            assert_eq!(
                read + served,
                t.nvme_read_bytes,
                "{p}/{o}: NVMe bytes read per step"
            );
        } else {
            // Parameters on NVMe: the estimate reads every uncached group at every fetch,
            // forward and backward; the engine reads fewer (groups kept on the device between
            // the two, the group updated last from its staging buffer, held writes from the
            // pool). An upper bound.
            assert!(read <= t.nvme_read_bytes, "{p}/{o}: read {read} > {t:?}");
        }
        // Gradients leave the device once per micro-batch, fp32: exact.
        assert_eq!(
            per_step(c.device_bytes_out),
            t.device_to_host_bytes,
            "{p}/{o}"
        );
        // Uploads: the estimate counts each non-persistent group twice per micro-batch; the
        // engine uploads a group once when it stays on the device from the forward into the
        // backward (GPT-2's ln_f) and twice when released in between: equal within one group
        // per micro-batch, never above.
        let d_in = per_step(c.device_bytes_in);
        let largest_group_bytes = cfg.param_dtype_bytes() * est.model.largest_group;
        assert!(
            d_in <= t.host_to_device_bytes && t.host_to_device_bytes - d_in <= largest_group_bytes,
            "{p}/{o}: uploaded {d_in}, estimate {}",
            t.host_to_device_bytes
        );
        // Host memory: the tiers' arrays and gradient buffers the engine holds, plus the pool
        // and the export at the end, are exactly the estimate's host items.
        assert_eq!(
            e.host_state_bytes()
                + plan.pool_bytes * u64::from(o == "nvme" || p == "nvme")
                + est.export_bytes,
            est.host_bytes(),
            "{p}/{o}: host bytes: {}",
            est.host_summary()
        );
        // Device memory: the estimate is what train's pre-flight holds the budget to, so it
        // must not be below the engine's peak, and not far above it (a refused run that
        // would have fit). Its items are upper bounds: the fp32 copies of two live groups
        // and all activations at once.
        let peak = e.dev.budget().peak_bytes();
        eprintln!("{p}/{o}: device peak {peak}, estimate {}", est.device.bytes);
        assert!(
            peak <= est.device.bytes && est.device.bytes <= peak + peak / 4,
            "{p}/{o}: device peak {peak}, estimate {} ({})",
            est.device.bytes,
            est.device.summary()
        );
    }
}
