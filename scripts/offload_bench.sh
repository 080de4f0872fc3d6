#!/usr/bin/env bash
# offload_bench.sh — the engine's two step-time targets, each against a reference measured in
# the same run, medians of interleaved repetitions:
#
#  offload cost  GPT-2 124M with offload_optimizer "cpu" vs the resident run (both params on the
#                device): ratio = step_s(cpu) / step_s(resident)                  (target <= 1.1)
#  overlap       GPT-2 124M with params and optimizer on NVMe in DIR, sized so compute and I/O
#                per step are alike: ratio = step_s / max(compute-only, I/O-only) (target <= 1.10
#                with the reader + writer reference)
#                compute-only = the resident run's step (model and CPU Adam, no I/O), also
#                given as the run's own time in model ops; I/O-only = the run's bytes per step
#                at fio's io_uring GB/s on DIR, two ways: per direction (reads at read speed
#                plus writes at write speed, fio_ref.sh) and with a reader and a writer running
#                together (tools/fio_concurrent.sh), which is how the steps use the drive.
#  wait vs stream the same NVMe run with gradient_clipping 1.0: the update waits for the global
#                norm (after backward) instead of streaming during it; ratio of step times.
#  before/after  with BASE_BIN=path/to/an/older/zinf, that binary also runs the NVMe case in
#                every rep (interleaved): its bytes read/written per step and step time beside
#                this build's.
#
# Usage: [BASE_BIN=old/zinf] scripts/offload_bench.sh DIR [STEPS=6] [REPS=2] [TOKENS=512]
# Prints one JSON line per target. Builds zinf in release. Leaves no file behind.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v fio >/dev/null || { echo "$(basename "$0"): fio is not installed; it is the reference these figures are measured against (apt-get install -y fio)" >&2; exit 2; }
cd "$(dirname "$0")/.."
dir=${1:?usage: offload_bench.sh DIR [STEPS] [REPS] [TOKENS]}
steps=${2:-6}; reps=${3:-2}; tokens=${4:-512}
fio_ref=${FIO_REF:-$ROOT/tools/fio_ref.sh}
# The reader + writer reference with huge-page buffers (without them fio understates this disk
# by ~40%).
fio_cc=${FIO_CONCURRENT:-$ROOT/tools/fio_concurrent.sh}
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
tmp=$(mktemp -d); mkdir -p "$dir"
trap 'rm -rf "$tmp" "$dir/zinf_swap"' EXIT

# One config per case, from the same base: GPT-2 124M, bf16, no clipping (the update streams),
# one micro-batch of TOKENS tokens, constant lr.
python3 - "$tmp" "$dir" "$tokens" <<'PY'
import json, sys
tmp, nvme, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = {
  "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
  "gradient_clipping": 0.0, "steps_per_print": 1000,
  "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01}},
  "bf16": {"enabled": True},
  "zero_optimization": {"stage": 3, "sub_group_size": 2e7,
                        "stage3_prefetch_bucket_size": 5e7, "stage3_max_live_parameters": 3e8},
  "zinf": {"seed": 1, "threads": 2,
           "model": {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257, "block_size": tokens},
           "data": {"seq_len": tokens, "eval_interval": 0},
           "device_memory_budget": "6GiB", "pinned_memory_budget": "2GiB"}}
def write(name, zero, clip=0.0):
    c = json.loads(json.dumps(base)); c["zero_optimization"].update(zero)
    c["gradient_clipping"] = clip
    json.dump(c, open(f"{tmp}/{name}.json", "w"), indent=1)
write("resident", {})
write("cpu_adam", {"offload_optimizer": {"device": "cpu", "pin_memory": True}})
nv = {"device": "nvme", "nvme_path": nvme}
write("nvme", {"offload_param": dict(nv, max_in_cpu=0), "offload_optimizer": nv})
write("nvme_clip", {"offload_param": dict(nv, max_in_cpu=0), "offload_optimizer": nv}, clip=1.0)
PY

