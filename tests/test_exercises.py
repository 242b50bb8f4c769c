"""rwkv_np.exercises: the teacher's solutions pass every check and the stubs say "not implemented yet";
each module's mistakes are its own (each mistaken variant is named as itself); every item of the second
round of the exercises issue, each with the wrong submission it is about: the wrong solutions that
passed now fail naming the mistake, the contract (type and dtype, both ways), the promised mistakes
named, the messages that named the wrong cause, the time limit, a never-ending generate, an exception
whose str() raises; exercise 9 a derivation; TEACHERS.md listing exactly the recognised mistakes.
(The campaign of wrong submissions is tests/test_exercise_campaign.py; the notebooks run headless in
tests/test_notebooks.py, slow tier.)"""

import json
import re
import signal
import sys
import threading
import time

import numpy as np
import pytest

from rwkv_np import exercises as E
from rwkv_np.errors import ArgumentError
from rwkv_np.exercises import harness as H
from rwkv_np.exercises import solutions as S
from rwkv_np.exercises.data import tiny_params, wkv_inputs
from rwkv_np.exercises.ex01_token_shift import mix_variant, shift_variant
from rwkv_np.exercises.ex02_wkv_naive import naive_variant
from rwkv_np.exercises.ex03_wkv_recurrent import recurrent_variant
from rwkv_np.exercises.ex04_wkv_stable import stable_variant
from rwkv_np.exercises.ex05_time_mixing import time_mixing_variant
from rwkv_np.exercises.ex06_channel_mixing import channel_mixing_variant
from rwkv_np.exercises.ex08_whole_model import greedy
from rwkv_np.exercises.ex09_wkv_grad import grad_variant
from rwkv_np.exercises.given import DecayRateError, wkv
from rwkv_np.exercises.model_mistakes import forward_variant, step_variant
from rwkv_np.rwkv4 import reference
from rwkv_np.rwkv4.eq14 import wkv_naive

from helpers import REPO, wkv_stable_in_longdouble

CHECKS = {name: getattr(E, "check_" + name) for name in S.__all__}
NOTEBOOKS = sorted((REPO / "notebooks" / "exercises").glob("[0-9][0-9]_*.ipynb"))
BY_NAME = {e.name: e for e in E.EXERCISES}
# each exercise's mistaken-solution maker, given no mistake: the reference's arithmetic as a learner writes it
VARIANTS = {"token_shift": shift_variant, "mix": mix_variant, "wkv_naive": naive_variant,
            "wkv_recurrent": recurrent_variant, "wkv_stable": stable_variant, "time_mixing": time_mixing_variant,
            "channel_mixing": channel_mixing_variant, "step": step_variant, "forward": forward_variant,
            "generate": greedy, "wkv_grad": grad_variant}


def _stub(*args, **kwargs):
    raise NotImplementedError


def _markdown(path):
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")


def _assert_named(result, words):
    """Failed, and named as the one recognised mistake whose name contains `words`, with its hint."""
    assert result.status == "failed", result.message
    assert result.mistake is not None and words in result.mistake, result.message
    assert f"This looks like: {result.mistake}." in result.message and "  Hint: " in result.message


# ---------------------------------------------------------------------------------- solutions, stubs

@pytest.mark.parametrize("name", S.__all__)
def test_solution_passes(name):
    result = CHECKS[name](getattr(S, name))
    assert result.passed, result.message
    assert result.message.startswith(f"✓ check_{name}: all ")


@pytest.mark.parametrize("name", S.__all__)
def test_stub_reports_not_implemented(name):
    result = CHECKS[name](_stub)
    assert result.status == "not implemented"
    assert "not implemented yet" in result.message and "Traceback" not in result.message
    assert not result


def test_every_checked_function_is_an_exercise_module_of_its_own_notebook():
    assert [e.name for e in E.EXERCISES] == S.__all__
    for e in E.EXERCISES:
        module = sys.modules[CHECKS[e.name].__module__]
        assert module.__name__ == f"rwkv_np.exercises.ex{e.notebook}"
        assert any(getattr(module, n) is e for n in dir(module))  # its cases and mistakes sit beside its check


# ---------------------------------------------------------------------------------- each module's mistakes

@pytest.mark.parametrize("name", S.__all__)
def test_the_mistake_free_variant_passes(name):
    """The mistakes are recognised by the answers of the exercise's own arithmetic with one thing
    changed; with nothing changed, that arithmetic must pass the check."""
    result = CHECKS[name](VARIANTS[name](None))
    assert result.passed, result.message


@pytest.mark.parametrize("name", S.__all__)
def test_each_mistaken_variant_is_named_as_itself(name):
    """Submitted as a learner's function, each mistake's variant is named as that mistake: the module's
    mistakes are told apart on the cases where they show."""
    exercise = BY_NAME[name]
    variants = [m for m in exercise.mistakes if m.variant is not None]
    assert variants
    for m in variants:
        result = CHECKS[name](m.variant)
        assert result.mistake == m.name, (m.name, result.message)


# ---------------------------------------------------------------------------------- wrong solutions that passed

