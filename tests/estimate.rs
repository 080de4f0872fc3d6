//! `zinf estimate` figures against numbers worked out by hand for GPT-2 124M and GPT-2 1.5B, and
//! against DeepSpeed's `estimate_zero3_model_states_mem_needs` formula.

use zinf::config::Config;
use zinf::estimate::{deepspeed_all_live, estimate, Estimate};
use zinf::session::{Overrides, Session};

const P_124M: u64 = 124_439_808;
const P_1P5B: u64 = 1_557_611_200;

fn config(name: &str) -> Config {
    let path = format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    Config::load(std::path::Path::new(&path))
        .expect("shipped config is valid")
        .config
}

fn run(c: &Config, free: Option<u64>, ram: Option<u64>) -> Estimate {
    let plan = Session::draft(c, &Overrides::default()).expect("plan");
    estimate(c, &plan, 2.0, ram, &move |_| free)
}

#[test]
fn gpt2_124m_cpu_offload_by_hand() {
    let c = config("zero3_cpu_offload.json");
    let e = run(&c, None, Some(64 << 30));
    assert_eq!(e.model.params, P_124M);
    assert_eq!(e.model.largest_tensor, 50257 * 768);
    // At most the 1e5 persistence threshold, by the engine's rule (whole groups: it fetches
    // and keeps groups, not tensors): only ln_f's group (2·768); each block is 7.1M.
    assert_eq!(e.model.persistent, 1536);
    // Pinned host (pin_memory on both): bf16 params (2 B) + master/m/v (12 B) = 14 B/param.
    assert_eq!(e.pinned_host.bytes, 14 * P_124M);
    // Pageable: whole fp32 gradients (4 B: clipping waits for the global norm, and two
    // micro-batches accumulate), one group of fp32 gradients on its way from the device
    // (the largest, the embeddings), and the HF export, which streams one group (bf16)
    // through an 8 MiB file buffer.
    let embed = (50257 + 1024) * 768;
    assert_eq!(e.export_bytes, 2 * embed + (8 << 20));
    assert_eq!(
        e.pageable_host.bytes,
        4 * P_124M + 4 * embed + 2 * embed + (8 << 20)
    );
    assert_eq!(e.nvme.bytes, 0);
    let t = &e.traffic_per_step;
    // 2 micro-batches: forward + backward fetch of every non-persistent bf16 param each.
    assert_eq!(
        t.host_to_device_bytes,
        2 * 2 * 2 * (P_124M - e.model.persistent)
    );
    assert_eq!(t.device_to_host_bytes, 2 * 4 * P_124M);
    assert_eq!(t.nvme_read_bytes + t.nvme_write_bytes, 0);
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
}

