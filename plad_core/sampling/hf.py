"""transformers backend: batched generation with left padding, KV cache and length-sorted batches."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import AttentionInterface, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from plad_core.sampling.generation import Generation, cut_at_stop


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except for one-token queries (every decoding step): there the
    attention is two small matmuls over the cache, computed as transformers' eager attention does
    (bf16 matmuls, softmax in float32), with each group of query heads on its key/value head instead
    of copies of the key/value heads. On the 2-core CPU, torch's flash kernel took 16 ms per layer for
    16 one-token queries over 450 cached positions: two thirds of a 0.73 s SmolLM2-135M decoding step.
    """
    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    batch, heads, _, dim = query.shape
    grouped = query.view(batch, key.shape[1], heads // key.shape[1], dim)   # [B, KV heads, group, D]
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:  # [B, 1, 1, L]: True (or 0.0) where the position may be attended to
        scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                  else scores + attention_mask)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value).reshape(batch, 1, heads, dim), None


DECODE_ATTENTION = "plad_sdpa_decode"
AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


# Below this many shared tokens a prompt-prefix cache saves less than its bookkeeping costs.
MIN_SHARED_PREFIX = 32


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens at the start of every sequence in ``encoded``, leaving each at least one token of its own."""
    shortest = min(len(e) for e in encoded)
    first = encoded[0]
    for i in range(shortest - 1):
        if any(e[i] != first[i] for e in encoded):
            return i
    return max(shortest - 1, 0)


def _prefix_cache(model: PreTrainedModel, prefix: Sequence[int]) -> Any:
    """The key/value cache of ``prefix`` (one sequence), computed once and copied for each batch."""
    ids = torch.tensor([list(prefix)], device=model.device)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values


def _prefill(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> Any:
    """``cache`` (None: empty) extended by every token of ``ids`` but the last of each row, at the
    positions ``generate`` gives them (pads masked out and not counted)."""
    done = cache.get_seq_length() if cache is not None else 0
    if ids.shape[1] - 1 <= done:
        return cache
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids[:, done:-1], attention_mask=mask[:, :-1], position_ids=positions[:, done:-1],
                 past_key_values=cache, use_cache=True).past_key_values


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, n: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 48, batch_size: int = 16,
             seed: int = 0, stop: Sequence[str] = (), desc: str = "generate") -> list[Generation]:
    """n completions per prompt; greedy when ``temperature == 0``.

    Prompts are sorted by token length so each batch pads little; the generation stops at EOS or at
    any of ``stop`` (the stop string itself is not part of the text). Results come back in input order.

    No prompt token runs through the model twice. When all prompts start with
    the same ``MIN_SHARED_PREFIX`` or more tokens (a few-shot teacher prompt's worked examples), that
    prefix runs once and every batch starts from a copy of its key/value cache: each row is prefix +
    left-padded rest, the pads masked out and the positions counted past them, so the model computes
    what it would on the whole prompt. With ``n`` > 1 each prompt is run once and its cache copied
    to its n sample rows (``generate``'s ``num_return_sequences`` would run it n times). On a CPU, a
    model with sdpa attention decodes with ``decode_attention``.
    """
    attention = model.config._attn_implementation
    if attention == "sdpa" and model.device.type == "cpu":
        model.set_attn_implementation(DECODE_ATTENTION)
    try:
        return _generate(model, tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, stop=stop, desc=desc)
    finally:
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)


def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, n: int,
              temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int,
              stop: Sequence[str], desc: str) -> list[Generation]:
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared = shared_prefix_length(encoded) if encoded else 0
    shared = shared if shared >= MIN_SHARED_PREFIX else 0
    prefix_cache = _prefix_cache(model, encoded[0][:shared]) if shared else None
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    results: list[Generation] = []
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        batch_idx = order[start:start + batch_size]
        padded = tokenizer.pad({"input_ids": [encoded[i][shared:] for i in batch_idx]}, return_tensors="pt")
        prefix = torch.tensor(encoded[0][:shared], dtype=torch.long).expand(len(batch_idx), shared)
        ids = torch.cat([prefix, padded["input_ids"]], dim=1).to(model.device)
        mask = torch.cat([torch.ones_like(prefix), padded["attention_mask"]], dim=1).to(model.device)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch_idx))
        if n > 1:
            cache = _prefill(model, ids, mask, cache)
            ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
            if cache is not None:  # rows in generate's own order: each prompt's n samples side by side
                cache.batch_repeat_interleave(n)
        extra: dict[str, Any] = {"past_key_values": cache} if cache is not None else {"num_return_sequences": n}
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            stop_strings=list(stop) or None, tokenizer=tokenizer if stop else None, **extra, **sampling)
        for row, tokens in enumerate(out[:, ids.shape[1]:]):
            prompt_index = batch_idx[row // n]
            new_ids = tokens.tolist()
            hit_eos = tokenizer.eos_token_id in new_ids
            if hit_eos:
                new_ids = new_ids[:new_ids.index(tokenizer.eos_token_id)]
            while new_ids and new_ids[-1] == tokenizer.pad_token_id:
                new_ids.pop()
            text, hit_stop = cut_at_stop(tokenizer.decode(new_ids, skip_special_tokens=True), stop)
            text = text.strip()
            results.append(Generation(
                prompt_index=prompt_index, sample_index=row % n, text=text,
                prompt_tokens=len(encoded[prompt_index]),
                output_tokens=len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                finish_reason="stop" if hit_eos or hit_stop else "length"))
    results.sort(key=lambda g: (g.prompt_index, g.sample_index))
    return results
