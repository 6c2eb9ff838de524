"""Studies -> model inputs: token ids with image placeholders expanded, pixels, and token roles.

``Maira2Processor`` renders MAIRA-2's prompt, tokenizes it with the checkpoint's tokenizer,
expands every ``<image>`` into one id per image patch (1369 for MAIRA-2), preprocesses the images
in order of appearance and labels every position with its :class:`Role`, image slot and patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sae_lens_maira.data.study import ImageRef, Study
from sae_lens_maira.processing.grounding import GroundedPhrase, parse_grounded_output
from sae_lens_maira.processing.images import PREPROCESSOR_CONFIG, ImagePreprocessor, load_image
from sae_lens_maira.processing.prompt import (
    ChatFormat,
    Piece,
    findings_user_pieces,
    phrase_grounding_user_pieces,
    system_pieces,
)
from sae_lens_maira.processing.roles import Role
from sae_lens_maira.processing.tokenizer import IMAGE_TOKEN, check_tokenizer, load_tokenizer
from sae_lens_maira.processing.validation import (
    ModelInputError,
    check_image_count,
    check_model_batch,
    check_pixel_values,
)

Task = Literal["findings", "grounded_findings", "phrase_grounding"]


@dataclass
class EncodedPrompt:
    """One prompt, unpadded: ids with images expanded, and per-position labels."""

    input_ids: list[int]
    roles: list[int]
    image_slot: list[int]
    patch_index: list[int]
    images: list[ImageRef]
    pixel_values: torch.Tensor | None = (
        None  # preprocessed images, when prepared ahead of collation
    )

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Maira2Inputs:
    """A padded batch ready for ``HookedMaira2``; labels ride along for filtering and dashboards."""

    input_ids: torch.Tensor  # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos]
    pixel_values: torch.Tensor  # [n_images, 3, H, W] in order of appearance
    roles: torch.Tensor  # [batch, pos] Role values
    image_slot: torch.Tensor  # [batch, pos] 0 frontal, 1 lateral, 2 prior, -1 text
    patch_index: torch.Tensor  # [batch, pos] row-major patch, -1 text
    n_images: list[int] = field(default_factory=list)
    study_ids: list[str] = field(default_factory=list)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``model(**inputs.model_inputs())`` and ``generate``."""
        return {
            "input": self.input_ids,
            "attention_mask": self.attention_mask,
            "pixel_values": self.pixel_values,
        }

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Maira2Inputs:
        move = {
            k: getattr(self, k).to(device)
            for k in ("input_ids", "attention_mask", "roles", "image_slot", "patch_index")
        }
        pixels = self.pixel_values.to(device=device, dtype=dtype or self.pixel_values.dtype)
        return Maira2Inputs(
            pixel_values=pixels, n_images=self.n_images, study_ids=self.study_ids, **move
        )


