"""Per-feature example slots that follow a vectorised merge, storing context windows of winners only.

Both the top-k buffer and the quantile reservoir are an ``ExampleBuffer``: after each batch a
selection ``sel [F, S]`` says, for every feature and slot, which candidate now sits there: an old
slot (``0 <= sel < S``), sequence ``sel - S`` of the current batch, or nothing (``-1``). Windows are
gathered from the batch only for the new winners, so memory stays ``F x S x window``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_lens_maira.dashboards.records import NO_TOKEN


@dataclass
class BatchView:
    """What the buffers need from one batch, prepared once per batch on the collector's device."""

    acts: torch.Tensor  # [B, T, F] counted activations (ignored roles zeroed)
    display_ids: torch.Tensor  # [B, T] int32 display ids (NO_TOKEN on padding)
    roles: torch.Tensor  # [B, T] int8
    is_image: torch.Tensor  # [B, T] bool
    seq_max: torch.Tensor  # [B, F] float32 per-sequence max activation
    seq_argmax: torch.Tensor  # [B, F] long position of that max
    text_ctx_pos: torch.Tensor  # [B, C] long positions of the last C variable-text tokens (-1 none)
    pos_map: torch.Tensor  # [B, n_images, P] long position of each patch (-1 none)
    grid_image: (
        torch.Tensor
    )  # [B, F] long image holding the feature's max image activation (-1 none)
    seq_offset: int  # global index of the batch's first sequence


