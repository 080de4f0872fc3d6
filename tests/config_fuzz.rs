//! Mutated real configs never crash or hang `config check` and `estimate` (issue #12, item 5):
//! every shipped and sample config, with values swapped for the numbers and shapes fuzzing found
//! trouble with (2^64, 1e12, 1e9 layers, "auto", negative, fractional, wrong types), keys
//! dropped or added. Each case either reads (and then the estimate runs to the end) or is
//! refused with issues that all name a path — what `zinf config check` turns into exit 0 or 2.
//! Tests build with overflow checks on, so any unchecked arithmetic fails here as a panic.
//!
//! It calls the library (`Config::parse_bytes`, `estimate`) rather than spawning the binary per
//! case, so a few hundred cases run in seconds on 2 cores; `cli_exit.rs` runs the binary on the
//! issue's own examples.

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};
use serde_json::{json, Value};
use zinf::config::{Config, ConfigError};
use zinf::estimate::estimate;
use zinf::session::{Overrides, Session};

/// Every config a user could start from: `configs/` and `tests/data/configs/`.
fn seeds() -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut out = Vec::new();
    for dir in ["configs", "tests/data/configs"] {
        let mut paths: Vec<_> = std::fs::read_dir(format!("{root}/{dir}"))
            .expect("config folder")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).expect("read");
            let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
            if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                out.push(v);
            }
        }
    }
    assert!(out.len() >= 10, "expected the shipped and sample configs");
    out
}

/// Values that broke zinf or DeepSpeed somewhere, plus ordinary ones.
fn nasty() -> Vec<Value> {
    let big: Value = serde_json::from_str("18446744073709551616").expect("2^64");
    vec![
        big,
        json!(u64::MAX),
        json!(1e12),
        json!(1e9),
        json!(1e7),
        json!(1e300),
        json!(-1),
        json!(0),
        json!(1),
        json!(3),
        json!(1.5),
        json!(4096),
        json!("auto"),
        json!("1e9"),
        json!(""),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!("nvme"),
    ]
}

/// Keys whose values size something: where overflow and huge allocations come from.
const SIZE_PATHS: &[&[&str]] = &[
    &["zinf", "model", "n_layer"],
    &["zinf", "model", "n_embd"],
    &["zinf", "model", "n_head"],
    &["zinf", "model", "vocab_size"],
    &["zinf", "model", "block_size"],
    &["zinf", "data", "seq_len"],
    &["zinf", "train_steps"],
    &["train_batch_size"],
    &["train_micro_batch_size_per_gpu"],
    &["gradient_accumulation_steps"],
    &["zero_optimization", "sub_group_size"],
    &["zero_optimization", "stage3_prefetch_bucket_size"],
    &["zero_optimization", "offload_param", "buffer_size"],
    &["zero_optimization", "offload_param", "buffer_count"],
    &["zero_optimization", "offload_param", "max_in_cpu"],
    &["aio", "block_size"],
    &["aio", "queue_depth"],
    &["scheduler", "params", "total_num_steps"],
    &["scheduler", "params", "warmup_num_steps"],
];

/// Every path to a value in `v` (objects and leaves).
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            prefix.push(k.clone());
            out.push(prefix.clone());
            paths(child, prefix, out);
            prefix.pop();
        }
    }
}

fn set(v: &mut Value, path: &[String], new: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = v;
    for p in parents {
        if !cur.get(p).is_some_and(Value::is_object) {
            cur[p.as_str()] = json!({});
        }
        cur = &mut cur[p.as_str()];
    }
    if let Value::Object(m) = cur {
        m.insert(last.clone(), new);
    }
}

fn remove(v: &mut Value, path: &[String]) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = v;
    for p in parents {
        match cur.get_mut(p.as_str()) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Value::Object(m) = cur {
        m.remove(last);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// A size key set to a nasty value.
    Size(usize, usize),
    /// Any existing key set to a nasty value.
    Any(usize, usize),
    /// Any existing key dropped.
    Drop(usize),
    /// An unknown key added beside an existing one.
    Add(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Size(a, b)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Any(a, b)),
        1 => any::<usize>().prop_map(Mutation::Drop),
        1 => any::<usize>().prop_map(Mutation::Add),
    ]
}

fn apply(mut v: Value, muts: &[Mutation], values: &[Value]) -> Value {
    for m in muts {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let pick = |i: usize| all.get(i % all.len().max(1)).cloned();
        match *m {
            Mutation::Size(p, x) => {
                let path: Vec<String> = SIZE_PATHS[p % SIZE_PATHS.len()]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                set(&mut v, &path, values[x % values.len()].clone());
            }
            Mutation::Any(p, x) => {
                if let Some(path) = pick(p) {
                    set(&mut v, &path, values[x % values.len()].clone());
                }
            }
            Mutation::Drop(p) => {
                if let Some(path) = pick(p) {
                    remove(&mut v, &path);
                }
            }
            Mutation::Add(p) => {
                if let Some(mut path) = pick(p) {
                    path.pop();
                    path.push("fuzz_key".into());
                    set(&mut v, &path, json!(1));
                }
            }
        }
    }
    v
}

