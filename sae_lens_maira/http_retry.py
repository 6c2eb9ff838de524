"""POST JSON with retries: one mechanism for every HTTP API this package talks to.

- **Overall deadline per try.** httpx's timeouts bound each socket operation, so a server that
  trickles a byte every half second keeps a "2 s timeout" busy forever. Clients made by
  :func:`make_client` read through a network backend that caps every connect/read/write by the time
  left until the try's deadline (``RetryPolicy.deadline_s``), headers and body alike.
- **Retry only what can pass on a second try:** connection errors and timeouts, 429 and 502-504,
  with exponential backoff that honours ``Retry-After``. Every other status (any 4xx, a 500, whose
  cause is usually the request itself) fails at once.
- **A clear failure type:** :class:`HTTPRequestError` says whether the failure was ``transient``
  (worth trying again later) and carries the status. A redirect, an HTML page or a body that is not
  JSON where JSON was expected is a (non-transient) failure, never a success.
- **No secrets in text.** Header values that carry credentials (Authorization, X-Api-Key, ...) are
  removed from every message that reaches an exception or a log, including echoed response bodies.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

log = logging.getLogger(__name__)
RETRY_STATUS = frozenset({429, 502, 503, 504})
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


class HTTPRequestError(RuntimeError):
    """A request failed for good. ``transient``: a later try may succeed (connection error, timeout,
    429, 502-504); False means the server refused this request (4xx, 500, redirect, not JSON)."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient, self.status = transient, status


@dataclass
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    deadline_s: float | None = 120.0  # wall-clock limit of one try, headers and body together

    def delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        if retry_after:
            try:
                delay = min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass
        return delay


# ---------------------------------------------------------------------------- deadline transport
def _bounded(timeout: float | None, exc: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the current try's deadline."""
    end = _DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise exc("the request's overall deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        t = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, t))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self):
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        t = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.connect_tcp(host, port, t, local_address, socket_options)
        )

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        t = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, t, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport, its sockets read through :class:`_DeadlineBackend`."""

    def __init__(self, verify: bool = True):
        super().__init__(verify=verify)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify), network_backend=_DeadlineBackend()
        )


def make_client(timeout_s: float = 120.0) -> httpx.Client:
    """An httpx client for :func:`post_json`: deadline-aware sockets, redirects not followed."""
    return httpx.Client(timeout=timeout_s, transport=DeadlineTransport(), follow_redirects=False)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Every socket operation inside (on a :func:`make_client` client) ends by ``seconds`` from now."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


# ---------------------------------------------------------------------------- redaction
def secrets_of(headers: dict[str, str]) -> list[str]:
    """The credential values in ``headers`` (and the token part of ``Bearer <token>``)."""
    out = []
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS or "token" in name.lower() or "secret" in name.lower():
            out.append(value)
            out.extend(p for p in value.split() if len(p) >= 4)
    return sorted({s for s in out if len(s) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret value and any ``Bearer <token>`` replaced by a marker."""
    for s in secrets:
        text = text.replace(s, REDACTED)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


# ---------------------------------------------------------------------------- the request
def post_json(
    http: httpx.Client,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    policy: RetryPolicy,
    error: type[HTTPRequestError] = HTTPRequestError,
    what: str = "server",
    expect_json: bool = True,
) -> httpx.Response:
    """The first 2xx response (with a JSON body when ``expect_json``); ``error`` otherwise.

    ``error`` must be :class:`HTTPRequestError` or a subclass; its message names the URL and status
    and never a credential.
    """
    hidden = secrets_of(headers)

    def fail(msg: str, transient: bool, status: int | None = None) -> HTTPRequestError:
        return error(redact(msg, hidden), transient=transient, status=status)

    for attempt in range(policy.max_retries + 1):
        last = attempt == policy.max_retries
        try:
            with deadline(policy.deadline_s):
                resp = http.post(url, json=body, headers=headers)
        except httpx.TransportError as err:
            why = f"{type(err).__name__}: {err}"
            if last:
                raise fail(f"POST {url} failed after {attempt + 1} tries ({why})", True) from None
            _wait(policy, attempt, None, redact(f"{what}: connection error ({why})", hidden))
            continue
        status = resp.status_code
        if status in RETRY_STATUS:
            if last:
                raise fail(
                    f"POST {url} answered HTTP {status} after {attempt + 1} tries: "
                    f"{_snippet(resp)}", True, status
                )  # fmt: skip
            _wait(policy, attempt, resp.headers.get("Retry-After"), f"{what}: HTTP {status}")
            continue
        if 300 <= status < 400:
            where = resp.headers.get("Location", "?")
            raise fail(
                f"POST {url} was redirected (HTTP {status}) to {where}; redirects are not followed "
                "(a POST may turn into a GET and the key could reach another host): use the final "
                "address as the base URL", False, status
            )  # fmt: skip
        if status >= 400 or status < 200:
            raise fail(f"POST {url} answered HTTP {status}: {_snippet(resp)}", False, status)
        if expect_json:
            ctype = resp.headers.get("Content-Type", "")
            try:
                resp.json()
            except ValueError:
                kind = "an HTML page" if "html" in ctype else "a body that is not JSON"
                raise fail(
                    f"POST {url} answered HTTP {status} with {kind} ({ctype or 'no content type'}): "
                    f"{_snippet(resp)}; is the base URL the API's address?",
                    False,
                    status,
                ) from None
        return resp
    raise AssertionError("unreachable")


def _snippet(resp: httpx.Response, n: int = 300) -> str:
    text = " ".join(resp.text[:n].split())
    return text + ("..." if len(resp.text) > n else "")


def _wait(policy: RetryPolicy, attempt: int, retry_after: str | None, why: str) -> None:
    delay = policy.delay(attempt, retry_after)
    log.warning("%s, retrying in %.1f s (try %d)", why, delay, attempt + 2)
    time.sleep(delay)
