"""An independent MAIRA-2 reference built from transformers classes, and checkpoint writers.

The reference is transformers' ``LlavaForConditionalGeneration`` (LLaMA language model, LLaVA's own
image-token splicing, generation and KV cache) with MAIRA-2's two differences swapped in: a
``Dinov2Backbone`` tower whose LayerNormed last feature map (CLS dropped) feeds a 4-layer GELU
projector. Nothing here imports sae_lens_maira's model code.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
from torch import nn
from transformers import (
    Dinov2Backbone,
    Dinov2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling


def tiny_maira2_dict(vocab_size: int, image_token_id: int, *, rope_factor: float = 1.5) -> dict:
    """A MAIRA-2 ``config.json`` (hub layout) with tiny shapes."""
    return {
        "model_type": "maira2",
        "architectures": ["Maira2ForConditionalGeneration"],
        "projector_n_layers": 4,
        "projector_hidden_act": "gelu",
        "image_token_index": image_token_id,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "vision_config": {
            "model_type": "dinov2",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 4,
            "patch_size": 14,
            "image_size": 56,
            "layerscale_value": 1.0,
            "layer_norm_eps": 1e-6,
            "out_features": ["stage2"],
            "apply_layernorm": True,
            "reshape_hidden_states": False,
        },
        "text_config": {
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "intermediate_size": 160,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 256,
            "rope_scaling": {"type": "linear", "factor": rope_factor},
            "rope_theta": 10000.0,
            "vocab_size": vocab_size,
            "tie_word_embeddings": False,
        },
    }


class _Projector(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out), nn.GELU(),
            nn.Linear(d_out, d_out), nn.GELU(), nn.Linear(d_out, d_out),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _maira2_image_features(
    self, pixel_values, vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs
):
    feats = self.vision_tower(pixel_values).feature_maps[-1][:, 1:]
    projected = self.multi_modal_projector(feats)
    return BaseModelOutputWithPooling(last_hidden_state=feats, pooler_output=list(projected))


def build_reference(
    cfg: dict, *, seed: int = 0, init_std: float = 0.15
) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    t = dict(cfg["text_config"])
    t.pop("model_type")
    scaling = t.pop("rope_scaling")
    theta = t.pop("rope_theta")
    text = LlamaConfig(
        **t,
        rope_parameters={"rope_type": "linear", "factor": scaling["factor"], "rope_theta": theta},
    )
    v = dict(cfg["vision_config"])
    v.pop("model_type")
    vision = Dinov2Config(**v)
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=cfg["image_token_index"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    llava.text_config.initializer_range = init_std
    model = LlavaForConditionalGeneration(llava)
    model.model.vision_tower = Dinov2Backbone(vision)
    model.model.multi_modal_projector = _Projector(vision.hidden_size, text.hidden_size)
    model.model.get_image_features = types.MethodType(_maira2_image_features, model.model)
    with torch.no_grad():  # weights large enough that logits and greedy choices differ by position
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                p.uniform_(0.8, 1.2)
            elif p.ndim >= 2:
                p.normal_(0.0, init_std)
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


# transformers 5 names of the reference -> the hub snapshot's names (transformers 4.4x layout).
_DINO_OLD = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
             "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense."}  # fmt: skip


def hub_layout_state_dict(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.language_model."):
            k = "language_model.model." + k[len("model.language_model.") :]
        elif k == "lm_head.weight":
            k = "language_model.lm_head.weight"
        elif k.startswith("model.vision_tower."):
            k = k[len("model.") :]
            for new, old in _DINO_OLD.items():
                k = k.replace(new, old)
        elif k.startswith("model.multi_modal_projector."):
            k = k[len("model.") :]
        out[k] = v.detach().clone().contiguous()
    return out


def save_hub_checkpoint(
    model, cfg: dict, tokenizer, folder: Path, *, shard_bytes: int = 60_000
) -> Path:
    """Write the reference in the hub layout: sharded safetensors + index, config.json, tokenizer."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = hub_layout_state_dict(model)
    split = split_torch_state_dict_into_shards(state, max_shard_size=shard_bytes)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(folder / filename), metadata={"format": "pt"})
    assert split.is_sharded, "make the shards small enough that the index is exercised"
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename})
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    size = cfg["vision_config"]["image_size"]
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5307] * 3, "image_std": [0.2583] * 3, "do_convert_rgb": True,
    }))  # fmt: skip
    tokenizer.save_pretrained(str(folder))
    return folder
