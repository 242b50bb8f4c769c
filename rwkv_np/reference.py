"""RWKV-4 in plain NumPy, from embedding to logits: the reference to read next to the paper.

"RWKV: Reinventing RNNs for the Transformer Era" (Peng et al., arXiv 2305.13048; equation numbers of
its first version). This file imports NumPy only and holds the whole network; the formula sits above
the line that computes it, and a shape comment beside every line that changes a shape.

    forward(params, tokens, state)  the parallel form: all T tokens at once. Every projection is one
                                    matrix product over the T tokens; eq. 14 is a scan over T.
    step(params, token, state)      the recurrent form: one token, an RNN. It is forward with T = 1:
                                    the same functions, the state carried from call to call.

params: the nested float32 dict of `rwkv_np.RWKV.params` (BlinkDL's checkpoint names; every parameter,
its shape and its paper symbol are listed in rwkv_np/schema.py). state: a plain float32 array
(L, 5, C), the layout of `rwkv_np.State`; None is the state before any token. Nothing passed in is
modified. What runs fast is rwkv_np/engine.py (compiled in rwkv_np/kernels.py): the same arithmetic,
fused, and tested against this file at every position of every reference checkpoint.
Simplification: float32 throughout (the engine keeps eq. 14's state in float64 within a call).
"""

import numpy as np

# The state of one layer: five vectors of C channels, rows of state[i].
ATT_X = 0  # x_{t-1} for time mixing's token shift (the LayerNorm output of the previous token)
AA = 1  # a_{t-1} of eq. 14's recurrence (numerator), stored as aa = a e^{-pp}
BB = 2  # b_{t-1} (denominator), stored as bb = b e^{-pp}
PP = 3  # pp: the exponent kept apart so that a and b never overflow
FFN_X = 4  # x_{t-1} for channel mixing's token shift
# pp of an empty past: e^{pp - q} is exactly 0 for any q a model produces (and, unlike -inf,
# pp - q never computes inf - inf). The official kernels use the same value.
PP_EMPTY = -1e38


def initial_state(n_layer, n_embd):
    """The state before any token: x_{t-1} = 0, a = b = 0."""
    state = np.zeros((n_layer, 5, n_embd), np.float32)  # (L, 5, C)
    state[:, PP] = PP_EMPTY
    return state


def layer_norm(x, weight, bias, eps):
    """x (T, C) normalised over its C channels, then scaled and shifted (gamma, beta)."""
    mean = x.mean(-1, keepdims=True)  # (T, 1)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # (T, 1)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def token_shift(x, x_prev):
    """x_{t-1} at every position t: x (T, C) moved down a row, x_prev (C,) entering row 0."""
    return np.concatenate([x_prev[None], x[:-1]])  # (T, C)


def mix(x, x_shift, mu):
    """mu x_t + (1 - mu) x_{t-1}: the interpolation inside eqs. 11-13 and 16-17."""
    return mu * x + (1 - mu) * x_shift


def time_mixing(x, x_prev, aa, bb, pp,
                time_mix_k, time_mix_v, time_mix_r,  # mu_k, mu_v, mu_r (C,)
                time_decay, time_first,  # ln w and u (C,): eq. 14's decay rate and bonus
                key, value, receptance, output,  # W_k, W_v, W_r, W_o (C, C)
                record=None):
    """Time mixing, eqs. 11-15. x (T, C): the LayerNorm output; x_prev, aa, bb, pp (C,): the state.
    Returns (out (T, C), (x_prev, aa, bb, pp) after the last token). Eq. 14, per channel:

        wkv_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (sum_{i<t} e^{-(t-1-i)w + k_i} + e^{u+k_t})
    """
    xx = token_shift(x, x_prev)  # (T, C)
    # eq. 11: r_t = W_r (mu_r x_t + (1 - mu_r) x_{t-1});  eqs. 12, 13 likewise for k_t, v_t
    r = mix(x, xx, time_mix_r) @ receptance.T  # (T, C)
    k = mix(x, xx, time_mix_k) @ key.T  # (T, C)
    v = mix(x, xx, time_mix_v) @ value.T  # (T, C)
    # checkpoints store ln w, so that training keeps the decay rate w positive
    w, u = np.exp(time_decay), time_first  # (C,), (C,)
    # eq. 14 as a recurrence over the two sums: a_t = e^{-w} a_{t-1} + e^{k_t} v_t,
    # b_t = e^{-w} b_{t-1} + e^{k_t}, and wkv_t = (a_{t-1} + e^{u+k_t} v_t) / (b_{t-1} + e^{u+k_t}).
    # Kept as a = aa e^pp, b = bb e^pp, every exponential taken relative to the larger exponent q
    # (so none exceeds 1 and float32 never overflows, however large k and u are).
    wkv = np.empty_like(k)  # (T, C)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        e_past, e_now = np.exp(pp - q), np.exp(u + k[t] - q)
        wkv[t] = (e_past * aa + e_now * v[t]) / (e_past * bb + e_now)
        # the state after token t: the past decays by e^{-w}; token t joins it without the bonus
        q = np.maximum(pp - w, k[t])
        e_past, e_now = np.exp(pp - w - q), np.exp(k[t] - q)
        aa, bb, pp = e_past * aa + e_now * v[t], e_past * bb + e_now, q
    # eq. 15: o_t = W_o (sigmoid(r_t) * wkv_t)
    out = (sigmoid(r) * wkv) @ output.T  # (T, C)
    if record is not None:
        record.update(x=x, x_shift=xx, r=r, k=k, v=v, w=w, u=u, wkv=wkv, out=out, aa=aa, bb=bb, pp=pp)
    return out, (x[-1], aa, bb, pp)


