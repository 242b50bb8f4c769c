"""RWKV-6 "Finch" in plain NumPy: RWKV-5.2 (rwkv_np/rwkv5/reference.py) with data-dependent token shift
and decay.

"Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence" (Peng et al., arXiv
2404.05892, section 5). Read it next to rwkv_np/rwkv5/reference.py: the same functions; time mixing
changed.

    forward(params, tokens, state)  the parallel form: every projection is one matrix product over the
                                    T tokens; the recurrence over T stays a scan (`wkv`: one
                                    head-batched outer product per token).
    step(params, token, state)      the recurrent form: forward with T = 1, the state carried over.
    step_batch(params, tokens, state)  the recurrent form over a batch: B sequences, one token each
                                    (every (T, ...) array then (T, B, ...), each state with a batch axis).

What changed from RWKV-5.2:
  - Token shift depends on the data (ddlerp): how much of x_{t-1} enters r, k, v, g and the decay is
    mu + a low-rank function of the token (a LoRA), no longer a constant mu per channel.
  - The decay depends on the data: w_t = exp(-exp(d_t)), d_t = omega + LoRA(x^w_t) per token and
    channel. RWKV-4 and 5 forget at a fixed rate per channel; Finch decides per token what to forget.
  - The interpolation is written lerp(a, b, mu) = a + (b - a) mu with a = x_t, b = x_{t-1} (the
    checkpoints' time_maa_* are this mu, RWKV-4/5's time_mix_* were 1 - mu), channel mixing included.
  - ln_x's epsilon is 64e-5 in rwkv.cpp too (it used 1e-5 for RWKV-5; BlinkDL 64e-5 for both).
The matrix state per head (rows: key channels, columns: value channels), the bonus u = time_faaaa,
the gate, the GroupNorm and channel mixing's arithmetic are RWKV-5.2's.

params: the nested float32 dict of `rwkv_np.RWKV.params` (BlinkDL's names and raw values; shapes in
rwkv_np/rwkv6/params.py). state: a pair (shift (L, 2, C), wkv (L, H, N, N)) of float32 arrays; None is
the state before any token. Nothing passed in is modified. Float32 throughout.
"""

import numpy as np

ATT_X = 0  # row of shift[i]: time mixing's x_{t-1} (the LayerNorm output of the previous token)
FFN_X = 1  # row of shift[i]: channel mixing's x_{t-1}


def initial_state(n_layer, n_embd, n_head, head_size):
    """The state before any token: x_{t-1} = 0 and S = 0 in every layer."""
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


def silu(x):
    return x * sigmoid(x)


def token_shift(x, x_prev):
    """x_{t-1} at every position t: x (T, C) moved down a row, x_prev (C,) entering row 0."""
    return np.concatenate([x_prev[None], x[:-1]])  # (T, C)


def lerp(a, b, mu):
    """a + (b - a) mu: Finch's interpolation, here always between x_t (a) and x_{t-1} (b)."""
    return a + (b - a) * mu


def wkv(r, k, v, w, u, S):
    """The recurrence over T per head, from the state S (H, N, N) (rows: key channels, columns: value
    channels); r, k, v (T, H, N), w (T, H, N, 1) a decay per token and key channel, u (H, N, 1):

        wkv_t = diag(u) k_t^T v_t + sum_{i<t} diag(w_{i+1} ... w_{t-1}) k_i^T v_i,     y_t = r_t wkv_t

    computed as y_t = r_t (diag(u) k_t^T v_t + S_{t-1}),  S_t = diag(w_t) S_{t-1} + k_t^T v_t.
    Returns (y (T, H, N), S after the last token)."""
    y = np.empty_like(r)  # (T, H, N)
    for t in range(len(r)):
        kv = k[t][..., :, None] * v[t][..., None, :]  # (H, N, N): k_t^T v_t, the outer product per head
        y[t] = np.einsum("...i,...ij->...j", r[t], u * kv + S)  # (H, N)
        S = w[t] * S + kv  # (H, N, N)
    return y, S


