"""Exercise 2 (notebooks/exercises/02_wkv_naive.ipynb): eq. 14 as written, O(T^2), from an empty past.

wkv_naive(w (C,), u (C,), k (T, C), v (T, C)) -> wkv (T, C), an array of the inputs' dtype (float64 here).
"""

import numpy as np

from .data import reference_wkv, wkv_inputs
from .harness import Case, Exercise, Mistake, check
from .wkv_mistakes import NAMES


def naive_variant(mistake):
    """wkv_naive with one mistake, written as a learner writes eq. 14: two sums per output."""
    def wkv_naive(w, u, k, v):
        out = np.empty_like(k)
        for t in range(len(k)):
            now = np.exp((0 if mistake in ("no_bonus", "bonus_on_past") else u) + k[t])
            num, den = (0 * v[t], 0 * v[t]) if mistake == "no_current" else (now * v[t], now)
            for i in range(t - 1 if mistake == "skip_latest" else t):
                dist = {"decayed_once_too_often": t - i, "decay_from_start": i}.get(mistake, t - 1 - i)
                sign = {"decay_sign": 1, "no_decay": 0}.get(mistake, -1)
                ki = k[t] if mistake == "key_of_current" else k[i]
                vi = v[t] if mistake == "value_of_current" else v[i]
                e = np.exp(sign * dist * w + ki + (u if mistake == "bonus_on_past" else 0))
                if mistake == "w_as_factor":
                    e = w ** dist * np.exp(ki)
                num, den = num + e * vi, den + e
            out[t] = num if mistake == "no_denominator" else num / den
        return out
    return wkv_naive


def _named(key, variant_key=None):
    return Mistake(*NAMES[key], variant=naive_variant(variant_key or key))


def _no_current(case, answer):
    """nan at t = 0 (0/0: the past is empty and the current token left out), the past-only average after."""
    wrong = naive_variant("no_current")(*case.args)
    return bool(np.isnan(answer[0]).all() and np.allclose(answer[1:], wrong[1:], rtol=1e-9, atol=1e-12))


NO_CURRENT = Mistake("the current token left out of the sums (0/0 at t = 0)",
                     "both sums of eq. 14 include the current token t with weight e^{u + k_t}: at t = 0 it is the "
                     "only term, so wkv_0 = v_0.", detect=lambda case, answer: _no_current(case, answer))


def on_raise(case, exc):
    # a division by zero: both sums empty, which only the current token's term prevents (at t = 0)
    return NO_CURRENT if isinstance(exc, ZeroDivisionError) else None


MISTAKES = [
    _named("decayed_once_too_often"),
    _named("bonus_on_past"),
    _named("no_bonus"),
    _named("decay_sign"),
    _named("no_decay"),
    _named("w_as_factor"),
    Mistake("the latest past token (i = t-1) left out of the sums",
            "the past is every i < t: range(t), which includes i = t-1 (the latest past token, weight e^{k_{t-1}}).",
            naive_variant("skip_latest")),
    Mistake("the past weighted by the current key k_t instead of k_i",
            "each past token i has its own key: e^{-(t-1-i)w + k_i}.", naive_variant("key_of_current")),
    Mistake("the past's values v_t instead of v_i",
            "each past token contributes its own value: e^{...} v_i.", naive_variant("value_of_current")),
    Mistake("the decay counted from the start (e^{-iw}) instead of back from t (e^{-(t-1-i)w})",
            "the decay measures how far token i is behind the current one: t-1-i steps, so the newest past "
            "token is weighted most.", naive_variant("decay_from_start")),
    NO_CURRENT,
    Mistake("the denominator missing", "eq. 14 is a weighted average: divide the weighted sum of the v_i by the "
                                       "sum of the same weights.", naive_variant("no_denominator")),
]


def _reference(w, u, k, v):
    return reference_wkv(w, u, k, v)[0]


def cases():
    return [Case("random, T = 6, C = 4, float64", wkv_inputs(10, 6, 4)),
            Case("T = 1", wkv_inputs(11, 1, 3)),
            Case("u very negative (u = -30: the current token's own weight ~ 0)", wkv_inputs(12, 5, 3, u=-30.0)),
            Case("keys of about +-10, T = 8", wkv_inputs(13, 8, 2, k_scale=10.0))]


WKV_NAIVE = Exercise(
    "wkv_naive", "02_wkv_naive", _reference, cases, returns="wkv",
    rtol=1e-9, atol=1e-12,  # float64 throughout: a correct sum in another order differs by ~T * 1e-16 relative
    mistakes=MISTAKES, on_raise=on_raise,
    overflow_hint="the keys here are moderate (|k| < 40), so no correct e^x overflows float64: an inf or nan "
                  "means a 0/0 (a sum with no terms) or an exponent that grows with t (the decay's sign?).")


def check_wkv_naive(wkv_naive, time_limit=None):
    """wkv_naive(w (C,), u (C,), k (T, C), v (T, C)) -> wkv (T, C): eq. 14 as written, empty past."""
    return check(WKV_NAIVE, wkv_naive, time_limit)
