"""RWKV-6 "Finch", arXiv 2404.05892 section 5: RWKV-5.2 with data-dependent token shift and decay.

    reference.py  the network in plain NumPy, both forms (read rwkv_np/rwkv5/reference.py first)
    params.py     the table of every parameter
    kernels.py    the recurrent form compiled with Numba (the parallel form's scan is RWKV-5's)
    engine.py     the weights laid out for the kernels, and both forms run with them (rwkv_np.RWKV)
"""

from .params import ARCH

__all__ = ["ARCH"]
