"""RWKV-7's arithmetic compiled with Numba: rwkv_np/rwkv7/reference.py fused as rwkv_np/rwkv5/kernels.py
fuses RWKV-5's (whose address layout, channel mixing and head it reuses). rwkv_np/rwkv7/engine.py runs
them: `step` (the recurrent form) and `scan` (the delta rule over T, for the parallel form).
"""

import numpy as np
from numba import njit, prange

from ..ops import LOGITS_ALL, LOGITS_LAST, group_norm_head, layer_norm_into, sigmoid
from ..products import dot, matrix_at, row_dot, widen
from ..rwkv5.kernels import LN1_B, LN1_W, LN2_B, LN2_W, LNX_B, LNX_W, M_HEAD, M_K, M_O, M_R, M_V, \
    channel_mixing, head_logits

# rows of vc (width C) after the LayerNorms, and of va (width A) after ln_x
V7_XR, V7_XW, V7_XK, V7_XV, V7_XA, V7_XG, V7_FK = range(4, 11)  # x_r w k v a g; ffn.x_k
A7_W0, A7_A0, A7_V0, A7_KK, A7_KA, A7_RK = range(2, 8)  # w0 a0 v0 (zeros in layer 0) k_k k_a r_k

_DECAY_SCALE = np.float32(np.exp(-0.5))  # w = exp(-e^-0.5 sigmoid(d))


