"""Feature statistics in one vectorised pass over batches: no per-feature Python loop over data.

Per feature, kept across batches in fixed memory on the batch's device (GPU when there is one):
- top ``n_top`` sequences by their max activation, each with a context window around the max token,
  the last variable-text tokens of the prompt and (first ``n_heatmaps``) the patch grid of the
  feature's activations over the image where it fires most;
- a reservoir of sequences per activation bin (bottom-k sketch on random priorities), from which
  the exports draw examples across activation intervals;
- density (tokens with activation > 0) and an exact activation histogram whose range doubles as
  the max grows (bins merge pairwise, so no second pass is needed);
- a random sample of token positions (full activation rows) for correlations between features,
  and random context windows that serve as non-activating examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch
from PIL import Image
from tqdm.auto import tqdm

from sae_lens_maira.dashboards.example_buffer import (
    PAD_ROLE,
    BatchView,
    ExampleBuffer,
    extract_windows,
    gather_positions,
)
from sae_lens_maira.dashboards.sequence_batch import (
    NO_TOKEN,
    DashboardMeta,
    SequenceBatch,
    TokenNamer,
    image_display_id,
)
from sae_lens_maira.processing.roles import Role

#: Roles whose text comes from the study (what the privacy switch hides; text context draws on them).
VARIABLE_TEXT_ROLES = (
    Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON, Role.PRIOR_REPORT, Role.PHRASE, Role.REPORT,
)  # fmt: skip
_UNSET = -(2**30)
#: SAE-Dashboard's ActsHistogramConfig / LogitsHistogramConfig n_bins (components_config.py)
SAEDASHBOARD_HIST_BINS = 50
_SCAN_CHUNK = 1 << 20
_POS_BITS = 24
_POS_LIMIT = 1 << _POS_BITS


@dataclass
class FeatureStatsConfig:
    """Sizes of every per-feature buffer. Memory is about ``d_sae x (n_top + n_bins x per_bin) x
    (window + text_context) x 9`` bytes plus ``d_sae x n_heatmaps x patches x 2``."""

    n_top: int = 40
    n_quantile_bins: int = 10
    n_per_quantile_bin: int = 5
    ctx_left: int = 24
    ctx_right: int = 8
    text_context: int = 32
    n_heatmaps: int = 5
    n_hist_bins: int = 40
    n_random_contexts: int = 200
    n_corr_positions: int = 2048
    n_correlated: int = 10
    n_logits: int = 10
    ignore_roles: tuple[str, ...] = ("boilerplate", "pad")
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_top", "n_quantile_bins", "n_per_quantile_bin", "n_hist_bins"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"FeatureStatsConfig.{name} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("ctx_left", "ctx_right", "text_context", "n_heatmaps", "n_random_contexts"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"FeatureStatsConfig.{name} must be >= 0, got {getattr(self, name)}"
                )
        if self.window + self.text_context + 1 > 1024:
            raise ValueError(
                f"window ({self.window}) + text_context ({self.text_context}) exceeds Neuronpedia's "
                "1024-token records; shrink ctx_left/ctx_right/text_context"
            )
        self.ignore_roles = tuple(Role.parse(r).name.lower() for r in self.ignore_roles)

    @property
    def window(self) -> int:
        return self.ctx_left + self.ctx_right + 1


class FeatureStatsCollector:
    """Streams :class:`SequenceBatch` es into per-feature statistics; :meth:`finalize` gives
    :class:`~sae_lens_maira.dashboards.feature_stats.FeatureStats`.

    >>> collector = FeatureStatsCollector(d_sae, grid=(37, 37), device="cuda")
    >>> for batch in batches: collector.update(batch)
    >>> stats = collector.finalize(token_namer, meta, W_dec=W_dec, W_U=W_U)
    """

    def __init__(
        self,
        d_sae: int,
        grid: tuple[int, int],
        config: FeatureStatsConfig | None = None,
        device: str | torch.device | None = None,
        max_images: int = 3,
        thumbnail_size: int = 224,
    ):
        if d_sae < 1:
            raise ValueError(f"d_sae must be positive, got {d_sae}")
        self.cfg = config or FeatureStatsConfig()
        self.d_sae, self.grid, self.max_images = d_sae, (grid[0], grid[1]), max_images
        self.n_patches = grid[0] * grid[1]
        self.thumbnail_size = thumbnail_size
        self.device = torch.device(device) if device is not None else None
        self._initialised = False
        self.n_tokens = 0
        self.n_sequences = 0
        self.study_ids: list[str] = []
        self.thumbnails: dict[int, list[Image.Image | None]] = {}

    def _init(self, device: torch.device) -> None:
        cfg, f = self.cfg, self.d_sae
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.nonzero = torch.zeros(f, dtype=torch.long, device=device)
        self.act_sum = torch.zeros(f, dtype=torch.float64, device=device)
        self.act_min = torch.full((f,), float("inf"), device=device)  # SAE-Dashboard's histogram range
        self.exp = torch.full((f,), _UNSET, dtype=torch.long, device=device)
        self.hist = torch.zeros((f, cfg.n_hist_bins), dtype=torch.long, device=device)
        self.qcount = torch.zeros((f, cfg.n_quantile_bins), dtype=torch.long, device=device)
        windowed = partial(
            ExampleBuffer,
            ctx_left=cfg.ctx_left,
            ctx_right=cfg.ctx_right,
            text_context=cfg.text_context,
        )
        self.top = windowed(f, cfg.n_top, device)
        self.quant = windowed(f, cfg.n_quantile_bins * cfg.n_per_quantile_bin, device)
        self.n_heat = min(cfg.n_heatmaps, cfg.n_top)
        self.heat = (
            ExampleBuffer(f, self.n_heat, device, windows=False, n_patches=self.n_patches)
            if self.n_heat
            else None
        )
        n, w = cfg.n_random_contexts, cfg.window
        self.rand_key = torch.full((n,), -1.0, device=device)
        self.rand_seq = torch.full((n,), -1, dtype=torch.long, device=device)
        self.rand_pos = torch.full((n,), -1, dtype=torch.int32, device=device)
        self.rand_ids = torch.full((n, w), NO_TOKEN, dtype=torch.int32, device=device)
        self.rand_roles = torch.full((n, w), 10, dtype=torch.int8, device=device)
        self.rand_ctx_pos = torch.full((n, cfg.text_context), -1, dtype=torch.int32, device=device)
        self.rand_ctx_ids = torch.full(
            (n, cfg.text_context), NO_TOKEN, dtype=torch.int32, device=device
        )
        self.rand_ctx_roles = torch.full((n, cfg.text_context), 10, dtype=torch.int8, device=device)
        self.rand_max = torch.zeros((n, f), device=device)
        self.corr_key = torch.full((cfg.n_corr_positions,), -1.0, device=device)
        self.corr_acts = torch.zeros((cfg.n_corr_positions, f), device=device)
        self._initialised = True

    # ------------------------------------------------------------------ one batch
    @torch.no_grad()
    def update(self, batch: SequenceBatch) -> None:
        """Fold one batch into every statistic (vectorised over features and sequences)."""
        batch.validate(self.d_sae)
        if tuple(batch.grid) != self.grid:
            raise ValueError(
                f"batch grid {batch.grid} differs from the collector's grid {self.grid}"
            )
        device = self.device or batch.feature_acts.device  # the first batch's, unless given
        if not self._initialised:
            self._init(device)
        batch = batch.to(device)
        view = self._prepare(batch)
        self._update_counts(view, batch)
        self._update_examples(view)
        self._update_random_contexts(view, batch)
        self._update_corr(view, batch)
        self._update_thumbnails(batch, view.seq_offset)
        self.study_ids.extend(batch.study_ids)
        self.n_sequences += len(batch.study_ids)

    def _counted(self, batch: SequenceBatch) -> torch.Tensor:
        ignore = torch.tensor(
            [int(Role.parse(r)) for r in self.cfg.ignore_roles], device=self.device
        )
        return batch.mask & ~torch.isin(batch.roles, ignore)

    def _prepare(self, batch: SequenceBatch) -> BatchView:
        """The counted positive activations (one scan of dense input, none for sparse input); every
        reduction and lookup then runs on those (SAE codes are sparse), so a batch costs O(nnz)."""
        cfg = self.cfg
        counted = self._counted(batch)
        b, t, f = batch.feature_acts.shape
        row, feat, vals = _positive_entries(batch.feature_acts)
        ok = counted.reshape(-1).take(row)
        if not bool(ok.all()):
            keep = torch.nonzero(ok).squeeze(1)
            row, feat, vals = row[keep], feat[keep], vals[keep]
        bi, ti = row // t, row % t
        key = bi * f + feat
        seq_max, seq_argmax = _segment_max(key, vals, ti, b * f)
        is_img = batch.image_index >= 0
        display = torch.where(
            is_img,
            image_display_id(batch.image_index, batch.patch_index, self.n_patches),
            batch.token_ids,
        )
        display = torch.where(batch.mask, display, torch.full_like(display, NO_TOKEN)).to(
            torch.int32
        )
        # last C variable-text positions of each sequence (feature independent)
        var = batch.mask & torch.isin(
            batch.roles, torch.tensor([int(r) for r in VARIABLE_TEXT_ROLES], device=self.device)
        )
        c = min(cfg.text_context, t)
        ar = torch.arange(t, device=self.device).expand(b, t)
        last, _ = torch.where(var, ar, torch.full_like(ar, -1)).topk(c, dim=1)
        text_ctx_pos = last.flip(1)  # ascending, -1 (none) first
        if c < cfg.text_context:
            pad = torch.full((b, cfg.text_context - c), -1, dtype=torch.long, device=self.device)
            text_ctx_pos = torch.cat([pad, text_ctx_pos], dim=1)
        # patch -> position map and the image where each feature fires most
        n_img = self.max_images
        if bool((batch.image_index >= n_img).any()):
            raise ValueError(
                f"image_index holds slot {int(batch.image_index.max())} but the collector was built "
                f"with max_images={n_img}"
            )
        on_img = is_img.reshape(-1).take(row)
        img_max, img_arg = _segment_max(key[on_img], vals[on_img], ti[on_img], b * f)
        img_of = batch.image_index.gather(1, img_arg.view(b, f))
        grid_image = torch.where(img_max.view(b, f) > 0, img_of, torch.full_like(img_of, -1))
        return BatchView(
            d_sae=f,
            counted=counted,
            display_ids=display,
            roles=batch.roles.to(torch.int8),
            is_image=is_img,
            image_index=batch.image_index,
            patch_index=batch.patch_index,
            seq_max=seq_max.view(b, f),
            seq_argmax=seq_argmax.view(b, f),
            text_ctx_pos=text_ctx_pos,
            grid_image=grid_image,
            seq_offset=self.n_sequences,
            window_ids=_windows(display, cfg.ctx_left, cfg.ctx_right, NO_TOKEN),
            window_roles=_windows(
                batch.roles.to(torch.int8), cfg.ctx_left, cfg.ctx_right, PAD_ROLE
            ),
            nz_row=row,
            nz_key=key,
            nz_feat=feat,
            nz_vals=vals,
        )

    def _grow_ranges(self, batch_max: torch.Tensor) -> None:
        """Double each feature's histogram range until it holds ``batch_max``; merge bins pairwise."""
        fires = batch_max > 0
        _, e = torch.frexp(batch_max.float())  # batch_max < 2**e
        e = e.long()
        unset = self.exp == _UNSET
        self.exp = torch.where(fires & unset, e, self.exp)
        shift = torch.where(fires & ~unset, (e - self.exp).clamp(min=0), torch.zeros_like(e))
        if bool((shift > 0).any()):
            shift = shift.clamp(max=62)
            for name in ("hist", "qcount"):
                h = getattr(self, name)
                idx = torch.arange(h.shape[1], device=h.device)[None, :] >> shift[:, None]
                setattr(self, name, torch.zeros_like(h).scatter_add_(1, idx, h))
            self.exp = self.exp + shift

    def _bin(self, values: torch.Tensor, features: torch.Tensor, n_bins: int) -> torch.Tensor:
        """Bin index of each value under its feature's current range [0, 2**exp)."""
        exp = torch.where(self.exp == _UNSET, torch.zeros_like(self.exp), self.exp)
        scale = torch.exp2(-exp.to(torch.float64)).mul(n_bins).to(torch.float32)  # exact: 2**-e * n
        return (values.float() * scale[features]).long().clamp(0, n_bins - 1)

    def _update_counts(self, view: BatchView, batch: SequenceBatch) -> None:
        self.n_tokens += int(view.counted.sum())
        self._grow_ranges(view.seq_max.max(dim=0).values)
        feat, vals = view.nz_feat, view.nz_vals
        self.nonzero += torch.bincount(feat, minlength=self.d_sae)
        self.act_sum.index_add_(0, feat, vals.double())
        self.act_min.scatter_reduce_(0, feat, vals.float(), "amin")
        n = self.cfg.n_hist_bins
        flat = feat * n + self._bin(vals, feat, n)
        self.hist += torch.bincount(flat, minlength=self.d_sae * n).view(self.d_sae, n)

    def _update_examples(self, view: BatchView) -> None:
        """Top, heatmap and quantile buffers; windows of winners in both top and quantile buffers
        are extracted once."""
        top_keep, _ = self._top_keep(self.top, view)
        quant_keep, quant_keys = self._quantile_keep(view)
        keeps = [(self.top, top_keep, None), (self.quant, quant_keep, quant_keys)]
        if self.heat is not None:
            keeps.append((self.heat, *self._top_keep(self.heat, view)))
        new_pairs = top_keep[:, self.top.n_slots :] | quant_keep[:, self.quant.n_slots :]
        fi, bi = torch.nonzero(new_pairs, as_tuple=True)
        windows = extract_windows(view, fi, bi, self.cfg.ctx_left, self.cfg.ctx_right,
                                  self.cfg.text_context)  # fmt: skip
        for buf, keep, new_keys in keeps:
            buf.merge(keep, view, new_keys=new_keys, windows=windows if buf.windows else None)

    def _top_keep(self, buf: ExampleBuffer, view: BatchView) -> tuple[torch.Tensor, None]:
        cand = torch.cat([buf.value, view.seq_max.T], dim=1)  # [F, S + B]
        vals, idx = cand.topk(buf.n_slots, dim=1)
        return torch.zeros_like(cand, dtype=torch.bool).scatter_(1, idx, vals > 0), None

    def _quantile_keep(self, view: BatchView) -> tuple[torch.Tensor, torch.Tensor]:
        """Bottom-k sketch per (feature, activation bin): keep the highest random priorities."""
        q, per = self.cfg.n_quantile_bins, self.cfg.n_per_quantile_bin
        buf, s = self.quant, self.quant.n_slots
        f, b = self.d_sae, view.seq_max.shape[0]
        new_vals = view.seq_max.T  # [F, B]
        new_keys = torch.rand((f, b), generator=self.gen, device=self.device)
        vals = torch.cat([buf.value, new_vals], dim=1)
        keys = torch.cat([buf.key, new_keys], dim=1)
        valid = vals > 0
        feats = torch.arange(f, device=self.device)[:, None].expand_as(vals)
        bins = self._bin(vals.clamp_min(0), feats, q)
        new_bins = bins[:, s:]
        self.qcount += torch.zeros_like(self.qcount).scatter_add_(1, new_bins, valid[:, s:].long())
        score = torch.where(
            valid, bins.float() + keys.clamp(max=0.999999), torch.full_like(keys, -1.0)
        )
        score, order = score.sort(dim=1, descending=True)
        sbins = bins.gather(1, order)
        svalid = score >= 0
        n = order.shape[1]
        ar = torch.arange(n, device=self.device).expand(f, n)
        starts = torch.ones_like(svalid)
        starts[:, 1:] = sbins[:, 1:] != sbins[:, :-1]
        first = torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=1).values
        rank = ar - first
        keep_sorted = svalid & (rank < per)
        return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted), new_keys

    def _update_random_contexts(self, view: BatchView, batch: SequenceBatch) -> None:
        """One random counted position per sequence enters a global reservoir of context windows."""
        n = self.cfg.n_random_contexts
        if n == 0:
            return
        counted = view.counted
        has = counted.any(dim=1)
        noise = torch.rand(counted.shape, generator=self.gen, device=self.device)
        pos = torch.where(counted, noise, torch.full_like(noise, -1.0)).argmax(dim=1)
        keys = torch.rand(has.shape, generator=self.gen, device=self.device)
        keys = torch.where(has, keys, torch.full_like(keys, -1.0))
        slots, b = _reservoir_update(self.rand_key, keys)
        if not slots.numel():
            return
        p = pos[b]
        offs = torch.arange(-self.cfg.ctx_left, self.cfg.ctx_right + 1, device=self.device)
        wpos = p[:, None] + offs
        ids = view.window_ids.index_select(0, b * view.seq_len + p)
        roles = view.window_roles.index_select(0, b * view.seq_len + p)
        cpos = view.text_ctx_pos[b]
        cids, croles = gather_positions(view, b, cpos)
        show_ctx = view.is_image[b, p]  # the text context is shown only under image windows
        allpos = torch.cat(
            [wpos, torch.where(show_ctx[:, None], cpos, torch.full_like(cpos, -1))], 1
        )
        t = view.seq_len
        ok = (allpos >= 0) & (allpos < t)
        owner = torch.arange(b.numel(), device=self.device)[:, None].expand_as(allpos)
        # one slot per sequence, so no position belongs to two slots
        self.rand_max[slots] = view.rows_max((b[:, None] * t + allpos)[ok], owner[ok], b.numel())
        self.rand_seq[slots] = b + view.seq_offset
        self.rand_pos[slots] = p.to(torch.int32)
        self.rand_ids[slots], self.rand_roles[slots] = ids, roles
        self.rand_ctx_pos[slots] = cpos.to(torch.int32)
        self.rand_ctx_ids[slots], self.rand_ctx_roles[slots] = cids, croles

    def _update_corr(self, view: BatchView, batch: SequenceBatch) -> None:
        n = self.cfg.n_corr_positions
        if n == 0:
            return
        counted = view.counted.reshape(-1)
        keys = torch.rand(counted.shape, generator=self.gen, device=self.device)
        keys = torch.where(counted, keys, torch.full_like(keys, -1.0))
        slots, rows = _reservoir_update(self.corr_key, keys)
        if slots.numel():
            owner = torch.arange(rows.numel(), device=self.device)
            self.corr_acts[slots] = view.rows_max(rows, owner, rows.numel())

    def _update_thumbnails(self, batch: SequenceBatch, offset: int) -> None:
        """Keep thumbnails only of sequences that some heatmap slot still refers to."""
        if batch.images is None or self.heat is None:
            return
        live = set(torch.unique(self.heat.seq).tolist())
        for seq in [s for s in self.thumbnails if s not in live]:
            del self.thumbnails[seq]
        for i, imgs in enumerate(batch.images):
            if offset + i in live:
                self.thumbnails[offset + i] = [_thumbnail(im, self.thumbnail_size) for im in imgs]
        for seq in [s for s in self.thumbnails if s not in live]:
            del self.thumbnails[seq]

    # ------------------------------------------------------------------ results
    def _top_state(self) -> dict[str, torch.Tensor]:
        """Top slots sorted by value, with the heatmap buffer's grids aligned to the first ones."""
        out = self.top.sorted_state("top")
        if self.heat is None:
            return out
        hs = self.heat.sorted_state("heat")
        tseq = out["top.seq"][:, : self.n_heat]
        match = (tseq[:, :, None] == hs["heat.seq"][:, None, :]) & (tseq[:, :, None] >= 0)
        has, j = match.any(dim=-1), match.to(torch.int8).argmax(dim=-1)
        img = hs["heat.grid_image"].gather(1, j)
        out["top.grid_image"] = torch.where(has, img, torch.full_like(img, -1))
        grid = hs["heat.grid_vals"].gather(1, j[..., None].expand(-1, -1, self.n_patches))
        out["top.grid_vals"] = grid * has[..., None]
        return out

    @torch.no_grad()
    def finalize(
        self,
        namer: TokenNamer,
        meta: DashboardMeta | None = None,
        W_dec: torch.Tensor | None = None,
        W_U: torch.Tensor | None = None,
        vocab: Sequence[str] | Callable[[int], str] | None = None,
        chunk_size: int = 1024,
    ):
        """Collect everything into a :class:`FeatureStats` (on CPU), adding decoder-derived stats.

        ``W_dec [d_sae, d_model]`` and ``W_U [d_model, d_vocab]`` give logit effects (top and bottom
        tokens, logit histogram) and neuron alignment; ``vocab`` names the unembedding's tokens
        (defaults to ``namer``'s text vocabulary).
        """
        from sae_lens_maira.dashboards.decoder_stats import (
            correlations,
            logit_effects,
            neuron_alignment,
        )
        from sae_lens_maira.dashboards.feature_stats import FeatureStats

        if not self._initialised:
            raise ValueError("no batches were given to the collector; call update(batch) first")
        meta = meta or DashboardMeta()
        meta.d_sae = self.d_sae
        tensors: dict[str, torch.Tensor] = {
            "nonzero": self.nonzero,
            "act_sum": self.act_sum,
            "act_min": torch.where(self.nonzero > 0, self.act_min, torch.zeros_like(self.act_min)),
            "hist_exp": torch.where(self.exp == _UNSET, torch.zeros_like(self.exp), self.exp),
            "hist": self.hist,
            "qcount": self.qcount,
            **self._top_state(),
            **self.quant.sorted_state("quant"),
            "rand_seq": self.rand_seq,
            "rand_pos": self.rand_pos,
            "rand_ids": self.rand_ids,
            "rand_roles": self.rand_roles,
            "rand_ctx_pos": self.rand_ctx_pos,
            "rand_ctx_ids": self.rand_ctx_ids,
            "rand_ctx_roles": self.rand_ctx_roles,
            "rand_max": self.rand_max,
        }
        n_corr = int((self.corr_key >= 0).sum())
        idx, pearson, cos = correlations(
            self.corr_acts[self.corr_key >= 0], self.cfg.n_correlated, chunk_size
        )
        tensors |= {"corr_idx": idx, "corr_pearson": pearson, "corr_cos": cos}
        if W_dec is not None:
            if tuple(W_dec.shape[:1]) != (self.d_sae,):
                raise ValueError(
                    f"W_dec must be [d_sae={self.d_sae}, d_model], got {tuple(W_dec.shape)}"
                )
            a_idx, a_val, a_l1 = neuron_alignment(W_dec, self.cfg.n_correlated)
            tensors |= {"align_idx": a_idx, "align_val": a_val, "align_l1": a_l1}
            if W_U is not None:
                tensors |= logit_effects(
                    W_dec.to(self.device), W_U.to(self.device), self.cfg.n_logits,
                    SAEDASHBOARD_HIST_BINS, chunk_size,
                )  # fmt: skip
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        ids = [tensors[k] for k in ("top.win_ids", "top.ctx_ids", "quant.win_ids", "quant.ctx_ids",
                                    "rand_ids", "rand_ctx_ids")]  # fmt: skip
        used = torch.unique(torch.cat([x.flatten() for x in ids]))
        used = used[used != NO_TOKEN].tolist()
        strings = {int(i): namer(int(i)) for i in used}
        vocab_strings: dict[int, str] = {}
        if "logit_top_idx" in tensors:
            lnamer = TokenNamer(vocab, namer.grid) if vocab is not None else namer
            lids = torch.unique(torch.cat([tensors["logit_top_idx"], tensors["logit_bot_idx"]]))
            vocab_strings = {int(i): lnamer.text(int(i)) for i in lids.tolist()}
        return FeatureStats(
            tensors=tensors,
            meta=meta,
            config=asdict(self.cfg),
            grid=self.grid,
            slot_names=tuple(namer.slot_names),
            n_tokens=self.n_tokens,
            n_sequences=self.n_sequences,
            n_corr_positions=n_corr,
            study_ids=list(self.study_ids),
            token_strings=strings,
            vocab_strings=vocab_strings,
            thumbnails=dict(self.thumbnails),
        )


