"""Eq. 14 of RWKV-4: the formula as the paper writes it (rwkv_np/rwkv4/eq14.py, the oracle), the
reference's recurrence (reference.wkv), the compiled step that the engine and the trainer share
(kernels.wkv_step), and the two forms parallel over time (eq14.wkv_scan, eq14.wkv_chunked) all give
the same numbers, and the stable ones never overflow."""

import numpy as np
import pytest

from rwkv_np.rwkv4 import kernels as K
from rwkv_np.rwkv4.eq14 import exponents, implied_attention, wkv_chunked, wkv_naive, wkv_scan
from rwkv_np.training.wkv_grad import wkv_forward

from helpers import empty_state, reference_wkv

F32_EPS = np.finfo(np.float32).eps


def random_inputs(T, C, seed, k_scale=1.0, u_max=2.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(-6.0, 2.5, C))  # the spread of trained decays: e^-w from ~1 to ~1e-5
    u = rng.uniform(-1.0, u_max, C)
    k = rng.normal(size=(T, C)) * k_scale
    v = rng.normal(size=(T, C))
    return [a.astype(dtype) for a in (w, u, k, v)]


def compiled_wkv(w, u, k, v, aa, bb, pp):
    """kernels.wkv_gate with r = +inf (sigmoid exactly 1): the engine's parallel-form scan."""
    out = np.empty(k.shape, np.float32)
    state = [np.array(a, np.float32) for a in (aa, bb, pp)]
    K.wkv_gate(*(np.asarray(a, np.float32) for a in (w, u, k, v)), np.full(k.shape, np.inf, np.float32), *state, out)
    return out, *state


def test_naive_matches_a_hand_computed_case():
    # one channel, w = ln 2 (the past halves each step), u = 0, k = 0: weights of tokens 0, 1, 2
    # at t = 2 are e^{-w} = 1/2, 1 (the latest past token is not decayed), and e^{u} = 1 for the current one
    w, u = np.array([np.log(2.0)]), np.array([0.0])
    k = np.zeros((3, 1))
    v = np.array([[4.0], [2.0], [1.0]])
    out = wkv_naive(w, u, k, v)
    assert out[0, 0] == pytest.approx(4.0)  # only the current token
    assert out[1, 0] == pytest.approx((4.0 + 2.0) / 2.0)
    assert out[2, 0] == pytest.approx((0.5 * 4.0 + 1.0 * 2.0 + 1.0 * 1.0) / 2.5)
    np.testing.assert_allclose(exponents(w, u, k, 2)[:, 0], [-np.log(2.0), 0.0, 0.0])


def test_implied_attention_rows_are_the_naive_weights():
    w, u, k, v = random_inputs(T=20, C=3, seed=7)
    for c in range(3):
        attn = implied_attention(w[c], u[c], k[:, c])
        np.testing.assert_allclose(attn @ v[:, c], wkv_naive(w, u, k, v)[:, c], rtol=0, atol=1e-13)


def test_reference_recurrence_equals_the_formula_in_float64():
    w, u, k, v = random_inputs(T=64, C=24, seed=1)
    naive = wkv_naive(w, u, k, v)
    stable, *_ = reference_wkv(w, u, k, v, *empty_state(24))
    # float64 throughout: the two orders of summation differ by a few ulps of the result
    np.testing.assert_allclose(stable, naive, rtol=1e-12, atol=1e-12)


