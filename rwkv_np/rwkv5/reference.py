"""RWKV-5 "Eagle" (5.1 and 5.2) in plain NumPy: RWKV-4's reference with a matrix-valued state.

"Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence" (Peng et al., arXiv
2404.05892, section 4). Read it next to rwkv_np/rwkv4/reference.py: the same functions, and only time
mixing changed.

    forward(params, tokens, state)  the parallel form: every projection is one matrix product over the
                                    T tokens; the recurrence over T stays a scan (`wkv`: one
                                    head-batched outer product per token).
    step(params, token, state)      the recurrent form: forward with T = 1, the state carried over.
    step_batch(params, tokens, state)  the recurrent form over a batch: B sequences, one token each
                                    (every (T, ...) array then (T, B, ...), each state with a batch axis).

What changed from RWKV-4, in time mixing only:
  - The A channels of r, k, v are split into H heads of N. Each head keeps an N x N matrix S (rows:
    key channels, columns: value channels) where RWKV-4 kept a per-channel ratio a/b: the dot product
    r_t . k_i (within a head) is back, and the state grows from 3 to N numbers per channel.
  - No denominator: wkv is not normalised by a sum of e^k, so no exponent juggling is needed. The
    decay w = exp(-exp(time_decay)) is in (0, 1) and the state stays bounded.
  - A GroupNorm per head (ln_x) normalises the output instead. Its epsilon, ln_x_eps, depends on
    the file's source: BlinkDL's code uses 64e-5 (= GroupNorm(y / 8) with 1e-5, as trained), rwkv.cpp
    1e-5 for RWKV-5 (64e-5 for 6 and 7); RWKVConfig.ln_x_eps holds the value of a loaded file.
  - 5.2 only: a gate g = SiLU(W_g x^g) multiplies the output.
  - 5.1: one decay and one bonus per head, the bonus stored as its log (u = exp(time_first));
    5.2: both per channel (H, N), the bonus stored as is (time_faaaa = u).
Channel mixing, the embedding, ln0, ln_out and the head are RWKV-4's.
(The names 5.1 / 5.2 are rwkv.cpp's: 5.1 has no gate, 5.2 has one.)

params: the nested float32 dict of `rwkv_np.RWKV.params` (BlinkDL's names and raw values; shapes in
rwkv_np/rwkv5/params.py). state: a pair (shift (L, 2, C), wkv (L, H, N, N)) of float32 arrays; None is
the state before any token. Nothing passed in is modified. Float32 throughout.
"""

import numpy as np

# Rows of the token-shift state shift[i]: the LayerNorm outputs of the previous token.
ATT_X = 0  # time mixing's x_{t-1}
FFN_X = 1  # channel mixing's x_{t-1}


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
    """x (T, A) normalised within each of n_head groups of A / n_head channels, then scaled and
    shifted per channel: a LayerNorm per head."""
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


def mix(x, x_shift, mu):
    """mu x_t + (1 - mu) x_{t-1}: RWKV-4's token-shift interpolation, unchanged."""
    return mu * x + (1 - mu) * x_shift


def wkv(r, k, v, w, u, S):
    """The recurrence over T per head, from the state S (H, N, N) (rows: key channels, columns: value
    channels); r, k, v (T, H, N), w and u (H, 1 or N, 1):

        wkv_t = diag(u) k_t^T v_t + sum_{i<t} diag(w)^{t-1-i} k_i^T v_i,     y_t = r_t wkv_t

    computed as y_t = r_t (diag(u) k_t^T v_t + S_{t-1}),  S_t = diag(w) S_{t-1} + k_t^T v_t.
    Returns (y (T, H, N), S after the last token)."""
    y = np.empty_like(r)  # (T, H, N)
    for t in range(len(r)):
        kv = k[t][..., :, None] * v[t][..., None, :]  # (H, N, N): k_t^T v_t, the outer product per head
        y[t] = np.einsum("...i,...ij->...j", r[t], u * kv + S)  # (H, N)
        S = w * S + kv  # (H, N, N)
    return y, S


