"""Compiled kernels of the later versions' engine (rwkv_np/engine_later.py): the arithmetic of
rwkv_np/reference_v5.py (5.1, 5.2), reference_v6.py and reference_v7.py, fused like kernels.py fuses
RWKV-4's.

Recurrent form (generation; reference_vN.step): `step_v5`, `step_v6`, `step_v7` run whole tokens
through all layers in one call. Per layer: parallel loops over the output rows of each weight matrix
(every weight read once per token), with each row's elementwise work (decay, gates, LoRA outputs)
done where its dot products are; then one parallel loop over the heads for the matrix-valued state
and the per-head GroupNorm (ln_x). The shared pieces (`row_dot` with its prefetch, `_dot`, `widen`, the float64 LayerNorm, the
sigmoid) are kernels.py's.

Parallel form (prompts; reference_vN.forward): the projections are BLAS products in engine_later.py;
here only the scans over T, `scan_v5` (5.1, 5.2 and 6: y_t = r_t (diag(u) k_t^T v_t + S),
S = diag(w_t) S + k_t^T v_t) and `scan_v7` (the delta rule).

Layouts (engine_later._Layout builds them): the big matrices (stored dtype) by address in addr
(rows M_*, L), the head in column 0 of row M_HEAD; per-layer float32 vectors of width C in vc
(L, *, C) and of width A in va (L, *, A) (rows V5_*, V6_*, V7_*); LoRA matrices float32, transposed
so that each output is one contiguous dot product.
"""

import numpy as np
from numba import njit, prange

from .kernels import LOGITS_ALL, LOGITS_LAST, _dot, _layer_norm_into, _matrix, _sigmoid, row_dot, widen

# rows of the address table
M_K, M_V, M_R, M_G, M_O, F_K, F_R, F_V, M_HEAD = range(9)
N_ADDR = 9
# rows of vc (width C): the LayerNorms, then each version's token-shift vectors
LN1_W, LN1_B, LN2_W, LN2_B = range(4)
V5_MK, V5_MV, V5_MR, V5_MG, V5_FK, V5_FR = range(4, 10)  # time_mix_k v r g; ffn.time_mix_k r
V6_MX, V6_MW, V6_MK, V6_MV, V6_MR, V6_MG, V6_FK, V6_FR = range(4, 12)  # time_maa_x w k v r g; ffn k r
V7_XR, V7_XW, V7_XK, V7_XV, V7_XA, V7_XG, V7_FK = range(4, 11)  # x_r w k v a g; ffn.x_k
# rows of va (width A): ln_x, then each version's per-channel vectors
LNX_W, LNX_B = range(2)
A5_W, A5_U = 2, 3  # w = exp(-exp(time_decay)) and u, per channel (5.1's per-head values repeated)
A6_D, A6_U = 2, 3  # omega = time_decay (raw), u = time_faaaa
A7_W0, A7_A0, A7_V0, A7_KK, A7_KA, A7_RK = range(2, 8)  # w0 a0 v0 (zeros in layer 0) k_k k_a r_k


@njit(inline="always", error_model="numpy")
def _group_norm_head(y, lo, n, w, b, eps, out):
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
def _silu(x):
    return x * _sigmoid(x)


@njit(inline="always", error_model="numpy")
def _head_logits(x, ln_out, eps, xn, head, out, ahead):
    _layer_norm_into(x, ln_out[0], ln_out[1], eps, xn)
    for v_ in prange(head.shape[0]):
        out[v_] = row_dot(head, None, v_, xn, ahead)


@njit(inline="always", error_model="numpy")
def _ffn_relu2(x, xk, xr, kk, addr, i, kind, C, F, has_r, ahead):
    """Channel mixing after its token shift: x += [sigmoid(W'_r xr) *] W'_v max(W'_k xk, 0)^2."""
    wk = _matrix(addr[F_K, i], kind, F, C)
    for f in prange(F):
        k = max(row_dot(wk, None, f, xk, ahead), np.float32(0.0))
        kk[f] = k * k
    wv = _matrix(addr[F_V, i], kind, C, F)
    if has_r:
        wr = _matrix(addr[F_R, i], kind, C, C)
        for c in prange(C):
            x[c] += _sigmoid(row_dot(wr, None, c, xr, ahead)) * row_dot(wv, None, c, kk, ahead)
    else:
        for c in prange(C):
            x[c] += row_dot(wv, None, c, kk, ahead)


