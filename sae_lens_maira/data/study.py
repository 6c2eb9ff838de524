"""The unit every data source yields: one chest X-ray study, as MAIRA-2's prompt needs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: An image as a source may give it: a file path, an opened PIL image or an array (H, W) / (H, W, C).
ImageRef = str | Path | Image.Image | np.ndarray


@dataclass
class Study:
    """One study: images in MAIRA-2's order plus the report sections.

    Missing sections stay ``None`` (the prompt writes ``N/A``). ``findings`` is the target text
    (the report the model should generate); ``labels`` holds finding labels where a source has
    them (e.g. MeSH-derived ``{"cardiomegaly": True}``) for evaluation, never for the prompt.
    """

    study_id: str
    frontal: ImageRef
    lateral: ImageRef | None = None
    prior_frontal: ImageRef | None = None
    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    prior_report: str | None = None
    findings: str | None = None
    labels: dict[str, bool] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list[ImageRef]:
        """Images in prompt order: current frontal, current lateral, prior frontal."""
        return [im for im in (self.frontal, self.lateral, self.prior_frontal) if im is not None]
