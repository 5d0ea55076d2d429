"""OpenAI-compatible backend: sample a model served over HTTP (vLLM, a hosted API, or
``python -m plad_core.sampling.server``) with nothing but httpx.

One request per prompt (``n`` samples each) to ``<base_url>/completions`` or
``<base_url>/chat/completions`` (``mode``), ``concurrency`` of them in flight at once from a thread
pool. A request that gets 408, 429 or 5xx, times out or loses its connection is retried up to
``max_retries`` times, after ``Retry-After`` when the server sends one and otherwise after a
full-jitter exponential backoff: uniform(0, min(backoff_max_s, backoff_base_s * 2**attempt)).
Other 4xx answers (bad request, bad key, unknown model) fail at once: retrying cannot fix them.

The API key is read from the environment variable named by ``api_key_env`` at call time and sent
as ``Authorization: Bearer``; it is never part of a config, an artifact key, a manifest, a Parquet
file, a log line or an error message. ``api_key_env: ""`` sends no key: a key goes only where
``api_key_env`` is set for that endpoint, never one read from a default variable such as
``OPENAI_API_KEY``. Nor does a key go over plain ``http://`` to a host other than this machine
(127.0.0.0/8, ::1, localhost): ``check`` refuses such a ``base_url`` when ``api_key_env`` is set.

``generate`` returns the same ``Generation`` rows as ``plad_core.sampling.hf.generate``, so
``sample_sharded`` (resumable shards, the shared samples schema) works unchanged.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

import httpx
from tqdm.auto import tqdm

from plad_core.sampling.api_settings import ApiSettings, refuse_cleartext_key
from plad_core.sampling.generation import Generation, cut_at_stop

log = logging.getLogger("plad.sampling.openai")

RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
# Retry-After is honoured as sent, but never beyond this: a buggy header must not stall a run for hours.
MAX_RETRY_AFTER_S = 300.0
# Without a local tokenizer, lengths are counted in 4-character "tokens": 4.0 characters per token
# measured with SmolLM2's tokenizer on rendered TL;DR prompts (and OpenAI's rule of thumb for English).
CHARS_PER_TOKEN = 4


class ApiError(RuntimeError):
    """An OpenAI-compatible endpoint that did not answer usefully (after retries, where retrying helps)."""


class CharTokens:
    """Stand-in tokenizer for prompt truncation when the model is not local: one "token" per
    ``CHARS_PER_TOKEN`` characters. It offers only what ``plad_core.data.build_prompts`` calls."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[str]]:
        return {"input_ids": [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]}

    def decode(self, ids: Sequence[str], **_: Any) -> str:
        return "".join(ids)


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def api_root(base_url: str) -> str:
    """The versioned API root: ``http://host:8000`` and ``http://host:8000/`` become ``http://host:8000/v1``;
    a URL with a path (``https://api.example.com/openai/v1``) is kept as given, as the openai client does."""
    url = base_url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


def endpoint(settings: ApiSettings) -> str:
    return f"{api_root(settings.base_url)}/{'chat/completions' if settings.mode == 'chat' else 'completions'}"


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header (delay-seconds, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def retry_delay(attempt: int, base_s: float, max_s: float, retry_after: Optional[float],
                rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): Retry-After when given, else full jitter."""
    if retry_after is not None:
        return retry_after
    return rng.uniform(0.0, min(max_s, base_s * 2 ** attempt))


def request_seed(seed: int, prompt_index: int) -> int:
    """A distinct, stable 31-bit seed per prompt of a shard: a prompt's samples depend on its shard
    seed and position only, not on which request happened to be sent first."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _finish_reason(reason: Optional[str]) -> str:
    # "length" is the only cut-off; servers name a natural end differently. Anything else
    # (content_filter, tool_calls) is kept verbatim so it stays visible in the samples.
    if reason == "length":
        return "length"
    if reason in (None, "stop", "eos", "end_turn", "stop_sequence"):
        return "stop"
    return str(reason)


class Client:
    """POSTs JSON to one endpoint with retries; safe to share between threads."""

    def __init__(self, settings: ApiSettings, api_key: Optional[str] = None, seed: int = 0):
        self.settings = settings
        self.url = endpoint(settings)
        self._secret = api_key or None
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.cancelled = threading.Event()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(settings.timeout_s), headers=headers,
                                  limits=httpx.Limits(max_connections=settings.concurrency,
                                                      max_keepalive_connections=settings.concurrency))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def post(self, payload: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        last = "no attempt"
        for attempt in range(s.max_retries + 1):
            if self.cancelled.is_set():
                raise ApiError(f"{self.url}: cancelled")
            retry_after = None
            try:
                response = self._http.post(self.url, json=payload)
            except httpx.TransportError as err:  # timeouts, refused or dropped connections
                last = f"{type(err).__name__}: {self._redact(str(err)) or 'no detail'}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise ApiError(f"{self.url}: HTTP 200 but the body is not JSON: "
                                       f"{self._redact(response.text[:200])!r}") from None
                body = self._redact(response.text[:300])
                last = f"HTTP {response.status_code}: {body}"
                if response.status_code not in RETRY_STATUS:
                    hint = ""
                    if response.status_code in (401, 403):
                        hint = (f" (check the key in ${s.api_key_env})" if self._secret else
                                " (no key was sent: api_key_env is empty or names an unset variable)")
                    raise ApiError(f"{self.url}: {last} (not retried){hint}")
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == s.max_retries:
                break
            with self._rng_lock:
                delay = retry_delay(attempt, s.backoff_base_s, s.backoff_max_s, retry_after, self._rng)
            log.warning("%s: %s; retry %d/%d in %.2fs", self.url, last.splitlines()[0][:200], attempt + 1,
                        s.max_retries, delay)
            if self.cancelled.wait(delay):  # another request failed for good: stop waiting
                raise ApiError(f"{self.url}: cancelled")
        raise ApiError(f"{self.url}: no answer after {s.max_retries + 1} attempts "
                       f"(max_retries={s.max_retries}); last: {last}")


