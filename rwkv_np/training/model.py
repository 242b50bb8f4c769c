"""The training copy of RWKV-4's eqs. 11-18: the forward pass over a batch, and its backward pass.

This is the network of rwkv_np/reference.py, run over B windows of T tokens from the initial state,
keeping what the gradients need. It calls the reference's own functions (token_shift, mix, sigmoid,
layer_norm) instead of re-typing the equations, and runs eq. 14 in the shared compiled step
(kernels.wkv_step, via wkv_grad.wkv_forward). tests/test_training_model.py checks its logits against
rwkv_np/rwkv4/reference.py's forward, tests/test_gradcheck.py its gradients against finite differences.

Arrays are time-major, (T, B, C): the reference's functions are written for (T, C) and touch only the
first axis (time: token_shift) and the last (channels: layer_norm, mix), so with the batch in the
middle they apply unchanged. Each backward sits right below its forward, under the same name with
`_backward`, and returns (gradient of the input, gradients of the parameters as a dict named like the
forward's parameters). Parameters arrive flat, under checkpoint names; the table's nest (rwkv_np/rwkv4)
gives the reference's nested view of the same arrays, and its flatten turns the nested gradients back.
"""

from __future__ import annotations

import numpy as np

from ..rwkv4 import ARCH
from ..rwkv4.reference import layer_norm, mix, sigmoid, token_shift
from .variant import DEFAULT, Variant
from .wkv_grad import wkv_backward, wkv_forward

EPS = 1e-5  # LayerNorm epsilon of every RWKV-4 checkpoint


def n_layers(params: dict) -> int:
    return sum(1 for k in params if k.startswith("blocks.") and k.endswith(".ln1.weight"))


def _over_tokens(a: np.ndarray) -> np.ndarray:
    """Sum over every axis but the last: a parameter's gradient is summed over all positions."""
    return a.reshape(-1, a.shape[-1]).sum(0)


# ------------------------------------------------------------------------------ building blocks

def linear(x, W):
    """x W^T over (T, B, in) -> (T, B, out), as one 2-D matrix product (one BLAS call)."""
    return (x.reshape(-1, x.shape[-1]) @ W.T).reshape(*x.shape[:-1], W.shape[0])


def linear_backward(dy, x, W):
    """For y = x W^T: (dx, dW)."""
    dy2 = dy.reshape(-1, dy.shape[-1])
    return (dy2 @ W).reshape(x.shape), dy2.T @ x.reshape(-1, x.shape[-1])


# forward: reference.layer_norm(x, weight, bias, eps=1e-5)

def layer_norm_backward(dy, x, weight, bias, eps=EPS):
    """x is the LayerNorm's input. x_hat and 1/sigma are recomputed from it (the reference's
    layer_norm returns only its output; recomputing costs a few passes over x, the products C each)."""
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat = xc * rstd
    dxhat = dy * weight
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, {"weight": _over_tokens(dy * xhat), "bias": _over_tokens(dy)}


def shift(x):
    """reference.token_shift from the initial state: x_{t-1} at every t, zeros before the first token."""
    return token_shift(x, np.zeros_like(x[0]))  # (T, B, C)


def shift_backward(d_shifted):
    """Row t of the shifted array is row t-1 of x: the gradient moves up a row; the zeros get none."""
    dx = np.zeros_like(d_shifted)
    dx[:-1] = d_shifted[1:]
    return dx


# forward: reference.mix(x, x_shift, mu) = mu x + (1 - mu) x_shift

def mix_backward(d, mu, x_minus_shift):
    """(dx, dx_shift, dmu); x_minus_shift = x - x_shift, shared by a sublayer's mixes."""
    dx = d * mu
    return dx, d - dx, _over_tokens(d * x_minus_shift)


# forward: reference.sigmoid(x)

def sigmoid_backward(d, s):
    """s = sigmoid(x): d s / d x = s (1 - s)."""
    return d * s * (1 - s)


def _mixes_backward(d_mixed: dict, saved: dict, mus: dict, matrices: dict, grads: dict):
    """The products and token-shift mixes at the entrance of a sublayer, backwards: for each name n,
    mixed[n] = mix(x, x_shift, mus[n]) entered a product with matrices[n]. Adds the matrices' and the
    mus' gradients to grads; returns the gradient of x."""
    dx, dxx = 0, 0
    for n, d in d_mixed.items():
        d_in, grads[matrices[n][0]] = linear_backward(d, saved["mixed"][n], matrices[n][1])
        d_x, d_xx, grads["time_mix_" + n] = mix_backward(d_in, mus[n], saved["x_minus_shift"])
        dx, dxx = dx + d_x, dxx + d_xx
    return dx + shift_backward(dxx)


# ------------------------------------------------------------------------------ the sublayers

