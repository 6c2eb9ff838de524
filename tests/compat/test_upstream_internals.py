"""The upstream internals ``sae_lens_maira.compat`` relies on are still there and still behave.

Each test names what moved when it fails; fix the compat function it belongs to (and its
docstring's "checked against" version), nothing else.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from sae_lens_maira.compat import sae_lens as compat_sae_lens
from sae_lens_maira.compat import torch as compat_torch
from sae_lens_maira.compat import transformer_lens as compat_tl
from sae_lens_maira.compat import transformers as compat_transformers


def test_sae_lens_registries_and_named_loaders_are_dicts() -> None:
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    for registry in (SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY):
        assert isinstance(registry, dict) and "standard" in registry
    assert isinstance(loaders.NAMED_PRETRAINED_SAE_LOADERS, dict)
    assert isinstance(loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS, dict)
    assert "standard" in compat_sae_lens.sae_architectures()
    assert compat_sae_lens.registered_classes("sae", "matryoshka") is not None


def test_the_pretrained_directory_is_a_cached_function_and_stays_one() -> None:
    import sae_lens.loading.pretrained_saes_directory as directory_module

    wrapper = directory_module.get_pretrained_saes_directory
    original = getattr(wrapper, "__wrapped__", wrapper)
    assert hasattr(original, "cache_clear") and hasattr(original, "cache_info"), (
        "get_pretrained_saes_directory is no longer an lru_cache"
    )
    assert "maira-2-sae" in wrapper()


def test_consolidate_shards_keeps_its_signature() -> None:
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    fn = inspect.getattr_static(CacheActivationsRunner, "_consolidate_shards")
    assert isinstance(fn, staticmethod), "_consolidate_shards is no longer a staticmethod"
    params = list(inspect.signature(CacheActivationsRunner._consolidate_shards).parameters)
    assert params == ["source_dir", "output_dir", "copy_files"], params


def test_the_runner_calls_the_methods_we_wrap_and_owns_its_evaluator() -> None:
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens.training.activations_store import ActivationsStore

    source = inspect.getsource(LanguageModelSAETrainingRunner)
    for used in ("self.evaluator", "save_checkpoint_fn=self.save_checkpoint", "self.save_final_sae(",
                 "self.run_trainer_with_interruption_handling(trainer"):
        assert used in source, f"LanguageModelSAETrainingRunner no longer uses {used!r}"
    assert "self._dataloader = self.get_data_loader()" in inspect.getsource(ActivationsStore)
    run = inspect.getsource(LanguageModelSAETrainingRunner.run)
    assert "self.activations_store" in run, "run() no longer reads runner.activations_store"


def test_the_store_restarts_its_token_sequences_from_the_private_generator() -> None:
    from sae_lens.training.activations_store import ActivationsStore

    assert inspect.isgeneratorfunction(
        getattr(ActivationsStore, "_iterate_tokenized_sequences", None)
    ), "ActivationsStore._iterate_tokenized_sequences is gone or no longer a generator"
    batch_tokens = inspect.getsource(ActivationsStore.get_batch_tokens)
    assert "next(self.iterable_sequences)" in batch_tokens, (
        "get_batch_tokens no longer reads self.iterable_sequences"
    )
    reset = inspect.getsource(ActivationsStore.reset_input_dataset)
    assert "iterable_sequences" not in reset, (
        "reset_input_dataset now restarts the sequences itself: drop restart_tokenized_sequences"
    )


def test_transformers_exports_what_the_package_imports_at_its_top_level() -> None:
    import transformers

    for name in ("AutoTokenizer", "LlamaTokenizer", "PreTrainedTokenizerBase",
                 "BitImageProcessorPil", "Dinov2Backbone", "Dinov2Config"):  # fmt: skip
        assert hasattr(transformers, name), f"transformers no longer exports {name} at its top level"


def test_tokenizer_init_kwargs_is_the_live_dict_of_its_constructor_arguments() -> None:
    from transformers import LlamaTokenizer

    from sae_lens_maira.processing.tokenizer import small_preset_tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁a": 3}
    built = LlamaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=False)
    kwargs = compat_transformers.tokenizer_init_kwargs(built)
    assert kwargs is compat_transformers.tokenizer_init_kwargs(built), "not the live dict"
    assert kwargs.get("add_bos_token") is True, "init_kwargs no longer keeps constructor kwargs"
    loaded = compat_transformers.tokenizer_init_kwargs(small_preset_tokenizer())
    assert isinstance(loaded.get("name_or_path"), str), "from_pretrained no longer records its path"
    with pytest.raises(TypeError, match="not a dict"):
        compat_transformers.tokenizer_init_kwargs(type("T", (), {"init_kwargs": None})())


def test_set_tokenizer_keeps_a_tokenizer_built_in_memory() -> None:
    from transformer_lens.utilities.tokenize_utils import get_tokenizer_with_bos

    from sae_lens_maira.processing.tokenizer import build_maira2_tokenizer

    tokenizer = build_maira2_tokenizer(["the lungs are clear", "no effusion"] * 50, 400)
    compat_tl.keep_tokenizer_on_set(tokenizer)
    assert get_tokenizer_with_bos(tokenizer) is tokenizer


def test_transformer_lens_rotary_base_and_tokenizer_init_kwargs() -> None:
    from transformer_lens.components import AbstractAttention
    from transformer_lens.utilities import tokenize_utils

    assert callable(getattr(AbstractAttention, "_rotary_base", None))
    source = inspect.getsource(tokenize_utils.get_tokenizer_with_bos)
    assert 'init_kwargs.pop("name_or_path")' in source and '"add_bos_token"' in source


def test_swap_class_keeps_parameters_and_refuses_an_unrelated_class() -> None:
    class Fast(nn.Linear):
        pass

    layer = nn.Linear(2, 3)
    weight = layer.weight
    compat_tl.swap_class(layer, Fast)
    assert type(layer) is Fast and layer.weight is weight
    with pytest.raises(TypeError, match="not a subclass"):
        compat_tl.swap_class(layer, nn.Conv1d)


def test_tensor_version_counts_in_place_writes() -> None:
    t = torch.zeros(3)
    before = compat_torch.version(t)
    t.add_(1)
    assert compat_torch.version(t) == before + 1


def test_has_hooks_sees_hooks_registered_with_torch() -> None:
    module = nn.Identity()
    assert not compat_torch.has_hooks(module)
    handle = module.register_forward_hook(lambda *_: None)
    assert compat_torch.has_hooks(module)
    handle.remove()
    module.register_full_backward_hook(lambda *_: None)
    assert compat_torch.has_hooks(module)


def test_keep_float32_buffers_survives_a_dtype_move_and_follows_devices() -> None:
    class Kept(compat_torch.KeepFloat32Buffers):
        fp32_buffers = ("ema",)

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))
            self.register_buffer("ema", torch.tensor(0.1))
            self.register_buffer("other", torch.tensor(0.1))

    m = Kept().to(torch.bfloat16)
    assert m.w.dtype == torch.bfloat16 and m.other.dtype == torch.bfloat16
    assert m.ema.dtype == torch.float32 and m.ema.item() == pytest.approx(0.1)
    assert m.to("meta").ema.device.type == "meta"
