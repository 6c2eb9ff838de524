"""The generation speed-ups compute what TransformerLens's cache and weight layout compute, bit for bit.

``PreallocatedKVCache`` (buffers instead of concatenation, rotated keys kept) and
``generation_weight_layout`` (weights stored in the order the forward reads them) change how
``HookedMaira2.generate`` computes, never what: every step's logits must equal those of the plain
TransformerLens cache with the weights as stored.
"""

import contextlib

import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

import sae_lens_maira.model.hooked_maira2 as hm
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.model.kv_cache import PreallocatedKVCache
from tests.model.test_equivalence import _prompt


@pytest.fixture(scope="module")
def model(hub_checkpoint):
    return HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")


def _padded_batch(model, tokenizer):
    pad = model.tokenizer.pad_token_id
    counts = (1, 2, 1)
    prompts = [_prompt(tokenizer, n, 9 + 3 * i) for i, n in enumerate(counts)]
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), pad)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(p)
    pixels = torch.randn(sum(counts), 3, 56, 56, generator=torch.Generator().manual_seed(3))
    return ids, pixels


def _generate_recording(model, ids, pixels, n=7):
    logits: list[torch.Tensor] = []
    handle = model.unembed.register_forward_hook(lambda m, i, o: logits.append(o.clone()))
    try:
        out = model.generate(ids, max_new_tokens=n, pixel_values=pixels, stop_at_eos=False)
    finally:
        handle.remove()
    return out, logits


def test_generate_equals_transformerlens_cache_bit_for_bit(model, tokenizer, monkeypatch):
    ids, pixels = _padded_batch(model, tokenizer)
    before = {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()}
    fast, fast_logits = _generate_recording(model, ids, pixels)
    # the parameters' own tensors are back after generate
    assert {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()} == before

    def plain_cache(cfg, device, batch_size, capacity):
        return TransformerLensKeyValueCache.init_cache(cfg, device, batch_size)

    monkeypatch.setattr(PreallocatedKVCache, "init_preallocated", staticmethod(plain_cache))
    monkeypatch.setattr(hm, "generation_weight_layout", lambda *a, **k: contextlib.nullcontext())
    plain, plain_logits = _generate_recording(model, ids, pixels)
    assert torch.equal(fast, plain)
    assert len(fast_logits) == len(plain_logits) == 7
    for a, b in zip(fast_logits, plain_logits):
        assert torch.equal(a, b)


def test_a_hook_on_rotated_keys_sees_every_key(model, tokenizer):
    ids, pixels = _padded_batch(model, tokenizer)
    seen: list[int] = []
    hook = ("blocks.0.attn.hook_rot_k", lambda t, hook: seen.append(t.shape[1]))
    with model.hooks(fwd_hooks=[hook]):
        hooked = model.generate(ids, max_new_tokens=4, pixel_values=pixels, stop_at_eos=False)
    plain = model.generate(ids, max_new_tokens=4, pixel_values=pixels, stop_at_eos=False)
    assert torch.equal(hooked, plain)
    T = ids.shape[1]
    assert seen == [T, T + 1, T + 2, T + 3]


def test_preallocated_cache_grows_past_its_capacity(model):
    cache = PreallocatedKVCache.init_preallocated(model.cfg, "cpu", 2, capacity=3)
    entry = cache[0]
    shape = (2, 2, model.cfg.n_heads, model.cfg.d_head)
    a, b, c = (torch.randn(shape) for _ in range(3))
    entry.append(a, a)
    entry.append(b, b)
    keys, values = entry.append(c, c)
    assert torch.equal(keys, torch.cat([a, b, c], 1)) and torch.equal(values, keys)
    assert torch.equal(entry.past_keys, keys)
    entry.frozen = True
    more, _ = entry.append(a, a)
    assert more.shape[1] == 8 and entry.past_keys.shape[1] == 6  # frozen: not kept


def test_weight_layout_takes_no_extra_memory_beyond_its_budget(model):
    """The re-laid-out copies live beside the originals for the whole generation, so a model
    whose copies exceed the budget (MAIRA-2's 7B) keeps its usual layout."""
    from sae_lens_maira.model.weight_layout import generation_weight_layout

    W = model.blocks[0].mlp.W_in
    usual = W.stride()
    with generation_weight_layout(model):
        assert W.stride() != usual and W.data.permute(1, 0).is_contiguous()
    with generation_weight_layout(model, max_extra_bytes=W.numel() * W.element_size() - 1):
        assert W.stride() == usual
    assert W.stride() == usual
