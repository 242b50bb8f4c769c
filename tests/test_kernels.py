"""The compiled kernels (rwkv_np/kernels.py) against rwkv_np/reference.py, piece by piece. The
engine against the reference on the fixtures is tests/test_engine.py; the engine against rwkv.cpp and
float64 logits is tests/test_model.py."""

import sys
import time

import numpy as np
import pytest
from numba import njit

from rwkv_np import RWKV, State
from rwkv_np import kernels as K
from rwkv_np import reference
from rwkv_np.errors import ArgumentError

from _eq14 import empty_state, reference_wkv
from _writers import bf16_bits, bf16_round, expected_model_weights, tiny_weights

F32_EPS = float(np.finfo(np.float32).eps)


@njit(cache=True, error_model="numpy")
def _widen_all(bits):
    out = np.empty(bits.shape[0], np.float32)
    for i in range(bits.shape[0]):
        out[i] = K.widen(bits[i])
    return out


@njit(cache=True, error_model="numpy")
def _exp_all(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = K._exp_nonpos(x[i])
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
    K.matvec(W, x, out)
    # float32 accumulation of 1000 products, any order: |error| <= n eps sum|w x| (worst case)
    bound = 1000 * F32_EPS * (np.abs(W).astype(np.float64) @ np.abs(x))
    assert (np.abs(out - exact) <= bound).all()
    # 16-bit weights are widened exactly, then the same float32 loop runs: the same numbers
    Wb = bf16_round(W)
    out16, out32 = np.empty(300, np.float32), np.empty(300, np.float32)
    K.matvec(bf16_bits(W), x, out16)
    K.matvec(Wb, x, out32)
    np.testing.assert_array_equal(out16, out32)
    K.matvec(W.astype(np.float16).view(np.int16), x, out16)
    K.matvec(W.astype(np.float16).astype(np.float32), x, out32)
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


@pytest.fixture(scope="module")
def weights():
    raw = tiny_weights(n_layer=3, C=64, V=100, F=256, seed=1)
    return {k: (bf16_round(v) if v.ndim == 2 else v) for k, v in expected_model_weights(raw).items()}


TOKENS = np.random.default_rng(3).integers(0, 100, 60)
# float32 evaluations of one function by two routes (C = 64, F = 256, 3 blocks): dot products of
# at most 256 terms round at 256 eps = 3e-5 worst case relative to sum|w x|, typically sqrt(256)
# eps = 2e-6; logits here are O(1). 2e-5 is within the worst case and far below the 1e-2 that a
# wrong formula gives.
ATOL = 2e-5


@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
def test_fast_paths_agree_with_the_reference(weights, mode):
    model = RWKV(weights)
    start = model.init_state()
    ref_logits, ref_state = reference.forward(model.params, TOKENS, start.data)
    logits, state = model.forward(TOKENS, start, mode=mode, return_all=True)
    assert logits.dtype == np.float32 and logits.shape == (60, 100)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=ATOL)
    # aa, bb grow to sums of up to 60 terms of size e^(k - pp) <= 1, times |v| for aa
    np.testing.assert_allclose(state.data, ref_state, rtol=1e-5, atol=ATOL)


def test_recurrent_one_call_equals_token_by_token(weights):
    model = RWKV(weights)
    every, s_all = model.forward(TOKENS, mode="recurrent", return_all=True)
    state = None
    for t, tok in enumerate(TOKENS):
        logits, state = model.forward([tok], state, mode="recurrent")
        np.testing.assert_array_equal(logits, every[t])
    assert state == s_all


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
@pytest.mark.parametrize("mode", ["recurrent", "parallel"])
def test_16_bit_weights_give_the_float32_numbers(weights, kind, mode):
    # the test weights are bf16 values (so exact in both 16-bit formats when they fit fp16's range);
    # widening is exact, and the same float32 loops (recurrent) or the same BLAS products on the
    # widened matrices (parallel) follow, in the same order: identical results are expected, not
    # merely close ones.
    if kind == "bfloat16":
        narrow = {k: bf16_bits(v) if v.ndim == 2 else v for k, v in weights.items()}
        wide = weights
    else:
        narrow = {k: v.astype(np.float16) if v.ndim == 2 else v for k, v in weights.items()}
        wide = {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v for k, v in weights.items()}
    m16, m32 = RWKV(narrow), RWKV(wide)
    assert m16.weight_dtype == kind and m32.weight_dtype == "float32"
    a, sa = m16.forward(TOKENS, mode=mode, return_all=True)
    b, sb = m32.forward(TOKENS, mode=mode, return_all=True)
    np.testing.assert_array_equal(a, b)
    assert sa == sb
    last, _ = m16.forward(TOKENS, mode=mode)  # the head as a matrix-vector product
    np.testing.assert_array_equal(last, m32.forward(TOKENS, mode=mode)[0])
    # the readable functions see the same weights through `params`
    np.testing.assert_array_equal(m16.params["blocks"][1]["att"]["key"], wide["blocks.1.att.key.weight"])


