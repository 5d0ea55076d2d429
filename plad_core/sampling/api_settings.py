"""An OpenAI-compatible endpoint's settings and their checks: a well-formed URL, a served model name,
and no API key over plain ``http://`` to a host other than this machine."""

from __future__ import annotations

import ipaddress
from dataclasses import fields
from typing import Any, Optional
from urllib.parse import urlsplit

from plad_core.config import ApiConfig

MODES = ("completions", "chat")


def is_loopback(host: Optional[str]) -> bool:
    """Whether ``host`` is this machine: localhost, 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cleartext_to_remote(base_url: str) -> bool:
    """Whether requests to ``base_url`` would cross a network unencrypted: plain http, not loopback."""
    url = urlsplit(base_url)
    return url.scheme == "http" and not is_loopback(url.hostname)


def refuse_cleartext_key(base_url: str, where: str) -> Optional[str]:
    if cleartext_to_remote(base_url):
        return (f"{where}.base_url='{base_url}' is plain http:// to another host: the API key would cross the "
                f"network unencrypted. Use https://, a loopback address (127.0.0.1, ::1, localhost), "
                f"or set {where}.api_key_env='' to send no key")
    return None


class ApiSettings(ApiConfig):
    """The ``<side>.sampling.api`` config (``plad_core.config.ApiConfig``) with its checks."""

    @classmethod
    def from_config(cls, api: Any) -> "ApiSettings":
        return cls(**{f.name: api[f.name] for f in fields(ApiConfig)})

    def check(self, where: str = "sampling.api") -> "ApiSettings":
        problems = []
        if not self.base_url or urlsplit(self.base_url).scheme not in ("http", "https"):
            problems.append(f"{where}.base_url='{self.base_url}' must be an http(s) URL such as http://127.0.0.1:8000/v1")
        elif urlsplit(self.base_url).username or urlsplit(self.base_url).query:
            # the URL goes into artifact keys and manifests: no credentials or tokens in it
            problems.append(f"{where}.base_url must not carry credentials or a query; put the key in an environment "
                            f"variable and name it in {where}.api_key_env")
        elif self.api_key_env and (problem := refuse_cleartext_key(self.base_url, where)):
            problems.append(problem)
        if not self.model:
            problems.append(f"{where}.model is empty: set the served model name (GET <base_url>/models lists them)")
        if self.mode not in MODES:
            problems.append(f"{where}.mode='{self.mode}' must be one of {', '.join(MODES)}")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            problems.append(f"{where}: concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")
        if problems:
            raise ValueError("; ".join(problems))
        return self
