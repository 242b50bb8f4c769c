"""RWKV-4's engine (rwkv_np/rwkv4/engine.py and kernels.py, what `model.forward` runs) computes what
rwkv_np/rwkv4/reference.py computes, and meets the references nobody here wrote: rwkv.cpp's expected
logits for its tiny trained model and independent float64 evaluations of checkpoints PyTorch wrote.
At every position, in both forms, with the weights widened or kept as stored (16-bit), the embedding
in memory or left in the file, on every fixture and on random weights.
The model class's own behaviour (arguments, chunks, states, warm-up) is tests/test_model.py."""

import numpy as np
import pytest

import rwkv_np
from rwkv_np import RWKV, CheckpointError, State
from rwkv_np.formats.base import FileRows
from rwkv_np.loading import load_checkpoint
from rwkv_np.rwkv4 import kernels as K
from rwkv_np.rwkv4 import reference

from helpers import (PROMPT, RWKV_CPP, SMALL_ATOL, TORCH_WRITTEN, bf16_bits, bf16_round, expected_model_weights,
                     expected_rwkv_cpp, need, safetensors_bytes, step_by_step, tiny_weights)

MODES = ["parallel", "recurrent"]
SENTENCE = np.frombuffer(b'"in the beginning was the word, and the word was with God.', np.uint8).astype(np.int64)

FIXTURES = {  # file -> the tokens it is checked on
    "rwkv_cpp/tiny-rwkv-4v0-660K-FP32.bin": "sentence",
    "rwkv_cpp/tiny-rwkv-4v0-660K-FP16.bin": "sentence",
    "torch_written/small_fp32.pth": "small",
    "torch_written/small_bf16.pth": "small",
    "torch_written/small_fp16.pth": "small",
    "torch_written/small_hf_safetensors": "small",
    "torch_written/small_hf_bin": "small",
    "torch_written/stress_fp32.pth": "stress",
}
# Two float32 evaluations of the same function, each within 1e-5 of the float64 logits on these
# models (helpers.SMALL_ATOL explains that bound), differ by at most 2e-5; observed 2.9e-6. The
# stress model (keys near +-100, 300 tokens) is held to its own float64 limit, 1.5e-3; observed 2.3e-4
# in the parallel form, whose eq. 14 state stays float64 within a call while the reference's is float32.
ATOL = {"sentence": 2e-5, "small": 2e-5, "stress": 1.5e-3}


def tokens_for(kind):
    if kind == "sentence":
        return SENTENCE
    name = "stress_expected.npz" if kind == "stress" else "small_expected.npz"
    return np.load(need(TORCH_WRITTEN / name))["tokens"]


def assert_state_close(got, want, atol):
    """x_prev rows are LayerNorm outputs (~1), pp an exponent; bb a sum of weights <= 1 each, and aa
    those weights times values, so its error scales with bb."""
    for row in (reference.ATT_X, reference.FFN_X):
        np.testing.assert_allclose(got[:, row], want[:, row], rtol=0, atol=atol)
    np.testing.assert_allclose(got[:, reference.PP], want[:, reference.PP], rtol=1e-5, atol=atol)
    np.testing.assert_allclose(got[:, reference.BB], want[:, reference.BB], rtol=atol, atol=atol)
    scale = np.abs(want[:, reference.BB]).max()
    np.testing.assert_allclose(got[:, reference.AA], want[:, reference.AA], rtol=0, atol=atol * max(scale, 1))


# ---- the engine against the reference, on every fixture ---------------------------------------------

@pytest.fixture(scope="module", params=sorted(FIXTURES))
def case(request):
    path = need(RWKV_CPP.parent / request.param)
    kind = FIXTURES[request.param]
    tokens = tokens_for(kind)
    params = rwkv_np.load_model(path).params
    return path, kind, tokens, reference.forward(params, tokens), step_by_step(reference, params, tokens)


