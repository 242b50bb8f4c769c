"""A campaign of wrong submissions to the exercise checks, written as learners write them (not as the
checks' own mistaken variants: loops where a learner loops, the notebook's given helpers where the
notebook gives them, one slip each), and what each check must say about it.

Every submission carries the outcome it must get: the name of the mistake it makes (the check must name
exactly that), RAISED (it raises: the check must say so in one line with the learner's line), TIME
(it never returns: the check must stop it), or VAGUE (a mistake no check recognises: the check must fail
it with the first wrong value and "no known mistake matches"). A test per exercise runs them all; the
table of the closing note is

    python tests/test_exercise_campaign.py

(per exercise: submissions; named correctly, i.e. the right mistake named, or the exception or time limit
reported with the learner's line; named vaguely; named wrongly; passing).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rwkv_np, when run as a script from anywhere

from helpers import wkv_stable_in_longdouble  # noqa: E402  (tests/ is sys.path[0] as a script and under pytest)
from rwkv_np import exercises as E  # noqa: E402
from rwkv_np.exercises import harness as H  # noqa: E402
from rwkv_np.exercises import solutions as S  # noqa: E402
from rwkv_np.exercises.ex01_token_shift import MIX_MISTAKES, T_PLUS_ONE  # noqa: E402
from rwkv_np.exercises.ex08_whole_model import ARGMAX_FLAT, LAST_ONLY, OFF_BY_ONE, PROMPT_INCLUDED  # noqa: E402
from rwkv_np.exercises.given import wkv  # noqa: E402
from rwkv_np.rwkv4.reference import (AA, ATT_X, BB, FFN_X, PP, channel_mixing, initial_state, layer_norm,  # noqa: E402
                                     mix, sigmoid, time_mixing, token_shift)

RAISED, TIME, VAGUE = "RAISED", "TIME", "VAGUE"
TIME_LIMIT = 0.5  # for the submissions that never return: a short limit keeps the campaign fast


def name_of(exercise, words):
    """The one recognised mistake of `exercise` whose name contains `words` (so that a label cannot
    name a mistake the check does not know)."""
    ex = next(e for e in E.EXERCISES if e.name == exercise)
    found = {m.name for m in (*ex.recognised, *H.COMMON, ex.overflow) if words in m.name}
    assert len(found) == 1, (exercise, words, found)
    return found.pop()


def _what(fn):
    """A submission's description: its docstring, or (made by a factory of this file) the mistake the
    factory was given."""
    if fn.__doc__:
        return fn.__doc__.strip()
    given = [c.cell_contents for name, c in zip(fn.__code__.co_freevars, fn.__closure__ or ())
             if name in ("mistake", "which", "key") and isinstance(c.cell_contents, str)]
    return f"{fn.__name__}: {given[0]}" if given else fn.__name__


class Submission:
    def __init__(self, exercise, label, fn, what):
        self.exercise, self.fn, self.what = exercise, fn, what
        self.label = label if label in (RAISED, TIME, VAGUE) else name_of(exercise, label)

    def run(self):
        check = getattr(E, f"check_{self.exercise}")
        return check(self.fn, time_limit=TIME_LIMIT if self.label == TIME else None)

    def __repr__(self):
        return f"{self.exercise}: {self.what}"


SUBMISSIONS: list[Submission] = []


def sub(exercise, label):
    """Register the decorated function as a wrong submission to `exercise` that must get `label`."""
    def register(fn):
        SUBMISSIONS.append(Submission(exercise, label, fn, _what(fn)))
        return fn
    return register


def outcome(result, label):
    """correct, vague, wrong or passing: how the check's result named the submission."""
    if result.passed:
        return "passing"
    if label == RAISED:
        ok = result.status == "error" and " (in " in result.message and ", line " in result.message
        return "correct" if ok else "wrong"
    if label == TIME:
        return "correct" if result.status == "time limit" and ", line " in result.message else "wrong"
    if result.mistake is None:
        return "vague" if result.status == "failed" and "first wrong value: " in result.message else "wrong"
    return "correct" if result.mistake == label else "wrong"


# ================================================================================== 1. token_shift

T_SHIFT = "token_shift"


@sub(T_SHIFT, "zeros instead")
def _(x, x_prev):
    """row 0 zeros (np.zeros_like)"""
    return np.vstack([np.zeros_like(x[0]), x[:-1]])


@sub(T_SHIFT, "wider dtype")
def _(x, x_prev):
    """row 0 zeros from np.zeros(C): float64"""
    return np.vstack([np.zeros(x.shape[1]), x[:-1]])


@sub(T_SHIFT, "wrong way")
def _(x, x_prev):
    """moved up: x[1:] then x_prev"""
    return np.vstack([x[1:], x_prev])


@sub(T_SHIFT, "no shift at all")
def _(x, x_prev):
    """returns x itself"""
    return x


@sub(T_SHIFT, "np.roll")
def _(x, x_prev):
    """np.roll(x, 1, axis=0)"""
    return np.roll(x, 1, axis=0)


@sub(T_SHIFT, "along the channels")
def _(x, x_prev):
    """np.roll(x, 1) without axis (rolls the flattened array)"""
    return np.roll(x, 1)


@sub(T_SHIFT, "row 0 replaced")
def _(x, x_prev):
    """a copy with row 0 set to x_prev"""
    out = x.copy()
    out[0] = x_prev
    return out


@sub(T_SHIFT, "row 0 replaced")
def _(x, x_prev):
    """np.empty_like, row 0 x_prev, rows 1: from x[1:]"""
    out = np.empty_like(x)
    out[0] = x_prev
    out[1:] = x[1:]
    return out


@sub(T_SHIFT, T_PLUS_ONE.name)
def _(x, x_prev):
    """x_prev stacked on top of all of x"""
    return np.vstack([x_prev, x])


@sub(T_SHIFT, "wrong type")
def _(x, x_prev):
    """a list of rows"""
    return [x_prev] + list(x[:-1])


@sub(T_SHIFT, "in place")
def _(x, x_prev):
    """shifts x itself"""
    x[1:] = x[:-1].copy()
    x[0] = x_prev
    return x


@sub(T_SHIFT, "wider dtype")
def _(x, x_prev):
    """a loop filling np.empty((T, C))"""
    out = np.empty(x.shape)
    for t in range(len(x)):
        out[t] = x[t - 1] if t else x_prev
    return out


@sub(T_SHIFT, "wrong type")
def _(x, x_prev):
    """yields the rows"""
    yield x_prev
    yield from x[:-1]


@sub(T_SHIFT, "nothing returned")
def _(x, x_prev):
    """forgets the return"""
    out = np.concatenate([x_prev[None], x[:-1]])  # noqa: F841


@sub(T_SHIFT, "transposed")
def _(x, x_prev):
    """builds it column by column: (C, T)"""
    return np.stack([np.concatenate([[x_prev[c]], x[:-1, c]]) for c in range(x.shape[1])])


