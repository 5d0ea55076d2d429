"""Token encoding and batches: plain and pair sequences, length-grouped batches, the held-out split.

Sequences are ``prompt + " " + completion + EOS``; only completion tokens (EOS included) are scored.
A completion its model did not end (cut at max_new_tokens, ``finish_reason`` "length", kept by
``pairs.truncated=keep``) gets no EOS: its tokens are its text's only.
pandas and omegaconf appear only in annotations: the token-level helpers here serve torch-only callers
(``bench/train.py --mfu``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from plad_core.losses import REFERENCE_COLUMNS, TEACHER_COLUMNS
from plad_core.rouge import rouge_l_scores

if TYPE_CHECKING:
    import pandas as pd
    from omegaconf import DictConfig
    from transformers import PreTrainedTokenizerBase


@dataclass
class Encoded:
    ids: list[int]
    n_prompt: int  # the first n_prompt tokens are context, the rest is scored


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str | None, max_len: int,
           eos: bool = True) -> Encoded:
    """Token ids of prompt and completion (and EOS when ``eos``); the prompt is cut from the left when
    the pair is too long, and at least one prompt token is kept."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if completion is None:
        return Encoded(prompt_ids[:max_len], 0)
    completion_ids = tokenizer(" " + completion.strip(), add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids[:max_len - 2] + [tokenizer.eos_token_id] if eos else completion_ids[:max_len - 1]
    prompt_ids = prompt_ids[-(max_len - len(completion_ids)):]
    return Encoded(prompt_ids + completion_ids, len(prompt_ids))


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of ``rows`` right-padded with ``pad_id`` to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with ``score_mask`` marking the scored (completion) tokens."""
    input_ids, attention_mask = _right_pad([e.ids for e in items], pad_id)
    score_mask = torch.zeros_like(attention_mask)
    for row, e in enumerate(items):
        score_mask[row, max(e.n_prompt, 1):len(e.ids)] = 1  # plain text (n_prompt=0): all but the first token
    return {"input_ids": input_ids, "attention_mask": attention_mask, "score_mask": score_mask}


def collate_pair_parts(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]],
                       rejected: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """The prompt (B, P) and completion (2B, C: chosen rows, then rejected rows) tensors, right-padded."""
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"pairs {empty} of this batch have an empty prompt: the shared-prefix forward predicts "
                         "each completion's first token from the prompt's last one")
    prompt_ids, prompt_mask = _right_pad(prompts, pad_id)
    completion_ids, completion_mask = _right_pad([*chosen, *rejected], pad_id)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "completion_ids": completion_ids, "completion_mask": completion_mask}


def length_grouped_batches(items: Sequence[Any], length: Callable[[Any], int], batch_size: int,
                           seed: int) -> list[list[Any]]:
    """Batches of similar length (little padding), in a seeded random order."""
    ordered = sorted(items, key=length)
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch``'s tensors on ``device`` (a dict batch; anything else as it is)."""
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def padding(batch: Any) -> tuple[float, float]:
    """(real tokens, padded positions) of a collated batch; (0, 0) when it has no attention mask."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None:
        return 0.0, 0.0
    tokens = float(mask.sum())
    return tokens, float(mask.numel()) - tokens


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str,
                max_len: int, chosen_eos: bool = True, rejected_eos: bool = True) -> tuple[Encoded, Encoded]:
    """``encode`` of both sides with one shared prompt: where the prompt must be cut, both keep the
    prompt tokens that fit beside the longer completion (as TRL does), so the pair shares its prompt
    tokens exactly; otherwise each side is exactly ``encode``'s."""
    c = encode(tokenizer, prompt, chosen, max_len, chosen_eos)
    r = encode(tokenizer, prompt, rejected, max_len, rejected_eos)
    n = min(c.n_prompt, r.n_prompt)  # both prompts are suffixes of the same prompt tokens
    return Encoded(c.ids[c.n_prompt - n:], n), Encoded(r.ids[r.n_prompt - n:], n)


def encode_pairs(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase,
                 max_seq_len: int) -> list[tuple[Encoded, Encoded]]:
    """(prompt + chosen, prompt + rejected) token ids of each pair, as training sees them: a side whose
    finish reason is "length" (cut at max_new_tokens) without EOS."""
    ended = {side: ~(frame[f"{side}_finish_reason"] == "length") if f"{side}_finish_reason" in frame
             else [True] * len(frame) for side in ("chosen", "rejected")}
    return [encode_pair(tokenizer, p, c, r, max_seq_len, bool(ce), bool(re))
            for p, c, r, ce, re in zip(frame["prompt"], frame["chosen"], frame["rejected"],
                                       ended["chosen"], ended["rejected"])]


def scored_tokens(encoded: Encoded) -> int:
    """How many tokens of ``encoded`` are scored (``collate``'s score_mask): the completion and its EOS, if any."""
    return len(encoded.ids) - max(encoded.n_prompt, 1)


STORED_COLUMNS = REFERENCE_COLUMNS + TEACHER_COLUMNS


def pair_batches(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, train_cfg: DictConfig) -> list[dict[str, Any]]:
    """Length-grouped pair batches: the chosen rows first, then the rejected ones, in one collated
    batch, the same tokens split into prompt and completions for the shared-prefix forward
    (``collate_pair_parts``), each pair's quality scores (``chosen_score``,
    ``rejected_score``; see ``rouge_l_scores``) and, where ``frame`` holds them (joined from the score_pairs stage), the stored reference and teacher
    log-probs of ``STORED_COLUMNS``. Their stored token counts must match this encoding."""
    o = train_cfg.optim
    chosen_score, rejected_score = rouge_l_scores(list(frame["chosen"]), list(frame["rejected"]),
                                                  list(frame["reference"]))
    encoded = encode_pairs(frame, tokenizer, o.max_seq_len)
    if "chosen_scored_tokens" in frame:
        _check_scored_tokens(frame, encoded)
    stored = {c: torch.tensor(frame[c].to_numpy(dtype="float64"), dtype=torch.float64)
              for c in STORED_COLUMNS if c in frame and frame[c].notna().all()}
    items = [(c, r, i) for i, (c, r) in enumerate(encoded)]
    grouped = length_grouped_batches(items, lambda it: max(len(it[0].ids), len(it[1].ids)), o.batch_size, o.seed)
    batches = []
    for group in grouped:
        rows = torch.tensor([i for _, _, i in group])
        batch = collate([c for c, _, _ in group] + [r for _, r, _ in group], tokenizer.pad_token_id)
        parts = collate_pair_parts([c.ids[:c.n_prompt] for c, _, _ in group],
                                   [c.ids[c.n_prompt:] for c, _, _ in group],
                                   [r.ids[r.n_prompt:] for _, r, _ in group], tokenizer.pad_token_id)
        batches.append({**batch, **parts, "chosen_score": chosen_score[rows], "rejected_score": rejected_score[rows],
                        **{c: values[rows] for c, values in stored.items()}})
    return batches


def _check_scored_tokens(frame: pd.DataFrame, encoded: list[tuple[Encoded, Encoded]]) -> None:
    for (pair_id, stored_c, stored_r), (c, r) in zip(
            zip(frame["id"], frame["chosen_scored_tokens"], frame["rejected_scored_tokens"]), encoded):
        if (stored_c, stored_r) != (scored_tokens(c), scored_tokens(r)):
            raise ValueError(f"pair id={pair_id}: the score_pairs columns chosen_scored_tokens/rejected_scored_tokens "
                             f"= {stored_c}/{stored_r}, but this tokenizer and train.optim.max_seq_len score "
                             f"{scored_tokens(c)}/{scored_tokens(r)} tokens: the scores belong to another encoding")


def split_held_out(frame: pd.DataFrame, fraction: float, max_pairs: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training pairs, held-out pairs): min(``max_pairs``, floor(``fraction`` x pairs)) pairs held out,
    at least one left to train on, taken whole prompt by prompt in the order of sha256(seed:id), so
    that no prompt is on both sides and a prompt keeps its side when new rows arrive."""
    wanted = min(max_pairs, int(fraction * len(frame)), len(frame) - 1)
    if wanted <= 0:
        return frame, frame.iloc[:0]
    ids = sorted(frame["id"].unique(), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    counts = frame["id"].value_counts()
    held, n_held = set(), 0
    for pair_id in ids:
        if n_held >= wanted or n_held + counts[pair_id] >= len(frame):
            break
        held.add(pair_id)
        n_held += counts[pair_id]
    is_held = frame["id"].isin(held)
    return frame[~is_held].reset_index(drop=True), frame[is_held].reset_index(drop=True)
