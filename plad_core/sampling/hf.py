"""transformers backend: batched generation with left padding, KV cache and length-sorted batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Generation:
    prompt_index: int
    sample_index: int
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.index(s) for s in stop if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, n: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 48, batch_size: int = 16,
             seed: int = 0, stop: Sequence[str] = (), desc: str = "generate") -> list[Generation]:
    """n completions per prompt; greedy when ``temperature == 0``.

    Prompts are sorted by token length so each batch pads little; the generation stops at EOS or at
    any of ``stop`` (the stop string itself is not part of the text). Results come back in input order.
    """
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    results: list[Generation] = []
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch_idx = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in batch_idx]}, return_tensors="pt").to(model.device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
            stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None, **sampling)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        for row, tokens in enumerate(new_tokens):
            prompt_index = batch_idx[row // n]
            ids = tokens.tolist()
            hit_eos = tokenizer.eos_token_id in ids
            if hit_eos:
                ids = ids[:ids.index(tokenizer.eos_token_id)]
            while ids and ids[-1] == tokenizer.pad_token_id:
                ids.pop()
            text, hit_stop = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
            text = text.strip()
            results.append(Generation(
                prompt_index=prompt_index, sample_index=row % n, text=text,
                prompt_tokens=len(encoded[prompt_index]),
                output_tokens=len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                finish_reason="stop" if hit_eos or hit_stop else "length"))
    results.sort(key=lambda g: (g.prompt_index, g.sample_index))
    return results