@pytest.mark.parametrize("keep_16bit", [False, True], ids=["widened", "as-stored"])
def test_engine_equals_reference_at_every_position(case, keep_16bit):
    path, kind, tokens, (ref_logits, ref_state), (step_logits, step_state) = case
    model = rwkv_np.load_model(path, keep_16bit=keep_16bit, lazy_embedding=keep_16bit)
    parallel, s_par = model.forward(tokens, mode="parallel", return_all=True)
    recurrent, s_rec = model.forward(tokens, mode="recurrent", return_all=True)
    assert parallel.shape == ref_logits.shape == (len(tokens), model.config.vocab_size)
    np.testing.assert_allclose(parallel, ref_logits, rtol=0, atol=ATOL[kind])
    np.testing.assert_allclose(recurrent, step_logits, rtol=0, atol=ATOL[kind])
    assert_state_close(s_par.data, ref_state, ATOL[kind])
    assert_state_close(s_rec.data, step_state, ATOL[kind])


def test_reference_forms_agree_with_each_other(case):
    _, kind, _, (ref_logits, ref_state), (step_logits, step_state) = case
    # the same functions, with T tokens or with 1: the products' sums are blocked differently
    np.testing.assert_allclose(step_logits, ref_logits, rtol=0, atol=ATOL[kind])
    assert_state_close(step_state, ref_state, ATOL[kind])


def test_engine_params_are_the_reference_params():
    model = rwkv_np.load_model(need(TORCH_WRITTEN / "small_bf16.pth"), keep_16bit=True)
    p = model.params["blocks"][1]
    assert p["att"]["key"].dtype == np.float32 and p["att"]["key"].shape == (48, 48)
    assert p["ffn"]["key"].shape == (192, 48) and set(p["ln1"]) == {"weight", "bias"}  # no eps in the params
    assert set(p["att"]) == {"time_mix_k", "time_mix_v", "time_mix_r", "time_decay", "time_first",
                             "key", "value", "receptance", "output"}
    # the epsilon goes to the reference as an argument, and it is the config's
    assert model.reference is reference and model.reference_options() == {"eps": model.config.layer_norm_eps}


# ---- against rwkv.cpp and float64 logits nobody here computed ----------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_rwkv_cpp_fp32_reproduces_expected_logits(mode):
    model = rwkv_np.load_model(need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP32.bin"))
    logits, _ = model.forward(PROMPT, mode=mode)
    expected = expected_rwkv_cpp()
    assert logits.shape == (256,) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() < 1e-4
    # rwkv.cpp's own acceptance criterion on this file
    assert abs(float((logits - expected).sum())) <= 0.00105


@pytest.mark.parametrize("mode", MODES)
def test_rwkv_cpp_fp16_within_rwkv_cpps_tolerance(mode):
    model = rwkv_np.load_model(need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP16.bin"))
    logits, _ = model.forward(PROMPT, mode=mode)
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
def test_state_after_sequence_matches_float64(mode, small_model, small_expected):
    _, state = small_model.forward(small_expected["tokens"], mode=mode)
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


# ---- random weights: every kind of stored matrix ------------------------------------------------------

@pytest.fixture(scope="module")
def weights():
    raw = tiny_weights(n_layer=3, C=64, V=100, F=256, seed=1)
    return {k: (bf16_round(v) if v.ndim == 2 else v) for k, v in expected_model_weights(raw).items()}


TOKENS = np.random.default_rng(3).integers(0, 100, 60)
# float32 evaluations of one function by two routes (C = 64, F = 256, 3 blocks): dot products of
# at most 256 terms round at 256 eps = 3e-5 worst case relative to sum|w x|, typically sqrt(256)
# eps = 2e-6; logits here are O(1). 2e-5 is within the worst case and far below the 1e-2 that a
# wrong formula gives.
RANDOM_ATOL = 2e-5


@pytest.mark.parametrize("mode", MODES)
def test_fast_paths_agree_with_the_reference(weights, mode):
    model = RWKV(weights)
    start = model.init_state()
    ref_logits, ref_state = reference.forward(model.params, TOKENS, start.data)
    logits, state = model.forward(TOKENS, start, mode=mode, return_all=True)
    assert logits.dtype == np.float32 and logits.shape == (60, 100)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=RANDOM_ATOL)
    # aa, bb grow to sums of up to 60 terms of size e^(k - pp) <= 1, times |v| for aa
    np.testing.assert_allclose(state.data, ref_state, rtol=1e-5, atol=RANDOM_ATOL)


def test_recurrent_one_call_equals_token_by_token(weights):
    model = RWKV(weights)
    every, s_all = model.forward(TOKENS, mode="recurrent", return_all=True)
    state = None
    for t, tok in enumerate(TOKENS):
        logits, state = model.forward([tok], state, mode="recurrent")
        np.testing.assert_array_equal(logits, every[t])
    assert state == s_all


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
@pytest.mark.parametrize("mode", MODES)
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


def test_recurrent_rows_in_chunks_with_a_partial_last_chunk():
    """recurrent_tokens hands out the rows of its C x C products in chunks of K.CHUNK: with C = 2.5
    chunks (the last one half full), every channel's eqs. 11-18 still run, against the reference."""
    C = 5 * K.CHUNK // 2
    raw = tiny_weights(n_layer=2, C=C, V=50, F=2 * C, seed=7)
    model = RWKV(expected_model_weights(raw))
    start = model.init_state()
    ref_logits, ref_state = reference.forward(model.params, TOKENS[:20] % 50, start.data)
    logits, state = model.forward(TOKENS[:20] % 50, start, mode="recurrent", return_all=True)
    # RANDOM_ATOL as above: dot products of at most 2C = 320 terms (typically sqrt(320) eps = 2e-6
    # relative), O(1) logits; a channel skipped or run twice moves them by far more
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=RANDOM_ATOL)
    np.testing.assert_allclose(state.data, ref_state, rtol=1e-5, atol=RANDOM_ATOL)


