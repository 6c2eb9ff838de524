"""Token ids marked "outside the SAE's positions", so SAELens's token-only code can skip them.

SAELens decides which positions its ActivationsStore trains on and its evals measure by comparing
token ids with an ignore list. The study's token selection depends on a position's role (indication
text, first image patch, ...), not on its id, so a position outside the selection keeps its id with
bit 40 set. ``HookedMaira2.forward`` strips the mark before anything reads the ids (the forward
pass, hooks and loss are those of the unmarked tokens), and :data:`OUTSIDE_SELECTION`, an entry of
SAELens's ignore-token list, equals every marked id. Marks survive slicing, shuffling and batching
of token rows, as virtual image ids do (ids, virtual ones included, stay far below the bit).
"""

from __future__ import annotations

from typing import Any

import torch

#: The bit that marks a position outside the selection (virtual image ids stay below 2**40).
MARK = 1 << 40


def mark_outside(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``tokens`` with every position where ``keep`` is False marked."""
    if tokens.shape != keep.shape:
        raise ValueError(
            f"the selection mask {tuple(keep.shape)} does not match the tokens {tuple(tokens.shape)}"
        )
    tokens = tokens.to(torch.int64)
    return torch.where(keep, tokens, tokens | MARK)


def is_marked(tokens: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the marked (outside the selection) positions."""
    return tokens >= MARK


def strip_marks(tokens: torch.Tensor) -> torch.Tensor:
    """The plain ids (marks removed); unmarked tensors come back unchanged, without a copy."""
    if tokens.dtype != torch.int64 or not bool(is_marked(tokens).any()):
        return tokens
    return tokens & (MARK - 1)


class _OutsideSelection:
    """An entry of SAELens's ``exclude_special_tokens`` list that equals every marked id.

    SAELens's evals build their position mask as ``batch_tokens == token`` for each listed token;
    a tensor compared with this object yields :func:`is_marked` of it.
    """

    __hash__ = object.__hash__

    def __eq__(self, other: Any) -> Any:
        if isinstance(other, torch.Tensor):
            return is_marked(other)
        if isinstance(other, int):
            return other >= MARK
        return NotImplemented

    def __ne__(self, other: Any) -> Any:
        result = self.__eq__(other)
        return (
            result
            if result is NotImplemented
            else ~result
            if isinstance(result, torch.Tensor)
            else not result
        )

    def __repr__(self) -> str:
        return "OUTSIDE_SELECTION"


OUTSIDE_SELECTION = _OutsideSelection()
