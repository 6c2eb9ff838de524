"""The demo reads its settings from the YAML it ships: one default per setting, typos are errors."""

from __future__ import annotations

import dataclasses

import pytest

from sae_lens_maira.demo.pipeline import default_config
from sae_lens_maira.demo_settings import DemoSettings
from sae_lens_maira.steering.settings import SteerSettings


@pytest.mark.parametrize(("section", "cls"), [("demo", DemoSettings), ("steer", SteerSettings)])
def test_code_defaults_equal_the_shipped_yaml(section, cls):
    shipped = default_config()[section]
    from_yaml = cls.from_section(shipped)
    # every setting the YAML spells out has the value the code falls back to without it
    assert from_yaml == dataclasses.replace(cls(), **{k: getattr(from_yaml, k) for k in shipped})
    assert from_yaml == cls(), [
        (f.name, getattr(from_yaml, f.name), getattr(cls(), f.name))
        for f in dataclasses.fields(cls) if getattr(from_yaml, f.name) != getattr(cls(), f.name)
    ]  # fmt: skip


def test_model_seed_has_one_default():
    assert DemoSettings().model_seed == default_config()["demo"]["model_seed"] == 1


@pytest.mark.parametrize(
    ("cls", "typo", "hint"),
    [(DemoSettings, "model_sed", "model_seed"), (SteerSettings, "coefficient", "coefficients")],
)
def test_unknown_keys_are_errors_with_the_nearest_name(cls, typo, hint):
    with pytest.raises(ValueError, match=f"unknown key '{typo}' in .*did you mean '{hint}'\\?"):
        cls.from_section({typo: 1})


def test_steer_mode_is_checked():
    with pytest.raises(ValueError, match="'clamp' or 'add'"):
        SteerSettings.from_section({"mode": "push"})


def test_the_model_s_findings_and_image_size_come_from_the_demo_settings():
    from sae_lens_maira.demo.pipeline import model_config_for
    from sae_lens_maira.demo.small_model import DemoModelConfig

    assert model_config_for(DemoSettings()) == DemoModelConfig()  # the shipped model is unchanged
    other = model_config_for(DemoSettings(findings=("devices",), image_size=224), DemoModelConfig.tiny())
    assert other == dataclasses.replace(DemoModelConfig.tiny(), findings=("devices",), image_size=224)


def test_a_run_trains_its_model_on_the_configured_findings(tmp_path, demo_wheel, monkeypatch):
    from sae_lens_maira.demo import model_cache, pipeline
    from sae_lens_maira.demo.small_model import DemoModelConfig

    class Stop(Exception):
        pass

    seen = {}

    def capture(*args, config, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(model_cache, "ensure_demo_model", capture)
    cfg = default_config()
    cfg["demo"]["findings"] = ["devices", "cardiomegaly"]
    with pytest.raises(Stop):
        pipeline.run_demo(tmp_path / "out", config=cfg, cache_dir=tmp_path / "cache", wheel=demo_wheel,
                          max_studies=16, model_config=DemoModelConfig.tiny())  # fmt: skip
    assert seen["config"].findings == ("devices", "cardiomegaly")
