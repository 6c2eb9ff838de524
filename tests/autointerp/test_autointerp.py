"""Autointerp on planted features (truth known), the metrics, and the OpenAI-compatible path
against a local fake chat-completions server (retries, cache, resume)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sae_lens_maira.autointerp.client import CachedClient, LLMError, OpenAICompatibleClient
from sae_lens_maira.autointerp.examples import AutointerpConfig, explainer_examples
from sae_lens_maira.autointerp.llm import (
    LLMExplainer,
    LLMScorer,
    parse_explanation,
    parse_predictions,
)
from sae_lens_maira.autointerp.metrics import detection_metrics
from sae_lens_maira.autointerp.offline import OfflineExplainer, OfflineScorer
from sae_lens_maira.autointerp.runner import explain_feature, run_autointerp, score_explanation
from sae_lens_maira.dashboards.explanations import load_explanations
from sae_lens_maira.dashboards.stats_pass import FeatureStatsCollector, FeatureStatsConfig
from sae_lens_maira.dashboards.synthetic import REGION_FEATURE, TOKEN_FEATURE, make_synthetic

CFG = AutointerpConfig(n_explain=10, n_non_activating=50)


@pytest.fixture(scope="module")
def planted():
    data = make_synthetic(
        n_studies=240, batch_size=40, d_sae=8, grid=(8, 8), seed=3, with_images=False
    )
    cfg = FeatureStatsConfig(n_top=10, ctx_left=4, ctx_right=4, text_context=6, n_random_contexts=120,
                             n_corr_positions=0)  # fmt: skip
    c = FeatureStatsCollector(data.d_sae, data.grid, cfg)
    for b in data.batches:
        c.update(b)
    return c.finalize(data.namer, data.meta)


def test_metrics_match_the_formulas():
    pred = [1, 1, 0, 0, 1, 0, 0, 1, 1, 0]
    true = [1, 0, 0, 0, 1, 1, 0, 1, 0, 0]
    m = detection_metrics([bool(p) for p in pred], [bool(t) for t in true])
    tp, fp, fn, tn = 3, 2, 1, 4
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    with pytest.raises(ValueError, match="predictions"):
        detection_metrics([True], [True, False])


def test_explainer_examples_mark_activating_tokens(planted):
    ex = explainer_examples(planted, TOKEN_FEATURE, CFG)
    assert ex and all("<<effusion>>" in s.text for s in ex)
    img = explainer_examples(planted, REGION_FEATURE, CFG)[0].text
    assert re.search(r"\[frontal image r\d\dc\d\d-r\d\dc\d\d: <<r0[4-7]c0[01]>>", img)


def test_offline_explainer_recovers_planted_features(planted):
    ex = OfflineExplainer(planted.slot_names)
    assert '"effusion"' in explain_feature(planted, TOKEN_FEATURE, ex, CFG)
    text = explain_feature(planted, REGION_FEATURE, ex, CFG)
    m = re.search(r"frontal image patches in rows (\d+)-(\d+), cols (\d+)-(\d+)", text)
    assert (
        m and int(m.group(1)) >= 3 and int(m.group(4)) <= 2
    )  # the lower-left block (rows 4-7, cols 0-1)


@pytest.mark.parametrize(
    ("feature", "right", "wrong"),
    [
        (TOKEN_FEATURE, 'fires on the tokens "effusion"', 'fires on the tokens "pacemaker"'),
        (REGION_FEATURE, "fires on frontal image patches in rows 4-7, cols 0-1",
         "fires on frontal image patches in rows 0-3, cols 4-7"),
    ],
)  # fmt: skip
def test_detection_ranks_the_correct_explanation_first(planted, feature, right, wrong):
    scorer = OfflineScorer(planted.slot_names)
    good = score_explanation(planted, feature, right, scorer, CFG)
    bad = score_explanation(planted, feature, wrong, scorer, CFG)
    assert good["n_activating"] >= 10 and good["n_non_activating"] >= 20
    assert good["balanced_accuracy"] > bad["balanced_accuracy"] + 0.2
    assert good["f1"] > bad["f1"]


class _FakeChat(BaseHTTPRequestHandler):
    """A chat-completions server whose 'model' explains by the marked tokens and detects by the
    quoted word; every third request first answers 429."""

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.n += 1
            n = srv.n
            srv.auth.add(self.headers.get("Authorization"))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": "not found"})
        if n % 3 == 1:
            return self._send(429, {"error": "slow down"})
        with srv.lock:
            srv.served += 1
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        if "[EXPLANATION]" in system:
            marked = re.findall(r"<<([a-z]+)>>", user)
            word = max(set(marked), key=marked.count) if marked else "nothing"
            text = f'The feature fires on a word.\n[EXPLANATION]: the word "{word}"'
        else:
            hit = re.search(r'Explanation: the word "([^"]+)"', user)
            assert hit, user[:300]
            word = hit.group(1)
            lines = [ln for ln in user.splitlines() if ln.startswith("Example ")]
            text = json.dumps([int(re.search(rf"\b{word}\b", ln) is not None) for ln in lines])
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})

    def _send(self, code, obj):
        out = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        if code == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_chat():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    srv.n, srv.served, srv.lock, srv.auth = 0, 0, threading.Lock(), set()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_compatible_path_with_cache_and_resume(planted, fake_chat, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-123")
    base = f"http://127.0.0.1:{fake_chat.server_address[1]}/v1"
    client = CachedClient(OpenAICompatibleClient("fake-model", base, api_key_env="TEST_LLM_KEY",
                                                 backoff_s=0.0), tmp_path / "cache.jsonl")  # fmt: skip
    out = tmp_path / "explanations.jsonl"
    feats = [TOKEN_FEATURE, 5]
    res = run_autointerp(
        planted, out, LLMExplainer(client), LLMScorer(client), feats, CFG, concurrency=4
    )
    assert res[TOKEN_FEATURE].text == 'the word "effusion"'
    assert res[TOKEN_FEATURE].detection["balanced_accuracy"] == 1.0
    assert res[TOKEN_FEATURE].explainer == "fake-model"
    assert fake_chat.auth == {"Bearer sk-test-123"}
    calls = fake_chat.served
    assert calls == client.misses > 0 and fake_chat.n > calls  # some 429s were retried
    # a rerun resumes from the output file: no request at all
    again = run_autointerp(planted, out, LLMExplainer(client), LLMScorer(client), feats, CFG)
    assert fake_chat.served == calls and again[TOKEN_FEATURE].text == res[TOKEN_FEATURE].text
    # a fresh run with the same cache (output lost) is answered from the cache
    out.unlink()
    cached = CachedClient(
        OpenAICompatibleClient("fake-model", base, backoff_s=0.0), tmp_path / "cache.jsonl"
    )
    run_autointerp(planted, out, LLMExplainer(cached), LLMScorer(cached), feats, CFG)
    assert fake_chat.served == calls and cached.hits == calls
    assert set(load_explanations(out)) == set(feats)


def test_llm_errors_and_parsing(fake_chat):
    base = f"http://127.0.0.1:{fake_chat.server_address[1]}/wrong"
    with pytest.raises(LLMError, match="404"):
        OpenAICompatibleClient("m", base, backoff_s=0.0).complete(
            [{"role": "user", "content": "hi"}]
        )
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        OpenAICompatibleClient("m", api_key_env="NO_SUCH_KEY_VAR", require_key=True)
    assert (
        parse_explanation("thinking...\n[EXPLANATION]: pleural effusion mentions")
        == "pleural effusion mentions"
    )
    assert parse_predictions("Sure: [1, 0, 1]", 3) == [True, False, True]
    assert parse_predictions("[1, 0]", 3) is None
