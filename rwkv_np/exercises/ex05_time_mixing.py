"""Exercise 5 (notebooks/exercises/05_time_mixing.ipynb): time mixing, eqs. 11-15.

time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first, key, value,
receptance, output) -> (out (T, C), (x_prev, aa, bb, pp)), as reference.time_mixing: float32 arrays (the
dtype of the weights), the state one tuple of four (C,) arrays.
"""

import numpy as np

from ..rwkv4 import reference
from .data import empty_state, real_layer_input, rng, tiny_params
from .given import DecayRateError
from .harness import Case, Exercise, Mistake, check
from .wkv_mistakes import NAMES, scan, state_view

ORDER = ("time_mix_k", "time_mix_v", "time_mix_r", "time_decay", "time_first", "key", "value", "receptance", "output")
EQ14 = ("decayed_once_too_often", "decay_after_add", "bonus_in_state", "bonus_on_past", "no_bonus",
        "p_not_updated", "update_first")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def time_mixing_variant(mistake):
    """time_mixing with one mistake, computed in float64 and returned in the dtype of x."""
    def time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
                    key, value, receptance, output):
        dt = np.asarray(x).dtype
        f = lambda a: np.asarray(a, np.float64)  # noqa: E731
        x64, prev = f(x), f(x_prev)
        mk, mv, mr, Wk, Wv, Wr, Wo = map(f, (time_mix_k, time_mix_v, time_mix_r, key, value, receptance, output))
        if mistake == "mu_on_previous":
            mk, mv, mr = 1 - mk, 1 - mv, 1 - mr
        if mistake == "shift_zeros":
            prev = np.zeros_like(prev)
        if mistake == "not_transposed":
            Wk, Wv, Wr, Wo = Wk.T, Wv.T, Wr.T, Wo.T
        if mistake == "kv_swapped":
            Wk, Wv = Wv, Wk
        xx = np.concatenate([prev[None], x64[:-1]])
        r = (mr * x64 + (1 - mr) * xx) @ Wr.T
        k = (mk * x64 + (1 - mk) * xx) @ Wk.T
        v = (mv * x64 + (1 - mv) * xx) @ Wv.T
        td = f(time_decay)
        w = {"w_time_decay": td, "w_minus_exp": -np.exp(td), "w_exp_neg": np.exp(-td),
             "w_minus_time_decay": -td}.get(mistake, np.exp(td))
        state = (aa, bb, pp)
        if mistake == "state_ignored":
            state = empty_state(len(prev), np.float64)
        u = np.exp(f(time_first)) if mistake == "u_exp" else f(time_first)
        if mistake == "kv_swapped_in_wkv":
            k, v = v, k
        y, aa2, bb2, pp2 = scan(w, u, k, v, *state, mistake if mistake in EQ14 else None)
        gate = {"no_gate": 1, "no_sigmoid": r}.get(mistake, sigmoid(r))
        if mistake == "no_output":
            Wo = np.eye(len(Wo))
        out = sigmoid(r) * (y @ Wo.T) if mistake == "gate_after_output" else (gate * y) @ Wo.T
        new_x = {"x_prev_from_out": out[-1], "x_prev_first": x64[0]}.get(mistake, x64[-1])
        if mistake == "state_not_returned":
            return out.astype(dt), (x_prev, aa, bb, pp)
        return out.astype(dt), tuple(np.asarray(z).astype(dt) for z in (new_x, aa2, bb2, pp2))
    return time_mixing


_HINT_W = "checkpoints store ln w (so that w stays positive while training): w = np.exp(time_decay)."
W_TIME_DECAY = ("the decay as e^{-w} with w = time_decay instead of w = e^{time_decay}", _HINT_W)
W_MINUS_EXP = ("w = -e^{time_decay} (the minus sign of e^{-w} written twice)",
               "some implementations keep -w = -exp(time_decay) and then take e^{+that}; eq. 14 here writes the "
               "minus sign itself, e^{-(t-1-i)w}: give it w = np.exp(time_decay) > 0.")
W_EXP_NEG = ("w = e^{-time_decay} instead of e^{time_decay}",
             "checkpoints store ln w: w = np.exp(time_decay), with no minus sign (the minus is eq. 14's own, "
             "in e^{-(t-1-i)w}).")
W_MINUS_TIME_DECAY = ("w = -time_decay (the decay factor e^{-w} taken as e^{time_decay})",
                      "time_decay is ln w, not the log of the decay factor: w = np.exp(time_decay), and eq. 14 "
                      "weighs the past by e^{-(t-1-i)w}.")
DECAY_NOT_POSITIVE = Mistake("a decay rate w <= 0 (or nan) given to wkv",
                             "w = np.exp(time_decay) is always positive: checkpoints store ln w.")

