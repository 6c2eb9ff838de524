"""http_retry against loopback servers: overall deadline, redaction, which failures are retried."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sae_lens_maira.autointerp.client import LLMError, OpenAICompatibleClient
from sae_lens_maira.http_retry import (
    HTTPRequestError,
    RetryPolicy,
    make_client,
    post_json,
    redact,
)

KEY = "np-secret-key-0123456789"


class _Scripted(BaseHTTPRequestHandler):
    """Answers by path: /status/<code>, /echo/<code> (request headers in the body), /drip-body,
    /drip-headers (a byte every 0.5 s), /html, /badjson, /redirect, /flaky (429 then 200)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        srv = self.server
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with srv.lock:
            srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
            n = srv.hits[self.path]
        p = self.path
        try:
            if p.startswith("/status/"):
                return self._send(int(p.split("/")[2]), b'{"ok": true}')
            if p.startswith("/echo/"):
                return self._send(int(p.split("/")[2]), json.dumps(dict(self.headers)).encode())
            if p == "/flaky":
                return self._send(429 if n == 1 else 200, b'{"ok": true}', {"Retry-After": "0"})
            if p == "/html":
                return self._send(200, b"<html><body>Sign in</body></html>", ctype="text/html")
            if p == "/badjson":
                return self._send(200, b'{"ok": tru', ctype="application/json")
            if p == "/redirect":
                return self._send(308, b"", {"Location": "https://elsewhere.example/api"})
            if p == "/drip-body":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "400")
                self.end_headers()
                self.wfile.flush()
                return self._drip(b" " * 400)
            if p == "/drip-headers":
                return self._drip(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 400)
        except (BrokenPipeError, ConnectionResetError):
            return None
        return self._send(404, b"{}")

    def _drip(self, data: bytes) -> None:
        for i in range(len(data)):  # 200 s in all: only the client's deadline ends it early
            if self.server.stop.is_set():
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(0.5)

    def _send(self, code, body: bytes, headers=None, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    srv.daemon_threads = True
    srv.hits, srv.lock, srv.stop = {}, threading.Lock(), threading.Event()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


def _post(server, path, retries=3, timeout=2.0, headers=None):
    policy = RetryPolicy(max_retries=retries, backoff_s=0.0, deadline_s=timeout)
    with make_client(timeout) as http:
        return post_json(http, server.base + path, {"a": 1}, headers or {"X-Api-Key": KEY}, policy)


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_overall_deadline_stops_a_dripping_server(server, path):
    start = time.monotonic()
    with pytest.raises(HTTPRequestError, match="Timeout") as err:
        _post(server, path, retries=0, timeout=2.0)
    # every single read gets a byte within 0.5 s, so per-read timeouts alone would wait 200 s
    assert time.monotonic() - start < 60
    assert err.value.transient and err.value.status is None


def test_secrets_never_reach_exceptions_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    headers = {"X-Api-Key": KEY, "Authorization": f"Bearer {KEY}-b"}
    with pytest.raises(HTTPRequestError) as err:
        _post(server, "/echo/400", headers=headers)
    assert "x-api-key" in str(err.value).lower()  # the echoed headers are in the message...
    assert KEY not in str(err.value) and "[REDACTED]" in str(err.value)  # ...their values not
    assert not err.value.transient and err.value.status == 400
    with pytest.raises(HTTPRequestError) as err:
        _post(server, "/echo/503", retries=2, headers=headers)
    assert err.value.transient and server.hits["/echo/503"] == 3
    for text in (str(err.value), repr(err.value), caplog.text):
        assert KEY not in text
    assert redact("Authorization: Bearer abcdef123") == "Authorization: Bearer [REDACTED]"


def test_chat_client_redacts_its_key(server, monkeypatch):
    monkeypatch.setenv("T_KEY", KEY)
    client = OpenAICompatibleClient("m", server.base + "/echo/401", api_key_env="T_KEY",
                                    backoff_s=0.0, timeout_s=5.0)  # fmt: skip
    with pytest.raises(LLMError) as err:
        client.complete([{"role": "user", "content": "hi"}])
    assert KEY not in str(err.value) and "401" in str(err.value)
    assert isinstance(err.value, HTTPRequestError) and not err.value.transient


@pytest.mark.parametrize(
    "code, transient, tries", [(400, False, 1), (401, False, 1), (404, False, 1), (408, False, 1),
                               (409, False, 1), (413, False, 1), (422, False, 1), (500, False, 1),
                               (429, True, 3), (502, True, 3), (503, True, 3), (504, True, 3)],
)  # fmt: skip
def test_only_transient_statuses_are_retried(server, code, transient, tries):
    with pytest.raises(HTTPRequestError) as err:
        _post(server, f"/status/{code}", retries=2)
    assert err.value.transient is transient and err.value.status == code
    assert server.hits[f"/status/{code}"] == tries


def test_retry_then_success(server):
    assert _post(server, "/flaky").json() == {"ok": True}
    assert server.hits["/flaky"] == 2


@pytest.mark.parametrize(
    "path, message",
    [("/redirect", "redirected .*elsewhere.example"), ("/html", "HTML page"),
     ("/badjson", "not JSON")],
)  # fmt: skip
def test_redirect_html_and_bad_json_are_failures(server, path, message):
    with pytest.raises(HTTPRequestError, match=message) as err:
        _post(server, path)
    assert not err.value.transient and server.hits[path] == 1  # never retried, never followed


def test_connection_refused_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    policy = RetryPolicy(max_retries=1, backoff_s=0.0, deadline_s=5.0)
    with make_client(5.0) as http, pytest.raises(HTTPRequestError, match="2 tries") as err:
        post_json(http, f"http://127.0.0.1:{port}/x", {}, {"X-Api-Key": KEY}, policy)
    assert err.value.transient and KEY not in str(err.value)
