"""What ``plad eval`` scores and on what: the user's data file as an ``eval_data`` artifact (every row
in the dev split), each named model resolved from its spec (an artifact key, ``champion``, a local
folder or a hub id), and each model's outputs on the file."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from plad_core import data as data_lib
from plad_core import models
from plad_core.artifacts import MANIFEST, Artifact, ArtifactStore
from plad_core.config import ConfigError
from plad_core.evaluation.judge import REFERENCE
from plad_core.models import MODEL_DIR, ModelError
from plad_core.registry import Registry, registry_path
from plad_core.stages import code_version
from plad_core.stages.checks import calibration_k
from plad_core.stages.data import run_prepare_data
from plad_core.stages.evaluate import (
    dev_calibration_samples,
    dev_generations,
    run_dev_outputs,
)
from plad_core.stages.inputs import read_split
from plad_core.stages.keys import CALIBRATION_SLICE, GENERATION_SLICE, keyed_slice
from plad_core.stages.promote import promotion_lineage

log = logging.getLogger("plad.stages")

TEACHER = "teacher"  # the name that evaluates the configured teacher (no spec)
KEY = re.compile(r"^[0-9a-f]{16}$")  # an artifact key (``artifacts.artifact_key``)
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class EvalModel:
    """One model ``plad eval`` scores: ``artifact`` (a stage's artifact with a model/ folder), or
    ``path`` (a local folder or hub id) with its ``identity`` in keys; neither is the teacher."""
    name: str
    spec: str
    artifact: Optional[Artifact] = None
    path: Optional[str] = None
    identity: Optional[dict[str, Any]] = None

    @property
    def teacher(self) -> bool:
        return self.artifact is None and self.path is None


def parse_model_args(words: list[str]) -> list[tuple[str, str]]:
    """``NAME=SPEC`` words (or the bare ``teacher``) as (name, spec) pairs, names unique."""
    pairs = []
    for word in words:
        name, sep, spec = word.partition("=")
        if not sep and name != TEACHER:
            raise ConfigError(f"--model '{word}': write NAME=SPEC (SPEC an artifact key, champion, a folder or a "
                              f"hub id), or '{TEACHER}' for the configured teacher")
        if not NAME.match(name) or name == REFERENCE or (sep and not spec) or (name == TEACHER and spec):
            raise ConfigError(f"--model '{word}': NAME must be letters, digits, '_', '.' or '-', not '{REFERENCE}'; "
                              f"'{TEACHER}' takes no SPEC")
        pairs.append((name, spec))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--model names repeat: {names}")
    if not pairs:
        raise ConfigError("plad eval needs at least one --model NAME=SPEC (or --model teacher)")
    return pairs


def _artifact_with_model(store: ArtifactStore, spec: str) -> Optional[Artifact]:
    """The artifact named by ``spec`` (``KEY`` or ``stage/KEY``) that holds a model/ folder, or None."""
    stage, _, key = spec.rpartition("/")
    if not KEY.match(key) or not store.root.is_dir():
        return None
    stages = [stage] if stage else sorted(p.name for p in store.root.iterdir() if p.is_dir())
    for name in stages:
        found = store.get(name, key)
        if found is not None and found.file(MODEL_DIR).is_dir():
            return found
    return None


def _champion(cfg: DictConfig, store: ArtifactStore) -> EvalModel:
    path = registry_path(cfg, store.root)
    champion = Registry(path).champion(promotion_lineage(cfg, None)) if path.is_file() else None
    if champion is None:
        raise ConfigError(f"--model champion: no champion for config '{cfg.name}' (its data and teacher) in {path}; "
                          f"`plad run --config {cfg.name}` records one")
    folder = champion["model_path"]
    if not Path(folder).is_dir():
        raise ModelError(f"--model champion: registry entry {champion['id']} has no model at {folder}")
    return EvalModel("champion", "champion", path=folder,
                     identity={"champion": champion["calibrate_key"], **models.model_fingerprint(folder, None, cfg.cache_dir)})


def resolve_model(cfg: DictConfig, store: ArtifactStore, name: str, spec: str) -> EvalModel:
    """A (name, spec) of ``parse_model_args`` as an ``EvalModel``, in this order: the teacher, ``champion``,
    an artifact key (``KEY`` or ``stage/KEY`` of any stage with a model/ folder), an artifact folder, a
    local model folder, a hub id (``owner/name``). Anything else is a ConfigError naming the spec."""
    s = cfg.student
    if name == TEACHER and not spec:
        return EvalModel(name, "")
    if spec == "champion":
        return EvalModel(name, spec, **{k: getattr(_champion(cfg, store), k) for k in ("path", "identity")})
    if (found := _artifact_with_model(store, spec)) is not None:
        return EvalModel(name, spec, artifact=found)
    folder = Path(spec)
    if folder.is_dir() and (folder / MANIFEST).is_file() and (folder / MODEL_DIR).is_dir():
        manifest = json.loads((folder / MANIFEST).read_text())
        return EvalModel(name, spec, artifact=Artifact(manifest["stage"], manifest["key"], folder, manifest))
    if folder.is_dir():
        return EvalModel(name, spec, path=str(folder.resolve()),
                         identity=models.model_fingerprint(str(folder), None, cfg.cache_dir))
    if re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", spec) and not spec.startswith((".", "/")):
        return EvalModel(name, spec, path=spec, identity=models.model_fingerprint(spec, s.revision, cfg.cache_dir))
    raise ConfigError(f"--model {name}={spec}: '{spec}' is not an artifact key with a model in {store.root}, "
                      f"not 'champion', not a folder and not a hub id (owner/name)")


def load_eval_model(cfg: DictConfig, model: EvalModel):
    """A folder or hub model under the student's loading rules (``student.revision`` for a hub id,
    ``student.trust_remote_code``, ``student.use_safetensors``: a pickle-only folder is refused)."""
    s = cfg.student
    revision = s.revision if not Path(model.path).is_dir() else None
    return models.load_model(model.path, cfg.cache_dir, revision, s.trust_remote_code, s.use_safetensors, cfg.device)


def fewshot_needed(cfg: DictConfig, evaluated: list[EvalModel]) -> int:
    """How many worked examples the evaluated prompts use (the teacher's, the students')."""
    return max([cfg.teacher.prompt.fewshot_k if m.teacher else cfg.student.prompt.fewshot_k for m in evaluated])


def run_eval_data(cfg: DictConfig, store: ArtifactStore, path: str, rows: int, fewshot_k: int,
                  force: bool = False) -> Artifact:
    """The file at ``path`` (JSONL or Parquet of ``data.task``'s schema, read by ``data.load_rows``, whose
    errors name the file, row and field) as a prepare_data-shaped artifact: every row (the first ``rows``
    when > 0) in the dev split. A prompt with worked examples (``fewshot_k`` > 0, the teacher's by
    default) takes them from the config's own labeled split, as in evaluate; they are the only labeled
    rows here. Keyed by the file's sha256, not its place."""
    task = cfg.data.task
    upstream = [run_prepare_data(cfg, store)] if fewshot_k > 0 else []
    config = {"data.task": task, "source": data_lib.source_fingerprint(path), "rows": rows, "fewshot_k": fewshot_k}

    def build(out: Path, work: Path) -> dict[str, Any]:
        loaded = data_lib.load_rows(path, "auto", task)
        kept = loaded.rows[:rows] if rows > 0 else loaded.rows
        if not kept:
            raise data_lib.DataError(f"{path}: no rows to evaluate")
        examples = (data_lib.fewshot_examples(read_split(upstream[0], "labeled"), fewshot_k,
                                              data_lib.task_spec(task).body) if upstream else [])
        overlap = sorted({r["id"] for r in kept} & {e["id"] for e in examples})
        if overlap:
            log.warning("%s: rows %s are also few-shot examples of the prompt", path, overlap)
        records = [{**r, "split": "dev"} for r in kept] + [{**e, "split": "labeled"} for e in examples]
        table = pa.Table.from_pylist(records, schema=data_lib.rows_schema(task))
        pq.write_table(table, out / "rows.parquet")
        return {"rows": {"dev": len(kept), "labeled": len(examples)}, "source": path,
                "source_rows": len(loaded.rows), "dropped_empty": loaded.dropped_empty, "fewshot_overlap": overlap}

    return store.materialize("eval_data", code_version.module_fingerprint(__name__), config,
                             {a.stage: a.key for a in upstream}, build, force)


