"""Many sequences at once: `RWKV.step_batch` (the recurrent form over a batch, engine.batch) and each
reference's `step_batch` give every sequence the logits and state it gets alone, at every position,
with sequences of different lengths joining and leaving the batch and states forked from one prompt;
for every architecture, and for RWKV-4's weights kept 16-bit and int8. Bad arguments are refused by
name. The benchmark's smoke run is in tests/test_benchmarks.py's style, below, in the slow tier.

Tolerance: RWKV-4's batch multiplies with products.matmat up to Engine.FUSED_MAX sequences and by BLAS
beyond (both paths are run), the later versions' by BLAS, where a sequence alone goes through the
recurrent kernels' dot products (or, for the reference, NumPy's matrix-vector products): the same
float32 function with the sums in another order, which helpers.close_in_float32 bounds (1e-5 of the
largest magnitude: ~sqrt(K) 2^-24 per product, a few layers deep), while a state carried into the
wrong sequence moves the logits by O(1) (checked below: a swap is caught).
"""

import subprocess
import sys

import numpy as np
import pytest

from rwkv_np import ArgumentError, RWKV, State
from rwkv_np.products import matmat
from rwkv_np.quantize import Int8Matrix, kernel_array
from rwkv_np.rwkv4.engine import Engine

from helpers import (LATER, REPO, assert_close_in_float32, bf16_round, close_in_float32, expected_model_weights,
                     random_flat, tiny_weights)

VERSIONS = ("4",) + LATER


def model_of(version: str, kind: str = "float32") -> RWKV:
    if version == "4":
        weights = expected_model_weights(tiny_weights(n_layer=3, C=64, V=100, F=256, seed=1))
    else:
        weights = random_flat(version, seed=2)
    if kind == "bfloat16":
        weights = {k: (bf16_round(v).view(np.uint32) >> 16).astype(np.uint16) if v.ndim == 2 else v
                   for k, v in weights.items()}
    elif kind == "int8":
        weights = {k: Int8Matrix.quantize(v) if v.ndim == 2 and k != "emb.weight" else v for k, v in weights.items()}
    model = RWKV(weights)
    assert model.weight_dtype == kind
    return model


def schedule(model, seed=0):
    """Five sequences: three from scratch of lengths 7, 3 and 5, two forked from one 4-token prompt
    (lengths 6 and 2), the short ones leaving the batch early, one joining it late (at step 2)."""
    rng = np.random.default_rng(seed)
    V = model.config.vocab_size
    _, prompt_state = model.forward(rng.integers(0, V, 4))
    starts = [None, None, None, prompt_state, prompt_state]
    begin = [0, 0, 2, 0, 0]
    tokens = [rng.integers(0, V, n) for n in (7, 3, 5, 6, 2)]
    return starts, begin, tokens


def run_batched(model, starts, begin, tokens, reference=False):
    """Step every running sequence together; {(sequence, position): logits} and the final states."""
    states, got = list(starts), {}
    for step in range(max(b + len(t) for b, t in zip(begin, tokens))):
        running = [s for s in range(len(tokens)) if begin[s] <= step < begin[s] + len(tokens[s])]
        logits, after = model.step_batch([tokens[s][step - begin[s]] for s in running],
                                         [states[s] for s in running], reference=reference)
        assert logits.shape == (len(running), model.config.vocab_size) and logits.dtype == np.float32
        for row, s in enumerate(running):
            got[s, step - begin[s]] = logits[row]
            states[s] = after[row]
    return got, states


def run_alone(model, starts, tokens, reference=False):
    got, states = {}, []
    for s, (start, toks) in enumerate(zip(starts, tokens)):
        state = start if not reference or start is None else (start.data if start.wkv is None else
                                                                 (start.data, start.wkv))
        for pos, tok in enumerate(toks):
            if reference:
                logits, state = model.reference.step(model.params, int(tok), state, **model.reference_options())
            else:
                logits, state = model.forward([tok], state, mode="recurrent")
            got[s, pos] = logits
        states.append(state)
    return got, states


def assert_same_sequences(batched, alone):
    assert batched.keys() == alone.keys()
    for key in alone:
        assert_close_in_float32(batched[key], alone[key])


@pytest.fixture(params=["matmat", "BLAS"])
def rwkv4_product(request, monkeypatch):
    """RWKV-4's batch both ways: products.matmat (the default up to FUSED_MAX sequences) and BLAS."""
    if request.param == "BLAS":
        monkeypatch.setattr(Engine, "FUSED_MAX", 0)
    return request.param


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_matmat_is_the_product_to_float32_rounding(kind):
    """matmat(w, s, x) = x @ W.T, W the stored weights as float32 (bf16 widened exactly; int8 q * scale,
    one rounding, as dequantize_into). Any order of K float32 additions is within K 2^-24 sum |w x| of
    the exact sum (the classic bound gamma_K); N = 10 leaves two rows past the blocks of four, K = 100
    a partial block of scales."""
    rng = np.random.default_rng(3)
    N, K = 10, 100
    w = rng.standard_normal((N, K)).astype(np.float32)
    if kind == "bfloat16":
        w = (bf16_round(w).view(np.uint32) >> 16).astype(np.uint16)
        wide = (w.astype(np.uint32) << 16).view(np.float32)
    elif kind == "int8":
        w = Int8Matrix.quantize(w)
        wide = np.asarray(w)
    else:
        wide = w
    scales = w.scales if kind == "int8" else np.zeros((1, 1), np.float32)
    for B in (1, 3, 17):
        x = rng.standard_normal((B, K)).astype(np.float32)
        out = np.full((B, N), np.nan, np.float32)
        matmat(kernel_array(w), scales, x, out)
        exact = x.astype(np.float64) @ wide.astype(np.float64).T
        bound = K * 2.0 ** -24 * (np.abs(x).astype(np.float64) @ np.abs(wide).astype(np.float64).T)
        assert np.all(np.abs(out - exact) <= bound), (kind, B)


