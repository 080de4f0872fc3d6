#!/usr/bin/env bash
# The whole GPU check of zinf, for a borrowed GPU machine with no Rust toolchain (about 6
# minutes). Build first, on a CPU machine: `scripts/gpu_build.sh` (fills gpu_bin/); carry
# gpu_bin/ and run, from the repository root:
#
#   bash scripts/gpu_check.sh [WORK_DIR]       (default: runs/gpu_check)
#
# It prints nvidia-smi, links the CUDA libraries cudarc opens (driver, cuBLAS, NVRTC) into one
# folder on LD_LIBRARY_PATH, runs the kernel compile test, every CUDA-vs-CPU parity test and
# the engine-on-GPU tests, trains GPT-2 124M (configs/gpt2_124m_gpu.json, bf16, 8 x 1024)
# resident, with parameters and optimizer state in CPU memory, and on NVMe (on this machine's
# disk), with a trace and a summary JSON each, times the same model's step in this machine's
# PyTorch, runs the same JSON under DeepSpeed in the same three placements when .whl/ holds
# its wheels (scripts/gpu_wheels.sh), and prints a table last. Everything is written under WORK_DIR, on the disk; when $OUT is set (the
# device tool's folder of files that come back), the logs, summaries and traces are packed
# into $OUT/gpu_check.tgz and the table copied to $OUT/table.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
rm -rf "$out" && mkdir -p "$out" && out=$(cd "$out" && pwd)
bin=gpu_bin
log() { echo "== $*" | tee -a "$out/check.log"; }
status() { printf '%-34s %s\n' "$1" "$2" >> "$out/table.txt"; }
: > "$out/table.txt"

log "nvidia-smi"
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"

# The libraries cudarc opens by versioned name: libcuda.so.1 (driver), libcublas.so.13,
# libcublasLt.so.13, libnvrtc.so.13 (+ its builtins), libnccl.so.2 (NCCL, the world-of-one
# test). Found in the loader cache, the driver's folder or the image's Python wheels
# (nvidia/cu13/lib, nvidia/nccl/lib).
log "CUDA libraries"
lib="$out/lib"
mkdir -p "$lib"
py=$(command -v python3)
wheel_dirs=$("$py" - <<'PY' 2>/dev/null
import glob, os, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
for d in dirs:
    for lib in glob.glob(os.path.join(d, "nvidia", "*", "lib")) + glob.glob(os.path.join(d, "nvidia", "*", "*", "lib")):
        print(lib)
PY
)
for name in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 'libnvrtc-builtins.so.13*' libnccl.so.2; do
  found=""
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 $wheel_dirs; do
    f=$(ls $d/$name 2>/dev/null | head -1)
    if [ -n "$f" ]; then found=$f; break; fi
  done
  if [ -z "$found" ]; then found=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 ~ n {print $NF; exit}'); fi
  if [ -n "$found" ]; then ln -sf "$found" "$lib/$(basename "$found")"; echo "$name -> $found"; else echo "$name: NOT FOUND"; fi
done | tee -a "$out/check.log"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_MANIFEST_DIR="$PWD"
"$bin/zinf" --version | tee -a "$out/check.log"

run_test() {
  local name=$1
  log "test $name"
  if timeout 240 "$bin/$name" --test-threads=1 --nocapture > "$out/test_$name.log" 2>&1; then
    status "test $name" "PASS ($(grep -o '[0-9]* passed' "$out/test_$name.log" | tail -1), $(grep -c SKIPPED "$out/test_$name.log") said SKIPPED)"
  else
    status "test $name" "FAIL (see test_$name.log)"
  fi
  tail -n 30 "$out/test_$name.log"
}
run_test cuda_kernels
run_test cuda_parity
run_test cuda_engine
run_test cuda_nccl

train() {
  local name=$1 cfg=$2
  log "train $name"
  timeout 240 "$bin/zinf" train --config "$cfg" --device cuda --steps 10 --out "$out/$name" \
    --summary-json "$out/$name.json" --trace "$out/$name.trace.json" > "$out/train_$name.log" 2>&1
  local rc=$?
  tail -n 15 "$out/train_$name.log"
  if [ $rc -eq 0 ] && [ -f "$out/$name.json" ]; then
    "$py" - "$out/$name.json" "$name" >> "$out/table.txt" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
tok = s["tokens"] / max(s["steps"], 1)
print(f"{'zinf ' + sys.argv[2]:<34} step {s['step_s_median']:.3f} s median, {tok / s['step_s_median']:.0f} tok/s, "
      f"compute {s['compute_s'] / max(s['steps'], 1):.3f} s/step, optimizer {s['optimizer_s'] / max(s['steps'], 1):.3f} s/step, "
      f"loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}, device peak {s['device_peak_bytes'] / 2**30:.2f} GiB")
PY
  else
    status "zinf $name" "FAIL rc=$rc (see train_$name.log)"
  fi
}
train resident configs/gpt2_124m_gpu.json
# The same model with parameters and optimizer state in CPU memory, then on this machine's
# disk (not tmpfs).
nvme_dir="$out/nvme_swap"
mkdir -p "$nvme_dir"
for place in cpu nvme; do
  "$py" - configs/gpt2_124m_gpu.json "$place" "$nvme_dir" > "$out/gpt2_124m_gpu_$place.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
