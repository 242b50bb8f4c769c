"""rwkv_np.RWKV, the one model class of every architecture: its arguments checked by name, its forms
and chunks giving the same numbers, states never modified, warm-up and the rows' prefetch changing no
number. The numbers themselves against the references: test_rwkv4_engine.py, test_rwkv5_6_7_engine.py."""

import sys
import time

import numpy as np
import pytest

import rwkv_np
from rwkv_np import ArgumentError, RWKV, State, process, products, registry
from rwkv_np.config import RWKVConfig

from helpers import (DIMS, PROMPT, SMALL_ATOL, bf16_round, expected_model_weights, random_flat, tiny_rwkv_cpp,
                     tiny_weights, assert_close_in_float32)

MODES = ["parallel", "recurrent"]


def test_parallel_equals_recurrent_equals_uneven_chunks(small_model, small_expected):
    tokens = small_expected["tokens"]
    par, s_par = small_model.forward(tokens, mode="parallel", return_all=True)
    rec, s_rec = small_model.forward(tokens, mode="recurrent", return_all=True)
    chunks, state = [], None
    for a, b in [(0, 1), (1, 6), (6, 7), (7, 30), (30, 48)]:
        out, state = small_model.forward(tokens[a:b], state, mode="parallel", return_all=True)
        chunks.append(out)
    chunked = np.concatenate(chunks)
    # three evaluations in float32 of the same function: each within float32 rounding of the
    # exact answer, so within twice SMALL_ATOL of each other
    np.testing.assert_allclose(rec, par, rtol=0, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(chunked, par, rtol=0, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(state.data, s_par.data, rtol=1e-5, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(s_rec.data, s_par.data, rtol=1e-5, atol=2 * SMALL_ATOL)


def test_internal_chunking_of_long_inputs_gives_the_same_numbers(small_model, small_expected):
    tokens = small_expected["tokens"]
    whole, _ = small_model.forward(tokens, return_all=True)
    small_model.chunk_size = 5  # instance attribute: the class default is untouched
    try:
        chunked, _ = small_model.forward(tokens, return_all=True)
        last, _ = small_model.forward(tokens)
    finally:
        del small_model.chunk_size
    assert small_model.chunk_size == RWKV.chunk_size == 1024
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=2 * SMALL_ATOL)
    np.testing.assert_allclose(last, chunked[-1], rtol=0, atol=2 * SMALL_ATOL)


def test_last_logits_equal_last_row_of_all(small_model, small_expected):
    tokens = small_expected["tokens"]
    for mode in MODES:
        last, s1 = small_model.forward(tokens, mode=mode)
        every, s2 = small_model.forward(tokens, mode=mode, return_all=True)
        np.testing.assert_allclose(last, every[-1], rtol=0, atol=2 * SMALL_ATOL)
        assert s1 == s2


def test_forward_does_not_mutate_the_given_state(small_model):
    _, state = small_model.forward([1, 2, 3])
    before = state.data.copy()
    small_model.forward([4, 5], state, mode="parallel")
    small_model.forward([4, 5], state, mode="recurrent")
    assert np.array_equal(state.data, before)
    assert not state.data.flags.writeable


def test_saved_and_reloaded_state_continues_identically(small_model, tmp_path):
    _, state = small_model.forward([10, 20, 30, 40])
    state.save(tmp_path / "s.npz")
    reloaded = State.load(tmp_path / "s.npz")
    assert reloaded == state
    for mode in MODES:
        a, sa = small_model.forward([50, 60], state, mode=mode, return_all=True)
        b, sb = small_model.forward([50, 60], reloaded, mode=mode, return_all=True)
        assert np.array_equal(a, b) and sa == sb


def test_forward_accepts_lists_tuples_and_arrays(small_model):
    a, _ = small_model.forward([72, 105])
    b, _ = small_model.forward((72, 105))
    c, _ = small_model.forward(np.array([72, 105], dtype=np.int32))
    d, _ = small_model.forward(np.array([72.0, 105.0]))  # floats holding whole numbers
    assert np.array_equal(a, b) and np.array_equal(a, c) and np.array_equal(a, d)


@pytest.mark.parametrize("tokens, message", [
    ([256], r"tokens: id 256 at position 0 is outside the vocabulary \[0, 256\)"),
    ([3, -1], r"tokens: id -1 at position 1 is outside the vocabulary"),
    ([], r"tokens: empty"),
    ([[1, 2]], r"tokens: expected a sequence or 1-D array of ints, got shape \(1, 2\)"),
    ([1.5], r"tokens: expected integer token ids"),
    (["a"], r"tokens: expected integer token ids"),
])
def test_bad_tokens_are_refused_by_name(small_model, tokens, message):
    with pytest.raises(ArgumentError, match=message):
        small_model.forward(tokens)
    with pytest.raises(ArgumentError, match=message):  # the same check, public for callers
        small_model.check_tokens(tokens)


def test_check_tokens_gives_int64_ids(small_model):
    ids = small_model.check_tokens(np.array([3.0, 255.0]))
    assert ids.dtype == np.int64 and ids.tolist() == [3, 255]


def test_bad_mode_and_state_are_refused_by_name(small_model):
    with pytest.raises(ArgumentError, match=r"mode: expected 'parallel' or 'recurrent', got 'rnn'"):
        small_model.forward([1], mode="rnn")
    with pytest.raises(ArgumentError, match=r"state: expected an rwkv_np.State or None, got ndarray"):
        small_model.forward([1], np.zeros((2, 5, 48)))
    other = State.initial(RWKVConfig(n_layer=3, n_embd=48, vocab_size=256, ffn_dim=192))
    with pytest.raises(ArgumentError, match=r"^state: shape \(3, 5, 48\) does not fit this RWKV-4 model, "
                                            r"expected \(2, 5, 48\)$"):
        small_model.forward([1], other)


def test_what_the_model_tells_about_itself(small_model):
    c = small_model.config
    assert (c.version, small_model.arch) == ("4", registry.get("4"))
    # 6 tensors outside the blocks (emb and head V x C, four vectors), 18 per block
    assert small_model.n_params == 2 * 256 * 48 + 4 * 48 + 2 * (4 * 48 * 48 + 2 * 48 * 192 + 48 * 48 + 11 * 48)
    assert small_model.n_params == registry.get("4").n_params(c)
    assert small_model.weight_dtype == "float32"
    assert small_model.reference_options() == {"eps": 1e-5}
    assert small_model.init_state() == State.initial(c)


# ---- one class for every version -------------------------------------------------------------------

def test_one_class_reads_the_version_off_the_weights():
    flat = random_flat("6")
    model = RWKV(flat)  # no config: read off the weights
    assert type(model) is RWKV and model.config.version == "6" and model.config.n_head == 2
    assert model.config == registry.config_from_weights(flat)
    tokens = [1, 5, 7, 2]
    want, _ = model.reference.forward(registry.get("6").nest(flat), tokens, **model.reference_options())
    assert_close_in_float32(model.forward(tokens, return_all=True)[0], want)
    assert type(RWKV(model.weights, model.config)) is RWKV
    assert model.n_params == sum(a.size for a in flat.values())


def test_state_must_fit_a_later_model():
    model = RWKV(random_flat("6"))
    s = model.init_state()
    assert s.data.shape == (3, 2, 16) and s.wkv.shape == (3, 2, 8, 8) and not s.wkv.any()
    rwkv4 = State.initial(RWKVConfig(n_layer=3, n_embd=16, vocab_size=40, ffn_dim=24))
    with pytest.raises(ArgumentError, match=r"^state: shapes \(\(3, 5, 16\), None\) do not fit this RWKV-6 model, "
                                            r"expected \(\(3, 2, 16\), \(3, 2, 8, 8\)\)$"):
        model.forward([1], rwkv4)
    other_heads = State.initial(RWKVConfig(n_layer=3, n_embd=16, vocab_size=40, ffn_dim=24, version="6",
                                           n_head=4, head_size=4))
    with pytest.raises(ArgumentError, match=r"state: shapes \(\(3, 2, 16\), \(3, 4, 4, 4\)\) do not fit this RWKV-6"):
        model.forward([1], other_heads)


# ---- speed settings change no number ------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights():
    raw = tiny_weights(n_layer=3, C=64, V=100, F=256, seed=1)
    return {k: (bf16_round(v) if v.ndim == 2 else v) for k, v in expected_model_weights(raw).items()}


TOKENS = np.random.default_rng(3).integers(0, 100, 60)
ATOL = 2e-5  # float32 evaluations of one function by two routes (test_rwkv4_engine.RANDOM_ATOL)


def test_warm_up_and_releasing_the_compiler_change_no_number(weights):
    model = RWKV(weights)
    before = model.forward(TOKENS, mode="recurrent", return_all=True)[0]
    model.warm_up(release_compiler=False)
    # Linux: libllvmlite's code is mapped, so there is something to advise (elsewhere: nothing)
    released = process.release_compiler_pages()
    assert released > 0 if sys.platform.startswith("linux") else released == 0
    for mode in MODES:  # the kernels run as before, and compile again if they must
        np.testing.assert_allclose(model.forward(TOKENS, mode=mode, return_all=True)[0], before, rtol=0, atol=ATOL)
    np.testing.assert_array_equal(model.forward(TOKENS, mode="recurrent", return_all=True)[0], before)


def test_choose_prefetch_keeps_the_faster_and_changes_no_number(weights, monkeypatch):
    model = RWKV(weights)
    before = model.forward(TOKENS, mode="recurrent", return_all=True)[0]
    assert model.prefetch_bytes == products.PREFETCH_BYTES  # until timed
    forward = model.forward
    for slow in products.PREFETCH_CHOICES:
        def timed(*args, slow=slow, **kw):  # one choice made 5 ms slower per token than the other
            if model.prefetch_bytes == slow:
                time.sleep(0.005)
            return forward(*args, **kw)
        monkeypatch.setattr(model, "forward", timed)
        medians = model.choose_prefetch(seconds=0.01)
        assert set(medians) == set(products.PREFETCH_CHOICES)
        assert medians[slow] > max(t for c, t in medians.items() if c != slow) + 0.004
        assert model.prefetch_bytes != slow
        monkeypatch.setattr(model, "forward", forward)
        np.testing.assert_array_equal(model.forward(TOKENS, mode="recurrent", return_all=True)[0], before)
    for bad in (-1, 1.5, True, "6144"):
        with pytest.raises(ArgumentError, match="prefetch_bytes: expected a whole number of bytes >= 0"):
            model.prefetch_bytes = bad
    with pytest.raises(ArgumentError, match="choices: expected at least one prefetch distance"):
        model.choose_prefetch(choices=[])
    with pytest.raises(ArgumentError, match="choices: expected a whole number of bytes >= 0, got -6144"):
        model.choose_prefetch(choices=[0, -6144])
    untimed = RWKV(weights)
    untimed.warm_up(release_compiler=False, choose_prefetch=False)
    assert untimed.prefetch_bytes == products.PREFETCH_BYTES


def test_prefetch_distance_changes_no_number_of_a_later_version():
    model = rwkv_np.load_model(tiny_rwkv_cpp("7"))
    model.prefetch_bytes = 0
    without = model.forward(PROMPT, mode="recurrent")[0]
    model.prefetch_bytes = 1 << 20
    np.testing.assert_array_equal(model.forward(PROMPT, mode="recurrent")[0], without)
    assert model.choose_prefetch(seconds=0.01).keys() == set(products.PREFETCH_CHOICES)
    assert model.prefetch_bytes in products.PREFETCH_CHOICES


def test_a_later_versions_random_model_has_the_tables_sizes():
    model = RWKV(random_flat("7"))
    c = model.config
    assert (c.n_layer, c.n_embd, c.vocab_size, c.ffn_dim, c.n_head, c.head_size) == (3, 16, 40, 24, 2, 8)
    assert dict(c.lora) == {k: DIMS[k] for k in ("Dw", "Da", "Dv", "Dg")}
    assert c.reference_options() == model.reference_options() == {"eps": 1e-5, "ln_x_eps": 64e-5}
