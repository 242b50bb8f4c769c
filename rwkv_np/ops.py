"""Compiled elementwise operations that every version's kernels share: the exponential, the sigmoid,
LayerNorm with float64 statistics, the per-head GroupNorm, and which tokens a recurrent call returns
logits for. Numba; imported by the engines only (the references are plain NumPy).

error_model="numpy" everywhere: a division by zero gives inf instead of raising, which spares every
division a branch and lets the loops around them vectorise.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

LOGITS_NONE, LOGITS_LAST, LOGITS_ALL = 0, 1, 2  # which tokens a recurrent call computes logits for


# The LayerNorm sums may be reordered (several partial sums, SIMD lanes): in float64, the order
# changes them by ~1e-16 relative, far below the float32 rounding of the result. In order, each
# addition waits for the previous one, and a row of 768 took longer than the rest of the LayerNorm.
_SUM_MATH = {"reassoc", "nsz"}


@njit(fastmath=_SUM_MATH, cache=True, error_model="numpy")
def _mean64(x):
    acc = 0.0
    for j in range(x.shape[0]):
        acc += np.float64(x[j])
    return acc / x.shape[0]


@njit(fastmath=_SUM_MATH, cache=True, error_model="numpy")
def _mean_square64(x, mean):
    acc = 0.0
    for j in range(x.shape[0]):
        d = np.float64(x[j]) - mean
        acc += d * d
    return acc / x.shape[0]


@njit(cache=True, error_model="numpy")
def layer_norm_into(x, g, b, eps, out):
    # statistics in float64: C terms, so float32 rounding of the result is all that remains
    mean = _mean64(x)
    inv = 1.0 / np.sqrt(_mean_square64(x, mean) + eps)
    for j in range(x.shape[0]):
        out[j] = np.float32((x[j] - mean) * inv) * g[j] + b[j]


@intrinsic
def _bits_to_f64(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(bits), codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490  # ln 2 split in two so that n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
# 1/k! for k = 13..2: Taylor terms of e^r for |r| <= ln(2)/2; r^13/13! is at most 1.7e-16
_INV_FACT = tuple(1.0 / float(np.prod(np.arange(1, k + 1))) for k in range(13, 1, -1))


@njit(inline="always", error_model="numpy")
def exp_nonpos(x):
    """e^x for x <= 0 in float64, within 2 ulp of libm; 0 below -708 (the smallest normal).

    Written out (range reduction + polynomial) because a libm call cannot be vectorised: this
    lets the WKV loop run 8 channels per instruction."""
    xc = max(x, -708.0)
    n = np.rint(xc * _LOG2E)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = 0.0
    for c in _INV_FACT:
        p = p * r + c
    p = (p * r + 1.0) * r + 1.0
    scale = _bits_to_f64((np.int64(n) + 1023) << 52)  # 2^n, n in [-1021, 0]
    return p * scale if x >= -708.0 else 0.0



@njit(inline="always", error_model="numpy")
def sigmoid(x):
    """1 / (1 + e^-x) of a float32, computed in float64 with the vectorisable exponential."""
    e = exp_nonpos(-abs(np.float64(x)))
    # numerator 1 for x >= 0, e^x otherwise; written as a max so that loops over it vectorise
    return np.float32(max(e, np.float64(x >= 0)) / (1.0 + e))


@njit(inline="always", error_model="numpy")
def group_norm_head(y, lo, n, w, b, eps, out):
    """out[lo:lo+n] = LayerNorm of y[lo:lo+n] (one head), statistics in float64, as ln_x."""
    mean = 0.0
    for j in range(lo, lo + n):
        mean += np.float64(y[j])
    mean /= n
    var = 0.0
    for j in range(lo, lo + n):
        d = np.float64(y[j]) - mean
        var += d * d
    inv = 1.0 / np.sqrt(var / n + eps)
    for j in range(lo, lo + n):
        out[j] = np.float32((y[j] - mean) * inv) * w[j] + b[j]


@njit(inline="always", error_model="numpy")
def silu(x):
    return x * sigmoid(x)

