"""rwkv_np/reference.py on its own: against the float64 logits and rwkv.cpp's expected logits of
checkpoints nobody here wrote, in both forms, and its promises (NumPy only, inputs untouched)."""

import subprocess
import sys

import numpy as np
import pytest

import rwkv_np
from rwkv_np import reference

from conftest import REPO, RWKV_CPP, TORCH_WRITTEN, need
from test_model import RWKV_CPP_TOKENS, SMALL_ATOL, expected_rwkv_cpp


def step_by_step(params, tokens, state=None):
    """reference.step over tokens, one call per token: logits (T, V) and the state after."""
    rows = []
    for token in tokens:
        logits, state = reference.step(params, int(token), state)
        rows.append(logits)
    return np.stack(rows), state


BOTH_FORMS = {"forward": lambda p, t: reference.forward(p, t), "step": step_by_step}


@pytest.mark.parametrize("form", BOTH_FORMS)
@pytest.mark.parametrize("name, expected_name", [
    ("small_fp32.pth", "small_expected.npz"), ("small_hf_safetensors", "small_expected.npz"),
    ("small_bf16.pth", "small_bf16_expected.npz"), ("small_fp16.pth", "small_fp16_expected.npz")])
def test_float64_logits_at_every_position(form, name, expected_name):
    expected = np.load(need(TORCH_WRITTEN / expected_name))
    ref = expected["logits_ref64"] if "logits_ref64" in expected.files else expected["logits_ref64_upcast"]
    params = rwkv_np.load_model(need(TORCH_WRITTEN / name)).params
    logits, state = BOTH_FORMS[form](params, expected["tokens"])
    assert logits.shape == ref.shape and logits.dtype == np.float32
    # float32 throughout: the same bound as the engine's (test_model.SMALL_ATOL explains it)
    np.testing.assert_allclose(logits, ref, rtol=0, atol=SMALL_ATOL)
    if name == "small_fp32.pth":
        ref_state = expected["state_ref64"]
        for row in (reference.ATT_X, reference.FFN_X, reference.PP):
            np.testing.assert_allclose(state[:, row], ref_state[:, row], rtol=1e-5, atol=1e-5)
        # bb sums up to 48 weights of size <= 1; aa the same weights times values: error ~ bb eps
        np.testing.assert_allclose(state[:, reference.BB], ref_state[:, reference.BB], rtol=1e-5)
        scale = ref_state[:, reference.BB].max()
        np.testing.assert_allclose(state[:, reference.AA], ref_state[:, reference.AA], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("form", BOTH_FORMS)
def test_stress_model_stays_finite_and_close(form):
    expected = np.load(need(TORCH_WRITTEN / "stress_expected.npz"))
    params = rwkv_np.load_model(need(TORCH_WRITTEN / "stress_fp32.pth")).params
    logits, state = BOTH_FORMS[form](params, expected["tokens"])
    assert np.isfinite(logits).all() and np.isfinite(state).all()
    # keys near +-100 carry a float32 rounding of 100 eps / 2 into exponentials: ~1e-5 relative per
    # weight, accumulated over 300 steps of a float32 state; the same limit as the engine's test
    np.testing.assert_allclose(logits, expected["logits_ref64"], rtol=0, atol=1.5e-3)


@pytest.mark.parametrize("form", BOTH_FORMS)
@pytest.mark.parametrize("dtype, sum_tol", [("FP32", 0.00105), ("FP16", 0.0143)])
def test_rwkv_cpp_expected_logits(form, dtype, sum_tol):
    params = rwkv_np.load_model(need(RWKV_CPP / f"tiny-rwkv-4v0-660K-{dtype}.bin")).params
    logits, _ = BOTH_FORMS[form](params, RWKV_CPP_TOKENS)
    expected = expected_rwkv_cpp()
    assert abs(float((logits[-1] - expected).sum())) <= sum_tol  # rwkv.cpp's own test
    if dtype == "FP32":
        assert np.abs(logits[-1] - expected).max() < 1e-5


def test_step_is_forward_of_one_token_and_state_carries():
    params = rwkv_np.load_model(need(TORCH_WRITTEN / "small_fp32.pth")).params
    tokens = np.load(need(TORCH_WRITTEN / "small_expected.npz"))["tokens"]
    whole, s_whole = reference.forward(params, tokens)
    first, s = reference.forward(params, tokens[:20])
    rest, s = reference.forward(params, tokens[20:], s)
    # matrix products over 20 or 28 rows instead of 48 may block their sums differently: float32 rounding
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, rtol=0, atol=SMALL_ATOL)
    np.testing.assert_allclose(s, s_whole, rtol=1e-5, atol=1e-5)
    logits, s1 = reference.step(params, int(tokens[0]))
    np.testing.assert_array_equal(logits, reference.forward(params, tokens[:1])[0][0])


def test_nothing_passed_in_is_modified():
    params = rwkv_np.load_model(need(TORCH_WRITTEN / "small_fp32.pth")).params
    before = {k: v.copy() for k, v in params["blocks"][1]["att"].items()}
    state = reference.initial_state(2, 48)
    state[:, reference.ATT_X] = 0.5
    saved = state.copy()
    reference.forward(params, [1, 2, 3], state)
    reference.step(params, 4, state)
    np.testing.assert_array_equal(state, saved)
    for k, v in params["blocks"][1]["att"].items():
        np.testing.assert_array_equal(v, before[k])


def test_record_receives_every_layers_intermediates():
    params = rwkv_np.load_model(need(TORCH_WRITTEN / "small_fp32.pth")).params
    record = []
    logits, state = reference.forward(params, [5, 6, 7, 8], record=record)
    assert len(record) == 2
    att, ffn = record[1]["att"], record[1]["ffn"]
    assert att["k"].shape == (4, 48) and ffn["hidden"].shape == (4, 192)
    np.testing.assert_array_equal(att["w"], np.exp(params["blocks"][1]["att"]["time_decay"]))
    np.testing.assert_array_equal(att["pp"], state[1, reference.PP])
    np.testing.assert_array_equal(logits, reference.forward(params, [5, 6, 7, 8])[0])  # recording changes nothing


def test_importing_the_reference_imports_numpy_only():
    code = ("import sys; import rwkv_np.reference; "
            "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"


def test_the_reference_fits_in_one_sitting():
    lines = (REPO / "rwkv_np" / "reference.py").read_text().splitlines()
    assert len(lines) <= 200
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert imports == ["import numpy as np"]
