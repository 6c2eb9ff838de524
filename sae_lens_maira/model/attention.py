"""TransformerLens attention on torch's fused kernel unless someone looks at the pattern.

TransformerLens computes attention eagerly, materialising [batch, heads, T, T] scores; MAIRA-2's
prompts are 1.5k-4.5k tokens long, so that is both slow and gigabytes per layer. This subclass
keeps every TransformerLens hook point and parameter, and runs ``scaled_dot_product_attention``
whenever no hook is attached to ``hook_attn_scores`` or ``hook_pattern`` (and the result hook is
off); with such a hook it falls back to TransformerLens's own eager code, so patterns are exact.
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from transformer_lens.components import Attention  # pyright: ignore[reportPrivateImportUsage]  (TL re-exports it, no __all__)

from sae_lens_maira.compat.torch import has_hooks
from sae_lens_maira.compat.transformer_lens import swap_class
from sae_lens_maira.model.kv_cache import PreallocatedKVEntry


class FusedAttention(Attention):
    def _needs_pattern(self) -> bool:
        hooks = (self.hook_attn_scores, self.hook_pattern)
        return (
            self.cfg.use_attn_result
            or any(has_hooks(h) for h in hooks)
            or self.cfg.attn_scores_soft_cap > 0
            or self.cfg.positional_embedding_type != "rotary"
        )

    def forward(  # type: ignore[override]
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor,
        value_input: torch.Tensor,
        past_kv_cache_entry=None,
        additive_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (
            self._needs_pattern()
            or additive_attention_mask is not None
            or position_bias is not None
        ):
            return super().forward(
                query_input, key_input, value_input, past_kv_cache_entry,
                additive_attention_mask, attention_mask, position_bias,
            )  # fmt: skip
        q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)
        offset = 0
        if past_kv_cache_entry is not None:
            offset = past_kv_cache_entry.past_keys.size(1)
            new_keys = k
            k, v = past_kv_cache_entry.append(k, v)
            if isinstance(past_kv_cache_entry, PreallocatedKVEntry) and not has_hooks(
                self.hook_rot_k
            ):
                # it keeps the rotated keys: rotate only the new ones (same values, bit for bit);
                # a hook on the rotated keys gets a fresh tensor it may edit in place
                every_key = k
                k_rot = past_kv_cache_entry.rotated_keys(
                    offset,
                    lambda: self.apply_rotary(new_keys, offset, attention_mask),
                    lambda: self.apply_rotary(every_key, 0, attention_mask),
                )
            else:
                k_rot = self.apply_rotary(k, 0, attention_mask)
        else:
            k_rot = self.apply_rotary(k, 0, attention_mask)
        q = self.hook_rot_q(self.apply_rotary(q, offset, attention_mask))
        k = self.hook_rot_k(k_rot)
        n_q, n_k = q.shape[1], k.shape[1]
        mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(offset)[None, None]
        if attention_mask is not None:
            keys = attention_mask.bool().to(q.device)[:, None, None, :n_k]
            # a padded query sees no key in TransformerLens (its output is zeroed); let it see itself
            # so the fused kernel returns finite values there instead of NaN
            diag = torch.zeros(n_q, n_k, dtype=torch.bool, device=q.device)
            diag[torch.arange(n_q), torch.arange(n_q) + offset] = True
            mask = (mask & keys) | diag[None, None]
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2).to(q.dtype),
            v.transpose(1, 2).to(q.dtype),
            attn_mask=mask,
            scale=1.0 / float(self.attn_scale),
            enable_gqa=k.shape[2] != q.shape[2],
        )
        z = self.hook_z(z.transpose(1, 2))
        w = einops.rearrange(self.W_O, "head_index d_head d_model -> d_model (head_index d_head)")
        return F.linear(z.reshape(z.shape[0], z.shape[1], -1).to(w.dtype), w, self.b_O)


def use_fused_attention(blocks) -> None:
    """Swap each block's ``Attention`` for :class:`FusedAttention`, keeping its weights and buffers."""
    for block in blocks:
        old = block.attn
        if type(old) is Attention:
            swap_class(old, FusedAttention)  # same fields, same state dict; only forward differs
