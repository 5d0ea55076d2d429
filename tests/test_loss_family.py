import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from plad_core.losses import (cpo_hinge_loss, dpkd_loss, dpo_loss, ipo_loss, margin_calibration_loss,
                              nll_regularizer, ranking_calibration_loss, rouge_l_scores, simpo_loss)

# A 2-pair batch shared by the hand computations: length-normalised log-probs ...
CHOSEN_AVG, REJECTED_AVG = [-1.2, -0.5], [-0.8, -2.0]
# ... and summed ones for the policy / reference (DPO, IPO) or student / teacher (DPKD).
POLICY_C, POLICY_R, REF_C, REF_R = [-10.0, -20.0], [-12.0, -15.0], [-11.0, -18.0], [-11.0, -16.0]


def t(values, grad=False):
    return torch.tensor(values, requires_grad=grad)


def neg_logsigmoid(x):
    """float64 numpy reference of -log σ(x), stable for either sign."""
    return np.logaddexp(0.0, -x)


@pytest.fixture
def rand():
    """16 pairs of random float64 inputs and their float32 tensors."""
    rng = np.random.default_rng(0)
    arrays = {name: rng.normal(-30, 10, 16) for name in ("pc", "pr", "rc", "rr")}
    arrays |= {name: rng.normal(-1.5, 0.7, 16) for name in ("ac", "ar")}
    arrays |= {"sc": rng.uniform(0, 1, 16), "sr": rng.uniform(0, 1, 16),
               "lc": rng.integers(1, 60, 16).astype(float), "lr": rng.integers(1, 60, 16).astype(float)}
    tensors = {name: torch.tensor(a, dtype=torch.float32) for name, a in arrays.items()}
    return SimpleNamespace(np=SimpleNamespace(**arrays), pt=SimpleNamespace(**tensors))


def close(value, expected):
    return math.isclose(value.item(), float(expected), rel_tol=1e-5, abs_tol=1e-6)


def test_margin_loss_by_hand_reference_and_gradients(rand):
    # pair 1: max(0, 2*(1.0-0.4) + 1.2 - 0.8) = 1.6 ; pair 2: max(0, 2*(0.6-0.5) + 0.5 - 2.0) = 0 ; mean 0.8
    chosen, rejected = t(CHOSEN_AVG, grad=True), t(REJECTED_AVG, grad=True)
    loss = margin_calibration_loss(chosen, rejected, t([1.0, 0.6]), t([0.4, 0.5]), beta=2.0)
    assert close(loss, 0.8)
    loss.backward()
    assert chosen.grad.tolist() == [-0.5, 0.0] and rejected.grad.tolist() == [0.5, 0.0]
    # equal scores: no margin, a hinge at zero
    assert close(margin_calibration_loss(t(CHOSEN_AVG), t(REJECTED_AVG), t([0.3, 0.3]), t([0.3, 0.3]), 2.0),
                 ranking_calibration_loss(t(CHOSEN_AVG), t(REJECTED_AVG), 0.0))
    r, p = rand.np, rand.pt
    expected = np.maximum(0.0, 1.5 * (r.sc - r.sr) - r.ac + r.ar).mean()
    assert close(margin_calibration_loss(p.ac, p.ar, p.sc, p.sr, 1.5), expected)


def test_nll_regularizer_by_hand_reference_and_gradient(rand):
    # (12 + 6) / (10 + 5) = 1.2 NLL per chosen token
    total = t([-12.0, -6.0], grad=True)
    loss = nll_regularizer(total, t([10, 5]))
    assert close(loss, 1.2)
    loss.backward()
    assert (total.grad < 0).all()
    r, p = rand.np, rand.pt
    assert close(nll_regularizer(p.pc, p.lc), -r.pc.sum() / r.lc.sum())


def test_dpo_loss_by_hand_reference_and_gradients(rand):
    # log-ratios: chosen [-10+11, -20+18] = [1, -2], rejected [-12+11, -15+16] = [-1, 1]; gaps [2, -3]
    # beta 0.5: -log σ(1) = 0.3132617, -log σ(-1.5) = 1.7014133 ; mean 1.0073375
    chosen, rejected = t(POLICY_C, grad=True), t(POLICY_R, grad=True)
    loss = dpo_loss(chosen, rejected, t(REF_C), t(REF_R), beta=0.5)
    assert close(loss, 1.0073375)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    r, p = rand.np, rand.pt
    expected = neg_logsigmoid(0.1 * ((r.pc - r.rc) - (r.pr - r.rr))).mean()
    assert close(dpo_loss(p.pc, p.pr, p.rc, p.rr, 0.1), expected)


def test_dpo_loss_is_stable_for_large_gaps():
    # gap -2000 at beta 0.5: -log σ(-1000) = 1000 exactly in float32, no overflow to inf
    loss = dpo_loss(t([-2000.0]), t([0.0]), t([0.0]), t([0.0]), beta=0.5)
    assert loss.item() == 1000.0