def test_wkv_grad_without_the_max_subtraction_fails_on_large_keys():
    def wkv_grad(w, u, k, v, gy):
        T, C = k.shape
        gw, gu, gk, gv = np.zeros(C), np.zeros(C), np.zeros((T, C)), np.zeros((T, C))
        for t in range(T):
            d = np.arange(t - 1, -1, -1)[:, None]
            P = np.exp(np.concatenate([-d * w + k[:t], (u + k[t])[None]]))  # no max subtracted
            P /= P.sum(axis=0)
            y = (P * v[:t + 1]).sum(0)
            R = gy[t] * P * (v[:t + 1] - y)
            gk[:t + 1] += R
            gv[:t + 1] += gy[t] * P
            gu += R[t]
            gw -= (d * R[:t]).sum(0)
        return gw, gu, gk, gv

    result = E.check_wkv_grad(wkv_grad)
    _assert_named(result, "exp overflow")
    assert result.case.startswith("keys of 2e4")  # every other case passes: only large keys catch it
    assert ", got nan" in result.message and "subtract the largest exponent" in result.message


def _as(dtype, fn):
    """fn with every array it returns cast to dtype."""
    def cast(x):
        if isinstance(x, np.ndarray):
            return x.astype(dtype)
        return tuple(cast(y) for y in x) if isinstance(x, tuple) else x
    return lambda *args: cast(fn(*args))


@pytest.mark.parametrize("name", ["token_shift", "mix", "wkv_stable", "time_mixing", "channel_mixing", "step",
                                  "forward"])
def test_float64_answers_to_float32_inputs_are_named_widened(name):
    result = CHECKS[name](_as(np.float64, getattr(S, name)))
    _assert_named(result, "wider dtype")
    assert "expected float32, the dtype of the inputs: your function widened float32 to float64" in result.message


@pytest.mark.parametrize("name", ["token_shift", "mix", "wkv_naive", "wkv_recurrent", "wkv_stable", "wkv_grad"])
def test_narrowed_answers_are_named_narrowed(name):
    """float32 for float64 inputs (token_shift, mix and wkv_stable have a float64 case for it)."""
    result = CHECKS[name](_as(np.float32, getattr(S, name)))
    _assert_named(result, "narrower dtype")
    assert "expected float64, the dtype of the inputs: your function narrowed float64 to float32" in result.message


def test_lists_instead_of_arrays_are_named_with_what_was_returned():
    r = E.check_token_shift(lambda x, x_prev: [x_prev] + list(x[:-1]))
    _assert_named(r, "wrong type")
    assert "your function returned a list of 5; expected a NumPy array of shape (5, 3), dtype float32" in r.message
    r = E.check_step(lambda params, token, state: (lambda lg, s: (lg, list(s)))(*S.step(params, token, state)))
    _assert_named(r, "wrong type")
    assert "state is a list of 2; expected a NumPy array of shape (2, 5, 8), dtype float32" in r.message
    r = E.check_forward(lambda params, tokens, state=None: (lambda lg, s: (list(lg), s))(*S.forward(params, tokens, state)))
    _assert_named(r, "wrong type")
    assert "logits is a list of 5; expected a NumPy array of shape (5, 16)" in r.message
    r = E.check_generate(lambda params, prompt, n: np.array(S.generate(params, prompt, n)))
    _assert_named(r, "wrong type")
    assert "your function returned an array of shape (5,), dtype int64; expected a list of 5 ints" in r.message
    r = E.check_generate(lambda params, prompt, n: bytes(S.generate(params, prompt, n)))
    _assert_named(r, "wrong type")
    assert "your function returned bytes (length 5); expected a list of 5 ints" in r.message
    r = E.check_wkv_recurrent(lambda *args: list(S.wkv_recurrent(*args)))
    _assert_named(r, "wrong type")
    assert "returned a list of 3; it should return a tuple of 3 values, (wkv, a, b)" in r.message


def test_wkv_stable_by_brute_force_in_longdouble_fails():
    """No running maximum, every sum in np.longdouble (80-bit on x86: e^k finite up to k ~ 11356), the
    state stored as (a/b, 1, ln b) so that nothing overflows float32 on the way out: it passes keys of 100
    in float32 and of 1000 in float64, and fails at keys of 5e4."""
    result = E.check_wkv_stable(wkv_stable_in_longdouble)
    _assert_named(result, "exp overflow")
    assert result.case.startswith("keys of 5e4 in float64")
    assert "np.longdouble above ~11356" in result.message


# ---------------------------------------------------------------------------------- promised mistakes, named

def test_the_given_wkv_refuses_a_decay_rate_that_is_not_positive():
    w, u, k, v = wkv_inputs(1, 4, 3)
    aa, bb, pp = np.zeros(3), np.zeros(3), np.full(3, -1e38)
    y, state = wkv(w, u, k, v, aa, bb, pp)
    np.testing.assert_array_equal(y, reference.wkv(w, u, k, v, aa, bb, pp)[0])  # the reference's, unchanged
    bad = np.array([0.5, -0.2, 0.0])
    with pytest.raises(DecayRateError, match=r"w\[1\] = -0.2 \(2 of 3 channels <= 0 or nan\): "
                                             r"w = np\.exp\(time_decay\)\?") as e:
        wkv(bad, u, k, v, aa, bb, pp)
    assert e.value.w is bad
    with pytest.raises(ValueError, match=r"k and v of shape \(T, C\), C = 3 channels; got k \(3,\), v \(3,\) "
                                         r"\(for one token: k\[None\] and v\[None\], then wkv\[0\]\)"):
        wkv(w, u, k[0], v[0], aa, bb, pp)


