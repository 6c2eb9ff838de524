"""Clamp one SAE feature's activation where the model decides a finding, not add a fixed vector.

Adding ``c * direction`` at every generated token pushes the finding's *word* into the text
("effusion, effusion, ..."). Clamping acts on the feature instead: at the chosen positions the
residual's own activation ``a`` of the feature (the SAE's encoder, thresholds included) is read
and the residual moved by ``(value - a) * W_dec[f]``, so the feature reads ``value`` there and
everything else in the residual (other features, the SAE's error) is untouched. ``value = 0``
suppresses the feature; a value at the scale it takes on studies with the finding stands in for
the finding. Acting on the image tokens (where a detector feature reads what the picture shows)
and optionally the first report tokens lets the model write its own sentence about it.

In the demo's small model the layers after ``blocks.1`` hardly read the image tokens (clamping a
feature there to 1000, ~18x the residual's norm, moved the next-token logits by 0.6): the image
reaches the report positions in the first layers, and what a report states is decided as it is
written. ``boundaryN`` clamps at the single generated token that ends the N-th sentence, where the
model picks what the next sentence reports: the report goes on with its own sentences instead of
the feature's word being forced into every position ("The heart is normal Bilateral small ...").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sae_lens_maira.activations.selection import resolve_policy, selection_mask
from sae_lens_maira.processing.roles import Role

#: Prompt positions a clamp can act on, by name (the image tokens are where a finding is read).
PROMPT_POSITIONS = {
    "image": ("image_first", "image_middle", "image_last"),
    "image_ends": ("image_first", "image_last"),
    "prompt": tuple(r.name.lower() for r in Role if r not in (Role.PAD, Role.REPORT)),
    "none": (),
}


def parse_where(where: str) -> tuple[str, int, int]:
    """``"image+generated"`` -> ``("image", -1, 0)``: prompt positions (a :data:`PROMPT_POSITIONS`
    key), generated positions (``generated``: all, ``firstN``: the first N) and a sentence
    boundary (``boundaryN``: the generated token that ends the N-th sentence; 0: none), joined by
    ``+``."""
    prompt, generated, boundary = "none", 0, 0
    for part in str(where).split("+"):
        part = part.strip()
        if part in PROMPT_POSITIONS and prompt == "none":
            prompt = part
        elif part == "generated" and generated == 0:
            generated = -1
        elif part.startswith("first") and part[5:].isdigit() and generated == 0:
            generated = int(part[5:])
        elif part.startswith("boundary") and part[8:].isdigit() and int(part[8:]) > 0 and boundary == 0:
            boundary = int(part[8:])
        else:
            raise ValueError(
                f"can't read {where!r} as clamp positions: join one of {sorted(PROMPT_POSITIONS)} "
                "and/or 'generated' / 'firstN' / 'boundaryN' with '+', e.g. 'image+generated'"
            )
    if prompt == "none" and generated == 0 and boundary == 0:
        raise ValueError(f"{where!r} names no position to clamp at")
    return prompt, generated, boundary


def sentence_end_ids(tokenizer: Any) -> list[int]:
    """Vocabulary ids whose text ends a sentence (ends with ``.``, e.g. ``"▁normal."``)."""
    ids = [int(i) for t, i in tokenizer.get_vocab().items()
           if tokenizer.convert_tokens_to_string([t]).strip().endswith(".")]  # fmt: skip
    if not ids:
        raise ValueError("no token of the vocabulary ends a sentence; a boundary clamp needs one")
    return sorted(ids)


@dataclass
class FeatureClamp:
    """A TransformerLens forward hook that clamps feature ``feature`` of ``sae`` to ``value``.

    ``prompt_positions``: a key of :data:`PROMPT_POSITIONS` or a list of role names (prompt
    positions whose role is in it are clamped); ``generated``: how many generated positions are
    clamped as well (0: none, -1: all). ``value=None`` leaves the residual alone (the unsteered
    baseline through the same code path). ``boundary``: also clamp at the generated token that
    ends the ``boundary``-th sentence (a token of ``end_ids``), which needs the generated tokens:
    :func:`~sae_lens_maira.steering.hooks.steering` feeds them to :meth:`watch_tokens`. Call
    :meth:`prepare` with each batch before generating (it reads the prompt's roles).
    """

    sae: Any
    feature: int
    value: float | None
    prompt_positions: str | Sequence[str] = "image"
    generated: int = 0
    boundary: int = 0
    end_ids: Sequence[int] = ()
    _prompt_mask: torch.Tensor | None = field(default=None, init=False, repr=False)
    _seen: int = field(default=0, init=False, repr=False)
    _tokens: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= int(self.feature) < int(self.sae.cfg.d_sae):
            raise ValueError(
                f"feature {self.feature} is outside the SAE's {self.sae.cfg.d_sae} latents"
            )
        names = self.prompt_positions
        if isinstance(names, str):
            if names not in PROMPT_POSITIONS:
                raise ValueError(
                    f"prompt_positions must be one of {sorted(PROMPT_POSITIONS)} or a list of "
                    f"roles, not {names!r}"
                )
            names = PROMPT_POSITIONS[names]
        self._roles = resolve_policy(list(names)) if names else frozenset()
        if not self._roles and self.generated == 0 and self.boundary == 0:
            raise ValueError("a clamp that acts on no prompt and no generated position does nothing")
        if self.boundary < 0:
            raise ValueError(f"boundary must be 0 (none) or a sentence number >= 1, not {self.boundary}")
        if self.boundary and not self.end_ids:
            raise ValueError("a boundary clamp needs end_ids, the tokens that end a sentence")
        self._end_ids = torch.tensor(sorted({int(i) for i in self.end_ids}), dtype=torch.long)

    @classmethod
    def at(cls, sae: Any, feature: int, value: float | None, where: str,
           tokenizer: Any = None) -> FeatureClamp:  # fmt: skip
        """A clamp at positions named as :func:`parse_where` reads them (``boundaryN`` needs the
        ``tokenizer``, for the tokens that end a sentence)."""
        prompt, generated, boundary = parse_where(where)
        end_ids: list[int] = []
        if boundary:
            if tokenizer is None:
                raise ValueError(f"clamping at {where!r} needs the tokenizer (sentence ends)")
            end_ids = sentence_end_ids(tokenizer)
        return cls(sae, feature, value, prompt_positions=prompt, generated=generated,
                   boundary=boundary, end_ids=end_ids)  # fmt: skip

    def prepare(self, batch: Any) -> None:
        """Take the positions to clamp from a processor batch (its ``roles``, left-padded)."""
        roles = batch.roles
        self._prompt_mask = (
            selection_mask(roles, sorted(self._roles)) if self._roles else torch.zeros_like(roles, dtype=torch.bool)
        )  # fmt: skip
        self._seen = 0
        self._tokens = None

    def reset(self) -> None:
        self._seen = 0
        self._tokens = None

    def watch_tokens(self, tokens: torch.Tensor) -> None:
        """Record the generated tokens from the ids the model embeds: the prompt (first call)
        starts afresh, one new id per call (KV cache) is appended, and a call with every
        generated id so far (generation without the cache) replaces them."""
        if not self.boundary or tokens.ndim != 2:
            return
        tokens = tokens.detach().cpu().long()
        done = 0 if self._tokens is None else self._tokens.shape[1]
        if self._prompt_mask is not None and tokens.shape[1] == self._prompt_mask.shape[1] and done == 0:
            self._tokens = tokens[:, :0]
        elif self._tokens is not None and tokens.shape[1] == 1:
            self._tokens = torch.cat([self._tokens, tokens], dim=1)
        elif self._tokens is not None and tokens.shape[1] == done + 1:
            self._tokens = tokens
        else:
            self._tokens = tokens[:, :0]

    def _boundary_mask(self, gen: torch.Tensor, batch: int) -> torch.Tensor:
        """[batch, len(gen)]: whether generated position ``gen`` holds the token that ends the
        ``boundary``-th sentence of its row."""
        out = torch.zeros(batch, len(gen), dtype=torch.bool)
        if self._tokens is None or self._tokens.shape[1] == 0:
            return out
        ends = torch.isin(self._tokens, self._end_ids)
        hit = ends & (ends.cumsum(dim=1) == self.boundary)
        ok = (gen >= 0) & (gen < hit.shape[1])
        if bool(ok.any()):
            out[:, ok] = hit[:, gen[ok]]
        return out

    @torch.no_grad()
    def __call__(self, resid: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if self._prompt_mask is None:
            raise RuntimeError("call FeatureClamp.prepare(batch) before generating")
        n = resid.shape[1]
        start = 0 if (n > 1 or self._seen == 0) else self._seen
        self._seen = start + n
        if self.value is None:
            return resid
        prompt_len = self._prompt_mask.shape[1]
        pos = torch.arange(start, start + n)
        where = torch.zeros(resid.shape[0], n, dtype=torch.bool)
        in_prompt = pos < prompt_len
        if bool(in_prompt.any()):
            where[:, in_prompt] = self._prompt_mask[:, pos[in_prompt]].cpu()
        gen = pos - prompt_len
        if self.generated:
            limit = gen >= 0 if self.generated < 0 else (gen >= 0) & (gen < self.generated)
            where[:, limit] = True
        if self.boundary:
            where |= self._boundary_mask(gen, resid.shape[0])
        if not bool(where.any()):
            return resid
        where = where.to(resid.device)
        param = next(self.sae.parameters())
        x = resid[where]
        act = self.sae.encode(x.to(param.dtype))[:, self.feature].to(resid.dtype)
        w_dec = self.sae.W_dec[self.feature].to(device=resid.device, dtype=resid.dtype)
        out = resid.clone()
        out[where] = x + (float(self.value) - act)[:, None] * w_dec
        return out
