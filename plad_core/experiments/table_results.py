"""The table's numbers (``plad_core.experiments.table_data``, table.json): seed means of the per-row
metrics, judge win rates over seeds, the pairs' quality, each run's training summary, and the rows of
the table built from them."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from plad_core.artifacts import Artifact
from plad_core.evaluation import metrics as eval_lib
from plad_core.evaluation.judge import pair_outcomes, win_rates
from plad_core.evaluation.likelihood_quality import evaluate_likelihood_quality
from plad_core.experiments.table import FIXED, PLAD_LOSSES, Run, TableExperiment
from plad_core.experiments.table_data import (
    EvalPoint,
    JudgeSettings,
    Metrics,
    PairQuality,
    RunRow,
    SystemCalibration,
    SystemRow,
    SystemTraining,
    TableResults,
    TableSettings,
    TrainingSummary,
)
from plad_core.rouge import ROUGE_TYPES, rouge_l_scores
from plad_core.stages import dev_frames, read_split
from plad_core.stats import bootstrap_ci, min_detectable_difference, paired_bootstrap
from plad_core.training.batches import split_held_out

METRIC_COLUMNS = [*ROUGE_TYPES, "output_tokens"]
OTHER_ROUGE = ("rouge1", "rouge2")  # compared beside ROUGE-L, the table's own metric


def by_metric(a: pd.DataFrame, b: pd.DataFrame, n: int, rs: int) -> dict[str, Metrics]:
    """ROUGE-1 and ROUGE-2 paired comparisons a − b (``paired_comparison``), beside ROUGE-L's."""
    return {m: eval_lib.paired_comparison(a, b, m, n, rs) for m in OTHER_ROUGE}


# --- per-row numbers ---------------------------------------------------------------------------------

def seed_mean(generations: pd.DataFrame, members: dict[str, list[str]]) -> pd.DataFrame:
    """One row per system and dev row: the per-row metrics averaged over the system's labels (its seeds)."""
    frames = []
    for system, labels in members.items():
        rows = generations[generations["system"].isin(labels)]
        frames.append(rows.groupby("id", sort=False)[METRIC_COLUMNS].mean().reset_index().assign(system=system))
    return pd.concat(frames, ignore_index=True)[["system", "id", *METRIC_COLUMNS]]


def judge_win_rates(outcomes: pd.DataFrame, members: dict[str, list[str]], n_resamples: int,
                    seed: int) -> dict[str, dict[str, Any]]:
    """Per system and opponent: the win rate (x100) of the per-row scores averaged over the system's seeds,
    with a bootstrap CI over rows. ``outcomes``: ``judge.pair_outcomes`` (system = label)."""
    out: dict[str, dict[str, Any]] = {}
    for system, labels in members.items():
        mine = outcomes[outcomes["system"].isin(labels)]
        for opponent, group in mine.groupby("opponent", sort=False):
            per_row = group.groupby("id")["score"].mean()
            ci = bootstrap_ci(list(per_row), n_resamples, seed)
            out.setdefault(system, {})[opponent] = {
                "win_rate": round(100 * ci.estimate, 2), "win_rate_low": round(100 * ci.low, 2),
                "win_rate_high": round(100 * ci.high, 2), "n": len(per_row),
                "consistency": round(100 * float(group["consistent"].mean()), 2)}
    return out


def pair_accuracy(frame: pd.DataFrame) -> Optional[float]:
    """Share (x100) of pairs whose y_T has the higher length-normalised log-likelihood log P̄ under the
    SFT student (the score_pairs reference columns): the training log's pair_accuracy before any step."""
    if frame.empty:
        return None
    chosen = frame["reference_chosen_logp"] / frame["chosen_scored_tokens"]
    rejected = frame["reference_rejected_logp"] / frame["rejected_scored_tokens"]
    return round(100 * float((chosen > rejected).mean()), 2)


def with_row_references(pairs: pd.DataFrame, data: Artifact) -> pd.DataFrame:
    """``pairs`` with ``reference`` set to each pair's unlabeled row's human reference (null where the row
    has none): the pairs carry none by default (``pairs.references``), and the table judges pair quality
    against the labels anyway, as an evaluation the losses never see."""
    rows = read_split(data, "unlabeled").set_index("id")["reference"]
    return pairs.assign(reference=pairs["id"].map(rows))


