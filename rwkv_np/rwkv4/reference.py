"""RWKV-4 in plain NumPy, from embedding to logits: the reference to read next to the paper.

"RWKV: Reinventing RNNs for the Transformer Era" (Peng et al., arXiv 2305.13048; the equation numbers
are those of its first version). NumPy only; each formula sits above the line that computes it.

    python -m rwkv_np.rwkv4.reference "ROMEO:"   # greedy text from the shipped model, this file alone

Glossary (code: paper)
    T, C, F, V, L   tokens in the sequence, channels (n_embd), channel mixing's hidden width (4C),
                    vocabulary, blocks
    x               (T, C): LN of the residual stream, the input of a sublayer; x_t is row t
    x_prev          x_{t-1} for the first token: the previous call's last x (from the state)
    mu              time_mix_k, _v, _r (C,): the share of x_t against x_{t-1} in k, v, r (eqs. 11-13);
                    channel mixing's mu'_k, mu'_r (eqs. 16-17). Learned numbers, not kept in [0, 1]
    r, k, v         receptance, key, value (eqs. 11-13); W_r, W_k, W_v (C, C), W_o (eq. 15)
    w               the decay rate (C,), w = e^time_decay > 0: eq. 14 weighs the past by e^{-(t-1-i) w}
    u               time_first (C,): the current token's own weight in eq. 14, e^{u + k_t} (the paper's
                    "bonus"; every trained u of the shipped model is negative, a discount)
    wkv             eq. 14: per channel, a weighted average of v_0..v_t
    aa, bb, pp      eq. 14's running sums a = aa e^pp (weighted values) and b = bb e^pp (weights);
                    pp, the exponent kept apart, is the largest one seen, so e^... never overflows
    state           (L, 5, C), per block: x_prev of time mixing, aa, bb, pp, x_prev of channel mixing

    forward(params, tokens, state)  the parallel form: all T tokens at once, each projection one
                                    matrix product over T; eq. 14 a scan over T (`wkv`).
    step(params, token, state)      the recurrent form: one token, an RNN; forward with T = 1, the
                                    state carried from call to call.
    step_batch(params, tokens, state)  the recurrent form over a batch: B sequences, one token each.

params: the nested float32 dict of `rwkv_np.RWKV.params` (names and shapes: rwkv_np/rwkv4/params.py);
state None is the state before any token. Nothing passed in is modified. rwkv_np/rwkv4/engine.py
computes the same, compiled, and is tested against this file at every position of every fixture.
"""

import numpy as np

# The state of one layer: five vectors of C channels, rows of state[i].
ATT_X, AA, BB, PP, FFN_X = 0, 1, 2, 3, 4  # x_prev (time mixing), aa, bb, pp, x_prev (channel mixing)
# pp of an empty past: e^{pp - q} is exactly 0 for any q a model produces (and, unlike -inf,
# pp - q never computes inf - inf). The official kernels use the same value.
PP_EMPTY = -1e38


def initial_state(n_layer, n_embd):
    """The state before any token: x_{t-1} = 0, a = b = 0."""
    state = np.zeros((n_layer, 5, n_embd), np.float32)  # (L, 5, C)
    state[:, PP] = PP_EMPTY
    return state


def layer_norm(x, weight, bias, eps=1e-5):
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


def wkv(w, u, k, v, aa, bb, pp):
    """Eq. 14 over k, v (T, C), per channel, after the past held in aa, bb, pp (C,):

        wkv_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (sum_{i<t} e^{-(t-1-i)w + k_i} + e^{u+k_t})

    computed as a recurrence over the two sums, a_t = e^{-w} a_{t-1} + e^{k_t} v_t and
    b_t = e^{-w} b_{t-1} + e^{k_t}, so that wkv_t = (a_{t-1} + e^{u+k_t} v_t) / (b_{t-1} + e^{u+k_t}).
    They are kept as a = aa e^pp, b = bb e^pp, every exponential taken relative to the larger
    exponent q, so none exceeds 1 and float32 never overflows however large k and u are (the
    official kernels' running maximum). Returns (wkv (T, C), (aa, bb, pp) after the last token)."""
    out = np.empty_like(k)  # (T, C)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        e_past, e_now = np.exp(pp - q), np.exp(u + k[t] - q)
        out[t] = (e_past * aa + e_now * v[t]) / (e_past * bb + e_now)
        # the state after token t: the past decays by e^{-w}; token t joins it without u
        q = np.maximum(pp - w, k[t])
        e_past, e_now = np.exp(pp - w - q), np.exp(k[t] - q)
        aa, bb, pp = e_past * aa + e_now * v[t], e_past * bb + e_now, q
    return out, (aa, bb, pp)


