"""The model against references nobody here wrote: rwkv.cpp's expected logits for its tiny trained
model, and independent float64 evaluations of checkpoints that PyTorch itself wrote."""

import numpy as np
import pytest

import rwkv_np
from rwkv_np import ArgumentError, State

from conftest import RWKV_CPP, TORCH_WRITTEN, need

MODES = ["parallel", "recurrent"]

# Float32 arithmetic on the small model (C = 48, FFN 192, two blocks): every dot product rounds at
# unit roundoff u = 6e-8 over at most 192 terms, through 2 x 5 matrix products, LayerNorms and the
# WKV average. The worst-case bound gamma_n = n u = 1.1e-5 relative to the logits' scale (~1);
# typical errors grow like sqrt(n) u. Observed: 2.7e-6 (ours), 3.2e-6 (transformers in float32).
# 1e-5 sits at the worst-case bound: a wrong formula moves logits by 1e-2 or more.
SMALL_ATOL = 1e-5

# The three byte tokens of '"in', fed one at a time by rwkv.cpp's own test.
RWKV_CPP_TOKENS = [34, 105, 110]


def expected_rwkv_cpp() -> np.ndarray:
    return np.fromfile(need(RWKV_CPP / "expected-logits-4v0-660K.bin"), dtype="<f4")


@pytest.fixture(scope="module")
def small_expected():
    return np.load(need(TORCH_WRITTEN / "small_expected.npz"))