run() { # run NAME REP [BIN] [TAG] -> summary JSON in $tmp/NAME[TAG].REP.json
  "${3:-$ROOT/target/release/zinf}" train --config "$tmp/$1.json" --steps "$steps" --no-progress \
    --out "$tmp/out" --summary-json "$tmp/$1${4:-}.$2.json" >/dev/null 2>"$tmp/$1.$2.log" \
    || { tail -20 "$tmp/$1.$2.log" >&2; exit 1; }
  rm -rf "$dir/zinf_swap"
}
for r in $(seq "$reps"); do
  run resident "$r"; run cpu_adam "$r"; run nvme "$r"; run nvme_clip "$r"
  [ -n "${BASE_BIN:-}" ] && run nvme "$r" "$BASE_BIN" _base
  REPS=1 "$fio_ref" "$dir" 8m 32 1 2g 6 > "$tmp/fio.$r.json"
  REPS=1 "$fio_cc" "$dir" 8m 32 2g 6 > "$tmp/fiocc.$r.json"
done

python3 - "$tmp" "$reps" "$steps" "${BASE_BIN:-}" <<'PY'
import json, statistics as st, sys
tmp, reps, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
S = lambda n, r: json.load(open(f"{tmp}/{n}.{r}.json"))
med = lambda xs: st.median(xs)
res = [S("resident", r)["step_s_median"] for r in range(1, reps + 1)]
cpu = [S("cpu_adam", r)["step_s_median"] for r in range(1, reps + 1)]
print(json.dumps({"target": "offload_cost", "model": "gpt2-124m", "resident_step_s": round(med(res), 3),
                  "cpu_adam_step_s": round(med(cpu), 3), "ratio": round(med(cpu) / med(res), 3),
                  "goal": "<= 1.1"}))
fio = {"read": [], "write": []}
for r in range(1, reps + 1):
    for line in open(f"{tmp}/fio.{r}.json"):
        j = json.loads(line); fio[j["rw"]].append(j["gbps"])
rd, wr = med(fio["read"]), med(fio["write"])
cc = med([json.load(open(f"{tmp}/fiocc.{r}.json"))["gbps"] for r in range(1, reps + 1)])
rows = []
for r in range(1, reps + 1):
    s = S("nvme", r); n = s["steps"]
    compute = s["compute_s"] / n
    io = s["bytes_read"] / n / (rd * 1e9) + s["bytes_written"] / n / (wr * 1e9)
    io_cc = (s["bytes_read"] + s["bytes_written"]) / n / (cc * 1e9)
    rows.append((s["step_s_median"], compute, io, io_cc, s["overlap_fraction"],
                 s["io_wait_s"] / n, s["optimizer_s"] / n))
step, compute, io, io_cc, ov, wait, opt = (med([x[i] for x in rows]) for i in range(7))
resident = med(res)
print(json.dumps({"target": "overlap", "model": "gpt2-124m nvme/nvme", "step_s": round(step, 3),
                  "compute_only_resident_s": round(resident, 3), "model_ops_s": round(compute, 3),
                  "io_only_per_direction_s": round(io, 3), "io_only_concurrent_s": round(io_cc, 3),
                  "fio_read_gbps": rd, "fio_write_gbps": wr, "fio_concurrent_gbps": cc,
                  "optimizer_s": round(opt, 3), "io_wait_s_per_step": round(wait, 3),
                  "overlap_fraction": round(ov, 3),
                  "ratio_per_direction": round(step / max(resident, io), 3),
                  "ratio_concurrent": round(step / max(resident, io_cc), 3),
                  "goal": "ratio_concurrent <= 1.10"}))
if sys.argv[4]:
    def per_step(name, key):
        return med([S(name, r)[key] / S(name, r)["steps"] for r in range(1, reps + 1)])
    b_step = med([S("nvme_base", r)["step_s_median"] for r in range(1, reps + 1)])
    print(json.dumps({"target": "before_after", "base": sys.argv[4],
                      "bytes_read_per_step": per_step("nvme", "bytes_read"),
                      "base_bytes_read_per_step": per_step("nvme_base", "bytes_read"),
                      "bytes_written_per_step": per_step("nvme", "bytes_written"),
                      "base_bytes_written_per_step": per_step("nvme_base", "bytes_written"),
                      "step_s": round(step, 3), "base_step_s": round(b_step, 3),
                      "step_ratio": round(step / b_step, 3)}))
clip = med([S("nvme_clip", r)["step_s_median"] for r in range(1, reps + 1)])
print(json.dumps({"target": "wait_vs_stream", "stream_step_s": round(step, 3),
                  "wait_step_s": round(clip, 3), "ratio": round(clip / step, 3)}))
PY
