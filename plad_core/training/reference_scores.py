"""Per-pair sequence log-probs under frozen models, computed once before training (the score_pairs stage).

DPO and IPO compare the student's log-probs of y_T and y_S with those of a frozen reference policy
(the SFT student), DPKD with the teacher's. Scoring them once here, on exactly the token ids training
uses (``batches.encode_pairs``), keeps a second model out of memory while training. The scores
live in their own ``scores.parquet`` (``SCORES_SCHEMA``), joined to ``pairs.parquet`` on
(id, sample_index), so the pairs file stays as readable as before.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import pandas as pd
import pyarrow as pa
import torch
from transformers import PreTrainedModel

from plad_core.losses import stored_columns
from plad_core.training.batches import Encoded, collate, scored_tokens
from plad_core.training.logprobs import sequence_logprobs

SCORES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),                    # the pair's keys in pairs.parquet
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("chosen_scored_tokens", pa.int32(), nullable=False),   # |y_T| in the student's tokens, EOS included (none if cut)
    pa.field("rejected_scored_tokens", pa.int32(), nullable=False),  # |y_S|, the same
    # summed log-probs log π(y | x) of those tokens; null where the configured train.loss does not need them
    pa.field("reference_chosen_logp", pa.float64()),   # under the SFT student (DPO / IPO reference policy)
    pa.field("reference_rejected_logp", pa.float64()),
    pa.field("teacher_chosen_logp", pa.float64()),     # under the teacher (DPKD)
    pa.field("teacher_rejected_logp", pa.float64()),
])

SCORERS = ("reference", "teacher")


@torch.no_grad()
def sequence_scores(model: PreTrainedModel, sequences: Sequence[Encoded], pad_id: int, batch_size: int,
                    bf16: bool = False) -> list[float]:
    """Summed log-prob of each sequence's scored tokens under the frozen ``model`` (in ``sequences``'
    order), from length-sorted batches of ``batch_size``; bf16 autocast when ``bf16``, as in training."""
    model.eval()
    device = model.get_output_embeddings().weight.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
    scores = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        with autocast:
            total, _ = sequence_logprobs(model, collate([sequences[i] for i in chunk], pad_id))
        for i, value in zip(chunk, total.double().tolist()):
            scores[i] = value
    return scores


def score_pairs(frame: pd.DataFrame, encoded: Sequence[tuple[Encoded, Encoded]], pad_id: int,
                models: dict[str, PreTrainedModel], batch_size: int, bf16: bool = False) -> pd.DataFrame:
    """The ``SCORES_SCHEMA`` frame of the pairs in ``frame`` (encoded as ``encoded``): token counts always,
    and the ``<name>_chosen_logp`` / ``<name>_rejected_logp`` columns of each model in ``models``
    (names: ``reference``, ``teacher``); the columns of models not given are null."""
    unknown = sorted(set(models) - set(SCORERS))
    if unknown:
        raise ValueError(f"score_pairs scores under {SCORERS} only, not {unknown}")
    out = pd.DataFrame({"id": frame["id"].to_numpy(), "sample_index": frame["sample_index"].to_numpy(),
                        "chosen_scored_tokens": [scored_tokens(c) for c, _ in encoded],
                        "rejected_scored_tokens": [scored_tokens(r) for _, r in encoded]})
    sequences = [c for c, _ in encoded] + [r for _, r in encoded]
    for name in SCORERS:
        scores = sequence_scores(models[name], sequences, pad_id, batch_size, bf16) if name in models else None
        chosen, rejected = stored_columns(name)
        out[chosen] = scores[:len(encoded)] if scores else None
        out[rejected] = scores[len(encoded):] if scores else None
    return out
