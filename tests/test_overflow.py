"""Overflow in the forward pass: weights that are finite but too large for float32 arithmetic are
reported as a rwkv_np.ModelError, a problem of the weights (naming the checkpoint and where), never
blamed on a state nobody passed; for RWKV-4 and for every later version."""

import re

import numpy as np
import pytest

import rwkv_np
from rwkv_np.errors import ModelError
from rwkv_np.state import State

from helpers import LATER, random_flat, rwkv_cpp_converted_bytes, safetensors_bytes, tiny_weights, to_rwkv_cpp

FLOAT32_MAX = float(np.finfo(np.float32).max)
# NumPy warns about the overflows these weights cause; what is tested is the error that follows
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _model(tmp_path, scale: dict[str, float], n_layer=3, name="m.safetensors"):
    w = tiny_weights(n_layer=n_layer, C=8, V=16, F=32, seed=1)
    for key, factor in scale.items():
        w[key] = (w[key].astype(np.float64) * factor).clip(-FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)
    path = tmp_path / name
    path.write_bytes(safetensors_bytes(w))
    return rwkv_np.load_model(path), path


def test_good_weights_pass_the_check(tmp_path):
    model, _ = _model(tmp_path, {})
    for mode in ("parallel", "recurrent"):
        logits, state = model.forward([1, 2, 3, 4], mode=mode, return_all=True)
        assert logits.shape == (4, 16) and np.isfinite(logits).all()


# (weights scaled, where the first inf/NaN shows): a blow-up inside layer i reaches the residual
# stream, so the next layer's state (its LayerNorm output) is the first to hold it; one in the
# last layer or the head shows only in the logits
CASES = [
    ({"blocks.0.att.key.weight": 3e38}, r"first in the state of layer 0 \(of 3\)"),
    ({"blocks.0.att.value.weight": 3e38}, r"first in the state of layer 0 \(of 3\)"),
    ({"blocks.0.ffn.value.weight": 1e38, "blocks.0.ffn.key.weight": 1e30}, r"first in the state of layer 1 \(of 3\)"),
    ({"blocks.1.att.value.weight": 3e38, "blocks.1.att.output.weight": 3e38}, r"first in the state of layer 1 "),
    ({"blocks.2.ffn.value.weight": 3e38, "blocks.2.ffn.key.weight": 1e20}, r"in the logits \(ln_out and head\)"),
    ({"head.weight": 3e38, "ln_out.weight": 1e10}, r"in the logits \(ln_out and head\)"),
]


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
@pytest.mark.parametrize("scale,where", CASES, ids=[next(iter(c[0])) for c in CASES])
def test_huge_finite_weights_are_reported_as_the_checkpoints_problem(tmp_path, scale, where, mode):
    model, path = _model(tmp_path, scale)  # the loader accepts them: every value is a finite float32
    with pytest.raises(ModelError) as e:
        model.forward([3, 1, 4, 1, 5], mode=mode)
    message = str(e.value)
    assert message.startswith(f"the weights of {path} produce non-finite values (inf or NaN) ")
    assert re.search(where, message), message
    assert "given state" not in message and "state contains" not in message


def test_logits_report_the_first_bad_token_with_return_all(tmp_path):
    # only token 7's embedding row is huge: every earlier token's logits are fine
    w = tiny_weights(n_layer=1, C=8, V=16, F=32, seed=2)
    w["emb.weight"][7] = FLOAT32_MAX
    w["blocks.0.ln1.weight"][:] = 0  # nothing reaches the state through time mixing
    path = tmp_path / "row.safetensors"
    path.write_bytes(safetensors_bytes(w))
    model = rwkv_np.load_model(path)
    with pytest.raises(ModelError, match=r"row\.safetensors produce non-finite values .*first"):
        model.forward([1, 2, 7, 3], mode="parallel", return_all=True)


