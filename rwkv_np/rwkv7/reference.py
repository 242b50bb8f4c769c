"""RWKV-7 "Goose" in plain NumPy: RWKV-6 (rwkv_np/rwkv6/reference.py) with the state updated by a
delta rule.

"RWKV-7 "Goose" with Expressive Dynamic State Evolution" (Peng et al., arXiv 2503.14456, section 4).
Read it next to rwkv_np/rwkv6/reference.py: the same functions; time mixing changed most.

    forward(params, tokens, state)  the parallel form: every projection is one matrix product over the
                                    T tokens; the recurrence over T stays a scan (`wkv`: a few
                                    head-batched matrix-vector products per token).
    step(params, token, state)      the recurrent form: forward with T = 1, the state carried over.
    step_batch(params, tokens, state)  the recurrent form over a batch: B sequences, one token each
                                    (every (T, ...) array then (T, B, ...), each state with a batch axis).

What changed from RWKV-6:
  - The state update is a delta rule: before v_t^T k~_t is written, the state forgets, per head, what
    it holds along the normalised removal key kappa^_t, at a learnt in-context rate a_t:
        wkv_t = wkv_{t-1} (diag(w_t) - kappa^_t^T (a_t * kappa^_t)) + v_t^T k~_t.
    RWKV-4/5/6 only ever add to the state and let it decay; RWKV-7 can replace what a key stored.
    The state is laid out as in the paper: rows are value channels, columns key channels, y = wkv r^T.
  - The decay is w_t = exp(-e^{-0.5} sigmoid(d_t)): in (e^{-e^{-0.5}}, 1) = (0.545, 1), never faster.
  - Token shift is a plain lerp again, with six static mu (no ddlerp); LoRAs (x A) B compute d_t,
    a_t, the gate g_t and the value-residual mix nu_t instead.
  - Value residual: every layer after the first mixes its v_t with the first layer's (v_first).
  - No bonus u on the state: the current token enters through (r_t . (rho * k~_t)) v_t, added after
    the GroupNorm (ln_x, epsilon 64e-5 as in RWKV-6).
  - Channel mixing loses its receptance: o'_t = W'_v max(W'_k x^k_t, 0)^2.

params: the nested float32 dict of `rwkv_np.RWKV.params` (BlinkDL's names and raw values; shapes in
rwkv_np/rwkv7/params.py). state: a pair (shift (L, 2, C), wkv (L, H, N, N)) of float32 arrays; None is
the state before any token. Nothing passed in is modified. Float32 throughout.
"""

import numpy as np

ATT_X = 0  # row of shift[i]: time mixing's x_{t-1} (the LayerNorm output of the previous token)
FFN_X = 1  # row of shift[i]: channel mixing's x_{t-1}


def initial_state(n_layer, n_embd, n_head, head_size):
    """The state before any token: x_{t-1} = 0 and wkv = 0 in every layer."""
    shift = np.zeros((n_layer, 2, n_embd), np.float32)  # (L, 2, C)
    wkv = np.zeros((n_layer, n_head, head_size, head_size), np.float32)  # (L, H, N, N)
    return shift, wkv


def layer_norm(x, weight, bias, eps=1e-5):
    """x (T, C) normalised over its C channels, then scaled and shifted (gamma, beta)."""
    mean = x.mean(-1, keepdims=True)  # (T, 1)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # (T, 1)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def group_norm(x, weight, bias, eps, n_head):
    """x (T, A) normalised within each of n_head groups of A / n_head channels: a LayerNorm per head."""
    h = x.reshape(*x.shape[:-1], n_head, -1)  # (T, H, N)
    mean = h.mean(-1, keepdims=True)  # (T, H, 1)
    var = ((h - mean) ** 2).mean(-1, keepdims=True)  # (T, H, 1)
    return ((h - mean) / np.sqrt(var + eps)).reshape(x.shape) * weight + bias  # (T, A)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def token_shift(x, x_prev):
    """x_{t-1} at every position t: x (T, C) moved down a row, x_prev (C,) entering row 0."""
    return np.concatenate([x_prev[None], x[:-1]])  # (T, C)


def lerp(a, b, mu):
    """a + (b - a) mu: the interpolation between x_t (a) and x_{t-1} (b), as in RWKV-6."""
    return a + (b - a) * mu