def time_mixing(x, x_prev, aa, bb, pp,
                time_mix_k, time_mix_v, time_mix_r,  # mu_k, mu_v, mu_r (C,)
                time_decay, time_first,  # ln w and u (C,): eq. 14's decay rate and current-token weight
                key, value, receptance, output):  # W_k, W_v, W_r, W_o (C, C)
    """Time mixing, eqs. 11-15. x (T, C): the LayerNorm output; x_prev, aa, bb, pp (C,): the state.
    Returns (out (T, C), (x_prev, aa, bb, pp) after the last token)."""
    xx = token_shift(x, x_prev)  # (T, C)
    # eq. 11: r_t = W_r (mu_r x_t + (1 - mu_r) x_{t-1});  eqs. 12, 13 likewise for k_t, v_t
    r = mix(x, xx, time_mix_r) @ receptance.T  # (T, C)
    k = mix(x, xx, time_mix_k) @ key.T  # (T, C)
    v = mix(x, xx, time_mix_v) @ value.T  # (T, C)
    # eq. 14, with w = e^time_decay: checkpoints store ln w, so that training keeps w positive
    y, (aa, bb, pp) = wkv(np.exp(time_decay), time_first, k, v, aa, bb, pp)  # (T, C)
    # eq. 15: o_t = W_o (sigmoid(r_t) * wkv_t)
    out = (sigmoid(r) * y) @ output.T  # (T, C)
    return out, (x[-1], aa, bb, pp)


def channel_mixing(x, x_prev,
                   time_mix_k, time_mix_r,  # mu'_k, mu'_r (C,)
                   key, receptance, value):  # W'_k (F, C), W'_r (C, C), W'_v (C, F)
    """Channel mixing, eqs. 16-18. x (T, C): the LayerNorm output; x_prev (C,): the state.
    Returns (out (T, C), x_prev after the last token)."""
    xx = token_shift(x, x_prev)  # (T, C)
    # eq. 16: r'_t = W'_r (mu'_r x_t + (1 - mu'_r) x_{t-1});  eq. 17 likewise for k'_t
    r = mix(x, xx, time_mix_r) @ receptance.T  # (T, C)
    k = mix(x, xx, time_mix_k) @ key.T  # (T, F)
    # eq. 18: o'_t = sigmoid(r'_t) * (W'_v max(k'_t, 0)^2)
    out = sigmoid(r) * (np.maximum(k, 0) ** 2 @ value.T)  # (T, C)
    return out, x[-1]


def block(x, layer_state, ln1, att, ln2, ffn, eps=1e-5):
    """One residual block, pre-LayerNorm: x += time_mixing(LN(x)); x += channel_mixing(LN(x)).
    x (T, C); layer_state (5, C). Returns (x (T, C), the layer's new state (5, C))."""
    s = layer_state
    dx, (att_x, aa, bb, pp) = time_mixing(layer_norm(x, **ln1, eps=eps), s[ATT_X], s[AA], s[BB], s[PP], **att)
    x = x + dx
    dx, ffn_x = channel_mixing(layer_norm(x, **ln2, eps=eps), s[FFN_X], **ffn)
    return x + dx, np.stack([att_x, aa, bb, pp, ffn_x])  # (T, C), (5, C)


def forward(params, tokens, state=None, eps=1e-5):
    """The parallel form: tokens (T,) ints -> (logits (T, V) at every position, state after them).
    eps: the LayerNorm epsilon (1e-5 in every released checkpoint)."""
    emb, ln0, blocks, ln_out, head = (params[n] for n in ("emb", "ln0", "blocks", "ln_out", "head"))
    if state is None:
        state = initial_state(len(blocks), emb.shape[1])
    x = emb[np.asarray(tokens)]  # (T, C)
    x = layer_norm(x, **ln0, eps=eps)  # ln0: an extra LayerNorm on the embedding, before block 0
    new_state = np.empty_like(state)  # (L, 5, C)
    for i, p in enumerate(blocks):
        x, new_state[i] = block(x, state[i], **p, eps=eps)
    logits = layer_norm(x, **ln_out, eps=eps) @ head.T  # (T, V)
    return logits, new_state


def step(params, token, state=None, eps=1e-5):
    """The recurrent form: one token id -> (logits (V,), state after it). Feed the returned state
    to the next call: the state (L, 5, C) is everything the network keeps of the past."""
    logits, state = forward(params, [token], state, eps)
    return logits[0], state  # (V,), (L, 5, C)


def step_batch(params, tokens, state, eps=1e-5):
    """The recurrent form over a batch: tokens (B,), one for each of B sequences, whose states stand
    side by side in state (L, 5, B, C) -> (logits (B, V), state after). forward itself: every function
    above touches only the first axis (time) and the last (channels), so x (T = 1, B, C) passes through
    unchanged, each sequence's token shift and eq. 14 reading its own column of the state."""
    logits, state = forward(params, np.asarray(tokens)[None], state, eps)  # tokens (1, B)
    return logits[0], state  # (B, V), (L, 5, B, C)


if __name__ == "__main__":  # greedy generation from the shipped byte-level model, NumPy only
    import sys
    from pathlib import Path

    from safetensors.numpy import load_file

    from .params import ARCH

    weights = load_file(Path(__file__).resolve().parents[1] / "assets" / "rwkv4-shakespeare.safetensors")
    params = ARCH.nest(weights)  # the flat checkpoint names -> the nested dict above, float32
    prompt = (sys.argv[1] if len(sys.argv) > 1 else "ROMEO:").encode()  # the vocabulary is bytes
    logits, state = forward(params, list(prompt))  # the prompt through the parallel form
    token, out = int(np.argmax(logits[-1])), bytearray(prompt)
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 200):  # then the recurrent form
        out.append(token)
        logits, state = step(params, token, state)
        token = int(np.argmax(logits))
    print(out.decode("utf-8", errors="replace"))