def pair_quality(pairs: pd.DataFrame, n_resamples: int, seed: int) -> PairQuality:
    """Is the teacher's output really better? ROUGE-L F1 (x100) of y_T and y_S against the human
    reference (``rouge_l_scores``) over the pairs that have one: shares where y_T is higher, equal, lower,
    and the mean difference with its paired-bootstrap CI. ``pairs["reference"]`` is the unlabeled row's
    own reference joined from the data for this diagnostic (``with_row_references``), never a training input."""
    has = pairs["reference"].fillna("").str.strip() != ""
    rows = pairs[has]
    out = PairQuality(pairs=len(pairs), with_reference=len(rows),
                      chosen_tokens=round(float(pairs["chosen_tokens"].mean()), 1),
                      rejected_tokens=round(float(pairs["rejected_tokens"].mean()), 1))
    if rows.empty:
        return out
    chosen, rejected = (t.numpy().astype(float) for t in rouge_l_scores(list(rows["chosen"]), list(rows["rejected"]),
                                                                         list(rows["reference"])))
    diff = chosen - rejected
    compared, mde = paired_bootstrap(chosen, rejected, n_resamples, seed), min_detectable_difference(diff)
    return dataclasses.replace(
        out, chosen_better=round(100 * float((diff > 0).mean()), 2), ties=round(100 * float((diff == 0).mean()), 2),
        rejected_better=round(100 * float((diff < 0).mean()), 2), chosen_rougeL=round(100 * float(chosen.mean()), 2),
        rejected_rougeL=round(100 * float(rejected.mean()), 2), difference=round(100 * compared.difference.estimate, 2),
        low=round(100 * compared.difference.low, 2), high=round(100 * compared.difference.high, 2),
        p_value=round(compared.p_value, 4), mde=None if mde is None else round(100 * mde, 2))


def built_pairs(pairs: Artifact, kept: pd.DataFrame) -> Optional[pd.DataFrame]:
    """The pairs before curation: ``kept`` (a curate_pairs artifact's pairs.parquet) followed by the ones
    it dropped (its ``dropped.parquet``, whatever the reason); None for pairs no curate_pairs stage produced."""
    if pairs.stage != "curate_pairs":
        return None
    dropped = pd.read_parquet(pairs.file("dropped.parquet"))
    return pd.concat([kept, dropped[kept.columns]], ignore_index=True) if len(dropped) else kept


def training_summary(log: pd.DataFrame, stats: dict[str, Any], sft_held_out: Optional[float]) -> TrainingSummary:
    """From one calibrate artifact's train_log.parquet and stats: training loss and pair accuracy as means
    over the first and the last quarter of the steps (single steps are batches of a few pairs), and the
    held-out evaluations (first, best by eval_loss, last) against the SFT student's pair accuracy on the
    same held-out pairs (``sft_held_out``)."""
    quarter = max(1, len(log) // 4)
    start, end = log.head(quarter), log.tail(quarter)
    out = TrainingSummary(steps=len(log), epochs=int(log["epoch"].max()) + 1, quarter_steps=quarter,
                          loss_start=round(float(start["loss"].mean()), 4),
                          loss_end=round(float(end["loss"].mean()), 4),
                          pair_accuracy_start=round(100 * float(start["pair_accuracy"].mean()), 2),
                          pair_accuracy_end=round(100 * float(end["pair_accuracy"].mean()), 2),
                          held_out_pairs=stats.get("held_out_pairs", 0), sft_held_out_pair_accuracy=sft_held_out)
    evaluated = log[log["eval_loss"].notna()] if "eval_loss" in log.columns else log.iloc[:0]
    if len(evaluated):
        best = evaluated.loc[evaluated["eval_loss"].idxmin()]
        points = [EvalPoint(step=int(row["step"]), loss=round(float(row["eval_loss"]), 4),
                            pair_accuracy=round(100 * float(row["eval_pair_accuracy"]), 2))
                  for row in (evaluated.iloc[0], best, evaluated.iloc[-1])]
        out = dataclasses.replace(out, eval_first=points[0], eval_best=points[1], eval_last=points[2],
                                  evaluations=len(evaluated),
                                  eval_loss_rise=round(float(evaluated.iloc[-1]["eval_loss"] - best["eval_loss"]), 4))
    return out


def _mean(values: list[Optional[float]], digits: int = 4) -> Optional[float]:
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), digits) if present else None


