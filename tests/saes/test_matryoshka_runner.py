"""End to end with SAELens's LanguageModelSAETrainingRunner and HookedSAETransformer."""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
from sae_lens import (
    SAE,
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
)
from transformer_lens import HookedTransformerConfig

import sae_lens_maira  # noqa: F401
from sae_lens_maira.saes import MatryoshkaSAE, MatryoshkaTrainingSAE, MatryoshkaTrainingSAEConfig


def tiny_model() -> HookedSAETransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=50, act_fn="relu", d_mlp=32
    )
    return HookedSAETransformer(cfg)


def test_runner_trains_saves_and_the_sae_splices_into_the_model(tmp_path: Path) -> None:
    model = tiny_model()
    tokens = torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(1))
    cfg = LanguageModelSAERunnerConfig(
        sae=MatryoshkaTrainingSAEConfig(
            d_in=16, d_sae=64, k=4, group_sizes=[8, 24, 32], threshold_start_step=2
        ),
        model_name="tiny",
        hook_name="blocks.0.hook_resid_post",
        dataset_path="unused",
        is_dataset_tokenized=True,
        context_size=16,
        training_tokens=64 * 12,
        train_batch_size_tokens=64,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        prepend_bos=False,
        device="cpu",
        act_store_device="cpu",
        lr=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(tmp_path / "out"),
        checkpoint_path=str(tmp_path / "checkpoints"),
    )
    runner = LanguageModelSAETrainingRunner(
        cfg,
        override_dataset=datasets.Dataset.from_dict({"input_ids": tokens.tolist()}),
        override_model=model,
    )
    trained = runner.run()
    assert isinstance(trained, MatryoshkaTrainingSAE)
    assert int(trained.training_steps) == 12 and float(trained.threshold) > 0

    sae = SAE.load_from_disk(tmp_path / "out")
    assert isinstance(sae, MatryoshkaSAE)
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert sae.cfg.group_sizes == [8, 24, 32]

    batch = tokens[:2]
    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post")
    resid = cache["blocks.0.hook_resid_post"]
    with torch.no_grad():
        expected = sae(resid)
        _, sae_cache = model.run_with_cache_with_saes(batch, saes=[sae])
    spliced = sae_cache["blocks.0.hook_resid_post.hook_sae_output"]
    torch.testing.assert_close(spliced, expected, rtol=1e-5, atol=1e-5)
    acts = sae_cache["blocks.0.hook_resid_post.hook_sae_acts_post"]
    assert acts.shape == (2, 16, 64) and bool((acts > 0).any())
