"""rwkv_np.exercises: the teacher's solutions pass every check; each known mistake, written here as a
deliberately wrong solution, is caught by name with its hint; stubs and crashes get a short message;
the exercise notebooks hold a stub and a check for every exercise. (That they run headless, with their
stubs and with the solutions filled in, is tests/test_notebooks.py, slow tier.)"""

import json
import warnings

import numpy as np
import pytest

from rwkv_np import exercises as E
from rwkv_np.errors import ArgumentError
from rwkv_np.exercises import solutions as S
from rwkv_np.rwkv4 import reference
from rwkv_np.rwkv4.eq14 import wkv_naive
from rwkv_np.rwkv4.reference import AA, ATT_X, BB, FFN_X, PP, initial_state, layer_norm, sigmoid

from helpers import REPO

CHECKS = {name: getattr(E, "check_" + name) for name in S.__all__}
NOTEBOOKS = sorted((REPO / "notebooks" / "exercises").glob("[0-9][0-9]_*.ipynb"))


def _stub(*args, **kwargs):
    raise NotImplementedError


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


def test_other_exception_is_one_line_naming_the_case_and_the_line():
    def token_shift(x, x_prev):
        return np.concatenate([x_prev, x[:-1]])  # x_prev (C,) against x (T, C): a ValueError in NumPy

    result = E.check_token_shift(token_shift)
    assert result.status == "error"
    assert result.message.startswith("✗ check_token_shift: case 'T = 5, C = 3, x_prev from the previous call': "
                                     "your function raised ValueError: ")
    assert "return np.concatenate([x_prev, x[:-1]])" in result.message
    assert len(result.message.splitlines()) == 1


def test_reference_wkv_is_eq14_as_written():
    """The checks' eq. 14 (the reference's own `wkv`) against rwkv_np/rwkv4/eq14.py's O(T^2) formula."""
    rng = np.random.default_rng(0)
    w, u = np.exp(rng.uniform(-3, 1, 5)), rng.uniform(-1, 1, 5)
    k, v = rng.normal(0, 2, (2, 9, 5))
    got, (aa, bb, pp) = E.reference_wkv(w, u, k, v)
    np.testing.assert_allclose(got, wkv_naive(w, u, k, v), rtol=1e-12)
    # the returned state continues the sequence: the second half after the first equals the whole
    first, state = E.reference_wkv(w, u, k[:4], v[:4])
    second, _ = E.reference_wkv(w, u, k[4:], v[4:], *state)
    np.testing.assert_allclose(np.concatenate([first, second]), got, rtol=1e-12)


def test_variants_without_a_mistake_are_the_reference():
    """The mistakes are recognised by outputs of the reference's arithmetic with one thing changed;
    with nothing changed, those functions must give the reference's own outputs."""
    params = E._tiny_params(seed=3)
    att = params["blocks"][0]["att"]
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (5, 8)).astype(np.float32)
    state = (rng.normal(0, 1, 8), rng.normal(0, 1, 8), rng.uniform(0.5, 2, 8), rng.normal(0, 1, 8))
    args = (x, *(s.astype(np.float32) for s in state), *(att[n] for n in E._TM_ORDER))
    want = E._tm_view(reference.time_mixing(*args))
    got = E._tm_view(E._time_mixing_variant(args, None))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    logits, st = reference.forward(params, [1, 2, 3])
    vlogits, vst = E._forward_variant(params, [1, 2, 3], None, None)
    np.testing.assert_array_equal(vlogits, logits)
    np.testing.assert_array_equal(vst, st)
    w, u, k, v = E._wkv_inputs(5, 6, 3)
    y, a, b = E._wkv_variant(w, u, k, v, np.zeros(3), np.zeros(3))
    np.testing.assert_allclose(y, wkv_naive(w, u, k, v), rtol=1e-12)


def _assert_caught(result, mistake, hint_words):
    assert result.status == "failed", result.message
    assert result.mistake == mistake, result.message
    assert f"This looks like: {mistake}." in result.message
    assert hint_words in result.message
    # what differs: the first wrong value, or the shape or dtype, or the input that was changed
    assert any(w in result.message for w in ("first wrong value: ", " has shape ", " has dtype ", "was changed"))


