"""Pixel statistics that a reader of a radiograph would use, measured without the renderer's
internals: they check that the labels are visible in the rendered images."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def cardiothoracic_ratio(img: Image.Image) -> float:
    """Widest heart span / widest span between the outer lung edges, over the rows above the
    right hemidiaphragm where both lungs are seen beside the heart (heart = the bright run
    through the image centre). The right dome is found where the patient's right lung column
    (image left, 0.2 of the width from the centre) turns bright going down."""
    a = _arr(img.filter(ImageFilter.GaussianBlur(1.5)))
    h, w = a.shape
    c = w // 2
    body = a[int(0.3 * h) : int(0.8 * h), int(0.15 * w) : int(0.85 * w)]
    level = 0.5 * (np.percentile(body, 5) + np.percentile(body, 70))
    col = a[:, c - int(0.2 * w)]
    dome = next((r for r in range(int(0.45 * h), h) if col[r] >= level), h)
    best_heart, best_thorax = 0.0, 0.0
    for r in range(int(0.40 * h), dome - 2):
        row = a[r]
        lung = np.percentile(row[int(0.1 * w) : int(0.9 * w)], 10)
        heart = np.median(row[c - int(0.08 * w) : c + int(0.08 * w)])
        thr = lung + 0.5 * (heart - lung)
        if heart - lung < 0.15:
            continue
        left = c
        while left > 0 and row[left] >= thr:
            left -= 1
        right = c
        while right < w - 1 and row[right] >= thr:
            right += 1
        ol, orr = left, right
        while ol > 0 and row[ol] < thr:
            ol -= 1
        while orr < w - 1 and row[orr] < thr:
            orr += 1
        if left - ol < 0.04 * w or orr - right < 0.04 * w:
            continue  # a lung is not seen beside the heart on this row
        best_heart = max(best_heart, right - left)
        best_thorax = max(best_thorax, orr - ol)
    return best_heart / best_thorax if best_thorax else float("nan")


def basal_opacity(img: Image.Image) -> float:
    """How much of the lateral lower zones is filled in (0 = dark lung down to the costophrenic
    angle): per side, the dark-lung fraction of the lower zone relative to the mid zone; the
    larger loss over the two sides."""
    a = _arr(img.filter(ImageFilter.GaussianBlur(1.0)))
    h, w = a.shape
    thorax = a[int(0.3 * h) : int(0.8 * h), int(0.15 * w) : int(0.85 * w)]
    thr = 0.5 * (np.percentile(thorax, 5) + np.percentile(thorax, 60))
    dark = a < thr
    losses = []
    for x0, x1 in ((0.17, 0.3), (0.72, 0.83)):
        band = dark[:, int(x0 * w) : int(x1 * w)]
        mid = band[int(0.35 * h) : int(0.5 * h)].mean()
        low = band[int(0.55 * h) : int(0.72 * h)].mean()
        losses.append(1.0 - low / max(mid, 1e-3))
    return max(losses)


def bright_line_pixels(img: Image.Image) -> int:
    """Pixels that are near-white and brighter than their surroundings (white top-hat over a
    7 px neighbourhood): thin radiopaque lines, leads and generators."""
    opened = img.filter(ImageFilter.MinFilter(7)).filter(ImageFilter.MaxFilter(7))
    a, o = _arr(img), _arr(opened)
    return int(((a - o > 0.12) & (a > 0.85)).sum())


def auc(pos: list[float], neg: list[float]) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    p = np.asarray(pos)[:, None]
    n = np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())
