"""Loading every supported checkpoint format, and every way loading can refuse a file."""

import json
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _writers import (bf16_round, expected_model_weights, p_state_dict, p_tensor, rwkv_cpp_bytes,  # noqa: E402
                      safetensors_bytes, tiny_weights, to_hf_names, torch_zip_members, write_torch_zip,
                      write_zip)

from rwkv_np.errors import CheckpointError  # noqa: E402
from rwkv_np.formats import read_torch_zip  # noqa: E402
from rwkv_np.loading import load_checkpoint  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TORCH = SHARED / "fixtures" / "torch_written"
CPP = SHARED / "fixtures" / "rwkv_cpp"


def fixture(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference fixture missing: {path}")
    return path


def raw_pth(path: Path) -> dict[str, np.ndarray]:
    """The raw (on-disk names and values) tensors of a .pth, through the reader alone."""
    return {k: t.read() for k, t in read_torch_zip(path.read_bytes()).items()}


SMALL = (2, 48, 256, 192)
TINY = (4, 128, 256, 256)  # rwkv.cpp's tiny-rwkv: FFN is 2 * n_embd (661,504 parameters in the file)


@pytest.mark.parametrize("name, fmt, dtype, sizes", [
    ("torch_written/small_fp32.pth", "pth", "float32", SMALL),
    ("torch_written/small_bf16.pth", "pth", "bfloat16", SMALL),
    ("torch_written/small_fp16.pth", "pth", "float16", SMALL),
    ("torch_written/small_hf_safetensors", "hf-safetensors", "float32", SMALL),
    ("torch_written/small_hf_bin", "hf-bin", "float32", SMALL),
    ("torch_written/stress_fp32.pth", "pth", "float32", SMALL),
    ("rwkv_cpp/tiny-rwkv-4v0-660K-FP32.bin", "rwkv.cpp", "float32", TINY),
    ("rwkv_cpp/tiny-rwkv-4v0-660K-FP16.bin", "rwkv.cpp", "float16", TINY),
])
def test_fixture_loads(name, fmt, dtype, sizes):
    ck = load_checkpoint(fixture(SHARED / "fixtures" / name))
    c = ck.config
    assert (c.n_layer, c.n_embd, c.vocab_size, c.ffn_dim) == sizes
    assert (ck.format, ck.source_dtype, c.layer_norm_eps) == (fmt, dtype, 1e-5)
    assert len(ck.weights) == 6 + 18 * c.n_layer  # emb, ln0 x2, ln_out x2, head + 18 per block
    for k, v in ck.weights.items():
        assert v.dtype == np.float32 and v.flags.c_contiguous, k
    assert ck.weights["blocks.0.att.time_mix_k"].shape == (c.n_embd,)
    # one decay convention inside the library, whatever the file stores: time_decay = ln w
    assert "blocks.0.att.decay" not in ck.weights and np.isfinite(ck.weights["blocks.0.att.time_decay"]).all()


def test_pth_and_hugging_face_formats_are_bit_identical():
    ref = load_checkpoint(fixture(TORCH / "small_fp32.pth")).weights
    for other in ("small_hf_safetensors", "small_hf_bin"):
        w = load_checkpoint(fixture(TORCH / other)).weights
        assert w.keys() == ref.keys()
        for k in ref:
            assert np.array_equal(w[k], ref[k]), (other, k)


def test_time_decay_is_kept_as_stored():
    raw = raw_pth(fixture(TORCH / "small_fp32.pth"))
    w = load_checkpoint(TORCH / "small_fp32.pth").weights
    for i in range(2):
        assert np.array_equal(w[f"blocks.{i}.att.time_decay"], raw[f"blocks.{i}.att.time_decay"].reshape(-1))
        assert np.array_equal(w[f"blocks.{i}.att.time_first"], raw[f"blocks.{i}.att.time_first"])


@pytest.mark.parametrize("name, rounding", [
    ("small_bf16.pth", bf16_round),  # torch rounds to nearest even on the top 16 bits
    ("small_fp16.pth", lambda x: x.astype(np.float16).astype(np.float32)),
])
def test_16_bit_pth_equals_fp32_rounded(name, rounding):
    raw32 = raw_pth(fixture(TORCH / "small_fp32.pth"))
    raw16 = raw_pth(fixture(TORCH / name))
    for k in raw32:
        assert np.array_equal(raw16[k], rounding(raw32[k])), k
    w = load_checkpoint(TORCH / name).weights
    assert np.array_equal(w["blocks.1.att.time_decay"], rounding(raw32["blocks.1.att.time_decay"]).reshape(-1))
    assert np.array_equal(w["head.weight"], rounding(raw32["head.weight"]))


def test_rwkv_cpp_decay_is_log_of_minus_stored_and_fp16_matches_fp32():
    from rwkv_np.formats import read_rwkv_cpp
    path = fixture(CPP / "tiny-rwkv-4v0-660K-FP32.bin")
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
    w16 = load_checkpoint(fixture(CPP / "tiny-rwkv-4v0-660K-FP16.bin")).weights
    for k, v in w32.items():  # rwkv.cpp's converter keeps 1-D tensors in float32
        expected = v if v.ndim == 1 else v.astype(np.float16).astype(np.float32)
        assert np.array_equal(w16[k], expected), k


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_blinkdl_safetensors_from_the_safetensors_library(tmp_path, dtype):
    from safetensors.numpy import save_file
    raw = tiny_weights(n_layer=2)
    raw["blocks.1.att.time_mix_k"] = raw["blocks.1.att.time_mix_k"].reshape(-1)  # our trainer saves (C,)
    save_file({k: v.astype(dtype) for k, v in raw.items()}, tmp_path / "m.safetensors")
    ck = load_checkpoint(tmp_path / "m.safetensors")
    assert (ck.format, ck.source_dtype) == ("safetensors", dtype)
    expected = expected_model_weights({k: v.astype(dtype).astype(np.float32) for k, v in raw.items()})
    assert ck.weights.keys() == expected.keys()
    for k in expected:
        assert np.array_equal(ck.weights[k], expected[k]), k


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_hf_named_safetensors_file_and_pth_in_every_dtype(tmp_path, dtype):
    raw = tiny_weights()
    rounded = {k: bf16_round(v) if dtype == "bfloat16" else v.astype(dtype).astype(np.float32)
               for k, v in raw.items()}
    expected = expected_model_weights(rounded)
    (tmp_path / "hf.safetensors").write_bytes(safetensors_bytes(to_hf_names(raw), dtype))
    for path in (tmp_path / "hf.safetensors", write_torch_zip(tmp_path / "m.pth", raw, dtype)):
        ck = load_checkpoint(path)
        assert ck.source_dtype == dtype and ck.config.n_embd == 8
        for k in expected:
            assert np.array_equal(ck.weights[k], expected[k]), (path, k)


def test_non_contiguous_strides_are_honoured(tmp_path):
    raw = tiny_weights()
    head = raw["head.weight"]  # (16, 8) saved as the transpose view of a (8, 16) storage
    entries = [(k, p_tensor(str(i), v.size, v.shape)) for i, (k, v) in enumerate(raw.items())]
    i_head = list(raw).index("head.weight")
    entries[i_head] = ("head.weight", p_tensor(str(i_head), head.size, head.shape, stride=(1, 16)))
    members = torch_zip_members(raw, pickle_bytes=p_state_dict(entries))
    members = [(n, np.ascontiguousarray(head.T).tobytes() if n == f"archive/data/{i_head}" else d)
               for n, d in members]
    ck = load_checkpoint(write_zip(tmp_path / "t.pth", members))
    assert np.array_equal(ck.weights["head.weight"], head) and ck.weights["head.weight"].flags.c_contiguous


def test_sharded_hf_folder_and_tokenizer_found(tmp_path):
    hf = to_hf_names(tiny_weights())
    names = list(hf)
    (tmp_path / "a.safetensors").write_bytes(safetensors_bytes({k: hf[k] for k in names[:10]}))
    (tmp_path / "b.safetensors").write_bytes(safetensors_bytes({k: hf[k] for k in names[10:]}))
    index = {"weight_map": {k: "a.safetensors" if i < 10 else "b.safetensors" for i, k in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv", "hidden_size": 8,
                                                      "num_hidden_layers": 1, "layer_norm_epsilon": 1e-6}))
    (tmp_path / "tokenizer.json").write_text("{}")
    ck = load_checkpoint(tmp_path)
    assert ck.format == "hf-safetensors" and ck.config.layer_norm_eps == 1e-6
    assert ck.tokenizer_path == tmp_path / "tokenizer.json"