# ---------------------------------------------------------------------------------- 1. token shift, mix

def test_token_shift_zeros_at_t0():
    def token_shift(x, x_prev):
        return np.concatenate([np.zeros_like(x[:1]), x[:-1]])

    result = E.check_token_shift(token_shift)
    _assert_caught(result, "the shift not using the carried x_prev at t = 0 (zeros instead)", "not zeros")
    # which case, and the first wrong value with its index, expected and got
    x, prev = E._ts_cases()[0].args
    assert result.case == "T = 5, C = 3, x_prev from the previous call"
    assert f"shifted x[0, 0]: expected {prev[0]:.6g}, got 0" in result.message


def test_token_shift_wrong_direction_and_no_shift_and_extra_row():
    r = E.check_token_shift(lambda x, p: np.concatenate([x[1:], p[None]]))
    _assert_caught(r, "shifted the wrong way (x_{t+1} instead of x_{t-1})", "move x down one row")
    r = E.check_token_shift(lambda x, p: x.copy())
    _assert_caught(r, "no shift at all (x_t instead of x_{t-1})", "row t must be x_{t-1}")
    r = E.check_token_shift(lambda x, p: np.concatenate([p[None], x]))
    _assert_caught(r, "kept all T rows plus x_prev (T + 1 rows)", "one row per token")
    assert "shifted x has shape (6, 3); expected (5, 3)" in r.message


def test_token_shift_in_place():
    def token_shift(x, x_prev):
        x[1:] = x[:-1].copy()
        x[0] = x_prev
        return x

    _assert_caught(E.check_token_shift(token_shift), "modified the inputs in place", "Work on new arrays")


def test_mix_mistakes():
    _assert_caught(E.check_mix(lambda x, xs, mu: mu * xs + (1 - mu) * x),
                   "mu applied to the wrong term (mu on x_{t-1})", "share of the current")
    _assert_caught(E.check_mix(lambda x, xs, mu: mu * x + xs), "(1 - mu) missing on x_{t-1}", "both weights")

    def mix(x, xs, mu):
        x *= mu
        x += (1 - mu) * xs
        return x

    _assert_caught(E.check_mix(mix), "modified the inputs in place", "`x` was changed")


def test_wrong_dtype():
    r = E.check_mix(lambda x, xs, mu: (mu * x + (1 - mu) * xs).astype(np.float16))
    _assert_caught(r, "wrong dtype", "dtype of the inputs")
    assert "mixed x has dtype float16; expected float32" in r.message


# ---------------------------------------------------------------------------------- 2-4. eq. 14

def _naive(distance=1, bonus_past=False, bonus_now=True, sign=-1, current=True, normalise=True):
    """wkv_naive with a knob per mistake."""
    def wkv_naive(w, u, k, v):
        out = np.empty_like(k)
        for t in range(len(k)):
            now = np.exp((u if bonus_now else 0) + k[t])
            num, den = (now * v[t], now) if current else (0 * v[t], 0 * v[t])
            for i in range(t):
                e = np.exp(sign * (t - distance - i) * w + k[i] + (u if bonus_past else 0))
                num, den = num + e * v[i], den + e
            out[t] = num / den if normalise else num
        return out
    return wkv_naive


def test_wkv_naive_mistakes():
    assert E.check_wkv_naive(_naive()).passed
    _assert_caught(E.check_wkv_naive(_naive(distance=0)),
                   "the latest past token decayed once too often (e^{-(t-i)w} instead of e^{-(t-1-i)w})",
                   "is not decayed at all")
    _assert_caught(E.check_wkv_naive(_naive(bonus_past=True, bonus_now=False)),
                   "u applied to the past instead of the current token", "without u")
    _assert_caught(E.check_wkv_naive(_naive(bonus_past=True)), "u missing on the current token", "cancels")
    _assert_caught(E.check_wkv_naive(_naive(bonus_now=False)), "u missing on the current token", "u is missing")
    _assert_caught(E.check_wkv_naive(_naive(sign=1)), "the decay with the wrong sign (e^{+(t-1-i)w})",
                   "a minus sign")
    _assert_caught(E.check_wkv_naive(_naive(current=False)),
                   "the current token left out of the sums (0/0 at t = 0)", "wkv_0 = v_0")
    _assert_caught(E.check_wkv_naive(_naive(normalise=False)), "the denominator missing", "weighted average")


