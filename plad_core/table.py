"""The paper's table at our scale: PLaD against SFT, SeqKD, token KD and DPKD, trained from the same
SFT student on the same pseudo-preference pairs, over several seeds, with every dev metric.

An experiment file (``conf/experiments/tldr_table.yaml``, schema ``TableExperiment``) names a pipeline
config, overrides for every run, the seeds and the trained systems (a name and ``train.*`` overrides
each). The SFT student and the teacher are always in the table: every Δ and every win rate "vs SFT"
is against the former. ``run_table``:

1. builds the shared stages once (prepare_data .. build_pairs) and the SFT student's log-probs of
   every pair (score_pairs with the reference scorer DPO reads: the pair accuracy before training);
2. for each system and seed, score_pairs (reused unless the loss scores with the teacher) and
   calibrate with ``exp.overrides + extra + system.overrides + [train.optim.seed=<seed>]``;
3. one ``dev_outputs`` artifact per model (teacher, SFT once, each trained student): greedy outputs
   with ROUGE and the student's scored calibration samples, reused by every run that shares them;
4. the judge (``eval.judge``; off with ``eval.judge.enabled=false``) on all of them at once;
5. commits ``<artifacts_root>/table/<key>/``: table.json (``table_results``), report.md, report.html
   (with a discussion computed from the numbers) and summary.md (the headline table).

Trained systems are summarised by per-row metrics averaged over seeds, with 95% bootstrap CIs over
dev rows; the per-seed numbers are in table.json and the report. ``tuning_experiment`` turns the
experiment's ``tuning`` grid into a table of its own (one seed, no judge, no calibration sampling).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
from omegaconf import MISSING, DictConfig

from plad_core import evaluate as eval_lib
from plad_core import report
from plad_core.artifacts import Artifact, ArtifactStore, artifact_key
from plad_core.calibration import evaluate_calibration
from plad_core.config import ConfigError, config_slice, load_config
from plad_core.experiments import load_experiment_file
from plad_core.judge import REFERENCE, pair_outcomes, win_rates
from plad_core.losses import rouge_l_scores
from plad_core.models import set_threads
from plad_core.pair_training import split_held_out
from plad_core.stages import (DEPENDENCIES, RUNNERS, check_train_loss, dev_frames, run_dev_outputs,
                              run_judgments)
from plad_core.stats import bootstrap_ci, paired_bootstrap

STAGE, VERSION = "table", 2
SHARED_STAGES = ("prepare_data", "init_student", "sft_student", "sample_teacher", "sample_student", "build_pairs")
FIXED = ("teacher", "sft")            # always in the table, under these names
PLAD_LOSSES = ("ranking", "margin")   # the systems compared with every baseline
REFERENCE_SCORER = "train.loss=dpo"   # a config whose score_pairs holds the SFT student's log-probs of y_T, y_S


@dataclass
class TableSystem:
    name: str = MISSING
    overrides: list[str] = field(default_factory=list)  # train.* only: all start from one SFT student and one set of pairs


@dataclass
class Tuning:
    """A dev-only grid for one system (``plad table --tune``), and what it found once run."""
    system: str = ""                                        # the tuned system: its overrides, then each grid point's
    grid: dict[str, list[Any]] = field(default_factory=dict)  # train.* key -> values (every combination runs)
    seed: int = 0
    status: str = "not run yet"
    results: dict[str, float] = field(default_factory=dict)  # grid point -> dev ROUGE-L, once run
    chosen: dict[str, Any] = field(default_factory=dict)     # the values taken into the system's overrides


@dataclass
class TableExperiment:
    name: str = "tldr_table"
    config: str = "demo"                                    # the pipeline config every run starts from
    overrides: list[str] = field(default_factory=list)      # dotlist applied to every run (the judge: eval.judge.*)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # train.optim.seed of each trained system
    systems: list[TableSystem] = field(default_factory=list)
    tuning: Tuning = field(default_factory=Tuning)


def check_experiment(exp: TableExperiment, where: str) -> TableExperiment:
    """Clear errors for what the schema cannot express: distinct seeds and names, train.* overrides only."""
    if not exp.seeds or len(set(exp.seeds)) != len(exp.seeds):
        raise ConfigError(f"{where}: seeds {exp.seeds} must be a non-empty list of distinct integers")
    names = [s.name for s in exp.systems]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{where}: systems need distinct names, got {names}")
    for i, system in enumerate(exp.systems):
        if system.name.lower() in FIXED or "@" in system.name or not system.name.strip():
            raise ConfigError(f"{where}: systems[{i}].name '{system.name}': the teacher and SFT are always in the "
                              "table under their own names, and a name may not contain '@'")
        for item in system.overrides:
            key = item.split("=", 1)[0]
            if "=" not in item or not key.startswith("train.") or key == "train.optim.seed":
                raise ConfigError(f"{where}: systems[{i}] ({system.name}) override '{item}': systems differ only in "
                                  "training, so each override is train.<key>=<value> (not train.optim.seed: "
                                  "that is the experiment's seeds); put others in the experiment's overrides")
    t = exp.tuning
    if t.grid:
        if t.system not in names:
            raise ConfigError(f"{where}: tuning.system '{t.system}' is not one of the systems {names}")
        bad = [k for k, v in t.grid.items() if not k.startswith("train.") or k == "train.optim.seed" or not v]
        if bad:
            raise ConfigError(f"{where}: tuning.grid keys {bad} must be train.* keys (not the seed) with values")
    return exp


def load_experiment(name_or_path: str) -> TableExperiment:
    """A table experiment by name under conf/experiments/ or by YAML path, strictly."""
    exp, path = load_experiment_file(TableExperiment, name_or_path)
    return check_experiment(exp, str(path))


def run_overrides(exp: TableExperiment, system: TableSystem, seed: int, extra: Optional[list[str]] = None) -> list[str]:
    """The dotlist of one trained run: the experiment's, ``extra``, the system's, then its seed."""
    return [*exp.overrides, *(extra or []), *system.overrides, f"train.optim.seed={seed}"]


def _point_label(keys: list[str], values: tuple[Any, ...]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, values))


def tuning_experiment(exp: TableExperiment) -> TableExperiment:
    """The experiment's tuning grid as a table: one system per grid point (the tuned system's overrides,
    then the point's), ``tuning.seed`` only, without calibration sampling or judge (ROUGE-L decides)."""
    t = exp.tuning
    if not t.grid:
        raise ConfigError(f"experiment {exp.name}: no tuning.grid to run")
    tuned = next(s for s in exp.systems if s.name == t.system)
    keys = list(t.grid)
    systems = [TableSystem(_point_label(keys, values), [*tuned.overrides, *(f"{k}={v}" for k, v in zip(keys, values))])
               for values in itertools.product(*(t.grid[k] for k in keys))]
    return check_experiment(TableExperiment(
        name=f"{exp.name}_tuning", config=exp.config, seeds=[t.seed], systems=systems,
        overrides=[*exp.overrides, "eval.calibration_samples=0", "eval.judge.enabled=false"]), f"{exp.name} tuning")


