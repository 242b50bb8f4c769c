"""Fresh parameters for training, derived from rwkv_np/rwkv4/params.py's table: each Param names its rule in
`Param.init`, and each rule is described once, below, where it is implemented. The rules follow how
BlinkDL's RWKV-4 trainer (RWKV-v4neo) initialises a model.
"""

from __future__ import annotations

import math

import numpy as np

from ..rwkv4 import ARCH

VOCAB = 256  # the trainer's models read bytes


def _orthogonal(rng: np.random.Generator, rows: int, cols: int, gain: float) -> np.ndarray:
    """Like torch.nn.init.orthogonal_: a (rows, cols) matrix with orthonormal rows or columns, times gain."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return gain * (q if rows >= cols else q.T)


def _rule(rule: str, shape: tuple[int, ...], layer: int, n_layer: int, rng: np.random.Generator) -> np.ndarray:
    """The initial value (float64) of one parameter of block `layer` (0 outside the blocks)."""
    C = shape[-1]
    ramp = np.arange(C) / C  # 0 .. (C-1)/C across channels
    depth01 = layer / (n_layer - 1) if n_layer > 1 else 0.0  # 0 at the first block .. 1 at the last
    shallow = 1.0 - layer / n_layer  # 1 at the first block .. 1/L at the last
    if rule == "ones":
        return np.ones(shape)
    if rule == "zeros":  # the projections that write into the residual stream (att.output, ffn.value)
        return np.zeros(shape)  # and the ffn gate start at zero, so every block starts as the identity
    if rule == "embedding":  # tiny: ln0 rescales it anyway, and a small start keeps early updates sane
        return rng.uniform(-1e-4, 1e-4, shape)
    if rule == "head":  # orthogonal, gain 0.5 sqrt(V/C) when V > C
        V = shape[0]
        return _orthogonal(rng, V, C, 0.5 * math.sqrt(V / C) if V > C else 0.5)
    # token shift, how much of the current token to take: ramps over channels, more of the previous
    # token in shallow blocks; v gets +0.3 depth so that deep blocks lean on the current token
    if rule == "mix_k":
        return ramp ** shallow
    if rule == "mix_v":
        return ramp ** shallow + 0.3 * depth01
    if rule == "mix_r":
        return ramp ** (0.5 * shallow)
    if rule == "decay":  # ln w spread over channels from -5 (w = e^-5, long memory) to +3 (w = e^3,
        # only the last token), the curve bending towards slower decay in deeper blocks
        return -5 + 8 * (np.arange(C) / max(C - 1, 1)) ** (0.7 + 1.3 * depth01)
    if rule == "bonus":  # u: ln 0.3 with a zigzag of -0.5, 0, +0.5 across channels
        return math.log(0.3) + 0.5 * ((np.arange(C) + 1) % 3 - 1)
    if rule == "orthogonal":  # gain sqrt(out/in) when out > in (ffn.key), else 1
        rows, cols = shape
        return _orthogonal(rng, rows, cols, math.sqrt(rows / cols) if rows > cols else 1.0)
    if rule == "orthogonal_0.1":  # time mixing's key: small, so that early keys keep eq. 14 smooth
        return _orthogonal(rng, *shape, 0.1)
    raise ValueError(f"the parameter table names an unknown init rule {rule!r}")


def init_params(n_layer: int, n_embd: int, seed: int = 0, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    """Fresh float32 parameters under checkpoint names, in the order of ARCH.params_of (which is also
    the order the random rules draw from the generator)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, p, layer in ARCH.params_of(n_layer):
        layer = layer or 0
        shape = p.size({"C": n_embd, "F": 4 * n_embd, "V": vocab})
        params[name] = np.ascontiguousarray(_rule(p.init, shape, layer, n_layer, rng), dtype=np.float32)
    return params