@sub(T_SHIFT, "along the channels")
def _(x, x_prev):
    """shifts along the channels"""
    return np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


@sub(T_SHIFT, "along the channels")
def _(x, x_prev):
    """x_prev's first value in column 0, the columns moved right (axis=1 where axis=0 was meant)"""
    return np.concatenate([np.full_like(x[:, :1], x_prev[0]), x[:, :-1]], axis=1)


@sub(T_SHIFT, "a wrong shape")
def _(x, x_prev):
    """drops one row too many"""
    return np.concatenate([x_prev[None], x[:-2]])


@sub(T_SHIFT, VAGUE)
def _(x, x_prev):
    """x_prev in every row"""
    return np.tile(x_prev, (len(x), 1))


@sub(T_SHIFT, RAISED)
def _(x, x_prev):
    """concatenates x_prev (C,) with x (T, C)"""
    return np.concatenate([x_prev, x[:-1]])


# ================================================================================== 1. mix

@sub("mix", MIX_MISTAKES[0].name)
def _(x, x_shift, mu):
    """mu on x_shift"""
    return mu * x_shift + (1 - mu) * x


@sub("mix", "(1 - mu) missing")
def _(x, x_shift, mu):
    """forgets (1 - mu)"""
    return mu * x + x_shift


@sub("mix", "x_shift never used")
def _(x, x_shift, mu):
    """x twice"""
    return mu * x + (1 - mu) * x


@sub("mix", "parentheses missing")
def _(x, x_shift, mu):
    """1 - mu * x_shift"""
    return mu * x + 1 - mu * x_shift


@sub("mix", "wider dtype")
def _(x, x_shift, mu):
    """mu made float64"""
    mu = np.asarray(mu, dtype=np.float64)
    return mu * x + (1 - mu) * x_shift


@sub("mix", "in place")
def _(x, x_shift, mu):
    """updates x in place"""
    x *= mu
    x += (1 - mu) * x_shift
    return x


@sub("mix", VAGUE)
def _(x, x_shift, mu):
    """mu on both terms"""
    return mu * x + mu * x_shift


@sub("mix", "wrong type")
def _(x, x_shift, mu):
    """returns the mix and x_shift"""
    return mu * x + (1 - mu) * x_shift, x_shift


@sub("mix", RAISED)
def _(x, x_shift, mu):
    """mu as a column"""
    return mu[:, None] * x + (1 - mu[:, None]) * x_shift


@sub("mix", VAGUE)
def _(x, x_shift, mu):
    """the plain average"""
    return 0.5 * (x + x_shift)


@sub("mix", MIX_MISTAKES[0].name)
def _(x, x_shift, mu):
    """(1 - mu) x + mu x_shift, written the other way round"""
    return (1 - mu) * x + mu * x_shift


# ================================================================================== 2. wkv_naive

def naive(dist=lambda t, i: t - 1 - i, bonus_now=True, bonus_past=False, key=lambda t, i: i, val=lambda t, i: i,
          past=lambda t: range(t), current=True, normalise=True, out=np.empty_like, sign=-1):
    """A learner's wkv_naive, its two sums in loops, each knob one slip."""
    def wkv_naive(w, u, k, v):
        res = out(k)
        for t in range(len(k)):
            e_now = np.exp((u if bonus_now else 0) + k[t])
            num, den = (e_now * v[t], e_now) if current else (0.0, 0.0)
            for i in past(t):
                e = np.exp(sign * dist(t, i) * w + k[key(t, i)] + (u if bonus_past else 0))
                num = num + e * v[val(t, i)]
                den = den + e
            res[t] = num / den if normalise else num
        return res
    return wkv_naive


N = "wkv_naive"
sub(N, "decayed once too often")(naive(dist=lambda t, i: t - i))
sub(N, "u applied to the past")(naive(bonus_now=False, bonus_past=True))
sub(N, "u missing on the current")(naive(bonus_now=False))
sub(N, "u missing on the current")(naive(bonus_past=True))  # u on every term: cancels
sub(N, "wrong sign")(naive(sign=1))
sub(N, "decay e^{-w} missing")(naive(sign=0))
sub(N, "(i = t-1) left out")(naive(past=lambda t: range(t - 1)))
sub(N, "current key k_t")(naive(key=lambda t, i: t))
sub(N, "values v_t")(naive(val=lambda t, i: t))
sub(N, "from the start")(naive(dist=lambda t, i: i))
sub(N, "current token left out")(naive(current=False))
sub(N, "denominator missing")(naive(normalise=False))
sub(N, "narrower dtype")(naive(out=lambda k: np.empty(k.shape, np.float32)))
sub(N, "non-float")(naive(out=lambda k: np.zeros(k.shape, int)))
sub(N, VAGUE)(naive(past=lambda t: range(t + 1)))  # the current token in the past sums too


@sub(N, "transposed")
def _(w, u, k, v):
    """loops over channels outside: out[c, t]"""
    T, C = k.shape
    out = np.zeros((C, T))
    for c in range(C):
        for t in range(T):
            e = np.exp(-(t - 1 - np.arange(t)) * w[c] + k[:t, c])
            out[c, t] = ((e * v[:t, c]).sum() + np.exp(u[c] + k[t, c]) * v[t, c]) / (e.sum() + np.exp(u[c] + k[t, c]))
    return out


@sub(N, "nothing returned")
def _(w, u, k, v):
    """fills out, returns nothing"""
    out = np.empty_like(k)
    for t in range(len(k)):
        out[t] = v[t]


@sub(N, TIME)
def _(w, u, k, v):
    """a while loop that never moves t"""
    out, t = np.empty_like(k), 0
    while t < len(k):
        out[t] = v[t]
    return out


@sub(N, "decay factor")
def _(w, u, k, v):
    """the past decayed by w per step: w ** (t - 1 - i)"""
    out = np.empty_like(k)
    for t in range(len(k)):
        num = den = np.exp(u + k[t])
        num = num * v[t]
        for i in range(t):
            weight = w ** (t - 1 - i) * np.exp(k[i])
            num, den = num + weight * v[i], den + weight
        out[t] = num / den
    return out


@sub(N, VAGUE)
def _(w, u, k, v):
    """w outside the exponential: e^{-(t-1-i)} w"""
    out = np.empty_like(k)
    for t in range(len(k)):
        i = np.arange(t)[:, None]
        e = np.exp(-(t - 1 - i) + k[:t]) * w
        now = np.exp(u + k[t])
        out[t] = ((e * v[:t]).sum(0) + now * v[t]) / (e.sum(0) + now)
    return out


@sub(N, "decayed once too often")
def _(w, u, k, v):
    """vectorised with np.tril, distances t - i"""
    T = len(k)
    t, i = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    x = -(t - i)[:, :, None] * w + k[None]  # (T, T, C)
    x = np.where((i < t)[:, :, None], x, -np.inf)
    x[np.arange(T), np.arange(T)] = u + k
    e = np.exp(x)
    return (e * v[None]).sum(1) / e.sum(1)


# ================================================================================== 3. wkv_recurrent

