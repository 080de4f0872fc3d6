#!/usr/bin/env python3
"""Writes the Llama-family test fixtures under tests/data/llama/ with Hugging Face transformers.

Each case is a tiny random model in a Hugging Face folder (config.json written by hand, in the
v4 or v5 RoPE form the case is about, and safetensors weights, sharded for one case) plus what
transformers computes for it in fp32, eager attention:

  batch.json            input_ids and labels (Hugging Face convention: unshifted, -100 masked)
  expected.safetensors  losses [3]          loss before each of 3 AdamW steps on that batch
                        grad.NAME           d(loss)/d(NAME) at the initial weights
                        after.NAME          NAME after 3 torch.optim.AdamW steps

The `chat` case also has a tokenizer: tokenizer.json (a byte-level BPE trained here with
`tokenizers` on the first 200 kB of corpus/tinyshakespeare.txt, vocabulary 320 with ChatML
special tokens), tokenizer_config.json with a ChatML chat_template, and tokenizer_cases.json:
strings with the ids `tokenizers` gives them, and conversations with the text transformers'
`apply_chat_template` renders.

The Rust tests (tests/model_llama.rs) load the folder with zinf, run the same batch and
compare. The files are committed; nothing runs this script in CI. To regenerate (needs
network once, ~3 GB of wheels):

  python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install torch transformers safetensors
  /tmp/pyref/bin/python scripts/llama_fixtures.py tests/data/llama
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
STEPS = 3

BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 256,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.1,
    "torch_dtype": "float32",
    "rope_theta": 10000.0,
}

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def case_configs():
    """(name, config dict, sequence length, shards)."""
    cases = []
    cases.append(("gqa", dict(BASE), 32, 1))
    tied = dict(BASE, tie_word_embeddings=True, num_key_value_heads=4, intermediate_size=48)
    cases.append(("tied", tied, 32, 1))
    l3 = dict(BASE, hidden_size=64, intermediate_size=48, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING)
    cases.append(("llama3_rope", l3, 128, 1))
    v5 = dict(BASE, hidden_size=64, intermediate_size=48)
    del v5["rope_theta"]
    v5["rope_parameters"] = dict(LLAMA3_SCALING, rope_theta=500000.0)
    cases.append(("rope_v5", v5, 128, 1))
    lin = dict(BASE, intermediate_size=48, rope_scaling={"type": "linear", "factor": 2.0})
    cases.append(("rope_linear", lin, 64, 1))
    hd = dict(BASE, intermediate_size=48, head_dim=32)
    cases.append(("head_dim", hd, 32, 1))
    cases.append(("sharded", dict(BASE), 32, 2))
    qwen2 = dict(BASE, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                 intermediate_size=48, tie_word_embeddings=True, rope_theta=1000000.0,
                 rms_norm_eps=1e-6)
    for k in ("attention_bias", "mlp_bias"):
        del qwen2[k]
    cases.append(("qwen2_bias", qwen2, 32, 1))
    qwen3 = dict(BASE, architectures=["Qwen3ForCausalLM"], model_type="qwen3",
                 intermediate_size=48, head_dim=24, rope_theta=1000000.0, rms_norm_eps=1e-6)
    del qwen3["mlp_bias"]
    cases.append(("qwen3_qk_norm", qwen3, 32, 1))
    mistral = dict(BASE, architectures=["MistralForCausalLM"], model_type="mistral",
                   intermediate_size=48, sliding_window=4096)
    for k in ("attention_bias", "mlp_bias"):
        del mistral[k]
    cases.append(("mistral", mistral, 32, 1))
    chat = dict(BASE, architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=320,
                intermediate_size=48, tie_word_embeddings=True, bos_token_id=None,
                eos_token_id=319)  # <|im_end|>: 317 BPE tokens, then CHAT_SPECIALS
    for k in ("attention_bias", "mlp_bias"):
        del chat[k]
    cases.append(("chat", chat, 32, 1))
    yarn = dict(BASE, hidden_size=64, intermediate_size=48, rope_theta=10000.0,
                rope_scaling={"rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 32})
    cases.append(("rope_yarn", yarn, 96, 1))
    return cases


CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "What light through yonder window breaks?"},
     {"role": "assistant", "content": "  It is the east, and Juliet is the sun. "}],
    [{"role": "system", "content": "Speak as a king."},
     {"role": "user", "content": "Now is the winter?"},
     {"role": "assistant", "content": "Of our discontent."},
     {"role": "user", "content": "Made glorious summer?"},
     {"role": "assistant", "content": "By this sun of York."}],
]


def greedy_ids(model, ids, n):
    """n greedy tokens after ids, one full forward each (no cache, no stop)."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    return ids


