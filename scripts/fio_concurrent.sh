#!/usr/bin/env bash
# fio_concurrent.sh — the physical reference for a workload that reads and writes at the same
# time (the offload engine's steps do): one sequential reader and one sequential writer running
# together on two files in DIR, fio's io_uring engine, O_DIRECT. On a drive whose reads and
# writes do not add up (this VM's virtio disk: 2.5 GB/s read alone, 5 GB/s write alone, about
# 1.4 GB/s in all when both run), per-direction figures (../shared/tools/fio_ref.sh) understate
# I/O time; this script gives the other bound.
# Prints one JSON line: {"tool":"fio","rw":"read+write","bs":..,"qd":..,"read_gbps":..,
# "write_gbps":..,"gbps":..} with medians of REPS runs (default 3).
#
# Usage: scripts/fio_concurrent.sh DIR [BS=8m] [QD=32] [SIZE=2g] [SECONDS=6]
set -euo pipefail
dir=${1:?usage: fio_concurrent.sh DIR [BS] [QD] [SIZE] [SECONDS]}
bs=${2:-8m}; qd=${3:-32}; size=${4:-2g}; secs=${5:-6}; reps=${REPS:-3}
command -v fio >/dev/null || { echo "fio_concurrent.sh: fio not installed" >&2; exit 2; }
mkdir -p "$dir"
r="$dir/fio_cc_r.$$.dat"; w="$dir/fio_cc_w.$$.dat"
trap 'rm -f "$r" "$w"' EXIT
fio --name=prep --filename="$r" --size="$size" --rw=write --bs=8m --direct=1 \
    --ioengine=io_uring --iodepth=8 --output-format=terse >/dev/null
for _ in $(seq "$reps"); do
  fio --output-format=json --direct=1 --ioengine=io_uring --time_based --runtime="$secs" \
      --bs="$bs" --iodepth="$qd" --size="$size" \
      --name=r --filename="$r" --rw=read --name=w --filename="$w" --rw=write \
    | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs']; print(j[0]['read']['bw']*1024/1e9, j[1]['write']['bw']*1024/1e9)"
done | python3 -c "
import json, statistics as st, sys
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
r = st.median(x[0] for x in rows); w = st.median(x[1] for x in rows)
s = st.median(x[0] + x[1] for x in rows)
print(json.dumps({'tool': 'fio', 'rw': 'read+write', 'bs': '$bs', 'qd': $qd,
                  'read_gbps': round(r, 3), 'write_gbps': round(w, 3), 'gbps': round(s, 3)}))"
