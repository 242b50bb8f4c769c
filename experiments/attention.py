"""The comparison model of experiments/associative_recall.py: a small causal softmax-attention
transformer (pre-LayerNorm), forward and hand-written backward in NumPy.

It is an experiment's yardstick, not part of rwkv_np. To isolate what the issue asks about (eq. 14
against the dot product), its time mixing is RWKV-4's with eq. 14 swapped for softmax attention:
- the inputs of W_q, W_k, W_v are RWKV-4's token-shift mixes mu x_t + (1 - mu) x_{t-1} (eqs. 11-13,
  with the same initial mu), so both models see the previous token the same way; attention needs no
  position embedding for this task (the shift tells a value from its key; causal masking tells early
  from late), so there is none;
- per block: multi-head causal attention (W_q, W_k, W_v, W_o: 4C^2) and a plain ReLU MLP C -> F -> C
  with F = 4.5C (9C^2; RWKV-4's channel mixing has its own token shift, a squared ReLU and a gate), so
  a block has RWKV-4's 13C^2 matrix entries; embedding and head of the same shapes (no ln0).

Arrays are batch-major here, (B, T, C). Parameters are a flat dict of float arrays (plus "n_head");
`backward` returns gradients under the same names. tests/test_experiment_associative_recall.py checks them
against central finite differences (every array, up to 64 sampled entries each).
"""

from __future__ import annotations

import numpy as np

from rwkv_np.rwkv4.reference import layer_norm
from rwkv_np.training.init import _rule as rwkv_rule
from rwkv_np.training.model import layer_norm_backward, linear, linear_backward, mix_backward

EPS = 1e-5


def init_params(n_layer: int, n_embd: int, n_head: int, vocab: int, seed: int = 0,
                ffn_dim: int | None = None) -> dict[str, np.ndarray]:
    """GPT-2's initialisation: N(0, 0.02) matrices and embedding, the projections that write into the
    residual stream (attn.out, mlp.down) scaled by 1/sqrt(2 n_layer), zero biases, unit LayerNorms;
    the token-shift mixes of q, k, v by rwkv_np.training.init's rules for mu_r, mu_k, mu_v."""
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    C = n_embd
    F = ffn_dim or (9 * C) // 2
    rng = np.random.default_rng(seed)
    p = {"emb": rng.normal(0, 0.02, (vocab, C))}
    for i in range(n_layer):
        b = f"blocks.{i}."
        p[b + "ln1.weight"], p[b + "ln1.bias"] = np.ones(C), np.zeros(C)
        for n, rule in (("q", "mix_r"), ("k", "mix_k"), ("v", "mix_v")):
            p[b + f"attn.mix_{n}"] = rwkv_rule(rule, (C,), i, n_layer, rng)
        for n in ("q", "k", "v"):
            p[b + f"attn.{n}"] = rng.normal(0, 0.02, (C, C))
        p[b + "attn.out"] = rng.normal(0, 0.02 / np.sqrt(2 * n_layer), (C, C))
        p[b + "ln2.weight"], p[b + "ln2.bias"] = np.ones(C), np.zeros(C)
        p[b + "mlp.up"] = rng.normal(0, 0.02, (F, C))
        p[b + "mlp.down"] = rng.normal(0, 0.02 / np.sqrt(2 * n_layer), (C, F))
    p["ln_out.weight"], p["ln_out.bias"] = np.ones(C), np.zeros(C)
    p["head"] = rng.normal(0, 0.02, (vocab, C))
    p = {k: v.astype(np.float32) for k, v in p.items()}
    p["n_head"] = n_head  # not a parameter: read by forward, skipped by the optimiser
    return p


def weights(params: dict) -> dict[str, np.ndarray]:
    """The trainable arrays (everything but the n_head entry)."""
    return {k: v for k, v in params.items() if isinstance(v, np.ndarray)}


def n_layers(params: dict) -> int:
    return sum(1 for k in params if k.endswith(".ln1.weight"))


# ------------------------------------------------------------------------------ attention

def _heads(x, H):
    """(B, T, C) -> (B, H, T, C/H)."""
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)


