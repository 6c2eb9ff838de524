"""The offline viewer: escaping, no external fetches, and a real render in headless Chromium."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import pytest

from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.synthetic import REGION_FEATURE, TOKEN_FEATURE
from sae_lens_maira.dashboards.viewer import script_json, write_viewer

INJECTED = "<script>document.body.setAttribute('data-pwned','1')</script>"
EXPLANATIONS = {
    REGION_FEATURE: Explanation(
        REGION_FEATURE,
        "lower-left <b>frontal</b> patches",
        "offline",
        "offline",
        detection={"balanced_accuracy": 0.93, "f1": 0.9},
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def viewer_dir(stats, synthetic, tmp_path_factory):
    hostile = copy.copy(stats)
    hostile.token_strings = dict(stats.token_strings)
    hostile.token_strings[synthetic.vocab.index("effusion")] = INJECTED
    out = tmp_path_factory.mktemp("viewer")
    write_viewer(hostile, out, explanations=EXPLANATIONS)
    return out


def test_pages_are_escaped_and_offline(viewer_dir, stats):
    pages = sorted((viewer_dir / "features").glob("*.html"))
    assert len(pages) == len(stats.alive_features())
    for page in [*pages, viewer_dir / "index.html"]:
        html = page.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), page  # nothing remote
        assert "<script>document" not in html
    f0 = (viewer_dir / "features" / f"{TOKEN_FEATURE}.html").read_text()
    assert (
        "&lt;script&gt;document.body.setAttribute(&#39;data-pwned&#39;,&#39;1&#39;)&lt;/script&gt;"
        in f0
    )
    f1 = (viewer_dir / "features" / f"{REGION_FEATURE}.html").read_text()
    assert "lower-left &lt;b&gt;frontal&lt;/b&gt; patches" in f1
    assert f1.count('class="heatmap"') == stats.config["n_heatmaps"]
    assert f1.count("data:image/png;base64,") == stats.config["n_heatmaps"]
    index = (viewer_dir / "index.html").read_text()
    assert index.count("<tr data-f=") == len(stats.alive_features())
    assert (viewer_dir / "static" / "viewer.js").is_file()


def test_script_json_cannot_close_the_script_element():
    text = str(script_json({"slot": "</script><script>alert(1)</script>", "x": "a&b\u2028"}))
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"slot": "</script><script>alert(1)</script>", "x": "a&b\u2028"}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(args: list[str], tmp_path) -> str:
    exe = _chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.browser
@pytest.mark.skipif(
    _chromium() is None, reason="headless Chromium not installed (apt-get install chromium)"
)
def test_feature_page_renders_in_chromium(viewer_dir, tmp_path, stats):
    page = (viewer_dir / "features" / f"{REGION_FEATURE}.html").as_uri()
    dom = _run_chromium(["--dump-dom", page], tmp_path)
    canvases = re.findall(r"<canvas[^>]*>", dom)
    assert len(canvases) == stats.config["n_heatmaps"]
    assert all('data-drawn="1"' in c for c in canvases)  # viewer.js ran and drew every heatmap
    top = float(re.search(r'data-max-value="([0-9.]+)"', canvases[0]).group(1))
    assert top == pytest.approx(float(stats.max_act[REGION_FEATURE]), rel=1e-2)

    page0 = (viewer_dir / "features" / f"{TOKEN_FEATURE}.html").as_uri()
    dom0 = _run_chromium(["--dump-dom", page0], tmp_path)
    body = re.search(r"<body[^>]*>", dom0).group(0)
    assert "data-pwned" not in body  # the injected script did not run
    shown = re.findall(r'<span class="tok[^"]*"[^>]*>([^<]*)</span>', dom0)
    assert INJECTED.replace("<", "&lt;").replace(">", "&gt;") in shown  # ...it is shown as text

    shot = tmp_path / "feature.png"
    _run_chromium(["--window-size=1200,1400", f"--screenshot={shot}", page], tmp_path)
    assert shot.stat().st_size > 20_000


def test_an_unscored_feature_says_so(stats, tmp_path):
    """autointerp writes ``scored: False`` (no balanced accuracy) below its held-out minimum."""
    unscored = {
        TOKEN_FEATURE: Explanation(
            TOKEN_FEATURE, "effusion words", "offline", "offline",
            detection={"scored": False, "reason": "only 2 held-out activating examples (need 5)"},
        )  # fmt: skip
    }
    write_viewer(stats, tmp_path, explanations=unscored, features=[TOKEN_FEATURE])
    page = (tmp_path / "features" / f"{TOKEN_FEATURE}.html").read_text()
    assert "not scored (only 2 held-out activating examples (need 5))" in page
    assert "balanced accuracy" not in page


def test_viewer_renders_from_saedashboard_batch_and_sidecar(stats, tmp_path):
    """Only the export travels: the pages come from batch-<i>.json + extras-<i>.json + images/."""
    from sae_lens_maira.dashboards.export_saedashboard import write_saedashboard
    from sae_lens_maira.dashboards.viewer_batches import write_viewer_from_saedashboard

    folder = write_saedashboard(stats, tmp_path / "sd", batch_size=5)
    out = tmp_path / "view"
    write_viewer_from_saedashboard(folder, out, explanations=EXPLANATIONS)
    pages = sorted((out / "features").glob("*.html"))
    assert len(pages) == len(stats.alive_features())
    f1 = (out / "features" / f"{REGION_FEATURE}.html").read_text()
    assert f1.count('class="heatmap"') == stats.config["n_heatmaps"]  # heatmaps from the sidecar
    assert f1.count("data:image/png;base64,") == stats.config["n_heatmaps"]  # images/ inlined
    assert "lower-left &lt;b&gt;frontal&lt;/b&gt; patches" in f1
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", f1)
    f0 = (out / "features" / f"{TOKEN_FEATURE}.html").read_text()
    assert 'class="tok r-report max' in f0 and ">effusion</span>" in f0  # roles from the sidecar
    # a folder SAE-Dashboard wrote itself (no sidecar) still renders, without roles or images
    for p in folder.glob("extras-*.json"):
        p.unlink()
    write_viewer_from_saedashboard(folder, tmp_path / "bare")
    bare = (tmp_path / "bare" / "features" / f"{REGION_FEATURE}.html").read_text()
    assert 'class="heatmap"' not in bare and "r-unknown" in bare
    with pytest.raises(FileNotFoundError, match="not an SAE-Dashboard export"):
        write_viewer_from_saedashboard(tmp_path, tmp_path / "none")
