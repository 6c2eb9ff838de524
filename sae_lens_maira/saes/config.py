"""Configs of the ``matryoshka`` architecture (inference and training), with their validation.

Training defaults are dictionary_learning's ``MatryoshkaBatchTopKTrainer`` defaults; where the
library has none (group fractions) the common configs' split is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig
from typing_extensions import override

from sae_lens_maira.saes.groups import (
    DEFAULT_GROUP_FRACTIONS,
    group_ends,
    group_sizes_from_fractions,
    resolve_group_weights,
    validate_group_sizes,
)

ARCHITECTURE = "matryoshka"
DECODER_IMPLS = ("auto", "triton", "embedding_bag", "dense")
DecoderImplName = Literal["auto", "triton", "embedding_bag", "dense"]


def _validate_shared(cfg: Any) -> None:
    if not isinstance(cfg.k, int) or isinstance(cfg.k, bool) or cfg.k <= 0:
        raise ValueError(f"k must be a positive integer (active latents per token), got {cfg.k!r}.")
    if cfg.k > cfg.d_sae:
        raise ValueError(f"k={cfg.k} exceeds d_sae={cfg.d_sae}; choose k <= d_sae.")
    if cfg.decoder_impl not in DECODER_IMPLS:
        raise ValueError(f"decoder_impl must be one of {DECODER_IMPLS}, got {cfg.decoder_impl!r}.")


@dataclass(kw_only=True)
class MatryoshkaSAEConfig(SAEConfig):
    """Inference config of a Matryoshka BatchTopK SAE.

    Args:
        k: active latents per token during training (BatchTopK's k); kept for reference.
        group_sizes: latents per nested group; ``sum(group_sizes) == d_sae``.
        decoder_impl: sparse decoder used where the SAE decodes sparse codes.
    """

    k: int
    group_sizes: list[int]
    decoder_impl: DecoderImplName = "auto"

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_group_sizes(self.group_sizes, self.d_sae)
        self.group_sizes = [int(s) for s in self.group_sizes]
        _validate_shared(self)

    @property
    def group_ends(self) -> list[int]:
        """Width of every nested prefix; the last equals d_sae."""
        return group_ends(self.group_sizes)


@dataclass(kw_only=True)
class MatryoshkaTrainingSAEConfig(TrainingSAEConfig):
    """Training config reproducing dictionary_learning's ``MatryoshkaBatchTopKTrainer``.

    Args:
        k: BatchTopK's k: the batch keeps its ``k * batch_size`` largest activations.
        group_sizes / group_fractions: the nested groups, as sizes or as fractions of d_sae
            (dictionary_learning's rule: ``int(f * d_sae)`` per group, remainder to the last).
            Neither given: fractions ``[1/32, 1/16, 1/8, 1/4, 1/2 + 1/32]``.
        group_weights: weight of each prefix's reconstruction loss (default uniform 1/G).
        auxk_alpha: AuxK coefficient (1/32).
        top_k_aux: dead latents used by AuxK per token (default d_in // 2).
        dead_feature_threshold: tokens without firing after which a latent is dead (10M).
        threshold_beta / threshold_start_step: the inference threshold is an EMA (beta) of the
            smallest kept activation, updated on steps after ``threshold_start_step``.
        normalize_input: divide inputs by sqrt(E||x||^2) (estimated on the first batch unless
            ``norm_factor`` is given); folded back into b_enc, b_dec and threshold on save.
        b_dec_init: ``"geometric_median"`` of the first batch (dictionary_learning) or zeros.
        encoder_init_scale: ``W_enc = encoder_init_scale * W_dec^T`` at init (library: 1.0).
        decoder_impl: ``auto`` picks Triton on CUDA, embedding_bag on CPU, dense for large k.
        decoder_init_norm: decoder rows are unit norm by construction; must stay 1.0.
        k_anneal_start / k_anneal_steps: optional k annealing (not in dictionary_learning; off by
            default). BatchTopK keeps ``k_anneal_start`` per token at step 0, falling linearly to
            ``k`` at ``k_anneal_steps``. Without the early L0 squeeze, frequent parents are
            learnt as their own latents instead of as one merged "parent + child" latent per child
            (benchmarks/synthetic_quality.py). The threshold EMA waits for the final k.
    """

    k: int
    group_sizes: list[int] | None = None
    group_fractions: list[float] | None = None
    group_weights: list[float] | None = None
    decoder_impl: DecoderImplName = "auto"
    auxk_alpha: float = 1 / 32
    top_k_aux: int | None = None
    dead_feature_threshold: int = 10_000_000
    threshold_beta: float = 0.999
    threshold_start_step: int = 1000
    normalize_input: bool = False
    norm_factor: float | None = None
    b_dec_init: Literal["geometric_median", "zeros"] = "geometric_median"
    encoder_init_scale: float = 1.0
    decoder_init_norm: float | None = 1.0
    k_anneal_start: int | None = None
    k_anneal_steps: int = 0

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return MatryoshkaSAEConfig

    def __post_init__(self) -> None:
        self._resolve_groups()
        if self.top_k_aux is None:
            self.top_k_aux = self.d_in // 2
        _validate_shared(self)
        self._validate_training()
        super().__post_init__()

    def _resolve_groups(self) -> None:
        if self.group_sizes is None:
            fractions = list(
                self.group_fractions
                if self.group_fractions is not None
                else DEFAULT_GROUP_FRACTIONS
            )
            self.group_sizes = group_sizes_from_fractions(fractions, self.d_sae)
            self.group_fractions = fractions
        else:
            validate_group_sizes(self.group_sizes, self.d_sae)
            self.group_sizes = [int(s) for s in self.group_sizes]
            if self.group_fractions is not None and (
                group_sizes_from_fractions(self.group_fractions, self.d_sae) != self.group_sizes
            ):
                raise ValueError(
                    f"group_sizes {self.group_sizes} and group_fractions {self.group_fractions} "
                    "disagree; give only one of them."
                )
        self.group_weights = resolve_group_weights(self.group_weights, len(self.group_sizes))

    def _validate_training(self) -> None:
        if self.decoder_init_norm not in (1.0, None):
            raise ValueError(
                f"decoder_init_norm={self.decoder_init_norm}: Matryoshka decoder rows are kept at "
                "unit norm every step (dictionary_learning); leave decoder_init_norm at 1.0."
            )
        if self.normalize_activations not in ("none", "expected_average_only_in"):
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported for "
                "matryoshka training; use normalize_input=True (dictionary_learning's scaling) "
                "or 'expected_average_only_in'."
            )
        if self.normalize_input and self.normalize_activations != "none":
            raise ValueError(
                "normalize_input=True and normalize_activations='expected_average_only_in' both "
                "rescale the inputs; choose one."
            )
        if self.norm_factor is not None and not self.norm_factor > 0:
            raise ValueError(f"norm_factor must be positive, got {self.norm_factor}.")
        if not 0.0 <= self.threshold_beta < 1.0:
            raise ValueError(f"threshold_beta must be in [0, 1), got {self.threshold_beta}.")
        if self.auxk_alpha < 0:
            raise ValueError(f"auxk_alpha must be >= 0, got {self.auxk_alpha}.")
        if self.top_k_aux is None or self.top_k_aux <= 0:
            raise ValueError(f"top_k_aux must be positive, got {self.top_k_aux}.")
        if self.dead_feature_threshold <= 0:
            raise ValueError(
                f"dead_feature_threshold (tokens) must be positive, got {self.dead_feature_threshold}."
            )
        if not self.encoder_init_scale > 0:
            raise ValueError(f"encoder_init_scale must be positive, got {self.encoder_init_scale}.")
        self._validate_k_anneal()
        if self.b_dec_init not in ("geometric_median", "zeros"):
            raise ValueError(
                f"b_dec_init must be 'geometric_median' or 'zeros', got {self.b_dec_init!r}."
            )

    def _validate_k_anneal(self) -> None:
        steps, start = self.k_anneal_steps, self.k_anneal_start
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"k_anneal_steps must be a non-negative integer, got {steps!r}.")
        if steps > 0 and start is None:
            raise ValueError(
                f"k_anneal_steps={steps} needs k_anneal_start (k per token at step 0, >= k={self.k})."
            )
        if start is not None and (
            isinstance(start, bool)
            or not isinstance(start, int)
            or not self.k <= start <= self.d_sae
        ):
            raise ValueError(
                f"k_anneal_start must be an integer between k={self.k} and d_sae={self.d_sae}, "
                f"got {start!r}."
            )

    def k_at_step(self, step: int) -> int:
        """BatchTopK's k per token on training step ``step`` (0-based): linear k annealing."""
        if self.k_anneal_start is None or self.k_anneal_steps <= 0 or step >= self.k_anneal_steps:
            return self.k
        remaining = 1.0 - step / self.k_anneal_steps
        return self.k + round((self.k_anneal_start - self.k) * remaining)

    @property
    def threshold_update_start(self) -> int:
        """Steps after which the threshold EMA runs: after ``threshold_start_step`` and after
        k annealing ends, so the threshold estimates the cut-off of the final k."""
        return max(self.threshold_start_step, self.k_anneal_steps - 1)

    @property
    def group_ends(self) -> list[int]:
        """Width of every nested prefix; the last equals d_sae."""
        assert self.group_sizes is not None
        return group_ends(self.group_sizes)


def dictionary_learning_lr(d_sae: int) -> float:
    """dictionary_learning's default learning rate: 2e-4 / sqrt(d_sae / 2^14)."""
    return 2e-4 / (d_sae / 2**14) ** 0.5
