"""Sequence log-probs of a pair batch's chosen and rejected completions with ONE prompt forward.

Both completions of a pair follow the same prompt. Concatenating prompt+chosen and prompt+rejected
(TRL's ``concatenated_forward``; ``train.sequence_logprobs`` on a collated pair batch) runs every
prompt twice: with a ~340-token TL;DR prompt and ~40-token summaries that is ~760 tokens of work per
pair against ~420. Here the B prompts run once and their per-layer keys and values (a transformers
``DynamicCache``) are selected twice along the batch, rows (0..B-1, 0..B-1), so the chosen and then
the rejected continuations (2B rows) attend to them in a second forward. Nothing is detached: the
gradients of both continuations flow through the cache into the prompt forward.

Layout of the batch (``collate_pair_parts``), all right-padded:

- ``prompt_ids``, ``prompt_mask``: (B, P), the prompt tokens of each pair;
- ``completion_ids``, ``completion_mask``: (2B, C), the chosen completions, then the rejected ones
  (each ``" " + text + EOS``, as ``train.encode`` makes them).

In the second forward row r's keys are laid out [prompt slots 0..P-1 | continuation slots P..P+C-1]
and the 2-D attention mask ``[prompt_mask | completion_mask]`` hides the prompt's padding (a hole
between its last token and its continuation). The cache, not ``position_ids``, decides causality
(transformers' ``create_causal_mask`` uses the cache length as query offset), so the rotary
positions can be each row's true ones, ``prompt_len + 0..C-1``: the same as in the concatenated
sequence. The first completion token is predicted from the prompt's last hidden state; the LM head
runs only on the positions that predict a completion token.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel


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


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def shared_prefix_logprobs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each completion and its token count, (2B,) and (2B,): chosen rows first,
    then rejected, as ``train.sequence_logprobs`` returns them for the concatenated batch."""
    if model.is_gradient_checkpointing and model.training:
        raise ValueError("train.pair_forward=shared_prefix cannot run with gradient checkpointing: transformers drops "
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
    logits = head(predictors[scored])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, float64 stays
    token_logp = -F.cross_entropy(logits, completion_ids[scored], reduction="none")
    row_of = torch.nonzero(scored, as_tuple=True)[0]
    total = token_logp.new_zeros(2 * n_pairs).index_add(0, row_of, token_logp)
    return total, scored.sum(-1)

