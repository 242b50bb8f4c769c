"""Exercise 4 (notebooks/exercises/04_wkv_stable.ipynb): eq. 14 with the running maximum, as the
reference computes it.

wkv_stable(w, u, k, v, aa, bb, pp) -> (wkv (T, C), aa, bb, pp): the state a = aa e^pp, b = bb e^pp before
the call and after its last token; arrays of the inputs' dtype (float32 and float64 cases), as a tuple.
The state is compared through a/b and ln b, so any consistent choice of pp passes.
"""

import numpy as np

from .data import empty_state, reference_wkv, rng, wkv_inputs
from .harness import Case, Exercise, Mistake, check
from .wkv_mistakes import mistake, scan, state_view


def _reference(w, u, k, v, aa, bb, pp):
    out, state = reference_wkv(w, u, k, v, aa, bb, pp)
    return (out, *state)


def stable_variant(key):
    """wkv_stable with one mistake (a key of wkv_mistakes.NAMES, or "decay_after_add"), in the inputs' dtype."""
    def wkv_stable(w, u, k, v, aa, bb, pp):
        dt = np.asarray(k).dtype
        return tuple(np.asarray(z).astype(dt) for z in scan(w, u, k, v, aa, bb, pp, key))
    return wkv_stable


def two_calls(split):
    def protocol(call, args):
        w, u, k, v, aa, bb, pp = args
        y1, *s1 = call(w, u, k[:split], v[:split], aa, bb, pp)
        y2, *s2 = call(w, u, k[split:], v[split:], *s1)
        return (np.concatenate([y1, y2]), *s2)
    return protocol


def view(answer):
    wkv, aa, bb, pp = answer
    return (np.asarray(wkv), *state_view(aa, bb, pp))


def _pp_ignored(w, u, k, v, aa, bb, pp):
    """exercise 3's plain recurrence on aa, bb as if they were the sums (pp taken as 0)."""
    return stable_variant(None)(w, u, k, v, aa, bb, np.zeros_like(pp))


PP_IGNORED = Mistake("pp ignored (aa, bb used as the sums a, b themselves)",
                     "the state's sums are a = aa e^pp and b = bb e^pp: pp is part of them. Take every exponential "
                     "relative to the larger exponent, q = max(pp, u + k_t), with pp among the exponents.",
                     variant=_pp_ignored)

MISTAKES = [mistake("p_not_updated", stable_variant("p_not_updated")), PP_IGNORED,
            mistake("decayed_once_too_often", stable_variant("decayed_once_too_often")),
            mistake("decayed_once_too_often", stable_variant("decay_after_add")),
            *(mistake(key, stable_variant(key)) for key in (
                "bonus_in_state", "bonus_on_past", "no_bonus", "decay_sign", "no_decay", "w_as_factor", "update_first",
                "state_ignored", "state_not_returned"))]


# float64 cases: ln b up to 5e4 is exact to ~1e-11; 1e-9 leaves room for any order of the arithmetic
F64 = (1e-9, 1e-9)


def cases():
    f32 = np.float32
    w, u, k, v = wkv_inputs(30, 8, 4, f32)
    wl, ul, kl, vl = wkv_inputs(31, 8, 4, f32, k_scale=60.0)
    kl = np.clip(kl, -100, 100)
    kl[2], kl[5] = 100, -100
    wb, ub, kb, vb = wkv_inputs(32, 6, 3, np.float64, k_scale=600.0)
    kb[1] = 1000
    wh, uh, kh, vh = wkv_inputs(35, 7, 3, np.float64)
    kh[1, 0], kh[3, 1], kh[4, 2], kh[5, 0] = 5e4, -5e4, 3e4, 4.9e4  # among keys ~N(0, 1)
    past = (rng(36).normal(0, 1, 4).astype(f32), rng(37).uniform(0.5, 2, 4).astype(f32),
            rng(38).normal(0, 3, 4).astype(f32))
    return [Case("random, T = 8, C = 4, float32", (w, u, k, v, *empty_state(4, f32))),
            Case("T = 1, float32", (*wkv_inputs(33, 1, 3, f32), *empty_state(3, f32))),
            Case("a past given (aa, bb, pp from earlier tokens)", (w, u, k, v, *past)),
            Case("state carried across two calls (T = 3 then 5)", (w, u, k, v, *empty_state(4, f32)), two_calls(3)),
            Case("large keys: +-100 in float32 (e^100 overflows float32)", (wl, ul, kl, vl, *empty_state(4, f32))),
            Case("u very negative: u = -1e4 (e^{u + k} is exactly 0)",
                 (*wkv_inputs(34, 5, 3, f32, u=-1e4), *empty_state(3, f32))),
            Case("keys up to 1000 in float64 (e^1000 overflows float64)", (wb, ub, kb, vb, *empty_state(3, np.float64)),
                 tol=F64),
            Case("keys of 5e4 in float64 (e^50000 overflows every float type, np.longdouble too)",
                 (wh, uh, kh, vh, *empty_state(3, np.float64)), tol=F64)]


WKV_STABLE = Exercise(
    "wkv_stable", "04_wkv_stable", _reference, cases, returns=("wkv", "aa", "bb", "pp"), view=view,
    view_names=("wkv", "a/b after the last token", "ln b after the last token"),
    # float32 cases: the state's ln b near 100 carries ~1e-5 of rounding, wkv ~1e-6 relative
    rtol=2e-5, atol=2e-5, mistakes=MISTAKES,
    overflow_hint="an exponential overflowed (float32: e^x is inf above x ≈ 88.7; float64 above 709.8; even "
                  "np.longdouble above ~11356) or a 0/0 appeared. Take every e^x relative to the larger "
                  "exponent q = max(pp, u + k_t) (and q' = max(pp - w, k_t) for the state), as above: then no "
                  "e^x exceeds 1, whatever the keys.")


def check_wkv_stable(wkv_stable, time_limit=None):
    """wkv_stable(w, u, k, v, aa, bb, pp) -> (wkv (T, C), aa, bb, pp): eq. 14 with the state kept as
    a = aa e^pp, b = bb e^pp. The state is compared through a/b and ln b, so any consistent choice
    of pp passes."""
    return check(WKV_STABLE, wkv_stable, time_limit)