# --- running ---------------------------------------------------------------------------------------

STEPS: dict[str, Callable[..., Artifact]] = {**RUNNERS, "dev_outputs": run_dev_outputs, "judgments": run_judgments}
StepFn = Callable[..., Artifact]  # (step name, cfg, store, *upstream, label=...) -> Artifact


def run_plain(name: str, cfg: DictConfig, store: ArtifactStore, *upstream: Any, label: str = "") -> Artifact:
    """One step as a plain call (``STEPS``); the flow passes its Prefect tasks instead (``label`` names the run)."""
    return STEPS[name](cfg, store, *upstream)


@dataclass(frozen=True)
class Run:
    system: str
    seed: int
    loss: str
    cfg: DictConfig
    calibrated: Artifact
    outputs: Artifact

    @property
    def label(self) -> str:
        return f"{self.system}@{self.seed}"


def run_table(exp: TableExperiment, extra: Optional[list[str]] = None, step: StepFn = run_plain) -> Artifact:
    """Every system and seed of ``exp`` through ``step`` (plain calls or the flow's tasks), then the
    table artifact. Shared stages, SFT and teacher outputs are built once (or reused from the store)."""
    extra = list(extra or [])
    base = load_config(exp.config, [*exp.overrides, *extra])
    configs = {(s.name, seed): load_config(exp.config, run_overrides(exp, s, seed, extra))
               for s in exp.systems for seed in exp.seeds}
    for cfg in configs.values():  # a bad loss fails here, before hours of stages
        check_train_loss(cfg)
    set_threads(base.threads)
    store = ArtifactStore(base.artifacts_root)
    shared: dict[str, Artifact] = {}
    for name in SHARED_STAGES:
        shared[name] = step(name, base, store, *(shared[d] for d in DEPENDENCIES[name]), label=name)
    data, sft, pairs = shared["prepare_data"], shared["sft_student"], shared["build_pairs"]
    before = step("score_pairs", load_config(exp.config, [*exp.overrides, *extra, REFERENCE_SCORER]), store, pairs,
                  sft, label="score_pairs (SFT log-probs)")
    outputs = {"teacher": step("dev_outputs", base, store, data, label="dev_outputs teacher"),
               "sft": step("dev_outputs", base, store, data, sft, label="dev_outputs sft")}
    runs = []
    for (name, seed), cfg in configs.items():
        tag = f"{name}@{seed}"
        scores = step("score_pairs", cfg, store, pairs, sft, label=f"score_pairs {tag}")
        calibrated = step("calibrate", cfg, store, pairs, sft, scores, label=f"calibrate {tag}")
        outputs[tag] = step("dev_outputs", cfg, store, data, calibrated, label=f"dev_outputs {tag}")
        runs.append(Run(name, seed, cfg.train.loss, cfg, calibrated, outputs[tag]))
    judged = step("judgments", base, store, data, outputs, label="judgments") if base.eval.judge.enabled else None

    config = {"experiment": asdict(exp), "extra": extra, "eval": config_slice(base, ["eval"])["eval"]}
    upstream = {"build_pairs": pairs.key, "score_pairs (SFT log-probs)": before.key,
                **{f"dev_outputs {n}": a.key for n, a in outputs.items()},
                **{f"calibrate {r.label}": r.calibrated.key for r in runs},
                **({"judgments": judged.key} if judged else {})}
    report_path = store.path(STAGE, artifact_key(STAGE, VERSION, config, upstream)) / "report.html"

    def build(out: Path, work: Path) -> dict[str, Any]:
        result = table_results(exp, base, data, pairs, before, outputs, runs, judged)
        result["keys"] = upstream
        blocks, summary = table_blocks(exp, extra, result, report_path)
        report.write_pages(out, blocks, f"PLaD table: {exp.name}")
        (out / "summary.md").write_text(report.render_markdown(summary))
        (out / "table.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str))
        return {"systems": list(result["systems"]), "runs": len(runs),
                "rougeL": {s: m["metrics"]["rougeL"] for s, m in result["systems"].items()}}

    return store.materialize(STAGE, VERSION, config, upstream, build)


# --- the numbers -----------------------------------------------------------------------------------

METRIC_COLUMNS = [*eval_lib.ROUGE_TYPES, "output_tokens"]


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


def pair_quality(pairs: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, Any]:
    """Is the teacher's output really better? ROUGE-L F1 (x100) of y_T and y_S against the human
    reference (the margin loss's score, ``rouge_l_scores``) over the pairs that have one: shares where
    y_T is higher, equal, lower, and the mean difference with its paired-bootstrap CI."""
    has = pairs["reference"].fillna("").str.strip() != ""
    rows = pairs[has]
    out: dict[str, Any] = {"pairs": len(pairs), "with_reference": len(rows),
                           "chosen_tokens": round(float(pairs["chosen_tokens"].mean()), 1),
                           "rejected_tokens": round(float(pairs["rejected_tokens"].mean()), 1)}
    if rows.empty:
        return out
    chosen, rejected = (t.numpy().astype(float) for t in rouge_l_scores(list(rows["chosen"]), list(rows["rejected"]),
                                                                         list(rows["reference"])))
    diff = chosen - rejected
    compared = paired_bootstrap(chosen, rejected, n_resamples, seed)
    return {**out, "chosen_better": round(100 * float((diff > 0).mean()), 2),
            "ties": round(100 * float((diff == 0).mean()), 2), "rejected_better": round(100 * float((diff < 0).mean()), 2),
            "chosen_rougeL": round(100 * float(chosen.mean()), 2), "rejected_rougeL": round(100 * float(rejected.mean()), 2),
            "difference": round(100 * compared.difference.estimate, 2), "low": round(100 * compared.difference.low, 2),
            "high": round(100 * compared.difference.high, 2), "p_value": round(compared.p_value, 4)}


def training_summary(log: pd.DataFrame, stats: dict[str, Any], sft_held_out: Optional[float]) -> dict[str, Any]:
    """From one calibrate artifact's train_log.parquet and stats: training loss and pair accuracy as means
    over the first and the last quarter of the steps (single steps are batches of a few pairs), and the
    held-out evaluations (first, best by eval_loss, last) against the SFT student's pair accuracy on the
    same held-out pairs (``sft_held_out``)."""
    quarter = max(1, len(log) // 4)
    start, end = log.head(quarter), log.tail(quarter)
    out: dict[str, Any] = {"steps": len(log), "epochs": int(log["epoch"].max()) + 1, "quarter_steps": quarter,
                           "loss_start": round(float(start["loss"].mean()), 4),
                           "loss_end": round(float(end["loss"].mean()), 4),
                           "pair_accuracy_start": round(100 * float(start["pair_accuracy"].mean()), 2),
                           "pair_accuracy_end": round(100 * float(end["pair_accuracy"].mean()), 2),
                           "held_out_pairs": stats.get("held_out_pairs", 0), "sft_held_out_pair_accuracy": sft_held_out}
    evaluated = log[log["eval_loss"].notna()] if "eval_loss" in log.columns else log.iloc[:0]
    if len(evaluated):
        best = evaluated.loc[evaluated["eval_loss"].idxmin()]
        ends = {"first": evaluated.iloc[0], "best": best, "last": evaluated.iloc[-1]}
        for name, row in ends.items():
            out[f"eval_{name}"] = {"step": int(row["step"]), "loss": round(float(row["eval_loss"]), 4),
                                   "pair_accuracy": round(100 * float(row["eval_pair_accuracy"]), 2)}
        out["evaluations"] = len(evaluated)
        out["eval_loss_rise"] = round(float(evaluated.iloc[-1]["eval_loss"] - best["eval_loss"]), 4)
    return out


def _mean(values: list[Optional[float]], digits: int = 4) -> Optional[float]:
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), digits) if present else None


