"""HookedMaira2: MAIRA-2 as a TransformerLens model whose embedding splices RAD-DINO images.

The language model is TransformerLens's own ``HookedTransformer`` (through SAELens's
``HookedSAETransformer``, so ``add_sae`` / ``run_with_saes`` work), built from MAIRA-2's LLaMA
config. The RAD-DINO tower and the projector sit beside it; ``forward`` turns ``pixel_values``
into image embeddings that :class:`MultimodalEmbed` writes at the image-token positions, so every
TransformerLens hook fires on real image+text inputs. Token ids beyond the vocabulary refer to
images in an attached :class:`ImageBank`, which lets SAELens's token-only code drive the model.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, cast

import torch
from sae_lens import HookedSAETransformer
from tqdm.auto import tqdm
from transformer_lens.components import AbstractAttention  # pyright: ignore[reportPrivateImportUsage]  (TL re-exports it, no __all__)
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import sample_logits  # pyright: ignore[reportPrivateImportUsage]  (TL re-exports it, no __all__)
from transformers import PreTrainedTokenizerBase

from sae_lens_maira.checkpoint_config import (
    CONFIG_NAME,
    Maira2Config,
    read_config,
    resolve_checkpoint,
)
from sae_lens_maira.compat.torch import has_hooks, version
from sae_lens_maira.compat.transformer_lens import keep_tokenizer_on_set, rotary_base
from sae_lens_maira.model.attention import use_fused_attention
from sae_lens_maira.model.checkpoint import iter_tensors, save_state_dict, weight_files
from sae_lens_maira.model.embed import MultimodalEmbed
from sae_lens_maira.model.image_bank import ImageBank, split_virtual_ids
from sae_lens_maira.model.kv_cache import PreallocatedKVCache
from sae_lens_maira.model.position_marks import strip_marks
from sae_lens_maira.model.vision import Maira2Projector, build_vision_tower
from sae_lens_maira.model.weight_conversion import (
    IGNORED_KEY,
    ZERO_FILLED,
    canonical_key,
    hub_key_to_tl,
    hub_text_config_flags,
    tl_to_hub_state_dict,
)
from sae_lens_maira.model.weight_layout import generation_weight_layout
from sae_lens_maira.processing.images import PREPROCESSOR_CONFIG, ImagePreprocessor
from sae_lens_maira.processing.validation import (
    ModelInputError,
    check_image_count,
    check_image_runs,
    check_pixel_values,
    check_token_ids,
)


class HookedMaira2(HookedSAETransformer):
    """MAIRA-2 (RAD-DINO + 4-layer projector + Vicuna) with TransformerLens hooks everywhere.

    Extra hook points: ``hook_vision_out`` (tower output, LayerNormed, CLS dropped:
    [n_images, n_patches, d_vision]) and ``hook_projector_out`` ([n_images, n_patches, d_model]).
    """

    embed: MultimodalEmbed

    def __init__(
        self,
        config: Maira2Config,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        move_to_device: bool = True,
    ) -> None:
        config.validate()
        device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tl_cfg = config.hooked_transformer_config(device=device, dtype=dtype)
        super().__init__(tl_cfg, tokenizer=None, move_to_device=False)
        use_fused_attention(self.blocks)
        self.maira_config = config
        self.vision_tower = build_vision_tower(config)
        # in place (returns the module); transformers declares PreTrainedModel.to as
        # @wraps(nn.Module.to), whose stub keeps the unbound `self`: dtype reads as passed for self
        self.vision_tower.to(dtype)  # pyright: ignore[reportArgumentType]
        self.hook_vision_out = HookPoint()
        self.multi_modal_projector = Maira2Projector(
            config.d_vision, config.d_model, config.projector_n_layers
        ).to(dtype)
        self.hook_projector_out = HookPoint()
        self.embed = MultimodalEmbed(tl_cfg, config.image_token_id)
        torch.nn.init.normal_(self.embed.W_E, std=tl_cfg.initializer_range)
        self.embed.resolve_virtual = self._embed_virtual_tokens
        self.image_bank: ImageBank | None = None
        self.image_preprocessor: ImagePreprocessor | None = None  # saved with the checkpoint
        # Virtual-image embeddings of the attached bank, per model (never shared), no-grad passes
        # only; bypassed while a hook sits on hook_vision_out / hook_projector_out, cleared when
        # an image-path weight changes (in place, replaced, moved, cast) or another bank comes.
        self.image_cache_size = 8
        self._image_cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._image_cache_state: tuple[Any, ...] | None = None  # what the cached entries came from
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        if move_to_device:
            self.to(device, print_details=False)
        self.setup()

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: Maira2Config | str = "small",
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        **overrides: Any,
    ) -> HookedMaira2:
        """A randomly initialised model from a preset (``"maira-2"``, ``"small"``) or a config.

        With a tokenizer, the vocabulary size and image token id are taken from it. Without one,
        ``"small"`` gets :func:`small_preset_tokenizer` (2207 ids, fits the preset); ``"maira-2"``
        has none (the real tokenizer ships with the checkpoint: pass
        ``tokenizer=load_tokenizer(folder)`` or use ``from_pretrained``). Pass ``device="meta"`` to
        build the full-size model without allocating it.
        """
        cfg = Maira2Config.preset(config) if isinstance(config, str) else config
        if tokenizer is None and cfg.model_name == "maira-2-small":
            from sae_lens_maira.processing.tokenizer import small_preset_tokenizer

            tokenizer = small_preset_tokenizer()
        if tokenizer is not None:
            from sae_lens_maira.processing.tokenizer import image_token_id

            overrides.setdefault("text_vocab_size", len(tokenizer))
            overrides.setdefault("image_token_id", image_token_id(tokenizer))
        cfg = cfg.replace(**overrides) if overrides else cfg
        if seed is not None:
            torch.manual_seed(seed)
        if str(device) == "meta":
            with torch.device("meta"):
                return cls(cfg, tokenizer, device="meta", dtype=dtype, move_to_device=False)
        return cls(cfg, tokenizer, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        tokenizer: PreTrainedTokenizerBase | None = None,
        load_tokenizer: bool = True,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        fold_value_biases: bool = False,
        refactor_factored_attn_matrices: bool = False,
        default_prepend_bos: bool | None = None,
        default_padding_side: Literal["left", "right"] | None = None,
        **tl_kwargs: Any,
    ) -> HookedMaira2:
        """Load a MAIRA-2 checkpoint folder (or a hub repo id already in the local cache).

        Weights stream shard by shard into an uninitialised model, converted to ``dtype`` on the way;
        missing, unexpected or mis-shaped weights raise an error that lists them.

        TransformerLens's weight processing (``fold_ln``, ``center_writing_weights``,
        ``center_unembed``, ``fold_value_biases``, ``refactor_factored_attn_matrices``) keeps its
        meaning and is applied after loading by :meth:`process_weights_`. Unlike
        ``HookedTransformer.from_pretrained`` every step is off by default, so logits and hooks
        are the checkpoint's own (equal to transformers' MAIRA-2); ``from_pretrained_no_processing``
        is the same as the default.
        """
        unsupported = sorted(k for k, v in tl_kwargs.items() if not _tl_default(k, v))
        if unsupported:
            raise ValueError(
                f"HookedMaira2.from_pretrained does not support the TransformerLens option(s) "
                f"{unsupported}; supported: fold_ln, center_writing_weights, center_unembed, "
                "fold_value_biases, refactor_factored_attn_matrices, default_prepend_bos, "
                "default_padding_side, dtype, device, tokenizer"
            )
        if isinstance(dtype, str):
            dtype = _parse_dtype(dtype)
        folder = resolve_checkpoint(path)
        config = read_config(folder)
        files = weight_files(folder)
        if tokenizer is None and load_tokenizer:
            from sae_lens_maira.processing.tokenizer import load_tokenizer as _load_tok

            try:
                tokenizer = _load_tok(folder)
            except ValueError as err:
                raise ValueError(
                    f"{err}. Pass tokenizer=... (e.g. small_preset_tokenizer() for the small preset) "
                    "or load_tokenizer=False to load the weights without one"
                ) from err
        device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with torch.device("meta"):
            model = cls(config, None, device=device, dtype=dtype, move_to_device=False)
        model = model.to_empty(device=device)
        model._reset_buffers()
        model._load_checkpoint_tensors(files, dtype)
        if tokenizer is not None:
            from sae_lens_maira.processing.tokenizer import check_tokenizer

            check_tokenizer(tokenizer, source=f"the tokenizer of {folder}")
            model.set_tokenizer(tokenizer, default_padding_side=default_padding_side)
        if default_prepend_bos is not None:
            model.cfg.default_prepend_bos = default_prepend_bos
        model.image_preprocessor = _folder_image_preprocessor(folder, config)
        if fold_ln or center_writing_weights or center_unembed or fold_value_biases or refactor_factored_attn_matrices:
            model.process_weights_(
                fold_ln=fold_ln,
                center_writing_weights=center_writing_weights,
                center_unembed=center_unembed,
                fold_value_biases=fold_value_biases,
                refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            )
        model.eval()
        return model

    @classmethod
    def from_pretrained_no_processing(  # type: ignore[override]
        cls,
        path: str | Path,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = False,
        **kwargs: Any,
    ) -> HookedMaira2:
        """TransformerLens's name for loading without weight processing (our default too)."""
        return cls.from_pretrained(
            path,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            fold_value_biases=fold_value_biases,
            **kwargs,
        )

    def process_weights_(  # type: ignore[override]
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = True,
    ) -> None:
        """TransformerLens's in-place weight processing, on the language model only.

        Runs ``HookedTransformer.load_and_process_state_dict`` (TransformerLens's own rules: with
        RMSNorm, ``fold_ln`` folds the norm weights into the next matrices and makes the norms
        ``RMSNormPre``; ``center_writing_weights`` is skipped, since RMSNorm does not remove the
        mean). The vision tower and projector are restored bit for bit afterwards (TransformerLens
        processes in float32), so image tokens embed exactly as before. ``refactor_factored_attn_matrices``
        is refused: with rotary embeddings the QK circuit depends on position.
        """
        if refactor_factored_attn_matrices and self.cfg.positional_embedding_type == "rotary":
            raise ValueError(
                "refactor_factored_attn_matrices is not possible for MAIRA-2: its LLaMA uses rotary "
                "embeddings, so W_Q and W_K cannot be refactored without changing attention; "
                "leave it False (TransformerLens refuses it for rotary models too)"
            )
        if center_writing_weights and self.cfg.normalization_type in ("RMS", "RMSPre"):
            warnings.warn(
                "center_writing_weights has no effect on MAIRA-2: RMSNorm does not subtract the mean, "
                "so TransformerLens leaves the writing weights as they are",
                stacklevel=2,
            )
        state = self.state_dict()
        outside = {k: v.detach().clone() for k, v in state.items() if k.startswith(NON_LM_PREFIXES)}
        self.load_and_process_state_dict(
            state,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
        self.load_state_dict(outside, strict=False)
        self._image_cache.clear()

    def to_tokens(self, input: Any, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """TransformerLens's ``to_tokens``, with a clear error when the model has no tokenizer."""
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer, so it cannot tokenize strings. from_config('maira-2') "
                "comes without one: pass tokenizer=load_tokenizer(<checkpoint folder>) or load the "
                "model with from_pretrained"
            )
        texts = [input] if isinstance(input, str) else list(input)
        if any("<image>" in t for t in texts):
            raise ValueError(
                "a string prompt contains '<image>', which stands for one image's "
                f"{self.n_patches} patch tokens; build image prompts with Maira2Processor "
                "(processor(study) or processor.encode(pieces, images)) and pass its input_ids "
                "with pixel_values"
            )
        return super().to_tokens(input, *args, **kwargs)

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase, default_padding_side=None) -> None:  # type: ignore[override]
        """TransformerLens's ``set_tokenizer``, keeping our tokenizer object when it adds BOS itself.

        TransformerLens otherwise reloads the tokenizer from ``name_or_path`` with
        ``add_bos_token=True``, which fails for tokenizers built in memory.
        """
        keep_tokenizer_on_set(tokenizer)
        super().set_tokenizer(tokenizer, default_padding_side=default_padding_side)

    def _reset_buffers(self) -> None:
        """Recompute the buffers TransformerLens creates at init (they are empty after meta init)."""
        for module in self.modules():
            if isinstance(module, AbstractAttention):
                module.IGNORE = torch.tensor(-torch.inf, device=module.IGNORE.device)
                module.mask = torch.empty((0, 0), dtype=torch.bool, device=module.mask.device)
                if self.cfg.positional_embedding_type == "rotary":
                    n = module.rotary_sin.shape[0]
                    sin, cos = module.calculate_sin_cos_rotary(
                        cast(int, self.cfg.rotary_dim), n, base=rotary_base(module),
                        dtype=self.cfg.dtype,
                    )
                    module.rotary_sin = sin.to(module.rotary_sin.device)
                    module.rotary_cos = cos.to(module.rotary_cos.device)

    def _load_checkpoint_tensors(self, files: list[Path], dtype: torch.dtype) -> None:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        unexpected: list[str] = []
        for raw_key, tensor in iter_tensors(files):
            key = canonical_key(raw_key)
            if IGNORED_KEY.search(key):
                continue
            try:
                converted = list(hub_key_to_tl(key, tensor, self.cfg))
            except KeyError:
                unexpected.append(raw_key)
                continue
            for name, value in converted:
                if name not in params:
                    unexpected.append(raw_key)
                    continue
                target = params[name]
                if tuple(target.shape) != tuple(value.shape):
                    raise ValueError(
                        f"checkpoint tensor {raw_key} has shape {tuple(tensor.shape)}, which does not "
                        f"fit {name} {tuple(target.shape)}; does config.json match the weights?"
                    )
                with torch.no_grad():
                    target.copy_(value.to(dtype))
                loaded.add(name)
        if "unembed.W_U" not in loaded and self.maira_config.text_config.get("tie_word_embeddings"):
            with torch.no_grad():
                params["unembed.W_U"].copy_(params["embed.W_E"].T)
            loaded.add("unembed.W_U")
        missing = [n for n in params if n not in loaded and not ZERO_FILLED.search(n)]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(
                    f"missing weights ({len(missing)}): {missing[:8]}{' ...' if len(missing) > 8 else ''}"
                )
            if unexpected:
                parts.append(
                    f"unexpected weights ({len(unexpected)}): {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
                )
            raise ValueError(
                "the checkpoint does not match MAIRA-2's architecture: "
                + "; ".join(parts)
                + ". Check that the folder holds a complete MAIRA-2 checkpoint and its own config.json"
            )
        with torch.no_grad():
            for name, p in params.items():
                if name not in loaded:
                    p.zero_()

    def save_pretrained(self, folder: str | Path, *, max_shard_size: str | int = "5GB") -> None:
        """Write a checkpoint in the hub layout: config.json, safetensors (+ index), tokenizer and
        ``preprocessor_config.json`` (the loaded one, else RAD-DINO's at the model's image size), so
        ``from_pretrained`` and ``Maira2Processor.from_pretrained`` both read it back."""
        from sae_lens_maira.processing.images import ImagePreprocessor

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        size = self.maira_config.image_size
        preprocessor = self.image_preprocessor or ImagePreprocessor(size=size, crop_size=size)
        preprocessor.save_pretrained(folder)
        if self.tokenizer is None:
            warnings.warn(
                f"{folder} gets no tokenizer (the model has none): pass tokenizer=... when loading it",
                stacklevel=2,
            )
        state = self.checkpoint_state_dict()
        save_state_dict(state, folder, max_shard_size=max_shard_size)
        config = self.maira_config.to_hf_dict()
        config["text_config"].update(hub_text_config_flags(state))
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under MAIRA-2's hub checkpoint names (works on the meta device too)."""
        return tl_to_hub_state_dict(dict(self.state_dict()), self.cfg)

    # ---- images ---------------------------------------------------------------------------------
    @property
    def n_patches(self) -> int:
        return self.maira_config.n_patches

    @property
    def image_token_id(self) -> int:
        return self.maira_config.image_token_id

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels [n, 3, H, W] -> projected image embeddings [n, n_patches, d_model]."""
        check_pixel_values(pixel_values, image_size=self.maira_config.image_size)
        param = self.multi_modal_projector.first_layer.weight
        pixels = pixel_values.to(device=param.device, dtype=param.dtype)
        features = self.vision_tower(pixels).feature_maps[-1]
        if self.maira_config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        features = self.hook_vision_out(features)
        return self.hook_projector_out(self.multi_modal_projector(features))

    def attach_image_bank(self, bank: ImageBank | None) -> None:
        """Let token ids >= d_vocab refer to images of ``bank`` (see :mod:`image_bank`)."""
        self.image_bank = bank
        self._image_cache.clear()

    def _image_modules(self) -> list[torch.nn.Module]:
        return [self.vision_tower, self.hook_vision_out, self.multi_modal_projector,
                self.hook_projector_out]  # fmt: skip

    def _image_path_hooked(self) -> bool:
        """Whether a hook sits on the image path's hook points (a cached embedding would skip
        it). Hooks registered on the tower's own modules are not seen: transformers keeps
        output-capturing hooks there on every model."""
        return has_hooks(self.hook_vision_out) or has_hooks(self.hook_projector_out)

    def _image_path_state(self) -> tuple[Any, ...]:
        """The identity, in-place version, device and dtype of every image-path weight: the
        virtual-image cache holds only embeddings made from the weights as they are now."""
        return tuple(
            (id(p), version(p), p.device, p.dtype)
            for top in self._image_modules()
            for p in (*top.parameters(), *top.buffers())
        )

    def _embed_virtual_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        if self.image_bank is None:
            raise ValueError(
                f"token ids >= d_vocab ({self.cfg.d_vocab}) are virtual image tokens, but no ImageBank "
                "is attached; call model.attach_image_bank(bank) first"
            )
        image_idx, patch_idx = split_virtual_ids(ids, self.cfg.d_vocab, self.n_patches)
        unique = image_idx.unique().tolist()
        use_cache = not torch.is_grad_enabled() and not self._image_path_hooked()
        if use_cache:
            state = self._image_path_state()
            if state != self._image_cache_state:  # weights edited, replaced, moved or cast
                self._image_cache.clear()
                self._image_cache_state = state
        cached = {i: self._image_cache[i] for i in unique if use_cache and i in self._image_cache}
        todo = [i for i in unique if i not in cached]
        fresh: dict[int, torch.Tensor] = {}
        if todo:
            feats = self.encode_images(self.image_bank.pixel_values(todo))
            fresh = dict(zip(todo, feats))
        # Build this pass's table before touching the cache: eviction may only drop images this
        # pass does not use, however many distinct images it references.
        table = torch.stack([fresh[i] if i in fresh else cached[i] for i in unique])
        if use_cache:
            for i in unique:  # least recently used first out
                self._image_cache[i] = fresh[i] if i in fresh else cached[i]
                self._image_cache.move_to_end(i)
            while len(self._image_cache) > self.image_cache_size:
                self._image_cache.popitem(last=False)
        lookup = {i: j for j, i in enumerate(unique)}
        rows = torch.tensor([lookup[i] for i in image_idx.tolist()], device=table.device)
        return table[rows, patch_idx.to(table.device)]

    # ---- forward --------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self,
        input: Any,
        *,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """TransformerLens's forward plus ``pixel_values`` ([n_images, 3, H, W], in order of appearance).

        ``image_embeds`` may replace ``pixel_values`` with already projected features (e.g. reused
        across a steering sweep). Ids marked outside an SAE's selection (:mod:`position_marks`)
        run as their plain ids.
        """
        if kwargs.get("start_at_layer") is not None:
            return super().forward(input, **kwargs)
        if isinstance(input, (str, list)) and (
            pixel_values is not None or image_embeds is not None
        ):
            input = self.to_tokens(
                input, prepend_bos=kwargs.get("prepend_bos", True), padding_side="left"
            )
        if isinstance(input, torch.Tensor):
            if input.ndim == 1:
                input = input[None]
            input = strip_marks(input)  # positions marked outside an SAE's selection run as usual
            self._check_inputs(input, pixel_values, image_embeds, kwargs)
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        with self.embed.images(image_embeds):
            return super().forward(input, **kwargs)

    def _check_inputs(
        self,
        tokens: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> None:
        """The forward's input check (:mod:`validation`); ``encode_images`` checks pixels again
        because the image bank reaches it without a forward."""
        check_token_ids(tokens)
        check_image_runs(tokens, self.image_token_id, self.n_patches)
        if pixel_values is not None:
            check_pixel_values(pixel_values, image_size=self.maira_config.image_size)
        mask = kwargs.get("attention_mask")
        if mask is not None and tuple(mask.shape) != tuple(tokens.shape):
            raise ModelInputError(
                f"attention_mask shape {tuple(mask.shape)} does not match input_ids shape {tuple(tokens.shape)}"
            )
        cache = kwargs.get("past_kv_cache")
        offset = cache[0].past_keys.shape[1] if cache is not None else 0
        if offset + tokens.shape[1] > self.cfg.n_ctx:
            raise ModelInputError(
                f"the sequence is {offset + tokens.shape[1]} tokens long but MAIRA-2's context is "
                f"{self.cfg.n_ctx} tokens; use fewer images or a shorter prior report"
            )
        n_image_tokens = int((tokens == self.image_token_id).sum())
        n_given = None
        if pixel_values is not None:
            n_given = int(pixel_values.shape[0])
        elif image_embeds is not None:
            n_given = int(image_embeds.shape[0])
        if n_given is None:
            if n_image_tokens and cache is None:
                raise ModelInputError(
                    f"input_ids contain {n_image_tokens} image tokens but no pixel_values were given"
                )
            return
        check_image_count(tokens, self.image_token_id, self.n_patches, n_given)

    @torch.no_grad()
    def run_to_hook(self, hook_name: str, input: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Activations at one hook, running only the blocks it needs (no later blocks, no unembedding)."""
        layer = hook_layer(hook_name)
        _, cache = self.run_with_cache(
            input.to(self.cfg.device),
            names_filter=[hook_name],
            stop_at_layer=None if layer is None else layer + 1,
            **kwargs,
        )
        return cache[hook_name]

    def loss_fn(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        attention_mask=None,
        per_token: bool = False,
    ):  # type: ignore[override]
        """Next-token loss; virtual image ids count as the image token they stand for."""
        tokens = tokens.masked_fill(tokens >= self.cfg.d_vocab, self.image_token_id)
        return super().loss_fn(logits, tokens, attention_mask, per_token)

    # ---- generation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(  # type: ignore[override]
        self,
        input: Any = "",
        max_new_tokens: int = 10,
        *,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = False,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        return_type: Literal["tokens", "str", "input"] = "input",
        verbose: bool = False,
        **unused: Any,
    ) -> Any:
        """Greedy (default, as MAIRA-2 uses) or sampled generation with images and a KV cache.

        Takes TransformerLens's arguments. As in TransformerLens, batches are left padded
        (``padding_side`` is accepted; lists of strings are always padded on the left) and, without
        ``attention_mask``, the mask is inferred from the leading pad tokens exactly as ``forward``
        infers it, so a padded batch generates what each row generates alone. ``prepend_bos``
        applies to string input (default: the model's ``default_prepend_bos``).

        Returns the prompt followed by the new tokens (``"tokens"``), or the generated text
        (``"str"``; one string per prompt). Deliberate difference from TransformerLens: ``"str"``
        holds only the completion, not the prompt, because a MAIRA-2 prompt decodes to 1369
        ``<image>`` strings per image and the report is what callers want; decode
        ``return_type="tokens"`` for prompt plus completion. Finished rows are padded with EOS.
        Hooks added with ``hooks()`` / ``add_hook`` fire on the prompt and on every generated
        position.
        """
        if unused:
            raise TypeError(f"unsupported generate() arguments: {sorted(unused)}")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        if return_type == "input":
            return_type = "str" if isinstance(input, (str, list)) else "tokens"
        bos = self.cfg.default_prepend_bos if prepend_bos is None else bool(prepend_bos)
        if isinstance(input, (str, list)):
            tokens = self.to_tokens(input, prepend_bos=bos, padding_side="left")
        else:
            tokens = input if input.ndim == 2 else input[None]
        tokens = tokens.to(self.cfg.device)
        B = tokens.shape[0]
        if attention_mask is None:
            attention_mask = self._infer_left_padding_mask(tokens, bos)
        mask = attention_mask.to(self.cfg.device)
        self._check_inputs(tokens, pixel_values, image_embeds, {"attention_mask": mask})
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        stop = (
            []
            if not stop_at_eos
            else _as_list(eos_token_id if eos_token_id is not None else self._eos_id())
        )
        pad = stop[0] if stop else 0
        finished = torch.zeros(B, dtype=torch.bool, device=tokens.device)
        new_tokens: list[torch.Tensor] = []
        cache = (
            PreallocatedKVCache.init_preallocated(
                self.cfg, self.cfg.device, B, tokens.shape[1] + max_new_tokens
            )
            if use_past_kv_cache
            else None
        )
        # weights stored in the order the forward reads them (no per-token copies; same values)
        fused = all(
            not getattr(b.attn, "_needs_pattern", lambda: True)() for b in self.blocks
        )
        with generation_weight_layout(self, attention=fused):
            logits = self(tokens, attention_mask=mask, past_kv_cache=cache, image_embeds=image_embeds)
            prompt_embeds = None
            for step in tqdm(range(max_new_tokens), disable=not verbose, desc="generate"):
                final = logits[:, -1, :].float()
                if do_sample:
                    nxt = sample_logits(final, top_k=top_k, top_p=top_p, temperature=temperature)
                else:
                    nxt = final.argmax(-1)
                nxt = nxt.to(tokens.device).masked_fill(finished, pad)
                new_tokens.append(nxt)
                if stop:
                    finished |= torch.isin(nxt, torch.tensor(stop, device=nxt.device))
                    if bool(finished.all()):
                        break
                if step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
                if cache is not None:
                    logits = self(nxt[:, None], attention_mask=mask[:, -1:], past_kv_cache=cache)
                else:
                    if prompt_embeds is None:
                        prompt_embeds = self.embed(tokens, image_embeds)
                    embeds = torch.cat([prompt_embeds, self.embed(torch.stack(new_tokens, 1))], dim=1)
                    logits = self(self.hook_embed(embeds), start_at_layer=0, attention_mask=mask)
        generated = torch.stack(new_tokens, dim=1) if new_tokens else tokens[:, :0]
        if return_type == "str":
            assert self.tokenizer is not None, "return_type='str' needs a tokenizer"
            texts = [
                str(self.tokenizer.decode(row.tolist(), skip_special_tokens=True)).strip()
                for row in generated
            ]
            return texts[0] if isinstance(input, str) else texts
        return torch.cat([tokens, generated], dim=1)

    def _infer_left_padding_mask(self, tokens: torch.Tensor, prepend_bos: bool) -> torch.Tensor:
        """The mask ``forward`` infers for left-padded tokens: leading pad ids are not attended."""
        if self.tokenizer is None or self.tokenizer.pad_token_id is None:
            return torch.ones_like(tokens)
        from transformer_lens.utils import get_attention_mask

        return get_attention_mask(self.tokenizer, tokens, prepend_bos, padding_side="left")

    def _eos_id(self) -> int:
        if self.tokenizer is None or self.tokenizer.eos_token_id is None:
            raise ValueError("stop_at_eos needs eos_token_id=... when the model has no tokenizer")
        return int(cast(int, self.tokenizer.eos_token_id))

    # ---- bookkeeping ----------------------------------------------------------------------------
    def n_checkpoint_params(self) -> int:
        """Parameters MAIRA-2's checkpoint holds (TransformerLens's zero bias slots excluded)."""
        return sum(t.numel() for t in self.checkpoint_state_dict().values())