def channel_mixing(x, x_prev,
                   time_mix_k, time_mix_r,  # mu'_k, mu'_r (C,)
                   key, receptance, value,  # W'_k (F, C), W'_r (C, C), W'_v (C, F)
                   record=None):
    """Channel mixing, eqs. 16-18. x (T, C): the LayerNorm output; x_prev (C,): the state.

    Returns (out (T, C), x_prev after the last token)."""
    xx = token_shift(x, x_prev)  # (T, C)
    # eq. 16: r'_t = W'_r (mu'_r x_t + (1 - mu'_r) x_{t-1});  eq. 17 likewise for k'_t
    r = mix(x, xx, time_mix_r) @ receptance.T  # (T, C)
    k = mix(x, xx, time_mix_k) @ key.T  # (T, F)
    # eq. 18: o'_t = sigmoid(r'_t) * (W'_v max(k'_t, 0)^2)
    hidden = np.maximum(k, 0) ** 2  # (T, F)
    out = sigmoid(r) * (hidden @ value.T)  # (T, C)
    if record is not None:
        record.update(x=x, x_shift=xx, r=r, k=k, hidden=hidden, out=out)
    return out, x[-1]


def block(x, layer_state, ln1, att, ln2, ffn, record=None):
    """One residual block, pre-LayerNorm: x += time_mixing(LN(x)); x += channel_mixing(LN(x)).

    x (T, C); layer_state (5, C). Returns (x (T, C), the layer's new state (5, C))."""
    s = layer_state
    att_rec = ffn_rec = None
    if record is not None:  # a dict: receives each sublayer's intermediate values
        att_rec, ffn_rec = record.setdefault("att", {}), record.setdefault("ffn", {})
    dx, (att_x, aa, bb, pp) = time_mixing(layer_norm(x, **ln1), s[ATT_X], s[AA], s[BB], s[PP], **att,
                                          record=att_rec)
    x = x + dx
    dx, ffn_x = channel_mixing(layer_norm(x, **ln2), s[FFN_X], **ffn, record=ffn_rec)
    return x + dx, np.stack([att_x, aa, bb, pp, ffn_x])  # (T, C), (5, C)


def forward(params, tokens, state=None, record=None):
    """The parallel form: tokens (T,) ints -> (logits (T, V) at every position, state after them).

    record: an optional list; it receives, per layer, a dict {"att": {...}, "ffn": {...}} of that
    layer's intermediate values (r, k, v, w, u, wkv, ... as named in time_mixing / channel_mixing)."""
    emb, ln0, blocks, ln_out, head = (params[n] for n in ("emb", "ln0", "blocks", "ln_out", "head"))
    if state is None:
        state = initial_state(len(blocks), emb.shape[1])
    x = emb[np.asarray(tokens)]  # (T, C)
    x = layer_norm(x, **ln0)  # ln0: an extra LayerNorm on the embedding, before block 0
    new_state = np.empty_like(state)  # (L, 5, C)
    for i, p in enumerate(blocks):
        rec = None if record is None else {}
        x, new_state[i] = block(x, state[i], **p, record=rec)
        if record is not None:
            record.append(rec)
    logits = layer_norm(x, **ln_out) @ head.T  # (T, V)
    return logits, new_state


def step(params, token, state=None, record=None):
    """The recurrent form: one token id -> (logits (V,), state after it). Feed the returned state
    to the next call: the state (L, 5, C) is everything the network keeps of the past."""
    logits, state = forward(params, [token], state, record)
    return logits[0], state  # (V,), (L, 5, C)