def table_results(exp: TableExperiment, cfg: DictConfig, data: Artifact, pairs: Artifact, before: Artifact,
                  outputs: dict[str, Artifact], runs: list[Run], judged: Optional[Artifact]) -> dict[str, Any]:
    """table.json: per system (seed-mean rows), per run (per seed), comparisons, pairs and judge."""
    e = cfg.eval
    n, rs = e.n_resamples, e.seed
    dev = pd.read_parquet(data.file("rows.parquet"))
    dev = dev[dev["split"] == "dev"][["id", "reference"]].reset_index(drop=True)
    frames = {label: dev_frames(a, label) for label, a in outputs.items()}
    generations = pd.concat([g for g, _ in frames.values()], ignore_index=True)
    members = {"teacher": ["teacher"], "sft": ["sft"],
               **{s.name: [f"{s.name}@{seed}" for seed in exp.seeds] for s in exp.systems}}
    loss_of = {r.system: r.loss for r in runs}
    averaged = seed_mean(generations, members)
    no_samples = pd.DataFrame(columns=["system", "id", "sample_index", "logp_mean", "rougeL"])
    per_system = eval_lib.evaluation_metrics(averaged, dev, no_samples, list(e.length_buckets), n, rs)
    by_system = {s: averaged[averaged["system"] == s] for s in members}

    def vs_sft(frame: pd.DataFrame) -> Optional[dict[str, Any]]:
        return eval_lib.paired_comparison(frame, by_system["sft"], "rougeL", n, rs)

    judgments = pd.read_parquet(judged.file("judgments.parquet")) if judged else None
    outcomes = pair_outcomes(judgments) if judgments is not None else None
    wins = judge_win_rates(outcomes, members, n, rs) if outcomes is not None else {}
    calibration = {label: evaluate_calibration(samples, e.calibration_bins, n, rs, with_bins=False)
                   for label, (_, samples) in frames.items() if samples is not None and len(samples)}

    scored = pd.read_parquet(pairs.file("pairs.parquet")).merge(
        pd.read_parquet(before.file("scores.parquet")), on=["id", "sample_index"], how="left", validate="one_to_one")
    run_rows = []
    for r in runs:
        held_out = split_held_out(scored, r.cfg.train.eval_fraction, r.cfg.train.eval_max_pairs, r.cfg.train.optim.seed)[1]
        mine = generations[generations["system"] == r.label]
        run_rows.append({
            "system": r.system, "seed": r.seed, "label": r.label, "loss": r.loss,
            "calibrate_key": r.calibrated.key, "dev_outputs_key": r.outputs.key,
            "metrics": eval_lib.system_summary(mine, n, rs), "vs_sft": vs_sft(mine),
            "judge": {o: w for o, w in judge_win_rates(outcomes, {r.label: [r.label]}, n, rs).get(r.label, {}).items()}
            if outcomes is not None else {},
            "calibration": calibration.get(r.label),
            "training": training_summary(pd.read_parquet(r.calibrated.file("train_log.parquet")),
                                         r.calibrated.manifest["stats"], pair_accuracy(held_out))})

    systems: dict[str, Any] = {}
    for system, labels in members.items():
        mine = [row for row in run_rows if row["system"] == system]
        cal = [calibration.get(label) for label in labels]
        texts = generations.loc[generations["system"].isin(labels), "text"]
        entry = {"kind": system if system in FIXED else "trained", "loss": loss_of.get(system),
                 "plad": loss_of.get(system) in PLAD_LOSSES, "seeds": [row["seed"] for row in mine],
                 "metrics": per_system["systems"][system],
                 "repeated_trigrams": round(100 * float(np.mean([eval_lib.repeated_ngram_share(t) for t in texts])), 1),
                 "vs_sft": None if system == "sft" else vs_sft(by_system[system]),
                 "judge": wins.get(system, {}),
                 "calibration": None if not any(cal) else {
                     "spearman": _mean([c["spearman"] for c in cal if c]), "ece": _mean([c["ece"] for c in cal if c]),
                     "per_seed": {label: {k: c[k] for k in ("spearman", "spearman_low", "spearman_high", "ece",
                                                            "prompts_used", "prompts_skipped")}
                                  for label, c in zip(labels, cal) if c}}}
        if mine:
            t = [row["training"] for row in mine]
            entry["training"] = {
                "sft_held_out_pair_accuracy": _mean([x["sft_held_out_pair_accuracy"] for x in t], 2),
                "held_out_pair_accuracy": _mean([x.get("eval_last", {}).get("pair_accuracy") for x in t], 2),
                "pair_accuracy_end": _mean([x["pair_accuracy_end"] for x in t], 2),
                "held_out_pairs": [x["held_out_pairs"] for x in t],
                "runs_with_eval_loss_rise": sum(1 for x in t if x.get("eval_loss_rise", 0) > 0),
                "eval_loss_rise": _mean([x.get("eval_loss_rise") for x in t])}
        systems[system] = entry

    plad = [s for s, v in systems.items() if v["plad"]]
    baselines = [s for s, v in systems.items() if v["kind"] == "trained" and not v["plad"]]
    comparisons = [{"a": a, "b": b, **eval_lib.paired_comparison(by_system[a], by_system[b], "rougeL", n, rs)}
                   for a in plad for b in baselines]
    return {
        "experiment": asdict(exp),
        "settings": {"n_resamples": n, "seed": rs, "level": 0.95, "dev_rows": len(dev), "seeds": list(exp.seeds),
                     "calibration_samples": e.calibration_samples, "calibration_rows": e.calibration_rows,
                     "judge": None if judgments is None else {
                         "backend": e.judge.backend, "prompt": e.judge.prompt, "rows": int(judgments["id"].nunique()),
                         "model": e.judge.api.model if e.judge.backend == "openai" else e.judge.model}},
        "systems": systems, "comparisons": comparisons,
        "length_buckets": {k: per_system["length_buckets"][k] for k in ("edges", "rule", "unit")} | {
            "buckets": [{k: b[k] for k in ("name", "min_words", "max_words", "n", "systems")}
                        for b in per_system["length_buckets"]["buckets"]]},
        "runs": run_rows,
        "pairs": {**pair_quality(scored, n, rs), "sft_pair_accuracy": pair_accuracy(scored)},
        "judge": None if judgments is None else {k: v for k, v in win_rates(judgments, n, rs).items() if k != "vs"},
    }


