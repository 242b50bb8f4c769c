"""Checks for the exercises of notebooks/exercises/: build RWKV-4 yourself, each piece checked against
rwkv_np/rwkv4/reference.py.

Each `check_*` function takes the learner's function, runs it on cases built from the reference (random
and real weights, T = 1, keys of +-100, u very negative, a state carried from one call to the next) and
returns a `CheckResult`: its text says which cases passed or, for the first case that failed, the first
wrong value (its index, expected and got) and, when the answer is that of a known mistake, the mistake
by name with a hint. A mistake is recognised by computing what the mistaken formula gives on the same
case (the reference's arithmetic with that one thing changed) and by signatures: inf or nan, a shape
off by one, inputs changed in place. A stub that still raises NotImplementedError is reported as "not
implemented yet"; any other exception as one line naming it, the case and the learner's line.

    python -m rwkv_np.exercises write-solutions DIR   # the exercise notebooks, solved (for a teacher)
"""

import inspect
import json
import linecache
import os
import sys
import traceback

import numpy as np

from ..rwkv4 import reference
from ..rwkv4.reference import ATT_X, AA, BB, PP, FFN_X, PP_EMPTY

__all__ = ["CheckResult", "reference_wkv", "shipped_params", "show_generation",
           "check_token_shift", "check_mix", "check_wkv_naive", "check_wkv_recurrent", "check_wkv_stable",
           "check_time_mixing", "check_channel_mixing", "check_step", "check_forward", "check_generate",
           "check_wkv_grad", "write_solutions"]

NOT_IMPLEMENTED = "not implemented yet"


# ---------------------------------------------------------------------------------- results

class CheckResult:
    """What a check found. True when every case passed; its text (repr) is the message to read."""

    def __init__(self, exercise, status, message, case=None, mistake=None):
        self.exercise = exercise  # the name of the learner's function
        self.status = status  # "passed", "failed", "not implemented" or "error"
        self.message = message
        self.case = case  # the name of the first failing case
        self.mistake = mistake  # the name of the recognised mistake, if any

    @property
    def passed(self):
        return self.status == "passed"

    def __bool__(self):
        return self.passed

    def __repr__(self):
        return self.message


class _Mistake:
    """A known mistake: its name, a hint saying what to change, and the output the mistaken formula
    gives on a case (`variant(case)`, None when the mistake cannot show on that case)."""

    def __init__(self, name, hint, variant=None):
        self.name, self.hint, self.variant = name, hint, variant


class _Case:
    """One test case: a name, the arguments, and how to call the learner's function on them.

    call(fn, args) returns the learner's answer; `view` turns an answer (the reference's or the
    learner's) into the named arrays that are compared; `data` is whatever the mistakes' variants need."""

    def __init__(self, name, args, expected, call=None, data=None, chained=False):
        self.name, self.args, self.expected, self.data = name, args, expected, data
        self.call = call or (lambda fn, args: fn(*args))
        self.chained = chained  # the learner's function is called twice, its own state carried


class _Wrong(Exception):
    """The learner's answer has the wrong structure, shape or dtype: the message says which."""

    def __init__(self, message, kind="shape"):
        super().__init__(message)
        self.kind = kind


def _copy(obj):
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy(v) for v in obj)
    return obj


def _changed(before, after, path="argument"):
    """The name of the first array that differs between two copies of the arguments, or None."""
    if isinstance(before, np.ndarray):
        same = (isinstance(after, np.ndarray) and after.shape == before.shape
                and np.array_equal(before, after, equal_nan=True))
        return None if same else path
    if isinstance(before, dict):
        for k in before:
            found = _changed(before[k], after.get(k) if isinstance(after, dict) else None, f"{path}[{k!r}]")
            if found:
                return found
    if isinstance(before, (list, tuple)) and not isinstance(before, str):
        for i, (b, a) in enumerate(zip(before, after)):
            found = _changed(b, a, f"{path}[{i}]")
            if found:
                return found
    return None


def _arg_name(fn, i):
    """The name of fn's i-th parameter ("argument i" when it cannot be read)."""
    try:
        return list(inspect.signature(fn).parameters)[i]
    except (TypeError, ValueError, IndexError):
        return f"argument {i}"


def _fmt(x):
    return f"{x:.6g}" if np.isfinite(x) else str(x)


def _structure(got, expected):
    """Raise _Wrong when the learner's answer does not have the reference's number of return values."""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            what = f"{len(got)} values" if isinstance(got, (tuple, list)) else f"a {type(got).__name__}"
            raise _Wrong(f"your function returned {what}; it should return {len(expected)}")


def _as_arrays(got, names, like):
    """The learner's (viewed) answer as a tuple of float arrays, one per name, checked against the
    shapes and dtypes of `like` (the reference's); raises _Wrong with a plain message otherwise."""
    out = []
    for name, g, e in zip(names, got, like):
        try:
            g = np.asarray(g)
        except Exception:  # noqa: BLE001 - a ragged list, say: report it as a wrong structure
            raise _Wrong(f"{name} is not an array (got {type(g).__name__})") from None
        if g.shape != e.shape:
            raise _Wrong(f"{name} has shape {g.shape}; expected {e.shape}")
        if not np.issubdtype(g.dtype, np.floating) or np.finfo(g.dtype).bits < np.finfo(e.dtype).bits:
            raise _Wrong(f"{name} has dtype {g.dtype}; expected {e.dtype} (the dtype of the inputs)", "dtype")
        out.append(g)
    return tuple(out)


def _first_difference(expected, got, names, rtol, atol):
    """(kind, text) for the first value of `got` not within tolerance of `expected`, or None."""
    for name, e, g in zip(names, expected, got):
        bad = ~np.isclose(g, e, rtol=rtol, atol=atol)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            where = f"{name}[{', '.join(map(str, i))}]" if i else name
            kind = "nonfinite" if not np.isfinite(g[i]) else "value"
            return kind, f"{where}: expected {_fmt(e[i])}, got {_fmt(g[i])}"
    return None


def _frame_of_learner(exc):
    """'line N: code' of the deepest frame outside NumPy and this module, if any."""
    numpy_dir = os.path.dirname(np.__file__)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == __file__ or frame.filename.startswith(numpy_dir):
            continue
        line = frame.line or linecache.getline(frame.filename, frame.lineno).strip()
        return f" (in {frame.name}, line {frame.lineno}: {line})" if line else f" (in {frame.name})"
    return ""


def _run_checks(exercise, fn, cases, names, view, mistakes, rtol, atol, signatures=()):
    """Run fn on every case; stop at the first failure and explain it. NumPy's overflow and 0/0
    warnings are silenced meanwhile: an inf or nan in the answer is explained by the message."""
    with np.errstate(all="ignore"):
        return _run_cases(exercise, fn, cases, names, view, mistakes, rtol, atol, signatures)


