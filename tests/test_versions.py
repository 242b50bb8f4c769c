"""RWKV-5.1, 5.2, 6 and 7 references (rwkv_np/reference_v5/6/7.py) and rwkv_np/versions.py.

On rwkv.cpp's real tiny checkpoints: its expected logits after the prompt '"in', in both forms, and
parallel = recurrent over a longer text. On random tiny models of every version (no fixture needed):
the same agreement, the converter's inverse, and the errors for malformed weights.
"""

import copy
import re

import struct

import numpy as np
import pytest
from conftest import RWKV_CPP, SHAKESPEARE, need

from rwkv_np import reference_v5, reference_v6, reference_v7
from rwkv_np.errors import CheckpointError
from rwkv_np.versions import detect_version, from_rwkv_cpp, load_rwkv_cpp, param_shapes, to_params

REFERENCE = {"5.1": reference_v5, "5.2": reference_v5, "6": reference_v6, "7": reference_v7}
STEM = {"5.1": "5v1-730K", "5.2": "5v2-730K", "6": "6v0-1m", "7": "7v0-834K"}
# rwkv.cpp's tests/test_tiny_rwkv.c: |sum(logits - expected)| within 1.05 x its own difference
SUM_TOL = {("5.1", "FP32"): 0.00105, ("5.2", "FP32"): 0.00105, ("6", "FP32"): 0.00105,
           ("7", "FP32"): 0.00105, ("5.1", "FP16"): 0.3044, ("5.2", "FP16"): 0.4787,
           ("6", "FP16"): 0.1936, ("7", "FP16"): 0.00605}
PROMPT = [34, 105, 110]  # '"in'