def test_tokenizer_beside_a_pth(tmp_path):
    write_torch_zip(tmp_path / "m.pth", tiny_weights())
    shutil.copy(fixture(SHARED / "fixtures" / "tokenizer" / "20B_tokenizer.json"), tmp_path)
    assert load_checkpoint(tmp_path / "m.pth").tokenizer_path == tmp_path / "20B_tokenizer.json"


# ---- every error path names the file and the problem ------------------------------------------------

def check_error(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "internal error" not in str(info.value)
    return str(info.value)


def test_missing_path(tmp_path):
    msg = check_error(tmp_path / "nope.pth", "no such file or folder")
    assert "supported formats" in msg


def test_empty_file(tmp_path):
    (tmp_path / "e.pth").write_bytes(b"")
    check_error(tmp_path / "e.pth", "the file is empty; supported formats")


def test_text_file_and_json_file(tmp_path):
    (tmp_path / "model.pth").write_text("hello, I am not a model\n")
    check_error(tmp_path / "model.pth", r"not a recognised checkpoint \(starts with b'hello, I'\); supported")
    (tmp_path / "c.json").write_text('{"a": 1}')
    check_error(tmp_path / "c.json", "not a recognised checkpoint")


def test_folder_without_config(tmp_path):
    check_error(tmp_path, "Hugging Face model folder with config.json, but there is none; supported formats")


def test_folder_with_config_but_no_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "rwkv"}')
    check_error(tmp_path, "neither model.safetensors nor pytorch_model.bin")


