#!/usr/bin/env bash
# ZeRO-3 across CPU thread ranks against one rank with the same samples (BENCHMARKS.md,
# issue #17): configs/first_run.json (6.8 M-parameter GPT-2, bf16, 8 x 64) for 30 steps, state
# on the CPU and on NVMe, `--nproc-per-node 2` (micro-batch 8 each) vs one rank with
# gradient_accumulation_steps 2, interleaved reps; prints each run's median step time, the
# median over reps, the ratio 2 ranks / 1 rank and both final losses.
#
#   scripts/ranks_bench.sh [WORKDIR] [REPS]      (defaults: /tmp/zinf-ranks-bench 3)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/zinf-ranks-bench}
reps=${2:-3}
cargo build --release --bin zinf >/dev/null
zinf=$PWD/target/release/zinf
mkdir -p "$work"
python3 - configs/first_run.json "$work" <<'PY'
import json, sys
base, work = sys.argv[1], sys.argv[2]
for place in ("cpu", "nvme"):
    for ranks, gas in ((1, 2), (2, 1)):
        c = json.load(open(base))
        c["gradient_accumulation_steps"] = gas
        c["zinf"]["train_steps"] = 30
        c["zinf"]["data"]["eval_interval"] = 0
        c["scheduler"]["params"]["total_num_steps"] = 30
        for key in ("offload_param", "offload_optimizer"):
            c["zero_optimization"][key] = {"device": place, "pin_memory": False}
            if place == "nvme":
                c["zero_optimization"][key]["nvme_path"] = f"{work}/nvme"
        json.dump(c, open(f"{work}/{place}_{ranks}.json", "w"), indent=1)
PY
for rep in $(seq "$reps"); do
  for place in cpu nvme; do
    for ranks in 1 2; do
      "$zinf" train --config "$work/${place}_$ranks.json" --device cpu --threads 2 \
        --nproc-per-node "$ranks" --no-progress --out "$work/out_${place}_$ranks" \
        --summary-json "$work/s_${place}_${ranks}_$rep.json" >/dev/null 2>&1
    done
  done
done
python3 - "$work" "$reps" <<'PY'
import json, statistics, sys
work, reps = sys.argv[1], int(sys.argv[2])
for place in ("cpu", "nvme"):
    med, loss = {}, {}
    for ranks in (1, 2):
        runs = [json.load(open(f"{work}/s_{place}_{ranks}_{r}.json")) for r in range(1, reps + 1)]
        med[ranks] = statistics.median(s["step_s_median"] for s in runs)
        loss[ranks] = runs[0]["final_loss"]
        each = ", ".join("%.3f" % s["step_s_median"] for s in runs)
        print(f"{place:5} {ranks} rank(s): step {med[ranks]:.3f} s ({each}), final loss {loss[ranks]}")
    print(f"{place:5} 2 ranks / 1 rank: {med[2] / med[1]:.2f}, losses identical: {loss[1] == loss[2]}")
PY