def _run_cases(exercise, fn, cases, names, view, mistakes, rtol, atol, signatures):
    title = f"check_{exercise}"
    if not callable(fn):
        return CheckResult(exercise, "error", f"✗ {title}: expected your function `{exercise}`, got "
                                              f"{type(fn).__name__}")
    for case in cases:
        args = _copy(case.args)
        try:
            got = case.call(fn, args)
        except NotImplementedError:
            return CheckResult(exercise, "not implemented",
                               f"… {title}: {NOT_IMPLEMENTED}: fill in `{exercise}` above "
                               f"(it still raises NotImplementedError), run its cell, then this one.")
        except Exception as e:  # noqa: BLE001 - the learner's code may raise anything; say what, briefly
            text = str(e).splitlines()[0][:200] if str(e) else ""
            return CheckResult(exercise, "error",
                               f"✗ {title}: case '{case.name}': your function raised "
                               f"{type(e).__name__}: {text}{_frame_of_learner(e)}", case.name)
        expected = view(case.expected)
        changed = None
        for i, (before, after) in enumerate(zip(case.args, args)):
            changed = changed or _changed(before, after, _arg_name(fn, i))
        try:
            _structure(got, case.expected)
            got_arrays = _as_arrays(view(got), names, expected)
            diff = _first_difference(expected, got_arrays, names, rtol, atol)
        except _Wrong as e:
            got_arrays, diff = None, (e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - an answer so malformed that even viewing it fails
            got_arrays, diff = None, ("shape", f"your function's answer could not be read: "
                                               f"{type(e).__name__}: {e}")
        if changed:
            return _fail(exercise, case, diff, "modified the inputs in place",
                         f"`{changed}` was changed by your function. Work on new arrays (x = x * mu, "
                         f"np.concatenate, .copy()) instead of writing into the ones passed in: the caller "
                         f"still needs them (the reference leaves every input as it was).")
        if diff is None:
            continue
        for m in mistakes:
            if got_arrays is None or m.variant is None:
                continue
            try:
                wrong = m.variant(case)
            except Exception:  # noqa: BLE001 - a variant that cannot be formed on this case does not apply
                wrong = None
            if wrong is None:
                continue
            wrong = tuple(np.asarray(a) for a in view(wrong))
            if not all(np.isfinite(a).all() for a in wrong):
                continue
            if (_first_difference(expected, wrong, names, rtol, atol) is not None
                    and _first_difference(wrong, got_arrays, names, rtol, atol) is None):
                return _fail(exercise, case, diff, m.name, m.hint)
        for sig in signatures:
            found = sig(case, got, got_arrays, diff)
            if found:
                return _fail(exercise, case, diff, *found)
        if diff[0] == "nonfinite":
            return _fail(exercise, case, diff, "exp overflow (inf/nan)",
                         "an exponential overflowed (float32: e^x is inf above x ≈ 88.7; float64: above 709.8) "
                         "or a 0/0 appeared. Keep every exponent relative to the largest one, as in the "
                         "stable form, so that no e^x exceeds 1.")
        if diff[0] == "dtype":
            return _fail(exercise, case, diff, "wrong dtype",
                         "compute in the dtype of the inputs (np.empty_like(k), not np.empty(shape, int)).")
        if diff[0] == "shape":
            return _fail(exercise, case, diff, "wrong shape",
                         "check which axis is time (T, rows) and which is channels (C, columns), and what "
                         "the function returns.")
        return _fail(exercise, case, diff, None, None)
    names_of_cases = "; ".join(c.name for c in cases)
    return CheckResult(exercise, "passed", f"✓ {title}: all {len(cases)} cases passed ({names_of_cases}).")


def _fail(exercise, case, diff, mistake, hint):
    """The message for a failed case: diff = (kind, text) of what differs, None if the outputs were right."""
    if diff is None:
        detail = "the outputs were right, but:"
    elif diff[0] in ("value", "nonfinite"):
        detail = f"first wrong value: {diff[1]}"
    else:
        detail = diff[1]
    lines = [f"✗ check_{exercise}: case '{case.name}' failed.", f"  {detail}"]
    if mistake:
        lines.append(f"  This looks like: {mistake}.")
        lines.append(f"  Hint: {hint}")
    else:
        lines.append("  No known mistake matches; compare your formula with the equation above, term by term, "
                     "on this case.")
    return CheckResult(exercise, "failed", "\n".join(lines), case.name, mistake)


# ---------------------------------------------------------------------------------- eq. 14, three ways

def reference_wkv(w, u, k, v, aa=None, bb=None, pp=None):
    """Eq. 14 over k, v (T, C) after the state (aa, bb, pp) (None: an empty past), computed by the
    reference's own `wkv` (rwkv_np/rwkv4/reference.py) in the dtype of k. w (C,) > 0 the decay, u (C,)
    the bonus. Returns (wkv (T, C), (aa, bb, pp)): the state in the reference's form (a = aa e^pp, b = bb e^pp)."""
    k, v = np.asarray(k), np.asarray(v)
    C = k.shape[1]
    if aa is None:
        aa, bb, pp = np.zeros(C, k.dtype), np.zeros(C, k.dtype), np.full(C, PP_EMPTY, k.dtype)
    return reference.wkv(np.asarray(w, k.dtype), np.asarray(u, k.dtype), k, v, aa, bb, pp)


def _wkv_variant(w, u, k, v, a, b, mistake=None):
    """Eq. 14 as the plain recurrence in float64 (a, b the sums themselves), with one mistake applied:
    the outputs a learner's version with that mistake gives. Returns (wkv (T, C), a, b)."""
    w, u, k, v, a, b = (np.asarray(z, np.float64) for z in (w, u, k, v, a, b))
    out = np.empty_like(k)
    decay = np.exp(w) if mistake == "decay_sign" else np.exp(-w)
    for t in range(len(k)):
        past_a, past_b = (decay * a, decay * b) if mistake == "decayed_once_too_often" else (a, b)
        if mistake == "bonus_on_past":  # u on the past instead of on the current token
            past_a, past_b = np.exp(u) * past_a, np.exp(u) * past_b
        now = np.exp(k[t]) if mistake in ("no_bonus", "bonus_on_past") else np.exp(u + k[t])
        out[t] = (past_a + now * v[t]) / (past_b + now)
        add = np.exp(u + k[t]) if mistake == "bonus_in_state" else np.exp(k[t])
        a, b = decay * a + add * v[t], decay * b + add
    return out, a, b


def _wkv_stable_variant(w, u, k, v, aa, bb, pp, mistake=None):
    """The stable recurrence (as reference.time_mixing) in float64, with `p_not_updated` applied:
    aa, bb rescaled to the new maximum but pp left as it was. Returns (wkv, aa, bb, pp)."""
    w, u, k, v, aa, bb, pp = (np.asarray(z, np.float64) for z in (w, u, k, v, aa, bb, pp))
    out = np.empty_like(k)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        e1, e2 = np.exp(pp - q), np.exp(u + k[t] - q)
        out[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        q = np.maximum(pp - w, k[t])
        e1, e2 = np.exp(pp - w - q), np.exp(k[t] - q)
        aa, bb = e1 * aa + e2 * v[t], e1 * bb + e2
        if mistake != "p_not_updated":
            pp = q
    return out, aa, bb, pp


def _plain(aa, bb, pp):
    """(a, b) of a state stored as (aa, bb, pp), in float64."""
    aa, bb, pp = (np.asarray(z, np.float64) for z in (aa, bb, pp))
    return aa * np.exp(pp), bb * np.exp(pp)


def _state_view(aa, bb, pp):
    """A state (aa, bb, pp) as two numbers per channel that any consistent scaling shares:
    a / b = aa / bb, and ln b = ln bb + pp (in float64, so that ln of a float32 bb is exact enough).
    An empty past (bb = 0) shows as a/b = 0, ln b = PP_EMPTY rather than 0/0."""
    aa, bb, pp = (np.asarray(z, np.float64) for z in (aa, bb, pp))
    empty = bb == 0  # the state before any token (b = 0): shown as a/b = 0, ln b = PP_EMPTY
    with np.errstate(all="ignore"):
        return np.where(empty, 0.0, aa / bb), np.where(empty, PP_EMPTY, np.log(bb) + pp)


def _ab_view(a, b):
    with np.errstate(all="ignore"):
        return np.asarray(a / b, np.float64), np.log(np.asarray(b, np.float64))


# ---------------------------------------------------------------------------------- case data

def _rng(seed):
    return np.random.default_rng(seed)


def _wkv_inputs(seed, T, C, dtype=np.float64, k_scale=1.0, u=None):
    rng = _rng(seed)
    w = np.exp(rng.uniform(-3, 1, C)).astype(dtype)  # decay rates from 0.05 to 2.7
    u = (rng.uniform(-1, 1.5, C) if u is None else np.full(C, u)).astype(dtype)
    k = (rng.normal(0, 1, (T, C)) * k_scale).astype(dtype)
    v = rng.normal(0, 1, (T, C)).astype(dtype)
    return w, u, k, v


_SHIPPED = {}


def shipped_params():
    """The nested params of the shipped checkpoint (rwkv_np/assets/rwkv4-shakespeare.safetensors),
    loaded once: rwkv_np.load_model(path).params."""
    if "params" not in _SHIPPED:
        from .. import load_model
        from ..cli import default_model_path

        _SHIPPED["params"] = load_model(default_model_path()).params
    return _SHIPPED["params"]


def _tiny_params(seed=0, n_layer=2, n_embd=8, ffn_dim=32, vocab_size=16):
    from ..config import RWKVConfig
    from ..rwkv4.params import ARCH, random_weights

    config = RWKVConfig(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, ffn_dim=ffn_dim)
    return ARCH.nest(random_weights(config, seed), n_layer)


def _real_layer_input(layer=0):
    """Real activations: the LayerNorm outputs entering layer `layer`'s time and channel mixing on
    the 14 bytes of "First Citizen:", from the shipped model."""
    params = shipped_params()
    x = reference.layer_norm(params["emb"][list(b"First Citizen:")], **params["ln0"])  # (T, C)
    state = reference.initial_state(len(params["blocks"]), x.shape[1])
    for p, s in zip(params["blocks"][:layer], state):
        x, _ = reference.block(x, s, **p)
    p, s = params["blocks"][layer], state[layer]
    x_att = reference.layer_norm(x, **p["ln1"])
    x = x + reference.time_mixing(x_att, s[ATT_X], s[AA], s[BB], s[PP], **p["att"])[0]
    return p, {"att": {"x": x_att}, "ffn": {"x": reference.layer_norm(x, **p["ln2"])}}


def _text_tokens(text=b"ROMEO:\nWhat light"):
    return np.frombuffer(text, np.uint8).astype(np.int64)


# ---------------------------------------------------------------------------------- 1. token shift, mix

_TS_MISTAKES = [
    _Mistake("the shift not using the carried x_prev at t = 0 (zeros instead)",
             "row 0 of the shifted x is x_prev, the last token of the previous call (the state), not zeros.",
             lambda c: np.concatenate([np.zeros_like(c.args[1])[None], c.args[0][:-1]])),
    _Mistake("shifted the wrong way (x_{t+1} instead of x_{t-1})",
             "row t must hold the previous token x_{t-1}: move x down one row (x_prev on top, drop the last "
             "row), not up.",
             lambda c: np.concatenate([c.args[0][1:], c.args[1][None]])),
    _Mistake("no shift at all (x_t instead of x_{t-1})",
             "the function returns x itself: row t must be x_{t-1}.",
             lambda c: c.args[0]),
]


def _ts_signature(case, got, got_arrays, diff):
    x = case.args[0]
    shape = getattr(np.asarray(got) if not isinstance(got, tuple) else None, "shape", None)
    if shape == (len(x) + 1, x.shape[1]):
        return ("kept all T rows plus x_prev (T + 1 rows)",
                "the output has one row per token, T rows: x_prev on top, then x without its last row "
                "(the last row becomes the next call's x_prev).")
    return None


def _ts_cases():
    rng = _rng(1)
    x = rng.normal(0, 1, (5, 3)).astype(np.float32)
    prev = rng.normal(0, 1, 3).astype(np.float32)
    x1 = rng.normal(0, 1, (1, 4)).astype(np.float32)
    p1 = rng.normal(0, 1, 4).astype(np.float32)
    x2 = rng.normal(0, 1, (4, 6)).astype(np.float32)
    return [_Case("T = 5, C = 3, x_prev from the previous call", (x, prev), reference.token_shift(x, prev)),
            _Case("T = 1", (x1, p1), reference.token_shift(x1, p1)),
            _Case("T = 4, C = 6, state carried: x_prev = the last row of the previous chunk",
                  (x2, x[-1, :1].repeat(6)), reference.token_shift(x2, x[-1, :1].repeat(6)))]


def check_token_shift(token_shift):
    """token_shift(x (T, C), x_prev (C,)) -> x_{t-1} at every t, (T, C)."""
    # a shift only copies values: exact
    return _run_checks("token_shift", token_shift, _ts_cases(), ("shifted x",), lambda r: (r,),
                       _TS_MISTAKES, rtol=0, atol=0, signatures=[_ts_signature])


_MIX_MISTAKES = [
    _Mistake("mu applied to the wrong term (mu on x_{t-1})",
             "mu is the share of the current token: mu * x + (1 - mu) * x_shift. mu = 1 must give x itself.",
             lambda c: c.args[2] * c.args[1] + (1 - c.args[2]) * c.args[0]),
    _Mistake("(1 - mu) missing on x_{t-1}",
             "the interpolation is mu * x + (1 - mu) * x_shift: both weights, summing to 1.",
             lambda c: c.args[2] * c.args[0] + c.args[1]),
]


def _mix_cases():
    rng = _rng(2)
    out = []
    for name, T, C in (("T = 4, C = 5, random mu in [0, 1]", 4, 5), ("T = 1", 1, 3)):
        x, xs = rng.normal(0, 1, (2, T, C)).astype(np.float32)
        mu = rng.uniform(0, 1, C).astype(np.float32)
        out.append(_Case(name, (x, xs, mu), reference.mix(x, xs, mu)))
    x, xs = rng.normal(0, 1, (2, 3, 2)).astype(np.float32)
    mu = np.array([1, 0], np.float32)
    out.append(_Case("mu = 1 in channel 0 (x only), mu = 0 in channel 1 (x_shift only)", (x, xs, mu),
                     reference.mix(x, xs, mu)))
    return out


def check_mix(mix):
    """mix(x (T, C), x_shift (T, C), mu (C,)) -> mu x_t + (1 - mu) x_{t-1}, (T, C)."""
    # float32: a correct rearrangement (x_shift + mu * (x - x_shift)) differs by a few roundings of |x| ~ 3
    return _run_checks("mix", mix, _mix_cases(), ("mixed x",), lambda r: (r,), _MIX_MISTAKES,
                       rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------- 2-4. eq. 14

_HINT_DECAY = ("the latest past token (i = t-1) is not decayed at all: its weight is e^{k_{t-1}}, the one "
               "before e^{-w + k_{t-2}}. The exponent is -(t-1-i)w, not -(t-i)w; in the recurrence, use "
               "a_{t-1} as it is for wkv_t, and decay it only when moving on to a_t.")
_HINT_BONUS_STATE = ("the bonus u is for the current token's own output only: wkv_t uses e^{u+k_t}, but the "
                     "state takes token t in with e^{k_t} (a_t = e^{-w} a_{t-1} + e^{k_t} v_t).")
_HINT_BONUS_PAST = ("u belongs to the current token's term, e^{u+k_t} v_t, and to no past term: the past "
                    "terms are e^{-(t-1-i)w + k_i} v_i, without u.")
_HINT_NO_BONUS = ("the current token's term is e^{u + k_t} v_t (and e^{u + k_t} below): u is missing. (u on "
                  "every term, past and current, looks the same: a factor e^u above and below cancels.)")
_HINT_SIGN = "the past decays: the weight is e^{-(t-1-i)w} with w > 0, a minus sign in the exponent."


def _wkv_mistakes(state_of):
    """The eq. 14 mistakes as variants; state_of(case) -> (w, u, k, v, a, b) in plain form."""
    def variant(name):
        def f(case):
            w, u, k, v, a, b = state_of(case)
            return case.data["pack"](*_wkv_variant(w, u, k, v, a, b, name), case)
        return f

    return [
        _Mistake("the latest past token decayed once too often (e^{-(t-i)w} instead of e^{-(t-1-i)w})",
                 _HINT_DECAY, variant("decayed_once_too_often")),
        _Mistake("u applied to the past instead of the current token", _HINT_BONUS_PAST, variant("bonus_on_past")),
        _Mistake("u missing on the current token", _HINT_NO_BONUS, variant("no_bonus")),
        _Mistake("the state updated with the bonus u", _HINT_BONUS_STATE, variant("bonus_in_state")),
        _Mistake("the decay with the wrong sign (e^{+(t-1-i)w})", _HINT_SIGN, variant("decay_sign")),
    ]


def _eq14_signatures(case, got, got_arrays, diff):
    if got_arrays is None:
        return None
    wkv, k, v = got_arrays[0], case.data["k"], case.data["v"]
    if wkv.shape != k.shape:
        return None
    if np.isnan(wkv[0]).any() and len(k) >= 1 and case.data.get("empty", True):
        return ("the current token left out of the sums (0/0 at t = 0)",
                "both sums of eq. 14 include the current token t with weight e^{u + k_t}: at t = 0 it is "
                "the only term, so wkv_0 = v_0.")
    e = case.data["expected_unnormalised"]
    if e is not None and np.allclose(wkv, e, rtol=1e-6, atol=1e-9):
        return ("the denominator missing",
                "eq. 14 is a weighted average: divide the weighted sum of the v_i by the sum of the "
                "same weights.")
    return None


def _naive_case(name, w, u, k, v):
    expected = reference_wkv(w, u, k, v)[0]
    # the unnormalised numerator, to recognise a missing denominator (float64, moderate keys)
    num = np.stack([sum(np.exp(-(t - 1 - i) * w + k[i]) * v[i] for i in range(t))
                    + np.exp(u + k[t]) * v[t] for t in range(len(k))])
    pack = lambda out, a, b, c: out  # noqa: E731 - check_wkv_naive compares wkv alone
    return _Case(name, (w, u, k, v), expected,
                 data=dict(k=k, v=v, pack=pack, expected_unnormalised=num, empty=True))


def check_wkv_naive(wkv_naive):
    """wkv_naive(w (C,), u (C,), k (T, C), v (T, C)) -> wkv (T, C): eq. 14 as written, empty past."""
    cases = [_naive_case("random, T = 6, C = 4, float64", *_wkv_inputs(10, 6, 4)),
             _naive_case("T = 1", *_wkv_inputs(11, 1, 3)),
             _naive_case("u very negative (u = -30: the current token's own weight ~ 0)",
                         *_wkv_inputs(12, 5, 3, u=-30.0)),
             _naive_case("keys of about +-10, T = 8", *_wkv_inputs(13, 8, 2, k_scale=10.0))]
    zeros = lambda c: (*c.args, np.zeros(c.args[0].shape), np.zeros(c.args[0].shape))  # noqa: E731
    # float64 throughout: a correct sum in another order differs by ~T * 1e-16 relative
    return _run_checks("wkv_naive", wkv_naive, cases, ("wkv",), lambda r: (r,), _wkv_mistakes(zeros),
                       rtol=1e-9, atol=1e-12, signatures=[_eq14_signatures])


def _recurrent_case(name, w, u, k, v, a=None, b=None, split=None):
    C = k.shape[1]
    a0 = np.zeros(C) if a is None else a
    b0 = np.zeros(C) if b is None else b
    if a is None:
        out, (aa, bb, pp) = reference_wkv(w, u, k, v)
    else:  # a state (a, b) with b > 0 in the reference's form: pp = ln b, bb = 1, aa = a / b
        out, (aa, bb, pp) = reference_wkv(w, u, k, v, a / b, np.ones(C), np.log(b))
    a_ref, b_ref = _plain(aa, bb, pp)
    expected = (out, a_ref, b_ref)

    def pack(out, a, b, case):
        return out, a, b

    call = None
    if split is not None:  # two calls, the learner's own state carried from the first to the second
        def call(fn, args):
            w, u, k, v, a, b = args
            y1, a1, b1 = fn(w, u, k[:split], v[:split], a, b)
            y2, a2, b2 = fn(w, u, k[split:], v[split:], np.asarray(a1).copy(), np.asarray(b1).copy())
            return np.concatenate([np.asarray(y1), np.asarray(y2)]), a2, b2
    return _Case(name, (w, u, k, v, a0, b0), expected, call,
                 data=dict(k=k, v=v, pack=pack, expected_unnormalised=None, empty=a is None),
                 chained=split is not None)


def _ab_state_view(r):
    """(wkv, a, b) -> (wkv, a/b, ln b): the state compared in a form where float64 rounding of a
    sum of e^{k} terms stays relative."""
    return (np.asarray(r[0]), *_ab_view(np.asarray(r[1]), np.asarray(r[2])))


def check_wkv_recurrent(wkv_recurrent):
    """wkv_recurrent(w, u, k, v, a, b) -> (wkv (T, C), a, b): eq. 14 as a recurrence from the state
    (a, b) (C,) each, the two sums over the past."""
    rng = _rng(20)
    w, u, k, v = _wkv_inputs(21, 7, 4)
    a_s, b_s = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)
    cases = [_recurrent_case("random, T = 7, C = 4, empty past", w, u, k, v),
             _recurrent_case("T = 1", *_wkv_inputs(22, 1, 3)),
             _recurrent_case("a past given: a, b from earlier tokens", w, u, k, v, a_s, b_s),
             _recurrent_case("state carried across two calls (T = 3 then 4)", w, u, k, v, split=3),
             _recurrent_case("u very negative (u = -30)", *_wkv_inputs(23, 5, 3, u=-30.0))]
    names = ("wkv", "a/b after the last token", "ln b after the last token")

    def state_of(case):
        return case.args

    mistakes = _wkv_mistakes(state_of) + [_Mistake(
        "the state passed in ignored (started from a = b = 0)",
        "start the scan from the a and b given: they are the past, carried from the previous call.",
        lambda c: _wkv_variant(*c.args[:4], np.zeros_like(c.args[4]), np.zeros_like(c.args[5]))
        if not c.chained else None)]
    return _run_checks("wkv_recurrent", wkv_recurrent, cases, names, _ab_state_view, mistakes,
                       rtol=1e-9, atol=1e-12, signatures=[_eq14_signatures])


def _stable_view(r):
    wkv, aa, bb, pp = (np.asarray(z) for z in r)
    return (wkv, *_state_view(aa, bb, pp))


def _stable_case(name, w, u, k, v, state=None, split=None):
    C = k.shape[1]
    dt = k.dtype
    if state is None:
        state = (np.zeros(C, dt), np.zeros(C, dt), np.full(C, PP_EMPTY, dt))
    out, st = reference_wkv(w, u, k, v, *state)

    call = None
    if split is not None:
        def call(fn, args):
            w, u, k, v, aa, bb, pp = args
            y1, *s1 = fn(w, u, k[:split], v[:split], aa, bb, pp)
            y2, *s2 = fn(w, u, k[split:], v[split:], *(np.asarray(s).copy() for s in s1))
            return (np.concatenate([np.asarray(y1), np.asarray(y2)]), *s2)
    return _Case(name, (w, u, k, v, *state), (out, *st), call,
                 data=dict(k=k, v=v, empty=state[2][0] == PP_EMPTY, expected_unnormalised=None),
                 chained=split is not None)


def check_wkv_stable(wkv_stable):
    """wkv_stable(w, u, k, v, aa, bb, pp) -> (wkv (T, C), aa, bb, pp): eq. 14 with the state kept as
    a = aa e^pp, b = bb e^pp. The state is compared through a/b and ln b, so any consistent choice
    of pp passes."""
    f32 = np.float32
    w, u, k, v = _wkv_inputs(30, 8, 4, f32)
    wl, ul, kl, vl = _wkv_inputs(31, 8, 4, f32, k_scale=60.0)
    kl = np.clip(kl, -100, 100)
    kl[2] = 100
    kl[5] = -100
    wb, ub, kb, vb = _wkv_inputs(32, 6, 3, np.float64, k_scale=600.0)
    kb[1] = 1000
    cases = [_stable_case("random, T = 8, C = 4, float32", w, u, k, v),
             _stable_case("T = 1, float32", *_wkv_inputs(33, 1, 3, f32)),
             _stable_case("state carried across two calls (T = 3 then 5)", w, u, k, v, split=3),
             _stable_case("large keys: +-100 in float32 (e^100 overflows float32)", wl, ul, kl, vl),
             _stable_case("u very negative: u = -1e4 (e^{u + k} is exactly 0)", *_wkv_inputs(34, 5, 3, f32, u=-1e4)),
             _stable_case("keys up to 1000 in float64 (e^1000 overflows float64)", wb, ub, kb, vb)]
    names = ("wkv", "a/b after the last token", "ln b after the last token")

    def plain_variant(name):
        def f(case):
            if case.chained:
                return None
            w, u, k, v, aa, bb, pp = case.args
            out, a, b = _wkv_variant(w, u, k, v, *_plain(aa, bb, pp), name)
            return out, a / b, np.ones_like(b), np.log(b)  # aa = a/b, bb = 1, pp = ln b
        return f

    mistakes = [
        _Mistake("p (the running max) not updated",
                 "after token t the state's exponent must move to the new maximum: pp = max(pp - w, k_t), "
                 "the same q that aa and bb were rescaled by. Left at its old value, the past's weight "
                 "e^{pp - q} becomes 0 (here wkv_t = v_t) or overflows.",
                 lambda c: None if c.chained else _wkv_stable_variant(*c.args, mistake="p_not_updated")),
        _Mistake("the latest past token decayed once too often", _HINT_DECAY,
                 plain_variant("decayed_once_too_often")),
        _Mistake("the state updated with the bonus u", _HINT_BONUS_STATE, plain_variant("bonus_in_state")),
        _Mistake("u applied to the past instead of the current token", _HINT_BONUS_PAST, plain_variant("bonus_on_past")),
        _Mistake("u missing on the current token", _HINT_NO_BONUS, plain_variant("no_bonus")),
    ]
    # float32 cases: the state's ln b near 100 carries ~1e-5 of rounding, wkv ~1e-6 relative
    return _run_checks("wkv_stable", wkv_stable, cases, names, _stable_view, mistakes, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------------- 5. time mixing

_TM_ORDER = ("time_mix_k", "time_mix_v", "time_mix_r", "time_decay", "time_first",
             "key", "value", "receptance", "output")


def _time_mixing_variant(args, mistake):
    """reference.time_mixing's arithmetic from its own pieces, with one mistake applied (float64 for
    eq. 14). Returns (out, (x_prev, aa, bb, pp)) with the state as aa = a/b, bb = 1, pp = ln b."""
    x, x_prev, aa, bb, pp, mk, mv, mr, td, tf, Wk, Wv, Wr, Wo = args
    if mistake == "mu_on_previous":
        mk, mv, mr = 1 - mk, 1 - mv, 1 - mr
    if mistake == "shift_zeros":
        x_prev = np.zeros_like(x_prev)
    if mistake == "not_transposed":
        Wk, Wv, Wr, Wo = Wk.T, Wv.T, Wr.T, Wo.T
    xx = reference.token_shift(x, x_prev)
    r = reference.mix(x, xx, mr) @ Wr.T
    k = reference.mix(x, xx, mk) @ Wk.T
    v = reference.mix(x, xx, mv) @ Wv.T
    w = td if mistake == "w_is_time_decay" else np.exp(np.asarray(td, np.float64))
    wkv, a, b = _wkv_variant(w, tf, k, v, *_plain(aa, bb, pp),
                             mistake if mistake in ("decayed_once_too_often", "bonus_in_state",
                                                    "bonus_on_past", "no_bonus") else None)
    gate = 1 if mistake == "no_gate" else reference.sigmoid(r.astype(np.float64))
    out = (gate * wkv) @ Wo.T
    return out, (x[-1], a / b, np.ones_like(b), np.log(b))


def _tm_view(r):
    out, state = r
    x_prev, aa, bb, pp = state
    return (np.asarray(out), np.asarray(x_prev), *_state_view(aa, bb, pp))


_TM_NAMES = ("out", "x_prev after the last token", "a/b after the last token", "ln b after the last token")


def _tm_case(name, x, x_prev, state, att, split=None):
    args = (x, x_prev, *state, *(att[n] for n in _TM_ORDER))
    expected = reference.time_mixing(*args)
    call = None
    if split is not None:
        def call(fn, args):
            out1, s1 = fn(args[0][:split], *args[1:])
            s1 = [np.asarray(s).copy() for s in s1]
            out2, s2 = fn(args[0][split:], *s1, *args[5:])
            return np.concatenate([np.asarray(out1), np.asarray(out2)]), s2
    return _Case(name, args, expected, call, chained=split is not None)


def _mixing_signature(case, got, got_arrays, diff):
    """The state's x_prev taken from the output or from before the LayerNorm."""
    if got_arrays is None:
        return None
    x, out = case.args[0], np.asarray(got_arrays[0])
    if np.allclose(got_arrays[1], out[-1], atol=1e-6) and not np.allclose(x[-1], out[-1], atol=1e-6):
        return ("the state's x_prev taken from the output",
                "the next call's token shift needs the last *input* row: return x[-1] (the LayerNorm "
                "output this function was given), not the last row of out.")
    return None


def check_time_mixing(time_mixing):
    """time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
    key, value, receptance, output) -> (out (T, C), (x_prev, aa, bb, pp)), as reference.time_mixing."""
    tiny = _tiny_params(seed=5)["blocks"][0]["att"]
    rng = _rng(40)
    C = 8
    x = rng.normal(0, 1, (6, C)).astype(np.float32)
    x_prev = rng.normal(0, 1, C).astype(np.float32)
    empty = (np.zeros(C, np.float32), np.zeros(C, np.float32), np.full(C, PP_EMPTY, np.float32))
    past = (rng.normal(0, 1, C).astype(np.float32), rng.uniform(0.5, 2, C).astype(np.float32),
            rng.normal(0, 2, C).astype(np.float32))
    block, rec = _real_layer_input()
    xr = rec["att"]["x"]
    Cr = xr.shape[1]
    real_empty = (np.zeros(Cr, np.float32), np.zeros(Cr, np.float32), np.full(Cr, PP_EMPTY, np.float32))
    cases = [_tm_case("random weights, T = 6, C = 8, a past in the state", x, x_prev, past, tiny),
             _tm_case("T = 1", x[:1], x_prev, past, tiny),
             _tm_case("state carried across two calls (T = 2 then 4)", x, x_prev, empty, tiny, split=2),
             _tm_case("real weights: layer 0 of the shipped model on 'First Citizen:'", xr,
                      np.zeros(Cr, np.float32), real_empty, block["att"])]

    def variant(name):
        return lambda c: None if c.chained else _time_mixing_variant(c.args, name)

    mistakes = [
        _Mistake("mu applied to the wrong term (mu on x_{t-1})",
                 "mix(x, x_shift, mu) = mu * x + (1 - mu) * x_shift: mu weighs the current token.",
                 variant("mu_on_previous")),
        _Mistake("the shift not using the carried x_prev at t = 0 (zeros instead)",
                 "the token shift's row 0 is the x_prev passed in (the state), not zeros.", variant("shift_zeros")),
        _Mistake("sigmoid gate missing", "eq. 15: out = W_o (sigmoid(r_t) * wkv_t); the receptance gates wkv.",
                 variant("no_gate")),
        _Mistake("the decay as e^{-w} with w = time_decay instead of w = e^{time_decay}",
                 "checkpoints store ln w (so that w stays positive while training): w = np.exp(time_decay).",
                 variant("w_is_time_decay")),
        _Mistake("the latest past token decayed once too often", _HINT_DECAY, variant("decayed_once_too_often")),
        _Mistake("the state updated with the bonus u", _HINT_BONUS_STATE, variant("bonus_in_state")),
        _Mistake("u applied to the past instead of the current token", _HINT_BONUS_PAST, variant("bonus_on_past")),
        _Mistake("u missing on the current token", _HINT_NO_BONUS, variant("no_bonus")),
        _Mistake("the weight matrices used untransposed (x @ W)",
                 "a weight is stored (out, in), as in PyTorch: W x_t for every row t at once is x @ W.T.",
                 variant("not_transposed")),
    ]
    # float32 matrix products over C <= 192 terms and the eq. 14 scan: ~1e-6 relative; real weights'
    # outputs reach ~10, so 1e-4 absolute leaves a margin of ~10x over rounding and none for a mistake
    return _run_checks("time_mixing", time_mixing, cases, _TM_NAMES, _tm_view, mistakes, rtol=1e-4, atol=1e-4,
                       signatures=[_mixing_signature])


# ---------------------------------------------------------------------------------- 6. channel mixing

_CM_ORDER = ("time_mix_k", "time_mix_r", "key", "receptance", "value")


def _channel_mixing_variant(args, mistake):
    x, x_prev, mk, mr, Wk, Wr, Wv = args
    if mistake == "mu_on_previous":
        mk, mr = 1 - mk, 1 - mr
    if mistake == "shift_zeros":
        x_prev = np.zeros_like(x_prev)
    xx = reference.token_shift(x, x_prev)
    r = reference.mix(x, xx, mr) @ Wr.T
    k = reference.mix(x, xx, mk) @ Wk.T
    hidden = np.maximum(k, 0) if mistake == "relu" else np.maximum(k, 0) ** 2
    gate = 1 if mistake == "no_gate" else reference.sigmoid(r)
    return gate * (hidden @ Wv.T), x[-1]


def _cm_case(name, x, x_prev, ffn, split=None):
    args = (x, x_prev, *(ffn[n] for n in _CM_ORDER))
    expected = reference.channel_mixing(*args)
    call = None
    if split is not None:
        def call(fn, args):
            out1, s1 = fn(args[0][:split], *args[1:])
            out2, s2 = fn(args[0][split:], np.asarray(s1).copy(), *args[2:])
            return np.concatenate([np.asarray(out1), np.asarray(out2)]), s2
    return _Case(name, args, expected, call, chained=split is not None)


def check_channel_mixing(channel_mixing):
    """channel_mixing(x, x_prev, time_mix_k, time_mix_r, key, receptance, value) -> (out (T, C), x_prev),
    as reference.channel_mixing."""
    tiny = _tiny_params(seed=6)["blocks"][1]["ffn"]
    rng = _rng(50)
    x = rng.normal(0, 1, (5, 8)).astype(np.float32)
    x_prev = rng.normal(0, 1, 8).astype(np.float32)
    block, rec = _real_layer_input()
    xr = rec["ffn"]["x"]
    cases = [_cm_case("random weights, T = 5, C = 8, F = 32", x, x_prev, tiny),
             _cm_case("T = 1", x[:1], x_prev, tiny),
             _cm_case("state carried across two calls (T = 3 then 2)", x, x_prev, tiny, split=3),
             _cm_case("real weights: layer 0 of the shipped model on 'First Citizen:'", xr,
                      np.zeros(xr.shape[1], np.float32), block["ffn"])]

    def variant(name):
        return lambda c: None if c.chained else _channel_mixing_variant(c.args, name)

    mistakes = [
        _Mistake("relu instead of squared relu",
                 "eq. 18 squares the ReLU: max(k'_t, 0) ** 2.", variant("relu")),
        _Mistake("sigmoid gate missing",
                 "eq. 18: out = sigmoid(r'_t) * (W'_v max(k'_t, 0)^2); the receptance gates the output.",
                 variant("no_gate")),
        _Mistake("mu applied to the wrong term (mu on x_{t-1})",
                 "mix(x, x_shift, mu) = mu * x + (1 - mu) * x_shift: mu weighs the current token.",
                 variant("mu_on_previous")),
        _Mistake("the shift not using the carried x_prev at t = 0 (zeros instead)",
                 "the token shift's row 0 is the x_prev passed in (the state), not zeros.", variant("shift_zeros")),
    ]
    # float32 products over F = 768 terms: ~1e-6 relative; outputs reach ~10 on real weights
    return _run_checks("channel_mixing", channel_mixing, cases, ("out", "x_prev after the last token"),
                       lambda r: (np.asarray(r[0]), np.asarray(r[1])), mistakes, rtol=1e-4, atol=1e-4,
                       signatures=[_mixing_signature])


# ---------------------------------------------------------------------------------- 7-8. the whole model

def _forward_variant(params, tokens, state, mistake):
    """reference.forward with one mistake applied, from reference.py's own functions."""
    emb, ln0, blocks, ln_out, head = (params[n] for n in ("emb", "ln0", "blocks", "ln_out", "head"))
    fresh = reference.initial_state(len(blocks), emb.shape[1])
    if state is None or mistake == "state_ignored":
        state = fresh
    x = emb[np.asarray(tokens)]
    if mistake != "no_ln0":
        x = reference.layer_norm(x, **ln0)
    new = np.empty_like(state)
    for i, p in enumerate(blocks):
        s = state[i]
        x1 = reference.layer_norm(x, **p["ln1"])
        if mistake in ("bonus_in_state", "decayed_once_too_often", "w_is_time_decay", "no_gate"):
            args = (x1, s[ATT_X], s[AA], s[BB], s[PP], *(p["att"][n] for n in _TM_ORDER))
            dx, (att_x, aa, bb, pp) = _time_mixing_variant(args, mistake)
        else:
            dx, (att_x, aa, bb, pp) = reference.time_mixing(x1, s[ATT_X], s[AA], s[BB], s[PP], **p["att"])
        x_mid = dx if mistake == "no_residual" else x + dx
        x2 = reference.layer_norm(x_mid, **p["ln2"])
        if mistake == "relu":
            dx, ffn_x = _channel_mixing_variant((x2, s[FFN_X], *(p["ffn"][n] for n in _CM_ORDER)), mistake)
        else:
            dx, ffn_x = reference.channel_mixing(x2, s[FFN_X], **p["ffn"])
        if mistake == "residual_state":
            att_x, ffn_x = x[-1], x_mid[-1]
        x = dx if mistake == "no_residual" else x_mid + dx
        new[i] = np.stack([att_x, aa, bb, pp, ffn_x])
    if mistake != "no_ln_out":
        x = reference.layer_norm(x, **ln_out)
    if mistake == "state_not_returned":
        new = state
    return x @ head.T, new


def _model_state_view(state):
    """A model state (L, 5, C) as (L, 4, C): x_prev rows as they are, eq. 14's through a/b and ln b."""
    state = np.asarray(state, np.float64)
    if state.ndim != 3 or state.shape[1] != 5:
        raise _Wrong(f"the state has shape {state.shape}; expected (L, 5, C): one (5, C) block per layer, "
                     f"rows x_prev (time mixing), aa, bb, pp, x_prev (channel mixing)")
    ratio, log_b = _state_view(state[:, AA], state[:, BB], state[:, PP])
    return np.stack([state[:, ATT_X], ratio, log_b, state[:, FFN_X]], 1)


_MODEL_NAMES = ("logits", "state after the last token (rows x_prev, a/b, ln b, x_prev')")


def _model_view(r):
    logits, state = r
    return np.asarray(logits), _model_state_view(state)


_MODEL_MISTAKES = {
    "no_ln0": ("ln0 missing",
               "the embedding goes through ln0 (params['ln0']) once, before block 0."),
    "no_ln_out": ("ln_out missing",
                  "the last block's output goes through ln_out before the head: logits = LN(x) @ head.T."),
    "no_residual": ("a residual connection missing",
                    "each sublayer adds to x: x = x + time_mixing(LN1(x)); x = x + channel_mixing(LN2(x))."),
    "residual_state": ("the state's x_prev taken before the LayerNorm",
                       "the token shift mixes LayerNorm outputs, so the state keeps LN1(x)[-1] and LN2(x)[-1] "
                       "(what time_mixing and channel_mixing return), not the residual stream x."),
    "state_ignored": ("the state passed in ignored (started from the initial state every call)",
                      "use the state given: it is everything the network keeps of the earlier tokens; "
                      "initial_state only when state is None."),
    "state_not_returned": ("the state not updated (the input state returned)",
                           "return the new state, built from what time_mixing and channel_mixing return."),
    "bonus_in_state": ("the state updated with the bonus u", _HINT_BONUS_STATE),
    "decayed_once_too_often": ("the latest past token decayed once too often", _HINT_DECAY),
    "w_is_time_decay": ("the decay as e^{-w} with w = time_decay instead of w = e^{time_decay}",
                        "checkpoints store ln w (so that w stays positive while training): "
                        "w = np.exp(time_decay)."),
    "no_gate": ("sigmoid gate missing in time mixing",
                "eq. 15: out = W_o (sigmoid(r_t) * wkv_t); the receptance gates wkv."),
    "relu": ("relu instead of squared relu", "eq. 18 squares the ReLU: max(k'_t, 0) ** 2."),
}


def _model_mistakes(names, per_token):
    out = []
    for key in names:
        name, hint = _MODEL_MISTAKES[key]

        def variant(case, key=key):
            params, tokens, state = case.data["params"], case.data["tokens"], case.data["state"]
            if per_token:  # step: one call per token, each fed the state the last returned
                logits, s = [], state
                for tok in tokens:
                    lg, s = _forward_variant(params, [tok], s, key)
                    logits.append(lg[0])
                return np.stack(logits), s
            if case.chained:  # forward over two calls: the mistakes show on the other cases
                return None
            return _forward_variant(params, tokens, state, key)
        out.append(_Mistake(name, hint, variant))
    return out


def _step_case(name, params, tokens, state=None):
    s = state
    logits = []
    for tok in tokens:
        lg, s = reference.step(params, int(tok), s)
        logits.append(lg)
    expected = (np.stack(logits), s)

    def call(fn, args):
        params, tokens, state = args
        out = []
        for tok in tokens:
            lg, state = fn(params, int(tok), state)
            out.append(np.asarray(lg))
            state = np.array(state, copy=True)  # what the caller keeps is a copy of what was returned
        return np.stack(out), state
    return _Case(name, (params, tokens, state), expected, call,
                 data=dict(params=params, tokens=tokens, state=state))


def check_step(step):
    """step(params, token, state) -> (logits (V,), state (L, 5, C)): one token, the recurrent form,
    state None before the first token; checked over several tokens, each call fed the last's state."""
    tiny = _tiny_params(seed=7)
    real = shipped_params()
    rng = _rng(60)
    given = reference.forward(tiny, [3, 1, 4])[1]
    cases = [_step_case("random weights (L = 2, C = 8), one token from state None", tiny, [5]),
             _step_case("random weights, 6 tokens, state carried from call to call", tiny,
                        rng.integers(0, 16, 6)),
             _step_case("random weights, starting from a given state (after tokens 3 1 4)", tiny, [1, 5], given),
             _step_case("the shipped model on 'ROMEO:', state carried", real, _text_tokens(b"ROMEO:"))]
    mistakes = _model_mistakes(("no_ln0", "no_ln_out", "no_residual", "residual_state", "state_ignored",
                                "bonus_in_state", "decayed_once_too_often", "w_is_time_decay", "no_gate",
                                "relu"), per_token=True)
    # float32 through L layers of products over C (and F = 4C) terms, logits ~10: 1e-4 relative and
    # absolute is ~10x the rounding measured between two correct implementations and far below a mistake
    return _run_checks("step", step, cases, _MODEL_NAMES, _model_view, mistakes, rtol=1e-4, atol=1e-4)


def _forward_case(name, params, tokens, state=None, split=None):
    expected = reference.forward(params, tokens, state)
    call = None
    if split is not None:
        def call(fn, args):
            params, tokens, state = args
            lg1, s1 = fn(params, tokens[:split], state)
            lg2, s2 = fn(params, tokens[split:], np.array(s1, copy=True))
            return np.concatenate([np.asarray(lg1), np.asarray(lg2)]), s2
    return _Case(name, (params, tokens, state), expected, call,
                 data=dict(params=params, tokens=tokens, state=state), chained=split is not None)


def check_forward(forward):
    """forward(params, tokens (T,), state=None) -> (logits (T, V), state (L, 5, C)): the parallel form."""
    tiny = _tiny_params(seed=8)
    real = shipped_params()
    given = reference.forward(tiny, [2, 7])[1]
    text = _text_tokens()
    cases = [_forward_case("random weights (L = 2, C = 8), T = 5, state None", tiny, [1, 2, 3, 4, 5]),
             _forward_case("T = 1", tiny, [9]),
             _forward_case("starting from a given state (after tokens 2 7)", tiny, [4, 4, 0], given),
             _forward_case("state carried across two calls (T = 3 then 2)", tiny, [6, 1, 8, 3, 2], split=3),
             _forward_case("the shipped model on 'ROMEO:\\nWhat light'", real, text)]
    mistakes = _model_mistakes(("no_ln0", "no_ln_out", "no_residual", "residual_state", "state_ignored",
                                "state_not_returned"), per_token=False)
    # as check_step: float32 through the layers, logits ~10
    return _run_checks("forward", forward, cases, _MODEL_NAMES, _model_view, mistakes, rtol=1e-4, atol=1e-4)


def _greedy(params, prompt, n, mistake=None):
    """The n byte ids the reference picks greedily (argmax) after prompt (a state carried)."""
    logits, state = reference.forward(params, list(prompt))
    nxt = int(np.argmax(logits[0 if mistake == "first_position" else -1]))
    out = []
    for _ in range(n):
        out.append(nxt)
        if mistake == "state_not_carried":
            logits, _ = reference.forward(params, [nxt])
        else:
            logits, state = reference.forward(params, [nxt], state)
        nxt = int(np.argmax(logits[-1]))
    return out


def check_generate(generate):
    """generate(params, prompt (bytes), n) -> the n next token ids (list of ints), greedy (argmax)."""
    real = shipped_params()
    tiny = _tiny_params(seed=9, vocab_size=256)
    cases = []
    for name, params, prompt, n in (("random weights, prompt b'ab', 5 tokens", tiny, b"ab", 5),
                                    ("the shipped model, prompt b'ROMEO:', 40 tokens", real, b"ROMEO:", 40),
                                    ("one-byte prompt b'\\n', 10 tokens", real, b"\n", 10)):
        cases.append(_Case(name, (params, prompt, n), np.array(_greedy(params, prompt, n), np.float64),
                           call=lambda fn, args: np.asarray(list(fn(*args)), np.float64),
                           data=dict(params=params, prompt=prompt, n=n)))

    def variant(name):
        return lambda c: np.array(_greedy(c.data["params"], c.data["prompt"], c.data["n"], name), np.float64)

    mistakes = [
        _Mistake("the state not carried (each new token read from the initial state)",
                 "keep the state forward returns and pass it with the next token: without it the model "
                 "sees only the last byte.", variant("state_not_carried")),
        _Mistake("the first token picked from the prompt's first position",
                 "the next token is predicted by the logits of the last position: logits[-1].",
                 variant("first_position")),
    ]
    # token ids: exact equality. On these cases the two largest logits are never closer than 0.0066,
    # far above the ~1e-5 by which a correct float32 forward can differ from the reference's
    return _run_checks("generate", generate, cases, ("generated token ids",), lambda r: (r,), mistakes,
                       rtol=0, atol=0)


def show_generation(generate, params, prompt=b"ROMEO:\n", n=200):
    """Print prompt + n bytes of the learner's `generate`, or say why not (no traceback)."""
    try:
        ids = list(generate(params, prompt, n))
        text = (prompt + bytes(int(i) for i in ids)).decode("utf-8", "replace")
    except NotImplementedError:
        print(f"… generate: {NOT_IMPLEMENTED}: fill in `generate` above.")
        return
    except Exception as e:  # noqa: BLE001 - the learner's code; one line, not a traceback
        print(f"✗ generate raised {type(e).__name__}: {e}{_frame_of_learner(e)}")
        return
    print(text)


# ---------------------------------------------------------------------------------- 9. gradient of eq. 14

def _grad_parts(w, u, k, v, gy):
    """The pieces of eq. 14's gradient, from its weights (rwkv_np.rwkv4.eq14.implied_attention, float64):
    P[c, t, i] the weight of token i in output t; R = P (v_i - y_t) gy_t, so that d/dk_i = sum_t R,
    d/dw = -sum (t-1-i) R over the past, d/du = sum of the diagonal."""
    from ..rwkv4.eq14 import implied_attention

    T, C = k.shape
    P = np.stack([implied_attention(w[c], u[c], k[:, c]) for c in range(C)])  # (C, T, T)
    vc = v.T[:, None, :]  # (C, 1, T): v_i
    y = (P * vc).sum(-1)  # (C, T)
    R = P * (vc - y[:, :, None]) * gy.T[:, :, None]  # (C, T, T)
    t, i = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    past = i < t
    diag = np.diagonal(R, axis1=1, axis2=2).T  # (T, C): the current-token terms
    return dict(P=P, R=R, dist=(t - 1 - i) * past, past=past, diag=diag)


def _grad_variant(case, mistake):
    w, u, k, v, gy = case.args
    gw, gu, gk, gv = case.expected
    parts = _grad_parts(w, u, k, v, gy)
    R, past = parts["R"], parts["past"]
    if mistake == "gw_for_ln_w":
        return gw * w, gu, gk, gv
    if mistake == "gw_sign":
        return -gw, gu, gk, gv
    if mistake == "gw_distance":
        return gw - (R * past).sum((1, 2)), gu, gk, gv
    if mistake == "gk_no_current":
        return gw, gu, gk - parts["diag"], gv
    if mistake == "gv_no_current":
        own = np.diagonal(parts["P"], axis1=1, axis2=2).T * gy  # (T, C): e^{u+k_t}/D_t gy_t
        return gw, gu, gk, gv - own
    return None


def check_wkv_grad(wkv_grad):
    """wkv_grad(w, u, k, v, gy) -> (gw (C,), gu (C,), gk (T, C), gv (T, C)): the gradient of
    L = sum(gy * wkv) for eq. 14 from an empty past, checked against rwkv_np.training.wkv_grad.wkv_backward."""
    from ..training.wkv_grad import wkv_backward, wkv_forward

    def case(name, seed, T, C, k_scale=1.0, u=None):
        w, u, k, v = _wkv_inputs(seed, T, C, k_scale=k_scale, u=u)
        gy = _rng(seed + 100).normal(0, 1, (T, C))
        y, saves = wkv_forward(w, u, k[:, None], v[:, None])  # the trainer's kernels take (T, B, C)
        gw, gu, gk, gv = wkv_backward(w, u, k[:, None], v[:, None], y, saves, gy[:, None])
        return _Case(name, (w, u, k, v, gy), (gw, gu, gk[:, 0], gv[:, 0]))

    cases = [case("random, T = 6, C = 3, float64", 70, 6, 3),
             case("T = 1 (no past: gw = 0, and wkv_0 = v_0 whatever k_0 and u)", 71, 1, 3),
             case("keys of about +-10, T = 8", 72, 8, 2, k_scale=10.0),
             case("u very negative (u = -30)", 73, 5, 2, u=-30.0)]
    mistakes = [
        _Mistake("the gradient with respect to time_decay (ln w) instead of w",
                 "the function takes w itself: dL/dw. (d/d ln w = w dL/dw is what a trainer needs; "
                 "it is the chain rule applied after.)", lambda c: _grad_variant(c, "gw_for_ln_w")),
        _Mistake("the sign of gw flipped",
                 "d/dw e^{-(t-1-i)w} = -(t-1-i) e^{-(t-1-i)w}: a larger w forgets faster.",
                 lambda c: _grad_variant(c, "gw_sign")),
        _Mistake("the latest past token decayed once too often in gw (distance t-i instead of t-1-i)",
                 _HINT_DECAY, lambda c: _grad_variant(c, "gw_distance")),
        _Mistake("gk missing the current token's term",
                 "k_t enters wkv_t too, through e^{u+k_t}: add e^{u+k_t}/D_t (v_t - wkv_t) gy_t to gk_t.",
                 lambda c: _grad_variant(c, "gk_no_current")),
        _Mistake("gv missing the current token's term",
                 "v_t enters wkv_t with weight e^{u+k_t}/D_t: add it, times gy_t, to gv_t.",
                 lambda c: _grad_variant(c, "gv_no_current")),
    ]

    def signature(case, got, got_arrays, diff):
        if isinstance(got, (tuple, list)) and len(got) == 4 and np.shape(got[1]) == case.args[2].shape:
            return ("gu not summed over t",
                    "u is one number per channel, used at every t: its gradient is the sum over t, shape (C,).")
        return None

    # float64, but sums of T terms that cancel (v_i - y_t): 1e-8 relative and absolute is ~1e5 times
    # the rounding of either order of summation
    return _run_checks("wkv_grad", wkv_grad, cases, ("gw", "gu", "gk", "gv"), lambda r: tuple(r), mistakes,
                       rtol=1e-8, atol=1e-8, signatures=[signature])


# ---------------------------------------------------------------------------------- solutions

def _solution_sources():
    """{function name: source} of the teacher's solutions (rwkv_np/exercises/solutions.py)."""
    from . import solutions

    return {name: inspect.getsource(getattr(solutions, name)) for name in solutions.__all__}


def write_solutions(out_dir, src_dir=None):
    """Write the exercise notebooks with every stub cell replaced by its solution: to out_dir.

    A stub cell is one whose metadata names its function ("exercise": "token_shift"); src_dir holds the
    exercise notebooks (default: notebooks/exercises/ of the checkout this package sits in).
    Returns the paths written."""
    from pathlib import Path

    src = Path(src_dir) if src_dir is not None else Path(__file__).resolve().parents[2] / "notebooks" / "exercises"
    paths = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        from ..errors import ArgumentError

        raise ArgumentError(f"no exercise notebooks (NN_*.ipynb) in {src}: give their folder as src_dir")
    sources = _solution_sources()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            names = cell.get("metadata", {}).get("exercise")
            if names:
                names = [names] if isinstance(names, str) else names
                cell["source"] = "\n\n".join(sources[n].rstrip() for n in names) + "\n"
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3) or argv[0] != "write-solutions":
        print("usage: python -m rwkv_np.exercises write-solutions OUT_DIR [EXERCISE_NOTEBOOKS_DIR]",
              file=sys.stderr)
        return 2
    for path in write_solutions(*argv[1:]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
