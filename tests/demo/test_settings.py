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
