"""A run's YAML config and the builders that turn it into a model, a processor and studies.

One file drives every command (``cache``, ``train``, ``dashboards``, ...): each reads the sections
it needs. Paths inside the file are relative to the file's folder.

    model:   {checkpoint: microsoft/maira-2, device: auto, dtype: bfloat16}
    data:    {source: mimic_cxr | manifest | openi, path: ..., split: train, limit: null}
    cache:   {hook_name: blocks.15.hook_resid_post, output_dir: ..., context_size: 128, ...}
    sae:     {architecture: matryoshka, expansion_factor: 4, k: 64, ...}
    train:   {training_tokens: ..., lr: ..., wandb_project: ..., ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from sae_lens_maira.data.study import Study

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Experiment:
    """The parsed YAML, with paths resolved against the config file's folder."""

    raw: dict[str, Any]
    base_dir: Path = field(default_factory=Path.cwd)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping of sections (model, data, cache, ...)")
        for dotted, value in (overrides or {}).items():
            _set_dotted(raw, dotted, value)
        return cls(raw, path.resolve().parent)

    def section(self, name: str, required: bool = True) -> dict[str, Any]:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise ValueError(f"the config has no {name!r} section")
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"config section {name!r} must be a mapping")
        return dict(value)

    def path(self, value: str | Path | None) -> Path | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    # ---- builders -------------------------------------------------------------------------------
    def device(self) -> str:
        device = str(self.section("model").get("device", "auto"))
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    def dtype(self) -> torch.dtype:
        name = str(self.section("model").get("dtype", "float32"))
        if name not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, not {name!r}")
        return _DTYPES[name]

    def checkpoint(self) -> str:
        spec = self.section("model")
        ckpt = spec.get("checkpoint")
        if not ckpt:
            raise ValueError(
                "model.checkpoint must name a MAIRA-2 checkpoint folder or a cached hub repo id"
            )
        local = self.path(ckpt)
        return str(local) if local is not None and local.exists() else str(ckpt)

    def load_model(self, device: str | None = None):
        from sae_lens_maira.model.hooked_maira2 import HookedMaira2

        return HookedMaira2.from_pretrained(
            self.checkpoint(), device=device or self.device(), dtype=self.dtype()
        )

    def load_processor(self):
        from sae_lens_maira.processing.processor import Maira2Processor

        return Maira2Processor.from_pretrained(self.checkpoint())

    def load_studies(self) -> list[Study]:
        """Studies from the ``data`` section; skipped studies are reported, never silently dropped."""
        import logging

        from sae_lens_maira import data as sources

        spec = self.section("data")
        source = spec.get("source")
        limit = spec.get("limit")
        on_missing = spec.get("on_missing", "skip")
        if source == "manifest":
            result = sources.load_manifest(self._data_path(spec), on_missing=on_missing)
            studies = result.studies
            summary = result.summary()
        elif source == "mimic_cxr":
            result = sources.load_mimic_cxr(
                self._data_path(spec), split=spec.get("split"), on_missing=on_missing
            )
            studies = result.studies
            summary = result.summary()
        elif source == "openi":
            from sae_lens_maira.data.openi import ensure_openi_wheel
            from sae_lens_maira.data.synthetic_xray import SyntheticXrayRenderer

            wheel = self.path(spec["path"]) if spec.get("path") else ensure_openi_wheel()
            reports = sources.load_openi_reports(wheel)
            size = int(spec.get("image_size", 224))
            image_dir = self.path(spec.get("image_dir"))
            studies = sources.openi_studies(
                reports, SyntheticXrayRenderer(size), image_dir=image_dir
            )
            split = spec.get("split")
            if split:
                train, held_out = sources.split_studies(
                    studies, float(spec.get("held_out_fraction", 0.15))
                )
                studies = train if split == "train" else held_out
            summary = f"{len(studies)} studies"
        else:
            raise ValueError(
                f"data.source must be 'manifest', 'mimic_cxr' or 'openi', not {source!r}"
            )
        logging.getLogger(__name__).info("data: %s", summary)
        return studies[: int(limit)] if limit else studies

    def _data_path(self, spec: dict[str, Any]) -> Path:
        if not spec.get("path"):
            raise ValueError(f"data.path is required for source {spec.get('source')!r}")
        return self.path(spec["path"])  # type: ignore[return-value]


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with the value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)
