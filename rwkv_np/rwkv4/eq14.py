"""Eq. 14 as the paper writes it, O(T^2): the test oracle, and the attention it implies.

    wkv_t = ( sum_{i<t} e^{-(t-1-i) w + k_i} v_i  +  e^{u + k_t} v_t )
            / ( sum_{i<t} e^{-(t-1-i) w + k_i}      +  e^{u + k_t} )

w (C,) > 0 is the decay rate (w = e^time_decay), u (C,) the bonus of the current token, k, v (T, C);
every channel has its own weights over the past. The network computes this sum as a recurrence
(`wkv` in rwkv_np/rwkv4/reference.py, compiled as `wkv_step` in kernels.py); this file keeps the
formula itself, to test the recurrence against and to draw the weights it gives each past token.
"""

import numpy as np


def exponents(w: np.ndarray, u: np.ndarray, k: np.ndarray, t: int) -> np.ndarray:
    """The exponents of eq. 14's weights for output t over tokens i = 0..t: (t + 1, C).

    -(t-1-i) w + k_i for the past (the latest past token, i = t-1, is not decayed at all), and
    u + k_t for the current token."""
    distance = np.arange(t - 1, -1, -1, dtype=k.dtype)[:, None]  # (t, 1): t-1-i
    return np.concatenate([-distance * w + k[:t], (u + k[t])[None]])  # (t + 1, C)


def wkv_naive(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Eq. 14 as written, from an empty past: O(T^2 C). w, u (C,); k, v (T, C) -> wkv (T, C).

    The exponentials are taken as they stand, so in float32 they overflow once an exponent passes
    ~88 (float64: ~709): give float64 inputs when this serves as an oracle."""
    out = np.empty_like(k)
    for t in range(len(k)):
        e = np.exp(exponents(w, u, k, t))  # (t + 1, C)
        out[t] = (e * v[:t + 1]).sum(0) / e.sum(0)
    return out


def implied_attention(w: float, u: float, k: np.ndarray) -> np.ndarray:
    """The (T, T) weights eq. 14 gives each output t over the tokens i <= t, for one channel
    (w, u scalars, k (T,)): rows sum to 1, zero above the diagonal, so that
    wkv[:, c] = implied_attention(w[c], u[c], k[:, c]) @ v[:, c]. Float64, stable for any k."""
    k = np.asarray(k, np.float64)[:, None]  # (T, 1)
    w, u = np.float64(w), np.float64(u)
    out = np.zeros((len(k), len(k)))
    for t in range(len(k)):
        x = exponents(w, u, k, t)[:, 0]  # (t + 1,)
        e = np.exp(x - x.max())
        out[t, :t + 1] = e / e.sum()
    return out
