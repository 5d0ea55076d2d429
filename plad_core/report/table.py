"""The table experiment's report: the headline table, a discussion computed from the numbers, and one
section per view of them (per seed, by length, calibration, judge, training, tuning, provenance).

It reads a ``plad_core.experiments.table_data.TableResults`` and the experiment it came from (a
``plad_core.experiments.table.TableExperiment``); the metric blocks inside are plad_core.evaluation's
dicts, formatted by ``plad_core.report.text``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plad_core.evaluation.judge import REFERENCE
from plad_core.report.blocks import Block, Heading, Image, Para, Table
from plad_core.report.curation import curation_blocks_from_stats
from plad_core.report.judge import validity_text
from plad_core.report.plots import bucket_plot
from plad_core.report.table_discussion import discussion
from plad_core.report.text import (
    ci_text,
    delta_text,
    mde_text,
    n_mde_text,
    num_text,
    pct_text,
    system_label,
)

Result = Any      # plad_core.experiments.table_data.TableResults
Experiment = Any  # plad_core.experiments.table.TableExperiment


def headline_table(result: Result) -> Table:
    """system | ROUGE-1 | ROUGE-2 | ROUGE-L [CI] | Δ ROUGE-L vs SFT [CI], p | its n and MDE | win rate vs
    reference | vs SFT | mean tokens | Δ ROUGE-2 vs SFT [CI], p | outputs that loop."""
    n = result.settings.n_resamples
    rows = []
    for system, s in result.systems.items():
        m, judge = s.metrics, s.judge
        rows.append([system_label(system), num_text(m["rouge1"]), num_text(m["rouge2"]), ci_text(m, "rougeL"),
                     delta_text(s.vs_sft, n), n_mde_text(s.vs_sft), ci_text(judge.get(REFERENCE), "win_rate", 1),
                     ci_text(judge.get("sft"), "win_rate", 1), num_text(m["mean_output_tokens"], 1),
                     delta_text(s.vs_sft_by_metric.get("rouge2"), n), pct_text(s.looping_outputs)])
    return Table(["system", "ROUGE-1", "ROUGE-2", "ROUGE-L [95% CI]", "Δ ROUGE-L vs SFT [95% CI], p",
                  "Δ's n, MDE (80% power)", "win rate vs reference", "win rate vs SFT", "mean tokens",
                  "Δ ROUGE-2 vs SFT [95% CI], p", "outputs that loop"], rows)


def judge_validity_blocks(result: Result) -> list[Block]:
    """The judge's validity sentence (``report.judge.validity_text``), for every block that shows win rates."""
    if not result.judge:
        return []
    return [Para(validity_text(result.judge.get("validity"), result.settings.judge.task if result.settings.judge
                               else None))]


# --- the report's sections, in order -----------------------------------------------------------------

def _intro(exp: Experiment, result: Result) -> list[Block]:
    settings = result.settings
    described = ", ".join(f"{s.name} ({' '.join(s.overrides) or 'no overrides'})" for s in exp.systems)
    return [
        Heading(f"PLaD table: {exp.name} ({exp.config})", 1),
        Para(
            f"Every trained system starts from the same SFT student and the same {result.pairs.pairs} "
            f"pseudo-preference pairs; seeds {', '.join(map(str, settings.seeds))} (train.optim.seed). Systems: "
            f"{described}. "
            + (f"Scored on the tuning slice, not dev: {settings.dev_rows} labeled rows of the data file outside every "
               "split (none trained on, none dev)" if exp.tune_rows else f"Dev split: {settings.dev_rows} rows")
            + ", greedy outputs, ROUGE F1 (x100) against the human "
            "references. A trained system's numbers are its per-row metrics averaged over seeds; brackets are 95% "
            f"bootstrap CIs over dev rows ({settings.n_resamples} resamples); Δ vs SFT is the paired per-row "
            "difference with its two-sided paired-bootstrap p-value, its n and its MDE, the smallest true difference "
            "detected with 80% power at α = 0.05 ((z₀.₉₇₅ + z₀.₈) · sd(d) / √n for per-row differences d); win "
            "rates (x100) are the judge's, ties counted half.")]


