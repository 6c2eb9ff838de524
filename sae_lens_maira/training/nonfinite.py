"""Stop SAE training at the first NaN/inf activation batch or loss, naming the step and source.

One bad batch turns every SAE weight into NaN within a step, after which SAELens trains on and
saves a NaN SAE with exit status 0. The guard wraps the SAE's ``training_forward_pass`` (it sees
the step number and the batch) and records, on the device, the first step whose input or loss
is not finite. On CPU it checks every step; on CUDA every ``check_every`` steps (a check is a
host sync), and always before a checkpoint is marked complete and before the final SAE is
saved, so no NaN weights are ever written as a result. With ``skip_bad_batches`` the activation
stream drops non-finite batches instead (a sync per batch) and counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Training met a NaN or inf activation batch or loss."""


class NonFiniteGuard:
    def __init__(
        self, source: str, *, check_every: int = 1, skip_bad_batches: bool = False
    ) -> None:
        self.source = source
        self.check_every = max(1, int(check_every))
        self.skip_bad_batches = skip_bad_batches
        self.skipped_batches = 0
        self._first_bad: dict[str, torch.Tensor] = {}

    def _record(self, kind: str, ok: torch.Tensor, step: int) -> None:
        first = self._first_bad.get(kind)
        if first is None:
            first = self._first_bad[kind] = torch.full((), -1, dtype=torch.long, device=ok.device)
        first.copy_(torch.where(ok | (first >= 0), first, torch.full_like(first, step)))

    def check(self) -> None:
        """Raise if any recorded step had a non-finite input or loss (one host read per kind)."""
        for kind, what in (("input", "activation batch"), ("loss", "loss")):
            first = self._first_bad.get(kind)
            if first is not None and int(first) >= 0:
                hint = (
                    "the activations themselves are broken: rebuild the cache (cache.storage_dtype: float32) "
                    "or check the model and its inputs, or set train.skip_bad_batches: true to drop such batches"
                    if kind == "input"
                    else "the training diverged: lower train.lr or check the activations' scale"
                )
                raise NonFiniteTrainingError(
                    f"training step {int(first)}: the {what} contains NaN or inf (batch from {self.source}); "
                    f"stopped before saving a broken SAE; {hint}"
                )

    def install(self, runner: Any) -> None:
        """Wrap the runner's SAE forward, checkpoint save, final save and activation stream."""
        sae = runner.sae
        forward = sae.training_forward_pass

        def guarded_forward(step_input: Any) -> Any:
            step = int(step_input.n_training_steps)
            self._record("input", torch.isfinite(step_input.sae_in).all(), step)
            out = forward(step_input)
            self._record("loss", torch.isfinite(out.loss.detach()).all(), step)
            if step % self.check_every == 0:
                self.check()
            return out

        sae.training_forward_pass = guarded_forward
        from sae_lens_maira.compat.sae_lens import filter_training_batches, wrap_runner_method

        def check_first(original: Any) -> Any:
            def checked(*args: Any, **kwargs: Any) -> Any:
                self.check()
                return original(*args, **kwargs)

            return checked

        for name in ("save_checkpoint", "save_final_sae"):
            wrap_runner_method(runner, name, check_first)
        if self.skip_bad_batches:
            filter_training_batches(runner, self._finite_batches)

    def _finite_batches(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for batch in batches:
            if bool(torch.isfinite(batch).all()):
                yield batch
            else:
                self.skipped_batches += 1
                logger.warning(
                    "skipping a training batch with NaN or inf activations (%d so far, from %s)",
                    self.skipped_batches,
                    self.source,
                )