def test_read_only_and_mixed_storage(weights):
    frozen = {k: v.copy() for k, v in weights.items()}
    for v in frozen.values():
        v.flags.writeable = False  # as memory-mapped checkpoints are
    a, _ = RWKV(frozen).forward(TOKENS[:10], mode="recurrent")
    mixed = dict(weights, **{"head.weight": bf16_bits(weights["head.weight"])})
    m = RWKV(mixed)
    assert m.weight_dtype == "float32"  # one 16-bit matrix among float32 ones: all float32
    b, _ = m.forward(TOKENS[:10], mode="recurrent")
    c, _ = RWKV(weights).forward(TOKENS[:10], mode="recurrent")
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)


def test_forward_leaves_the_given_state_alone(weights):
    model = RWKV(weights)
    _, state = model.forward(TOKENS[:5])
    before = state.data.copy()
    for mode in ("recurrent", "parallel"):
        model.forward(TOKENS[5:9], state, mode=mode)
    assert np.array_equal(state.data, before) and isinstance(state, State)


# ---- the loader's options that feed the fast paths: 16-bit kept as stored, memory-mapped views ----

@pytest.mark.parametrize("name, kind", [("small_bf16.pth", "bfloat16"), ("small_fp16.pth", "float16")])
def test_keep_16bit_checkpoints_give_the_float32_numbers(name, kind):
    from conftest import TORCH_WRITTEN, need
    from rwkv_np.loading import load_checkpoint

    path = need(TORCH_WRITTEN / name)
    wide = load_checkpoint(path)
    kept = load_checkpoint(path, keep_16bit=True, lazy_embedding=True)
    stored = {"bfloat16": np.uint16, "float16": np.float16}[kind]
    for key, a in kept.weights.items():
        assert a.dtype == (stored if a.ndim == 2 else np.float32), key
        assert key == "emb.weight" or a.flags.c_contiguous  # the embedding is a FileRows
    m16, m32 = RWKV(kept.weights, kept.config), RWKV(wide.weights, wide.config)
    assert m16.weight_dtype == kind
    for mode in ("recurrent", "parallel"):
        a, sa = m16.forward(TOKENS % 256, mode=mode, return_all=True)
        b, sb = m32.forward(TOKENS % 256, mode=mode, return_all=True)
        np.testing.assert_array_equal(a, b)  # exact widening, same float32 arithmetic
        assert sa == sb


@pytest.mark.parametrize("keep_16bit, dtype", [(False, "float32"), (True, "bfloat16"), (True, "float16")])
def test_lazy_embedding_reads_the_same_rows_from_the_file(tmp_path, keep_16bit, dtype):
    from _writers import safetensors_bytes
    from rwkv_np.loading import FileRows, load_checkpoint

    raw = tiny_weights(n_layer=2, C=16, V=32, F=64, seed=4)
    path = tmp_path / "m.safetensors"  # the header is padded to 8 bytes: every tensor is aligned
    path.write_bytes(safetensors_bytes(raw, dtype))
    copied = load_checkpoint(path, keep_16bit=keep_16bit)
    lazy = load_checkpoint(path, keep_16bit=keep_16bit, lazy_embedding=True)
    for key, a in copied.weights.items():
        b = lazy.weights[key]
        assert isinstance(b, FileRows) == (key == "emb.weight"), key  # only the embedding stays in the file
        assert np.array_equal(a, np.asarray(b)) and a.dtype == b.dtype, key
    emb, rows = copied.weights["emb.weight"], lazy.weights["emb.weight"]
    for index in (7, -1, [31, 0, 31], np.array([], np.int64), slice(3, 9, 2)):
        np.testing.assert_array_equal(rows[index], emb[index])
    for bad in (32, -33, [0, 32]):
        with pytest.raises(IndexError, match="out of range for 32 rows"):
            rows[bad]
    tokens = [1, 2, 3, 31, 0]
    for mode in ("recurrent", "parallel"):
        x, sx = RWKV(lazy.weights).forward(tokens, mode=mode, return_all=True)
        y, sy = RWKV(copied.weights).forward(tokens, mode=mode, return_all=True)
        np.testing.assert_array_equal(x, y)
        assert sx == sy


def test_lazy_embedding_names_the_file_when_it_shrinks_under_the_model(tmp_path):
    from _writers import safetensors_bytes
    from rwkv_np import CheckpointError
    from rwkv_np.loading import load_checkpoint

    path = tmp_path / "m.safetensors"
    data = safetensors_bytes(tiny_weights(n_layer=1, C=16, V=32, F=64, seed=4), "float32")
    path.write_bytes(data)
    model = RWKV(load_checkpoint(path, lazy_embedding=True).weights)
    model.forward([31], mode="recurrent")
    path.write_bytes(data[:200])  # the same file (inode), truncated
    with pytest.raises(CheckpointError, match=r"m.safetensors: the file is shorter than when it was loaded"):
        model.forward([31], mode="recurrent")