def _tm(w_of):
    def time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first, key, value,
                    receptance, output):
        xx = reference.token_shift(x, x_prev)
        r, k, v = (reference.mix(x, xx, m) @ W.T for m, W in ((time_mix_r, receptance), (time_mix_k, key),
                                                              (time_mix_v, value)))
        y, (aa, bb, pp) = wkv(w_of(time_decay), time_first, k, v, aa, bb, pp)
        return (reference.sigmoid(r) * y) @ output.T, (x[-1], aa, bb, pp)
    return time_mixing


@pytest.mark.parametrize("w_of, words", [
    (lambda td: td, "the decay as e^{-w} with w = time_decay instead of w = e^{time_decay}"),
    (lambda td: -np.exp(td), "w = -e^{time_decay}"),
    (lambda td: np.exp(-td), "w = e^{-time_decay} instead of e^{time_decay}"),
])
def test_time_mixing_names_the_decay_taken_from_time_decay_wrongly(w_of, words):
    result = E.check_time_mixing(_tm(w_of))
    _assert_named(result, words)
    assert "w = np.exp(time_decay)" in result.message
    assert "exp overflow" not in result.message and "got nan" not in result.message


def test_step_names_the_decay_taken_as_time_decay_through_the_given_wkv():
    def step(params, token, state):
        logits, state = reference.step(params, token, state)  # the right answer, except:
        att = params["blocks"][0]["att"]
        wkv(att["time_decay"], att["time_first"], np.zeros((1, len(att["time_decay"])), np.float32),
            np.zeros((1, len(att["time_decay"])), np.float32), *initial_rows(len(att["time_decay"])))
        return logits, state

    def initial_rows(C):
        return np.zeros(C, np.float32), np.zeros(C, np.float32), np.full(C, -1e38, np.float32)

    result = E.check_step(step)
    _assert_named(result, "with w = time_decay")
    assert "your function raised DecayRateError: the decay rate must be positive" in result.message


def _model_with(mistake, form):
    """forward, or step, from the reference's own sublayers with the state's x_prev rows taken from the
    residual stream (before the LayerNorm): mistake in att, ffn, both."""
    def forward(params, tokens, state=None):
        blocks = params["blocks"]
        state = reference.initial_state(len(blocks), params["emb"].shape[1]) if state is None else state
        x = reference.layer_norm(params["emb"][np.asarray(tokens)], **params["ln0"])
        new = np.empty_like(state)
        for i, p in enumerate(blocks):
            s = state[i]
            dx, (ax, aa, bb, pp) = reference.time_mixing(reference.layer_norm(x, **p["ln1"]), s[0], s[1], s[2], s[3],
                                                         **p["att"])
            x_mid = x + dx
            dx, fx = reference.channel_mixing(reference.layer_norm(x_mid, **p["ln2"]), s[4], **p["ffn"])
            ax = x[-1] if mistake in ("att", "both") else ax
            fx = x_mid[-1] if mistake in ("ffn", "both") else fx
            x = x_mid + dx
            new[i] = np.stack([ax, aa, bb, pp, fx])
        return reference.layer_norm(x, **params["ln_out"]) @ params["head"].T, new

    if form == "forward":
        return forward
    return lambda params, token, state: (lambda lg, s: (lg[0], s))(*forward(params, [token], state))


@pytest.mark.parametrize("form", ["step", "forward"])
@pytest.mark.parametrize("where", ["att", "ffn", "both"])
def test_state_x_prev_taken_before_the_layernorm_is_named(form, where):
    result = CHECKS[form](_model_with(where, form))
    _assert_named(result, "the state's x_prev taken before the LayerNorm")


def _returns_input_state(name):
    """The solution, returning the state it was given."""
    sol = getattr(S, name)
    return {
        "wkv_recurrent": lambda w, u, k, v, a, b: (sol(w, u, k, v, a, b)[0], a, b),
        "wkv_stable": lambda w, u, k, v, aa, bb, pp: (sol(w, u, k, v, aa, bb, pp)[0], aa, bb, pp),
        "time_mixing": lambda x, x_prev, aa, bb, pp, *w: (sol(x, x_prev, aa, bb, pp, *w)[0], (x_prev, aa, bb, pp)),
        "channel_mixing": lambda x, x_prev, *w: (sol(x, x_prev, *w)[0], x_prev),
        "step": lambda params, token, state: (sol(params, token, state)[0], state),
        "forward": lambda params, tokens, state=None: (sol(params, tokens, state)[0], state),
    }[name]


@pytest.mark.parametrize("name", ["wkv_recurrent", "wkv_stable", "time_mixing", "channel_mixing", "step", "forward"])
def test_the_state_not_returned_is_named(name):
    result = CHECKS[name](_returns_input_state(name))
    _assert_named(result, "the state not updated (the state passed in returned)")
    assert "exp overflow" not in result.message


def test_the_input_state_returned_by_wkv_recurrent_is_not_an_overflow():
    """The issue's case: the empty past (a = b = 0) returned unchanged was reported as "exp overflow"."""
    result = E.check_wkv_recurrent(_returns_input_state("wkv_recurrent"))
    assert result.case == "random, T = 7, C = 4, empty past (a = b = 0)"
    assert "first wrong value: a after the last token[0]: expected " in result.message and ", got 0\n" in result.message


