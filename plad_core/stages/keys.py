"""What enters each stage's artifact key: its config slice, the identities of the models it reads,
the fingerprint of its code (``code_version``) and its upstream keys (see ``plad_core.artifacts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from plad_core import data as data_lib
from plad_core import models
from plad_core.artifacts import Artifact, ArtifactStore, artifact_key
from plad_core.config import ConfigError, config_slice
from plad_core.evaluation import judge as judge_lib
from plad_core.sampling import openai_api
from plad_core.stages import code_version

DATA_SLICE = ["data.task", "data.format", "data.n_labeled", "data.n_unlabeled", "data.n_dev", "data.split_salt"]

# How a model is trained, not which model: exact resume, recomputed activations, and the number of
# ranks (the same global batches; tests/test_ddp.py holds them to 1e-5). Left out of artifact keys,
# as sampling_slice leaves out sampling's speed knobs, so turning them on rebuilds nothing.
TRAINING_MECHANICS = ("checkpoint_every", "gradient_checkpointing", "launch")

# One model's dev outputs are an artifact of their own (``run_dev_outputs``), keyed by the model and
# these eval keys only, so every evaluation and table that shows the same model reuses them.
GENERATION_SLICE = ["eval.max_new_tokens", "eval.batch_size", "eval.stop", "eval.dtype", "eval.rouge_stemmer"]
# The precision settings, each with its resolver: ``auto`` by the hardware of ``cfg.device``
# (``models.fast_bf16``). Keys hold the resolved value, exactly as an explicit setting hashes (a
# float32 machine's keys are those of ``dtype: float32`` / ``bf16: false``), never the word auto.
PRECISION = {"teacher.sampling.dtype": models.resolve_dtype, "student.sampling.dtype": models.resolve_dtype,
             "eval.dtype": models.resolve_dtype, "student.heal.bf16": models.resolve_bf16,
             "sft.bf16": models.resolve_bf16, "train.optim.bf16": models.resolve_bf16,
             "teacher.sft.bf16": models.resolve_bf16}
CALIBRATION_SLICE = ["eval.calibration_samples", "eval.calibration_rows", "eval.calibration_temperature",
                     "eval.calibration_top_p", "eval.seed"]


def stage_key(stage: str, config: dict[str, Any], upstream: list[Artifact]) -> str:
    """The artifact key ``materialize`` will commit under (for a build that must name its own folder)."""
    return artifact_key(stage, code_version.stage_fingerprint(stage), config, {a.stage: a.key for a in upstream})


def materialize(store: ArtifactStore, stage: str, config: dict[str, Any], upstream: list[Artifact],
                build: Callable[[Path, Path], dict[str, Any]], force: bool) -> Artifact:
    """``store.materialize`` keyed by ``stage``'s code fingerprint, ``config`` and the upstream keys."""
    return store.materialize(stage, code_version.stage_fingerprint(stage), config,
                             {a.stage: a.key for a in upstream}, build, force)


def precision(cfg: DictConfig, path: str) -> str | bool:
    """The precision setting at ``path`` (a ``PRECISION`` key) as it runs on ``cfg.device``."""
    return PRECISION[path](OmegaConf.select(cfg, path, throw_on_missing=True), cfg.device)


def with_precision(cfg: DictConfig, sliced: dict[str, Any]) -> dict[str, Any]:
    """``sliced`` (a ``config_slice``) with every precision setting in it resolved (``precision``), in place."""
    for path in PRECISION:
        for top, node in sliced.items():
            if path == top:
                sliced[top] = precision(cfg, path)
            elif path.startswith(top + "."):
                *parents, leaf = path[len(top) + 1:].split(".")
                for name in parents:
                    node = node.get(name) if isinstance(node, dict) else None
                if isinstance(node, dict) and leaf in node:
                    node[leaf] = precision(cfg, path)
    return sliced