@njit(parallel=True, cache=True, error_model="numpy")
def step(rows, addr, V, F, H, N, ln0, vc, va, w1, w2, a1, a2, v1, v2, g1, g2, ln_out, eps, lnx_eps,
            shift, wkv, logits, logits_for, ahead):
    """reference.py's recurrent form. LoRA matrices transposed: w1 (L, Dw, C), w2 (L, A, Dw), and
    likewise a, v (zeros in layer 0, which has no value residual), g."""
    L, C, A = vc.shape[0], vc.shape[2], H * N
    Dw, Da, Dv, Dg = w1.shape[1], a1.shape[1], v1.shape[1], g1.shape[1]
    kind = rows[0]
    head = matrix_at(addr[M_HEAD, 0], kind, V, C)
    x, xn = np.empty(C, np.float32), np.empty(C, np.float32)
    mixed = np.empty((6, C), np.float32)  # x^r, x^w, x^k, x^v, x^a, x^g
    r = np.empty(A, np.float32)
    k = np.empty(A, np.float32)
    v = np.empty(A, np.float32)
    w = np.empty(A, np.float32)
    aa = np.empty(A, np.float32)
    g = np.empty(A, np.float32)
    kh = np.empty(A, np.float32)
    y = np.empty(A, np.float32)
    o = np.empty(A, np.float32)
    v_first = np.empty(A, np.float32)
    hidden = np.empty(Dw + Da + Dv + Dg, np.float32)
    kk = np.empty(F, np.float32)
    for t in range(rows.shape[0]):
        for j in range(C):
            xn[j] = widen(rows[t, j])
        layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p, q, s, S = vc[i], va[i], shift[i], wkv[i]
            layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
            for c in range(6):
                for j in range(C):
                    mixed[c, j] = xn[j] + (s[0, j] - xn[j]) * p[V7_XR + c, j]
            for j in range(C):
                s[0, j] = xn[j]
            # the LoRAs' hidden units: tanh(x^w A_w), x^a A_a, x^v A_v, sigmoid(x^g A_g)
            for d in prange(Dw + Da + Dv + Dg):
                if d < Dw:
                    hidden[d] = np.tanh(dot(w1[i, d], mixed[1]))
                elif d < Dw + Da:
                    hidden[d] = dot(a1[i, d - Dw], mixed[4])
                elif d < Dw + Da + Dv:
                    hidden[d] = dot(v1[i, d - Dw - Da], mixed[3]) if i > 0 else np.float32(0.0)
                else:
                    hidden[d] = sigmoid(dot(g1[i, d - Dw - Da - Dv], mixed[5]))
            wk, wv, wr = matrix_at(addr[M_K, i], kind, A, C), matrix_at(addr[M_V, i], kind, A, C), matrix_at(addr[M_R, i], kind, A, C)
            for a in prange(A):
                ka = row_dot(wk, None, a, mixed[2], ahead)
                va_ = row_dot(wv, None, a, mixed[3], ahead)
                r[a] = row_dot(wr, None, a, mixed[0], ahead)
                w[a] = np.exp(-_DECAY_SCALE * sigmoid(q[A7_W0, a] + dot(w2[i, a], hidden[:Dw])))
                at = sigmoid(q[A7_A0, a] + dot(a2[i, a], hidden[Dw:Dw + Da]))
                aa[a] = at
                g[a] = dot(g2[i, a], hidden[Dw + Da + Dv:])
                kh[a] = ka * q[A7_KK, a]  # kappa = k xi, normalised per head below
                k[a] = ka * (1 + (at - 1) * q[A7_KA, a])  # k~ = k lerp(1, a, alpha)
                if i == 0:
                    v_first[a] = va_
                    v[a] = va_
                else:
                    nu = sigmoid(q[A7_V0, a] + dot(v2[i, a], hidden[Dw + Da:Dw + Da + Dv]))
                    v[a] = va_ + (v_first[a] - va_) * nu
            for h in prange(H):
                lo = h * N
                norm = 0.0
                for jj in range(lo, lo + N):
                    norm += np.float64(kh[jj]) * kh[jj]
                scale = np.float32(1.0 / max(np.sqrt(norm), 1e-12))
                for jj in range(lo, lo + N):
                    kh[jj] *= scale
                bonus = np.float32(0.0)
                for jj in range(lo, lo + N):
                    bonus += r[jj] * q[A7_RK, jj] * k[jj]
                Sh = S[h]
                for vi in range(N):  # S = S (diag(w) - kh^T (a kh)) + v^T k~;  y = S r^T
                    Sv = Sh[vi]
                    removed = np.float32(0.0)
                    for ki in range(N):
                        removed += Sv[ki] * kh[lo + ki]
                    acc = np.float32(0.0)
                    vv = v[lo + vi]
                    for ki in range(N):
                        z = Sv[ki] * w[lo + ki] - removed * (aa[lo + ki] * kh[lo + ki]) + vv * k[lo + ki]
                        Sv[ki] = z
                        acc += z * r[lo + ki]
                    y[lo + vi] = acc
                group_norm_head(y, lo, N, q[LNX_W], q[LNX_B], lnx_eps, o)
                for jj in range(lo, lo + N):
                    o[jj] = g[jj] * (o[jj] + bonus * v[jj])
            wo = matrix_at(addr[M_O, i], kind, C, A)
            for c in prange(C):
                x[c] += row_dot(wo, None, c, o, ahead)
            layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):
                mixed[2, j] = xn[j] + (s[1, j] - xn[j]) * p[V7_FK, j]
                s[1, j] = xn[j]
            channel_mixing(x, mixed[2], mixed[2], kk, addr, i, kind, C, F, False, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            head_logits(x, ln_out, eps, xn, head, logits[t if logits_for == LOGITS_ALL else 0], ahead)


# the two sums over key channels may be reordered (SIMD lanes), as products.py's dot products are:
# in order, each addition waits for the previous one
@njit(fastmath={"reassoc", "contract", "nsz"}, cache=True, error_model="numpy")
def scan(r, w, k, v, kh, a, S, y):
    """y (T, H, N) of the delta rule S = S (diag(w_t) - kh_t^T (a_t kh_t)) + v_t^T k_t, y_t = S r_t^T
    per head (S (H, N, N): rows value channels, columns key channels), S advanced in place."""
    T, H, N = r.shape
    for h in range(H):
        Sh = S[h]
        for t in range(T):
            for vi in range(N):
                Sv = Sh[vi]
                removed = np.float32(0.0)
                for ki in range(N):
                    removed += Sv[ki] * kh[t, h, ki]
                acc = np.float32(0.0)
                vv = v[t, h, vi]
                for ki in range(N):
                    z = Sv[ki] * w[t, h, ki] - removed * (a[t, h, ki] * kh[t, h, ki]) + vv * k[t, h, ki]
                    Sv[ki] = z
                    acc += z * r[t, h, ki]
                y[t, h, vi] = acc
