"""Test-wide settings: Triton runs in its CPU interpreter; no test reaches the network."""

import os

# Must be set before triton is imported anywhere: kernels then run on CPU tensors.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Shared fixtures: a small MAIRA-2 tokenizer and a tiny checkpoint in the hub layout.
from tests.fixtures_model import hub_checkpoint, reference, tiny_cfg, tokenizer  # noqa: E402,F401
from tests.fixtures_studies import experiment_yaml, manifest  # noqa: E402,F401
