"""MAIRA-2's configuration and the checkpoint folder it is read from (or a preset).

The one home of config reading and checkpoint resolution: ``model/`` (building and loading the
model) and ``processing/`` (the processor's patch size, context and image size) both call
:func:`resolve_checkpoint` and :func:`read_config`, and this module imports neither of them.

One object carries every shape (as ``HookedTransformerConfig`` does for TransformerLens) and knows
how to produce the three configs the model is built from: the RAD-DINO ``Dinov2Config``, the
language model's ``HookedTransformerConfig`` and the projector's sizes. ``to_hf_dict`` writes the
hub's ``config.json`` layout back, so checkpoints this package saves load anywhere MAIRA-2 does.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformer_lens import HookedTransformerConfig
from transformers import Dinov2Config

DEFAULT_IMAGE_TOKEN_ID = 32204
#: The checkpoint folder file that holds the config (the hub's layout).
CONFIG_NAME = "config.json"

_MAIRA2_VISION: dict[str, Any] = {
    "model_type": "dinov2",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "num_channels": 3,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "hidden_act": "gelu",
    "use_swiglu_ffn": False,
    "qkv_bias": True,
    "out_features": ["stage12"],
    "apply_layernorm": True,
    "reshape_hidden_states": False,
}
_MAIRA2_TEXT: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "rope_scaling": {"type": "linear", "factor": 1.5},
    "rope_theta": 10000.0,
    "vocab_size": 32207,
    "tie_word_embeddings": False,
    "attention_bias": False,
}


@dataclass
class Maira2Config:
    """Everything that fixes MAIRA-2's shapes. Field names follow the hub's config.json."""

    vision_config: dict[str, Any]
    text_config: dict[str, Any]
    projector_n_layers: int = 4
    projector_hidden_act: str = "gelu"
    image_token_id: int = DEFAULT_IMAGE_TOKEN_ID
    vision_feature_layer: int = -1
    vision_feature_select_strategy: str = "default"
    model_name: str = "maira-2"
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- presets --------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Maira2Config:
        """``"maira-2"`` (the real shapes) or ``"small"`` (runs in seconds on a CPU).

        ``overrides`` may set top-level fields or nested ones as ``text_<key>``/``vision_<key>``
        (e.g. ``text_vocab_size=2207``).
        """
        key = name.lower().replace("_", "-")
        if key in ("maira-2", "maira2", "microsoft/maira-2"):
            cfg = cls(copy.deepcopy(_MAIRA2_VISION), copy.deepcopy(_MAIRA2_TEXT))
        elif key in ("small", "default", "maira-2-small"):
            cfg = cls(
                {
                    **_MAIRA2_VISION,
                    "hidden_size": 96,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "image_size": 224,
                    "out_features": ["stage2"],
                },
                {
                    **_MAIRA2_TEXT,
                    "hidden_size": 256,
                    "num_hidden_layers": 4,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 4,
                    "intermediate_size": 688,
                    "max_position_embeddings": 1024,
                    "rope_scaling": None,
                    "vocab_size": 2207,
                },
                image_token_id=2204,
                model_name="maira-2-small",
            )
        else:
            raise ValueError(f"unknown preset {name!r}; choose 'maira-2' or 'small'")
        return cfg.replace(**overrides)

    def replace(self, **overrides: Any) -> Maira2Config:
        cfg = copy.deepcopy(self)
        for k, v in overrides.items():
            if k.startswith("text_"):
                cfg.text_config[k[5:]] = v
            elif k.startswith("vision_"):
                cfg.vision_config[k[7:]] = v
            elif hasattr(cfg, k):
                setattr(cfg, k, v)
            else:
                raise ValueError(f"unknown Maira2Config field {k!r}")
        return cfg

    # ---- config.json ------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> Maira2Config:
        """Parse a MAIRA-2 ``config.json`` (transformers 4.x hub layout or 5.x LLaVA names)."""
        model_type = d.get("model_type")
        if model_type not in ("maira2", "llava"):
            raise ValueError(
                f"config.json has model_type {model_type!r}; expected 'maira2' (a MAIRA-2 checkpoint)"
            )
        for key in ("vision_config", "text_config"):
            if not isinstance(d.get(key), dict):
                raise ValueError(f"config.json lacks a nested {key!r} section")
        image_token = d.get("image_token_index", d.get("image_token_id"))
        if image_token is None:
            raise ValueError("config.json has neither 'image_token_index' nor 'image_token_id'")
        known = {
            "vision_config", "text_config", "projector_n_layers", "projector_hidden_act",
            "image_token_index", "image_token_id", "vision_feature_layer",
            "vision_feature_select_strategy", "model_type", "architectures",
        }  # fmt: skip
        cfg = cls(
            vision_config=dict(d["vision_config"]),
            text_config=dict(d["text_config"]),
            projector_n_layers=int(d.get("projector_n_layers", 4)),
            projector_hidden_act=str(d.get("projector_hidden_act", "gelu")),
            image_token_id=int(image_token),
            vision_feature_layer=int(d.get("vision_feature_layer", -1)),
            vision_feature_select_strategy=str(d.get("vision_feature_select_strategy", "default")),
            extra={k: v for k, v in d.items() if k not in known},
        )
        cfg.validate()
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """The hub layout's ``config.json`` (model_type maira2, transformers 4.x field names)."""
        return {
            **self.extra,
            "model_type": "maira2",
            "architectures": ["Maira2ForConditionalGeneration"],
            "projector_n_layers": self.projector_n_layers,
            "projector_hidden_act": self.projector_hidden_act,
            "image_token_index": self.image_token_id,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "vision_config": copy.deepcopy(self.vision_config),
            "text_config": copy.deepcopy(self.text_config),
        }

    def validate(self) -> None:
        t = self.text_config
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        ):
            if key not in t:
                raise ValueError(f"text_config lacks {key!r}")
        if t["hidden_size"] % t["num_attention_heads"]:
            raise ValueError("text_config hidden_size is not divisible by num_attention_heads")
        if not 0 <= self.image_token_id < t["vocab_size"]:
            raise ValueError(
                f"image_token_id {self.image_token_id} is outside the vocabulary of {t['vocab_size']} tokens"
            )
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"unknown vision_feature_select_strategy {self.vision_feature_select_strategy!r}"
            )
        if self.projector_hidden_act != "gelu":
            raise ValueError(
                f"projector_hidden_act {self.projector_hidden_act!r} is not supported (MAIRA-2 uses gelu)"
            )
        if self.projector_n_layers < 1:
            raise ValueError("projector_n_layers must be at least 1")
        self.rope  # noqa: B018  (raises on unsupported rope types)

    # ---- derived shapes ---------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def n_layers(self) -> int:
        return int(self.text_config["num_hidden_layers"])

    @property
    def vocab_size(self) -> int:
        return int(self.text_config["vocab_size"])

    @property
    def d_vision(self) -> int:
        return int(self.vision_config.get("hidden_size", 768))

    @property
    def patch_size(self) -> int:
        return int(self.vision_config.get("patch_size", 14))

    @property
    def image_size(self) -> int:
        return int(self.vision_config.get("image_size", 518))

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        """Image tokens per image (1369 for MAIRA-2); the CLS token is dropped by default."""
        n = self.grid_size**2
        return n if self.vision_feature_select_strategy == "default" else n + 1

    @property
    def rope(self) -> tuple[str, float, float]:
        """(type, factor, theta) from ``rope_scaling`` (4.x) or ``rope_parameters`` (5.x)."""
        t = self.text_config
        params = t.get("rope_parameters") or {}
        scaling = t.get("rope_scaling") or {}
        rope_type = (
            params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        )
        factor = float(params.get("factor", scaling.get("factor", 1.0)))
        theta = float(params.get("rope_theta", t.get("rope_theta", 10000.0)))
        if rope_type not in ("default", "linear"):
            raise ValueError(
                f"rope type {rope_type!r} is not supported; MAIRA-2 uses linear scaling (or none)"
            )
        return rope_type, (factor if rope_type == "linear" else 1.0), theta

    @property
    def n_ctx(self) -> int:
        """Context length: max_position_embeddings stretched by the linear rope factor."""
        _, factor, _ = self.rope
        return int(round(int(self.text_config.get("max_position_embeddings", 4096)) * factor))

    # ---- component configs ------------------------------------------------------------------------
    def dinov2_config(self) -> Dinov2Config:
        v = {
            k: val
            for k, val in self.vision_config.items()
            if k not in ("model_type", "transformers_version")
        }
        n = int(v.get("num_hidden_layers", 12))
        layer = (
            self.vision_feature_layer
            if self.vision_feature_layer >= 0
            else n + 1 + self.vision_feature_layer
        )
        v["out_features"] = [f"stage{layer}"]
        v.pop("out_indices", None)
        v["apply_layernorm"] = True
        v["reshape_hidden_states"] = False
        return Dinov2Config(**v)

    def hooked_transformer_config(
        self, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> HookedTransformerConfig:
        """TransformerLens's config for the Vicuna/LLaMA language model (no weight processing)."""
        t = self.text_config
        d_model, n_heads = self.d_model, int(t["num_attention_heads"])
        n_kv = int(t.get("num_key_value_heads") or n_heads)
        _, factor, theta = self.rope
        return HookedTransformerConfig(
            model_name=self.model_name,
            d_model=d_model,
            d_head=d_model // n_heads,
            n_heads=n_heads,
            n_key_value_heads=None if n_kv == n_heads else n_kv,
            d_mlp=int(t["intermediate_size"]),
            n_layers=self.n_layers,
            n_ctx=self.n_ctx,
            eps=float(t.get("rms_norm_eps", 1e-5)),
            d_vocab=self.vocab_size,
            act_fn=str(t.get("hidden_act", "silu")),
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_adjacent_pairs=False,
            rotary_dim=d_model // n_heads,
            rotary_base=theta,
            rotary_scaling_factor=factor,
            final_rms=True,
            gated_mlp=True,
            original_architecture="LlamaForCausalLM",
            default_prepend_bos=True,
            device=str(device) if device is not None else None,
            dtype=dtype,
            init_weights=True,
            initializer_range=float(t.get("initializer_range", 0.02)),
        )


def resolve_checkpoint(path_or_repo: str | Path) -> Path:
    """A local folder, or a hub repo id found in the local hub cache (never downloaded)."""
    path = Path(path_or_repo).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo)
    if path.exists():
        raise ValueError(f"{path} is a file; pass the checkpoint folder that holds config.json")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            return Path(snapshot_download(text, local_files_only=True))
        except LocalEntryNotFoundError as err:
            raise FileNotFoundError(
                f"{text} is not in the local Hugging Face cache and this library never downloads "
                f"weights. Fetch it first (e.g. `hf download {text}`; MAIRA-2 is gated, accept its "
                "licence on the hub) or pass the checkpoint folder"
            ) from err
    raise FileNotFoundError(f"checkpoint folder {path} does not exist")


def read_config(folder: Path) -> Maira2Config:
    """The :class:`Maira2Config` of a checkpoint folder, with errors naming the file."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_NAME}; is it a MAIRA-2 checkpoint folder?"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return Maira2Config.from_hf_dict(raw)
