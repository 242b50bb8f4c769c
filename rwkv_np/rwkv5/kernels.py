"""RWKV-5's arithmetic (5.1 and 5.2) compiled with Numba: rwkv_np/rwkv5/reference.py fused as
rwkv_np/rwkv4/kernels.py fuses RWKV-4's. rwkv_np/rwkv5/engine.py runs them; RWKV-6 and 7 reuse the
address layout, channel mixing and the head below.

Recurrent form (generation; reference.step): `step` runs whole tokens through all layers in one call.
Per layer: parallel loops over the output rows of each weight matrix (every weight read once per
token), each row's elementwise work done where its dot products are; then one parallel loop over the
heads for the matrix-valued state and the per-head GroupNorm (ln_x). The products are
rwkv_np/products.py's `row_dot`.

Parallel form (prompts; reference.forward): the projections are BLAS products in engine.py; here only
the scan over T, `scan` (5.1, 5.2 and 6: y_t = r_t (diag(u) k_t^T v_t + S), S = diag(w_t) S + k_t^T v_t).

Layouts (the engines build them): the big matrices (stored dtype) by address in addr (rows M_*, L),
the head in column 0 of row M_HEAD; per-layer float32 vectors of width C in vc (L, *, C) and of width
A in va (L, *, A) (rows named below, per version).
"""

import numpy as np
from numba import njit, prange

from ..ops import LOGITS_ALL, LOGITS_LAST, group_norm_head, layer_norm_into, sigmoid, silu
from ..products import matrix_at, row_dot, widen

# rows of the address table (RWKV-5, 6 and 7)
M_K, M_V, M_R, M_G, M_O, F_K, F_R, F_V, M_HEAD = range(9)
N_ADDR = 9
# rows of vc (width C): the LayerNorms, then each version's token-shift vectors
LN1_W, LN1_B, LN2_W, LN2_B = range(4)
V5_MK, V5_MV, V5_MR, V5_MG, V5_FK, V5_FR = range(4, 10)  # time_mix_k v r g; ffn.time_mix_k r
# rows of va (width A): ln_x, then each version's per-channel vectors
LNX_W, LNX_B = range(2)
A5_W, A5_U = 2, 3  # w = exp(-exp(time_decay)) and u, per channel (5.1's per-head values repeated)


@njit(inline="always", error_model="numpy")
def head_logits(x, ln_out, eps, xn, head, out, ahead):
    layer_norm_into(x, ln_out[0], ln_out[1], eps, xn)
    for v_ in prange(head.shape[0]):
        out[v_] = row_dot(head, None, v_, xn, ahead)


@njit(inline="always", error_model="numpy")
def channel_mixing(x, xk, xr, kk, addr, i, kind, C, F, has_r, ahead):
    """Channel mixing after its token shift: x += [sigmoid(W'_r xr) *] W'_v max(W'_k xk, 0)^2."""
    wk = matrix_at(addr[F_K, i], kind, F, C)
    for f in prange(F):
        k = max(row_dot(wk, None, f, xk, ahead), np.float32(0.0))
        kk[f] = k * k
    wv = matrix_at(addr[F_V, i], kind, C, F)
    if has_r:
        wr = matrix_at(addr[F_R, i], kind, C, C)
        for c in prange(C):
            x[c] += sigmoid(row_dot(wr, None, c, xr, ahead)) * row_dot(wv, None, c, kk, ahead)
    else:
        for c in prange(C):
            x[c] += row_dot(wv, None, c, kk, ahead)


