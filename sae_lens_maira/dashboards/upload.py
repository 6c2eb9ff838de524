"""Upload a Neuronpedia export through Neuronpedia's API (the calls the ``neuronpedia`` package makes).

``model/new`` and ``source-set/new`` first, then ``feature/upload-batch`` with at most 128 features
per request. The API key comes from the environment (``NEURONPEDIA_API_KEY``) and only ever goes
into the request header: it is never logged, printed or written. Dry-run mode writes the payloads
it would send instead. 429 and 5xx answers (and connection errors) are retried with exponential
backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sae_lens_maira.dashboards.schemas import read_jsonl, validate
from sae_lens_maira.http_retry import HTTPRequestError, RetryPolicy, make_client, post_json

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://www.neuronpedia.org/api"
MAX_FEATURES_PER_BATCH = 128


class UploadError(HTTPRequestError):
    """Neuronpedia refused a request (or kept failing after every retry)."""


class NeuronpediaClient:
    """POSTs JSON payloads to Neuronpedia, or writes them to ``dry_run_dir``."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str = "NEURONPEDIA_API_KEY",
        dry_run_dir: str | Path | None = None,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.dry_run_dir = Path(dry_run_dir) if dry_run_dir is not None else None
        self._policy = RetryPolicy(max_retries, backoff_s, max_backoff_s, deadline_s=timeout_s)
        self._n_written = 0
        self._key = os.environ.get(api_key_env, "")
        if self.dry_run_dir is None and not self._key:
            raise ValueError(
                f"no Neuronpedia API key: set the environment variable {api_key_env} (from "
                "neuronpedia.org/account), or use a dry run to write the payloads instead"
            )
        self._http = None if self.dry_run_dir else make_client(timeout_s)

    def __repr__(self) -> str:  # never show the key
        mode = f"dry_run_dir={str(self.dry_run_dir)!r}" if self.dry_run_dir else "live"
        return f"NeuronpediaClient(base_url={self.base_url!r}, {mode})"

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def post(self, endpoint: str, payload: dict[str, Any], schema: str) -> dict[str, Any]:
        """Validate ``payload`` against ``schema`` and send it (or write it in a dry run)."""
        validate(payload, schema)
        if self.dry_run_dir is not None:
            self.dry_run_dir.mkdir(parents=True, exist_ok=True)
            name = f"{self._n_written:04d}-{endpoint.replace('/', '-')}.json"
            (self.dry_run_dir / name).write_text(
                json.dumps({"endpoint": endpoint, "payload": payload})
            )
            self._n_written += 1
            return {"dry_run": True, "file": name}
        url = f"{self.base_url}/{endpoint}"
        resp = post_json(
            self._http,
            url,
            payload,
            {"X-Api-Key": self._key},
            self._policy,
            UploadError,
            "Neuronpedia",
        )
        try:
            return resp.json()
        except ValueError:
            return {"text": resp.text}


def build_upload_payloads(export_dir: str | Path, batch_size: int = MAX_FEATURES_PER_BATCH):
    """The three kinds of payload for a Neuronpedia export folder, in sending order."""
    if not 1 <= batch_size <= MAX_FEATURES_PER_BATCH:
        raise ValueError(f"batch_size must be 1..{MAX_FEATURES_PER_BATCH}, got {batch_size}")
    d = Path(export_dir)
    if not (d / "source.jsonl").is_file():
        raise FileNotFoundError(
            f"{d} is not a Neuronpedia export folder (no source.jsonl); create one with "
            "`sae-lens-maira dashboards export --format neuronpedia`"
        )
    model = read_jsonl(d / "model.jsonl")[0]
    source = read_jsonl(d / "source.jsonl")[0]
    sourceset = read_jsonl(d / "sourceset.jsonl")[0]
    yield "model/new", {"id": model["id"], "layers": model["layers"],
                        "displayName": model.get("displayName") or model["id"]}, "upload_model_new"  # fmt: skip
    yield "source-set/new", {"name": sourceset["name"], "modelId": model["id"],
                             "description": sourceset.get("description") or ""}, "upload_source_set_new"  # fmt: skip
    acts: dict[str, list[dict]] = defaultdict(list)
    for p in sorted((d / "activations").glob("batch-*.jsonl.gz")):
        for row in read_jsonl(p):
            acts[row["index"]].append(row)
    exps: dict[str, list[dict]] = defaultdict(list)
    for p in sorted((d / "explanations").glob("batch-*.jsonl.gz")):
        for row in read_jsonl(p):
            exps[row["index"]].append(row)
    features = []
    for p in sorted(
        (d / "features").glob("batch-*.jsonl.gz"),
        key=lambda p: int(p.name.split("-")[1].split(".")[0]),
    ):
        for row in read_jsonl(p):
            features.append(
                _feature_payload(row, acts.get(row["index"], []), exps.get(row["index"], []))
            )
    for i in range(0, len(features), batch_size):
        payload = {
            "modelId": model["id"],
            "source": source["id"],
            "features": features[i : i + batch_size],
        }
        yield "feature/upload-batch", payload, "upload_feature_batch"


def _feature_payload(row: dict, acts: list[dict], exps: list[dict]) -> dict:
    if not acts:
        raise ValueError(
            f"feature {row['index']} has no activation rows; Neuronpedia needs at least one"
        )
    out: dict[str, Any] = {
        "index": int(row["index"]),
        "density": float(row["frac_nonzero"]),
        "topLogits": [
            {"token": t, "value": v} for t, v in zip(row["pos_str"], row["pos_values"], strict=True)
        ][:20],
        "bottomLogits": [
            {"token": t, "value": v} for t, v in zip(row["neg_str"], row["neg_values"], strict=True)
        ][:20],
        "activations": [],
    }
    for a in acts:
        rec: dict[str, Any] = {"tokens": a["tokens"], "values": a["values"]}
        if a.get("binMin", -1) >= 0:  # an activation-interval example (the top group has -1)
            rec |= {
                "quantileMin": a["binMin"],
                "quantileMax": a["binMax"],
                "quantileFraction": a["binContains"],
            }
        out["activations"].append(rec)
    if exps:
        out["explanations"] = [{"text": e["description"][:512], "methodName": e.get("typeName", ""),
                                "modelName": e.get("explanationModelName", "")} for e in exps]  # fmt: skip
    return out


def upload_export(
    export_dir: str | Path, client: NeuronpediaClient, batch_size: int = MAX_FEATURES_PER_BATCH
) -> int:
    """Send a whole export; returns the number of requests made (or payloads written)."""
    payloads = list(build_upload_payloads(export_dir, batch_size))
    for endpoint, payload, schema in tqdm(payloads, desc="Neuronpedia upload", unit="request"):
        client.post(endpoint, payload, schema)
    return len(payloads)
