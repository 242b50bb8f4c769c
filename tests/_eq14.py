"""Eq. 14 alone, taken from rwkv_np.reference.time_mixing: the reference writes the recurrence inline,
so tests reach it through time_mixing with projections that pass k and v straight through."""

import numpy as np

from rwkv_np import reference


def reference_wkv(w, u, k, v, aa, bb, pp):
    """wkv (T, C) of eq. 14 over k, v (T, C) from the state aa, bb, pp (C,), and the state after,
    as rwkv_np.reference computes it (in the dtype of the inputs)."""
    T, C = k.shape
    eye, zero = np.eye(C, dtype=k.dtype), np.zeros((C, C), k.dtype)
    x = np.concatenate([k, v], axis=1)  # (T, 2C): k in the first C columns, v in the last
    record = {}
    reference.time_mixing(
        x, np.zeros(2 * C, k.dtype), aa, bb, pp,
        time_mix_k=np.ones(2 * C, k.dtype), time_mix_v=np.ones(2 * C, k.dtype), time_mix_r=np.ones(2 * C, k.dtype),
        time_decay=np.log(w), time_first=u, key=np.hstack([eye, zero]), value=np.hstack([zero, eye]),
        receptance=np.zeros((C, 2 * C), k.dtype), output=eye, record=record)
    return record["wkv"], record["aa"], record["bb"], record["pp"]


def empty_state(C, dtype=np.float64):
    return np.zeros(C, dtype), np.zeros(C, dtype), np.full(C, reference.PP_EMPTY, dtype)