def recurrent(mistake=None):
    """A learner's scan over (a, b), each mistake one line."""
    def wkv_recurrent(w, u, k, v, a, b):
        a0, b0 = a, b
        if mistake == "zeros":
            a, b = np.zeros_like(a), np.zeros_like(b)
        decay = {"sign": np.exp(w), "no_decay": 1.0, "w_factor": w}.get(mistake, np.exp(-w))
        out = np.empty_like(k)
        for t in range(len(k)):
            bonus = np.exp(k[t]) if mistake == "no_bonus" else np.exp(u + k[t])
            if mistake == "update_first":
                a, b = decay * a + np.exp(k[t]) * v[t], decay * b + np.exp(k[t])
            pa, pb = (decay * a, decay * b) if mistake == "decay_first" else (a, b)
            if mistake == "bonus_past":
                pa, pb, bonus = np.exp(u) * pa, np.exp(u) * pb, np.exp(k[t])
            out[t] = (pa + bonus * v[t]) / (pb + bonus)
            if mistake == "update_first":
                continue
            add = np.exp(u + k[t]) if mistake == "bonus_state" else np.exp(k[t])
            if mistake == "after_add":
                a, b = decay * (a + add * v[t]), decay * (b + add)
            else:
                a, b = decay * a + add * v[t], decay * b + add
        if mistake == "not_returned":
            return out, a0, b0
        if mistake == "swapped":
            return out, b, a
        if mistake == "list":
            return [out, a, b]
        if mistake == "only_out":
            return out
        if mistake == "nested":
            return out, (a, b)
        return out, a, b
    return wkv_recurrent


R = "wkv_recurrent"
sub(R, "decayed once too often")(recurrent("decay_first"))
sub(R, "decayed once too often")(recurrent("after_add"))  # a = e^{-w} (a + e^k v)
sub(R, "updated with the bonus")(recurrent("bonus_state"))
sub(R, "u applied to the past")(recurrent("bonus_past"))
sub(R, "u missing on the current")(recurrent("no_bonus"))
sub(R, "wrong sign")(recurrent("sign"))
sub(R, "decay e^{-w} missing")(recurrent("no_decay"))
sub(R, "decay factor")(recurrent("w_factor"))  # a = w a + e^k v
sub(R, "updated before the output")(recurrent("update_first"))
sub(R, "passed in ignored")(recurrent("zeros"))
sub(R, "state not updated")(recurrent("not_returned"))
sub(R, "wrong order")(recurrent("swapped"))
sub(R, "wrong type")(recurrent("list"))
sub(R, "wrong number")(recurrent("only_out"))
sub(R, "grouped wrongly")(recurrent("nested"))


@sub(R, "in place")
def _(w, u, k, v, a, b):
    """updates a and b in place"""
    out = np.empty_like(k)
    for t in range(len(k)):
        out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
        a *= np.exp(-w)
        a += np.exp(k[t]) * v[t]
        b *= np.exp(-w)
        b += np.exp(k[t])
    return out, a, b


@sub(R, "narrower dtype")
def _(w, u, k, v, a, b):
    """out as float32"""
    out = np.zeros(k.shape, dtype=np.float32)
    for t in range(len(k)):
        out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
        a, b = np.exp(-w) * a + np.exp(k[t]) * v[t], np.exp(-w) * b + np.exp(k[t])
    return out, a, b


@sub(R, "wrong type")
def _(w, u, k, v, a, b):
    """wkv as a list of rows"""
    out = []
    for t in range(len(k)):
        out.append((a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t])))
        a, b = np.exp(-w) * a + np.exp(k[t]) * v[t], np.exp(-w) * b + np.exp(k[t])
    return out, a, b


@sub(R, VAGUE)
def _(w, u, k, v, a, b):
    """the state takes e^{k} without v in a"""
    out = np.empty_like(k)
    for t in range(len(k)):
        out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
        a, b = np.exp(-w) * a + np.exp(k[t]), np.exp(-w) * b + np.exp(k[t])
    return out, a, b


@sub(R, TIME)
def _(w, u, k, v, a, b):
    """loops while b grows"""
    out = np.empty_like(k)
    t = 0
    while (b >= 0).all():
        out[t % len(k)] = v[t % len(k)]
        b = b + 1
        t += 1
    return out, a, b


# ================================================================================== 4. wkv_stable

def stable(mistake=None):
    """A learner's stable scan, each mistake one line."""
    def wkv_stable(w, u, k, v, aa, bb, pp):
        given = aa, bb, pp
        if mistake == "zeros":
            aa, bb, pp = np.zeros_like(aa), np.zeros_like(bb), np.full_like(pp, -1e38)
        ww = -w if mistake == "sign" else (0 * w if mistake == "no_decay" else w)
        out = np.empty_like(k)
        for t in range(len(k)):
            kt, vt = k[t], v[t]
            if mistake == "update_first":
                q = np.maximum(pp - ww, kt)
                aa, bb, pp = np.exp(pp - ww - q) * aa + np.exp(kt - q) * vt, np.exp(pp - ww - q) * bb + np.exp(kt - q), q
            now = kt if mistake in ("no_bonus", "bonus_past") else u + kt
            past = pp - ww if mistake == "decay_first" else (pp + u if mistake == "bonus_past" else pp)
            q = np.maximum(past, now)
            out[t] = (np.exp(past - q) * aa + np.exp(now - q) * vt) / (np.exp(past - q) * bb + np.exp(now - q))
            if mistake == "update_first":
                continue
            add = u + kt if mistake == "bonus_state" else kt
            if mistake == "after_add":
                q = np.maximum(pp, add)
                aa, bb, pp = np.exp(pp - q) * aa + np.exp(add - q) * vt, np.exp(pp - q) * bb + np.exp(add - q), q - ww
                continue
            q = np.maximum(pp - ww, add)
            if mistake == "w_factor":  # the past multiplied by w: a = w a + e^k v, in the scaled form
                q = np.maximum(pp, add)
                aa, bb = w * np.exp(pp - q) * aa + np.exp(add - q) * vt, w * np.exp(pp - q) * bb + np.exp(add - q)
            else:
                aa, bb = np.exp(pp - ww - q) * aa + np.exp(add - q) * vt, np.exp(pp - ww - q) * bb + np.exp(add - q)
            if mistake != "p_fixed":
                pp = q
        if mistake == "not_returned":
            return (out, *given)
        if mistake == "nested":
            return out, (aa, bb, pp)
        return out, aa, bb, pp
    return wkv_stable


ST = "wkv_stable"
sub(ST, "running max) not updated")(stable("p_fixed"))
sub(ST, "decayed once too often")(stable("decay_first"))
sub(ST, "decayed once too often")(stable("after_add"))
sub(ST, "updated with the bonus")(stable("bonus_state"))
sub(ST, "u applied to the past")(stable("bonus_past"))
sub(ST, "u missing on the current")(stable("no_bonus"))
sub(ST, "wrong sign")(stable("sign"))
sub(ST, "decay e^{-w} missing")(stable("no_decay"))
sub(ST, "decay factor")(stable("w_factor"))
sub(ST, "updated before the output")(stable("update_first"))
sub(ST, "passed in ignored")(stable("zeros"))
sub(ST, "state not updated")(stable("not_returned"))
sub(ST, "grouped wrongly")(stable("nested"))


