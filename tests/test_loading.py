"""Loading every supported checkpoint format (rwkv_np/loading.py and the readers of rwkv_np/formats),
and every way loading can refuse a file: each error names the file and the problem. rwkv.cpp's own
files are tests/test_format_rwkv_cpp.py; files crafted to attack the loader, test_hostile_checkpoints.py."""

import json
import shutil
import zipfile

import numpy as np
import pytest

from rwkv_np import registry
from rwkv_np.errors import CheckpointError
from rwkv_np.formats import torch_zip
from rwkv_np.formats.torch_zip import read_torch_zip
from rwkv_np.loading import load_checkpoint, load_reference

from helpers import (FIXTURES, TOKENIZER_JSON, TORCH_WRITTEN, as_pth_vectors, bf16_round, expected_model_weights,
                     need, p_state_dict, p_tensor, random_flat, rwkv_cpp_bytes, rwkv_cpp_converted_bytes,
                     safetensors_bytes, tiny_weights, to_hf_names, to_rwkv_cpp, torch_zip_members, write_torch_zip,
                     write_zip)


def raw_pth(path):
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
    ck = load_checkpoint(need(FIXTURES / name))
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
    ref = load_checkpoint(need(TORCH_WRITTEN / "small_fp32.pth")).weights
    for other in ("small_hf_safetensors", "small_hf_bin"):
        w = load_checkpoint(need(TORCH_WRITTEN / other)).weights
        assert w.keys() == ref.keys()
        for k in ref:
            assert np.array_equal(w[k], ref[k]), (other, k)


def test_time_decay_is_kept_as_stored():
    raw = raw_pth(need(TORCH_WRITTEN / "small_fp32.pth"))
    w = load_checkpoint(TORCH_WRITTEN / "small_fp32.pth").weights
    for i in range(2):
        assert np.array_equal(w[f"blocks.{i}.att.time_decay"], raw[f"blocks.{i}.att.time_decay"].reshape(-1))
        assert np.array_equal(w[f"blocks.{i}.att.time_first"], raw[f"blocks.{i}.att.time_first"])


@pytest.mark.parametrize("name, rounding", [
    ("small_bf16.pth", bf16_round),  # torch rounds to nearest even on the top 16 bits
    ("small_fp16.pth", lambda x: x.astype(np.float16).astype(np.float32)),
])
def test_16_bit_pth_equals_fp32_rounded(name, rounding):
    raw32 = raw_pth(need(TORCH_WRITTEN / "small_fp32.pth"))
    raw16 = raw_pth(need(TORCH_WRITTEN / name))
    for k in raw32:
        assert np.array_equal(raw16[k], rounding(raw32[k])), k
    w = load_checkpoint(TORCH_WRITTEN / name).weights
    assert np.array_equal(w["blocks.1.att.time_decay"], rounding(raw32["blocks.1.att.time_decay"]).reshape(-1))
    assert np.array_equal(w["head.weight"], rounding(raw32["head.weight"]))


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
    shutil.copy(need(TOKENIZER_JSON), tmp_path)
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
    data = need(TORCH_WRITTEN / "small_fp32.pth").read_bytes()
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
                r"m.pth: no emb.weight tensor, so not an RWKV-4 checkpoint \(found: fc.weight\)$")


NEWER = r" \(tensors of a newer architecture than rwkv_np runs, such as RWKV-8\?\)$"
SIZES_4 = "n_layer=1, n_embd=8, vocab_size=16, ffn_dim=32"