@pytest.mark.parametrize("name, where", [("time_mixing", None), ("channel_mixing", None), ("step", "att"),
                                         ("step", "ffn")])
def test_the_gate_without_its_sigmoid_is_named(name, where):
    if name == "time_mixing":
        fn, words = time_mixing_variant("no_sigmoid"), "the gate without its sigmoid (r * wkv)"
    elif name == "channel_mixing":
        fn, words = channel_mixing_variant("no_sigmoid"), "the gate without its sigmoid (r' * ...)"
    else:
        fn, words = step_variant(f"no_sigmoid_{where}"), f"without its sigmoid in {'time' if where == 'att' else 'channel'}"
    _assert_named(CHECKS[name](fn), words)


def _stable_p_fixed(w, u, k, v, aa, bb, pp):
    out = np.empty_like(k)
    for t in range(len(k)):
        q = np.maximum(pp, u + k[t])
        out[t] = (np.exp(pp - q) * aa + np.exp(u + k[t] - q) * v[t]) / (np.exp(pp - q) * bb + np.exp(u + k[t] - q))
        q = np.maximum(pp - w, k[t])
        aa, bb = np.exp(pp - w - q) * aa + np.exp(k[t] - q) * v[t], np.exp(pp - w - q) * bb + np.exp(k[t] - q)
    return out, aa, bb, pp  # pp never updated


def test_p_not_updated_is_named_wherever_eq14_is_written():
    _assert_named(E.check_wkv_stable(_stable_p_fixed), "p (the running max) not updated")

    def time_mixing(x, x_prev, aa, bb, pp, mk, mv, mr, td, tf, key, value, receptance, output):
        xx = reference.token_shift(x, x_prev)
        r, k, v = (reference.mix(x, xx, m) @ W.T for m, W in ((mr, receptance), (mk, key), (mv, value)))
        y, aa, bb, pp = _stable_p_fixed(np.exp(td), tf, k, v, aa, bb, pp)
        return (reference.sigmoid(r) * y) @ output.T, (x[-1], aa, bb, pp)

    _assert_named(E.check_time_mixing(time_mixing), "p (the running max) not updated")
    _assert_named(E.check_step(step_variant("p_not_updated")), "p (the running max) not updated")


def test_gu_not_summed_over_t_is_named_with_the_right_shape_too():
    def overwritten(w, u, k, v, gy):  # gu = R[t]: the last t's term only, shape (C,)
        T, C = k.shape
        gw, gu, gk, gv = np.zeros(C), np.zeros(C), np.zeros((T, C)), np.zeros((T, C))
        for t in range(T):
            d = np.arange(t - 1, -1, -1)[:, None]
            x = np.concatenate([-d * w + k[:t], (u + k[t])[None]])
            P = np.exp(x - x.max(0))
            P /= P.sum(0)
            R = gy[t] * P * (v[:t + 1] - (P * v[:t + 1]).sum(0))
            gk[:t + 1] += R
            gv[:t + 1] += gy[t] * P
            gu = R[t]
            gw -= (d * R[:t]).sum(0)
        return gw, gu, gk, gv

    r = E.check_wkv_grad(overwritten)
    _assert_named(r, "gu not summed over t")
    assert "gu[" in r.message  # a value, with the right shape (C,)

    def per_t(w, u, k, v, gy):
        gw, gu, gk, gv = S.wkv_grad(w, u, k, v, gy)
        return gw, np.tile(gu / len(k), (len(k), 1)), gk, gv

    r = E.check_wkv_grad(per_t)
    _assert_named(r, "gu not summed over t")
    assert "gu has shape (6, 3); expected (3,)" in r.message and "Yours has one row per t" in r.message


def test_the_recurrence_decaying_after_adding_is_named_decayed_once_too_often():
    """a = e^{-w} (a + e^k v): the form a learner of exercise 3 writes."""
    def wkv_recurrent(w, u, k, v, a, b):
        out = np.empty_like(k)
        for t in range(len(k)):
            out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
            a = np.exp(-w) * (a + np.exp(k[t]) * v[t])
            b = np.exp(-w) * (b + np.exp(k[t]))
        return out, a, b

    r = E.check_wkv_recurrent(wkv_recurrent)
    _assert_named(r, "the latest past token decayed once too often")
    assert "not e^{-w} (a_{t-1} + e^{k_t} v_t)" in r.message


# ---------------------------------------------------------------------------------- messages, right cause

def test_only_the_logits_returned_is_a_wrong_count_not_an_exception():
    r = E.check_step(lambda params, token, state: S.step(params, token, state)[0])
    _assert_named(r, "the wrong number of values returned")
    assert "your function returned an array of shape (16,), dtype float32; it should return a tuple of 2 values, " \
           "(logits, state)" in r.message
    assert "raised" not in r.message and "axis" not in r.message


def test_none_returned_says_none():
    r = E.check_step(lambda params, token, state: None)
    _assert_named(r, "nothing returned (None)")
    assert "your function returned None; it should return 2 values, (logits, state)" in r.message
    r = E.check_token_shift(lambda x, x_prev: None)
    assert "your function returned None; expected a NumPy array of shape (5, 3)" in r.message