def _folder_image_preprocessor(folder: Path, config: Maira2Config) -> ImagePreprocessor | None:
    """The folder's preprocessor config, checked against the model's image size (None if absent)."""
    if not (folder / PREPROCESSOR_CONFIG).is_file():
        return None
    preprocessor = ImagePreprocessor.from_pretrained(folder)
    if preprocessor.crop_size != config.image_size:
        raise ValueError(
            f"{folder / PREPROCESSOR_CONFIG} crops images to {preprocessor.crop_size} px but the "
            f"model's vision tower takes {config.image_size} px (config.json vision_config.image_size); "
            "fix one of the two files"
        )
    return preprocessor


#: State-dict prefixes outside TransformerLens's language model (never weight-processed).
NON_LM_PREFIXES = ("vision_tower.", "multi_modal_projector.")

#: TransformerLens from_pretrained options accepted only at their default (no effect here).
_TL_DEFAULTS: dict[str, Any] = {
    "move_to_device": True,
    "n_devices": 1,
    "checkpoint_index": None,
    "checkpoint_value": None,
    "checkpoint_label": None,
    "hf_model": None,
    "first_n_layers": None,
    "n_ctx": None,
}


def _tl_default(key: str, value: Any) -> bool:
    return key in _TL_DEFAULTS and value == _TL_DEFAULTS[key]


def _parse_dtype(name: str) -> torch.dtype:
    """TransformerLens-style dtype strings ("float32", "bfloat16", "torch.float16")."""
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype {name!r} is not a torch floating-point dtype (e.g. 'float32', 'bfloat16')")
    return dtype


def hook_layer(hook_name: str) -> int | None:
    """Block index of a ``blocks.L.*`` hook (None for hooks before the first block)."""
    parts = hook_name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        return int(parts[1])
    return None


def _as_list(x: int | list[int]) -> list[int]:
    return [int(x)] if isinstance(x, int) else [int(i) for i in x]
