"""Training the student on preference pairs: the pair batches and the run over them.

``run_calibrate`` (and a ``torchrun`` worker) call :func:`train_on_pairs`; it knows nothing of
Prefect or the artifact store: a pairs frame and a student in, a training log out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from plad_core import pair_forward, parallel, train
from plad_core.losses import rouge_l_scores


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str,
                max_len: int) -> tuple[train.Encoded, train.Encoded]:
    """``train.encode`` of both sides with one shared prompt: where the prompt must be cut, both keep the
    prompt tokens that fit beside the longer completion (as TRL does), so the pair shares its prompt
    tokens exactly; otherwise each side is exactly ``train.encode``'s."""
    c, r = train.encode(tokenizer, prompt, chosen, max_len), train.encode(tokenizer, prompt, rejected, max_len)
    n = min(c.n_prompt, r.n_prompt)  # both prompts are suffixes of the same prompt tokens
    return train.Encoded(c.ids[c.n_prompt - n:], n), train.Encoded(r.ids[r.n_prompt - n:], n)


def encode_pairs(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase,
                 max_seq_len: int) -> list[tuple[train.Encoded, train.Encoded]]:
    """(prompt + chosen, prompt + rejected) token ids of each pair, as training sees them."""
    return [encode_pair(tokenizer, p, c, r, max_seq_len)
            for p, c, r in zip(frame["prompt"], frame["chosen"], frame["rejected"])]


def scored_tokens(encoded: train.Encoded) -> int:
    """How many tokens of ``encoded`` are scored (``train.collate``'s score_mask): the completion and its EOS."""
    return len(encoded.ids) - max(encoded.n_prompt, 1)


STORED_COLUMNS = train.REFERENCE_COLUMNS + train.TEACHER_COLUMNS


def pair_batches(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, train_cfg: DictConfig) -> list[dict[str, Any]]:
    """Length-grouped pair batches: the chosen rows first, then the rejected ones, in one collated
    batch, the same tokens split into prompt and completions for the shared-prefix forward
    (``pair_forward.collate_pair_parts``), each pair's quality scores (``chosen_score``,
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
    grouped = train.length_grouped_batches(items, lambda it: max(len(it[0].ids), len(it[1].ids)), o.batch_size, o.seed)
    batches = []
    for group in grouped:
        rows = torch.tensor([i for _, _, i in group])
        batch = train.collate([c for c, _, _ in group] + [r for _, r, _ in group], tokenizer.pad_token_id)
        parts = pair_forward.collate_pair_parts([c.ids[:c.n_prompt] for c, _, _ in group],
                                                [c.ids[c.n_prompt:] for c, _, _ in group],
                                                [r.ids[r.n_prompt:] for _, r, _ in group], tokenizer.pad_token_id)
        batches.append({**batch, **parts, "chosen_score": chosen_score[rows], "rejected_score": rejected_score[rows],
                        **{c: values[rows] for c, values in stored.items()}})
    return batches


def _check_scored_tokens(frame: pd.DataFrame, encoded: list[tuple[train.Encoded, train.Encoded]]) -> None:
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


def train_on_pairs(student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame,
                   train_cfg: DictConfig, teacher: PreTrainedModel | None = None,
                   checkpoint_dir: Path | None = None) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Calibrate ``student`` in place on the pairs in ``frame`` with ``train.loss``; returns the
    per-step log and summary stats. dpo, ipo and dpkd read their stored columns from ``frame`` (the pairs
    joined with the score_pairs stage); token_kd needs the frozen ``teacher``.

    ``train.eval_fraction`` of the pairs (at most ``train.eval_max_pairs``) are held out and evaluated
    every ``train.eval_every`` steps; the student ends as the best (``train.best_metric``) or the last
    step (``train.keep``). Checkpoints go to ``checkpoint_dir`` (resumed from when present). Under
    torchrun each rank trains on its share of every batch (``parallel.shard_pairs``)."""
    o = train_cfg.optim
    loss = train_cfg.loss
    train.check_loss(loss, train_cfg.kd_divergence)
    needed = [c for scorer in train.STORED_SCORERS.get(loss, ()) for c in train.stored_columns(scorer)]
    missing = [c for c in needed if c not in frame or frame[c].isna().any()]
    if missing:
        raise ValueError(f"train.loss={loss} reads {missing} from the score_pairs stage, but the pairs lack them")
    if loss == "token_kd" and teacher is None:
        raise ValueError("train.loss=token_kd needs the teacher model in memory: pass teacher=")
    frame, held_out = split_held_out(frame, train_cfg.eval_fraction, train_cfg.eval_max_pairs, o.seed)
    batches = pair_batches(frame, tokenizer, train_cfg)
    evaluation = train.Evaluation(pair_batches(held_out, tokenizer, train_cfg), train_cfg.eval_every,
                                  train_cfg.best_metric, train_cfg.best_mode, train_cfg.keep) if len(held_out) else None
    step = (train.token_kd_step(student, teacher, train_cfg.kd_divergence, train_cfg.nll_weight)
            if loss == "token_kd" else
            train.calibration_step(student, loss, train_cfg.beta, train_cfg.gamma, train_cfg.nll_weight,
                                   train_cfg.pair_forward))
    history = train.train_loop(student, batches, step, **train.optim_kwargs(o), checkpoint_dir=checkpoint_dir,
                               evaluation=evaluation, shard=parallel.shard_pairs, strategy=train_cfg.launch.strategy,
                               desc=f"calibrate ({train_cfg.loss})")
    score_gap = torch.cat([b["chosen_score"] - b["rejected_score"] for b in batches])
    stats = {"pairs": len(frame), "steps": len(history), "final_loss": history[-1]["loss"],
             "first_pair_accuracy": history[0]["pair_accuracy"],
             "last_pair_accuracy": history[-1]["pair_accuracy"], "mean_score_gap": float(score_gap.mean())}
    return history, {**stats, **_held_out_stats(history, evaluation, len(held_out))}


def _held_out_stats(history: list[dict[str, float]], evaluation: train.Evaluation | None,
                    pairs: int) -> dict[str, Any]:
    """Held-out pairs, the best evaluated step and which step the model is (``train.keep``)."""
    if evaluation is None:
        return {"held_out_pairs": 0, "kept_step": len(history)}
    best, metric = evaluation.best_row(history), evaluation.metric
    return {"held_out_pairs": pairs, "best_step": best["step"], f"best_{metric}": best[metric],
            f"last_{metric}": history[-1][metric], "kept_step": best["step"] if evaluation.keep == "best" else len(history)}
