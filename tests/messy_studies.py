"""A tiny manifest with one study per way a study can be skipped, beside good studies.

``bomb``'s PNG header claims 30000 x 30000 (PIL's DecompressionBombError), ``tiny`` is a 1 x 1
PNG, ``gone``'s file does not exist and ``broken`` holds bytes that are no image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tests.processing.png_files import png_claiming

#: study id -> the reason it is skipped for
BAD = {
    "bomb": "image_too_large",
    "gone": "missing_image",
    "tiny": "image_too_small",
    "broken": "unreadable_image",
}
#: manifest order: good and bad studies interleaved
ORDER = ["g0", "bomb", "g1", "gone", "tiny", "g2", "broken", "g3"]
GOOD = [s for s in ORDER if s not in BAD]
FINDINGS = ["No pleural effusion.", "Small left pleural effusion.", "Lungs are clear."]


def write_messy_manifest(root: Path, order: list[str] = ORDER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    lines = []
    for i, sid in enumerate(order):
        path = root / f"{sid}.png"
        if sid == "bomb":
            png_claiming(path, 30000, 30000)
        elif sid == "tiny":
            Image.new("L", (1, 1), 255).save(path)
        elif sid == "broken":
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        elif sid != "gone":
            Image.fromarray(rng.integers(0, 255, (64, 60), dtype=np.uint8)).save(path)
        lines.append({"study_id": sid, "frontal": path.name, "indication": "Cough.",
                      "findings": FINDINGS[i % 3]})  # fmt: skip
    manifest = root / "studies.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in lines))
    return manifest


def write_config(
    folder: Path, checkpoint: Path, manifest: Path, shard_studies: int = 3, **sections
) -> Path:
    cfg = {
        "model": {"checkpoint": str(checkpoint), "device": "cpu", "dtype": "float32"},
        "data": {"source": "manifest", "path": str(manifest)},
        "cache": {
            "hook_name": "blocks.1.hook_resid_post",
            "output_dir": "acts",
            "context_size": 16,
            "batch_size": 2,
            "shard_studies": shard_studies,
        },
        **sections,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "exp.yaml"


def save_sae(folder: Path, d_in: int, hook: str = "blocks.1.hook_resid_post") -> Path:
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=16, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
    sae.save_model(str(folder))
    return folder
