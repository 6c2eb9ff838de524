"""Typed config sections: unknown keys fail with the nearest valid key; one default per key."""

from dataclasses import fields
from importlib import resources

import pytest
import yaml

from sae_lens_maira.experiment import SECTION_TYPES, Experiment, TrainSection
from sae_lens_maira.steering.settings import SteerSettings
from sae_lens_maira.training.commands import RUNNER_KEYS

CONFIGS = sorted(
    p.name for p in resources.files("sae_lens_maira.configs").iterdir() if p.name.endswith(".yaml")
)


def _write(tmp_path, raw):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name, tmp_path):
    raw = yaml.safe_load(resources.files("sae_lens_maira.configs").joinpath(name).read_text())
    exp = Experiment.from_yaml(_write(tmp_path, raw))
    assert exp.typed("train").training_tokens == raw["train"]["training_tokens"]


@pytest.mark.parametrize(
    ("section", "key", "suggestion"),
    [("train", "training_token", "training_tokens"), ("cache", "hook", "hook_name"),
     ("sae", "expansion_factr", "expansion_factor"), ("model", "dtyp", "dtype"),
     ("data", "on_mising", "on_missing"), ("steer", "coefficient", "coefficients")],
)  # fmt: skip
def test_an_unknown_key_names_the_nearest_valid_one(tmp_path, section, key, suggestion):
    raw = yaml.safe_load(resources.files("sae_lens_maira.configs").joinpath("small_default.yaml").read_text())
    raw[section][key] = 1
    with pytest.raises(ValueError, match=rf"unknown key '{key}' in {section}.*did you mean '{suggestion}'"):
        Experiment.from_yaml(_write(tmp_path, raw))


def test_unknown_section_and_architecture(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'trian'.*did you mean 'train'"):
        Experiment.from_yaml(_write(tmp_path, {"trian": {}}))
    with pytest.raises(ValueError, match="did you mean 'matryoshka'"):
        Experiment.from_yaml(_write(tmp_path, {"sae": {"architecture": "matryoshk"}}))
    with pytest.raises(ValueError, match="--set overrides are checked too|unknown key 'lrr'"):
        Experiment.from_yaml(_write(tmp_path, {"train": {}}), overrides={"train.lrr": 1})


def test_one_default_per_key(tmp_path):
    """Absent keys take the dataclass default; the steer defaults are the shipped YAML's."""
    assert set(RUNNER_KEYS) <= {f.name for f in fields(TrainSection)}
    exp = Experiment.from_yaml(_write(tmp_path, {"train": {}, "steer": {}}))
    assert exp.section("steer") == {f.name: getattr(SteerSettings(), f.name) for f in fields(SteerSettings)}
    assert exp.section("train")["wandb"] is False
    small = yaml.safe_load(resources.files("sae_lens_maira.configs").joinpath("small_default.yaml").read_text())
    for key, value in small["steer"].items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(SteerSettings(), key) == expected, key
    assert set(SECTION_TYPES) >= {"model", "data", "train", "dashboards", "steer", "demo"}
