"""The perplexity of a model on held-out texts: the healing and SFT stages' check of a student.

A module of its own, so the student stages' code fingerprint holds this and the training helpers it
calls, not the whole evaluation (judge, report metrics).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from plad_core.training.batches import collate, encode
from plad_core.training.logprobs import sequence_logprobs


@torch.no_grad()
def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int,
               batch_size: int = 8) -> float:
    """exp of the token-mean NLL over ``texts`` (each scored from its second token)."""
    model.eval()
    encoded = [encode(tokenizer, t, None, max_len) for t in texts]
    nll, count = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        total, n = sequence_logprobs(model, collate(encoded[i:i + batch_size], tokenizer.pad_token_id))
        nll -= float(total.sum())
        count += int(n.sum())
    return math.exp(nll / max(count, 1))
