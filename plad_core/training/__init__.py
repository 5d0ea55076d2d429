"""Training: batches, sequence log-probs, step functions, the loop, checkpoints, distributed runs."""
