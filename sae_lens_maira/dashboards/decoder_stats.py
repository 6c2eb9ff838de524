"""Statistics computed in feature chunks from matrices: logit effects, neuron alignment, correlations.

Each works on ``chunk_size`` features at a time (one matmul per chunk), so a 16k x 32k-vocab logit
table never materialises whole.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def logit_effects(
    W_dec: torch.Tensor, W_U: torch.Tensor, k: int = 10, n_bins: int = 40, chunk_size: int = 1024
) -> dict[str, torch.Tensor]:
    """Direct logit effect ``W_dec[f] @ W_U`` per feature: top/bottom ``k`` tokens and a histogram.

    As in SAE-Dashboard, the final norm is ignored (it only rescales the direction per position).
    """
    if W_dec.shape[1] != W_U.shape[0]:
        raise ValueError(
            f"W_dec is [d_sae, {W_dec.shape[1]}] but W_U is {tuple(W_U.shape)}: W_U must be "
            "[d_model, d_vocab] (TransformerLens's model.W_U)"
        )
    f, v = W_dec.shape[0], W_U.shape[1]
    k = min(k, v)
    out = {
        "logit_top_idx": torch.empty(f, k, dtype=torch.long),
        "logit_top_val": torch.empty(f, k),
        "logit_bot_idx": torch.empty(f, k, dtype=torch.long),
        "logit_bot_val": torch.empty(f, k),
        "logit_hist": torch.empty(f, n_bins, dtype=torch.long),
        "logit_hist_lo": torch.empty(f),
        "logit_hist_hi": torch.empty(f),
    }
    wu = W_U.float()
    for start in range(0, f, chunk_size):
        sl = slice(start, min(start + chunk_size, f))
        logits = W_dec[sl].float() @ wu  # [c, V]
        tv, ti = logits.topk(k, dim=1)
        bv, bi = logits.topk(k, dim=1, largest=False)
        lo, hi = logits.min(dim=1).values, logits.max(dim=1).values
        width = (hi - lo).clamp_min(1e-12)
        bins = ((logits - lo[:, None]) / width[:, None] * n_bins).long().clamp(0, n_bins - 1)
        hist = torch.zeros(logits.shape[0], n_bins, dtype=torch.long, device=logits.device)
        hist.scatter_add_(1, bins, torch.ones_like(bins))
        for name, val in (("logit_top_idx", ti), ("logit_top_val", tv), ("logit_bot_idx", bi),
                          ("logit_bot_val", bv), ("logit_hist", hist), ("logit_hist_lo", lo),
                          ("logit_hist_hi", hi)):  # fmt: skip
            out[name][sl] = val.cpu()
    return out


@torch.no_grad()
def neuron_alignment(W_dec: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, ...]:
    """Residual dimensions each decoder row writes to most: indices, signed values, share of L1."""
    w = W_dec.float()
    k = min(k, w.shape[1])
    _, idx = w.abs().topk(k, dim=1)
    vals = w.gather(1, idx)
    l1 = vals.abs() / w.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
    return idx.cpu(), vals.cpu(), l1.cpu()


@torch.no_grad()
def correlations(
    acts: torch.Tensor, k: int = 10, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Most correlated other features over sampled positions ``acts [N, F]``.

    Returns indices and Pearson correlations (ranked by Pearson) and the cosine similarity of the
    activation columns at the same indices (SAE-Dashboard's second column). Constant features
    correlate 0 with everything.
    """
    n, f = acts.shape
    k = min(k, max(f - 1, 0))
    if n < 2 or k == 0:
        empty = torch.empty(f, 0)
        return empty.long(), empty, empty
    x = acts.float()
    xc = x - x.mean(dim=0)
    std = xc.norm(dim=0)
    z = xc / std.clamp_min(1e-12)
    z[:, std <= 1e-12] = 0
    norm = x.norm(dim=0)
    u = x / norm.clamp_min(1e-12)
    idx = torch.empty(f, k, dtype=torch.long)
    pearson, cos = torch.empty(f, k), torch.empty(f, k)
    for start in range(0, f, chunk_size):
        sl = slice(start, min(start + chunk_size, f))
        c = z[:, sl].T @ z  # [c, F]
        rows = torch.arange(c.shape[0], device=c.device)
        c[rows, rows + start] = -float("inf")
        pv, pi = c.topk(k, dim=1)
        cs = (u[:, sl].T @ u).gather(1, pi)
        idx[sl], pearson[sl], cos[sl] = pi.cpu(), pv.cpu(), cs.cpu()
    return idx, pearson, cos