@pytest.mark.parametrize("model_type, match", [("rwkv5", "'rwkv5': a Hugging Face conversion of a later RWKV"), ("llama", "model_type 'llama' is not")])
def test_folder_of_another_model(tmp_path, model_type, match):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    check_error(tmp_path, match)


def test_config_json_disagrees_with_weights(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(to_hf_names(tiny_weights())))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv", "hidden_size": 16}))
    check_error(tmp_path, "config.json says hidden_size=16 but the weights have n_embd=8")


def test_broken_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: cannot read as JSON"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("cut", [10, 1000, -100])
def test_truncated_pth(tmp_path, cut):
    data = fixture(TORCH / "small_fp32.pth").read_bytes()
    (tmp_path / "t.pth").write_bytes(data[:cut])
    check_error(tmp_path / "t.pth", "not a readable zip archive")


def test_truncated_safetensors_and_rwkv_cpp(tmp_path):
    data = safetensors_bytes(tiny_weights())
    (tmp_path / "t.safetensors").write_bytes(data[:-4])
    check_error(tmp_path / "t.safetensors", r"data_offsets \[\d+, \d+\] do not lie within")
    (tmp_path / "h.safetensors").write_bytes(data[:40])
    check_error(tmp_path / "h.safetensors", "safetensors header claims")
    data = rwkv_cpp_bytes(tiny_weights())
    (tmp_path / "t.bin").write_bytes(data[:-4])
    check_error(tmp_path / "t.bin", r"tensor 'head.weight' of shape \(16, 8\) needs 512 bytes but only 508 remain")


def test_legacy_torch_format(tmp_path):
    (tmp_path / "old.pth").write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
    check_error(tmp_path / "old.pth", r"legacy \(pre-1.6, non-zip\) torch.save format, which is not supported")


