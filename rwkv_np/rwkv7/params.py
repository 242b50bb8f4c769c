"""Every parameter of RWKV-7 ("Goose", arXiv 2503.14456 section 4), in one table.

Sizes: C channels, A = H N the attention width, F channel mixing's width, V vocabulary, and the ranks
of the LoRAs: Dw (decay), Da (in-context rate), Dv (value residual), Dg (gate). Block 0 has no value
residual (it supplies v_first). What changed from RWKV-6: see reference.py's docstring. The `eq`
column names the quantity a parameter enters, as reference.py writes it; none is trained here.
"""

from __future__ import annotations

from ..architecture import Architecture, Param, common_dims, squeezed
from ..rwkv5.params import EMBED, GROUP_NORM, NORMS_1, NORMS_2, OUT, PROJECTIONS, LN_X_EPS, read_heads

BLOCK = NORMS_1 + (
    Param("att.x_r", ("C",), "mu_r", "x^r_t", "token shift of r's input: lerp(x_t, x_{t-1}, mu_r)"),
    Param("att.x_w", ("C",), "mu_d", "x^d_t", "token shift of the decay's input"),
    Param("att.x_k", ("C",), "mu_k", "x^k_t", "token shift of k's input"),
    Param("att.x_v", ("C",), "mu_v", "x^v_t", "token shift of v's input"),
    Param("att.x_a", ("C",), "mu_a", "x^a_t", "token shift of the in-context rate's input"),
    Param("att.x_g", ("C",), "mu_g", "x^g_t", "token shift of the gate's input"),
    Param("att.w0", ("A",), "w0", "w_t", "the decay's offset: w_t = exp(-e^-0.5 sigmoid(w0 + LoRA_w))"),
    Param("att.w1", ("C", "Dw"), "A_w", "w_t", "the decay LoRA's first matrix (tanh after it)"),
    Param("att.w2", ("Dw", "A"), "B_w", "w_t", "the decay LoRA's second matrix"),
    Param("att.a0", ("A",), "a0", "a_t", "the in-context rate's offset: a_t = sigmoid(a0 + LoRA_a)"),
    Param("att.a1", ("C", "Da"), "A_a", "a_t", "the in-context rate LoRA's first matrix"),
    Param("att.a2", ("Da", "A"), "B_a", "a_t", "the in-context rate LoRA's second matrix"),
    Param("att.v0", ("A",), "v0", "nu_t", "value residual's offset: nu_t = sigmoid(v0 + LoRA_v)",
          first_block=False),
    Param("att.v1", ("C", "Dv"), "A_v", "nu_t", "the value residual LoRA's first matrix", first_block=False),
    Param("att.v2", ("Dv", "A"), "B_v", "nu_t", "the value residual LoRA's second matrix", first_block=False),
    Param("att.g1", ("C", "Dg"), "A_g", "g_t", "the gate LoRA's first matrix (sigmoid after it)"),
    Param("att.g2", ("Dg", "A"), "B_g", "g_t", "the gate LoRA's second matrix"),
    Param("att.k_k", ("A",), "xi", "kappa_t", "removal key kappa_t = k_t * xi, normalised per head"),
    Param("att.k_a", ("A",), "alpha", "k~_t", "replacement key k~_t = k_t * lerp(1, a_t, alpha)"),
    Param("att.r_k", ("H", "N"), "rho", "bonus", "the current token's term (r_t . (rho * k~_t)) v_t"),
) + PROJECTIONS + GROUP_NORM + NORMS_2 + (
    Param("ffn.x_k", ("C",), "mu'_k", "k'_t", "token shift: share of x_{t-1} in k'_t (lerp)"),
    Param("ffn.key.weight", ("F", "C"), "W'_k", "k'_t", "key, the hidden layer before max(., 0)^2"),
    Param("ffn.value.weight", ("C", "F"), "W'_v", "out'", "output of channel mixing (no receptance)"),
)


def read_dims(shapes, where: str, original) -> dict[str, int]:
    d = common_dims(shapes, where, original, "RWKV-7") | read_heads(shapes, where, "RWKV-7", "r_k")
    for lora in "wagv":
        layer = 1 if lora == "v" else 0  # block 0 has no value-residual LoRA
        if d["L"] > layer:
            d["D" + lora] = squeezed(shapes, f"blocks.{layer}.att.{lora}1", where, "RWKV-7")[-1]
    return d


ARCH = Architecture(
    name="7", title="RWKV-7", embed=EMBED, block=BLOCK, out=OUT, read_dims=read_dims,
    reference="rwkv_np.rwkv7.reference", engine="rwkv_np.rwkv7.engine", marker="blocks.0.att.k_k",
    priority=70, lora=("Dw", "Da", "Dv", "Dg"), ln_x_eps=LN_X_EPS)