@sub(ST, "pp ignored")
def _(w, u, k, v, aa, bb, pp):
    """exercise 3's plain recurrence, pp ignored"""
    a, b = aa, bb
    out = np.empty_like(k)
    for t in range(len(k)):
        out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
        a, b = np.exp(-w) * a + np.exp(k[t]) * v[t], np.exp(-w) * b + np.exp(k[t])
    return out, a, b, np.zeros_like(pp)


@sub(ST, "exp overflow")
def _(w, u, k, v, aa, bb, pp):
    """brute force in np.longdouble, no running maximum, the state stored as (a/b, 1, ln b)"""
    return wkv_stable_in_longdouble(w, u, k, v, aa, bb, pp)


@sub(ST, "exp overflow")
def _(w, u, k, v, aa, bb, pp):
    """q from the current token's exponent only (not the maximum)"""
    out = np.empty_like(k)
    for t in range(len(k)):
        q = u + k[t]
        out[t] = (np.exp(pp - q) * aa + v[t]) / (np.exp(pp - q) * bb + 1)
        q = k[t]
        aa, bb, pp = np.exp(pp - w - q) * aa + v[t], np.exp(pp - w - q) * bb + 1, q
    return out, aa, bb, pp


@sub(ST, "exp overflow")
def _(w, u, k, v, aa, bb, pp):
    """one q for the output and the state update (e^{k - q} overflows when u is very negative)"""
    out = np.empty_like(k)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        out[t] = (np.exp(pp - q) * aa + np.exp(u + k[t] - q) * v[t]) / (np.exp(pp - q) * bb + np.exp(u + k[t] - q))
        aa, bb, pp = np.exp(pp - w - q) * aa + np.exp(k[t] - q) * v[t], np.exp(pp - w - q) * bb + np.exp(k[t] - q), q
    return out, aa, bb, pp


@sub(ST, "wider dtype")
def _(w, u, k, v, aa, bb, pp):
    """out = np.zeros(k.shape): float64"""
    out = np.zeros(k.shape)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        out[t] = (np.exp(pp - q) * aa + np.exp(u + k[t] - q) * v[t]) / (np.exp(pp - q) * bb + np.exp(u + k[t] - q))
        q2 = np.maximum(pp - w, k[t])
        aa, bb, pp = (np.exp(pp - w - q2) * aa + np.exp(k[t] - q2) * v[t], np.exp(pp - w - q2) * bb
                      + np.exp(k[t] - q2), q2)
    return out, aa, bb, pp


@sub(ST, "decay e^{-w} missing")
def _(w, u, k, v, aa, bb, pp):
    """the state's new exponent without the decay: q' = max(pp, k_t)"""
    out = np.empty_like(k)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        out[t] = (np.exp(pp - q) * aa + np.exp(u + k[t] - q) * v[t]) / (np.exp(pp - q) * bb + np.exp(u + k[t] - q))
        q2 = np.maximum(pp, k[t])
        aa, bb, pp = np.exp(pp - q2) * aa + np.exp(k[t] - q2) * v[t], np.exp(pp - q2) * bb + np.exp(k[t] - q2), q2
    return out, aa, bb, pp


# ================================================================================== 5. time_mixing

def tm(mistake=None):
    """A learner's time_mixing with the notebook's given token_shift, mix, sigmoid and wkv."""
    def time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
                    key, value, receptance, output):
        xx = token_shift(x, np.zeros_like(x_prev) if mistake == "zeros" else x_prev)
        m = (lambda a, mu: mix(xx, a, mu)) if mistake == "mix_order" else (lambda a, mu: mix(a, xx, mu))
        T = (lambda W: W) if mistake == "untransposed" else (lambda W: W.T)
        r = m(x, time_mix_r) @ T(receptance)
        k = m(x, time_mix_k) @ T(value if mistake == "kv" else key)
        v = m(x, time_mix_v) @ T(key if mistake == "kv" else value)
        w = {"w_td": time_decay, "w_minus": -np.exp(time_decay), "w_neg": np.exp(-time_decay), "w_flip": -time_decay,
             "w_log": np.log(time_decay),
             "w64": np.exp(time_decay.astype(np.float64))}.get(mistake, np.exp(time_decay))
        u = np.exp(time_first) if mistake == "u_exp" else time_first
        state = (np.zeros_like(aa), np.zeros_like(bb), np.full_like(pp, -1e38)) if mistake == "fresh" else (aa, bb, pp)
        y, (aa2, bb2, pp2) = wkv(w, u, k, v, *state)
        gate = {"no_gate": 1, "r": r}.get(mistake, sigmoid(r))
        if mistake == "after":
            out = sigmoid(r) * (y @ T(output))
        elif mistake == "no_out":
            out = gate * y
        else:
            out = (gate * y) @ T(output)
        new_x = {"from_out": out[-1], "first": x[0], "shifted": xx[-1]}.get(mistake, x[-1])
        if mistake == "not_returned":
            return out, (x_prev, aa, bb, pp)
        if mistake == "flat":
            return out, new_x, aa2, bb2, pp2
        if mistake == "three":
            return out, new_x, (aa2, bb2, pp2)
        return out, (new_x, aa2, bb2, pp2)
    return time_mixing


TM = "time_mixing"
sub(TM, "mu applied to the wrong term")(tm("mix_order"))
sub(TM, "zeros instead")(tm("zeros"))
sub(TM, "sigmoid gate missing")(tm("no_gate"))
sub(TM, "without its sigmoid")(tm("r"))
sub(TM, "applied after W_o")(tm("after"))
sub(TM, "with w = time_decay")(tm("w_td"))  # the given wkv refuses w <= 0
sub(TM, "written twice")(tm("w_minus"))  # likewise
sub(TM, "w = e^{-time_decay}")(tm("w_neg"))
sub(TM, "wider dtype")(tm("w64"))
sub(TM, "u = e^{time_first}")(tm("u_exp"))
sub(TM, "untransposed")(tm("untransposed"))
sub(TM, "key and value weights swapped")(tm("kv"))
sub(TM, "x_prev taken from the output")(tm("from_out"))
sub(TM, "first row")(tm("first"))
sub(TM, VAGUE)(tm("shifted"))  # x_prev = the shifted x's last row, x[-2]
sub(TM, "state not updated")(tm("not_returned"))
sub(TM, "passed in ignored")(tm("fresh"))
sub(TM, "W_o missing")(tm("no_out"))
sub(TM, "grouped wrongly")(tm("flat"))
sub(TM, "grouped wrongly")(tm("three"))