def time_mixing(x, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first, key, value, receptance, output):
    """Eqs. 11-15 over x (T, B, C), the LayerNorm output, from the initial state.
    Returns (out (T, B, C), what time_mixing_backward needs)."""
    xx = shift(x)
    mixed = {"r": mix(x, xx, time_mix_r), "k": mix(x, xx, time_mix_k), "v": mix(x, xx, time_mix_v)}
    r = linear(mixed["r"], receptance)  # eq. 11
    k = linear(mixed["k"], key)  # eq. 12
    v = linear(mixed["v"], value)  # eq. 13
    w = np.exp(time_decay)  # checkpoints store ln w (rwkv_np/rwkv4/params.py)
    wkv, saves = wkv_forward(w, time_first, k, v)  # eq. 14
    sr = sigmoid(r)
    out = linear(sr * wkv, output)  # eq. 15
    return out, {"mixed": mixed, "x_minus_shift": x - xx, "k": k, "v": v, "w": w, "wkv": wkv, "saves": saves,
                 "sr": sr}


def time_mixing_backward(d_out, saved, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
                         key, value, receptance, output):
    s = saved
    d_gated, g_output = linear_backward(d_out, s["sr"] * s["wkv"], output)
    d_r = sigmoid_backward(d_gated * s["wkv"], s["sr"])
    gw, g_first, d_k, d_v = wkv_backward(s["w"], time_first, s["k"], s["v"], s["wkv"], s["saves"],
                                         d_gated * s["sr"])
    grads = {"time_decay": gw * s["w"], "time_first": g_first, "output": g_output}  # d w / d ln w = w
    dx = _mixes_backward({"r": d_r, "k": d_k, "v": d_v}, s,
                         {"r": time_mix_r, "k": time_mix_k, "v": time_mix_v},
                         {"r": ("receptance", receptance), "k": ("key", key), "v": ("value", value)}, grads)
    return dx, grads


def channel_mixing(x, time_mix_k, time_mix_r, key, receptance, value):
    """Eqs. 16-18 over x (T, B, C), the LayerNorm output, from the initial state.
    Returns (out (T, B, C), what channel_mixing_backward needs)."""
    xx = shift(x)
    mixed = {"r": mix(x, xx, time_mix_r), "k": mix(x, xx, time_mix_k)}
    sr = sigmoid(linear(mixed["r"], receptance))  # eq. 16
    relu = np.maximum(linear(mixed["k"], key), 0)  # eq. 17, (T, B, F)
    hidden = relu ** 2
    kv = linear(hidden, value)  # eq. 18
    return sr * kv, {"mixed": mixed, "x_minus_shift": x - xx, "relu": relu, "hidden": hidden, "sr": sr,
                     "kv": kv}


def channel_mixing_backward(d_out, saved, time_mix_k, time_mix_r, key, receptance, value):
    s = saved
    d_hidden, g_value = linear_backward(d_out * s["sr"], s["hidden"], value)
    d_k = 2 * d_hidden * s["relu"]
    d_r = sigmoid_backward(d_out * s["kv"], s["sr"])
    grads = {"value": g_value}
    dx = _mixes_backward({"r": d_r, "k": d_k}, s, {"r": time_mix_r, "k": time_mix_k},
                         {"r": ("receptance", receptance), "k": ("key", key)}, grads)
    return dx, grads


_SUBLAYERS = {"att": ("ln1", time_mixing, time_mixing_backward),
              "ffn": ("ln2", channel_mixing, channel_mixing_backward)}


def block(x, ln1, att, ln2, ffn, sublayers=("att", "ffn")):
    """reference.block from the initial state: x += time_mixing(LN(x)); x += channel_mixing(LN(x)).
    `sublayers` (a Variant's) may swap the two or leave out channel mixing; each keeps its LayerNorm."""
    p = {"ln1": ln1, "att": att, "ln2": ln2, "ffn": ffn}
    saved = []
    for name in sublayers:
        ln, f, _ = _SUBLAYERS[name]
        dx, s = f(layer_norm(x, **p[ln], eps=EPS), **p[name])
        saved.append((x, s))
        x = x + dx
    return x, saved


def block_backward(d_out, saved, ln1, att, ln2, ffn, sublayers=("att", "ffn")):
    p = {"ln1": ln1, "att": att, "ln2": ln2, "ffn": ffn}
    g = {}
    d = d_out
    for name, (x, s) in zip(reversed(sublayers), reversed(saved)):
        ln, _, f_backward = _SUBLAYERS[name]
        d_ln, g[name] = f_backward(d, s, **p[name])
        d_x, g[ln] = layer_norm_backward(d_ln, x, **p[ln], eps=EPS)
        d = d + d_x
    for name in ("att", "ffn"):  # a sublayer the variant leaves out: its parameters get zero gradient
        if name not in g:
            ln = _SUBLAYERS[name][0]
            g[name] = {k: np.zeros_like(v) for k, v in p[name].items()}
            g[ln] = {k: np.zeros_like(v) for k, v in p[ln].items()}
    return d, g


