"""One model's outputs on the dev rows: greedy generations with ROUGE F1, and the sampled outputs
with their own log-likelihoods that calibration is measured on.

Prompts come built (the stages build them from the data artifact, ``stages.inputs.prompts_for``),
one per row of ``dev``, so this module reads no artifacts.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from plad_core import models
from plad_core.rouge import rouge_f1
from plad_core.sampling import hf, openai_api
from plad_core.sampling.generation import Generation
from plad_core.training import reference_scores
from plad_core.training.batches import encode, scored_tokens

CALIBRATED_SYSTEMS = ("sft", "plad")  # the students whose sequence likelihood calibration is measured


def generate_and_score(model: Any, tokenizer: Any, system: str, dev: pd.DataFrame, prompts: list[str],
                       cfg: DictConfig) -> pd.DataFrame:
    """Greedy outputs of one model on the dev rows with per-row ROUGE F1: system, id, text, output_tokens, rouge*."""
    models.cast(model, cfg.eval.dtype)
    gens = hf.generate(model, tokenizer, prompts, temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens,
                       batch_size=cfg.eval.batch_size, stop=list(cfg.eval.stop), desc=f"evaluate {system}")
    return _scored(system, dev, gens, cfg)


def api_generate_and_score(settings: openai_api.ApiSettings, system: str, dev: pd.DataFrame, prompts: list[str],
                           cfg: DictConfig, where: str = "teacher.sampling.api") -> pd.DataFrame:
    """``generate_and_score`` for a model behind an OpenAI-compatible endpoint: greedy (temperature 0),
    ``eval.max_new_tokens`` and ``eval.stop``, one request per prompt; ``output_tokens`` as the API counts them."""
    gens = openai_api.generate(prompts, settings, n=1, temperature=0.0, top_p=1.0,
                               max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed, stop=list(cfg.eval.stop),
                               desc=f"evaluate {system}", where=where)
    return _scored(system, dev, gens, cfg)


def _scored(system: str, dev: pd.DataFrame, gens: list[Generation], cfg: DictConfig) -> pd.DataFrame:
    """One greedy output per dev row with its ROUGE F1 against the reference."""
    texts = [g.text for g in gens]
    scores = rouge_f1(texts, list(dev["reference"]), cfg.eval.rouge_stemmer)
    return pd.DataFrame({"system": system, "id": dev["id"], "text": texts,
                         "output_tokens": [g.output_tokens for g in gens], **scores})


def calibration_rows(dev: pd.DataFrame, e: DictConfig) -> pd.DataFrame:
    """The dev rows calibration is measured on: the first ``eval.calibration_rows`` when > 0, else all."""
    return dev.head(e.calibration_rows) if e.calibration_rows > 0 else dev


@torch.inference_mode()
def calibration_samples(model: Any, tokenizer: Any, system: str, dev: pd.DataFrame, prompts: list[str],
                        cfg: DictConfig) -> pd.DataFrame:
    """K = eval.calibration_samples sampled outputs per prompt of ``dev`` (``calibration_rows``) from
    one student, each with the student's own log-likelihood (summed and per token, EOS included, as in
    calibration training; in eval.dtype) and its ROUGE-L F1 against the reference: system, id,
    sample_index, text, output_tokens, scored_tokens, logp_sum, logp_mean, rougeL."""
    e = cfg.eval
    models.cast(model, e.dtype)
    model.eval()
    gens = hf.generate(model, tokenizer, prompts, n=e.calibration_samples, temperature=e.calibration_temperature,
                       top_p=e.calibration_top_p, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                       seed=e.seed, stop=list(e.stop), desc=f"calibration samples {system}")
    max_len = cfg.student.prompt.max_tokens + e.max_new_tokens + 8  # long enough that nothing is cut
    items = [encode(tokenizer, prompts[g.prompt_index], g.text, max_len) for g in gens]
    logp_sum = reference_scores.sequence_scores(model, items, tokenizer.pad_token_id, e.batch_size)
    scored = [scored_tokens(item) for item in items]
    ids, references = list(dev["id"]), list(dev["reference"])
    texts = [g.text for g in gens]
    quality = rouge_f1(texts, [references[g.prompt_index] for g in gens], e.rouge_stemmer)["rougeL"]
    return pd.DataFrame({"system": system, "id": [ids[g.prompt_index] for g in gens],
                         "sample_index": [g.sample_index for g in gens], "text": texts,
                         "output_tokens": [g.output_tokens for g in gens], "scored_tokens": scored,
                         "logp_sum": logp_sum, "logp_mean": [t / max(c, 1) for t, c in zip(logp_sum, scored)],
                         "rougeL": list(quality)})
