"""Quantized weights (rwkv_np/quantize.py): ggml's block formats (rwkv.cpp's quantized files, read
dequantized or kept in their blocks) and the int8 mode; their compiled products (rwkv_np/products.py).
What quantization costs, measured on the shipped model: tests/test_experiment_quantization.py."""

import argparse
import struct

import numpy as np
import pytest

import rwkv_np
from rwkv_np import cli, products
from rwkv_np.errors import ArgumentError, CheckpointError
from rwkv_np.quantize import BLOCK_BYTES, LAYOUT, BlockMatrix, Int8Matrix, dequantize_blocks

from helpers import (GGML_TYPE_IDS, PROMPT, RWKV_CPP, TORCH_WRITTEN, ggml_quantize, need, rwkv_cpp_bytes,
                     rwkv_cpp_quantized_bytes, tiny_weights)


# ---- ggml's block formats, on blocks built by hand ---------------------------------------------

def _block(*fields: bytes) -> np.ndarray:
    raw = b"".join(fields)
    return np.frombuffer(raw, np.uint8).reshape(1, -1)


# weights 0..15 are the low nibbles of bytes 0..15, weights 16..31 their high nibbles
NIBBLES = bytes((j % 16) | (((15 - j) % 16) << 4) for j in range(16))
LOW = [j % 16 for j in range(16)] + [(15 - j) % 16 for j in range(16)]  # the 4-bit value of weight i
QH = 0x8000_0005  # fifth bits set for weights 0, 2 and 31
HIGH = [16 if i in (0, 2, 31) else 0 for i in range(32)]
F16_HALF, F16_MINUS_3, F16_TENTH = struct.pack("<e", 0.5), struct.pack("<e", -3.0), struct.pack("<e", 0.1)
TENTH = float(np.float16(0.1))  # 0.0999755859375: the fp16 scale is widened exactly, not 0.1


@pytest.mark.parametrize("fmt, raw, expected", [
    ("Q4_0", _block(F16_HALF, NIBBLES), [0.5 * (q - 8) for q in LOW]),
    ("Q4_1", _block(F16_HALF, F16_MINUS_3, NIBBLES), [0.5 * q - 3 for q in LOW]),
    ("Q5_0", _block(F16_TENTH, struct.pack("<I", QH), NIBBLES),
     [np.float32(TENTH) * np.float32(q + h - 16) for q, h in zip(LOW, HIGH)]),
    ("Q5_1", _block(F16_HALF, F16_MINUS_3, struct.pack("<I", QH), NIBBLES), [0.5 * (q + h) - 3 for q, h in zip(LOW, HIGH)]),
    ("Q8_0", _block(F16_TENTH, bytes(range(-16 & 0xFF, 256)) + bytes(range(16))),
     [np.float32(TENTH) * np.float32(q) for q in range(-16, 16)]),
])
def test_ggml_blocks_by_hand(fmt, raw, expected):
    assert raw.shape == (1, BLOCK_BYTES[fmt])
    got = dequantize_blocks(raw, fmt)
    np.testing.assert_array_equal(got, np.array([expected], np.float32))


def test_q5_high_bits_span_the_whole_uint32():
    # all 32 fifth bits set and all nibbles 15: every weight is q = 31 (Q5_0: 31 - 16 = 15)
    raw = _block(F16_HALF, b"\xff\xff\xff\xff", b"\xff" * 16)
    np.testing.assert_array_equal(dequantize_blocks(raw, "Q5_0"), np.full((1, 32), 7.5, np.float32))