def test_dpkd_loss_by_hand_reference_and_gradients(rand):
    # chosen: (-10+8)/4 = -0.5, (-20+16)/8 = -0.5 ; rejected: (-12+14)/2 = 1, (-15+12)/6 = -0.5
    # beta 1, logits [-1.5, 0]: -log σ(-1.5) = 1.7014133, -log σ(0) = log 2 = 0.6931472 ; mean 1.1972802
    chosen, rejected = t(POLICY_C, grad=True), t(POLICY_R, grad=True)
    loss = dpkd_loss(chosen, rejected, t([-8.0, -16.0]), t([-14.0, -12.0]), t([4.0, 8.0]), t([2.0, 6.0]), beta=1.0)
    assert close(loss, 1.1972802)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    r, p = rand.np, rand.pt
    expected = neg_logsigmoid(0.5 * (r.pc - r.rc) / r.lc - 0.5 * (r.pr - r.rr) / r.lr).mean()
    assert close(dpkd_loss(p.pc, p.pr, p.rc, p.rr, p.lc, p.lr, 0.5), expected)


def test_simpo_loss_by_hand_reference_and_gradients(rand):
    # beta 2, gamma 0.5: logits 2*(-1.2+0.8) - 0.5 = -1.3, 2*(-0.5+2.0) - 0.5 = 2.5
    # -log σ(-1.3) = 1.5410085, -log σ(2.5) = 0.0788897 ; mean 0.8099491
    chosen, rejected = t(CHOSEN_AVG, grad=True), t(REJECTED_AVG, grad=True)
    loss = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    assert close(loss, 0.8099491)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    r, p = rand.np, rand.pt
    expected = neg_logsigmoid(2.5 * (r.ac - r.ar) - 1.0).mean()
    assert close(simpo_loss(p.ac, p.ar, 2.5, 1.0), expected)


def test_ipo_loss_by_hand_reference_and_gradients(rand):
    # gaps [2, -3] as in DPO, tau 0.25 so target 1/(2*0.25) = 2: (2-2)² = 0, (-3-2)² = 25 ; mean 12.5
    assert close(ipo_loss(t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), tau=0.25), 12.5)
    # below the target the chosen is pushed up and the rejected down (above it, IPO pulls the gap back)
    chosen, rejected = t([-10.0], grad=True), t([-10.0], grad=True)
    ipo_loss(chosen, rejected, t([-10.0]), t([-10.0]), tau=0.25).backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()
    r, p = rand.np, rand.pt
    expected = (((r.pc - r.rc) - (r.pr - r.rr) - 1 / (2 * 0.1)) ** 2).mean()
    assert close(ipo_loss(p.pc, p.pr, p.rc, p.rr, 0.1), expected)


def test_cpo_hinge_loss_by_hand_reference_and_gradients(rand):
    # beta 0.5: relu(1 - 0.5*(-1.2+0.8)) = 1.2, relu(1 - 0.5*(-0.5+2.0)) = 0.25 ; mean 0.725
    chosen, rejected = t(CHOSEN_AVG, grad=True), t(REJECTED_AVG, grad=True)
    loss = cpo_hinge_loss(chosen, rejected, beta=0.5)
    assert close(loss, 0.725)
    loss.backward()
    assert chosen.grad.tolist() == [-0.25, -0.25] and rejected.grad.tolist() == [0.25, 0.25]
    r, p = rand.np, rand.pt
    assert close(cpo_hinge_loss(p.pc, p.pr, 0.05), np.maximum(0.0, 1 - 0.05 * (r.pc - r.pr)).mean())


@pytest.mark.parametrize("beta_plad", [0.1, 0.5, 1.0, 3.0])
def test_cpo_hinge_maps_to_ranking_loss(rand, beta_plad):
    # ranking(c, r, β) = β · hinge(c, r, 1/β), values and gradients
    c1, r1 = rand.pt.ac.clone().requires_grad_(), rand.pt.ar.clone().requires_grad_()
    c2, r2 = rand.pt.ac.clone().requires_grad_(), rand.pt.ar.clone().requires_grad_()
    ranking = ranking_calibration_loss(c1, r1, beta_plad)
    hinge = beta_plad * cpo_hinge_loss(c2, r2, beta=1 / beta_plad)
    assert 0 < ranking.item() and close(ranking, hinge.item())
    ranking.backward()
    hinge.backward()
    assert torch.allclose(c1.grad, c2.grad) and torch.allclose(r1.grad, r2.grad)


def test_rouge_l_scores_against_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    chosen = ["the cat sat on the mat", "a b c d", "dogs are running fast", "one two three"]
    rejected = ["the cat was sitting on a mat", "a b x", "the dog runs", "three two one"]
    references = ["the cat is on the mat", None, "", float("nan")]
    chosen_score, rejected_score = rouge_l_scores(chosen, rejected, references)
    assert chosen_score.dtype == rejected_score.dtype == torch.float32 and chosen_score.shape == (4,)
    # row 0 is scored against its reference; rows 1-3 have none, so against the teacher output
    assert close(chosen_score[0], scorer.score(references[0], chosen[0])["rougeL"].fmeasure)
    assert close(rejected_score[0], scorer.score(references[0], rejected[0])["rougeL"].fmeasure)
    assert chosen_score[1:].tolist() == [1.0, 1.0, 1.0]
    for row in (1, 2, 3):
        assert close(rejected_score[row], scorer.score(chosen[row], rejected[row])["rougeL"].fmeasure)
    # LCS "a b" of 4 and 3 tokens: P = 2/3, R = 1/2, F1 = 4/7 ; stemming: "running"/"runs" -> "run" match
    assert close(rejected_score[1], 4 / 7) and rejected_score[2] > 0