def test_a_generator_or_a_none_state_says_what_was_returned():
    def token_shift(x, x_prev):
        yield from x

    r = E.check_token_shift(token_shift)
    _assert_named(r, "wrong type")
    assert "your function returned a generator" in r.message and "has shape ()" not in r.message
    r = E.check_step(lambda params, token, state: (S.step(params, token, state)[0], None))
    _assert_named(r, "the state not updated")
    assert "state is None; expected a NumPy array of shape (2, 5, 8)" in r.message
    assert "It returned None, the state it was given before the first token." in r.message


def test_logits_with_an_extra_axis_in_step_show_the_call_s_own_shape():
    r = E.check_step(lambda params, token, state: (lambda lg, s: (lg[None], s))(*S.step(params, token, state)))
    _assert_named(r, "a wrong shape")
    assert "logits has shape (1, 16); expected (16,)" in r.message and "(1, 1, 16)" not in r.message
    assert "take [0]" in r.message


def test_wkv_grad_in_the_wrong_order_is_named_as_such():
    r = E.check_wkv_grad(lambda *args: (lambda gw, gu, gk, gv: (gk, gv, gw, gu))(*S.wkv_grad(*args)))
    _assert_named(r, "the returned values in the wrong order")
    assert "your function returned (gk, gv, gw, gu); the order is (gw, gu, gk, gv)" in r.message
    assert "gu not summed" not in r.message
    r = E.check_wkv_recurrent(lambda *args: (lambda y, a, b: (y, b, a))(*S.wkv_recurrent(*args)))
    _assert_named(r, "the returned values in the wrong order")
    assert "your function returned (wkv, b, a); the order is (wkv, a, b)" in r.message


def test_a_near_miss_shows_the_digits_that_differ():
    r = E.check_wkv_naive(lambda *args: S.wkv_naive(*args) * (1 + 1e-8))
    assert r.status == "failed" and r.mistake is None
    case = BY_NAME["wkv_naive"].cases[0]
    e = wkv_naive(*case.args)[0, 0]
    shown = re.search(r"expected (\S+), got (\S+) \(they differ by (\S+), (\S+) relative\); "
                      r"the tolerance is 1e-12 \+ 1e-09 × \|expected\|", r.message)
    assert shown, r.message
    assert shown.group(1) != shown.group(2) and abs(float(shown.group(1)) - e) < 1e-9 * abs(e)
    assert float(shown.group(4)) == pytest.approx(1e-8, rel=0.05)


def test_the_axis_hint_is_only_for_shapes():
    """The issue's complaint: "check which axis is time" where the problem was the number of returned
    values. A wrong count names the count; a transposed array names the axes."""
    r = E.check_wkv_recurrent(lambda *args: S.wkv_recurrent(*args)[:2])
    _assert_named(r, "the wrong number of values returned")
    assert "axis" not in r.message and "returned a tuple of 2; it should return 3 values, (wkv, a, b)" in r.message
    r = E.check_wkv_naive(lambda *args: S.wkv_naive(*args).T)
    _assert_named(r, "rows and columns swapped")
    assert "the array your function returned has shape (4, 6); expected (6, 4)" in r.message


# ---------------------------------------------------------------------------------- exercise 7 stands alone

def test_exercise_7_gives_wkv_and_its_solution_uses_it():
    nb = json.loads((REPO / "notebooks" / "exercises" / "07_recurrent_step.ipynb").read_text())
    imports = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    assert "from rwkv_np.exercises.given import wkv" in imports
    import inspect

    assert "wkv(np.exp(att[\"time_decay\"])" in inspect.getsource(S.step)
    assert "every notebook stands alone" in (REPO / "notebooks" / "exercises" / "TEACHERS.md").read_text().lower()


# ---------------------------------------------------------------------------------- the time limit

def _endless(x, x_prev):
    t = 0
    while t < len(x):
        x_prev = x_prev + 0  # t is never increased
    return x


@pytest.fixture
def alarm():
    """Skip where the checks cannot interrupt a function: no SIGALRM, or a timer already running (a
    plugin's, pytest-timeout say, which the checks leave alone)."""
    if not hasattr(signal, "setitimer") or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        pytest.skip("no SIGALRM here, or a timer already set")


def test_an_endless_loop_is_stopped_at_the_time_limit_with_its_line(alarm):
    t0 = time.perf_counter()
    r = E.check_token_shift(_endless, time_limit=0.3)
    assert time.perf_counter() - t0 < 3
    assert r.status == "time limit" and r.mistake == H.TIME_OUT.name
    assert "your function was still running after 0.3 s (in _endless, line " in r.message
    assert "x_prev = x_prev + 0" in r.message or "while t < len(x):" in r.message
    assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None) and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert sys.gettrace() is None or "coverage" in type(sys.gettrace()).__module__


def test_an_endless_loop_that_swallows_every_exception_is_stopped_too(alarm):
    def token_shift(x, x_prev):
        while True:
            try:
                sum(range(10_000))
            except:  # noqa: E722 - the point: a bare except swallows the alarm's exception
                pass

    t0 = time.perf_counter()
    r = E.check_token_shift(token_shift, time_limit=0.3)
    assert time.perf_counter() - t0 < 3
    assert r.status == "time limit", r.message


