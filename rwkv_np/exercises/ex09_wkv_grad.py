"""Exercise 9 (notebooks/exercises/09_wkv_grad.ipynb): the gradient of eq. 14, from an empty past.

wkv_grad(w, u, k, v, gy) -> (gw (C,), gu (C,), gk (T, C), gv (T, C)): the gradient of L = sum(gy * wkv),
float64 arrays (the inputs' dtype), as a tuple. The expected values are the trainer's
(rwkv_np.training.wkv_grad.wkv_backward, its O(T) backward scans).
"""

import numpy as np

from .data import rng, wkv_inputs
from .harness import Case, Exercise, Mistake, check


def _reference(w, u, k, v, gy):
    from ..training.wkv_grad import wkv_backward, wkv_forward

    y, saves = wkv_forward(w, u, k[:, None], v[:, None])  # the trainer's kernels take (T, B, C)
    gw, gu, gk, gv = wkv_backward(w, u, k[:, None], v[:, None], y, saves, gy[:, None])
    return gw, gu, gk[:, 0], gv[:, 0]


def grad_variant(mistake=None):
    """wkv_grad from the weights of eq. 14 read as a softmax (the notebook's derivation), with one mistake."""
    def wkv_grad(w, u, k, v, gy):
        T, C = k.shape
        gw, gu = np.zeros(C), np.zeros(C)
        gk, gv = np.zeros((T, C)), np.zeros((T, C))
        for t in range(T):
            dist = np.arange(t - 1, -1, -1)[:, None]  # t-1-i for i < t
            x = np.concatenate([-dist * w + k[:t], (u + k[t])[None]])  # (t + 1, C)
            P = np.exp(x - x.max(0))
            if mistake != "p_not_normalised":
                P = P / P.sum(0)
            y = (P * v[:t + 1]).sum(0)
            g = 1.0 if mistake == "gy_missing" else gy[t]
            R = g * P * (v[:t + 1] - y)
            dv, dk = g * P, R.copy()
            if mistake == "gv_no_current":
                dv[t] = 0
            if mistake == "gk_no_current":
                dk[t] = 0
            if mistake == "overwritten":
                gk[:t + 1], gv[:t + 1] = dk, dv
            else:
                gk[:t + 1] += dk
                gv[:t + 1] += dv
            du = R.sum(0) if mistake == "gu_all_terms" else R[t]
            gu = du if mistake == "gu_last_t" else gu + du
            d = dist + 1 if mistake == "gw_distance" else dist
            dw = -(d * R[:t]).sum(0)
            if mistake == "gw_sign":
                dw = -dw
            gw = gw + dw
        if mistake == "gw_for_ln_w":
            gw = gw * w
        return gw, gu, gk, gv
    return wkv_grad


