"""The WKV operator of eq. 14, three ways.

    wkv_t = ( sum_{i<t} e^{-(t-1-i) w + k_i} v_i  +  e^{u + k_t} v_t )
            / ( sum_{i<t} e^{-(t-1-i) w + k_i}      +  e^{u + k_t} )

`w` (C,) is the paper's per-channel decay rate, positive (w = exp(time_decay) of a checkpoint: the
official code keeps -w), `u` (C,) is the bonus of the current token (time_first), `k`, `v` are
(T, C). Every channel is independent: eq. 14 mixes a channel only with its own past.

1. `wkv_naive`      eq. 14 as written: O(T^2), overflows for large k; the float64 oracle.
2. `wkv_numpy`      the recurrence over a_t, b_t kept stable by a running maximum exponent p_t
                    (the a, b, p form of the official kernels), one NumPy step per token.
3. `wkv_numba`      the same recurrence as a Numba-compiled scan over time, parallel over
                    channels. The model calls this one in both of its forms.

The recurrent state (aa, bb, pp) represents a = aa * e^pp and b = bb * e^pp:
    a_t = e^{-w} a_{t-1} + e^{k_t} v_t        b_t = e^{-w} b_{t-1} + e^{k_t}
    wkv_t = (a_{t-1} + e^{u + k_t} v_t) / (b_{t-1} + e^{u + k_t})
Keeping the exponent apart in pp means no exp() ever sees a positive argument, so float32 never
overflows however large k and u are.
"""

import numpy as np
from numba import njit, prange

# The running maximum of an empty past. Finite rather than -inf so that pp - p never computes
# inf - inf; exp(-1e38 - p) is exactly 0 for any p a real model produces. Same value as the
# official kernels.
PP_EMPTY = -1e38


def wkv_naive(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Eq. 14 as written, from an empty past. O(T^2 C) time.

    w, u: (C,); k, v: (T, C). Returns wkv (T, C) in the dtype of k. Use float64 inputs when this
    serves as an oracle: the exponentials are taken as they stand and overflow in float32 once
    k + u exceeds about 88.
    """
    T = k.shape[0]
    out = np.empty_like(k)
    for t in range(T):
        # weights of the past tokens i = 0..t-1: distance t-1-i steps of decay
        distance = np.arange(t - 1, -1, -1, dtype=k.dtype)[:, None]  # (t, 1)
        past = np.exp(-distance * w + k[:t])  # (t, C)
        now = np.exp(u + k[t])  # (C,)
        out[t] = ((past * v[:t]).sum(0) + now * v[t]) / (past.sum(0) + now)
    return out


def wkv_recurrent_step(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray,
                       aa: np.ndarray, bb: np.ndarray, pp: np.ndarray):
    """One token of the stable recurrence. All arguments (C,).

    Returns (wkv, aa, bb, pp): the output for this token and the state after it.
    """
    # output: the decayed past (aa, bb at exponent pp) plus the current token with bonus u
    ww = u + k
    p = np.maximum(pp, ww)
    e1 = np.exp(pp - p)
    e2 = np.exp(ww - p)
    wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
    # state update: decay the past by e^{-w}, add the current token without the bonus
    ww = pp - w
    p = np.maximum(ww, k)
    e1 = np.exp(ww - p)
    e2 = np.exp(k - p)
    return wkv, e1 * aa + e2 * v, e1 * bb + e2, p


def wkv_numpy(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray,
              aa: np.ndarray, bb: np.ndarray, pp: np.ndarray):
    """The stable recurrence over a sequence, one NumPy step per token.

    k, v: (T, C); w, u, aa, bb, pp: (C,). Returns (wkv (T, C), aa, bb, pp).
    """
    out = np.empty_like(k)
    for t in range(k.shape[0]):
        out[t], aa, bb, pp = wkv_recurrent_step(w, u, k[t], v[t], aa, bb, pp)
    return out, aa, bb, pp


@njit(cache=True)
def _scan_channel(c, w, u, k, v, aa, bb, pp, out):
    # Channel c of the scan, in place: aa, bb, pp (C,) are advanced over the T rows of k, v.
    # Arithmetic in float64: free here (the loop is latency-bound, not throughput-bound) and it
    # keeps the float32 result within one rounding of the exact recurrence.
    a = np.float64(aa[c])
    b = np.float64(bb[c])
    p = np.float64(pp[c])
    wc = np.float64(w[c])
    uc = np.float64(u[c])
    for t in range(k.shape[0]):
        kt = np.float64(k[t, c])
        vt = np.float64(v[t, c])
        ww = uc + kt
        q = max(p, ww)
        e1 = np.exp(p - q)
        e2 = np.exp(ww - q)
        out[t, c] = (e1 * a + e2 * vt) / (e1 * b + e2)
        ww = p - wc
        q = max(ww, kt)
        e1 = np.exp(ww - q)
        e2 = np.exp(kt - q)
        a = e1 * a + e2 * vt
        b = e1 * b + e2
        p = q
    aa[c] = a
    bb[c] = b
    pp[c] = p


@njit(parallel=True, cache=True)
def _wkv_scan_parallel(w, u, k, v, aa, bb, pp, out):
    for c in prange(k.shape[1]):
        _scan_channel(c, w, u, k, v, aa, bb, pp, out)


@njit(cache=True)
def _wkv_scan_serial(w, u, k, v, aa, bb, pp, out):
    # one token (the recurrent form): starting threads would cost more than the work
    for c in range(k.shape[1]):
        _scan_channel(c, w, u, k, v, aa, bb, pp, out)


def wkv_numba(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray,
              aa: np.ndarray, bb: np.ndarray, pp: np.ndarray):
    """The stable recurrence as a compiled scan over time, parallel over channels.

    k, v: (T, C) float32; w, u, aa, bb, pp: (C,). Returns (wkv (T, C) float32, aa, bb, pp); the
    state arguments are not modified.
    """
    k = np.ascontiguousarray(k, dtype=np.float32)
    v = np.ascontiguousarray(v, dtype=np.float32)
    out = np.empty_like(k)
    aa = np.array(aa, dtype=np.float32)
    bb = np.array(bb, dtype=np.float32)
    pp = np.array(pp, dtype=np.float32)
    # channels are independent, so both schedules give bit-identical results
    scan = _wkv_scan_serial if k.shape[0] * k.shape[1] < 32768 else _wkv_scan_parallel
    scan(np.asarray(w, np.float32), np.asarray(u, np.float32), k, v, aa, bb, pp, out)
    return out, aa, bb, pp
