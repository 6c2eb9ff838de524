"""The shipped configs parse into the objects the commands build from them."""

from importlib import resources

import pytest
import yaml

import sae_lens_maira  # noqa: F401  (registers the matryoshka architecture)
from sae_lens_maira.activations.cache import CacheConfig
from sae_lens_maira.training.commands import training_sae_config

CONFIGS = sorted(
    p.name for p in resources.files("sae_lens_maira.configs").iterdir() if p.name.endswith(".yaml")
)


def test_the_study_setups_and_the_small_default_ship():
    assert {
        "maira2_layer15_ef2.yaml",
        "maira2_layer15_ef4.yaml",
        "maira2_layer15_ef8.yaml",
        "small_default.yaml",
    } <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    raw = yaml.safe_load(resources.files("sae_lens_maira.configs").joinpath(name).read_text())
    cache = CacheConfig(**{**raw["cache"], "output_dir": "x"})
    d_in = 4096 if name.startswith("maira2") else 256
    sae_cfg = training_sae_config(raw["sae"], d_in, cache.hook_name)
    assert sae_cfg.architecture() == "matryoshka" and sae_cfg.d_in == d_in
    if name.startswith("maira2_layer15_ef"):
        ef = int(name.split("ef")[1].split(".")[0])
        assert cache.hook_name == "blocks.15.hook_resid_post" and cache.selection == "study"
        assert sae_cfg.d_sae == 4096 * ef
        assert (
            sae_cfg.group_sizes[0] == 4096 * ef // 32 and sum(sae_cfg.group_sizes) == sae_cfg.d_sae
        )
        assert raw["train"]["lr"] == pytest.approx(2e-4 / (4096 * ef / 2**14) ** 0.5, rel=1e-4)