def cross_entropy(logits, targets):
    """Mean over positions of -ln softmax(logits)[target]. Returns (loss, log-probabilities)."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, targets[..., None], -1).mean()), logp


def cross_entropy_backward(logp, targets):
    """d loss / d logits = (softmax - one_hot(target)) / positions."""
    d = np.exp(logp)
    np.put_along_axis(d, targets[..., None], np.take_along_axis(d, targets[..., None], -1) - 1, -1)
    return d / targets.size


# ------------------------------------------------------------------------------ the network

def forward(params: dict, idx: np.ndarray, targets: np.ndarray | None = None, keep: bool = False,
            variant: Variant = DEFAULT):
    """reference.forward over a batch of windows idx (B, T), each from the initial state (with the
    blocks of `variant`, training/variant.py; the default is the paper's block).

    Returns (logits (B, T, V), mean cross-entropy in nats (None without targets), cache for
    `backward` (None unless keep))."""
    P = ARCH.nest(params, n_layers(params), dtype=None)
    tokens = np.asarray(idx).T.astype(np.intp)  # (T, B)
    x0 = P["emb"][tokens]  # (T, B, C)
    x = layer_norm(x0, **P["ln0"], eps=EPS)
    saved = []
    for p in P["blocks"]:
        x, s = block(x, **p, sublayers=variant.sublayers)
        if keep:
            saved.append(s)
    xo = layer_norm(x, **P["ln_out"], eps=EPS)
    logits = linear(xo, P["head"])  # (T, B, V)
    loss = logp = None
    if targets is not None:
        targets = np.asarray(targets).T.astype(np.intp)
        loss, logp = cross_entropy(logits, targets)
    cache = None
    if keep:
        cache = {"P": P, "tokens": tokens, "x0": x0, "blocks": saved, "x": x, "xo": xo, "logp": logp,
                 "targets": targets, "variant": variant}
    return logits.transpose(1, 0, 2), loss, cache


def backward(params: dict, cache: dict) -> dict[str, np.ndarray]:
    """Gradients of the mean cross-entropy for every parameter (flat names), from
    `forward(..., targets, keep=True)`."""
    P = cache["P"]
    g: dict = {}
    d_logits = cross_entropy_backward(cache["logp"], cache["targets"])
    d_xo, g["head"] = linear_backward(d_logits, cache["xo"], P["head"])
    d, g["ln_out"] = layer_norm_backward(d_xo, cache["x"], **P["ln_out"], eps=EPS)
    g["blocks"] = [None] * len(P["blocks"])
    for i in reversed(range(len(P["blocks"]))):
        d, g["blocks"][i] = block_backward(d, cache["blocks"][i], **P["blocks"][i],
                                           sublayers=cache["variant"].sublayers)
    d, g["ln0"] = layer_norm_backward(d, cache["x0"], **P["ln0"], eps=EPS)
    g["emb"] = np.zeros_like(P["emb"])
    np.add.at(g["emb"], cache["tokens"].ravel(), d.reshape(-1, d.shape[-1]))  # rows of the tokens read
    return {k: np.asarray(v, dtype=params[k].dtype) for k, v in ARCH.flatten(g).items()}


def loss_and_grads(params: dict, idx: np.ndarray, targets: np.ndarray,
                   variant: Variant = DEFAULT) -> tuple[float, dict]:
    """The loss and the gradients of the variant's free parameters (Variant.grads: zero for frozen and
    unused ones, summed over channels for tied ones)."""
    _, loss, cache = forward(params, idx, targets, keep=True, variant=variant)
    grads = backward(params, cache)
    return loss, grads if variant.is_default else variant.grads(grads)


def evaluate(params: dict, data: np.ndarray, ctx: int, max_windows: int | None = None, batch: int = 32,
             variant: Variant = DEFAULT, progress=None) -> float:
    """Mean cross-entropy (nats/byte) over consecutive non-overlapping ctx-windows of data, each from
    the initial state (all windows, or the first max_windows). progress(done batches, all batches,
    loss so far) after each batch of windows, if given (rwkv_np.perplexity.ProgressBar shows it)."""
    n = (len(data) - 1) // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    total, count = 0.0, 0
    batches = -(-n // batch)
    for s in range(0, n, batch):
        rows = np.arange(s, min(n, s + batch))
        idx = rows[:, None] * ctx + np.arange(ctx)[None, :]
        _, loss, _ = forward(params, data[idx], data[idx + 1], variant=variant)
        total += loss * idx.size
        count += idx.size
        if progress is not None:
            progress(s // batch + 1, batches, total / count)
    return total / count


def activation_bytes(n_layer: int, n_embd: int, ffn_dim: int, vocab: int, batch: int, ctx: int) -> int:
    """An upper estimate of the memory loss_and_grads allocates (the gradients aside), from what
    forward keeps per position and layer: 15 float32 vectors of C (the block's input and midpoint; time
    mixing's three mixes, x - x_shift, k, v, wkv, sigmoid(r); channel mixing's two mixes, x - x_shift,
    sigmoid(r'), W'_v hidden), eq. 14's two float64 saves (4 vectors' worth) and 2 of F (k' after
    the ReLU, and squared); then what is alive at once in one layer's backward (up to 16 vectors of C
    and 5 of F) and in the head's (logits, log-probabilities and their gradients: 5 of V).
    tests/test_training_model.py checks it against the measured peak."""
    C, F, V = n_embd, ffn_dim, vocab
    per_position = n_layer * (19 * C + 2 * F) + 16 * C + 5 * F + 5 * V
    return 4 * batch * ctx * per_position
