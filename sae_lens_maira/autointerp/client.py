"""OpenAI-compatible chat completions over plain HTTP (httpx), with retries and an on-disk cache.

Any server speaking ``POST {base_url}/chat/completions`` works (OpenAI, vLLM, llama.cpp, Ollama,
OpenRouter...). The key is read from an environment variable (``OPENAI_API_KEY`` by default) and
is only ever put into the Authorization header (and redacted from any error text). Only transient
failures are retried; :class:`LLMError` (an ``HTTPRequestError``) says whether a failure was
transient, so a runner can stop scheduling after the first one that is not. The cache is JSONL keyed by a hash of model,
messages and parameters, so a rerun makes no repeated calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from sae_lens_maira.http_retry import (
    HTTPRequestError,
    RetryPolicy,
    make_client,
    post_json,
    redact,
    secrets_of,
)

log = logging.getLogger(__name__)


class ChatClient(Protocol):
    model: str

    def complete(self, messages: list[dict[str, str]], **params: Any) -> str: ...


class LLMError(HTTPRequestError):
    """The chat endpoint refused a request or kept failing (``transient`` says which)."""


class OpenAICompatibleClient:
    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        require_key: bool = False,
    ):
        self.model, self.base_url = model, base_url.rstrip("/")
        self._policy = RetryPolicy(max_retries, backoff_s, max_backoff_s, deadline_s=timeout_s)
        self._key = os.environ.get(api_key_env, "")
        if require_key and not self._key:
            raise ValueError(f"no API key: set the environment variable {api_key_env}")
        self._http = make_client(timeout_s)

    def __repr__(self) -> str:
        return f"OpenAICompatibleClient(model={self.model!r}, base_url={self.base_url!r})"

    def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
        body = {"model": self.model, "messages": messages, **params}
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        url = f"{self.base_url}/chat/completions"
        resp = post_json(self._http, url, body, headers, self._policy, LLMError, "chat endpoint")
        try:
            return resp.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError(
                f"{url} answered something that is not a chat completion: "
                f"{redact(resp.text[:300], secrets_of(headers))}",
                transient=False,
            ) from None


class CachedClient:
    """Wraps a client with a JSONL cache on disk; thread safe; a hit makes no call."""

    def __init__(self, inner: ChatClient, path: str | Path):
        self.inner, self.path = inner, Path(path)
        self.model = inner.model
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self.hits = self.misses = 0
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["response"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut short by an interrupted run
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete(self, messages: list[dict[str, str]], **params: Any) -> str:
        k = self.key(self.model, messages, params)
        with self._lock:
            if k in self._cache:
                self.hits += 1
                return self._cache[k]
        text = self.inner.complete(messages, **params)
        with self._lock:
            self.misses += 1
            self._cache[k] = text
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": k, "model": self.model, "response": text}) + "\n")
        return text
