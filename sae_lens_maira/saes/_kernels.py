"""The single place the SAE code takes its sparse ops from (swap the source here, nowhere else)."""

from sae_lens_maira._kernels_standin import (
    DecoderImpl,
    grouped_sparse_decode_csr,
    resolve_impl,
    sparse_decode_csr,
    sparse_encode_csr,
)

__all__ = [
    "DecoderImpl",
    "grouped_sparse_decode_csr",
    "resolve_impl",
    "sparse_decode_csr",
    "sparse_encode_csr",
]