def time_mixing(x, x_prev, S,
                time_maa_x,  # mu_x (C,): the mix that feeds the token-shift LoRA
                time_maa_w, time_maa_k, time_maa_v, time_maa_r, time_maa_g,  # lambda_w,k,v,r,g (C,)
                time_maa_w1, time_maa_w2,  # A (C, 5 D), B (5, D, C): the five token-shift LoRAs
                time_decay,  # omega (A,): the decay's offset, d_t = omega + LoRA_d(x^w_t)
                time_decay_w1, time_decay_w2,  # A_d (C, D'), B_d (D', A): the decay's LoRA
                time_faaaa,  # u (H, N): the bonus of the current token
                key, value, receptance, gate, output,  # W_k, W_v, W_r, W_g (A, C); W_o (C, A)
                ln_x,  # the per-head GroupNorm's {weight, bias (A,)}
                ln_x_eps=64e-5):  # the GroupNorm's epsilon
    """Time mixing. x (T, C): the LayerNorm output; x_prev (C,), S (H, N, N): the state.

    Returns (out (T, C), (x_prev, S) after the last token)."""
    H, N = time_faaaa.shape
    heads = x.shape[:-1] + (H, N)  # (T, H, N), or (T, B, H, N) in a batch
    xx = token_shift(x, x_prev)  # (T, C)
    # ddlerp_c(x_t, x_{t-1}) = lerp(x_t, x_{t-1}, lambda_c + tanh(lerp(x_t, x_{t-1}, mu_x) A) B_c),
    # for c in w, k, v, r, g: one shared A, five B_c
    lora_in = np.tanh(lerp(x, xx, time_maa_x) @ time_maa_w1)  # (T, 5 D)
    m = np.einsum("...cd,cde->c...e", lora_in.reshape(*x.shape[:-1], 5, -1), time_maa_w2)  # (5, T, C)
    lambdas = (time_maa_w, time_maa_k, time_maa_v, time_maa_r, time_maa_g)
    xw, xk, xv, xr, xg = (lerp(x, xx, lam + mc) for lam, mc in zip(lambdas, m))  # 5 x (T, C)
    # r_t = ddlerp_r W_r, and likewise k_t, v_t, split into heads
    r = (xr @ receptance.T).reshape(heads)  # (T, H, N)
    k = (xk @ key.T).reshape(heads)  # (T, H, N)
    v = (xv @ value.T).reshape(heads)  # (T, H, N)
    # d_t = omega + tanh(x^w_t A_d) B_d;  w_t = exp(-exp(d_t)): a decay in (0, 1) per token and channel
    d = time_decay + np.tanh(xw @ time_decay_w1) @ time_decay_w2  # (T, A)
    w = np.exp(-np.exp(d)).reshape(heads + (1,))  # (T, H, N, 1)
    u = time_faaaa[:, :, None]  # (H, N, 1)
    y, S = wkv(r, k, v, w, u, S)  # (T, H, N), (H, N, N)
    # o_t = W_o (GroupNorm(y_t) * SiLU(g_t)),  g_t = ddlerp_g W_g
    o = group_norm(y.reshape(x.shape[:-1] + (H * N,)), **ln_x, eps=ln_x_eps, n_head=H)  # (T, A)
    out = (o * silu(xg @ gate.T)) @ output.T  # (T, C)
    return out, (x[-1], S)


def channel_mixing(x, x_prev,
                   time_maa_k, time_maa_r,  # mu'_k, mu'_r (C,): weights of x_{t-1}, as lerp takes them
                   key, receptance, value):  # W'_k (F, C), W'_r (C, C), W'_v (C, F)
    """Channel mixing, RWKV-5's with lerp's mu. x (T, C); x_prev (C,). Returns (out (T, C), x_prev)."""
    xx = token_shift(x, x_prev)  # (T, C)
    r = lerp(x, xx, time_maa_r) @ receptance.T  # (T, C)
    k = lerp(x, xx, time_maa_k) @ key.T  # (T, F)
    # o'_t = sigmoid(r'_t) * (W'_v max(k'_t, 0)^2)
    hidden = np.maximum(k, 0) ** 2  # (T, F)
    out = sigmoid(r) * (hidden @ value.T)  # (T, C)
    return out, x[-1]


def block(x, shift, S, ln1, att, ln2, ffn, eps=1e-5, ln_x_eps=64e-5):
    """One residual block, pre-LayerNorm. x (T, C); shift (2, C), S (H, N, N): the layer's state.

    Returns (x (T, C), shift (2, C), S (H, N, N))."""
    dx, (att_x, S) = time_mixing(layer_norm(x, **ln1, eps=eps), shift[ATT_X], S, **att, ln_x_eps=ln_x_eps)
    x = x + dx
    dx, ffn_x = channel_mixing(layer_norm(x, **ln2, eps=eps), shift[FFN_X], **ffn)
    return x + dx, np.stack([att_x, ffn_x]), S  # (T, C), (2, C), (H, N, N)


def forward(params, tokens, state=None, eps=1e-5, ln_x_eps=64e-5):
    """The parallel form: tokens (T,) ints -> (logits (T, V), state after them). eps: the LayerNorms'
    epsilon; ln_x_eps: the GroupNorm's (64e-5, BlinkDL's and rwkv.cpp's for RWKV-6)."""
    emb, ln0, blocks, ln_out, head = (params[n] for n in ("emb", "ln0", "blocks", "ln_out", "head"))
    if state is None:
        state = initial_state(len(blocks), emb.shape[1], *blocks[0]["att"]["time_faaaa"].shape)
    shift, S = state
    new_shift, new_S = np.empty_like(shift), np.empty_like(S)  # (L, 2, C), (L, H, N, N)
    x = layer_norm(emb[np.asarray(tokens)], **ln0, eps=eps)  # (T, C)
    for i, p in enumerate(blocks):
        x, new_shift[i], new_S[i] = block(x, shift[i], S[i], **p, eps=eps, ln_x_eps=ln_x_eps)
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
