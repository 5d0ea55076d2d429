"""DPO, SimPO, IPO and the CPO hinge by hand, against float64 references, and their gradients; the
hinge's mapping to the PLaD ranking loss."""

import numpy as np
import pytest
import torch
from loss_inputs import (
    CHOSEN_AVG,
    POLICY_C,
    POLICY_R,
    REF_C,
    REF_R,
    REJECTED_AVG,
    close,
    neg_logsigmoid,
    t,
)

from plad_core.losses.calibration import ranking_calibration_loss
from plad_core.losses.preference import cpo_hinge_loss, dpo_loss, ipo_loss, simpo_loss


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
