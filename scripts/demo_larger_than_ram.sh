#!/usr/bin/env bash
# demo_larger_than_ram.sh — trains a 2.65 B-parameter GPT (configs/demo_2p5b_nvme.json: 42 GB of
# model state at DeepSpeed's 16 bytes/param) on a machine with less RAM than that, with
# parameters and optimizer state on NVMe, and puts the step time beside the physical limit:
# fio's read and write GB/s on the same folder (tools/fio_ref.sh, 8 MiB blocks, queue
# depth 32, the config's aio settings).
#
# Targets (issue #11): peak RSS <= 8 GiB; losses finite and the last below the first; and
# step_s_median / max(compute per step, I/O per step) <= 1.3, where I/O per step = bytes moved
# per step / the GB/s of a fio reader and writer running together on DIR (how a step uses the
# drive). The per-direction figure (reads at fio read speed plus writes at fio write speed) is
# given beside it. Prints one JSON line, then a table with pass/fail per target; exits 1 if
# one fails.
#
# Usage: scripts/demo_larger_than_ram.sh [DIR=runs/demo in the repository] [STEPS=3]
# CONFIG env: another config to run the same way (a smaller one for a quick check);
# SUMMARY env: also copy zinf's --summary-json there (the counters the table leaves out).
# FIO_REPS env (default 1): fio runs per direction, median taken; the verdict on the step
# ratio moves with fio's write figure (3.9-5.4 GB/s seen on this disk), so use 3 to compare.
# Builds zinf in release. Needs about 41 GB free in DIR (the estimate's NVMe bytes, the 2 GiB
# fio file and 5%). Samples the trainer's RSS every 10 s on stderr. Removes DIR's swap folder,
# its temp files and DIR itself (if it created it) on exit, on failure too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
have_fio=1
command -v fio >/dev/null || { have_fio=0; echo "demo: fio is not installed (apt-get install -y fio): the run's own figures follow, without the ratio to the drive's limit" >&2; }
cd "$(dirname "$0")/.."
dir=${1:-$ROOT/runs/demo}; steps=${2:-3}
cfg_src=${CONFIG:-configs/demo_2p5b_nvme.json}
fio_ref=${FIO_REF:-$ROOT/tools/fio_ref.sh}
zinf=$ROOT/target/release/zinf
swap="$dir/zinf_swap" # the engine's SWAP_DIR inside nvme_path

cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src aio swap Cargo.toml || echo -dirty)

made_dir=0; [ -d "$dir" ] || { mkdir -p "$dir"; made_dir=1; }
tmp=$(mktemp -d)
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  rm -rf "$tmp" "$swap"; rm -f "$dir/zinf_swap.lock"
  if [ "$made_dir" = 1 ]; then rmdir "$dir" 2>/dev/null || true; fi
}
trap cleanup EXIT

# Space: the estimate's NVMe tier (the swap store it lays out) + the 2 GiB fio file + 5%.
nvme_bytes=$("$zinf" estimate --config "$cfg_src" --json 2>/dev/null |
  python3 -c "import json,sys; print(json.load(sys.stdin)['nvme']['bytes'])")
need=$(( nvme_bytes + nvme_bytes / 20 + (2 << 30) ))
free=$(df -B1 --output=avail "$dir" | tail -1 | tr -d ' ')
if [ "$free" -lt "$need" ]; then
  python3 -c "import sys; f, n, s = (int(x) / 1e9 for x in sys.argv[2:]); print(f'demo: {sys.argv[1]} has {f:.1f} GB free; this run needs {n:.1f} GB (state {s:.1f} GB + 2 GiB fio file + 5%); free space or pass another DIR')" \
    "$dir" "$free" "$need" "$nvme_bytes" >&2
  exit 2
fi

touch "$tmp/fio.jsonl" "$tmp/fiocc.json"
if [ "$have_fio" = 1 ]; then
echo "demo: fio reference on $dir (8m blocks, qd 32)" >&2
REPS=${FIO_REPS:-1} "$fio_ref" "$dir" 8m 32 > "$tmp/fio.jsonl"
# The steps read and write at the same time; on this disk the two do not add up, so the target
# is against a reader and a writer running together (tools/fio_concurrent.sh, with
# huge-page buffers; without them fio understates this disk by ~40%).
fio_cc=${FIO_CONCURRENT:-$ROOT/tools/fio_concurrent.sh}
REPS=${FIO_REPS:-1} "$fio_cc" "$dir" 8m 32 > "$tmp/fiocc.json"
fi

# The config with DIR as nvme_path of both offload sections.
python3 - "$cfg_src" "$dir" "$tmp/config.json" <<'PY'
import json, sys
src, d, dst = sys.argv[1:]
c = json.load(open(src))
for k in ("offload_param", "offload_optimizer"):
    c["zero_optimization"][k]["nvme_path"] = d
json.dump(c, open(dst, "w"), indent=2)
PY

echo "demo: training $steps steps (log: stderr; RSS sampled every 10 s)" >&2
touch "$tmp/rss.log"
"$zinf" train --config "$tmp/config.json" --steps "$steps" --no-progress --out "$tmp/out" \
  --summary-json "$tmp/summary.json" > "$tmp/train.out" &
pid=$!
( while kill -0 "$pid" 2>/dev/null; do
    rss=$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ') || true
    [ -n "$rss" ] && { echo "$(date +%s) $rss" >> "$tmp/rss.log"; echo "demo: rss $((rss / 1024)) MiB" >&2; }
    sleep 10
  done ) &
