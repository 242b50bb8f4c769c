"""RWKV-5 "Eagle" (5.1 and 5.2), arXiv 2404.05892 section 4: RWKV-4 with a matrix-valued state per head.

    reference.py  the network in plain NumPy, both forms (read rwkv_np/rwkv4/reference.py first)
    params.py     the tables of every parameter of 5.1 and 5.2
    kernels.py    the same arithmetic compiled with Numba
    engine.py     the weights laid out for the kernels, and both forms run with them (rwkv_np.RWKV)
"""

from .params import ARCH_5_1, ARCH_5_2

__all__ = ["ARCH_5_1", "ARCH_5_2"]
