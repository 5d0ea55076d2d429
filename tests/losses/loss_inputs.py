"""Inputs and comparisons shared by the loss tests (the ``rand`` fixture is in this folder's conftest.py)."""

import math

import numpy as np
import torch

# A 2-pair batch shared by the hand computations: length-normalised log-probs ...
CHOSEN_AVG, REJECTED_AVG = [-1.2, -0.5], [-0.8, -2.0]

# ... and summed ones for the policy / reference (DPO, IPO) or student / teacher (DPKD).
POLICY_C, POLICY_R, REF_C, REF_R = [-10.0, -20.0], [-12.0, -15.0], [-11.0, -18.0], [-11.0, -16.0]


def t(values, grad=False):
    return torch.tensor(values, requires_grad=grad)


def neg_logsigmoid(x):
    """float64 numpy reference of -log σ(x), stable for either sign."""
    return np.logaddexp(0.0, -x)


def close(value, expected):
    return math.isclose(value.item(), float(expected), rel_tol=1e-5, abs_tol=1e-6)
