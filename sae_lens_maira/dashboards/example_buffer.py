"""Per-feature example slots updated in place by a vectorised merge, storing windows of winners only.

The top-k buffer, the heatmap buffer and the quantile reservoir are each an ``ExampleBuffer``.
After each batch a ``keep [F, S + B]`` mask says which candidates survive: the ``S`` current slots
and the ``B`` sequences of the batch (one candidate per sequence: its max token). Slots are an
unordered set: surviving old slots stay where they are, and new winners are written into the
freed slots, so a batch costs ``O(new winners x window)`` rather than ``O(F x S x window)``.
Order (descending value) is imposed once, in :meth:`sorted_state`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_lens_maira.dashboards.records import NO_TOKEN

PAD_ROLE = 10


@dataclass
class BatchView:
    """What the buffers need from one batch, prepared once per batch on the collector's device."""

    acts: torch.Tensor  # [B, T, F] the batch's activations as given (read through `act_at`)
    counted: torch.Tensor  # [B, T] bool positions that count (real, role not ignored)
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
    nz_feat: torch.Tensor  # [nnz] feature of each counted positive activation
    nz_vals: torch.Tensor  # [nnz] float32 its value

    def act_at(
        self, b: torch.Tensor, p: torch.Tensor, f: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Counted activations (float32, negatives as 0) at ``acts[b, p, f]`` (``f`` None: all features)."""
        t, n_f = self.acts.shape[1], self.acts.shape[2]
        row = b * t + p
        keep = self.counted.reshape(-1).take(row)
        if f is None:
            return self.acts.reshape(-1, n_f)[row].float().clamp_min(0) * keep[..., None]
        return self.acts.reshape(-1).take(row * n_f + f).float().clamp_min(0) * keep


def gather_positions(
    view: BatchView, b: torch.Tensor, f: torch.Tensor, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Display ids, activations (float32) and roles at ``pos [M, W]`` of sequences ``b`` for features ``f``.

    Positions < 0 or beyond the sequence give ``NO_TOKEN``, 0 and the PAD role.
    """
    t = view.acts.shape[1]
    ok = (pos >= 0) & (pos < t)
    p = pos.clamp(0, t - 1)
    bb = b[:, None].expand_as(p)
    ids = torch.where(ok, view.display_ids[bb, p], torch.full_like(p, NO_TOKEN, dtype=torch.int32))
    vals = view.act_at(bb, p, f[:, None].expand_as(p))
    vals = torch.where(ok & (ids != NO_TOKEN), vals, torch.zeros_like(vals))
    roles = torch.where(ok, view.roles[bb, p], torch.full_like(p, PAD_ROLE, dtype=torch.int8))
    return ids.to(torch.int32), vals, roles.to(torch.int8)


class ExampleBuffer:
    """``S`` example slots per feature: value, random key, sequence, max position and optionally the
    context window, the prompt's last text tokens and the patch grid of the hottest image."""

    def __init__(
        self,
        d_sae: int,
        n_slots: int,
        device: torch.device,
        ctx_left: int = 0,
        ctx_right: int = 0,
        text_context: int = 0,
        windows: bool = True,
        n_patches: int = 0,
    ):
        self.n_slots, self.ctx_left, self.ctx_right = n_slots, ctx_left, ctx_right
        self.windows, self.grids = windows, n_patches > 0
        f, s = d_sae, n_slots
        self.value = torch.full((f, s), -1.0, device=device)
        self.key = torch.zeros((f, s), device=device)  # reservoir priority
        self.seq = torch.full((f, s), -1, dtype=torch.long, device=device)
        self.pos = torch.full((f, s), -1, dtype=torch.int32, device=device)
        if windows:
            w, c = ctx_left + ctx_right + 1, text_context
            self.win_ids = torch.full((f, s, w), NO_TOKEN, dtype=torch.int32, device=device)
            self.win_vals = torch.zeros((f, s, w), device=device)
            self.win_roles = torch.full((f, s, w), PAD_ROLE, dtype=torch.int8, device=device)
            self.ctx_pos = torch.full((f, s, c), -1, dtype=torch.int32, device=device)
            self.ctx_ids = torch.full((f, s, c), NO_TOKEN, dtype=torch.int32, device=device)
            self.ctx_vals = torch.zeros((f, s, c), device=device)
            self.ctx_roles = torch.full((f, s, c), PAD_ROLE, dtype=torch.int8, device=device)
        if self.grids:
            self.grid_image = torch.full((f, s), -1, dtype=torch.int8, device=device)
            self.grid_vals = torch.zeros((f, s, n_patches), dtype=torch.float16, device=device)

    @property
    def fields(self) -> tuple[str, ...]:
        names = ("value", "key", "seq", "pos")
        if self.windows:
            names += (
                "win_ids",
                "win_vals",
                "win_roles",
                "ctx_pos",
                "ctx_ids",
                "ctx_vals",
                "ctx_roles",
            )
        if self.grids:
            names += ("grid_image", "grid_vals")
        return names

    def merge(
        self, keep: torch.Tensor, view: BatchView, new_keys: torch.Tensor | None = None
    ) -> None:
        """Apply ``keep [F, S + B]``: drop old slots not kept, write kept batch sequences into free slots."""
        s = self.n_slots
        old_keep, new_keep = keep[:, :s], keep[:, s:]
        free = ~old_keep
        # invalidate dropped slots (their windows are overwritten or ignored: value < 0 means empty)
        self.value.masked_fill_(free, -1.0)
        self.seq.masked_fill_(free, -1)
        fi, bi = torch.nonzero(new_keep, as_tuple=True)
        if not fi.numel():
            return
        # the r-th new winner of a row goes to the r-th free slot of that row
        rank = (new_keep.cumsum(dim=1) - 1)[fi, bi]
        free_order = torch.argsort((~free).to(torch.int8), dim=1, stable=True)  # free slots first
        si = free_order[fi, rank]
        pos = view.seq_argmax[bi, fi]
        self.value[fi, si] = view.seq_max[bi, fi]
        self.seq[fi, si] = bi + view.seq_offset
        self.pos[fi, si] = pos.to(torch.int32)
        if new_keys is not None:
            self.key[fi, si] = new_keys[fi, bi]
        if self.windows:
            offs = torch.arange(-self.ctx_left, self.ctx_right + 1, device=pos.device)
            ids, vals, roles = gather_positions(view, bi, fi, pos[:, None] + offs)
            self.win_ids[fi, si], self.win_vals[fi, si], self.win_roles[fi, si] = ids, vals, roles
            # the prompt's last text tokens are shown only for examples whose max is an image patch
            img_c = view.is_image[bi, pos]
            self.ctx_pos[fi, si] = -1
            self.ctx_ids[fi, si] = NO_TOKEN
            if self.ctx_ids.shape[2] and bool(img_c.any()):
                fc, sc, bc = fi[img_c], si[img_c], bi[img_c]
                cpos = view.text_ctx_pos[bc]
                ids, vals, roles = gather_positions(view, bc, fc, cpos)
                self.ctx_pos[fc, sc] = cpos.to(torch.int32)
                self.ctx_ids[fc, sc], self.ctx_vals[fc, sc], self.ctx_roles[fc, sc] = (
                    ids,
                    vals,
                    roles,
                )
        if self.grids:
            img = view.grid_image[bi, fi]
            ppos = view.pos_map[bi, img.clamp(min=0)]  # [M, P]
            gvals = view.act_at(
                bi[:, None].expand_as(ppos), ppos.clamp(min=0), fi[:, None].expand_as(ppos)
            )
            gvals = torch.where((ppos >= 0) & (img >= 0)[:, None], gvals, torch.zeros_like(gvals))
            self.grid_image[fi, si] = img.to(torch.int8)
            self.grid_vals[fi, si] = gvals.to(torch.float16)

    def sorted_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every field with slots in descending value order (empty slots last), keys ``prefix.name``."""
        order = self.value.argsort(dim=1, descending=True, stable=True)
        out = {}
        for name in self.fields:
            if name == "key":
                continue
            arr = getattr(self, name)
            idx = order.view(*order.shape, *([1] * (arr.ndim - 2))).expand(-1, -1, *arr.shape[2:])
            out[f"{prefix}.{name}"] = arr.gather(1, idx)
        empty = out[f"{prefix}.value"] < 0
        out[f"{prefix}.value"] = out[f"{prefix}.value"].masked_fill(empty, -1.0)
        out[f"{prefix}.seq"] = out[f"{prefix}.seq"].masked_fill(empty, -1)
        return out
