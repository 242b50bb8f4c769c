"""Every parameter of RWKV-5.1 and 5.2 ("Eagle", arXiv 2404.05892 section 4), in one table per version.

Sizes: C channels, A = H N the attention width (H heads of N channels), F channel mixing's width,
V vocabulary. Names, and the values as stored, are BlinkDL's (rwkv.cpp files are converted back by
their reader). What changed from RWKV-4 is time mixing: see reference.py's docstring. The `eq`
column names the quantity a parameter enters, as reference.py writes it; none is trained here.
"""

from __future__ import annotations

from ..architecture import Architecture, Param, common_dims
from ..errors import CheckpointError

EMBED = (
    Param("emb.weight", ("V", "C"), "emb", "x_0", "token embedding"),
    Param("ln0.weight", ("C",), "gamma_0", "x_0", "LayerNorm of the embedding, before block 0: scale"),
    Param("ln0.bias", ("C",), "beta_0", "x_0", "LayerNorm of the embedding: shift"),
)
OUT = (
    Param("ln_out.weight", ("C",), "gamma_out", "logits", "LayerNorm before the head: scale"),
    Param("ln_out.bias", ("C",), "beta_out", "logits", "LayerNorm before the head: shift"),
    Param("head.weight", ("V", "C"), "W_head", "logits", "logits = W_head LN(x)"),
)
NORMS_1 = (
    Param("ln1.weight", ("C",), "gamma_1", "x", "LayerNorm before time mixing: scale"),
    Param("ln1.bias", ("C",), "beta_1", "x", "LayerNorm before time mixing: shift"),
)
PROJECTIONS = (
    Param("att.key.weight", ("A", "C"), "W_k", "k_t", "key, split into H heads"),
    Param("att.value.weight", ("A", "C"), "W_v", "v_t", "value, split into H heads"),
    Param("att.receptance.weight", ("A", "C"), "W_r", "r_t", "receptance: reads the state, y_t = r_t S"),
)
GROUP_NORM = (
    Param("att.ln_x.weight", ("A",), "ln_x", "o_t", "GroupNorm of y per head: scale"),
    Param("att.ln_x.bias", ("A",), "ln_x", "o_t", "GroupNorm of y per head: shift"),
    Param("att.output.weight", ("C", "A"), "W_o", "out", "output of time mixing"),
)
NORMS_2 = (
    Param("ln2.weight", ("C",), "gamma_2", "x", "LayerNorm before channel mixing: scale"),
    Param("ln2.bias", ("C",), "beta_2", "x", "LayerNorm before channel mixing: shift"),
)
FFN = (  # RWKV-4's channel mixing
    Param("ffn.time_mix_k", ("C",), "mu'_k", "k'_t", "token shift: share of x_t in k'_t"),
    Param("ffn.time_mix_r", ("C",), "mu'_r", "r'_t", "token shift: share of x_t in r'_t"),
    Param("ffn.key.weight", ("F", "C"), "W'_k", "k'_t", "key, the hidden layer before max(., 0)^2"),
    Param("ffn.receptance.weight", ("C", "C"), "W'_r", "r'_t", "receptance, the gate of the output"),
    Param("ffn.value.weight", ("C", "F"), "W'_v", "out'", "output of channel mixing"),
)
MIXES = (
    Param("att.time_mix_k", ("C",), "mu_k", "k_t", "token shift: share of x_t (vs x_{t-1}) in k_t"),
    Param("att.time_mix_v", ("C",), "mu_v", "v_t", "token shift: share of x_t in v_t"),
    Param("att.time_mix_r", ("C",), "mu_r", "r_t", "token shift: share of x_t in r_t"),
)
BLOCK_5_1 = NORMS_1 + MIXES + (
    Param("att.time_decay", ("H",), "omega", "w", "decay per head: w = exp(-exp(omega)), in (0, 1)"),
    Param("att.time_first", ("H",), "ln u", "u", "bonus of the current token per head, stored as its log"),
) + PROJECTIONS + GROUP_NORM + NORMS_2 + FFN
BLOCK_5_2 = NORMS_1 + MIXES + (
    Param("att.time_mix_g", ("C",), "mu_g", "g_t", "token shift: share of x_t in the gate g_t"),
    Param("att.time_decay", ("H", "N"), "omega", "w", "decay per key channel: w = exp(-exp(omega))"),
    Param("att.time_faaaa", ("H", "N"), "u", "u", "bonus of the current token per key channel"),
) + PROJECTIONS + (
    Param("att.gate.weight", ("A", "C"), "W_g", "g_t", "gate: o_t = GroupNorm(y_t) * SiLU(g_t)"),
) + GROUP_NORM + NORMS_2 + FFN

