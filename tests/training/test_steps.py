"""Every train.loss through the trainer's step functions on a real pair batch, against float64 reference values.

Tiny float64 Llama models with SmolLM2's real tokenizer; the reference log-probs and token distributions
are recomputed here from full-vocabulary logits, independently of ``logprobs.scored_logits``.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import make_tiny_model

from plad_core import models
from plad_core.config import load_config
from plad_core.losses import check_loss
from plad_core.losses.calibration import margin_calibration_loss, nll_regularizer
from plad_core.training.batches import collate, encode, encode_pairs, pair_batches
from plad_core.training.calibrate import train_on_pairs
from plad_core.training.logprobs import sequence_logprobs
from plad_core.training.steps import calibration_step, token_kd_step

PAIRS = pd.DataFrame({
    "id": ["a", "b", "c"], "sample_index": [0, 0, 0],
    "prompt": ["SUBREDDIT: r/cats\n\nPOST: my cat sleeps all day on the sofa.\n\nTL;DR:",
               "SUBREDDIT: r/jobs\n\nPOST: I got the offer but the pay is low.\n\nTL;DR:",
               "SUBREDDIT: r/running\n\nPOST: ran my first 10k today!\n\nTL;DR:"],
    "chosen": ["my cat is lazy", "offer with low pay, should I take it?", "first 10k done"],
    "rejected": ["cat", "I got a job offer and I am not sure about it at all", "ran"],
    "reference": ["lazy cat sleeps", None, "finished a 10k"],
})
BETA = 0.3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(student, frozen other model, tokenizer), float64; the other model is the reference or the teacher."""
    root = tmp_path_factory.mktemp("loss_trainer")
    student, tokenizer = models.load_model(str(make_tiny_model(root / "student", layers=2, seed=1)), root)
    other, _ = models.load_model(str(make_tiny_model(root / "other", layers=2, seed=2)), root)
    return student.double(), other.double().requires_grad_(False), tokenizer


def full_logprobs(model, ids):
    """float64 (T-1, V) log-softmax of the next-token logits of one unpadded sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return torch.log_softmax(logits.double(), -1).numpy()


def reference_scores(model, tokenizer, frame):
    """Per pair, float64 numpy: summed log-probs of chosen and rejected completions (EOS included), their token
    counts, and the chosen rows' (positions, V) log-distributions at the completion positions."""
    out = {"c": [], "r": [], "lc": [], "lr": [], "dist": []}
    for chosen, rejected in encode_pairs(frame, tokenizer, 512):
        for side, e in (("c", chosen), ("r", rejected)):
            logp = full_logprobs(model, e.ids)[e.n_prompt - 1:]  # rows predicting tokens n_prompt..end
            out[side].append(logp[np.arange(len(logp)), e.ids[e.n_prompt:]].sum())
            out["l" + side].append(len(e.ids) - e.n_prompt)
            if side == "c":
                out["dist"].append(logp)
    return {k: (np.array(v, dtype=float) if k != "dist" else np.concatenate(v)) for k, v in out.items()}


def neg_logsigmoid(x):
    return np.logaddexp(0.0, -x)


def cfg(*overrides):
    return load_config("base", ["train.optim.batch_size=3", *overrides]).train


def one_batch(frame, tokenizer, train_cfg):
    batches = pair_batches(frame, tokenizer, train_cfg)
    assert len(batches) == 1
    return batches[0]


@pytest.fixture(scope="module")
def scored(tiny):
    """The pairs with the other model's log-probs stored as reference and as teacher (as score_pairs writes
    them), and float64 reference values under both models."""
    student, other, tokenizer = tiny
    s, o = reference_scores(student, tokenizer, PAIRS), reference_scores(other, tokenizer, PAIRS)
    frame = PAIRS.assign(chosen_scored_tokens=s["lc"].astype(int), rejected_scored_tokens=s["lr"].astype(int),
                         reference_chosen_logp=o["c"], reference_rejected_logp=o["r"],
                         teacher_chosen_logp=o["c"], teacher_rejected_logp=o["r"])
    return frame, s, o


def expected_pair_loss(loss, s, o):
    nll = -s["c"].sum() / s["lc"].sum()
    if loss == "dpo":
        return neg_logsigmoid(BETA * ((s["c"] - o["c"]) - (s["r"] - o["r"]))).mean()
    if loss == "ipo":  # per-token log-ratios; beta is tau
        gap = (s["c"] - o["c"]) / s["lc"] - (s["r"] - o["r"]) / s["lr"]
        return ((gap - 1 / (2 * BETA)) ** 2).mean()
    if loss == "dpkd":
        return neg_logsigmoid(BETA * (s["c"] - o["c"]) / s["lc"] - BETA * (s["r"] - o["r"]) / s["lr"]).mean() + nll
    assert loss == "seqkd"
    return nll


@pytest.mark.parametrize("pair_forward", ["concatenated", "shared_prefix"])
@pytest.mark.parametrize("loss", ["dpo", "ipo", "dpkd", "seqkd"])
def test_pair_loss_step_matches_float64_reference(tiny, scored, loss, pair_forward):
    student, _, tokenizer = tiny
    frame, s, o = scored
    train_cfg = cfg(f"train.loss={loss}", f"train.beta={BETA}", f"train.pair_forward={pair_forward}")
    batch = one_batch(frame, tokenizer, train_cfg)
    assert batch["reference_chosen_logp"].dtype == torch.float64
    step = calibration_step(student, loss, BETA, pair_forward=pair_forward)
    value, metrics = step(batch)
    # batches are length-grouped, but one batch of 3 pairs is a permutation of the rows: means are unchanged
    assert value.item() == pytest.approx(expected_pair_loss(loss, s, o), rel=1e-9, abs=1e-12)
    assert metrics["pair_accuracy"] == pytest.approx(np.mean(s["c"] / s["lc"] > s["r"] / s["lr"]))
    assert metrics["margin"] == pytest.approx(np.mean(s["c"] / s["lc"] - s["r"] / s["lr"]), rel=1e-9)
    value.backward()
    assert student.get_output_embeddings().weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)


