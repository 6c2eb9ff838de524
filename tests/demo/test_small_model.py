"""The small model's training end to end at a tiny size, its checkpoint, and the model cache."""

from __future__ import annotations

import json

import pytest
import torch

from sae_lens_maira.demo import model_cache
from sae_lens_maira.demo.evaluation import evaluation_subset
from sae_lens_maira.demo.small_model import DemoModelConfig, train_small_model
from sae_lens_maira.demo.studies import DEMO_FINDINGS
from sae_lens_maira.model import HookedMaira2
from sae_lens_maira.processing import Maira2Processor
from sae_lens_maira.steering.fluency import teacher_forced_loss


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_split):
    """One tiny training run through ensure_demo_model (shared by the tests below)."""
    cache = tmp_path_factory.mktemp("models")
    path = model_cache.ensure_demo_model(
        cache, studies=demo_split, config=DemoModelConfig.tiny(), threads=1,
        progress=False, log=None,
    )  # fmt: skip
    return cache, path


def test_checkpoint_loads_and_matches_what_was_trained(trained, demo_split):
    _, path = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "demo_training.json", "loss_curve.png", "cache_key.json"):  # fmt: skip
        assert (path / name).is_file(), name
    model = HookedMaira2.from_pretrained(path, device="cpu")
    processor = Maira2Processor.from_pretrained(path)
    assert model.n_patches == processor.n_patches == 64  # 112 px, 14 px patches
    summary = json.loads((path / "demo_training.json").read_text())
    # the loaded weights are the kept ones: their validation loss is the one recorded then
    _, val = model_cache.split_validation(demo_split.train)
    cfg = DemoModelConfig.tiny()
    val = evaluation_subset(val, DEMO_FINDINGS, per_finding=cfg.eval_per_finding,
                            negatives=cfg.eval_negatives)  # fmt: skip
    assert summary["best_step"] > DemoModelConfig.tiny().grounding_steps  # chosen after warm-up
    kept = next(e for e in summary["evals"] if e["step"] == summary["best_step"])
    assert teacher_forced_loss(model, processor, val) == pytest.approx(kept["val_loss"], rel=1e-4)
    # it generates from a held-out study's images
    batch = processor(demo_split.held_out[:1])
    out = model.generate(batch.input_ids, pixel_values=batch.pixel_values, max_new_tokens=4,
                         return_type="str")  # fmt: skip
    assert isinstance(out, list) and len(out) == 1


def test_losses_fall(trained):
    _, path = trained
    s = json.loads((path / "demo_training.json").read_text())
    text, lm, vis = s["text_losses"], s["lm_losses"], s["vision_losses"]
    assert sum(text[-2:]) / 2 < text[0]
    assert sum(lm[-5:]) / 5 < sum(lm[:5]) / 5
    assert sum(vis[-5:]) / 5 < sum(vis[:5]) / 5
    assert s["timings"]["total_s"] > 0 and s["peak_rss_mb"] > 0
    assert len(s["lm_steps"]) == DemoModelConfig.tiny().lm_steps


def test_cache_is_reused_and_keyed(trained, demo_split, monkeypatch):
    cache, path = trained

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setattr(model_cache, "train_small_model", no_training)
    again = model_cache.ensure_demo_model(
        cache, studies=demo_split, config=DemoModelConfig.tiny(), progress=False,
        log=None,
    )  # fmt: skip
    assert again == path

    class Interrupted(Exception):
        pass

    calls = []

    def interrupted(train, val, out, **kwargs):
        calls.append(kwargs["seed"])
        (out / "model.safetensors").write_bytes(b"half written")
        raise Interrupted

    monkeypatch.setattr(model_cache, "train_small_model", interrupted)
    for changed in ({"seed": 1}, {"config": DemoModelConfig.tiny(lm_steps=31)}):
        kwargs = {"config": DemoModelConfig.tiny(), "seed": 0, **changed}
        with pytest.raises(Interrupted):
            model_cache.ensure_demo_model(
                cache, studies=demo_split, progress=False, log=None, **kwargs
            )
    assert calls == [1, 0]  # a new key means training, not the cached folder
    # an interrupted training leaves nothing behind that could pass for a cached model
    models = cache / "models"
    assert sorted(p.name for p in models.iterdir()) == [path.name]


