"""rwkv.cpp's files (rwkv_np/formats/rwkv_cpp.py): what its converter did to each version's tensors is
undone on loading (`convert`), checked on its own files and on files written here the way the converter
writes them; the epsilon of ln_x is rwkv.cpp's own; its header is checked against the weights; and the
files it cannot have written are refused by name. Its quantized formats are tests/test_quantize.py."""

import struct

import numpy as np
import pytest

import rwkv_np
from rwkv_np import registry
from rwkv_np.errors import CheckpointError
from rwkv_np.formats import rwkv_cpp
from rwkv_np.formats.base import FileRows
from rwkv_np.formats.rwkv_cpp import read_rwkv_cpp
from rwkv_np.loading import load_checkpoint, load_reference
from rwkv_np.rwkv4 import reference as reference_v4
from rwkv_np.rwkv5 import reference as reference_v5

from helpers import (DIMS, GGML_TYPE_IDS, PROMPT, RWKV_CPP, as_pth_vectors, assert_close_in_float32,
                     expected_model_weights, expected_rwkv_cpp, ggml_quantize, need, random_flat, rwkv_cpp_bytes,
                     rwkv_cpp_converted_bytes, tiny_rwkv_cpp, tiny_weights, to_rwkv_cpp, write_torch_zip)


def check_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "internal error" not in str(info.value)
    return str(info.value)


# ---- the converter undone ----------------------------------------------------------------------------