# the later versions in the slow tier (compiling their kernels is most of a fresh clone's fast tier)
@pytest.mark.parametrize("version, product", [("4", "matmat"), ("4", "BLAS")]
                         + [pytest.param(v, "BLAS", marks=pytest.mark.slow) for v in LATER])
def test_every_sequence_gets_its_own_logits_at_every_position(version, product, monkeypatch):
    if product == "BLAS":  # RWKV-4 multiplies with products.matmat up to FUSED_MAX sequences by default
        monkeypatch.setattr(Engine, "FUSED_MAX", 0)
    model = model_of(version)
    starts, begin, tokens = schedule(model)
    got, states = run_batched(model, starts, begin, tokens)
    want, want_states = run_alone(model, starts, tokens)
    assert_same_sequences(got, want)
    for st, ws in zip(states, want_states):
        assert_close_in_float32(st.data, ws.data)
        if ws.wkv is not None:
            assert_close_in_float32(st.wkv, ws.wkv)
    # the forked prompt state was read by two sequences and written by neither
    _, prompt_state = model.forward(np.random.default_rng(0).integers(0, model.config.vocab_size, 4))
    assert starts[3] == prompt_state


@pytest.mark.parametrize("version", VERSIONS)
def test_the_reference_over_a_batch_equals_the_reference_alone(version):
    model = model_of(version)
    starts, begin, tokens = schedule(model, seed=1)
    got, states = run_batched(model, starts, begin, tokens, reference=True)
    want, want_states = run_alone(model, starts, tokens, reference=True)
    assert_same_sequences(got, want)
    for st, ws in zip(states, want_states):
        assert_close_in_float32(st.data, ws if st.wkv is None else ws[0])
    # and the reference's batch is the engine's batch, position by position
    fast, _ = run_batched(model, starts, begin, tokens)
    assert_same_sequences(got, fast)


@pytest.mark.slow  # matmat's 16-bit and int8 products are checked in the fast tier, above
@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_16bit_and_int8_weights_in_a_batch(kind, rwkv4_product):
    """Kept 16-bit, the batch widens each weight exactly (matmat a block of rows at a time, or the whole
    matrix for BLAS); int8 dequantizes it (q * scale, one rounding) where the recurrent kernel scales each
    product: both within float32 rounding of alone."""
    model = model_of("4", kind)
    starts, begin, tokens = schedule(model, seed=2)
    assert_same_sequences(run_batched(model, starts, begin, tokens)[0], run_alone(model, starts, tokens)[0])


def test_a_state_in_the_wrong_sequence_would_be_caught():
    model = model_of("4")
    rng = np.random.default_rng(4)
    states = [model.forward(rng.integers(0, 100, 8))[1] for _ in range(3)]
    logits, _ = model.step_batch([5, 5, 5], states)
    alone = [model.forward([5], st, mode="recurrent")[0] for st in states]
    assert all(close_in_float32(logits[b], alone[b]) for b in range(3))
    assert not close_in_float32(logits[0], alone[1])  # the check has teeth: another state is O(1) away


def test_one_sequence_is_the_recurrent_form_exactly():
    model = model_of("4")
    _, state = model.forward([1, 2, 3])
    logits, (after,) = model.step_batch([7], [state])
    want, want_state = model.forward([7], state, mode="recurrent")
    np.testing.assert_array_equal(logits[0], want)
    assert after == want_state


def test_states_none_starts_every_sequence_fresh():
    model = model_of("5.2")
    logits, states = model.step_batch([1, 2])
    assert len(states) == 2 and isinstance(states[0], State)
    assert_close_in_float32(logits[1], model.forward([2], mode="recurrent")[0])


def test_bad_arguments_are_refused_by_name():
    model, other = model_of("4"), model_of("5.1")
    with pytest.raises(ArgumentError, match=r"^states: expected 2 states \(one per token\), got 3$"):
        model.step_batch([1, 2], [None] * 3)
    with pytest.raises(ArgumentError, match=r"^states: expected a list of 2 rwkv_np.State"):
        model.step_batch([1, 2], model.init_state())
    with pytest.raises(ArgumentError, match=r"^states\[1\]: shapes .* do not fit this RWKV-4 model"):
        model.step_batch([1, 2], [None, other.init_state()])
    with pytest.raises(ArgumentError, match=r"^states\[0\]: expected an rwkv_np.State or None, got ndarray"):
        model.step_batch([1, 2], [np.zeros(3), None])
    with pytest.raises(ArgumentError, match=r"^tokens: id 100 at position 1 is outside the vocabulary"):
        model.step_batch([1, 100])
    with pytest.raises(ArgumentError, match=r"^tokens: empty"):
        model.step_batch([])