# --- rows of the table -----------------------------------------------------------------------------

def _run_row(r: Run, held_out: pd.DataFrame, generations: pd.DataFrame, sft: pd.DataFrame,
             outcomes: Optional[pd.DataFrame], calibration: dict[str, Metrics], n: int, rs: int) -> RunRow:
    mine = generations[generations["system"] == r.label]
    return RunRow(
        system=r.system, seed=r.seed, label=r.label, loss=r.loss,
        calibrate_key=r.calibrated.key, dev_outputs_key=r.outputs.key,
        metrics=eval_lib.system_summary(mine, n, rs), vs_sft=eval_lib.paired_comparison(mine, sft, "rougeL", n, rs),
        judge={o: w for o, w in judge_win_rates(outcomes, {r.label: [r.label]}, n, rs).get(r.label, {}).items()}
        if outcomes is not None else {},
        calibration=calibration.get(r.label),
        training=training_summary(pd.read_parquet(r.calibrated.file("train_log.parquet")),
                                  r.calibrated.manifest["stats"], pair_accuracy(held_out)))


def _system_calibration(labels: list[str], calibration: dict[str, Metrics]) -> Optional[SystemCalibration]:
    cal = [calibration.get(label) for label in labels]
    if not any(cal):
        return None
    return SystemCalibration(
        spearman=_mean([c["spearman"] for c in cal if c]), ece=_mean([c["ece"] for c in cal if c]),
        per_seed={label: {k: c[k] for k in ("spearman", "spearman_low", "spearman_high", "ece",
                                            "prompts_used", "prompts_skipped")}
                  for label, c in zip(labels, cal) if c})


def _system_training(t: list[TrainingSummary]) -> SystemTraining:
    return SystemTraining(
        sft_held_out_pair_accuracy=_mean([x.sft_held_out_pair_accuracy for x in t], 2),
        held_out_pair_accuracy=_mean([x.eval_last.pair_accuracy if x.eval_last else None for x in t], 2),
        pair_accuracy_end=_mean([x.pair_accuracy_end for x in t], 2),
        held_out_pairs=[x.held_out_pairs for x in t],
        runs_with_eval_loss_rise=sum(1 for x in t if (x.eval_loss_rise or 0) > 0),
        eval_loss_rise=_mean([x.eval_loss_rise for x in t]))


def _system_row(system: str, labels: list[str], loss: Optional[str], runs: list[RunRow], metrics: Metrics,
                generations: pd.DataFrame, vs_sft: Optional[tuple[Metrics, dict[str, Metrics]]],
                judge: dict[str, Metrics], calibration: dict[str, Metrics], loop_threshold: float) -> SystemRow:
    mine = [row for row in runs if row.system == system]
    # each output's repeated 3-gram share: its mean, and the share of outputs above the threshold where
    # curation calls a teacher output a loop no human writes (pairs.curate.max_repeat_share)
    repeats = generations.loc[generations["system"].isin(labels), "text"].map(eval_lib.repeated_ngram_share)
    rouge_l, others = vs_sft or (None, {})
    return SystemRow(
        kind=system if system in FIXED else "trained", loss=loss, plad=loss in PLAD_LOSSES,
        seeds=[row.seed for row in mine], metrics=metrics,
        repeated_trigrams=round(100 * float(repeats.mean()), 1),
        vs_sft=rouge_l, judge=judge, calibration=_system_calibration(labels, calibration),
        training=_system_training([row.training for row in mine]) if mine else None,
        vs_sft_by_metric=others, looping_outputs=round(100 * float((repeats > loop_threshold).mean()), 1))


def _settings(exp: TableExperiment, cfg: DictConfig, dev_rows: int, judgments: Optional[pd.DataFrame]) -> TableSettings:
    e = cfg.eval
    judge = None if judgments is None else JudgeSettings(
        backend=e.judge.backend, prompt=e.judge.prompt, rows=int(judgments["id"].nunique()),
        model=e.judge.api.model if e.judge.backend == "openai" else e.judge.model, task=cfg.data.task)
    return TableSettings(n_resamples=e.n_resamples, seed=e.seed, level=0.95, dev_rows=dev_rows, seeds=list(exp.seeds),
                         calibration_samples=e.calibration_samples, calibration_rows=e.calibration_rows, judge=judge,
                         loop_threshold=cfg.pairs.curate.max_repeat_share)


