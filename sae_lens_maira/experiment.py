"""A run's YAML config and the builders that turn it into a model, a processor and studies.

One file drives every command (``cache``, ``train``, ``dashboards``, ...): each reads the sections
it needs. Paths inside the file are relative to the file's folder.

    model:   {checkpoint: microsoft/maira-2, device: auto, dtype: bfloat16}
    data:    {source: mimic_cxr | manifest | openi, path: ..., split: train, limit: null}
    cache:   {hook_name: blocks.15.hook_resid_post, output_dir: ..., context_size: 128, ...}
    sae:     {architecture: matryoshka, expansion_factor: 4, k: 64, ...}
    train:   {training_tokens: ..., lr: ..., wandb_project: ..., ...}

Each section is a dataclass below (``cache`` is :class:`CacheConfig`, ``sae`` the architecture's
SAELens training config); :meth:`Experiment.from_yaml` rejects unknown sections and keys, naming
the nearest valid one, and each key's default is its dataclass field's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
import yaml

from sae_lens_maira.config_sections import (
    check_keys,
    field_names,
    section_dict,
    section_from_dict,
    typed_values,
    unknown_key_message,
)
from sae_lens_maira.data.skips import SkipCollector, SkippedStudy
from sae_lens_maira.data.study import Study
from sae_lens_maira.demo_settings import DemoSettings
from sae_lens_maira.steering.settings import SteerSettings


@dataclass
class ModelSection:
    checkpoint: str | None = None  # a checkpoint folder or a hub repo id in the local cache
    device: str = "auto"
    dtype: str = "float32"


@dataclass
class DataSection:
    source: str | None = None  # manifest | mimic_cxr | openi
    path: str | None = None
    split: str | None = None
    limit: int | None = None
    on_missing: str = "skip"
    image_size: int = 224  # openi: synthetic radiograph size
    image_dir: str | None = None
    held_out_fraction: float = 0.15


@dataclass
class TrainSection:
    """Runner keys left at None take SAELens's own ``LanguageModelSAERunnerConfig`` default."""

    hook_name: str | None = None  # default: cache.hook_name
    use_cached_activations: bool = True
    context_size: int | None = None  # prompt length for live training/evals (default: longest)
    output_dir: str = "sae"
    checkpoint_dir: str = "checkpoints"
    wandb: bool = False
    wandb_project: str = "sae-lens-maira"
    wandb_dir: str = "."
    run_name: str | None = None
    wandb_log_frequency: int = 10
    eval_every_n_wandb_logs: int = 100
    skip_bad_batches: bool = False  # drop (and count) NaN/inf activation batches instead of stopping
    nonfinite_check_every: int = 50  # steps between NaN/inf checks on CUDA (each is a host sync)
    # passed to LanguageModelSAERunnerConfig when set
    training_tokens: int | None = None
    train_batch_size_tokens: int | None = None
    lr: float | None = None
    lr_scheduler_name: str | None = None
    lr_warm_up_steps: int | None = None
    lr_decay_steps: int | None = None
    lr_end: float | None = None  # default: lr / 10
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    store_batch_size_prompts: int | None = None
    n_batches_in_buffer: int | None = None
    n_checkpoints: int | None = None
    n_eval_batches: int | None = None
    eval_batch_size_prompts: int | None = None
    seed: int | None = None
    dead_feature_window: int | None = None
    feature_sampling_window: int | None = None
    autocast: bool | None = None
    autocast_lm: bool | None = None
    compile_sae: bool | None = None
    activations_mixing_fraction: float | None = None


@dataclass
class DashboardsSection:
    sae: str | None = None  # default: train.output_dir
    out: str = "dashboards/stats"
    batch_size: int = 4
    limit: int | None = None
    keep_images: bool = True


