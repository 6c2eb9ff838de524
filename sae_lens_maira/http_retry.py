"""POST JSON with retries: one mechanism for every HTTP API this package talks to.

Retries connection errors and the statuses servers use for "try again" (429, 5xx, ...), with
exponential backoff that honours ``Retry-After``. Headers (which may carry API keys) are never
logged; failures name the URL and status only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        if retry_after:
            try:
                delay = min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass
        return delay


def post_json(
    http: httpx.Client,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    policy: RetryPolicy,
    error: type[Exception],
    what: str,
) -> httpx.Response:
    """The first successful response; ``error`` (with URL and status) once retries run out."""
    for attempt in range(policy.max_retries + 1):
        try:
            resp = http.post(url, json=body, headers=headers)
        except httpx.TransportError as err:
            if attempt == policy.max_retries:
                raise error(f"POST {url} failed after {attempt + 1} tries: {err}") from None
            _wait(policy, attempt, None, f"{what}: connection error ({type(err).__name__})")
            continue
        if resp.status_code in RETRY_STATUS and attempt < policy.max_retries:
            _wait(
                policy, attempt, resp.headers.get("Retry-After"), f"{what}: HTTP {resp.status_code}"
            )
            continue
        if resp.status_code >= 400:
            raise error(f"POST {url} answered HTTP {resp.status_code}: {resp.text[:500]}")
        return resp
    raise AssertionError("unreachable")


def _wait(policy: RetryPolicy, attempt: int, retry_after: str | None, why: str) -> None:
    delay = policy.delay(attempt, retry_after)
    log.warning("%s, retrying in %.1f s (try %d)", why, delay, attempt + 2)
    time.sleep(delay)
