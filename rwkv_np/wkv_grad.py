"""WKV for training: a forward scan that saves what the backward needs, and the backward scan.

WKV (paper eq. 14, per channel, w > 0 the decay, u the bonus of the current token):

    y_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (sum_{i<t} e^{-(t-1-i)w + k_i} + e^{u+k_t})

Both scans keep every exponent relative to a running maximum, so keys of +-100 (where a naive e^k overflows
float32 and even float64 at ~710) stay finite. Arrays are (B, T, C); w, u are (C,). Arithmetic inside the
kernels is float64 whatever the input dtype; outputs take the input dtype.
"""
import numpy as np
from numba import njit

from .kernels import wkv_step
from .reference import PP_EMPTY


@njit(cache=True, error_model="numpy")
def _wkv_forward(w, u, k, v, y, q, d):
    # the scan of kernels.wkv_step (eq. 14, the same compiled arithmetic as inference) over
    # (B, T, C) from the empty state, keeping each output's denominator d and its exponent q
    B, T, C = k.shape
    a, b, p = np.empty(C), np.empty(C), np.empty(C)
    for n in range(B):
        a[:], b[:], p[:] = 0.0, 0.0, PP_EMPTY
        for t in range(T):
            for c in range(C):  # channels innermost: the (B, T, C) arrays are read contiguously
                y[n, t, c], d[n, t, c], q[n, t, c], a[c], b[c], p[c] = wkv_step(
                    a[c], b[c], p[c], np.float64(w[c]), np.float64(u[c]),
                    np.float64(k[n, t, c]), np.float64(v[n, t, c]))


@njit(cache=True)
def _wkv_backward(w, u, k, v, y, q, d, gy, gw, gu, gk, gv):
    B, T, C = k.shape
    g = np.empty(C)
    h = np.empty(C)
    g2 = np.empty(C)
    h2 = np.empty(C)
    m = np.empty(C)
    for b in range(B):
        # Sums over the future t' > t, all scaled by e^m (m = running max of -q_t' - (t'-1-t)w):
        #   G  = sum e^{-(t'-1-t)w} gy/D,            H  = same times y_t',
        #   G2 = sum (t'-1-t) e^{-(t'-1-t)w} gy/D,   H2 = same times y_t'.
        # dy_t'/dk_t = e^{k_t - (t'-1-t)w}(v_t - y_t')/D_t' and e^{m + k_t} <= 1 because
        # q_t' >= k_t - (t'-1-t)w, so nothing overflows.
        g[:] = 0.0
        h[:] = 0.0
        g2[:] = 0.0
        h2[:] = 0.0
        m[:] = -1e38
        for t in range(T - 1, -1, -1):
            for c in range(C):
                wc = np.float64(w[c])
                kt = np.float64(k[b, t, c])
                vt = np.float64(v[b, t, c])
                yt = np.float64(y[b, t, c])
                qt = q[b, t, c]
                ek = np.exp(m[c] + kt)
                dv = ek * g[c]
                dk = ek * (vt * g[c] - h[c])
                gw[c] -= ek * (vt * g2[c] - h2[c])
                # the current-token term e^{u+k_t} v_t
                cc = np.float64(gy[b, t, c]) / d[b, t, c]
                e2 = np.exp(np.float64(u[c]) + kt - qt)
                dv += cc * e2
                du = cc * e2 * (vt - yt)
                dk += du
                gu[c] += du
                gk[b, t, c] = dk
                gv[b, t, c] = dv
                # fold step t into the sums seen by step t-1
                newm = max(m[c] - wc, -qt)
                s1 = np.exp(m[c] - wc - newm)
                s2 = np.exp(-qt - newm)
                g2[c] = (g2[c] + g[c]) * s1
                h2[c] = (h2[c] + h[c]) * s1
                g[c] = g[c] * s1 + cc * s2
                h[c] = h[c] * s1 + cc * yt * s2
                m[c] = newm


def wkv_forward(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray):
    """WKV over (B, T, C) from a zero state. Returns y (B, T, C) and the saves (q, d) for `wkv_backward`."""
    k = np.ascontiguousarray(k)
    v = np.ascontiguousarray(v)
    y = np.empty_like(k)
    q = np.empty(k.shape, np.float64)
    d = np.empty(k.shape, np.float64)
    _wkv_forward(np.ascontiguousarray(w), np.ascontiguousarray(u), k, v, y, q, d)
    return y, (q, d)


def wkv_backward(w, u, k, v, y, saves, gy):
    """Gradients of sum(gy * y) for w (C,), u (C,), k, v (B, T, C); w is the positive decay."""
    q, d = saves
    gw = np.zeros(w.shape, np.float64)
    gu = np.zeros(u.shape, np.float64)
    gk = np.empty_like(k)
    gv = np.empty_like(v)
    _wkv_backward(w, u, np.ascontiguousarray(k), np.ascontiguousarray(v), y, q, d,
                  np.ascontiguousarray(gy), gw, gu, gk, gv)
    return gw.astype(w.dtype), gu.astype(u.dtype), gk, gv
