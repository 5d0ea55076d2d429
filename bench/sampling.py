"""Sampling throughput: naive per-example generation against the project's hf and vllm backends.

    .venv/bin/python bench/sampling.py [--prompts 32] [--max-new-tokens 48] [--batch-size 16] [--threads 1]
                                       [--template teacher|student] [--vllm-compile]

Same prompts (real TL;DR posts from ../shared/data/tldr/validation.jsonl rendered as the
sample_teacher stage renders them: base.yaml's teacher template with its fewshot_k worked examples,
truncated to teacher.prompt.max_tokens; ``--template student``: the bare student template), same
max_new_tokens, greedy decoding, on the real embedded teacher (SmolLM2-135M-Instruct):

(a) naive: ``model.generate`` one prompt at a time, float32;
(b) ours: ``plad_core.sampling.hf.generate``, length-sorted batches of --batch-size, bfloat16, the
    prompts' shared prefix (the worked examples) run once and its key/value cache reused;
(c) ours: ``plad_core.sampling.vllm_backend.generate``, every prompt in one call (vLLM schedules its
    own batches), bfloat16, eager (``sampling.compile: auto`` on a CPU); skipped with a note when
    vllm is not installed;
(d) with ``--vllm-compile``: (c) with the model compiled (``sampling.compile: true``), in a second
    engine built after (c)'s is released.

All three run on ``--threads`` cores: torch's threads for (a) and (b), and vLLM's OpenMP threads
bound to the first ``--threads`` CPUs of this process for (c). One thread by default, so a shared
machine's other load does not turn OpenMP spin-waits into the measurement.

Prints prompts/s and generated tokens/s for each and the ratios (b)/(a), (c)/(a) and (d)/(a). Generated
tokens are counted the same way for all: the decoded text up to EOS, stripped and re-tokenised. No
stop string is used, so each generates up to EOS or max_new_tokens. Each has one untimed warm-up
call; vLLM's start-up (engine build, compilation and KV cache allocation) is timed apart and printed,
not in its throughput, as loading the model is not in the others'.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from plad_core import data as data_lib  # noqa: E402
from plad_core import models  # noqa: E402
from plad_core.config import load_config  # noqa: E402
from plad_core.sampling import hf, vllm_backend  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = "embedded:smollm2-135m-instruct"


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def naive(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, ids["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in out:
            out = out[:out.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(out, skip_special_tokens=True).strip())
    return texts


def ours_hf(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    gens = hf.generate(model, tokenizer, prompts, temperature=0.0, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, desc="bench")
    return [g.text for g in gens]


def ours_vllm(llm, prompts: list[str], max_new_tokens: int) -> list[str]:
    return [g.text for g in vllm_backend.generate(llm, prompts, temperature=0.0, max_new_tokens=max_new_tokens)]


def run_vllm(label: str, model_path: str, compiled: bool, prompts: list[str], max_new_tokens: int,
             threads: int) -> tuple[str, tuple[list[str], float]]:
    """Build an engine (its start-up printed, not timed in), warm it up on one prompt, time all prompts."""
    start = time.perf_counter()
    llm = vllm_backend.load(model_path, "bfloat16", seed=0, compiled=compiled)
    print(f"{label} vLLM start-up {time.perf_counter() - start:.1f} s (not in its throughput)", flush=True)
    torch.set_num_threads(threads)
    ours_vllm(llm, prompts[:1], 4)
    name = (f"{label} vllm backend, all {len(prompts)} prompts in one call, bf16, "
            + ("compiled" if compiled else "eager"))
    result = timed(ours_vllm, llm, prompts, max_new_tokens)
    print(f"{label} done in {result[1]:.1f} s", flush=True)
    del llm
    gc.collect()
    return name, result


def timed(fn, *args) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = fn(*args)
    return texts, time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tldr" / "validation.jsonl"))
    p.add_argument("--cache-dir", default=str(REPO / "data" / "cache"))
    # One thread by default: on a shared 2-core machine two torch threads fighting another process
    # ran the naive loop 9x slower (76 s vs 8.8 s for 4 prompts), which says nothing about batching.
    p.add_argument("--threads", type=int, default=1, help="cores for each system (torch threads; vLLM's bound CPUs)")
    p.add_argument("--skip", default="", help="comma-separated systems to leave out: a, b, c, d")
    p.add_argument("--template", choices=("teacher", "student"), default="teacher",
                   help="teacher: the sample_teacher stage's few-shot prompts; student: the bare template")
    p.add_argument("--vllm-compile", action="store_true",
                   help="add (d): the vllm backend with the model compiled (sampling.compile=true)")
    return p.parse_args()


def load_prompts(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    """The model, its tokenizer and ``args.prompts`` TL;DR prompts built as the sampling stage builds them."""
    cfg = load_config("base")
    loaded = pd.DataFrame(data_lib.load_rows(args.data, "auto", "tldr").rows)
    rows = loaded.head(args.prompts)
    prompt_cfg = cfg[args.template].prompt
    # the teacher's worked examples: the shortest posts of the next 512 rows (the stage takes the labeled split's)
    examples = data_lib.fewshot_examples(loaded.iloc[args.prompts:args.prompts + 512], prompt_cfg.fewshot_k, "post")
    model, tokenizer = models.load_model(MODEL, args.cache_dir, device="cpu")
    prompts, truncated = data_lib.build_prompts(rows, tokenizer, prompt_cfg.template, examples,
                                                prompt_cfg.fewshot_separator, prompt_cfg.max_tokens)
    prompt_tokens = [count_tokens(tokenizer, q) for q in prompts]
    encoded = [tokenizer(q, add_special_tokens=False)["input_ids"] for q in prompts]
    print(f"{len(prompts)} TL;DR prompts ({args.template} template, {len(examples)} worked examples; {truncated} "
          f"truncated to {prompt_cfg.max_tokens} tokens), prompt tokens mean {sum(prompt_tokens) / len(prompts):.0f} "
          f"max {max(prompt_tokens)}, shared prefix {hf.shared_prefix_length(encoded)}; "
          f"max_new_tokens {args.max_new_tokens}; greedy", flush=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    return model, tokenizer, prompts


def run_systems(args: argparse.Namespace, model: Any, tokenizer: Any,
                prompts: list[str]) -> dict[str, tuple[list[str], float]]:
    """Each system's outputs and seconds, side by side in this process, by name."""
    skip = set(filter(None, args.skip.split(",")))
    runs: dict[str, tuple[list[str], float]] = {}
    if "a" not in skip:
        models.cast(model, "float32")
        naive(model, tokenizer, prompts[:1], 4)
        runs["(a) naive per-example, float32"] = timed(naive, model, tokenizer, prompts, args.max_new_tokens)
        print(f"(a) done in {runs['(a) naive per-example, float32'][1]:.1f} s", flush=True)
    if "b" not in skip:
        models.cast(model, "bfloat16")
        ours_hf(model, tokenizer, prompts[:1], 4, 1)
        name = f"(b) hf backend, batch {args.batch_size}, length-sorted, bf16"
        runs[name] = timed(ours_hf, model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
        print(f"(b) done in {runs[name][1]:.1f} s", flush=True)
    vllm_runs = [(label, compiled) for label, compiled in (("(c)", False), ("(d)", True))
                 if label[1] not in skip and (not compiled or args.vllm_compile)]
    if vllm_runs and not vllm_backend.installed():
        print(f"{' and '.join(label for label, _ in vllm_runs)} skipped: vllm is not installed (make setup installs it)")
    elif vllm_runs:
        model_path = models.resolve_model_path(MODEL, args.cache_dir)
        for label, compiled in vllm_runs:
            name, result = run_vllm(label, model_path, compiled, prompts, args.max_new_tokens, args.threads)
            runs[name] = result
    return runs


def report(runs: dict[str, tuple[list[str], float]], tokenizer: Any, n_prompts: int) -> None:
    """Throughput of each system and its ratio to (a), with how many outputs match (a)'s."""
    rates = {}
    for name, (texts, seconds) in runs.items():
        tokens = sum(count_tokens(tokenizer, t) for t in texts)
        rates[name[:3]] = (len(texts) / seconds, tokens / seconds)
        print(f"{name:68s} {seconds:7.1f} s  {len(texts) / seconds:6.2f} prompts/s  "
              f"{tokens / seconds:7.1f} generated tokens/s  ({tokens} tokens)")
    texts = {name[:3]: t for name, (t, _) in runs.items()}
    for other in ("(b)", "(c)", "(d)"):
        if "(a)" in rates and other in rates:
            (pa, ta), (po, to) = rates["(a)"], rates[other]
            same = sum(x == y for x, y in zip(texts["(a)"], texts[other]))
            print(f"ratio {other}/(a): {po / pa:.2f}x prompts/s, {to / ta:.2f}x generated tokens/s; "
                  f"{same}/{n_prompts} outputs identical to (a) (bf16 vs float32 greedy)")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


def main() -> None:
    args = parse_args()
    models.set_threads(args.threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                          vllm_backend.cpu_threads_bind(sorted(os.sched_getaffinity(0))[:args.threads]))
    model, tokenizer, prompts = load_prompts(args)
    report(run_systems(args, model, tokenizer, prompts), tokenizer, len(prompts))


if __name__ == "__main__":
    main()
