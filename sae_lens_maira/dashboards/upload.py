"""Upload a Neuronpedia export through Neuronpedia's API, idempotently and resumably.

The calls are the ones the ``neuronpedia`` package makes (``model/new``, ``source-set/new``,
``feature/upload-batch``), made safe to repeat:

- the model and the source set are looked up first (``model/get``, ``GET source-set/<m>/<set>``)
  and created only when absent; one that exists is accepted only when it is ours (its ``creatorId``
  is the user id learned from our own earlier create, or given with ``user_id``);
- a progress file next to the export (``neuronpedia-upload.json`` in the export folder) records,
  per server, which features were accepted and which batch was in flight. The route inserts a batch
  in one transaction but gives activations fresh ids, so a resent batch would duplicate them: a rerun
  sends only features not yet accepted, and first asks the server whether an in-flight batch landed;
- batches are cut by encoded size (under the 4.5 MB body limit with margin) and feature count;
- everything the route would check (id patterns, non-empty tokens, list limits, registered
  explanation names) is checked before the first request, so a bad export sends nothing.

The API key comes from the environment (``NEURONPEDIA_API_KEY``) and only ever goes into the
request header; :mod:`sae_lens_maira.http_retry` redacts it from errors and logs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_maira.dashboards import neuronpedia_rules as rules
from sae_lens_maira.dashboards.schemas import read_jsonl, validate
from sae_lens_maira.http_retry import (
    HTTPRequestError,
    RetryPolicy,
    encode_json,
    make_client,
    request_json,
)

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://www.neuronpedia.org/api"
PROGRESS_FILE = "neuronpedia-upload.json"
MAX_FEATURES_PER_BATCH = rules.MAX_FEATURES_PER_BATCH


class UploadError(HTTPRequestError):
    """Neuronpedia refused a request, kept failing, or holds something that is not ours."""


@dataclass
class UploadOptions:
    """Choices for what is sent. Explanation names must be ones Neuronpedia has registered."""

    explanation_method: str | None = None  # None: each explanation row's typeName
    explanation_model: str | None = None  # None: each explanation row's explanationModelName
    explanations: bool = True  # False: keep explanations local
    max_features: int = MAX_FEATURES_PER_BATCH
    max_bytes: int = rules.DEFAULT_MAX_BODY_BYTES
    user_id: str | None = None  # our Neuronpedia user id, if known (accepts our existing rows)

    def __post_init__(self):
        if not 1 <= self.max_features <= MAX_FEATURES_PER_BATCH:
            raise ValueError(
                f"features per batch must be 1..{MAX_FEATURES_PER_BATCH}, got {self.max_features}"
            )
        if not 10_000 <= self.max_bytes <= rules.MAX_BODY_BYTES:
            raise ValueError(
                f"max_bytes must be 10000..{rules.MAX_BODY_BYTES} (the hosting refuses bodies over "
                f"4.5 MB with 413), got {self.max_bytes}"
            )
        if self.explanation_method is not None:
            rules.check_explanation_type(self.explanation_method)
        if self.explanation_model is not None:
            rules.check_explanation_model(self.explanation_model)


@dataclass
class Plan:
    """Everything an upload would send, already checked against the route rules."""

    model_id: str
    layer: int
    n_layers: int
    source_set: str
    source: str
    model_new: dict[str, Any]
    source_set_new: dict[str, Any]
    features: list[dict[str, Any]]  # one upload-batch feature payload each, in index order
    sizes: dict[int, int] = field(default_factory=dict)  # index -> encoded bytes of its payload

    def batches(self, opts: UploadOptions, skip: Set[int] = frozenset()) -> list[list[dict]]:
        """Greedy batches of the features not in ``skip``, each under both limits."""
        overhead = len(
            encode_json({"modelId": self.model_id, "source": self.source, "features": []})
        )
        out: list[list[dict]] = []
        cur: list[dict] = []
        cur_bytes = overhead
        for f in self.features:
            if f["index"] in skip:
                continue
            size = self.sizes[f["index"]] + 1  # the comma
            if overhead + size > opts.max_bytes:
                raise ValueError(
                    f"feature {f['index']} alone encodes to {size / 1e6:.2f} MB, over the "
                    f"{opts.max_bytes / 1e6:.2f} MB planned per request: export it with fewer or "
                    "shorter examples"
                )
            if cur and (len(cur) == opts.max_features or cur_bytes + size > opts.max_bytes):
                out.append(cur)
                cur, cur_bytes = [], overhead
            cur.append(f)
            cur_bytes += size
        if cur:
            out.append(cur)
        return out

    def body(self, batch: list[dict]) -> dict[str, Any]:
        return {"modelId": self.model_id, "source": self.source, "features": batch}


def build_plan(export_dir: str | Path, opts: UploadOptions | None = None) -> Plan:
    """Read an export folder and build (and check) every payload; raises before anything is sent."""
    opts = opts or UploadOptions()
    d = Path(export_dir)
    if not (d / "source.jsonl").is_file():
        raise FileNotFoundError(
            f"{d} is not a Neuronpedia export folder (no source.jsonl); create one with "
            "`sae-lens-maira dashboards export --format neuronpedia`"
        )
    model = read_jsonl(d / "model.jsonl")[0]
    source = read_jsonl(d / "source.jsonl")[0]
    sourceset = read_jsonl(d / "sourceset.jsonl")[0]
    model_id = rules.check_model_id(model["id"])
    set_name = rules.check_source_set(sourceset["name"])
    sid = source["id"]
    layer_s, _, rest = sid.partition("-")
    if rest != set_name or not layer_s.isdigit():
        raise ValueError(
            f"source id {sid!r} is not '<layer>-{set_name}': the API creates sources named "
            "'<layer>-<source set>' only (a '__suffix' needs Neuronpedia's admin import)"
        )
    n_layers = int(model["layers"])
    layer = rules.check_layer(int(layer_s), n_layers)
    display = (model.get("displayName") or model_id)[:64]
    acts: dict[str, list[dict]] = defaultdict(list)
    for p in _batch_files(d / "activations"):
        for row in read_jsonl(p):
            acts[row["index"]].append(row)
    exps: dict[str, list[dict]] = defaultdict(list)
    if opts.explanations:
        for p in _batch_files(d / "explanations"):
            for row in read_jsonl(p):
                exps[row["index"]].append(row)
    features = []
    for p in _batch_files(d / "features"):
        for row in read_jsonl(p):
            features.append(
                _feature_payload(row, acts.get(row["index"], []), exps.get(row["index"], []), opts)
            )
    features.sort(key=lambda f: f["index"])
    plan = Plan(
        model_id, layer, n_layers, set_name, sid,
        {"id": model_id, "layers": n_layers, "displayName": display},
        {"name": set_name, "modelId": model_id,
         "description": (sourceset.get("description") or set_name)[:128]},
        features,
    )  # fmt: skip
    validate(plan.model_new, "upload_model_new")
    validate(plan.source_set_new, "upload_source_set_new")
    for f in features:
        plan.sizes[f["index"]] = len(encode_json(f))
    for batch in plan.batches(opts):  # every request passes the route's checks, or none is sent
        rules.check_upload_batch(plan.body(batch))
        validate(plan.body(batch), "upload_feature_batch")
    return plan


def _batch_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split(".")[0][6:]))


def _feature_payload(row: dict, acts: list[dict], exps: list[dict], opts: UploadOptions) -> dict:
    if not acts:
        raise ValueError(
            f"feature {row['index']} has no activation rows; Neuronpedia needs at least one"
        )
    tok = rules.upload_token
    out: dict[str, Any] = {
        "index": int(row["index"]),
        "density": float(row["frac_nonzero"]),
        "topLogits": [{"token": tok(t), "value": v}
                      for t, v in zip(row["pos_str"], row["pos_values"], strict=True)][: rules.MAX_LOGITS],
        "bottomLogits": [{"token": tok(t), "value": v}
                         for t, v in zip(row["neg_str"], row["neg_values"], strict=True)][: rules.MAX_LOGITS],
        "activations": [],
    }  # fmt: skip
    for a in acts:
        rec: dict[str, Any] = {"tokens": [tok(t) for t in a["tokens"]], "values": a["values"]}
        if a.get("binMin", -1) >= 0:  # an activation-interval example (the top group has -1)
            rec |= {"quantileMin": a["binMin"], "quantileMax": a["binMax"],
                    "quantileFraction": a["binContains"]}  # fmt: skip
        out["activations"].append(rec)
    if exps:
        out["explanations"] = []
        for e in exps:
            method = opts.explanation_method or e.get("typeName") or ""
            model = opts.explanation_model or e.get("explanationModelName") or ""
            rules.check_explanation_type(method)
            rules.check_explanation_model(model)
            out["explanations"].append(
                {"text": e["description"][: rules.MAX_EXPLANATION_CHARS], "methodName": method,
                 "modelName": model}
            )  # fmt: skip
    return out


# ---------------------------------------------------------------------------- progress file
class Progress:
    """Per-server record of what was accepted, written atomically after every answer."""

    def __init__(self, export_dir: Path, base_url: str):
        self.path = export_dir / PROGRESS_FILE
        self.base_url = base_url
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self._all = data.get("servers", {})
        self.state = self._all.setdefault(base_url, {})
        self.state.setdefault("uploaded", [])
        self.state.setdefault("in_flight", [])

    @property
    def uploaded(self) -> set[int]:
        return set(self.state["uploaded"])

    def user_id(self) -> str | None:
        """Ours, as learned from a create on this server (here or in a sibling export folder)."""
        if self.state.get("user_id"):
            return self.state["user_id"]
        for p in self.path.parent.parent.glob(f"*/{PROGRESS_FILE}"):
            try:
                uid = json.loads(p.read_text())["servers"][self.base_url].get("user_id")
            except (ValueError, KeyError, TypeError):
                continue
            if uid:
                return uid
        return None

    def set(self, **kw: Any) -> None:
        self.state.update(kw)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"format": "sae-lens-maira-upload/1", "servers": self._all}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------- client
class NeuronpediaClient:
    """JSON requests to Neuronpedia's API with the key in ``X-Api-Key``."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str = "NEURONPEDIA_API_KEY",
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
    ):
        self.base_url = base_url.rstrip("/")
        self._policy = RetryPolicy(max_retries, backoff_s, max_backoff_s, deadline_s=timeout_s)
        self._key = os.environ.get(api_key_env, "")
        if not self._key:
            raise ValueError(
                f"no Neuronpedia API key: set the environment variable {api_key_env} (from "
                "neuronpedia.org/account), or use --dry-run to check and print the requests"
            )
        self._http = make_client(timeout_s)
        self.n_requests = 0

    def __repr__(self) -> str:  # never show the key
        return f"NeuronpediaClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, endpoint: str, body: Any = None) -> Any:
        """The parsed JSON answer; :class:`UploadError` for anything but a 2xx JSON answer."""
        self.n_requests += 1
        url = f"{self.base_url}/{endpoint}"
        resp = request_json(self._http, method, url, body, {"X-Api-Key": self._key},
                            self._policy, UploadError, "Neuronpedia")  # fmt: skip
        return resp.json()


