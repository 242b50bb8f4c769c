"""Eq. 14 alone, for the tests: rwkv_np.analysis.eq14_reference with the (wkv, aa, bb, pp) signature."""

import numpy as np

from rwkv_np import reference
from rwkv_np.wkv import eq14_reference


def reference_wkv(w, u, k, v, aa, bb, pp):
    """wkv (T, C) of eq. 14 over k, v (T, C) from the state aa, bb, pp (C,), and the state after,
    as rwkv_np.reference computes it (in the dtype of the inputs)."""
    wkv, (aa, bb, pp) = eq14_reference(w, u, k, v, (aa, bb, pp))
    return wkv, aa, bb, pp


def empty_state(C, dtype=np.float64):
    return np.zeros(C, dtype), np.zeros(C, dtype), np.full(C, reference.PP_EMPTY, dtype)