# --- the report ------------------------------------------------------------------------------------

def _label(system: str) -> str:
    return report.SYSTEM_LABELS.get(system, system)


def _delta(p: Optional[dict[str, Any]], n_resamples: int) -> str:
    return f"{report.difference_text(p)}, p {report.p_text(p['p_value'], n_resamples)}" if p else "–"


def _verdict(p: dict[str, Any], better: str, worse: str) -> str:
    if p["low"] > 0:
        return better
    if p["high"] < 0:
        return worse
    return "no detectable difference (the CI includes 0)"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.1f}%"


def headline_table(result: dict[str, Any]) -> report.Table:
    """system | ROUGE-1 | ROUGE-2 | ROUGE-L [CI] | Δ ROUGE-L vs SFT [CI], p | win rate vs reference | vs SFT | mean tokens."""
    n = result["settings"]["n_resamples"]
    rows = []
    for system, s in result["systems"].items():
        m, judge = s["metrics"], s["judge"]
        rows.append([_label(system), report.num_text(m["rouge1"]), report.num_text(m["rouge2"]), report.ci_text(m, "rougeL"),
                     _delta(s["vs_sft"], n), report.ci_text(judge.get(REFERENCE), "win_rate", 1),
                     report.ci_text(judge.get("sft"), "win_rate", 1), report.num_text(m["mean_output_tokens"], 1)])
    return report.Table(["system", "ROUGE-1", "ROUGE-2", "ROUGE-L [95% CI]", "Δ ROUGE-L vs SFT [95% CI], p",
                         "win rate vs reference", "win rate vs SFT", "mean tokens"], rows)