@njit(parallel=True, cache=True, error_model="numpy")
def step(rows, addr, V, F, H, N, gated, ln0, vc, va, ln_out, eps, lnx_eps, shift, wkv, logits, logits_for,
            ahead):
    """reference.py's recurrent form (gated: 5.2) over tokens with embedding rows rows (T, C);
    shift (L, 2, C) and wkv (L, H, N, N) float32 advanced in place. ahead: row_dot's prefetch
    distance in bytes (0: none), as in rwkv_np/rwkv4/kernels.recurrent_tokens."""
    L, C, A = vc.shape[0], vc.shape[2], H * N
    kind = rows[0]
    head = matrix_at(addr[M_HEAD, 0], kind, V, C)
    x = np.empty(C, np.float32)
    xn = np.empty(C, np.float32)
    xk = np.empty(C, np.float32)
    xv = np.empty(C, np.float32)
    xr = np.empty(C, np.float32)
    xg = np.empty(C, np.float32)
    r = np.empty(A, np.float32)
    k = np.empty(A, np.float32)
    v = np.empty(A, np.float32)
    g = np.empty(A, np.float32)
    y = np.empty(A, np.float32)
    o = np.empty(A, np.float32)
    kk = np.empty(F, np.float32)
    one = np.float32(1.0)
    for t in range(rows.shape[0]):
        for j in range(C):
            xn[j] = widen(rows[t, j])
        layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p, q, s, S = vc[i], va[i], shift[i], wkv[i]
            layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
            for j in range(C):  # mix(x, x_prev, mu) = mu x + (1 - mu) x_prev
                xk[j] = xn[j] * p[V5_MK, j] + s[0, j] * (one - p[V5_MK, j])
                xv[j] = xn[j] * p[V5_MV, j] + s[0, j] * (one - p[V5_MV, j])
                xr[j] = xn[j] * p[V5_MR, j] + s[0, j] * (one - p[V5_MR, j])
                xg[j] = xn[j] * p[V5_MG, j] + s[0, j] * (one - p[V5_MG, j])
                s[0, j] = xn[j]
            wk, wv, wr = matrix_at(addr[M_K, i], kind, A, C), matrix_at(addr[M_V, i], kind, A, C), matrix_at(addr[M_R, i], kind, A, C)
            wg = matrix_at(addr[M_G if gated else M_K, i], kind, A, C)
            for a in prange(A):
                k[a] = row_dot(wk, None, a, xk, ahead)
                v[a] = row_dot(wv, None, a, xv, ahead)
                r[a] = row_dot(wr, None, a, xr, ahead)
                if gated:
                    g[a] = silu(row_dot(wg, None, a, xg, ahead))
            for h in prange(H):  # y = r (diag(u) k^T v + S);  S = diag(w) S + k^T v
                lo = h * N
                for jj in range(N):
                    y[lo + jj] = 0.0
                for ii in range(N):
                    ki, ri, ui, wi = k[lo + ii], r[lo + ii], q[A5_U, lo + ii], q[A5_W, lo + ii]
                    Si = S[h, ii]
                    for jj in range(N):
                        kv = ki * v[lo + jj]
                        y[lo + jj] += ri * (ui * kv + Si[jj])
                        Si[jj] = wi * Si[jj] + kv
                group_norm_head(y, lo, N, q[LNX_W], q[LNX_B], lnx_eps, o)
                if gated:
                    for jj in range(lo, lo + N):
                        o[jj] *= g[jj]
            wo = matrix_at(addr[M_O, i], kind, C, A)
            for c in prange(C):
                x[c] += row_dot(wo, None, c, o, ahead)
            layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):
                xk[j] = xn[j] * p[V5_FK, j] + s[1, j] * (one - p[V5_FK, j])
                xr[j] = xn[j] * p[V5_FR, j] + s[1, j] * (one - p[V5_FR, j])
                s[1, j] = xn[j]
            channel_mixing(x, xk, xr, kk, addr, i, kind, C, F, True, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            head_logits(x, ln_out, eps, xn, head, logits[t if logits_for == LOGITS_ALL else 0], ahead)


# ---- parallel form: the scan over T (the projections are BLAS products in engine.py) ----------

# The scans run on the calling thread (plain loops, as kernels.py's parallel-form kernels): BLAS owns
# the threads in the parallel form, and a Numba pool spinning between the products starves it.
@njit(cache=True, error_model="numpy")
def scan(r, k, v, w, u, S, y):
    """y (T, H, N) of y_t = r_t (diag(u) k_t^T v_t + S), S = diag(w_t) S + k_t^T v_t per head, S
    (H, N, N) advanced in place; r, k, v, w (T, H, N) float32, u (H, N). Serves 5.1, 5.2 (w the
    same at every t) and 6."""
    T, H, N = r.shape
    for h in range(H):
        Sh = S[h]
        for t in range(T):
            for jj in range(N):
                y[t, h, jj] = 0.0
            for ii in range(N):
                ki, ri, ui, wi = k[t, h, ii], r[t, h, ii], u[h, ii], w[t, h, ii]
                for jj in range(N):
                    kv = ki * v[t, h, jj]
                    y[t, h, jj] += ri * (ui * kv + Sh[ii, jj])
                    Sh[ii, jj] = wi * Sh[ii, jj] + kv


# the two sums over key channels may be reordered (SIMD lanes), as products.py's dot products are:
