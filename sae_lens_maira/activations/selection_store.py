"""SAELens's ActivationsStore and evals on the SAE's positions (the token selection) only.

Token rows from :func:`~sae_lens_maira.activations.saelens_bridge.studies_to_token_dataset` with
a ``selection`` carry a mark on every position outside it (:mod:`sae_lens_maira.model.position_marks`).
:class:`SelectionActivationsStore` trains on the unmarked positions only, and
:func:`run_selection_evals` runs SAELens's own ``run_evals`` with the marked positions ignored, so
EV, L0, dead latents, CE and KL describe the positions the SAE is trained on, as the activation
cache (``cache.selection``) holds them, and the report says which positions those were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from sae_lens import ActivationsStore
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.llm_sae_training_runner import LLMSaeEvaluator
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.prefetch import PrefetchingIterator

from sae_lens_maira.activations.selection import policy_label, resolve_policy
from sae_lens_maira.compat.sae_lens import restart_tokenized_sequences
from sae_lens_maira.model.position_marks import OUTSIDE_SELECTION, is_marked


class SelectionActivationsStore(ActivationsStore):
    """An ActivationsStore that serves only the unmarked (selected) positions.

    - Training batches drop marked positions and ``exclude_special_tokens``.
    - ``reset_input_dataset`` restarts the token rows too (stock SAELens resets only the raw row
      iterator, so two evals would read different rows): every eval reads the same rows.
    - ``positions_served`` lists, per token batch handed out, how many selected positions it held.
    """

    selection: str | list[str] | None = None

    def __init__(self, *args: Any, selection: str | list[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.selection = selection
        self.positions_served: list[int] = []

    def keep_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """The positions of ``tokens`` this store serves: unmarked and not an excluded id."""
        keep = ~is_marked(tokens)
        if self.exclude_special_tokens is not None:
            keep &= ~torch.isin(tokens, self.exclude_special_tokens.to(tokens.device))
        return keep

    def get_batch_tokens(
        self,
        batch_size: int | None = None,
        raise_at_epoch_end: bool = False,
        move_to_model_device: bool = True,
    ) -> torch.Tensor:
        tokens = super().get_batch_tokens(batch_size, raise_at_epoch_end, move_to_model_device)
        self.positions_served.append(int(self.keep_mask(tokens).sum()))
        return tokens

    def get_filtered_llm_batch(self, raise_on_epoch_end: bool = False) -> torch.Tensor:
        acts, tokens = self.get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)
        if tokens is None:  # cached activations: the cache already holds the selection only
            return acts
        return acts[self.keep_mask(tokens).to(acts.device)]

    def reset_input_dataset(self) -> None:
        super().reset_input_dataset()
        restart_tokenized_sequences(self)

    def ignore_tokens(self) -> list[Any]:
        """SAELens's ``exclude_special_tokens`` list for evals: the excluded ids and every mark."""
        ids = [] if self.exclude_special_tokens is None else self.exclude_special_tokens.tolist()
        return [*ids, OUTSIDE_SELECTION]

    def describe_selection(self) -> dict[str, Any]:
        """The selection as reports name it: policy and roles (``None``: every unmarked position)."""
        if self.selection is None:
            return {"selection": None, "roles": None}
        return {
            "selection": policy_label(self.selection),
            "roles": sorted(r.name.lower() for r in resolve_policy(self.selection)),
        }


def run_selection_evals(
    sae: Any,
    store: SelectionActivationsStore,
    model: Any,
    eval_config: EvalConfig,
    activation_scaler: ActivationScaler | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """SAELens's ``run_evals`` on the store's selected positions; returns (metrics,
    feature_metrics, positions), ``positions`` naming the selection and counting the positions
    the reconstruction (CE/KL) and sparsity/variance (EV, L0, density) metrics were taken over."""
    store.reset_input_dataset()
    store.positions_served = []
    metrics, feature_metrics = run_evals(
        sae=sae,
        activation_store=store,
        model=model,
        activation_scaler=activation_scaler or ActivationScaler(),
        eval_config=eval_config,
        model_kwargs=dict(model_kwargs or {}),
        exclude_special_tokens=store.ignore_tokens(),
    )
    served = store.positions_served
    n_recons = (
        eval_config.n_eval_reconstruction_batches
        if eval_config.compute_ce_loss or eval_config.compute_kl
        else 0
    )
    positions = {
        **store.describe_selection(),
        "reconstruction_positions": sum(served[:n_recons]),
        "sparsity_variance_positions": sum(served[n_recons:]),
    }
    return metrics, feature_metrics, positions


class SelectionEvaluator(LLMSaeEvaluator):
    """SAELens's training-time evaluator, measuring on the store's selected positions."""

    activations_store: SelectionActivationsStore

    def __call__(
        self, sae: Any, data_provider: Any, activation_scaler: ActivationScaler
    ) -> dict[str, Any]:
        eval_config = EvalConfig(
            batch_size_prompts=self.eval_batch_size_prompts,
            n_eval_reconstruction_batches=self.n_eval_batches,
            n_eval_sparsity_variance_batches=self.n_eval_batches,
            compute_ce_loss=True,
            compute_l2_norms=True,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
        )
        pause: AbstractContextManager[None] = (
            data_provider.paused()
            if isinstance(data_provider, PrefetchingIterator)
            else nullcontext()
        )
        with pause:
            metrics, _, positions = run_selection_evals(
                sae,
                self.activations_store,
                self.model,
                eval_config,
                activation_scaler,
                self.model_kwargs,
            )
        metrics["positions"] = {
            "reconstruction_positions": positions["reconstruction_positions"],
            "sparsity_variance_positions": positions["sparsity_variance_positions"],
        }
        return metrics


def flat_metrics(
    metrics: Mapping[str, Any], groups: Iterable[str] | None = None
) -> dict[str, float]:
    """``group/name`` -> value for the numeric entries of run_evals's nested metrics."""
    return {
        f"{group}/{k}": float(v)
        for group, values in metrics.items()
        if isinstance(values, dict) and (groups is None or group in groups)
        for k, v in values.items()
        if isinstance(v, (int, float))
    }
