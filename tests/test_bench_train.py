"""bench/train.py's FLOP count for the MFU mode (bench/train_mfu.py), against a hand count on a one-pair batch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from plad_core.training.batches import collate_pair_parts

SPEC = importlib.util.spec_from_file_location("bench_train_mfu", Path(__file__).resolve().parent.parent / "bench" / "train_mfu.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.mark.parametrize("pair_forward, expected", [
    # trunk 6*N*tokens, attention 12*L*d*(attended query-key pairs), LM head 6*h*V*(scored positions)
    # shared: tokens 3 + 2 + 1; pairs 3*4/2 + (2*3 + 2*3/2) + (1*3 + 1); scored 3
    ("shared_prefix", 6 * 10 * 6 + 12 * 2 * 4 * (6 + 9 + 4) + 6 * 4 * 7 * 3),
    # concatenated: rows of 5 and 4 tokens; pairs 5*6/2 + 4*5/2
    ("concatenated", 6 * 10 * 9 + 12 * 2 * 4 * (15 + 10) + 6 * 4 * 7 * 3),
])
def test_needed_flops_by_hand(pair_forward, expected):
    batch = collate_pair_parts([[5, 6, 7]], [[8, 2]], [[2]], pad_id=2)
    assert bench.needed_flops(batch, pair_forward, trunk_params=10, layers=2, attn_dim=4, hidden=4,
                              vocab=7) == expected
