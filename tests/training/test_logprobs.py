"""Sequence log-probs score only the completion tokens; the shared-prefix pair forward against the
concatenated one: same tokens, log-probs and gradients.

float64 tiny Llama (tests/tiny.py) with the real SmolLM2 tokenizer, on real TL;DR posts and summaries of
varied lengths; max_seq_len is small enough that long posts are cut and pairs share the cut prompt.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from tiny import TLDR, make_tiny_model, real_tokenizer
from transformers import AutoModelForCausalLM

from plad_core.config import TrainConfig
from plad_core.losses import ranking_calibration_loss
from plad_core.models import load_model
from plad_core.training import logprobs, steps
from plad_core.training.batches import collate, encode, encode_pair, pair_batches
from plad_core.training.logprobs import sequence_logprobs, shared_prefix_logprobs

MAX_LEN = 96


@pytest.fixture(scope="module")
def tokenizer():
    return real_tokenizer()


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    """6 real posts: 3 cut to a few words (short prompts), 3 whole (cut by MAX_LEN); the rejected summary
    is the next row's, so chosen and rejected lengths differ."""
    rows = [json.loads(line) for line in TLDR.read_text().splitlines()[:6]]
    prompts = [f"POST: {' '.join(r['post'].split()[:3 + 4 * i]) if i < 3 else r['post']}\nTL;DR:"
               for i, r in enumerate(rows)]
    summaries = [r["summary"] for r in rows]
    return pd.DataFrame({"prompt": prompts, "chosen": summaries, "rejected": summaries[1:] + summaries[:1],
                         "reference": summaries})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", layers=2, seed=3)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)


def batches(pairs, tokenizer, batch_size=3):
    cfg = OmegaConf.structured(TrainConfig)
    cfg.optim.max_seq_len, cfg.optim.batch_size = MAX_LEN, batch_size
    return pair_batches(pairs, tokenizer, cfg)


def test_sequence_logprobs_score_only_completion_tokens(tmp_path):
    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "m")), tmp_path)
    items = [encode(tokenizer, "POST: a cat\nTL;DR:", "cat", 64), encode(tokenizer, "POST: a much longer post here\nTL;DR:", "long post", 64)]
    batch = collate(items, tokenizer.pad_token_id)
    total, count = sequence_logprobs(model, batch)
    for row, item in enumerate(items):
        ids = torch.tensor([item.ids])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
        targets = ids[0, 1:]
        reference = logp[torch.arange(len(targets)), targets][item.n_prompt - 1:].sum()
        assert count[row] == len(item.ids) - item.n_prompt
        assert torch.isclose(total[row], reference, atol=1e-4)
    assert items[0].ids[-1] == tokenizer.eos_token_id


def test_encode_pair_is_encode_with_one_shared_prompt(pairs, tokenizer):
    cut = 0
    for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        chosen, rejected = encode_pair(tokenizer, p, c, r, MAX_LEN)
        plain_c, plain_r = encode(tokenizer, p, c, MAX_LEN), encode(tokenizer, p, r, MAX_LEN)
        assert chosen.ids[:chosen.n_prompt] == rejected.ids[:rejected.n_prompt]
        assert chosen.ids[chosen.n_prompt:] == plain_c.ids[plain_c.n_prompt:]
        assert rejected.ids[rejected.n_prompt:] == plain_r.ids[plain_r.n_prompt:]
        longer = plain_c if len(plain_c.ids) - plain_c.n_prompt >= len(plain_r.ids) - plain_r.n_prompt else plain_r
        assert chosen.n_prompt == longer.n_prompt  # the prompt that fits beside the longer completion
        if plain_c.n_prompt == plain_r.n_prompt:
            assert (chosen.ids, rejected.ids) == (plain_c.ids, plain_r.ids)
        else:
            cut += 1
            assert max(len(chosen.ids), len(rejected.ids)) == MAX_LEN
    assert cut >= 1  # the fixture exercises the shared cut


