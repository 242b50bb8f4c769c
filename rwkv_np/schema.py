"""Every parameter of RWKV-4, in one table, and what derives from it.

Each row: the name a BlinkDL checkpoint uses (inside `blocks.{i}.` for block parameters), the shape in
terms of C (channels, n_embd), F (channel mixing's hidden width, ffn_dim) and V (vocabulary), the
paper's symbol, the equation it enters, what it does, and how `rwkv_np.training` initialises it.

One decay convention inside the library: `att.time_decay` holds ln w, as BlinkDL's and Hugging
Face's checkpoints store it (w = e^time_decay > 0 is eq. 14's decay rate). Only the rwkv.cpp reader
converts (its files store -w). rwkv_np/reference.py applies w = exp(time_decay) where eq. 14 uses it.

Derived from the table: the shapes the loaders check (`shapes`), `RWKVConfig.n_params`, the nested
params dict of the reference (`nest`), the engine's per-layer vector table (`VECTORS`, `MATRICES`),
the trainer's initialisation, and the random weights of the tests and benchmarks (`random_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Param:
    name: str  # BlinkDL's name; block parameters are prefixed with "blocks.{i}."
    shape: tuple[str, ...]  # dimensions as "C", "F", "V"
    symbol: str  # the paper's symbol
    eq: str  # the equation of arXiv 2305.13048v1 it enters
    role: str  # what it does
    init: str  # the rule `rwkv_np.training.init` applies (see there)

    @property
    def path(self) -> tuple[str, ...]:
        """Where it sits in the nested params dict: ("att", "key") for att.key.weight, ("ln1", "weight")."""
        parts = self.name.split(".")
        if parts[-1] == "weight" and len(parts) > 1 and parts[-2] not in ("ln0", "ln1", "ln2", "ln_out"):
            parts = parts[:-1]
        return tuple(parts)

    def dims(self, n_embd: int, ffn_dim: int, vocab_size: int) -> tuple[int, ...]:
        size = {"C": n_embd, "F": ffn_dim, "V": vocab_size}
        return tuple(size[d] for d in self.shape)


#: parameters outside the blocks, in the order the network uses them (ln0 is stored inside block 0)
TOP = (
    Param("emb.weight", ("V", "C"), "emb", "-", "token embedding: row n is the vector of token n", "embedding"),
    Param("ln0.weight", ("C",), "gamma_0", "-", "LayerNorm of the embedding, before block 0: scale", "ones"),
    Param("ln0.bias", ("C",), "beta_0", "-", "LayerNorm of the embedding: shift", "zeros"),
    Param("ln_out.weight", ("C",), "gamma_out", "-", "LayerNorm before the head: scale", "ones"),
    Param("ln_out.bias", ("C",), "beta_out", "-", "LayerNorm before the head: shift", "zeros"),
    Param("head.weight", ("V", "C"), "W_head", "-", "logits = W_head LN(x)", "head"),
)
#: parameters of each block, in the order the block uses them
BLOCK = (
    Param("ln1.weight", ("C",), "gamma_1", "-", "LayerNorm before time mixing: scale", "ones"),
    Param("ln1.bias", ("C",), "beta_1", "-", "LayerNorm before time mixing: shift", "zeros"),
    Param("att.time_mix_k", ("C",), "mu_k", "12", "token shift: share of x_t (vs x_{t-1}) in k_t", "mix_k"),
    Param("att.time_mix_v", ("C",), "mu_v", "13", "token shift: share of x_t in v_t", "mix_v"),
    Param("att.time_mix_r", ("C",), "mu_r", "11", "token shift: share of x_t in r_t", "mix_r"),
    Param("att.time_decay", ("C",), "ln w", "14", "decay rate w = e^time_decay of the past, per channel", "decay"),
    Param("att.time_first", ("C",), "u", "14", "bonus of the current token in wkv_t, per channel", "bonus"),
    Param("att.key.weight", ("C", "C"), "W_k", "12", "key k_t", "orthogonal_0.1"),
    Param("att.value.weight", ("C", "C"), "W_v", "13", "value v_t", "orthogonal"),
    Param("att.receptance.weight", ("C", "C"), "W_r", "11", "receptance r_t, the gate of eq. 15", "orthogonal"),
    Param("att.output.weight", ("C", "C"), "W_o", "15", "output of time mixing", "zeros"),
    Param("ln2.weight", ("C",), "gamma_2", "-", "LayerNorm before channel mixing: scale", "ones"),
    Param("ln2.bias", ("C",), "beta_2", "-", "LayerNorm before channel mixing: shift", "zeros"),
    Param("ffn.time_mix_k", ("C",), "mu'_k", "17", "token shift: share of x_t in k'_t", "mix_k"),
    Param("ffn.time_mix_r", ("C",), "mu'_r", "16", "token shift: share of x_t in r'_t", "mix_k"),
    Param("ffn.key.weight", ("F", "C"), "W'_k", "17", "key k'_t, the hidden layer before max(., 0)^2", "orthogonal"),
    Param("ffn.receptance.weight", ("C", "C"), "W'_r", "16", "receptance r'_t, the gate of eq. 18", "zeros"),
    Param("ffn.value.weight", ("C", "F"), "W'_v", "18", "output of channel mixing", "zeros"),
)
#: the block's per-channel vectors and its matrices, in table order (the engine's layout)
VECTORS = tuple(p.name for p in BLOCK if p.shape == ("C",))
MATRICES = tuple(p.name for p in BLOCK if len(p.shape) == 2)


def flat_name(p: Param, layer: int | None = None) -> str:
    """The name in a checkpoint: ln0 is stored inside block 0, block parameters under blocks.{i}."""
    if layer is not None:
        return f"blocks.{layer}.{p.name}"
    return "blocks.0." + p.name if p.name.startswith("ln0.") else p.name


def params_of(n_layer: int):
    """(flat name, Param) of every parameter of an n_layer model, in the order of the network."""
    yield from ((flat_name(p), p) for p in TOP[:3])
    for i in range(n_layer):
        yield from ((flat_name(p, i), p) for p in BLOCK)
    yield from ((flat_name(p), p) for p in TOP[3:])


def shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a checkpoint of this config, flat name -> shape (vectors as (C,))."""
    dims = (config.n_embd, config.ffn_dim, config.vocab_size)
    return {name: p.dims(*dims) for name, p in params_of(config.n_layer)}


