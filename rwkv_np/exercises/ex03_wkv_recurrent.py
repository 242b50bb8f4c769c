"""Exercise 3 (notebooks/exercises/03_wkv_recurrent.ipynb): eq. 14 as a recurrence over the two sums.

wkv_recurrent(w, u, k, v, a, b) -> (wkv (T, C), a, b): a, b (C,) the sums over the past before the call
and after its last token; arrays of the inputs' dtype (float64 here), returned as a tuple.
"""

import numpy as np

from ..rwkv4 import reference
from .data import rng, wkv_inputs
from .harness import Case, Exercise, check
from .wkv_mistakes import mistake, scan, to_plain, to_stable


def _reference(w, u, k, v, a, b):
    """reference.wkv, its state given and returned as the plain sums a = aa e^pp, b = bb e^pp."""
    aa, bb, pp = to_stable(a, b)
    out, (aa, bb, pp) = reference.wkv(w, u, k, v, aa, bb, pp)
    return (out, *to_plain(aa, bb, pp))


def recurrent_variant(key):
    """wkv_recurrent with one mistake (a key of wkv_mistakes.NAMES, or "decay_after_add")."""
    def wkv_recurrent(w, u, k, v, a, b):
        out, aa, bb, pp = scan(w, u, k, v, *to_stable(a, b), key)
        if key == "state_not_returned":
            return out, a, b
        return (out, *to_plain(aa, bb, pp))
    return wkv_recurrent


def two_calls(split):
    """The protocol of a state carried: the function on tokens [:split], then on the rest from the state
    it returned."""
    def protocol(call, args):
        w, u, k, v, a, b = args
        y1, a1, b1 = call(w, u, k[:split], v[:split], a, b)
        y2, a2, b2 = call(w, u, k[split:], v[split:], a1, b1)
        return np.concatenate([y1, y2]), a2, b2
    return protocol


MISTAKES = [mistake("decayed_once_too_often", recurrent_variant("decayed_once_too_often")),
            mistake("decayed_once_too_often", recurrent_variant("decay_after_add")),
            *(mistake(key, recurrent_variant(key)) for key in (
                "bonus_in_state", "bonus_on_past", "no_bonus", "decay_sign", "no_decay", "w_as_factor", "update_first",
                "state_ignored", "state_not_returned"))]


def cases():
    r = rng(20)
    w, u, k, v = wkv_inputs(21, 7, 4)
    a, b = r.normal(0, 1, 4), r.uniform(0.5, 2, 4)
    zeros = np.zeros(4), np.zeros(4)
    return [Case("random, T = 7, C = 4, empty past (a = b = 0)", (w, u, k, v, *zeros)),
            Case("T = 1", (*wkv_inputs(22, 1, 3), np.zeros(3), np.zeros(3))),
            Case("a past given: a, b from earlier tokens", (w, u, k, v, a, b)),
            Case("state carried across two calls (T = 3 then 4)", (w, u, k, v, *zeros), two_calls(3)),
            Case("u very negative (u = -30)", (*wkv_inputs(23, 5, 3, u=-30.0), np.zeros(3), np.zeros(3)))]


WKV_RECURRENT = Exercise(
    "wkv_recurrent", "03_wkv_recurrent", _reference, cases, returns=("wkv", "a", "b"),
    view_names=("wkv", "a after the last token", "b after the last token"),
    rtol=1e-9, atol=1e-12,  # float64, keys of N(0, 1): sums of a few e^k terms, rounding ~1e-15 relative
    mistakes=MISTAKES,
    overflow_hint="these keys are small (|k| < 5), so no correct e^x overflows float64: an inf or nan means a "
                  "0/0 (b = 0 with the current token's term missing?) or an exponent that grows with t.")


def check_wkv_recurrent(wkv_recurrent, time_limit=None):
    """wkv_recurrent(w, u, k, v, a, b) -> (wkv (T, C), a, b): eq. 14 as a recurrence from the state
    (a, b) (C,) each, the two sums over the past."""
    return check(WKV_RECURRENT, wkv_recurrent, time_limit)


