"""rwkv_np/rwkv4/reference.py on its own: against the float64 logits and rwkv.cpp's expected logits of
checkpoints nobody here wrote, in both forms; its pure functions composed give its forward; and its
promises (NumPy only, inputs untouched, under 200 lines, runs by itself)."""

import subprocess
import sys

import numpy as np
import pytest

import rwkv_np
from rwkv_np.loading import load_reference
from rwkv_np.rwkv4 import reference

from helpers import (ASSET, PROMPT, REPO, RWKV_CPP, SMALL_ATOL, TORCH_WRITTEN, expected_rwkv_cpp, need,
                     step_by_step)

BOTH_FORMS = {"forward": lambda ref, p, t, **o: ref.forward(p, t, **o),
              "step": lambda ref, p, t, **o: step_by_step(ref, p, t, **o)}


def _params(path):
    ref, params, options = load_reference(path)
    assert ref is reference and options == {"eps": 1e-5}
    return params


@pytest.mark.parametrize("form", BOTH_FORMS)
@pytest.mark.parametrize("name, expected_name", [
    ("small_fp32.pth", "small_expected.npz"), ("small_hf_safetensors", "small_expected.npz"),
    ("small_bf16.pth", "small_bf16_expected.npz"), ("small_fp16.pth", "small_fp16_expected.npz")])
def test_float64_logits_at_every_position(form, name, expected_name):
    expected = np.load(need(TORCH_WRITTEN / expected_name))
    ref = expected["logits_ref64"] if "logits_ref64" in expected.files else expected["logits_ref64_upcast"]
    params = _params(need(TORCH_WRITTEN / name))
    logits, state = BOTH_FORMS[form](reference, params, expected["tokens"])
    assert logits.shape == ref.shape and logits.dtype == np.float32
    # float32 throughout: the same bound as the engine's (helpers.SMALL_ATOL explains it)
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
    params = _params(need(TORCH_WRITTEN / "stress_fp32.pth"))
    logits, state = BOTH_FORMS[form](reference, params, expected["tokens"])
    assert np.isfinite(logits).all() and np.isfinite(state).all()
    # keys near +-100 carry a float32 rounding of 100 eps / 2 into exponentials: ~1e-5 relative per
    # weight, accumulated over 300 steps of a float32 state; the same limit as the engine's test
    np.testing.assert_allclose(logits, expected["logits_ref64"], rtol=0, atol=1.5e-3)


@pytest.mark.parametrize("form", BOTH_FORMS)
@pytest.mark.parametrize("dtype, sum_tol", [("FP32", 0.00105), ("FP16", 0.0143)])
def test_rwkv_cpp_expected_logits(form, dtype, sum_tol):
    params = _params(need(RWKV_CPP / f"tiny-rwkv-4v0-660K-{dtype}.bin"))
    logits, _ = BOTH_FORMS[form](reference, params, PROMPT)
    expected = expected_rwkv_cpp()
    assert abs(float((logits[-1] - expected).sum())) <= sum_tol  # rwkv.cpp's own test
    if dtype == "FP32":
        assert np.abs(logits[-1] - expected).max() < 1e-5


def test_step_is_forward_of_one_token_and_state_carries():
    params = _params(need(TORCH_WRITTEN / "small_fp32.pth"))
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
    params = _params(need(TORCH_WRITTEN / "small_fp32.pth"))
    before = {k: v.copy() for k, v in params["blocks"][1]["att"].items()}
    state = reference.initial_state(2, 48)
    state[:, reference.ATT_X] = 0.5
    saved = state.copy()
    reference.forward(params, [1, 2, 3], state)
    reference.step(params, 4, state)
    np.testing.assert_array_equal(state, saved)
    for k, v in params["blocks"][1]["att"].items():
        np.testing.assert_array_equal(v, before[k])


def test_the_pure_functions_composed_are_forward():
    """What `record=` used to collect, from the functions themselves (as rwkv_np.analysis.trace does):
    eq. 14's wkv over the k and v of eqs. 12-13 leaves the state forward returns, and the blocks
    applied one by one give forward's logits bit for bit."""
    params = _params(need(TORCH_WRITTEN / "small_fp32.pth"))
    tokens = [5, 6, 7, 8]
    logits, state = reference.forward(params, tokens)
    x = reference.layer_norm(params["emb"][tokens], **params["ln0"])
    start = reference.initial_state(2, 48)
    for i, p in enumerate(params["blocks"]):
        s, att = start[i], p["att"]
        xa = reference.layer_norm(x, **p["ln1"])
        xx = reference.token_shift(xa, s[reference.ATT_X])
        k = reference.mix(xa, xx, att["time_mix_k"]) @ att["key"].T
        v = reference.mix(xa, xx, att["time_mix_v"]) @ att["value"].T
        assert k.shape == (4, 48)
        _, (aa, bb, pp) = reference.wkv(np.exp(att["time_decay"]), att["time_first"], k, v,
                                        s[reference.AA], s[reference.BB], s[reference.PP])
        np.testing.assert_array_equal(pp, state[i, reference.PP])
        np.testing.assert_array_equal(aa, state[i, reference.AA])
        np.testing.assert_array_equal(bb, state[i, reference.BB])
        x, layer_state = reference.block(x, s, **p)
        np.testing.assert_array_equal(layer_state, state[i])
    np.testing.assert_array_equal(reference.layer_norm(x, **params["ln_out"]) @ params["head"].T, logits)


def test_importing_the_reference_imports_numpy_only():
    code = ("import sys; import rwkv_np.rwkv4.reference; "
            "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]"


def test_the_reference_fits_in_one_sitting():
    lines = (REPO / "rwkv_np" / "rwkv4" / "reference.py").read_text().splitlines()
    assert len(lines) < 200
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert imports == ["import numpy as np"]  # at the top level; its __main__ block reads the shipped file


# ---- it runs by itself -----------------------------------------------------------------------------

ROMEO = "ROMEO:\nThe seas of the constable that shall be"  # the prompt and 40 greedy bytes, as printed now


def test_the_reference_runs_alone_and_generates_the_models_greedy_text():
    out = subprocess.run([sys.executable, "-m", "rwkv_np.rwkv4.reference", "ROMEO:", "40"], capture_output=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode() == ROMEO + "\n"
    # the same greedy continuation from the compiled model (prompt in parallel, then token by token)
    model = rwkv_np.load_model(need(ASSET))
    logits, state = model.forward(list(b"ROMEO:"))
    text = bytearray(b"ROMEO:")
    for _ in range(40):
        text.append(int(np.argmax(logits)))
        logits, state = model.forward([text[-1]], state, mode="recurrent")
    assert text.decode() == ROMEO


def test_running_the_reference_never_imports_numba():
    code = ("import runpy, sys; sys.argv = ['reference', 'ROMEO:', '3']; "
            "runpy.run_module('rwkv_np.rwkv4.reference', run_name='__main__'); "
            "print('numba' in sys.modules, 'llvmlite' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == ROMEO[:9] + "\nFalse False\n"  # the text, then: neither numba nor llvmlite
