"""Exercise 7 (notebooks/exercises/07_recurrent_step.ipynb): the whole network as an RNN, one token.

step(params, token, state) -> (logits (V,), state (L, 5, C)): float32 arrays (the dtype of the weights), as a
tuple; state None before the first token. Checked over several tokens, each call fed the state the last
returned, from state None and from a given state, on random weights and on the shipped model.
"""

import numpy as np

from ..rwkv4 import reference
from .data import shipped_params, text_tokens, tiny_params, rng
from .ex05_time_mixing import DECAY_NOT_POSITIVE, decay_mistake
from .given import DecayRateError
from .harness import Case, Exercise, check
from .model_mistakes import STATE_NOT_RETURNED, VIEW_NAMES, mistakes, step_variant, view

KEYS = ("no_ln0", "no_ln_out", "no_residual", "no_residual_att", "no_residual_ffn", "same_ln", "residual_state",
        "residual_state_att", "residual_state_ffn", "layer0_state", "layer0_rows", "state_ignored", "state_not_returned",
        "no_gate_att", "no_sigmoid_att", "no_gate_ffn", "no_sigmoid_ffn", "relu", "square_no_relu",
        "mu_on_previous_att", "w_time_decay", "w_minus_exp", "w_exp_neg", "w_minus_time_decay", "bonus_in_state", "decayed_once_too_often",
        "decay_after_add", "p_not_updated", "update_first", "not_transposed")
MISTAKES = mistakes(KEYS, step_variant)
NOT_RETURNED = next(m for m in MISTAKES if m.name == STATE_NOT_RETURNED[0])


def per_token(call, args):
    """The protocol: one call per token, each given the state the previous call returned."""
    params, tokens, state = args
    logits = []
    for tok in tokens:
        lg, state = call(params, int(tok), state)
        logits.append(lg)
    return np.stack(logits), state


def explain(case, call, args, wrong):
    got = wrong.returned
    if isinstance(got, tuple) and len(got) == 2 and got[1] is None and args[2] is None:
        return NOT_RETURNED, STATE_NOT_RETURNED[1] + " (It returned None, the state it was given before the " \
                                                      "first token.)"
    return None


def on_raise(case, exc):
    if isinstance(exc, DecayRateError):
        params = case.args[0]
        for block in params["blocks"]:
            found = decay_mistake(exc.w, block["att"]["time_decay"])
            if found is not DECAY_NOT_POSITIVE:
                return found
        return DECAY_NOT_POSITIVE
    return None


def cases():
    tiny = tiny_params(seed=7)
    real = shipped_params()
    given = reference.forward(tiny, [3, 1, 4])[1]
    return [Case("random weights (L = 2, C = 8), one token from state None", (tiny, [5], None), per_token,
                 shared=(0,)),
            Case("random weights, 6 tokens, state carried from call to call", (tiny, rng(60).integers(0, 16, 6), None),
                 per_token, shared=(0,)),
            Case("random weights, starting from a given state (after tokens 3 1 4)", (tiny, [1, 5], given),
                 per_token, shared=(0,)),
            Case("the shipped model on 'ROMEO:', state carried", (real, text_tokens(b"ROMEO:"), None), per_token,
                 shared=(0,))]


STEP = Exercise(
    "step", "07_recurrent_step", reference.step, cases, returns=("logits", "state"), view=view,
    view_names=("logits (a row per call)", VIEW_NAMES[1]),
    # float32 through L layers of products over C (and F = 4C) terms, logits ~10: 1e-4 relative and
    # absolute is ~10x the rounding measured between two correct implementations and far below a mistake
    rtol=1e-4, atol=1e-4, mistakes=MISTAKES, explain=explain, on_raise=on_raise, named_by_hooks=[DECAY_NOT_POSITIVE])


def check_step(step, time_limit=None):
    """step(params, token, state) -> (logits (V,), state (L, 5, C)): one token, the recurrent form,
    state None before the first token; checked over several tokens, each call fed the last's state."""
    return check(STEP, step, time_limit)


