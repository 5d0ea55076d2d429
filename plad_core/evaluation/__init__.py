"""Evaluation: metrics with CIs, likelihood-quality agreement, the pairwise judge, dev outputs."""
