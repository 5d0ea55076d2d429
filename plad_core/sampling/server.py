"""A small OpenAI-compatible HTTP server for a local Hugging Face model, through the hf backend.

    python -m plad_core.sampling.server --model PATH_OR_SPEC [--host 127.0.0.1] [--port 8000]

Serves ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` (non-streaming;
``model, prompt | messages, max_tokens, temperature, top_p, n, stop, seed``) with ``usage`` and
``finish_reason`` as the OpenAI API has them, so ``<side>.sampling.backend=openai`` can be pointed
at it. It is for local use and tests, not for throughput: requests are generated one at a time
(a lock around ``plad_core.sampling.hf.generate``, seeded per request, so answers are reproducible).
At scale, serve the model with vLLM (``vllm serve``) and use the same client.

It binds 127.0.0.1 unless told otherwise. ``--api-key-env NAME`` makes it require
``Authorization: Bearer $NAME``. ``--port 0`` picks a free port; the first line printed names the URL.
The model loads as ``teacher.model`` does: ``--revision``, ``--trust-remote-code``, and safetensors
weights only unless ``--no-use-safetensors`` (a folder holding only pickle checkpoints, such as
``pytorch_model.bin``, is refused).

Tests wrap ``make_server`` with a ``Handler`` subclass (``tests/sampling/fault_server.py``: injected
faults and request counters); the hooks ``intercept`` and ``extra_get`` are for that.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar per request in the server's log

import argparse
import json
import logging
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from plad_core import models
from plad_core.sampling import hf
from plad_core.sampling.vllm_backend import check_weights

log = logging.getLogger("plad.sampling.server")

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
MAX_BODY_BYTES = 16 * 1024 * 1024


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ServerState:
    """The model and what the handlers share: the generation lock."""

    def __init__(self, model: Any, tokenizer: Any, name: str, api_key: Optional[str] = None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.api_key = api_key
        self.generate_lock = threading.Lock()
        self.max_positions = getattr(model.config, "max_position_embeddings", None)


def _float(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"'{key}' must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _int(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"'{key}' must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("'stop' must be a non-empty string or a list of them")
    return stop


def _chat_prompt(tokenizer: Any, messages: Any) -> str:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects with string content")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages)


def complete(state: ServerState, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-style answer to one generation request (raises BadRequest for an invalid one)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("model") not in (None, state.name):
        raise BadRequest(f"The model `{body.get('model')}` does not exist; this server serves `{state.name}`", 404)
    if body.get("stream"):
        raise BadRequest("'stream' is not supported by this server")
    chat = path == "/v1/chat/completions"
    if chat:
        prompts = [_chat_prompt(state.tokenizer, body.get("messages"))]
    else:
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise BadRequest("'prompt' must be a string or a non-empty list of strings")
    n = _int(body, "n", 1, 1, 64)
    max_tokens = _int(body, "max_tokens", 16, 1, 1 << 20)
    temperature = _float(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _float(body, "top_p", 1.0, 1e-6, 1.0)
    seed = body.get("seed")
    seed = secrets.randbelow(2 ** 31) if seed is None else _int(body, "seed", 0, -(2 ** 63), 2 ** 63 - 1)
    stop = _stop(body)
    with state.generate_lock:  # the tokenizer is not safe to share between threads either
        if state.max_positions:
            longest = max(len(state.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
            if longest + max_tokens > state.max_positions:
                raise BadRequest(f"prompt ({longest} tokens) + max_tokens ({max_tokens}) exceed the model's "
                                 f"context of {state.max_positions} tokens")
        gens = hf.generate(state.model, state.tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                           max_new_tokens=max_tokens, batch_size=len(prompts), seed=seed % (2 ** 63), stop=stop,
                           desc="serve")
    choices = []
    for g in gens:
        choice: dict[str, Any] = {"index": g.prompt_index * n + g.sample_index, "finish_reason": g.finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": g.text}
        else:
            choice.update(text=g.text, logprobs=None)
        choices.append(choice)
    prompt_tokens = sum(g.prompt_tokens for g in gens if g.sample_index == 0)
    completion_tokens = sum(g.output_tokens for g in gens)
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}",
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": state.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    server_version = "plad-sampling-server"
    state: ServerState  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict[str, Any], headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: Optional[dict[str, str]] = None) -> None:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_error"}.get(status, "server_error")
        self._send(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def intercept(self, path: str) -> bool:
        """Called for each generation request before its key is checked; True when it has been
        answered here. This server answers none: test servers count requests and inject faults."""
        return False

    def extra_get(self, path: str) -> bool:
        """A GET route beyond the API's (True when answered); none here, tests add theirs."""
        return False

    def _authorized(self) -> bool:
        key = self.state.api_key
        return key is None or secrets.compare_digest(self.headers.get("Authorization", ""), f"Bearer {key}")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/v1/models":
            if not self._authorized():
                return self._error(401, "missing or wrong API key")
            return self._send(200, {"object": "list", "data": [
                {"id": self.state.name, "object": "model", "created": 0, "owned_by": "plad"}]})
        if path == "/health":
            return self._send(200, {"status": "ok"})
        if self.extra_get(path):
            return None
        self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._error(400, f"request body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        if path not in GENERATION_PATHS:
            return self._error(404, f"no route POST {path}")
        if self.intercept(path):
            return None
        if not self._authorized():
            return self._error(401, "missing or wrong API key")
        try:
            answer = complete(self.state, path, json.loads(raw or b"null"))
        except json.JSONDecodeError as err:
            return self._error(400, f"the body is not JSON: {err}")
        except BadRequest as err:
            return self._error(err.status, str(err))
        except Exception as err:  # a server error must still answer, as 500
            log.exception("generation failed")
            return self._error(500, f"{type(err).__name__}: {err}")
        self._send(200, answer)


def make_server(state: ServerState, host: str = "127.0.0.1", port: int = 8000,
                handler: type[Handler] = Handler) -> ThreadingHTTPServer:
    bound = type("BoundHandler", (handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), bound)
    server.daemon_threads = True
    return server


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m plad_core.sampling.server", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local folder, hub id or embedded:<name> (as teacher.model)")
    p.add_argument("--served-model-name", default=None, help="name clients send as `model` (default: --model)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of --model")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    p.add_argument("--use-safetensors", action=argparse.BooleanOptionalAction, default=True,
                   help="load safetensors weights only (default); --no-use-safetensors also loads pickle "
                        "checkpoints (.bin), which can run code: only from a source you trust")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on the first line)")
    p.add_argument("--cache-dir", default="data/cache", help="where embedded models are converted (cache_dir)")
    p.add_argument("--dtype", default="auto", choices=["auto", *sorted(models.DTYPES)],
                   help="auto (default): bfloat16 where bf16 is fast (a GPU with native bf16, an "
                        "AVX512-BF16 or AMX CPU), else float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--api-key-env", default=None, help="require 'Authorization: Bearer $NAME' from clients")
    return p