@pytest.mark.parametrize("fmt", sorted(GGML_TYPE_IDS))
def test_writer_round_trip_within_half_a_step(fmt):
    # the writer quantizes as ggml does; dequantized, every weight is within half a step of the
    # original (+ the fp16 rounding of the scale, at most 2^-11 relative, times |q| <= 31 or 127)
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    raw = np.frombuffer(ggml_quantize(x, fmt), np.uint8).reshape(-1, BLOCK_BYTES[fmt])
    y = dequantize_blocks(raw, fmt).reshape(x.shape)
    blocks = x.reshape(-1, 32)
    span = {"Q4_0": 2 * np.abs(blocks).max(1) / 16, "Q5_0": 2 * np.abs(blocks).max(1) / 32,
            "Q8_0": np.abs(blocks).max(1) / 127, "Q4_1": np.ptp(blocks, 1) / 15, "Q5_1": np.ptp(blocks, 1) / 31}[fmt]
    bound = span / 2 * 1.001 + np.abs(blocks).max(1) * 2.0 ** -10
    assert np.all(np.abs(y - x).reshape(-1, 32).max(1) <= bound)


# ---- rwkv.cpp's own quantized files -------------------------------------------------------------

@pytest.mark.parametrize("keep_blocks", [False, True])
@pytest.mark.parametrize("name, tolerance", [("Q5_0", 0.179), ("Q5_1", 0.292)])
def test_rwkv_cpp_quantized_fixture(name, tolerance, keep_blocks):
    """rwkv.cpp's test accepts sum(logits - expected) within these for its Q5_0/Q5_1 files: with
    the blocks dequantized, and kept as blocks and read by the recurrent kernel directly.
    (quantize="int8" would round them a second time, so it is not rwkv.cpp's file any more.)"""
    expected = np.fromfile(need(RWKV_CPP / "expected-logits-4v0-660K.bin"), "<f4")
    model = rwkv_np.load_model(need(RWKV_CPP / f"tiny-rwkv-4v0-660K-{name}.bin"), keep_blocks=keep_blocks)
    assert model.weight_dtype == (name if keep_blocks else "float32") and model.source_dtype == name
    for mode in ("parallel", "recurrent"):
        logits, _ = model.forward(PROMPT, mode=mode)
        assert abs(float(np.sum(logits - expected))) < tolerance, mode


def _weights_256():
    return tiny_weights(n_layer=1, C=64, V=32, F=128, seed=3)


@pytest.mark.parametrize("fmt", sorted(GGML_TYPE_IDS))
def test_quantized_file_equals_its_dequantized_weights(tmp_path, fmt):
    raw = _weights_256()
    (tmp_path / "q.bin").write_bytes(rwkv_cpp_quantized_bytes(raw, fmt))
    model = rwkv_np.load_model(tmp_path / "q.bin")
    w = raw["blocks.0.att.key.weight"]
    blocks = np.frombuffer(ggml_quantize(w, fmt), np.uint8).reshape(-1, BLOCK_BYTES[fmt])
    np.testing.assert_array_equal(model.weights["blocks.0.att.key.weight"], dequantize_blocks(blocks, fmt).reshape(w.shape))
    np.testing.assert_array_equal(model.weights["head.weight"], raw["head.weight"])  # kept float32 by rwkv.cpp