def _recurrent(mistake=None):
    def wkv_recurrent(w, u, k, v, a, b):
        if mistake == "ignore_state":
            a, b = np.zeros_like(a), np.zeros_like(b)
        out = np.empty_like(k)
        for t in range(len(k)):
            add = np.exp(u + k[t]) if mistake == "bonus_in_state" else np.exp(k[t])
            if mistake == "decayed_once_too_often":  # decay folded in after adding: a_t = e^-w (a + e^k v)
                a, b = np.exp(-w) * a, np.exp(-w) * b
                out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
                a, b = a + add * v[t], b + add
                continue
            out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
            a, b = np.exp(-w) * a + add * v[t], np.exp(-w) * b + add
        return out, a, b
    return wkv_recurrent


def test_wkv_recurrent_mistakes():
    assert E.check_wkv_recurrent(_recurrent()).passed
    _assert_caught(E.check_wkv_recurrent(_recurrent("bonus_in_state")), "the state updated with the bonus u",
                   "the state takes token t in with e^{k_t}")
    _assert_caught(E.check_wkv_recurrent(_recurrent("decayed_once_too_often")),
                   "the latest past token decayed once too often (e^{-(t-i)w} instead of e^{-(t-1-i)w})",
                   "decay it only when moving on")
    _assert_caught(E.check_wkv_recurrent(_recurrent("ignore_state")),
                   "the state passed in ignored (started from a = b = 0)", "carried from the previous call")
    r = E.check_wkv_recurrent(lambda w, u, k, v, a, b: _recurrent()(w, u, k, v, a, b)[0])
    assert r.status == "failed" and "it should return 3" in r.message


def _stable(mistake=None):
    def wkv_stable(w, u, k, v, aa, bb, pp):
        out = np.empty_like(k)
        for t in range(len(k)):
            q = np.maximum(pp, u + k[t])
            e1, e2 = np.exp(pp - q), np.exp(u + k[t] - q)
            out[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
            kk = u + k[t] if mistake == "bonus_in_state" else k[t]
            q = np.maximum(pp - w, kk)
            e1, e2 = np.exp(pp - w - q), np.exp(kk - q)
            aa, bb = e1 * aa + e2 * v[t], e1 * bb + e2
            if mistake != "p_not_updated":
                pp = q
        return out, aa, bb, pp
    return wkv_stable


def test_wkv_stable_mistakes():
    _assert_caught(E.check_wkv_stable(_stable("p_not_updated")), "p (the running max) not updated",
                   "pp = max(pp - w, k_t)")
    _assert_caught(E.check_wkv_stable(_stable("bonus_in_state")), "the state updated with the bonus u",
                   "e^{k_t}")
    # the plain recurrence, correct on small keys, overflows at k = 100 in float32 (silently: the check
    # turns NumPy's warnings off while it runs the learner's code, and explains the inf/nan itself)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = E.check_wkv_stable(lambda w, u, k, v, aa, bb, pp: _recurrent()(
            w, u, k, v, aa * np.exp(pp), bb * np.exp(pp)) + (np.zeros_like(pp),))
    _assert_caught(r, "exp overflow (inf/nan)", "relative to the largest one")
    assert r.case == "large keys: +-100 in float32 (e^100 overflows float32)"
    assert ", got nan" in r.message or ", got inf" in r.message


# ---------------------------------------------------------------------------------- 5-6. the two mixings

