"""The compiled pieces one at a time: rwkv_np/ops.py (the exponential), rwkv_np/products.py (widening
16-bit weights, matrix-vector products of every weight kind, the rows' prefetch) and RWKV-4's eq. 14
kernel (rwkv_np/rwkv4/kernels.py) against the reference. The whole engine against the reference is
tests/test_rwkv4_engine.py (and test_rwkv5_6_7_engine.py); ggml's block kernels are in test_quantize.py."""

import numpy as np
import pytest
from numba import njit

from rwkv_np import ops, products
from rwkv_np.quantize import Int8Matrix
from rwkv_np.rwkv4 import kernels as K

from helpers import bf16_bits, bf16_round, empty_state, reference_wkv

F32_EPS = float(np.finfo(np.float32).eps)


@njit(cache=True, error_model="numpy")
def _widen_all(bits):
    out = np.empty(bits.shape[0], np.float32)
    for i in range(bits.shape[0]):
        out[i] = products.widen(bits[i])
    return out


@njit(cache=True, error_model="numpy")
def _exp_all(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = ops.exp_nonpos(x[i])
    return out


def test_widen_is_exact_for_every_16_bit_pattern():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    bf16 = _widen_all(bits)
    np.testing.assert_array_equal(bf16.view(np.uint32), bits.astype(np.uint32) << 16)  # NaNs too, bit for bit
    fp16 = _widen_all(bits.view(np.int16))
    expected = bits.view(np.float16).astype(np.float32)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(fp16[finite], expected[finite])  # subnormals included
    np.testing.assert_array_equal(fp16[np.isinf(expected)], expected[np.isinf(expected)])
    assert np.isnan(fp16[np.isnan(expected)]).all()


def test_exp_nonpos_within_two_ulp_of_libm():
    x = -np.concatenate([np.random.default_rng(0).uniform(0, 708, 200_000), np.geomspace(1e-300, 1, 1000),
                         [0.0, 707.999]])
    got, ref = _exp_all(x), np.exp(x)
    assert got[-2] == 1.0
    np.testing.assert_allclose(got, ref, rtol=2 * 2.0 ** -52, atol=0)
    # below the smallest normal the WKV weights are 0 (e^-1e38 of an empty past included)
    assert (_exp_all(np.array([-708.5, -745.0, -1e38, -np.inf])) == 0).all()


def test_matvec_float32_and_16_bit():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((300, 1000)).astype(np.float32)
    x = rng.standard_normal(1000).astype(np.float32)
    exact = W.astype(np.float64) @ x.astype(np.float64)
    out = np.empty(300, np.float32)
    products.matvec(W, x, out)
    # float32 accumulation of 1000 products, any order: |error| <= n eps sum|w x| (worst case)
    bound = 1000 * F32_EPS * (np.abs(W).astype(np.float64) @ np.abs(x))
    assert (np.abs(out - exact) <= bound).all()
    # 16-bit weights are widened exactly, then the same float32 loop runs: the same numbers
    Wb = bf16_round(W)
    out16, out32 = np.empty(300, np.float32), np.empty(300, np.float32)
    products.matvec(bf16_bits(W), x, out16)
    products.matvec(Wb, x, out32)
    np.testing.assert_array_equal(out16, out32)
    products.matvec(W.astype(np.float16).view(np.int16), x, out16)
    products.matvec(W.astype(np.float16).astype(np.float32), x, out32)
    np.testing.assert_array_equal(out16, out32)


def test_wkv_gate_is_eq14_of_the_reference_and_sigmoid():
    rng = np.random.default_rng(2)
    T, C = 300, 40
    w = np.exp(rng.uniform(-6, 2.5, C)).astype(np.float32)
    u = rng.uniform(-1, 2, C).astype(np.float32)
    k = (rng.standard_normal((T, C)) * 20).astype(np.float32)  # exponents far apart: the max trick matters
    v = rng.standard_normal((T, C)).astype(np.float32)
    r = (rng.standard_normal((T, C)) * 5).astype(np.float32)

    # the reference's recurrence in float64 on the same float32 inputs: the kernel computes it in
    # float64 too (exponentials within 2 ulp of libm's), so its float32 state is one rounding away
    f64 = [a.astype(np.float64) for a in (w, u, k, v)]
    ref, *ref_state = reference_wkv(*f64, *empty_state(C))
    out, state = np.empty_like(k), empty_state(C, np.float32)
    K.wkv_gate(w, u, k, v, r, *state, out)
    for got, want in zip(state, ref_state):
        np.testing.assert_allclose(got, want, rtol=F32_EPS, atol=0)
    # sigmoid(r) * wkv: each factor within one float32 rounding of the exact value, so the
    # product within about 3 roundings of the float64 product
    expected = 1 / (1 + np.exp(-r.astype(np.float64))) * ref.astype(np.float64)
    np.testing.assert_allclose(out, expected, rtol=3 * F32_EPS, atol=1e-30)


def test_prefetch_distance_changes_no_number():
    """row_dot's prefetch only asks the memory for rows early: any distance (0: none) gives the
    same float32 results bit for bit, for every kind of stored weight."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((200, 96)).astype(np.float32)
    x = rng.standard_normal(96).astype(np.float32)
    q = Int8Matrix.quantize(W)
    for w, scales in ((W, None), (bf16_bits(W), None), (W.astype(np.float16).view(np.int16), None), (q.q, q.scales)):
        outs = []
        for ahead in (0, 1, products.PREFETCH_BYTES, 10**9):
            outs.append(np.empty(200, np.float32))
            products.matvec(w, x, outs[-1], scales, ahead)
        for out in outs[1:]:
            np.testing.assert_array_equal(out, outs[0])


def test_int8_matvec_kernel():
    rng = np.random.default_rng(2)
    m = Int8Matrix.quantize(rng.normal(size=(50, 72)).astype(np.float32))  # 72 = 2 blocks + 8
    x = rng.normal(size=72).astype(np.float32)
    out = np.empty(50, np.float32)
    products.matvec(m.q, x, out, m.scales)
    exact = np.asarray(m).astype(np.float64) @ x
    # float32 sums of 72 terms: each rounding at most 2^-24 relative of a partial sum
    np.testing.assert_allclose(out, exact, rtol=0, atol=72 * 2.0 ** -24 * (np.abs(np.asarray(m)) @ np.abs(x)).max())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "int8"])
def test_widening_for_blas_is_exact(dtype):
    """The parallel form hands BLAS float32: widen_into and dequantize_into give exactly the values
    the recurrent form's products read."""
    W = np.random.default_rng(5).standard_normal((40, 96)).astype(np.float32)
    out = np.full(W.shape, np.nan, np.float32)
    if dtype == "int8":
        q = Int8Matrix.quantize(W)
        products.dequantize_into(q.q, q.scales, out)
        np.testing.assert_array_equal(out, np.asarray(q))
    elif dtype == "bfloat16":
        products.widen_into(bf16_bits(W), out)
        np.testing.assert_array_equal(out, bf16_round(W))
    else:
        products.widen_into(W.astype(np.float16).view(np.int16), out)
        np.testing.assert_array_equal(out, W.astype(np.float16).astype(np.float32))
