"""Independent dense reference of dictionary_learning's MatryoshkaBatchTopK (tests only).

Written from the library's published formulas (see /work/shared/reference/saelens.md), with no
code from sae_lens_maira: flat BatchTopK over the batch, prefix losses accumulated group by group
from b_dec, AuxK on dead latents over the residual's variance, threshold EMA, geometric-median
b_dec, and the update: project out the decoder-parallel gradient, clip to 1, Adam, unit rows.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ReferenceMatryoshka:
    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        *,
        k: int,
        group_sizes: list[int],
        group_weights: list[float] | None = None,
        threshold: float = -1.0,
        auxk_alpha: float = 1 / 32,
        top_k_aux: int | None = None,
        dead_feature_threshold: int = 10_000_000,
        threshold_beta: float = 0.999,
        threshold_start_step: int = 1000,
        lr: float = 1e-3,
    ):
        self.W_enc = W_enc.detach().clone().requires_grad_(True)
        self.b_enc = b_enc.detach().clone().requires_grad_(True)
        self.W_dec = W_dec.detach().clone().requires_grad_(True)
        self.b_dec = b_dec.detach().clone().requires_grad_(True)
        self.k = k
        self.group_sizes = list(group_sizes)
        n = len(group_sizes)
        self.group_weights = group_weights or [1.0 / n] * n
        self.threshold = torch.tensor(float(threshold))
        self.auxk_alpha = auxk_alpha
        self.top_k_aux = top_k_aux if top_k_aux is not None else W_enc.shape[0] // 2
        self.dead_feature_threshold = dead_feature_threshold
        self.threshold_beta = threshold_beta
        self.threshold_start_step = threshold_start_step
        self.num_tokens_since_fired = torch.zeros(W_dec.shape[0], dtype=torch.long)
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999))

    # -- forward ---------------------------------------------------------------------------
    def post_relu(self, x: Tensor) -> Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x: Tensor, use_threshold: bool = True) -> Tensor:
        post = self.post_relu(x)
        if use_threshold:
            return post * (post > self.threshold)
        flat = post.flatten()
        vals, idx = flat.topk(self.k * x.shape[0], sorted=False)
        return torch.zeros_like(flat).scatter(-1, idx, vals).reshape(post.shape)

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def loss(self, x: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        post = self.post_relu(x)
        flat = post.flatten()
        vals, idx = flat.topk(self.k * x.shape[0], sorted=False)
        f = torch.zeros_like(flat).scatter(-1, idx, vals).reshape(post.shape)
        if step > self.threshold_start_step:
            with torch.no_grad():
                active = f[f > 0]
                smallest = active.min() if active.numel() else torch.tensor(0.0)
                if self.threshold < 0:
                    self.threshold = smallest.clone()
                else:
                    self.threshold = (
                        self.threshold_beta * self.threshold + (1 - self.threshold_beta) * smallest
                    )
        recon = torch.zeros_like(x) + self.b_dec
        l2s = []
        start = 0
        for size, weight in zip(self.group_sizes, self.group_weights, strict=True):
            recon = recon + f[:, start : start + size] @ self.W_dec[start : start + size]
            l2s.append((x - recon).pow(2).sum(dim=-1).mean() * weight)
            start += size
        l2s_t = torch.stack(l2s)
        mse = l2s_t.mean()

        did_fire = (f.sum(0) > 0).detach()
        self.num_tokens_since_fired += x.shape[0]
        self.num_tokens_since_fired[did_fire] = 0

        residual = (x - recon).detach()
        dead = self.num_tokens_since_fired >= self.dead_feature_threshold
        n_dead = int(dead.sum())
        if n_dead > 0:
            k_aux = min(self.top_k_aux, n_dead)
            masked = torch.where(dead[None], post, torch.tensor(-torch.inf))
            aux_vals, aux_idx = masked.topk(k_aux, sorted=False)
            aux_acts = torch.zeros_like(post).scatter(-1, aux_idx, aux_vals)
            aux_recon = aux_acts @ self.W_dec
            l2_aux = (residual - aux_recon).pow(2).sum(dim=-1).mean()
            denom = (residual - residual.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()
            auxk = (l2_aux / denom).nan_to_num(0.0)
        else:
            auxk = torch.tensor(0.0)
        loss = mse + self.auxk_alpha * auxk
        return loss, {"mse": mse, "auxk": auxk, "l2s": l2s_t, "recon": recon, "f": f}

    # -- one optimisation step ------------------------------------------------------------
    @staticmethod
    def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-5) -> Tensor:
        guess = points.mean(dim=0)
        for _ in range(max_iter):
            prev = guess
            weights = 1 / torch.norm(points - guess, dim=1)
            weights = weights / weights.sum()
            guess = (weights.unsqueeze(1) * points).sum(dim=0)
            if torch.norm(guess - prev) < tol:
                break
        return guess

    def update(self, step: int, x: Tensor) -> Tensor:
        if step == 0:
            self.b_dec.data = self.geometric_median(x)
        loss, _ = self.loss(x, step)
        loss.backward()
        with torch.no_grad():
            w_hat = self.W_dec / (self.W_dec.norm(dim=1, keepdim=True) + 1e-6)
            parallel = (self.W_dec.grad * w_hat).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * w_hat
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            eps = torch.finfo(self.W_dec.dtype).eps
            self.W_dec.data /= self.W_dec.norm(dim=1, keepdim=True) + eps
        return loss.detach()