def test_compiled_step_equals_the_formula():
    w, u, k, v = random_inputs(T=64, C=24, seed=1)
    naive = wkv_naive(w, u, k, v)
    compiled, *_ = compiled_wkv(w, u, k, v, *empty_state(24))
    # float64 arithmetic on the inputs rounded to float32, the result rounded to float32: a value of
    # size ~|v| (<= ~4) a few roundings away from exact (the bound of the wkv_numba test it replaces)
    np.testing.assert_allclose(compiled, naive, rtol=0, atol=4 * 4 * F32_EPS)
    # the trainer's forward runs the same compiled step over (T, B, C), in the inputs' dtype
    y, (q, d) = wkv_forward(w, u, k[:, None], v[:, None])
    np.testing.assert_allclose(y[:, 0], naive, rtol=1e-13, atol=1e-13)
    # its saves: the denominator of eq. 14 at the exponent q, so d e^q is the plain sum of weights
    plain = np.array([np.exp(exponents(w, u, k, t)).sum(0) for t in range(64)])
    np.testing.assert_allclose(d[:, 0] * np.exp(q[:, 0]), plain, rtol=1e-12)


def test_states_of_reference_and_compiled_agree():
    w, u, k, v = random_inputs(T=50, C=8, seed=2)
    _, aa1, bb1, pp1 = reference_wkv(w, u, k, v, *empty_state(8))
    _, aa2, bb2, pp2 = compiled_wkv(w, u, k, v, *empty_state(8))
    np.testing.assert_allclose(pp2, pp1, rtol=2 * F32_EPS)
    np.testing.assert_allclose(bb2, bb1, rtol=4 * F32_EPS)
    # aa is a signed sum of values that can cancel: its error scales with bb * |v|, not with aa
    np.testing.assert_allclose(aa2, aa1, rtol=0, atol=4 * F32_EPS * bb1.max() * np.abs(v).max())


@pytest.mark.parametrize("route", ["reference", "compiled"])
def test_a_scan_in_pieces_equals_one_scan(route):
    wkv = reference_wkv if route == "reference" else compiled_wkv
    w, u, k, v = random_inputs(T=30, C=16, seed=3, dtype=np.float32)
    whole, *state_whole = wkv(w, u, k, v, *empty_state(16, np.float32))
    state = empty_state(16, np.float32)
    pieces = []
    for a, b in [(0, 7), (7, 8), (8, 30)]:
        out, *state = wkv(w, u, k[a:b], v[a:b], *state)
        pieces.append(out)
    # the reference keeps the state in float32 anyway: bit-identical; the compiled scan keeps it in
    # float64 within a call, so its state is rounded at every piece border: float32 rounding
    atol = 0 if route == "reference" else 16 * F32_EPS
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=atol)
    (aa, bb, pp), (aa_w, bb_w, pp_w) = state, state_whole
    np.testing.assert_allclose(pp, pp_w, rtol=8 * F32_EPS)
    np.testing.assert_allclose(bb, bb_w, rtol=8 * F32_EPS)
    np.testing.assert_allclose(aa, aa_w, rtol=0, atol=8 * F32_EPS * bb_w.max() * np.abs(v).max())


def test_large_keys_overflow_the_naive_form_but_not_the_stable_ones():
    # k around +-100 and u up to 5: e^{105} is 4e45, beyond float32's 3.4e38
    w, u, k, v = random_inputs(T=200, C=16, seed=5, k_scale=60.0, u_max=5.0)
    k = np.clip(k, -100, 100)
    exact = wkv_naive(w, u, k, v)  # float64 holds e^{105} easily: this is the oracle
    assert np.isfinite(exact).all()
    f32 = [a.astype(np.float32) for a in (w, u, k, v)]
    with np.errstate(over="ignore", invalid="ignore"):
        naive32 = wkv_naive(*f32)
    assert not np.isfinite(naive32).all()
    stable32, *state32 = reference_wkv(*f32, *empty_state(16, np.float32))
    compiled, *state = compiled_wkv(*f32, *empty_state(16, np.float32))
    assert np.isfinite(stable32).all() and np.isfinite(compiled).all()
    assert all(np.isfinite(s).all() for s in state + state32)
    # inputs rounded to float32: k = 100 carries an error of 100 * eps / 2, and a weight e^k
    # carries that relative error, so the averages move by about |v| * 100 * eps
    bound = 4.0 * 100 * F32_EPS * np.abs(v).max()
    np.testing.assert_allclose(compiled, exact, rtol=0, atol=bound)
    np.testing.assert_allclose(stable32, exact, rtol=0, atol=bound)


