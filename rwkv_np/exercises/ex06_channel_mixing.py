"""Exercise 6 (notebooks/exercises/06_channel_mixing.ipynb): channel mixing, eqs. 16-18.

channel_mixing(x, x_prev, time_mix_k, time_mix_r, key, receptance, value) -> (out (T, C), x_prev (C,)), as
reference.channel_mixing: float32 arrays (the dtype of the weights), as a tuple.
"""

import numpy as np

from ..rwkv4 import reference
from .data import real_layer_input, rng, tiny_params
from .harness import Case, Exercise, Mistake, check

ORDER = ("time_mix_k", "time_mix_r", "key", "receptance", "value")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def channel_mixing_variant(mistake):
    """channel_mixing with one mistake, computed in float64 and returned in the dtype of x."""
    def channel_mixing(x, x_prev, time_mix_k, time_mix_r, key, receptance, value):
        dt = np.asarray(x).dtype
        x64, prev, mk, mr, Wk, Wr, Wv = (np.asarray(a, np.float64) for a in
                                         (x, x_prev, time_mix_k, time_mix_r, key, receptance, value))
        if mistake == "mu_on_previous":
            mk, mr = 1 - mk, 1 - mr
        if mistake == "shift_zeros":
            prev = np.zeros_like(prev)
        xx = np.concatenate([prev[None], x64[:-1]])
        r = (mr * x64 + (1 - mr) * xx) @ Wr.T
        k = (mk * x64 + (1 - mk) * xx) @ Wk.T
        hidden = {"relu": np.maximum(k, 0), "square_no_relu": k ** 2}.get(mistake, np.maximum(k, 0) ** 2)
        gate = {"no_gate": 1, "no_sigmoid": r}.get(mistake, sigmoid(r))
        out = gate * ((np.maximum(k, 0) @ Wv.T) ** 2 if mistake == "square_after_value" else hidden @ Wv.T)
        new_x = {"x_prev_from_out": out[-1], "x_prev_first": x64[0]}.get(mistake, x64[-1])
        if mistake == "state_not_returned":
            return out.astype(dt), x_prev
        return out.astype(dt), new_x.astype(dt)
    return channel_mixing


MISTAKES_BY_KEY = {
    "relu": ("relu instead of squared relu", "eq. 18 squares the ReLU: max(k'_t, 0) ** 2."),
    "square_no_relu": ("squared without the ReLU (k'^2: negative keys count too)",
                       "eq. 18 is max(k'_t, 0) ** 2: negative k' give 0, not their square."),
    "square_after_value": ("squared after W'_v instead of before",
                           "eq. 18 squares the hidden layer, then projects: W'_v max(k'_t, 0)^2, i.e. "
                           "(np.maximum(k, 0) ** 2) @ value.T."),
    "no_gate": ("sigmoid gate missing",
                "eq. 18: out = sigmoid(r'_t) * (W'_v max(k'_t, 0)^2); the receptance gates the output."),
    "no_sigmoid": ("the gate without its sigmoid (r' * ...)",
                   "eq. 18 gates with sigmoid(r'_t), a number between 0 and 1 per channel."),
    "mu_on_previous": ("mu applied to the wrong term (mu on x_{t-1})",
                       "mix(x, x_shift, mu) = mu * x + (1 - mu) * x_shift: mu weighs the current token."),
    "shift_zeros": ("the shift not using the carried x_prev at t = 0 (zeros instead)",
                    "the token shift's row 0 is the x_prev passed in (the state), not zeros."),
    "x_prev_from_out": ("the state's x_prev taken from the output",
                        "the next call's token shift needs the last *input* row: return x[-1] (the LayerNorm "
                        "output this function was given), not the last row of out."),
    "x_prev_first": ("the state's x_prev taken from the first row (x[0])",
                     "the next call continues after the *last* token: x_prev = x[-1]."),
    "state_not_returned": ("the state not updated (the state passed in returned)",
                           "return x[-1], the last row of this call's input, as the new x_prev."),
}
MISTAKES = [Mistake(name, hint, variant=channel_mixing_variant(key)) for key, (name, hint) in MISTAKES_BY_KEY.items()]


def two_calls(split):
    def protocol(call, args):
        out1, s1 = call(args[0][:split], *args[1:])
        out2, s2 = call(args[0][split:], s1, *args[2:])
        return np.concatenate([out1, out2]), s2
    return protocol


def cases():
    ffn = tiny_params(seed=6)["blocks"][1]["ffn"]
    r = rng(50)
    x = r.normal(0, 1, (5, 8)).astype(np.float32)
    x_prev = r.normal(0, 1, 8).astype(np.float32)
    block, inputs = real_layer_input()
    xr = inputs["ffn"]
    weights = tuple(ffn[n] for n in ORDER)
    return [Case("random weights, T = 5, C = 8, F = 32", (x, x_prev, *weights)),
            Case("T = 1", (x[:1], x_prev, *weights)),
            Case("state carried across two calls (T = 3 then 2)", (x, x_prev, *weights), two_calls(3)),
            Case("real weights: layer 0 of the shipped model on 'First Citizen:'",
                 (xr, np.zeros(xr.shape[1], np.float32), *(block["ffn"][n] for n in ORDER)))]


CHANNEL_MIXING = Exercise(
    "channel_mixing", "06_channel_mixing", reference.channel_mixing, cases, returns=("out", "x_prev"),
    view_names=("out", "x_prev after the last token"),
    # float32 products over F = 768 terms: ~1e-6 relative; outputs reach ~10 on real weights
    rtol=1e-4, atol=1e-4, mistakes=MISTAKES)


def check_channel_mixing(channel_mixing, time_limit=None):
    """channel_mixing(x, x_prev, time_mix_k, time_mix_r, key, receptance, value) -> (out (T, C), x_prev),
    as reference.channel_mixing."""
    return check(CHANNEL_MIXING, channel_mixing, time_limit)
