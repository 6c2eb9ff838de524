"""Stock SAELens code driving HookedMaira2 on image+text inputs."""

import numpy as np
import pytest
import torch
from sae_lens import ActivationsStore, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_maira.activations.saelens_bridge import studies_to_token_dataset
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.model.image_bank import ImageBank
from sae_lens_maira.processing.processor import Maira2Processor

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model(hub_checkpoint):
    return HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def processor(hub_checkpoint):
    return Maira2Processor.from_pretrained(hub_checkpoint)


def _studies(n=4):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        frontal = rng.integers(0, 255, (70, 60)).astype(np.uint8)
        lateral = rng.integers(0, 255, (64, 64)).astype(np.uint8) if i % 2 else None
        out.append(
            Study(
                f"s{i}",
                frontal=frontal,
                lateral=lateral,
                indication=f"Cough {i}.",
                findings="The heart size is normal. No pleural effusion.",
            )
        )
    return out


def test_stock_activations_store_on_virtual_image_tokens(model, processor):
    studies = _studies()
    bank = ImageBank(preprocessor=processor.image_processor)
    context = max(len(processor.encode_study(s, with_report=True)) for s in studies)
    ds = studies_to_token_dataset(
        studies,
        processor,
        bank,
        d_vocab=model.cfg.d_vocab,
        context_size=context,
        show_progress=False,
    )
    assert (torch.tensor(ds["tokens"]) >= model.cfg.d_vocab).any()
    model.attach_image_bank(bank)
    pad = processor.pad_token_id
    store = ActivationsStore(
        model=model,
        dataset=ds,
        streaming=False,
        hook_name=HOOK,
        hook_head_index=None,
        context_size=context,
        d_in=model.cfg.d_model,
        n_batches_in_buffer=2,
        total_training_tokens=10_000,
        store_batch_size_prompts=2,
        train_batch_size_tokens=32,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        exclude_special_tokens=torch.tensor([pad]),
    )
    tokens = store.get_batch_tokens()
    acts = store.get_activations(tokens)
    # the same studies through the ordinary image path give the same activations
    batch = processor(studies[:2], with_report=True, padding_side="right")
    with torch.no_grad():
        _, cache = model.run_with_cache(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            names_filter=[HOOK],
        )
    real = batch.attention_mask.bool()
    T = batch.input_ids.shape[1]
    assert torch.allclose(acts[:, :T][real], cache[HOOK][real], atol=1e-5)
    # and the store's training batches come out (padding excluded)
    out = store.next_batch()
    assert out.shape == (32, model.cfg.d_model) and torch.isfinite(out).all()
    model.attach_image_bank(None)


def test_loss_accepts_virtual_ids(model, processor):
    studies = _studies(2)
    bank = ImageBank(preprocessor=processor.image_processor)
    ds = studies_to_token_dataset(
        studies, processor, bank, d_vocab=model.cfg.d_vocab, context_size=360, show_progress=False
    )
    model.attach_image_bank(bank)
    tokens = torch.tensor(ds["tokens"])
    with torch.no_grad():
        loss = model(tokens, return_type="loss")
    assert torch.isfinite(loss)
    model.attach_image_bank(None)
    with pytest.raises(ValueError, match="attach_image_bank"):
        model(tokens)


def test_hooked_sae_transformer_api_with_images(model, processor):
    torch.manual_seed(0)
    cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=96, metadata=SAEMetadata(hook_name=HOOK))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
    batch = processor(_studies(2), padding_side="left")
    kwargs = dict(attention_mask=batch.attention_mask, pixel_values=batch.pixel_values)
    with torch.no_grad():
        clean = model(batch.input_ids, **kwargs)
        spliced = model.run_with_saes(batch.input_ids, saes=[sae], **kwargs)
        _, cache = model.run_with_cache_with_saes(batch.input_ids, saes=[sae], **kwargs)
    assert (clean - spliced).abs().max() > 1e-3  # the SAE's reconstruction replaced the residual
    assert f"{HOOK}.hook_sae_acts_post" in cache
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert acts.shape == (*batch.input_ids.shape, 96)
    model.add_sae(sae, use_error_term=True)
    with torch.no_grad():
        with_error = model(batch.input_ids, **kwargs)
    model.reset_saes()
    assert torch.allclose(with_error, clean, atol=1e-4)  # error term restores the clean output
