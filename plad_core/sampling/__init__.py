"""Sampling backends. Each backend turns prompts into rows of the shared samples schema.

``<side>.sampling.backend`` picks one (see ``conf/base.yaml``):

- ``hf``: the model is loaded here and sampled with transformers (``plad_core.sampling.hf``).
- ``openai``: an OpenAI-compatible HTTP endpoint (vLLM, a hosted API, or the project's own
  ``python -m plad_core.sampling.server``) sampled over ``/v1/completions`` or
  ``/v1/chat/completions`` (``plad_core.sampling.openai_api``); the model is never loaded here.
"""

BACKENDS = {
    "hf": "transformers, in this process (plad_core.sampling.hf)",
    "openai": "an OpenAI-compatible HTTP API: vLLM, a hosted API or plad_core.sampling.server",
}


def check_backend(name: str, where: str, allowed: tuple[str, ...] = tuple(BACKENDS), why: str = "") -> str:
    """``name`` if it is one of ``allowed``; otherwise a ValueError naming ``where`` and the choices."""
    if name not in BACKENDS:
        raise ValueError(f"{where}.backend='{name}' is not a sampling backend; available: "
                         + "; ".join(f"{k} ({v})" for k, v in BACKENDS.items()))
    if name not in allowed:
        raise ValueError(f"{where}.backend='{name}' is not supported here; use one of {', '.join(allowed)}"
                         + (f" ({why})" if why else ""))
    return name