@pytest.mark.parametrize("key, match", [
    # a marker of a later version: read as that version, whose other tensors are then missing
    ("blocks.0.att.ln_x.weight", rf"m.pth: not a valid RWKV-5\.1 checkpoint for {SIZES_4}, n_head=8, head_size=1: "
                                 r"missing tensor blocks.0.att.ln_x.bias \(expected shape \(8,\)\)$"),
    ("blocks.0.att.gate.weight", r"m.pth: missing tensor blocks.0.att.time_faaaa \(RWKV-5\.2\)$"),
    ("blocks.0.att.time_maa_x", r"m.pth: missing tensor blocks.0.att.time_faaaa \(RWKV-6\)$"),
    # a later version's tensor without the marker of any version rwkv_np runs: one message for all
    ("blocks.0.att.time_faaaa", rf"m.pth: not a valid RWKV-4 checkpoint for {SIZES_4}: unexpected tensor "
                                r"blocks.0.att.time_faaaa of shape \(8,\)" + NEWER),
    ("blocks.0.att.w0", rf"m.pth: not a valid RWKV-4 checkpoint for {SIZES_4}: unexpected tensor blocks.0.att.w0 "
                        r"of shape \(8,\)" + NEWER)])
def test_newer_rwkv_versions(tmp_path, key, match):
    raw = tiny_weights()
    raw[key] = np.zeros(8, np.float32)
    check_error(write_pth(tmp_path, raw), match)


def test_the_newer_hint_only_when_every_problem_is_an_unexpected_tensor(tmp_path):
    raw = tiny_weights()
    raw["blocks.0.att.time_faaaa"] = np.zeros(8, np.float32)
    raw["blocks.0.att.w0"] = np.zeros(8, np.float32)
    check_error(write_pth(tmp_path, raw), rf"m.pth: not a valid RWKV-4 checkpoint for {SIZES_4}: unexpected tensor "
                                          r"blocks.0.att.time_faaaa of shape \(8,\); unexpected tensor "
                                          r"blocks.0.att.w0 of shape \(8,\)" + NEWER)
    del raw["blocks.0.ln2.bias"]
    msg = check_error(write_pth(tmp_path, raw), r"m.pth: not a valid RWKV-4 checkpoint for .*: missing tensor "
                                                r"blocks.0.ln2.bias \(expected shape \(8,\)\); unexpected tensor")
    assert "RWKV-8" not in msg


def test_more_than_five_problems_are_counted(tmp_path):
    raw = tiny_weights()
    for name in ("att.time_first", "att.time_decay", "ln1.bias", "ln2.bias", "att.key.weight", "att.value.weight",
                 "ffn.time_mix_k"):
        del raw["blocks.0." + name]
    msg = check_error(write_pth(tmp_path, raw), r"\(and 2 more problems\)$")
    assert msg.count("missing tensor") == 5


# ---- the later versions' tables: the same one check, one message ------------------------------------

SIZES_52 = "n_layer=3, n_embd=16, vocab_size=40, ffn_dim=24, n_head=2, head_size=8"
SIZES_7 = SIZES_52 + ", Dw=4, Da=3, Dv=2, Dg=5"


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("blocks.1.att.time_decay"),
     rf"not a valid RWKV-5.2 checkpoint for {SIZES_52}: missing tensor blocks.1.att.time_decay "
     r"\(expected shape \(2, 8\)\)$"),
    (lambda f: f.update({"blocks.0.att.bogus": np.zeros(3, np.float32)}),
     rf"not a valid RWKV-5.2 checkpoint for {SIZES_52}: unexpected tensor blocks.0.att.bogus of shape \(3,\)" + NEWER),
    (lambda f: f.update({"blocks.2.ffn.key.weight": np.zeros((24, 17), np.float32)}),
     rf"not a valid RWKV-5.2 checkpoint for {SIZES_52}: tensor blocks.2.ffn.key.weight has shape \(24, 17\), "
     r"expected \(24, 16\)$"),
    (lambda f: f.update({"blocks.0.att.time_faaaa": np.zeros((3, 8), np.float32)}),
     r"cannot split the attention width 16 into heads \(head count 3 read from blocks.0.att.time_faaaa of "
     r"shape \(3, 8\)\)$"),
    (lambda f: f.update({"blocks.7.ln1.weight": np.ones(16, np.float32)}),
     r"block indices must run 0..7 without gaps; blocks \[3, 4, 5, 6\] are missing$"),
])
def test_malformed_weights_of_a_later_version_are_named(tmp_path, change, message):
    flat = random_flat("5.2")
    change(flat)
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(flat))
    check_error(tmp_path / "model.safetensors", "model.safetensors: " + message)


