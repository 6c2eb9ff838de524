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


def test_a_split_on_a_manifest_is_refused_not_ignored(tmp_path):
    # the README's `dashboards collect --set data.split=test` on a manifest read every study
    (tmp_path / "studies.jsonl").write_text('{"study_id": "s0", "frontal": "f.png"}\n')
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"data": {"source": "manifest",
                                                                "path": "studies.jsonl"}}))  # fmt: skip
    exp = Experiment.from_yaml(tmp_path / "exp.yaml", {"data.split": "test"})
    with pytest.raises(ValueError, match="a manifest has no splits: point data.path"):
        exp.load_studies()


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("cache.batch_size", "four", "cache.batch_size must be int, not 'four'"),
        ("train.training_tokens", "lots", "train.training_tokens must be int or null, not 'lots'"),
        ("train.wandb", 1, "train.wandb must be bool, not 1"),
        ("dashboards.limit", [3], r"dashboards.limit must be int or null, not \[3\]"),
    ],
)
def test_a_wrongly_typed_value_is_a_clear_error(tmp_path, dotted, value, message):
    # was: TypeError deep in the code ("'<' not supported between 'str' and 'int'")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"cache": {"hook_name": "h", "output_dir": "a"}}))
    with pytest.raises(ValueError, match=message):
        Experiment.from_yaml(tmp_path / "exp.yaml", {dotted: value})


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path):
    # PyYAML reads `lr: 1e-3` and `training_tokens: 5e8` as strings (YAML 1.1 wants a dot)
    (tmp_path / "exp.yaml").write_text("train: {lr: 1e-3, training_tokens: 5e8, lr_end: 1}\n")
    train = Experiment.from_yaml(tmp_path / "exp.yaml").typed("train")
    assert (train.lr, train.training_tokens, train.lr_end) == (0.001, 500_000_000, 1.0)
    assert type(train.training_tokens) is int and type(train.lr_end) is float
