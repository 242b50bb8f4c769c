"""Eq. 14's mistakes, shared by the exercises that compute it (2-5, 7): their names and hints, and the
scan that makes them.

`scan` is eq. 14 as the reference computes it (rwkv_np.rwkv4.reference.wkv: the state kept as
a = aa e^pp, b = bb e^pp, every exponential relative to the largest exponent), in float64, with one
mistake applied the way a learner's code makes it. Kept stable, a mistake's answer stays finite
wherever the mistake itself does not overflow, so it can be recognised on every case, keys of 1e4
included.
"""

import numpy as np

from ..rwkv4.reference import PP_EMPTY
from .harness import Mistake

HINT_DECAY = ("the latest past token (i = t-1) is not decayed at all: its weight is e^{k_{t-1}}, the one "
              "before e^{-w + k_{t-2}}. The exponent is -(t-1-i)w, not -(t-i)w; in the recurrence, use "
              "a_{t-1} as it is for wkv_t, and decay it only when moving on to a_t = e^{-w} a_{t-1} + e^{k_t} v_t "
              "(not e^{-w} (a_{t-1} + e^{k_t} v_t)).")

NAMES = {
    "decayed_once_too_often": (
        "the latest past token decayed once too often (e^{-(t-i)w} instead of e^{-(t-1-i)w})", HINT_DECAY),
    "bonus_on_past": (
        "u applied to the past instead of the current token",
        "u belongs to the current token's term, e^{u+k_t} v_t, and to no past term: the past terms are "
        "e^{-(t-1-i)w + k_i} v_i, without u."),
    "no_bonus": (
        "u missing on the current token",
        "the current token's term is e^{u + k_t} v_t (and e^{u + k_t} below): u is missing. (u on every term, "
        "past and current, looks the same: a factor e^u above and below cancels.)"),
    "bonus_in_state": (
        "the state updated with the bonus u",
        "the bonus u is for the current token's own output only: wkv_t uses e^{u+k_t}, but the state takes "
        "token t in with e^{k_t} (a_t = e^{-w} a_{t-1} + e^{k_t} v_t)."),
    "decay_sign": (
        "the decay with the wrong sign (e^{+(t-1-i)w})",
        "the past decays: the weight is e^{-(t-1-i)w} with w > 0, a minus sign in the exponent."),
    "no_decay": (
        "the decay e^{-w} missing (the past never fades)",
        "each step back multiplies a past token's weight by e^{-w}: a_t = e^{-w} a_{t-1} + e^{k_t} v_t."),
    "update_first": (
        "the state updated before the output (token t counted twice)",
        "compute wkv_t from the state of the tokens before t (a_{t-1}, b_{t-1}) and the current token's "
        "bonus term; only then take token t into the state for the next step."),
    "w_as_factor": (
        "w taken as the decay factor (w^{t-1-i} instead of e^{-(t-1-i)w})",
        "w is the decay rate: each step back multiplies a past token's weight by e^{-w}, not by w "
        "(a_t = e^{-w} a_{t-1} + e^{k_t} v_t). w^{t-1-i} would be e^{(t-1-i) ln w}."),
    "p_not_updated": (
        "p (the running max) not updated",
        "after token t the state's exponent must move to the new maximum: pp = max(pp - w, k_t), the same "
        "q that aa and bb were rescaled by. Left at its old value, the past's weight e^{pp - q} is wrong "
        "(0, or an overflow)."),
    "state_ignored": (
        "the state passed in ignored (started from an empty past)",
        "start the scan from the state given: it is the past, carried from the previous call."),
    "state_not_returned": (
        "the state not updated (the state passed in returned)",
        "return the state after the last token: the one your loop has updated, not the one passed in."),
}


def mistake(key, variant):
    name, hint = NAMES[key]
    return Mistake(name, hint, variant=variant)


def scan(w, u, k, v, aa, bb, pp, mistake=None):
    """Eq. 14 over k, v (T, C) after the state (aa, bb, pp), with one mistake (a key of NAMES, or
    "decay_after_add": the other way a learner decays once too often, a_t = e^{-w} (a_{t-1} +
    e^{k_t} v_t)). float64; returns (wkv (T, C), aa, bb, pp). ("w_as_factor": the decay factor w, as
    the rate -ln w.)"""
    w, u, k, v, aa, bb, pp = (np.asarray(z, np.float64) for z in (w, u, k, v, aa, bb, pp))
    given = aa, bb, pp
    if mistake == "state_ignored":
        aa, bb, pp = np.zeros_like(aa), np.zeros_like(bb), np.full_like(pp, PP_EMPTY)
    with np.errstate(divide="ignore", invalid="ignore"):
        decay = {"decay_sign": -w, "no_decay": 0 * w, "w_as_factor": -np.log(w)}.get(mistake, w)

    def update(aa, bb, pp, kt, vt):
        add = kt + u if mistake == "bonus_in_state" else kt
        if mistake == "decay_after_add":  # a_t = e^{-w} (a_{t-1} + e^{k_t} v_t)
            q = np.maximum(pp, add)
            e1, e2 = np.exp(pp - q), np.exp(add - q)
            return e1 * aa + e2 * vt, e1 * bb + e2, q - decay
        q = np.maximum(pp - decay, add)
        e1, e2 = np.exp(pp - decay - q), np.exp(add - q)
        return e1 * aa + e2 * vt, e1 * bb + e2, (pp if mistake == "p_not_updated" else q)

    out = np.empty_like(k)
    for t in range(len(k)):
        kt, vt = k[t], v[t]
        if mistake == "update_first":
            aa, bb, pp = update(aa, bb, pp, kt, vt)
        now = kt if mistake in ("no_bonus", "bonus_on_past") else u + kt
        past = pp + (u if mistake == "bonus_on_past" else 0) - (decay if mistake == "decayed_once_too_often" else 0)
        q = np.maximum(past, now)
        e1, e2 = np.exp(past - q), np.exp(now - q)
        out[t] = (e1 * aa + e2 * vt) / (e1 * bb + e2)
        if mistake != "update_first":
            aa, bb, pp = update(aa, bb, pp, kt, vt)
    if mistake == "state_not_returned":
        aa, bb, pp = given
    return out, aa, bb, pp


def to_stable(a, b):
    """A state of plain sums (a, b) as (aa, bb, pp) (float64): b > 0 as aa = a/b, bb = 1, pp = ln b;
    an empty past (b = 0) as 0, 0, PP_EMPTY."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    empty = b == 0
    safe = np.where(empty, 1, b)
    return np.where(empty, 0, a / safe), np.where(empty, 0, 1.0), np.where(empty, PP_EMPTY, np.log(safe))


def to_plain(aa, bb, pp):
    """(a, b) = (aa e^pp, bb e^pp), float64."""
    aa, bb, pp = (np.asarray(z, np.float64) for z in (aa, bb, pp))
    return aa * np.exp(pp), bb * np.exp(pp)


def state_view(aa, bb, pp):
    """A state (aa, bb, pp) as two numbers per channel that any consistent scaling shares:
    a / b = aa / bb, and ln b = ln bb + pp (float64, so that ln of a float32 bb is exact enough).
    An empty past (bb = 0) shows as a/b = 0, ln b = PP_EMPTY rather than 0/0."""
    aa, bb, pp = (np.asarray(z, np.float64) for z in (aa, bb, pp))
    empty = bb == 0
    with np.errstate(all="ignore"):
        return np.where(empty, 0.0, aa / bb), np.where(empty, PP_EMPTY, np.log(bb) + pp)
