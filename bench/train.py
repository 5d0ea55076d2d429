"""Calibration training throughput: our trainer (shared-prefix and concatenated pair forwards) vs TRL.

    .venv/bin/python bench/train.py [--pairs 32] [--batch-size 4] [--threads 2] [--precision bf16]
    python3 bench/train.py --mfu --device cuda [--peak-flops 989e12]

Default mode: one calibration epoch on the same real TL;DR pairs, with the same student, effective
batch, precision, max length, seed and threads, three times, each in a fresh process (so each has its
own peak memory):

- ours, ``train.pair_forward=shared_prefix``: the prompts run once and their KV cache serves both
  completions (``plad_core.training.logprobs``);
- ours, ``train.pair_forward=concatenated``: prompt+chosen and prompt+rejected in one batch;
- TRL ``CPOTrainer(loss_type="hinge", cpo_alpha=0)`` (trl.experimental.cpo).

All three train with the same loss, relu(1 - beta (log P(y_T|x) - log P(y_S|x))) on summed sequence
log-probs: ours ``train.loss=cpo_hinge``; TRL's hinge with cpo_alpha=0, which drops CPO's extra NLL
term. Both use AdamW, cosine schedule, grad clip 1.0 and length-grouped batches (TRL through
``train_sampling_strategy="group_by_length"``), no gradient checkpointing (TRL's CPOConfig turns it on
by default; it is switched off here). What differs is how the work is done: TRL projects every
position of both sequences onto the 49k vocabulary and runs each prompt twice; ours projects only the
completion positions, and shared_prefix runs each prompt once.

Pairs: ``--pairs`` real posts of ../shared/data/tldr/validation.jsonl (a seeded sample) in the
student's prompt template, chosen = the post's human summary, rejected = another sampled post's
summary; or the first ``--pairs`` rows of a pairs.parquet (``--pairs-file``, e.g. one under
data/artifacts/build_pairs/). Student: the embedded SmolLM2-135M-Instruct sliced to the demo's 8
layers (``student.keep_layers``), or all 30 with ``--full``; unhealed weights (speed only).
tokens/s counts the real (non-pad) tokens of prompt+chosen and prompt+rejected as each trainer
encodes them (TRL adds a BOS to each sequence), so the ratio is a ratio of pairs per second.
Peak memory: the process's peak RSS on the CPU (and its rise during the epoch), or
``torch.cuda.max_memory_allocated`` during the epoch on a GPU.

``--mfu``: model FLOPs utilisation of our trainer on a random-init ~0.5B Llama-shaped student in bf16
(weights, gradients and AdamW states all bf16) on synthetic pairs with TL;DR-like lengths, both pair
forwards. FLOPs count only the work each path needs on real tokens: 6 N per token through the
trunk (N = decoder-layer weights), 12 L d per attended (query, key) pair for attention (causal, padding
excluded), and 6 d V per scored position for the LM head. This mode needs only torch, transformers
and plad_core.training (no omegaconf, pandas, rouge-score or TRL); it lives in bench/train_mfu.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.measure import cpu_seconds, peak_memory, peak_memory_start, sync  # noqa: E402
from bench.train_mfu import mfu  # noqa: E402

VARIANTS = ("shared_prefix", "concatenated", "trl")


# --------------------------------------------------------------------------- one variant, one process

def load_student(args):
    from plad_core import models
    from plad_core.config import load_config
    model, tokenizer = models.load_model("embedded:smollm2-135m-instruct", args.cache_dir)
    if not args.full:
        model = models.slice_layers(model, list(load_config("demo").student.keep_layers))
    return model.to(args.device), tokenizer


def make_pairs(args, tokenizer):
    """The pairs frame (id, prompt, chosen, rejected, reference), the same in every process."""
    import pandas as pd
    if args.pairs_file:
        return pd.read_parquet(args.pairs_file).head(args.pairs).reset_index(drop=True)
    from plad_core import data as data_lib
    from plad_core.config import load_config
    rows = data_lib.load_rows(args.data, "auto", "tldr").rows
    rows = random.Random(args.seed).sample(rows, args.pairs)
    prompt_cfg = load_config("demo").student.prompt
    prompts, _ = data_lib.build_prompts(pd.DataFrame(rows), tokenizer, prompt_cfg.template, [], "",
                                        prompt_cfg.max_tokens)
    summaries = [r["reference"] for r in rows]
    return pd.DataFrame({"id": [r["id"] for r in rows], "prompt": prompts, "chosen": summaries,
                         "rejected": summaries[1:] + summaries[:1], "reference": summaries})


def run_ours(args, pair_forward: str) -> dict:
    from omegaconf import OmegaConf

    from plad_core.config import TrainConfig
    from plad_core.training.batches import pair_batches
    from plad_core.training.loop import optim_kwargs, train_loop
    from plad_core.training.steps import calibration_step
    model, tokenizer = load_student(args)
    frame = make_pairs(args, tokenizer)
    cfg = OmegaConf.structured(TrainConfig)
    cfg.loss, cfg.beta, cfg.pair_forward = "cpo_hinge", args.beta, pair_forward
    o = cfg.optim
    o.lr, o.batch_size, o.grad_accum, o.max_seq_len = args.lr, args.batch_size, args.grad_accum, args.max_len
    o.bf16, o.seed, o.schedule, o.grad_clip = args.precision == "bf16", args.seed, "cosine", 1.0
    batches = pair_batches(frame, tokenizer, cfg)
    step = calibration_step(model, cfg.loss, cfg.beta, pair_forward=pair_forward)
    before = peak_memory_start(args.device)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    history = train_loop(model, batches, step, **optim_kwargs(o), desc=pair_forward)
    sync(args.device)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    prompt_positions = sum(b["prompt_ids"].numel() + b["completion_ids"].numel() for b in batches)
    return {"seconds": seconds, "cpu_seconds": cpu, "steps": len(history), "mean_loss": sum(h["loss"] for h in history) / len(history),
            "tokens": int(sum(b["attention_mask"].sum() for b in batches)), "before": before,
            "peak": peak_memory(args.device),
            "trunk_positions": prompt_positions if pair_forward == "shared_prefix"
            else int(sum(b["input_ids"].numel() for b in batches))}


def run_trl(args) -> dict:
    import logging

    import transformers
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from plad_core.training.batches import encode_pair
    transformers.logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    model, tokenizer = load_student(args)
    frame = make_pairs(args, tokenizer)
    # TRL appends the answer to the prompt text; ours encodes " " + answer.strip(): give TRL the same text.
    chosen = [" " + c.strip() for c in frame["chosen"]]
    rejected = [" " + r.strip() for r in frame["rejected"]]
    lengths = [max(len(c.ids), len(r.ids)) for c, r in
               (encode_pair(tokenizer, p, c, r, args.max_len) for p, c, r in
                zip(frame["prompt"], frame["chosen"], frame["rejected"]))]
    dataset = Dataset.from_dict({"prompt": list(frame["prompt"]), "chosen": chosen, "rejected": rejected,
                                 "length": lengths})
    with tempfile.TemporaryDirectory() as out:
        config = CPOConfig(
            output_dir=out, loss_type="hinge", beta=args.beta, cpo_alpha=0.0, max_length=args.max_len,
            per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
            num_train_epochs=1, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", bf16=args.precision == "bf16",
            fp16=False, use_cpu=args.device == "cpu", gradient_checkpointing=False,
            train_sampling_strategy="group_by_length", length_column_name="length", seed=args.seed,
            data_seed=args.seed, report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0)
        trainer = CPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        tokens = sum(len(x) for x in trainer.train_dataset["chosen_input_ids"]) + \
            sum(len(x) for x in trainer.train_dataset["rejected_input_ids"])
        before = peak_memory_start(args.device)
        start, cpu_start = time.perf_counter(), cpu_seconds()
        result = trainer.train()
        sync(args.device)
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return {"seconds": seconds, "cpu_seconds": cpu, "steps": result.global_step, "mean_loss": result.training_loss,
            "tokens": tokens, "before": before, "peak": peak_memory(args.device), "trunk_positions": None}


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = run_trl(args) if args.worker == "trl" else run_ours(args, args.worker)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------- compare (default)

def compare(args) -> None:
    print(f"one calibration epoch, {args.pairs} real TL;DR pairs, {'SmolLM2-135M (30 layers)' if args.full else 'SmolLM2-135M sliced to the demo 8 layers'}, "
          f"{args.batch_size} pairs x {args.grad_accum} accumulation per step, {args.precision}, max_len {args.max_len}, "
          f"beta {args.beta}, seed {args.seed}, device {args.device}, {args.threads} torch threads")
    print("loss: relu(1 - beta (log P(y_T|x) - log P(y_S|x))), summed log-probs; TRL CPOTrainer(loss_type='hinge', "
          "cpo_alpha=0); ours train.loss=cpo_hinge")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    passed = [a for a in sys.argv[1:]]
    results = {}
    for variant in VARIANTS:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run([sys.executable, __file__, *passed, "--worker", variant], env=env,
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(lines[-1][len("RESULT "):])
        r = results[variant]
        print(f"  {variant}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU), {r['steps']} steps, mean loss {r['mean_loss']:.4f}", flush=True)
    memory = "peak CUDA allocated" if args.device == "cuda" else "peak RSS"
    trl = results["trl"]
    print(f"\n| | seconds | CPU seconds | tokens/s | {memory} MiB | rise during epoch MiB | tokens/s vs TRL "
          f"| by CPU time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    names = {"shared_prefix": "ours, shared_prefix", "concatenated": "ours, concatenated",
             "trl": "TRL CPOTrainer hinge"}
    for variant, r in results.items():
        rate = r["tokens"] / r["seconds"]
        by_cpu = (r["tokens"] / r["cpu_seconds"]) / (trl["tokens"] / trl["cpu_seconds"])
        print(f"| {names[variant]} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {rate:.0f} | {r['peak'] / 2**20:.0f} | "
              f"{(r['peak'] - r['before']) / 2**20:.0f} | {rate / (trl['tokens'] / trl['seconds']):.2f}x | {by_cpu:.2f}x |")
    shared, concat = results["shared_prefix"], results["concatenated"]
    print(f"\ntokens (prompt+chosen and prompt+rejected, non-pad): ours {shared['tokens']}, TRL {trl['tokens']} "
          f"(its BOS per sequence); trunk positions incl. padding: shared_prefix {shared['trunk_positions']}, "
          f"concatenated {concat['trunk_positions']}")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=None, help="pairs in the epoch (default 32; --mfu: 512)")
    p.add_argument("--pairs-file", default="", help="a pairs.parquet to take the pairs from instead of TL;DR")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per micro-batch (default 4; --mfu: 32)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="bf16 autocast or float32")
    p.add_argument("--max-len", type=int, default=512, help="max tokens of prompt + completion")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--full", action="store_true", help="all 30 layers of SmolLM2-135M instead of the demo's 8")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tldr" / "validation.jsonl"))
    p.add_argument("--cache-dir", default=str(REPO / "data" / "cache"))
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--mfu", action="store_true", help="MFU of a random-init ~0.5B student in bf16")
    p.add_argument("--peak-flops", type=float, default=989e12, help="peak FLOP/s (H100 SXM bf16 dense: 989e12)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=4864)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="--mfu: untimed warm-up steps per pair forward")
    p.add_argument("--compile", action="store_true", help="--mfu: torch.compile each layer's norms and MLP")
    args = p.parse_args()
    args.pairs = args.pairs or (512 if args.mfu else 32)
    args.batch_size = args.batch_size or (32 if args.mfu else 4)
    torch.set_num_threads(args.threads)
    if args.mfu:
        mfu(args)
    elif args.worker:
        worker(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