def _metric_sections(result: Result) -> list[Block]:
    """PLaD against each baseline, and every metric with its CI."""
    n, blocks = result.settings.n_resamples, []
    if result.comparisons:
        blocks += [Heading("PLaD against each baseline"), Table(
            ["PLaD system", "baseline", "Δ ROUGE-L [95% CI], p", "n", "MDE (80% power)"],
            [[c["a"], c["b"], delta_text(c, n), str(c["n"]), mde_text(c)] for c in result.comparisons])]
    return blocks + [Heading("Every metric with its CI"), Table(
        ["system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "mean tokens", "n"],
        [[system_label(s), ci_text(v.metrics, "rouge1"), ci_text(v.metrics, "rouge2"),
          ci_text(v.metrics, "rougeL"), ci_text(v.metrics, "mean_output_tokens", 1),
          str(v.metrics["n"])] for s, v in result.systems.items()])]


def _per_seed_section(result: Result) -> list[Block]:
    n, per_seed = result.settings.n_resamples, []
    for r in result.runs:
        t = r.training
        c = r.calibration or {}
        per_seed.append([r.system, str(r.seed), ci_text(r.metrics, "rougeL"), delta_text(r.vs_sft, n),
                         n_mde_text(r.vs_sft),
                         ci_text(r.judge.get(REFERENCE), "win_rate", 1),
                         ci_text(r.judge.get("sft"), "win_rate", 1), num_text(c.get("spearman"), 3, True),
                         num_text(c.get("ece"), 3),
                         f"{pct_text(t.sft_held_out_pair_accuracy)} → {pct_text(t.eval_last.pair_accuracy if t.eval_last else None)}",
                         r.calibrate_key])
    return [Heading("Per seed"),
            Table(["system", "seed", "ROUGE-L [95% CI]", "Δ vs SFT, p", "Δ's n, MDE", "win vs reference",
                   "win vs SFT", "Spearman ρ", "ECE", "held-out pair acc. SFT → after", "calibrate key"], per_seed,
                  ["l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l"])]


def _bucket_section(result: Result) -> list[Block]:
    buckets, systems = result.length_buckets, result.systems
    names = list(systems)
    return [Heading("ROUGE-L by reference length"), Para(
        f"Dev rows bucketed by the reference's length in words, edges {buckets['edges']} ({buckets['rule']}); "
        "seed-mean ROUGE-L with 95% CIs."),
        Table(["bucket", "n", *[system_label(s) for s in names]],
              [[b["name"], str(b["n"]), *[ci_text(b["systems"].get(s), "rougeL") for s in names]]
               for b in buckets["buckets"]]),
        Image("by_length.png", bucket_plot({"systems": {s: v.metrics for s, v in systems.items()},
                                            "length_buckets": buckets}), "ROUGE-L by reference length")]


def _calibration_section(result: Result) -> list[Block]:
    settings = result.settings
    calibrated = {s: v.calibration for s, v in result.systems.items() if v.calibration}
    if not calibrated:
        return [Heading("Calibration"), Para("Not computed (eval.calibration_samples = 0).")]
    rows = []
    for s, c in calibrated.items():
        for label, p in c.per_seed.items():
            rows.append([system_label(s), label.split("@")[-1] if "@" in label else "–",
                         ci_text(p, "spearman", 3, signed=True),
                         f"{p['prompts_used']} / {p['prompts_skipped']}", num_text(p["ece"], 3)])
        rows.append([f"{system_label(s)}: mean", "", num_text(c.spearman, 3, True), "", num_text(c.ece, 3)])
    return [Heading("Calibration"), Para(
        f"K = {settings.calibration_samples} samples per prompt on the first {settings.calibration_rows or 'all'} "
        "dev rows, each scored by the student that wrote it (plad_core.evaluation.likelihood_quality): Spearman ρ between log P̄ "
        "and ROUGE-L within a prompt, averaged over prompts (CI over prompts), and the ECE of exp(log P̄) as the "
        "probability of beating the prompt's median sample."),
        Table(["student", "seed", "Spearman ρ [95% CI]", "prompts used / skipped", "ECE"], rows,
              ["l", "r", "r", "r", "r"])]


def _judge_section(result: Result) -> list[Block]:
    judge = result.judge
    if not judge:
        return [Heading("Judge win rate"), Para("Not run (eval.judge.enabled = false).")]
    j = result.settings.judge
    return [Heading("Judge win rate"), *judge_validity_blocks(result), Para(
        f"Judge {j.model} ({j.backend}), prompt conf/{j.prompt}, {j.rows} dev rows; every output "
        "against the human reference and against the SFT student's, in both orders, debiased as in the "
        "evaluation report (hf: the sign of the two orders' summed log-odds; API: a tie when the verdicts "
        "disagree). A trained system's per-row score is averaged over its seeds. Position consistency "
        f"{num_text(judge['consistency'], 1)}%, A chosen in {num_text(judge['a_rate'], 1)}% of readable "
        f"verdicts, {judge['unreadable']} of {judge['judgments']} unreadable."),
        Table(["system", "vs reference [95% CI]", "consistent %", "vs SFT [95% CI]", "consistent %", "n"],
              [[system_label(s), ci_text(v.judge.get(REFERENCE), "win_rate", 1),
                num_text((v.judge.get(REFERENCE) or {}).get("consistency"), 1),
                ci_text(v.judge.get("sft"), "win_rate", 1),
                num_text((v.judge.get("sft") or {}).get("consistency"), 1),
                str((v.judge.get(REFERENCE) or {}).get("n", "–"))] for s, v in result.systems.items()])]


def _training_section(result: Result) -> list[Block]:
    rows = []
    for r in result.runs:
        t = r.training
        evals = [t.eval_first, t.eval_best, t.eval_last]
        rows.append([r.system, str(r.seed), str(t.steps),
                     f"{t.loss_start:.4f} → {t.loss_end:.4f}",
                     f"{t.pair_accuracy_start:.1f}% → {t.pair_accuracy_end:.1f}%",
                     str(t.held_out_pairs),
                     " → ".join(f"{e.loss:.4f}@{e.step}" for e in evals) if all(evals) else "–",
                     pct_text(t.sft_held_out_pair_accuracy) + " → " + pct_text(evals[2].pair_accuracy if evals[2] else None)])
    return [Heading("Training"), Para(
        "From each calibrate artifact's train_log.parquet: training loss and pair accuracy as means over the "
        "first → the last quarter of the steps; held-out loss at the first, the best and the last evaluation (value@step); held-out pair "
        "accuracy of the SFT student (its log-probs from score_pairs) → the trained student's at the last step. "
        "Losses are in each system's own units."),
        Table(["system", "seed", "steps", "training loss", "training pair acc.", "held-out pairs",
               "held-out loss first → best → last", "held-out pair acc."], rows,
              ["l", "r", "r", "r", "r", "r", "r", "r"])]


def _tuning_section(exp: Experiment) -> list[Block]:
    t = exp.tuning
    grids = "; ".join(f"{system}: " + ", ".join(f"{k} ∈ {v}" for k, v in t.system_grid(system).items())
                      for system in t.tuned_systems())
    blocks: list[Block] = [Heading("Tuning"), Para(
        (f"Grids, each system over every point of its own (the same number of points each): {grids}. "
         f"`plad table --tune` scores the points on {t.rows} labeled rows outside every split, never on dev; "
         "its results are the tuning table's own artifact." if (t.grid or t.grids) else "No grid.")
        + (f" Chosen: {', '.join(f'{k}={v}' for k, v in t.chosen.items())}." if t.chosen else ""))]
    return blocks


def _provenance_section(exp: Experiment, extra: list[str], result: Result) -> list[Block]:
    return [Heading("Provenance"), Para(
        "Overrides of every run: " + (", ".join([*exp.overrides, *extra]) or "none") + "; then each system's and "
        "train.optim.seed=<seed>. Artifacts (data/artifacts/<stage>/<key>):"),
        Table(["artifact", "key"], [[k, v] for k, v in result.keys.items()], ["l", "l"])]


def table_blocks(exp: Experiment, extra: list[str], result: Result,
                 report_path: Path) -> tuple[list[Block], list[Block]]:
    """(report blocks, summary blocks): the report's sections; the summary is the headline table."""
    headline = headline_table(result)
    blocks = [*_intro(exp, result), Heading("Results"), *judge_validity_blocks(result), headline,
              Heading("Discussion"), *[Para(p) for p in discussion(result)],
              *_metric_sections(result), *_per_seed_section(result), *_bucket_section(result),
              *_calibration_section(result), *_judge_section(result), *_training_section(result),
              *curation_blocks_from_stats(getattr(result, "curation", None))[0],
              *_tuning_section(exp), *_provenance_section(exp, extra, result)]
    summary = [Heading(f"PLaD table: {exp.name}", 2), *judge_validity_blocks(result), headline,
               Para(f"Full report: {report_path}")]
    return blocks, summary
