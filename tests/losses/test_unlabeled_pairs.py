"""Unlabeled means unlabeled: every train.loss trains on pairs whose reference column is all null, none
of them reads a reference from the pairs, and the margin loss's score s is then ROUGE-L F1 against y_T."""

import numpy as np
import pytest
import torch
from pair_fixtures import tldr_pairs, trainer_overrides
from rouge_score import rouge_scorer
from tiny import make_tiny_model

from plad_core import models
from plad_core.config import load_config
from plad_core.config.schema import LOSSES
from plad_core.training import reference_scores
from plad_core.training.batches import encode_pairs, pair_batches
from plad_core.training.calibrate import train_on_pairs


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    """(student folder, frozen teacher, tokenizer, 6 TL;DR pairs with a null reference joined with their
    SFT-reference and teacher log-probs, scored as the score_pairs stage scores them)."""
    root = tmp_path_factory.mktemp("unlabeled")
    student_dir = make_tiny_model(root / "student", layers=1, hidden=16, seed=1)
    teacher, tokenizer = models.load_model(str(make_tiny_model(root / "teacher", layers=1, hidden=16, seed=2)), root)
    reference, _ = models.load_model(str(student_dir), root)
    frame = tldr_pairs(6, post_chars=120).assign(reference=None)
    scores = reference_scores.score_pairs(frame, encode_pairs(frame, tokenizer, 512), tokenizer.pad_token_id,
                                          {"reference": reference, "teacher": teacher.requires_grad_(False)}, 4)
    return student_dir, teacher, tokenizer, frame.merge(scores, on=["id", "sample_index"])


def train(student_dir, teacher, tokenizer, frame, loss):
    cfg = load_config("base", trainer_overrides(**{"loss": loss, "optim.batch_size": 2, "optim.grad_accum": 1,
                                                   "eval_fraction": 0.0, "optim.checkpoint_every": 0}))
    torch.manual_seed(0)
    student, _ = models.load_model(str(student_dir), student_dir.parent)
    history, _ = train_on_pairs(student, tokenizer, frame, cfg.train, teacher if loss == "token_kd" else None)
    return [row["loss"] for row in history]


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_on_pairs_without_a_reference_and_reads_none(unlabeled, loss):
    student_dir, teacher, tokenizer, frame = unlabeled
    assert frame["reference"].isna().all()
    losses = train(student_dir, teacher, tokenizer, frame, loss)
    assert len(losses) == 3 and all(np.isfinite(losses))
    if loss != "margin":  # a reference in the pairs changes nothing for a loss that reads none
        labeled = frame.assign(reference=frame["rejected"])
        assert train(student_dir, teacher, tokenizer, labeled, loss) == losses


def test_without_a_reference_the_margin_score_is_rouge_l_against_the_teacher_text(unlabeled):
    _, _, tokenizer, frame = unlabeled
    cfg = load_config("base", trainer_overrides(**{"loss": "margin", "optim.batch_size": 6}))
    [batch] = pair_batches(frame, tokenizer, cfg.train)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    # batch rows are in length-grouped order; match them back through the scores (s(y_T) is 1 for every row)
    expected = sorted(scorer.score(c, r)["rougeL"].fmeasure for c, r in zip(frame["chosen"], frame["rejected"]))
    assert batch["chosen_score"].tolist() == [1.0] * 6
    assert sorted(batch["rejected_score"].tolist()) == pytest.approx(expected, abs=1e-6)
    assert max(expected) < 1  # a real gap: the title is not the summary