def collect_feature_stats(
    batches: Iterable[SequenceBatch],
    d_sae: int,
    grid: tuple[int, int],
    namer: TokenNamer,
    meta: DashboardMeta | None = None,
    config: FeatureStatsConfig | None = None,
    device: str | torch.device | None = None,
    W_dec: torch.Tensor | None = None,
    W_U: torch.Tensor | None = None,
    total: int | None = None,
    **kw,
):
    """Run the pass over ``batches`` with a progress bar and return the finished statistics."""
    collector = FeatureStatsCollector(d_sae, grid, config, device=device, **kw)
    for batch in tqdm(batches, total=total, desc="feature statistics", unit="batch"):
        collector.update(batch)
    return collector.finalize(namer, meta, W_dec=W_dec, W_U=W_U)


def _positive_entries(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat position ``b * T + t``, feature and float32 value of every positive entry of ``acts``
    ``[B, T, F]``, dense (one scan) or sparse COO (read as is, as a top-k SAE's codes are)."""
    b, t, f = acts.shape
    if acts.layout == torch.sparse_coo:
        acts = acts.coalesce()
        idx, vals = acts.indices(), acts.values().float()
        ok = vals > 0
        return (idx[0] * t + idx[1])[ok], idx[2][ok], vals[ok]
    flat = acts.reshape(-1)
    # chunks keep the boolean mask and the values cached (one [B*T*F] mask costs page faults)
    idx, vals = [], []
    for i, chunk in enumerate(flat.split(_SCAN_CHUNK)):
        local = torch.nonzero(chunk > 0).squeeze(1)
        idx.append(local + i * _SCAN_CHUNK)
        vals.append(chunk.take(local))
    nz = torch.cat(idx)
    row = nz // f
    return row, nz - row * f, torch.cat(vals).float()


def _reservoir_update(
    keys: torch.Tensor, new_keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``n`` highest of ``keys`` (in place, unordered; < 0 is empty) and ``new_keys``:
    returns ``(slots, winners)``, new entry ``winners[i]`` now owning slot ``slots[i]``. Only the
    changed slots are written, so a reservoir of full activation rows costs O(winners) per batch."""
    n = keys.numel()
    top, idx = torch.cat([keys, new_keys]).topk(n)
    winners = idx[(idx >= n) & (top >= 0)] - n
    kept = torch.zeros(n, dtype=torch.bool, device=keys.device)
    kept[idx[idx < n]] = True
    free = torch.nonzero(~(kept & (keys >= 0))).squeeze(1)  # evicted or empty: enough for winners
    slots = free[: winners.numel()]
    keys[free] = -1.0
    keys[slots] = new_keys[winners]
    return slots, winners


def _windows(x: torch.Tensor, left: int, right: int, fill: int) -> torch.Tensor:
    """``[B * T, left + 1 + right]``: the window of ``x [B, T]`` around every position (``fill`` outside)."""
    padded = torch.nn.functional.pad(x, (left, right), value=fill)
    return padded.unfold(1, left + 1 + right, 1).reshape(-1, left + 1 + right)


def _segment_max(
    key: torch.Tensor, vals: torch.Tensor, pos: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max of ``vals`` (positive float32) per segment ``key`` in [0, n) and the first position holding
    it (0 if empty), in one ``amax``: positive floats order like their bit patterns, so the value's
    bits above the negated position make one sortable integer."""
    if not vals.numel():
        return torch.zeros(n, device=vals.device), torch.zeros(
            n, dtype=torch.long, device=vals.device
        )
    if int(pos.max()) >= _POS_LIMIT:
        raise ValueError(f"sequences longer than {_POS_LIMIT} tokens are not supported")
    packed = (vals.view(torch.int32).long() << _POS_BITS) | (_POS_LIMIT - 1 - pos)
    best = torch.zeros(n, dtype=torch.long, device=vals.device).scatter_reduce_(
        0, key, packed, "amax"
    )
    value = (best >> _POS_BITS).to(torch.int32).view(torch.float32)
    first = torch.where(
        best > 0, _POS_LIMIT - 1 - (best & (_POS_LIMIT - 1)), torch.zeros_like(best)
    )
    return value, first


def _thumbnail(image: Image.Image | None, size: int) -> Image.Image | None:
    """Centre square crop (the region MAIRA-2's processor keeps, so the patch grid lines up) at ``size``."""
    if image is None:
        return None
    if not isinstance(image, Image.Image):
        raise ValueError(
            f"SequenceBatch.images must hold PIL images or None, got {type(image).__name__}"
        )
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = image.crop((left, top, left + s, top + s)).convert("L")
    return im.resize((size, size), Image.Resampling.BICUBIC)
