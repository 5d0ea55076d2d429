"""Tiny random-init Llama models with SmolLM2's real tokenizer, saved as local folders."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from plad_core.models import load_tokenizer, resolve_model_path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "data" / "cache"
TLDR = REPO.parent / "shared" / "data" / "tldr" / "validation.jsonl"
HH = REPO.parent / "shared" / "data" / "hh" / "test.jsonl"


def real_tokenizer():
    return load_tokenizer(resolve_model_path("embedded:smollm2-135m-instruct", CACHE))


def make_tiny_model(out: Path, layers: int = 4, seed: int = 0, hidden: int = 64) -> Path:
    tokenizer = real_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# The suite's numbers must not depend on the machine: float32 everywhere, rather than auto's bf16 on a
# GPU or an AVX512-BF16/AMX CPU (and auto is float32 on an AVX2 CPU, where bf16 is 15-75x slower).
# tests/stages/test_precision.py tests auto itself.
FLOAT32 = ["teacher.sampling.dtype=float32", "student.sampling.dtype=float32", "eval.dtype=float32",
           "student.heal.bf16=false", "sft.bf16=false", "train.optim.bf16=false", "teacher.sft.bf16=false"]


# CPU feature flags as torch.cpu.get_capabilities() names them (the rest of its mapping left out), for
# faking the CPU in plad_core.models.cpu_features: AVX512 is Skylake-X/Cascade Lake or a Zen 4 part
# without BF16; AMX has amx_bf16 alone here, to show it suffices (Sapphire Rapids has both).
AVX2 = {"avx": True, "avx2": True, "fma3": True, "avx512_f": False, "avx512_bw": False, "avx512_vnni": False,
        "avx512_bf16": False, "amx_tile": False, "amx_bf16": False}
AVX512 = {**AVX2, "avx512_f": True, "avx512_bw": True, "avx512_vnni": True}
AVX512_BF16 = {**AVX512, "avx512_bf16": True}
AMX = {**AVX512, "amx_tile": True, "amx_bf16": True}
FAKE_CPUS = {"AVX2": AVX2, "AVX512": AVX512, "AVX512_BF16": AVX512_BF16, "AMX": AMX}


def fake_cpu(monkeypatch, features: dict) -> None:
    """Make plad_core.models see a CPU with ``features``."""
    from plad_core import models
    monkeypatch.setattr(models, "cpu_features", lambda: dict(features))


def tiny_overrides(root: Path, teacher: Path, data: Path = TLDR) -> list[str]:
    """A whole-pipeline config on 16 real rows and tiny models: runs in seconds."""
    return [f"data.path={data}", "data.n_labeled=6", "data.n_unlabeled=6", "data.n_dev=4",
            f"artifacts_root={root / 'artifacts'}", f"cache_dir={CACHE}",
            f"teacher.model={teacher}", "student.keep_layers=[0,3]", "student.heal.steps=2",
            "teacher.sampling.max_new_tokens=8", "student.sampling.max_new_tokens=8", "eval.max_new_tokens=8",
            "teacher.sampling.shard_size=4", "teacher.sampling.stop=[]", "student.sampling.stop=[]",
            "sft.batch_size=2", "train.optim.batch_size=2",
            # the few-shot teacher, as in the demo (tests/stages/test_teacher_sft.py tunes one)
            "teacher.sft.enabled=false",
            # random-init models never emit EOS, so every 8-token output is cut: keep (not drop) those pairs
            "pairs.truncated=keep",
            # not auto's vllm: these models' 16-wide attention heads are below vLLM's CPU kernels' minimum
            # of 32, and an engine start would outlast the whole run (tests/test_vllm_backend.py runs vLLM)
            "teacher.sampling.backend=hf", "student.sampling.backend=hf", *FLOAT32]