sampler=$!
rc=0; wait "$pid" || rc=$?
kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=""
cat "$tmp/train.out" >&2
if [ -n "${SUMMARY:-}" ] && [ -f "$tmp/summary.json" ]; then cp "$tmp/summary.json" "$SUMMARY"; fi
[ "$rc" = 0 ] || { echo "demo: zinf train failed (exit $rc)" >&2; exit "$rc"; }

python3 - "$tmp/summary.json" "$tmp/fio.jsonl" "$tmp/rss.log" "$commit" "$tmp/fiocc.json" <<'PY'
import json, math, sys
s = json.load(open(sys.argv[1]))
cc_text = open(sys.argv[5]).read().strip()
cc = json.loads(cc_text)["gbps"] if cc_text else None
commit = sys.argv[4]
fio = {j["rw"]: j["gbps"] for j in map(json.loads, open(sys.argv[2]))}
rss = [int(l.split()[1]) * 1024 for l in open(sys.argv[3]) if l.strip()]
mem_total = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
n = max(s["steps"], 1)
compute = s["compute_s"] / n
have = bool(fio) and cc is not None  # fio installed: ratios to the drive's limit
io = (s["bytes_read"] / n / (fio["read"] * 1e9) + s["bytes_written"] / n / (fio["write"] * 1e9)
      if have else 0.0)
ratio = s["step_s_median"] / max(compute, io)
# The CPU backend runs the model and the CPU Adam on the same cores, so they add; shown beside
# the target's ratio, not judged.
cpu = compute + s["optimizer_s"] / n
ratio_cpu = s["step_s_median"] / max(cpu, io)
io_cc = (s["bytes_read"] + s["bytes_written"]) / n / (cc * 1e9) if have else 0.0
ratio_cc = s["step_s_median"] / max(compute, io_cc)
losses = s["losses"]
targets = {
    "peak_rss_le_8gib": s["peak_rss_bytes"] <= 8 << 30,
    "losses_finite_and_falling": bool(losses) and all(math.isfinite(x) for x in losses)
                                 and losses[-1] < losses[0],
}
if have:
    targets["step_over_max_concurrent_le_1p3"] = ratio_cc <= 1.3
out = {
    "params": s["params"], "model_state_bytes": 16 * s["params"], "host_ram_bytes": mem_total,
    "peak_rss_bytes": s["peak_rss_bytes"], "rss_sampled_max_bytes": max(rss, default=0),
    "losses": losses, "steps": s["steps"], "step_s_median": round(s["step_s_median"], 3),
    "compute_s_per_step": round(compute, 3),
    "optimizer_s_per_step": round(s["optimizer_s"] / n, 3),
    "io_s_per_step_at_fio": round(io, 3),
    "bytes_read_per_step": s["bytes_read"] // n, "bytes_written_per_step": s["bytes_written"] // n,
    "fio_read_gbps": fio.get("read"), "fio_write_gbps": fio.get("write"),
    "step_over_max": round(ratio, 3), "step_over_max_cpu": round(ratio_cpu, 3),
    "fio_concurrent_gbps": cc, "io_s_per_step_concurrent": round(io_cc, 3),
    "step_over_max_concurrent": round(ratio_cc, 3),
    "overlap_fraction": round(s["overlap_fraction"], 3),
    "io_wait_s": round(s["io_wait_s"], 2), "pool_wait_s": round(s["pool_wait_s"], 2),
    "io_busy_s": round(s["io_busy_s"], 2), "prefetch_hit_rate": round(s["prefetch_hit_rate"], 3),
    "targets": targets, "pass": all(targets.values()), "commit": commit,
}
print(json.dumps(out))
gb = lambda b: f"{b / 1e9:.2f} GB"
ok = lambda k: "PASS" if targets[k] else "FAIL"
rows = [
    ("parameters", f"{s['params']:,}", ""),
    ("model state (16 B/param)", gb(16 * s["params"]), ""),
    ("host RAM (MemTotal)", gb(mem_total), ""),
    ("peak RSS (VmHWM)", gb(s["peak_rss_bytes"]), f"<= 8 GiB: {ok('peak_rss_le_8gib')}"),
    ("losses", " ".join(f"{x:.4f}" for x in losses), f"finite, falling: {ok('losses_finite_and_falling')}"),
    ("median step", f"{s['step_s_median']:.2f} s", ""),
    ("compute per step", f"{compute:.2f} s", ""),
    ("optimizer per step (info)", f"{s['optimizer_s'] / n:.2f} s", ""),
    ("NVMe read / written per step", f"{gb(s['bytes_read'] / n)} / {gb(s['bytes_written'] / n)}", ""),
    ("overlap fraction", f"{s['overlap_fraction']:.3f}", ""),
    ("I/O wait / pool wait", f"{s['io_wait_s']:.1f} s / {s['pool_wait_s']:.1f} s", ""),
]
if have:
    rows[-2:-2] = [
        ("fio read / write", f"{fio['read']:.3f} / {fio['write']:.3f} GB/s", ""),
        ("I/O per step at fio speed", f"{io:.2f} s", ""),
        ("step / max(compute, I/O)", f"{ratio:.3f}", "(info: per-direction fio, read + write apart)"),
        ("step / max(compute+Adam, I/O)", f"{ratio_cpu:.3f}", "(info: one CPU does both)"),
        ("fio reader+writer together", f"{cc:.3f} GB/s", ""),
        ("I/O per step at that speed", f"{io_cc:.2f} s", ""),
        ("step / max(compute, that I/O)", f"{ratio_cc:.3f}",
         f"<= 1.3: {ok('step_over_max_concurrent_le_1p3')}"),
    ]
else:
    rows.append(("drive limit", "n/a", "(fio not installed: apt-get install -y fio)"))
for name, val, tgt in rows:
    print(f"{name:<30} {val:<34} {tgt}")
sys.exit(0 if out["pass"] else 1)
PY
