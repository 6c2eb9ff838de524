"""Training examples for the small default: encoded prompts, a pixel store and extra renders.

Why the extra machinery around ``Maira2Processor``:

* **Pixels are preprocessed once** (MAIRA-2's own :class:`ImagePreprocessor`) and kept as one
  greyscale channel in float16: the three RGB channels it produces are identical, so a batch
  expands the channel back instead of re-reading PNGs every step.
* **Fresh renders of the training studies** (same labels, side, size and devices; another
  patient) give positives new pictures each time they are oversampled, so the model has to read
  the finding off the image rather than remember which picture went with which report.
* **Many normal reports are word-for-word identical** (53 copies of the most common one): an
  epoch keeps at most ``max_copies_per_text`` studies per distinct negative report, so the
  normal templates do not drown the findings the images show.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from sae_lens_maira.data.study import ImageRef, Study
from sae_lens_maira.data.synthetic_xray import (
    DEVICE_KINDS,
    RenderSpec,
    SyntheticXrayRenderer,
    stable_seed,
)
from sae_lens_maira.demo.grounding_text import GroundingSentences
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.roles import Role

#: Per-image targets of the tower's warm-up, read from the render spec (what the picture shows):
#: the heart, each side's effusion and each device kind the renderer draws.
VISION_TARGETS = ("cardiomegaly", "effusion_right", "effusion_left", *DEVICE_KINDS)


def render_spec_of(study: Study) -> RenderSpec:
    """The spec a synthetic study was rendered from (``study.meta["render"]``)."""
    render = study.meta.get("render")
    if not isinstance(render, dict):
        raise ValueError(
            f"study {study.study_id!r} has no meta['render'] spec: the demo model trains on "
            "synthetic studies made by sae_lens_maira.data.openi_studies (or demo_studies)"
        )
    return RenderSpec(
        cardiomegaly=bool(render.get("cardiomegaly")),
        effusion=render.get("effusion"),
        effusion_size=render.get("effusion_size") or "moderate",
        devices=tuple(render.get("devices") or ()),
    )


def vision_targets(spec: RenderSpec) -> list[float]:
    """0/1 per :data:`VISION_TARGETS` for an image rendered from ``spec``."""
    side = spec.effusion
    return [
        float(spec.cardiomegaly),
        float(side in ("right", "bilateral")),
        float(side in ("left", "bilateral")),
        *(float(d in spec.devices) for d in VISION_TARGETS[3:]),
    ]


def is_positive(study: Study, findings: Sequence[str]) -> bool:
    return any(bool(study.labels.get(f)) for f in findings)


class PixelStore:
    """Preprocessed images as one float16 greyscale channel each; batches come back as RGB."""

    def __init__(self, preprocessor: ImagePreprocessor) -> None:
        self.preprocessor = preprocessor
        self._chunks: list[torch.Tensor] = []
        self._pending: list[torch.Tensor] = []
        self._flat: torch.Tensor | None = None
        self.targets: list[list[float]] = []

    def __len__(self) -> int:
        return len(self.targets)

    def add(self, image: ImageRef, targets: list[float]) -> int:
        pixels = self.preprocessor(image)[0]
        self._pending.append(pixels[:1].to(torch.float16))
        self._flat = None
        self.targets.append(targets)
        return len(self.targets) - 1

    def _tensor(self) -> torch.Tensor:
        if self._pending:
            self._chunks.append(torch.stack(self._pending))
            self._pending = []
        if self._flat is None:
            self._flat = torch.cat(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = [self._flat]
        return self._flat

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """[len(indices), 3, H, W] float32 pixel values, as the processor would give them."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self._tensor()[idx].float().expand(-1, 3, -1, -1).contiguous()

    def target_tensor(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        t = torch.tensor(self.targets, dtype=torch.float32)
        return t if indices is None else t[torch.as_tensor(list(indices))]


@dataclass
class Example:
    """One training study: its prompt+report ids, which positions are scored, and image variants."""

    study_index: int
    input_ids: list[int]
    roles: list[int]
    weights: list[float]  # loss weight of predicting token t (0 outside the report)
    variants: list[list[int]]  # each variant: PixelStore indices of the study's images, in order
    positive: bool
    text_key: str
    kind: str = "report"  # "report", "grounding" (label-driven target) or "normalized"

    @property
    def grounding(self) -> bool:
        return self.kind != "report"


def report_token_weights(
    processor: Maira2Processor, roles: list[int], ids: list[int], study: Study,
    findings: Sequence[str], mention_weight: float,
) -> list[float]:  # fmt: skip
    """1 for report tokens (EOS included), ``mention_weight`` for those inside a mention of one
    of ``findings`` (labeller spans: "enlarged heart" as well as "heart size is normal", the
    tokens where the report depends on the image), 0 elsewhere."""
    weights = [1.0 if r == int(Role.REPORT) else 0.0 for r in roles]
    if mention_weight == 1.0 or not study.findings:
        return weights
    from sae_lens_maira.data.labeller import find_mentions

    report = " " + study.findings.strip()
    spans = []
    for m in find_mentions(report, findings):
        at = report.find(m.sentence)
        if at >= 0:
            spans.append((at + m.start, at + m.end))
    if not spans:
        return weights
    positions = [i for i, r in enumerate(roles) if r == int(Role.REPORT)][:-1]  # drop EOS
    enc = processor.tokenizer(report, return_offsets_mapping=True, add_special_tokens=False)
    if enc["input_ids"] != [ids[p] for p in positions]:
        return weights  # tokenised differently inside the prompt: keep plain weights
    for pos, (a, b) in zip(positions, enc["offset_mapping"]):
        if any(a < e and s < b for s, e in spans):
            weights[pos] = mention_weight
    return weights


def extra_render_counts(
    studies: Sequence[Study], findings: Sequence[str], positive_share: float, max_extra: int
) -> dict[str, int]:
    """Fresh renders per study so each finding's positives make up about ``positive_share`` of
    an epoch's studies: a finding present in a fraction ``r`` of studies gets
    ``ceil(positive_share / r) - 1`` extra pictures per positive (at most ``max_extra``); a study
    positive for several findings takes the largest count, negatives get none."""
    n = max(len(studies), 1)
    rates = {f: sum(bool(s.labels.get(f)) for s in studies) / n for f in findings}
    out = {}
    for s in studies:
        wanted = [
            math.ceil(positive_share / rates[f] - 1e-9) - 1
            for f in findings
            if s.labels.get(f) and rates[f] > 0
        ]
        out[s.study_id] = max(0, min(max_extra, max(wanted, default=0)))
    return out


class DemoTrainingSet:
    """Encoded training studies, their images (canonical + fresh renders) and an epoch sampler."""

    def __init__(
        self,
        studies: Sequence[Study],
        processor: Maira2Processor,
        *,
        findings: Sequence[str],
        positive_share: float = 0.0,
        max_extra_renders: int = 4,
        max_copies_per_text: int = 2,
        mention_weight: float = 1.0,
        grounding_targets: bool = True,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        if not studies:
            raise ValueError("the demo model needs at least one training study")
        self.processor = processor
        self.findings = tuple(findings)
        self.max_copies_per_text = max_copies_per_text
        self.store = PixelStore(processor.image_processor)
        self.examples: list[Example] = []
        renderer = SyntheticXrayRenderer(processor.image_processor.crop_size)
        sentences = (
            GroundingSentences.from_studies(studies, self.findings) if grounding_targets else None
        )
        extra = extra_render_counts(studies, self.findings, positive_share, max_extra_renders)
        bar = tqdm(studies, desc="preparing training studies", disable=not progress)
        for i, study in enumerate(bar):
            if not study.findings:
                raise ValueError(f"training study {study.study_id!r} has no findings text")
            spec = render_spec_of(study)
            targets = vision_targets(spec)
            enc = processor.encode_study(study, with_report=True)
            variants = [[self.store.add(im, targets) for im in study.images]]
            positive = is_positive(study, self.findings)
            n_extra = extra[study.study_id]
            views = ("frontal", "lateral") if study.lateral is not None else ("frontal",)
            for k in range(n_extra):
                fresh = renderer.render(spec, stable_seed(f"{study.study_id}:aug{k}", seed), views)
                variants.append([self.store.add(fresh[v], targets) for v in views])
            self.examples.append(
                Example(
                    study_index=i,
                    input_ids=enc.input_ids,
                    roles=enc.roles,
                    weights=report_token_weights(
                        processor, enc.roles, enc.input_ids, study, self.findings, mention_weight
                    ),
                    variants=variants,
                    positive=positive,
                    text_key=" ".join(study.findings.lower().split()),
                )
            )
            if sentences is None:
                continue
            for kind, text in (
                ("grounding", sentences.target(study)),
                ("normalized", sentences.normalized_report(study)),
            ):
                if not text:
                    continue
                variant = replace(study, findings=text)
                genc = processor.encode_study(variant, with_report=True)
                self.examples.append(
                    Example(
                        study_index=i,
                        input_ids=genc.input_ids,
                        roles=genc.roles,
                        weights=report_token_weights(
                            processor,
                            genc.roles,
                            genc.input_ids,
                            variant,
                            self.findings,
                            mention_weight if kind == "normalized" else 1.0,
                        ),  # fmt: skip
                        variants=variants,
                        positive=positive,
                        text_key=" ".join(text.lower().split()),
                        kind=kind,
                    )
                )

    def __len__(self) -> int:
        return len(self.examples)

    def count(self, kind: str) -> int:
        return sum(ex.kind == kind for ex in self.examples)

    def epoch(self, rng: random.Random, *, kind: str = "report") -> list[tuple[int, int]]:
        """(example, variant) pairs for one epoch of one kind of target: every variant of each
        positive, at most ``max_copies_per_text`` negatives per distinct text, shuffled."""
        items: list[tuple[int, int]] = []
        by_text: dict[str, list[int]] = defaultdict(list)
        for i, ex in enumerate(self.examples):
            if ex.kind != kind:
                continue
            if ex.positive:
                items += [(i, v) for v in range(len(ex.variants))]
            else:
                by_text[ex.text_key].append(i)
        for group in by_text.values():
            chosen = (
                group
                if len(group) <= self.max_copies_per_text
                else rng.sample(group, self.max_copies_per_text)
            )
            for i in chosen:
                ex = self.examples[i]
                items += [(i, v) for v in range(len(ex.variants))]
        rng.shuffle(items)
        return items

    def batches(
        self, rng: random.Random, batch_size: int, *, kind: str = "report"
    ) -> list[list[tuple[int, int]]]:
        """One epoch cut into batches of similar length (less padding), in random order."""
        items = self.epoch(rng, kind=kind)
        window = batch_size * 8
        out = []
        for start in range(0, len(items), window):
            chunk = sorted(
                items[start : start + window], key=lambda it: len(self.examples[it[0]].input_ids)
            )
            out += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(out)
        return out

    def collate(self, items: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Right-padded ids, loss weights of each next-token prediction and pixels in order."""
        exs = [self.examples[i] for i, _ in items]
        T = max(len(e.input_ids) for e in exs)
        pad = self.processor.pad_token_id
        ids = torch.full((len(exs), T), pad, dtype=torch.long)
        mask = torch.zeros((len(exs), T), dtype=torch.long)
        weights = torch.zeros((len(exs), T), dtype=torch.float32)
        image_indices: list[int] = []
        for row, ((_, v), ex) in enumerate(zip(items, exs)):
            n = len(ex.input_ids)
            ids[row, :n] = torch.tensor(ex.input_ids)
            mask[row, :n] = 1
            weights[row, :n] = torch.tensor(ex.weights)
            image_indices += ex.variants[v]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            # predicting token t+1 from position t: the weight belongs to the target token
            "target_weights": weights[:, 1:],
            "pixel_values": self.store.pixels(image_indices),
        }

class ReportStream:
    """Report texts as one token stream (``<s> report </s>`` each), cut into packed sequences.

    Each pass shuffles the reports; identical reports are capped at ``max_copies_per_text`` per
    pass, as in :meth:`DemoTrainingSet.epoch`.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer,
        *,
        seq_len: int = 256,
        max_copies_per_text: int = 2,
    ) -> None:
        groups: dict[str, list[list[int]]] = defaultdict(list)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        for text in texts:
            if text and text.strip():
                ids = tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]
                groups[" ".join(text.lower().split())].append([bos, *ids, eos])
        if not groups:
            raise ValueError("ReportStream needs at least one non-empty report text")
        self.groups = list(groups.values())
        self.seq_len = seq_len
        self.max_copies_per_text = max_copies_per_text
        self._buffer: list[int] = []

    def n_tokens_per_pass(self) -> int:
        return sum(len(g[0]) * min(len(g), self.max_copies_per_text) for g in self.groups)

    def _refill(self, rng: random.Random) -> None:
        docs = [d for g in self.groups for d in g[: self.max_copies_per_text]]
        rng.shuffle(docs)
        for d in docs:
            self._buffer += d

    def batch(self, rng: random.Random, batch_size: int) -> dict[str, torch.Tensor]:
        need = batch_size * self.seq_len
        while len(self._buffer) < need:
            self._refill(rng)
        chunk, self._buffer = self._buffer[:need], self._buffer[need:]
        return {"input_ids": torch.tensor(chunk, dtype=torch.long).view(batch_size, self.seq_len)}