def wkv(r, w, k, v, kappa_hat, a, S):
    """The delta rule over T per head, from the state S (H, N, N) (rows: value channels, columns: key
    channels); r, w, k (= k~), v, kappa_hat, a (T, H, N):

        wkv_t = wkv_{t-1} (diag(w_t) - kappa^_t^T (a_t * kappa^_t)) + v_t^T k~_t,     y_t = wkv_t r_t^T

    Returns (y (T, H, N), S after the last token)."""
    y = np.empty_like(r)  # (T, H, N)
    for t in range(len(r)):
        removed = np.einsum("...vk,...k->...v", S, kappa_hat[t])  # (H, N): wkv_{t-1} kappa^_t^T
        S = (S * w[t][..., None, :] - removed[..., :, None] * (a[t] * kappa_hat[t])[..., None, :]
             + v[t][..., :, None] * k[t][..., None, :])  # (H, N, N)
        y[t] = np.einsum("...vk,...k->...v", S, r[t])  # (H, N)
    return y, S


def time_mixing(x, x_prev, S, v_first,
                x_r, x_w, x_k, x_v, x_a, x_g,  # mu_r, mu_d, mu_k, mu_v, mu_a, mu_g (C,)
                w0, w1, w2,  # the decay's LoRA: d_t = w0 + tanh(x^d A_d) B_d; (A,), (C, D), (D, A)
                a0, a1, a2,  # the in-context rate's: a_t = sigmoid(a0 + x^a A_a B_a)
                g1, g2,  # the gate's: g_t = sigmoid(x^g A_g) B_g
                k_k, k_a, r_k,  # xi (A,), alpha (A,), rho (H, N)
                key, value, receptance, output,  # W_k, W_v, W_r (A, C); W_o (C, A)
                ln_x,  # the per-head GroupNorm's {weight, bias (A,)}
                v0=None, v1=None, v2=None,  # the value residual's, absent in the first layer:
                ln_x_eps=64e-5):  # nu_t = sigmoid(v0 + x^v A_v B_v); the GroupNorm's epsilon
    """Time mixing. x (T, C): the LayerNorm output; x_prev (C,), S (H, N, N): the state; v_first
    (T, A): the first layer's values, None in the first layer.

    Returns (out (T, C), (x_prev, S) after the last token, v_first)."""
    H, N = r_k.shape
    heads = x.shape[:-1] + (H, N)  # (T, H, N), or (T, B, H, N) in a batch
    xx = token_shift(x, x_prev)  # (T, C)
    # x^c_t = lerp(x_t, x_{t-1}, mu_c) for c in r, d, k, v, a, g
    xr, xw, xk, xv, xa, xg = (lerp(x, xx, mu) for mu in (x_r, x_w, x_k, x_v, x_a, x_g))  # 6 x (T, C)
    r = xr @ receptance.T  # (T, A)
    k = xk @ key.T  # (T, A)
    v = xv @ value.T  # (T, A)
    # w_t = exp(-e^{-0.5} sigmoid(d_t)),  d_t = w0 + tanh(x^d_t A_d) B_d
    w = np.exp(-np.exp(np.float32(-0.5)) * sigmoid(w0 + np.tanh(xw @ w1) @ w2))  # (T, A)
    # a_t = sigmoid(a0 + x^a_t A_a B_a): the in-context learning rate, in (0, 1)
    a = sigmoid(a0 + (xa @ a1) @ a2)  # (T, A)
    # g_t = sigmoid(x^g_t A_g) B_g
    g = sigmoid(xg @ g1) @ g2  # (T, A)
    # kappa^_t = kappa_t / |kappa_t| per head, kappa_t = k_t * xi: the removal key
    kappa = (k * k_k).reshape(heads)  # (T, H, N)
    kappa_hat = kappa / np.maximum(np.linalg.norm(kappa, axis=-1, keepdims=True), 1e-12)  # (T, H, N)
    # k~_t = k_t * lerp(1, a_t, alpha): the replacement key
    k = k * (1 + (a - 1) * k_a)  # (T, A)
    # value residual: v_t = lerp(v_t, v_first_t, nu_t) after the first layer
    if v_first is None:
        v_first = v
    else:
        v = lerp(v, v_first, sigmoid(v0 + (xv @ v1) @ v2))  # (T, A)
    r, w, k, v, a = (z.reshape(heads) for z in (r, w, k, v, a))  # 5 x (T, H, N)
    y, S = wkv(r, w, k, v, kappa_hat, a, S)  # (T, H, N), (H, N, N)
    # p_t = GroupNorm(y_t) + (r_t . (rho * k~_t)) v_t: the current token's own term, per head
    bonus = (r * r_k * k).sum(-1, keepdims=True) * v  # (T, H, N)
    flat = x.shape[:-1] + (H * N,)  # (T, A)
    p = group_norm(y.reshape(flat), **ln_x, eps=ln_x_eps, n_head=H) + bonus.reshape(flat)  # (T, A)
    # o_t = W_o (g_t * p_t)
    out = (g * p) @ output.T  # (T, C)
    return out, (x[-1], S), v_first


