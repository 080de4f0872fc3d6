#!/usr/bin/env bash
# swap_vs_fio.sh — puts `zinf bench swap` (an optimizer step over fp32 master/m/v on disk through
# zinf's tiers, no-op update: reads and writes of the whole state) beside fio's io_uring O_DIRECT
# references on the same folder and block size (tools/fio_ref.sh, fio_concurrent.sh).
#
# The step reads and writes the same number of bytes. Two references: per direction, the
# harmonic mean of fio's read and write GB/s, 2 / (1/read + 1/write) (`ratio`); and a reader
# and a writer running together (fio_concurrent.sh, `ratio_concurrent`), which is what the
# pipelined step does. Prints one JSON line with the numbers, both ratios (target >= 0.9), and
# `step_over_max` = step_s / max(io_only_s, update_only_s) (target <= 1.1).
#
# Usage: scripts/swap_vs_fio.sh DIR [PARAMS=5e7] [BS=1m] [QD=32]   (ROUNDS env, default 2)
# Builds zinf in release. Leaves no file behind.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v fio >/dev/null || { echo "$(basename "$0"): fio is not installed; it is the reference these figures are measured against (apt-get install -y fio)" >&2; exit 2; }
cd "$(dirname "$0")/.."
dir=${1:?usage: swap_vs_fio.sh DIR [PARAMS] [BS] [QD]}
params=${2:-5e7}; bs=${3:-1m}; qd=${4:-32}; rounds=${ROUNDS:-2}
bs_bytes=$(python3 -c "s='$bs'.lower(); m={'k':1<<10,'m':1<<20,'g':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")
fio_ref=${FIO_REF:-$ROOT/tools/fio_ref.sh}
fio_cc=${FIO_CONCURRENT:-$ROOT/tools/fio_concurrent.sh}
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
out=$(mktemp); trap 'rm -f "$out"' EXIT
# Interleave: zinf, fio, zinf, fio ... so drift on a shared machine hits both alike.
for _ in $(seq "$rounds"); do
  "$ROOT/target/release/zinf" bench swap --params "$params" --dir "$dir" --block-size "$bs_bytes" \
    --queue-depth "$qd" --json 2>/dev/null | sed 's/^/zinf /' >> "$out"
  REPS=1 "$fio_ref" "$dir" "$bs" "$qd" 1 2g 6 | sed 's/^/fio /' >> "$out"
  REPS=1 "$fio_cc" "$dir" "$bs" "$qd" 2g 6 | sed 's/^/fio /' >> "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
z, fr, fw, fc = [], [], [], []
for line in open(sys.argv[1]):
    tool, js = line.split(" ", 1)
    j = json.loads(js)
    if tool == "zinf": z.append(j)
    elif j["rw"] == "read": fr.append(j["gbps"])
    elif j["rw"] == "read+write": fc.append(j["gbps"])
    else: fw.append(j["gbps"])
med = lambda xs: statistics.median(xs)
r, w = med(fr), med(fw)
ref = 2 / (1 / r + 1 / w)
io = med([j["io_gbps"] for j in z])
cc = med(fc)
print(json.dumps({
    "zinf_io_gbps": round(io, 3), "fio_read_gbps": r, "fio_write_gbps": w,
    "fio_step_ref_gbps": round(ref, 3), "ratio": round(io / ref, 3),
    "fio_concurrent_gbps": cc, "ratio_concurrent": round(io / cc, 3),
    "step_s": round(med([j["step_s"] for j in z]), 4),
    "io_only_s": round(med([j["io_only_s"] for j in z]), 4),
    "update_only_s": round(med([j["update_only_s"] for j in z]), 4),
    "step_over_max": round(med([j["step_over_max"] for j in z]), 3),
    "peak_rss_bytes": max(j["peak_rss_bytes"] for j in z),
    "pool_budget_bytes": z[0]["pool_budget_bytes"], "runs": len(z)}))
PY
