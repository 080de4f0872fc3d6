#!/usr/bin/env bash
# llama_1b_nvme.sh — fine-tunes a Llama 3.2 1B-shaped model (configs/models/llama-3.2-1b-shape:
# hidden 2048, 16 layers, GQA 32/8, vocab 128256, tied; 1.24 B parameters) from a Hugging Face
# folder of seeded random bf16 weights (examples/random_llama.rs writes it once), with
# parameters and optimizer state on NVMe within a 4 GiB host budget (configs/llama_1b_nvme.json),
# and reports peak RSS, step time, bytes moved per step, and the step against
# max(compute per step, bytes per step / fio reader+writer-together GB/s on DIR)
# (tools/fio_concurrent.sh). The data: random token ids below 50000 as llm.c .bin (a
# throughput benchmark, not a learning one). Prints one JSON line.
#
# Usage: scripts/llama_1b_nvme.sh [DIR=runs/llama_1b] [STEPS=3]
# Needs about 22 GB free in DIR (2.5 GB folder, 16 GB swap store, 2.5 GB export, fio files).
# Keeps DIR/llama-1b (the random folder) for the next run; removes the rest on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$ROOT/runs/llama_1b}; steps=${2:-3}
zinf=$ROOT/target/release/zinf
cargo build --release -q --manifest-path "$ROOT/Cargo.toml" --bin zinf --example random_llama
commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src || echo -dirty)
mkdir -p "$dir"; tmp=$(mktemp -d "$dir/tmp.XXXX")
trap 'rm -rf "$tmp" "$dir/nvme"' EXIT
model=$dir/llama-1b
if [ ! -f "$model/config.json" ]; then
  echo "llama_1b: writing the random folder $model" >&2
  "$ROOT/target/release/examples/random_llama" "$ROOT/configs/models/llama-3.2-1b-shape" "$model" 1234 >&2
fi
python3 - "$tmp/tokens.bin" <<'PY'
import array, random, struct, sys
random.seed(7); n = 200_000
head = array.array("i", [20240520, 1, n] + [0] * 253)
toks = array.array("H", (random.randrange(50000) for _ in range(n)))
with open(sys.argv[1], "wb") as f:
    head.tofile(f); toks.tofile(f)
PY
python3 - "$ROOT/configs/llama_1b_nvme.json" "$dir/nvme" "$tmp/config.json" <<'PY'
import json, sys
src, d, dst = sys.argv[1:]
c = json.load(open(src))
for k in ("offload_param", "offload_optimizer"):
    c["zero_optimization"][k]["nvme_path"] = d
json.dump(c, open(dst, "w"), indent=2)
PY
: > "$tmp/fiocc.json"
if command -v fio >/dev/null; then
  echo "llama_1b: fio reader+writer together on $dir" >&2
  REPS=${FIO_REPS:-1} "$ROOT/tools/fio_concurrent.sh" "$dir" 8m 32 > "$tmp/fiocc.json"
fi
echo "llama_1b: training $steps steps" >&2
/usr/bin/time -v "$zinf" train --config "$tmp/config.json" --init-from "$model" --data "$tmp/tokens.bin" \
  --steps "$steps" --no-progress --out "$tmp/out" --summary-json "$tmp/summary.json" \
  2> >(tee "$tmp/train.err" >&2) > "$tmp/train.out"
python3 - "$tmp/summary.json" "$tmp/fiocc.json" "$commit" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); cc_text = open(sys.argv[2]).read().strip()
cc = json.loads(cc_text)["gbps"] if cc_text else None
n = max(s["steps"], 1); compute = s["compute_s"] / n
moved = (s["bytes_read"] + s["bytes_written"]) / n
io_cc = moved / (cc * 1e9) if cc else None
out = {"params": s["params"], "steps": s["steps"], "losses": s["losses"],
       "peak_rss_bytes": s["peak_rss_bytes"], "step_s_median": round(s["step_s_median"], 2),
       "compute_s_per_step": round(compute, 2), "optimizer_s_per_step": round(s["optimizer_s"] / n, 2),
       "bytes_read_per_step": s["bytes_read"] // n, "bytes_written_per_step": s["bytes_written"] // n,
       "fio_concurrent_gbps": cc, "io_s_per_step_at_fio": io_cc and round(io_cc, 2),
       "step_over_max": io_cc and round(s["step_s_median"] / max(compute, io_cc), 3),
       "overlap_fraction": round(s["overlap_fraction"], 3), "commit": sys.argv[3]}
print(json.dumps(out))
PY
