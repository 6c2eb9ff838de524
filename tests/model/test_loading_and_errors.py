"""Presets, config parsing, hub-cache resolution, dtypes and the errors users meet."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_lens_maira.checkpoint_config import Maira2Config
from sae_lens_maira.model.hooked_maira2 import HookedMaira2


def test_maira2_preset_parameter_count_on_meta():
    model = HookedMaira2.from_config("maira-2", device="meta")
    assert model.n_checkpoint_params() == 6_880_185_600
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.n_patches == 1369 and model.cfg.n_ctx == 6144 and model.cfg.d_vocab == 32207
    sd = model.checkpoint_state_dict()
    assert sd["vision_tower.encoder.layer.0.attention.attention.query.weight"].shape == (768, 768)
    assert sd["multi_modal_projector.layers.6.weight"].shape == (4096, 4096)
    assert sd["language_model.lm_head.weight"].shape == (32207, 4096)


def test_small_preset_runs_on_cpu(tokenizer):
    model = HookedMaira2.from_config("small", tokenizer=tokenizer, seed=0, device="cpu")
    assert model.cfg.d_vocab == len(
        tokenizer
    ) and model.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[1] + [model.image_token_id] * model.n_patches + [5, 6]])
    with torch.no_grad():
        logits = model(ids, pixel_values=torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_config_reads_transformers5_rope_parameters_and_image_token_id():
    d = Maira2Config.preset("maira-2").to_hf_dict()
    d["text_config"].pop("rope_scaling")
    d["text_config"]["rope_parameters"] = {
        "rope_type": "linear",
        "factor": 2.0,
        "rope_theta": 5000.0,
    }
    d["image_token_id"] = d.pop("image_token_index")
    cfg = Maira2Config.from_hf_dict(d)
    assert cfg.rope == ("linear", 2.0, 5000.0) and cfg.n_ctx == 8192 and cfg.image_token_id == 32204
    tl = cfg.hooked_transformer_config(device="cpu")
    assert (
        tl.rotary_scaling_factor == 2.0
        and tl.rotary_base == 5000.0
        and tl.n_key_value_heads is None
    )
    d["text_config"]["rope_parameters"]["rope_type"] = "yarn"
    with pytest.raises(ValueError, match="rope type 'yarn' is not supported"):
        Maira2Config.from_hf_dict(d)
    with pytest.raises(ValueError, match="model_type 'bert'"):
        Maira2Config.from_hf_dict({"model_type": "bert"})


def test_bf16_load_and_hub_cache_resolution(hub_checkpoint, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    snap = tmp_path / "hub" / "models--microsoft--maira-2" / "snapshots" / ("a" * 40)
    shutil.copytree(hub_checkpoint, snap)
    (tmp_path / "hub" / "models--microsoft--maira-2" / "refs").mkdir()
    (tmp_path / "hub" / "models--microsoft--maira-2" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = HookedMaira2.from_pretrained("microsoft/maira-2", device="cpu", dtype=torch.bfloat16)
    assert model.cfg.dtype == torch.bfloat16 and model.embed.W_E.dtype == torch.bfloat16
    assert model.vision_tower.embeddings.cls_token.dtype == torch.bfloat16
    ids = torch.tensor([[1] + [model.image_token_id] * 16 + [7]])
    with torch.no_grad():
        out = model(ids, pixel_values=torch.randn(1, 3, 56, 56))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    with pytest.raises(FileNotFoundError, match="never downloads"):
        HookedMaira2.from_pretrained("microsoft/not-cached")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_and_unexpected_weights(hub_checkpoint, tmp_path):
    folder = _copy(hub_checkpoint, tmp_path / "ck")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    shard = folder / index["weight_map"][key]
    tensors = load_file(shard)
    tensors.pop(key)
    tensors["language_model.model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(shard))
    with pytest.raises(ValueError) as err:
        HookedMaira2.from_pretrained(folder, device="cpu")
    msg = str(err.value)
    assert "missing weights (1): ['blocks.1.mlp.W_in']" in msg
    assert "unexpected weights (1): ['language_model.model.layers.1.mlp.extra.weight']" in msg


def test_missing_shard_config_and_shape_errors(hub_checkpoint, tmp_path):
    folder = _copy(hub_checkpoint, tmp_path / "ck")
    first = sorted(folder.glob("model-*.safetensors"))[0]
    first.unlink()
    with pytest.raises(FileNotFoundError, match="lists shards that are missing"):
        HookedMaira2.from_pretrained(folder, device="cpu")
    folder2 = _copy(hub_checkpoint, tmp_path / "ck2")
    cfg = json.loads((folder2 / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 100
    (folder2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not fit blocks.0.mlp"):
        HookedMaira2.from_pretrained(folder2, device="cpu")
    (folder2 / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        HookedMaira2.from_pretrained(folder2, device="cpu")


def test_tokenizer_without_image_token(hub_checkpoint, tmp_path):
    from transformers import LlamaTokenizer

    folder = _copy(hub_checkpoint, tmp_path / "ck")
    for f in folder.glob("tokenizer*"):
        f.unlink()
    LlamaTokenizer(vocab={"<unk>": 0, "<s>": 1, "</s>": 2, "▁a": 3}, merges=[]).save_pretrained(
        str(folder)
    )
    with pytest.raises(ValueError, match="has no '<image>' token"):
        HookedMaira2.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def model(hub_checkpoint):
    return HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")


def test_input_errors(model):
    img = model.image_token_id
    ids = torch.tensor([[1] + [img] * 16 + [5]])
    with pytest.raises(ValueError, match="no pixel_values were given"):
        model(ids)
    with pytest.raises(
        ValueError, match=r"hold 16 image tokens \(1 images of 16 patches\) but 2 images were given"
    ):
        model(ids, pixel_values=torch.randn(2, 3, 56, 56))
    with pytest.raises(ValueError, match=r"pixel_values must have shape \[n_images, 3, 56, 56\]"):
        model(ids, pixel_values=torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="context is 384 tokens"):
        model(torch.ones(1, 400, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.ones(1, 4, 8))
