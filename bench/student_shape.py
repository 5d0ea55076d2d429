"""The student's shape: layers kept from the teacher and healing steps, against perplexity and SFT ROUGE-L.

    .venv/bin/python bench/student_shape.py [--config tldr_cpu] [--layers 8 12] [--heal-steps 32 96]
                                            [--rows 128] [key=value ...]

For every (layer count, healing steps) it builds the pipeline's own stages with the config's splits and
artifact store (so the config's own student is reused from a run of it): init_student (the teacher's
first and last ``layers/2`` layers, healed by token KD for that many steps; the stage measures
perplexity on 16 held-out dev texts before and after), then sft_student on the labeled split, then
greedy outputs on ``--rows`` rows of the tuning slice (``run_tune_data``: labeled rows of the data file
outside every split, never dev, so a shape chosen here is not chosen on the rows a table reports). It
prints one line per shape, side by side: parameters, healing perplexity (teacher, before, after), SFT
ROUGE-L F1 (x100, 95% bootstrap CI), its paired difference from the first shape (with its CI), mean
repeated-word-3-gram share, mean output tokens, and the seconds healing, SFT and the outputs took here.

Every shape uses the config's precision (``bf16: auto``: float32 on a CPU without fast bf16), so the
seconds are the ones the pipeline itself would spend on this machine: say which CPU they came from
(``torch.backends.cpu.get_cpu_capability()`` is printed first). A stage a run has built is reused, and
its seconds are then the ones its manifest recorded.
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
from plad_core.stages.tune_data import run_tune_data  # noqa: E402
from plad_core.stats import bootstrap_ci, paired_bootstrap  # noqa: E402

TEACHER_LAYERS = 30  # SmolLM2-135M


def keep_layers(count: int, total: int = TEACHER_LAYERS) -> list[int]:
    """The first and the last ``count // 2`` layers, as ``student.keep_layers`` keeps 8 by default."""
    half = count // 2
    return [*range(half), *range(total - (count - half), total)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tldr_cpu")
    p.add_argument("--layers", type=int, nargs="+", default=[8, 12])
    p.add_argument("--heal-steps", type=int, nargs="+", default=[32, 96])
    p.add_argument("--rows", type=int, default=128, help="rows of the tuning slice the SFT students are scored on")
    p.add_argument("override", nargs="*", help="more dotlist overrides, e.g. sft.lr=1e-4")
    args = p.parse_args()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print("layers | heal steps | params (M) | ppl teacher / before / after | SFT ROUGE-L [95% CI] | "
          "vs first shape [95% CI] | repeat % | tokens | s heal / sft / outputs")
    first = None
    for layers in args.layers:
        for heal in args.heal_steps:
            cfg = load_config(args.config, [f"student.keep_layers={keep_layers(layers)}",
                                            f"student.heal.steps={heal}", *args.override])
            store = ArtifactStore(cfg.artifacts_root)
            data = run_prepare_data(cfg, store)
            rows = run_tune_data(cfg, store, data, args.rows)
            init = run_init_student(cfg, store, data)
            sft = run_sft_student(cfg, store, data, init)
            model, tokenizer = load_artifact_model(sft, cfg)
            params = sum(t.numel() for t in model.parameters()) / 1e6
            started = time.perf_counter()
            frame = dev_generations(model, tokenizer, "sft", read_split(rows, "dev"), rows, cfg.student.prompt, cfg)
            outputs_s = time.perf_counter() - started
            scores = list(100 * frame["rougeL"])
            ci = bootstrap_ci(scores, cfg.eval.n_resamples, cfg.eval.seed)
            first = first or scores
            d = paired_bootstrap(scores, first, cfg.eval.n_resamples, cfg.eval.seed).difference
            repeat = 100 * sum(repeated_ngram_share(t) for t in frame["text"]) / len(frame)
            h = init.manifest["stats"]
            print(f"{layers} | {heal} | {params:.0f} | {h['perplexity_teacher']:.1f} / "
                  f"{h['perplexity_before_heal']:.0f} / {h['perplexity_after_heal']:.1f} | "
                  f"{ci.estimate:.2f} [{ci.low:.2f}, {ci.high:.2f}] | {d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | "
                  f"{repeat:.1f} | {frame['output_tokens'].mean():.1f} | "
                  f"{init.manifest['seconds']:.0f} / {sft.manifest['seconds']:.0f} / {outputs_s:.0f}", flush=True)


if __name__ == "__main__":
    main()