MISTAKES_BY_KEY = {
    "mu_on_previous": ("mu applied to the wrong term (mu on x_{t-1})",
                       "mix(x, x_shift, mu) = mu * x + (1 - mu) * x_shift: mu weighs the current token."),
    "shift_zeros": ("the shift not using the carried x_prev at t = 0 (zeros instead)",
                    "the token shift's row 0 is the x_prev passed in (the state), not zeros."),
    "no_gate": ("sigmoid gate missing", "eq. 15: out = W_o (sigmoid(r_t) * wkv_t); the receptance gates wkv."),
    "no_sigmoid": ("the gate without its sigmoid (r * wkv)",
                   "eq. 15 gates with sigmoid(r_t), a number between 0 and 1 per channel: sigmoid(r) * wkv."),
    "gate_after_output": ("the gate applied after W_o",
                          "eq. 15: out = W_o (sigmoid(r_t) * wkv_t): gate wkv first, then the output projection."),
    "w_time_decay": W_TIME_DECAY,
    "w_minus_exp": W_MINUS_EXP,
    "w_exp_neg": W_EXP_NEG,
    "w_minus_time_decay": W_MINUS_TIME_DECAY,
    "u_exp": ("u = e^{time_first} (u is time_first itself)",
              "time_first is u as eq. 14 uses it, in the exponent: e^{u + k_t}. Only the decay is stored as a "
              "logarithm (time_decay = ln w)."),
    "no_output": ("the output projection W_o missing",
                  "eq. 15 ends with W_o: out = (sigmoid(r) * wkv) @ output.T."),
    "not_transposed": ("the weight matrices used untransposed (x @ W)",
                       "a weight is stored (out, in), as in PyTorch: W x_t for every row t at once is x @ W.T."),
    "kv_swapped": ("the key and value weights swapped",
                   "k_t = W_k (...) with `key`, v_t = W_v (...) with `value`."),
    "kv_swapped_in_wkv": ("k and v swapped in the call to wkv",
                          "eq. 14's arguments are w, u, k, v in that order: the keys set the weights e^{k_i}, the "
                          "values are what is averaged. wkv(w, u, k, v, aa, bb, pp)."),
    "x_prev_from_out": ("the state's x_prev taken from the output",
                        "the next call's token shift needs the last *input* row: return x[-1] (the LayerNorm "
                        "output this function was given), not the last row of out."),
    "x_prev_first": ("the state's x_prev taken from the first row (x[0])",
                     "the next call continues after the *last* token: x_prev = x[-1]."),
    "state_ignored": (NAMES["state_ignored"][0], "eq. 14 continues from the aa, bb, pp passed in: they are the "
                                                 "past, carried from the previous call."),
    "state_not_returned": ("the state not updated (the state passed in returned)",
                           "return the state after the last token: (x[-1], and the aa, bb, pp that wkv returned)."),
    **{key: NAMES[key] for key in ("decayed_once_too_often", "bonus_in_state", "bonus_on_past", "no_bonus",
                                   "p_not_updated", "update_first")},
}
MISTAKES_BY_KEY["decay_after_add"] = NAMES["decayed_once_too_often"]

MISTAKES = [Mistake(name, hint, variant=time_mixing_variant(key)) for key, (name, hint) in MISTAKES_BY_KEY.items()]


def decay_mistake(w, time_decay):
    """The mistake a decay rate w <= 0 shows, given the time_decay it was made from."""
    w, td = np.asarray(w, np.float64), np.asarray(time_decay, np.float64)
    for candidate, (name, hint) in ((td, W_TIME_DECAY), (-np.exp(td), W_MINUS_EXP), (-td, W_MINUS_TIME_DECAY)):
        if w.shape == td.shape and np.allclose(w, candidate, rtol=1e-5, atol=1e-6):
            return next(m for m in MISTAKES if m.name == name), hint
    return DECAY_NOT_POSITIVE


def on_raise(case, exc):
    if isinstance(exc, DecayRateError):
        return decay_mistake(exc.w, case.args[8])
    return None


def two_calls(split):
    def protocol(call, args):
        out1, s1 = call(args[0][:split], *args[1:])
        out2, s2 = call(args[0][split:], *s1, *args[5:])
        return np.concatenate([out1, out2]), s2
    return protocol


def view(answer):
    out, (x_prev, aa, bb, pp) = answer
    return (np.asarray(out), np.asarray(x_prev), *state_view(aa, bb, pp))


def cases():
    att = tiny_params(seed=5)["blocks"][0]["att"]
    r = rng(40)
    C = 8
    x = r.normal(0, 1, (6, C)).astype(np.float32)
    x_prev = r.normal(0, 1, C).astype(np.float32)
    empty = empty_state(C, np.float32)
    past = (r.normal(0, 1, C).astype(np.float32), r.uniform(0.5, 2, C).astype(np.float32),
            r.normal(0, 2, C).astype(np.float32))
    block, inputs = real_layer_input()
    xr = inputs["att"]
    Cr = xr.shape[1]
    weights = tuple(att[n] for n in ORDER)
    return [Case("random weights, T = 6, C = 8, a past in the state", (x, x_prev, *past, *weights)),
            Case("T = 1", (x[:1], x_prev, *past, *weights)),
            Case("state carried across two calls (T = 2 then 4)", (x, x_prev, *empty, *weights), two_calls(2)),
            Case("real weights: layer 0 of the shipped model on 'First Citizen:'",
                 (xr, np.zeros(Cr, np.float32), *empty_state(Cr, np.float32), *(block["att"][n] for n in ORDER)))]


TIME_MIXING = Exercise(
    "time_mixing", "05_time_mixing", reference.time_mixing, cases, returns=("out", ("x_prev", "aa", "bb", "pp")),
    view=view, view_names=("out", "x_prev after the last token", "a/b after the last token",
                           "ln b after the last token"),
    # float32 matrix products over C <= 192 terms and the eq. 14 scan: ~1e-6 relative; real weights'
    # outputs reach ~10, so 1e-4 absolute leaves a margin of ~10x over rounding and none for a mistake
    rtol=1e-4, atol=1e-4, mistakes=MISTAKES, on_raise=on_raise, named_by_hooks=[DECAY_NOT_POSITIVE])


def check_time_mixing(time_mixing, time_limit=None):
    """time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
    key, value, receptance, output) -> (out (T, C), (x_prev, aa, bb, pp)), as reference.time_mixing."""
    return check(TIME_MIXING, time_mixing, time_limit)