@njit(parallel=True, cache=True, error_model="numpy")
def step_v5(rows, addr, V, F, H, N, gated, ln0, vc, va, ln_out, eps, lnx_eps, shift, wkv, logits, logits_for,
            ahead):
    """reference_v5's recurrent form (gated: 5.2) over tokens with embedding rows rows (T, C);
    shift (L, 2, C) and wkv (L, H, N, N) float32 advanced in place. ahead: row_dot's prefetch
    distance in bytes (0: none), as in kernels.recurrent_tokens."""
    L, C, A = vc.shape[0], vc.shape[2], H * N
    kind = rows[0]
    head = _matrix(addr[M_HEAD, 0], kind, V, C)
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
        _layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p, q, s, S = vc[i], va[i], shift[i], wkv[i]
            _layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
            for j in range(C):  # mix(x, x_prev, mu) = mu x + (1 - mu) x_prev
                xk[j] = xn[j] * p[V5_MK, j] + s[0, j] * (one - p[V5_MK, j])
                xv[j] = xn[j] * p[V5_MV, j] + s[0, j] * (one - p[V5_MV, j])
                xr[j] = xn[j] * p[V5_MR, j] + s[0, j] * (one - p[V5_MR, j])
                xg[j] = xn[j] * p[V5_MG, j] + s[0, j] * (one - p[V5_MG, j])
                s[0, j] = xn[j]
            wk, wv, wr = _matrix(addr[M_K, i], kind, A, C), _matrix(addr[M_V, i], kind, A, C), _matrix(addr[M_R, i], kind, A, C)
            wg = _matrix(addr[M_G if gated else M_K, i], kind, A, C)
            for a in prange(A):
                k[a] = row_dot(wk, None, a, xk, ahead)
                v[a] = row_dot(wv, None, a, xv, ahead)
                r[a] = row_dot(wr, None, a, xr, ahead)
                if gated:
                    g[a] = _silu(row_dot(wg, None, a, xg, ahead))
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
                _group_norm_head(y, lo, N, q[LNX_W], q[LNX_B], lnx_eps, o)
                if gated:
                    for jj in range(lo, lo + N):
                        o[jj] *= g[jj]
            wo = _matrix(addr[M_O, i], kind, C, A)
            for c in prange(C):
                x[c] += row_dot(wo, None, c, o, ahead)
            _layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):
                xk[j] = xn[j] * p[V5_FK, j] + s[1, j] * (one - p[V5_FK, j])
                xr[j] = xn[j] * p[V5_FR, j] + s[1, j] * (one - p[V5_FR, j])
                s[1, j] = xn[j]
            _ffn_relu2(x, xk, xr, kk, addr, i, kind, C, F, True, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            _head_logits(x, ln_out, eps, xn, head, logits[t if logits_for == LOGITS_ALL else 0], ahead)


@njit(parallel=True, cache=True, error_model="numpy")
def step_v6(rows, addr, V, F, H, N, ln0, vc, va, maa_w1, maa_w2, dec_w1, dec_w2, ln_out, eps, lnx_eps,
            shift, wkv, logits, logits_for, ahead):
    """reference_v6's recurrent form. maa_w1 (L, 5 Dm, C), maa_w2 (L, 5, C, Dm), dec_w1 (L, Dd, C),
    dec_w2 (L, A, Dd): the LoRA matrices transposed."""
    L, C, A = vc.shape[0], vc.shape[2], H * N
    Dm5, Dm, Dd = maa_w1.shape[1], maa_w2.shape[3], dec_w1.shape[1]
    kind = rows[0]
    head = _matrix(addr[M_HEAD, 0], kind, V, C)
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
        _layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p, q, s, S = vc[i], va[i], shift[i], wkv[i]
            _layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
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
            wk, wv, wr, wg = (_matrix(addr[M_K, i], kind, A, C), _matrix(addr[M_V, i], kind, A, C),
                              _matrix(addr[M_R, i], kind, A, C), _matrix(addr[M_G, i], kind, A, C))
            for a in prange(A):
                k[a] = row_dot(wk, None, a, mixed[1], ahead)
                v[a] = row_dot(wv, None, a, mixed[2], ahead)
                r[a] = row_dot(wr, None, a, mixed[3], ahead)
                g[a] = _silu(row_dot(wg, None, a, mixed[4], ahead))
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
                _group_norm_head(y, lo, N, q[LNX_W], q[LNX_B], lnx_eps, o)
                for jj in range(lo, lo + N):
                    o[jj] *= g[jj]
            wo = _matrix(addr[M_O, i], kind, C, A)
            for c in prange(C):
                x[c] += row_dot(wo, None, c, o, ahead)
            _layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):  # lerp with ffn.time_maa_k / _r
                mixed[1, j] = xn[j] + (s[1, j] - xn[j]) * p[V6_FK, j]
                mixed[3, j] = xn[j] + (s[1, j] - xn[j]) * p[V6_FR, j]
                s[1, j] = xn[j]
            _ffn_relu2(x, mixed[1], mixed[3], kk, addr, i, kind, C, F, True, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            _head_logits(x, ln_out, eps, xn, head, logits[t if logits_for == LOGITS_ALL else 0], ahead)


_DECAY_SCALE = np.float32(np.exp(-0.5))  # w = exp(-e^-0.5 sigmoid(d))


@njit(parallel=True, cache=True, error_model="numpy")
def step_v7(rows, addr, V, F, H, N, ln0, vc, va, w1, w2, a1, a2, v1, v2, g1, g2, ln_out, eps, lnx_eps,
            shift, wkv, logits, logits_for, ahead):
    """reference_v7's recurrent form. LoRA matrices transposed: w1 (L, Dw, C), w2 (L, A, Dw), and
    likewise a, v (zeros in layer 0, which has no value residual), g."""
    L, C, A = vc.shape[0], vc.shape[2], H * N
    Dw, Da, Dv, Dg = w1.shape[1], a1.shape[1], v1.shape[1], g1.shape[1]
    kind = rows[0]
    head = _matrix(addr[M_HEAD, 0], kind, V, C)
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
        _layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p, q, s, S = vc[i], va[i], shift[i], wkv[i]
            _layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
            for c in range(6):
                for j in range(C):
                    mixed[c, j] = xn[j] + (s[0, j] - xn[j]) * p[V7_XR + c, j]
            for j in range(C):
                s[0, j] = xn[j]
            # the LoRAs' hidden units: tanh(x^w A_w), x^a A_a, x^v A_v, sigmoid(x^g A_g)
            for d in prange(Dw + Da + Dv + Dg):
                if d < Dw:
                    hidden[d] = np.tanh(_dot(w1[i, d], mixed[1]))
                elif d < Dw + Da:
                    hidden[d] = _dot(a1[i, d - Dw], mixed[4])
                elif d < Dw + Da + Dv:
                    hidden[d] = _dot(v1[i, d - Dw - Da], mixed[3]) if i > 0 else np.float32(0.0)
                else:
                    hidden[d] = _sigmoid(_dot(g1[i, d - Dw - Da - Dv], mixed[5]))
            wk, wv, wr = _matrix(addr[M_K, i], kind, A, C), _matrix(addr[M_V, i], kind, A, C), _matrix(addr[M_R, i], kind, A, C)
            for a in prange(A):
                ka = row_dot(wk, None, a, mixed[2], ahead)
                va_ = row_dot(wv, None, a, mixed[3], ahead)
                r[a] = row_dot(wr, None, a, mixed[0], ahead)
                w[a] = np.exp(-_DECAY_SCALE * _sigmoid(q[A7_W0, a] + _dot(w2[i, a], hidden[:Dw])))
                at = _sigmoid(q[A7_A0, a] + _dot(a2[i, a], hidden[Dw:Dw + Da]))
                aa[a] = at
                g[a] = _dot(g2[i, a], hidden[Dw + Da + Dv:])
                kh[a] = ka * q[A7_KK, a]  # kappa = k xi, normalised per head below
                k[a] = ka * (1 + (at - 1) * q[A7_KA, a])  # k~ = k lerp(1, a, alpha)
                if i == 0:
                    v_first[a] = va_
                    v[a] = va_
                else:
                    nu = _sigmoid(q[A7_V0, a] + _dot(v2[i, a], hidden[Dw + Da:Dw + Da + Dv]))
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
                _group_norm_head(y, lo, N, q[LNX_W], q[LNX_B], lnx_eps, o)
                for jj in range(lo, lo + N):
                    o[jj] = g[jj] * (o[jj] + bonus * v[jj])
            wo = _matrix(addr[M_O, i], kind, C, A)
            for c in prange(C):
                x[c] += row_dot(wo, None, c, o, ahead)
            _layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):
                mixed[2, j] = xn[j] + (s[1, j] - xn[j]) * p[V7_FK, j]
                s[1, j] = xn[j]
            _ffn_relu2(x, mixed[2], mixed[2], kk, addr, i, kind, C, F, False, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            _head_logits(x, ln_out, eps, xn, head, logits[t if logits_for == LOGITS_ALL else 0], ahead)


# ---- parallel form: the scans over T (the projections are BLAS products in engine_later.py) ----

# The scans run on the calling thread (plain loops, as kernels.py's parallel-form kernels): BLAS owns
# the threads in the parallel form, and a Numba pool spinning between the products starves it.
@njit(cache=True, error_model="numpy")
def scan_v5(r, k, v, w, u, S, y):
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


# the two sums over key channels may be reordered (SIMD lanes), as kernels.py's dot products are:
# in order, each addition waits for the previous one
@njit(fastmath={"reassoc", "contract", "nsz"}, cache=True, error_model="numpy")
def scan_v7(r, w, k, v, kh, a, S, y):
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