# The epsilon of ln_x, the per-head GroupNorm. BlinkDL trains it as GroupNorm(y / 8) with 1e-5, i.e.
# GroupNorm(y) with 64e-5, and his inference code uses 64e-5 for every version; rwkv.cpp uses 1e-5
# for RWKV-5 (its reader says so for its files: rwkv_np/formats/rwkv_cpp.py).
LN_X_EPS = 64e-5


def read_heads(shapes, where: str, title: str, head_tensor: str, per_head: bool = False) -> dict[str, int]:
    """A, H, N: the attention width (att.key.weight's rows) and the head count, read from the first
    axis of `head_tensor` as stored (a single head squeezed away would read as none); per_head: the
    tensor holds one number per head, (H,) or (H, 1, 1)."""
    key = shapes.get("blocks.0.att.key.weight")
    if key is None or not key:
        raise CheckpointError(f"{where}: missing tensor blocks.0.att.key.weight ({title})")
    A = key[0]
    raw = tuple(shapes.get(f"blocks.0.att.{head_tensor}", ()))
    if not raw:
        raise CheckpointError(f"{where}: missing tensor blocks.0.att.{head_tensor} ({title})")
    H = 1
    if per_head:
        for d in raw:
            H *= d
    else:
        H = raw[0] if len(raw) > 1 else 0
    if H < 1 or A % H:
        raise CheckpointError(f"{where}: cannot split the attention width {A} into heads (head count {H} "
                              f"read from blocks.0.att.{head_tensor} of shape {raw})")
    return {"A": A, "H": H, "N": A // H}


def read_dims_5_1(shapes, where: str, original) -> dict[str, int]:
    return common_dims(shapes, where, original, "RWKV-5.1") | read_heads(shapes, where, "RWKV-5.1",
                                                                         "time_decay", per_head=True)


def read_dims_5_2(shapes, where: str, original) -> dict[str, int]:
    return common_dims(shapes, where, original, "RWKV-5.2") | read_heads(shapes, where, "RWKV-5.2", "time_faaaa")


# (The names 5.1 / 5.2 are rwkv.cpp's: 5.1 has no gate, 5.2 has one. The marker of each is a tensor
# of block 0 that the earlier versions lack, the rule of rwkv.cpp's converter.)
ARCH_5_1 = Architecture(
    name="5.1", title="RWKV-5.1", embed=EMBED, block=BLOCK_5_1, out=OUT, read_dims=read_dims_5_1,
    reference="rwkv_np.rwkv5.reference", engine="rwkv_np.rwkv5.engine", marker="blocks.0.att.ln_x.weight",
    priority=51, ln_x_eps=LN_X_EPS)
ARCH_5_2 = Architecture(
    name="5.2", title="RWKV-5.2", embed=EMBED, block=BLOCK_5_2, out=OUT, read_dims=read_dims_5_2,
    reference="rwkv_np.rwkv5.reference", engine="rwkv_np.rwkv5.engine", marker="blocks.0.att.gate.weight",
    priority=52, ln_x_eps=LN_X_EPS)
