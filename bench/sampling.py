"""Sampling throughput: naive per-example generation against the project's hf backend.

    .venv/bin/python bench/sampling.py [--prompts 32] [--max-new-tokens 48] [--batch-size 16]

Same prompts (real TL;DR posts from ../shared/data/tldr/validation.jsonl rendered with the student
template, truncated to student.prompt.max_tokens), same max_new_tokens, greedy decoding, on the
real embedded teacher (SmolLM2-135M-Instruct):

(a) naive: ``model.generate`` one prompt at a time, float32;
(b) ours: ``plad_core.sampling.hf.generate``, length-sorted batches of --batch-size, bfloat16.

Both run with ``--threads`` torch threads (1 by default, so a shared machine's other load does not
turn OpenMP spin-waits into the measurement).

Prints prompts/s and generated tokens/s for each and the ratio (b)/(a). Generated tokens are
counted the same way for both: the decoded text up to EOS, stripped and re-tokenised. No stop
string is used, so both generate up to EOS or max_new_tokens. One untimed warm-up call each.

vLLM is not installed here (the dev machines are 2-core CPUs), so there is no vLLM column: on a GPU,
serve the teacher with ``vllm serve`` and sample it with ``teacher.sampling.backend=openai``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from plad_core import data as data_lib  # noqa: E402
from plad_core import models  # noqa: E402
from plad_core.config import load_config  # noqa: E402
from plad_core.sampling import hf  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


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


def ours(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    gens = hf.generate(model, tokenizer, prompts, temperature=0.0, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, desc="bench")
    return [g.text for g in gens]


def timed(fn, *args) -> tuple[list[str], float]:
    start = time.perf_counter()
    texts = fn(*args)
    return texts, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tldr" / "validation.jsonl"))
    p.add_argument("--cache-dir", default=str(REPO / "data" / "cache"))
    # One thread by default: on a shared 2-core machine two torch threads fighting another process
    # ran the naive loop 9x slower (76 s vs 8.8 s for 4 prompts), which says nothing about batching.
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, one per core)")
    args = p.parse_args()
    models.set_threads(args.threads)

    cfg = load_config("base")
    rows = pd.DataFrame(data_lib.load_rows(args.data, "auto", "tldr").rows[:args.prompts])
    model, tokenizer = models.load_model("embedded:smollm2-135m-instruct", args.cache_dir)
    prompts, truncated = data_lib.build_prompts(rows, tokenizer, cfg.student.prompt.template, [], "",
                                                cfg.student.prompt.max_tokens)
    prompt_tokens = [count_tokens(tokenizer, q) for q in prompts]
    print(f"{len(prompts)} TL;DR prompts (student template; {truncated} truncated to "
          f"{cfg.student.prompt.max_tokens} tokens), prompt tokens mean {sum(prompt_tokens) / len(prompts):.0f} "
          f"max {max(prompt_tokens)}; max_new_tokens {args.max_new_tokens}; greedy", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")

    models.cast(model, "float32")
    naive(model, tokenizer, prompts[:1], 4)
    texts_a, seconds_a = timed(naive, model, tokenizer, prompts, args.max_new_tokens)
    print(f"(a) done in {seconds_a:.1f} s", flush=True)
    models.cast(model, "bfloat16")
    ours(model, tokenizer, prompts[:1], 4, 1)
    texts_b, seconds_b = timed(ours, model, tokenizer, prompts, args.max_new_tokens, args.batch_size)
    print(f"(b) done in {seconds_b:.1f} s", flush=True)

    results = {}
    for name, texts, seconds in (("(a) naive per-example, float32", texts_a, seconds_a),
                                 (f"(b) hf backend, batch {args.batch_size}, length-sorted, bf16", texts_b, seconds_b)):
        tokens = sum(count_tokens(tokenizer, t) for t in texts)
        results[name] = (len(texts) / seconds, tokens / seconds)
        print(f"{name:55s} {seconds:7.1f} s  {len(texts) / seconds:6.2f} prompts/s  "
              f"{tokens / seconds:7.1f} generated tokens/s  ({tokens} tokens)")
    (pa, ta), (pb, tb) = results.values()
    same = sum(a == b for a, b in zip(texts_a, texts_b))
    print(f"ratio (b)/(a): {pb / pa:.2f}x prompts/s, {tb / ta:.2f}x generated tokens/s; "
          f"{same}/{len(prompts)} outputs identical (bf16 vs float32 greedy)")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
