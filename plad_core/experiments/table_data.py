"""table.json as dataclasses: per system the per-row metrics averaged over its seeds, per run the
per-seed metrics and training curve, the PLaD-baseline comparisons, the pairs' quality and the judge
(computed by ``plad_core.experiments.table_results``).

``table_json`` turns them into table.json's object, key for key in field order. The metric blocks
inside them (ROUGE with CIs, paired comparisons, win rates, calibration) stay the dicts
``plad_core.evaluation`` writes into metrics.json, so both reports read them alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

Metrics = dict[str, Any]  # a plad_core.evaluation block: system_summary, paired_comparison, win rates, calibration


def _absent() -> Any:
    """A field that table.json leaves out while it is None (the key exists only once computed)."""
    return field(default=None, metadata={"omit_if_none": True})


@dataclass
class EvalPoint:
    """One held-out evaluation of a calibrate run."""
    step: int
    loss: float
    pair_accuracy: float


@dataclass
class TrainingSummary:
    """One calibrate run's train_log.parquet (see ``training_summary``)."""
    steps: int
    epochs: int
    quarter_steps: int
    loss_start: float
    loss_end: float
    pair_accuracy_start: float
    pair_accuracy_end: float
    held_out_pairs: int
    sft_held_out_pair_accuracy: Optional[float]
    eval_first: Optional[EvalPoint] = _absent()
    eval_best: Optional[EvalPoint] = _absent()
    eval_last: Optional[EvalPoint] = _absent()
    evaluations: Optional[int] = _absent()
    eval_loss_rise: Optional[float] = _absent()


@dataclass
class RunRow:
    """One trained system at one seed."""
    system: str
    seed: int
    label: str
    loss: str
    calibrate_key: str
    dev_outputs_key: str
    metrics: Metrics
    vs_sft: Optional[Metrics]
    judge: dict[str, Metrics]
    calibration: Optional[Metrics]
    training: TrainingSummary


@dataclass
class SystemCalibration:
    """A system's Spearman ρ and ECE, means over its seeds, and each seed's."""
    spearman: Optional[float]
    ece: Optional[float]
    per_seed: dict[str, Metrics]


@dataclass
class SystemTraining:
    """A trained system's runs, means over its seeds."""
    sft_held_out_pair_accuracy: Optional[float]
    held_out_pair_accuracy: Optional[float]
    pair_accuracy_end: Optional[float]
    held_out_pairs: list[int]
    runs_with_eval_loss_rise: int
    eval_loss_rise: Optional[float]


@dataclass
class SystemRow:
    """One system of the table: the teacher, the SFT student or a trained system (seed means)."""
    kind: str
    loss: Optional[str]
    plad: bool
    seeds: list[int]
    metrics: Metrics
    repeated_trigrams: float
    vs_sft: Optional[Metrics]
    judge: dict[str, Metrics]
    calibration: Optional[SystemCalibration]
    training: Optional[SystemTraining] = _absent()
    # ROUGE-1 and ROUGE-2 against the SFT student, as vs_sft is for ROUGE-L: a longer output can gain
    # ROUGE-L F1 while it shares less content
    vs_sft_by_metric: dict[str, Metrics] = field(default_factory=dict)
    looping_outputs: Optional[float] = None  # % of outputs whose repeated 3-gram share is above the curation threshold


@dataclass
class PairQuality:
    """The training pairs: is y_T closer to the human reference than y_S (see ``pair_quality``)?"""
    pairs: int
    with_reference: int
    chosen_tokens: float
    rejected_tokens: float
    chosen_better: Optional[float] = _absent()
    ties: Optional[float] = _absent()
    rejected_better: Optional[float] = _absent()
    chosen_rougeL: Optional[float] = _absent()
    rejected_rougeL: Optional[float] = _absent()
    difference: Optional[float] = _absent()
    low: Optional[float] = _absent()
    high: Optional[float] = _absent()
    p_value: Optional[float] = _absent()
    mde: Optional[float] = _absent()  # the difference's minimum detectable value over the with_reference pairs
    sft_pair_accuracy: Optional[float] = None


@dataclass
class JudgeSettings:
    backend: str
    prompt: str
    rows: int
    model: str
    task: Optional[str] = None  # the validity cases' kind (plad_core.evaluation.judge_validity)


@dataclass
class TableSettings:
    n_resamples: int
    seed: int
    level: float
    dev_rows: int
    seeds: list[int]
    calibration_samples: int
    calibration_rows: int
    judge: Optional[JudgeSettings]
    loop_threshold: Optional[float] = None  # pairs.curate.max_repeat_share: a dev output above it is a loop


@dataclass
class TableResults:
    """table.json."""
    experiment: dict[str, Any]
    settings: TableSettings
    systems: dict[str, SystemRow]
    comparisons: list[Metrics]  # PLaD against a baseline: {"a", "b", **ROUGE-L paired_comparison, "by_metric"}
    length_buckets: dict[str, Any]
    runs: list[RunRow]
    pairs: PairQuality
    judge: Optional[Metrics]
    keys: dict[str, str] = field(default_factory=dict)
    curation: Optional[dict[str, Any]] = field(default=None, metadata={"omit_if_none": True})  # curate_pairs' stats
    pairs_built: Optional[PairQuality] = _absent()  # the same measure over the pairs before curate_pairs dropped any


def table_json(value: Any) -> Any:
    """``value`` with every dataclass as a dict of its fields in order, absent ones left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: table_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_if_none") and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: table_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [table_json(v) for v in value]
    return value