/// What `zinf config check` and `zinf estimate` do with the text, minus printing: `Ok` is exit
/// 0, `Err` exit 2. Panics (overflow, allocation failure) fail the test.
fn check_and_estimate(text: &[u8]) -> Result<(), ConfigError> {
    let loaded = Config::parse_bytes(text, "fuzz.json")?;
    let c = &loaded.config;
    // config check's summary line
    let _ = (c.zinf.model.num_params(), c.param_dtype_name());
    let _ = c.lr_scheduler();
    let _ = c.loss_scaler();
    // train's pre-flight: a refused plan is exit 2 with a message, like a config error.
    let plan = match Session::draft(c, &Overrides::default()) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return Ok(());
        }
    };
    let e = estimate(c, &plan, 2.0, Some(16 << 30), &|_| Some(1 << 40));
    serde_json::to_string(&e).expect("estimate serializes");
    for r in plan.refusals(c, &e) {
        assert!(!r.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(PtConfig {
        cases: 700,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..PtConfig::default()
    })]

    #[test]
    fn mutated_real_configs_are_read_or_refused_never_crash(
        seed in any::<usize>(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let seeds = seeds();
        let v = apply(seeds[seed % seeds.len()].clone(), &muts, &nasty());
        let text = serde_json::to_vec(&v).expect("serialize");
        match check_and_estimate(&text) {
            Ok(()) => {}
            Err(ConfigError::Invalid { issues, .. }) => {
                prop_assert!(!issues.is_empty());
                for i in &issues {
                    prop_assert!(!i.message.is_empty(), "{i:?}");
                }
            }
            Err(e) => prop_assert!(false, "unexpected error kind for generated JSON: {e}"),
        }
    }
}

/// The issue's own examples, each refused at the key that caused it.
#[test]
fn the_numbers_fuzzing_found_are_refused_at_their_key() {
    let cases = [
        (
            r#"{"zinf": {"model": {"n_layer": 18446744073709551616}}}"#,
            "zinf.model.n_layer",
        ),
        (
            r#"{"zinf": {"model": {"n_layer": 1e9}}}"#,
            "zinf.model.n_layer",
        ),
        (
            r#"{"zinf": {"model": {"n_layer": 1e7}}}"#,
            "zinf.model.n_layer",
        ),
        (
            r#"{"zinf": {"model": {"block_size": 18446744073709551615}}}"#,
            "zinf.model.block_size",
        ),
        (r#"{"train_batch_size": 1e12}"#, "train_batch_size"),
        (
            r#"{"train_micro_batch_size_per_gpu": 1e12, "gradient_accumulation_steps": 1e12}"#,
            "train_micro_batch_size_per_gpu",
        ),
        (
            r#"{"zinf": {"device_memory_budget": 1e30}}"#,
            "zinf.device_memory_budget",
        ),
        (
            r#"{"zinf": {"device_memory_budget": "1e30GB"}}"#,
            "zinf.device_memory_budget",
        ),
        (r#"{"aio": {"queue_depth": 100000}}"#, "aio.queue_depth"),
        (
            r#"{"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "buffer_count": 1e9}}}"#,
            "zero_optimization.offload_param.buffer_count",
        ),
    ];
    for (text, path) in cases {
        match check_and_estimate(text.as_bytes()) {
            Err(ConfigError::Invalid { issues, .. }) => assert!(
                issues.iter().any(|i| i.path == path
                    && ["out of range", "expected", "size"]
                        .iter()
                        .any(|w| i.message.contains(w))),
                "{text}: {issues:#?}"
            ),
            other => panic!("{text}: expected refusal at {path}, got {other:?}"),
        }
    }
}

#[test]
fn a_model_that_cannot_fit_ram_plus_disk_is_refused_with_the_numbers() {
    // 4096 layers × 65536 wide: 2.1e14 parameters, ~3 PB of state.
    let text = r#"{"zinf": {"model": {"n_layer": 4096, "n_embd": 65536, "n_head": 64}}}"#;
    let c = Config::parse(r#"{"train_batch_size": 1}"#, "small")
        .expect("valid")
        .config;
    c.check_fits(Some(16 << 30), &|_| Some(100 << 30))
        .expect("GPT-2 small fits");
    let err = Config::parse(text, "huge").expect_err("cannot fit");
    let msg = err.to_string();
    assert!(msg.contains("zinf.model: 211"), "{msg}");
    assert!(msg.contains("parameters need at least"), "{msg}");
    assert!(msg.contains("GiB of RAM"), "{msg}");
    // The same check against a given machine: 1.56B params × 14 B = 21.8 GB of state.
    let xl = Config::parse(
        r#"{"train_batch_size": 1, "bf16": {"enabled": true},
            "zinf": {"model": {"n_layer": 48, "n_head": 25, "n_embd": 1600}}}"#,
        "xl",
    )
    .expect("fits this machine")
    .config;
    let e = xl
        .check_fits(Some(8 << 30), &|_| Some(4 << 30))
        .expect_err("12 GiB");
    assert!(
        e.message.contains("8.0 GiB of RAM + 4.0 GiB free under ."),
        "{e}"
    );
    xl.check_fits(Some(8 << 30), &|_| Some(20 << 30))
        .expect("28 GiB");
}
