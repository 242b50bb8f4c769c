"""The references of RWKV-5.1, 5.2 ("Eagle"), 6 ("Finch") and 7 ("Goose"): rwkv_np/rwkv5, rwkv6 and
rwkv7's reference.py, in plain NumPy, run without a model (rwkv_np.loading.load_reference).

On rwkv.cpp's real tiny checkpoints: its expected logits after the prompt '"in', in both forms, and
parallel = recurrent over a longer text that the trained models predict well. On random tiny models of
every version (no fixture needed): the same agreement, and neither form touching what it is given.
Reading rwkv.cpp's converted tensors back is tests/test_format_rwkv_cpp.py; the engines are
tests/test_rwkv5_6_7_engine.py."""

import copy

import numpy as np
import pytest

from rwkv_np import registry
from rwkv_np.loading import load_checkpoint, load_reference
from rwkv_np.rwkv5 import reference as reference_v5
from rwkv_np.rwkv6 import reference as reference_v6
from rwkv_np.rwkv7 import reference as reference_v7

from helpers import (DIMS, LATER, PROMPT, SHAKESPEARE, STEM, SUM_TOL, close_in_float32, expected_rwkv_cpp, leaves,
                     need, random_flat, step_by_step, tiny_rwkv_cpp)

REFERENCE = {"5.1": reference_v5, "5.2": reference_v5, "6": reference_v6, "7": reference_v7}


def forms(ref, params, tokens, **options):
    """(forward's logits, the last logits of step fed token by token, both final states)."""
    logits, state = ref.forward(params, tokens, **options)
    step_logits, s = step_by_step(ref, params, tokens, **options)
    return logits, step_logits[-1], state, s


@pytest.fixture(scope="module", params=[(v, d) for v in STEM for d in ("FP32", "FP16")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    version, dtype = request.param
    path = tiny_rwkv_cpp(version, dtype)
    ref, params, options = load_reference(path)
    return version, dtype, ref, params, options, load_checkpoint(path).config


def test_rwkv_cpp_expected_logits(tiny):
    version, dtype, ref, params, options, config = tiny
    assert config.version == version and ref is REFERENCE[version] is registry.reference(registry.get(version))
    assert options == {"eps": 1e-5, "ln_x_eps": config.ln_x_eps}  # rwkv.cpp's ln_x epsilon: test_format_rwkv_cpp
    expected = expected_rwkv_cpp(STEM[version])
    assert expected.shape == (256,)
    logits, step_logits, _, _ = forms(ref, params, PROMPT, **options)
    assert logits.shape == (3, 256) and step_logits.shape == (256,)
    for got in (logits[-1], step_logits):
        assert abs((got - expected).sum()) <= SUM_TOL[version, dtype]
        if dtype == "FP32":  # measured: at most 3e-6
            assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("version", list(STEM))
def test_parallel_equals_recurrent_on_text(version):
    ref, params, options = load_reference(tiny_rwkv_cpp(version))
    tokens = list(need(SHAKESPEARE).read_bytes()[:200])
    logits, state = ref.forward(params, tokens, **options)
    rows, s = step_by_step(ref, params, tokens, **options)
    assert close_in_float32(rows, logits)
    for got, want in zip(s, state):
        assert close_in_float32(got, want)
    # a trained byte-level model predicts text well above chance: under 4.5 nats per byte where
    # uniform is 5.5 (measured 2.9 to 3.9). Over bytes 1-255 only: the text has no byte 0, and the
    # 6.0 checkpoint ranks byte 0 first everywhere (so do rwkv.cpp's expected logits for it)
    z = logits[:-1, 1:]  # (199, 255)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert -logp[np.arange(199), np.array(tokens[1:]) - 1].mean() < 4.5
    # the state carried across calls: two calls on a split text = one call on the whole
    first, mid = ref.forward(params, tokens[:77], **options)
    second, end = ref.forward(params, tokens[77:], mid, **options)
    assert close_in_float32(np.concatenate([first, second]), logits)
    assert all(close_in_float32(a, b) for a, b in zip(end, state))


# ---- random tiny models of every version: no fixture needed ----

@pytest.mark.parametrize("version", LATER)
def test_random_model_forms_agree_and_inputs_untouched(version):
    params = registry.get(version).nest(random_flat(version))
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
    for (name, a), (_, b) in zip(leaves(params), leaves(before)):
        assert np.array_equal(a, b), name
    # and the state matters: from another state the logits differ
    other, _ = ref.forward(params, tokens[-1:], ref.forward(params, tokens[:3])[1])
    assert np.abs(other[0] - logits[-1]).max() > 1e-3


@pytest.mark.parametrize("version", LATER)
def test_the_initial_state_is_the_architectures(version):
    arch = registry.get(version)
    config = registry.config_from_weights(random_flat(version))
    shift, wkv = REFERENCE[version].initial_state(3, 16, 2, 8)
    assert arch.state_shapes(config) == (shift.shape, wkv.shape) == ((3, 2, 16), (3, 2, 8, 8))
    assert not shift.any() and not wkv.any()
    a, b = arch.initial(config)
    np.testing.assert_array_equal(a, shift)
    np.testing.assert_array_equal(b, wkv)