def _merge(x):
    """(B, H, T, D) -> (B, T, H D)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _shift(h):
    """x_{t-1} at every t of (B, T, C), zeros before the first token."""
    xx = np.zeros_like(h)
    xx[:, 1:] = h[:, :-1]
    return xx


def attention(h, mus, Wq, Wk, Wv, Wo, H):
    """Causal multi-head softmax attention over h (B, T, C), q, k, v read from the token-shift mixes
    mu h_t + (1 - mu) h_{t-1} (mus: the three mu vectors). Returns (out, saved)."""
    xx = _shift(h)
    mixed = [h * mu + xx * (1 - mu) for mu in mus]
    q, k, v = (_heads(linear(m, W), H) for m, W in zip(mixed, (Wq, Wk, Wv)))
    T, D = h.shape[1], q.shape[-1]
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D)  # (B, H, T, T)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)  # token t sees i <= t only
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = _merge(a @ v)
    return linear(o, Wo), (h - xx, mixed, q, k, v, a, o)


def attention_backward(d_out, saved, mus, Wq, Wk, Wv, Wo, H):
    h_minus_shift, mixed, q, k, v, a, o = saved
    d_o, gWo = linear_backward(d_out, o, Wo)
    d_o = _heads(d_o, H)
    d_a = d_o @ v.transpose(0, 1, 3, 2)
    d_v = a.transpose(0, 1, 3, 2) @ d_o
    d_s = a * (d_a - (d_a * a).sum(-1, keepdims=True)) / np.sqrt(q.shape[-1])  # softmax backward; masked a = 0
    d_q = d_s @ k
    d_k = d_s.transpose(0, 1, 3, 2) @ q
    dh, dxx, grads = 0, 0, {"attn.out": gWo}
    for n, d, W, m, mu in zip("qkv", (d_q, d_k, d_v), (Wq, Wk, Wv), mixed, mus):
        d_m, grads["attn." + n] = linear_backward(_merge(d), m, W)
        d_h, d_xx, grads["attn.mix_" + n] = mix_backward(d_m, mu, h_minus_shift)
        dh, dxx = dh + d_h, dxx + d_xx
    d_shift = np.zeros_like(dxx)
    d_shift[:, :-1] = dxx[:, 1:]  # row t of the shift is row t-1 of h
    return dh + d_shift, grads


def mlp(h, up, down):
    z = linear(h, up)
    r = np.maximum(z, 0)
    return linear(r, down), (h, z, r)


def mlp_backward(d_out, saved, up, down):
    h, z, r = saved
    d_r, g_down = linear_backward(d_out, r, down)
    d_z = d_r * (z > 0)
    d_h, g_up = linear_backward(d_z, h, up)
    return d_h, {"mlp.up": g_up, "mlp.down": g_down}


# ------------------------------------------------------------------------------ the network

def _mus(p, b):
    return [p[b + f"attn.mix_{n}"] for n in "qkv"]


def _ln(p, name):
    return p[name + ".weight"], p[name + ".bias"]


def forward(params: dict, idx: np.ndarray):
    """Logits (B, T, V) for tokens idx (B, T), and the cache `backward` needs."""
    H = params["n_head"]
    idx = np.asarray(idx, np.intp)
    x = params["emb"][idx]
    saved = []
    for i in range(n_layers(params)):
        b = f"blocks.{i}."
        x_in = x
        dx, s_att = attention(layer_norm(x, *_ln(params, b + "ln1"), EPS), _mus(params, b),
                              *(params[b + f"attn.{n}"] for n in "qkv"),
                              params[b + "attn.out"], H)
        x1 = x + dx
        dx, s_mlp = mlp(layer_norm(x1, *_ln(params, b + "ln2"), EPS), params[b + "mlp.up"], params[b + "mlp.down"])
        x = x1 + dx
        saved.append((x_in, s_att, x1, s_mlp))
    xo = layer_norm(x, *_ln(params, "ln_out"), EPS)
    return linear(xo, params["head"]), {"idx": idx, "blocks": saved, "x": x, "xo": xo}


def backward(params: dict, cache: dict, d_logits: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of a scalar loss, given its gradient with respect to the logits (B, T, V)."""
    H = params["n_head"]
    g = {}
    d_xo, g["head"] = linear_backward(d_logits, cache["xo"], params["head"])
    d, lg = layer_norm_backward(d_xo, cache["x"], *_ln(params, "ln_out"), EPS)
    g["ln_out.weight"], g["ln_out.bias"] = lg["weight"], lg["bias"]
    for i in reversed(range(n_layers(params))):
        b = f"blocks.{i}."
        x_in, s_att, x1, s_mlp = cache["blocks"][i]
        d_h, gm = mlp_backward(d, s_mlp, params[b + "mlp.up"], params[b + "mlp.down"])
        d_x1, lg = layer_norm_backward(d_h, x1, *_ln(params, b + "ln2"), EPS)
        g[b + "ln2.weight"], g[b + "ln2.bias"] = lg["weight"], lg["bias"]
        d = d + d_x1
        d_h, ga = attention_backward(d, s_att, _mus(params, b), *(params[b + f"attn.{n}"] for n in "qkv"),
                                     params[b + "attn.out"], H)
        d_x, lg = layer_norm_backward(d_h, x_in, *_ln(params, b + "ln1"), EPS)
        g[b + "ln1.weight"], g[b + "ln1.bias"] = lg["weight"], lg["bias"]
        d = d + d_x
        g.update({b + k: v for k, v in {**gm, **ga}.items()})
    g["emb"] = np.zeros_like(params["emb"])
    np.add.at(g["emb"], cache["idx"].ravel(), d.reshape(-1, d.shape[-1]))
    return {k: np.asarray(v, dtype=params[k].dtype) for k, v in g.items()}
