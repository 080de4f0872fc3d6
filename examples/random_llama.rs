//! Writes a Llama-family Hugging Face folder with seeded random weights, for benchmarks:
//! `cargo run --release --example random_llama -- CONFIG_DIR OUT_DIR [SEED]` reads
//! `CONFIG_DIR/config.json` and writes `OUT_DIR` (config.json, bf16 safetensors sharded at
//! 5 GB) one layer at a time, so a model larger than RAM can be made. Weights follow
//! transformers' `_init_weights` (N(0, 0.02) matrices, unit norms).

use std::path::PathBuf;
use zinf::model::export::{write_folder, DEFAULT_MAX_SHARD_BYTES};
use zinf::model::llama::seeded_source;
use zinf::model::{HostParams, LlamaConfig, ModelError, ModelSpec, ParamDtype};

fn main() -> Result<(), ModelError> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: random_llama CONFIG_DIR OUT_DIR [SEED]");
        std::process::exit(2);
    }
    let (src, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1234);
    let cfg = LlamaConfig::from_folder(&src)?;
    let spec = ModelSpec::Llama(cfg.clone());
    let (_, groups) = spec.layout();
    let mut source = seeded_source(&cfg, seed);
    let report = write_folder::<ModelError>(
        &out,
        &spec,
        ParamDtype::Bf16,
        Some(&src),
        DEFAULT_MAX_SHARD_BYTES,
        |g| {
            let values = source(groups[g].clone())?;
            let p = HostParams::from_f32(ParamDtype::Bf16, &values);
            Ok(p.range_bytes(0..p.len()).to_vec())
        },
    )?;
    println!(
        "{}: {} parameters, {} bytes in {} file(s)",
        out.display(),
        spec.num_params(),
        report.bytes,
        report.files.len()
    );
    Ok(())
}