def discussion(result: dict[str, Any]) -> list[str]:
    """The discussion's paragraphs, each computed from table.json's numbers."""
    n = result["settings"]["n_resamples"]
    systems, pairs = result["systems"], result["pairs"]
    trained = {s: v for s, v in systems.items() if v["kind"] == "trained"}
    out = []
    against_sft = [f"{s} ({v['loss']}) {_delta(v['vs_sft'], n)}: {_verdict(v['vs_sft'], 'better', 'worse')}"
                   for s, v in trained.items()]
    out.append("Against the SFT student (ROUGE-L, per-row mean over seeds, paired bootstrap): " + "; ".join(against_sft) + ".")
    if result["comparisons"]:
        lost = [c for c in result["comparisons"] if not c["low"] > 0]
        lines = [f"{c['a']} − {c['b']} {_delta(c, n)}: {_verdict(c, c['a'] + ' better', c['b'] + ' better')}"
                 for c in result["comparisons"]]
        plain = ("PLaD beats every baseline here." if not lost else
                 f"PLaD does not beat {len(lost)} of {len(result['comparisons'])} PLaD-baseline pairings at this scale.")
        out.append("PLaD against each baseline (ROUGE-L): " + "; ".join(lines) + ". " + plain)
    if trained:
        best = max(trained, key=lambda s: trained[s]["metrics"]["rougeL"])
        out.append(f"Highest mean ROUGE-L among the trained systems: {best} ({report.ci_text(trained[best]['metrics'], 'rougeL')}).")

    if "chosen_better" in pairs:
        share = pairs["chosen_better"]
        judgement = ("so PLaD's assumption y_T ≻ y_S mostly holds by this measure" if share >= 60 else
                     f"so by this measure PLaD's assumption y_T ≻ y_S does not hold for {100 - share:.0f}% of the "
                     "pairs (ties included): training pushes the student toward outputs that are often no better "
                     "than its own")
        out.append(
            f"Is the teacher's output really better? In the {pairs['with_reference']} training pairs with a human "
            f"reference, y_T scores a higher ROUGE-L against the reference than y_S in {share:.1f}% of pairs "
            f"(equal {pairs['ties']:.1f}%, lower {pairs['rejected_better']:.1f}%); mean ROUGE-L {pairs['chosen_rougeL']:.2f} "
            f"vs {pairs['rejected_rougeL']:.2f}, difference {_delta(pairs, n)}; {judgement}. y_T has "
            f"{pairs['chosen_tokens']} tokens on average, y_S {pairs['rejected_tokens']}.")
    teacher = systems["teacher"]
    judged = teacher["judge"].get("sft")
    out.append(
        f"On the dev split the teacher's greedy outputs − the SFT student's, ROUGE-L: {_delta(teacher['vs_sft'], n)}"
        + (f"; the judge's win rate of the teacher against the SFT student is "
           f"{report.ci_text(judged, 'win_rate', 1)} (50 = no preference; {judged['consistency']:.0f}% of the pairs "
           "judged the same in both orders)."
           if judged else "; no judge ran (eval.judge.enabled=false)."))

    if trained:
        accuracy = [f"{s} {_pct(v['training']['sft_held_out_pair_accuracy'])} → {_pct(v['training']['held_out_pair_accuracy'])}"
                    f" (training batches, last quarter of the steps {_pct(v['training']['pair_accuracy_end'])})"
                    for s, v in trained.items()]
        held = sorted({h for v in trained.values() for h in v["training"]["held_out_pairs"]})
        out.append(
            f"Pair accuracy (y_T more likely than y_S per token): the SFT student already ranks y_T first on "
            f"{_pct(pairs.get('sft_pair_accuracy'))} of all pairs. Held-out pairs, SFT → after training (mean over seeds): "
            + "; ".join(accuracy) + f". Held-out pairs per run: {', '.join(map(str, held))}"
            + (" — too few to measure accuracy finely (steps of 1/n)." if held and held[0] < 30 else "."))
        rises = [f"{s} {v['training']['runs_with_eval_loss_rise']} of {len(v['seeds'])} runs "
                 f"(mean rise {report.num_text(v['training']['eval_loss_rise'], 3)})" for s, v in trained.items()]
        out.append("Overfitting: runs whose held-out loss ended above its lowest evaluated value: " + "; ".join(rises)
                   + ". A rise with a falling training loss means the student fits these pairs, not the task; "
                     "per-run curves (first, best and last evaluation) are in Training below.")
    lengths = [f"{_label(s)} {report.num_text(v['metrics']['mean_output_tokens'], 1)} tokens, "
               f"{report.num_text(v['repeated_trigrams'], 1)}% repeated" for s, v in systems.items()]
    out.append(
        "Length and repetition (dev outputs: mean tokens; share of word 3-grams that repeat an earlier 3-gram of "
        "the same output, mean over outputs and seeds): " + "; ".join(lengths) + ". A student that moves toward "
        "the teacher's length while its repeated share rises has learned the teacher's length, not its content, "
        "and loops until the token limit; ROUGE-L F1 hardly penalises such loops, so read it beside this.")
    sft_cal = systems["sft"]["calibration"]
    changes = [f"{s} ρ {report.num_text(v['calibration']['spearman'], 3, True)} (Δ "
               f"{report.num_text(None if v['calibration']['spearman'] is None or sft_cal['spearman'] is None else v['calibration']['spearman'] - sft_cal['spearman'], 3, True)}), "
               f"ECE {report.num_text(v['calibration']['ece'], 3)} (Δ "
               f"{report.num_text(None if v['calibration']['ece'] is None or sft_cal['ece'] is None else v['calibration']['ece'] - sft_cal['ece'], 3, True)})"
               for s, v in trained.items() if v["calibration"]] if sft_cal else []
    if changes:
        out.append(f"Calibration, mean over seeds against the SFT student's ρ {report.num_text(sft_cal['spearman'], 3, True)} "
                   f"and ECE {report.num_text(sft_cal['ece'], 3)}: " + "; ".join(changes) + ". PLaD's aim is a higher ρ "
                   "(log P̄ ranks the student's own samples by quality); the per-seed CIs in Calibration show how "
                   "much of a change is noise.")
    settings = result["settings"]
    out.append(
        f"Scale: {settings['dev_rows']} dev rows, {pairs['pairs']} pairs, {len(settings['seeds'])} seed(s); CIs are "
        "over dev rows and hold the row sampling, not the seed-to-seed spread (see Per seed). Any tuning was done "
        "on this dev split, so a tuned system's dev numbers are optimistic."
        + (" The judge is the embedded SmolLM2-135M teacher, a weak judge: its win rates are not evidence of quality."
           if settings["judge"] and str(settings["judge"]["model"]).startswith("embedded:") else ""))
    return out


