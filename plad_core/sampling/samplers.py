"""What a sampling backend needs to generate, as a plain picklable record, and the jobs built on it.

A ``SamplerSpec`` names the backend, the model to load (a local folder or hub id; the served name
for openai) and the sampling settings. ``make_sampler`` turns it into the ``(prompts, seed) ->
[Generation]`` function that ``plad_core.sampling.shards`` calls per shard. A ``ShardJob`` is one
shard of a sampling stage with its spec: a process that has the package (a Dask worker of the
flow, see ``flows/distill.py``) runs it with ``run_shard_job``, keeping the last model it loaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from plad_core import models
from plad_core.sampling import hf, openai_api, vllm_backend
from plad_core.sampling.shards import GenerateFn, Shard, write_shard


@dataclass(frozen=True)
class SamplerSpec:
    backend: str                  # hf | vllm | openai (never auto: resolved before)
    model: str                    # hf, vllm: a model spec (models.resolve_model_path); openai: the served name
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    dtype: str                    # hf, vllm (auto: models.resolve_dtype on device)
    batch_size: int               # hf
    seed: int                     # vllm: LLM(seed=...); each call is reseeded with its shard's seed too
    compile: bool = False         # vllm: torch.compile (and CUDA graphs) instead of eager
    cache_dir: str = "data/cache"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    use_safetensors: bool = True
    device: str = "cpu"           # hf: plad_core.models.resolve_device (vllm picks its own)
    api: Optional[tuple[tuple[str, Any], ...]] = None  # openai: the ApiConfig fields as (name, value) pairs
    desc: str = "sample"


def make_sampler(spec: SamplerSpec) -> GenerateFn:
    """Load what ``spec`` needs (nothing for openai) and return its generate function."""
    if spec.backend == "hf":
        model, tokenizer = models.load_model(spec.model, spec.cache_dir, spec.revision, spec.trust_remote_code,
                                             spec.use_safetensors, spec.device)
        models.cast(model, spec.dtype)

        def generate_hf(prompts: list[str], seed: int) -> list[hf.Generation]:
            return hf.generate(model, tokenizer, prompts, n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
                               max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size, seed=seed,
                               stop=list(spec.stop), desc=spec.desc)
        return generate_hf
    if spec.backend == "vllm":
        dtype = models.resolve_dtype(spec.dtype, spec.device)  # vLLM's own auto is the checkpoint's dtype
        llm = vllm_backend.load(models.resolve_model_path(spec.model, spec.cache_dir), dtype, spec.seed,
                                spec.compile, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
                                use_safetensors=spec.use_safetensors)

        def generate_vllm(prompts: list[str], seed: int) -> list[hf.Generation]:
            return vllm_backend.generate(llm, prompts, n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
                                         max_new_tokens=spec.max_new_tokens, seed=seed, stop=spec.stop)
        return generate_vllm
    if spec.backend == "openai":
        api = openai_api.ApiSettings(**dict(spec.api or ()))

        def generate_api(prompts: list[str], seed: int) -> list[hf.Generation]:
            return openai_api.generate(prompts, api, n=spec.n, temperature=spec.temperature, top_p=spec.top_p,
                                       max_new_tokens=spec.max_new_tokens, seed=seed, stop=list(spec.stop),
                                       desc=spec.desc)
        return generate_api
    raise ValueError(f"no sampler for backend '{spec.backend}'")


def lazy_sampler(spec: SamplerSpec) -> GenerateFn:
    """``make_sampler(spec)``'s function, loading the model at its first call, not before."""
    loaded: list[GenerateFn] = []

    def generate(prompts: list[str], seed: int) -> list[hf.Generation]:
        if not loaded:
            loaded.append(make_sampler(spec))
        return loaded[0](prompts, seed)
    return generate


@dataclass(frozen=True)
class ShardJob:
    """One shard of a sampling stage, to run anywhere that sees ``work_dir`` (an absolute path)."""
    spec: SamplerSpec
    shard: Shard
    meta: tuple[tuple[str, Any], ...]   # the samples' constant columns (backend, model, ...)
    work_dir: str
    torch_threads: int = 0              # > 0: torch threads for this job's process


# A worker keeps the sampler of its last spec (the model stays loaded for the stage's next shard).
_cached_sampler = functools.lru_cache(maxsize=1)(make_sampler)


def run_shard_job(job: ShardJob) -> str:
    """Generate and commit one shard (a no-op if it is already committed); returns the shard's path."""
    path = job.shard.path(Path(job.work_dir))
    if path.is_file():
        return str(path)
    if job.torch_threads > 0:
        torch.set_num_threads(job.torch_threads)
    generations = _cached_sampler(job.spec)(list(job.shard.prompts), job.shard.seed)
    return str(write_shard(Path(job.work_dir), job.shard, generations, dict(job.meta)))
