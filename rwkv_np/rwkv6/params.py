"""Every parameter of RWKV-6 ("Finch", arXiv 2404.05892 section 5), in one table.

Sizes: C channels, A = H N the attention width, F channel mixing's width, V vocabulary, Dm and Dd the
ranks of the token-shift and decay LoRAs. What changed from RWKV-5.2: see reference.py's docstring.
The `eq` column names the quantity a parameter enters, as reference.py writes it; none is trained here.
"""

from __future__ import annotations

from ..architecture import Architecture, Param, common_dims, squeezed
from ..rwkv5.params import EMBED, GROUP_NORM, NORMS_1, NORMS_2, OUT, PROJECTIONS, LN_X_EPS, read_heads

BLOCK = NORMS_1 + (
    Param("att.time_maa_x", ("C",), "mu_x", "ddlerp", "token shift feeding the LoRA: lerp(x_t, x_{t-1}, mu_x)"),
    Param("att.time_maa_w", ("C",), "lambda_w", "x^w_t", "token shift of the decay's input"),
    Param("att.time_maa_k", ("C",), "lambda_k", "x^k_t", "token shift of k's input"),
    Param("att.time_maa_v", ("C",), "lambda_v", "x^v_t", "token shift of v's input"),
    Param("att.time_maa_r", ("C",), "lambda_r", "x^r_t", "token shift of r's input"),
    Param("att.time_maa_g", ("C",), "lambda_g", "x^g_t", "token shift of the gate's input"),
    Param("att.time_maa_w1", ("C", "5*Dm"), "A", "ddlerp", "the five token-shift LoRAs' shared first matrix"),
    Param("att.time_maa_w2", (5, "Dm", "C"), "B_w..B_g", "ddlerp", "their second matrices, one per input"),
    Param("att.time_decay", ("A",), "omega", "d_t", "the decay's offset: d_t = omega + LoRA_d(x^w_t)"),
    Param("att.time_decay_w1", ("C", "Dd"), "A_d", "d_t", "the decay LoRA's first matrix"),
    Param("att.time_decay_w2", ("Dd", "A"), "B_d", "d_t", "the decay LoRA's second matrix"),
    Param("att.time_faaaa", ("H", "N"), "u", "u", "bonus of the current token per key channel"),
) + PROJECTIONS + (
    Param("att.gate.weight", ("A", "C"), "W_g", "g_t", "gate: o_t = GroupNorm(y_t) * SiLU(g_t)"),
) + GROUP_NORM + NORMS_2 + (
    Param("ffn.time_maa_k", ("C",), "mu'_k", "k'_t", "token shift: share of x_{t-1} in k'_t (lerp)"),
    Param("ffn.time_maa_r", ("C",), "mu'_r", "r'_t", "token shift: share of x_{t-1} in r'_t (lerp)"),
    Param("ffn.key.weight", ("F", "C"), "W'_k", "k'_t", "key, the hidden layer before max(., 0)^2"),
    Param("ffn.receptance.weight", ("C", "C"), "W'_r", "r'_t", "receptance, the gate of the output"),
    Param("ffn.value.weight", ("C", "F"), "W'_v", "out'", "output of channel mixing"),
)


def read_dims(shapes, where: str, original) -> dict[str, int]:
    d = common_dims(shapes, where, original, "RWKV-6") | read_heads(shapes, where, "RWKV-6", "time_faaaa")
    d["Dm"] = squeezed(shapes, "blocks.0.att.time_maa_w1", where, "RWKV-6")[-1] // 5
    d["Dd"] = squeezed(shapes, "blocks.0.att.time_decay_w1", where, "RWKV-6")[-1]
    return d


ARCH = Architecture(
    name="6", title="RWKV-6", embed=EMBED, block=BLOCK, out=OUT, read_dims=read_dims,
    reference="rwkv_np.rwkv6.reference", engine="rwkv_np.rwkv6.engine", marker="blocks.0.att.time_maa_x",
    priority=60, lora=("Dm", "Dd"), ln_x_eps=LN_X_EPS)
