"""Bad input gets a ValueError naming the problem (and the fix), never a deep torch error."""

from __future__ import annotations

import pytest
import torch

from sae_lens_maira.kernels import (
    grouped_sparse_decode_csr,
    sparse_decode,
    sparse_decode_csr,
    sparse_encode_csr,
)

W = torch.randn(10, 4)
ROW_PTR = torch.tensor([0, 2, 3])
IDX = torch.tensor([1, 2, 9])
VALUES = torch.ones(3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"indices": torch.tensor([[1, 10]])}, r"latent ids in \[0, 10\).*max 10"),
        ({"indices": torch.tensor([[-1, 2]])}, r"latent ids in \[0, 10\).*min -1"),
        ({"indices": torch.tensor([[1.0, 2.0]])}, "integer tensor"),
        ({"values": torch.ones(1, 3)}, r"both be \[B, K\]"),
        ({"values": torch.ones(2)}, "values must be 2-D"),
        ({"values": torch.ones(1, 2, dtype=torch.float64)}, "share one dtype.*cast"),
        ({"values": torch.ones(1, 2, dtype=torch.int64)}, "float32, bfloat16"),
        ({"W_dec": torch.randn(10)}, "W_dec must be 2-D"),
        ({"W_dec": torch.randn(10, 4, device="meta")}, "one device.*W_dec on meta"),
        ({"W_dec": [[1.0]]}, "must be a torch.Tensor"),
    ],
)
def test_sparse_decode_rejects(kwargs, match):
    args = {"indices": torch.tensor([[1, 2]]), "values": torch.ones(1, 2), "W_dec": W} | kwargs
    with pytest.raises(ValueError, match=match):
        sparse_decode(args["indices"], args["values"], args["W_dec"], impl="embedding_bag")


@pytest.mark.parametrize(
    ("row_ptr", "match"),
    [
        (torch.tensor([0, 2, 4]), r"row_ptr\[-1\] = 4 \(must equal nnz = indices.numel\(\) = 3\)"),
        (torch.tensor([1, 2, 3]), r"row_ptr\[0\] = 1 \(must be 0\)"),
        (torch.tensor([0, 3, 2, 3]), "decreases at position 2"),
        (torch.tensor([[0, 3]]), "row_ptr must be 1-D"),
        (torch.tensor([], dtype=torch.long), "row_ptr must be 1-D with B \\+ 1 >= 1"),
    ],
)
def test_bad_row_ptr(row_ptr, match):
    with pytest.raises(ValueError, match=match):
        sparse_decode_csr(row_ptr, IDX, VALUES, W)


def test_out_of_range_csr_indices():
    with pytest.raises(ValueError, match=r"latent ids in \[0, 10\).*max 12"):
        sparse_decode_csr(ROW_PTR, torch.tensor([1, 2, 12]), VALUES, W)


def test_csr_values_shape_mismatch():
    with pytest.raises(ValueError, match=r"values must have the shape of indices \(3,\)"):
        sparse_decode_csr(ROW_PTR, IDX, torch.ones(4), W)


@pytest.mark.parametrize(
    ("ends", "match"),
    [
        ([4, 8], "end at n_latents = 10"),
        ([4, 4, 10], "strictly increasing"),
        ([0, 10], "strictly increasing positive"),
        ([], "end at n_latents"),
        ([2.5, 10], "must be integers"),
        (["a", 10], "sequence of ints"),
    ],
)
def test_bad_group_ends(ends, match):
    with pytest.raises(ValueError, match=match):
        grouped_sparse_decode_csr(ROW_PTR, IDX, VALUES, W, ends)


def _encode(**overrides):
    args = {
        "x": torch.randn(2, 4),
        "W_enc": torch.randn(4, 10),
        "b_enc": torch.zeros(10),
        "row_ptr": ROW_PTR,
        "indices": IDX,
    } | overrides
    return sparse_encode_csr(
        args["x"],
        args["W_enc"],
        args["b_enc"],
        args["row_ptr"],
        args["indices"],
        hidden_pre=args.get("hidden_pre"),
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"W_enc": torch.randn(10, 4)}, r"\[d_in, d_sae\].*transpose it"),
        ({"b_enc": torch.zeros(9)}, r"b_enc must be \[10\]"),
        ({"row_ptr": torch.tensor([0, 3])}, r"B \+ 1 = 3 entries"),
        ({"x": torch.randn(2, 4, dtype=torch.bfloat16)}, "share one dtype"),
        ({"indices": torch.tensor([1, 2, 10])}, r"latent ids in \[0, 10\)"),
        ({"hidden_pre": torch.zeros(2, 9)}, r"hidden_pre must be the dense \[B, N\] = \[2, 10\]"),
        ({"x": torch.randn(4)}, "x must be 2-D"),
    ],
)
def test_encode_rejects(overrides, match):
    with pytest.raises(ValueError, match=match):
        _encode(**overrides)


def test_validate_false_skips_data_checks_only():
    """Metadata checks stay on; the O(nnz) range check is skipped (caller vouches for indices)."""
    with pytest.raises(ValueError, match="share one dtype"):
        sparse_decode_csr(ROW_PTR, IDX, VALUES.double(), W, validate=False)
    out = sparse_decode_csr(ROW_PTR, IDX, VALUES, W, validate=False)
    torch.testing.assert_close(out[1], W[9])
