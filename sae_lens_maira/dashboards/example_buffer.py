"""Per-feature example slots updated in place by a vectorised merge, storing windows of winners only.

The top-k buffer, the heatmap buffer and the quantile reservoir are each an ``ExampleBuffer``.
After each batch a ``keep [F, S + B]`` mask says which candidates survive: the ``S`` current slots
and the ``B`` sequences of the batch (one candidate per sequence: its max token). Slots are an
unordered set: surviving old slots stay where they are, and new winners are written into the
freed slots, so a batch costs ``O(new winners x window)`` rather than ``O(F x S x window)``.
Order (descending value) is imposed once, in :meth:`sorted_state`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sae_lens_maira.dashboards.sequence_batch import NO_TOKEN

PAD_ROLE = 10


@dataclass
class BatchView:
    """What the buffers need from one batch, prepared once per batch on the collector's device.

    Activations are held only as the batch's counted positive entries (``nz_*``, O(nnz)); every
    lookup is a scatter of those entries into the few slots that need them, never a gather from a
    dense ``[B, T, F]`` array, so dense and sparse inputs cost the same after :meth:`_prepare`.
    """

    d_sae: int
    counted: torch.Tensor  # [B, T] bool positions that count (real, role not ignored)
    display_ids: torch.Tensor  # [B, T] int32 display ids (NO_TOKEN on padding)
    roles: torch.Tensor  # [B, T] int8
    is_image: torch.Tensor  # [B, T] bool
    image_index: torch.Tensor  # [B, T] long image slot (-1 text)
    patch_index: torch.Tensor  # [B, T] long patch within its image (-1 text)
    seq_max: torch.Tensor  # [B, F] float32 per-sequence max activation
    seq_argmax: torch.Tensor  # [B, F] long position of that max
    text_ctx_pos: torch.Tensor  # [B, C] long positions of the last C variable-text tokens (-1 none)
    grid_image: (
        torch.Tensor
    )  # [B, F] long image holding the feature's max image activation (-1 none)
    seq_offset: int  # global index of the batch's first sequence
    window_ids: torch.Tensor  # [B * T, W] int32 display ids of the window around each position
    window_roles: torch.Tensor  # [B * T, W] int8 roles of that window
    nz_row: torch.Tensor  # [nnz] flat position b * T + t of each counted positive activation
    nz_key: torch.Tensor  # [nnz] b * F + feature: the (sequence, feature) pair it belongs to
    nz_feat: torch.Tensor  # [nnz] its feature
    nz_vals: torch.Tensor  # [nnz] float32 its value

    @property
    def n_seq(self) -> int:
        return self.counted.shape[0]

    @property
    def seq_len(self) -> int:
        return self.counted.shape[1]

    def feature_values(
        self,
        b: torch.Tensor,
        f: torch.Tensor,
        width: int,
        column: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``[M, width]`` activations of feature ``f[m]`` in sequence ``b[m]`` (pairs unique), each
        entry placed at ``column(m, row)`` (out of ``[0, width)``: dropped); zeros elsewhere."""
        out = torch.zeros((b.numel(), width), device=self.nz_vals.device)
        if not b.numel() or not self.nz_vals.numel():
            return out
        owner = self.pair_rows(b, f)[self.nz_key]
        sel = torch.nonzero(owner >= 0).squeeze(1)
        owner = owner[sel]
        col = column(owner, self.nz_row[sel])
        ok = torch.nonzero((col >= 0) & (col < width)).squeeze(1)
        out.view(-1)[owner[ok] * width + col[ok]] = self.nz_vals[sel[ok]]
        return out

    def pair_rows(self, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``[B * F]`` table (indexed like ``nz_key``: ``b * F + f``) of each unique pair's row in
        ``b, f``; -1 for pairs not asked for."""
        table = torch.full((self.n_seq * self.d_sae,), -1, dtype=torch.long, device=b.device)
        table[b * self.d_sae + f] = torch.arange(b.numel(), device=b.device)
        return table

    def window_values(
        self, b: torch.Tensor, f: torch.Tensor, start: torch.Tensor, width: int
    ) -> torch.Tensor:
        """Activations of feature ``f[m]`` at positions ``start[m] .. start[m] + width - 1`` of ``b[m]``."""
        t = self.seq_len
        return self.feature_values(b, f, width, lambda m, row: row % t - start[m])

    def rows_max(self, rows: torch.Tensor, slots: torch.Tensor, n_slots: int) -> torch.Tensor:
        """``[n_slots, F]`` max activation of every feature over the flat positions ``rows``
        (``b * T + t``, each in at most one slot) that belong to each slot ``slots``."""
        out = torch.zeros((n_slots, self.d_sae), device=self.nz_vals.device)
        slot_of_row = torch.full((self.n_seq * self.seq_len,), -1, dtype=torch.long,
                                 device=rows.device)  # fmt: skip
        slot_of_row[rows] = slots
        slot = slot_of_row[self.nz_row]
        ok = slot >= 0
        out.view(-1).scatter_reduce_(
            0, slot[ok] * self.d_sae + self.nz_feat[ok], self.nz_vals[ok], "amax"
        )
        return out


def gather_positions(
    view: BatchView, b: torch.Tensor, pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Display ids and roles at ``pos [M, W]`` of sequences ``b`` (outside: ``NO_TOKEN``, PAD role)."""
    t = view.seq_len
    ok = (pos >= 0) & (pos < t)
    row = b[:, None] * t + pos.clamp(0, t - 1)
    ids = view.display_ids.reshape(-1).take(row)
    ids = torch.where(ok, ids, torch.full((), NO_TOKEN, dtype=ids.dtype, device=ids.device))
    roles = view.roles.reshape(-1).take(row)
    roles = torch.where(ok, roles, torch.full((), PAD_ROLE, dtype=roles.dtype, device=roles.device))
    return ids.to(torch.int32), roles.to(torch.int8)


@dataclass
class WindowRows:
    """Context windows of (feature, sequence) pairs, extracted once per batch for every buffer."""

    table: torch.Tensor  # [B * F] row of pair (b, f) at b * F + f (-1 none): BatchView.pair_rows
    d_sae: int
    win_ids: torch.Tensor  # [M, W] int32
    win_roles: torch.Tensor  # [M, W] int8
    win_vals: torch.Tensor  # [M, W] float32
    ctx_row: torch.Tensor  # [M] long row in the ctx_* arrays (-1: max not on an image, no context)
    ctx_pos: torch.Tensor  # [K, C] int32 the prompt's last text positions (examples on an image)
    ctx_ids: torch.Tensor  # [K, C] int32
    ctx_roles: torch.Tensor  # [K, C] int8
    ctx_vals: torch.Tensor  # [K, C] float32

    def rows_of(self, f: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        rows = self.table[b * self.d_sae + f]
        if bool((rows < 0).any()):
            raise ValueError("WindowRows holds no window for some (feature, sequence) pairs")
        return rows


def extract_windows(
    view: BatchView,
    f: torch.Tensor,
    b: torch.Tensor,
    ctx_left: int,
    ctx_right: int,
    text_context: int,
) -> WindowRows:
    """Windows around the max token of feature ``f[m]`` in sequence ``b[m]`` (pairs unique), and the
    prompt's last text tokens for examples whose max is an image patch."""
    t, dev = view.seq_len, b.device
    pos = view.seq_argmax[b, f]
    row = b * t + pos
    width = ctx_left + ctx_right + 1
    m, c = b.numel(), text_context
    out = WindowRows(
        table=view.pair_rows(b, f),
        d_sae=view.d_sae,
        win_ids=view.window_ids.index_select(0, row),
        win_roles=view.window_roles.index_select(0, row),
        win_vals=view.window_values(b, f, pos - ctx_left, width),
        ctx_row=torch.full((m,), -1, dtype=torch.long, device=dev),
        ctx_pos=torch.empty((0, c), dtype=torch.int32, device=dev),
        ctx_ids=torch.empty((0, c), dtype=torch.int32, device=dev),
        ctx_roles=torch.empty((0, c), dtype=torch.int8, device=dev),
        ctx_vals=torch.empty((0, c), device=dev),
    )
    # the prompt's last text tokens are shown only for examples whose max is an image patch
    on_img = torch.nonzero(view.is_image.reshape(-1).take(row)).squeeze(1)
    if c and on_img.numel():
        bc, fc = b[on_img], f[on_img]
        cpos = view.text_ctx_pos[bc]
        col_of = torch.full((view.n_seq * t,), -1, dtype=torch.long, device=dev)
        has = view.text_ctx_pos >= 0
        rows = torch.arange(view.n_seq, device=dev)[:, None] * t + view.text_ctx_pos
        col_of[rows[has]] = torch.arange(c, device=dev).expand_as(rows)[has]
        out.ctx_row[on_img] = torch.arange(on_img.numel(), device=dev)
        out.ctx_pos = cpos.to(torch.int32)
        out.ctx_ids, out.ctx_roles = gather_positions(view, bc, cpos)
        out.ctx_vals = view.feature_values(bc, fc, c, lambda i, r: col_of[r])
    return out


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
            self.has_ctx = torch.zeros((f, s), dtype=torch.bool, device=device)
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
        self,
        keep: torch.Tensor,
        view: BatchView,
        new_keys: torch.Tensor | None = None,
        windows: WindowRows | None = None,
    ) -> None:
        """Apply ``keep [F, S + B]``: drop old slots not kept, write kept batch sequences into free
        slots. ``windows`` holds the new winners' windows when several buffers share one extraction."""
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
        slot = fi * s + si  # flat slot: one 1-D index_copy_ per field instead of 2-D index_put
        self._put("value", slot, view.seq_max[bi, fi])
        self._put("seq", slot, bi + view.seq_offset)
        self._put("pos", slot, pos.to(torch.int32))
        if new_keys is not None:
            self._put("key", slot, new_keys[fi, bi])
        if self.windows:
            if windows is None:
                windows = extract_windows(view, fi, bi, self.ctx_left, self.ctx_right,
                                          self.ctx_ids.shape[2])  # fmt: skip
            r = windows.rows_of(fi, bi)
            for name in ("win_ids", "win_roles", "win_vals"):
                self._put(name, slot, getattr(windows, name).index_select(0, r))
            c_row = windows.ctx_row.index_select(0, r)
            self._put("has_ctx", slot, c_row >= 0)  # ctx_* of slots without it: emptied on read
            with_ctx = torch.nonzero(c_row >= 0).squeeze(1)
            if with_ctx.numel():
                c_row, c_slot = c_row[with_ctx], slot[with_ctx]
                for name in ("ctx_pos", "ctx_ids", "ctx_roles", "ctx_vals"):
                    self._put(name, c_slot, getattr(windows, name).index_select(0, c_row))
        if self.grids:
            img = view.grid_image[bi, fi]
            n_p = self.grid_vals.shape[2]
            img_flat, patch_flat = view.image_index.reshape(-1), view.patch_index.reshape(-1)

            def patch_column(m: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
                on = (img_flat[row] == img[m]) & (img[m] >= 0)
                return torch.where(on, patch_flat[row], torch.full_like(row, -1))

            gvals = view.feature_values(bi, fi, n_p, patch_column)
            self._put("grid_image", slot, img.to(torch.int8))
            self._put("grid_vals", slot, gvals.to(torch.float16))

    def _put(self, name: str, slot: torch.Tensor, values: torch.Tensor | int) -> None:
        """Write ``values`` (one per flat slot ``feature * S + slot``, or a scalar) into field ``name``."""
        arr = getattr(self, name)
        flat = arr.view(-1, *arr.shape[2:])
        if isinstance(values, int):
            flat.index_fill_(0, slot, values)
        else:
            flat.index_copy_(0, slot, values.to(arr.dtype))

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
        if self.windows:  # context only where the slot's example has one (see merge)
            no_ctx = ~self.has_ctx.gather(1, order)[..., None]
            for name, fill in (("ctx_pos", -1), ("ctx_ids", NO_TOKEN), ("ctx_roles", PAD_ROLE),
                               ("ctx_vals", 0)):  # fmt: skip
                out[f"{prefix}.{name}"] = out[f"{prefix}.{name}"].masked_fill(no_ctx, fill)
        empty = out[f"{prefix}.value"] < 0
        out[f"{prefix}.value"] = out[f"{prefix}.value"].masked_fill(empty, -1.0)
        out[f"{prefix}.seq"] = out[f"{prefix}.seq"].masked_fill(empty, -1)
        return out