def _random_blocks(fmt, rows, cols, seed):
    """rows x cols weights in fmt's blocks as ggml writes them: (raw (rows, bytes) uint8, dequantized)."""
    w = np.random.default_rng(seed).normal(size=(rows, cols)).astype(np.float32)
    w[0, :32] += 3.0  # one block away from zero: Q4_1 / Q5_1's minimum m is then positive
    raw = np.frombuffer(ggml_quantize(w, fmt), np.uint8).reshape(rows, -1)
    return raw, dequantize_blocks(raw.reshape(-1, BLOCK_BYTES[fmt]), fmt).reshape(rows, cols)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_blocks_matvec_kernel(fmt):
    """products._dot_blocks (through row_dot) on rows of 3 blocks: the dequantized weights' dot
    product to float32 rounding. Per block it sums (q - zero) x_k and m x_k separately (each
    product one rounding, n = 96 terms in float32), scales by d and m once, and the reference's
    weights w = d (q - zero) + m are themselves rounded once: at most (n + 3) roundings of
    sum |w - m| |x| + sum |m| |x|."""
    raw, w = _random_blocks(fmt, 40, 96, seed=5)
    d_at, m_at, qh_at, qs_at, zero = LAYOUT[fmt]
    assert qh_at is None or np.any(raw.reshape(40, 3, -1)[:, :, qh_at:qh_at + 4])  # fifth bits in use
    m = np.zeros_like(w) if m_at is None else np.repeat(
        np.ascontiguousarray(raw.reshape(40, 3, -1)[:, :, m_at:m_at + 2]).view("<f2")[..., 0], 32, axis=1)
    x = np.random.default_rng(6).normal(size=96).astype(np.float32)
    out = np.empty(40, np.float32)
    products.matvec(raw, x, out)
    exact = w.astype(np.float64) @ x
    bound = (96 + 3) * 2.0 ** -24 * (np.abs(w - m) @ np.abs(x) + np.abs(m) @ np.abs(x))
    assert np.all(np.abs(out - exact) <= bound), np.max(np.abs(out - exact) / bound)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_blocks_dequantize_kernel(fmt):
    """products.dequantize_blocks_into (the parallel form's) is ggml's arithmetic, bit for bit."""
    raw, w = _random_blocks(fmt, 40, 96, seed=7)
    out = np.full((40, 96), np.nan, np.float32)
    products.dequantize_blocks_into(raw, products.block_layout(fmt), out)
    np.testing.assert_array_equal(out, w)


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_file_kept_in_blocks(tmp_path, fmt):
    """keep_blocks=True holds the matrices as the file's bytes (rwkv_np.quantize.BlockMatrix): the
    parallel form dequantizes them as a plain load does (the same logits, bit for bit); the
    recurrent form reads the blocks and gives them to float32 rounding of its sums."""
    raw = _weights_256()
    (tmp_path / "q.bin").write_bytes(rwkv_cpp_quantized_bytes(raw, fmt))
    kept = rwkv_np.load_model(tmp_path / "q.bin", keep_blocks=True)
    plain = rwkv_np.load_model(tmp_path / "q.bin")
    assert kept.weight_dtype == fmt and plain.weight_dtype == "float32"
    key = kept.weights["blocks.0.att.key.weight"]
    assert isinstance(key, BlockMatrix) and key.nbytes == 64 * 64 // 32 * BLOCK_BYTES[fmt]
    np.testing.assert_array_equal(key.raw.reshape(-1), np.frombuffer(ggml_quantize(raw["blocks.0.att.key.weight"], fmt), np.uint8))
    np.testing.assert_array_equal(np.asarray(key), plain.weights["blocks.0.att.key.weight"])
    tokens = np.arange(20) % 32
    a, sa = plain.forward(tokens, return_all=True)
    b, sb = kept.forward(tokens, return_all=True, mode="parallel")
    np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(sb.data, sa.data)
    c, sc = kept.forward(tokens, return_all=True, mode="recurrent")
    np.testing.assert_allclose(c, a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sc.data, sa.data, rtol=0, atol=1e-5)
    # the blocks were read: the dequantized weights' recurrent form groups its sums differently
    assert np.abs(c - plain.forward(tokens, return_all=True, mode="recurrent")[0]).max() > 0
    # with quantize="int8" the blocks stay and the float32 head becomes int8
    both = rwkv_np.load_model(tmp_path / "q.bin", keep_blocks=True, quantize="int8")
    assert both.weight_dtype == fmt and isinstance(both.weights["head.weight"], Int8Matrix)
    weights = dict(plain.weights, **{"head.weight": np.asarray(both.weights["head.weight"])})
    a, _ = rwkv_np.RWKV(weights).forward(tokens, return_all=True)
    for mode in ("parallel", "recurrent"):
        np.testing.assert_allclose(both.forward(tokens, return_all=True, mode=mode)[0], a, rtol=0, atol=1e-5)


def test_keep_blocks_leaves_other_files_alone(tmp_path):
    """Files without 4- or 5-bit matrices load as without the option; so does a Q8_0 file."""
    raw = _weights_256()
    (tmp_path / "f.bin").write_bytes(rwkv_cpp_bytes(raw, 1, version=101))
    assert rwkv_np.load_model(tmp_path / "f.bin", keep_blocks=True, keep_16bit=True).weight_dtype == "float16"
    (tmp_path / "q8.bin").write_bytes(rwkv_cpp_quantized_bytes(raw, "Q8_0"))
    assert rwkv_np.load_model(tmp_path / "q8.bin", keep_blocks=True).weight_dtype == "float32"


