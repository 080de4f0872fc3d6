"""The same DeepSpeed JSON run by DeepSpeed itself, for the comparison in scripts/gpu_check.sh
(issue #16): builds the GPT-2 of the config's "zinf.model" block in PyTorch (transformers'
GPT2LMHeadModel, random init), hands the JSON (without its "zinf" block, which DeepSpeed does
not know) to deepspeed.initialize as one rank, trains on random tokens and prints one JSON line
with the median step time and tokens/s. DeepSpeed's C++ ops (cpu_adam, async_io) JIT-build on
first use, which needs ninja and a compiler on the machine.

    python3 scripts/deepspeed_same_json.py CONFIG.json [--offload none|cpu|nvme]
        [--nvme-path DIR] [--steps 10] [--warmup 3] [--seq N]
"""
import argparse
import json
import os
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--offload", choices=["none", "cpu", "nvme"], default=None,
                    help="override offload_param/offload_optimizer (default: as the JSON says)")
    ap.add_argument("--nvme-path", default="/tmp/ds_nvme")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=None, help="default: zinf.data.seq_len")
    a = ap.parse_args()
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(k, v)
    import deepspeed
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = json.load(open(a.config))
    z = cfg.pop("zinf", {})
    m = z.get("model", {})
    seq = a.seq or z.get("data", {}).get("seq_len", 1024)
    cfg.pop("csv_monitor", None)
    zo = cfg.setdefault("zero_optimization", {})
    if a.offload is not None:
        for key in ("offload_param", "offload_optimizer"):
            zo[key] = {"device": a.offload, "pin_memory": True}
            if a.offload == "nvme":
                zo[key]["nvme_path"] = a.nvme_path
    cfg.setdefault("train_batch_size", cfg["train_micro_batch_size_per_gpu"]
                   * cfg.get("gradient_accumulation_steps", 1))
    # DeepSpeed's own fused Adam on the GPU when nothing is offloaded; its CPU Adam otherwise.
    if zo.get("offload_optimizer", {}).get("device", "none") != "none":
        cfg["optimizer"]["type"] = "AdamW"
        cfg["zero_force_ds_cpu_optimizer"] = True
    gcfg = GPT2Config(n_positions=m.get("block_size", 1024), n_embd=m.get("n_embd", 768),
                      n_layer=m.get("n_layer", 12), n_head=m.get("n_head", 12),
                      vocab_size=m.get("vocab_size", 50257))
    deepspeed.init_distributed()
    with deepspeed.zero.Init(config_dict_or_path=cfg, enabled=zo.get("stage", 0) == 3):
        model = GPT2LMHeadModel(gcfg)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=cfg)
    b = cfg["train_micro_batch_size_per_gpu"]
    gas = cfg.get("gradient_accumulation_steps", 1)
    times = []
    for i in range(a.warmup + a.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(gas):
            x = torch.randint(0, gcfg.vocab_size, (b, seq), device=engine.device)
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
        torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    print(json.dumps({
        "deepspeed": deepspeed.__version__, "torch": torch.__version__,
        "offload": zo.get("offload_param", {}).get("device", "none") + "/"
        + zo.get("offload_optimizer", {}).get("device", "none"),
        "params": params, "step_s_median": step_s, "tokens_per_s": b * gas * seq / step_s,
        "final_loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