def test_dpo_and_ipo_start_at_their_reference_values_when_the_reference_is_the_student(tiny):
    """Policy = reference (the SFT student scored by score_pairs before training): DPO is log 2, IPO (1/(2 tau))²."""
    student, _, tokenizer = tiny
    s = reference_scores(student, tokenizer, PAIRS)
    frame = PAIRS.assign(reference_chosen_logp=s["c"], reference_rejected_logp=s["r"])
    batch = one_batch(frame, tokenizer, cfg())
    with torch.no_grad():
        assert calibration_step(student, "dpo", BETA)(batch)[0].item() == pytest.approx(np.log(2), abs=1e-9)
        assert calibration_step(student, "ipo", BETA)(batch)[0].item() == pytest.approx(
            (1 / (2 * BETA)) ** 2, abs=1e-9)


def test_calibration_step_combines_pair_loss_and_nll(tmp_path):
    model, tokenizer = models.load_model(str(make_tiny_model(tmp_path / "m")), tmp_path)
    prompts = ["POST: a cat\nTL;DR:", "POST: a dog sat\nTL;DR:"]
    chosen = [encode(tokenizer, p, c, 64) for p, c in zip(prompts, ["cat", "dog on mat"])]
    rejected = [encode(tokenizer, p, r, 64) for p, r in zip(prompts, ["a long unrelated answer", "dog"])]
    batch = collate(chosen + rejected, tokenizer.pad_token_id)
    batch |= {"chosen_score": torch.tensor([1.0, 0.5]), "rejected_score": torch.tensor([0.2, 0.4])}
    with torch.no_grad():
        loss, metrics = calibration_step(model, "margin", beta=2.0, nll_weight=0.3)(batch)
        total, count = sequence_logprobs(model, batch)
    avg = total / count
    expected = (margin_calibration_loss(avg[:2], avg[2:], batch["chosen_score"], batch["rejected_score"], 2.0)
                + 0.3 * nll_regularizer(total[:2], count[:2]))
    assert torch.isclose(loss, expected, atol=1e-5)
    assert metrics["pair_accuracy"] == float(((avg[:2] - avg[2:]) > 0).float().mean())


def kd_reference(s, o, divergence):
    """Mean over the chosen completions' positions of D(p_T || p_S) from float64 log-distributions."""
    p_t, p_s = np.exp(o["dist"]), np.exp(s["dist"])
    if divergence == "forward_kl":
        return (p_t * (o["dist"] - s["dist"])).sum(-1).mean()
    m = 0.5 * (p_t + p_s)
    return (0.5 * (p_t * (o["dist"] - np.log(m))).sum(-1) + 0.5 * (p_s * (s["dist"] - np.log(m))).sum(-1)).mean()


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_token_kd_step_matches_float64_reference(tiny, scored, divergence):
    student, teacher, tokenizer = tiny
    frame, s, o = scored
    batch = one_batch(frame, tokenizer, cfg("train.loss=token_kd"))
    value, metrics = token_kd_step(student, teacher, divergence)(batch)
    expected = kd_reference(s, o, divergence)
    assert value.item() == pytest.approx(expected, rel=1e-9)
    assert 0 < expected and (divergence == "forward_kl" or expected < np.log(2))
    assert metrics["pair_accuracy"] == pytest.approx(np.mean(s["c"] / s["lc"] > s["r"] / s["lr"]))
    # with the NLL regulariser: + lambda * NLL(y_T)
    with torch.no_grad():
        regularised = token_kd_step(student, teacher, divergence, nll_weight=0.5)(batch)[0].item()
    assert regularised == pytest.approx(expected + 0.5 * -s["c"].sum() / s["lc"].sum(), rel=1e-9)
    value.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.get_output_embeddings().weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)


def test_unknown_loss_and_divergence_list_the_valid_names():
    with pytest.raises(ValueError, match="train.loss='dpo2' is not a known loss; choose one of ranking, margin, "
                                         "simpo, cpo_hinge, dpo, ipo, dpkd, seqkd, token_kd"):
        check_loss("dpo2")
    with pytest.raises(ValueError, match="train.kd_divergence='kl' is not known; choose one of forward_kl, jsd"):
        check_loss("token_kd", "kl")


def test_losses_that_read_stored_scores_refuse_pairs_without_them(tiny):
    student, teacher, tokenizer = tiny
    for loss, column in (("dpo", "reference_chosen_logp"), ("dpkd", "teacher_chosen_logp")):
        with pytest.raises(ValueError, match=f"train.loss={loss} reads .*'{column}'.* from the score_pairs stage"):
            train_on_pairs(student, tokenizer, PAIRS, cfg(f"train.loss={loss}"))
    with pytest.raises(ValueError, match="token_kd needs the teacher model"):
        train_on_pairs(student, tokenizer, PAIRS, cfg("train.loss=token_kd"))


def test_stored_token_counts_must_match_the_training_encoding(tiny, scored):
    _, _, tokenizer = tiny
    frame = scored[0].copy()
    frame.loc[1, "rejected_scored_tokens"] += 1
    with pytest.raises(ValueError, match="pair id=b: the score_pairs columns .* another encoding"):
        pair_batches(frame, tokenizer, cfg())
