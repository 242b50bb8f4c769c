"""Fixtures shared by several test files. Paths, writers and other helpers are in tests/helpers.py.

Two tiers (pyproject.toml): `python -m pytest` runs the fast tier, `python -m pytest -m slow` the tests
marked `slow` (notebooks, benchmark and experiment smoke runs, kill-and-resume, fuzzing, long runs).
"""

import numpy as np
import pytest

import rwkv_np

from helpers import TORCH_WRITTEN, need


@pytest.fixture(scope="session")
def small_expected():
    """The torch-written small model's tokens and independent float64 logits and state."""
    return np.load(need(TORCH_WRITTEN / "small_expected.npz"))


@pytest.fixture(scope="session")
def small_model():
    """The torch-written small RWKV-4 (2 layers, C = 48, vocab 256), float32."""
    return rwkv_np.load_model(need(TORCH_WRITTEN / "small_fp32.pth"))
