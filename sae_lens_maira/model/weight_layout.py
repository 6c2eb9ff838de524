"""Lay weights out in memory as TransformerLens's forward reads them, for generation.

TransformerLens keeps weights as ``[d_in, d_out]`` (``[heads, d_model, d_head]`` for attention)
and, in every forward, builds the ``[d_out, d_in]`` matrix ``F.linear`` wants with
``W.T.contiguous()`` or an ``einops.rearrange``: a copy of every weight of the language model at
every generated token, which for the small model costs about as much as the token's matmuls.
:func:`generation_weight_layout` stores each of those parameters, for the duration of a
``with`` block, as a strided view of a tensor already in the order the forward reads (same
shape, same values), so the copies become no-ops; the matrices ``F.linear`` receives are the
same contiguous tensors as before, so the outputs are the same bit for bit. The parameters'
own tensors are put back on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: parameter name suffix -> permutation of the parameter that the forward makes contiguous
#: (``W.T.contiguous()`` / ``rearrange(W, "h m d -> (h d) m")``). Not W_O: FusedAttention's
#: ``rearrange(W_O, "h d m -> m (h d)")`` is already a view (a transposed matrix), and laying it
#: out contiguously would change which matmul kernel runs, and so the last bits.
_READ_ORDER: dict[str, tuple[int, ...]] = {
    "mlp.W_in": (1, 0),
    "mlp.W_gate": (1, 0),
    "mlp.W_out": (1, 0),
    "unembed.W_U": (1, 0),
    "attn.W_Q": (0, 2, 1),
    "attn.W_K": (0, 2, 1),
    "attn.W_V": (0, 2, 1),
}


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


#: the most memory the re-laid-out copies may take: the originals are kept for the block, so the
#: copies are extra memory for the whole generation (MAIRA-2's 7B would need another 13 GB in
#: bf16, where the per-token copies it saves are a small share of its matmuls)
MAX_EXTRA_BYTES = 1 << 30


@contextmanager
def generation_weight_layout(
    model: torch.nn.Module, *, attention: bool = True, max_extra_bytes: int = MAX_EXTRA_BYTES
) -> Iterator[None]:
    """Within the block, the language model's weights are stored in the order forward reads.

    ``attention=False`` leaves the attention weights alone (TransformerLens's eager attention,
    used when a pattern is hooked, reads them through einsums instead). When the copies would
    take more than ``max_extra_bytes``, nothing is re-laid out (same outputs, the usual speed).
    """
    chosen: list[tuple[torch.nn.Parameter, tuple[int, ...]]] = []
    for name, param in model.named_parameters():
        if name.startswith(("vision_tower.", "multi_modal_projector.")):
            continue
        perm = next((p for s, p in _READ_ORDER.items() if name.endswith(s)), None)
        if perm is None or param.ndim != len(perm) or (not attention and ".attn." in name):
            continue
        chosen.append((param, perm))
    if sum(p.numel() * p.element_size() for p, _ in chosen) > max_extra_bytes:
        chosen = []
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for param, perm in chosen:
                ordered = param.data.permute(perm).contiguous()
                swapped.append((param, param.data))
                param.data = ordered.permute(_inverse(perm))
        yield
    finally:
        for param, original in swapped:
            param.data = original
