"""RWKV-5.1/5.2/6/7 through rwkv_np.load_model and the compiled engines (rwkv_np/rwkv5, rwkv6, rwkv7:
kernels.py and engine.py).

On rwkv.cpp's tiny checkpoints: its expected logits in both forms, the engine equal to the reference
of the version at every position of a longer text, the state carried across calls and through a
file. On random models written as BlinkDL .pth and .safetensors files (no fixture needed): the
config's sizes, the engine against the reference, 16-bit weights and the embedding left in the file.
"""

import numpy as np
import pytest

import rwkv_np
from rwkv_np import RWKV, registry
from rwkv_np.formats.base import FileRows
from rwkv_np.state import State

from helpers import (DIMS, LATER, PROMPT, SHAKESPEARE, STEM, SUM_TOL, as_pth_vectors, assert_close_in_float32,
                     bf16_round, expected_rwkv_cpp, need, random_flat, safetensors_bytes, tiny_rwkv_cpp,
                     write_torch_zip)

close = assert_close_in_float32  # the engine sums in another order than NumPy: helpers.close_in_float32


def kept_16bit(*values):
    """pytest.param(*values) in the slow tier: each version's engine compiled for another stored dtype
    costs 10-16 s of Numba on a fresh clone, so the fast tier runs the later versions' engines on float32
    (and 16-bit weights kept as stored on RWKV-4: tests/test_rwkv4_engine.py); the slow tier, on 16-bit."""
    return pytest.param(*values, marks=pytest.mark.slow)


