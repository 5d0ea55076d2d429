"""Sequence log-probs of scored tokens: of a collated batch (``sequence_logprobs``), and of a pair batch's
chosen and rejected completions with ONE prompt forward (``shared_prefix_logprobs``).

Both completions of a pair follow the same prompt. Concatenating prompt+chosen and prompt+rejected
(TRL's ``concatenated_forward``; ``sequence_logprobs`` on a collated pair batch) runs every
prompt twice: with a ~340-token TL;DR prompt and ~40-token summaries that is ~760 tokens of work per
pair against ~420. Here the B prompts run once and their per-layer keys and values (a transformers
``DynamicCache``) are selected twice along the batch, rows (0..B-1, 0..B-1), so the chosen and then
the rejected continuations (2B rows) attend to them in a second forward. Nothing is detached: the
gradients of both continuations flow through the cache into the prompt forward.

Layout of the batch (``batches.collate_pair_parts``), all right-padded:

- ``prompt_ids``, ``prompt_mask``: (B, P), the prompt tokens of each pair;
- ``completion_ids``, ``completion_mask``: (2B, C), the chosen completions, then the rejected ones
  (each ``" " + text + EOS``, as ``batches.encode`` makes them).

In the second forward row r's keys are laid out [prompt slots 0..P-1 | continuation slots P..P+C-1]
and the 2-D attention mask ``[prompt_mask | completion_mask]`` hides the prompt's padding (a hole
between its last token and its continuation). The cache, not ``position_ids``, decides causality
(transformers' ``create_causal_mask`` uses the cache length as query offset), so the rotary
positions can be each row's true ones, ``prompt_len + 0..C-1``: the same as in the concatenated
sequence. The first completion token is predicted from the prompt's last hidden state; the LM head
runs only on the positions that predict a completion token.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from plad_core.config import ConfigError


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """bf16 logits in float32; float32 and float64 unchanged."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _row_sums(values: torch.Tensor, predicts: torch.Tensor) -> torch.Tensor:
    """(B,) sums of the (N,) per-position ``values`` over each row's positions, ``predicts`` (B, T) marking
    the N positions in row-major order."""
    rows = torch.nonzero(predicts, as_tuple=True)[0]
    return torch.zeros(predicts.shape[0], dtype=values.dtype, device=values.device).index_add(0, rows, values)


def scored_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 (float64 for a float64 model) logits (N, V) at the N positions that predict a scored token, row by row, with the tokens
    they predict (N,) and the mask of those positions (B, T-1).

    The LM head runs only on these positions: with ~300-token prompts and ~40-token summaries that
    skips most of the vocabulary projection.
    """
    device = model.get_output_embeddings().weight.device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    predicts = batch["score_mask"][:, 1:].bool().to(device)
    logits = _upcast(model.get_output_embeddings()(hidden[:, :-1][predicts]))
    return logits, input_ids[:, 1:][predicts], predicts


def token_logprob_sums(logits: torch.Tensor, targets: torch.Tensor, predicts: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probs of ``scored_logits``' targets, row by row."""
    return _row_sums(-F.cross_entropy(logits, targets, reduction="none"), predicts)


def sequence_logprobs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the scored tokens of each sequence, and their count: (B,), (B,)."""
    logits, targets, predicts = scored_logits(model, batch)
    return token_logprob_sums(logits, targets, predicts), predicts.sum(-1)


def shared_prefix_logprobs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each completion and its token count, (2B,) and (2B,): chosen rows first,
    then rejected, as ``sequence_logprobs`` returns them for the concatenated batch."""
    if model.is_gradient_checkpointing and model.training:
        raise ConfigError("train.pair_forward=shared_prefix cannot run with gradient checkpointing: transformers drops "
                         "the key/value cache inside checkpointed layers. Use train.pair_forward=concatenated.")
    head = model.get_output_embeddings()
    device = head.weight.device
    prompt_ids, prompt_mask = batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)
    completion_ids, completion_mask = batch["completion_ids"].to(device), batch["completion_mask"].to(device)
    n_pairs = prompt_ids.shape[0]
    prompt_len = prompt_mask.sum(-1)

    cache = DynamicCache(config=model.config)
    prompt_hidden = model.base_model(input_ids=prompt_ids, attention_mask=prompt_mask, past_key_values=cache,
                                     use_cache=True).last_hidden_state
    rows = torch.arange(2 * n_pairs, device=device) % n_pairs  # chosen rows, then rejected rows, same prompts
    cache.batch_select_indices(rows)
    positions = prompt_len[rows, None] + torch.arange(completion_ids.shape[1], device=device)
    hidden = model.base_model(input_ids=completion_ids, attention_mask=torch.cat([prompt_mask[rows], completion_mask], 1),
                              position_ids=positions, past_key_values=cache, use_cache=True).last_hidden_state

    scored = completion_mask.bool()
    first = prompt_hidden[torch.arange(n_pairs, device=device), prompt_len - 1][rows]  # predicts completion token 0
    predictors = torch.cat([first[:, None], hidden[:, :-1]], dim=1)  # position t predicts completion token t
    logits = _upcast(head(predictors[scored]))
    return token_logprob_sums(logits, completion_ids[scored], scored), scored.sum(-1)


# train.pair_forward: how a pair batch's summed log-probs are computed (both give the same values).
PAIR_FORWARDS: dict[str, Callable[[PreTrainedModel, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]] = {
    "shared_prefix": shared_prefix_logprobs,  # prompt once, its KV cache reused by both completions
    "concatenated": sequence_logprobs,        # prompt + chosen and prompt + rejected, as TRL does
}


def check_pair_forward(pair_forward: str, gradient_checkpointing: bool = False) -> None:
    """A clear error for an unknown ``train.pair_forward``, or shared_prefix with gradient checkpointing
    (transformers drops the key/value cache inside checkpointed layers)."""
    if pair_forward not in PAIR_FORWARDS:
        raise ConfigError(f"train.pair_forward='{pair_forward}' is not known; choose one of {', '.join(PAIR_FORWARDS)}")
    if pair_forward == "shared_prefix" and gradient_checkpointing:
        raise ConfigError("train.pair_forward=shared_prefix cannot run with train.optim.gradient_checkpointing=true: "
                         "checkpointed layers drop the prompt's key/value cache; set train.pair_forward=concatenated")


def chosen_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The chosen half of a pair batch's token tensors, cut to its own longest row."""
    half = batch["input_ids"].shape[0] // 2
    width = int(batch["attention_mask"][:half].sum(-1).max())
    return {k: batch[k][:half, :width] for k in ("input_ids", "attention_mask", "score_mask")}