def tm_own(mistake):
    """time_mixing with the learner's own eq. 14 pasted in (exercise 4's), one slip in it."""
    def time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
                    key, value, receptance, output):
        xx = token_shift(x, x_prev)
        r, k, v = (mix(x, xx, m) @ W.T for m, W in ((time_mix_r, receptance), (time_mix_k, key), (time_mix_v, value)))
        w, u = (time_decay if mistake == "w_td" else np.exp(time_decay)), time_first
        y = np.empty_like(k)
        for t in range(len(k)):
            if mistake == "update_first":
                q = np.maximum(pp - w, k[t])
                aa, bb, pp = (np.exp(pp - w - q) * aa + np.exp(k[t] - q) * v[t], np.exp(pp - w - q) * bb
                              + np.exp(k[t] - q), q)
            past = pp - w if mistake == "decay_first" else (pp + u if mistake == "bonus_past" else pp)
            now = k[t] if mistake in ("no_bonus", "bonus_past") else u + k[t]
            q = np.maximum(past, now)
            y[t] = (np.exp(past - q) * aa + np.exp(now - q) * v[t]) / (np.exp(past - q) * bb + np.exp(now - q))
            if mistake == "update_first":
                continue
            add = u + k[t] if mistake == "bonus_state" else k[t]
            q = np.maximum(pp - w, add)
            aa, bb = np.exp(pp - w - q) * aa + np.exp(add - q) * v[t], np.exp(pp - w - q) * bb + np.exp(add - q)
            if mistake != "p_fixed":
                pp = q
        return (sigmoid(r) * y) @ output.T, (x[-1], aa, bb, pp)
    return time_mixing


sub(TM, "running max) not updated")(tm_own("p_fixed"))
sub(TM, "updated with the bonus")(tm_own("bonus_state"))
sub(TM, "decayed once too often")(tm_own("decay_first"))
sub(TM, "with w = time_decay")(tm_own("w_td"))  # own eq. 14 does not refuse: recognised by its answer
sub(TM, "u applied to the past")(tm_own("bonus_past"))
sub(TM, "u missing on the current")(tm_own("no_bonus"))
sub(TM, "updated before the output")(tm_own("update_first"))
sub(TM, "w = -time_decay")(tm("w_flip"))
sub(TM, "w <= 0 (or nan) given")(tm("w_log"))  # w = ln(time_decay): nan where time_decay < 0, refused


@sub(TM, RAISED)
def _(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first, key, value, receptance,
      output):
    """calls wkv with the state as one tuple"""
    xx = token_shift(x, x_prev)
    k, v = mix(x, xx, time_mix_k) @ key.T, mix(x, xx, time_mix_v) @ value.T
    y, state = wkv(np.exp(time_decay), time_first, k, v, (aa, bb, pp))
    return y, state


@sub(TM, "swapped in the call to wkv")
def _(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first, key, value, receptance,
      output):
    """k and v swapped in the call to wkv"""
    xx = token_shift(x, x_prev)
    r, k, v = (mix(x, xx, m) @ W.T for m, W in ((time_mix_r, receptance), (time_mix_k, key), (time_mix_v, value)))
    y, (aa, bb, pp) = wkv(np.exp(time_decay), time_first, v, k, aa, bb, pp)
    return (sigmoid(r) * y) @ output.T, (x[-1], aa, bb, pp)


# ================================================================================== 6. channel_mixing

def cm(mistake=None):
    """A learner's channel_mixing with the given token_shift, mix and sigmoid."""
    def channel_mixing(x, x_prev, time_mix_k, time_mix_r, key, receptance, value):
        xx = token_shift(x, np.zeros_like(x_prev) if mistake == "zeros" else x_prev)
        m = (lambda mu: mix(xx, x, mu)) if mistake == "mix_order" else (lambda mu: mix(x, xx, mu))
        r = m(time_mix_k if mistake == "mu_k_for_r" else time_mix_r) @ receptance.T
        k = m(time_mix_k) @ key.T
        hidden = {"relu": np.maximum(k, 0), "square": k ** 2,
                  "f64": np.square(np.maximum(k, 0), dtype=np.float64)}.get(mistake, np.maximum(k, 0) ** 2)
        gate = {"no_gate": 1, "r": r}.get(mistake, sigmoid(r))
        if mistake == "square_after":
            out = gate * (np.maximum(k, 0) @ value.T) ** 2
        elif mistake == "value_first":
            out = (gate.T * (value @ hidden.T))
        else:
            out = gate * (hidden @ value.T)
        new_x = {"from_out": out[-1], "first": x[0]}.get(mistake, x[-1])
        if mistake == "not_returned":
            return out, x_prev
        if mistake == "only_out":
            return out
        return out, new_x
    return channel_mixing


CM = "channel_mixing"
sub(CM, "relu instead of squared")(cm("relu"))
sub(CM, "squared without the ReLU")(cm("square"))
sub(CM, "squared after W'_v")(cm("square_after"))
sub(CM, "sigmoid gate missing")(cm("no_gate"))
sub(CM, "without its sigmoid")(cm("r"))
sub(CM, "mu applied to the wrong term")(cm("mix_order"))
sub(CM, "zeros instead")(cm("zeros"))
sub(CM, "x_prev taken from the output")(cm("from_out"))
sub(CM, "first row")(cm("first"))
sub(CM, "state not updated")(cm("not_returned"))
sub(CM, "wrong number")(cm("only_out"))
sub(CM, "transposed")(cm("value_first"))
sub(CM, "wider dtype")(cm("f64"))
sub(CM, VAGUE)(cm("mu_k_for_r"))


@sub(CM, RAISED)
def _(x, x_prev, time_mix_k, time_mix_r, key, receptance, value):
    """the key matrix untransposed: (T, C) @ (F, C)"""
    xx = token_shift(x, x_prev)
    k = mix(x, xx, time_mix_k) @ key
    return sigmoid(mix(x, xx, time_mix_r) @ receptance.T) * (np.maximum(k, 0) ** 2 @ value.T), x[-1]


# ================================================================================== 7. step

OWN_EQ14 = ("bonus_state", "decay_first", "after_add", "p_fixed", "update_first")


def own_wkv_token(w, u, k, v, aa, bb, pp, mistake):
    """eq. 14 for one token, written into step by the learner (exercise 4's arithmetic), with one slip.
    Returns (wkv (1, C), (aa, bb, pp))."""
    if mistake == "update_first":
        q = np.maximum(pp - w, k)
        aa, bb, pp = np.exp(pp - w - q) * aa + np.exp(k - q) * v, np.exp(pp - w - q) * bb + np.exp(k - q), q
    past = pp - w if mistake == "decay_first" else pp
    q = np.maximum(past, u + k)
    y = (np.exp(past - q) * aa + np.exp(u + k - q) * v) / (np.exp(past - q) * bb + np.exp(u + k - q))
    if mistake == "update_first":
        return y[None], (aa, bb, pp)
    add = u + k if mistake == "bonus_state" else k
    if mistake == "after_add":
        q = np.maximum(pp, add)
        return y[None], (np.exp(pp - q) * aa + np.exp(add - q) * v, np.exp(pp - q) * bb + np.exp(add - q), q - w)
    q = np.maximum(pp - w, add)
    aa, bb = np.exp(pp - w - q) * aa + np.exp(add - q) * v, np.exp(pp - w - q) * bb + np.exp(add - q)
    return y[None], (aa, bb, pp if mistake == "p_fixed" else q)


