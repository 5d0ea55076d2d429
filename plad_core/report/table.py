"""The table experiment's report: the headline table, a discussion computed from the numbers, and one
section per view of them (per seed, by length, calibration, judge, training, tuning, provenance).

It reads a ``plad_core.experiments.table_results.TableResults`` and the experiment it came from (a
``plad_core.experiments.table.TableExperiment``); the metric blocks inside are plad_core.evaluation's
dicts, formatted by ``plad_core.report.text``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from plad_core.evaluation.judge import REFERENCE
from plad_core.report.blocks import Block, Heading, Image, Para, Table
from plad_core.report.plots import bucket_plot
from plad_core.report.text import SYSTEM_LABELS, ci_text, difference_text, num_text, p_text

Result = Any    # plad_core.experiments.table_results.TableResults
Experiment = Any  # plad_core.experiments.table.TableExperiment


def _label(system: str) -> str:
    return SYSTEM_LABELS.get(system, system)


def _delta(p: Optional[dict[str, Any]], n_resamples: int) -> str:
    return f"{difference_text(p)}, p {p_text(p['p_value'], n_resamples)}" if p else "–"


def _verdict(p: dict[str, Any], better: str, worse: str) -> str:
    if p["low"] > 0:
        return better
    if p["high"] < 0:
        return worse
    return "no detectable difference (the CI includes 0)"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1f}%"


def headline_table(result: Result) -> Table:
    """system | ROUGE-1 | ROUGE-2 | ROUGE-L [CI] | Δ ROUGE-L vs SFT [CI], p | win rate vs reference | vs SFT | mean tokens."""
    n = result.settings.n_resamples
    rows = []
    for system, s in result.systems.items():
        m, judge = s.metrics, s.judge
        rows.append([_label(system), num_text(m["rouge1"]), num_text(m["rouge2"]), ci_text(m, "rougeL"),
                     _delta(s.vs_sft, n), ci_text(judge.get(REFERENCE), "win_rate", 1),
                     ci_text(judge.get("sft"), "win_rate", 1), num_text(m["mean_output_tokens"], 1)])
    return Table(["system", "ROUGE-1", "ROUGE-2", "ROUGE-L [95% CI]", "Δ ROUGE-L vs SFT [95% CI], p",
                  "win rate vs reference", "win rate vs SFT", "mean tokens"], rows)


# --- the discussion, one function per paragraph (or group of paragraphs) ---------------------------

def _trained(result: Result) -> dict[str, Any]:
    return {s: v for s, v in result.systems.items() if v.kind == "trained"}


def _against_baselines(result: Result) -> list[str]:
    n, trained = result.settings.n_resamples, _trained(result)
    against_sft = [f"{s} ({v.loss}) {_delta(v.vs_sft, n)}: {_verdict(v.vs_sft, 'better', 'worse')}"
                   for s, v in trained.items()]
    out = ["Against the SFT student (ROUGE-L, per-row mean over seeds, paired bootstrap): " + "; ".join(against_sft) + "."]
    if result.comparisons:
        lost = [c for c in result.comparisons if not c["low"] > 0]
        lines = [f"{c['a']} − {c['b']} {_delta(c, n)}: {_verdict(c, c['a'] + ' better', c['b'] + ' better')}"
                 for c in result.comparisons]
        plain = ("PLaD beats every baseline here." if not lost else
                 f"PLaD does not beat {len(lost)} of {len(result.comparisons)} PLaD-baseline pairings at this scale.")
        out.append("PLaD against each baseline (ROUGE-L): " + "; ".join(lines) + ". " + plain)
    if trained:
        best = max(trained, key=lambda s: trained[s].metrics["rougeL"])
        out.append(f"Highest mean ROUGE-L among the trained systems: {best} ({ci_text(trained[best].metrics, 'rougeL')}).")
    return out


def _pair_quality_paragraph(result: Result) -> list[str]:
    pairs, n = result.pairs, result.settings.n_resamples
    if pairs.chosen_better is None:
        return []
    share = pairs.chosen_better
    judgement = ("so PLaD's assumption y_T ≻ y_S mostly holds by this measure" if share >= 60 else
                 f"so by this measure PLaD's assumption y_T ≻ y_S does not hold for {100 - share:.0f}% of the "
                 "pairs (ties included): training pushes the student toward outputs that are often no better "
                 "than its own")
    return [
        f"Is the teacher's output really better? In the {pairs.with_reference} training pairs with a human "
        f"reference, y_T scores a higher ROUGE-L against the reference than y_S in {share:.1f}% of pairs "
        f"(equal {pairs.ties:.1f}%, lower {pairs.rejected_better:.1f}%); mean ROUGE-L {pairs.chosen_rougeL:.2f} "
        f"vs {pairs.rejected_rougeL:.2f}, difference {_delta(asdict(pairs), n)}; {judgement}. y_T has "
        f"{pairs.chosen_tokens} tokens on average, y_S {pairs.rejected_tokens}."]


def _teacher_paragraph(result: Result) -> str:
    teacher = result.systems["teacher"]
    judged = teacher.judge.get("sft")
    return (
        f"On the dev split the teacher's greedy outputs − the SFT student's, ROUGE-L: "
        f"{_delta(teacher.vs_sft, result.settings.n_resamples)}"
        + (f"; the judge's win rate of the teacher against the SFT student is "
           f"{ci_text(judged, 'win_rate', 1)} (50 = no preference; {judged['consistency']:.0f}% of the pairs "
           "judged the same in both orders)."
           if judged else "; no judge ran (eval.judge.enabled=false)."))


def _training_paragraphs(result: Result) -> list[str]:
    trained = _trained(result)
    if not trained:
        return []
    accuracy = [f"{s} {_pct(v.training.sft_held_out_pair_accuracy)} → {_pct(v.training.held_out_pair_accuracy)}"
                f" (training batches, last quarter of the steps {_pct(v.training.pair_accuracy_end)})"
                for s, v in trained.items()]
    held = sorted({h for v in trained.values() for h in v.training.held_out_pairs})
    rises = [f"{s} {v.training.runs_with_eval_loss_rise} of {len(v.seeds)} runs "
             f"(mean rise {num_text(v.training.eval_loss_rise, 3)})" for s, v in trained.items()]
    return [
        f"Pair accuracy (y_T more likely than y_S per token): the SFT student already ranks y_T first on "
        f"{_pct(result.pairs.sft_pair_accuracy)} of all pairs. Held-out pairs, SFT → after training (mean over seeds): "
        + "; ".join(accuracy) + f". Held-out pairs per run: {', '.join(map(str, held))}"
        + (" — too few to measure accuracy finely (steps of 1/n)." if held and held[0] < 30 else "."),
        "Overfitting: runs whose held-out loss ended above its lowest evaluated value: " + "; ".join(rises)
        + ". A rise with a falling training loss means the student fits these pairs, not the task; "
          "per-run curves (first, best and last evaluation) are in Training below."]


def _length_paragraph(result: Result) -> str:
    lengths = [f"{_label(s)} {num_text(v.metrics['mean_output_tokens'], 1)} tokens, "
               f"{num_text(v.repeated_trigrams, 1)}% repeated" for s, v in result.systems.items()]
    return (
        "Length and repetition (dev outputs: mean tokens; share of word 3-grams that repeat an earlier 3-gram of "
        "the same output, mean over outputs and seeds): " + "; ".join(lengths) + ". A student that moves toward "
        "the teacher's length while its repeated share rises has learned the teacher's length, not its content, "
        "and loops until the token limit; ROUGE-L F1 hardly penalises such loops, so read it beside this.")


def _change(value: Optional[float], sft: Optional[float]) -> Optional[float]:
    return None if value is None or sft is None else value - sft


def _calibration_paragraph(result: Result) -> list[str]:
    sft_cal = result.systems["sft"].calibration
    changes = [f"{s} ρ {num_text(v.calibration.spearman, 3, True)} (Δ "
               f"{num_text(_change(v.calibration.spearman, sft_cal.spearman), 3, True)}), "
               f"ECE {num_text(v.calibration.ece, 3)} (Δ "
               f"{num_text(_change(v.calibration.ece, sft_cal.ece), 3, True)})"
               for s, v in _trained(result).items() if v.calibration] if sft_cal else []
    if not changes:
        return []
    return [f"Calibration, mean over seeds against the SFT student's ρ {num_text(sft_cal.spearman, 3, True)} "
            f"and ECE {num_text(sft_cal.ece, 3)}: " + "; ".join(changes) + ". PLaD's aim is a higher ρ "
            "(log P̄ ranks the student's own samples by quality); the per-seed CIs in Calibration show how "
            "much of a change is noise."]


def _scale_paragraph(result: Result) -> str:
    settings = result.settings
    return (
        f"Scale: {settings.dev_rows} dev rows, {result.pairs.pairs} pairs, {len(settings.seeds)} seed(s); CIs are "
        "over dev rows and hold the row sampling, not the seed-to-seed spread (see Per seed). Any tuning was done "
        "on this dev split, so a tuned system's dev numbers are optimistic."
        + (" The judge is the embedded SmolLM2-135M teacher, a weak judge: its win rates are not evidence of quality."
           if settings.judge and str(settings.judge.model).startswith("embedded:") else ""))


def discussion(result: Result) -> list[str]:
    """The discussion's paragraphs, each computed from table.json's numbers."""
    return [*_against_baselines(result), *_pair_quality_paragraph(result), _teacher_paragraph(result),
            *_training_paragraphs(result), _length_paragraph(result), *_calibration_paragraph(result),
            _scale_paragraph(result)]


# --- the report's sections, in order -----------------------------------------------------------------

def _intro(exp: Experiment, result: Result) -> list[Block]:
    settings = result.settings
    described = ", ".join(f"{s.name} ({' '.join(s.overrides) or 'no overrides'})" for s in exp.systems)
    return [
        Heading(f"PLaD table: {exp.name} ({exp.config})", 1),
        Para(
            f"Every trained system starts from the same SFT student and the same {result.pairs.pairs} "
            f"pseudo-preference pairs; seeds {', '.join(map(str, settings.seeds))} (train.optim.seed). Systems: "
            f"{described}. Dev split: {settings.dev_rows} rows, greedy outputs, ROUGE F1 (x100) against the human "
            "references. A trained system's numbers are its per-row metrics averaged over seeds; brackets are 95% "
            f"bootstrap CIs over dev rows ({settings.n_resamples} resamples); Δ vs SFT is the paired per-row "
            "difference with its two-sided paired-bootstrap p-value; win rates (x100) are the judge's, ties "
            "counted half.")]


def _metric_sections(result: Result) -> list[Block]:
    """PLaD against each baseline, and every metric with its CI."""
    n, blocks = result.settings.n_resamples, []
    if result.comparisons:
        blocks += [Heading("PLaD against each baseline"), Table(
            ["PLaD system", "baseline", "Δ ROUGE-L [95% CI], p", "n"],
            [[c["a"], c["b"], _delta(c, n), str(c["n"])] for c in result.comparisons])]
    return blocks + [Heading("Every metric with its CI"), Table(
        ["system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "mean tokens", "n"],
        [[_label(s), ci_text(v.metrics, "rouge1"), ci_text(v.metrics, "rouge2"),
          ci_text(v.metrics, "rougeL"), ci_text(v.metrics, "mean_output_tokens", 1),
          str(v.metrics["n"])] for s, v in result.systems.items()])]


def _per_seed_section(result: Result) -> list[Block]:
    n, per_seed = result.settings.n_resamples, []
    for r in result.runs:
        t = r.training
        c = r.calibration or {}
        per_seed.append([r.system, str(r.seed), ci_text(r.metrics, "rougeL"), _delta(r.vs_sft, n),
                         ci_text(r.judge.get(REFERENCE), "win_rate", 1),
                         ci_text(r.judge.get("sft"), "win_rate", 1), num_text(c.get("spearman"), 3, True),
                         num_text(c.get("ece"), 3),
                         f"{_pct(t.sft_held_out_pair_accuracy)} → {_pct(t.eval_last.pair_accuracy if t.eval_last else None)}",
                         r.calibrate_key])
    return [Heading("Per seed"),
            Table(["system", "seed", "ROUGE-L [95% CI]", "Δ vs SFT, p", "win vs reference", "win vs SFT",
                   "Spearman ρ", "ECE", "held-out pair acc. SFT → after", "calibrate key"], per_seed,
                  ["l", "r", "r", "r", "r", "r", "r", "r", "r", "l"])]


def _bucket_section(result: Result) -> list[Block]:
    buckets, systems = result.length_buckets, result.systems
    names = list(systems)
    return [Heading("ROUGE-L by reference length"), Para(
        f"Dev rows bucketed by the reference's length in words, edges {buckets['edges']} ({buckets['rule']}); "
        "seed-mean ROUGE-L with 95% CIs."),
        Table(["bucket", "n", *[_label(s) for s in names]],
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
            rows.append([_label(s), label.split("@")[-1] if "@" in label else "–",
                         ci_text(p, "spearman", 3, signed=True),
                         f"{p['prompts_used']} / {p['prompts_skipped']}", num_text(p["ece"], 3)])
        rows.append([f"{_label(s)}: mean", "", num_text(c.spearman, 3, True), "", num_text(c.ece, 3)])
    return [Heading("Calibration"), Para(
        f"K = {settings.calibration_samples} samples per prompt on the first {settings.calibration_rows or 'all'} "
        "dev rows, each scored by the student that wrote it (plad_core.calibration): Spearman ρ between log P̄ "
        "and ROUGE-L within a prompt, averaged over prompts (CI over prompts), and the ECE of exp(log P̄) as the "
        "probability of beating the prompt's median sample."),
        Table(["student", "seed", "Spearman ρ [95% CI]", "prompts used / skipped", "ECE"], rows,
              ["l", "r", "r", "r", "r"])]


def _judge_section(result: Result) -> list[Block]:
    judge = result.judge
    if not judge:
        return [Heading("Judge win rate"), Para("Not run (eval.judge.enabled = false).")]
    j = result.settings.judge
    return [Heading("Judge win rate"), Para(
        f"Judge {j.model} ({j.backend}), prompt conf/{j.prompt}, {j.rows} dev rows; every output "
        "against the human reference and against the SFT student's, in both orders (a tie when the verdicts "
        "disagree). A trained system's per-row score is averaged over its seeds. Position consistency "
        f"{num_text(judge['consistency'], 1)}%, A chosen in {num_text(judge['a_rate'], 1)}% of readable "
        f"verdicts, {judge['unreadable']} of {judge['judgments']} unreadable."),
        Table(["system", "vs reference [95% CI]", "consistent %", "vs SFT [95% CI]", "consistent %", "n"],
              [[_label(s), ci_text(v.judge.get(REFERENCE), "win_rate", 1),
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
                     _pct(t.sft_held_out_pair_accuracy) + " → " + _pct(evals[2].pair_accuracy if evals[2] else None)])
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
    blocks: list[Block] = [Heading("Tuning (dev only)"), Para(
        f"Status: {t.status}. " + (f"Grid for {t.system}: " + "; ".join(f"{k} ∈ {v}" for k, v in t.grid.items()) + "."
                                   if t.grid else "No grid.")
        + (f" Chosen: {', '.join(f'{k}={v}' for k, v in t.chosen.items())}." if t.chosen else ""))]
    if t.results:
        blocks.append(Table(["grid point", "dev ROUGE-L"], [[k, f"{v:.2f}"] for k, v in t.results.items()]))
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
    blocks = [*_intro(exp, result), Heading("Results"), headline,
              Heading("Discussion"), *[Para(p) for p in discussion(result)],
              *_metric_sections(result), *_per_seed_section(result), *_bucket_section(result),
              *_calibration_section(result), *_judge_section(result), *_training_section(result),
              *_tuning_section(exp), *_provenance_section(exp, extra, result)]
    summary = [Heading(f"PLaD table: {exp.name}", 2), headline, Para(f"Full report: {report_path}")]
    return blocks, summary