# TRL equality: real trl 1.16 trainers on tiny models build their own batches; their losses are compared with
# ours (the trainer's step functions) on the same token ids, so the same log-probs.
TRL_PAIRS = {"prompt": ["POST: my cat sleeps all day\nTL;DR:", "POST: the dog barks at night\nTL;DR:",
                        "POST: it rained on my run\nTL;DR:"],
             "chosen": [" lazy cat", " loud dog keeps me awake", " wet run"],
             "rejected": [" cat", " dog", " I went running today and it rained a lot"]}


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from plad_core.models import load_model
    from tiny import make_tiny_model
    root = tmp_path_factory.mktemp("trl")
    policy, tokenizer = load_model(str(make_tiny_model(root / "policy", layers=2, seed=1)), root)
    reference, _ = load_model(str(make_tiny_model(root / "reference", layers=2, seed=2)), root)
    return SimpleNamespace(trl=trl, policy=policy, reference=reference.requires_grad_(False), tokenizer=tokenizer,
                           data=Dataset.from_dict(TRL_PAIRS), out=root / "out")


def trl_args(setup, config_cls, **kwargs):
    # bf16=False: trl's configs default to bf16, and accelerate then runs the prepared reference model under bf16
    # autocast even on CPU; ours defaults to float32 (train.optim.bf16=false)
    return config_cls(output_dir=str(setup.out), per_device_train_batch_size=len(TRL_PAIRS["prompt"]), report_to=[],
                      use_cpu=True, bf16=False, **kwargs)


def first_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


@pytest.mark.slow
def test_dpo_in_our_trainer_equals_trl_dpo_trainer_sigmoid_loss(trl_setup):
    from plad_core.train import calibration_step, sequence_logprobs
    s = trl_setup
    beta = 0.3
    trainer = s.trl.DPOTrainer(model=s.policy, ref_model=s.reference, processing_class=s.tokenizer,
                               train_dataset=s.data, args=trl_args(s, s.trl.DPOConfig, beta=beta, loss_type="sigmoid"))
    batch = first_batch(trainer)  # 3 chosen rows, then 3 rejected rows, prompt + completion + EOS
    trl_loss = trainer.compute_loss(trainer.model, batch).item()
    ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "score_mask": batch["completion_mask"]}
    with torch.no_grad():
        reference_logps, _ = sequence_logprobs(s.reference, ours)  # what score_pairs stores
        ours |= {"reference_chosen_logp": reference_logps[:3], "reference_rejected_logp": reference_logps[3:]}
        value, _ = calibration_step(s.policy, "dpo", beta, pair_forward="concatenated")(ours)
    assert 0 < trl_loss and value.item() == pytest.approx(trl_loss, rel=1e-5)  # float32 sums of ~100 nats


@pytest.mark.slow
def test_cpo_hinge_in_our_trainer_equals_trl_cpo_trainer_hinge_loss_and_maps_to_ranking(trl_setup):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from plad_core.train import calibration_step, sequence_logprobs
    s = trl_setup
    beta = 2.0
    trainer = CPOTrainer(model=s.policy, processing_class=s.tokenizer, train_dataset=s.data,
                         args=trl_args(s, CPOConfig, beta=beta, loss_type="hinge", cpo_alpha=0.0))
    batch = first_batch(trainer)
    trl_loss, _ = trainer.get_batch_loss_metrics(trainer.model, batch)
    both = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=trainer.pad_token_id)
    ours = {"input_ids": both["concatenated_input_ids"], "attention_mask": both["concatenated_attention_mask"],
            "score_mask": (both["concatenated_labels"] != -100).long()}
    with torch.no_grad():
        value, _ = calibration_step(s.policy, "cpo_hinge", beta, pair_forward="concatenated")(ours)
        assert 0 < trl_loss.item() and value.item() == pytest.approx(trl_loss.item(), rel=1e-5)
        # the documented mapping (cpo_hinge_loss): on length-normalised log-probs, with TRL's beta = 1 / beta_plad,
        # PLaD's ranking loss is beta_plad x TRL's hinge
        total, count = sequence_logprobs(s.policy, ours)
        average = total / count
        trl_hinge = trainer.cpo_loss(average[:3], average[3:])[0].mean().item()
        ranking, _ = calibration_step(s.policy, "ranking", 1 / beta, pair_forward="concatenated")(ours)
    assert 0 < trl_hinge and ranking.item() == pytest.approx(trl_hinge / beta, rel=1e-5)