def _time_mixing(mistake=None):
    def time_mixing(x, x_prev, aa, bb, pp, time_mix_k, time_mix_v, time_mix_r, time_decay, time_first,
                    key, value, receptance, output):
        if mistake == "shift_zeros":
            x_prev = np.zeros_like(x_prev)
        xx = np.concatenate([x_prev[None], x[:-1]])
        mk, mv, mr = time_mix_k, time_mix_v, time_mix_r
        mix = (lambda m: (1 - m) * x + m * xx) if mistake == "mu_on_previous" else (lambda m: m * x + (1 - m) * xx)
        if mistake == "not_transposed":
            key, value, receptance, output = key.T, value.T, receptance.T, output.T
        r, k, v = mix(mr) @ receptance.T, mix(mk) @ key.T, mix(mv) @ value.T
        w = time_decay if mistake == "w_is_time_decay" else np.exp(time_decay)
        wkv, aa, bb, pp = _stable(mistake)(w, time_first, k, v, aa, bb, pp)
        gate = 1 if mistake == "no_gate" else sigmoid(r)
        out = (gate * wkv) @ output.T
        return out, ((out if mistake == "x_prev_from_out" else x)[-1], aa, bb, pp)
    return time_mixing


@pytest.mark.parametrize("mistake, name, words", [
    ("mu_on_previous", "mu applied to the wrong term (mu on x_{t-1})", "mu weighs the current token"),
    ("shift_zeros", "the shift not using the carried x_prev at t = 0 (zeros instead)", "not zeros"),
    ("no_gate", "sigmoid gate missing", "the receptance gates wkv"),
    ("w_is_time_decay", "the decay as e^{-w} with w = time_decay instead of w = e^{time_decay}",
     "w = np.exp(time_decay)"),
    ("bonus_in_state", "the state updated with the bonus u", "e^{k_t}"),
    ("x_prev_from_out", "the state's x_prev taken from the output", "return x[-1]"),
    ("not_transposed", "the weight matrices used untransposed (x @ W)", "x @ W.T"),
])
def test_time_mixing_mistakes(mistake, name, words):
    assert E.check_time_mixing(_time_mixing()).passed
    _assert_caught(E.check_time_mixing(_time_mixing(mistake)), name, words)


def _channel_mixing(mistake=None):
    def channel_mixing(x, x_prev, time_mix_k, time_mix_r, key, receptance, value):
        if mistake == "shift_zeros":
            x_prev = np.zeros_like(x_prev)
        xx = np.concatenate([x_prev[None], x[:-1]])
        mix = (lambda m: (1 - m) * x + m * xx) if mistake == "mu_on_previous" else (lambda m: m * x + (1 - m) * xx)
        r, k = mix(time_mix_r) @ receptance.T, mix(time_mix_k) @ key.T
        hidden = np.maximum(k, 0) if mistake == "relu" else np.maximum(k, 0) ** 2
        gate = 1 if mistake == "no_gate" else sigmoid(r)
        return gate * (hidden @ value.T), x[-1]
    return channel_mixing


@pytest.mark.parametrize("mistake, name, words", [
    ("relu", "relu instead of squared relu", "squares the ReLU"),
    ("no_gate", "sigmoid gate missing", "the receptance gates the output"),
    ("mu_on_previous", "mu applied to the wrong term (mu on x_{t-1})", "mu weighs the current token"),
    ("shift_zeros", "the shift not using the carried x_prev at t = 0 (zeros instead)", "not zeros"),
])
def test_channel_mixing_mistakes(mistake, name, words):
    assert E.check_channel_mixing(_channel_mixing()).passed
    _assert_caught(E.check_channel_mixing(_channel_mixing(mistake)), name, words)


# ---------------------------------------------------------------------------------- 7-8. the model