def test_off_the_main_thread_a_late_return_is_reported_the_same_way():
    def slow(x, x_prev):
        time.sleep(0.4)
        return S.token_shift(x, x_prev)

    out = {}
    thread = threading.Thread(target=lambda: out.update(r=E.check_token_shift(slow, time_limit=0.1)))
    thread.start()
    thread.join()
    r = out["r"]
    assert r.status == "time limit" and r.mistake == H.TIME_OUT.name
    assert re.search(r"your function took 0\.\d s, over the limit of 0\.1 s \(it could not be interrupted here", r.message)


def test_a_timer_already_set_is_left_alone(alarm):
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        assert E.check_mix(S.mix, time_limit=0.1).passed
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 20  # still pending, not replaced
        assert signal.getsignal(signal.SIGALRM) is not previous and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_generate_that_reads_the_whole_text_again_at_every_token_is_told_so_at_the_time_limit(alarm):
    """Right ids, n times the work: stopped at the limit, and the hint names that cause, not only an
    endless loop."""
    def generate(params, prompt, n):
        seq, out = list(prompt), []
        for _ in range(n):
            logits, _ = S.forward(params, seq)  # the whole text again, the state thrown away
            time.sleep(1e-3 * len(seq))  # 1 ms a token read: on the shipped model's case over 1 s, on any machine
            out.append(int(np.argmax(logits[-1])))
            seq.append(out[-1])
        return out

    r = E.check_generate(generate, time_limit=0.5)
    assert r.status == "time limit" and r.mistake == H.TIME_OUT.name, r.message
    assert r.case == "the shipped model, prompt b'ROMEO:', 40 tokens"  # the tiny model's 5 tokens pass in time
    assert "forward over the prompt and everything generated so far, again for each new token" in r.message
    assert "feed forward only the new token, with the state it returned" in r.message
    r = E.check_token_shift(_endless, time_limit=0.3)  # the other checks' hint does not say it
    assert "generated so far" not in r.message


# ---------------------------------------------------------------------------------- hostile learner code

def test_a_never_ending_generate_is_not_consumed_by_the_check():
    pulled = []

    def generate(params, prompt, n):
        while True:
            pulled.append(1)
            yield 65

    r = E.check_generate(generate)
    _assert_named(r, "wrong type")
    assert "your function returned a generator" in r.message
    assert pulled == []


def test_show_generation_takes_at_most_n_plus_one_ids(capsys):
    pulled = []

    def generate(params, prompt, n):
        while True:
            pulled.append(1)
            yield 65

    E.show_generation(generate, tiny_params(seed=9, vocab_size=256), b"x", 5)
    assert capsys.readouterr().out == "xAAAAA\n(generate gave more than n = 5 ids; showing the first 5)\n"
    assert len(pulled) == 6


def test_show_generation_stops_a_generate_that_never_returns(capsys, alarm):
    def generate(params, prompt, n):
        out = []
        while len(out) != n:
            out = out[-10:] + [65, 65]  # grows by two: never exactly n
        return out

    E.show_generation(generate, tiny_params(seed=9, vocab_size=256), b"x", 5, time_limit=0.3)
    out = capsys.readouterr().out
    assert out.startswith("✗ generate was still running after 0.3 s (in generate, line ")


def test_show_generation(capsys):
    params = tiny_params(seed=9, vocab_size=256)
    E.show_generation(_stub, params)
    assert "generate: not implemented yet" in capsys.readouterr().out
    E.show_generation(lambda p, prompt, n: [65] * n, params, b"x", 3)
    assert capsys.readouterr().out == "xAAA\n"
    E.show_generation(lambda p, prompt, n: None, params, b"x", 3)
    assert capsys.readouterr().out == "✗ generate returned None (no `return` at its end?)\n"


class _Unprintable(Exception):
    calls = 0

    def __str__(self):
        type(self).calls += 1
        raise RuntimeError("str() of this exception raises")


def test_an_exception_whose_str_raises_is_reported_without_calling_it():
    def token_shift(x, x_prev):
        raise _Unprintable("payload")

    r = E.check_token_shift(token_shift)
    assert r.status == "error" and _Unprintable.calls == 0
    assert r.message.startswith("✗ check_token_shift: case 'T = 5, C = 3, x_prev from the previous call': your "
                                "function raised _Unprintable (its message is not shown: str() of it would run code "
                                "of its own) (in token_shift, line ")


def test_a_return_whose_reading_runs_learner_code_that_raises_is_reported_not_raised():
    """A tuple of the learner's own class whose __iter__ raises: the check's unpacking runs it. Reported
    as an error with the learner's line; the check itself does not raise."""
    class Pair(tuple):
        def __iter__(self):
            raise RuntimeError("Pair cannot be unpacked")

    r = E.check_wkv_recurrent(lambda *args: Pair(S.wkv_recurrent(*args)))
    assert r.status == "error" and not r
    assert "what your function returned could not be read: reading it ran code of yours, which raised " \
           "RuntimeError: Pair cannot be unpacked (in __iter__, line " in r.message


def test_the_check_s_own_errors_are_not_blamed_on_the_learner(monkeypatch):
    """An exception from the check's own code (here its reference, called wrongly) propagates: only an
    exception raised through the learner's code is reported as theirs."""
    import functools

    exercise = BY_NAME["mix"]
    monkeypatch.setattr(exercise.cases[0], "_expected", None)
    monkeypatch.setattr(exercise, "reference", functools.partial(reference.mix, nonsense=1))
    with pytest.raises(TypeError, match="nonsense"):
        E.check_mix(S.mix)