def gather_positions(
    view: BatchView, b: torch.Tensor, f: torch.Tensor, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Display ids, activations (float32) and roles at ``pos [M, W]`` of sequences ``b`` for features ``f``.

    Positions < 0 or beyond the sequence give ``NO_TOKEN``, 0 and PAD role.
    """
    t = view.acts.shape[1]
    ok = (pos >= 0) & (pos < t)
    p = pos.clamp(0, t - 1)
    bb = b[:, None].expand_as(p)
    ids = torch.where(ok, view.display_ids[bb, p], torch.full_like(p, NO_TOKEN, dtype=torch.int32))
    vals = view.acts[bb, p, f[:, None].expand_as(p)].float()
    vals = torch.where(ok & (ids != NO_TOKEN), vals, torch.zeros_like(vals))
    roles = torch.where(ok, view.roles[bb, p], torch.full_like(p, 10, dtype=torch.int8))
    return ids.to(torch.int32), vals, roles.to(torch.int8)


class ExampleBuffer:
    """``S`` example slots per feature: max value, sequence, max position, context window, text context."""

    def __init__(
        self,
        d_sae: int,
        n_slots: int,
        ctx_left: int,
        ctx_right: int,
        text_context: int,
        device: torch.device,
        n_heatmaps: int = 0,
        n_patches: int = 0,
    ):
        self.n_slots, self.ctx_left, self.ctx_right = n_slots, ctx_left, ctx_right
        self.n_heatmaps = min(n_heatmaps, n_slots)
        w = ctx_left + ctx_right + 1
        f, s, c = d_sae, n_slots, text_context
        self.value = torch.full((f, s), -1.0, device=device)
        self.key = torch.zeros((f, s), device=device)  # reservoir priority
        self.seq = torch.full((f, s), -1, dtype=torch.long, device=device)
        self.pos = torch.full((f, s), -1, dtype=torch.int32, device=device)
        self.win_ids = torch.full((f, s, w), NO_TOKEN, dtype=torch.int32, device=device)
        self.win_vals = torch.zeros((f, s, w), device=device)
        self.win_roles = torch.full((f, s, w), 10, dtype=torch.int8, device=device)
        self.ctx_pos = torch.full((f, s, c), -1, dtype=torch.int32, device=device)
        self.ctx_ids = torch.full((f, s, c), NO_TOKEN, dtype=torch.int32, device=device)
        self.ctx_vals = torch.zeros((f, s, c), device=device)
        self.ctx_roles = torch.full((f, s, c), 10, dtype=torch.int8, device=device)
        h = self.n_heatmaps
        self.grid_image = torch.full((f, h), -1, dtype=torch.int8, device=device)
        self.grid_vals = torch.zeros((f, h, n_patches), dtype=torch.float16, device=device)

    _SLOT_FIELDS = (
        "value", "key", "seq", "pos", "win_ids", "win_vals", "win_roles",
        "ctx_pos", "ctx_ids", "ctx_vals", "ctx_roles",
    )  # fmt: skip

    def merge(
        self, sel: torch.Tensor, view: BatchView, new_keys: torch.Tensor | None = None
    ) -> None:
        """Rearrange slots by ``sel [F, S]`` (see module doc), filling new winners from ``view``."""
        s = self.n_slots
        identity = torch.arange(s, device=sel.device).expand_as(sel)
        if torch.equal(sel, identity):
            return
        old = sel.clamp(0, s - 1)
        keep_old = (sel >= 0) & (sel < s)
        fields = {}
        for name in self._SLOT_FIELDS:
            arr = getattr(self, name)
            idx = old.view(*old.shape, *([1] * (arr.ndim - 2))).expand(-1, -1, *arr.shape[2:])
            g = arr.gather(1, idx)
            empty = _empty_like(name, g)
            mask = keep_old.view(*keep_old.shape, *([1] * (arr.ndim - 2)))
            fields[name] = torch.where(mask, g, empty)
        # heatmaps: slot j < H only ever comes from old slot j' < H (buffers are sorted) or the batch
        h = self.n_heatmaps
        if h:
            sel_h, old_h = sel[:, :h], old[:, :h].clamp(max=h - 1)
            keep_h = (sel_h >= 0) & (sel_h < h)
            gi = self.grid_image.gather(1, old_h)
            gv = self.grid_vals.gather(1, old_h[..., None].expand(-1, -1, self.grid_vals.shape[2]))
            grid_image = torch.where(keep_h, gi, torch.full_like(gi, -1))
            grid_vals = torch.where(keep_h[..., None], gv, torch.zeros_like(gv))

        fi, si = torch.nonzero(sel >= s, as_tuple=True)
        if fi.numel():
            b = sel[fi, si] - s
            value = view.seq_max[b, fi]
            pos = view.seq_argmax[b, fi]
            fields["value"][fi, si] = value
            fields["seq"][fi, si] = b + view.seq_offset
            fields["pos"][fi, si] = pos.to(torch.int32)
            if new_keys is not None:
                fields["key"][fi, si] = new_keys[fi, b]
            offs = torch.arange(-self.ctx_left, self.ctx_right + 1, device=pos.device)
            ids, vals, roles = gather_positions(view, b, fi, pos[:, None] + offs)
            fields["win_ids"][fi, si], fields["win_vals"][fi, si], fields["win_roles"][fi, si] = (
                ids,
                vals,
                roles,
            )
            if view.text_ctx_pos.shape[1] and self.ctx_ids.shape[2]:
                cpos = view.text_ctx_pos[b]
                ids, vals, roles = gather_positions(view, b, fi, cpos)
                fields["ctx_pos"][fi, si] = cpos.to(torch.int32)
                fields["ctx_ids"][fi, si], fields["ctx_vals"][fi, si] = ids, vals
                fields["ctx_roles"][fi, si] = roles
            if h:
                in_h = si < h
                fh, sh, bh = fi[in_h], si[in_h], b[in_h]
                img = view.grid_image[bh, fh]
                has = img >= 0
                grid_image[fh, sh] = img.to(torch.int8)
                ppos = view.pos_map[bh, img.clamp(min=0)]  # [M, P]
                gvals = view.acts[bh[:, None], ppos.clamp(min=0), fh[:, None]].float()
                gvals = torch.where((ppos >= 0) & has[:, None], gvals, torch.zeros_like(gvals))
                grid_vals[fh, sh] = gvals.to(torch.float16)
        for name, value in fields.items():
            setattr(self, name, value)
        if h:
            self.grid_image, self.grid_vals = grid_image, grid_vals

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.{n}": getattr(self, n) for n in self._SLOT_FIELDS if n != "key"}
        if self.n_heatmaps:
            out[f"{prefix}.grid_image"] = self.grid_image
            out[f"{prefix}.grid_vals"] = self.grid_vals
        return out


def _empty_like(name: str, like: torch.Tensor) -> torch.Tensor:
    fill = {
        "value": -1.0, "seq": -1, "pos": -1, "win_ids": NO_TOKEN, "ctx_ids": NO_TOKEN,
        "ctx_pos": -1, "win_roles": 10, "ctx_roles": 10,
    }.get(name, 0)  # fmt: skip
    return torch.full_like(like, fill)