def _step(mistake=None):
    def step(params, token, state):
        blocks = params["blocks"]
        if state is None or mistake == "state_ignored":
            state = initial_state(len(blocks), params["emb"].shape[1])
        if mistake != "in_place":
            state = state.copy()
        x = params["emb"][token]
        if mistake != "no_ln0":
            x = layer_norm(x, **params["ln0"])
        for i, p in enumerate(blocks):
            s, att, ffn = state[i], p["att"], p["ffn"]
            xa = layer_norm(x, **p["ln1"])
            mix = lambda a, b, m: m * a + (1 - m) * b  # noqa: E731
            r = mix(xa, s[ATT_X], att["time_mix_r"]) @ att["receptance"].T
            k = mix(xa, s[ATT_X], att["time_mix_k"]) @ att["key"].T
            v = mix(xa, s[ATT_X], att["time_mix_v"]) @ att["value"].T
            w = att["time_decay"] if mistake == "w_is_time_decay" else np.exp(att["time_decay"])
            wkv, aa, bb, pp = _stable(mistake)(w, att["time_first"], k[None], v[None], s[AA], s[BB], s[PP])
            s[AA], s[BB], s[PP] = aa, bb, pp
            s[ATT_X] = x if mistake == "residual_state" else xa
            x = x + ((1 if mistake == "no_gate" else sigmoid(r)) * wkv[0]) @ att["output"].T
            xf = layer_norm(x, **p["ln2"])
            r = mix(xf, s[FFN_X], ffn["time_mix_r"]) @ ffn["receptance"].T
            k = mix(xf, s[FFN_X], ffn["time_mix_k"]) @ ffn["key"].T
            s[FFN_X] = x if mistake == "residual_state" else xf
            hidden = np.maximum(k, 0) if mistake == "relu" else np.maximum(k, 0) ** 2
            x = x + sigmoid(r) * (hidden @ ffn["value"].T)
        return layer_norm(x, **params["ln_out"]) @ params["head"].T, state
    return step


@pytest.mark.parametrize("mistake, name, words", [
    ("no_ln0", "ln0 missing", "goes through ln0"),
    ("residual_state", "the state's x_prev taken before the LayerNorm", "not the residual stream"),
    ("state_ignored", "the state passed in ignored (started from the initial state every call)", "use the state"),
    ("bonus_in_state", "the state updated with the bonus u", "e^{k_t}"),
    ("in_place", "modified the inputs in place", "was changed by your function"),
    ("w_is_time_decay", "the decay as e^{-w} with w = time_decay instead of w = e^{time_decay}",
     "w = np.exp(time_decay)"),
    ("no_gate", "sigmoid gate missing in time mixing", "the receptance gates wkv"),
    ("relu", "relu instead of squared relu", "squares the ReLU"),
])
def test_step_mistakes(mistake, name, words):
    _assert_caught(E.check_step(_step(mistake)), name, words)


def test_step_of_the_tests_is_right():
    assert E.check_step(_step()).passed


def _forward(mistake=None):
    def forward(params, tokens, state=None):
        blocks = params["blocks"]
        if state is None:
            state = initial_state(len(blocks), params["emb"].shape[1])
        x = params["emb"][np.asarray(tokens)]
        if mistake != "no_ln0":
            x = layer_norm(x, **params["ln0"])
        new = np.empty_like(state)
        for i, p in enumerate(blocks):
            s = state[i]
            dx, (ax, aa, bb, pp) = reference.time_mixing(layer_norm(x, **p["ln1"]), s[ATT_X], s[AA], s[BB], s[PP],
                                                         **p["att"])
            x = dx if mistake == "no_residual" else x + dx
            dx, fx = reference.channel_mixing(layer_norm(x, **p["ln2"]), s[FFN_X], **p["ffn"])
            x = dx if mistake == "no_residual" else x + dx
            new[i] = np.stack([ax, aa, bb, pp, fx])
        if mistake != "no_ln_out":
            x = layer_norm(x, **params["ln_out"])
        return x @ params["head"].T, (state if mistake == "state_not_returned" else new)
    return forward


@pytest.mark.parametrize("mistake, name, words", [
    ("no_ln0", "ln0 missing", "goes through ln0"),
    ("no_ln_out", "ln_out missing", "logits = LN(x) @ head.T"),
    ("no_residual", "a residual connection missing", "x = x + time_mixing"),
    ("state_not_returned", "the state not updated (the input state returned)", "return the new state"),
])
def test_forward_mistakes(mistake, name, words):
    _assert_caught(E.check_forward(_forward(mistake)), name, words)


def test_forward_wrong_state_shape():
    r = E.check_forward(lambda params, tokens, state=None: (S.forward(params, tokens, state)[0],
                                                            S.forward(params, tokens, state)[1][:, :4]))
    assert r.status == "failed" and "the state has shape (2, 4, 8); expected (L, 5, C)" in r.message