def test_show_generation_reads_the_ids_without_running_learner_code(capsys):
    class Id:
        def __int__(self):
            raise RuntimeError("an __int__ of the learner's")

        __index__ = __int__

    params = tiny_params(seed=9, vocab_size=256)
    for ids, said in (([65, Id(), 66], "a Id at position 1"), ([65, 300, 66], "the id 300 at position 1"),
                      ([65, 1.5, 66], "a float at position 1"), ([65, True, 66], "a bool at position 1")):
        E.show_generation(lambda p, prompt, n: ids, params, b"x", 3)
        assert capsys.readouterr().out == (f"✗ generate returned {said} of its ids: token ids here are bytes, ints "
                                           f"from 0 to 255\n")


def test_other_exception_is_one_line_naming_the_case_and_the_line():
    def token_shift(x, x_prev):
        return np.concatenate([x_prev, x[:-1]])  # x_prev (C,) against x (T, C): a ValueError in NumPy

    result = E.check_token_shift(token_shift)
    assert result.status == "error"
    assert result.message.startswith("✗ check_token_shift: case 'T = 5, C = 3, x_prev from the previous call': "
                                     "your function raised ValueError: ")
    assert "return np.concatenate([x_prev, x[:-1]])" in result.message
    assert len(result.message.splitlines()) == 1


def test_inputs_changed_in_place_are_named_with_the_argument():
    def token_shift(x, x_prev):
        x[1:] = x[:-1].copy()
        x[0] = x_prev
        return x

    r = E.check_token_shift(token_shift)
    _assert_named(r, "modified the inputs in place")
    assert "`x` was changed by your function" in r.message

    def step(params, token, state):  # writes into the state it is given: seen at the second call
        if state is None:
            return S.step(params, token, state)
        logits, new = S.step(params, token, state)
        state[...] = new
        return logits, state

    r = E.check_step(step)
    _assert_named(r, "modified the inputs in place")
    assert "call 2 of 6: `state` was changed by your function" in r.message


# ---------------------------------------------------------------------------------- exercises 4 and 9

def test_exercises_4_and_9_do_not_send_the_learner_to_the_answers():
    for name, files in (("04_wkv_stable", ("reference.py", "rwkv4/reference")),
                        ("09_wkv_grad", ("wkv_grad.py", "training/"))):
        text = _markdown(REPO / "notebooks" / "exercises" / f"{name}.ipynb")
        for f in files:
            assert f not in text, (name, f)


def test_exercise_9_asks_for_a_derivation_and_gives_what_it_needs():
    text = _markdown(REPO / "notebooks" / "exercises" / "09_wkv_grad.ipynb")
    # given: the softmax reading, its derivative, the chain rule, dL/dv and dL/dk worked out
    for given in (r"P_{t,i} = \frac{e^{x_{t,i}}}", r"\frac{\partial\, wkv_t}{\partial x_{t,i}} = P_{t,i}\,(v_i - wkv_t)",
                  r"\frac{\partial L}{\partial \theta} = \sum_t \sum_{i \le t} R_{t,i}",
                  r"\partial L/\partial k_i =", r"\partial L/\partial v_i ="):
        assert given in text, given
    # not given: dL/du and dL/dw themselves (the learner derives them; hints give the pieces)
    assert not re.search(r"partial L\s*/\s*\\partial u\s*=|\\frac\{\\partial L\}\{\\partial u\}\s*=", text)
    assert not re.search(r"partial L\s*/\s*\\partial w\s*=|\\frac\{\\partial L\}\{\\partial w\}\s*=", text)
    assert r"$\partial x_{t,i}/\partial w = -(t-1-i)$" in text and "$u$ appears in exactly one exponent" in text


# ---------------------------------------------------------------------------------- TEACHERS.md, the command

def test_teachers_md_lists_exactly_the_recognised_mistakes():
    text = (REPO / "notebooks" / "exercises" / "TEACHERS.md").read_text()
    block = re.search(r"<!-- mistakes: begin \(generated\) -->\n(.*?)<!-- mistakes: end -->", text, re.S)
    assert block and block.group(1) == E.mistakes_markdown()
    for e in E.EXERCISES:  # and the generated list is the modules' own
        names = dict.fromkeys(m.name for m in e.recognised)
        assert f"`{e.name}` ({len(names)}): " + "; ".join(names) + "." in block.group(1)


def test_the_mistakes_command_prints_the_list(capsys):
    assert E.main(["mistakes"]) == 0
    assert capsys.readouterr().out == E.mistakes_markdown()


def test_write_solutions_command(tmp_path, capsys):
    assert E.main(["write-solutions"]) == 2
    assert "usage: python -m rwkv_np.exercises write-solutions" in capsys.readouterr().err
    with pytest.raises(ArgumentError, match="no exercise notebooks"):
        E.write_solutions(tmp_path / "out", tmp_path)
    assert E.main(["write-solutions", str(tmp_path / "solved")]) == 0
    written = sorted(p.name for p in (tmp_path / "solved").glob("*.ipynb"))
    assert written == [p.name for p in NOTEBOOKS]
    nb = json.loads((tmp_path / "solved" / "04_wkv_stable.ipynb").read_text())
    stub = next(c for c in nb["cells"] if c["metadata"].get("exercise") == "wkv_stable")
    assert "NotImplementedError" not in stub["source"] and "def wkv_stable(" in stub["source"]