def api_key_from(p: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[str]:
    """The key clients must send: the value of ``--api-key-env``'s variable (None: no key required)."""
    if not args.api_key_env:
        return None
    api_key = os.environ.get(args.api_key_env)
    if not api_key:
        p.error(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    return api_key


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and tokenizer of ``--model`` as ``--revision``, ``--trust-remote-code`` and
    ``--use-safetensors`` say (ValueError for a folder of pickle checkpoints when safetensors only)."""
    path = models.resolve_model_path(args.model, args.cache_dir)
    check_weights(path, args.use_safetensors, "--no-use-safetensors")
    model, tokenizer = models.load_model(path, args.cache_dir, args.revision, args.trust_remote_code,
                                         args.use_safetensors)
    return models.cast(model, args.dtype), tokenizer


def serve(server: ThreadingHTTPServer, name: str) -> None:
    """Print the URL (the first line of output) and serve until interrupted."""
    host, port = server.server_address[:2]
    print(f"plad sampling server: serving {name} at http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Optional[list[str]] = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    api_key = api_key_from(p, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models.set_threads(args.threads)
    try:
        model, tokenizer = load(args)
    except (ValueError, models.ModelError) as err:
        p.error(str(err))
    state = ServerState(model, tokenizer, args.served_model_name or args.model, api_key)
    serve(make_server(state, args.host, args.port), state.name)


if __name__ == "__main__":
    main()