def test_parts_hold_the_concatenated_tokens(pairs, tokenizer):
    for b in batches(pairs, tokenizer):
        n = b["prompt_ids"].shape[0]
        for row in range(2 * n):
            prompt = b["prompt_ids"][row % n][b["prompt_mask"][row % n].bool()]
            completion = b["completion_ids"][row][b["completion_mask"][row].bool()]
            sequence = b["input_ids"][row][b["attention_mask"][row].bool()]
            assert torch.equal(torch.cat([prompt, completion]), sequence)
            assert int(b["score_mask"][row].sum()) == len(completion)


# eager attention takes its softmax in float32 even for a float64 model, hence its looser bounds
@pytest.mark.parametrize("attn, logp_tol, grad_tol", [("sdpa", 1e-10, 1e-8), ("eager", 1e-6, 1e-5)])
def test_same_logprobs_and_gradients(model, pairs, tokenizer, attn, logp_tol, grad_tol):
    model.config._attn_implementation = attn
    model.train()
    grads = {}
    for name, forward in [("concatenated", sequence_logprobs), ("shared_prefix", shared_prefix_logprobs)]:
        model.zero_grad(set_to_none=True)
        results = []
        loss = 0.0
        for b in batches(pairs, tokenizer):
            total, count = forward(model, b)
            half = total.shape[0] // 2
            mean = total / count
            loss = loss + ranking_calibration_loss(mean[:half], mean[half:], 1.0) + 0.01 * total.sum()
            results.append((total.detach(), count))
        loss.backward()
        grads[name] = ({k: p.grad.clone() for k, p in model.named_parameters()}, results)
    (g_cat, r_cat), (g_shared, r_shared) = grads["concatenated"], grads["shared_prefix"]
    for (t_cat, n_cat), (t_shared, n_shared) in zip(r_cat, r_shared):
        assert t_cat.dtype == torch.float64
        assert torch.equal(n_cat, n_shared)
        assert (t_cat - t_shared).abs().max() <= logp_tol
    assert all(t.abs().min() > 1.0 for t, _ in r_cat)  # real (untrained) log-probs, not zeros
    for k in g_cat:
        assert (g_cat[k] - g_shared[k]).abs().max() <= grad_tol, k
    assert g_cat["model.layers.0.self_attn.q_proj.weight"].abs().max() > 1e-6  # the prompt forward gets gradient


def test_gradient_checkpointing_is_refused(model, pairs, tokenizer):
    model.gradient_checkpointing_enable()
    model.train()
    try:
        with pytest.raises(ValueError, match="pair_forward=concatenated"):
            shared_prefix_logprobs(model, batches(pairs, tokenizer)[0])
    finally:
        model.gradient_checkpointing_disable()


def test_calibration_step_selects_the_pair_forward(model, pairs, tokenizer):
    model.config._attn_implementation = "sdpa"
    batch = batches(pairs, tokenizer)[0]
    results = {name: steps.calibration_step(model, "cpo_hinge", 0.1, pair_forward=name)(batch)
               for name in logprobs.PAIR_FORWARDS}
    (loss_cat, metrics_cat), (loss_shared, metrics_shared) = results["concatenated"], results["shared_prefix"]
    assert abs(loss_cat.item() - loss_shared.item()) <= 1e-10
    assert metrics_cat == pytest.approx(metrics_shared, abs=1e-10)
    with pytest.raises(ValueError, match="train.pair_forward='prefix' is not known; choose one of shared_prefix"):
        steps.calibration_step(model, "cpo_hinge", 0.1, pair_forward="prefix")


def test_check_pair_forward_fails_fast():
    logprobs.check_pair_forward("shared_prefix")
    logprobs.check_pair_forward("concatenated", gradient_checkpointing=True)
    with pytest.raises(ValueError, match="set train.pair_forward=concatenated"):
        logprobs.check_pair_forward("shared_prefix", gradient_checkpointing=True)
    with pytest.raises(ValueError, match="'both' is not known"):
        logprobs.check_pair_forward("both")
