"""Sparse decode / encode ops for TopK, BatchTopK and Matryoshka SAEs.

Decoding ``k`` of ``N`` latents is a gather: ``out[b] = sum_j values[b, j] * W_dec[indices[b, j]]``
costs ``B*k*D`` instead of the dense ``B*N*D``, and so do its gradients. Implementations: Triton
kernels on CUDA, ``F.embedding_bag`` + ``torch.sparse.sampled_addmm`` on CPU, and a dense
scatter + matmul fallback for many actives per row; ``impl="auto"`` chooses per device and shape
(:func:`resolve_impl`). :func:`batch_topk_csr` selects BatchTopK actives straight into
the CSR layout the ops take; :func:`matryoshka_prefix_mse` turns the grouped decode into every
prefix's loss without ``[G, B, D]`` intermediates. Importing this package does not import triton.
"""

from sae_lens_maira.kernels.batch_topk import batch_topk_csr
from sae_lens_maira.kernels.dispatch import (
    DecoderImpl,
    resolve_impl,
    triton_available,
    triton_interpreting,
)
from sae_lens_maira.kernels.ops import (
    grouped_sparse_decode_csr,
    sparse_decode,
    sparse_decode_csr,
    sparse_encode_csr,
)
from sae_lens_maira.kernels.prefix_loss import matryoshka_prefix_mse

__all__ = [
    "DecoderImpl",
    "batch_topk_csr",
    "grouped_sparse_decode_csr",
    "matryoshka_prefix_mse",
    "resolve_impl",
    "sparse_decode",
    "sparse_decode_csr",
    "sparse_encode_csr",
    "triton_available",
    "triton_interpreting",
]
