"""The whole model's mistakes, shared by exercises 7 (the recurrent step) and 8 (the parallel form):
their names and hints, and the forward pass that makes them.

`forward_variant(key)` is reference.forward with one mistake applied the way a learner's code makes
it, built from the reference's own functions and exercises 5 and 6's mistaken sublayers.
"""

import numpy as np

from ..rwkv4 import reference
from ..rwkv4.reference import AA, ATT_X, BB, FFN_X, PP
from .ex05_time_mixing import MISTAKES_BY_KEY as TM, time_mixing_variant
from .ex06_channel_mixing import MISTAKES_BY_KEY as CM, channel_mixing_variant
from .harness import Mistake
from .wkv_mistakes import state_view

# the model's mistakes that are a sublayer's: the key here -> the sublayer's key
TIME_MIXING_KEYS = {"no_gate_att": "no_gate", "no_sigmoid_att": "no_sigmoid", "mu_on_previous_att": "mu_on_previous",
                    **{k: k for k in ("w_time_decay", "w_minus_exp", "w_exp_neg", "w_minus_time_decay", "bonus_in_state",
                                      "decayed_once_too_often", "decay_after_add", "p_not_updated", "update_first",
                                      "not_transposed")}}
CHANNEL_MIXING_KEYS = {"no_gate_ffn": "no_gate", "no_sigmoid_ffn": "no_sigmoid", "relu": "relu",
                       "square_no_relu": "square_no_relu"}

_RESIDUAL = ("a residual connection missing",
             "each sublayer adds to x: x = x + time_mixing(LN1(x)); x = x + channel_mixing(LN2(x)).")
_RESIDUAL_STATE = ("the state's x_prev taken before the LayerNorm",
                   "the token shift mixes LayerNorm outputs, so the state keeps LN1(x)[-1] and LN2(x)[-1] (what "
                   "time mixing and channel mixing shift), not the residual stream x.")

NAMES = {
    "no_ln0": ("ln0 missing", "the embedding goes through ln0 (params['ln0']) once, before block 0."),
    "no_ln_out": ("ln_out missing",
                  "the last block's output goes through ln_out before the head: logits = LN(x) @ head.T."),
    "no_residual": _RESIDUAL, "no_residual_att": _RESIDUAL, "no_residual_ffn": _RESIDUAL,
    "same_ln": ("ln1 used for channel mixing too (ln2 never used)",
                "each sublayer has its own LayerNorm: time mixing reads LN1(x), channel mixing LN2(x) with "
                "p['ln2'], computed from x after the first residual."),
    "residual_state": _RESIDUAL_STATE, "residual_state_att": _RESIDUAL_STATE, "residual_state_ffn": _RESIDUAL_STATE,
    "layer0_state": ("every layer reading layer 0's state",
                     "layer l reads and writes its own rows, state[l]: index the state by the layer."),
    "layer0_rows": ("every layer reading layer 0's state",  # and writing it: s = state[0] in a loop over layers
                    "layer l reads and writes its own rows, state[l]: index the state by the layer."),
    "state_ignored": ("the state passed in ignored (started from the initial state every call)",
                      "use the state given: it is everything the network keeps of the earlier tokens; "
                      "initial_state only when state is None."),
    "state_not_returned": ("the state not updated (the state passed in returned)",
                           "return the new state, built from what time mixing and channel mixing return."),
    "no_gate_att": ("sigmoid gate missing in time mixing", TM["no_gate"][1]),
    "no_sigmoid_att": ("the gate without its sigmoid in time mixing (r * wkv)", TM["no_sigmoid"][1]),
    "no_gate_ffn": ("sigmoid gate missing in channel mixing", CM["no_gate"][1]),
    "no_sigmoid_ffn": ("the gate without its sigmoid in channel mixing (r' * ...)", CM["no_sigmoid"][1]),
    "mu_on_previous_att": TM["mu_on_previous"],
    **{k: TM[k] for k in ("w_time_decay", "w_minus_exp", "w_exp_neg", "w_minus_time_decay", "bonus_in_state",
                          "decayed_once_too_often",
                          "decay_after_add", "p_not_updated", "update_first", "not_transposed")},
    **{k: CM[k] for k in ("relu", "square_no_relu")},
}


def forward_variant(mistake):
    """reference.forward(params, tokens, state=None) with one mistake (a key of NAMES)."""
    tm = time_mixing_variant(TIME_MIXING_KEYS[mistake]) if mistake in TIME_MIXING_KEYS else reference.time_mixing
    cm = channel_mixing_variant(CHANNEL_MIXING_KEYS[mistake]) if mistake in CHANNEL_MIXING_KEYS \
        else reference.channel_mixing
    ln = reference.layer_norm

    def forward(params, tokens, state=None):
        emb, ln0, blocks, ln_out, head = (params[n] for n in ("emb", "ln0", "blocks", "ln_out", "head"))
        given = state
        if state is None or mistake == "state_ignored":
            state = reference.initial_state(len(blocks), emb.shape[1])
        x = emb[np.asarray(tokens)]
        if mistake != "no_ln0":
            x = ln(x, **ln0)
        new = state.copy() if mistake == "layer0_rows" else np.empty_like(state)
        for i, p in enumerate(blocks):
            s = {"layer0_state": state[0], "layer0_rows": new[0]}.get(mistake, state[i])
            dx, (att_x, aa, bb, pp) = tm(ln(x, **p["ln1"]), s[ATT_X], s[AA], s[BB], s[PP], **p["att"])
            x_mid = dx if mistake in ("no_residual", "no_residual_att") else x + dx
            dx, ffn_x = cm(ln(x_mid, **p["ln1" if mistake == "same_ln" else "ln2"]), s[FFN_X], **p["ffn"])
            if mistake in ("residual_state", "residual_state_att"):
                att_x = x[-1]
            if mistake in ("residual_state", "residual_state_ffn"):
                ffn_x = x_mid[-1]
            x = dx if mistake in ("no_residual", "no_residual_ffn") else x_mid + dx
            new[0 if mistake == "layer0_rows" else i] = np.stack([att_x, aa, bb, pp, ffn_x])
        if mistake != "no_ln_out":
            x = ln(x, **ln_out)
        return x @ head.T, (given if mistake == "state_not_returned" else new)
    return forward


def step_variant(mistake):
    """reference.step(params, token, state) with one mistake: forward_variant on one token."""
    forward = forward_variant(mistake)

    def step(params, token, state):
        logits, state = forward(params, [token], state)
        return logits[0], state
    return step


def mistakes(keys, variant):
    return [Mistake(*NAMES[k], variant=variant(k)) for k in keys]


def state_rows(state):
    """A model state (L, 5, C) as (L, 4, C): the x_prev rows as they are, eq. 14's through a/b and ln b."""
    state = np.asarray(state, np.float64)
    ratio, log_b = state_view(state[:, AA], state[:, BB], state[:, PP])
    return np.stack([state[:, ATT_X], ratio, log_b, state[:, FFN_X]], 1)


VIEW_NAMES = ("logits", "state after the last token (rows: x_prev, a/b, ln b, x_prev of channel mixing)")


def view(answer):
    logits, state = answer
    return np.asarray(logits), state_rows(state)


STATE_NOT_RETURNED = NAMES["state_not_returned"]
