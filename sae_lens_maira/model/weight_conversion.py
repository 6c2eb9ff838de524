"""Checkpoint keys <-> HookedMaira2 parameters, one tensor at a time.

Accepted checkpoint layouts (mapped to one canonical form first):
- the hub snapshot (transformers 4.4x): ``language_model.model.*``, ``language_model.lm_head.*``,
  ``vision_tower.*`` with Dinov2's 4.x names (``attention.attention.query``), ``multi_modal_projector.layers.N.*``;
- transformers 5.x's LLaVA layout: ``model.language_model.*``, ``lm_head.*``, ``model.vision_tower.*``
  with 5.x Dinov2 names (``attention.q_proj``), ``model.multi_modal_projector.*``.
Conversion works per tensor so a 7B checkpoint streams shard by shard into an empty model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import cast

import einops
import torch
from transformer_lens import HookedTransformerConfig

# transformers 4.x Dinov2 names -> 5.x names (what Dinov2Backbone now calls them).
_DINOV2_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)
_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.(.+)$")
#: Checkpoint keys that carry no weights (rotary caches in old checkpoints).
IGNORED_KEY = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")


def canonical_key(key: str) -> str:
    """Map a key of either layout to the hub (transformers 4.x) layout, Dinov2 names in 5.x form."""
    if key.startswith("model.language_model."):
        key = "language_model.model." + key[len("model.language_model.") :]
    elif key.startswith("lm_head."):
        key = "language_model." + key
    elif key.startswith("model.vision_tower."):
        key = key[len("model.") :]
    elif key.startswith("model.multi_modal_projector."):
        key = key[len("model.") :]
    if key.startswith("vision_tower."):
        for old, new in _DINOV2_RENAMES:
            key = key.replace(old, new)
    return key


def hub_key_to_tl(
    key: str, tensor: torch.Tensor, cfg: HookedTransformerConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (our parameter name, tensor) for one canonical checkpoint tensor."""
    n_heads = cfg.n_heads
    n_kv = cfg.n_key_value_heads or n_heads
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    if key.startswith(("vision_tower.", "multi_modal_projector.")):
        yield key, tensor
        return
    if key == "language_model.model.embed_tokens.weight":
        yield "embed.W_E", tensor
        return
    if key == "language_model.model.norm.weight":
        yield "ln_final.w", tensor
        return
    if key == "language_model.lm_head.weight":
        yield "unembed.W_U", tensor.T
        return
    if key == "language_model.lm_head.bias":
        yield "unembed.b_U", tensor
        return
    m = _LAYER.match(key)
    if m is None:
        raise KeyError(key)
    layer, rest = int(m.group(1)), m.group(2)
    p = f"blocks.{layer}."
    simple = {
        "input_layernorm.weight": ("ln1.w", lambda t: t),
        "post_attention_layernorm.weight": ("ln2.w", lambda t: t),
        "mlp.up_proj.weight": ("mlp.W_in", lambda t: t.T),
        "mlp.gate_proj.weight": ("mlp.W_gate", lambda t: t.T),
        "mlp.down_proj.weight": ("mlp.W_out", lambda t: t.T),
        "self_attn.q_proj.weight": (
            "attn.W_Q",
            lambda t: einops.rearrange(t, "(n h) m -> n m h", n=n_heads),
        ),
        "self_attn.k_proj.weight": (
            f"attn.{gqa}W_K",
            lambda t: einops.rearrange(t, "(n h) m -> n m h", n=n_kv),
        ),
        "self_attn.v_proj.weight": (
            f"attn.{gqa}W_V",
            lambda t: einops.rearrange(t, "(n h) m -> n m h", n=n_kv),
        ),
        "self_attn.o_proj.weight": (
            "attn.W_O",
            lambda t: einops.rearrange(t, "m (n h) -> n h m", n=n_heads),
        ),
        "self_attn.q_proj.bias": (
            "attn.b_Q",
            lambda t: einops.rearrange(t, "(n h) -> n h", n=n_heads),
        ),
        "self_attn.k_proj.bias": (
            f"attn.{gqa}b_K",
            lambda t: einops.rearrange(t, "(n h) -> n h", n=n_kv),
        ),
        "self_attn.v_proj.bias": (
            f"attn.{gqa}b_V",
            lambda t: einops.rearrange(t, "(n h) -> n h", n=n_kv),
        ),
        "self_attn.o_proj.bias": ("attn.b_O", lambda t: t),
        "mlp.down_proj.bias": ("mlp.b_out", lambda t: t),
        TL_ONLY_B_IN: ("mlp.b_in", lambda t: t),
    }
    if rest in ("mlp.gate_proj.bias", "mlp.up_proj.bias"):
        if bool(tensor.any()):
            raise ValueError(
                f"checkpoint tensor {key} is non-zero: a bias inside the gated MLP's product has no "
                "TransformerLens counterpart (TransformerLens adds b_in after the product)"
            )
        return
    if rest not in simple:
        raise KeyError(key)
    name, fn = simple[rest]
    yield p + name, fn(tensor)


#: Where TransformerLens's gated-MLP ``b_in`` (added after the gate product, unlike transformers'
#: ``up_proj.bias``) is saved when non-zero; transformers ignores the key, this package reads it.
TL_ONLY_B_IN = "mlp.b_in"

#: Our parameters that MAIRA-2's checkpoint does not have: TransformerLens's bias slots (zero).
ZERO_FILLED = re.compile(r"(attn\.(_?b_[QKV]|b_O)|mlp\.b_(in|out)|unembed\.b_U)$")


