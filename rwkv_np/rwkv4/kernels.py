"""RWKV-4's arithmetic compiled with Numba: rwkv_np/rwkv4/reference.py fused, so that every weight is
read once per token and nothing waits on Python. rwkv_np/rwkv4/engine.py runs them.

Eq. 14 is one function here, `wkv_step` (one channel, one token, float64): the loop body of the
reference's `wkv`, used by both forms below and by the trainer's forward (rwkv_np/training/wkv_grad.py).

Recurrent form (generation; reference.step): one token costs a matrix-vector product with every
weight matrix, so its speed is set by memory bandwidth. `recurrent_tokens` runs whole tokens through
all layers in one call; per layer four parallel loops over output rows (a thread takes CHUNK rows at
a time), each row's elementwise work (token shift, eq. 14, gates) done in the same loop as its dot
products, so no (C,) vector goes back to Python and no thread waits for another more than four times
a layer. The products, for every kind of stored weight, are rwkv_np/products.py's `row_dot`.

Parallel form (prompts; reference.forward): the projections are matrix-matrix products (BLAS); the
kernels here fuse the elementwise work between them (LayerNorm + token shift + mixes; the scan of
eq. 14 + output gate; squared ReLU; gated residual add) so each (T, C) activation is read and written once.

The recurrent form over a batch (many sequences, one token each; engine.batch) is the parallel form's
products with the B sequences in place of the T tokens: the same kernels, but `norm_mix_rows` for the
token shift (each row's previous token comes from its own state) and `wkv_gate` over B x C channels.
"""

import numpy as np
from numba import njit, prange

from ..ops import LOGITS_ALL, LOGITS_LAST, exp_nonpos, layer_norm_into, sigmoid
from ..products import matrix_at, row_dot, scales_at, widen
from .params import MATRICES, VECTORS
from .reference import AA, ATT_X, BB, FFN_X, PP

# fused multiply-adds only (one rounding instead of two, never a different order): the float64
# polynomials of the exponentials in the parallel form's WKV and gates (benchmarks/NOTES.md)
_FMA = {"contract"}

# rows of the per-layer vector table `vecs` (L, len(VECTORS), C): params.VECTORS, except
# that the time_decay row holds w = e^time_decay itself (computed once, when the table is built)
LN1_W, LN1_B, ATT_MK, ATT_MV, ATT_MR, DECAY_W, FIRST, LN2_W, LN2_B, FFN_MK, FFN_MR = (VECTORS.index(n) for n in (
    "ln1.weight", "ln1.bias", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_decay",
    "att.time_first", "ln2.weight", "ln2.bias", "ffn.time_mix_k", "ffn.time_mix_r"))
N_VECS = len(VECTORS)
# rows of the address table of recurrent_tokens: the block's matrices, then the head
ATT_K, ATT_V, ATT_R, ATT_O, FFN_K, FFN_R, FFN_V = (MATRICES.index(n) for n in (
    "att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
    "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight"))
HEAD = len(MATRICES)


@njit(inline="always", error_model="numpy")
def _wkv_terms(p, ww):
    """(e^(p - q), e^(ww - q)) with q = max(p, ww): one factor is 1, the other e^-|p - ww|."""
    d = p - ww
    e = exp_nonpos(-abs(d))
    return (1.0, e) if d >= 0.0 else (e, 1.0)


@njit(inline="always", error_model="numpy")
def wkv_step(aa, bb, pp, w, u, k, v):
    """Eq. 14 for one channel and one token, in float64: the compiled copy of the loop body of
    the reference's `wkv` (rwkv_np/rwkv4/reference.py), shared by every compiled kernel (both forms of the engine, and
    the trainer's forward). w > 0 is the decay rate, u the bonus; aa, bb, pp the state before.

    Returns (wkv_t, den, q, aa, bb, pp): wkv_t, the state after the token, and what the trainer's
    backward keeps (den = the denominator of wkv_t, q its exponent: it is den * e^q)."""
    e_past, e_now = _wkv_terms(pp, u + k)
    den = e_past * bb + e_now
    wkv = (e_past * aa + e_now * v) / den
    q = max(pp, u + k)
    # the state after the token: the past decays by e^-w; the token joins it without u
    e_past, e_now = _wkv_terms(pp - w, k)
    return wkv, den, q, e_past * aa + e_now * v, e_past * bb + e_now, max(pp - w, k)


# The recurrent form's loops over output rows hand each thread chunks of this many rows, and within a
# chunk go through one matrix at a time (W_k's rows, then W_v's, then W_r's, then eq. 14 for them):
# one stream of rows per thread at a time is faster than three interleaved (benchmarks/NOTES.md,
# "One matrix at a time"). The eq. 14 loop then reads k, v, r from the buffers kb, vb, rb.
CHUNK = 64


