"""Exports validated against the schemas; upload round trip against a local fake Neuronpedia."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.export_neuronpedia import write_neuronpedia_export
from sae_lens_maira.dashboards.export_saedashboard import write_saedashboard
from sae_lens_maira.dashboards.schemas import (
    read_jsonl,
    validate,
    validate_neuronpedia_export,
    validate_saedashboard_dir,
)
from sae_lens_maira.dashboards.synthetic import REGION_FEATURE, TOKEN_FEATURE
from sae_lens_maira.dashboards.upload import NeuronpediaClient, UploadError, upload_export

EXPLANATIONS = {TOKEN_FEATURE: Explanation(TOKEN_FEATURE, 'the word "effusion"', "offline", "offline",
                                           detection={"balanced_accuracy": 0.9, "f1": 0.88})}  # fmt: skip


def test_saedashboard_batches_match_schema(stats, tmp_path):
    folder = write_saedashboard(stats, tmp_path, batch_size=10)
    assert folder.name == "maira-2-synthetic_synthetic_blocks.3.hook_resid_post_24"
    assert validate_saedashboard_dir(folder) == len(stats.alive_features())
    batch = json.loads((folder / "batch-0.json").read_text())
    assert len(batch["features"]) == 10
    feat = next(f for f in batch["features"] if f["feature_index"] == TOKEN_FEATURE)
    top = [a for a in feat["activations"] if a["bin_min"] == -1]
    assert 0 < len(top) <= 20 and top[0]["bin_max"] == pytest.approx(
        float(stats.max_act[0]), abs=1e-3
    )
    assert top[0]["tokens"][top[0]["qualifying_token_index"]] == "effusion"
    quant = [a for a in feat["activations"] if a["bin_min"] >= 0]
    assert quant and all(a["bin_min"] < max(a["values"]) + 1e-3 for a in quant)
    assert all(v == round(v, 3) for v in feat["pos_values"])
    region = next(f for b in folder.glob("batch-*.json") for f in json.loads(b.read_text())["features"]
                  if f["feature_index"] == REGION_FEATURE)  # fmt: skip
    heat = region["activations"][0]["sae_lens_maira"]["heatmap"]
    assert heat["slot"] == "frontal" and len(heat["values"]) == 64


def test_neuronpedia_export_matches_schema(stats, tmp_path):
    out = write_neuronpedia_export(
        stats, tmp_path / "exports", explanations=EXPLANATIONS, batch_size=8
    )
    assert out == tmp_path / "exports" / "maira-2-synthetic" / "3-res-syn"
    counts = validate_neuronpedia_export(out)
    n = len(stats.alive_features())
    assert counts["features"] == n and counts["explanations"] == 1
    assert counts["activations"] > n  # top plus interval examples for each
    assert len(list((out / "features").glob("batch-*.jsonl.gz"))) == -(-n // 8)
    acts = read_jsonl(out / "activations" / "batch-0.jsonl.gz")
    assert all(len(a["tokens"]) <= 1024 for a in acts)
    a0 = next(a for a in acts if a["index"] == "0")
    assert a0["tokens"][a0["maxValueTokenIndex"]] == "effusion" and a0["layer"] == "3-res-syn"
    exp = read_jsonl(out / "explanations" / "batch-0.jsonl.gz")[0]
    assert exp["description"] == 'the word "effusion"'
    assert exp["sae_lens_maira"]["detection"]["balanced_accuracy"] == 0.9


def test_private_export_drops_study_text(stats, tmp_path):
    out = write_neuronpedia_export(stats, tmp_path / "exports", private=True)
    validate_neuronpedia_export(out)
    text = b"".join(gzip.open(p).read() for p in (out / "activations").glob("*.gz")).decode()
    assert "effusion" not in text and '"s000' not in text  # neither study text nor study ids
    assert "<report>" in text and "<img0:" in text  # placeholders and patch names remain


def test_schema_rejects_broken_records():
    good = {"id": "x", "tokens": ["a", "b"], "values": [1.0, 0.0], "index": "3", "layer": "3-res",
            "modelId": "m", "maxValue": 1.0, "maxValueTokenIndex": 0, "minValue": 0.0, "creatorId": "c"}  # fmt: skip
    validate(good, "np_activation")
    with pytest.raises(ValueError, match="maxValue"):
        validate({k: v for k, v in good.items() if k != "maxValue"}, "np_activation")
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        validate(good | {"values": [1.0]}, "np_activation")
    with pytest.raises(ValueError, match="1024"):
        validate(good | {"tokens": ["a"] * 1025, "values": [0.0] * 1025}, "np_activation")
    with pytest.raises(ValueError, match="index"):
        validate(good | {"index": 3}, "np_activation")
    with pytest.raises(ValueError, match="unknown schema"):
        validate(good, "nope")


class _FakeNeuronpedia(BaseHTTPRequestHandler):
    """Records requests; the first request of each endpoint fails with 503 to exercise retries."""

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append((self.path, dict(self.headers), body))
        if self.path not in srv.failed:
            srv.failed.add(self.path)
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        if self.headers.get("X-Api-Key") != "secret-key-123":
            self.send_response(401)
            self.end_headers()
            return
        out = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_neuronpedia():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeNeuronpedia)
    srv.requests, srv.failed = [], set()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_upload_round_trip_with_retries(stats, tmp_path, fake_neuronpedia, monkeypatch, caplog):
    out = write_neuronpedia_export(stats, tmp_path / "exports", explanations=EXPLANATIONS)
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "secret-key-123")
    base = f"http://127.0.0.1:{fake_neuronpedia.server_address[1]}/api"
    client = NeuronpediaClient(base_url=base, backoff_s=0.0)
    assert "secret" not in repr(client)
    caplog.set_level("DEBUG")
    n = upload_export(out, client, batch_size=10)
    n_feat = len(stats.alive_features())
    assert n == 2 + -(-n_feat // 10)
    ok = [(p, h, b) for p, h, b in fake_neuronpedia.requests if p in fake_neuronpedia.failed]
    assert len(fake_neuronpedia.requests) == n + 3  # one failed first try per endpoint
    paths = [p for p, _, _ in fake_neuronpedia.requests]
    assert paths[:4] == [
        "/api/model/new",
        "/api/model/new",
        "/api/source-set/new",
        "/api/source-set/new",
    ]
    sent = [b for p, _, b in ok if p == "/api/feature/upload-batch"]
    uploaded = {f["index"] for b in sent[1:] for f in b["features"]}  # sent[0] is the failed try
    assert uploaded == set(stats.alive_features())
    for b in sent:
        validate(b, "upload_feature_batch")
        assert b["source"] == "3-res-syn" and len(b["features"]) <= 10
    f0 = next(f for b in sent for f in b["features"] if f["index"] == 0)
    assert f0["explanations"][0]["text"] == 'the word "effusion"'
    assert any("quantileMin" in a for a in f0["activations"])
    assert all(h.get("X-Api-Key") == "secret-key-123" for _, h, _ in fake_neuronpedia.requests)
    assert "secret-key-123" not in caplog.text


def test_upload_errors_and_dry_run(stats, tmp_path, fake_neuronpedia, monkeypatch):
    out = write_neuronpedia_export(stats, tmp_path / "exports")
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    with pytest.raises(ValueError, match="NEURONPEDIA_API_KEY"):
        NeuronpediaClient()
    dry = NeuronpediaClient(dry_run_dir=tmp_path / "payloads")
    n = upload_export(out, dry)
    files = sorted((tmp_path / "payloads").glob("*.json"))
    assert len(files) == n and files[0].name == "0000-model-new.json"
    assert not fake_neuronpedia.requests
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "wrong")
    base = f"http://127.0.0.1:{fake_neuronpedia.server_address[1]}/api"
    client = NeuronpediaClient(base_url=base, backoff_s=0.0)
    with pytest.raises(UploadError, match="401"):
        upload_export(out, client)
    client = NeuronpediaClient(base_url=base, backoff_s=0.0, max_retries=0)
    fake_neuronpedia.failed.clear()
    with pytest.raises(UploadError, match="503"):
        upload_export(out, client)
    with pytest.raises(FileNotFoundError, match="not a Neuronpedia export"):
        upload_export(tmp_path, dry)