@pytest.mark.parametrize("data_type, name", [(2, "Q4_0"), (3, "Q4_1"), (7, "Q5_0"), (8, "Q5_1"), (9, "Q8_0")])
def test_quantized_rwkv_cpp_version_100(tmp_path, data_type, name):
    # quantized files are read from version 101 on (tests/test_quantize.py); version 100's blocks
    # had ggml's older layout
    data = bytearray(rwkv_cpp_bytes(tiny_weights()))
    data[20:24] = struct.pack("<i", data_type)
    (tmp_path / "q.bin").write_bytes(bytes(data))
    check_error(tmp_path / "q.bin", rf"data type {data_type} \({name}\) in a file of version 100, whose quantized "
                                    "blocks use ggml's layout from before May 2023")


def test_rwkv_cpp_header_disagrees(tmp_path):
    (tmp_path / "h.bin").write_bytes(rwkv_cpp_bytes(tiny_weights(), header=(0x67676D66, 100, 16, 8, 3, 0)))
    check_error(tmp_path / "h.bin", "the rwkv.cpp header says n_layer=3 but the weights have n_layer=1")


def write_pth(tmp_path, raw, name="m.pth"):
    return write_torch_zip(tmp_path / name, raw)


def test_missing_tensor(tmp_path):
    raw = tiny_weights()
    del raw["blocks.0.att.time_first"]
    check_error(write_pth(tmp_path, raw), r"missing tensor blocks.0.att.time_first \(expected shape \(8,\)\)")


def test_misshaped_tensor(tmp_path):
    raw = tiny_weights()
    raw["blocks.0.ffn.value.weight"] = raw["blocks.0.ffn.value.weight"].T.copy()
    check_error(write_pth(tmp_path, raw),
                r"tensor blocks.0.ffn.value.weight has shape \(32, 8\), expected \(8, 32\)")


def test_misshaped_hf_tensor_is_named_by_its_hf_name(tmp_path):
    hf = to_hf_names(tiny_weights())
    hf["rwkv.blocks.0.attention.time_first"] = np.zeros(9, np.float32)
    (tmp_path / "hf.safetensors").write_bytes(safetensors_bytes(hf))
    check_error(tmp_path / "hf.safetensors",
                r"tensor rwkv.blocks.0.attention.time_first has shape \(9,\), expected \(8,\)")


def test_unknown_extra_tensor(tmp_path):
    raw = tiny_weights()
    raw["blocks.0.att.bonus"] = np.zeros(8, np.float32)
    check_error(write_pth(tmp_path, raw), r"unexpected tensor blocks.0.att.bonus of shape \(8,\)")


def test_block_indices_with_gap(tmp_path):
    raw = {k.replace("blocks.1.", "blocks.2."): v for k, v in tiny_weights(n_layer=2).items()}
    check_error(write_pth(tmp_path, raw), r"block indices must run 0..2 without gaps; blocks \[1\] are missing")


def test_not_rwkv_at_all(tmp_path):
    check_error(write_pth(tmp_path, {"fc.weight": np.zeros((2, 2), np.float32)}),
                r"no emb.weight .* tensor, so not an RWKV-4 checkpoint \(found: fc.weight\)")


@pytest.mark.parametrize("key, match", [
    # a marker of a later version: read as that version, whose other tensors are then missing
    ("blocks.0.att.ln_x.weight", r"not an RWKV-5\.1 checkpoint: missing tensors \['blocks.0.att.ln_x.bias'"),
    ("blocks.0.att.gate.weight", r"missing tensor blocks.0.att.time_faaaa \(RWKV-5\.2\)"),
    ("blocks.0.att.time_maa_x", r"missing tensor blocks.0.att.time_faaaa \(RWKV-6\)"),
    # a later version's tensor without the marker of any version rwkv_np runs
    ("blocks.0.att.time_faaaa", "has tensors like 'blocks.0.att.time_faaaa', which RWKV-4 does not have"),
    ("blocks.0.att.w0", "an unknown or newer RWKV that rwkv_np cannot run")])
