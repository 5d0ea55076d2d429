import torch

from plad_core.losses import forward_kl_distillation_loss, ranking_calibration_loss
from plad_core.train import collate, encode, sequence_logprobs
from tiny import make_tiny_model, real_tokenizer
from plad_core.models import load_model


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


def test_forward_kl_is_zero_for_equal_and_matches_reference():
    torch.manual_seed(0)
    t, s = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert forward_kl_distillation_loss(t, t, mask).item() == 0.0
    p, q = t.softmax(-1), s.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    expected = (kl[0, 0] + kl[0, 1] + kl[1, 0]) / 3
    assert torch.isclose(forward_kl_distillation_loss(s, t, mask), expected, atol=1e-12)  # float64 stays float64


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


def test_calibration_step_combines_pair_loss_and_nll(tmp_path):
    from plad_core.losses import margin_calibration_loss, nll_regularizer
    from plad_core.train import calibration_step
    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "m")), tmp_path)
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