def test_there_are_nine_exercise_notebooks_each_with_stubs_and_checks():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 10)]
    seen = []
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        stubs = [c for c in nb["cells"] if c.get("metadata", {}).get("exercise")]
        assert stubs, f"{path.name}: no stub cell"
        for cell in stubs:
            assert "raise NotImplementedError" in "".join(cell["source"])
            seen += [cell["metadata"]["exercise"]] if isinstance(cell["metadata"]["exercise"], str) \
                else cell["metadata"]["exercise"]
        code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "check_" in code
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), \
            f"{path.name}: committed with outputs"
    assert sorted(seen) == sorted(S.__all__)


# ---------------------------------------------------------------------------------- other answers

def test_reference_wkv_is_eq14_as_written():
    """The checks' eq. 14 (the reference's own `wkv`) against rwkv_np/rwkv4/eq14.py's O(T^2) formula."""
    rng = np.random.default_rng(0)
    w, u = np.exp(rng.uniform(-3, 1, 5)), rng.uniform(-1, 1, 5)
    k, v = rng.normal(0, 2, (2, 9, 5))
    got, (aa, bb, pp) = E.reference_wkv(w, u, k, v)
    np.testing.assert_allclose(got, wkv_naive(w, u, k, v), rtol=1e-12)
    first, state = E.reference_wkv(w, u, k[:4], v[:4])
    second, _ = E.reference_wkv(w, u, k[4:], v[4:], *state)
    np.testing.assert_allclose(np.concatenate([first, second]), got, rtol=1e-12)


def test_wkv_grad_solution_is_finite_differences():
    """The teacher's gradient against central differences of eq. 14 (float64, step 1e-6: their error,
    truncation h^2 plus rounding 1e-16/h, stays below 1e-9 on these inputs; 1e-7 is the bound)."""
    w, u, k, v = wkv_inputs(3, 5, 2)
    gy = np.random.default_rng(4).normal(0, 1, (5, 2))
    gw, gu, gk, gv = S.wkv_grad(w, u, k, v, gy)
    loss = lambda w, u, k, v: (gy * wkv_naive(w, u, k, v)).sum()  # noqa: E731
    h = 1e-6
    for arr, g, i in ((w, gw, (1,)), (u, gu, (0,)), (k, gk, (2, 1)), (v, gv, (4, 0))):
        plus, minus = arr.copy(), arr.copy()
        plus[i] += h
        minus[i] -= h
        args = [w, u, k, v]
        j = next(n for n, a in enumerate(args) if a is arr)
        fd = (loss(*args[:j], plus, *args[j + 1:]) - loss(*args[:j], minus, *args[j + 1:])) / (2 * h)
        assert abs(fd - g[i]) < 1e-7, (i, fd, g[i])


def test_stable_with_another_choice_of_pp_passes():
    """The state is compared through a/b and ln b, so a correct scan that keeps bb = 1 (aa = a/b,
    pp = ln b) passes as well as the reference's choice."""
    def wkv_stable(w, u, k, v, aa, bb, pp):
        out = np.empty_like(k)
        m = np.where(bb > 0, aa / np.where(bb > 0, bb, 1), 0)  # a/b, 0 for an empty past
        lb = np.where(bb > 0, np.log(np.where(bb > 0, bb, 1)) + pp, pp)  # ln b
        for t in range(len(k)):
            q = np.maximum(lb, u + k[t])
            e1, e2 = np.exp(lb - q), np.exp(u + k[t] - q)
            out[t] = (e1 * m + e2 * v[t]) / (e1 + e2)
            q = np.maximum(lb - w, k[t])
            e1, e2 = np.exp(lb - w - q), np.exp(k[t] - q)
            m, lb = (e1 * m + e2 * v[t]) / (e1 + e2), q + np.log(e1 + e2)
        return out, m, np.ones_like(m), lb

    result = E.check_wkv_stable(wkv_stable)
    assert result.passed, result.message


def test_unknown_mistake_gets_the_first_wrong_value_and_no_name():
    result = E.check_mix(lambda x, xs, mu: 0.5 * (x + xs))
    assert result.status == "failed" and result.mistake is None
    x, xs, mu = BY_NAME["mix"].cases[0].args
    e, g = reference.mix(x, xs, mu)[0, 0], 0.5 * (x[0, 0] + xs[0, 0])
    assert f"first wrong value: mixed x[0, 0]: expected {e:.6g}, got {g:.6g}\n" in result.message
    assert "No known mistake matches" in result.message


def test_not_a_function():
    result = E.check_mix(None)
    assert result.status == "error" and "expected your function `mix`, got None" in result.message


def test_the_check_s_own_parameters_are_never_changed_by_a_learner():
    params = tiny_params(seed=7)  # the parameters of check_step's cases
    before = params["blocks"][0]["att"]["key"].copy()

    def step(params, token, state):
        params["blocks"][0]["att"]["key"] *= 2  # the learner's copy; the check's own stays as it was
        return S.step(params, token, state)

    r = E.check_step(step)
    _assert_named(r, "modified the inputs in place")
    assert "`params['blocks'][0]['att']['key']` was changed by your function" in r.message
    np.testing.assert_array_equal(params["blocks"][0]["att"]["key"], before)
    assert E.check_step(S.step).passed