def _length_buckets(per_system: dict[str, Any]) -> dict[str, Any]:
    buckets = per_system["length_buckets"]
    return {k: buckets[k] for k in ("edges", "rule", "unit")} | {
        "buckets": [{k: b[k] for k in ("name", "min_words", "max_words", "n", "systems")} for b in buckets["buckets"]]}


def table_results(exp: TableExperiment, cfg: DictConfig, data: Artifact, pairs: Artifact, before: Artifact,
                  outputs: dict[str, Artifact], runs: list[Run], judged: Optional[Artifact],
                  evaluated: Optional[Artifact] = None) -> TableResults:
    """table.json: per system (seed-mean rows), per run (per seed), comparisons, pairs and judge. The
    outputs are of ``evaluated``'s dev split (a tuning table's ``tune_data``), ``data``'s by default."""
    e = cfg.eval
    n, rs = e.n_resamples, e.seed
    dev = read_split(evaluated or data, "dev")[["id", "reference"]]
    frames = {label: dev_frames(a, label) for label, a in outputs.items()}
    generations = pd.concat([g for g, _ in frames.values()], ignore_index=True)
    members = {"teacher": ["teacher"], "sft": ["sft"],
               **{s.name: [f"{s.name}@{seed}" for seed in exp.seeds] for s in exp.systems}}
    averaged = seed_mean(generations, members)
    no_samples = pd.DataFrame(columns=["system", "id", "sample_index", "logp_mean", "rougeL"])
    per_system = eval_lib.evaluation_metrics(averaged, dev, no_samples, list(e.length_buckets), n, rs)
    by_system = {s: averaged[averaged["system"] == s] for s in members}
    judgments = pd.read_parquet(judged.file("judgments.parquet")) if judged else None
    outcomes = pair_outcomes(judgments) if judgments is not None else None
    wins = judge_win_rates(outcomes, members, n, rs) if outcomes is not None else {}
    calibration = {label: evaluate_likelihood_quality(samples, e.calibration_bins, n, rs, with_bins=False)
                   for label, (_, samples) in frames.items() if samples is not None and len(samples)}

    kept = pd.read_parquet(pairs.file("pairs.parquet"))
    built = built_pairs(pairs, kept)
    referenced = with_row_references(kept if built is None else built, data)  # kept pairs first
    scored = referenced.iloc[:len(kept)].merge(
        pd.read_parquet(before.file("scores.parquet")), on=["id", "sample_index"], how="left", validate="one_to_one")
    run_rows = []
    for r in runs:
        held_out = split_held_out(scored, r.cfg.train.eval_fraction, r.cfg.train.eval_max_pairs, r.cfg.train.optim.seed)[1]
        run_rows.append(_run_row(r, held_out, generations, by_system["sft"], outcomes, calibration, n, rs))
    loss_of, sft = {r.system: r.loss for r in runs}, by_system["sft"]
    systems = {system: _system_row(
        system, labels, loss_of.get(system), run_rows, per_system["systems"][system], generations,
        None if system == "sft" else (eval_lib.paired_comparison(by_system[system], sft, "rougeL", n, rs),
                                      by_metric(by_system[system], sft, n, rs)),
        wins.get(system, {}), calibration, cfg.pairs.curate.max_repeat_share) for system, labels in members.items()}

    plad = [s for s, v in systems.items() if v.plad]
    baselines = [s for s, v in systems.items() if v.kind == "trained" and not v.plad]
    comparisons = [{"a": a, "b": b, **eval_lib.paired_comparison(by_system[a], by_system[b], "rougeL", n, rs),
                    "by_metric": by_metric(by_system[a], by_system[b], n, rs)} for a in plad for b in baselines]
    return TableResults(
        experiment=asdict(exp), settings=_settings(exp, cfg, len(dev), judgments), systems=systems,
        comparisons=comparisons, length_buckets=_length_buckets(per_system), runs=run_rows,
        pairs=dataclasses.replace(pair_quality(scored, n, rs), sft_pair_accuracy=pair_accuracy(scored)),
        judge=None if judgments is None else {k: v for k, v in win_rates(judgments, n, rs).items() if k != "vs"},
        curation=pairs.manifest.get("stats") if pairs.stage == "curate_pairs" else None,
        pairs_built=None if built is None else pair_quality(referenced, n, rs))
