"""Teacher SFT's effect in a pipeline config: the few-shot teacher against the SFT'd teacher on that
config's own dev rows.

    .venv/bin/python bench/teacher_effect.py [--config tldr_cpu] [key=value ...]

It builds (or reuses from the config's artifact store) the teacher's dev outputs twice, with the
pipeline's own stages: once with ``teacher.sft`` as the config has it (the teacher the pipeline
samples and evaluates) and once with ``teacher.sft.enabled=false`` (the instruct model prompted with
``teacher.prompt.fewshot_k`` worked examples). After ``make table EXPERIMENT=tldr_cpu`` only the
few-shot outputs are new. It prints, side by side, dev ROUGE-L F1 (x100, 95% bootstrap CI), the mean
repeated-word-3-gram share, mean output tokens, the share of outputs cut at ``eval.max_new_tokens``,
and the paired ROUGE-L difference with its CI and n.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from plad_core.artifacts import ArtifactStore  # noqa: E402
from plad_core.config import load_config  # noqa: E402
from plad_core.evaluation.metrics import repeated_ngram_share  # noqa: E402
from plad_core.stages import run_prepare_data, run_sft_teacher  # noqa: E402
from plad_core.stages.evaluate import run_dev_outputs  # noqa: E402
from plad_core.stats import bootstrap_ci, min_detectable_difference, paired_bootstrap  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tldr_cpu")
    p.add_argument("override", nargs="*", help="dotlist overrides for both teachers")
    args = p.parse_args()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    frames = {}
    for name, extra in (("few-shot", ["teacher.sft.enabled=false"]), ("SFT'd", [])):
        cfg = load_config(args.config, [*args.override, *extra])
        store = ArtifactStore(cfg.artifacts_root)
        data = run_prepare_data(cfg, store)
        run_sft_teacher(cfg, store, data)  # reused when built; an empty artifact when off
        started = time.perf_counter()
        outputs = run_dev_outputs(cfg, store, data)
        frame = pd.read_parquet(outputs.file("generations.parquet")).sort_values("id").reset_index(drop=True)
        frames[name] = frame.assign(repeat=[repeated_ngram_share(t) for t in frame["text"]])
        print(f"{name}: dev_outputs {outputs.key} ({time.perf_counter() - started:.0f} s here)", flush=True)
    limit = cfg.eval.max_new_tokens
    print(f"{'teacher':<9} {'ROUGE-L [95% CI]':>24} {'repeated 3-grams':>17} {'mean tokens':>12} {'cut at limit':>13}")
    for name, frame in frames.items():
        ci = bootstrap_ci(100 * frame["rougeL"].to_numpy())
        print(f"{name:<9} {ci.estimate:8.2f} [{ci.low:6.2f}, {ci.high:6.2f}] {100 * frame['repeat'].mean():16.1f}% "
              f"{frame['output_tokens'].mean():12.1f} {100 * (frame['output_tokens'] >= limit).mean():12.1f}%")
    sft, few = (100 * frames[k]["rougeL"].to_numpy() for k in ("SFT'd", "few-shot"))
    assert list(frames["SFT'd"]["id"]) == list(frames["few-shot"]["id"])
    diff = paired_bootstrap(sft, few)
    d = diff.difference
    print(f"SFT'd - few-shot, ROUGE-L: {d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] over n = {len(sft)} dev rows "
          f"(paired bootstrap p = {diff.p_value:.3f}; MDE ±{min_detectable_difference(sft - few):.2f})")


if __name__ == "__main__":
    main()
