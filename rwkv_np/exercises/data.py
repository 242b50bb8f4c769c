"""What the checks' cases are made of: random eq. 14 inputs, tiny random models, the shipped model and
real activations from it. Everything is built from fixed seeds, so a case is the same at every run."""

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..rwkv4 import reference
from ..rwkv4.reference import AA, ATT_X, BB, PP, PP_EMPTY

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "rwkv4-shakespeare.safetensors"


def rng(seed):
    return np.random.default_rng(seed)


def wkv_inputs(seed, T, C, dtype=np.float64, k_scale=1.0, u=None):
    """w (C,) from 0.05 to 2.7, u (C,) in [-1, 1.5] (or all `u`), k ~ N(0, k_scale), v ~ N(0, 1)."""
    r = rng(seed)
    w = np.exp(r.uniform(-3, 1, C)).astype(dtype)
    u = (r.uniform(-1, 1.5, C) if u is None else np.full(C, u)).astype(dtype)
    k = (r.normal(0, 1, (T, C)) * k_scale).astype(dtype)
    v = r.normal(0, 1, (T, C)).astype(dtype)
    return w, u, k, v


def empty_state(C, dtype):
    """eq. 14's state before any token, as the reference keeps it: aa = bb = 0, pp = PP_EMPTY."""
    return np.zeros(C, dtype), np.zeros(C, dtype), np.full(C, PP_EMPTY, dtype)


def reference_wkv(w, u, k, v, aa=None, bb=None, pp=None):
    """Eq. 14 over k, v (T, C) after the state (aa, bb, pp) (None: an empty past), computed by the
    reference's own `wkv` (rwkv_np/rwkv4/reference.py) in the dtype of k. w (C,) > 0 the decay, u (C,)
    the bonus. Returns (wkv (T, C), (aa, bb, pp)): the state in the reference's form (a = aa e^pp, b = bb e^pp)."""
    k, v = np.asarray(k), np.asarray(v)
    if aa is None:
        aa, bb, pp = empty_state(k.shape[1], k.dtype)
    return reference.wkv(np.asarray(w, k.dtype), np.asarray(u, k.dtype), k, v, aa, bb, pp)


@lru_cache(maxsize=None)
def _shipped():
    from .. import load_model

    return load_model(SHIPPED).params


def shipped_params():
    """The nested params of the shipped checkpoint (rwkv_np/assets/rwkv4-shakespeare.safetensors),
    loaded once: rwkv_np.load_model(path).params. The checks give the learner copies."""
    return _shipped()


@lru_cache(maxsize=None)
def tiny_params(seed=0, n_layer=2, n_embd=8, ffn_dim=32, vocab_size=16):
    """A tiny RWKV-4 of random weights (float32), nested as the reference takes it."""
    from ..config import RWKVConfig
    from ..rwkv4.params import ARCH, random_weights

    config = RWKVConfig(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, ffn_dim=ffn_dim)
    return ARCH.nest(random_weights(config, seed), n_layer)


@lru_cache(maxsize=None)
def real_layer_input(layer=0):
    """Real activations: the LayerNorm outputs entering layer `layer`'s time and channel mixing on
    the 14 bytes of "First Citizen:", from the shipped model. Returns (the layer's params,
    {"att": x (T, C), "ffn": x (T, C)})."""
    params = shipped_params()
    x = reference.layer_norm(params["emb"][list(b"First Citizen:")], **params["ln0"])  # (T, C)
    state = reference.initial_state(len(params["blocks"]), x.shape[1])
    for p, s in zip(params["blocks"][:layer], state):
        x, _ = reference.block(x, s, **p)
    p, s = params["blocks"][layer], state[layer]
    x_att = reference.layer_norm(x, **p["ln1"])
    x = x + reference.time_mixing(x_att, s[ATT_X], s[AA], s[BB], s[PP], **p["att"])[0]
    return p, {"att": x_att, "ffn": reference.layer_norm(x, **p["ln2"])}


def text_tokens(text=b"ROMEO:\nWhat light"):
    return np.frombuffer(text, np.uint8).astype(np.int64)
