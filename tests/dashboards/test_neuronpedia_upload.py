"""The real upload client against a loopback Neuronpedia stand-in: resumable after SIGKILL with every
feature uploaded exactly once, create-if-absent, ownership, size-split batches, refusals."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.export_neuronpedia import write_neuronpedia_export
from sae_lens_maira.dashboards.neuronpedia_rules import NeuronpediaRuleError
from sae_lens_maira.dashboards.schemas import read_jsonl
from sae_lens_maira.dashboards.synthetic import TOKEN_FEATURE
from sae_lens_maira.dashboards.upload import (
    PROGRESS_FILE,
    NeuronpediaClient,
    UploadError,
    UploadOptions,
    build_plan,
    upload_export,
)
from sae_lens_maira.http_retry import encode_json
from tests.dashboards.neuronpedia_standin import API_KEY, BODY_LIMIT, USER_ID, StandIn

ROOT = Path(__file__).resolve().parents[2]
EXPS = {TOKEN_FEATURE: Explanation(TOKEN_FEATURE, 'the word "effusion"', "gpt-4o-mini", "gpt-4o-mini",
                                   detection={"balanced_accuracy": 0.9})}  # fmt: skip


@pytest.fixture
def standin():
    srv = StandIn().start()
    yield srv
    srv.close()


@pytest.fixture
def export(stats, tmp_path):
    return write_neuronpedia_export(stats, tmp_path / "exports", explanations=EXPS, batch_size=8)


def _client(srv, monkeypatch, **kw):
    monkeypatch.setenv("NEURONPEDIA_API_KEY", API_KEY)
    return NeuronpediaClient(srv.base + "/api", backoff_s=0.0, timeout_s=30.0, **kw)


def _exported_activations(export_dir: Path) -> Counter:
    n = Counter()
    for p in (export_dir / "activations").glob("*.gz"):
        for row in read_jsonl(p):
            n[int(row["index"])] += 1
    return n


def test_killed_upload_resumes_and_uploads_each_feature_once(export, standin, monkeypatch):
    standin.hang_after_batch = 3  # batch 3 is committed, then the client dies before the answer
    env = {**os.environ, "NEURONPEDIA_API_KEY": API_KEY, "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    cmd = [sys.executable, "-c", "import sys; from sae_lens_maira.cli import main; sys.exit(main())",
           "dashboards", "upload", "--export", str(export), "--base-url", standin.base + "/api",
           "--batch-size", "4"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert standin.hang.wait(180), proc.communicate(timeout=5)[0].decode()[-2000:]
    finally:
        proc.kill()  # SIGKILL: no cleanup, no chance to record the answer
        proc.wait(30)
    progress = json.loads((export / PROGRESS_FILE).read_text())["servers"][standin.base + "/api"]
    assert len(progress["uploaded"]) == 8 and len(progress["in_flight"]) == 4
    assert standin.batches_accepted == 3

    report = upload_export(export, _client(standin, monkeypatch), UploadOptions(max_features=4))
    want = _exported_activations(export)
    key = ("maira-2-synthetic", "3-res-syn")
    got = {i for (m, s, i) in standin.neurons if (m, s) == key}
    assert got == set(want)  # every feature arrived ...
    for i, n in want.items():  # ... exactly once: a resent batch would duplicate activations
        assert len(standin.activations[(*key, i)]) == n
    assert report.features_already == 12 and report.features_sent == len(want) - 12
    assert standin.paths("POST").count("/api/model/new") == 1  # the rerun created nothing again
    assert standin.paths("POST").count("/api/source-set/new") == 1
    assert (
        standin.paths("GET").count(f"/api/feature/{key[0]}/{key[1]}/{progress['in_flight'][0]}")
        == 1
    )
    exp = standin.explanations[(*key, TOKEN_FEATURE)]
    assert exp == [{"text": 'the word "effusion"', "methodName": "np_max-act-logits",
                    "modelName": "gpt-4o-mini"}]  # fmt: skip
    again = upload_export(export, _client(standin, monkeypatch), UploadOptions(max_features=4))
    assert again.features_sent == 0 and again.requests == 0  # finished: nothing to send


def test_existing_model_and_set_own_or_someone_elses(stats, export, standin, monkeypatch, tmp_path):
    upload_export(export, _client(standin, monkeypatch))
    # a second layer of the same model and source set: both exist and are ours (the user id is
    # known from the sibling export's progress file) -> nothing created, features uploaded
    from dataclasses import replace

    stats2 = replace(stats, meta=replace(stats.meta, layer=4, hook_name="blocks.4.hook_resid_post"))
    export2 = write_neuronpedia_export(stats2, tmp_path / "exports", explanations=EXPS)
    assert export2.parent == export.parent
    n_new = standin.paths("POST").count("/api/model/new")
    rep = upload_export(export2, _client(standin, monkeypatch))
    assert rep.features_sent == len(stats.alive_features())
    assert standin.paths("POST").count("/api/model/new") == n_new == 1
    assert ("maira-2-synthetic", "4-res-syn", TOKEN_FEATURE) in standin.neurons
    # someone else's source set: a clear refusal before any feature is sent
    standin.sets[("maira-2-synthetic", "res-syn")]["creatorId"] = "someone-else"
    (export2 / PROGRESS_FILE).unlink()
    with pytest.raises(UploadError, match="belongs to another user"):
        upload_export(export2, _client(standin, monkeypatch))
    # no record at all (fresh machine): "already exists" is not taken for ours without --user-id
    for p in export.parent.glob(f"*/{PROGRESS_FILE}"):
        p.unlink()
    standin.sets[("maira-2-synthetic", "res-syn")]["creatorId"] = USER_ID
    with pytest.raises(UploadError, match=f"--user-id {USER_ID}"):
        upload_export(export2, _client(standin, monkeypatch))
    rep = upload_export(export2, _client(standin, monkeypatch), UploadOptions(user_id=USER_ID))
    assert rep.batches_sent >= 1


def test_batches_split_by_size_and_413_is_a_hard_failure(export, standin, monkeypatch):
    plan = build_plan(export)
    opts = UploadOptions(max_bytes=40_000)
    batches = plan.batches(opts)
    assert len(batches) > 1
    assert all(len(encode_json(plan.body(b))) <= 40_000 for b in batches)
    assert sorted(f["index"] for b in batches for f in b) == sorted(
        f["index"] for f in plan.features
    )
    rep = upload_export(export, _client(standin, monkeypatch), opts)
    assert rep.batches_sent == len(batches)
    # the stand-in enforces the hosting's limit: a body over 4.5 MB is refused (not retried)
    client = _client(standin, monkeypatch)
    big = {"modelId": "m", "source": "3-x", "features": [{"pad": "x" * (BODY_LIMIT + 10)}]}
    with pytest.raises(UploadError, match="413") as err:
        client.call("POST", "feature/upload-batch", big)
    assert not err.value.transient and client.n_requests == 1
    with pytest.raises(ValueError, match="4.5 MB"):
        UploadOptions(max_bytes=5_000_000)


def test_unregistered_explanation_names_are_refused_locally(export, standin, monkeypatch):
    with pytest.raises(NeuronpediaRuleError, match="np_max-act-logits") as err:
        upload_export(
            export, _client(standin, monkeypatch), UploadOptions(explanation_method="mine")
        )
    assert "oai_token-act-pair" in str(err.value)  # the accepted list
    # a tampered export (a name the server does not know) fails the same way: nothing is sent
    p = next((export / "explanations").glob("*.gz"))
    rows = read_jsonl(p)
    rows[0]["explanationModelName"] = "offline"
    with gzip.open(p, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(NeuronpediaRuleError, match="'offline' is not registered"):
        upload_export(export, _client(standin, monkeypatch))
    assert standin.log == []
    # what the real route does with it: an opaque 500, not retried, nothing stored
    client = _client(standin, monkeypatch)
    standin.models["maira-2-synthetic"] = {
        "id": "maira-2-synthetic",
        "layers": 8,
        "creatorId": USER_ID,
    }
    standin.sets[("maira-2-synthetic", "res-syn")] = {"name": "res-syn", "creatorId": USER_ID,
                                                      "sources": [{"id": "3-res-syn"}]}  # fmt: skip
    feature = {"index": 0, "activations": [{"tokens": ["a"], "values": [1.0]}],
               "explanations": [{"text": "x", "methodName": "sae-lens-maira-autointerp"}]}  # fmt: skip
    with pytest.raises(UploadError, match="500") as err:
        client.call("POST", "feature/upload-batch",
                    {"modelId": "maira-2-synthetic", "source": "3-res-syn", "features": [feature]})  # fmt: skip
    assert not err.value.transient and client.n_requests == 1 and not standin.neurons
    # --no-explanations keeps them local and the upload goes through
    rep = upload_export(
        export, _client(standin, monkeypatch), UploadOptions(explanations=False, user_id=USER_ID)
    )
    assert rep.batches_sent >= 1 and not any(standin.explanations.values())


def test_redirect_and_html_are_not_success(export, standin, monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_API_KEY", API_KEY)
    with pytest.raises(UploadError, match="redirected \\(HTTP 308\\)") as err:
        upload_export(export, NeuronpediaClient(standin.base + "/old-api", backoff_s=0.0))
    assert not err.value.transient
    with pytest.raises(UploadError, match="HTTP 404"):
        upload_export(export, NeuronpediaClient(standin.base + "/nope", backoff_s=0.0))
    with pytest.raises(UploadError, match="HTML page"):
        upload_export(export, NeuronpediaClient(standin.base + "/site", backoff_s=0.0))
    assert not standin.neurons and standin.batches_accepted == 0
    assert not (export / PROGRESS_FILE).exists()  # nothing recorded as done


def test_dry_run_checks_and_prints_without_sending(export, standin, capsys):
    lines: list[str] = []
    rep = upload_export(
        export, None, UploadOptions(max_features=5), dry_run=True, echo=lines.append
    )
    batches = [r for r in rep.planned if r[1] == "feature/upload-batch"]
    assert sum(n for *_, n in batches) == len(build_plan(export).features)
    assert all(n <= 5 for *_, n in batches) and any("MB" in ln for ln in lines)
    assert "model/new (only if absent)" in "\n".join(lines)
    assert standin.log == [] and not (export / PROGRESS_FILE).exists()
    # the route's rules: an empty logit token or a 1025-token record is refused in the dry run
    p = next((export / "activations").glob("*.gz"))
    rows = read_jsonl(p)
    rows[0]["tokens"], rows[0]["values"] = ["a"] * 1025, [0.0] * 1025
    with gzip.open(p, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(NeuronpediaRuleError, match="1025 tokens"):
        upload_export(export, None, dry_run=True, echo=lines.append)


def test_transient_503_is_retried_and_the_key_stays_secret(export, standin, monkeypatch, caplog):
    standin.fail_first = True
    caplog.set_level("DEBUG")
    client = _client(standin, monkeypatch)
    assert API_KEY not in repr(client)
    rep = upload_export(export, client)
    assert rep.features_sent == len(build_plan(export).features)
    statuses = Counter(s for *_, s in standin.log)
    assert statuses[503] == len(standin.failed) > 3  # every path failed once and was retried
    assert API_KEY not in caplog.text
    monkeypatch.delenv("NEURONPEDIA_API_KEY")
    with pytest.raises(ValueError, match="NEURONPEDIA_API_KEY"):
        NeuronpediaClient(standin.base + "/api")
    with pytest.raises(FileNotFoundError, match="not a Neuronpedia export"):
        upload_export(export.parent, None, dry_run=True)
