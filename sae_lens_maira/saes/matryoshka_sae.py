"""Matryoshka BatchTopK SAE (dictionary_learning's recipe) as SAELens inference and training SAEs.

Inference (``MatryoshkaSAE``): ``f = relu((x - b_dec) W_enc + b_enc)``, kept where ``f > threshold``
(one global threshold), ``x_hat = f W_dec + b_dec``; the nested groups survive (``truncate``).

Training (``MatryoshkaTrainingSAE``): BatchTopK picks the batch's ``k * B`` largest activations
under ``no_grad``; only those pre-activations are recomputed with gradient (sparse encoder), and
every prefix reconstruction comes from one grouped sparse decode. ``decoder_impl`` picks the
kernels' backend (``"dense"``: matmuls, for shapes where sparse cannot win); the step is the same
code for each. See ``training_forward_pass``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import replace
from typing import Any, cast

import torch
from sae_lens.saes.sae import (
    SAE,
    SAEMetadata,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.util import filter_valid_dataclass_fields, str_to_dtype
from torch import Tensor, nn
from typing_extensions import override

from sae_lens_maira import kernels
from sae_lens_maira.compat.torch import KeepFloat32Buffers
from sae_lens_maira.kernels.layout import small_constant
from sae_lens_maira.saes.active_pairs import ActivePairs, batch_topk, dead_topk
from sae_lens_maira.saes.auxk import auxk_l2
from sae_lens_maira.saes.config import MatryoshkaSAEConfig, MatryoshkaTrainingSAEConfig
from sae_lens_maira.saes.decoder_constraint import (
    attach_projection_hook,
    constrain_decoder,
    constrain_optimizer,
    is_constrained_by_an_optimizer,
)
from sae_lens_maira.saes.encoder_bias import bias_with_decoder_shift
from sae_lens_maira.saes.geometric_median import geometric_median
from sae_lens_maira.saes.host_cache import HostCache

logger = logging.getLogger(__name__)

# Training state that inference does not need (dropped, or folded, when saving for inference).
TRAINING_ONLY_BUFFERS = ("num_tokens_since_fired", "norm_factor", "training_steps")


class _Fp32Buffers(KeepFloat32Buffers):
    """Keep scalar EMA state in float32 when the SAE moves to bf16/fp16 (as dictionary_learning)."""

    fp32_buffers = ("threshold", "norm_factor")


def _latent_major(W_enc: Tensor) -> Tensor:
    """``W_enc`` ``[d_in, d_sae]`` stored latent by latent (an ``[d_sae, d_in]`` row-major buffer).

    The training SAE keeps its encoder this way: the sparse backward writes grad ``W_enc`` one
    latent row at a time, so in this layout autograd takes it as is, where a row-major
    ``[d_in, d_sae]`` parameter costs a transposed ``N x D`` copy every step (0.7 ms and 1 GiB at
    N 65536, D 4096 fp32). The encoder GEMM reads either layout at the same speed.
    """
    return W_enc.t().contiguous().t()


def _init_extras(sae: SAE[Any], training: bool) -> None:
    """b_enc, unit-norm decoder with W_enc = W_dec^T, and the threshold (-1: not yet estimated)."""
    with torch.no_grad():
        eps = torch.finfo(sae.W_dec.dtype).eps
        sae.W_dec.data /= sae.W_dec.data.norm(dim=1, keepdim=True) + eps
        sae.W_enc.data = sae.W_dec.data.T.clone().contiguous()
    sae.b_enc = nn.Parameter(torch.zeros(sae.cfg.d_sae, dtype=sae.dtype, device=sae.device))
    sae.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32, device=sae.device))
    if training:
        cfg = sae.cfg
        with torch.no_grad():
            sae.W_enc.data *= cfg.encoder_init_scale
        nf = (
            cfg.norm_factor
            if cfg.norm_factor is not None
            else (0.0 if cfg.normalize_input else 1.0)
        )
        sae.register_buffer(
            "num_tokens_since_fired", torch.zeros(cfg.d_sae, dtype=torch.long, device=sae.device)
        )
        sae.register_buffer("norm_factor", torch.tensor(nf, dtype=torch.float32, device=sae.device))
        # completed training steps: dictionary_learning's ``step`` (exact across resumes)
        sae.register_buffer("training_steps", torch.tensor(0, dtype=torch.long, device=sae.device))


@torch.no_grad()
def _fold_input_scale(sae: SAE[Any], scaling_factor: float) -> None:
    """The SAE saw ``scaling_factor * x``: rescale biases and threshold so raw x gives f / s.

    Unlike SAELens's default fold this keeps the decoder rows at unit norm.
    """
    b_enc, b_dec, threshold = (cast(Tensor, getattr(sae, n)) for n in ("b_enc", "b_dec", "threshold"))
    b_enc.data /= scaling_factor
    b_dec.data /= scaling_factor
    if float(threshold) >= 0:
        threshold /= scaling_factor
    sae.cfg.normalize_activations = "none"


@torch.no_grad()
def _check_unit_norm_fold(sae: SAE[Any]) -> None:
    norms = sae.W_dec.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(
            "fold_W_dec_norm would rescale latents, which changes what the global threshold "
            "keeps; this SAE's decoder rows are not unit norm, so it cannot be folded safely."
        )


def _fold_training_state(state_dict: dict[str, Any]) -> None:
    """Turn a training state dict into an inference one: drop counters, fold input scaling."""
    norm_factor = state_dict.get("norm_factor")
    for name in TRAINING_ONLY_BUFFERS:
        state_dict.pop(name, None)
    if norm_factor is None:
        return
    nf = float(norm_factor)
    if nf > 0 and nf != 1.0:
        state_dict["b_enc"] = state_dict["b_enc"] * nf
        state_dict["b_dec"] = state_dict["b_dec"] * nf
        if float(state_dict["threshold"]) >= 0:
            state_dict["threshold"] = state_dict["threshold"] * nf


class MatryoshkaSAE(_Fp32Buffers, SAE[MatryoshkaSAEConfig]):
    """Inference Matryoshka BatchTopK SAE with a global activation threshold and nested groups."""

    b_enc: nn.Parameter
    threshold: Tensor

    def __init__(self, cfg: MatryoshkaSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    # the folds: the decoder is unit norm already, and an input scale folds into the biases and
    # the global threshold (shared with the training class)
    @override
    def fold_W_dec_norm(self) -> None:
        _check_unit_norm_fold(self)

    @override
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        _fold_input_scale(self, scaling_factor)

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        _init_extras(self, training=False)

    @override
    def encode(self, x: Tensor) -> Tensor:
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        acts = hidden_pre.relu()
        acts = acts * (acts > self.threshold)
        return self.hook_sae_acts_post(acts)

    @override
    def decode(self, feature_acts: Tensor) -> Tensor:
        sae_out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)
        return self.reshape_fn_out(sae_out, self.d_head)

    @property
    def n_groups(self) -> int:
        return len(self.cfg.group_sizes)

    @torch.no_grad()
    def truncate(self, n_groups: int) -> MatryoshkaSAE:
        """The nested SAE made of the first ``n_groups`` groups (same k, threshold, biases)."""
        if not 1 <= n_groups <= self.n_groups:
            raise ValueError(
                f"n_groups must be between 1 and {self.n_groups} for this SAE, got {n_groups}."
            )
        width = self.cfg.group_ends[n_groups - 1]
        metadata = copy.deepcopy(self.cfg.metadata)
        metadata.truncated_from_d_sae = self.cfg.d_sae
        cfg = replace(
            self.cfg,
            d_sae=width,
            k=min(self.cfg.k, width),
            group_sizes=list(self.cfg.group_sizes[:n_groups]),
            metadata=metadata,
        )
        state_dict = {
            "W_enc": self.W_enc[:, :width].detach().clone(),
            "b_enc": self.b_enc[:width].detach().clone(),
            "W_dec": self.W_dec[:width].detach().clone(),
            "b_dec": self.b_dec.detach().clone(),
            "threshold": self.threshold.detach().clone(),
        }
        return MatryoshkaSAE.from_state(cfg.to_dict(), state_dict)

    @classmethod
    def from_state(cls, cfg_dict: dict[str, Any], state_dict: dict[str, Tensor]) -> MatryoshkaSAE:
        """Build from a cfg dict and state dict as SAELens's loaders do (meta device, assign)."""
        cfg_dict = dict(cfg_dict)
        metadata = SAEMetadata(**(cfg_dict.pop("metadata", None) or {}))
        cfg = MatryoshkaSAEConfig(**filter_valid_dataclass_fields(cfg_dict, MatryoshkaSAEConfig))
        cfg.metadata = metadata
        device = cfg.device
        sae = cls(replace(cfg, device="meta"))
        sae.cfg.device = device
        state_dict = dict(state_dict)
        sae.process_state_dict_for_loading(state_dict)
        sae.load_state_dict(state_dict, assign=True)
        return sae.to(device=device, dtype=str_to_dtype(cfg.dtype))

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        # Training checkpoints carry counters and the input norm factor: fold and drop them.
        _fold_training_state(state_dict)
        if "threshold" in state_dict:
            state_dict["threshold"] = state_dict["threshold"].float().reshape(())


