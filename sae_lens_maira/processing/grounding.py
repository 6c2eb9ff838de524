"""Parse MAIRA-2's grounded output into phrases and boxes.

Grounded text looks like ``<obj>Left pleural effusion<box><x10><y55><x45><y80></box></obj>``; a
phrase may carry several boxes or none. Each coordinate token names one of 100 bins and stands
for ``(bin + 0.5) / 100`` of the centre-cropped square's side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sae_lens_maira.processing.tokenizer import N_COORDINATE_BINS

_OBJ = re.compile(r"<obj>(.*?)</obj>", re.S)
_BOX = re.compile(r"<box>\s*<x(\d+)>\s*<y(\d+)>\s*<x(\d+)>\s*<y(\d+)>\s*</box>")
_ANY_TAG = re.compile(r"</?(?:obj|box)>|<[xy]\d+>")

Box = tuple[float, float, float, float]  # x_min, y_min, x_max, y_max


@dataclass
class GroundedPhrase:
    text: str
    boxes: list[Box] = field(
        default_factory=list
    )  # in original-image pixels (or relative, see below)

    @property
    def grounded(self) -> bool:
        return bool(self.boxes)


def bin_to_relative(bin_index: int) -> float:
    if not 0 <= bin_index < N_COORDINATE_BINS:
        raise ValueError(f"coordinate bin {bin_index} outside 0..{N_COORDINATE_BINS - 1}")
    return (bin_index + 0.5) / N_COORDINATE_BINS


def parse_grounded_output(
    text: str, crop_box: tuple[float, float, float] | None = None
) -> list[GroundedPhrase]:
    """Split generated text into phrases; boxes are mapped through ``crop_box``.

    ``crop_box`` is ``(left, top, side)`` of the centre-cropped square in the original image; without
    it boxes stay relative (0..1). Text outside ``<obj>`` markers becomes ungrounded phrases.
    """
    phrases: list[GroundedPhrase] = []
    cursor = 0
    for match in _OBJ.finditer(text):
        _add_plain(text[cursor : match.start()], phrases)
        inner = match.group(1)
        boxes = [
            _map_box(tuple(int(g) for g in m.groups()), crop_box) for m in _BOX.finditer(inner)
        ]
        phrase = _ANY_TAG.sub("", _BOX.sub("", inner)).strip()
        phrases.append(GroundedPhrase(phrase, boxes))
        cursor = match.end()
    _add_plain(text[cursor:], phrases)
    return phrases


def _add_plain(chunk: str, phrases: list[GroundedPhrase]) -> None:
    chunk = _ANY_TAG.sub("", chunk).strip()
    if chunk:
        phrases.append(GroundedPhrase(chunk, []))


def _map_box(bins: tuple[int, ...], crop_box: tuple[float, float, float] | None) -> Box:
    x0, y0, x1, y1 = (bin_to_relative(b) for b in bins)
    if crop_box is None:
        return (x0, y0, x1, y1)
    left, top, side = crop_box
    return (left + x0 * side, top + y0 * side, left + x1 * side, top + y1 * side)
