"""Small pair frames from real TL;DR rows, for trainer tests: the post as prompt, the human summary
as chosen, the title as rejected (a plausible but worse summary)."""

from __future__ import annotations

import pandas as pd
from tiny import CACHE, TLDR


def tldr_pairs(n: int, post_chars: int = 300) -> pd.DataFrame:
    rows = pd.read_json(TLDR, lines=True).head(n)
    return pd.DataFrame({"id": rows["id"].astype(str), "sample_index": 0,
                         "prompt": "POST: " + rows["post"].str[:post_chars] + "\nTL;DR:",
                         "chosen": rows["summary"], "rejected": rows["title"], "reference": rows["summary"]})


def trainer_overrides(**train: object) -> list[str]:
    """A base config for the trainer tests: fp32, a rate that moves a tiny model, every mechanism on."""
    values = {"optim.bf16": False, "optim.batch_size": 3, "optim.grad_accum": 2, "optim.lr": 1e-3,
              "optim.checkpoint_every": 1, "eval_fraction": 0.15, "eval_every": 2, **train}
    return [f"cache_dir={CACHE}", *(f"train.{k}={v}" for k, v in values.items())]