def test_one_token_from_an_empty_past():
    w, u, k, v = random_inputs(T=1, C=6, seed=6)
    out, aa, bb, pp = reference_wkv(w, u, k, v, *empty_state(6))
    # from an empty past the output is the current value, and the state holds e^{k} v, e^{k}
    np.testing.assert_allclose(out[0], v[0], rtol=1e-15)
    np.testing.assert_allclose(pp, k[0])
    np.testing.assert_allclose(aa, v[0])
    np.testing.assert_allclose(bb, np.ones(6))


PARALLEL = {"scan": wkv_scan, "chunks of 1": lambda *a: wkv_chunked(*a, chunk=1),
            "chunks of 7": lambda *a: wkv_chunked(*a, chunk=7), "chunks of 32": wkv_chunked,
            "one chunk": lambda *a: wkv_chunked(*a, chunk=512)}


@pytest.mark.parametrize("form", PARALLEL)
@pytest.mark.parametrize("T", [1, 2, 31, 64, 100])
def test_the_parallel_forms_are_the_recurrence_in_float64(form, T):
    # from an empty past and after 40 tokens already read; T not a power of 2 nor a multiple of the chunk
    w, u, k, v = random_inputs(T=T + 40, C=12, seed=T, k_scale=3.0)
    _, *carried = reference_wkv(w, u, k[:40], v[:40], *empty_state(12))
    for state in (empty_state(12), carried):
        want, *want_state = reference_wkv(w, u, k[40:], v[40:], *state)
        got, got_state = PARALLEL[form](w, u, k[40:], v[40:], *state)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(got_state, want_state):  # aa, bb, pp after the last token
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("form", ["scan", "chunks of 32"])
def test_the_parallel_forms_equal_the_recurrence_to_float32_precision(form):
    # float32 throughout, 1000 tokens of the trained decays' spread: the parallel forms round a number
    # of times that grows with log T (scan) or the chunk (chunks), not with T, so they stay within a few
    # roundings of the value; the float32 recurrence (the reference's, its state rounded every step)
    # drifts further (notebook 06), and both sit within float32 rounding of the float64 recurrence
    w, u, k, v = random_inputs(T=1000, C=32, seed=11, k_scale=2.0)
    exact, *exact_state = reference_wkv(w, u, k, v, *empty_state(32))
    f32 = [a.astype(np.float32) for a in (w, u, k, v)]
    got, (aa, bb, pp) = PARALLEL[form](*f32, *empty_state(32, np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact, rtol=0, atol=8 * F32_EPS * np.abs(v).max())
    rec32, *_ = reference_wkv(*f32, *empty_state(32, np.float32))
    np.testing.assert_allclose(got, rec32, rtol=0, atol=64 * F32_EPS * np.abs(v).max())
    np.testing.assert_allclose(pp, exact_state[2], rtol=4 * F32_EPS)
    np.testing.assert_allclose(bb, exact_state[1], rtol=64 * F32_EPS)


@pytest.mark.parametrize("form", ["scan", "chunks of 32"])
def test_the_parallel_forms_never_overflow(form):
    w, u, k, v = random_inputs(T=200, C=16, seed=5, k_scale=60.0, u_max=5.0)
    k = np.clip(k, -100, 100)
    exact = wkv_naive(w, u, k, v)
    f32 = [a.astype(np.float32) for a in (w, u, k, v)]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got, state = PARALLEL[form](*f32, *empty_state(16, np.float32))
    assert all(np.isfinite(s).all() for s in state)
    np.testing.assert_allclose(got, exact, rtol=0, atol=4.0 * 100 * F32_EPS * np.abs(v).max())