def keyed_slice(cfg: DictConfig, paths: list[str]) -> dict[str, Any]:
    """``config_slice`` with its precision settings resolved: the form a slice enters a key in."""
    return with_precision(cfg, config_slice(cfg, paths))


def teacher_identity(cfg: DictConfig) -> dict[str, Any]:
    return models.model_fingerprint(cfg.teacher.model, cfg.teacher.revision, cfg.cache_dir)


def training_slice(cfg: DictConfig, paths: list[str]) -> dict[str, Any]:
    """``keyed_slice`` without the ``TRAINING_MECHANICS`` keys, at any depth."""
    def strip(node: Any) -> Any:
        return {k: strip(v) for k, v in node.items() if k not in TRAINING_MECHANICS} if isinstance(node, dict) else node
    return strip(keyed_slice(cfg, paths))


def sampling_slice(cfg: DictConfig, side: str, backend: str, compiled: bool = False) -> dict[str, Any]:
    """``<side>.prompt`` and ``<side>.sampling`` as they enter the sampling artifact's key, for the
    resolved ``backend`` and ``compile`` setting (``auto`` is keyed by what it resolved to).

    ``backend`` is the one it resolved to and ``api`` is out (an endpoint's identity is the key's
    ``teacher`` entry). With hf, ``compile`` (a vllm setting) is out. With vllm, ``batch_size``
    (hf's batching) is out and ``compile`` is the resolved true or false (fused kernels round
    differently). With openai, dtype, batch_size and the api's throughput and retry knobs change
    how fast, not what, so they are out. ``dtype`` is keyed as resolved (``precision``).
    """
    out = keyed_slice(cfg, [f"{side}.prompt", f"{side}.sampling"])
    sampling = {k: v for k, v in out[f"{side}.sampling"].items() if k not in ("api", "compile")}
    sampling["backend"] = backend
    if backend == "vllm":
        sampling = {**{k: v for k, v in sampling.items() if k != "batch_size"}, "compile": compiled}
    elif backend == "openai":
        sampling = {k: v for k, v in sampling.items() if k not in ("dtype", "batch_size")}
    out[f"{side}.sampling"] = sampling
    return out


def api_identity(api: openai_api.ApiSettings) -> dict[str, Any]:
    """A teacher behind an API is known by its endpoint and served name (its weights are not visible)."""
    return {"backend": "openai", "base_url": openai_api.api_root(api.base_url), "model": api.model,
            "mode": api.mode, "prompt_truncation": f"{openai_api.CHARS_PER_TOKEN} characters per token"}


def judge_prompt(cfg: DictConfig) -> judge_lib.JudgePrompt:
    spec = data_lib.task_spec(cfg.data.task)
    return judge_lib.JudgePrompt.load(judge_lib.prompt_path(cfg.eval.judge.prompt), spec.fields)


def judge_identity(cfg: DictConfig) -> dict[str, Any]:
    """``eval.judge`` as it enters evaluate's key: the judge model's identity (its weights, or an
    endpoint's address and served name), the prompt file's text, and what changes the verdicts
    (an hf judge's precision, ``eval.dtype`` as resolved, among them)."""
    j = cfg.eval.judge
    if not j.enabled:
        return {"enabled": False}
    if j.backend == "openai":
        model = api_identity(openai_api.ApiSettings.from_config(j.api).check("eval.judge.api"))
    elif j.backend == "hf":
        model = models.model_fingerprint(j.model, judge_lib.judge_load(j, cfg.teacher).revision, cfg.cache_dir)
    else:
        raise ConfigError(f"eval.judge.backend='{j.backend}' is not a judge backend; use hf or openai")
    return {"enabled": True, "backend": j.backend, "model": model, "prompt": j.prompt,
            "prompt_text": judge_prompt(cfg).text, "max_tokens": j.max_tokens, "rows": j.rows,
            "validity_rows": j.validity_rows,
            **({"dtype": precision(cfg, "eval.dtype")} if j.backend == "hf" else {})}
