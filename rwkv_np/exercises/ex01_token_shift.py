"""Exercise 1 (notebooks/exercises/01_token_shift.ipynb): the token shift and the mu interpolation.

token_shift(x (T, C), x_prev (C,)) -> (T, C), row t = x_{t-1}, row 0 = x_prev; mix(x, x_shift, mu) ->
mu x + (1 - mu) x_shift. Both return an array of the inputs' dtype.
"""

import numpy as np

from ..rwkv4 import reference
from .data import rng
from .harness import Case, Exercise, Mistake, check


def shift_variant(mistake):
    """token_shift with one mistake, as a learner writes it."""
    def token_shift(x, x_prev):
        if mistake == "zeros":
            return np.concatenate([np.zeros_like(x_prev)[None], x[:-1]])
        if mistake == "wrong_way":
            return np.concatenate([x[1:], x_prev[None]])
        if mistake == "no_shift":
            return x.copy()
        if mistake == "roll":
            return np.roll(x, 1, axis=0)
        if mistake == "row0_only":
            out = x.copy()
            out[0] = x_prev
            return out
        return np.concatenate([x_prev[None], x[:-1]])
    return token_shift


SHIFT_MISTAKES = [
    Mistake("the shift not using the carried x_prev at t = 0 (zeros instead)",
            "row 0 of the shifted x is x_prev, the last token of the previous call (the state), not zeros.",
            shift_variant("zeros")),
    Mistake("shifted the wrong way (x_{t+1} instead of x_{t-1})",
            "row t must hold the previous token x_{t-1}: move x down one row (x_prev on top, drop the last "
            "row), not up.", shift_variant("wrong_way")),
    Mistake("no shift at all (x_t instead of x_{t-1})", "the function returns x itself: row t must be x_{t-1}.",
            shift_variant("no_shift")),
    Mistake("np.roll: the last row wrapped around to row 0 (x_prev not used)",
            "np.roll(x, 1, axis=0) moves the rows down but puts x's last row on top: row 0 must be x_prev. "
            "Concatenate x_prev[None] and x[:-1] instead.", shift_variant("roll")),
    Mistake("row 0 replaced by x_prev, the other rows not shifted",
            "every row moves down by one: row t is x_{t-1} for t >= 1 too, not only row 0 that changes.",
            shift_variant("row0_only")),
]
def _along_channels(case, answer):
    """Each row's values moved one column right (x[:, :-1] in columns 1...): a shift along axis 1, by
    concatenating columns or by np.roll without axis= (which rolls the flattened array)."""
    x = case.args[0]
    return x.shape[1] > 1 and np.array_equal(np.asarray(answer)[:, 1:], x[:, :-1])


ALONG_CHANNELS = Mistake(
    "shifted along the channels (axis 1) instead of time (axis 0)",
    "time runs down the rows: row t is x[t - 1], so drop the last row (x[:-1]), not the last column (x[:, :-1]). "
    "np.roll without axis= rolls the flattened array, which moves every value one column right.",
    detect=_along_channels)
SHIFT_MISTAKES.append(ALONG_CHANNELS)
T_PLUS_ONE = Mistake("kept all T rows plus x_prev (T + 1 rows)",
                     "the output has one row per token, T rows: x_prev on top, then x without its last row "
                     "(the last row becomes the next call's x_prev).")


def shift_cases():
    r = rng(1)
    x = r.normal(0, 1, (5, 3)).astype(np.float32)
    prev = r.normal(0, 1, 3).astype(np.float32)
    x1 = r.normal(0, 1, (1, 4)).astype(np.float32)
    p1 = r.normal(0, 1, 4).astype(np.float32)
    x2 = r.normal(0, 1, (4, 6)).astype(np.float32)
    x3, p3 = r.normal(0, 1, (3, 2)), r.normal(0, 1, 2)
    return [Case("T = 5, C = 3, x_prev from the previous call", (x, prev)),
            Case("T = 1", (x1, p1)),
            Case("T = 4, C = 6, state carried: x_prev = the last row of the previous chunk",
                 (x2, x[-1, :1].repeat(6))),
            Case("float64 inputs (the result keeps their dtype)", (x3, p3))]


def _shift_explain(case, call, args, wrong):
    x, got = case.args[0], wrong.returned
    if isinstance(got, np.ndarray) and got.shape == (len(x) + 1, x.shape[1]):
        return T_PLUS_ONE
    return None


TOKEN_SHIFT = Exercise(
    "token_shift", "01_token_shift", reference.token_shift, shift_cases, returns="shifted x",
    rtol=0, atol=0,  # a shift only copies values: exact
    mistakes=SHIFT_MISTAKES, explain=_shift_explain, named_by_hooks=[T_PLUS_ONE])


def check_token_shift(token_shift, time_limit=None):
    """token_shift(x (T, C), x_prev (C,)) -> x_{t-1} at every t, (T, C), in the dtype of x."""
    return check(TOKEN_SHIFT, token_shift, time_limit)


def mix_variant(mistake):
    def mix(x, x_shift, mu):
        if mistake == "mu_on_previous":
            return mu * x_shift + (1 - mu) * x
        if mistake == "one_minus_missing":
            return mu * x + x_shift
        if mistake == "shift_unused":
            return mu * x + (1 - mu) * x
        if mistake == "precedence":
            return mu * x + 1 - mu * x_shift
        return mu * x + (1 - mu) * x_shift
    return mix


MIX_MISTAKES = [
    Mistake("mu applied to the wrong term (mu on x_{t-1})",
            "mu is the share of the current token: mu * x + (1 - mu) * x_shift. mu = 1 must give x itself.",
            mix_variant("mu_on_previous")),
    Mistake("(1 - mu) missing on x_{t-1}", "the interpolation is mu * x + (1 - mu) * x_shift: both weights, "
                                           "summing to 1.", mix_variant("one_minus_missing")),
    Mistake("x_shift never used (mu x + (1 - mu) x = x)",
            "the second term is the previous token's: (1 - mu) * x_shift, not (1 - mu) * x.",
            mix_variant("shift_unused")),
    Mistake("parentheses missing: 1 - mu * x_shift instead of (1 - mu) * x_shift",
            "* binds tighter than -: write (1 - mu) * x_shift.", mix_variant("precedence")),
]


def mix_cases():
    r = rng(2)
    out = []
    for name, T, C in (("T = 4, C = 5, random mu in [0, 1]", 4, 5), ("T = 1", 1, 3)):
        x, xs = r.normal(0, 1, (2, T, C)).astype(np.float32)
        mu = r.uniform(0, 1, C).astype(np.float32)
        out.append(Case(name, (x, xs, mu)))
    x, xs = r.normal(0, 1, (2, 3, 2)).astype(np.float32)
    out.append(Case("mu = 1 in channel 0 (x only), mu = 0 in channel 1 (x_shift only)",
                    (x, xs, np.array([1, 0], np.float32))))
    x, xs = r.normal(0, 1, (2, 2, 3))
    out.append(Case("float64 inputs (the result keeps their dtype)", (x, xs, r.uniform(0, 1, 3))))
    return out


MIX = Exercise(
    "mix", "01_token_shift", reference.mix, mix_cases, returns="mixed x",
    # float32: a correct rearrangement (x_shift + mu * (x - x_shift)) differs by a few roundings of |x| ~ 3
    rtol=1e-6, atol=1e-6, mistakes=MIX_MISTAKES)


def check_mix(mix, time_limit=None):
    """mix(x (T, C), x_shift (T, C), mu (C,)) -> mu x_t + (1 - mu) x_{t-1}, (T, C), in the dtype of x."""
    return check(MIX, mix, time_limit)
