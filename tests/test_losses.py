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
    assert torch.isclose(forward_kl_distillation_loss(s, t, mask), expected.float(), atol=1e-6)


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