def tl_to_hub_state_dict(
    state_dict: dict[str, torch.Tensor], cfg: HookedTransformerConfig
) -> dict[str, torch.Tensor]:
    """Our state dict -> the hub layout (for saving checkpoints in the real format).

    Vision keys get transformers 4.x Dinov2 names, as in the published snapshot. TransformerLens's
    bias slots are dropped while they are all zero (MAIRA-2 has no attention or MLP biases); a
    model edited in TransformerLens keeps them: attention biases as ``self_attn.*_proj.bias`` (all
    four, as transformers' ``attention_bias=True`` expects), ``b_out`` as ``mlp.down_proj.bias``
    (with zero gate/up biases, as ``mlp_bias=True`` expects), ``b_U`` as ``lm_head.bias`` and
    ``b_in`` under :data:`TL_ONLY_B_IN`. After ``fold_ln`` (RMSPre) the norms are saved as ones.
    """
    n_heads = cfg.n_heads
    n_kv = cfg.n_key_value_heads or n_heads
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    meta = any(t.is_meta for t in state_dict.values())
    attn_bias = not meta and any(
        bool(t.any()) for n, t in state_dict.items() if re.search(r"attn\.(_?b_[QKV]|b_O)$", n)
    )
    mlp_bias = not meta and any(
        bool(t.any()) for n, t in state_dict.items() if n.endswith("mlp.b_out")
    )
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        if name.startswith("vision_tower."):
            for old, new in _DINOV2_RENAMES:
                name = name.replace(new, old)
            out[name] = t
            continue
        if name.startswith("multi_modal_projector."):
            out[name] = t
            continue
        if name.endswith(("rotary_sin", "rotary_cos", ".mask", ".IGNORE")):
            continue
        m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
        p = f"language_model.model.layers.{m.group(1)}." if m else ""
        rest = m.group(2) if m else name
        if ZERO_FILLED.search(name):
            if rest in ("attn.b_Q", f"attn.{gqa}b_K", f"attn.{gqa}b_V") and attn_bias:
                n = n_heads if rest == "attn.b_Q" else n_kv
                proj = {"attn.b_Q": "q", f"attn.{gqa}b_K": "k", f"attn.{gqa}b_V": "v"}[rest]
                out[p + f"self_attn.{proj}_proj.bias"] = einops.rearrange(t, "n h -> (n h)", n=n)
            elif rest == "attn.b_O" and attn_bias:
                out[p + "self_attn.o_proj.bias"] = t
            elif rest == "mlp.b_out" and mlp_bias:
                out[p + "mlp.down_proj.bias"] = t
                d_mlp = cast(int, cfg.d_mlp)  # set for every LLaMA config
                out[p + "mlp.gate_proj.bias"] = t.new_zeros(d_mlp)
                out[p + "mlp.up_proj.bias"] = t.new_zeros(d_mlp)
            elif rest == "mlp.b_in" and not meta and bool(t.any()):
                out[p + TL_ONLY_B_IN] = t
            elif name == "unembed.b_U" and not meta and bool(t.any()):
                out["language_model.lm_head.bias"] = t
            continue
        if name == "embed.W_E":
            out["language_model.model.embed_tokens.weight"] = t
        elif name == "ln_final.w":
            out["language_model.model.norm.weight"] = t
        elif name == "unembed.W_U":
            out["language_model.lm_head.weight"] = t.T
        else:
            if m is None:
                raise KeyError(f"no checkpoint name for parameter {name}")
            rules = {
                "ln1.w": ("input_layernorm.weight", lambda x: x),
                "ln2.w": ("post_attention_layernorm.weight", lambda x: x),
                "mlp.W_in": ("mlp.up_proj.weight", lambda x: x.T),
                "mlp.W_gate": ("mlp.gate_proj.weight", lambda x: x.T),
                "mlp.W_out": ("mlp.down_proj.weight", lambda x: x.T),
                "attn.W_Q": (
                    "self_attn.q_proj.weight",
                    lambda x: einops.rearrange(x, "n m h -> (n h) m"),
                ),
                f"attn.{gqa}W_K": (
                    "self_attn.k_proj.weight",
                    lambda x: einops.rearrange(x, "n m h -> (n h) m"),
                ),
                f"attn.{gqa}W_V": (
                    "self_attn.v_proj.weight",
                    lambda x: einops.rearrange(x, "n m h -> (n h) m"),
                ),
                "attn.W_O": (
                    "self_attn.o_proj.weight",
                    lambda x: einops.rearrange(x, "n h m -> m (n h)", n=n_heads),
                ),
            }
            if rest not in rules:
                raise KeyError(f"no checkpoint name for parameter {name}")
            key, fn = rules[rest]
            out[p + key] = fn(t)
    if cfg.normalization_type == "RMSPre":  # fold_ln folded the norm weights into the next matrices
        like = state_dict["embed.W_E"]
        out["language_model.model.norm.weight"] = like.new_ones(cfg.d_model)
        for layer in range(cfg.n_layers):
            p = f"language_model.model.layers.{layer}."
            out[p + "input_layernorm.weight"] = like.new_ones(cfg.d_model)
            out[p + "post_attention_layernorm.weight"] = like.new_ones(cfg.d_model)
    return {k: v.contiguous() for k, v in out.items()}


def hub_text_config_flags(hub_state_dict: dict[str, torch.Tensor]) -> dict[str, bool]:
    """``attention_bias`` / ``mlp_bias`` for config.json, matching the biases a state dict holds."""
    keys = list(hub_state_dict)
    return {
        "attention_bias": any(k.endswith("self_attn.q_proj.bias") for k in keys),
        "mlp_bias": any(k.endswith("mlp.down_proj.bias") for k in keys),
    }