def test_newer_rwkv_versions(tmp_path, key, match):
    raw = tiny_weights()
    raw[key] = np.zeros(8, np.float32)
    check_error(write_pth(tmp_path, raw), match)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weight(tmp_path, bad):
    raw = tiny_weights()
    raw["blocks.0.ffn.key.weight"][3, 4] = bad
    check_error(write_pth(tmp_path, raw), "tensor blocks.0.ffn.key.weight has 1 non-finite values")


@pytest.mark.parametrize("dtype, keep_16bit, lazy", [("float32", False, False), ("float32", False, True),
                                                     ("bfloat16", True, False), ("bfloat16", True, True),
                                                     ("bfloat16", False, False)])
def test_non_finite_count_is_exact_across_blocks(tmp_path, dtype, keep_16bit, lazy):
    # the check walks each tensor in blocks of 65,536 elements: put values on both sides of the
    # block borders and in the last, partial block of a (600, 256) embedding
    raw = tiny_weights(C=256, V=600, F=64)
    flat = raw["emb.weight"].reshape(-1)
    flat[[0, 65535, 65536, 131072, flat.size - 1]] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    path = write_torch_zip(tmp_path / "m.pth", raw, dtype)
    with pytest.raises(CheckpointError, match=r"m.pth: tensor emb.weight has 5 non-finite values"):
        load_checkpoint(path, keep_16bit=keep_16bit, lazy_embedding=lazy)


def test_decay_overflow(tmp_path):
    raw = tiny_weights()
    raw["blocks.0.att.time_decay"][0] = 100.0  # exp(100) > float32 max 3.4e38
    check_error(write_pth(tmp_path, raw), r"blocks.0.att.time_decay gives a decay rate w = exp\(time_decay\) "
                                          "that overflows float32")


def test_big_endian_and_compressed_archives(tmp_path):
    members = torch_zip_members(tiny_weights())
    big = [(n, b"big" if n.endswith("byteorder") else d) for n, d in members]
    check_error(write_zip(tmp_path / "b.pth", big), "only little-endian checkpoints are supported")
    check_error(write_zip(tmp_path / "c.pth", members, zipfile.ZIP_DEFLATED),
                r"archive/byteorder is compressed \(method 8\)")


def test_deflated_data_pkl_is_read(tmp_path):
    # hand-made archives may deflate the small pickle; it is decompressed with a size cap
    with zipfile.ZipFile(tmp_path / "d.pth", "w") as zf:
        for name, data in torch_zip_members(tiny_weights()):
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if name.endswith(".pkl") else zipfile.ZIP_STORED)
    assert load_checkpoint(tmp_path / "d.pth").config.ffn_dim == 32


def test_training_checkpoint_is_refused(tmp_path):
    pkl = p_state_dict([("model", b"\x7d"), ("epoch", b"K\x03")])  # {'model': {}, 'epoch': 3}
    check_error(write_zip(tmp_path / "t.pth", [("archive/data.pkl", pkl)]),
                "entry 'model' is a dict, not a tensor")


def test_unsupported_safetensors_dtype(tmp_path):
    data = safetensors_bytes({"emb.weight": np.zeros((2, 2), np.float32)})
    data = data.replace(b'"F32"', b'"I32"')
    (tmp_path / "i.safetensors").write_bytes(data)
    check_error(tmp_path / "i.safetensors", "tensor 'emb.weight' has dtype 'I32'; only F32, F16 and BF16")


def test_unexpected_reader_bug_still_names_the_file(tmp_path, monkeypatch):
    import rwkv_np.loading as loading

    def broken(buf):
        raise KeyError("oops")

    monkeypatch.setattr(loading, "read_torch_zip", broken)
    path = write_torch_zip(tmp_path / "m.pth", tiny_weights())
    with pytest.raises(CheckpointError, match=r"m.pth: internal error while reading \(KeyError: 'oops'\)"):
        load_checkpoint(path)
