"""Every ROUGE variant and the repetition of a table artifact's systems against its SFT student, paired
per dev row (a trained system's per-row scores averaged over its seeds, as the table does for ROUGE-L).

    .venv/bin/python bench/table_rouge.py data/artifacts/table/<key>

The table's report gives the paired test for ROUGE-L only; this adds ROUGE-1 and ROUGE-2, which tell a
longer output that shares more words in order (ROUGE-L) from one that shares more content (ROUGE-2),
and the share of outputs whose word 3-grams repeat above 20%.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from plad_core.stats import paired_bootstrap  # noqa: E402
from plad_core.text_stats import repeated_ngram_share  # noqa: E402

METRICS = ("rouge1", "rouge2", "rougeL")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", type=Path, help="a table artifact folder (data/artifacts/table/<key>)")
    args = p.parse_args()
    manifest = json.loads((args.table / "manifest.json").read_text())
    store = args.table.parents[1]
    seeds: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for name, key in manifest["upstream"].items():
        if name.startswith("dev_outputs "):
            frame = pd.read_parquet(store / "dev_outputs" / key / "generations.parquet")
            seeds[name.split(" ", 1)[1].split("@")[0]].append(frame.sort_values("id").reset_index(drop=True))
    sft = seeds.pop("sft")[0]
    print(f"{'system':<16} {'seeds':>5} " + " ".join(f"{'Δ ' + m + ' vs SFT [95% CI], p':>34}" for m in METRICS)
          + f" {'outputs >20% repeated':>22}")
    for name, frames in seeds.items():
        if any(list(f["id"]) != list(sft["id"]) for f in frames):
            raise SystemExit(f"{name}: dev rows differ from the SFT student's")
        cells = []
        for m in METRICS:
            a = 100 * np.mean([f[m].to_numpy() for f in frames], axis=0)
            c = paired_bootstrap(a, 100 * sft[m].to_numpy())
            cells.append(f"{c.difference.estimate:+.2f} [{c.difference.low:+.2f}, {c.difference.high:+.2f}], p {c.p_value:.3f}")
        looped = 100 * np.mean([(f["text"].map(repeated_ngram_share) > 0.2).mean() for f in frames])
        print(f"{name:<16} {len(frames):>5} " + " ".join(f"{c:>34}" for c in cells) + f" {looped:21.1f}%")
    looped = 100 * (sft["text"].map(repeated_ngram_share) > 0.2).mean()
    print(f"{'sft':<16} {1:>5} " + " ".join(f"{'–':>34}" for _ in METRICS) + f" {looped:21.1f}%")


if __name__ == "__main__":
    main()
