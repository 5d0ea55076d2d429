"""``auto`` precision (``plad_core.models.fast_bf16``) in artifact keys and where it runs: with the CPU
faked, every key that holds a dtype or bf16 setting equals the key of the explicit setting auto
resolved to, the stage hands that value to the code that runs, and training autocasts exactly then."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tiny import AMX, AVX2, AVX512, AVX512_BF16, fake_cpu, make_tiny_model, tiny_overrides
from transformers import LlamaConfig, LlamaForCausalLM

from plad_core.artifacts import ArtifactStore, artifact_key
from plad_core.config import load_config
from plad_core.stages import keys, run_init_student, run_prepare_data
from plad_core.stages import sampling as stage_sampling
from plad_core.stages.pairs import score_pairs_config
from plad_core.training import loop

DTYPE_SETTINGS = ("teacher.sampling.dtype", "student.sampling.dtype", "eval.dtype")
BF16_SETTINGS = ("student.heal.bf16", "sft.bf16", "train.optim.bf16")
CPUS = [(AVX2, False), (AVX512, False), (AVX512_BF16, True), (AMX, True)]
CPU_IDS = ["AVX2", "AVX512", "AVX512_BF16", "AMX"]


def explicit(bf16: bool) -> list[str]:
    """The overrides that state what auto resolves to on a CPU with (or without) fast bf16."""
    return ([f"{p}={'bfloat16' if bf16 else 'float32'}" for p in DTYPE_SETTINGS]
            + [f"{p}={'true' if bf16 else 'false'}" for p in BF16_SETTINGS])


def key_configs(overrides: list[str]) -> dict[str, object]:
    """Every key config that holds a precision setting (dpo: score_pairs scores, so it keys bf16)."""
    cfg = load_config("base", ["device=cpu", "train.loss=dpo", *overrides])
    return {**{f"sample_{side} {backend}": keys.sampling_slice(cfg, side, backend)
               for side in ("teacher", "student") for backend in ("hf", "vllm")},
            "init_student": keys.training_slice(cfg, ["student.keep_layers", "student.heal"]),
            "sft_student": keys.training_slice(cfg, ["sft", "student.prompt"]),
            "calibrate": keys.training_slice(cfg, ["train"]),
            "score_pairs": score_pairs_config(cfg),
            "dev_outputs": keys.keyed_slice(cfg, keys.GENERATION_SLICE),
            "evaluate": keys.keyed_slice(cfg, ["eval", "student.prompt"]),
            "judgments": keys.judge_identity(cfg)}


@pytest.mark.parametrize("features, fast", CPUS, ids=CPU_IDS)
def test_auto_keys_are_the_keys_of_the_explicit_setting_it_resolves_to(monkeypatch, features, fast):
    fake_cpu(monkeypatch, features)
    auto, same, other = key_configs([]), key_configs(explicit(fast)), key_configs(explicit(not fast))
    hashed = {name: artifact_key(name, 1, config, {}) for name, config in auto.items()}
    # hashed, so a bool and an int (False == 0) or a dtype's spelling would differ
    assert hashed == {name: artifact_key(name, 1, config, {}) for name, config in same.items()}
    assert all(config != other[name] for name, config in auto.items()), "each key moves with the precision"
    dtype = "bfloat16" if fast else "float32"
    assert auto["sample_teacher hf"]["teacher.sampling"]["dtype"] == auto["judgments"]["dtype"] == dtype
    assert auto["dev_outputs"]["eval.dtype"] == auto["evaluate"]["eval"]["dtype"] == dtype
    assert auto["init_student"]["student.heal"]["bf16"] is fast and auto["calibrate"]["train"]["optim"]["bf16"] is fast
    assert auto["sft_student"]["sft"]["bf16"] is fast and auto["score_pairs"]["train.optim.bf16"] is fast


def test_a_loss_that_scores_nothing_and_an_api_teacher_key_no_precision(monkeypatch):
    fake_cpu(monkeypatch, AVX2)
    assert "train.optim.bf16" not in score_pairs_config(load_config("base", ["train.loss=ranking"]))
    api = load_config("base", ["teacher.sampling.backend=openai", "teacher.sampling.api.model=m",
                               "student.model=some/student", "eval.judge.enabled=false"])
    assert "dtype" not in keys.sampling_slice(api, "teacher", "openai")["teacher.sampling"]


@pytest.mark.parametrize("features, fast", [(AVX2, False), (AMX, True)], ids=["AVX2", "AMX"])
def test_the_sampler_gets_the_dtype_its_key_holds(monkeypatch, features, fast):
    fake_cpu(monkeypatch, features)
    s = stage_sampling._sampling(load_config("base", ["device=cpu", "teacher.sampling.backend=hf"]), "sample_teacher",
                                 None)
    assert s.spec.dtype == s.config["teacher.sampling"]["dtype"] == ("bfloat16" if fast else "float32")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0))


@pytest.mark.parametrize("features, setting, expected", [
    (AVX2, "auto", False), (AVX512, "auto", False), (AVX512_BF16, "auto", True), (AMX, "auto", True),
    (AVX2, True, True), (AMX, False, False)])  # an explicit setting wins over the hardware
def test_the_training_loop_autocasts_where_bf16_resolves_true(monkeypatch, features, setting, expected):
    fake_cpu(monkeypatch, features)
    model, seen = tiny_llama(), []

    def step(batch):
        logits = model(input_ids=batch["input_ids"]).logits
        seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
        return logits.float().logsumexp(-1).mean(), {}

    loop.train_loop(model, [{"input_ids": torch.tensor([[1, 2, 3, 4]])}], step, lr=1e-3, bf16=setting, seed=0)
    assert seen == [(expected, torch.bfloat16 if expected else torch.float32)]


@pytest.mark.slow
def test_healing_runs_in_the_precision_its_key_records(monkeypatch, tmp_path):
    """The heal stage under auto: float32 on a faked AVX2 CPU, bf16 autocast on a faked AMX one; each
    artifact is the one an explicit setting builds (reused, not rebuilt), and the two differ by bf16
    rounding only."""
    overrides = tiny_overrides(tmp_path, make_tiny_model(tmp_path / "teacher", layers=4)) + ["device=cpu"]
    store = ArtifactStore(tmp_path / "artifacts")
    cfg = lambda setting: load_config("base", [*overrides, f"student.heal.bf16={setting}"])  # noqa: E731
    data = run_prepare_data(cfg("auto"), store)
    built = {}
    for features, fast in ((AVX2, False), (AMX, True)):
        fake_cpu(monkeypatch, features)
        built[fast] = run_init_student(cfg("auto"), store, data)
        assert built[fast].manifest["config"]["student.heal"]["bf16"] is fast
        assert run_init_student(cfg(str(fast).lower()), store, data).path == built[fast].path
    assert built[True].key != built[False].key
    first = [float(pd.read_parquet(built[fast].file("heal_log.parquet"))["loss"].iloc[0]) for fast in (False, True)]
    assert first[0] != first[1] and abs(first[1] - first[0]) < 0.05 * abs(first[0])  # same weights, bf16 rounding
