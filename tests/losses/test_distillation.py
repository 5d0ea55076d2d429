"""Token-level forward KL and JSD against numpy references and their bounds; DPKD by hand, against a
float64 reference, and its gradients."""

import numpy as np
import pytest
import torch
from loss_inputs import POLICY_C, POLICY_R, close, neg_logsigmoid, t

from plad_core.losses.distillation import (
    dpkd_loss,
    forward_kl_distillation_loss,
    jsd_distillation_loss,
)


def test_forward_kl_is_zero_for_equal_and_matches_reference():
    torch.manual_seed(0)
    t, s = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert forward_kl_distillation_loss(t, t, mask).item() == 0.0
    p, q = t.softmax(-1), s.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    expected = (kl[0, 0] + kl[0, 1] + kl[1, 0]) / 3
    assert torch.isclose(forward_kl_distillation_loss(s, t, mask), expected, atol=1e-12)  # float64 stays float64


def test_jsd_loss_against_numpy_and_its_bounds():
    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 2, (2, 5, 7)), rng.normal(0, 2, (2, 5, 7))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=float)
    ls = s - np.log(np.exp(s).sum(-1, keepdims=True))
    lt = t - np.log(np.exp(t).sum(-1, keepdims=True))
    m = np.log(0.5 * (np.exp(ls) + np.exp(lt)))
    jsd = 0.5 * (np.exp(lt) * (lt - m)).sum(-1) + 0.5 * (np.exp(ls) * (ls - m)).sum(-1)
    value = jsd_distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(mask))
    assert value.item() == pytest.approx((jsd * mask).sum() / mask.sum(), rel=1e-6)
    same = torch.tensor(s)
    assert jsd_distillation_loss(same, same, torch.ones(2, 5)).item() == pytest.approx(0.0, abs=1e-7)
    far = torch.tensor([[100.0, 0.0], [0.0, 100.0]])  # disjoint one-hot distributions: JSD -> log 2
    assert jsd_distillation_loss(far[:1], far[1:], torch.ones(1)).item() == pytest.approx(np.log(2), rel=1e-6)


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
