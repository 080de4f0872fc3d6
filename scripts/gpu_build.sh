#!/usr/bin/env bash
# Builds, on a CPU machine, everything scripts/gpu_check.sh runs on a GPU machine that has no
# Rust toolchain: the release zinf with the cuda and nccl features and the CUDA test binaries, stripped,
# under gpu_bin/ (ignored by git; carry it to the GPU machine).
#
#   scripts/gpu_build.sh            then, on the GPU machine:   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu_bin
rm -rf "$out" && mkdir -p "$out"
cargo build --release --features cuda,nccl --bin zinf
cp target/release/zinf "$out/zinf"
# The test binaries: their paths come from cargo's JSON messages.
cargo test --release --features cuda,nccl --no-run \
  --test cuda_kernels --test cuda_parity --test cuda_engine --test cuda_nccl --message-format=json \
  | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], "'"$out"'/" + m["target"]["name"])
'
strip "$out"/*
ls -la "$out"
du -sh "$out"
