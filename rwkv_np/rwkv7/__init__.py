"""RWKV-7 "Goose", arXiv 2503.14456 section 4: RWKV-6 with the state updated by a delta rule.

    reference.py  the network in plain NumPy, both forms (read rwkv_np/rwkv6/reference.py first)
    params.py     the table of every parameter
    kernels.py    the same arithmetic compiled with Numba
    engine.py     the weights laid out for the kernels, and both forms run with them (rwkv_np.RWKV)
"""

from .params import ARCH

__all__ = ["ARCH"]
