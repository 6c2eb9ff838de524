"""Test-wide settings: Triton runs in its CPU interpreter; no test reaches the network."""

import os

# Must be set before triton is imported anywhere: kernels then run on CPU tensors.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