def run_model_outputs(cfg: DictConfig, store: ArtifactStore, data: Artifact, model: EvalModel,
                      force: bool = False) -> Artifact:
    """``run_dev_outputs`` for a local folder or hub model (``eval_inputs.load_eval_model``): the same
    generations.parquet and, with ``eval.calibration_samples`` > 0, calibration_samples.parquet, under
    ``student.prompt``; keyed by the model's identity (``models.model_fingerprint``), not its place."""
    k = calibration_k(cfg)
    s = cfg.student
    config = {**keyed_slice(cfg, GENERATION_SLICE + (CALIBRATION_SLICE if k else []) + ["student.prompt"]),
              "model": model.identity, "loading": {"trust_remote_code": s.trust_remote_code,
                                                   "use_safetensors": s.use_safetensors}}

    def build(out: Path, work: Path) -> dict[str, Any]:
        dev = read_split(data, "dev")
        loaded = load_eval_model(cfg, model)
        started = time.perf_counter()
        generations = dev_generations(*loaded, model.name, dev, data, cfg.student.prompt, cfg)
        generations.drop(columns="system").to_parquet(out / "generations.parquet", index=False)
        seconds = {"generate": round(time.perf_counter() - started, 1)}
        stats: dict[str, Any] = {"rows": len(generations), "rougeL": float(generations["rougeL"].mean())}
        if k:
            started = time.perf_counter()
            samples = dev_calibration_samples(*loaded, model.name, dev, data, cfg).drop(columns="system")
            samples.to_parquet(out / "calibration_samples.parquet", index=False)
            seconds["calibration"] = round(time.perf_counter() - started, 1)
            stats["calibration_samples"] = len(samples)
        return {**stats, "seconds": seconds, "model": model.spec}

    return store.materialize("eval_outputs", code_version.module_fingerprint(__name__), config,
                             {data.stage: data.key}, build, force)


def model_outputs(cfg: DictConfig, store: ArtifactStore, data: Artifact, model: EvalModel) -> Artifact:
    """One model's outputs on the file: the teacher and model artifacts through evaluate's own stage."""
    if model.path is not None:
        return run_model_outputs(cfg, store, data, model)
    return run_dev_outputs(cfg, store, data, model.artifact)