def table_blocks(exp: TableExperiment, extra: list[str], result: dict[str, Any],
                 report_path: Path) -> tuple[list[report.Block], list[report.Block]]:
    """(report blocks, summary blocks): the report's sections; the summary is the headline table."""
    settings, systems = result["settings"], result["systems"]
    n = settings["n_resamples"]
    heading = report.Heading(f"PLaD table: {exp.name} ({exp.config})", 1)
    headline = headline_table(result)
    described = ", ".join(f"{s.name} ({' '.join(s.overrides) or 'no overrides'})" for s in exp.systems)
    blocks: list[report.Block] = [
        heading,
        report.Para(
            f"Every trained system starts from the same SFT student and the same {result['pairs']['pairs']} "
            f"pseudo-preference pairs; seeds {', '.join(map(str, settings['seeds']))} (train.optim.seed). Systems: "
            f"{described}. Dev split: {settings['dev_rows']} rows, greedy outputs, ROUGE F1 (x100) against the human "
            "references. A trained system's numbers are its per-row metrics averaged over seeds; brackets are 95% "
            f"bootstrap CIs over dev rows ({n} resamples); Δ vs SFT is the paired per-row difference with its "
            "two-sided paired-bootstrap p-value; win rates (x100) are the judge's, ties counted half."),
        report.Heading("Results"), headline,
        report.Heading("Discussion"), *[report.Para(p) for p in discussion(result)],
    ]
    if result["comparisons"]:
        blocks += [report.Heading("PLaD against each baseline"), report.Table(
            ["PLaD system", "baseline", "Δ ROUGE-L [95% CI], p", "n"],
            [[c["a"], c["b"], _delta(c, n), str(c["n"])] for c in result["comparisons"]])]
    blocks += [report.Heading("Every metric with its CI"), report.Table(
        ["system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "mean tokens", "n"],
        [[_label(s), report.ci_text(v["metrics"], "rouge1"), report.ci_text(v["metrics"], "rouge2"),
          report.ci_text(v["metrics"], "rougeL"), report.ci_text(v["metrics"], "mean_output_tokens", 1),
          str(v["metrics"]["n"])] for s, v in systems.items()])]

    blocks.append(report.Heading("Per seed"))
    per_seed = []
    for r in result["runs"]:
        t = r["training"]
        c = r["calibration"] or {}
        per_seed.append([r["system"], str(r["seed"]), report.ci_text(r["metrics"], "rougeL"), _delta(r["vs_sft"], n),
                         report.ci_text(r["judge"].get(REFERENCE), "win_rate", 1),
                         report.ci_text(r["judge"].get("sft"), "win_rate", 1), report.num_text(c.get("spearman"), 3, True),
                         report.num_text(c.get("ece"), 3),
                         f"{_pct(t['sft_held_out_pair_accuracy'])} → {_pct(t.get('eval_last', {}).get('pair_accuracy'))}",
                         r["calibrate_key"]])
    blocks.append(report.Table(["system", "seed", "ROUGE-L [95% CI]", "Δ vs SFT, p", "win vs reference", "win vs SFT",
                                "Spearman ρ", "ECE", "held-out pair acc. SFT → after", "calibrate key"], per_seed,
                               ["l", "r", "r", "r", "r", "r", "r", "r", "r", "l"]))

    buckets = result["length_buckets"]
    names = list(systems)
    blocks += [report.Heading("ROUGE-L by reference length"), report.Para(
        f"Dev rows bucketed by the reference's length in words, edges {buckets['edges']} ({buckets['rule']}); "
        "seed-mean ROUGE-L with 95% CIs."),
        report.Table(["bucket", "n", *[_label(s) for s in names]],
                     [[b["name"], str(b["n"]), *[report.ci_text(b["systems"].get(s), "rougeL") for s in names]]
                      for b in buckets["buckets"]]),
        report.Image("by_length.png", report.bucket_plot({"systems": {s: v["metrics"] for s, v in systems.items()},
                                                          "length_buckets": buckets}), "ROUGE-L by reference length")]

    blocks.append(report.Heading("Calibration"))
    calibrated = {s: v["calibration"] for s, v in systems.items() if v["calibration"]}
    if calibrated:
        rows = []
        for s, c in calibrated.items():
            for label, p in c["per_seed"].items():
                rows.append([_label(s), label.split("@")[-1] if "@" in label else "–",
                             report.ci_text(p, "spearman", 3, signed=True),
                             f"{p['prompts_used']} / {p['prompts_skipped']}", report.num_text(p["ece"], 3)])
            rows.append([f"{_label(s)}: mean", "", report.num_text(c["spearman"], 3, True), "", report.num_text(c["ece"], 3)])
        blocks += [report.Para(
            f"K = {settings['calibration_samples']} samples per prompt on the first {settings['calibration_rows'] or 'all'} "
            "dev rows, each scored by the student that wrote it (plad_core.calibration): Spearman ρ between log P̄ "
            "and ROUGE-L within a prompt, averaged over prompts (CI over prompts), and the ECE of exp(log P̄) as the "
            "probability of beating the prompt's median sample."),
            report.Table(["student", "seed", "Spearman ρ [95% CI]", "prompts used / skipped", "ECE"], rows,
                         ["l", "r", "r", "r", "r"])]
    else:
        blocks.append(report.Para("Not computed (eval.calibration_samples = 0)."))

    blocks.append(report.Heading("Judge win rate"))
    judge = result["judge"]
    if judge:
        j = settings["judge"]
        blocks += [report.Para(
            f"Judge {j['model']} ({j['backend']}), prompt conf/{j['prompt']}, {j['rows']} dev rows; every output "
            "against the human reference and against the SFT student's, in both orders (a tie when the verdicts "
            "disagree). A trained system's per-row score is averaged over its seeds. Position consistency "
            f"{report.num_text(judge['consistency'], 1)}%, A chosen in {report.num_text(judge['a_rate'], 1)}% of readable "
            f"verdicts, {judge['unreadable']} of {judge['judgments']} unreadable."),
            report.Table(["system", "vs reference [95% CI]", "consistent %", "vs SFT [95% CI]", "consistent %", "n"],
                         [[_label(s), report.ci_text(v["judge"].get(REFERENCE), "win_rate", 1),
                           report.num_text((v["judge"].get(REFERENCE) or {}).get("consistency"), 1),
                           report.ci_text(v["judge"].get("sft"), "win_rate", 1),
                           report.num_text((v["judge"].get("sft") or {}).get("consistency"), 1),
                           str((v["judge"].get(REFERENCE) or {}).get("n", "–"))] for s, v in systems.items()])]
    else:
        blocks.append(report.Para("Not run (eval.judge.enabled = false)."))

    blocks.append(report.Heading("Training"))
    rows = []
    for r in result["runs"]:
        t = r["training"]
        evals = [t.get(f"eval_{k}") for k in ("first", "best", "last")]
        rows.append([r["system"], str(r["seed"]), str(t["steps"]),
                     f"{t['loss_start']:.4f} → {t['loss_end']:.4f}",
                     f"{t['pair_accuracy_start']:.1f}% → {t['pair_accuracy_end']:.1f}%",
                     str(t["held_out_pairs"]),
                     " → ".join(f"{e['loss']:.4f}@{e['step']}" for e in evals) if all(evals) else "–",
                     _pct(t["sft_held_out_pair_accuracy"]) + " → " + _pct(evals[2]["pair_accuracy"] if evals[2] else None)])
    blocks += [report.Para(
        "From each calibrate artifact's train_log.parquet: training loss and pair accuracy as means over the "
        "first → the last quarter of the steps; held-out loss at the first, the best and the last evaluation (value@step); held-out pair "
        "accuracy of the SFT student (its log-probs from score_pairs) → the trained student's at the last step. "
        "Losses are in each system's own units."),
        report.Table(["system", "seed", "steps", "training loss", "training pair acc.", "held-out pairs",
                      "held-out loss first → best → last", "held-out pair acc."], rows,
                     ["l", "r", "r", "r", "r", "r", "r", "r"])]

    t = exp.tuning
    blocks += [report.Heading("Tuning (dev only)"), report.Para(
        f"Status: {t.status}. " + (f"Grid for {t.system}: " + "; ".join(f"{k} ∈ {v}" for k, v in t.grid.items()) + "."
                                   if t.grid else "No grid.")
        + (f" Chosen: {', '.join(f'{k}={v}' for k, v in t.chosen.items())}." if t.chosen else ""))]
    if t.results:
        blocks.append(report.Table(["grid point", "dev ROUGE-L"], [[k, f"{v:.2f}"] for k, v in t.results.items()]))

    blocks += [report.Heading("Provenance"), report.Para(
        "Overrides of every run: " + (", ".join([*exp.overrides, *extra]) or "none") + "; then each system's and "
        "train.optim.seed=<seed>. Artifacts (data/artifacts/<stage>/<key>):"),
        report.Table(["artifact", "key"], [[k, v] for k, v in result["keys"].items()], ["l", "l"])]
    summary = [report.Heading(f"PLaD table: {exp.name}", 2), headline, report.Para(f"Full report: {report_path}")]
    return blocks, summary