def test_block_matrix_refuses_wrong_bytes():
    assert BlockMatrix(np.zeros((4, 36), np.uint8), "Q4_0", (4, 64)).shape == (4, 64)  # 2 blocks of 18 bytes
    with pytest.raises(ArgumentError, match=r"BlockMatrix: \(4, 35\) bytes are not Q4_0 blocks of a \(4, 64\) matrix"):
        BlockMatrix(np.zeros((4, 35), np.uint8), "Q4_0", (4, 64))
    with pytest.raises(ArgumentError, match=r"not Q4_0 blocks of a \(4, 40\) matrix"):  # rows of whole blocks only
        BlockMatrix(np.zeros((4, 18), np.uint8), "Q4_0", (4, 40))
    with pytest.raises(ArgumentError, match=r"not Q8_0 blocks"):
        BlockMatrix(np.zeros((4, 68), np.uint8), "Q8_0", (4, 64))


def test_q8_0_file_kept_in_blocks_is_exact(tmp_path):
    """quantize="int8" takes a Q8_0 file's blocks as they are: the same logits as its dequantized
    weights, to float32 rounding (the sums are grouped per block instead of per weight). The
    head, float32 in rwkv.cpp's files, is quantized like any float32 matrix."""
    (tmp_path / "q8.bin").write_bytes(rwkv_cpp_quantized_bytes(_weights_256(), "Q8_0"))
    blocks = rwkv_np.load_model(tmp_path / "q8.bin", quantize="int8")
    weights = dict(rwkv_np.load_model(tmp_path / "q8.bin").weights)
    for name, w in weights.items():
        if name.startswith("blocks.") and w.ndim == 2:
            np.testing.assert_array_equal(np.asarray(blocks.weights[name]), w)
            assert isinstance(blocks.weights[name], Int8Matrix)
    np.testing.assert_array_equal(blocks.weights["head.weight"].q, Int8Matrix.quantize(weights["head.weight"]).q)
    weights["head.weight"] = np.asarray(blocks.weights["head.weight"])
    wide = rwkv_np.RWKV(weights)
    tokens = np.arange(20) % 32
    a, _ = wide.forward(tokens, return_all=True)
    for mode in ("parallel", "recurrent"):
        b, _ = blocks.forward(tokens, return_all=True, mode=mode)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("data_type, version, message", [
    (5, 101, r"data type 5 \(Q4_2\), a quantized format that rwkv.cpp itself retired"),
    (4, 101, r"data type 4 \(Q4_1_O\)"),
    (8, 100, r"data type 8 \(Q5_1\) in a file of version 100"),
    (11, 101, r"unknown data type 11"),
])
def test_unreadable_types_are_refused_by_name(tmp_path, data_type, version, message):
    data = bytearray(rwkv_cpp_bytes(tiny_weights()))
    data[4:8], data[20:24] = struct.pack("<i", version), struct.pack("<i", data_type)
    (tmp_path / "q.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"q.bin: the file header has " + message):
        rwkv_np.load_model(tmp_path / "q.bin")


def test_quantized_rows_must_be_whole_blocks(tmp_path):
    raw = tiny_weights(C=8)  # rows of 8 weights
    data = bytearray(rwkv_cpp_bytes(raw))
    data[20:24] = struct.pack("<i", 9)
    data[4:8] = struct.pack("<i", 101)
    at = data.index(b"emb.weight") - 20  # the record: n_dims, key length, type, 2 dims
    data[at + 8:at + 12] = struct.pack("<i", 9)
    (tmp_path / "q.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"q.bin: tensor 'emb.weight' of shape \(16, 8\) is stored as Q8_0, "
                                              r"but its rows of 8 weights are not whole blocks of 32"):
        rwkv_np.load_model(tmp_path / "q.bin")


def test_truncated_quantized_tensor(tmp_path):
    data = rwkv_cpp_quantized_bytes(_weights_256(), "Q5_1")
    key = b"blocks.0.ffn.value.weight"
    (tmp_path / "q.bin").write_bytes(data[:data.index(key) + len(key) + 100])  # 100 bytes of its blocks
    with pytest.raises(CheckpointError, match=r"q.bin: tensor 'blocks.0.ffn.value.weight' of shape \(64, 128\) "
                                              r"needs 6144 bytes but only 100 remain"):
        rwkv_np.load_model(tmp_path / "q.bin")


@pytest.mark.parametrize("fmt, options, count", [
    ("Q8_0", {}, 32), ("Q8_0", {"quantize": "int8"}, 1),  # dequantized: 32 NaN weights; as int8: 1 NaN scale
    ("Q5_1", {}, 32), ("Q5_1", {"keep_blocks": True}, 1)])
def test_nan_scale_is_named(tmp_path, fmt, options, count):
    raw = _weights_256()
    data = bytearray(rwkv_cpp_quantized_bytes(raw, fmt))
    at = data.index(b"blocks.0.att.key.weight") + len(b"blocks.0.att.key.weight")
    data[at:at + 2] = struct.pack("<e", np.nan)  # the first block's scale
    (tmp_path / "q.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"q.bin: tensor blocks.0.att.key.weight has {count} non-finite"):
        rwkv_np.load_model(tmp_path / "q.bin", **options)


# ---- the int8 mode -------------------------------------------------------------------------------

def test_int8_scheme_by_hand():
    # one row of 40 weights: a full block whose largest magnitude is 2.54, then a block of 8
    row = np.zeros((1, 40), np.float32)
    row[0, :4] = [2.54, -1.27, 0.01, 0.0101]
    row[0, 32:] = np.arange(8) - 4.0  # largest magnitude 4: step 4/127
    m = Int8Matrix.quantize(row)
    assert m.q.shape == (1, 40) and m.scales.shape == (1, 2)
    np.testing.assert_array_equal(m.scales, [[np.float32(2.54) / np.float32(127), np.float32(4.0) / 127]])
    assert m.q[0, :4].tolist() == [127, -64, 0, 1]  # -1.27 / 0.02 = -63.5 -> -64 (half to even); 0.505 -> 1
    assert m.q[0, 32:].tolist() == [-127, -95, -64, -32, 0, 32, 64, 95]
    assert Int8Matrix.quantize(np.zeros((2, 3))).q.tolist() == [[0, 0, 0]] * 2  # zero scale, no NaN


def test_int8_error_is_at_most_half_a_step():
    w = np.random.default_rng(1).standard_t(3, size=(64, 200)).astype(np.float32)  # heavy tails
    m = Int8Matrix.quantize(w)
    step = np.repeat(m.scales, 32, axis=1)[:, :200]
    assert np.all(np.abs(np.asarray(m) - w) <= step / 2 * (1 + 1e-6))


def test_bad_quantize_values_name_the_argument(tmp_path):
    path = need(TORCH_WRITTEN / "small_fp32.pth")
    for bad in ("int4", "INT8", 8, True):
        with pytest.raises(ArgumentError, match=r"^quantize: expected None or 'int8', got "):
            rwkv_np.load_model(path, quantize=bad)


def _quantization_error(m32, m8) -> tuple[float, int]:
    """(rms weight error / rms weight over the quantized matrices, how many there are)."""
    names = [n for n, v in m8.weights.items() if isinstance(v, Int8Matrix)]
    num = sum(float(((np.asarray(m8.weights[n]) - m32.weights[n]) ** 2).sum()) for n in names)
    den = sum(float((m32.weights[n].astype(np.float64) ** 2).sum()) for n in names)
    return (num / den) ** 0.5, len(names)


@pytest.mark.parametrize("name, expected", [("small_fp32.pth", "small_expected.npz"),
                                            ("stress_fp32.pth", "stress_expected.npz")])
def test_int8_logits_against_float32(name, expected):
    """int8 vs float32 logits of the torch-written models, both forms.

    Tolerance from the quantization step: rounding to a step s leaves an error uniform in
    +-s/2, i.e. a relative rms error eps of the weights (measured here, ~0.005). Each of the n
    products on the way to a logit (7 per layer + the head) adds an independent relative error
    eps, so the logits' rms error is about eps * sqrt(n) * rms(logits): we require that, and a
    largest error below 8 times it (the stress model's keys of +-100 turn a relative error into
    an absolute one in eq. 14's exponents, which makes its tail heavier). Then the int8 model
    equals its own dequantized weights run in float32, to float32 rounding."""
    ex = np.load(need(TORCH_WRITTEN / expected))
    tokens = ex["tokens"]
    m32 = rwkv_np.load_model(need(TORCH_WRITTEN / name))
    m8 = rwkv_np.load_model(TORCH_WRITTEN / name, quantize="int8")
    assert m8.weight_dtype == "int8" and isinstance(m8.weights["head.weight"], Int8Matrix)
    assert m8.weights["emb.weight"].dtype == np.float32  # the embedding is not quantized
    ref, _ = m32.forward(tokens, return_all=True)
    eps, n = _quantization_error(m32, m8)
    assert 0.003 < eps < 0.007 and n == 15
    predicted = eps * n ** 0.5 * float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
    dequantized = rwkv_np.RWKV({k: np.asarray(v) for k, v in m8.weights.items()})
    got = {}
    for mode in ("parallel", "recurrent"):
        got[mode], state = m8.forward(tokens, return_all=True, mode=mode)
        err = got[mode] - ref
        assert float(np.sqrt(np.mean(err.astype(np.float64) ** 2))) < predicted, mode
        assert np.abs(err).max() < 8 * predicted, mode
        # reading the int8 blocks = computing with the dequantized float32 matrices
        wide, _ = dequantized.forward(tokens, return_all=True, mode=mode)
        np.testing.assert_allclose(got[mode], wide, rtol=0, atol=2e-5)
    # the two forms agree as closely as the float32 forms do (test_engine's bounds)
    np.testing.assert_allclose(got["parallel"], got["recurrent"], rtol=0, atol=2e-3 if "stress" in name else 2e-5)


def test_int8_state_and_api():
    path = need(TORCH_WRITTEN / "small_fp32.pth")
    m8 = rwkv_np.load_model(path, quantize="int8", lazy_embedding=True, keep_16bit=True)
    tokens = np.load(TORCH_WRITTEN / "small_expected.npz")["tokens"]
    whole, s_whole = m8.forward(tokens)
    first, s = m8.forward(tokens[:30], mode="parallel")
    last, s = m8.forward(tokens[30:], s, mode="recurrent")
    np.testing.assert_allclose(last, whole, rtol=0, atol=2e-5)
    np.testing.assert_allclose(s.data, s_whole.data, rtol=0, atol=2e-5)
    assert s.data.shape == (2, 5, 48) and s.data.dtype == np.float32


def test_int8_is_refused_for_later_versions():
    path = need(RWKV_CPP / "tiny-rwkv-5v2-730K-FP32.bin")
    with pytest.raises(CheckpointError, match=r"5v2-730K-FP32.bin: an RWKV-5.2 checkpoint; quantize='int8' is "
                                              r"implemented for RWKV-4 only"):
        rwkv_np.load_model(path, quantize="int8")


def test_command_line_keeps_blocks():
    """`generate` and `perplexity` load rwkv.cpp's 4- and 5-bit files with their blocks kept, as
    they keep 16-bit weights 16-bit; --quantize int8 then quantizes the rest (the head)."""
    path = str(need(RWKV_CPP / "tiny-rwkv-4v0-660K-Q5_1.bin"))
    model, _ = cli._load(argparse.Namespace(model=path, tokenizer=None, quantize=None))
    assert model.weight_dtype == "Q5_1"
    model, _ = cli._load(argparse.Namespace(model=path, tokenizer=None, quantize="int8"))
    assert model.weight_dtype == "Q5_1" and isinstance(model.weights["head.weight"], Int8Matrix)
