"""What the exercise notebooks give the learner beyond the reference's own helpers.

`wkv` is eq. 14 as the reference computes it (rwkv_np.rwkv4.reference.wkv, the stable form of
exercise 4), with its arguments checked first, so that a mistake in the caller is named where it is
made instead of surfacing later as a wrong or nan value: a decay rate w <= 0 (w = time_decay where
w = exp(time_decay) was meant: checkpoints store ln w) and keys or values that are not (T, C).
"""

import numpy as np

from ..rwkv4 import reference


class DecayRateError(ValueError):
    """wkv was given a decay rate w <= 0 (or nan). `w` holds what it was given."""

    def __init__(self, message, w):
        super().__init__(message)
        self.w = w


def wkv(w, u, k, v, aa, bb, pp):
    """Eq. 14 over k, v (T, C), per channel, after the past held in aa, bb, pp (C,): the reference's
    `wkv`. w (C,) > 0 is the decay rate, w = e^time_decay; u (C,) the bonus. For one token, pass
    k[None] and v[None] (1, C) and take wkv[0]. Returns (wkv (T, C), (aa, bb, pp) after the last token).

    Raises DecayRateError when some w <= 0 (or nan), ValueError when k, v are not (T, C) with
    C = len(w)."""
    w_ = np.asarray(w)
    k_, v_ = np.asarray(k), np.asarray(v)
    C = w_.shape[-1] if w_.ndim else None
    if k_.ndim != 2 or v_.shape != k_.shape or (C is not None and k_.shape[1] != C):
        one = " (for one token: k[None] and v[None], then wkv[0])" if k_.ndim == 1 else ""
        raise ValueError(f"wkv takes k and v of shape (T, C), C = {C} channels; got k {k_.shape}, "
                         f"v {v_.shape}{one}")
    bad = ~(w_ > 0)
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0]) if w_.ndim else ()
        where = f"w[{', '.join(map(str, i))}]" if i else "w"
        raise DecayRateError(f"the decay rate must be positive, but {where} = {float(w_[i]):.4g} "
                             f"({int(bad.sum())} of {bad.size} channels <= 0 or nan): w = np.exp(time_decay)?",
                             w)
    return reference.wkv(w, u, k, v, aa, bb, pp)
