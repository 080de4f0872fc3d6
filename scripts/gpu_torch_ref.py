"""The PyTorch reference for scripts/gpu_check.sh: GPT-2 124M (transformers' GPT2LMHeadModel,
random init, its default SDPA attention), eager mode, bf16 autocast, micro-batch 8 x 1024,
AdamW (fused) on the GPU; times the training step (forward, backward, optimizer) with CUDA
events, median of the timed steps after warm-up. Prints one JSON line.

    python3 scripts/gpu_torch_ref.py [--steps 10] [--warmup 3] [--batch 8] [--seq 1024]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--device", default="cuda", help="cpu: a syntax check of this script")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    cfg = GPT2Config(n_positions=a.seq, n_embd=768, n_layer=a.layers, n_head=12, vocab_size=50257)
    model = GPT2LMHeadModel(cfg).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=cuda)
    params = sum(p.numel() for p in model.parameters())
    times = []
    for i in range(a.warmup + a.steps):
        x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            elapsed = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(elapsed)
    step_s = statistics.median(times)
    tokens = a.batch * a.seq
    # Model FLOPs per token of a training step: 6 N plus attention's 6 L T C (PaLM's count).
    flops = 6 * params * tokens + 6 * cfg.n_layer * a.seq * cfg.n_embd * tokens
    print(json.dumps({
        "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "params": params,
        "step_s_median": step_s, "tokens_per_s": tokens / step_s,
        "tflops": flops / step_s / 1e12, "final_loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
