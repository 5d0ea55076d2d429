from pathlib import Path

import pytest
import torch
from tiny import AMX, AVX2, AVX512, AVX512_BF16, CACHE, fake_cpu, make_tiny_model

from plad_core import models
from plad_core.models import (
    ModelError,
    load_model,
    model_fingerprint,
    resolve_model_path,
    save_model,
    slice_layers,
)


def test_slice_keeps_chosen_layers_and_runs(tmp_path):
    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "m", layers=4)), tmp_path)
    kept = [model.model.layers[i].mlp.up_proj.weight.clone() for i in (0, 3)]
    slice_layers(model, [0, 3])
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert all(torch.equal(a, layer.mlp.up_proj.weight) for a, layer in zip(kept, model.model.layers))
    save_model(model, tokenizer, tmp_path / "sliced")
    reloaded, _ = load_model(str(tmp_path / "sliced"), tmp_path)
    ids = tokenizer("hello world", return_tensors="pt")
    assert reloaded.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3


@pytest.mark.parametrize("keep", [[0, 4], [2, 1], [1, 1]])
def test_bad_layer_lists_are_rejected(tmp_path, keep):
    model, _ = load_model(str(make_tiny_model(tmp_path / "m", layers=4)), tmp_path)
    with pytest.raises(ModelError, match="keep_layers"):
        slice_layers(model, keep)


def test_local_folder_fingerprint_changes_with_the_weights(tmp_path):
    folder = make_tiny_model(tmp_path / "m", seed=0)
    before = model_fingerprint(str(folder))
    make_tiny_model(folder, seed=0, hidden=32)
    assert model_fingerprint(str(folder)) != before
    assert model_fingerprint("org/model", "abc") == {"spec": "org/model", "revision": "abc"}


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(str(tmp_path / "nowhere"), tmp_path)


@pytest.mark.slow
def test_embedded_teacher_is_real_smollm2():
    model, tokenizer = load_model("embedded:smollm2-135m-instruct", CACHE)
    assert model.config.num_hidden_layers == 30 and len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    text = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
    ids = tokenizer(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert "Rome" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
    assert (CACHE / "models").is_dir() and resolve_model_path("embedded:smollm2-135m-instruct", CACHE).startswith(str(CACHE))


def test_a_model_folder_is_known_by_its_files_contents_not_its_place_or_mtimes(tmp_path):
    import hashlib
    import json
    import os
    import shutil

    first = make_tiny_model(tmp_path / "a" / "m", seed=0)
    second = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, second)
    cache = tmp_path / "cache"
    weights = first / "model.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    printed = model_fingerprint(str(first), cache_dir=cache)
    assert printed["files"]["model.safetensors"] == expected and "spec" not in printed
    assert model_fingerprint(str(second), cache_dir=cache) == printed == model_fingerprint(str(second))
    # one byte changed, the size and mtime as they were: a new fingerprint, though the digest was cached
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    changed = model_fingerprint(str(first), cache_dir=cache)
    assert changed["files"]["model.safetensors"] == hashlib.sha256(bytes(data)).hexdigest() != expected
    # an unchanged file's digest comes from the cache, not from reading it again
    digests = json.loads((cache / "file_sha256.json").read_text())
    digests[str((second / "model.safetensors").resolve())][-1] = "cached"
    (cache / "file_sha256.json").write_text(json.dumps(digests))
    assert model_fingerprint(str(second), cache_dir=cache)["files"]["model.safetensors"] == "cached"


# --- precision follows the hardware -------------------------------------------------------------

@pytest.mark.parametrize("features, fast", [(AVX2, False), (AVX512, False), (AVX512_BF16, True), (AMX, True)],
                         ids=["AVX2", "AVX512", "AVX512_BF16", "AMX"])
def test_auto_is_bf16_only_on_cpus_with_bf16_instructions(monkeypatch, features, fast):
    fake_cpu(monkeypatch, features)
    assert models.resolve_dtype("auto", "cpu") == ("bfloat16" if fast else "float32")
    assert models.resolve_dtype("auto", torch.device("cpu")) == ("bfloat16" if fast else "float32")
    assert models.resolve_bf16("auto", "cpu") is fast
    if not torch.cuda.is_available():  # device=auto is then the CPU
        assert models.resolve_bf16("auto", "auto") is fast
    # explicit settings are kept whatever the hardware
    assert [models.resolve_dtype(d, "cpu") for d in ("float32", "bfloat16", "float16")] == ["float32", "bfloat16", "float16"]
    assert (models.resolve_bf16(True, "cpu"), models.resolve_bf16(False, "cpu")) == (True, False)
    # other accelerators: float32 (bf16 only where it is known to be fast), whatever the CPU
    assert models.resolve_dtype("auto", "mps") == models.resolve_dtype("auto", "xpu:0") == "float32"


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_asks_the_gpu_not_the_cpu(monkeypatch, supported):
    fake_cpu(monkeypatch, AMX if not supported else AVX2)  # the CPU's answer would be the opposite
    asked = []
    monkeypatch.setattr(models, "cuda_bf16", lambda index: asked.append(index) or supported)
    assert models.resolve_dtype("auto", "cuda:1") == ("bfloat16" if supported else "float32")
    assert models.resolve_bf16("auto", "cuda") is supported
    assert asked == [1, None]  # the GPU named, else the current one


def test_the_real_cuda_answer():
    if not torch.cuda.is_available():
        assert models.cuda_bf16(None) is False and models.resolve_dtype("auto", "cuda") == "float32"
    else:  # compute capability 8.0+ (Ampere on) has bf16 tensor cores
        assert models.cuda_bf16(None) is (torch.version.hip is not None or torch.cuda.get_device_capability()[0] >= 8)


def test_the_real_cpu_answer_follows_the_kernels_flags():
    """Unfaked: fast_bf16 on this CPU agrees with the flags Linux reports in /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or "flags" not in cpuinfo.read_text():
        pytest.skip("no x86 /proc/cpuinfo flags here")
    flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split(":")[1].split()}
    expected = "avx512_bf16" in flags or "amx_bf16" in flags
    assert models.fast_bf16("cpu") is expected
    assert models.resolve_dtype("auto", "cpu") == ("bfloat16" if expected else "float32")


def test_bad_precision_settings_are_errors():
    with pytest.raises(ModelError, match=r"dtype 'fp8' is not auto or one of float32, bfloat16, float16"):
        models.resolve_dtype("fp8", "cpu")
    for bad in ("yes", "True", 1):
        with pytest.raises(ModelError, match=r"is not auto, true or false"):
            models.resolve_bf16(bad, "cpu")


def test_cast_auto_follows_the_models_device(monkeypatch, tmp_path):
    model, _ = load_model(str(make_tiny_model(tmp_path / "m", layers=1, hidden=16)), tmp_path)
    fake_cpu(monkeypatch, AVX2)
    assert {p.dtype for p in models.cast(model, "auto").parameters()} == {torch.float32}
    fake_cpu(monkeypatch, AMX)
    assert {p.dtype for p in models.cast(model, "auto").parameters()} == {torch.bfloat16}
    assert {p.dtype for p in models.cast(model, "float32").parameters()} == {torch.float32}
