"""Eq. 14 for training: a forward scan that saves what the backward needs, and the backward scan.

WKV (paper eq. 14, per channel, w > 0 the decay, u the bonus of the current token):

    y_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (sum_{i<t} e^{-(t-1-i)w + k_i} + e^{u+k_t})

The forward runs wkv_step (rwkv_np/rwkv4/kernels.py), the one compiled copy of eq. 14 that inference also runs. Both scans
keep every exponent relative to a running maximum, so keys of +-100 (where a naive e^k overflows float32
and even float64 at ~710) stay finite. Arrays are time-major (T, B, C), the layout of training/model.py;
w, u are (C,). Arithmetic inside the kernels is float64 whatever the input dtype; outputs take the input
dtype.
"""
import numpy as np
from numba import njit

from ..errors import ArgumentError
from ..rwkv4.kernels import wkv_step
from ..rwkv4.reference import PP_EMPTY


@njit(cache=True, error_model="numpy")
def _wkv_forward(w, u, k, v, y, q, d):
    # the scan of kernels.wkv_step over (T, B, C) from the empty state, keeping each output's
    # denominator d and its exponent q
    T, B, C = k.shape
    a, b, p = np.zeros((B, C)), np.zeros((B, C)), np.full((B, C), PP_EMPTY)
    for t in range(T):
        for n in range(B):
            for c in range(C):  # channels innermost: the arrays are read contiguously
                y[t, n, c], d[t, n, c], q[t, n, c], a[n, c], b[n, c], p[n, c] = wkv_step(
                    a[n, c], b[n, c], p[n, c], np.float64(w[c]), np.float64(u[c]),
                    np.float64(k[t, n, c]), np.float64(v[t, n, c]))


@njit(cache=True, error_model="numpy")
def _wkv_backward(w, u, k, v, y, q, d, gy, gw, gu, gk, gv):
    T, B, C = k.shape
    # Sums over the future t' > t, per (batch row, channel), all scaled by e^m
    # (m = running max of -q_t' - (t'-1-t)w):
    #   G  = sum e^{-(t'-1-t)w} gy/D,            H  = same times y_t',
    #   G2 = sum (t'-1-t) e^{-(t'-1-t)w} gy/D,   H2 = same times y_t'.
    # dy_t'/dk_t = e^{k_t - (t'-1-t)w}(v_t - y_t')/D_t' and e^{m + k_t} <= 1 because
    # q_t' >= k_t - (t'-1-t)w, so nothing overflows.
    g, h, g2, h2 = np.zeros((B, C)), np.zeros((B, C)), np.zeros((B, C)), np.zeros((B, C))
    m = np.full((B, C), -1e38)
    for t in range(T - 1, -1, -1):
        for n in range(B):
            for c in range(C):
                wc = np.float64(w[c])
                kt = np.float64(k[t, n, c])
                vt = np.float64(v[t, n, c])
                yt = np.float64(y[t, n, c])
                qt = q[t, n, c]
                ek = np.exp(m[n, c] + kt)
                dv = ek * g[n, c]
                dk = ek * (vt * g[n, c] - h[n, c])
                gw[c] -= ek * (vt * g2[n, c] - h2[n, c])
                # the current-token term e^{u+k_t} v_t
                cc = np.float64(gy[t, n, c]) / d[t, n, c]
                e2 = np.exp(np.float64(u[c]) + kt - qt)
                dv += cc * e2
                du = cc * e2 * (vt - yt)
                dk += du
                gu[c] += du
                gk[t, n, c] = dk
                gv[t, n, c] = dv
                # fold step t into the sums seen by step t-1
                newm = max(m[n, c] - wc, -qt)
                s1 = np.exp(m[n, c] - wc - newm)
                s2 = np.exp(-qt - newm)
                g2[n, c] = (g2[n, c] + g[n, c]) * s1
                h2[n, c] = (h2[n, c] + h[n, c]) * s1
                g[n, c] = g[n, c] * s1 + cc * s2
                h[n, c] = h[n, c] * s1 + cc * yt * s2
                m[n, c] = newm


def wkv_forward(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray):
    """WKV over k, v (T, B, C) from the empty state. Returns y (T, B, C) and the saves (q, d) for
    `wkv_backward`."""
    if k.ndim != 3 or k.shape != v.shape or w.shape != k.shape[-1:] or u.shape != k.shape[-1:]:
        raise ArgumentError(f"wkv_forward: k, v must be (T, B, C) with w, u (C,); got k {k.shape}, "
                         f"v {v.shape}, w {w.shape}, u {u.shape}")
    k = np.ascontiguousarray(k)
    v = np.ascontiguousarray(v)
    y = np.empty_like(k)
    q = np.empty(k.shape, np.float64)
    d = np.empty(k.shape, np.float64)
    _wkv_forward(np.ascontiguousarray(w), np.ascontiguousarray(u), k, v, y, q, d)
    return y, (q, d)


def wkv_backward(w, u, k, v, y, saves, gy):
    """Gradients of sum(gy * y) for w (C,), u (C,), k, v (T, B, C); w is the positive decay."""
    q, d = saves
    gw = np.zeros(w.shape, np.float64)
    gu = np.zeros(u.shape, np.float64)
    gk = np.empty_like(k)
    gv = np.empty_like(v)
    _wkv_backward(w, u, np.ascontiguousarray(k), np.ascontiguousarray(v), y, q, d,
                  np.ascontiguousarray(gy), gw, gu, gk, gv)
    return gw.astype(w.dtype), gu.astype(u.dtype), gk, gv
