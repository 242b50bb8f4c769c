"""Solutions to the exercises of notebooks/exercises/, for teachers. Learners: try first!

One function per stub cell, named as the stub. Each uses only what its notebook's first cell imports
(numpy as np and the helpers it names: where a notebook takes an earlier exercise's function from
rwkv_np/rwkv4/reference.py, this module's own solution of it stands in, computing the same), so that
`python -m rwkv_np.exercises write-solutions DIR` can paste it into the notebook in place of the stub;
the tests check each against its check.
"""

import numpy as np

from rwkv_np.exercises.given import wkv
from rwkv_np.rwkv4.reference import ATT_X, AA, BB, PP, FFN_X, initial_state, layer_norm, sigmoid

__all__ = ["token_shift", "mix", "wkv_naive", "wkv_recurrent", "wkv_stable", "time_mixing", "channel_mixing",
           "step", "forward", "generate", "wkv_grad"]


# 01_token_shift
def token_shift(x, x_prev):
    # row t holds x_{t-1}: x_prev (the state) on top, x without its last row below
    return np.concatenate([x_prev[None], x[:-1]])


def mix(x, x_shift, mu):
    return mu * x + (1 - mu) * x_shift


# 02_wkv_naive
def wkv_naive(w, u, k, v):
    T, C = k.shape
    out = np.empty_like(k)
    for t in range(T):
        num = np.exp(u + k[t]) * v[t]  # the current token, with the bonus u
        den = np.exp(u + k[t])
        for i in range(t):  # the past: the latest (i = t-1) undecayed
            weight = np.exp(-(t - 1 - i) * w + k[i])
            num = num + weight * v[i]
            den = den + weight
        out[t] = num / den
    return out


# 03_wkv_recurrent
def wkv_recurrent(w, u, k, v, a, b):
    out = np.empty_like(k)
    for t in range(len(k)):
        out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
        a = np.exp(-w) * a + np.exp(k[t]) * v[t]  # token t joins the past without the bonus
        b = np.exp(-w) * b + np.exp(k[t])
    return out, a, b


# 04_wkv_stable
def wkv_stable(w, u, k, v, aa, bb, pp):
    out = np.empty_like(k)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])  # the larger exponent of the two terms
        e_past, e_now = np.exp(pp - q), np.exp(u + k[t] - q)
        out[t] = (e_past * aa + e_now * v[t]) / (e_past * bb + e_now)
        q = np.maximum(pp - w, k[t])
        e_past, e_now = np.exp(pp - w - q), np.exp(k[t] - q)
        aa, bb, pp = e_past * aa + e_now * v[t], e_past * bb + e_now, q
    return out, aa, bb, pp


# 05_time_mixing (the notebook gives token_shift, mix and sigmoid from the reference, and wkv, eq. 14 computed stably)
def time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
                key, value, receptance, output):
    xx = token_shift(x, x_prev)
    r = mix(x, xx, time_mix_r) @ receptance.T
    k = mix(x, xx, time_mix_k) @ key.T
    v = mix(x, xx, time_mix_v) @ value.T
    y, (aa, bb, pp) = wkv(np.exp(time_decay), time_first, k, v, aa, bb, pp)
    return (sigmoid(r) * y) @ output.T, (x[-1], aa, bb, pp)


# 06_channel_mixing
def channel_mixing(x, x_prev, time_mix_k, time_mix_r, key, receptance, value):
    xx = token_shift(x, x_prev)
    r = mix(x, xx, time_mix_r) @ receptance.T
    k = mix(x, xx, time_mix_k) @ key.T
    return sigmoid(r) * (np.maximum(k, 0) ** 2 @ value.T), x[-1]


# 07_recurrent_step: one token, every vector (C,) (the notebook gives wkv, eq. 14 computed stably)
def step(params, token, state):
    blocks = params["blocks"]
    if state is None:
        state = initial_state(len(blocks), params["emb"].shape[1])
    state = state.copy()  # the caller's state stays as it was
    x = layer_norm(params["emb"][token], **params["ln0"])
    for i, p in enumerate(blocks):
        s, att, ffn = state[i], p["att"], p["ffn"]
        # time mixing
        xa = layer_norm(x, **p["ln1"])
        r = mix(xa, s[ATT_X], att["time_mix_r"]) @ att["receptance"].T
        k = mix(xa, s[ATT_X], att["time_mix_k"]) @ att["key"].T
        v = mix(xa, s[ATT_X], att["time_mix_v"]) @ att["value"].T
        y, (s[AA], s[BB], s[PP]) = wkv(np.exp(att["time_decay"]), att["time_first"], k[None], v[None],
                                       s[AA], s[BB], s[PP])  # one token: (1, C)
        s[ATT_X] = xa
        x = x + (sigmoid(r) * y[0]) @ att["output"].T
        # channel mixing
        xf = layer_norm(x, **p["ln2"])
        r = mix(xf, s[FFN_X], ffn["time_mix_r"]) @ ffn["receptance"].T
        k = mix(xf, s[FFN_X], ffn["time_mix_k"]) @ ffn["key"].T
        s[FFN_X] = xf
        x = x + sigmoid(r) * (np.maximum(k, 0) ** 2 @ ffn["value"].T)
    return layer_norm(x, **params["ln_out"]) @ params["head"].T, state


# 08_whole_model (the notebook imports time_mixing, channel_mixing from the reference)
def forward(params, tokens, state=None):
    blocks = params["blocks"]
    if state is None:
        state = initial_state(len(blocks), params["emb"].shape[1])
    x = layer_norm(params["emb"][np.asarray(tokens)], **params["ln0"])
    new_state = np.empty_like(state)
    for i, p in enumerate(blocks):
        s = state[i]
        dx, (att_x, aa, bb, pp) = time_mixing(layer_norm(x, **p["ln1"]), s[ATT_X], s[AA], s[BB], s[PP],
                                                  **p["att"])
        x = x + dx
        dx, ffn_x = channel_mixing(layer_norm(x, **p["ln2"]), s[FFN_X], **p["ffn"])
        x = x + dx
        new_state[i] = np.stack([att_x, aa, bb, pp, ffn_x])
    return layer_norm(x, **params["ln_out"]) @ params["head"].T, new_state


def generate(params, prompt, n):
    logits, state = forward(params, list(prompt))
    out = []
    for _ in range(n):
        token = int(np.argmax(logits[-1]))  # greedy: the most likely next byte
        out.append(token)
        logits, state = forward(params, [token], state)
    return out


# 09_wkv_grad: from the weights of eq. 14 as a softmax over exponents (O(T^2), float64)
def wkv_grad(w, u, k, v, gy):
    T, C = k.shape
    gw, gu = np.zeros(C), np.zeros(C)
    gk, gv = np.zeros((T, C)), np.zeros((T, C))
    for t in range(T):
        dist = np.arange(t - 1, -1, -1)[:, None]  # t-1-i for i < t
        x = np.concatenate([-dist * w + k[:t], (u + k[t])[None]])  # (t+1, C) exponents
        p = np.exp(x - x.max(0))
        p /= p.sum(0)  # the weights, summing to 1 over i <= t
        y = (p * v[:t + 1]).sum(0)
        r = p * (v[:t + 1] - y) * gy[t]  # dL/d(exponent_i) for output t
        gk[:t + 1] += r
        gv[:t + 1] += p * gy[t]
        gu += r[t]
        gw -= (dist * r[:t]).sum(0)
    return gw, gu, gk, gv
