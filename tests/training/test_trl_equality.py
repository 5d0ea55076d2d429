"""Our trainer's DPO and CPO-hinge steps against real TRL trainers (trl 1.16) on the same token ids."""

from types import SimpleNamespace

import pytest
import torch

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
    from tiny import make_tiny_model

    from plad_core.models import load_model
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
    from plad_core.training.logprobs import sequence_logprobs
    from plad_core.training.steps import calibration_step
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

    from plad_core.training.logprobs import sequence_logprobs
    from plad_core.training.steps import calibration_step
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