def n_params(config) -> int:
    return sum(int(np.prod(s)) for s in shapes(config).values())


def nest(flat: dict, n_layer: int, eps: float) -> dict:
    """Flat checkpoint names -> the nested dict of rwkv_np.reference:
    {"emb", "ln0": {weight, bias, eps}, "blocks": [{"ln1", "att": {time_mix_k, ..., key, ...}, "ln2", "ffn"}],
    "ln_out", "head"}. Arrays are not copied; each LayerNorm's dict also carries its eps."""
    def put(tree: dict, path: tuple[str, ...], value) -> None:
        for key in path[:-1]:
            tree = tree.setdefault(key, {"eps": eps} if key.startswith("ln") else {})
        tree[path[-1]] = value

    params: dict = {"blocks": [{} for _ in range(n_layer)]}
    for p in TOP:
        put(params, p.path, flat[flat_name(p)])
    for i, block in enumerate(params["blocks"]):
        for p in BLOCK:
            put(block, p.path, flat[flat_name(p, i)])
    return params


def flatten(params: dict) -> dict:
    """The inverse of `nest`: nested params -> flat checkpoint names (same arrays)."""
    def get(tree: dict, path: tuple[str, ...]):
        for key in path:
            tree = tree[key]
        return tree

    flat = {flat_name(p): get(params, p.path) for p in TOP}
    for i, block in enumerate(params["blocks"]):
        flat.update({flat_name(p, i): get(block, p.path) for p in BLOCK})
    return flat


def config_from_weights(weights: dict, layer_norm_eps: float = 1e-5):
    """The RWKVConfig of a complete flat weights dict (n_layer = number of blocks present)."""
    from .config import RWKVConfig

    vocab_size, n_embd = weights["emb.weight"].shape
    n_layer = sum(1 for k in weights if k.startswith("blocks.") and k.endswith(".ln1.weight"))
    return RWKVConfig(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size,
                      ffn_dim=weights["blocks.0.ffn.key.weight"].shape[0], layer_norm_eps=layer_norm_eps)


def random_weights(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights of the right scale for each role (tests and benchmarks): a stored
    checkpoint's raw values (time_decay = ln w, time_mix as (C,))."""
    rng = np.random.default_rng(seed)
    C = config.n_embd
    out = {}
    for name, p in params_of(config.n_layer):
        shape = p.dims(C, config.ffn_dim, config.vocab_size)
        if p.init == "ones":
            a = 1 + rng.normal(0, 0.1, shape)
        elif p.init == "zeros" and len(shape) == 1:
            a = rng.normal(0, 0.1, shape)
        elif p.init.startswith("mix"):
            a = rng.uniform(0, 1, shape)
        elif p.init == "decay":
            a = rng.uniform(-6, 2, shape)  # w from e^-6 (long memory) to e^2 (only the last token)
        elif p.init == "bonus":
            a = rng.uniform(-1, 1.5, shape)
        else:  # a matrix: unit-variance outputs for unit-variance inputs
            a = rng.normal(0, shape[1] ** -0.5, shape)
        out[name] = a.astype(np.float32)
    return out
