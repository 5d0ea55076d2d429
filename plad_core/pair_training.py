"""Training the student on preference pairs: the pair batches and the run over them.

``run_calibrate`` (and a ``torchrun`` worker) call :func:`train_on_pairs`; it knows nothing of
Prefect or the artifact store: a pairs frame and a student in, a training log out.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from plad_core import pair_forward, train
from plad_core.losses import rouge_l_scores


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str,
                max_len: int) -> tuple[train.Encoded, train.Encoded]:
    """``train.encode`` of both sides with one shared prompt: where the prompt must be cut, both keep the
    prompt tokens that fit beside the longer completion (as TRL does), so the pair shares its prompt
    tokens exactly; otherwise each side is exactly ``train.encode``'s."""
    c, r = train.encode(tokenizer, prompt, chosen, max_len), train.encode(tokenizer, prompt, rejected, max_len)
    n = min(c.n_prompt, r.n_prompt)  # both prompts are suffixes of the same prompt tokens
    return train.Encoded(c.ids[c.n_prompt - n:], n), train.Encoded(r.ids[r.n_prompt - n:], n)


def pair_batches(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, train_cfg: DictConfig) -> list[dict[str, Any]]:
    """Length-grouped pair batches: the chosen rows first, then the rejected ones, in one collated
    batch, the same tokens split into prompt and completions for the shared-prefix forward
    (``pair_forward.collate_pair_parts``), and each pair's quality scores (``chosen_score``,
    ``rejected_score``; see ``rouge_l_scores``)."""
    o = train_cfg.optim
    chosen_score, rejected_score = rouge_l_scores(list(frame["chosen"]), list(frame["rejected"]),
                                                  list(frame["reference"]))
    items = [(*encode_pair(tokenizer, p, c, r, o.max_seq_len), i)
             for i, (p, c, r) in enumerate(zip(frame["prompt"], frame["chosen"], frame["rejected"]))]
    grouped = train.length_grouped_batches(items, lambda it: max(len(it[0].ids), len(it[1].ids)), o.batch_size, o.seed)
    batches = []
    for group in grouped:
        rows = torch.tensor([i for _, _, i in group])
        batch = train.collate([c for c, _, _ in group] + [r for _, r, _ in group], tokenizer.pad_token_id)
        parts = pair_forward.collate_pair_parts([c.ids[:c.n_prompt] for c, _, _ in group],
                                                [c.ids[c.n_prompt:] for c, _, _ in group],
                                                [r.ids[r.n_prompt:] for _, r, _ in group], tokenizer.pad_token_id)
        batches.append({**batch, **parts, "chosen_score": chosen_score[rows], "rejected_score": rejected_score[rows]})
    return batches


def train_on_pairs(student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame,
                   train_cfg: DictConfig) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Calibrate ``student`` in place on the pairs in ``frame`` with ``train.loss``; returns the
    per-step log and summary stats."""
    o = train_cfg.optim
    batches = pair_batches(frame, tokenizer, train_cfg)
    step = train.calibration_step(student, train_cfg.loss, train_cfg.beta, train_cfg.gamma, train_cfg.nll_weight,
                                  train_cfg.pair_forward)
    history = train.train_loop(student, batches, step, **train.optim_kwargs(o), desc=f"calibrate ({train_cfg.loss})")
    score_gap = torch.cat([b["chosen_score"] - b["rejected_score"] for b in batches])
    return history, {"pairs": len(frame), "steps": len(history), "final_loss": history[-1]["loss"],
                     "first_pair_accuracy": history[0]["pair_accuracy"],
                     "last_pair_accuracy": history[-1]["pair_accuracy"], "mean_score_gap": float(score_gap.mean())}
