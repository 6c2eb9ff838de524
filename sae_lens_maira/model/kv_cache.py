"""A key-value cache for generation that writes into buffers instead of concatenating.

TransformerLens's cache concatenates every layer's keys and values with the new token's at each
generated token, copying the whole cache (quadratic in the report's length), and keeps keys
before the rotary embedding, so its attention rotates every cached key again at each token. For
the small model those copies and rotations cost more than the token's matmuls.
:class:`PreallocatedKVCache` is a drop-in for ``TransformerLensKeyValueCache`` in
``HookedMaira2.generate``: each layer's entry holds buffers sized for the prompt plus the new
tokens (grown by doubling if a caller goes past them), ``past_keys`` / ``past_values`` are views
of the filled part, and it also keeps the keys after the rotary embedding for
:class:`~sae_lens_maira.model.attention.FusedAttention`. The values computed are the same bit for
bit: a view holds the same numbers as the concatenation, and the rotation is elementwise with each
key's position fixed once it is cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

if TYPE_CHECKING:
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry


class PreallocatedKVEntry:
    """One layer's keys and values in preallocated ``[batch, capacity, heads, d_head]`` buffers."""

    def __init__(
        self, batch_size: int, capacity: int, n_heads: int, d_head: int,
        device: torch.device | str | None, dtype: torch.dtype,
    ) -> None:  # fmt: skip
        shape = (batch_size, max(1, capacity), n_heads, d_head)
        self._keys = torch.empty(shape, device=device, dtype=dtype)
        self._values = torch.empty(shape, device=device, dtype=dtype)
        self._rotated: torch.Tensor | None = None
        self.length = 0
        self.rotated_length = 0
        self.frozen = False

    @property
    def past_keys(self) -> torch.Tensor:
        return self._keys[:, : self.length]

    @property
    def past_values(self) -> torch.Tensor:
        return self._values[:, : self.length]

    @staticmethod
    def _fit(buffer: torch.Tensor, end: int, keep: int) -> torch.Tensor:
        if end <= buffer.shape[1]:
            return buffer
        grown = buffer.new_empty((buffer.shape[0], max(end, 2 * buffer.shape[1]), *buffer.shape[2:]))
        grown[:, :keep] = buffer[:, :keep]
        return grown

    def append(
        self, new_keys: torch.Tensor, new_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values after the cached ones; views of all of them."""
        start, end = self.length, self.length + new_keys.shape[1]
        self._keys = self._fit(self._keys, end, start)
        self._values = self._fit(self._values, end, start)
        self._keys[:, start:end] = new_keys
        self._values[:, start:end] = new_values
        if not self.frozen:
            self.length = end
        return self._keys[:, :end], self._values[:, :end]

    def rotated_keys(
        self, offset: int, rotate_new: Callable[[], torch.Tensor],
        rotate_all: Callable[[], torch.Tensor],
    ) -> torch.Tensor:  # fmt: skip
        """All keys after the rotary embedding, for a pass whose new keys start at ``offset``.

        ``rotate_new()`` rotates the pass's new keys, ``rotate_all()`` every key; the latter is
        used when the kept rotated keys do not cover the ``offset`` cached ones (e.g. the eager
        attention, which rotates keys itself, filled part of the cache).
        """
        if self._rotated is not None and self.rotated_length == offset:
            new = rotate_new()
            end = offset + new.shape[1]
            self._rotated = self._fit(self._rotated, end, offset)
            self._rotated[:, offset:end] = new
        else:
            rotated = rotate_all()
            end = rotated.shape[1]
            if self._rotated is None or self._rotated.shape[1] < end:
                self._rotated = torch.empty(
                    (rotated.shape[0], max(end, self._keys.shape[1]), *rotated.shape[2:]),
                    device=rotated.device, dtype=rotated.dtype,
                )  # fmt: skip
            self._rotated[:, :end] = rotated
        if not self.frozen:
            self.rotated_length = end
        return self._rotated[:, :end]


class PreallocatedKVCache(TransformerLensKeyValueCache):
    """``TransformerLensKeyValueCache`` with :class:`PreallocatedKVEntry` entries."""

    @classmethod
    def init_preallocated(
        cls, cfg, device: torch.device | str | None, batch_size: int, capacity: int
    ) -> PreallocatedKVCache:
        n_heads = cfg.n_key_value_heads if cfg.n_key_value_heads is not None else cfg.n_heads
        entries = [
            PreallocatedKVEntry(batch_size, capacity, n_heads, cfg.d_head, device, cfg.dtype)
            for _ in range(cfg.n_layers)
        ]
        mask = torch.empty((batch_size, 0), device=device, dtype=torch.int)
        # duck-typed entries (TransformerLens's cache only calls their ``append``), hence the cast
        return cls(entries=cast("list[TransformerLensKeyValueCacheEntry]", entries),
                   previous_attention_mask=mask)  # fmt: skip