@pytest.mark.slow
def test_batch_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "batch.py"), "--small", "--steps", "2",
                          "--batches", "1", "4", "16", "--json", str(tmp_path / "b.json")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| fp32 |" in out.stdout and "| int8 |" in out.stdout and "load average before" in out.stdout


# ---- generate --samples and perplexity's windows in batches: the users of step_batch ------------------

@pytest.fixture(scope="module")
def shipped():
    import rwkv_np
    from helpers import ASSET

    return rwkv_np.load_model(ASSET)


def test_samples_are_each_their_own_seeded_generation(shipped):
    from rwkv_np.generate import generate, generate_samples
    from rwkv_np.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    samples = generate_samples(shipped, tok, "ROMEO:", 3, max_tokens=40, temperature=0.8, top_p=0.9, seed=7,
                               stop=("\n\n",))
    assert len({s.text for s in samples}) == 3  # three different continuations
    # sample i is what one generation drawing from the i-th child of the seed gives alone (the batch's
    # logits equal the lone ones to float32 rounding, far from moving a draw)
    for s, child in zip(samples, np.random.SeedSequence(7).spawn(3)):
        alone = generate(shipped, tok, "ROMEO:", max_tokens=40, temperature=0.8, top_p=0.9, stop=("\n\n",),
                         rng=np.random.default_rng(child))
        assert s.text == alone.text and s.tokens == alone.tokens and s.stop_reason == alone.stop_reason
        assert close_in_float32(s.state.data, alone.state.data)
    again = generate_samples(shipped, tok, "ROMEO:", 3, max_tokens=40, temperature=0.8, top_p=0.9, seed=7,
                             stop=("\n\n",))
    assert [s.text for s in again] == [s.text for s in samples]
    greedy = generate_samples(shipped, tok, "ROMEO:", 2, max_tokens=20, temperature=0)
    assert greedy[0].text == greedy[1].text == generate(shipped, tok, "ROMEO:", max_tokens=20, temperature=0).text
    with pytest.raises(ArgumentError, match=r"^n \(samples\) must be an integer in \[1, 4096\], got 0$"):
        generate_samples(shipped, tok, "ROMEO:", 0)


def test_generate_samples_on_the_command_line(capsys):
    from rwkv_np import cli

    assert cli.main(["generate", "ROMEO:", "--samples", "3", "-n", "30", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    headers = [line for line in out.splitlines() if line.startswith("=====")]
    assert headers == [f"===== sample {i} of 3 =====" for i in (1, 2, 3)]
    assert "(3 samples together)" in err and "generated: " in err
    assert cli.main(["generate", "ROMEO:", "--samples", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --samples: an integer in [1, 4096], got 0"


def test_perplexity_windows_in_batches(shipped, capsys):
    """Each window's losses read in a batch are those it gets alone in the recurrent form: a loss is
    -log softmax of the logits, which moves by at most twice the largest logit change (within
    close_in_float32's 1e-5 of the logits' scale)."""
    from rwkv_np import cli
    from rwkv_np import perplexity as P
    from helpers import ASSET

    tokens = np.random.default_rng(5).integers(0, 256, 300)
    for ctx, stride in [(64, None), (50, 13)]:
        calls = P.plan(len(tokens), ctx, stride, False)
        got = P.batch_losses(shipped, tokens, calls)
        for (a, b, first), losses in zip(calls, got):
            alone, _ = P.call_losses(shipped, tokens, a, b, first, None, "recurrent")
            scale = np.abs(shipped.forward(tokens[a:b], mode="recurrent", return_all=True)[0]).max()
            assert np.abs(losses - alone).max() <= 2e-5 * max(1.0, scale)
        one = P.evaluate(shipped, tokens, np.ones(256, np.int64), ctx=ctx, stride=stride, mode="recurrent")
        many = P.evaluate(shipped, tokens, np.ones(256, np.int64), ctx=ctx, stride=stride, batch=4)
        assert (many.tokens, many.bytes, many.processed) == (one.tokens, one.bytes, one.processed)
        assert many.nats == pytest.approx(one.nats, rel=1e-6)
    with pytest.raises(ArgumentError, match=r"^batch: windows read at once, an integer >= 1, got 0$"):
        P.evaluate(shipped, tokens, np.ones(256, np.int64), ctx=64, batch=0)
    data = REPO / "README.md"
    assert cli.main(["perplexity", "--data", str(data), "--mode", "recurrent", "--ctx", "64", "--max-tokens",
                     "400", "--model", str(ASSET)]) == 0
    assert "16 windows at a time (the recurrent form over a batch)" in capsys.readouterr().out
