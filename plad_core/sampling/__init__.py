"""Sampling backends. Each backend turns prompts into rows of the shared samples schema.

``<side>.sampling.backend`` picks one (see ``conf/base.yaml``):

- ``hf``: the model is loaded here and sampled with transformers (``plad_core.sampling.hf``).
- ``vllm``: the model is loaded here into an offline ``vllm.LLM`` (``plad_core.sampling.vllm_backend``).
- ``openai``: an OpenAI-compatible HTTP endpoint (vLLM, a hosted API, or the project's own
  ``python -m plad_core.sampling.server``) sampled over ``/v1/completions`` or
  ``/v1/chat/completions`` (``plad_core.sampling.openai_api``); the model is never loaded here.
- ``auto``: vllm when it is installed, else hf (``resolve_backend``).
"""

from plad_core.config import ConfigError
from plad_core.sampling import vllm_backend

BACKENDS = {
    "auto": "vllm when the vllm package is installed (it samples faster: see bench/sampling.py), else hf",
    "hf": "transformers, in this process (plad_core.sampling.hf)",
    "vllm": "offline vllm.LLM, in this process (plad_core.sampling.vllm_backend)",
    "openai": "an OpenAI-compatible HTTP API: vLLM, a hosted API or plad_core.sampling.server",
}


def check_backend(name: str, where: str, allowed: tuple[str, ...] = tuple(BACKENDS), why: str = "") -> str:
    """The backend ``name`` resolves to (``auto``: vllm if installed, else hf).

    A ValueError names ``where`` and the choices when ``name`` is unknown or not in ``allowed``; an
    ImportError says how to install vllm when ``name`` is vllm and it is not installed.
    """
    if name not in BACKENDS:
        raise ConfigError(f"{where}.backend='{name}' is not a sampling backend; available: "
                         + "; ".join(f"{k} ({v})" for k, v in BACKENDS.items()))
    if name not in allowed:
        raise ConfigError(f"{where}.backend='{name}' is not supported here; use one of {', '.join(allowed)}"
                         + (f" ({why})" if why else ""))
    if name == "auto":
        return "vllm" if vllm_backend.installed() else "hf"
    if name == "vllm" and not vllm_backend.installed():
        raise ImportError(f"{where}.backend='vllm' needs the vllm package, which is not installed in this "
                          f"environment: {vllm_backend.INSTALL_HINT}; or set {where}.backend=hf")
    return name
