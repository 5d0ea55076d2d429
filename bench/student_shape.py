"""The student's shape: layers kept from the teacher and healing steps, against perplexity and SFT ROUGE-L.

    .venv/bin/python bench/student_shape.py [--layers 8 12] [--heal-steps 24 32 64] [--labeled 128]
                                            [--dev 64] [--root /tmp/plad-student-shape] [key=value ...]

For every (layer count, healing steps) it builds the pipeline's own stages on the real TL;DR rows of
``conf/tldr.yaml``: init_student (the teacher's first and last ``layers/2`` layers, healed by token KD
for that many steps; the stage measures perplexity on held-out labeled text before and after), then
sft_student on ``--labeled`` rows, then greedy outputs on ``--dev`` dev rows as the evaluation makes
them. It prints one line per shape, side by side: parameters, healing perplexity (teacher, before,
after), SFT ROUGE-L F1 (x100, 95% bootstrap CI), mean repeated-word-3-gram share, mean output tokens,
and the seconds each stage took on this machine. Artifacts go under ``--root`` and are reused, so
adding a shape to the list costs only that shape.

Every shape uses the config's precision (``bf16: auto``: float32 on a CPU without fast bf16), so the
seconds are the ones the pipeline itself would spend on this machine: say which CPU they came from
(``torch.backends.cpu.get_cpu_capability()`` is printed first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from plad_core.artifacts import ArtifactStore  # noqa: E402
from plad_core.config import load_config  # noqa: E402
from plad_core.evaluation.metrics import repeated_ngram_share  # noqa: E402
from plad_core.stages import run_init_student, run_prepare_data, run_sft_student  # noqa: E402
from plad_core.stages.evaluate import dev_generations  # noqa: E402
from plad_core.stages.inputs import load_artifact_model, read_split  # noqa: E402
from plad_core.stats import bootstrap_ci  # noqa: E402

TEACHER_LAYERS = 30  # SmolLM2-135M


def keep_layers(count: int, total: int = TEACHER_LAYERS) -> list[int]:
    """The first and the last ``count // 2`` layers, as ``student.keep_layers`` keeps 8 by default."""
    half = count // 2
    return [*range(half), *range(total - (count - half), total)]


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, nargs="+", default=[8, 12])
    p.add_argument("--heal-steps", type=int, nargs="+", default=[24, 32, 64])
    p.add_argument("--labeled", type=int, default=128)
    p.add_argument("--dev", type=int, default=64)
    p.add_argument("--root", type=Path, default=Path("/tmp/plad-student-shape"))
    p.add_argument("override", nargs="*", help="more dotlist overrides, e.g. sft.lr=1e-4")
    args = p.parse_args()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print("layers | heal steps | params (M) | ppl teacher / before / after | SFT ROUGE-L [95% CI] | repeat % | "
          "tokens | s heal / sft / dev")
    for layers in args.layers:
        for heal in args.heal_steps:
            cfg = load_config("tldr", [
                f"data.n_labeled={args.labeled}", f"data.n_dev={args.dev}", "data.n_unlabeled=0",
                f"artifacts_root={args.root / 'artifacts'}", f"cache_dir={REPO / 'data' / 'cache'}",
                f"student.keep_layers={keep_layers(layers)}", f"student.heal.steps={heal}", *args.override])
            store = ArtifactStore(cfg.artifacts_root)
            data = run_prepare_data(cfg, store)
            init, heal_s = timed(run_init_student, cfg, store, data)
            sft, sft_s = timed(run_sft_student, cfg, store, data, init)
            model, tokenizer = load_artifact_model(sft, cfg)
            params = sum(t.numel() for t in model.parameters()) / 1e6
            frame, dev_s = timed(dev_generations, model, tokenizer, "sft", read_split(data, "dev"), data,
                                 cfg.student.prompt, cfg)
            ci = bootstrap_ci(list(frame["rougeL"]), cfg.eval.n_resamples, cfg.eval.seed)
            repeat = 100 * sum(repeated_ngram_share(t) for t in frame["text"]) / len(frame)
            h = init.manifest["stats"]
            print(f"{layers} | {heal} | {params:.0f} | {h['perplexity_teacher']:.1f} / "
                  f"{h['perplexity_before_heal']:.0f} / {h['perplexity_after_heal']:.1f} | "
                  f"{100 * ci.estimate:.2f} [{100 * ci.low:.2f}, {100 * ci.high:.2f}] | {repeat:.1f} | "
                  f"{frame['output_tokens'].mean():.1f} | {heal_s:.0f} / {sft_s:.0f} / {dev_s:.0f}", flush=True)


if __name__ == "__main__":
    main()
