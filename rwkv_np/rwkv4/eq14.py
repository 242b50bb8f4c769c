"""Eq. 14 as the paper writes it, O(T^2): the test oracle, and the attention it implies.

    wkv_t = ( sum_{i<t} e^{-(t-1-i) w + k_i} v_i  +  e^{u + k_t} v_t )
            / ( sum_{i<t} e^{-(t-1-i) w + k_i}      +  e^{u + k_t} )

w (C,) > 0 is the decay rate (w = e^time_decay), u (C,) the bonus of the current token, k, v (T, C);
every channel has its own weights over the past. The network computes this sum as a recurrence
(`wkv` in rwkv_np/rwkv4/reference.py, compiled as `wkv_step` in kernels.py); this file keeps the
formula itself, to test the recurrence against and to draw the weights it gives each past token, and
two ways to compute it *in parallel over time*, the paper's "parallelisable training" made concrete:

    wkv_scan     an associative scan (Hillis-Steele): log2(T) passes, each over all T tokens at once
    wkv_chunked  chunks of L tokens: within a chunk a (L, L) weight matrix per channel, all chunks at
                 once; between chunks a recurrence over T / L chunk summaries

Both take and return what reference.wkv does (the state before and after, as aa, bb, pp) and keep
every exponential relative to a running maximum, so they never overflow either.
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


# ------------------------------------------------------------------------- parallel over time
#
# The state after token t is a_t = e^{-w} a_{t-1} + e^{k_t} v_t (and b_t likewise with v = 1): an
# affine map of the state before. Maps of this form compose into one of the same form: "decay by D,
# then add c" after "decay by D', then add c'" is "decay by D + D', then add e^{-D} c' + c". That
# composition is associative, so the prefix maps (the state after every t) can be combined in any
# grouping: in log2(T) parallel passes (a scan), or chunk by chunk. Here a map is kept as (n, p, A, B):
# decay n w (n tokens' worth), contribution A e^p to a and B e^p to b.

def _fold(aa, bb, pp, n, w, p, A, B):
    """The state (aa, bb, pp) decayed by n w, plus the contribution (A, B) e^p, keeping the larger
    exponent apart (reference.wkv's arithmetic): returns the new (aa, bb, pp)."""
    q = np.maximum(pp - n * w, p)
    e_old, e_new = np.exp(pp - n * w - q), np.exp(p - q)
    return e_old * aa + e_new * A, e_old * bb + e_new * B, q


def _read(u, k, v, aa, bb, pp):
    """wkv_t from the state before token t (aa, bb, pp) and the current token (eq. 14's output line)."""
    q = np.maximum(pp, u + k)
    e_past, e_now = np.exp(pp - q), np.exp(u + k - q)
    return (e_past * aa + e_now * v) / (e_past * bb + e_now)


def wkv_scan(w, u, k, v, aa, bb, pp):
    """Eq. 14 over k, v (T, C) after the state (aa, bb, pp) (C,), as an associative scan: the state
    after every token from log2(T) passes of Hillis and Steele's prefix scan, each pass one vectorised
    composition over all T tokens; then every output at once. O(T log T C) work, log2(T) sequential
    steps (the recurrence: T). Returns (wkv (T, C), (aa, bb, pp) after the last token), as
    reference.wkv does, to float rounding."""
    T = len(k)
    n = np.ones((T, 1), k.dtype)  # tokens spanned by each map
    p, A, B = k.copy(), v.copy(), np.ones_like(k)  # token t alone: decay w, contribution e^{k_t} (v_t, 1)
    step = 1
    while step < T:  # after this pass, map t spans tokens max(0, t - 2 step + 1) .. t
        # map t = (map t - step) then (map t): the earlier one decays by map t's span
        A2, B2, p2 = _fold(A[:-step], B[:-step], p[:-step], n[step:], w, p[step:], A[step:], B[step:])
        n = np.concatenate([n[:step], n[:-step] + n[step:]])
        p, A, B = (np.concatenate([x[:step], y]) for x, y in ((p, p2), (A, A2), (B, B2)))
        step *= 2
    after = _fold(aa, bb, pp, n, w, p, A, B)  # (T, C) each: the state after every token t
    before = [np.concatenate([s0[None], s[:-1]]) for s0, s in zip((aa, bb, pp), after)]
    return _read(u, k, v, *before), tuple(s[-1] for s in after)


def wkv_chunked(w, u, k, v, aa, bb, pp, chunk: int = 32):
    """Eq. 14 over k, v (T, C) after the state (aa, bb, pp) (C,), chunk by chunk: inside every chunk
    of `chunk` tokens, eq. 14 as a (chunk, chunk) matrix of weights per channel (all chunks at once);
    the past before each chunk from a recurrence over the chunks' summaries (T / chunk sequential
    steps). O(T chunk C) work. Returns (wkv (T, C), (aa, bb, pp) after the last token), as
    reference.wkv does, to float rounding."""
    T, C = k.shape
    n_chunks = -(-T // chunk)
    pad = n_chunks * chunk - T  # the last chunk padded with keys of -inf: weight exactly 0
    kc = np.concatenate([k, np.full((pad, C), -np.inf, k.dtype)]).reshape(n_chunks, chunk, C)
    vc = np.concatenate([v, np.zeros((pad, C), v.dtype)]).reshape(n_chunks, chunk, C)
    t = np.arange(chunk)
    gap = (t[:, None] - 1 - t[None, :]).astype(k.dtype)  # (chunk, chunk): t - 1 - i
    # within each chunk: x[j, t, i, c], the exponent of token i's weight in output t (i < t), u + k_t on
    # the diagonal, -inf above it
    x = np.where((t[:, None] > t[None, :])[..., None], -gap[..., None] * w + kc[:, None], -np.inf)
    x = np.where((t[:, None] == t[None, :])[..., None], (u + kc)[:, :, None], x)
    # each chunk's own contribution to the state after it: tokens i decayed by chunk - 1 - i
    ends = -(chunk - 1 - t)[:, None].astype(k.dtype) * w + kc  # (n_chunks, chunk, C)
    p_end = ends.max(1)
    e_end = np.exp(ends - p_end[:, None])
    A_end, B_end = (e_end * vc).sum(1), e_end.sum(1)
    # the recurrence over chunks: the state before chunk j (sequential, T / chunk steps)
    starts = []
    for j in range(n_chunks):
        starts.append((aa, bb, pp))
        aa, bb, pp = _fold(aa, bb, pp, chunk, w, p_end[j], A_end[j], B_end[j])
    s_aa, s_bb, s_pp = (np.stack(z) for z in zip(*starts))  # (n_chunks, C)
    # output t of chunk j: the state before the chunk decayed by t steps, and the chunk's own tokens
    carried = s_pp[:, None] - t[:, None].astype(k.dtype) * w  # (n_chunks, chunk, C)
    top = np.maximum(carried, x.max(2))
    e_in, e_carried = np.exp(x - top[:, :, None]), np.exp(carried - top)
    num = e_carried * s_aa[:, None] + (e_in * vc[:, None]).sum(2)
    den = e_carried * s_bb[:, None] + e_in.sum(2)
    out = (num / den).reshape(-1, C)[:T]
    if pad:  # the padding's -inf keys gave the state a spurious exponent: recompute the last fold
        aa, bb, pp = _fold(*starts[-1], chunk - pad, w, *_tail(kc[-1, :chunk - pad], vc[-1, :chunk - pad], w))
    return out, (aa, bb, pp)


def _tail(k, v, w):
    """The contribution (p, A, B) of tokens k, v (n, C) to the state after the last of them."""
    ends = -(len(k) - 1 - np.arange(len(k)))[:, None].astype(k.dtype) * w + k
    p = ends.max(0)
    e = np.exp(ends - p)
    return p, (e * v).sum(0), e.sum(0)
