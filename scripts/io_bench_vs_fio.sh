#!/usr/bin/env bash
# io_bench_vs_fio.sh — `zinf io-bench` beside fio (tools/fio_ref.sh: io_uring,
# O_DIRECT, registered huge-page buffers) on the same folder, block size, queue depth and
# jobs. Runs are interleaved (fio, zinf uring, zinf pread, fio, ...) and medians compared.
#
# Usage: scripts/io_bench_vs_fio.sh DIR [POINTS="1m:8 8m:32"] [JOBS=1] [SIZE=2g] [SECONDS=6]
#        REPS (default 3) runs per tool; ZINF (default target/release/zinf).
# Prints one line per (rw, bs, qd) point: fio GB/s, zinf uring GB/s, ratio, zinf pread GB/s.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v fio >/dev/null || { echo "$(basename "$0"): fio is not installed; it is the reference these figures are measured against (apt-get install -y fio)" >&2; exit 2; }
dir=${1:?usage: io_bench_vs_fio.sh DIR [POINTS] [JOBS] [SIZE] [SECONDS]}
points=${2:-"1m:8 8m:32"}; jobs=${3:-1}; size=${4:-2g}; secs=${5:-6}; reps=${REPS:-3}
zinf=${ZINF:-$ROOT/target/release/zinf}
fio_ref=$ROOT/tools/fio_ref.sh
[ -x "$zinf" ] || { echo "build first: cargo build --release (or set ZINF)" >&2; exit 2; }
[ -f "$fio_ref" ] || { echo "missing $fio_ref" >&2; exit 2; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for p in $points; do
  bs=${p%%:*}; qd=${p##*:}
  for r in $(seq "$reps"); do
    REPS=1 bash "$fio_ref" "$dir" "$bs" "$qd" "$jobs" "$size" "$secs" >> "$out/fio.jsonl"
    for be in uring pread; do
      "$zinf" io-bench --dir "$dir" --block-size "$bs" --queue-depth "$qd" --threads "$jobs" \
        --io-size "$size" --seconds "$secs" --repeat 1 --backend "$be" \
        --json "$out/zinf.$be.$bs.$qd.$r.json" > /dev/null 2>&1
    done
  done
done
python3 - "$out" "$points" <<'PY'
import glob, json, statistics, sys
out, points = sys.argv[1], sys.argv[2].split()
def size(s):
    m = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(s[:-1]) * m[s[-1].lower()] if s[-1].lower() in m else int(s)
fio = [json.loads(l) for l in open(f"{out}/fio.jsonl")]
print(f"{'rw':<6}{'bs':>5}{'qd':>4}{'fio':>8}{'zinf':>8}{'ratio':>7}{'pread':>8}  (GB/s, medians)")
for p in points:
    bs, qd = p.split(":")
    for rw in ("read", "write"):
        f = statistics.median(x["gbps"] for x in fio if x["rw"] == rw and x["bs"] == bs and x["qd"] == int(qd))
        z = {}
        for be in ("uring", "pread"):
            runs = [r["gbps"] for fn in glob.glob(f"{out}/zinf.{be}.{bs}.{qd}.*.json")
                    for r in json.load(open(fn)) if r["rw"] == rw]
            z[be] = statistics.median(runs)
        print(f"{rw:<6}{bs:>5}{qd:>4}{f:>8.3f}{z['uring']:>8.3f}{z['uring'] / f:>7.2f}{z['pread']:>8.3f}")
PY