def step_(mistake=None):
    """A learner's step: one token, every vector (C,), the given helpers and wkv, each mistake one slip."""
    def step(params, token, state):
        blocks = params["blocks"]
        L, C = len(blocks), params["emb"].shape[1]
        given = state
        if state is None or mistake == "fresh":
            state = np.zeros((L, 5, C)) if mistake == "zeros64" else initial_state(L, C)
        if mistake != "in_place":
            state = state.copy()
        x = params["emb"][token]
        if mistake != "no_ln0":
            x = layer_norm(x, **params["ln0"])
        for i, p in enumerate(blocks):
            s = state[0] if mistake == "layer0" else state[i]
            att, ffn = p["att"], p["ffn"]
            xa = layer_norm(x, **p["ln1"])
            m = (lambda a, b, mu: mix(b, a, mu)) if mistake == "mix_order" else mix
            T = (lambda W: W) if mistake == "untransposed" else (lambda W: W.T)
            r = m(xa, s[ATT_X], att["time_mix_r"]) @ T(att["receptance"])
            k = m(xa, s[ATT_X], att["time_mix_k"]) @ T(att["key"])
            v = m(xa, s[ATT_X], att["time_mix_v"]) @ T(att["value"])
            w = {"w_td": att["time_decay"], "w_neg": np.exp(-att["time_decay"]), "w_minus": -np.exp(att["time_decay"]),
                 "w_flip": -att["time_decay"], "w_log": np.log(att["time_decay"])}.get(mistake, np.exp(att["time_decay"]))
            if mistake in OWN_EQ14:
                y, (aa, bb, pp) = own_wkv_token(w, att["time_first"], k, v, s[AA], s[BB], s[PP], mistake)
            elif mistake == "k_vector":
                y, (aa, bb, pp) = wkv(w, att["time_first"], k, v, s[AA], s[BB], s[PP])
            else:
                y, (aa, bb, pp) = wkv(w, att["time_first"], k[None], v[None], s[AA], s[BB], s[PP])
            s[AA], s[BB], s[PP] = aa, bb, pp
            s[ATT_X] = x if mistake in ("residual_state", "residual_att") else xa
            gate = {"no_gate_att": 1, "r_att": r}.get(mistake, sigmoid(r))
            dx = (gate * y[0]) @ T(att["output"])
            x = dx if mistake == "no_res_att" else x + dx
            xf = layer_norm(x, **p["ln1" if mistake == "same_ln" else "ln2"])
            r = mix(xf, s[FFN_X], ffn["time_mix_r"]) @ ffn["receptance"].T
            k = mix(xf, s[FFN_X], ffn["time_mix_k"]) @ ffn["key"].T
            s[FFN_X] = x if mistake in ("residual_state", "residual_ffn") else xf
            hidden = {"relu": np.maximum(k, 0), "square": k ** 2}.get(mistake, np.maximum(k, 0) ** 2)
            gate = {"no_gate_ffn": 1, "r_ffn": r}.get(mistake, sigmoid(r))
            dx = gate * (hidden @ ffn["value"].T)
            x = dx if mistake == "no_res_ffn" else x + dx
        logits = (x if mistake == "no_ln_out" else layer_norm(x, **params["ln_out"])) @ params["head"].T
        if mistake == "not_returned":
            return logits, given
        if mistake == "only_logits":
            return logits
        if mistake == "logits_2d":
            return logits[None], state
        if mistake == "list_state":
            return logits, list(state)
        return logits, state
    return step


STP = "step"
sub(STP, "mu applied to the wrong term")(step_("mix_order"))
sub(STP, "untransposed")(step_("untransposed"))
sub(STP, "written twice")(step_("w_minus"))  # the given wkv refuses w <= 0
sub(STP, "w = -time_decay")(step_("w_flip"))
sub(STP, "w <= 0 (or nan) given")(step_("w_log"))
sub(STP, "updated with the bonus")(step_("bonus_state"))
sub(STP, "decayed once too often")(step_("decay_first"))
sub(STP, "decayed once too often")(step_("after_add"))
sub(STP, "running max) not updated")(step_("p_fixed"))
sub(STP, "updated before the output")(step_("update_first"))
sub(STP, "ln0 missing")(step_("no_ln0"))
sub(STP, "ln_out missing")(step_("no_ln_out"))
sub(STP, "residual connection missing")(step_("no_res_att"))
sub(STP, "residual connection missing")(step_("no_res_ffn"))
sub(STP, "ln1 used for channel mixing")(step_("same_ln"))
sub(STP, "before the LayerNorm")(step_("residual_state"))
sub(STP, "before the LayerNorm")(step_("residual_att"))
sub(STP, "before the LayerNorm")(step_("residual_ffn"))
sub(STP, "layer 0's state")(step_("layer0"))
sub(STP, "passed in ignored")(step_("fresh"))
sub(STP, "state not updated")(step_("not_returned"))
sub(STP, "sigmoid gate missing in time mixing")(step_("no_gate_att"))
sub(STP, "without its sigmoid in time mixing")(step_("r_att"))
sub(STP, "sigmoid gate missing in channel mixing")(step_("no_gate_ffn"))
sub(STP, "without its sigmoid in channel mixing")(step_("r_ffn"))
sub(STP, "relu instead of squared")(step_("relu"))
sub(STP, "squared without the ReLU")(step_("square"))
sub(STP, "with w = time_decay")(step_("w_td"))  # the given wkv refuses w <= 0
sub(STP, "w = e^{-time_decay}")(step_("w_neg"))
sub(STP, "in place")(step_("in_place"))  # writes into the state it is given (found at the second call)
sub(STP, "wrong number")(step_("only_logits"))
sub(STP, "a wrong shape")(step_("logits_2d"))
sub(STP, "wrong type")(step_("list_state"))
sub(STP, "wider dtype")(step_("zeros64"))  # initial state np.zeros((L, 5, C)): float64
sub(STP, RAISED)(step_("k_vector"))  # k (C,) given to wkv: it says (T, C), k[None]


# ================================================================================== 8. forward