class MatryoshkaTrainingSAE(_Fp32Buffers, TrainingSAE[MatryoshkaTrainingSAEConfig]):
    """Training twin: dictionary_learning's MatryoshkaBatchTopK loss with sparse kernels.

    Training state kept in the state dict (so checkpoints resume): ``threshold`` (EMA),
    ``num_tokens_since_fired`` (dead latents are counted in tokens), ``norm_factor`` and
    ``training_steps`` (the step count the recipe's schedule uses; SAETrainer's own counter is
    one behind after a resume, so it is not relied on).
    The unit-norm decoder is enforced by :mod:`sae_lens_maira.saes.decoder_constraint`: the
    gradient projection by the SAE itself, the renormalisation by a hook on the optimiser that
    trains it (:meth:`constrain_optimizer`; ``sae-lens-maira train`` attaches it to SAETrainer's).
    """

    b_enc: nn.Parameter
    threshold: Tensor
    num_tokens_since_fired: Tensor
    norm_factor: Tensor

    def __init__(self, cfg: MatryoshkaTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._impl_logged: tuple[str, str] | None = None
        self.decoder_impl_in_use: str | None = None
        self._step_cache = HostCache()
        self._norm_cache = HostCache()  # whether norm_factor is estimated (> 0)
        # an upper bound on max(num_tokens_since_fired): below the dead threshold, nothing is dead
        self._idle_bound = HostCache()
        self._unconstrained_warned = False
        constrain_decoder(self)

    # the folds: the decoder is unit norm already, and an input scale folds into the biases and
    # the global threshold (shared with the inference class)
    @override
    def fold_W_dec_norm(self) -> None:
        _check_unit_norm_fold(self)

    @override
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        _fold_input_scale(self, scaling_factor)

    def constrain_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        """Renormalise the decoder rows after each step of ``optimizer`` (the one training this
        SAE); returns the hook's handle. Idempotent."""
        return constrain_optimizer(optimizer, self)

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        _init_extras(self, training=True)
        self.W_enc.data = _latent_major(self.W_enc.data)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}

    # ----------------------------------------------------------------------------------------
    # scaling between raw inputs and the (optionally normalised) space the SAE trains in
    def _scale_in(self, x: Tensor) -> Tensor:
        if not self.cfg.normalize_input:
            return x
        nf = self.norm_factor
        return x / torch.where(nf > 0, nf, torch.ones_like(nf)).to(x.dtype)

    def _scale_out(self, x: Tensor) -> Tensor:
        if not self.cfg.normalize_input:
            return x
        nf = self.norm_factor
        return x * torch.where(nf > 0, nf, torch.ones_like(nf)).to(x.dtype)

    @torch.no_grad()
    def _maybe_estimate_norm_factor(self, x: Tensor) -> None:
        if not self.cfg.normalize_input:
            return
        nf = self.norm_factor
        known = self._norm_cache.get(nf)
        if known is None:
            known = float(nf)  # read once, not every step (a GPU sync)
        if known <= 0:
            # dictionary_learning: norm_factor = sqrt(mean ||x||^2); the next step reads it once
            nf.fill_(x.float().pow(2).sum(dim=-1).mean().sqrt())
        else:
            self._norm_cache.remember(nf, known)

    def _step_count(self) -> int:
        """``training_steps`` as an int, read from the device only if someone else changed it
        since this SAE last wrote it (see :mod:`sae_lens_maira.saes.host_cache`)."""
        t = self.training_steps
        cached = self._step_cache.get(t)
        return int(t) if cached is None else int(cached)

    def _remember_step_count(self, value: int) -> None:
        self._step_cache.remember(self.training_steps, value)

    @property
    def current_k(self) -> int:
        """BatchTopK's k for the next training step (``k`` once any k annealing is over)."""
        return self.cfg.k_at_step(self._step_count())

    # ----------------------------------------------------------------------------------------
    # dense API (SAELens contract; TrainingSAE.encode uses BatchTopK like training)
    @override
    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sae_in = self.reshape_fn_in(x.to(self.dtype))
        sae_in = self.hook_sae_input(sae_in)
        sae_in = self._scale_in(sae_in)
        centered = sae_in - self.b_dec * self.cfg.apply_b_dec_to_input
        hidden_pre = self.hook_sae_acts_pre(centered @ self.W_enc + self.b_enc)
        post = hidden_pre.relu()
        flat = post.reshape(-1, self.cfg.d_sae)
        sel = batch_topk(flat.detach(), self.current_k)
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[sel.rows(), sel.indices] = True
        feature_acts = (flat * mask).reshape(post.shape)
        return self.hook_sae_acts_post(feature_acts), hidden_pre

    @override
    def decode(self, feature_acts: Tensor) -> Tensor:
        sae_out = self._scale_out(feature_acts @ self.W_dec + self.b_dec)
        sae_out = self.hook_sae_recons(sae_out)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)
        return self.reshape_fn_out(sae_out, self.d_head)

    @override
    def log_histograms(self) -> dict[str, Any]:
        """Weight-norm histograms for wandb, minus any that are constant.

        Decoder rows are unit norm by construction (and encoder columns start that way); wandb's
        64-bin histogram of values equal to within float rounding raises ``Too many bins``
        mid-training, so only histograms with a real spread are logged.
        """
        norms = {
            "weights/W_dec_norms": self.W_dec.detach().float().norm(dim=1),
            "weights/W_enc_norms": self.W_enc.detach().float().norm(dim=0),
        }
        out = {}
        for name, v in norms.items():
            spread = float(v.max() - v.min())
            if spread > 1e-3 * max(float(v.abs().max()), 1e-12):
                out[name] = v.cpu().numpy()
        return out

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: Tensor,
        hidden_pre: Tensor,
        sae_out: Tensor,
    ) -> dict[str, Tensor]:
        """Dense AuxK (reference form of what ``training_forward_pass`` computes sparsely)."""
        dead = self.num_tokens_since_fired >= self.cfg.dead_feature_threshold
        residual = (self._scale_in(step_input.sae_in) - self._scale_in(sae_out)).detach()
        post = hidden_pre.relu()
        sel = dead_topk(post.detach(), dead, self.cfg.top_k_aux or 0)
        if sel.nnz == 0:
            return {"auxk_loss": sae_out.new_zeros(())}
        mask = torch.zeros_like(post, dtype=torch.bool)
        mask[sel.rows(), sel.indices] = True
        aux_recon = (post * mask) @ self.W_dec
        return {"auxk_loss": self.cfg.auxk_alpha * auxk_l2(residual, aux_recon)}

    # ----------------------------------------------------------------------------------------
    # training step
    def _resolve_decoder_impl(self, device: torch.device) -> kernels.DecoderImpl:
        impl = kernels.resolve_impl(
            self.cfg.decoder_impl,
            device=device,
            n_latents=self.cfg.d_sae,
            k=self.cfg.k,
            d=self.cfg.d_in,
        )
        key = (impl, str(device))
        if self._impl_logged != key:
            logger.info(
                "matryoshka SAE: decoder_impl=%s resolved to %s on %s (d_sae=%d, k=%d, d_in=%d)",
                self.cfg.decoder_impl,
                impl,
                device,
                self.cfg.d_sae,
                self.cfg.k,
                self.cfg.d_in,
            )
            self._impl_logged = key
        self.decoder_impl_in_use = impl
        return impl

    @torch.no_grad()
    def _update_dead_counters(self, sel: ActivePairs, n_tokens: int) -> tuple[Tensor | None, int]:
        """Count tokens since each latent fired; return the dead mask (None when nothing is dead)
        and how many are dead.

        Knowing whether any latent is dead needs a host read. A host-side upper bound on the
        counters (it grows by ``n_tokens`` per step) skips that read while it stays below the
        threshold, which in a healthy run is almost always: the counters are read once when the
        bound reaches it, and the bound drops back to their real maximum.
        """
        counters = self.num_tokens_since_fired
        bound = self._idle_bound.get(counters)
        counters += n_tokens
        counters.index_fill_(0, sel.indices, 0)  # no host sync, unlike mask indexing
        threshold = self.cfg.dead_feature_threshold
        if bound is not None and int(bound) + n_tokens < threshold:
            self._idle_bound.remember(counters, int(bound) + n_tokens)
            return None, 0
        dead = counters >= threshold
        n_dead, most = (int(v) for v in torch.stack([dead.sum(), counters.max()]).tolist())
        self._idle_bound.remember(counters, most)
        return (dead if n_dead > 0 else None), n_dead

    @torch.no_grad()
    def _update_threshold(self, values: Tensor) -> None:
        inf = torch.full((), float("inf"), device=values.device)
        smallest = torch.where(values > 0, values.float(), inf).amin() if values.numel() else inf
        smallest = torch.where(torch.isinf(smallest), torch.zeros_like(smallest), smallest)
        beta = self.cfg.threshold_beta
        thr = self.threshold
        thr.copy_(torch.where(thr < 0, smallest, beta * thr + (1 - beta) * smallest))

    def _encoder_rows_and_bias(self, centered: Tensor) -> tuple[Tensor, Tensor]:
        """What the sparse encoder reads: the detached rows ``centered`` (``x - b_dec``, or ``x``)
        and ``b_enc``, through which ``b_dec`` gets the gradient the rows would have given it
        (:func:`~sae_lens_maira.saes.encoder_bias.bias_with_decoder_shift`). Gradient-carrying
        rows would cost a sparse grad x: a gather of k rows of ``W_enc^T`` per token after an
        ``N x D`` transpose copy.
        """
        if not self.cfg.apply_b_dec_to_input:
            return centered.detach(), self.b_enc
        return centered.detach(), bias_with_decoder_shift(self.b_enc, self.b_dec, self.W_enc)

    def _encode_selected(
        self,
        impl: kernels.DecoderImpl,
        rows_and_bias: tuple[Tensor, Tensor],
        acts: Tensor,
        sel: ActivePairs,
    ) -> Tensor:
        """Activations (with gradient) at the selected (row, latent) pairs only.

        The values are read from ``acts``, the batch's pre-activations already computed (without
        gradient) to select; a sparse backward then touches only the selected latents.
        """
        rows, bias = rows_and_bias
        pre = kernels.sparse_encode_csr(
            rows,
            self.W_enc,
            bias,
            sel.row_ptr,
            sel.indices,
            impl=impl,
            validate=False,
            hidden_pre=acts,
        )
        return pre.relu()

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """One dictionary_learning MatryoshkaBatchTopK loss evaluation (plus state updates).

        Order as ``MatryoshkaBatchTopKTrainer.loss``: b_dec <- geometric median on step 0;
        BatchTopK (k from ``cfg.k_at_step``); threshold EMA on steps > threshold_start_step
        (and past any k annealing); prefix losses
        ``mean_i(w_i * mean_b ||x - xhat_i||^2)``; dead-token counters; AuxK.
        """
        attach_projection_hook(self)
        step = self._step_count()
        if step >= 1 and not getattr(self, "_unconstrained_warned", False) and not is_constrained_by_an_optimizer(self):
            self._unconstrained_warned = True
            logger.warning(
                "MatryoshkaTrainingSAE trains without a decoder renormalisation: no optimiser "
                "keeps W_dec rows at unit norm; call sae.constrain_optimizer(optimizer) "
                "(SAETrainer: sae.constrain_optimizer(trainer.optimizer)) before training"
            )
        self.training_steps += 1
        self._remember_step_count(step + 1)
        x = self.hook_sae_input(step_input.sae_in.to(self.dtype))
        self._maybe_estimate_norm_factor(x)
        x = self._scale_in(x)
        if step == 0 and self.cfg.b_dec_init == "geometric_median":
            with torch.no_grad():
                self.b_dec.data.copy_(geometric_median(x).to(self.b_dec.dtype))

        impl = self._resolve_decoder_impl(x.device)
        batch = x.shape[0]
        centered = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
        # addmm fuses the bias into the GEMM and, under autocast, keeps the [B, N] activations
        # in bf16 (``matmul + b_enc`` would promote them to an fp32 copy twice the size)
        with torch.no_grad():
            acts = torch.addmm(self.b_enc, centered, self.W_enc).relu_()
        k = self.cfg.k_at_step(step)
        sel = batch_topk(acts, k)
        dead, n_dead = self._update_dead_counters(sel, batch)
        aux_sel = dead_topk(acts, dead, self.cfg.top_k_aux or 0) if dead is not None else None
        if aux_sel is not None and aux_sel.nnz == 0:
            aux_sel = None

        # Under autocast the sparse ops gather from bf16 copies of the tables (half the traffic)
        # and write fp32 weight gradients directly; the dense backend's matmuls run in bf16.
        enc_in = self._encoder_rows_and_bias(centered)
        values = self._encode_selected(impl, enc_in, acts, sel)
        aux_values = (
            self._encode_selected(impl, enc_in, acts, aux_sel) if aux_sel is not None else None
        )
        del acts, enc_in
        if step > self.cfg.threshold_update_start:
            self._update_threshold(values.detach())
        W_dec = self.W_dec
        partials = kernels.grouped_sparse_decode_csr(
            sel.row_ptr,
            sel.indices,
            values,
            W_dec,
            self.cfg.group_ends,
            impl=impl,
            validate=False,
        )
        target = x - self.b_dec
        weights = small_constant(tuple(self.cfg.group_weights or ()), torch.float32, x.device)
        prefix_losses, residual = kernels.matryoshka_prefix_mse(
            partials, target, return_residual=True, impl=impl
        )
        prefix_losses = prefix_losses * weights
        mse_loss = prefix_losses.mean()

        if aux_sel is not None and aux_values is not None:
            aux_recon = kernels.sparse_decode_csr(
                aux_sel.row_ptr,
                aux_sel.indices,
                aux_values,
                W_dec,
                impl=impl,
                validate=False,
            )
            auxk_loss = self.cfg.auxk_alpha * auxk_l2(residual, aux_recon)
        else:
            auxk_loss = mse_loss.new_zeros(())

        with torch.no_grad():
            sae_out = self._scale_out(x - residual.to(x.dtype)).to(step_input.sae_in.dtype)
            feature_acts = self._sparse_batch_tensor(sel, values.detach(), batch)
        metrics: dict[str, Any] = {
            "topk_threshold": self.threshold.detach().clone(),
            "dead_latents": n_dead,
            "k": k,
        }
        for end, loss_i in zip(self.cfg.group_ends, prefix_losses.detach(), strict=True):
            metrics[f"prefix_l2_{end}"] = loss_i
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=feature_acts,
            loss=mse_loss + auxk_loss,
            losses={"mse_loss": mse_loss, "auxk_loss": auxk_loss},
            metrics=metrics,
        )

    def _sparse_batch_tensor(self, sel: ActivePairs, values: Tensor, batch: int) -> Tensor:
        """[B, d_sae] torch sparse COO view of the batch's codes (what SAETrainer consumes)."""
        coords = torch.stack([sel.rows(), sel.indices])
        return torch.sparse_coo_tensor(
            coords,
            values,
            (batch, self.cfg.d_sae),
            is_coalesced=True,
            check_invariants=False,
        )

    # ----------------------------------------------------------------------------------------
    # saving / loading / folding
    @override
    def process_state_dict_for_saving(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving(state_dict)
        state_dict["W_enc"] = state_dict["W_enc"].contiguous()  # safetensors stores row-major

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        if float(state_dict["threshold"]) < 0:
            warnings.warn(
                "Saving a matryoshka SAE whose activation threshold was never estimated "
                f"(training stopped at or before step {self.cfg.threshold_update_start}: "
                "threshold_start_step or the end of k annealing); inference will keep every positive "
                "activation.",
                UserWarning,
                stacklevel=2,
            )
        _fold_training_state(state_dict)

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        # An inference save loaded for further training: start the counters afresh.
        device = state_dict["W_dec"].device
        state_dict.setdefault(
            "num_tokens_since_fired", torch.zeros(self.cfg.d_sae, dtype=torch.long, device=device)
        )
        state_dict.setdefault("norm_factor", torch.tensor(1.0, device=device))
        # a trained SAE: keep its b_dec and keep updating its threshold
        state_dict.setdefault(
            "training_steps",
            torch.tensor(self.cfg.threshold_update_start + 1, dtype=torch.long, device=device),
        )
        for name in _Fp32Buffers.fp32_buffers:
            state_dict[name] = state_dict[name].float().reshape(())
        # SAELens loaders assign the loaded tensors as parameters
        state_dict["W_enc"] = _latent_major(state_dict["W_enc"])

    def to_inference_sae(self) -> MatryoshkaSAE:
        """The inference SAE this training SAE would save as (input scaling folded in)."""
        state_dict = {k: v.detach().clone() for k, v in self.state_dict().items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.process_state_dict_for_saving_inference(state_dict)
        return MatryoshkaSAE.from_state(self.cfg.get_inference_sae_cfg_dict(), state_dict)