z = c["zero_optimization"]
for key in ("offload_param", "offload_optimizer"):
    z[key] = {"device": sys.argv[2], "pin_memory": True}
    if sys.argv[2] == "nvme":
        z[key]["nvme_path"] = sys.argv[3]
print(json.dumps(c, indent=1))
PY
done
df -h "$nvme_dir" | tee -a "$out/check.log"
train cpu "$out/gpt2_124m_gpu_cpu.json"
train nvme "$out/gpt2_124m_gpu_nvme.json"
rm -rf "$nvme_dir" "$out/resident" "$out/cpu" "$out/nvme"  # swap store and exported weights

log "PyTorch reference"
if timeout 240 "$py" scripts/gpu_torch_ref.py > "$out/torch.json" 2> "$out/torch.log"; then
  "$py" - "$out/torch.json" "$out/resident.json" >> "$out/table.txt" <<'PY'
import json, os, sys
t = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"{'pytorch eager (bf16 autocast)':<34} step {t['step_s_median']:.3f} s median, {t['tokens_per_s']:.0f} tok/s, {t['tflops']:.0f} TFLOP/s, torch {t['torch']}")
if os.path.exists(sys.argv[2]):
    z = json.load(open(sys.argv[2]))
    print(f"{'zinf resident / pytorch (speed)':<34} {t['step_s_median'] / z['step_s_median']:.2f} (target >= 0.8)")
PY
else
  status "pytorch reference" "FAIL (see torch.log)"; tail -n 20 "$out/torch.log"
fi

if ls .whl/deepspeed-*.whl > /dev/null 2>&1; then
  log "DeepSpeed on the same JSON"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/zinf-site .whl/*.whl >> "$out/check.log" 2>&1
  ds_nvme="$out/ds_nvme"
  mkdir -p "$ds_nvme"
  for place in none cpu nvme; do
    if PYTHONPATH=/tmp/zinf-site timeout 200 "$py" scripts/deepspeed_same_json.py \
        configs/gpt2_124m_gpu.json --offload "$place" --nvme-path "$ds_nvme" --steps 5 --warmup 2 \
        > "$out/deepspeed_$place.json" 2> "$out/deepspeed_$place.log"; then
      "$py" - "$out/deepspeed_$place.json" "$place" >> "$out/table.txt" <<'PY'
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"{'deepspeed ' + sys.argv[2]:<34} step {d['step_s_median']:.3f} s median, {d['tokens_per_s']:.0f} tok/s, deepspeed {d['deepspeed']}")
PY
    else
      status "deepspeed $place" "FAIL (see deepspeed_$place.log)"; tail -n 15 "$out/deepspeed_$place.log"
    fi
  done
  rm -rf "$ds_nvme"
else
  status "deepspeed" "not run: no .whl/ (scripts/gpu_wheels.sh, then carry .whl)"
fi

# Practicality (issue #16): offloaded tokens/s over resident tokens/s, zinf and DeepSpeed.
"$py" - "$out" >> "$out/table.txt" <<'PY'
import json, os, sys
out = sys.argv[1]
def step(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return None
    try:
        return json.loads(open(p).read().strip().splitlines()[-1])["step_s_median"]
    except Exception:
        return None
for who, res, places in (("zinf", "resident.json", ("cpu.json", "nvme.json")),
                         ("deepspeed", "deepspeed_none.json", ("deepspeed_cpu.json", "deepspeed_nvme.json"))):
    r = step(res)
    for p in places:
        o = step(p)
        if r and o:
            print(f"{who + ' practicality ' + p.split('.')[0].split('_')[-1]:<34} {r / o:.2f} (resident step / offloaded step)")
for p in ("cpu", "nvme"):
    z, d = step(p + ".json"), step("deepspeed_" + p + ".json")
    if z and d:
        print(f"{'zinf / deepspeed speed, ' + p:<34} {d / z:.2f}")
PY

echo
echo "=== zinf GPU check ($(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)) ==="
cat "$out/table.txt"
if [ -n "${OUT:-}" ]; then
  cp "$out/table.txt" "$OUT/table.txt"
  tar czf "$OUT/gpu_check.tgz" -C "$(dirname "$out")" --exclude lib "$(basename "$out")"
fi