_HINT_GU = "u is one number per channel, used at every t: its gradient is the sum over t of R_{t,t}, shape (C,)."
GU_NOT_SUMMED = ("gu not summed over t", _HINT_GU)
MISTAKES_BY_KEY = {
    "gw_for_ln_w": ("the gradient with respect to time_decay (ln w) instead of w",
                    "the function takes w itself: dL/dw. (d/d ln w = w dL/dw is what a trainer needs; it is the "
                    "chain rule applied after.)"),
    "gw_sign": ("the sign of gw flipped",
                "x_{t,i} = -(t-1-i) w + k_i: dx/dw = -(t-1-i), so each R_{t,i} enters dL/dw with a minus sign "
                "(a larger w forgets faster)."),
    "gw_distance": ("the latest past token decayed once too often in gw (distance t-i instead of t-1-i)",
                    "dx_{t,i}/dw = -(t-1-i): 0 for the latest past token (i = t-1), and the current token's "
                    "exponent u + k_t has no w at all (summing i <= t with t-1-i = -1 there gives these same "
                    "numbers, since the R_{t,i} of one t add up to 0)."),
    "gu_last_t": GU_NOT_SUMMED,
    "gu_all_terms": ("u counted in every exponent (the sum over all i of R_{t,i}, which is 0)",
                     "u appears only in the current token's exponent x_{t,t} = u + k_t: dL/du = sum over t of "
                     "R_{t,t}. (Summed over all i, R_{t,i} always adds up to 0: a softmax average does not move "
                     "when every exponent does.)"),
    "gk_no_current": ("gk missing the current token's term",
                      "k_t enters wkv_t too, through x_{t,t} = u + k_t: gk_t includes R_{t,t}."),
    "gv_no_current": ("gv missing the current token's term",
                      "v_t enters wkv_t with weight P_{t,t}: gv_t includes g_t P_{t,t}."),
    "overwritten": ("gk or gv assigned (=) at each t instead of accumulated (+=)",
                    "token i feeds every output t >= i: its gradient is a sum over t, so add each t's terms."),
    "gy_missing": ("the incoming gradient gy left out",
                   "L = sum g_t wkv_t: every term of output t carries its g_t (R_{t,i} = g_t P_{t,i} (v_i - wkv_t), "
                   "dL/dv_i = sum g_t P_{t,i})."),
    "p_not_normalised": ("P not normalised (e^{x - max} without dividing by the sum)",
                         "the weights are a softmax: P_{t,i} = e^{x_{t,i} - m} / sum_j e^{x_{t,j} - m}."),
}
MISTAKES = [Mistake(name, hint, variant=grad_variant(key)) for key, (name, hint) in MISTAKES_BY_KEY.items()]
GU_PER_T = next(m for m in MISTAKES if m.name == GU_NOT_SUMMED[0])


def explain(case, call, args, wrong):
    got, T = wrong.returned, case.args[2].shape[0]
    if isinstance(got, tuple) and len(got) == 4 and isinstance(got[1], np.ndarray) and got[1].shape == case.args[2].shape \
            and T > 1:
        return GU_PER_T, _HINT_GU + " (Yours has one row per t: sum it over t.)"
    return None


def case(name, seed, T, C, k_scale=1.0, u=None, spikes=()):
    w, u, k, v = wkv_inputs(seed, T, C, k_scale=k_scale, u=u)
    for (t, c), value in spikes:
        k[t, c] = value
    gy = rng(seed + 100).normal(0, 1, (T, C))
    return Case(name, (w, u, k, v, gy))


def cases():
    return [case("random, T = 6, C = 3, float64", 70, 6, 3),
            case("T = 1 (no past: gw = 0, and wkv_0 = v_0 whatever k_0 and u)", 71, 1, 3),
            case("keys of about +-10, T = 8", 72, 8, 2, k_scale=10.0),
            case("u very negative (u = -30)", 73, 5, 2, u=-30.0),
            case("keys of 2e4 (e^20000 overflows every float type: a softmax needs its maximum subtracted)", 74, 6, 3,
                 spikes=(((1, 0), 2e4), ((3, 0), 1.99e4), ((3, 1), -2e4), ((4, 2), 1.5e4), ((2, 1), 5.0)))]


WKV_GRAD = Exercise(
    "wkv_grad", "09_wkv_grad", _reference, cases, returns=("gw", "gu", "gk", "gv"),
    # float64, but sums of T terms that cancel (v_i - y_t): 1e-8 relative and absolute is ~1e5 times
    # the rounding of either order of summation
    rtol=1e-8, atol=1e-8, mistakes=MISTAKES, explain=explain,
    overflow_hint="an exponential overflowed: e^x is inf in float64 above x ≈ 709.8 (and in np.longdouble above "
                  "~11356). Compute P as a stable softmax: subtract the largest exponent, x.max(0), before np.exp.")


def check_wkv_grad(wkv_grad, time_limit=None):
    """wkv_grad(w, u, k, v, gy) -> (gw (C,), gu (C,), gk (T, C), gv (T, C)): the gradient of
    L = sum(gy * wkv) for eq. 14 from an empty past, checked against rwkv_np.training.wkv_grad.wkv_backward."""
    return check(WKV_GRAD, wkv_grad, time_limit)