def test_rwkv4_decay_is_log_of_minus_stored_and_fp16_matches_fp32():
    path = need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP32.bin")
    stored, header = read_rwkv_cpp(path.read_bytes())
    assert header == {"n_vocab": 256, "n_embd": 128, "n_layer": 4, "data_type": 0}
    w32 = load_checkpoint(path).weights
    for i in range(4):
        s = stored[f"blocks.{i}.att.time_decay"].read()
        # the file holds -w; the library keeps ln w, taken in float64 and rounded once
        assert (s < 0).all()
        assert np.array_equal(w32[f"blocks.{i}.att.time_decay"], np.log(-s.astype(np.float64)).astype(np.float32))
        # and w = e^(ln w) returns the stored w to within the rounding of ln w (|ln w| < 16 here)
        np.testing.assert_allclose(np.exp(w32[f"blocks.{i}.att.time_decay"].astype(np.float64)), -s,
                                   rtol=16 * np.finfo(np.float32).eps)
    w16 = load_checkpoint(need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP16.bin")).weights
    for k, v in w32.items():  # rwkv.cpp's converter keeps 1-D tensors in float32
        expected = v if v.ndim == 1 else v.astype(np.float16).astype(np.float32)
        assert np.array_equal(w16[k], expected), k


def test_rwkv4_written_as_the_converter_writes_it_loads_as_the_pth(tmp_path):
    raw = tiny_weights(n_layer=2, seed=3)
    (tmp_path / "m.bin").write_bytes(rwkv_cpp_bytes(raw, version=101))
    cpp = load_checkpoint(tmp_path / "m.bin")
    pth = load_checkpoint(write_torch_zip(tmp_path / "m.pth", raw))
    assert cpp.config == pth.config and cpp.format == "rwkv.cpp"
    for name, a in pth.weights.items():
        # ln w -> -w in float32 -> ln w again: within the rounding of -w (relative 2^-24 of w, so
        # absolute 2^-24 in ln w) and of the log
        atol = 2 * np.finfo(np.float32).eps if name.endswith("time_decay") else 0
        np.testing.assert_allclose(cpp.weights[name], a, rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize("version", ["5.1", "5.2", "6", "7"])
def test_convert_undoes_each_transform_of_the_converter(tmp_path, version):
    """A file written as rwkv.cpp's converter writes a later version (transposed LoRAs, squeezed and
    reshaped vectors, exp(-exp(decay)), exp(bonus), RWKV-7's six token-shift vectors concatenated) is
    read back as the BlinkDL parameters it was made from."""
    flat = random_flat(version, seed=2)
    converted = to_rwkv_cpp(flat, version)
    transformed = {n for n in flat if n.rsplit(".", 1)[-1] in rwkv_cpp.CONVERTED[version]
                   or version == "7" and ".att.x_" in n}
    assert transformed and all(n not in converted or converted[n].shape != flat[n].shape
                               or not np.array_equal(converted[n], flat[n]) for n in transformed)
    (tmp_path / "m.bin").write_bytes(rwkv_cpp_converted_bytes(converted))
    ck = load_checkpoint(tmp_path / "m.bin")
    assert ck.config.version == version and ck.format == "rwkv.cpp"
    assert (ck.config.n_head, ck.config.head_size, ck.config.n_layer) == (DIMS["H"], DIMS["N"], DIMS["L"])
    assert sorted(ck.weights) == sorted(flat)
    for name, a in flat.items():
        b = np.asarray(ck.weights[name]).reshape(a.shape)
        # exp(-exp(d)) stored in float32 keeps 1 - w only to ~6e-8, so d comes back to ~1e-4 at worst
        assert np.allclose(b, a, rtol=1e-6, atol=2e-4 if name.endswith("time_decay") else 1e-7), name
    # and the reference runs on it as on the BlinkDL file, with rwkv.cpp's ln_x epsilon
    ref, params, options = load_reference(tmp_path / "m.bin")
    assert options["ln_x_eps"] == rwkv_cpp.LN_X_EPS[version]
    pth = load_reference(write_torch_zip(tmp_path / "m.pth", as_pth_vectors(flat)))
    got, _ = ref.forward(params, [1, 2, 3], **options)
    want, _ = pth[0].forward(pth[1], [1, 2, 3], **options)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)  # the decays differ by up to 2e-4 (above)


def test_values_the_converter_cannot_write_are_refused(tmp_path):
    cpp = to_rwkv_cpp(random_flat("5.2"), "5.2")
    cpp["blocks.1.att.time_decay"][0, 0, 0] = 1.5  # exp(-exp(d)) is never above 1
    (tmp_path / "x.bin").write_bytes(rwkv_cpp_converted_bytes(cpp))
    check_error(tmp_path / "x.bin", r"x.bin: tensor blocks.1.att.time_decay holds values outside \[0.0, 1.0\] "
                                    r"\(min .*, max 1.5\), which rwkv.cpp's converter cannot have written")
    cpp = to_rwkv_cpp(random_flat("5.1"), "5.1")
    cpp["blocks.2.att.time_first"][1] = -0.5  # exp(u) is never negative
    (tmp_path / "u.bin").write_bytes(rwkv_cpp_converted_bytes(cpp))
    check_error(tmp_path / "u.bin", r"u.bin: tensor blocks.2.att.time_first holds values outside \[0.0, inf\]")
    raw = tiny_weights()
    data = bytearray(rwkv_cpp_bytes(raw))
    at = data.index(b"blocks.0.att.time_decay") + len(b"blocks.0.att.time_decay")
    data[at:at + 4] = struct.pack("<f", 0.25)  # -exp(ln w) is never positive
    (tmp_path / "d.bin").write_bytes(bytes(data))
    check_error(tmp_path / "d.bin", r"d.bin: tensor blocks.0.att.time_decay holds a decay -w that is not negative")


def test_rwkv7_token_shift_vectors_must_be_six(tmp_path):
    cpp = to_rwkv_cpp(random_flat("7"), "7")
    cpp["blocks.0.att.x_rwkvag"] = cpp["blocks.0.att.x_rwkvag"][:5].copy()
    (tmp_path / "x.bin").write_bytes(rwkv_cpp_converted_bytes(cpp))
    check_error(tmp_path / "x.bin", r"x.bin: tensor blocks.0.att.x_rwkvag has shape \(5, 1, 16\), expected \(6, 1, C\)")


# ---- the epsilon of ln_x is rwkv.cpp's ----------------------------------------------------------------

def test_ln_x_epsilon_follows_the_source(tmp_path):
    """BlinkDL's 64e-5 by default; rwkv.cpp's 1e-5 for its RWKV-5 files, which its logits need."""
    pth = write_torch_zip(tmp_path / "m.pth", as_pth_vectors(random_flat("5.2")))
    assert load_checkpoint(pth).config.ln_x_eps == 64e-5 == load_reference(pth)[2]["ln_x_eps"]
    ref, params, options = load_reference(tiny_rwkv_cpp("5.2"))
    assert ref is reference_v5 and options == {"eps": 1e-5, "ln_x_eps": 1e-5}
    expected = expected_rwkv_cpp("5v2-730K")
    logits, _ = ref.forward(params, PROMPT, **options)
    assert abs((logits[-1] - expected).sum()) <= 0.00105
    logits, _ = ref.forward(params, PROMPT, **dict(options, ln_x_eps=64e-5))
    assert np.abs(logits[-1] - expected).max() > 0.1  # measured: 1.09
    assert load_reference(tiny_rwkv_cpp("7"))[2]["ln_x_eps"] == 64e-5
    assert rwkv_cpp.LN_X_EPS == {"5.1": 1e-5, "5.2": 1e-5, "6": 64e-5, "7": 64e-5}


def test_rwkv4_files_through_the_same_path():
    # RWKV-4 through the same loader: the raw ln w back from rwkv.cpp's -exp(time_decay)
    ref, params, options = load_reference(need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP32.bin"))
    assert ref is reference_v4 and options == {"eps": 1e-5}
    assert params["blocks"][0]["att"]["time_decay"].shape == (128,)
    logits, _ = ref.forward(params, PROMPT, **options)
    assert abs((logits[-1] - expected_rwkv_cpp()).sum()) <= 0.00105
    assert registry.get("4").shapes({"V": 256, "C": 128, "L": 4, "F": 256})["blocks.3.att.time_decay"] == (128,)


# ---- the header, and files rwkv_np does not read ------------------------------------------------------

def test_header_disagrees(tmp_path):
    (tmp_path / "h.bin").write_bytes(rwkv_cpp_bytes(tiny_weights(), header=(0x67676D66, 100, 16, 8, 3, 0)))
    check_error(tmp_path / "h.bin", "the rwkv.cpp header says n_layer=3 but the weights have n_layer=1")


def test_missing_file_is_named(tmp_path):
    check_error(tmp_path / "nope.bin", "nope.bin: no such file or folder")


def test_truncated_and_retired_files_are_named(tmp_path):
    data = tiny_rwkv_cpp("7").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:len(data) // 2])
    check_error(cut, "cut.bin: .*truncated")
    retired = tmp_path / "q4_2.bin"  # a quantized format rwkv.cpp itself dropped
    retired.write_bytes(data[:20] + struct.pack("<i", 5) + data[24:])
    check_error(retired, r"q4_2.bin: .*\(Q4_2\), a quantized format that rwkv.cpp itself retired")


@pytest.mark.parametrize("data_type, name", [(2, "Q4_0"), (3, "Q4_1"), (7, "Q5_0"), (8, "Q5_1"), (9, "Q8_0")])
def test_quantized_files_of_version_100_are_refused(tmp_path, data_type, name):
    # quantized files are read from version 101 on (tests/test_quantize.py); version 100's blocks
    # had ggml's older layout
    data = bytearray(rwkv_cpp_bytes(tiny_weights()))
    data[20:24] = struct.pack("<i", data_type)
    (tmp_path / "q.bin").write_bytes(bytes(data))
    check_error(tmp_path / "q.bin", rf"data type {data_type} \({name}\) in a file of version 100, whose quantized "
                                    "blocks use ggml's layout from before May 2023")


def test_model_ready_weights_of_a_written_file(tmp_path):
    raw = tiny_weights(n_layer=1, seed=5)
    (tmp_path / "m.bin").write_bytes(rwkv_cpp_bytes(raw, data_type=1, version=101))
    ck = load_checkpoint(tmp_path / "m.bin")
    assert (ck.format, ck.source_dtype) == ("rwkv.cpp", "float16")
    want = expected_model_weights(raw)
    for name, a in ck.weights.items():
        if a.ndim == 2:  # the matrices stored as FP16, the vectors float32
            np.testing.assert_array_equal(a, want[name].astype(np.float16).astype(np.float32))


# ---- a quantized embedding is never left in the file ---------------------------------------------------

# sizes whose rows are whole blocks of 32 weights, so that every matrix can be quantized
BLOCK_DIMS = dict(C=32, A=32, N=16, H=2, F=64, V=64)


def _quantized_file(path, version: str, fmt: str, emb: str):
    """An rwkv.cpp file of version 101 (what rwkv.cpp's quantizer writes) of a random model of
    `version`: the projections in fmt, the embedding stored as `emb` ("Q8_0", "Q4_1", "FP16", ...),
    the head float32 and the rest as the converter writes them."""
    def store(name, x):
        kind = emb if name == "emb.weight" else fmt if x.ndim == 2 and name.endswith(".weight") \
            and name != "head.weight" else None
        if kind == "FP16":
            return 1, x.astype("<f2").tobytes()
        if kind is not None:
            return GGML_TYPE_IDS[kind], ggml_quantize(x, kind)
        return None if version != "4" else (0, x.astype("<f4").tobytes())

    if version == "4":
        raw = tiny_weights(n_layer=2, C=32, V=64, F=64, seed=4)
        data = rwkv_cpp_bytes(raw, GGML_TYPE_IDS[fmt], version=101, store=store)
    else:
        converted = to_rwkv_cpp(random_flat(version, seed=4, dims=BLOCK_DIMS), version)
        data = rwkv_cpp_converted_bytes(converted, data_type=GGML_TYPE_IDS[fmt], store=store)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("fmt, emb", [("Q8_0", "Q8_0"), ("Q5_1", "Q8_0"), ("Q4_1", "Q4_1"), ("Q8_0", "Q5_0")])
@pytest.mark.parametrize("version", ["4", "5.1", "5.2", "6", "7"])
def test_a_quantized_embedding_loaded_as_the_command_line_loads_it(tmp_path, version, fmt, emb):
    """The command line asks for the embedding to be left in the file (lazy_embedding); rows of ggml
    blocks are not rows of float32, so a quantized embedding is dequantized into memory, for every
    version, and the logits are those of the dequantized weights (the issue's RWKV-6 and RWKV-7
    Q8_0 files were off by about 3)."""
    path = _quantized_file(tmp_path / "q.bin", version, fmt, emb)
    options = dict(keep_16bit=True, keep_blocks=True, lazy_embedding=True)
    lazy = load_checkpoint(path, **options)
    plain = load_checkpoint(path)
    assert (lazy.config.version, lazy.source_dtype) == (version, fmt)
    e = lazy.weights["emb.weight"]
    assert type(e) is np.ndarray and e.dtype == np.float32 and e.shape == (64, 32)
    np.testing.assert_array_equal(e, plain.weights["emb.weight"])
    # what ggml's dequantization gives (a Q8_0 block: its int8 values times its fp16 scale)
    stored = read_rwkv_cpp(path.read_bytes())[0]["emb.weight"]
    np.testing.assert_array_equal(e, stored.read())
    model = rwkv_np.load_model(path, **options)
    ref, params, ref_options = load_reference(path)
    tokens = [1, 17, 63, 0, 42, 5]
    want, _ = ref.forward(params, tokens, **ref_options)
    for mode in ("parallel", "recurrent"):
        assert_close_in_float32(model.forward(tokens, mode=mode, return_all=True)[0], want)


@pytest.mark.parametrize("version", ["4", "6", "7"])
def test_a_16_bit_embedding_of_the_same_file_stays_in_it(tmp_path, version):
    """The control: an FP16 embedding beside quantized matrices is left in the file with keep_16bit
    (its rows are elements, contiguous and untransformed), and gives the same logits."""
    path = _quantized_file(tmp_path / "f16emb.bin", version, "Q8_0", "FP16")
    lazy = rwkv_np.load_model(path, keep_16bit=True, keep_blocks=True, lazy_embedding=True)
    assert isinstance(lazy.weights["emb.weight"], FileRows)
    plain = rwkv_np.load_model(path, keep_16bit=True)
    tokens = [3, 1, 4, 1, 5, 9]
    np.testing.assert_array_equal(lazy.forward(tokens, return_all=True)[0], plain.forward(tokens, return_all=True)[0])