# ---------------------------------------------------------------------------- the upload
@dataclass
class UploadReport:
    requests: int = 0
    batches_sent: int = 0
    features_sent: int = 0
    features_already: int = 0  # accepted by an earlier run
    planned: list[tuple[str, str, int, int]] = field(default_factory=list)  # dry run


def upload_export(
    export_dir: str | Path,
    client: NeuronpediaClient | None,
    opts: UploadOptions | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> UploadReport:
    """Send (or, with ``dry_run``, check and print) an export; resumes from the progress file."""
    opts = opts or UploadOptions()
    d = Path(export_dir)
    plan = build_plan(d, opts)
    if dry_run:
        return _dry_run(plan, opts, echo)
    if client is None:
        raise ValueError("a live upload needs a NeuronpediaClient")
    progress = Progress(d, client.base_url)
    report = UploadReport()
    user = opts.user_id or progress.user_id()
    if not progress.state.get("model_ok"):
        user = _ensure_model(client, plan, user, progress)
    if not progress.state.get("source_set_ok"):
        _ensure_source_set(client, plan, user, progress)
    if progress.state["in_flight"]:
        _resolve_in_flight(client, plan, progress)
    done = progress.uploaded
    report.features_already = len(done & {f["index"] for f in plan.features})
    batches = plan.batches(opts, skip=done)
    for n, batch in enumerate(batches, 1):
        idx = [f["index"] for f in batch]
        progress.set(in_flight=idx)
        answer = client.call("POST", "feature/upload-batch", plan.body(batch))
        if not isinstance(answer, dict) or "message" not in answer:
            raise UploadError(
                f"feature/upload-batch answered {str(answer)[:200]!r}, not its confirmation; "
                "nothing is recorded as uploaded", transient=False
            )  # fmt: skip
        progress.set(uploaded=sorted(progress.uploaded | set(idx)), in_flight=[])
        report.batches_sent += 1
        report.features_sent += len(idx)
        log.info("batch %d/%d: %d features accepted", n, len(batches), len(idx))
    report.requests = client.n_requests
    return report


def _dry_run(plan: Plan, opts: UploadOptions, echo: Callable[[str], None]) -> UploadReport:
    report = UploadReport()
    mb = len(encode_json(plan.model_new))
    sb = len(encode_json(plan.source_set_new))
    rows = [("POST", "model/get", len(encode_json({"id": plan.model_id})), 0),
            ("POST", "model/new (only if absent)", mb, 0),
            ("GET", f"source-set/{plan.model_id}/{plan.source_set}", 0, 0),
            ("POST", "source-set/new (only if absent)", sb, 0)]  # fmt: skip
    for batch in plan.batches(opts):
        rows.append(
            ("POST", "feature/upload-batch", len(encode_json(plan.body(batch))), len(batch))
        )
    echo(
        f"dry run: {plan.model_id}/{plan.source} — every request passes Neuronpedia's route checks"
    )
    for method, endpoint, size, n in rows:
        extra = f"  {n} features" if n else ""
        echo(f"  {method:4s} {endpoint:42s} {size / 1e6:8.3f} MB{extra}")
    report.planned = rows
    return report


def _ensure_model(client: NeuronpediaClient, plan: Plan, user: str | None, progress: Progress):
    existing = client.call("POST", "model/get", {"id": plan.model_id})
    if not existing:
        try:
            made = client.call("POST", "model/new", plan.model_new)
        except UploadError as err:
            if not (err.status == 400 and "already exists" in str(err)):
                raise
            made = None
            existing = client.call("POST", "model/get", {"id": plan.model_id})  # created meanwhile
        if made is not None:
            if not isinstance(made, dict) or made.get("id") != plan.model_id:
                raise UploadError(f"model/new answered {str(made)[:200]!r}, not the new model")
            user = made.get("creatorId") or user
            progress.set(model_ok=True, user_id=user)
            return user
    _check_owner("model", plan.model_id, existing, user)
    if int(existing.get("layers", 0)) <= plan.layer:
        raise UploadError(
            f"model {plan.model_id!r} on Neuronpedia has {existing.get('layers')} layers, so it has "
            f"no source for layer {plan.layer}"
        )
    progress.set(model_ok=True, user_id=user)
    return user


def _ensure_source_set(client: NeuronpediaClient, plan: Plan, user: str | None, progress: Progress):
    path = f"source-set/{plan.model_id}/{plan.source_set}"
    existing = client.call("GET", path)
    if not existing:
        try:
            existing = client.call("POST", "source-set/new", plan.source_set_new)
            if not isinstance(existing, dict) or existing.get("name") != plan.source_set:
                raise UploadError(f"source-set/new answered {str(existing)[:200]!r}, not the set")
            user = existing.get("creatorId") or user
        except UploadError as err:
            if not (err.status == 400 and "already exists" in str(err)):
                raise
            existing = client.call("GET", path)  # created meanwhile: whose is it?
    _check_owner("source set", f"{plan.model_id}/{plan.source_set}", existing, user)
    sources = {s.get("id") for s in existing.get("sources") or [] if isinstance(s, dict)}
    if plan.source not in sources:
        raise UploadError(
            f"source set {plan.source_set!r} on Neuronpedia has no source {plan.source!r}; "
            f"it has {sorted(sources, key=str)[:8]}"
        )
    progress.set(source_set_ok=True, user_id=user)


def _check_owner(what: str, name: str, row: Any, user: str | None) -> None:
    if not isinstance(row, dict):
        raise UploadError(f"Neuronpedia answered {str(row)[:200]!r} for {what} {name}")
    owner = row.get("creatorId")
    if user and owner == user:
        return
    if user:
        raise UploadError(
            f"{what} {name!r} already exists on Neuronpedia and belongs to another user ({owner}); "
            "uploading into it would fail: choose another model id / source set name"
        )
    raise UploadError(
        f"{what} {name!r} already exists on Neuronpedia (creator {owner}) and this export has no "
        "record of creating it: if that user id is yours, pass --user-id "
        f"{owner}; otherwise choose another model id / source set name"
    )


def _resolve_in_flight(client: NeuronpediaClient, plan: Plan, progress: Progress) -> None:
    """A batch sent when the last run stopped: the route stores it in one transaction, so one
    feature tells whether it landed."""
    idx = progress.state["in_flight"]
    row = client.call("GET", f"feature/{plan.model_id}/{plan.source}/{idx[0]}")
    landed = isinstance(row, dict) and bool(row.get("activations"))
    uploaded = progress.uploaded | set(idx) if landed else progress.uploaded
    log.info("the batch in flight when the last run stopped %s", "landed" if landed else "did not")
    progress.set(uploaded=sorted(uploaded), in_flight=[])