@njit(parallel=True, cache=True, error_model="numpy")
def recurrent_tokens(rows, like, head_like, addr, saddr, V, F, ln0, vecs, ln_out, eps, state, logits, logits_for,
                     ahead):
    """The recurrent form over tokens whose embedding rows are rows (T, C) (any stored float
    kind), advancing state (L, 5, C) float32 in place.

    The block matrices, all stored like like (1,) (for ggml blocks: (bytes per block,) uint8), and
    the head, stored like head_like, are passed by address: addr (HEAD + 1, L)
    int64 of att.key, att.value, att.receptance, att.output (C, C), ffn.key (F, C),
    ffn.receptance (C, C), ffn.value (C, F), and in column 0 of the last row head (V, C).
    Addresses keep the compiled signature the same for any number of layers and for read-only
    or writable arrays; the caller keeps the arrays alive. saddr, laid out like addr: for int8
    matrices the addresses of their float32 scales, for other kinds the address of one float32
    (never read). ln0 / ln_out (2, C) and vecs
    (L, N_VECS, C) are float32. logits_for: LOGITS_ALL to logits (T, V), LOGITS_LAST to logits
    (1, V) for the last token only, LOGITS_NONE for none. ahead: row_dot's prefetch distance in
    bytes (0: none).
    """
    L, C = vecs.shape[0], vecs.shape[2]
    kind = like
    head = matrix_at(addr[HEAD, 0], head_like, V, C)
    head_s = scales_at(saddr[HEAD, 0], head_like, V, C)
    x = np.empty(C, np.float32)
    xn = np.empty(C, np.float32)
    xk = np.empty(C, np.float32)
    xv = np.empty(C, np.float32)
    xr = np.empty(C, np.float32)
    y = np.empty(C, np.float32)
    kk = np.empty(F, np.float32)
    kb = np.empty(C, np.float32)
    vb = np.empty(C, np.float32)
    rb = np.empty(C, np.float32)
    one = np.float32(1.0)
    for t in range(rows.shape[0]):
        row = rows[t]
        for j in range(C):
            xn[j] = widen(row[j])
        layer_norm_into(xn, ln0[0], ln0[1], eps, x)
        for i in range(L):
            p = vecs[i]
            s = state[i]
            # reference.time_mixing (eqs. 11-15)
            layer_norm_into(x, p[LN1_W], p[LN1_B], eps, xn)
            for j in range(C):
                xk[j] = xn[j] * p[ATT_MK, j] + s[ATT_X, j] * (one - p[ATT_MK, j])
                xv[j] = xn[j] * p[ATT_MV, j] + s[ATT_X, j] * (one - p[ATT_MV, j])
                xr[j] = xn[j] * p[ATT_MR, j] + s[ATT_X, j] * (one - p[ATT_MR, j])
                s[ATT_X, j] = xn[j]
            wk, wv, wr = matrix_at(addr[ATT_K, i], kind, C, C), matrix_at(addr[ATT_V, i], kind, C, C), matrix_at(addr[ATT_R, i], kind, C, C)
            sk, sv, sr = scales_at(saddr[ATT_K, i], kind, C, C), scales_at(saddr[ATT_V, i], kind, C, C), scales_at(saddr[ATT_R, i], kind, C, C)
            for b in prange((C + CHUNK - 1) // CHUNK):
                lo, hi = b * CHUNK, min(C, b * CHUNK + CHUNK)
                for c in range(lo, hi):  # eq. 12
                    kb[c] = row_dot(wk, sk, c, xk, ahead)
                for c in range(lo, hi):  # eq. 13
                    vb[c] = row_dot(wv, sv, c, xv, ahead)
                for c in range(lo, hi):  # eq. 11
                    rb[c] = row_dot(wr, sr, c, xr, ahead)
                for c in range(lo, hi):  # eqs. 14-15 for channel c
                    wkv, _, _, s[AA, c], s[BB, c], s[PP, c] = wkv_step(
                        np.float64(s[AA, c]), np.float64(s[BB, c]), np.float64(s[PP, c]),
                        np.float64(p[DECAY_W, c]), np.float64(p[FIRST, c]), np.float64(kb[c]), np.float64(vb[c]))
                    y[c] = sigmoid(rb[c]) * np.float32(wkv)
            wo, so = matrix_at(addr[ATT_O, i], kind, C, C), scales_at(saddr[ATT_O, i], kind, C, C)
            for c in prange(C):
                x[c] += row_dot(wo, so, c, y, ahead)
            # reference.channel_mixing (eqs. 16-18)
            layer_norm_into(x, p[LN2_W], p[LN2_B], eps, xn)
            for j in range(C):
                xk[j] = xn[j] * p[FFN_MK, j] + s[FFN_X, j] * (one - p[FFN_MK, j])
                xr[j] = xn[j] * p[FFN_MR, j] + s[FFN_X, j] * (one - p[FFN_MR, j])
                s[FFN_X, j] = xn[j]
            wk, sk = matrix_at(addr[FFN_K, i], kind, F, C), scales_at(saddr[FFN_K, i], kind, F, C)
            for f in prange(F):
                k = max(row_dot(wk, sk, f, xk, ahead), np.float32(0.0))
                kk[f] = k * k
            wr, wv = matrix_at(addr[FFN_R, i], kind, C, C), matrix_at(addr[FFN_V, i], kind, C, F)
            sr, sv = scales_at(saddr[FFN_R, i], kind, C, C), scales_at(saddr[FFN_V, i], kind, C, F)
            for b in prange((C + CHUNK - 1) // CHUNK):
                lo, hi = b * CHUNK, min(C, b * CHUNK + CHUNK)
                for c in range(lo, hi):  # eq. 16
                    rb[c] = row_dot(wr, sr, c, xr, ahead)
                for c in range(lo, hi):  # eq. 18, residual
                    x[c] += sigmoid(rb[c]) * row_dot(wv, sv, c, kk, ahead)
        if logits_for == LOGITS_ALL or (logits_for == LOGITS_LAST and t == rows.shape[0] - 1):
            out = logits[t if logits_for == LOGITS_ALL else 0]
            layer_norm_into(x, ln_out[0], ln_out[1], eps, xn)
            for v_ in prange(head.shape[0]):
                out[v_] = row_dot(head, head_s, v_, xn, ahead)


# ---- parallel form: the elementwise work between the BLAS products -----------------------------
# These run on the calling thread: BLAS owns the threads here, and a second pool spinning between
# the products would take the cores BLAS needs (benchmarks/NOTES.md: 2 Numba threads were slower).

@njit(cache=True, error_model="numpy")
def norm_shift_mix(x, g, b, eps, x_prev, mus, outs):
    """LayerNorm of x (T, C), token shift from x_prev (C,), and one mix per row of mus (M, C)
    into outs (M, T, C). Returns the LayerNorm output of the last token (C,)."""
    T, C = x.shape
    xn = np.empty_like(x)
    for t in range(T):
        layer_norm_into(x[t], g, b, eps, xn[t])
    one = np.float32(1.0)
    for t in range(T):
        prev = x_prev if t == 0 else xn[t - 1]
        for m in range(mus.shape[0]):
            for j in range(C):
                outs[m, t, j] = xn[t, j] * mus[m, j] + prev[j] * (one - mus[m, j])
    return xn[T - 1].copy()


@njit(cache=True, error_model="numpy")
def norm_mix_rows(x, g, b, eps, x_prev, mus, outs):
    """norm_shift_mix over a batch (engine.batch): row t of x (B, C) is one token of sequence t, whose
    previous token is row t of x_prev (B, C), its own state, not row t - 1. LayerNorm, one mix per row
    of mus (M, C) into outs (M, B, C); x_prev <- the LayerNorm outputs (each sequence's state after)."""
    B, C = x.shape
    xn = np.empty(C, np.float32)
    one = np.float32(1.0)
    for t in range(B):
        layer_norm_into(x[t], g, b, eps, xn)
        for m in range(mus.shape[0]):
            for j in range(C):
                outs[m, t, j] = xn[j] * mus[m, j] + x_prev[t, j] * (one - mus[m, j])
        x_prev[t] = xn


@njit(fastmath=_FMA, cache=True, error_model="numpy")
def wkv_gate(w, u, k, v, r, aa, bb, pp, out):
    """out (T, C) = sigmoid(r) * wkv of eq. 14 over k, v (T, C); aa, bb, pp (C,) advanced in place.

    The scan over T of `wkv_step`, with the channels in the inner loop: they are independent, so
    the compiler can run several of them per instruction."""
    T, C = k.shape
    a, b, p = aa.astype(np.float64), bb.astype(np.float64), pp.astype(np.float64)
    w64, u64 = w.astype(np.float64), u.astype(np.float64)
    for t in range(T):
        for c in range(C):
            wkv, _, _, a[c], b[c], p[c] = wkv_step(a[c], b[c], p[c], w64[c], u64[c],
                                                   np.float64(k[t, c]), np.float64(v[t, c]))
            out[t, c] = sigmoid(r[t, c]) * np.float32(wkv)
    aa[:] = a
    bb[:] = b
    pp[:] = p


@njit(cache=True, error_model="numpy")
def square_relu(k):
    """k (T, F) <- max(k, 0)^2 in place (eq. 18)."""
    for t in range(k.shape[0]):
        for j in range(k.shape[1]):
            z = max(k[t, j], np.float32(0.0))
            k[t, j] = z * z


@njit(fastmath=_FMA, cache=True, error_model="numpy")
def add_gated(x, r, val):
    """x (T, C) += sigmoid(r) * val (eq. 18's gate and the residual add), in place."""
    for t in range(x.shape[0]):
        xt, rt, vt = x[t], r[t], val[t]
        for j in range(xt.shape[0]):
            xt[j] += sigmoid(rt[j]) * vt[j]