def test_a_given_state_shares_the_blame(tmp_path):
    model, path = _model(tmp_path, {})
    data = model.init_state().data.copy()
    data[1, 1] = FLOAT32_MAX  # aa, the WKV numerator: finite, so State accepts it
    data[1, 3] = 80.0  # pp: e^(k - pp) stays tiny, aa dominates
    with pytest.raises(ModelError, match=rf"the weights of {re.escape(str(path))}, starting from the given state, "
                                         r"produce non-finite values .*the weights or that state"):
        model.forward([1, 2], State(data), mode="recurrent")
    # the same model from the initial state is fine
    assert np.isfinite(model.forward([1, 2], mode="recurrent")[0]).all()


def test_in_memory_weights_without_a_file(tmp_path):
    model, _ = _model(tmp_path, {})
    key = "blocks.0.att.value.weight"
    bad = rwkv_np.RWKV({k: (np.full_like(v, FLOAT32_MAX) if k == key else v) for k, v in model.weights.items()})
    with pytest.raises(ModelError, match=r"^the model's weights produce non-finite values .* layer 0"):
        bad.forward([0, 1, 2])


# ---- the later versions: the one model class reports them the same way ------------------------------

LATER_CASES = [("blocks.0.att.value.weight", r"first in the state of layer 0 \(of 3\)"),
               ("blocks.1.ffn.value.weight", r"first in the state of layer 2 \(of 3\)"),
               ("head.weight", r"in the logits \(ln_out and head\)")]


def _later_model(tmp_path, version, key=None):
    flat = random_flat(version, seed=1)
    if key is not None:
        flat[key] = (flat[key].astype(np.float64) * 3e38).clip(-FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)
    path = tmp_path / f"v{version}.safetensors"
    path.write_bytes(safetensors_bytes(flat))
    return rwkv_np.load_model(path), path


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
@pytest.mark.parametrize("key, where", LATER_CASES, ids=[c[0] for c in LATER_CASES])
@pytest.mark.parametrize("version", LATER)
def test_a_later_versions_huge_weights_are_the_checkpoints_problem(tmp_path, version, key, where, mode):
    model, path = _later_model(tmp_path, version, key)
    with pytest.raises(ModelError) as e:
        model.forward([3, 1, 4, 1, 5], mode=mode)  # no state given
    message = str(e.value)
    assert message.startswith(f"the weights of {path} produce non-finite values (inf or NaN) ")
    assert re.search(where, message), message
    assert "given state" not in message and "that state" not in message


@pytest.mark.parametrize("version", LATER)
def test_a_given_matrix_state_shares_the_blame(tmp_path, version):
    model, path = _later_model(tmp_path, version)
    start = model.init_state()
    wkv = start.wkv.copy()
    wkv[1] = FLOAT32_MAX  # finite, so State accepts it; the next token's products overflow
    with pytest.raises(ModelError, match=rf"the weights of {re.escape(str(path))}, starting from the given state, "
                                         r"produce non-finite values .*the weights or that state"):
        model.forward([1, 2], State(start.data, wkv), mode="recurrent")
    assert np.isfinite(model.forward([1, 2], mode="recurrent")[0]).all()



@pytest.mark.parametrize("version", LATER)
def test_a_later_versions_rwkv_cpp_file_loaded_as_the_command_line_loads_it(tmp_path, version):
    """Another format and the command line's load options (embedding left in the file, 16-bit and
    blocks kept): huge weights, no state given, are blamed on the weights alone."""
    flat = random_flat(version, seed=3)
    key = "blocks.1.att.value.weight"
    flat[key] = (flat[key].astype(np.float64) * 3e38).clip(-FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)
    path = tmp_path / f"v{version}.bin"
    path.write_bytes(rwkv_cpp_converted_bytes(to_rwkv_cpp(flat, version)))
    model = rwkv_np.load_model(path, keep_16bit=True, lazy_embedding=True, keep_blocks=True)
    for mode in ("parallel", "recurrent"):
        with pytest.raises(ModelError) as e:
            model.forward([2, 7, 1, 8], mode=mode)
        message = str(e.value)
        assert message.startswith(f"the weights of {path} produce non-finite values (inf or NaN) first in the "
                                  "state of layer 1 (of 3): some weights are too large for float32 arithmetic"), message
        assert "given state" not in message and "that state" not in message
