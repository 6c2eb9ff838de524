"""reproducible_torch sets threads and deterministic algorithms, and puts them back."""

from __future__ import annotations

import torch

from sae_lens_maira.training.determinism import reproducible_torch


def test_settings_restored_after_a_reproducible_block():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with reproducible_torch(1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    with reproducible_torch(None):  # threads left alone
        assert torch.get_num_threads() == before[0] and torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before[1]
