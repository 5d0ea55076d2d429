"""Teacher SFT's effect: the few-shot teacher against the SFT'd teacher on the same dev rows.

    .venv/bin/python bench/teacher_sft.py [--model tiny|embedded:smollm2-135m-instruct|<folder>]
                                          [--labeled 64] [--dev 32] [--steps 8] [--root /tmp/plad-teacher-sft]

On a slice of the real TL;DR rows (``--labeled`` labeled rows, ``teacher.sft.held_out`` of them
held out to pick the step, ``--dev`` dev rows), it builds the sft_teacher stage (``--steps``
optimizer steps, ``teacher.sft.eval_every`` = a quarter of them) and generates greedily on the dev
rows with each teacher, as the evaluation does (``eval.max_new_tokens``, ``eval.stop``): the few-shot
teacher with ``teacher.prompt`` (its ``fewshot_k`` worked examples), the SFT'd one zero-shot with the
template it was trained on. It prints, side by side, dev ROUGE-L F1 (x100, with a 95% bootstrap CI),
the mean repeated-word-3-gram share (the share of a text's word 3-grams that repeat an earlier one)
and mean output tokens, and the paired ROUGE-L difference with its CI.

``--model tiny`` (the default) is a 2-layer random-init Llama with SmolLM2's tokenizer: it checks the
machinery in a minute on a shared CPU, and its numbers say nothing about SFT. The real teacher
(``embedded:smollm2-135m-instruct``) takes ~40 s per SFT step of 8 rows on a 2-core AVX2 CPU.
Artifacts go under ``--root`` and are reused by a second run with the same settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from plad_core.artifacts import ArtifactStore  # noqa: E402
from plad_core.config import load_config  # noqa: E402
from plad_core.stages import run_prepare_data, run_sft_teacher  # noqa: E402
from plad_core.stages.evaluate import dev_generations  # noqa: E402
from plad_core.stages.inputs import read_split  # noqa: E402
from plad_core.stages.teacher import local_teacher, repeated_trigram_share  # noqa: E402
from plad_core.stats import bootstrap_ci, paired_bootstrap  # noqa: E402


def overrides(args: argparse.Namespace, model: str) -> list[str]:
    return [f"teacher.model={model}", f"data.n_labeled={args.labeled}", f"data.n_dev={args.dev}", "data.n_unlabeled=0",
            f"artifacts_root={args.root / 'artifacts'}", f"cache_dir={REPO / 'data' / 'cache'}",
            "teacher.sampling.backend=hf", "teacher.sft.enabled=true", f"teacher.sft.max_steps={args.steps}",
            f"teacher.sft.eval_every={max(1, args.steps // 4)}", f"teacher.sft.held_out={args.held_out}",
            f"teacher.sft.epochs={args.epochs}", *args.override]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--labeled", type=int, default=64)
    p.add_argument("--held-out", type=int, default=16)
    p.add_argument("--dev", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10, help="an upper bound: --steps caps the run")
    p.add_argument("--root", type=Path, default=Path("/tmp/plad-teacher-sft"))
    p.add_argument("override", nargs="*", help="more dotlist overrides, e.g. teacher.sft.lr=1e-4")
    args = p.parse_args()
    model = args.model
    if model == "tiny":
        from tiny import make_tiny_model
        folder = args.root / "tiny-teacher"
        model = str(folder if (folder / "config.json").is_file() else make_tiny_model(folder, layers=2))
    cfg = load_config("tldr", overrides(args, model))
    store = ArtifactStore(cfg.artifacts_root)
    data = run_prepare_data(cfg, store)
    started = time.perf_counter()
    tuned = run_sft_teacher(cfg, store, data)
    sft_seconds = time.perf_counter() - started
    dev = read_split(data, "dev")
    rows = {}
    for name, teacher in (("few-shot", local_teacher(cfg, None)), ("sft", local_teacher(cfg, tuned))):
        loaded = teacher.load(cfg)
        frame = dev_generations(*loaded, name, dev, data, teacher.prompt, cfg)
        rows[name] = frame.assign(repeat=[repeated_trigram_share(t) for t in frame["text"]])
    stats = tuned.manifest["stats"]
    print(f"model {args.model}; {stats['examples']} training rows, {stats['held_out_rows']} held out, "
          f"{stats['steps']} steps ({sft_seconds:.0f} s), kept step {stats['kept_step']} "
          f"(held-out NLL {stats.get('best_eval_loss', float('nan')):.3f}); {len(dev)} dev rows")
    print(f"{'teacher':<10} {'ROUGE-L':>24} {'repeated 3-grams':>17} {'mean tokens':>12}")
    for name, frame in rows.items():
        ci = bootstrap_ci(100 * frame["rougeL"].to_numpy())
        print(f"{name:<10} {ci.estimate:8.2f} [{ci.low:6.2f}, {ci.high:6.2f}] {100 * frame['repeat'].mean():16.1f}% "
              f"{frame['output_tokens'].mean():12.1f}")
    diff = paired_bootstrap(100 * rows["sft"]["rougeL"].to_numpy(), 100 * rows["few-shot"]["rougeL"].to_numpy())
    d = diff.difference
    print(f"sft - few-shot, ROUGE-L: {d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] over {len(dev)} rows "
          f"(paired bootstrap p = {diff.p_value:.3f})")


if __name__ == "__main__":
    main()
