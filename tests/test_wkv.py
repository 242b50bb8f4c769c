"""The three forms of eq. 14 agree, and the stable ones never overflow."""

import numpy as np
import pytest

from rwkv_np.wkv import PP_EMPTY, wkv_naive, wkv_numba, wkv_numpy, wkv_recurrent_step

F32_EPS = np.finfo(np.float32).eps


def random_inputs(T, C, seed, k_scale=1.0, u_max=2.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(-6.0, 2.5, C))  # the spread of trained decays: e^-w from ~1 to ~1e-5
    u = rng.uniform(-1.0, u_max, C)
    k = rng.normal(size=(T, C)) * k_scale
    v = rng.normal(size=(T, C))
    return [a.astype(dtype) for a in (w, u, k, v)]


def empty_state(C, dtype=np.float64):
    return np.zeros(C, dtype), np.zeros(C, dtype), np.full(C, PP_EMPTY, dtype)


def test_naive_matches_a_hand_computed_case():
    # one channel, w = ln 2 (the past halves each step), u = 0, k = 0: weights of tokens 0, 1, 2
    # at t = 2 are e^{-w} = 1/2, 1, and e^{u} = 1 for the current one.
    w, u = np.array([np.log(2.0)]), np.array([0.0])
    k = np.zeros((3, 1))
    v = np.array([[4.0], [2.0], [1.0]])
    out = wkv_naive(w, u, k, v)
    assert out[0, 0] == pytest.approx(4.0)  # only the current token
    assert out[1, 0] == pytest.approx((4.0 + 2.0) / 2.0)
    assert out[2, 0] == pytest.approx((0.5 * 4.0 + 1.0 * 2.0 + 1.0 * 1.0) / 2.5)


def test_three_forms_agree_in_float64():
    w, u, k, v = random_inputs(T=64, C=24, seed=1)
    naive = wkv_naive(w, u, k, v)
    stable, *_ = wkv_numpy(w, u, k, v, *empty_state(24))
    # float64 throughout: the two orders of summation differ by a few ulps of the result
    np.testing.assert_allclose(stable, naive, rtol=1e-12, atol=1e-12)
    compiled, *_ = wkv_numba(w, u, k, v, *empty_state(24))
    # wkv_numba returns float32: one rounding of a value of size ~|v| (<= ~4) away from exact
    np.testing.assert_allclose(compiled, naive, rtol=0, atol=4 * 4 * F32_EPS)


def test_states_of_numpy_and_numba_agree():
    w, u, k, v = random_inputs(T=50, C=8, seed=2)
    _, aa1, bb1, pp1 = wkv_numpy(w, u, k, v, *empty_state(8))
    _, aa2, bb2, pp2 = wkv_numba(w, u, k, v, *empty_state(8))
    np.testing.assert_allclose(pp2, pp1, rtol=2 * F32_EPS)
    np.testing.assert_allclose(bb2, bb1, rtol=4 * F32_EPS)
    # aa is a signed sum of values that can cancel: its error scales with bb * |v|, not with aa
    np.testing.assert_allclose(aa2, aa1, rtol=0, atol=4 * F32_EPS * bb1.max() * np.abs(v).max())


def test_numba_scan_in_pieces_equals_one_scan():
    w, u, k, v = random_inputs(T=30, C=16, seed=3, dtype=np.float32)
    whole, *state_whole = wkv_numba(w, u, k, v, *empty_state(16, np.float32))
    state = empty_state(16, np.float32)
    pieces = []
    for a, b in [(0, 7), (7, 8), (8, 30)]:
        out, *state = wkv_numba(w, u, k[a:b], v[a:b], *state)
        pieces.append(out)
    # the float32 state is rounded at every piece border, so agreement is to float32 rounding
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=16 * F32_EPS)
    (aa, bb, pp), (aa_w, bb_w, pp_w) = state, state_whole
    np.testing.assert_allclose(pp, pp_w, rtol=8 * F32_EPS)
    np.testing.assert_allclose(bb, bb_w, rtol=8 * F32_EPS)
    # aa is a signed sum that can cancel: its error scales with bb * |v|
    np.testing.assert_allclose(aa, aa_w, rtol=0, atol=8 * F32_EPS * bb_w.max() * np.abs(v).max())


def test_numba_does_not_modify_its_state_arguments():
    w, u, k, v = random_inputs(T=5, C=4, seed=4, dtype=np.float32)
    aa, bb, pp = empty_state(4, np.float32)
    before = [aa.copy(), bb.copy(), pp.copy()]
    wkv_numba(w, u, k, v, aa, bb, pp)
    for a, b in zip([aa, bb, pp], before):
        assert np.array_equal(a, b)


def test_large_keys_overflow_the_naive_form_but_not_the_stable_ones():
    # k around +-100 and u up to 5: e^{105} is 4e45, beyond float32's 3.4e38
    w, u, k, v = random_inputs(T=200, C=16, seed=5, k_scale=60.0, u_max=5.0)
    k = np.clip(k, -100, 100)
    exact = wkv_naive(w, u, k, v)  # float64 holds e^{105} easily: this is the oracle
    assert np.isfinite(exact).all()
    with np.errstate(over="ignore", invalid="ignore"):
        naive32 = wkv_naive(*(a.astype(np.float32) for a in (w, u, k, v)))
    assert not np.isfinite(naive32).all()
    f32 = [a.astype(np.float32) for a in (w, u, k, v)]
    stable32, *state32 = wkv_numpy(*f32, *empty_state(16, np.float32))
    compiled, *state = wkv_numba(*f32, *empty_state(16, np.float32))
    assert np.isfinite(stable32).all() and np.isfinite(compiled).all()
    assert all(np.isfinite(s).all() for s in state + state32)
    # inputs rounded to float32: k = 100 carries an error of 100 * eps / 2, and a weight e^k
    # carries that relative error, so the averages move by about |v| * 100 * eps
    bound = 4.0 * 100 * F32_EPS * np.abs(v).max()
    np.testing.assert_allclose(compiled, exact, rtol=0, atol=bound)
    np.testing.assert_allclose(stable32, exact, rtol=0, atol=bound)


def test_one_recurrent_step_is_a_one_token_scan():
    w, u, k, v = random_inputs(T=1, C=6, seed=6)
    out, aa, bb, pp = wkv_recurrent_step(w, u, k[0], v[0], *empty_state(6))
    # from an empty past the output is the current value, and the state holds e^{k} v, e^{k}
    np.testing.assert_allclose(out, v[0], rtol=1e-15)
    np.testing.assert_allclose(pp, k[0])
    np.testing.assert_allclose(aa, v[0])
    np.testing.assert_allclose(bb, np.ones(6))