def channel_mixing(x, x_prev,
                   x_k,  # mu'_k (C,)
                   key, value):  # W'_k (F, C), W'_v (C, F)
    """Channel mixing without receptance. x (T, C); x_prev (C,). Returns (out (T, C), x_prev)."""
    xx = token_shift(x, x_prev)  # (T, C)
    k = lerp(x, xx, x_k) @ key.T  # (T, F)
    # o'_t = W'_v max(k'_t, 0)^2
    hidden = np.maximum(k, 0) ** 2  # (T, F)
    out = hidden @ value.T  # (T, C)
    return out, x[-1]


def block(x, shift, S, v_first, ln1, att, ln2, ffn, eps=1e-5, ln_x_eps=64e-5):
    """One residual block, pre-LayerNorm. x (T, C); shift (2, C), S (H, N, N): the layer's state;
    v_first (T, A) or None in the first layer.

    Returns (x (T, C), shift (2, C), S (H, N, N), v_first (T, A))."""
    dx, (att_x, S), v_first = time_mixing(layer_norm(x, **ln1, eps=eps), shift[ATT_X], S, v_first, **att,
                                          ln_x_eps=ln_x_eps)
    x = x + dx
    dx, ffn_x = channel_mixing(layer_norm(x, **ln2, eps=eps), shift[FFN_X], **ffn)
    return x + dx, np.stack([att_x, ffn_x]), S, v_first  # (T, C), (2, C), (H, N, N), (T, A)


def forward(params, tokens, state=None, eps=1e-5, ln_x_eps=64e-5):
    """The parallel form: tokens (T,) ints -> (logits (T, V), state after them). eps: the LayerNorms'
    epsilon; ln_x_eps: the GroupNorm's (64e-5, BlinkDL's and rwkv.cpp's for RWKV-7)."""
    emb, ln0, blocks, ln_out, head = (params[n] for n in ("emb", "ln0", "blocks", "ln_out", "head"))
    if state is None:
        state = initial_state(len(blocks), emb.shape[1], *blocks[0]["att"]["r_k"].shape)
    shift, S = state
    new_shift, new_S = np.empty_like(shift), np.empty_like(S)  # (L, 2, C), (L, H, N, N)
    x = layer_norm(emb[np.asarray(tokens)], **ln0, eps=eps)  # (T, C)
    v_first = None  # set by the first layer, read by the others: not part of the state
    for i, p in enumerate(blocks):
        x, new_shift[i], new_S[i], v_first = block(x, shift[i], S[i], v_first, **p, eps=eps, ln_x_eps=ln_x_eps)
    logits = layer_norm(x, **ln_out, eps=eps) @ head.T  # (T, V)
    return logits, (new_shift, new_S)


def step(params, token, state=None, eps=1e-5, ln_x_eps=64e-5):
    """The recurrent form: one token id -> (logits (V,), state after it)."""
    logits, state = forward(params, [token], state, eps, ln_x_eps)
    return logits[0], state  # (V,), ((L, 2, C), (L, H, N, N))


def step_batch(params, tokens, state, eps=1e-5, ln_x_eps=64e-5):
    """The recurrent form over a batch: tokens (B,), one for each of B sequences, whose states stand side
    by side in state = (shift (L, 2, B, C), wkv (L, B, H, N, N)) -> (logits (B, V), state after). forward
    itself: x is (T = 1, B, C), and every function above works on the last axes (channels, or heads)."""
    logits, state = forward(params, np.asarray(tokens)[None], state, eps, ln_x_eps)  # tokens (1, B)
    return logits[0], state  # (B, V), ((L, 2, B, C), (L, B, H, N, N))
