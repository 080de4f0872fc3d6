#!/usr/bin/env bash
# GPT-2 124M (or SmolLM2-135M, a Llama) forward+backward FLOP rate on the CPU device vs the
# gemm crate's square-matmul rate in the same run, plus tokens/s. Usage:
#   scripts/model_flops.sh              # 124M, batch 4 x 256, 2 threads, 3 reps
#   ZINF_BENCH_MODEL=llama scripts/model_flops.sh   # SmolLM2-135M's shape, batch 4 x 256
#   ZINF_BENCH_REPS=5 ZINF_THREADS=1 scripts/model_flops.sh
#   ZINF_BENCH_MODEL=tiny scripts/model_flops.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --manifest-path "$(cd "$(dirname "$0")/.." && pwd)/Cargo.toml" --bench model
