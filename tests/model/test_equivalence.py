"""HookedMaira2 against the transformers reference: logits, hidden states, generations."""

import pytest
import torch

from sae_lens_maira.model.hooked_maira2 import HookedMaira2

N_PATCHES = 16  # 56 px / 14 px patches -> 4 x 4


def _prompt(tokenizer, n_images: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = [tokenizer.bos_token_id]
    for _ in range(n_images):
        ids += torch.randint(
            3, 300, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g
        ).tolist()
        ids += [image_id] * N_PATCHES
    ids += torch.randint(3, 300, (7,), generator=g).tolist()
    return ids


def _batch(tokenizer, counts=(1, 3, 2)):
    prompts = [_prompt(tokenizer, n, i) for i, n in enumerate(counts)]
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), tokenizer.eos_token_id)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(p)
        mask[b, T - len(p) :] = 1
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(sum(counts), 3, 56, 56, generator=g)
    return ids, mask, pixels, counts


@pytest.fixture(scope="module")
def model(hub_checkpoint):
    return HookedMaira2.from_pretrained(hub_checkpoint, device="cpu", dtype=torch.float32)


def _reference_forward(reference, ids, mask, pixels):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return reference(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            position_ids=pos,
            output_hidden_states=True,
        )


def test_logits_match_reference_batched_left_padded(model, reference, tokenizer):
    ids, mask, pixels, _ = _batch(tokenizer)
    ref = _reference_forward(reference, ids, mask, pixels)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, pixel_values=pixels)
    real = mask.bool()
    diff = (ours[real] - ref.logits[real]).abs().max().item()
    assert diff <= 1e-4, diff
    assert ref.logits[real].abs().max() > 1.0  # the comparison is not between near-zero logits


@pytest.mark.parametrize("n_images", [1, 2, 3])
def test_single_prompt_logits_and_resid_post(model, reference, tokenizer, n_images):
    ids = torch.tensor([_prompt(tokenizer, n_images, 10 + n_images)])
    mask = torch.ones_like(ids)
    pixels = torch.randn(n_images, 3, 56, 56, generator=torch.Generator().manual_seed(n_images))
    ref = _reference_forward(reference, ids, mask, pixels)
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, pixel_values=pixels)
    assert (logits - ref.logits).abs().max().item() <= 1e-4
    n_layers = model.cfg.n_layers
    for layer in range(n_layers - 1):  # the reference's last hidden state is after the final norm
        ours = cache[f"blocks.{layer}.hook_resid_post"]
        assert (ours - ref.hidden_states[layer + 1]).abs().max().item() <= 1e-4, layer
    assert (cache["hook_embed"] - ref.hidden_states[0]).abs().max().item() <= 1e-5
    assert cache["hook_vision_out"].shape == (n_images, N_PATCHES, 32)
    assert cache["hook_projector_out"].shape == (n_images, N_PATCHES, 64)


def test_images_change_the_output(model, tokenizer):
    ids = torch.tensor([_prompt(tokenizer, 1, 3)])
    with torch.no_grad():
        a = model(ids, pixel_values=torch.zeros(1, 3, 56, 56))
        b = model(ids, pixel_values=torch.ones(1, 3, 56, 56))
    assert (a - b).abs().max() > 1e-2


def test_greedy_generation_matches_reference(model, reference, tokenizer):
    ids, mask, pixels, counts = _batch(tokenizer)
    with torch.no_grad():
        ref = reference.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=tokenizer.eos_token_id,
            min_new_tokens=12,
        )
    ours = model.generate(
        ids, max_new_tokens=12, pixel_values=pixels, attention_mask=mask, stop_at_eos=False
    )
    assert torch.equal(ours, ref)
    assert len(set(ref[:, ids.shape[1] :].flatten().tolist())) > 2  # generations are not degenerate
    # the same prompts one at a time, and without the KV cache, give the same tokens
    start = 0
    for b, n in enumerate(counts):
        real = mask[b].bool()
        single = model.generate(
            ids[b : b + 1, real],
            max_new_tokens=12,
            pixel_values=pixels[start : start + n],
            stop_at_eos=False,
            use_past_kv_cache=False,
        )
        assert torch.equal(single[0, real.sum() :], ours[b, ids.shape[1] :])
        start += n


def test_sharded_hub_checkpoint_equals_transformers5_layout(
    model, reference, tiny_cfg, tokenizer, tmp_path
):
    """The same weights saved by transformers' own save_pretrained (LLaVA 5.x layout) load identically."""
    import json

    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    (tmp_path / "config.json").write_text(json.dumps(tiny_cfg))
    tokenizer.save_pretrained(str(tmp_path))
    other = HookedMaira2.from_pretrained(tmp_path, device="cpu")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), other.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_save_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    again = HookedMaira2.from_pretrained(tmp_path, device="cpu")
    for (n1, p1), (_, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p1, p2), n1


def test_fused_attention_equals_transformerlens_eager_attention(model, tokenizer):
    """Hooking the pattern switches to TransformerLens's eager code; both give the same outputs."""
    ids, mask, pixels, _ = _batch(tokenizer)
    with torch.no_grad():
        fused, c1 = model.run_with_cache(
            ids,
            attention_mask=mask,
            pixel_values=pixels,
            names_filter=lambda n: n.endswith("hook_z"),
        )
        eager, c2 = model.run_with_cache(ids, attention_mask=mask, pixel_values=pixels)
    assert "blocks.0.attn.hook_pattern" in c2 and "blocks.0.attn.hook_pattern" not in c1
    real = mask.bool()
    assert (fused[real] - eager[real]).abs().max() < 1e-5
    assert (c1["blocks.1.attn.hook_z"][real] - c2["blocks.1.attn.hook_z"][real]).abs().max() < 1e-5
    assert torch.isfinite(fused).all()  # padded queries stay finite on the fused path
