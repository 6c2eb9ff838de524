"""Finished feature statistics: saved to disk (safetensors + JSON + PNG thumbnails) and read back as
examples, so export, viewer and autointerp run as separate steps from the model pass."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sae_lens_maira.dashboards.sequence_batch import NO_TOKEN, DashboardMeta
from sae_lens_maira.processing.roles import Role

STATS_FILE, META_FILE, THUMB_DIR = "stats.safetensors", "stats.json", "thumbnails"
GAP = "…"  # stands for skipped positions between the window and the text context
_PRIVATE_ROLES = {int(r) for r in (Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON,
                                   Role.PRIOR_REPORT, Role.PHRASE, Role.REPORT)}  # fmt: skip


def _is(value: Any, kind: str) -> bool:
    return {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "str": isinstance(value, str), "dict": isinstance(value, dict),
        "str|None": value is None or isinstance(value, str),
        "int|None": value is None or (isinstance(value, int) and not isinstance(value, bool)),
        "str-list": isinstance(value, list) and all(isinstance(x, str) for x in value),
        "str-dict": isinstance(value, dict) and all(isinstance(x, str) for x in value.values()),
    }[kind]  # fmt: skip


_TOP_KEYS = {"meta": "dict", "config": "dict", "n_tokens": "int", "n_sequences": "int",
             "n_corr_positions": "int", "study_ids": "str-list", "token_strings": "str-dict",
             "vocab_strings": "str-dict", "thumbnails": "dict", "slot_names": "str-list"}  # fmt: skip
_META_KEYS = {"model_id": "str", "layer": "int", "hook_name": "str", "sae_set": "str", "d_sae": "int",
              "source_set": "str", "sae_id_suffix": "str|None", "dataset": "str", "creator": "str",
              "release": "str", "hf_repo_id": "str|None", "hf_folder_id": "str|None",
              "saelens_release": "str|None", "saelens_sae_id": "str|None",
              "saelens_config": "dict", "description": "str", "n_layers": "int|None",
              "d_model": "int|None"}  # fmt: skip


def _check_stats_json(meta: dict[str, Any], path: Path) -> None:
    """Types of everything stats.json feeds into exports and file names: a tampered or hand-edited
    file fails here, naming the key, instead of deep inside an export."""
    for where, obj, keys in (("", meta, _TOP_KEYS), ("meta.", meta.get("meta"), _META_KEYS)):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: {where or 'the file'} must be a JSON object")
        for key, kind in keys.items():
            if key in obj and not _is(obj[key], kind):
                raise ValueError(
                    f"{path}: {where}{key} must be {kind.replace('-', ' of ')}, got "
                    f"{type(obj[key]).__name__} {obj[key]!r:.60}; fix or rewrite the statistics"
                )
    grid = meta.get("grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(_is(g, "int") and g > 0 for g in grid)):
        raise ValueError(f"{path}: grid must be [rows, cols] of positive integers, got {grid!r:.60}")
    for seq, names in meta.get("thumbnails", {}).items():
        for n in names if isinstance(names, list) else [names]:
            if n is not None and not (isinstance(n, str) and n == Path(n).name and n.endswith(".png")):
                raise ValueError(f"{path}: thumbnail name {n!r:.60} of sequence {seq} is not a "
                                 "plain .png file name")  # fmt: skip


@dataclass
class Heatmap:
    """A feature's activations over one image's patch grid (row-major)."""

    image: int
    slot: str
    rows: int
    cols: int
    values: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "slot": self.slot, "rows": self.rows, "cols": self.cols,
                "values": self.values}  # fmt: skip


@dataclass
class Example:
    """One context shown for a feature: strings and activations aligned, the max token marked."""

    feature: int
    kind: str  # "top", "quantile" or "random"
    seq: int
    study_id: str
    max_value: float
    max_index: int  # index into tokens of the max-activating token
    tokens: list[str]
    values: list[float]
    roles: list[int]  # Role values; -1 for gap markers
    heatmap: Heatmap | None = None
    thumbnail: Image.Image | None = None
    bin_min: float = -1.0
    bin_max: float = -1.0
    bin_contains: float = -1.0


@dataclass
class QuantileGroup:
    bin_min: float
    bin_max: float
    bin_contains: float
    examples: list[Example]


@dataclass
class FeatureStats:
    """Everything the pass found, on CPU. Tensor names are documented in ``FeatureStatsCollector``."""

    tensors: dict[str, torch.Tensor]
    meta: DashboardMeta
    config: dict[str, Any]
    grid: tuple[int, int]
    slot_names: tuple[str, ...]
    n_tokens: int
    n_sequences: int
    n_corr_positions: int
    study_ids: list[str]
    token_strings: dict[int, str]
    vocab_strings: dict[int, str]
    thumbnails: dict[int, list[Image.Image | None]] = field(default_factory=dict)
    _groups: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(out / STATS_FILE))
        thumbs: dict[str, list[str | None]] = {}
        if self.thumbnails:
            (out / THUMB_DIR).mkdir(exist_ok=True)
        for seq, images in self.thumbnails.items():
            names = []
            for i, im in enumerate(images):
                if im is None:
                    names.append(None)
                    continue
                name = f"{seq}-{i}.png"
                im.save(out / THUMB_DIR / name)
                names.append(name)
            thumbs[str(seq)] = names
        meta = {
            "format": "sae-lens-maira-feature-stats/1",
            "meta": self.meta.to_dict(),
            "config": self.config,
            "grid": list(self.grid),
            "slot_names": list(self.slot_names),
            "n_tokens": self.n_tokens,
            "n_sequences": self.n_sequences,
            "n_corr_positions": self.n_corr_positions,
            "study_ids": self.study_ids,
            "token_strings": {str(k): v for k, v in self.token_strings.items()},
            "vocab_strings": {str(k): v for k, v in self.vocab_strings.items()},
            "thumbnails": thumbs,
        }
        (out / META_FILE).write_text(json.dumps(meta, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> FeatureStats:
        d = Path(directory)
        if not (d / STATS_FILE).is_file() or not (d / META_FILE).is_file():
            raise FileNotFoundError(
                f"{d} {'holds' if d.is_dir() else 'does not exist, so it holds'} no feature "
                f"statistics ({STATS_FILE} + {META_FILE}); create them with `sae-lens-maira "
                "dashboards collect --config ...` (it writes dashboards.out, relative to the "
                "config's folder), or FeatureStatsCollector(...).finalize(...).save(dir)"
            )
        meta = json.loads((d / META_FILE).read_text())
        if not isinstance(meta, dict) or meta.get("format") != "sae-lens-maira-feature-stats/1":
            raise ValueError(f"{d / META_FILE} is not a sae-lens-maira feature statistics file")
        _check_stats_json(meta, d / META_FILE)
        thumbnails = {}
        for seq, names in meta["thumbnails"].items():
            thumbnails[int(seq)] = [
                Image.open(d / THUMB_DIR / n).convert("L") if n else None for n in names
            ]
        return cls(
            tensors=load_file(str(d / STATS_FILE)),
            meta=DashboardMeta.from_dict(meta["meta"]),
            config=meta["config"],
            grid=tuple(meta["grid"]),
            slot_names=tuple(meta["slot_names"]),
            n_tokens=meta["n_tokens"],
            n_sequences=meta["n_sequences"],
            n_corr_positions=meta["n_corr_positions"],
            study_ids=meta["study_ids"],
            token_strings={int(k): v for k, v in meta["token_strings"].items()},
            vocab_strings={int(k): v for k, v in meta["vocab_strings"].items()},
            thumbnails=thumbnails,
        )

    # ------------------------------------------------------------------ per-feature summaries
    @property
    def d_sae(self) -> int:
        return self.tensors["nonzero"].shape[0]

    @property
    def density(self) -> torch.Tensor:
        return self.tensors["nonzero"].double() / max(self.n_tokens, 1)

    @property
    def max_act(self) -> torch.Tensor:
        return self.tensors["top.value"][:, 0].clamp_min(0)

    @property
    def mean_act(self) -> torch.Tensor:
        """Mean activation over the tokens where the feature fires."""
        return self.tensors["act_sum"] / self.tensors["nonzero"].clamp_min(1)

    def check_feature(self, f: int) -> int:
        if not 0 <= f < self.d_sae:
            raise ValueError(f"feature index {f} is outside 0..{self.d_sae - 1}")
        return f

    def act_histogram(self, f: int) -> tuple[list[float], list[int]]:
        """Bin centres and counts of nonzero activations (empty trailing bins trimmed)."""
        h = self.tensors["hist"][f]
        n = h.shape[0]
        width = 2.0 ** int(self.tensors["hist_exp"][f]) / n
        nz = torch.nonzero(h).flatten()
        last = int(nz[-1]) + 1 if nz.numel() else 0
        return [(i + 0.5) * width for i in range(last)], h[:last].tolist()

    def _value_range(self, f: int | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(smallest, largest) nonzero activation; statistics saved before ``act_min`` existed
        use the lower edge of the first nonempty histogram bin."""
        hi = self.max_act[f].double()
        if "act_min" in self.tensors:
            return self.tensors["act_min"][f].double(), hi
        h = self.tensors["hist"][f]
        first = (h > 0).double().argmax(dim=-1)
        width = 2.0 ** self.tensors["hist_exp"][f].double() / h.shape[-1]
        return first * width, hi

    def _mass_between(self, lo: torch.Tensor, hi: torch.Tensor, f: slice | int = slice(None),
                      closed_hi: bool = True) -> torch.Tensor:  # fmt: skip
        """Nonzero activations of each feature in ``[lo, hi]`` (``[lo, hi)`` unless ``closed_hi``),
        estimated from the streaming histogram: each bin's count spread evenly over the part of it
        that lies inside the feature's ``[min, max]``."""
        hist = self.tensors["hist"][f].double()
        n = hist.shape[-1]
        width = (2.0 ** self.tensors["hist_exp"][f].double() / n).unsqueeze(-1)
        vmin, vmax = (x.unsqueeze(-1) for x in self._value_range(f))
        j = torch.arange(n, dtype=torch.float64)
        a = torch.maximum(j * width, vmin)
        b = torch.minimum((j + 1) * width, vmax)
        lo, hi = lo.double().unsqueeze(-1), hi.double().unsqueeze(-1)
        span = b - a
        part = (torch.minimum(b, hi) - torch.maximum(a, lo)).clamp_min(0) / span.clamp_min(1e-300)
        point = ((a >= lo) & ((a <= hi) if closed_hi else (a < hi))).double()  # a bin of one value
        share = torch.where(span > 0, part.clamp(max=1), point) * (b >= a)
        return (hist * share).sum(dim=-1)

    def dashboard_histogram(self, f: int, n_bins: int = 50) -> tuple[list[float], list[int]]:
        """SAE-Dashboard's activation histogram (``HistogramData.from_data`` over the nonzero
        activations): ``n_bins`` equal bins over [min, max], bin centres and integer heights.
        The pass keeps no activations, so heights are the streaming histogram's counts spread over
        these bins (totals exact, rounded by largest remainder)."""
        count = int(self.tensors["nonzero"][f])
        if count == 0:
            return [], []  # from_data on no data: an empty histogram
        lo, hi = (float(x) for x in self._value_range(f))
        if hi <= lo:  # one distinct value: torch.histc widens the range by 1 each side
            heights = [0] * n_bins
            heights[n_bins // 2] = count
            return [lo] * n_bins, heights
        edges = torch.linspace(lo, hi, n_bins + 1, dtype=torch.float64)
        mass = torch.stack([
            self._mass_between(edges[i], edges[i + 1], f, closed_hi=i == n_bins - 1)
            for i in range(n_bins)
        ])  # fmt: skip
        mass = mass * count / mass.sum().clamp_min(1e-300)
        heights = mass.floor().long()
        short = count - int(heights.sum())
        if short > 0:
            heights[torch.argsort(mass - heights, descending=True)[:short]] += 1
        size = (hi - lo) / n_bins
        return [round(lo + (i + 0.5) * size, 5) for i in range(n_bins)], heights.tolist()

    def logit_histogram(self, f: int) -> tuple[list[float], list[int]]:
        if "logit_hist" not in self.tensors:
            return [], []
        h = self.tensors["logit_hist"][f]
        lo, hi = float(self.tensors["logit_hist_lo"][f]), float(self.tensors["logit_hist_hi"][f])
        w = (hi - lo) / h.shape[0]
        return [lo + (i + 0.5) * w for i in range(h.shape[0])], h.tolist()

    def logits(self, f: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """(top, bottom) logit effects as (token string, value)."""
        if "logit_top_idx" not in self.tensors:
            return [], []
        t = self.tensors
        top = [(self.vocab_strings[int(i)], float(v))
               for i, v in zip(t["logit_top_idx"][f], t["logit_top_val"][f], strict=False)]  # fmt: skip
        bot = [(self.vocab_strings[int(i)], float(v))
               for i, v in zip(t["logit_bot_idx"][f], t["logit_bot_val"][f], strict=False)]  # fmt: skip
        return top, bot

    def correlated(self, f: int) -> list[tuple[int, float, float]]:
        """(feature, pearson, cosine) of the most correlated features."""
        t = self.tensors
        return [(int(i), float(p), float(c))
                for i, p, c in zip(t["corr_idx"][f], t["corr_pearson"][f], t["corr_cos"][f], strict=False)]  # fmt: skip

    # ------------------------------------------------------------------ examples
    def _token_string(self, display_id: int, role: int, private: bool) -> str:
        if private and role in _PRIVATE_ROLES:
            return f"<{Role(role).name.lower()}>"
        return self.token_strings.get(display_id, f"<unk:{display_id}>")

    def _build(
        self, f: int, kind: str, seq: int, pos: int, value: float, win: tuple, ctx: tuple,
        private: bool,
    ) -> Example:  # fmt: skip
        w_ids, w_vals, w_roles = win
        left = self.config["ctx_left"]
        items: dict[int, tuple[int, float, int]] = {}
        for j, (i, v, r) in enumerate(zip(w_ids, w_vals, w_roles, strict=False)):
            if i != NO_TOKEN:
                items[pos - left + j] = (i, v, r)
        center_is_image = pos in items and items[pos][0] <= -2
        if center_is_image and ctx is not None:
            for p, i, v, r in zip(*ctx, strict=False):
                if p >= 0 and i != NO_TOKEN and p not in items:
                    items[p] = (i, v, r)
        tokens, values, roles = [], [], []
        max_index, prev = 0, None
        for p in sorted(items):
            if prev is not None and p > prev + 1:
                tokens.append(GAP)
                values.append(0.0)
                roles.append(-1)
            i, v, r = items[p]
            if p == pos:
                max_index = len(tokens)
            tokens.append(self._token_string(i, r, private))
            values.append(round(float(v), 4))
            roles.append(int(r))
            prev = p
        study = f"study-{seq}" if private else self.study_ids[seq]
        return Example(f, kind, seq, study, float(value), max_index, tokens, values, roles)

    def _slot_example(self, prefix: str, f: int, s: int, kind: str, private: bool) -> Example:
        t = self.tensors
        win = tuple(t[f"{prefix}.{n}"][f, s].tolist() for n in ("win_ids", "win_vals", "win_roles"))
        ctx = tuple(t[f"{prefix}.{n}"][f, s].tolist()
                    for n in ("ctx_pos", "ctx_ids", "ctx_vals", "ctx_roles"))  # fmt: skip
        seq, pos = int(t[f"{prefix}.seq"][f, s]), int(t[f"{prefix}.pos"][f, s])
        ex = self._build(f, kind, seq, pos, float(t[f"{prefix}.value"][f, s]), win, ctx, private)
        if prefix == "top" and f"{prefix}.grid_image" in t and s < t["top.grid_image"].shape[1]:
            img = int(t["top.grid_image"][f, s])
            if img >= 0:
                slot = self.slot_names[img] if img < len(self.slot_names) else f"image{img}"
                vals = [round(float(x), 4) for x in t["top.grid_vals"][f, s].float()]
                ex.heatmap = Heatmap(img, slot, self.grid[0], self.grid[1], vals)
                if not private:
                    thumbs = self.thumbnails.get(seq)
                    ex.thumbnail = thumbs[img] if thumbs and img < len(thumbs) else None
        return ex

    def top_examples(self, f: int, n: int | None = None, private: bool = False) -> list[Example]:
        """Top activating sequences (descending), each windowed around its max token."""
        self.check_feature(f)
        vals = self.tensors["top.value"][f]
        n_valid = int((vals > 0).sum())
        n = n_valid if n is None else min(n, n_valid)
        return [self._slot_example("top", f, s, "top", private) for s in range(n)]

    def quantile_groups(
        self, f: int, n_groups: int = 5, per_group: int = 5, private: bool = False, seed: int = 0
    ) -> list[QuantileGroup]:
        """Examples sampled uniformly from ``n_groups`` equal-width activation intervals of (0, max],
        lowest first. ``bin_contains`` is SAE-Dashboard's: the share of all counted tokens whose
        activation lies in ``[bin_min, bin_max]`` (the lowest interval includes the zeros).

        The reservoir keeps a uniform sample per fine bin; candidates are re-weighted by
        ``count(bin) / kept(bin)`` so each interval's sample is uniform over its sequences.
        """
        self.check_feature(f)
        slots = self._group_slots(n_groups, per_group, seed)
        groups = []
        for g in range(n_groups):
            lo, hi, contains = (float(x) for x in slots["bounds"][f, g])
            exs = []
            for s in slots["slots"][f, g].tolist():
                if s >= 0:
                    ex = self._slot_example("quant", f, s, "quantile", private)
                    ex.bin_min, ex.bin_max, ex.bin_contains = lo, hi, contains
                    exs.append(ex)
            if exs:
                groups.append(QuantileGroup(lo, hi, contains, exs))
        return groups

    def _group_slots(self, n_groups: int, per_group: int, seed: int) -> dict[str, torch.Tensor]:
        """Vectorised over features: Efraimidis-Spirakis weighted sampling inside each interval."""
        key = (n_groups, per_group, seed)
        if self._groups is not None and self._groups[0] == key:
            return self._groups[1]
        t = self.tensors
        vals = t["quant.value"]  # [F, S]
        f, s = vals.shape
        q = t["qcount"].shape[1]
        valid = vals > 0
        rng = 2.0 ** t["hist_exp"].double()
        bins = (vals.double() / rng[:, None] * q).long().clamp(0, q - 1)
        kept = torch.zeros(f, q).scatter_add_(1, bins, valid.float())
        weight = t["qcount"].float().gather(1, bins) / kept.gather(1, bins).clamp_min(1)
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand((f, s), generator=gen).clamp_min(1e-12)
        es_key = torch.where(
            valid, u.log() / weight.clamp_min(1e-12), torch.full_like(u, -float("inf"))
        )
        vmax = self.max_act[:, None]
        out = torch.full((f, n_groups, per_group), -1, dtype=torch.long)
        bounds = torch.zeros(f, n_groups, 3)
        n_tok = max(self.n_tokens, 1)
        zeros = (self.n_tokens - t["nonzero"]).double().clamp_min(0)
        for g in range(n_groups):  # over groups, not features
            lo, hi = vmax * g / n_groups, vmax * (g + 1) / n_groups
            inside = valid & (vals > lo) & ((vals <= hi) if g == n_groups - 1 else (vals < hi))
            k = min(per_group, s)
            kv, ki = torch.where(inside, es_key, torch.full_like(es_key, -float("inf"))).topk(k, 1)
            out[:, g, :k] = torch.where(kv > -float("inf"), ki, torch.full_like(ki, -1))
            # SAE-Dashboard: share of ALL tokens with lo <= act <= hi (the lowest interval, lo = 0,
            # so also counts the tokens where the feature is zero)
            within = self._mass_between(lo[:, 0], hi[:, 0]) + (zeros if g == 0 else 0)
            bounds[:, g, 0], bounds[:, g, 1] = lo[:, 0], hi[:, 0]
            bounds[:, g, 2] = (within / n_tok).clamp(max=1).float()
        res = {"slots": out, "bounds": bounds}
        self._groups = (key, res)
        return res

    def non_activating_examples(
        self, f: int, n: int | None = None, private: bool = False
    ) -> list[Example]:
        """Random contexts in which the feature is zero at every shown position."""
        self.check_feature(f)
        t = self.tensors
        ok = torch.nonzero((t["rand_max"][:, f] <= 0) & (t["rand_seq"] >= 0)).flatten().tolist()
        if n is not None:
            ok = ok[:n]
        out = []
        for r in ok:
            w = len(t["rand_ids"][r])
            win = (t["rand_ids"][r].tolist(), [0.0] * w, t["rand_roles"][r].tolist())
            ctx = (t["rand_ctx_pos"][r].tolist(), t["rand_ctx_ids"][r].tolist(),
                   [0.0] * t["rand_ctx_ids"].shape[1], t["rand_ctx_roles"][r].tolist())  # fmt: skip
            seq, pos = int(t["rand_seq"][r]), int(t["rand_pos"][r])
            out.append(self._build(f, "random", seq, pos, 0.0, win, ctx, private))
        return out

    def alive_features(self) -> list[int]:
        """Features that fired at least once."""
        return torch.nonzero(self.tensors["nonzero"] > 0).flatten().tolist()
