"""save_pretrained -> from_pretrained keeps every parameter, TransformerLens's bias slots included."""

import json

import pytest
import torch
from safetensors import safe_open

from sae_lens_maira.model.hooked_maira2 import HookedMaira2


def _randomise_every_parameter(model: HookedMaira2, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_every_parameter_round_trips_biases_included(hub_checkpoint, tmp_path):
    model = HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")
    _randomise_every_parameter(model)
    assert model.blocks[0].attn.b_Q.abs().sum() > 0 and model.unembed.b_U.abs().sum() > 0
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    text_cfg = json.loads((tmp_path / "config.json").read_text())["text_config"]
    assert text_cfg["attention_bias"] is True and text_cfg["mlp_bias"] is True
    again = HookedMaira2.from_pretrained(tmp_path, device="cpu")
    before, after = model.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name
    ids = torch.tensor([[1] + [model.image_token_id] * model.n_patches + [5, 6, 7]])
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(ids, pixel_values=pixels), again(ids, pixel_values=pixels))


def test_attention_biases_use_transformers_names(hub_checkpoint, tmp_path):
    """Attention biases are written where transformers' LLaMA with attention_bias=True reads them."""
    model = HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")
    with torch.no_grad():
        model.blocks[1].attn.b_V.fill_(0.25)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        v = f.get_tensor("language_model.model.layers.1.self_attn.v_proj.bias")
    assert torch.equal(v, torch.full((model.cfg.d_model,), 0.25))
    for proj in "qko":
        assert f"language_model.model.layers.0.self_attn.{proj}_proj.bias" in keys
    assert not any(k.endswith("mlp.down_proj.bias") for k in keys)  # MLP biases stay zero: not saved


def test_unmodified_model_saves_no_bias_keys(hub_checkpoint, tmp_path):
    model = HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")
    assert not any(k.endswith("bias") and "language_model" in k for k in model.checkpoint_state_dict())


def test_nonzero_gate_bias_is_rejected(hub_checkpoint, tmp_path):
    model = HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")
    with torch.no_grad():
        model.blocks[0].mlp.b_out.fill_(1.0)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tmp_path / "model.safetensors"))
    sd["language_model.model.layers.0.mlp.gate_proj.bias"] += 1
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="gate_proj.bias is non-zero"):
        HookedMaira2.from_pretrained(tmp_path, device="cpu")