def test_a_weight_that_is_not_a_float_is_named(tmp_path):
    data = safetensors_bytes(random_flat("5.2")).replace(
        b'"blocks.0.att.gate.weight":{"dtype":"F32"', b'"blocks.0.att.gate.weight":{"dtype":"I32"')
    (tmp_path / "model.safetensors").write_bytes(data)
    check_error(tmp_path / "model.safetensors", r"model.safetensors: tensor 'blocks.0.att.gate.weight' has dtype "
                                                "'I32'; only F32, F16 and BF16 are supported")


def test_missing_head_tensor_is_named(tmp_path):
    flat = random_flat("7")
    del flat["blocks.0.att.r_k"]
    check_error(write_torch_zip(tmp_path / "m.pth", as_pth_vectors(flat)),
                r"m.pth: missing tensor blocks.0.att.r_k \(RWKV-7\)$")


def test_zero_sizes_are_refused(tmp_path):
    flat = random_flat("6")
    for i in range(3):  # the token-shift LoRA's rank read as 4 // 5 = 0
        flat[f"blocks.{i}.att.time_maa_w1"] = flat[f"blocks.{i}.att.time_maa_w1"][:, :4].copy()
    check_error(write_torch_zip(tmp_path / "m.pth", as_pth_vectors(flat)),
                r"m.pth: sizes read off the tensors are zero: Dm=0; not a usable RWKV-6 checkpoint$")


def test_later_checkpoint_refusals(tmp_path):
    flat = random_flat("7")
    extra = dict(flat, **{"blocks.0.ffn.s_emb.weight": np.zeros((40, 16), np.float32)})
    check_error(write_torch_zip(tmp_path / "v8.pth", as_pth_vectors(extra)),
                rf"v8.pth: not a valid RWKV-7 checkpoint for {SIZES_7}: unexpected tensor blocks.0.ffn.s_emb.weight "
                r"of shape \(40, 16\)" + NEWER)
    bad = dict(flat)
    bad["blocks.1.att.w2"] = bad["blocks.1.att.w2"].copy()
    bad["blocks.1.att.w2"][0, 0] = np.nan
    check_error(write_torch_zip(tmp_path / "nan.pth", bad), r"nan.pth: tensor blocks.1.att.w2 has 1 non-finite values")
    short = {k: v for k, v in flat.items() if k != "blocks.2.att.k_a"}
    check_error(write_torch_zip(tmp_path / "short.pth", short),
                rf"short.pth: not a valid RWKV-7 checkpoint for {SIZES_7}: missing tensor blocks.2.att.k_a "
                r"\(expected shape \(16,\)\)$")
    hf = {"rwkv." + k.replace(".att.", ".attention."): v for k, v in random_flat("5.2").items()}
    check_error(write_torch_zip(tmp_path / "hf.pth", hf), "hf.pth: Hugging Face names on an RWKV-5.2 checkpoint")


# ---- two tensors of the file for one parameter --------------------------------------------------------

def test_two_names_for_one_tensor_are_refused(tmp_path):
    hf = to_hf_names(tiny_weights())
    hf["emb.weight"] = hf["rwkv.embeddings.weight"]  # BlinkDL's name beside Hugging Face's
    (tmp_path / "two.safetensors").write_bytes(safetensors_bytes(hf))
    check_error(tmp_path / "two.safetensors", r"two.safetensors: tensors 'rwkv.embeddings.weight' and 'emb.weight' "
                                              r"are both 'emb.weight'; refusing the file$")


