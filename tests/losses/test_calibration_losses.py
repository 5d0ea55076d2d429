"""PLaD ranking and margin losses, the SLiC-HF NLL regulariser and the margin loss's ROUGE-L score s,
by hand, against float64 references, and their gradients."""

import numpy as np
import torch
from loss_inputs import CHOSEN_AVG, REJECTED_AVG, close, t
from rouge_score import rouge_scorer

from plad_core.losses.calibration import (
    margin_calibration_loss,
    nll_regularizer,
    ranking_calibration_loss,
)
from plad_core.rouge import rouge_l_scores


def test_ranking_loss_matches_hand_computation():
    chosen = torch.tensor([-1.2, -0.5])
    rejected = torch.tensor([-0.8, -2.0])
    # pair 1: max(0, 1.0 + 1.2 - 0.8) = 1.4 ; pair 2: max(0, 1.0 + 0.5 - 2.0) = 0 ; mean = 0.7
    assert torch.isclose(ranking_calibration_loss(chosen, rejected, beta=1.0), torch.tensor(0.7))
    # beta 2: (2.4 + 0.5) / 2
    assert torch.isclose(ranking_calibration_loss(chosen, rejected, beta=2.0), torch.tensor(1.45))


def test_ranking_loss_gradient_moves_chosen_up_and_rejected_down():
    chosen = torch.tensor([-1.2, -0.5], requires_grad=True)
    rejected = torch.tensor([-0.8, -2.0], requires_grad=True)
    ranking_calibration_loss(chosen, rejected, 1.0).backward()
    assert chosen.grad.tolist() == [-0.5, 0.0] and rejected.grad.tolist() == [0.5, 0.0]


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


def test_rouge_l_scores_are_float_when_no_text_has_a_token():
    # rouge-score answers the int 0 for texts without tokens (punctuation only); the scores stay float32
    chosen_score, rejected_score = rouge_l_scores(["!!", "..."], ["?", ","], [None, None])
    assert chosen_score.dtype == rejected_score.dtype == torch.float32
    assert chosen_score.tolist() == rejected_score.tolist() == [0.0, 0.0]
    assert float((chosen_score - rejected_score).mean()) == 0.0