def test_key_covers_data_config_and_code(demo_split):
    cfg = DemoModelConfig.tiny()
    key = model_cache.demo_model_key(demo_split.train, cfg)
    assert key == model_cache.demo_model_key(list(demo_split.train), cfg)
    assert key["key"] != model_cache.demo_model_key(demo_split.train[1:], cfg)["key"]
    assert key["config"] != model_cache.demo_model_key(demo_split.train, cfg, seed=3)["config"]
    other_findings = DemoModelConfig.tiny(findings=("devices",))
    assert key["config"] != model_cache.demo_model_key(demo_split.train, other_findings)["config"]
    assert len(key["code"]) == 64 and len(key["images"]) == 64


def _package_copy(tmp_path):
    import shutil

    from sae_lens_maira.demo.studies import package_root

    root = tmp_path / "sae_lens_maira"
    shutil.copytree(package_root(), root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize(
    ("module", "images_change"),
    [("data/synthetic_xray.py", True), ("data/openi.py", True), ("data/labeller.py", False),
     ("demo/tokenizer_corpus.py", False), ("demo/lm_training.py", False),
     ("checkpoint_config.py", False), ("steering/fluency.py", False)],
)  # fmt: skip
def test_editing_what_shapes_the_model_changes_its_key(demo_split, tmp_path, module, images_change):
    """The renderer and the labeller (and the demo's training code) are in the model's key; the
    renderer's code is in the images' key, so edited rendering never reuses stale PNGs."""
    from sae_lens_maira.demo.studies import render_key

    root = _package_copy(tmp_path)
    cfg = DemoModelConfig.tiny()
    before = model_cache.demo_model_key(demo_split.train, cfg, code_root=root)
    images_before = render_key(112, root=root)
    assert before == model_cache.demo_model_key(demo_split.train, cfg)  # a copy keys the same
    path = root / module
    path.write_text(path.read_text() + "\n# an edit\n")
    after = model_cache.demo_model_key(demo_split.train, cfg, code_root=root)
    assert after["key"] != before["key"] and after["code"] != before["code"]
    assert (render_key(112, root=root) != images_before) is images_change
    assert (after["images"] != before["images"]) is images_change


@pytest.mark.parametrize(
    "module",
    ["demo/steering_study.py", "training/cached_evals.py", "demo/pipeline.py", "steering/sweep.py",
     "steering/screening.py"],
)
def test_editing_what_only_uses_the_model_keeps_its_key(demo_split, tmp_path, module):
    """Code that only reads a trained model (the steering study, the SAE's health check, the
    pipeline) is not in the key: editing it must not retrain a half-hour model."""
    root = _package_copy(tmp_path)
    cfg = DemoModelConfig.tiny()
    before = model_cache.demo_model_key(demo_split.train, cfg, code_root=root)
    path = root / module
    path.write_text(path.read_text() + "\n# an edit\n")
    assert model_cache.demo_model_key(demo_split.train, cfg, code_root=root) == before


def test_the_training_code_s_imports_are_in_the_key_wherever_they_live():
    from sae_lens_maira.demo.code_key import import_closure
    from sae_lens_maira.demo.studies import package_root

    root = package_root()
    files = {p.relative_to(root).as_posix() for p in import_closure(root, "sae_lens_maira.demo.model_cache")}
    # training's validation reads the fluency checks; nothing reaches the steering study
    assert {"steering/fluency.py", "demo/lm_training.py", "data/labeller.py", "training/loop.py"} <= files
    assert "demo/steering_study.py" not in files and "demo/pipeline.py" not in files
    with pytest.raises(ValueError, match="not a module"):
        import_closure(root, "sae_lens_maira.no_such_module")


def test_images_are_stored_under_the_render_key(demo_split, tmp_path):
    from sae_lens_maira.demo.studies import render_key

    key = render_key(112)
    assert all(key[:16] in str(s.frontal) for s in demo_split.train)
    assert render_key(112) != render_key(224) and render_key(112) != render_key(112, seed=1)


def test_errors(demo_split, tmp_path):
    with pytest.raises(ValueError, match="validation studies"):
        train_small_model(demo_split.train, [], tmp_path, config=DemoModelConfig.tiny(), log=None)
    with pytest.raises(ValueError, match="training studies"):
        train_small_model([], demo_split.held_out, tmp_path, log=None)
    with pytest.raises(ValueError, match="rendered at 112 px"):
        model_cache.ensure_demo_model(
            tmp_path, studies=demo_split, config=DemoModelConfig.tiny(image_size=224), log=None
        )
    with pytest.raises(ValueError, match="too few"):
        model_cache.split_validation(demo_split.train[:2])


@pytest.mark.slow
def test_training_repeats_bit_for_bit_with_two_threads(demo_split, tmp_path):
    """Two threads without deterministic algorithms gave weights differing by ~5e-7 here, which
    a thousand steps grow into a different model; the cached model must not depend on luck."""
    from safetensors.torch import load_file

    fit, val = model_cache.split_validation(demo_split.train)
    cfg = DemoModelConfig.tiny(lm_steps=20, threads=2)
    weights = []
    for run in range(2):
        out = train_small_model(fit, val, tmp_path / str(run), config=cfg,                                 progress=False, log=None)  # fmt: skip
        weights.append(load_file(str(out / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name


def _fake_run(rates_by_seed):
    """A stand-in for train_small_model that records a kept-step validation per seed:
    (mention rate on positives, on negatives) for every finding."""

    def train(fit, val, out, *, config, seed, **_):
        pos, neg = rates_by_seed[seed]
        mentions = {
            f: {"positives": pos, "negatives": neg, "n_positives": 4, "n_negatives": 4}
            for f in DEMO_FINDINGS
        }
        summary = {"seed": seed, "best_step": 10, "evals": [{"step": 10, "mentions": mentions}]}
        (out / "demo_training.json").write_text(json.dumps(summary))
        return out

    return train


@pytest.mark.parametrize(
    ("rates", "attempts", "kept_seed", "runs", "passed"),
    [
        ({0: (0.9, 0.0), 1: (0.1, 0.0)}, 2, 0, 1, True),   # met on the first run: no retry
        ({0: (0.1, 0.0), 1: (0.8, 0.0)}, 2, 1, 2, True),   # missed, retried, the retry met them
        ({0: (0.9, 0.3), 1: (0.6, 0.0)}, 2, 1, 2, True),   # too many negatives mention it
        ({0: (0.4, 0.0), 1: (0.1, 0.0)}, 2, 0, 2, False),  # neither met: the better kept, failed
    ],
)  # fmt: skip
def test_a_run_that_misses_a_target_is_retrained_with_the_next_seed(
    tmp_path, monkeypatch, demo_split, rates, attempts, kept_seed, runs, passed
):
    calls = []
    fake = _fake_run(rates)

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"])
        return fake(*args, **kwargs)

    monkeypatch.setattr(model_cache, "train_small_model", counting)
    config = DemoModelConfig.tiny(max_attempts=attempts)
    path = model_cache.ensure_demo_model(
        tmp_path, studies=demo_split, config=config, progress=False, log=None
    )
    assert len(calls) == runs
    assert json.loads((path / "demo_training.json").read_text())["seed"] == kept_seed
    assert model_cache.model_status(path)["passed"] is passed
    assert not list((tmp_path / "models").glob(".*.partial"))  # losers are cleaned up
    # a failed model is not retrained (same weights) and is still reported as failed
    messages = []
    again = model_cache.ensure_demo_model(
        tmp_path, studies=demo_split, config=config, progress=False, log=messages.append
    )
    assert again == path and len(calls) == runs
    assert ("FAILED its targets" in messages[0]) is not passed


def test_mark_failed_is_kept(tmp_path, monkeypatch, demo_split):
    monkeypatch.setattr(model_cache, "train_small_model", _fake_run({0: (1.0, 0.0)}))
    config = DemoModelConfig.tiny(max_attempts=1)
    path = model_cache.ensure_demo_model(tmp_path, studies=demo_split, config=config, log=None)
    assert model_cache.model_status(path) == {"passed": True, "reason": ""}
    model_cache.mark_failed(path, "held-out mention rate 0.2 < 0.5")
    assert model_cache.model_status(path) == {"passed": False,
                                              "reason": "held-out mention rate 0.2 < 0.5"}  # fmt: skip