# ---- what the loader's options hand the engine: 16-bit kept as stored, the embedding left in the file ----

@pytest.mark.parametrize("name, kind", [("small_bf16.pth", "bfloat16"), ("small_fp16.pth", "float16")])
def test_keep_16bit_checkpoints_give_the_float32_numbers(name, kind):
    path = need(TORCH_WRITTEN / name)
    wide = load_checkpoint(path)
    kept = load_checkpoint(path, keep_16bit=True, lazy_embedding=True)
    stored = {"bfloat16": np.uint16, "float16": np.float16}[kind]
    for key, a in kept.weights.items():
        assert a.dtype == (stored if a.ndim == 2 else np.float32), key
        assert key == "emb.weight" or a.flags.c_contiguous  # the embedding is a FileRows
    m16, m32 = RWKV(kept.weights, kept.config), RWKV(wide.weights, wide.config)
    assert m16.weight_dtype == kind
    for mode in MODES:
        a, sa = m16.forward(TOKENS % 256, mode=mode, return_all=True)
        b, sb = m32.forward(TOKENS % 256, mode=mode, return_all=True)
        np.testing.assert_array_equal(a, b)  # exact widening, same float32 arithmetic
        assert sa == sb


@pytest.mark.parametrize("keep_16bit, dtype", [(False, "float32"), (True, "bfloat16"), (True, "float16")])
def test_lazy_embedding_reads_the_same_rows_from_the_file(tmp_path, keep_16bit, dtype):
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
    for mode in MODES:
        x, sx = RWKV(lazy.weights).forward(tokens, mode=mode, return_all=True)
        y, sy = RWKV(copied.weights).forward(tokens, mode=mode, return_all=True)
        np.testing.assert_array_equal(x, y)
        assert sx == sy


def test_lazy_embedding_names_the_file_when_it_shrinks_under_the_model(tmp_path):
    path = tmp_path / "m.safetensors"
    data = safetensors_bytes(tiny_weights(n_layer=1, C=16, V=32, F=64, seed=4), "float32")
    path.write_bytes(data)
    model = RWKV(load_checkpoint(path, lazy_embedding=True).weights)
    model.forward([31], mode="recurrent")
    path.write_bytes(data[:200])  # the same file (inode), truncated
    with pytest.raises(CheckpointError, match=r"m.safetensors: the file is shorter than when it was loaded"):
        model.forward([31], mode="recurrent")


def test_forward_leaves_the_given_state_alone(weights):
    model = RWKV(weights)
    _, state = model.forward(TOKENS[:5])
    before = state.data.copy()
    for mode in ("recurrent", "parallel"):
        model.forward(TOKENS[5:9], state, mode=mode)
    assert np.array_equal(state.data, before) and isinstance(state, State)
