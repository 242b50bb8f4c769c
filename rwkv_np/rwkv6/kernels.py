"""RWKV-6's arithmetic compiled with Numba: rwkv_np/rwkv6/reference.py's recurrent form fused as
rwkv_np/rwkv5/kernels.py fuses RWKV-5's (whose address layout, channel mixing, head and parallel-form
scan it reuses). rwkv_np/rwkv6/engine.py runs it.
"""

import numpy as np
from numba import njit, prange

from ..ops import LOGITS_ALL, LOGITS_LAST, group_norm_head, layer_norm_into, silu
from ..products import matrix_at, row_dot, widen
from ..rwkv5.kernels import LN1_B, LN1_W, LN2_B, LN2_W, LNX_B, LNX_W, M_G, M_HEAD, M_K, M_O, M_R, M_V, \
    channel_mixing, head_logits

# rows of vc (width C) after the LayerNorms, and of va (width A) after ln_x
V6_MX, V6_MW, V6_MK, V6_MV, V6_MR, V6_MG, V6_FK, V6_FR = range(4, 12)  # time_maa_x w k v r g; ffn k r
A6_D, A6_U = 2, 3  # omega = time_decay (raw), u = time_faaaa


@njit(parallel=True, cache=True, error_model="numpy")
def step(rows, addr, V, F, H, N, ln0, vc, va, maa_w1, maa_w2, dec_w1, dec_w2, ln_out, eps, lnx_eps,
            shift, wkv, logits, logits_for, ahead):
    """reference.py's recurrent form. maa_w1 (L, 5 Dm, C), maa_w2 (L, 5, C, Dm), dec_w1 (L, Dd, C),
    dec_w2 (L, A, Dd): the LoRA matrices transposed."""
    L, C, A = vc.shape[0], vc.shape[2], H * N
    Dm5, Dm, Dd = maa_w1.shape[1], maa_w2.shape[3], dec_w1.shape[1]
    kind = rows[0]
    head = matrix_at(addr[M_HEAD, 0], kind, V, C)
    x = np.empty(C, np.float32)
    xn = np.empty(C, np.float32)
    xx = np.empty(C, np.float32)
    mixed = np.empty((5, C), np.float32)  # x^w, x^k, x^v, x^r, x^g
    r = np.empty(A, np.float32)
    k = np.empty(A, np.float32)
    v = np.empty(A, np.float32)
    g = np.empty(A, np.float32)
    w = np.empty(A, np.float32)
    y = np.empty(A, np.float32)
    o = np.empty(A, np.float32)
    hidden, hd = np.empty(Dm5, np.float32), np.empty(Dd, np.float32)
    kk = np.empty(F, np.float32)
    for t in range(rows.shape[0]):
        for j in range(C):
            xn[j] = widen(rows[t, j])
        layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p, q, s, S = vc[i], va[i], shift[i], wkv[i]
            layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
            for j in range(C):  # lerp(x, x_prev, mu_x): the input of the token-shift LoRA
                xx[j] = xn[j] + (s[0, j] - xn[j]) * p[V6_MX, j]
            A1 = maa_w1[i]
            for d in prange(Dm5):
                hidden[d] = np.tanh(row_dot(A1, None, d, xx, ahead))
            B = maa_w2[i]
            for j in prange(C):  # ddlerp: lerp(x, x_prev, lambda_c + tanh(xx A) B_c)
                for c in range(5):
                    m = np.float32(0.0)
                    for d in range(Dm):
                        m += hidden[c * Dm + d] * B[c, j, d]
                    mixed[c, j] = xn[j] + (s[0, j] - xn[j]) * (p[V6_MW + c, j] + m)
            for j in range(C):
                s[0, j] = xn[j]
            Ad = dec_w1[i]
            for d in prange(Dd):
                hd[d] = np.tanh(row_dot(Ad, None, d, mixed[0], ahead))
            Bd = dec_w2[i]
            wk, wv, wr, wg = (matrix_at(addr[M_K, i], kind, A, C), matrix_at(addr[M_V, i], kind, A, C),
                              matrix_at(addr[M_R, i], kind, A, C), matrix_at(addr[M_G, i], kind, A, C))
            for a in prange(A):
                k[a] = row_dot(wk, None, a, mixed[1], ahead)
                v[a] = row_dot(wv, None, a, mixed[2], ahead)
                r[a] = row_dot(wr, None, a, mixed[3], ahead)
                g[a] = silu(row_dot(wg, None, a, mixed[4], ahead))
                dd = q[A6_D, a] + row_dot(Bd, None, a, hd, ahead)  # d_t = omega + tanh(x^w A_d) B_d
                w[a] = np.float32(np.exp(-np.exp(np.float64(dd))))
            for h in prange(H):
                lo = h * N
                for jj in range(N):
                    y[lo + jj] = 0.0
                for ii in range(N):
                    ki, ri, ui, wi = k[lo + ii], r[lo + ii], q[A6_U, lo + ii], w[lo + ii]
                    Si = S[h, ii]
                    for jj in range(N):
                        kv = ki * v[lo + jj]
                        y[lo + jj] += ri * (ui * kv + Si[jj])
                        Si[jj] = wi * Si[jj] + kv
                group_norm_head(y, lo, N, q[LNX_W], q[LNX_B], lnx_eps, o)
                for jj in range(lo, lo + N):
                    o[jj] *= g[jj]
            wo = matrix_at(addr[M_O, i], kind, C, A)
            for c in prange(C):
                x[c] += row_dot(wo, None, c, o, ahead)
            layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):  # lerp with ffn.time_maa_k / _r
                mixed[1, j] = xn[j] + (s[1, j] - xn[j]) * p[V6_FK, j]
                mixed[3, j] = xn[j] + (s[1, j] - xn[j]) * p[V6_FR, j]
                s[1, j] = xn[j]
            channel_mixing(x, mixed[1], mixed[3], kk, addr, i, kind, C, F, True, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            head_logits(x, ln_out, eps, xn, head, logits[t if logits_for == LOGITS_ALL else 0], ahead)

