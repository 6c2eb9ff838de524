"""Config defaults (dictionary_learning's), group resolution, validation errors, round trips."""

from __future__ import annotations

import pytest
from sae_lens import LanguageModelSAERunnerConfig
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

import sae_lens_maira  # noqa: F401
from sae_lens_maira.saes import (
    MatryoshkaSAEConfig,
    MatryoshkaTrainingSAE,
    MatryoshkaTrainingSAEConfig,
    dictionary_learning_lr,
)
from sae_lens_maira.saes.groups import group_sizes_from_fractions


def test_defaults_are_dictionary_learnings() -> None:
    cfg = MatryoshkaTrainingSAEConfig(d_in=4096, d_sae=16384, k=64)
    assert cfg.group_sizes == [512, 1024, 2048, 4096, 8704]
    assert cfg.group_weights == [0.2] * 5
    assert cfg.auxk_alpha == 1 / 32
    assert cfg.top_k_aux == 2048
    assert cfg.dead_feature_threshold == 10_000_000
    assert cfg.threshold_beta == 0.999 and cfg.threshold_start_step == 1000
    assert cfg.b_dec_init == "geometric_median" and cfg.normalize_input is False
    assert cfg.decoder_init_norm == 1.0 and cfg.decoder_impl == "auto"
    assert cfg.encoder_init_scale == 1.0
    assert cfg.k_anneal_start is None and cfg.k_at_step(0) == 64  # no k annealing
    assert dictionary_learning_lr(16384) == pytest.approx(2e-4)
    assert dictionary_learning_lr(65536) == pytest.approx(1e-4)


def test_fractions_follow_the_librarys_rounding() -> None:
    assert group_sizes_from_fractions([0.3, 0.3, 0.4], 10) == [3, 3, 4]
    assert group_sizes_from_fractions([1 / 3, 1 / 3, 1 / 3], 100) == [33, 33, 34]
    cfg = MatryoshkaTrainingSAEConfig(d_in=8, d_sae=100, k=2, group_fractions=[0.25, 0.75])
    assert cfg.group_sizes == [25, 75] and cfg.group_ends == [25, 100]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(group_fractions=[0.5, 0.4]), "must sum to 1.0"),
        (dict(group_sizes=[10, 20]), "sum to 30 but d_sae is 64"),
        (dict(group_sizes=[32, 32], group_fractions=[0.25, 0.75]), "disagree"),
        (dict(group_sizes=[0, 64]), "positive integers"),
        (dict(group_weights=[1.0]), "one weight per group"),
        (dict(k=0), "positive integer"),
        (dict(k=65), "exceeds d_sae"),
        (dict(decoder_impl="cuda"), "decoder_impl must be one of"),
        (dict(decoder_init_norm=0.1), "unit norm"),
        (dict(normalize_activations="layer_norm"), "not supported for matryoshka"),
        (
            dict(normalize_input=True, normalize_activations="expected_average_only_in"),
            "choose one",
        ),
        (dict(threshold_beta=1.0), "threshold_beta"),
        (dict(norm_factor=0.0), "norm_factor must be positive"),
        (dict(encoder_init_scale=0.0), "encoder_init_scale must be positive"),
        (dict(k=4, k_anneal_steps=10), "needs k_anneal_start"),
        (dict(k=4, k_anneal_start=2, k_anneal_steps=10), "between k=4 and d_sae=64"),
        (dict(k=4, k_anneal_start=65, k_anneal_steps=10), "between k=4 and d_sae=64"),
        (dict(k=4, k_anneal_start=8, k_anneal_steps=-1), "non-negative integer"),
    ],
)
def test_bad_configs_name_the_problem(kwargs: dict, message: str) -> None:
    base: dict = dict(d_in=8, d_sae=64, k=4)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MatryoshkaTrainingSAEConfig(**base)


def test_inference_config_validates_groups() -> None:
    with pytest.raises(ValueError, match="must add up to d_sae"):
        MatryoshkaSAEConfig(d_in=8, d_sae=64, k=4, group_sizes=[8, 8])


def test_training_config_round_trips_and_derives_the_inference_config() -> None:
    cfg = MatryoshkaTrainingSAEConfig(
        d_in=8, d_sae=64, k=4, group_fractions=[0.25, 0.75], group_weights=[0.7, 0.3]
    )
    again = TrainingSAEConfig.from_dict(cfg.to_dict())
    assert isinstance(again, MatryoshkaTrainingSAEConfig)
    assert again.to_dict() == cfg.to_dict()
    inference = cfg.get_inference_sae_cfg_dict()
    assert inference["architecture"] == "matryoshka"
    assert inference["group_sizes"] == [16, 48] and inference["k"] == 4
    assert "group_weights" not in inference and "auxk_alpha" not in inference
    details = inference["metadata"]["training_architecture_details"]
    assert details["group_weights"] == [0.7, 0.3]


def test_language_model_runner_config_accepts_the_training_config() -> None:
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=MatryoshkaTrainingSAEConfig(d_in=16, d_sae=64, k=4, group_sizes=[16, 48]),
        model_name="tiny",
        hook_name="blocks.0.hook_resid_post",
        dataset_path="unused",
        device="cpu",
    )
    again = LanguageModelSAERunnerConfig.from_dict(runner_cfg.to_dict())
    assert isinstance(again.sae, MatryoshkaTrainingSAEConfig)
    sae = TrainingSAE.from_dict(
        TrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict()).to_dict()
    )
    assert isinstance(sae, MatryoshkaTrainingSAE)
    assert sae.cfg.group_sizes == [16, 48]


def test_k_annealing_schedule_falls_linearly_to_k() -> None:
    cfg = MatryoshkaTrainingSAEConfig(
        d_in=8, d_sae=64, k=4, k_anneal_start=12, k_anneal_steps=4, threshold_start_step=1
    )
    assert [cfg.k_at_step(t) for t in range(7)] == [12, 10, 8, 6, 4, 4, 4]
    # the threshold EMA waits for the final k (updates on steps > 3, i.e. from step 4)
    assert cfg.threshold_update_start == 3
    late = MatryoshkaTrainingSAEConfig(
        d_in=8, d_sae=64, k=4, k_anneal_start=12, k_anneal_steps=4, threshold_start_step=10
    )
    assert late.threshold_update_start == 10
    # annealing does not reach the inference config
    inference = late.get_inference_sae_cfg_dict()
    assert "k_anneal_start" not in inference and inference["k"] == 4