def close_in_float32(a, b):
    """The two forms run the same elementwise arithmetic; only the matrix products may sum in another
    order (BLAS blocks T rows differently from 1), a relative difference of about sqrt(K) 2^-24
    ~ 1e-6 per product that a dozen layers carry along. 1e-5 of the largest magnitude allows for that
    (the measured worst case over 200 tokens is 5e-7) while any real difference, such as a state
    carried wrongly, moves the logits by O(1)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


def forms(ref, params, tokens):
    """(forward's last logits, the last logits of step fed token by token, both final states)."""
    logits, state = ref.forward(params, tokens)
    s = None
    for t in tokens:
        step_logits, s = ref.step(params, t, s)
    return logits, step_logits, state, s


@pytest.fixture(scope="module", params=[(v, d) for v in STEM for d in ("FP32", "FP16")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    version, dtype = request.param
    found, params = load_rwkv_cpp(need(RWKV_CPP / f"tiny-rwkv-{STEM[version]}-{dtype}.bin"))
    expected = np.fromfile(need(RWKV_CPP / f"expected-logits-{STEM[version]}.bin"), "<f4")
    return version, dtype, found, params, expected


def test_rwkv_cpp_expected_logits(tiny):
    version, dtype, found, params, expected = tiny
    assert found == version
    assert expected.shape == (256,)
    logits, step_logits, _, _ = forms(REFERENCE[version], params, PROMPT)
    assert logits.shape == (3, 256) and step_logits.shape == (256,)
    for got in (logits[-1], step_logits):
        assert abs((got - expected).sum()) <= SUM_TOL[version, dtype]
        if dtype == "FP32":  # measured: at most 3e-6
            assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("version", list(STEM))
def test_parallel_equals_recurrent_on_text(version):
    _, params = load_rwkv_cpp(need(RWKV_CPP / f"tiny-rwkv-{STEM[version]}-FP32.bin"))
    tokens = list(need(SHAKESPEARE).read_bytes()[:200])
    ref = REFERENCE[version]
    logits, state = ref.forward(params, tokens)
    s, rows = None, []
    for t in tokens:
        row, s = ref.step(params, t, s)
        rows.append(row)
    assert close_in_float32(np.array(rows), logits)
    for got, want in zip(s, state):
        assert close_in_float32(got, want)
    # a trained byte-level model predicts text well above chance: under 4.5 nats per byte where
    # uniform is 5.5 (measured 2.9 to 3.9). Over bytes 1-255 only: the text has no byte 0, and the
    # 6.0 checkpoint ranks byte 0 first everywhere (so do rwkv.cpp's expected logits for it)
    z = logits[:-1, 1:]  # (199, 255)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert -logp[np.arange(199), np.array(tokens[1:]) - 1].mean() < 4.5
    # the state carried across calls: two calls on a split text = one call on the whole
    first, mid = ref.forward(params, tokens[:77])
    second, end = ref.forward(params, tokens[77:], mid)
    assert close_in_float32(np.concatenate([first, second]), logits)
    assert all(close_in_float32(a, b) for a, b in zip(end, state))


# ---- random tiny models of every version: no fixture needed ----

DIMS = {"V": 40, "C": 16, "L": 3, "A": 16, "F": 24, "H": 2, "N": 8, "Dm": 3, "Dd": 5,
        "Dw": 4, "Da": 3, "Dv": 2, "Dg": 5}


def random_flat(version, seed=0):
    """A flat {BlinkDL name: raw parameter} dict of the shapes param_shapes lists, values in the
    ranges real checkpoints have (LayerNorm weights near 1, mixes in (0, 1), decays of both kinds)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in param_shapes(version, DIMS).items():
        end = name.rsplit(".", 1)[-1]
        if name.endswith("ln0.weight") or name.endswith("ln1.weight") or name.endswith("ln2.weight") \
                or name.endswith("ln_out.weight") or name.endswith("ln_x.weight"):
            a = 1 + 0.2 * rng.standard_normal(shape)
        elif end.startswith("time_mix") or end.startswith("time_maa_") and end[-1] in "xwkvrg" \
                or end.startswith("x_"):
            a = rng.uniform(0, 1, shape)
        elif end == "time_decay":
            a = rng.uniform(-6, 1, shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[-1])
        flat[name] = a.astype(np.float32)
    return flat


@pytest.mark.parametrize("version", list(REFERENCE))
def test_random_model_forms_agree_and_inputs_untouched(version):
    params = to_params(random_flat(version), version)
    ref = REFERENCE[version]
    tokens = list(np.random.default_rng(1).integers(0, DIMS["V"], 24))
    before = copy.deepcopy(params)
    logits, step_logits, state, s = forms(ref, params, tokens)
    assert logits.shape == (24, DIMS["V"])
    assert state[0].shape == (DIMS["L"], 2, DIMS["C"])
    assert state[1].shape == (DIMS["L"], DIMS["H"], DIMS["N"], DIMS["N"])
    assert np.abs(state[1]).max() > 0.01  # the matrix state really was written
    assert close_in_float32(step_logits, logits[-1])
    assert all(close_in_float32(a, b) for a, b in zip(s, state))
    # neither form writes to the params or to the state it is given
    state_copy = copy.deepcopy(state)
    ref.forward(params, tokens[:5], state)
    ref.step(params, tokens[0], state)
    assert all(np.array_equal(a, b) for a, b in zip(state, state_copy))
    for (name, a), b in zip(_leaves(params), (b for _, b in _leaves(before))):
        assert np.array_equal(a, b), name
    # and the state matters: from another state the logits differ
    other, _ = ref.forward(params, tokens[-1:], ref.forward(params, tokens[:3])[1])
    assert np.abs(other[0] - logits[-1]).max() > 1e-3


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k], f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, t in enumerate(tree):
            yield from _leaves(t, f"{prefix}.{i}")
    else:
        yield prefix, tree


def to_rwkv_cpp(flat, version):
    """What rwkv.cpp's convert_pytorch_to_ggml.py does to each tensor (written from its description
    in shared/README.md), so that from_rwkv_cpp can be checked to be its inverse."""
    H, out = DIMS["H"], {}
    for name, a in flat.items():
        a = a.astype(np.float64)
        end = name.rsplit(".", 1)[-1]
        if version == "7" and end.startswith("x_") and ".att." in name:
            prefix = name[: -len(end)]
            out.setdefault(prefix + "x_rwkvag", [None] * 6)["rwkvag".index(end[2])] = a.reshape(1, -1)
            continue
        if version == "7" and end in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
            a = a.T
        if version in ("5.1", "5.2") and end == "time_decay":
            a = np.exp(-np.exp(a)).reshape(H, -1, 1)
        if version == "5.1" and end == "time_first":
            a = np.exp(a).reshape(H, 1, 1)
        if version in ("5.2", "6") and end == "time_faaaa":
            a = a[..., None]
        if version == "6" and end in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
            a = a.T
        if version == "6" and end == "time_maa_w2":
            a = a.swapaxes(1, 2)
        if version == "6" and end == "time_decay":
            a = a.reshape(H, -1, 1)
        out[name] = a
    return {k: (np.stack(v) if isinstance(v, list) else v).astype(np.float32) for k, v in out.items()}


@pytest.mark.parametrize("version", list(REFERENCE))
def test_from_rwkv_cpp_inverts_the_converter(version):
    flat = random_flat(version, seed=2)
    back = from_rwkv_cpp(to_rwkv_cpp(flat, version), version)
    assert detect_version(back) == version
    assert sorted(back) == sorted(flat)
    for name, a in flat.items():
        b = np.asarray(back[name]).reshape(a.shape)
        # exp(-exp(d)) stored in float32 keeps 1 - w only to ~6e-8, so d comes back to ~1e-4 at worst
        assert np.allclose(b, a, rtol=1e-6, atol=2e-4 if name.endswith("time_decay") else 1e-7), name


def test_detect_version():
    base = {"emb.weight", "blocks.0.att.key.weight"}
    assert detect_version(base) == "4"
    assert detect_version(base | {"blocks.0.att.ln_x.weight"}) == "5.1"
    assert detect_version(base | {"blocks.0.att.ln_x.weight", "blocks.0.att.gate.weight"}) == "5.2"
    assert detect_version(base | {"blocks.0.att.gate.weight", "blocks.0.att.time_maa_x"}) == "6"
    assert detect_version(base | {"blocks.0.att.k_k", "blocks.0.att.ln_x.weight"}) == "7"


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("blocks.1.att.time_decay"), "missing tensors ['blocks.1.att.time_decay']"),
    (lambda f: f.update({"blocks.0.att.bogus": np.zeros(3)}), "unexpected tensors ['blocks.0.att.bogus']"),
    (lambda f: f.update({"blocks.2.ffn.key.weight": np.zeros((24, 17), np.float32)}),
     "blocks.2.ffn.key.weight has shape (24, 17), expected (24, 16)"),
    (lambda f: f.update({"blocks.0.att.time_faaaa": np.zeros((3, 8), np.float32)}), "heads"),
    (lambda f: f.update({"blocks.7.ln1.weight": np.ones(16, np.float32)}), "without gaps"),
    (lambda f: f.update({"blocks.0.att.gate.weight": np.zeros((16, 16), np.int32)}), "dtype int32"),
])
def test_malformed_weights_are_named(change, message):
    flat = random_flat("5.2")
    change(flat)
    with pytest.raises(CheckpointError, match="^model.pth: .*" + re.escape(message)):
        to_params(flat, source="model.pth")


def test_rwkv_cpp_values_the_converter_cannot_write_are_refused():
    cpp = to_rwkv_cpp(random_flat("5.2"), "5.2")
    cpp["blocks.1.att.time_decay"][0, 0, 0] = 1.5  # exp(-exp(d)) is never above 1
    with pytest.raises(CheckpointError, match=r"x.bin: tensor blocks.1.att.time_decay holds values "
                                              r"outside \[0.0, 1.0\]"):
        from_rwkv_cpp(cpp, "5.2", "x.bin")


def test_load_rwkv_cpp_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.bin: no such file or folder"):
        load_rwkv_cpp(tmp_path / "nope.bin")


def test_load_rwkv_cpp_bad_files_are_named(tmp_path):
    data = need(RWKV_CPP / "tiny-rwkv-7v0-834K-FP32.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.bin: .*truncated"):
        load_rwkv_cpp(cut)
    retired = tmp_path / "q4_2.bin"  # a quantized format rwkv.cpp itself dropped
    retired.write_bytes(data[:20] + struct.pack("<i", 5) + data[24:])
    with pytest.raises(CheckpointError, match=r"q4_2.bin: .*\(Q4_2\), a quantized format that rwkv.cpp itself retired"):
        load_rwkv_cpp(retired)


def test_missing_head_tensor_is_named():
    flat = random_flat("7")
    del flat["blocks.0.att.r_k"]
    with pytest.raises(CheckpointError, match=r"^m.pth: missing tensor blocks.0.att.r_k \(RWKV-7\)"):
        to_params(flat, source="m.pth")


def test_ln_x_epsilon_follows_the_source():
    """BlinkDL's 64e-5 by default; rwkv.cpp's 1e-5 for its RWKV-5 files, which its logits need."""
    assert to_params(random_flat("5.2"))["blocks"][0]["att"]["ln_x"]["eps"] == 64e-5
    _, params = load_rwkv_cpp(need(RWKV_CPP / "tiny-rwkv-5v2-730K-FP32.bin"))
    assert all(b["att"]["ln_x"]["eps"] == 1e-5 for b in params["blocks"])
    expected = np.fromfile(need(RWKV_CPP / "expected-logits-5v2-730K.bin"), "<f4")
    for b in params["blocks"]:
        b["att"]["ln_x"]["eps"] = 64e-5
    logits, _ = reference_v5.forward(params, PROMPT)
    assert np.abs(logits[-1] - expected).max() > 0.1  # measured: 1.09
    _, params = load_rwkv_cpp(need(RWKV_CPP / "tiny-rwkv-7v0-834K-FP32.bin"))
    assert params["blocks"][0]["att"]["ln_x"]["eps"] == 64e-5


def test_load_rwkv_cpp_reads_rwkv4_too():
    # RWKV-4 through the same loader: the raw ln w back from rwkv.cpp's -exp(time_decay)
    from rwkv_np import reference

    version, params = load_rwkv_cpp(need(RWKV_CPP / "tiny-rwkv-4v0-660K-FP32.bin"))
    expected = np.fromfile(need(RWKV_CPP / "expected-logits-4v0-660K.bin"), "<f4")
    assert version == "4" and params["blocks"][0]["att"]["time_decay"].shape == (128,)
    logits, _ = reference.forward(params, PROMPT)
    assert abs((logits[-1] - expected).sum()) <= 0.00105