def _payload(settings: ApiSettings, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int,
             seed: int, stop: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": settings.model, "max_tokens": max_new_tokens, "temperature": temperature,
                            "top_p": top_p, "n": n, "seed": seed}
    if stop:
        body["stop"] = list(stop)
    if settings.mode == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _generations(answer: dict[str, Any], prompt_index: int, prompt: str, n: int, chat: bool,
                 stop: Sequence[str], url: str) -> list[Generation]:
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        raise ApiError(f"{url}: the answer has no 'choices' list: {str(answer)[:200]!r}")
    choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
    if len(choices) != n:
        raise ApiError(f"{url}: asked for n={n} choices, got {len(choices)}")
    usage = answer.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    out = []
    for j, choice in enumerate(choices):
        raw = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        text, hit_stop = cut_at_stop(raw or "", stop)  # in case the server ignores `stop`
        text = text.strip()
        # usage counts all n choices together, so it is exact per sample only for n=1
        tokens = completion_tokens if n == 1 and isinstance(completion_tokens, int) else estimate_tokens(text)
        out.append(Generation(prompt_index=prompt_index, sample_index=j, text=text,
                              prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else estimate_tokens(prompt),
                              output_tokens=tokens,
                              finish_reason="stop" if hit_stop else _finish_reason(choice.get("finish_reason"))))
    return out


def api_key_for(settings: ApiSettings) -> Optional[str]:
    """The key in the variable ``settings.api_key_env`` names; None when it is "" (no key) or unset."""
    return (os.environ.get(settings.api_key_env) or None) if settings.api_key_env else None


def generate(prompts: Sequence[str], settings: ApiSettings, *, n: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 48, seed: int = 0, stop: Sequence[str] = (),
             api_key: Optional[str] = None, desc: str = "generate", where: str = "sampling.api") -> list[Generation]:
    """n samples per prompt from the endpoint, in input order (``prompt_index``, ``sample_index``).

    ``api_key`` defaults to the environment variable ``settings.api_key_env`` (no header when it is
    "" or unset). A key is refused, before any request, over plain http to a non-loopback host.
    The first request that fails for good cancels the rest and raises ``ApiError``.
    """
    settings.check(where)
    if api_key is None:
        api_key = api_key_for(settings)
    if api_key and (problem := refuse_cleartext_key(settings.base_url, where)):
        raise ValueError(problem)
    results: list[Generation] = []
    with Client(settings, api_key, seed) as client, \
            ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="plad-api") as pool:
        def one(i: int) -> list[Generation]:
            body = _payload(settings, prompts[i], n, temperature, top_p, max_new_tokens, request_seed(seed, i), stop)
            return _generations(client.post(body), i, prompts[i], n, settings.mode == "chat", stop, client.url)

        pending = {pool.submit(one, i) for i in range(len(prompts))}
        with tqdm(total=len(prompts), desc=desc, unit="prompt") as bar:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        client.cancelled.set()
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    results.extend(future.result())
                    bar.update(1)
    results.sort(key=lambda g: (g.prompt_index, g.sample_index))
    return results
