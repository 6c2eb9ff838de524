import json

import numpy as np
import pytest
from PIL import Image

REPORTS = [
    "The heart size is normal. No pleural effusion.",
    "Cardiomegaly. Small left pleural effusion.",
    "Right internal jugular catheter. Lungs are clear.",
]


@pytest.fixture(scope="session")
def manifest(tmp_path_factory):
    """A JSONL manifest of 9 small studies (PNG images), one with a corrupt frontal image."""
    root = tmp_path_factory.mktemp("studies")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(9):
        frontal = root / f"f{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 60), dtype=np.uint8)).save(frontal)
        rec = {
            "study_id": f"s{i}",
            "frontal": frontal.name,
            "indication": f"Cough for {i} days.",
            "findings": REPORTS[i % 3],
        }
        if i % 2:
            lateral = root / f"l{i}.png"
            Image.fromarray(rng.integers(0, 255, (60, 64), dtype=np.uint8)).save(lateral)
            rec["lateral"] = lateral.name
        lines.append(rec)
    (root / "f4.png").write_bytes(b"\x89PNG broken")
    path = root / "studies.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    return path


@pytest.fixture(scope="session")
def experiment_yaml(tmp_path_factory, hub_checkpoint, manifest):
    def make(out_name: str, **cache):
        folder = tmp_path_factory.mktemp("exp")
        cfg = {
            "model": {"checkpoint": str(hub_checkpoint), "device": "cpu", "dtype": "float32"},
            "data": {"source": "manifest", "path": str(manifest)},
            "cache": {
                "hook_name": "blocks.1.hook_resid_post",
                "output_dir": out_name,
                "context_size": 16,
                "batch_size": 2,
                "shard_studies": 3,
                **cache,
            },
        }
        import yaml

        (folder / "exp.yaml").write_text(yaml.safe_dump(cfg))
        return folder / "exp.yaml"

    return make