def test_warm_up_and_releasing_the_compiler_change_no_number(weights):
    model = RWKV(weights)
    before = model.forward(TOKENS, mode="recurrent", return_all=True)[0]
    model.warm_up(release_compiler=False)
    # Linux: libllvmlite's code is mapped, so there is something to advise (elsewhere: nothing)
    released = K.release_compiler_pages()
    assert released > 0 if sys.platform.startswith("linux") else released == 0
    for mode in ("recurrent", "parallel"):  # the kernels run as before, and compile again if they must
        np.testing.assert_allclose(model.forward(TOKENS, mode=mode, return_all=True)[0], before, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(model.forward(TOKENS, mode="recurrent", return_all=True)[0], before)


@pytest.mark.parametrize("dtype, bad_bits", [("bfloat16", 0x7F80), ("bfloat16", 0xFFC1), ("float16", 0x7C00)])
def test_keep_16bit_still_refuses_non_finite_weights(tmp_path, dtype, bad_bits):
    from _writers import torch_zip_members, write_zip
    from rwkv_np import CheckpointError
    from rwkv_np.loading import load_checkpoint

    raw = tiny_weights(n_layer=1, C=8, V=16, F=32, seed=5)
    members = torch_zip_members(raw, dtype)
    index = list(raw).index("blocks.0.att.key.weight")
    name, data = members[3 + index]
    data = bytearray(data)
    data[10:12] = int(bad_bits).to_bytes(2, "little")
    members[3 + index] = (name, bytes(data))
    path = write_zip(tmp_path / "bad.pth", members)
    with pytest.raises(CheckpointError, match=r"blocks.0.att.key.weight has 1 non-finite values"):
        load_checkpoint(path, keep_16bit=True, lazy_embedding=True)


def test_prefetch_distance_changes_no_number():
    """row_dot's prefetch only asks the memory for rows early: any distance (0: none) gives the
    same float32 results bit for bit, for every kind of stored weight."""
    from rwkv_np.quantize import Int8Matrix

    rng = np.random.default_rng(4)
    W = rng.standard_normal((200, 96)).astype(np.float32)
    x = rng.standard_normal(96).astype(np.float32)
    q = Int8Matrix.quantize(W)
    for w, scales in ((W, None), (bf16_bits(W), None), (W.astype(np.float16).view(np.int16), None), (q.q, q.scales)):
        outs = []
        for ahead in (0, 1, K.PREFETCH_BYTES, 10**9):
            outs.append(np.empty(200, np.float32))
            K.matvec(w, x, outs[-1], scales, ahead)
        for out in outs[1:]:
            np.testing.assert_array_equal(out, outs[0])


def test_choose_prefetch_keeps_the_faster_and_changes_no_number(weights, monkeypatch):
    model = RWKV(weights)
    before = model.forward(TOKENS, mode="recurrent", return_all=True)[0]
    assert model.prefetch_bytes == K.PREFETCH_BYTES  # until timed
    forward = model.forward
    for slow in K.PREFETCH_CHOICES:
        def timed(*args, slow=slow, **kw):  # one choice made 5 ms slower per token than the other
            if model.prefetch_bytes == slow:
                time.sleep(0.005)
            return forward(*args, **kw)
        monkeypatch.setattr(model, "forward", timed)
        medians = model.choose_prefetch(seconds=0.01)
        assert set(medians) == set(K.PREFETCH_CHOICES)
        assert medians[slow] > max(t for c, t in medians.items() if c != slow) + 0.004
        assert model.prefetch_bytes != slow
        monkeypatch.setattr(model, "forward", forward)
        np.testing.assert_array_equal(model.forward(TOKENS, mode="recurrent", return_all=True)[0], before)
    for bad in (-1, 1.5, True, "6144"):
        with pytest.raises(ArgumentError, match="prefetch_bytes: expected a whole number of bytes >= 0"):
            model.prefetch_bytes = bad
    with pytest.raises(ArgumentError, match="choices: expected at least one prefetch distance"):
        model.choose_prefetch(choices=[])
    with pytest.raises(ArgumentError, match="choices: expected a whole number of bytes >= 0, got -6144"):
        model.choose_prefetch(choices=[0, -6144])
    untimed = RWKV(weights)
    untimed.warm_up(release_compiler=False, choose_prefetch=False)
    assert untimed.prefetch_bytes == K.PREFETCH_BYTES


def test_recurrent_rows_in_chunks_with_a_partial_last_chunk():
    """recurrent_tokens hands out the rows of its C x C products in chunks of K.CHUNK: with C = 2.5
    chunks (the last one half full), every channel's eqs. 11-18 still run, against the reference."""
    C = 5 * K.CHUNK // 2
    raw = tiny_weights(n_layer=2, C=C, V=50, F=2 * C, seed=7)
    model = RWKV(expected_model_weights(raw))
    start = model.init_state()
    ref_logits, ref_state = reference.forward(model.params, TOKENS[:20] % 50, start.data)
    logits, state = model.forward(TOKENS[:20] % 50, start, mode="recurrent", return_all=True)
    # ATOL as above: dot products of at most 2C = 320 terms (typically sqrt(320) eps = 2e-6 relative),
    # O(1) logits; a channel skipped or run twice moves them by far more
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=ATOL)
    np.testing.assert_allclose(state.data, ref_state, rtol=1e-5, atol=ATOL)