#: Sections read into a dataclass (every key checked, defaults filled in).
SECTION_TYPES: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "train": TrainSection,
    "dashboards": DashboardsSection,
    "steer": SteerSettings,
    "demo": DemoSettings,
}
#: Sections whose keys are checked elsewhere: ``cache`` against CacheConfig, ``sae`` against the
#: architecture's config. ``steer`` and ``demo`` normalise their own values (``from_section``).
OTHER_SECTIONS = ("cache", "sae")

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
        exp = cls(raw, path.resolve().parent)
        try:
            exp.validate()
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return exp

    def validate(self) -> None:
        """Every section and key known; raises ValueError naming the nearest valid key."""
        known = [*SECTION_TYPES, *OTHER_SECTIONS]
        check_keys("the config's top level (sections)", self.raw, known)
        for name in SECTION_TYPES:
            if name in self.raw:
                self.typed(name)
        if isinstance(self.raw.get("cache"), dict):
            from sae_lens_maira.activations.cache import CacheConfig

            check_keys("cache", self.raw["cache"], field_names(CacheConfig))
            typed_values(CacheConfig, self.raw["cache"], "cache")
        if isinstance(self.raw.get("sae"), dict):
            check_sae_keys(self.raw["sae"])

    def typed(self, name: str) -> Any:
        """The section as its dataclass (defaults for absent keys)."""
        value = self.raw.get(name)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"config section {name!r} must be a mapping")
        cls = SECTION_TYPES[name]
        if hasattr(cls, "from_section"):  # a section that normalises its own values
            return cls.from_section(value)
        return section_from_dict(cls, value, name)

    def section(self, name: str, required: bool = True) -> dict[str, Any]:
        value = self.raw.get(name)
        if value is None and required:
            raise ValueError(f"the config has no {name!r} section")
        if name in SECTION_TYPES:
            return section_dict(self.typed(name))
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"config section {name!r} must be a mapping")
        return dict(value)

    @overload
    def path(self, value: str | Path) -> Path: ...
    @overload
    def path(self, value: None) -> None: ...
    def path(self, value: str | Path | None) -> Path | None:
        """``value`` relative to the config's folder (``~`` expanded); None stays None."""
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    # ---- builders -------------------------------------------------------------------------------
    def device(self) -> str:
        device = str(self.typed("model").device)
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    def dtype(self) -> torch.dtype:
        name = str(self.typed("model").dtype)
        if name not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, not {name!r}")
        return _DTYPES[name]

    def checkpoint(self) -> str:
        ckpt = self.typed("model").checkpoint
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

    def load_studies(self, skips: SkipCollector | None = None) -> list[Study]:
        """Studies from the ``data`` section; skipped studies are reported, never silently dropped.

        Studies the source left out (missing image files, ...) are added to ``skips`` when given;
        a source that leaves out every study raises :class:`AllStudiesSkippedError`.
        """
        import logging

        from sae_lens_maira import data as sources

        spec = self.section("data")
        source = spec.get("source")
        limit = spec.get("limit")
        on_missing = spec["on_missing"]
        left_out: list[SkippedStudy] = []
        if source == "manifest":
            if spec.get("split"):  # would be ignored: the studies of every split, silently
                raise ValueError(
                    f"data.split ({spec['split']!r}) applies to sources mimic_cxr and openi; a "
                    "manifest has no splits: point data.path at that split's own manifest "
                    "(e.g. --set data.path=test.jsonl) and leave data.split unset"
                )
            result = sources.load_manifest(self._data_path(spec), on_missing=on_missing)
            studies, left_out = result.studies, result.skipped_studies
            summary = result.summary()
        elif source == "mimic_cxr":
            result = sources.load_mimic_cxr(
                self._data_path(spec), split=spec.get("split"), on_missing=on_missing
            )
            studies, left_out = result.studies, result.skipped_studies
            summary = result.summary()
        elif source == "openi":
            from sae_lens_maira.data.openi import ensure_openi_wheel
            from sae_lens_maira.data.synthetic_xray import SyntheticXrayRenderer

            wheel = self.path(spec["path"]) if spec.get("path") else ensure_openi_wheel()
            reports = sources.load_openi_reports(wheel)
            size = int(spec["image_size"])
            image_dir = self.path(spec.get("image_dir"))
            studies = sources.openi_studies(
                reports, SyntheticXrayRenderer(size), image_dir=image_dir
            )
            split = spec.get("split")
            if split:
                train, held_out = sources.split_studies(
                    studies, float(spec["held_out_fraction"])
                )
                studies = train if split == "train" else held_out
            summary = f"{len(studies)} studies"
        else:
            raise ValueError(
                f"data.source must be 'manifest', 'mimic_cxr' or 'openi', not {source!r}"
            )
        logging.getLogger(__name__).info("data: %s", summary)
        if not studies and left_out:
            SkipCollector(left_out).check_some_left(len(left_out), f"data source {source!r}")
        if skips is not None:
            skips.extend(left_out)
        return studies[: int(limit)] if limit else studies

    def _data_path(self, spec: dict[str, Any]) -> Path:
        if not spec.get("path"):
            raise ValueError(f"data.path is required for source {spec.get('source')!r}")
        return self.path(spec["path"])


def check_sae_keys(spec: dict[str, Any]) -> None:
    """The ``sae`` section's keys against its architecture's SAELens training config."""
    from sae_lens.registry import get_sae_training_class

    import sae_lens_maira.registration  # noqa: F401  (registers "matryoshka")

    arch = spec.get("architecture", "matryoshka")
    try:
        _, cfg_cls = get_sae_training_class(arch)
    except KeyError:
        from sae_lens_maira.compat.sae_lens import training_architectures

        raise ValueError(
            unknown_key_message("sae.architecture (registered architectures)", str(arch),
                                training_architectures())  # fmt: skip
        ) from None
    valid = {*field_names(cfg_cls), "architecture", "expansion_factor"} - {"metadata"}
    check_keys(f"sae (architecture {arch!r})", spec, valid)


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