#[test]
fn gpt2_1p5b_nvme_offload_by_hand() {
    let c = config("gpt2_1p5b_nvme.json");
    let e = run(&c, Some(1 << 40), Some(64 << 30));
    assert_eq!(e.model.params, P_1P5B);
    let t = &e.traffic_per_step;
    // Every shard moves in chunks padded to 4 KiB (the chunk is 5e7 × 4 B rounded up, so no
    // shard is split). fp16 parameters: wte+wpe 164_099_200 B (+2944), 48 blocks of
    // 61_481_600 B (+3456 each), ln_f 6400 B (+1792). fp32 master/m/v, 3 shards a unit: the
    // embeddings' units of 5e7 (+3584) and 32_049_600 (+2304) elements, 48 blocks (+2816),
    // ln_f (+3584).
    const PARAM_PAD: u64 = 2944 + 48 * 3456 + 1792;
    const OPT_PAD: u64 = 3 * (3584 + 2304 + 48 * 2816 + 3584);
    assert_eq!(e.model.param_store_bytes, 2 * P_1P5B + PARAM_PAD);
    assert_eq!(e.model.opt_store_bytes, 12 * P_1P5B + OPT_PAD);
    // fp16 params read twice per micro-batch (4 micro-batches, none cached), written once;
    // fp32 master/m/v (12 B) read and written once.
    assert_eq!(
        t.nvme_read_bytes,
        2 * 4 * (2 * P_1P5B + PARAM_PAD) + 12 * P_1P5B + OPT_PAD
    );
    assert_eq!(
        t.nvme_write_bytes,
        2 * P_1P5B + PARAM_PAD + 12 * P_1P5B + OPT_PAD
    );
    // One version of every shard (the swap store is scratch; saves live in their own
    // folders), padded as the store lays them out: (2 + 12) B/param and the padding.
    let store = 14 * P_1P5B + PARAM_PAD + OPT_PAD;
    // A save: one version of everything and the 64 KiB shard of the run's small state.
    assert_eq!(e.save_bytes, 14 * P_1P5B + PARAM_PAD + OPT_PAD + (64 << 10));
    assert_eq!(e.nvme.bytes, store);
    assert_eq!(e.nvme_space.len(), 1);
    assert_eq!(e.nvme_space[0].path, "/tmp/zinf_nvme");
    assert!(
        e.nvme_space[0].needed_bytes >= store && e.nvme_space[0].needed_bytes - store < 1 << 20,
        "the extent file holds the shards ({} B for {store} B of shards)",
        e.nvme_space[0].needed_bytes
    );
    let expect_s = (t.nvme_read_bytes + t.nvme_write_bytes) as f64 / 2e9;
    assert!((42 * P_1P5B) as f64 / 2e9 < expect_s && expect_s < 42.01 * P_1P5B as f64 / 2e9);
    assert!((e.min_step_s_nvme - expect_s).abs() < 1e-9);
    // Pinned: the swap store's pool, zinf.pinned_memory_budget (10 GiB), and nothing else
    // (pin_memory pins the pool; the parameters' staging and the gradients are pageable).
    assert_eq!(e.pinned_host.bytes, 10 << 30);
    // Pageable: the staging buffer of the largest group (the embeddings, fp16), no
    // max_in_cpu cache, whole fp32 gradients (clipping waits for the global norm), one group
    // of fp32 gradients on its way from the device, and the HF export, streamed one group at
    // a time (the embeddings, fp16) through an 8 MiB buffer.
    let embed = 50257 * 1600 + 1024 * 1600;
    assert_eq!(e.model.largest_group, embed);
    assert_eq!(e.export_bytes, 2 * embed + (8 << 20));
    assert_eq!(
        e.pageable_host.bytes,
        2 * embed + 4 * P_1P5B + 4 * embed + 2 * embed + (8 << 20)
    );
}

#[test]
fn short_nvme_space_is_refused_and_oversized_pinned_memory_warns() {
    let c = config("gpt2_1p5b_nvme.json");
    let plan = Session::draft(&c, &Overrides::default()).expect("plan");
    let e = estimate(&c, &plan, 2.0, Some(4 << 30), &|_| Some(10 << 30));
    let w = e.warnings.join("\n");
    assert!(w.contains("exceeds this machine's RAM"), "{w}");
    let refused = plan.refusals(&c, &e).join("\n");
    assert!(
        refused.contains("zero_optimization.offload_param.nvme_path and zero_optimization.offload_optimizer.nvme_path: the swap store needs"),
        "{refused}"
    );
    assert!(refused.contains("/tmp/zinf_nvme"), "{refused}");
}

#[test]
fn small_param_buffer_warns_where_deepspeed_would_crash() {
    let text = r#"{"train_batch_size": 1, "zero_optimization": {"stage": 3,
        "offload_param": {"device": "nvme", "nvme_path": "/tmp/x", "buffer_size": 1e6}}}"#;
    let c = Config::parse(text, "t").expect("valid").config;
    let e = run(&c, None, None);
    assert!(
        e.warnings
            .iter()
            .any(|w| w.contains("buffer_size (1000000 elements) is smaller")),
        "{:?}",
        e.warnings
    );
}

#[test]
fn deepspeed_table_matches_its_formula_for_gpt2_124m() {
    let largest = 50257 * 768;
    let rows = deepspeed_all_live(P_124M, largest);
    let row = |p: &str, o: &str, zi: bool| {
        rows.iter()
            .find(|r| r.offload_param == p && r.offload_optimizer == o && r.zero_init == zi)
            .expect("row")
            .clone()
    };
    let a = row("cpu", "cpu", true);
    assert_eq!((a.cpu_bytes, a.gpu_bytes), (3_359_874_816, 154_389_504));
    let b = row("none", "cpu", true);
    assert_eq!((b.cpu_bytes, b.gpu_bytes), (2_986_555_392, 403_269_120));
    let c = row("none", "none", true);
    assert_eq!((c.cpu_bytes, c.gpu_bytes), (231_584_256, 2_394_306_048));
    let d = row("none", "none", false);
    assert_eq!(d.cpu_bytes, 746_638_848);
    assert_eq!(rows.len(), 6);
}