def make_tokenizer(root, out, model):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    text = open(os.path.join(root, "..", "..", "..", "corpus", "tinyshakespeare.txt")).read()[:200000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320 - len(CHAT_SPECIALS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    tok.add_special_tokens(CHAT_SPECIALS)
    assert tok.get_vocab_size() <= 320, tok.get_vocab_size()
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
           "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHATML,
           "model_max_length": 256}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    fast = PreTrainedTokenizerFast.from_pretrained(out)
    strings = ["Hello, world!", "To be, or not to be: that is the question.",
               "  spaced   out\n\nlines\t", "ünïcödé and emoji 🎭", "<|im_start|>user\nhi<|im_end|>"]
    cases = {
        "strings": [{"text": t, "ids": tok.encode(t).ids} for t in strings],
        "chats": [{"messages": m,
                   "text": fast.apply_chat_template(m, tokenize=False),
                   "prompt": fast.apply_chat_template(m[:-1], tokenize=False, add_generation_prompt=True)}
                  for m in CONVERSATIONS],
    }
    prompt = tok.encode("To be, or not").ids
    # Greedy continuation of the initial weights (before the AdamW steps of make_case).
    cases["greedy"] = {"text": "To be, or not", "ids": greedy_ids(model, prompt, 8)}
    with open(os.path.join(out, "tokenizer_cases.json"), "w") as f:
        json.dump(cases, f, indent=2, ensure_ascii=False)


def batch(vocab, t, gen):
    ids = torch.randint(0, vocab, (2, t), generator=gen)
    labels = ids.clone()
    labels[0, : t // 4] = -100  # a masked prompt
    labels[1, t // 2 : t // 2 + 3] = -100
    return ids, labels


def write_weights(out, state, shards):
    names = list(state.keys())
    if shards == 1:
        save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, os.path.join(out, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    # total_size deliberately wrong: publishers write different things; readers must not trust it.
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)


def make_case(root, name, cfg, t, shards, seed):
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(out)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    state = {n: p.detach().clone().contiguous() for n, p in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    write_weights(out, state, shards)

    gen = torch.Generator().manual_seed(seed + 1)
    ids, labels = batch(cfg["vocab_size"], t, gen)
    with open(os.path.join(out, "batch.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "labels": labels.tolist()}, f)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    losses, expected = [], {}
    for step in range(STEPS):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            for n, p in model.named_parameters():
                expected["grad." + n] = p.grad.detach().clone()
        opt.step()
    for n, p in model.named_parameters():
        expected["after." + n] = p.detach().clone()
    expected["losses"] = torch.tensor(losses, dtype=torch.float32)
    save_file(expected, os.path.join(out, "expected.safetensors"))
    if name == "chat":
        initial = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        initial.config._attn_implementation = "eager"
        initial.load_state_dict({**state, **({"lm_head.weight": state["model.embed_tokens.weight"]}
                                             if config.tie_word_embeddings else {})})
        initial.eval()
        make_tokenizer(root, out, initial)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, losses {losses}")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/data/llama"
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "adamw.json"), "w") as f:
        json.dump(dict(ADAMW, betas=list(ADAMW["betas"]), steps=STEPS), f, indent=2)
    for i, (name, cfg, t, shards) in enumerate(case_configs()):
        make_case(root, name, cfg, t, shards, seed=1000 + i)


if __name__ == "__main__":
    main()
