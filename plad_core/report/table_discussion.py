"""The table report's discussion: one paragraph per question, each computed from table.json's numbers
(a ``plad_core.experiments.table_data.TableResults``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from plad_core.report.judge import validity_text
from plad_core.report.text import (
    ci_text,
    delta_text,
    n_mde_text,
    num_text,
    pct_text,
    power_text,
    system_label,
)

Result = Any  # plad_core.experiments.table_data.TableResults


def _verdict(p: dict[str, Any], better: str, worse: str) -> str:
    if p["low"] > 0:
        return better
    if p["high"] < 0:
        return worse
    return "no detectable difference (the CI includes 0)"


ROUGE_NAMES = {"rougeL": "ROUGE-L", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2"}


def standing(compared: dict[str, Optional[dict[str, Any]]]) -> str:
    """Where one system stands against another over every ROUGE variant's paired CI: a gain on one
    variant with a loss on another (a longer output that shares less content) is mixed, not better."""
    better = [ROUGE_NAMES[m] for m, c in compared.items() if c and c["low"] > 0]
    worse = [ROUGE_NAMES[m] for m, c in compared.items() if c and c["high"] < 0]
    if better and worse:
        return (f"mixed: better on {', '.join(better)} but worse on {', '.join(worse)}, so not a better "
                "student by ROUGE")
    if better or worse:
        named = ", ".join(better or worse)
        rest = "" if len(better or worse) == len(compared) else ", no detectable difference on the others"
        return f"{'better' if better else 'worse'} on {named}{rest}"
    return "no detectable difference on any ROUGE variant"


def _every_rouge(rouge_l: Optional[dict[str, Any]], others: dict[str, Any]) -> dict[str, Any]:
    return {"rougeL": rouge_l, **others}


def _other_rouge_text(others: dict[str, Any], n: int) -> str:
    return "; ".join(f"{ROUGE_NAMES[m]} {delta_text(c, n)}" for m, c in others.items())


def _other_rouge_sentences(result: Result) -> list[str]:
    """ROUGE-1 and ROUGE-2 beside ROUGE-L, against SFT and in each PLaD-baseline pairing, with the
    standing over all three."""
    n, out = result.settings.n_resamples, []
    trained = {s: v for s, v in _trained(result).items() if v.vs_sft_by_metric}
    if trained:
        out.append("The same paired test on ROUGE-1 and ROUGE-2, against the SFT student: " + "; ".join(
            f"{s} {_other_rouge_text(v.vs_sft_by_metric, n)}: {standing(_every_rouge(v.vs_sft, v.vs_sft_by_metric))}"
            for s, v in trained.items()) + ".")
    pairings = [c for c in result.comparisons if c.get("by_metric")]
    if pairings:
        out.append("Against each baseline on ROUGE-1 and ROUGE-2: " + "; ".join(
            f"{c['a']} − {c['b']} {_other_rouge_text(c['by_metric'], n)}: "
            f"{standing(_every_rouge(c, c['by_metric']))}" for c in pairings) + ".")
    return out


def _trained(result: Result) -> dict[str, Any]:
    return {s: v for s, v in result.systems.items() if v.kind == "trained"}


def _against_baselines(result: Result) -> list[str]:
    n, trained = result.settings.n_resamples, _trained(result)
    against_sft = [f"{s} ({v.loss}) {delta_text(v.vs_sft, n)} ({n_mde_text(v.vs_sft)}): "
                   f"{_verdict(v.vs_sft, 'better', 'worse')}" for s, v in trained.items()]
    out = ["Against the SFT student (ROUGE-L, per-row mean over seeds, paired bootstrap): " + "; ".join(against_sft) + "."]
    if result.comparisons:
        lost = [c for c in result.comparisons if not c["low"] > 0]
        lines = [f"{c['a']} − {c['b']} {delta_text(c, n)} ({n_mde_text(c)}): "
                 f"{_verdict(c, c['a'] + ' better', c['b'] + ' better')}" for c in result.comparisons]
        mixed = [c for c in result.comparisons if any(m and m["high"] < 0 for m in c.get("by_metric", {}).values())]
        plain = (f"PLaD does not beat {len(lost)} of {len(result.comparisons)} PLaD-baseline pairings at this scale."
                 if lost else "PLaD beats every baseline on ROUGE-L" + (
                     f", but is worse on ROUGE-1 or ROUGE-2 in {len(mixed)} of {len(result.comparisons)} pairings "
                     "(below), so ROUGE-L alone does not make it the better student." if mixed else "."))
        out.append("PLaD against each baseline (ROUGE-L): " + "; ".join(lines) + ". " + plain)
    out += _other_rouge_sentences(result)
    out += _power_sentence([v.vs_sft for v in trained.values()] + list(result.comparisons))
    if trained:
        best = max(trained, key=lambda s: trained[s].metrics["rougeL"])
        out.append(f"Highest mean ROUGE-L among the trained systems: {best} ({ci_text(trained[best].metrics, 'rougeL')}).")
    return out


def _power_sentence(compared: list[Optional[dict[str, Any]]]) -> list[str]:
    """What the least powered of these paired comparisons can resolve (``power_text``)."""
    known = [c for c in compared if c and c.get("mde") is not None]
    if not known:
        return []
    weakest = max(known, key=lambda c: c["mde"])
    return [f"Power: {power_text(weakest)} (the largest MDE of the comparisons above; a CI that includes 0 "
            "at this n says the effect is smaller than that or absent, not that there is none)."]


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
        f"vs {pairs.rejected_rougeL:.2f}, difference {delta_text(asdict(pairs), n)} "
        f"({n_mde_text({'n': pairs.with_reference, 'mde': pairs.mde})}); {judgement}. y_T has "
        f"{pairs.chosen_tokens} tokens on average, y_S {pairs.rejected_tokens}." + _before_curation(result)]


def _before_curation(result: Result) -> str:
    """The pair-quality measure over the pairs before curate_pairs dropped any, for comparison."""
    built, n = getattr(result, "pairs_built", None), result.settings.n_resamples
    if built is None or built.chosen_better is None:
        return ""
    if built.pairs == result.pairs.pairs:
        return " Curation dropped no pair, so the pairs before it are the same."
    return (f" Before curation ({built.pairs} pairs, {built.pairs - result.pairs.pairs} of them dropped by "
            f"curate_pairs): y_T higher in {built.chosen_better:.1f}% (equal {built.ties:.1f}%, lower "
            f"{built.rejected_better:.1f}%), mean ROUGE-L {built.chosen_rougeL:.2f} vs {built.rejected_rougeL:.2f}, "
            f"difference {delta_text(asdict(built), n)}; y_T {built.chosen_tokens} tokens, y_S {built.rejected_tokens}.")


def _teacher_paragraph(result: Result) -> str:
    teacher = result.systems["teacher"]
    judged = teacher.judge.get("sft")
    return (
        f"On the dev split the teacher's greedy outputs − the SFT student's, ROUGE-L: "
        f"{delta_text(teacher.vs_sft, result.settings.n_resamples)} ({n_mde_text(teacher.vs_sft)})"
        + (f"; the judge's win rate of the teacher against the SFT student is "
           f"{ci_text(judged, 'win_rate', 1)} (50 = no preference; {judged['consistency']:.0f}% of the pairs "
           "judged the same in both orders)."
           if judged else "; no judge ran (eval.judge.enabled=false)."))


def _training_paragraphs(result: Result) -> list[str]:
    trained = _trained(result)
    if not trained:
        return []
    accuracy = [f"{s} {pct_text(v.training.sft_held_out_pair_accuracy)} → {pct_text(v.training.held_out_pair_accuracy)}"
                f" (training batches, last quarter of the steps {pct_text(v.training.pair_accuracy_end)})"
                for s, v in trained.items()]
    held = sorted({h for v in trained.values() for h in v.training.held_out_pairs})
    rises = [f"{s} {v.training.runs_with_eval_loss_rise} of {len(v.seeds)} runs "
             f"(mean rise {num_text(v.training.eval_loss_rise, 3)})" for s, v in trained.items()]
    return [
        f"Pair accuracy (y_T more likely than y_S per token): the SFT student already ranks y_T first on "
        f"{pct_text(result.pairs.sft_pair_accuracy)} of all pairs. Held-out pairs, SFT → after training (mean over seeds): "
        + "; ".join(accuracy) + f". Held-out pairs per run: {', '.join(map(str, held))}"
        + (" — too few to measure accuracy finely (steps of 1/n)." if held and held[0] < 30 else "."),
        "Overfitting: runs whose held-out loss ended above its lowest evaluated value: " + "; ".join(rises)
        + ". A rise with a falling training loss means the student fits these pairs, not the task; "
          "per-run curves (first, best and last evaluation) are in Training below."]


def _length_paragraph(result: Result) -> str:
    lengths = [f"{system_label(s)} {num_text(v.metrics['mean_output_tokens'], 1)} tokens, "
               f"{num_text(v.repeated_trigrams, 1)}% repeated"
               + (f", {pct_text(v.looping_outputs)} of outputs loops" if v.looping_outputs is not None else "")
               for s, v in result.systems.items()]
    threshold = result.settings.loop_threshold
    return (
        "Length and repetition (dev outputs: mean tokens; share of word 3-grams that repeat an earlier 3-gram of "
        "the same output, mean over outputs and seeds"
        + (f"; an output is a loop when that share is above {threshold:g}, the pairs.curate.max_repeat_share "
           "curation drops teacher outputs at" if threshold is not None else "")
        + "): " + "; ".join(lengths) + ". A student that moves toward "
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
        "over dev rows and hold the row sampling, not the seed-to-seed spread (see Per seed). "
        + ("These are the tuning slice's rows (labeled, outside every split), where the grid's values are chosen."
           if (getattr(result, "experiment", None) or {}).get("tune_rows") else
           "Nothing is chosen on these dev rows: `plad table --tune` scores its grid on a labeled slice outside every "
           "split, and values set by hand in the experiment file say there how they were chosen.")
        + (" The judge is the embedded SmolLM2-135M teacher, a weak judge: its win rates are not evidence of quality."
           if settings.judge and str(settings.judge.model).startswith("embedded:") else "")
        + (" " + validity_text(result.judge.get("validity"), settings.judge.task) if result.judge and settings.judge
           else ""))


def discussion(result: Result) -> list[str]:
    """The discussion's paragraphs, each computed from table.json's numbers."""
    return [*_against_baselines(result), *_pair_quality_paragraph(result), _teacher_paragraph(result),
            *_training_paragraphs(result), _length_paragraph(result), *_calibration_paragraph(result),
            _scale_paragraph(result)]