@pytest.mark.parametrize("mode", MODES)
def test_rwkv_cpp_fp32_reproduces_expected_logits(mode):
    model = rwkv_np.load_model(need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP32.bin"))
    logits, _ = model.forward(RWKV_CPP_TOKENS, mode=mode)
    expected = expected_rwkv_cpp()
    assert logits.shape == (256,) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() < 1e-4
    # rwkv.cpp's own acceptance criterion on this file
    assert abs(float((logits - expected).sum())) <= 0.00105


@pytest.mark.parametrize("mode", MODES)
def test_rwkv_cpp_fp16_within_rwkv_cpps_tolerance(mode):
    model = rwkv_np.load_model(need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP16.bin"))
    logits, _ = model.forward(RWKV_CPP_TOKENS, mode=mode)
    expected = expected_rwkv_cpp()
    # the expected logits are the FP32 model's: the FP16 file differs by the rounding of its
    # weights (relative 2^-11), which rwkv.cpp's test allows as a summed difference of 0.0143
    assert abs(float((logits - expected).sum())) <= 0.0143
    assert np.abs(logits - expected).max() < 0.05


FP32_FILES = ["small_fp32.pth", "small_hf_safetensors", "small_hf_bin"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FP32_FILES)
def test_float32_checkpoints_match_float64_logits_everywhere(name, mode, small_expected):
    model = rwkv_np.load_model(need(TORCH_WRITTEN / name))
    logits, _ = model.forward(small_expected["tokens"], mode=mode, return_all=True)
    assert logits.shape == (48, 256) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, small_expected["logits_ref64"], rtol=0, atol=SMALL_ATOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16bit_checkpoints_match_their_float64_logits(dtype, mode):
    expected = np.load(need(TORCH_WRITTEN / f"small_{dtype}_expected.npz"))
    model = rwkv_np.load_model(need(TORCH_WRITTEN / f"small_{dtype}.pth"))
    logits, _ = model.forward(expected["tokens"], mode=mode, return_all=True)
    # bf16 and fp16 values are exact in float32, so what remains is float32 arithmetic: SMALL_ATOL
    np.testing.assert_allclose(logits, expected["logits_ref64_upcast"], rtol=0, atol=SMALL_ATOL)


@pytest.mark.parametrize("mode", MODES)
def test_state_after_sequence_matches_float64(mode, small_expected):
    model = rwkv_np.load_model(need(TORCH_WRITTEN / "small_fp32.pth"))
    _, state = model.forward(small_expected["tokens"], mode=mode)
    ref = small_expected["state_ref64"]
    got = state.data.astype(np.float64)
    # x_prev rows are LayerNorm outputs of size ~1: float32 arithmetic as for the logits
    np.testing.assert_allclose(got[:, [0, 4]], ref[:, [0, 4]], rtol=0, atol=SMALL_ATOL)
    # pp is a maximum of k's (size ~10): relative float32 error of the key projection
    np.testing.assert_allclose(got[:, 3], ref[:, 3], rtol=1e-5, atol=SMALL_ATOL)
    # bb is a positive sum: relative error; aa is a signed sum that can cancel, so its error
    # scales with bb times the values' size (|v| < 10 here)
    np.testing.assert_allclose(got[:, 2], ref[:, 2], rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], ref[:, 1], rtol=0, atol=1e-5 * 10 * np.abs(ref[:, 2]).max())


@pytest.mark.parametrize("mode", MODES)
def test_stress_model_stays_finite_and_close(mode):
    expected = np.load(need(TORCH_WRITTEN / "stress_expected.npz"))
    model = rwkv_np.load_model(need(TORCH_WRITTEN / "stress_fp32.pth"))
    logits, state = model.forward(expected["tokens"], mode=mode, return_all=True)
    assert np.isfinite(logits).all() and np.isfinite(state.data).all()
    # keys near +-100: float32 rounding of k (100 * 6e-8) becomes a relative error of the WKV
    # weights e^k, amplified through 300 steps; the fixture's README bounds a stable float32
    # evaluation at 1.5e-3
    assert np.abs(logits - expected["logits_ref64"]).max() < 1.5e-3


@pytest.fixture(scope="module")
def small_model():
    return rwkv_np.load_model(need(TORCH_WRITTEN / "small_fp32.pth"))


def test_parallel_equals_recurrent_equals_uneven_chunks(small_model, small_expected):
    tokens = small_expected["tokens"]
    par, s_par = small_model.forward(tokens, mode="parallel", return_all=True)
    rec, s_rec = small_model.forward(tokens, mode="recurrent", return_all=True)
    chunks, state = [], None
    for a, b in [(0, 1), (1, 6), (6, 7), (7, 30), (30, 48)]:
        out, state = small_model.forward(tokens[a:b], state, mode="parallel", return_all=True)
        chunks.append(out)
    chunked = np.concatenate(chunks)
    # three evaluations in float32 of the same function: each within float32 rounding of the
    # exact answer, so within twice SMALL_ATOL of each other
    np.testing.assert_allclose(rec, par, rtol=0, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(chunked, par, rtol=0, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(state.data, s_par.data, rtol=1e-5, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(s_rec.data, s_par.data, rtol=1e-5, atol=2 * SMALL_ATOL)


def test_internal_chunking_of_long_inputs_gives_the_same_numbers(small_model, small_expected):
    tokens = small_expected["tokens"]
    whole, _ = small_model.forward(tokens, return_all=True)
    small_model.chunk_size = 5  # instance attribute: the class default is untouched
    try:
        chunked, _ = small_model.forward(tokens, return_all=True)
        last, _ = small_model.forward(tokens)
    finally:
        del small_model.chunk_size
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(last, chunked[-1], rtol=0, atol=2 * SMALL_ATOL)


def test_last_logits_equal_last_row_of_all(small_model, small_expected):
    tokens = small_expected["tokens"]
    for mode in MODES:
        last, s1 = small_model.forward(tokens, mode=mode)
        every, s2 = small_model.forward(tokens, mode=mode, return_all=True)
        np.testing.assert_allclose(last, every[-1], rtol=0, atol=2 * SMALL_ATOL)
        assert s1 == s2


def test_forward_does_not_mutate_the_given_state(small_model):
    _, state = small_model.forward([1, 2, 3])
    before = state.data.copy()
    small_model.forward([4, 5], state, mode="parallel")
    small_model.forward([4, 5], state, mode="recurrent")
    assert np.array_equal(state.data, before)
    assert not state.data.flags.writeable


def test_saved_and_reloaded_state_continues_identically(small_model, tmp_path):
    _, state = small_model.forward([10, 20, 30, 40])
    state.save(tmp_path / "s.npz")
    reloaded = State.load(tmp_path / "s.npz")
    assert reloaded == state
    for mode in MODES:
        a, sa = small_model.forward([50, 60], state, mode=mode, return_all=True)
        b, sb = small_model.forward([50, 60], reloaded, mode=mode, return_all=True)
        assert np.array_equal(a, b) and sa == sb


def test_forward_accepts_lists_tuples_and_arrays(small_model):
    a, _ = small_model.forward([72, 105])
    b, _ = small_model.forward((72, 105))
    c, _ = small_model.forward(np.array([72, 105], dtype=np.int32))
    assert np.array_equal(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize("tokens, message", [
    ([256], r"tokens: id 256 at position 0 is outside the vocabulary \[0, 256\)"),
    ([3, -1], r"tokens: id -1 at position 1 is outside the vocabulary"),
    ([], r"tokens: empty"),
    ([[1, 2]], r"tokens: expected a sequence or 1-D array of ints, got shape \(1, 2\)"),
    ([1.5], r"tokens: expected integer token ids"),
    (["a"], r"tokens: expected integer token ids"),
])
def test_bad_tokens_are_refused_by_name(small_model, tokens, message):
    with pytest.raises(ArgumentError, match=message):
        small_model.forward(tokens)


def test_bad_mode_and_state_are_refused_by_name(small_model):
    with pytest.raises(ArgumentError, match=r"mode: expected 'parallel' or 'recurrent', got 'rnn'"):
        small_model.forward([1], mode="rnn")
    with pytest.raises(ArgumentError, match=r"state: expected an rwkv_np.State or None, got ndarray"):
        small_model.forward([1], np.zeros((2, 5, 48)))
    other = State.initial(3, 48)
    with pytest.raises(ArgumentError, match=r"state: shape \(3, 5, 48\) does not fit this model, expected \(2, 5, 48\)"):
        small_model.forward([1], other)