def forward_(mistake=None):
    """A learner's forward with the given time_mixing and channel_mixing."""
    def forward(params, tokens, state=None):
        blocks = params["blocks"]
        given = state
        if state is None or mistake == "fresh":
            state = initial_state(len(blocks), params["emb"].shape[1])
        x = params["emb"][np.asarray(tokens)]
        if mistake != "no_ln0":
            x = layer_norm(x, **params["ln0"])
        new = np.zeros(state.shape) if mistake == "zeros64" else (state if mistake == "in_place" else np.empty_like(state))
        for i, p in enumerate(blocks[:1] if mistake == "one_layer" else blocks):
            s = state[0] if mistake == "layer0" else state[i]
            dx, (ax, aa, bb, pp) = time_mixing(layer_norm(x, **p["ln1"]), s[ATT_X], s[AA], s[BB], s[PP], **p["att"])
            x_mid = dx if mistake == "no_res" else x + dx
            dx, fx = channel_mixing(layer_norm(x_mid, **p["ln1" if mistake == "same_ln" else "ln2"]), s[FFN_X],
                                    **p["ffn"])
            if mistake == "residual_state":
                ax, fx = x[-1], x_mid[-1]
            x = dx if mistake in ("no_res", "no_res_ffn") else x_mid + dx
            rows = [aa, bb, pp, ax, fx] if mistake == "row_order" else [ax, aa, bb, pp, fx]
            new[i] = np.stack(rows)
        if mistake == "one_layer":
            new[1:] = state[1:]
        head = params["head"] if mistake == "head_untransposed" else params["head"].T
        logits = (x if mistake == "no_ln_out" else layer_norm(x, **params["ln_out"])) @ head
        if mistake == "not_returned":
            return logits, given
        if mistake == "last_only":
            return logits[-1], new
        if mistake == "list_logits":
            return list(logits), new
        if mistake == "list_state":
            return logits, [new[i] for i in range(len(new))]
        return logits, new
    return forward


F = "forward"
sub(F, "ln0 missing")(forward_("no_ln0"))
sub(F, "ln_out missing")(forward_("no_ln_out"))
sub(F, "residual connection missing")(forward_("no_res"))
sub(F, "residual connection missing")(forward_("no_res_ffn"))
sub(F, "ln1 used for channel mixing")(forward_("same_ln"))
sub(F, "before the LayerNorm")(forward_("residual_state"))
sub(F, "passed in ignored")(forward_("fresh"))
sub(F, "state not updated")(forward_("not_returned"))
sub(F, LAST_ONLY.name)(forward_("last_only"))
sub(F, "wrong type")(forward_("list_logits"))
sub(F, "wrong type")(forward_("list_state"))
sub(F, "wider dtype")(forward_("zeros64"))
sub(F, "layer 0's state")(forward_("layer0"))
sub(F, "in place")(forward_("in_place"))  # writes the new state into the one passed in
sub(F, VAGUE)(forward_("row_order"))  # the state's rows stacked in another order
sub(F, VAGUE)(forward_("one_layer"))  # the loop over the first block only


sub(F, RAISED)(forward_("head_untransposed"))  # (T, C) @ (V, C)


# ================================================================================== 8. generate

def gen(mistake=None):
    """A learner's greedy generate on the solution's forward."""
    def generate(params, prompt, n):
        logits, state = S.forward(params, list(prompt))
        if mistake == "refeed":
            logits, state = S.forward(params, [prompt[-1]], state)
        out = list(prompt) if mistake == "with_prompt" else []
        count = {"plus_one": n + 1, "minus_one": n - 1}.get(mistake, n)
        rng = np.random.default_rng(0)
        for j in range(count):
            if mistake == "first_row" and j == 0:
                tok = int(np.argmax(logits[0]))
            elif mistake == "flat":
                tok = int(np.argmax(logits))
            elif mistake == "sample":
                p = np.exp(logits[-1] - logits[-1].max())
                tok = int(rng.choice(len(p), p=p / p.sum()))
            else:
                tok = int(np.argmax(logits[-1]))
            out.append(float(tok) if mistake == "floats" else tok)
            if mistake == "no_state":
                logits, _ = S.forward(params, [tok])
            elif mistake != "no_feed":
                logits, state = S.forward(params, [tok], state)
        if mistake == "array":
            return np.array(out)
        if mistake == "bytes":
            return bytes(out)
        return out
    return generate


G = "generate"
sub(G, "state not carried")(gen("no_state"))
sub(G, "prompt's first position")(gen("first_row"))
sub(G, "read twice")(gen("refeed"))
sub(G, ARGMAX_FLAT.name)(gen("flat"))
sub(G, PROMPT_INCLUDED.name)(gen("with_prompt"))
sub(G, OFF_BY_ONE.name)(gen("plus_one"))
sub(G, OFF_BY_ONE.name)(gen("minus_one"))
sub(G, "wrong type")(gen("array"))
sub(G, "wrong type")(gen("bytes"))
sub(G, "wrong type")(gen("floats"))
sub(G, VAGUE)(gen("sample"))
sub(G, VAGUE)(gen("no_feed"))  # the new token never fed back: the same id n times


@sub(G, "wrong type")
def _(params, prompt, n):
    """yields the ids, forever"""
    logits, state = S.forward(params, list(prompt))
    while True:
        tok = int(np.argmax(logits[-1]))
        yield tok
        logits, state = S.forward(params, [tok], state)


@sub(G, TIME)
def _(params, prompt, n):
    """reads the prompt and everything generated so far again for each new token (right ids, n times the work:
    stopped at the limit on the shipped model's 40 tokens, the hint naming that cause)"""
    seq, out = list(prompt), []
    for _ in range(n):
        logits, _ = S.forward(params, seq)
        time.sleep(1e-3 * len(seq))  # 1 ms a token read, so that a fast machine cannot finish within the limit
        out.append(int(np.argmax(logits[-1])))
        seq.append(out[-1])
    return out


@sub(G, TIME)
def _(params, prompt, n):
    """counts down a copy of n it never changes"""
    out, left = [], n
    while left > 0:
        out = out[-1000:] + [0]
    return out


# ================================================================================== 9. wkv_grad

def grad(mistake=None):
    """A learner's wkv_grad as the notebook derives it, loops over t, each mistake one slip."""
    def wkv_grad(w, u, k, v, gy):
        T, C = k.shape
        gw, gu = np.zeros(C), np.zeros(C)
        gk, gv = np.zeros((T, C)), np.zeros((T, C))
        gu_t = np.zeros((T, C))
        for t in range(T):
            d = np.arange(t - 1, -1, -1)[:, None]  # t-1-i
            x = np.concatenate([-d * w + k[:t], (u + k[t])[None]])
            P = np.exp(x) if mistake == "no_max" else np.exp(x - x.max(0))
            if mistake != "no_norm":
                P = P / P.sum(0)
            y = (P * v[:t + 1]).sum(0)
            R = (1 if mistake == "no_gy" else gy[t]) * P * (v[:t + 1] - y)
            dv = (1 if mistake == "no_gy" else gy[t]) * P
            if mistake == "gv_past":
                dv[t] = 0
            dk = R.copy()
            if mistake == "gk_past":
                dk[t] = 0
            if mistake == "gk_from_P":
                dk = P.copy()
            if mistake == "assign":
                gk[:t + 1], gv[:t + 1] = dk, dv
            else:
                gk[:t + 1] += dk
                gv[:t + 1] += dv
            if mistake == "gu_assign":
                gu = R[t]
            elif mistake == "gu_all":
                gu += R.sum(0)
            else:
                gu += R[t]
            gu_t[t] = R[t]
            if mistake == "gw_with_current":
                dd = np.arange(t - 1, -2, -1)[:, None]  # t-1-i for i <= t: -1 for the current token
                gw -= (dd * R).sum(0)
            else:
                gw -= ((d + 1 if mistake == "gw_t_minus_i" else d) * R[:t]).sum(0)
        if mistake == "sign":
            gw = -gw
        if mistake == "ln_w":
            gw = gw * w
        if mistake == "gu_rows":
            gu = gu_t
        out = (gw, gu, gk, gv)
        if mistake == "order":
            return gk, gv, gw, gu
        if mistake == "list":
            return list(out)
        if mistake == "f32":
            return tuple(a.astype(np.float32) for a in out)
        return out
    return wkv_grad


