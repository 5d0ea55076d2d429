"""``bench/train.py --mfu``: model FLOPs utilisation of our trainer on a random-init Llama-shaped student
in bf16 on synthetic pairs with TL;DR-like lengths, both pair forwards (bench/train.py's docstring says
what the FLOPs count). Needs only torch, transformers and plad_core.training."""

from __future__ import annotations

import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import peak_memory, peak_memory_start, sync  # noqa: E402


def synthetic_batches(args, vocab: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Length-grouped pair batches of random tokens with TL;DR-like lengths (prompt 200-448, chosen
    10-48, rejected 3-48 tokens), carrying both the concatenated and the shared-prefix tensors."""
    from plad_core.training.batches import (
        Encoded,
        collate,
        collate_pair_parts,
        length_grouped_batches,
    )
    rng = random.Random(args.seed)
    items = []
    for _ in range(args.pairs):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(200, 448))]
        chosen = [rng.randrange(3, vocab) for _ in range(rng.randint(10, 48))]
        rejected = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 48))]
        items.append((Encoded(prompt + chosen, len(prompt)), Encoded(prompt + rejected, len(prompt))))
    groups = length_grouped_batches(items, lambda it: max(len(it[0].ids), len(it[1].ids)), args.batch_size,
                                    args.seed)
    return [{**collate([c for c, _ in g] + [r for _, r in g], pad_id),
             **collate_pair_parts([c.ids[:c.n_prompt] for c, _ in g], [c.ids[c.n_prompt:] for c, _ in g],
                                  [r.ids[r.n_prompt:] for _, r in g], pad_id)} for g in groups]


def needed_flops(batch: dict[str, torch.Tensor], pair_forward: str, trunk_params: int, layers: int,
                 attn_dim: int, hidden: int, vocab: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) this path needs on the batch's real tokens."""
    p = batch["prompt_mask"].sum(-1).double().repeat(2)  # (2B,) each row's prompt length
    c = batch["completion_mask"].sum(-1).double()
    if pair_forward == "shared_prefix":
        tokens = p.sum() / 2 + c.sum()
        attended = (p * (p + 1) / 2).sum() / 2 + (c * p + c * (c + 1) / 2).sum()
    else:
        tokens = (p + c).sum()
        attended = ((p + c) * (p + c + 1) / 2).sum()
    return float(6 * trunk_params * tokens + 12 * layers * attn_dim * attended + 6 * hidden * vocab * c.sum())


def mfu(args) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from plad_core.training.logprobs import PAIR_FORWARDS
    from plad_core.training.loop import train_loop
    from plad_core.training.steps import calibration_step
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        # Length-grouped batches give every step new shapes, and cuDNN's attention rebuilds its graph on
        # the CPU for each (~3 ms per layer and step on an H100 machine): use PyTorch's own kernels.
        torch.backends.cuda.enable_cudnn_sdp(False)
    vocab, pad_id = 49152, 2  # SmolLM2's tokenizer: 49152 entries, <|im_end|> (2) pads
    config = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=pad_id)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    if args.compile:  # fuse the elementwise work of each layer's norms and SwiGLU MLP (one graph for all layers);
        for layer in model.model.layers:  # attention stays eager: a compiled KV-cache update recompiles per layer
            for module in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
                module.compile(dynamic=True)
    trunk_params = sum(p.numel() for p in model.model.layers.parameters())
    total_params = sum(p.numel() for p in model.parameters())
    batches = synthetic_batches(args, vocab, pad_id)
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"MFU: random-init Llama, hidden {args.hidden}, {args.layers} layers, intermediate {args.intermediate}, "
          f"{args.heads} heads ({args.kv_heads} KV), vocab {vocab}: {total_params / 1e6:.0f}M parameters "
          f"({trunk_params / 1e6:.0f}M in decoder layers), bf16 weights/grads/AdamW{', compiled norms and MLPs' if args.compile else ''}; {len(batches)} steps of "
          f"{args.batch_size} pairs; {name}; torch {torch.__version__}; peak {args.peak_flops:.3g} FLOP/s", flush=True)
    attn_dim = args.heads * (args.hidden // args.heads)
    with torch.no_grad():  # both forwards on the device: same log-probs up to bf16 rounding
        shared = PAIR_FORWARDS["shared_prefix"](model, batches[0])[0]
        concat = PAIR_FORWARDS["concatenated"](model, batches[0])[0]
    print(f"check, first batch: shared_prefix vs concatenated summed log-probs, max |diff| "
          f"{(shared - concat).abs().max():.3g} (of |log P| up to {concat.abs().max():.0f})")
    optim = dict(lr=args.lr, epochs=1, schedule="cosine", grad_clip=1.0, bf16=False, seed=args.seed)
    print("\n| pair forward | seconds | tokens/s | model TFLOP/s | MFU | peak memory GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for pair_forward in ("shared_prefix", "concatenated"):
        step = calibration_step(model, "cpo_hinge", args.beta, pair_forward=pair_forward)
        train_loop(model, batches[:args.warmup], step, desc="warm-up", **optim)
        peak_memory_start(args.device)
        start = time.perf_counter()
        train_loop(model, batches, step, desc=pair_forward, **optim)
        sync(args.device)
        seconds = time.perf_counter() - start
        flops = sum(needed_flops(b, pair_forward, trunk_params, args.layers, attn_dim, args.hidden, vocab)
                    for b in batches)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        print(f"| {pair_forward} | {seconds:.2f} | {tokens / seconds:.0f} | {flops / seconds / 1e12:.1f} | "
              f"{100 * flops / seconds / args.peak_flops:.1f}% | {peak_memory(args.device) / 2**30:.1f} |", flush=True)
