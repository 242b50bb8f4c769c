"""RWKV-4, the architecture of "RWKV: Reinventing RNNs for the Transformer Era" (arXiv 2305.13048).

    reference.py  the whole network in plain NumPy, both forms: read this first
    params.py     the table of every parameter (name, shape, paper symbol, equation, init)
    eq14.py       eq. 14 as the paper writes it, O(T^2): the oracle, and the attention it implies
    kernels.py    the same arithmetic compiled with Numba, fused per token (recurrent) or per layer
    engine.py     the weights laid out for the kernels, and both forms run with them (rwkv_np.RWKV)
"""

from .params import ARCH

__all__ = ["ARCH"]
