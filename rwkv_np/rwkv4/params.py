"""Every parameter of RWKV-4, in one table, and what derives from it.

Each row: the name a BlinkDL checkpoint uses (inside `blocks.{i}.` for block parameters), the shape in
terms of C (channels, n_embd), F (channel mixing's hidden width, ffn_dim) and V (vocabulary), the
paper's symbol, the equation of arXiv 2305.13048v1 it enters, what it does, and how
`rwkv_np.training` initialises it.

One decay convention inside the library: `att.time_decay` holds ln w, as BlinkDL's and Hugging
Face's checkpoints store it (w = e^time_decay > 0 is eq. 14's decay rate); the rwkv.cpp reader
converts its files' -w. rwkv_np/rwkv4/reference.py applies w = exp(time_decay) where eq. 14 uses it.

Derived from the table (through rwkv_np.architecture): the shapes the loader checks, the parameter
count, the nested params dict of the reference; here: the engine's per-layer vector table
(`VECTORS`, `MATRICES`) and the random weights of the tests and benchmarks (`random_weights`).
"""

from __future__ import annotations

import numpy as np

from ..architecture import Architecture, Param, common_dims
from ..errors import CheckpointError

#: before the blocks (ln0 is stored inside block 0), in the order the network uses them
EMBED = (
    Param("emb.weight", ("V", "C"), "emb", "-", "token embedding: row n is the vector of token n", "embedding"),
    Param("ln0.weight", ("C",), "gamma_0", "-", "LayerNorm of the embedding, before block 0: scale", "ones"),
    Param("ln0.bias", ("C",), "beta_0", "-", "LayerNorm of the embedding: shift", "zeros"),
)
#: each block's, in the order the block uses them
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
#: after the blocks
OUT = (
    Param("ln_out.weight", ("C",), "gamma_out", "-", "LayerNorm before the head: scale", "ones"),
    Param("ln_out.bias", ("C",), "beta_out", "-", "LayerNorm before the head: shift", "zeros"),
    Param("head.weight", ("V", "C"), "W_head", "-", "logits = W_head LN(x)", "head"),
)
#: the block's per-channel vectors and its matrices, in table order (the engine's layout)
VECTORS = tuple(p.name for p in BLOCK if p.shape == ("C",))
MATRICES = tuple(p.name for p in BLOCK if len(p.shape) == 2)


def read_dims(shapes, where: str, original) -> dict[str, int]:
    """V, C, L, F of an RWKV-4 checkpoint ({name: shape}), read off emb.weight and ffn.key.weight."""
    return common_dims(shapes, where, original, "RWKV-4")


def validate(weights, where: str, original) -> None:
    """The decay rate w = e^time_decay must be a float32 number: the engine computes it once."""
    for name, a in weights.items():
        if name.endswith("att.time_decay"):
            with np.errstate(over="ignore"):
                w = np.exp(np.asarray(a, np.float64)).astype(np.float32)
            if not np.isfinite(w).all():
                raise CheckpointError(f"{where}: tensor {original.get(name, name)} gives a decay rate "
                                      "w = exp(time_decay) that overflows float32")


def random_weights(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights of the right scale for each role (tests and benchmarks): a stored
    checkpoint's raw values (time_decay = ln w, time_mix as (C,))."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, p, _ in ARCH.params_of(config.n_layer):
        shape = p.size(config.dims)
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


ARCH = Architecture(
    name="4", title="RWKV-4", embed=EMBED, block=BLOCK, out=OUT, read_dims=read_dims,
    reference="rwkv_np.rwkv4.reference", engine="rwkv_np.rwkv4.engine",
    marker=None,  # the architecture of a checkpoint without any later one's marker
    priority=0, state_rows=5, matrix_state=False, quantizable=True, validate=validate)