@pytest.fixture(scope="module", params=[(v, "FP32") if d == "FP32" else kept_16bit((v, d))
                                        for v in STEM for d in ("FP32", "FP16")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    version, dtype = request.param
    model = rwkv_np.load_model(tiny_rwkv_cpp(version, dtype), keep_16bit=True)
    return version, dtype, model, expected_rwkv_cpp(STEM[version])


def test_rwkv_cpp_expected_logits_both_modes(tiny):
    version, dtype, model, expected = tiny
    c = model.config
    assert type(model) is RWKV and c.version == version and model.arch is registry.get(version)
    assert (c.vocab_size, c.n_embd, c.n_layer) == (256, 64, 12) and c.n_head * c.head_size == 64
    assert model.weight_dtype == ("float16" if dtype == "FP16" else "float32")  # FP16 kept as stored
    for mode in ("parallel", "recurrent"):
        logits, state = model.forward(PROMPT, mode=mode)
        assert logits.shape == (256,)
        assert state.data.shape == (12, 2, 64) and state.wkv.shape == (12, c.n_head, c.head_size, c.head_size)
        assert abs((logits - expected).sum()) <= SUM_TOL[version, dtype]
        if dtype == "FP32":  # measured: at most 2.1e-6
            assert np.abs(logits - expected).max() <= 1e-4


@pytest.mark.parametrize("version", list(STEM))
def test_rwkv_cpp_fp16_files_widened_meet_rwkv_cpps_tolerance(version):
    """The FP16 files with their matrices widened to float32 on loading (the kernels of the FP32 files:
    in the fast tier, where the kernels reading 16-bit weights are not compiled for the later versions)."""
    model = rwkv_np.load_model(tiny_rwkv_cpp(version, "FP16"))
    assert model.weight_dtype == "float32" and model.source_dtype == "float16"
    expected = expected_rwkv_cpp(STEM[version])
    for mode in ("parallel", "recurrent"):
        logits, _ = model.forward(PROMPT, mode=mode)
        assert abs((logits - expected).sum()) <= SUM_TOL[version, "FP16"]


@pytest.mark.parametrize("version", list(STEM))
def test_engine_equals_reference_at_every_position(version, tmp_path):
    model = rwkv_np.load_model(tiny_rwkv_cpp(version))
    tokens = list(need(SHAKESPEARE).read_bytes()[:300])
    want, (shift, wkv) = model.reference.forward(model.params, tokens, **model.reference_options())
    for mode in ("parallel", "recurrent"):
        got, state = model.forward(tokens, mode=mode, return_all=True)
        close(got, want)
        close(state.data, shift)
        close(state.wkv, wkv)
    # the parallel form in chunks (as for long prompts) carries the state across chunk borders
    model.chunk_size = 64
    close(model.forward(tokens, return_all=True)[0], want)
    # the state carried across calls, and through a file
    first, mid = model.forward(tokens[:100], mode="parallel", return_all=True)
    mid.save(tmp_path / "mid.npz")
    loaded = State.load(tmp_path / "mid.npz")
    assert loaded == mid and loaded.wkv.shape == mid.wkv.shape
    second, end = model.forward(tokens[100:], loaded, mode="recurrent", return_all=True)
    close(np.concatenate([first, second]), want)
    close(end.wkv, wkv)
    # the given state is not modified, and it matters
    assert State.load(tmp_path / "mid.npz") == mid
    assert np.abs(model.forward(tokens[100:101], mid)[0] - model.forward(tokens[100:101])[0]).max() > 0.1


@pytest.mark.parametrize("version", [kept_16bit(v) for v in STEM])
def test_fp16_kept_as_stored_equals_widened(version):
    path = tiny_rwkv_cpp(version, "FP16")
    kept, wide = rwkv_np.load_model(path, keep_16bit=True), rwkv_np.load_model(path)
    assert (kept.weight_dtype, wide.weight_dtype) == ("float16", "float32")
    tokens = list(b"First Citizen:\nBefore we proceed")
    for mode in ("parallel", "recurrent"):
        close(kept.forward(tokens, mode=mode, return_all=True)[0], wide.forward(tokens, mode=mode, return_all=True)[0])


# ---- random models of every version, written as BlinkDL .pth files ----

# bfloat16 for one version only: each stored dtype is another compilation of the kernels (slow tier)
@pytest.mark.parametrize("version, dtype", [("5.1", "float32"), ("5.2", "float32"), ("6", "float32"),
                                            ("7", "float32"), kept_16bit("7", "bfloat16")])
def test_random_pth_of_every_version(tmp_path, version, dtype):
    flat = random_flat(version, seed=3)
    path = write_torch_zip(tmp_path / "m.pth", as_pth_vectors(flat), dtype=dtype)
    model = rwkv_np.load_model(path, keep_16bit=True)
    c = model.config
    assert c.version == version and (c.n_head, c.head_size, c.n_layer, c.ffn_dim) == (2, 8, 3, 24)
    assert c.ln_x_eps == 64e-5  # BlinkDL's, for every version
    ranks = {"6": {"Dm": 3, "Dd": 5}, "7": {"Dw": 4, "Da": 3, "Dv": 2, "Dg": 5}}.get(version, {})
    assert dict(c.lora) == ranks
    assert model.weight_dtype == dtype
    widened = {k: bf16_round(v) if dtype == "bfloat16" else v for k, v in flat.items()}
    tokens = list(np.random.default_rng(0).integers(0, DIMS["V"], 40))
    want, _ = model.reference.forward(registry.get(version).nest(widened), tokens, **model.reference_options())
    for mode in ("parallel", "recurrent"):
        close(model.forward(tokens, mode=mode, return_all=True)[0], want)


@pytest.mark.parametrize("dtype", ["float32", kept_16bit("float16")])
def test_bare_safetensors_kept_as_stored_and_lazy_embedding(tmp_path, dtype):
    flat = random_flat("7", seed=5)
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(flat, dtype=dtype))
    model = rwkv_np.load_model(path, keep_16bit=True, lazy_embedding=True)
    assert model.config.version == "7" and model.checkpoint_format == "safetensors"
    assert model.weight_dtype == dtype and isinstance(model.weights["emb.weight"], FileRows)
    widened = {k: v.astype(dtype).astype(np.float32) for k, v in flat.items()}
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    want, _ = model.reference.forward(registry.get("7").nest(widened), tokens, **model.reference_options())
    for mode in ("parallel", "recurrent"):
        close(model.forward(tokens, mode=mode, return_all=True)[0], want)


@pytest.mark.parametrize("version", LATER)
def test_in_memory_weights_equal_the_same_weights_loaded(tmp_path, version):
    """RWKV(flat) and load_model of the file holding flat: one model, the same numbers bit for bit."""
    flat = random_flat(version, seed=6)
    loaded = rwkv_np.load_model(write_torch_zip(tmp_path / "m.pth", as_pth_vectors(flat)))
    direct = RWKV(flat)
    assert direct.config == loaded.config
    tokens = [7, 1, 30, 2, 2]
    for mode in ("parallel", "recurrent"):
        a, sa = direct.forward(tokens, mode=mode, return_all=True)
        b, sb = loaded.forward(tokens, mode=mode, return_all=True)
        np.testing.assert_array_equal(a, b)
        assert sa == sb
