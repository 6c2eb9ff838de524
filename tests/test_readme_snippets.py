"""The README's python snippets run as written (issue 16).

The only substitution is the hub id ``"microsoft/maira-2"``, replaced by a saved small checkpoint
(the small preset with 16 text layers, so the README's ``blocks.15`` hook exists). The SAE release
``maira-2-sae`` resolves through a fake offline Hugging Face cache holding one dictionary_learning
SAE of the small model's width; ``frontal.jpg`` / ``lateral.jpg`` are written in the working
directory. The snippets run in order in one namespace, as a reader pastes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ID = '"microsoft/maira-2"'


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    from sae_lens_maira import HookedMaira2

    model = HookedMaira2.from_config("small", seed=0, device="cpu", text_num_hidden_layers=16)
    folder = tmp_path_factory.mktemp("readme_ckpt")
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def fake_sae_release(tmp_path, monkeypatch):
    """``maira-2-sae`` in an offline HF cache: one ef4 SAE on blocks.15 of width 256."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from sae_lens_maira.loading import MAIRA2_RELEASE, MAIRA2_REPO_ID
    from tests.loading.fake_dictionary_learning import hub_snapshot, write_dl_folder

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    snapshot = hub_snapshot(cache, MAIRA2_REPO_ID)
    write_dl_folder(snapshot / "run" / "trainer_0", d_in=256, ef=4, k=8, layer=15)
    lookup = get_pretrained_saes_directory()[MAIRA2_RELEASE]
    monkeypatch.setitem(lookup.config_overrides, "d_in", 256)


def test_readme_has_the_snippets_this_test_runs():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2 and HUB_ID in blocks[0] and "SAE.from_pretrained" in blocks[1]


def test_readme_python_snippets_run_as_written(
    small_checkpoint, fake_sae_release, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name, shape in (("frontal.jpg", (300, 280)), ("lateral.jpg", (280, 300))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(name)
    code = "\n".join(python_blocks(README.read_text())).replace(HUB_ID, repr(str(small_checkpoint)))
    namespace: dict = {"__name__": "__readme__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU runs these small matrices ~10x faster on one thread
    try:
        exec(compile(code, str(README), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    # what the snippets promise
    assert namespace["cache"]["blocks.15.hook_resid_post"].shape[-1] == 256
    report = namespace["report"]
    assert isinstance(report, list) and len(report) == 1 and isinstance(report[0], str)
    model = namespace["model"]
    assert "blocks.15.hook_resid_post" in model.acts_to_saes
    assert torch.isfinite(namespace["logits"]).all()
