"""A loopback stand-in for Neuronpedia's upload routes, written from the route code (not from our
client): the yup schemas of ``model/new``, ``source-set/new`` and ``feature/upload-batch`` with their
patterns and limits, "already exists" answers, the thrown errors that reach the client as an opaque
500 (unregistered explanation names, a source set of another user, tokens/values mismatch), the
hosting's 413 over 4.5 MB, an HTML page under ``/site/``, and a redirect (``/old-api/...`` -> ``/api/...``, as a bare domain does).

Neuron rows are keyed (model, source, index) with "skip duplicates"; activations get fresh ids, so
a batch sent twice duplicates them: the tests count them."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = "np-standin-key-0123456789"
USER_ID = "cluser000000000000000000001"
BODY_LIMIT = 4_500_000
TYPES = {"oai_token-act-pair", "np_max-act-logits", "np_max-act"}
MODELS = {"gpt-4o-mini", "gemini-2.0-flash"}
MODEL_ID = re.compile(r"^[a-z][a-z0-9.-]*[a-z0-9]$|^[a-z]$")
SET_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z0-9]$")


class _Invalid(Exception):
    pass


def _req(cond: bool, msg: str) -> None:
    if not cond:
        raise _Invalid(msg)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _yup_string(x) -> bool:  # yup string().required(): present and not ""
    return isinstance(x, str) and x != ""


def _check_batch(b: dict) -> None:
    _req(_yup_string(b.get("modelId")) and _yup_string(b.get("source")), "modelId/source required")
    feats = b.get("features")
    _req(isinstance(feats, list) and 1 <= len(feats) <= 128, "features must have 1..128 items")
    for f in feats:
        _req(isinstance(f.get("index"), int) and 0 <= f["index"] <= 10_000_000, "bad index")
        if f.get("density") is not None:
            _req(_is_num(f["density"]) and 0 <= f["density"] <= 1, "density 0..1")
        for k in ("topLogits", "bottomLogits"):
            lg = f.get(k) or []
            _req(len(lg) <= 20, f"{k} max 20")
            for t in lg:
                _req(_yup_string(t.get("token")) and _is_num(t.get("value")), f"{k} token required")
        for e in f.get("explanations") or []:
            _req(isinstance(e.get("text"), str) and 1 <= len(e["text"]) <= 512, "text 1..512")
        acts = f.get("activations")
        _req(isinstance(acts, list) and len(acts) >= 1, "activations min 1")
        for a in acts:
            for k in ("tokens", "values"):
                _req(isinstance(a.get(k), list) and 1 <= len(a[k]) <= 1024, f"{k} 1..1024")
            _req(all(_yup_string(t) for t in a["tokens"]), "tokens[] required")
            _req(all(_is_num(v) for v in a["values"]), "values[] numbers")
            for k in ("quantileMax", "quantileMin"):
                _req(a.get(k) is None or (_is_num(a[k]) and a[k] <= 99999999), f"{k} max")
            q = a.get("quantileFraction")
            _req(q is None or (_is_num(q) and 0 <= q <= 1), "quantileFraction 0..1")


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.models: dict[str, dict] = {}
        self.sets: dict[tuple[str, str], dict] = {}
        self.neurons: dict[tuple[str, str, int], dict] = {}
        self.activations: dict[tuple[str, str, int], list] = defaultdict(list)
        self.explanations: dict[tuple[str, str, int], list] = defaultdict(list)
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.batches_accepted = 0
        self.hang_after_batch: int | None = None  # commit that batch, then never answer
        self.hang = threading.Event()
        self.stop = threading.Event()
        self.fail_first = False  # the first request to each path answers 503 (Retry-After: 0)
        self.failed: set[str] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> StandIn:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.log if method is None or m == method]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandIn

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def _serve(self, method: str) -> None:
        srv = self.server
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        path = self.path
        if path.startswith("/old-api/"):
            return self._reply(method, 308, None, {"Location": "/api/" + path[len("/old-api/") :]})
        if path.startswith("/site/"):  # the web site, not the API: an HTML page with 200
            return self._reply(
                method, 200, b"<!DOCTYPE html><html>Neuronpedia</html>", ctype="text/html"
            )
        if not path.startswith("/api/"):
            return self._reply(method, 404, {"error": "Not found"})
        if n > BODY_LIMIT:
            return self._reply(method, 413, b"Request Entity Too Large", ctype="text/plain")
        if srv.fail_first and path not in srv.failed:
            srv.failed.add(path)
            return self._reply(method, 503, {"error": "busy"}, {"Retry-After": "0"})
        if self.headers.get("X-Api-Key") != API_KEY:
            return self._reply(method, 401, {"error": "Unauthorized"})
        body = json.loads(raw) if raw else None
        try:
            with srv.lock:
                status, out = self._route(method, path, body)
        except _Invalid as err:  # yup ValidationError -> 400 with the message
            status, out = 400, {"error": str(err)}
        except RuntimeError:  # a thrown Error: Next answers an opaque 500
            return self._reply(method, 500, b"Internal Server Error", ctype="text/plain")
        if getattr(self, "hang_now", False):
            srv.stop.wait(120)  # committed, but the answer never comes (the client is killed)
            return None
        self._reply(method, status, out)

    def _route(self, method: str, path: str, b):
        srv = self.server
        parts = path.strip("/").split("/")[1:]  # after "api"
        if method == "POST" and parts == ["model", "get"]:
            return 200, srv.models.get(b.get("id"))
        if method == "POST" and parts == ["model", "new"]:
            mid = b.get("id")
            _req(isinstance(mid, str) and 2 <= len(mid) <= 32 and bool(MODEL_ID.match(mid)), "id")
            _req("--" not in mid and ".." not in mid, "no double hyphens/periods")
            _req(isinstance(b.get("layers"), int) and 1 <= b["layers"] <= 127, "layers 1..127")
            dn = b.get("displayName")
            _req(dn is None or (isinstance(dn, str) and 1 <= len(dn) <= 64), "displayName 1..64")
            if mid in srv.models:
                return 400, {"error": "Model already exists"}
            srv.models[mid] = {"id": mid, "layers": b["layers"], "creatorId": USER_ID,
                               "displayName": dn or mid}  # fmt: skip
            return 200, srv.models[mid]
        if method == "GET" and parts[:1] == ["source-set"] and len(parts) == 3:
            return 200, srv.sets.get((parts[1], parts[2]))
        if method == "POST" and parts == ["source-set", "new"]:
            name = b.get("name")
            _req(isinstance(name, str) and bool(SET_NAME.match(name)), "name pattern")
            _req(name != "neurons" and "--" not in name, "name rules")
            _req(_yup_string(b.get("modelId")), "modelId required")
            d = b.get("description")
            _req(d is None or (isinstance(d, str) and len(d) <= 128), "description max 128")
            model = srv.models.get(b["modelId"])
            if model is None:
                return 400, {"error": "Model not found"}
            if (b["modelId"], name) in srv.sets:
                return 400, {"error": "Source set name already exists for this model."}
            srv.sets[(b["modelId"], name)] = self.new_set(b["modelId"], name, USER_ID)
            return 200, srv.sets[(b["modelId"], name)]
        if method == "GET" and parts[:1] == ["feature"] and len(parts) == 4:
            key = (parts[1], parts[2], int(parts[3]))
            if key not in srv.neurons:
                return 200, None
            return 200, {**srv.neurons[key], "activations": srv.activations[key]}
        if method == "POST" and parts == ["feature", "upload-batch"]:
            _check_batch(b)
            mid, src = b["modelId"].lower(), b["source"].lower()
            sset = srv.sets.get((mid, src.split("-", 1)[1]))
            if sset is None or sset["creatorId"] != USER_ID:
                raise RuntimeError("Source set not found / user is not the creator")
            if src not in {s["id"] for s in sset["sources"]}:
                raise RuntimeError("Source not found.")
            idx = [f["index"] for f in b["features"]]
            if len(set(idx)) != len(idx):
                raise RuntimeError("All indexes must be unique.")
            for f in b["features"]:
                for a in f["activations"]:
                    if len(a["tokens"]) != len(a["values"]):
                        raise RuntimeError("tokens length does not match values length")
                for e in f.get("explanations") or []:
                    if e.get("methodName") is not None and e["methodName"].lower() not in TYPES:
                        raise RuntimeError("Invalid Explanation Method Names")
                    if e.get("modelName") is not None and e["modelName"].lower() not in MODELS:
                        raise RuntimeError("Invalid Explanation Model Names")
            for f in b["features"]:  # one transaction
                key = (mid, src, f["index"])
                srv.neurons.setdefault(key, {"modelId": mid, "layer": src, "index": str(f["index"]),
                                             "creatorId": USER_ID})  # fmt: skip
                srv.activations[key].extend(f["activations"])
                srv.explanations[key].extend(f.get("explanations") or [])
            srv.batches_accepted += 1
            if srv.hang_after_batch == srv.batches_accepted:
                self.hang_now = True
                srv.hang.set()
            return 200, {"message": f"{len(idx)} features created."}
        return 404, {"error": "Not found"}

    def new_set(self, model_id: str, name: str, creator: str) -> dict:
        layers = self.server.models[model_id]["layers"]
        return {"name": name, "modelId": model_id, "creatorId": creator,
                "sources": [{"id": f"{i}-{name}", "modelId": model_id} for i in range(layers)]}  # fmt: skip

    def _reply(self, method, status, out, headers=None, ctype="application/json"):
        data = out if isinstance(out, bytes) else json.dumps(out).encode()
        self.server.log.append((method, self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