def test_generate_mistakes():
    def no_state(params, prompt, n):
        logits, _ = S.forward(params, list(prompt))
        out = []
        for _ in range(n):
            out.append(int(np.argmax(logits[-1])))
            logits, _ = S.forward(params, [out[-1]])
        return out

    def first_position(params, prompt, n):
        logits, state = S.forward(params, list(prompt))
        out = [int(np.argmax(logits[0]))]
        while len(out) < n:
            logits, state = S.forward(params, [out[-1]], state)
            out.append(int(np.argmax(logits[-1])))
        return out

    _assert_caught(E.check_generate(no_state), "the state not carried (each new token read from the initial state)",
                   "sees only the last byte")
    _assert_caught(E.check_generate(first_position), "the first token picked from the prompt's first position",
                   "logits[-1]")


def test_show_generation(capsys):
    params = E._tiny_params(seed=9, vocab_size=256)
    E.show_generation(_stub, params)
    assert "generate: not implemented yet" in capsys.readouterr().out
    E.show_generation(lambda p, prompt, n: [65] * n, params, b"x", 3)
    assert capsys.readouterr().out == "xAAA\n"


# ---------------------------------------------------------------------------------- 9. gradient

def _grad(mistake=None):
    def wkv_grad(w, u, k, v, gy):
        gw, gu, gk, gv = S.wkv_grad(w, u, k, v, gy)
        if mistake == "ln_w":
            gw = gw * w
        if mistake == "sign":
            gw = -gw
        if mistake in ("gk_no_current", "gv_no_current", "gu_per_t", "distance"):
            T, C = k.shape
            gu_t, own, past = np.zeros((T, C)), np.zeros((T, C)), np.zeros(C)
            for t in range(T):
                x = np.concatenate([-np.arange(t - 1, -1, -1)[:, None] * w + k[:t], (u + k[t])[None]])
                p = np.exp(x - x.max(0))
                p /= p.sum(0)
                y = (p * v[:t + 1]).sum(0)
                gu_t[t] = p[t] * (v[t] - y) * gy[t]
                own[t] = p[t] * gy[t]
                past += (p[:t] * (v[:t] - y) * gy[t]).sum(0)
            if mistake == "gk_no_current":
                gk = gk - gu_t
            if mistake == "gv_no_current":
                gv = gv - own
            if mistake == "gu_per_t":
                gu = gu_t
            if mistake == "distance":
                gw = gw - past
        return gw, gu, gk, gv
    return wkv_grad


@pytest.mark.parametrize("mistake, name, words", [
    ("ln_w", "the gradient with respect to time_decay (ln w) instead of w", "dL/dw"),
    ("sign", "the sign of gw flipped", "a larger w forgets faster"),
    ("distance", "the latest past token decayed once too often in gw (distance t-i instead of t-1-i)",
     "is not decayed at all"),
    ("gk_no_current", "gk missing the current token's term", "add e^{u+k_t}/D_t (v_t - wkv_t) gy_t"),
    ("gv_no_current", "gv missing the current token's term", "times gy_t"),
    ("gu_per_t", "gu not summed over t", "the sum over t, shape (C,)"),
])
def test_wkv_grad_mistakes(mistake, name, words):
    _assert_caught(E.check_wkv_grad(_grad(mistake)), name, words)


def test_wkv_grad_solution_is_finite_differences():
    """The teacher's gradient against central differences of eq. 14 (float64, step 1e-6: their error,
    truncation h^2 plus rounding 1e-16/h, stays below 1e-9 on these inputs; 1e-7 is the bound)."""
    w, u, k, v = E._wkv_inputs(3, 5, 2)
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


# ---------------------------------------------------------------------------------- notebooks

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
    case = E._mix_cases()[0]
    x, xs, mu = case.args
    assert f"first wrong value: mixed x[0, 0]: expected {E._fmt(case.expected[0, 0])}, " \
           f"got {E._fmt(0.5 * (x[0, 0] + xs[0, 0]))}" in result.message
    assert "No known mistake matches" in result.message


def test_not_a_function():
    result = E.check_mix(None)
    assert result.status == "error" and "expected your function `mix`, got NoneType" in result.message


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