def test_a_concatenated_tensor_and_its_part_are_refused(tmp_path):
    converted = to_rwkv_cpp(random_flat("7"), "7")
    converted["blocks.1.att.x_k"] = converted["blocks.1.att.x_rwkvag"][2, 0].copy()
    (tmp_path / "two.bin").write_bytes(rwkv_cpp_converted_bytes(converted))
    check_error(tmp_path / "two.bin", r"two.bin: tensors 'blocks.1.att.x_rwkvag' and 'blocks.1.att.x_k' both hold "
                                      r"'blocks.1.att.x_k'; refusing the file$")



def _hf_twin(name: str) -> tuple[str, str]:
    """(Hugging Face name, BlinkDL name) of a tensor given by its Hugging Face name."""
    blink = name.replace("rwkv.embeddings.", "emb.").replace("rwkv.", "").replace(".pre_ln.", ".ln0.")
    blink = blink.replace(".attention.", ".att.").replace(".feed_forward.", ".ffn.")
    return name, blink.replace("time_mix_key", "time_mix_k").replace("time_mix_receptance", "time_mix_r")


@pytest.mark.parametrize("hf_name", ["rwkv.blocks.1.attention.time_mix_key", "rwkv.blocks.0.pre_ln.weight",
                                     "rwkv.blocks.1.feed_forward.value.weight", "rwkv.ln_out.bias",
                                     "rwkv.blocks.0.attention.time_mix_receptance"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_a_hugging_face_name_and_its_blinkdl_twin_are_refused(tmp_path, fmt, hf_name):
    hf = to_hf_names(tiny_weights(n_layer=2))
    hf_name, blink = _hf_twin(hf_name)
    hf[blink] = hf[hf_name] + 1  # another value: keeping either one would be a silent choice
    path = tmp_path / f"twins.{fmt}"
    write_torch_zip(path, hf) if fmt == "pth" else path.write_bytes(safetensors_bytes(hf))
    first, second = sorted([hf_name, blink], key=list(hf).index)
    check_error(path, rf"twins.{fmt}: tensors '{first}' and '{second}' are both '{blink}'; refusing the file$")


def test_two_hugging_face_spellings_and_twins_across_shards_are_refused(tmp_path):
    hf = to_hf_names(tiny_weights())
    hf["rwkv.blocks.0.attention.time_mix_k"] = hf["rwkv.blocks.0.attention.time_mix_key"]  # both rename to one
    (tmp_path / "two.safetensors").write_bytes(safetensors_bytes(hf))
    check_error(tmp_path / "two.safetensors", r"two.safetensors: tensors 'rwkv.blocks.0.attention.time_mix_key' "
                r"and 'rwkv.blocks.0.attention.time_mix_k' are both 'blocks.0.att.time_mix_k'; refusing the file$")
    # a sharded folder whose second shard holds the BlinkDL name of a tensor of the first
    folder = tmp_path / "hf"
    folder.mkdir()
    hf = to_hf_names(tiny_weights())
    (folder / "a.safetensors").write_bytes(safetensors_bytes(hf))
    (folder / "b.safetensors").write_bytes(safetensors_bytes({"head.weight": hf["head.weight"],
                                                              "emb.weight": hf["rwkv.embeddings.weight"]}))
    weight_map = dict({k: "a.safetensors" for k in hf}, **{"emb.weight": "b.safetensors"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "rwkv"}))
    with pytest.raises(CheckpointError, match=r"tensor 'head.weight' appears in two shards"):
        load_checkpoint(folder)
    (folder / "b.safetensors").write_bytes(safetensors_bytes({"emb.weight": hf["rwkv.embeddings.weight"]}))
    check_error(folder, r"hf: tensors 'rwkv.embeddings.weight' and 'emb.weight' are both 'emb.weight'; "
                        r"refusing the file$")


@pytest.mark.parametrize("part", "rwkvag")
def test_each_of_rwkv7s_concatenated_vectors_beside_its_own_tensor_is_refused(tmp_path, part):
    """rwkv.cpp's x_rwkvag holds x_r, x_w, x_k, x_v, x_a and x_g: a file that also has one of them
    (the issue's example: att.x_r) is refused whichever it is, naming both tensors."""
    converted = to_rwkv_cpp(random_flat("7"), "7")
    converted[f"blocks.2.att.x_{part}"] = converted["blocks.2.att.x_rwkvag"]["rwkvag".index(part), 0] * 0.5
    (tmp_path / "two.bin").write_bytes(rwkv_cpp_converted_bytes(converted))
    check_error(tmp_path / "two.bin", rf"two.bin: tensors 'blocks.2.att.x_rwkvag' and 'blocks.2.att.x_{part}' "
                                      rf"both hold 'blocks.2.att.x_{part}'; refusing the file$")


def test_a_collision_made_by_an_architectures_own_rename_is_refused(tmp_path):
    """The architecture's rename (here RWKV-4 registered with its blocks called `layers.N.`) is a
    renaming step too: `layers.0.x` beside `blocks.0.x` is refused."""
    import dataclasses

    from rwkv_np import rwkv4
    from rwkv_np.architecture import blocks_prefix

    arch = dataclasses.replace(rwkv4.ARCH, name="4-layers", title="RWKV-4 (layers.)", priority=100,
                               marker="layers.0.att.time_first", rename=blocks_prefix("layers."))
    raw = {k.replace("blocks.", "layers."): v for k, v in tiny_weights().items()}
    raw["blocks.0.att.key.weight"] = raw["layers.0.att.key.weight"]
    registry.register(arch)
    try:
        check_error(write_torch_zip(tmp_path / "l.pth", raw), r"l.pth: tensors 'layers.0.att.key.weight' and "
                                                              r"'blocks.0.att.key.weight' are both "
                                                              r"'blocks.0.att.key.weight'; refusing the file$")
    finally:
        registry.unregister("4-layers")


# ---- sizes that are zero ----------------------------------------------------------------------------

# (version, sizes given to the writer, the message): every size read off the tensors is checked at load
ZERO_SIZES = [
    ("5.1", dict(A=0, N=0), "sizes read off the tensors are zero: A=0, N=0; not a usable RWKV-5.1 checkpoint$"),
    ("5.2", dict(A=0, N=0), "sizes read off the tensors are zero: A=0, N=0; not a usable RWKV-5.2 checkpoint$"),
    ("6", dict(A=0, N=0), "sizes read off the tensors are zero: A=0, N=0; not a usable RWKV-6 checkpoint$"),
    ("7", dict(A=0, N=0), "sizes read off the tensors are zero: A=0, N=0; not a usable RWKV-7 checkpoint$"),
    ("6", dict(Dd=0), "sizes read off the tensors are zero: Dd=0; not a usable RWKV-6 checkpoint$"),
    ("7", dict(Dw=0), "sizes read off the tensors are zero: Dw=0; not a usable RWKV-7 checkpoint$"),
    ("7", dict(Da=0), "sizes read off the tensors are zero: Da=0; not a usable RWKV-7 checkpoint$"),
    ("7", dict(Dv=0), "sizes read off the tensors are zero: Dv=0; not a usable RWKV-7 checkpoint$"),
    ("7", dict(Dg=0), "sizes read off the tensors are zero: Dg=0; not a usable RWKV-7 checkpoint$"),
    ("4", dict(F=0), r"tensor blocks.0.ffn.key.weight has shape \(0, 16\), expected \(ffn_dim, 16\)$"),
    ("5.2", dict(F=0), r"tensor blocks.0.ffn.key.weight has shape \(0, 16\), expected \(ffn_dim, 16\)$"),
    ("7", dict(F=0), r"tensor blocks.0.ffn.key.weight has shape \(0, 16\), expected \(ffn_dim, 16\)$"),
    ("4", dict(V=0), r"tensor emb.weight has shape \(0, 16\), expected \(vocab_size, n_embd\)$"),
    ("6", dict(V=0), r"tensor emb.weight has shape \(0, 16\), expected \(vocab_size, n_embd\)$"),
    ("7", dict(V=0), r"tensor emb.weight has shape \(0, 16\), expected \(vocab_size, n_embd\)$"),
    ("5.1", dict(C=0), r"tensor emb.weight has shape \(40, 0\), expected \(vocab_size, n_embd\)$"),
    ("7", dict(H=0, A=16, N=8), r"cannot split the attention width 16 into heads \(head count 0 read from "
                                r"blocks.0.att.r_k of shape \(0, 8\)\)$"),
    ("5.2", dict(H=0, A=16, N=8), r"cannot split the attention width 16 into heads \(head count 0 read from "
                                  r"blocks.0.att.time_faaaa of shape \(0, 8\)\)$"),
]


# rwkv.cpp's converter cannot reshape a tensor into zero heads: those files are BlinkDL's only
ZERO_CASES = [(fmt, *case) for case in ZERO_SIZES for fmt in ("safetensors", "rwkv.cpp")
              if fmt == "safetensors" or case[1].get("H") != 0]


@pytest.mark.parametrize("fmt, version, dims, message", ZERO_CASES,
                         ids=[f"{f}-{v}-{','.join(d)}" for f, v, d, _ in ZERO_CASES])
def test_a_size_that_is_zero_is_refused_at_load(tmp_path, fmt, version, dims, message):
    """The issue's example (a 5.2 or 7 model with head size 0 loaded, then failed in its first forward
    with "state wkv: expected ... got (2, 2, 0, 0)"), and every other size that can be zero: heads,
    head size, attention width, the LoRA ranks, FFN width, vocabulary, channels. Each is refused at
    load, naming the file, in the BlinkDL names and in rwkv.cpp's."""
    flat = random_flat(version, dims=dims)
    if fmt == "safetensors":
        path = tmp_path / "zero.safetensors"
        path.write_bytes(safetensors_bytes(as_pth_vectors(flat) if version == "4" else flat))
    elif version == "4":
        path = tmp_path / "zero.bin"
        path.write_bytes(rwkv_cpp_bytes({k: v.reshape(1, 1, -1) if ".time_mix" in k else v for k, v in flat.items()},
                                        version=101))
    else:
        path = tmp_path / "zero.bin"
        path.write_bytes(rwkv_cpp_converted_bytes(to_rwkv_cpp(flat, version)))
    check_error(path, rf"{path.name}: {message}")

# ---- a reference without a model -----------------------------------------------------------------

@pytest.mark.parametrize("version", ["4", "5.1", "5.2", "6", "7"])
def test_load_reference_gives_the_reference_its_params_and_options(tmp_path, version):
    flat = random_flat(version) if version != "4" else expected_model_weights(tiny_weights(n_layer=2))
    path = write_torch_zip(tmp_path / "m.pth", as_pth_vectors(flat))
    ref, params, options = load_reference(path)
    arch = registry.get(version)
    assert ref is registry.reference(arch) and options == load_checkpoint(path).config.reference_options()
    assert options == ({"eps": 1e-5} if version == "4" else {"eps": 1e-5, "ln_x_eps": 64e-5})
    for name, a in arch.flatten(params).items():
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a.reshape(flat[name].shape), flat[name])
    logits, _ = ref.forward(params, [1, 2, 3], **options)
    assert logits.shape == (3, arch.shapes(load_checkpoint(path).config.dims)["emb.weight"][0])


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


@pytest.mark.parametrize("dtype, bad_bits", [("bfloat16", 0x7F80), ("bfloat16", 0xFFC1), ("float16", 0x7C00)])
def test_keep_16bit_still_refuses_non_finite_weights(tmp_path, dtype, bad_bits):
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
    def broken(buf):
        raise KeyError("oops")

    monkeypatch.setattr(torch_zip, "read_torch_zip", broken)
    path = write_torch_zip(tmp_path / "m.pth", tiny_weights())
    with pytest.raises(CheckpointError, match=r"m.pth: internal error while reading \(KeyError: 'oops'\)"):
        load_checkpoint(path)
