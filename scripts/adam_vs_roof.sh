#!/usr/bin/env bash
# adam_vs_roof.sh — zinf's CPU Adam step beside the memory roof of its own streams.
#
# Builds tools/adam_roof.c (streams exactly a fused step's bytes with bf16 copy-out,
# 30 B/param, no Adam math) and tools/stream.c with gcc -O3 -march=native -fopenmp,
# then runs adam_roof and `zinf bench adam --dtype bf16 --json` interleaved REPS times with the
# same parameter count and threads, and prints the medians and the ratio zinf / adam_roof
# (target >= 0.9). Ends with STREAM (OMP_NUM_THREADS=THREADS) for the machine's bandwidth.
#
# Usage: scripts/adam_vs_roof.sh [PARAMS=200000000] [THREADS=2] [REPS=5]
# Needs: gcc with OpenMP, cargo; about 7.5 GB of free RAM at 200M params.
set -euo pipefail

PARAMS=${1:-200000000}
THREADS=${2:-2}
REPS=${3:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS="$ROOT/tools"
OUT="$ROOT/target/roof"
mkdir -p "$OUT"

gcc -O3 -march=native -fopenmp "$TOOLS/adam_roof.c" -o "$OUT/adam_roof"
gcc -O3 -march=native -fopenmp "$TOOLS/stream.c" -o "$OUT/stream"
(cd "$ROOT" && cargo build --release --quiet)
ZINF="$ROOT/target/release/zinf"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
json_field() { sed -E "s/.*\"$1\":([^,}]*).*/\1/"; }

roof=() zinf=() kernel=""
for r in $(seq 1 "$REPS"); do
    line=$(OMP_NUM_THREADS=$THREADS OMP_PROC_BIND=spread "$OUT/adam_roof" "$PARAMS" 11)
    roof+=("$(echo "$line" | sed -E 's/.*params_per_s=([^ ]*).*/\1/')")
    js=$("$ZINF" bench adam --params "$PARAMS" --threads "$THREADS" --dtype bf16 --json \
        --scalar-steps 0 --stream-elems 0)
    zinf+=("$(echo "$js" | json_field params_per_s)")
    kernel=$(echo "$js" | json_field kernel | tr -d '"')
    echo "rep $r: adam_roof ${roof[-1]} params/s, zinf ${zinf[-1]} params/s ($kernel)"
done
roof_med=$(printf '%s\n' "${roof[@]}" | median)
zinf_med=$(printf '%s\n' "${zinf[@]}" | median)
echo "median adam_roof: $roof_med params/s ($(awk "BEGIN{printf \"%.2f\", $roof_med*30/1e9}") GB/s at 30 B/param)"
echo "median zinf:      $zinf_med params/s ($(awk "BEGIN{printf \"%.2f\", $zinf_med*30/1e9}") GB/s at 30 B/param), kernel $kernel"
echo "ratio zinf/adam_roof: $(awk "BEGIN{printf \"%.3f\", $zinf_med/$roof_med}") (target >= 0.9)"
echo "--- STREAM, OMP_NUM_THREADS=$THREADS"
OMP_NUM_THREADS=$THREADS "$OUT/stream"