def time_mixing(x, x_prev, S,
                time_mix_k, time_mix_v, time_mix_r,  # mu_k, mu_v, mu_r (C,)
                time_decay,  # omega: w = exp(-exp(omega)); (H,) in 5.1, (H, N) in 5.2
                key, value, receptance, output,  # W_k, W_v, W_r (A, C); W_o (C, A)
                ln_x,  # the per-head GroupNorm's {weight, bias (A,)}
                time_first=None,  # 5.1: ln u (H,)
                time_faaaa=None,  # 5.2: u (H, N)
                time_mix_g=None, gate=None,  # 5.2: mu_g (C,), W_g (A, C)
                ln_x_eps=64e-5):  # the GroupNorm's epsilon
    """Time mixing. x (T, C): the LayerNorm output; x_prev (C,), S (H, N, N): the state.

    Returns (out (T, C), (x_prev, S) after the last token)."""
    H = S.shape[-3]
    N, heads = key.shape[0] // H, x.shape[:-1] + (H, -1)  # heads: (T, H, N), (T, B, H, N) in a batch
    xx = token_shift(x, x_prev)  # (T, C)
    # r_t = W_r (mu_r x_t + (1 - mu_r) x_{t-1}), and likewise k_t, v_t: RWKV-4's, split into heads
    r = (mix(x, xx, time_mix_r) @ receptance.T).reshape(heads)  # (T, H, N)
    k = (mix(x, xx, time_mix_k) @ key.T).reshape(heads)  # (T, H, N)
    v = (mix(x, xx, time_mix_v) @ value.T).reshape(heads)  # (T, H, N)
    # w = exp(-exp(omega)): a decay in (0, 1) per head (5.1) or per key channel (5.2)
    w = np.exp(-np.exp(time_decay)).reshape(H, -1, 1)  # (H, 1 or N, 1)
    # u: the bonus of the current token, exp(time_first) in 5.1, time_faaaa in 5.2
    u = (np.exp(time_first) if time_faaaa is None else time_faaaa).reshape(H, -1, 1)  # (H, 1 or N, 1)
    y, S = wkv(r, k, v, w, u, S)  # (T, H, N), (H, N, N)
    # o_t = W_o (GroupNorm(y_t) [* SiLU(g_t) in 5.2]), g_t = W_g (mu_g x_t + (1 - mu_g) x_{t-1})
    o = group_norm(y.reshape(x.shape[:-1] + (H * N,)), **ln_x, eps=ln_x_eps, n_head=H)  # (T, A)
    if gate is not None:
        o = o * silu(mix(x, xx, time_mix_g) @ gate.T)  # (T, A)
    out = o @ output.T  # (T, C)
    return out, (x[-1], S)


def channel_mixing(x, x_prev,
                   time_mix_k, time_mix_r,  # mu'_k, mu'_r (C,)
                   key, receptance, value):  # W'_k (F, C), W'_r (C, C), W'_v (C, F)
    """Channel mixing, RWKV-4's unchanged. x (T, C); x_prev (C,). Returns (out (T, C), x_prev)."""
    xx = token_shift(x, x_prev)  # (T, C)
    r = mix(x, xx, time_mix_r) @ receptance.T  # (T, C)
    k = mix(x, xx, time_mix_k) @ key.T  # (T, F)
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
    epsilon; ln_x_eps: the GroupNorm's (64e-5 for BlinkDL's files, 1e-5 for rwkv.cpp's)."""
    emb, ln0, blocks, ln_out, head = (params[n] for n in ("emb", "ln0", "blocks", "ln_out", "head"))
    if state is None:
        a = blocks[0]["att"]
        H = a["time_decay"].shape[0]
        state = initial_state(len(blocks), emb.shape[1], H, a["key"].shape[0] // H)
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