WG = "wkv_grad"
sub(WG, "ln w")(grad("ln_w"))
sub(WG, "sign of gw")(grad("sign"))
sub(WG, "decayed once too often in gw")(grad("gw_t_minus_i"))
sub(WG, "decayed once too often in gw")(grad("gw_with_current"))  # the same numbers: the hint says so
sub(WG, "gu not summed")(grad("gu_assign"))
sub(WG, "gu not summed")(grad("gu_rows"))
sub(WG, "every exponent")(grad("gu_all"))
sub(WG, "gk missing")(grad("gk_past"))
sub(WG, "gv missing")(grad("gv_past"))
sub(WG, "assigned (=)")(grad("assign"))
sub(WG, "gy left out")(grad("no_gy"))
sub(WG, "not normalised")(grad("no_norm"))
sub(WG, "exp overflow")(grad("no_max"))
sub(WG, "wrong order")(grad("order"))
sub(WG, "wrong type")(grad("list"))
sub(WG, "narrower dtype")(grad("f32"))
sub(WG, VAGUE)(grad("gk_from_P"))


# ================================================================================== the tests

CHECKED = [e.name for e in E.EXERCISES]


_RESULTS = {}


def results(exercise):
    """[(submission, its CheckResult)] of one exercise, each submission run once per session."""
    # a submission that never returns can be stopped only where the checks have their alarm (SIGALRM, in
    # the main thread, no other timer running); elsewhere it would hang the campaign: left out there
    alarm = H.Alarm(TIME_LIMIT).usable()
    if (exercise, alarm) not in _RESULTS:
        _RESULTS[exercise, alarm] = [(s, s.run()) for s in SUBMISSIONS
                                     if s.exercise == exercise and (alarm or s.label != TIME)]
    return _RESULTS[exercise, alarm]


@pytest.mark.parametrize("exercise", CHECKED)
def test_each_wrong_submission_gets_its_outcome(exercise):
    """No wrong submission passes, none is named wrongly; each named as labelled (vague only where its
    mistake is not one the check recognises)."""
    found = results(exercise)
    assert found, exercise
    bad = [(s, s.label, r.status, r.mistake, r.message) for s, r in found if outcome(r, s.label) not in
           ("correct", "vague") or (outcome(r, s.label) == "vague") != (s.label == VAGUE)]
    assert not bad, "\n\n".join(map(str, bad))


def test_the_campaign_is_over_150_submissions_across_the_nine_notebooks():
    assert len(SUBMISSIONS) >= 150
    assert {s.exercise for s in SUBMISSIONS} == set(CHECKED)


def test_every_recognised_mistake_is_named_on_a_submission_that_makes_it():
    """Every mistake a module declares (hence every one TEACHERS.md lists) is the label of some
    submission: none is listed that no learner's code has been shown to reach."""
    labelled = {(s.exercise, s.label) for s in SUBMISSIONS}
    for e in E.EXERCISES:
        for m in e.recognised:
            assert (e.name, m.name) in labelled, (e.name, m.name)
    common = {H.TIME_OUT.name if s.label == TIME else s.label for s in SUBMISSIONS}
    for m in H.COMMON:
        assert m.name in common, m.name


# the classes of mistake a submission's label falls in, in the order the table lists them
CONTRACT = {m.name for m in (H.NONE_RETURNED, H.WRONG_TYPE, H.WRONG_COUNT, H.WRONG_NESTING, H.WRONG_ORDER,
                             H.WRONG_SHAPE, H.TRANSPOSED, H.WIDENED, H.NARROWED, H.NOT_FLOAT)}
CLASSES = ("the exercise's arithmetic (a mistake its module names)", "the contract (None, type, count, grouping, "
           "order, shape, dtype)", "inputs changed in place", "exp overflow (inf/nan)", "an exception",
           "too slow or never returns (time limit)", "a mistake no check recognises")


def mistake_class(submission):
    label = submission.label
    if label == VAGUE:
        return CLASSES[6]
    if label == TIME:
        return CLASSES[5]
    if label == RAISED:
        return CLASSES[4]
    if label == H.OVERFLOW.name:
        return CLASSES[3]
    if label == H.IN_PLACE.name:
        return CLASSES[2]
    if label in CONTRACT:
        return CLASSES[1]
    return CLASSES[0]


def _row(key, found):
    counts = Counter(outcome(r, s.label) for s, r in found)
    return (key, len(found), counts["correct"], counts["vague"], counts["wrong"], counts["passing"])


def tables():
    """(rows per exercise, rows per class of mistake): (key, submissions, named correctly, vaguely, wrongly,
    passing). Every submission is run once."""
    found = [x for exercise in CHECKED for x in results(exercise)]
    by_exercise = [_row(e, [x for x in found if x[0].exercise == e]) for e in CHECKED]
    by_class = [_row(c, [x for x in found if mistake_class(x[0]) == c]) for c in CLASSES]
    return by_exercise, by_class


def test_the_tables_count_every_submission_once_and_none_passes():
    by_exercise, by_class = tables()
    n = len([s for s in SUBMISSIONS if H.Alarm(TIME_LIMIT).usable() or s.label != TIME])
    for rows in (by_exercise, by_class):
        assert sum(r[1] for r in rows) == n
        assert all(r[1] == sum(r[2:]) for r in rows)  # each submission one outcome
        assert all(r[1] > 0 for r in rows)  # every exercise, every class of mistake tried
        assert sum(r[4] for r in rows) == 0 and sum(r[5] for r in rows) == 0  # none named wrongly, none passing


def markdown(rows, first):
    lines = [f"| {first} | submissions | named correctly | named vaguely | named wrongly | passing |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    totals = [sum(r[i] for r in rows) for i in range(1, 6)]
    lines.append("| all | " + " | ".join(map(str, totals)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    by_exercise, by_class = tables()
    print(markdown(by_exercise, "exercise"))
    print()
    print(markdown(by_class, "class of mistake"))
    if "-v" in sys.argv:  # every submission, what it is and how it was named
        for exercise in CHECKED:
            for s, r in results(exercise):
                print(f"{outcome(r, s.label):8} {exercise:15} {s.what}  ->  {r.mistake or r.status}")
