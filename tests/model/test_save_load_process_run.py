"""A checkpoint saved by HookedMaira2 is complete: model and processor load it and it runs."""

import json

import numpy as np
import pytest
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.tokenizer import small_preset_tokenizer


def _study() -> Study:
    rng = np.random.default_rng(0)
    return Study(
        "s1",
        frontal=rng.integers(0, 255, (300, 260)).astype(np.uint8),
        lateral=rng.integers(0, 255, (280, 280)).astype(np.uint8),
        indication="Dyspnea.",
    )


@pytest.fixture(scope="module")
def saved_small(tmp_path_factory):
    model = HookedMaira2.from_config("small", seed=0, device="cpu")  # no tokenizer given
    folder = tmp_path_factory.mktemp("small_ckpt")
    model.save_pretrained(folder)
    return model, folder


def test_small_preset_comes_with_a_fitting_tokenizer():
    tok = small_preset_tokenizer()
    model = HookedMaira2.from_config("small", seed=0, device="cpu")
    assert model.tokenizer is not None and len(model.tokenizer) == len(tok) == 2207
    assert model.cfg.d_vocab == 2207 and model.image_token_id == 2204
    assert tok.convert_tokens_to_ids("<image>") == 2204


def test_save_load_process_run(saved_small):
    model, folder = saved_small
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["crop_size"] == {"height": 224, "width": 224}
    again = HookedMaira2.from_pretrained(folder, device="cpu")
    processor = Maira2Processor.from_pretrained(folder)
    assert processor.image_processor.crop_size == 224 and processor.n_patches == model.n_patches
    batch = processor([_study()])
    assert batch.pixel_values.shape == (2, 3, 224, 224)
    with torch.no_grad():
        a = model(batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values)
        b = again(**batch.model_inputs())
    assert torch.equal(a, b) and torch.isfinite(a).all()
    # a second save of the reloaded model keeps its preprocessor config
    assert again.image_preprocessor is not None and again.image_preprocessor.crop_size == 224


def test_processor_without_preprocessor_config_uses_the_model_image_size(saved_small, tmp_path):
    import shutil

    _, folder = saved_small
    shutil.copytree(folder, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "preprocessor_config.json").unlink()
    assert Maira2Processor.from_pretrained(tmp_path / "ckpt").image_processor.crop_size == 224


def test_mismatched_preprocessor_config_is_a_clear_error(saved_small, tmp_path):
    import shutil

    _, folder = saved_small
    shutil.copytree(folder, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    cfg["crop_size"] = {"height": 518, "width": 518}
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="crops images to 518 px but .* takes 224 px"):
        Maira2Processor.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="crops images to 518 px"):
        HookedMaira2.from_pretrained(tmp_path / "ckpt", device="cpu")


def test_maira2_preset_has_no_tokenizer_and_says_how_to_get_one():
    model = HookedMaira2.from_config("maira-2", device="meta")
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="load_tokenizer"):
        model.to_tokens("hello")


def test_folder_without_tokenizer_names_the_fix(saved_small, tmp_path):
    import shutil

    _, folder = saved_small
    shutil.copytree(folder, tmp_path / "ckpt")
    for f in (tmp_path / "ckpt").glob("tokenizer*"):
        f.unlink()
    (tmp_path / "ckpt" / "special_tokens_map.json").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="load_tokenizer=False"):
        HookedMaira2.from_pretrained(tmp_path / "ckpt", device="cpu")
    model = HookedMaira2.from_pretrained(
        tmp_path / "ckpt", device="cpu", tokenizer=small_preset_tokenizer()
    )
    assert model.tokenizer is not None
