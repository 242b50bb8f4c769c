"""RWKV-5.1/5.2/6/7 through rwkv_np.load_model and the compiled engine (rwkv_np/engine_later.py).

On rwkv.cpp's tiny checkpoints: its expected logits in both forms, the engine equal to the reference
of the version at every position of a longer text, the state carried across calls and through a
file. On random models written as BlinkDL .pth files (no fixture needed): detection, the config's
sizes, the engine against the reference, 16-bit weights, and the refusals.
"""

import numpy as np
import pytest
from _writers import bf16_round, safetensors_bytes, write_torch_zip
from conftest import RWKV_CPP, SHAKESPEARE, need
from test_versions import DIMS, PROMPT, STEM, SUM_TOL, random_flat

import rwkv_np
from rwkv_np import cli
from rwkv_np.engine_later import LaterRWKV
from rwkv_np.errors import ArgumentError, CheckpointError
from rwkv_np.state import State
from rwkv_np.versions import to_params


def close(got, want):
    """Equal up to float32 rounding: the engine sums its dot products and LayerNorm statistics in
    another order than NumPy's reference (SIMD lanes, float64 statistics), a relative difference of
    about sqrt(K) 2^-24 ~ 1e-6 per product carried through a dozen layers. 1e-5 of the largest
    magnitude allows for that (measured at most 1.2e-6 relative on the tiny checkpoints); a real
    difference (a wrong mix, a state carried wrongly) moves the logits by O(1)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    err, scale = np.abs(got - want).max(), max(1.0, np.abs(want).max())
    assert err <= 1e-5 * scale, f"max abs difference {err:.3g} at scale {scale:.3g}"


def tiny_path(version, dtype="FP32"):
    return need(RWKV_CPP / f"tiny-rwkv-{STEM[version]}-{dtype}.bin")


@pytest.fixture(scope="module", params=[(v, d) for v in STEM for d in ("FP32", "FP16")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def tiny(request):
    version, dtype = request.param
    model = rwkv_np.load_model(tiny_path(version, dtype), keep_16bit=True)
    expected = np.fromfile(need(RWKV_CPP / f"expected-logits-{STEM[version]}.bin"), "<f4")
    return version, dtype, model, expected


def test_rwkv_cpp_expected_logits_both_modes(tiny):
    version, dtype, model, expected = tiny
    c = model.config
    assert isinstance(model, LaterRWKV) and c.version == version
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
def test_engine_equals_reference_at_every_position(version, tmp_path):
    model = rwkv_np.load_model(tiny_path(version))
    tokens = list(need(SHAKESPEARE).read_bytes()[:300])
    want, (shift, wkv) = model.reference.forward(model.params, tokens)
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


@pytest.mark.parametrize("version", list(STEM))
def test_fp16_kept_as_stored_equals_widened(version):
    path = tiny_path(version, "FP16")
    kept, wide = rwkv_np.load_model(path, keep_16bit=True), rwkv_np.load_model(path)
    assert (kept.weight_dtype, wide.weight_dtype) == ("float16", "float32")
    tokens = list(b"First Citizen:\nBefore we proceed")
    for mode in ("parallel", "recurrent"):
        close(kept.forward(tokens, mode=mode, return_all=True)[0], wide.forward(tokens, mode=mode, return_all=True)[0])


# ---- random models of every version, written as BlinkDL .pth files ----

# bfloat16 for one version only: each stored dtype is another compilation of the kernels
@pytest.mark.parametrize("version, dtype", [("5.1", "float32"), ("5.2", "float32"), ("6", "float32"),
                                            ("7", "float32"), ("7", "bfloat16")])
def test_random_pth_of_every_version(tmp_path, version, dtype):
    flat = random_flat(version, seed=3)
    stored = {k: (v[None, None] if v.ndim == 1 else v) for k, v in flat.items()}  # .pth vectors are (1, 1, C)
    path = write_torch_zip(tmp_path / "m.pth", stored, dtype=dtype)
    model = rwkv_np.load_model(path, keep_16bit=True)
    c = model.config
    assert c.version == version and (c.n_head, c.head_size, c.n_layer, c.ffn_dim) == (2, 8, 3, 24)
    assert c.ln_x_eps == 64e-5  # BlinkDL's, for every version
    ranks = {"6": {"Dm": 3, "Dd": 5}, "7": {"Dw": 4, "Da": 3, "Dv": 2, "Dg": 5}}.get(version, {})
    assert dict(c.lora) == ranks
    assert model.weight_dtype == dtype
    widened = {k: bf16_round(v) if dtype == "bfloat16" else v for k, v in flat.items()}
    tokens = list(np.random.default_rng(0).integers(0, DIMS["V"], 40))
    want, _ = model.reference.forward(to_params(widened, version), tokens)
    for mode in ("parallel", "recurrent"):
        close(model.forward(tokens, mode=mode, return_all=True)[0], want)


def test_bare_safetensors_fp16_kept_and_lazy_embedding(tmp_path):
    flat = random_flat("7", seed=5)
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(flat, dtype="float16"))
    model = rwkv_np.load_model(path, keep_16bit=True, lazy_embedding=True)
    assert model.config.version == "7" and model.checkpoint_format == "safetensors"
    assert model.weight_dtype == "float16" and type(model.weights["emb.weight"]).__name__ == "FileRows"
    widened = {k: v.astype(np.float16).astype(np.float32) for k, v in flat.items()}
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    want, _ = model.reference.forward(to_params(widened, "7"), tokens)
    for mode in ("parallel", "recurrent"):
        close(model.forward(tokens, mode=mode, return_all=True)[0], want)


def test_later_checkpoint_refusals(tmp_path):
    flat = random_flat("7")
    extra = dict(flat, **{"blocks.0.ffn.s_emb.weight": np.zeros((40, 16), np.float32)})
    path = write_torch_zip(tmp_path / "v8.pth", extra)
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['blocks.0.ffn.s_emb.weight'\].*newer") as e:
        rwkv_np.load_model(path)
    assert str(path) in str(e.value)
    bad = dict(flat)
    bad["blocks.1.att.w2"] = bad["blocks.1.att.w2"].copy()
    bad["blocks.1.att.w2"][0, 0] = np.nan
    with pytest.raises(CheckpointError, match=r"tensor blocks.1.att.w2 has 1 non-finite values"):
        rwkv_np.load_model(write_torch_zip(tmp_path / "nan.pth", bad))
    short = {k: v for k, v in flat.items() if k != "blocks.2.att.k_a"}
    with pytest.raises(CheckpointError, match=r"not an RWKV-7 checkpoint: missing tensors \['blocks.2.att.k_a'\]"):
        rwkv_np.load_model(write_torch_zip(tmp_path / "short.pth", short))
    hf = {"rwkv." + k.replace(".att.", ".attention."): v for k, v in random_flat("5.2").items()}
    with pytest.raises(CheckpointError, match="Hugging Face names on an RWKV-5.2 checkpoint"):
        rwkv_np.load_model(write_torch_zip(tmp_path / "hf.pth", hf))


def test_rwkv_class_dispatches_on_the_version():
    flat = random_flat("6")
    model = rwkv_np.RWKV(flat)  # no config: read off the weights
    assert isinstance(model, LaterRWKV) and model.config.version == "6" and model.config.n_head == 2
    tokens = [1, 5, 7, 2]
    close(model.forward(tokens, return_all=True)[0], model.reference.forward(to_params(flat, "6"), tokens)[0])
    assert type(rwkv_np.RWKV(model.weights, model.config)) is LaterRWKV


def test_state_must_fit_the_model(tmp_path):
    model = rwkv_np.load_model(write_torch_zip(tmp_path / "m.pth", random_flat("6")))
    s = model.init_state()
    assert s.data.shape == (3, 2, 16) and s.wkv.shape == (3, 2, 8, 8) and not s.wkv.any()
    with pytest.raises(ArgumentError, match="do not fit this RWKV-6 model"):
        model.forward([1], State.initial(3, 16))  # an RWKV-4 state
    with pytest.raises(ArgumentError, match="do not fit this RWKV-6 model"):
        model.forward([1], State.initial(3, 16, 4, 4))
    with pytest.raises(ArgumentError, match=r"state wkv: expected an array of shape \(3, H, N, N\)"):
        State(np.zeros((3, 2, 16)), np.zeros((2, 2, 8, 8)))
    with pytest.raises(ArgumentError, match="state wkv: contains NaN"):
        State(np.zeros((3, 2, 16)), np.full((3, 2, 8, 8), np.nan))
    with pytest.raises(ArgumentError, match=r"state: expected an array of shape \(n_layer, 2, C\)"):
        State(np.zeros((3, 5, 16)), np.zeros((3, 2, 8, 8)))


# ---- generation from the command line ----

def test_cli_generates_text_with_tiny_v7(capsys):
    code = cli.main(["generate", "--model", str(tiny_path("7")), '"in', "-n", "12", "-t", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(" the the the")  # the greedy continuation of this checkpoint


def test_cli_generates_with_a_world_vocab_v7(tmp_path, capsys):
    # a vocab-65536 RWKV-7 goes to the World tokenizer (rwkv_np.world_tokenizer)
    from rwkv_np.world_tokenizer import packaged_vocab_path

    if packaged_vocab_path() is None:
        pytest.skip("the World vocabulary rwkv_vocab_v20230424.txt is not installed (pip install rwkv)")
    flat = random_flat("7")
    flat["emb.weight"] = np.random.default_rng(0).standard_normal((65536, 16)).astype(np.float32)
    flat["head.weight"] = flat["emb.weight"] * 0.1
    path = write_torch_zip(tmp_path / "world.pth", flat)
    assert rwkv_np.load_model(path).config.vocab_size == 65536
    assert cli.main(["generate", "--model", str(path), "hello", "-n", "4", "-t", "0"]) == 0
    captured = capsys.readouterr()
    assert "generated: 4 tokens" in captured.err


def test_state_file_of_a_later_version_is_checked(tmp_path):
    good = State(np.ones((3, 2, 16)), np.full((3, 2, 8, 8), 0.5))
    good.save(tmp_path / "s.npz")
    back = State.load(tmp_path / "s.npz")
    assert back == good and back.wkv.dtype == np.float32 and not back.wkv.flags.writeable
    assert back != State(np.ones((3, 2, 16)), np.zeros((3, 2, 8, 8)))
    # the matrices of another layer count
    np.savez(tmp_path / "l.npz", rwkv_np_state=np.zeros((3, 2, 16), np.float32),
             rwkv_np_wkv=np.zeros((2, 2, 8, 8), np.float32))
    with pytest.raises(ArgumentError, match=r"l.npz: not a valid state file: its array has shape \(2, 2, 8, 8\), "
                                            r"expected \(3, H, N, N\)"):
        State.load(tmp_path / "l.npz")
    # compressed members could expand to any size: refused before reading
    np.savez_compressed(tmp_path / "c.npz", rwkv_np_state=np.zeros((3, 2, 16), np.float32),
                        rwkv_np_wkv=np.zeros((3, 2, 8, 8), np.float32))
    with pytest.raises(ArgumentError, match="c.npz: not an rwkv_np state file: its 'rwkv_np_state' array is compressed"):
        State.load(tmp_path / "c.npz")
    # a float64 wkv member is refused, not converted
    np.savez(tmp_path / "d.npz", rwkv_np_state=np.zeros((3, 2, 16), np.float32),
             rwkv_np_wkv=np.zeros((3, 2, 8, 8)))
    with pytest.raises(ArgumentError, match="d.npz: not a valid state file: its array has dtype float64"):
        State.load(tmp_path / "d.npz")


def test_prefetch_distance_changes_no_number_of_a_later_version():
    model = rwkv_np.load_model(tiny_path("7"))
    model.prefetch_bytes = 0
    without = model.forward(PROMPT, mode="recurrent")[0]
    model.prefetch_bytes = 1 << 20
    np.testing.assert_array_equal(model.forward(PROMPT, mode="recurrent")[0], without)
    from rwkv_np.kernels import PREFETCH_CHOICES

    assert model.choose_prefetch(seconds=0.01).keys() == set(PREFETCH_CHOICES)
    assert model.prefetch_bytes in PREFETCH_CHOICES