class Maira2Processor:
    """MAIRA-2's processor: prompt template, tokenizer, image preprocessing and token roles."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: ImagePreprocessor | None = None,
        *,
        patch_size: int = 14,
        max_length: int | None = None,
        chat_format: ChatFormat | None = None,
    ) -> None:
        check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.image_processor = image_processor or ImagePreprocessor()
        if self.image_processor.crop_size % patch_size:
            raise ValueError(
                f"crop size {self.image_processor.crop_size} is not a multiple of the patch size {patch_size}"
            )
        self.patch_size = patch_size
        self.grid = self.image_processor.crop_size // patch_size
        self.n_patches = self.grid * self.grid
        self.max_length = max_length
        self.chat_format = chat_format or ChatFormat()
        self.image_token_id = int(cast(int, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Maira2Processor:
        """Tokenizer, preprocessor config and patch size/context from a checkpoint folder (or a
        hub repo id already in the local cache)."""
        from sae_lens_maira.checkpoint_config import CONFIG_NAME, read_config, resolve_checkpoint

        folder = resolve_checkpoint(folder)
        tokenizer = load_tokenizer(folder)
        patch_size, max_length, image_size = 14, None, None
        if (folder / CONFIG_NAME).is_file():
            cfg = read_config(folder)
            patch_size, max_length, image_size = cfg.patch_size, cfg.n_ctx, cfg.image_size
        if (folder / PREPROCESSOR_CONFIG).is_file():
            image_processor = ImagePreprocessor.from_pretrained(folder)
            if image_size is not None and image_processor.crop_size != image_size:
                raise ValueError(
                    f"{folder / PREPROCESSOR_CONFIG} crops images to {image_processor.crop_size} px "
                    f"but config.json's vision tower takes {image_size} px; fix one of the two files"
                )
        else:  # RAD-DINO's preprocessing at the model's own image size
            size = image_size or ImagePreprocessor.crop_size
            image_processor = ImagePreprocessor(size=size, crop_size=size)
        return cls(tokenizer, image_processor, patch_size=patch_size, max_length=max_length)

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(str(folder))
        self.image_processor.save_pretrained(folder)

    # ---- prompts -------------------------------------------------------------------------------
    def findings_pieces(self, study: Study, *, grounded: bool = False) -> list[Piece]:
        user = findings_user_pieces(
            has_lateral=study.lateral is not None,
            has_prior=study.prior_frontal is not None,
            indication=study.indication,
            technique=study.technique,
            comparison=study.comparison,
            prior_report=study.prior_report,
            grounded=grounded,
        )
        return self._wrap(user)

    def phrase_grounding_pieces(self, phrase: str) -> list[Piece]:
        return self._wrap(phrase_grounding_user_pieces(phrase))

    def _wrap(self, user: list[Piece]) -> list[Piece]:
        if getattr(self.tokenizer, "chat_template", None):
            return _pieces_from_chat_template(self.tokenizer, system_pieces(), user)
        return self.chat_format.wrap(system_pieces(), user)

    # ---- encoding ------------------------------------------------------------------------------
    def encode(
        self, pieces: Sequence[Piece], images: Sequence[ImageRef], *, report: str | None = None
    ) -> EncodedPrompt:
        """Tokenize pieces (plus an optional target report and EOS) and expand image placeholders."""
        n_placeholders = sum(p.is_image for p in pieces)
        if n_placeholders != len(images):
            raise ValueError(
                f"the prompt has {n_placeholders} image placeholders but {len(images)} images were given"
            )
        pieces = list(pieces)
        if report is not None:
            pieces.append(Piece(" " + report.strip(), Role.REPORT))
        text_parts, char_roles, image_slots = [], [], []
        for p in pieces:
            text = IMAGE_TOKEN if p.is_image else p.text
            assert text is not None
            if not p.is_image and IMAGE_TOKEN in text:
                raise ValueError(
                    f"prompt text may not contain the literal {IMAGE_TOKEN!r} token: {text[:80]!r}"
                )
            text_parts.append(text)
            char_roles.append(np.full(len(text), int(p.role), dtype=np.int64))
            if p.is_image:
                image_slots.append(p.image_slot)
        text = "".join(text_parts)
        roles_by_char = np.concatenate(char_roles) if char_roles else np.zeros(0, dtype=np.int64)
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids: list[int] = []
        roles: list[int] = []
        slots: list[int] = []
        patches: list[int] = []
        image_iter = iter(image_slots)
        for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            if tok == self.image_token_id:
                slot = next(image_iter)
                run = [Role.IMAGE_MIDDLE] * self.n_patches
                run[0] = Role.IMAGE_FIRST
                run[-1] = Role.IMAGE_LAST
                ids += [self.image_token_id] * self.n_patches
                roles += [int(r) for r in run]
                slots += [slot] * self.n_patches
                patches += list(range(self.n_patches))
                continue
            role = int(roles_by_char[end - 1]) if end > start else int(Role.BOILERPLATE)
            ids.append(int(tok))
            roles.append(role)
            slots.append(-1)
            patches.append(-1)
        if report is not None:
            ids.append(int(cast(int, self.tokenizer.eos_token_id)))
            roles.append(int(Role.REPORT))
            slots.append(-1)
            patches.append(-1)
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(
                f"the prompt is {len(ids)} tokens long, more than the model's context of "
                f"{self.max_length}; shorten the prior report or drop an image"
            )
        return EncodedPrompt(ids, roles, slots, patches, list(images))

    def encode_study(
        self,
        study: Study,
        *,
        task: Task = "findings",
        with_report: bool = False,
        phrase: str | None = None,
    ) -> EncodedPrompt:
        if task == "phrase_grounding":
            if phrase is None:
                raise ValueError("task='phrase_grounding' needs phrase=...")
            return self.encode(self.phrase_grounding_pieces(phrase), [study.frontal])
        if with_report and not study.findings:
            raise ValueError(f"study {study.study_id} has no findings text to append as the report")
        pieces = self.findings_pieces(study, grounded=task == "grounded_findings")
        return self.encode(pieces, study.images, report=study.findings if with_report else None)

    def __call__(
        self,
        studies: Study | Sequence[Study],
        *,
        task: Task = "findings",
        with_report: bool = False,
        padding_side: Literal["left", "right"] = "left",
    ) -> Maira2Inputs:
        """Encode and pad a batch of studies. Left padding suits generation; right suits training."""
        if isinstance(studies, Study):
            studies = [studies]
        encoded = [self.encode_study(s, task=task, with_report=with_report) for s in studies]
        batch = self.collate(encoded, padding_side=padding_side)
        batch.study_ids = [s.study_id for s in studies]
        return batch

    def collate(
        self, encoded: Sequence[EncodedPrompt], *, padding_side: Literal["left", "right"] = "left"
    ) -> Maira2Inputs:
        """Pad encoded prompts into one batch and preprocess their images in order.

        The batch is checked here (:mod:`validation`), where prompts and pixels enter the model's
        path: empty prompts, image runs per row, pixel dtype, shape, finiteness and range.
        """
        if not encoded:
            raise ModelInputError("cannot collate an empty batch: give at least one prompt")
        for b, e in enumerate(encoded):
            if len(e) == 0:
                raise ModelInputError(
                    f"prompt {b} of the batch is empty (no token ids); encode it with "
                    "processor.encode(...) / encode_study(...)"
                )
        T = max(len(e) for e in encoded)
        pad_id = self.pad_token_id
        B = len(encoded)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        roles = torch.full((B, T), int(Role.PAD), dtype=torch.long)
        slots = torch.full((B, T), -1, dtype=torch.long)
        patches = torch.full((B, T), -1, dtype=torch.long)
        for b, e in enumerate(encoded):
            n = len(e)
            sl = slice(T - n, T) if padding_side == "left" else slice(0, n)
            ids[b, sl] = torch.tensor(e.input_ids)
            mask[b, sl] = 1
            roles[b, sl] = torch.tensor(e.roles)
            slots[b, sl] = torch.tensor(e.image_slot)
            patches[b, sl] = torch.tensor(e.patch_index)
        pixel_values = torch.cat([self._pixels(e, b) for b, e in enumerate(encoded)])
        check_model_batch(  # pixels were checked per prompt above
            ids, None, image_token_id=self.image_token_id, n_patches=self.n_patches
        )
        check_image_count(ids, self.image_token_id, self.n_patches, int(pixel_values.shape[0]))
        return Maira2Inputs(
            ids, mask, pixel_values, roles, slots, patches, [len(e.images) for e in encoded]
        )

    def _pixels(self, encoded: EncodedPrompt, index: int) -> torch.Tensor:
        pixels = encoded.pixel_values
        if pixels is None:
            pixels = self.image_processor(list(encoded.images))
        size = self.image_processor.crop_size
        check_pixel_values(pixels, image_size=size, what=f"pixel_values of prompt {index}")
        if pixels.shape[0] != len(encoded.images):
            raise ModelInputError(
                f"prompt {index} has {len(encoded.images)} images but {pixels.shape[0]} preprocessed "
                "images (pixel_values) were attached to it; prepare them with "
                "processor.image_processor(encoded.images)"
            )
        return pixels

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is not None:
            return int(cast(int, tok.pad_token_id))
        return int(cast(int, tok.unk_token_id if tok.unk_token_id is not None else tok.eos_token_id))

    # ---- outputs -------------------------------------------------------------------------------
    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Decode generated ids, keeping MAIRA-2's object/box tokens, dropping BOS/EOS/pad."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True)).strip()

    def parse_grounded(self, text: str, image: ImageRef | tuple[int, int]) -> list[GroundedPhrase]:
        """Phrases and boxes in the original image's pixel coordinates.

        ``image`` is the original image (or its ``(width, height)``): MAIRA-2's boxes are relative to
        the centre-cropped square, which this maps back.
        """
        if isinstance(image, tuple):
            width, height = image
        else:
            width, height = load_image(image).size
        return parse_grounded_output(text, crop_box=self.image_processor.crop_box(width, height))


def _pieces_from_chat_template(
    tokenizer: PreTrainedTokenizerBase, system: list[Piece], user: list[Piece]
) -> list[Piece]:
    """Render the checkpoint's chat template and recover each piece's span inside it."""

    def content(pieces: list[Piece]) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for p in pieces:
            if p.is_image:
                out.append({"type": "image"})
            elif out and out[-1]["type"] == "text":
                out[-1]["text"] += p.text or ""
            else:
                out.append({"type": "text", "text": p.text or ""})
        return out

    messages = [
        {"role": "system", "content": content(system)},
        {"role": "user", "content": content(user)},
    ]
    rendered = str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    if rendered.count(IMAGE_TOKEN) != sum(p.is_image for p in user):
        raise ValueError(
            "the tokenizer's chat_template does not render one <image> per image item; "
            "remove the chat_template to use the default MAIRA-2 format"
        )
    if rendered.startswith(str(tokenizer.bos_token)):
        rendered = rendered[len(str(tokenizer.bos_token)) :]  # the tokenizer adds BOS itself
    out: list[Piece] = []
    cursor = 0
    for p in [*system, *user]:
        needle = IMAGE_TOKEN if p.is_image else (p.text or "")
        if not needle:
            continue
        at = rendered.find(needle, cursor)
        if at < 0:
            raise ValueError(f"the tokenizer's chat_template dropped prompt text {needle[:60]!r}")
        if at > cursor:
            out.append(Piece(rendered[cursor:at]))
        out.append(p)
        cursor = at + len(needle)
    if cursor < len(rendered):
        out.append(Piece(rendered[cursor:]))
    return out
