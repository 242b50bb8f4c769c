"""rwkv_np.analysis: the notebooks' helpers, each checked against a number worked out by hand or an
independent computation."""

import json

import numpy as np
import pytest

from rwkv_np import RWKV, RWKVConfig
from rwkv_np import analysis as A
from rwkv_np.errors import ArgumentError
from rwkv_np.rwkv4 import reference
from rwkv_np.rwkv4.eq14 import wkv_naive
from rwkv_np.rwkv4.params import random_weights
from rwkv_np.rwkv4.reference import layer_norm

from helpers import empty_state

L, C, V, F = 2, 16, 32, 64


def random_model(seed: int = 0) -> RWKV:
    """A small model with trained-looking weights (rwkv_np.rwkv4.params.random_weights: decays e^-6..e^2,
    mu in (0, 1), non-zero FFN), mu kept away from 0 and 1 so every ablation below changes something."""
    config = RWKVConfig(n_layer=L, n_embd=C, vocab_size=V, ffn_dim=F)
    w = random_weights(config, seed)
    for k in w:
        if ".time_mix_" in k:
            w[k] = 0.05 + 0.9 * w[k]
    return RWKV(w)


@pytest.fixture(scope="module")
def model():
    return random_model()


TOKENS = np.random.default_rng(1).integers(0, V, 40)


def logits_of(m, tokens=TOKENS):
    return m.forward(tokens, return_all=True)[0]


def reference_logits(m, tokens=TOKENS):
    """rwkv_np.rwkv4.reference.forward: built from the functions the tests patch."""
    return reference.forward(m.params, tokens)[0]


# ------------------------------------------------------------------------- trace / implied attention

def test_trace_reproduces_the_models_logits(model):
    tr = A.trace(model, TOKENS)
    P = model.params
    x = layer_norm(P["emb"][TOKENS], **P["ln0"])
    for d in tr:
        x = x + d["att_out"] + d["ffn_out"]
    logits = layer_norm(x, **P["ln_out"]) @ P["head"].T
    # same float32 operations in the same order as model.forward: identical up to BLAS blocking
    np.testing.assert_allclose(logits, logits_of(model), atol=1e-5)
    assert tr[1]["ffn_hidden"].shape == (len(TOKENS), F)
    assert (tr[1]["ffn_hidden"] >= 0).all()


def test_trace_keeps_what_each_layer_computes(model):
    """What reference.forward's `record=` argument used to collect, now from trace: per layer the
    keys and shapes, w = e^time_decay, and eq. 14 over its k and v leaves the state forward returns."""
    tr = A.trace(model, TOKENS)
    _, state = reference.forward(model.params, TOKENS)
    assert len(tr) == L
    for i, d in enumerate(tr):
        a = model.params["blocks"][i]["att"]
        assert {"x_att", "r", "k", "v", "w", "wkv", "att_out", "x_ffn", "ffn_r", "ffn_k", "ffn_hidden",
                "ffn_out"} <= set(d)
        assert d["k"].shape == (len(TOKENS), C) and d["ffn_hidden"].shape == (len(TOKENS), F)
        np.testing.assert_array_equal(d["w"], np.exp(a["time_decay"]))
        _, (aa, bb, pp) = reference.wkv(d["w"], a["time_first"], d["k"], d["v"], *empty_state(C, np.float32))
        np.testing.assert_array_equal(pp, state[i, reference.PP])
        np.testing.assert_array_equal(bb, state[i, reference.BB])
        np.testing.assert_array_equal(d["x_att"][-1], state[i, reference.ATT_X])
        np.testing.assert_array_equal(d["x_ffn"][-1], state[i, reference.FFN_X])


def test_trace_wkv_is_eq14_of_its_k_and_v(model):
    d = A.trace(model, TOKENS)[1]
    a = model.params["blocks"][1]["att"]
    ref = wkv_naive(np.exp(a["time_decay"].astype(np.float64)), a["time_first"].astype(np.float64),
                    d["k"].astype(np.float64), d["v"].astype(np.float64))
    # |v| ~ 1 and wkv is a convex combination of v's; the reference runs eq. 14 in float32, rounding its
    # state each token (T = 40): ~T eps relative, 5e-6, bounded here by 1e-5
    np.testing.assert_allclose(d["wkv"], ref, atol=1e-5)


def test_implied_attention_hand_worked():
    # w = ln 2, u = 0, k = 0: the token one step back weighs e^{-0 w} = 1, two back e^{-ln2} = 0.5
    a = A.implied_attention(np.log(2), 0.0, np.zeros(3))
    expected = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.4, 0.4]])
    np.testing.assert_allclose(a, expected, atol=1e-15)


def test_implied_attention_times_v_is_wkv(model):
    d = A.trace(model, TOKENS)[0]
    a = model.params["blocks"][0]["att"]
    for c in (0, 7, 15):
        attn = A.implied_attention(d["w"][c], a["time_first"][c], d["k"][:, c])
        np.testing.assert_allclose(attn.sum(1), 1.0, atol=1e-12)
        assert np.all(np.triu(attn, 1) == 0)
        np.testing.assert_allclose(attn @ d["v"][:, c].astype(np.float64), d["wkv"][:, c], atol=1e-5)


def test_current_token_share():
    # e^0 / (e^0 + 1 + 0.5) = 0.4 with two past tokens at w = ln 2
    assert A.current_token_share(0.0, np.log(2), 2) == pytest.approx(0.4, abs=1e-15)
    assert A.current_token_share(-3.0, 0.5, 0) == 1.0  # nothing to share with
    # w = 0: n equal past weights
    assert A.current_token_share(np.log(3), 0.0, 6) == pytest.approx(3 / 9, abs=1e-15)


def test_half_life_and_decays(model):
    np.testing.assert_allclose(A.half_life([np.log(2), np.log(2) / 10]), [1.0, 10.0], rtol=1e-15)
    d = A.decays(model)
    assert d.shape == (L, C)
    np.testing.assert_array_equal(d[1], np.exp(model.weights["blocks.1.att.time_decay"].astype(np.float64)))
    np.testing.assert_array_equal(A.layer_param(model, "ffn.time_mix_k")[0], model.weights["blocks.0.ffn.time_mix_k"])


# ------------------------------------------------------------------------- ablations

def test_u_no_bonus_is_past_only_and_v0_at_the_start(model):
    ablated = A.with_time_first(model, A.U_NO_BONUS)
    assert np.all(model.weights["blocks.0.att.time_first"] != A.U_NO_BONUS)  # original untouched
    d = A.trace(ablated, TOKENS)[0]
    w = d["w"].astype(np.float64)
    k, v = d["k"].astype(np.float64), d["v"].astype(np.float64)
    np.testing.assert_allclose(d["wkv"][0], v[0], atol=1e-6)  # the only token there is
    for t in (1, 5, 39):
        weights = np.exp(-(t - 1 - np.arange(t))[:, None] * w + k[:t])  # past only, no current token
        np.testing.assert_allclose(d["wkv"][t], (weights * v[:t]).sum(0) / weights.sum(0), atol=1e-5)
    assert np.isfinite(logits_of(ablated)).all()
    # literal -inf: with an empty past eq. 14 is 0/0 at t = 0 -- why U_NO_BONUS is finite
    with np.errstate(invalid="ignore"):
        assert np.isnan(wkv_naive(w, np.full(C, -np.inf), k[:3], v[:3])[0]).all()


def test_with_time_first_per_layer(model):
    m = A.with_time_first(model, 0.0, layers=[1])
    assert np.all(m.weights["blocks.1.att.time_first"] == 0)
    np.testing.assert_array_equal(m.weights["blocks.0.att.time_first"], model.weights["blocks.0.att.time_first"])
    assert not np.allclose(logits_of(m), logits_of(model), atol=1e-3)


def test_mu_one_equals_a_model_without_token_shift(model, monkeypatch):
    m = A.without_token_shift(model)
    ablated = reference_logits(m)
    # independent: the original weights, with the interpolation replaced by "the current token only"
    monkeypatch.setattr(reference, "mix", lambda x, x_shift, mu: x)
    # x * 1 + x_prev * 0 is exactly x in floating point, so the two agree bit for bit
    np.testing.assert_array_equal(ablated, reference_logits(model))
    # and the compiled forward of the ablated model computes the same (float32 kernels vs NumPy: ~1e-6)
    monkeypatch.undo()
    np.testing.assert_allclose(logits_of(m), ablated, atol=1e-5)


def test_mu_one_in_one_layer_and_one_part(model):
    m = A.without_token_shift(model, layers=1, parts=("att",))
    assert all(np.all(m.weights[f"blocks.1.att.time_mix_{x}"] == 1) for x in "kvr")
    np.testing.assert_array_equal(m.weights["blocks.1.ffn.time_mix_k"], model.weights["blocks.1.ffn.time_mix_k"])
    np.testing.assert_array_equal(m.weights["blocks.0.att.time_mix_k"], model.weights["blocks.0.att.time_mix_k"])
    d0, d1 = A.trace(model, TOKENS), A.trace(m, TOKENS)
    np.testing.assert_array_equal(d1[0]["att_out"], d0[0]["att_out"])  # layer 0 untouched
    a = m.params["blocks"][1]["att"]
    np.testing.assert_allclose(d1[1]["k"], d1[1]["x_att"] @ a["key"].T, atol=1e-6)


def test_without_sublayer_equals_skipping_it(model, monkeypatch):
    for part, fn in (("att", "time_mixing"), ("ffn", "channel_mixing")):
        ablated = A.without_sublayer(model, 1, part)
        tr = A.trace(ablated, TOKENS)
        assert np.all(tr[1][f"{part}_out"] == 0)
        target = model.params["blocks"][1][part]
        original = getattr(reference, fn)

        def skip(*args, original=original, target=target, **params):
            out, new_state = original(*args, **params)
            return (np.zeros_like(out) if params["key"] is target["key"] else out), new_state

        with monkeypatch.context() as mp:
            mp.setattr(reference, fn, skip)
            np.testing.assert_array_equal(reference_logits(ablated), reference_logits(model))
        np.testing.assert_allclose(logits_of(ablated), reference_logits(ablated), atol=1e-5)


def test_ablation_arguments_are_checked(model):
    with pytest.raises(ArgumentError, match="layers: 2 is not a layer"):
        A.with_time_first(model, 0.0, layers=[2])
    with pytest.raises(ArgumentError, match="parts: expected 'att' and/or 'ffn', got 'ffm'"):
        A.without_token_shift(model, parts=("ffm",))
    with pytest.raises(ArgumentError, match="part: expected 'att' or 'ffn'"):
        A.without_sublayer(model, 0, "mlp")


# ------------------------------------------------------------------------- losses and data

def test_uniform_model_loss_is_ln_vocab(model):
    w = dict(model.weights, **{"head.weight": np.zeros((V, C), np.float32)})
    assert A.heldout_loss(RWKV(w), TOKENS, ctx=7) == pytest.approx(np.log(V), abs=1e-12)
    assert A.bits(np.log(2)) == pytest.approx(1.0, abs=1e-15)


def test_token_losses_windows_from_fresh_states(model):
    tokens = TOKENS[:12]
    got = A.token_losses(model, tokens, ctx=5)
    expected = []
    for start in (0, 5, 10):  # windows [0:6], [5:11], [10:12]: 5 + 5 + 1 predictions
        window = tokens[start:start + 6]
        state = None
        for j in range(len(window) - 1):
            logits, state = model.forward([window[j]], state, mode="recurrent")
            z = logits.astype(np.float64)
            expected.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[window[j + 1]])
    assert got.shape == (11,)
    # parallel vs recurrent float32 logits agree to ~1e-6; the log-softmax adds no more
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ArgumentError, match="ctx must be >= 1"):
        A.token_losses(model, tokens, ctx=0)


def test_heldout_tokens_are_the_last_tenth(tmp_path):
    f = tmp_path / "text.txt"
    data = bytes(range(200)) * 5  # 1000 bytes: held out from 900
    f.write_bytes(data)
    np.testing.assert_array_equal(A.heldout_tokens(50, f), np.frombuffer(data[900:950], np.uint8))
    assert len(A.heldout_tokens(500, f)) == 100
    assert A.heldout_tokens(10, tmp_path / "missing.txt") is None


def test_training_context_from_metadata(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert A.training_context(ckpt, default=99) == 99
    (tmp_path / "m.json").write_text(json.dumps({"train": {"args": {"ctx_len": 384}}}))
    assert A.training_context(ckpt) == 384


def test_model_paths_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_NP_NOTEBOOK_MODEL", str(tmp_path / "x.safetensors"))
    assert A.default_model_path() == tmp_path / "x.safetensors"
    monkeypatch.setenv("RWKV_NP_MODEL", str(tmp_path))
    assert A.pile_model_path() == tmp_path
    monkeypatch.setenv("RWKV_NP_MODEL", str(tmp_path / "nothing-here"))
    assert A.pile_model_path() is None


# ------------------------------------------------------------------------- sizes and timings

def test_parameter_counts():
    p = A.token_mixing_params(T=1024, C=768)
    assert p == {"attention": 4 * 768 ** 2, "AFT-full": 4 * 768 ** 2 + 1024 ** 2, "RWKV-4": 4 * 768 ** 2 + 5 * 768}
    assert p["attention"] == 2_359_296 and p["AFT-full"] == 3_407_872


def test_state_and_kv_cache_sizes():
    assert A.rwkv_state_bytes(12, 768) == 184_320  # 169M Pile model: 5 x 12 x 768 float32
    assert A.kv_cache_bytes(12, 768, 1024) == 75_497_472  # 2 x 12 x 1024 x 768 x 4 bytes
    assert A.kv_cache_bytes(12, 768, 1) * 5 == A.rwkv_state_bytes(12, 768) * 2


def test_timing_helpers(model):
    t = A.wkv_timings([8, 16], C=4, repeat=1, naive_repeat=1, naive_max=8)
    np.testing.assert_array_equal(t["T"], [8, 16])
    assert t["naive"][0] > 0 and np.isnan(t["naive"][1]) and (t["recurrent"] > 0).all() and (t["inplace"] > 0).all()
    assert (t["fresh"] > 0).all() and t["faults"].shape == t["faults_inplace"].shape == t["faults_fresh"].shape == (2,)
    p = A.parallel_wkv_timings([5, 40], C=3, chunk=8, repeat=1)
    forms = ("compiled scan", "NumPy scan", "associative scan", "chunks")
    assert all((p[f] > 0).all() for f in forms)
    np.testing.assert_array_equal(p["steps"]["associative scan"], [3, 6])  # ceil(log2 T)
    np.testing.assert_array_equal(p["steps"]["chunks"], [1, 5])
    # every form computes the same eq. 14: float32 rounding apart from the compiled scan (values ~1)
    assert all(p["max_diff"][f].max() < 1e-5 for f in forms)
    steps = A.recurrent_step_times(model, TOKENS[:5])
    assert steps.shape == (5,) and (steps > 0).all()
    assert A.attention_step_seconds(T=10, C=8, n_layer=2, repeat=1) > 0
    assert A.best_time(lambda: None, repeat=2) >= 0


def test_current_token_weights_are_the_attention_diagonal(model):
    shares = A.current_token_weights(model, TOKENS)
    assert len(shares) == L and shares[0].shape == (len(TOKENS), C)
    np.testing.assert_array_equal(shares[1][0], 1.0)  # t = 0: no past to share with
    d = A.trace(model, TOKENS)[1]
    a = model.params["blocks"][1]["att"]
    for c in (3, 11):
        diag = np.diag(A.implied_attention(d["w"][c], a["time_first"][c], d["k"][:, c]))
        np.testing.assert_allclose(shares[1][:, c], diag, rtol=1e-12)  # two float64 routes


def test_causal_attention_hand_worked_and_timed():
    # q = 0: every allowed position scores 0, so row t is the plain mean of v_0..v_t
    v = np.arange(6, dtype=np.float64).reshape(3, 2)
    out = A.causal_attention(np.zeros((3, 2)), np.ones((3, 2)), v)
    np.testing.assert_allclose(out, [[0, 1], [1, 2], [2, 3]], atol=1e-15)
    t = A.attention_timings([4, 8], C=2, repeat=1)
    assert t.shape == (2,) and (t > 0).all()


def test_unigram_loss_hand_worked():
    # counts of [0, 0, 1] plus one each: 3 and 2 of 5 -> ln(5/3) and ln(5/2) nats
    assert A.unigram_loss([0, 1], [0, 0, 1], vocab=2) == pytest.approx((np.log(5 / 3) + np.log(5 / 2)) / 2, rel=1e-12)
    # an id never seen in training costs ln(len(train) + vocab), finite
    assert A.unigram_loss([3], [0, 0, 1], vocab=4) == pytest.approx(np.log(7), rel=1e-12)
    with pytest.raises(ArgumentError, match="ids must lie"):
        A.unigram_loss([5], [0], vocab=4)
    with pytest.raises(ArgumentError, match="non-empty"):
        A.unigram_loss([], [0])


def test_initial_params_follow_the_schedule():
    config = RWKVConfig(n_layer=3, n_embd=8, vocab_size=V, ffn_dim=32)
    m0 = RWKV(A.initial_params(RWKV(random_weights(config, 0))))
    # the decay schedule written out in analysis is the trainer's, to float32 rounding of values up to 3
    np.testing.assert_allclose(A.initial_layer_param(m0, "att.time_decay"), A.decay_schedule(3, 8), atol=5e-7)
    # a model still at its initial values correlates perfectly with them; noise lowers the correlation
    np.testing.assert_allclose(A.init_correlation(m0, "att.time_decay"), 1.0, atol=1e-6)
    w = dict(m0.weights)
    w["blocks.1.att.time_decay"] = w["blocks.1.att.time_decay"][::-1].copy()  # channels reversed
    r = A.init_correlation(RWKV(w), "att.time_decay")
    assert r[0] == pytest.approx(1.0, abs=1e-6) and r[1] < -0.8


def test_palette_tells_trained_initial_and_ablated_apart():
    assert len({A.PALETTE[k] for k in ("trained", "initial", "ablated", "unigram")}) == 4
    assert A.layer_colors(5).shape == (5, 4)


def test_eq14_weights_are_implied_attention_for_every_channel():
    rng = np.random.default_rng(3)
    T, C_ = 7, 3
    w, u, k = np.exp(rng.uniform(-3, 2, C_)), rng.uniform(-2, 2, C_), rng.normal(0, 3, (T, C_))
    all_w = A.eq14_weights(w, u, k)
    for c in range(C_):
        np.testing.assert_allclose(all_w[:, :, c], A.implied_attention(w[c], u[c], k[:, c]), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------- how the past reaches a sublayer

def test_sublayer_inputs_are_the_traces_rows_after_the_first(model):
    tokens = np.random.default_rng(4).integers(0, V, 23)
    feats, prev, cur = A.sublayer_inputs(model, tokens, ctx=10)  # windows of 10, 10 and 3 tokens
    assert feats.shape == (L, 2, 9 + 9 + 2, C) and len(prev) == len(cur) == 20
    tr = A.trace(model, tokens[10:20])
    np.testing.assert_array_equal(feats[1, 0, 9:18], tr[1]["x_att"][1:])
    np.testing.assert_array_equal(feats[0, 1, 9:18], tr[0]["x_ffn"][1:])
    np.testing.assert_array_equal(prev[9:18], tokens[10:19])
    np.testing.assert_array_equal(cur[9:18], tokens[11:20])


def test_linear_probe_and_bigram_guess_by_hand():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    x = np.eye(5)[y] * 3 + rng.normal(0, 0.1, (400, 5))  # the label, linearly readable
    assert A.linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:]) == 1.0
    noise = rng.normal(0, 1, (400, 5))  # nothing to read: about chance (1/5)
    assert A.linear_probe_accuracy(noise[:300], y[:300], noise[300:], y[300:]) < 0.4
    # previous token from the current one: before 1 came 0 twice and 2 once -> guess 0; before 2 came 1
    # twice and 0 once -> guess 1; 3 never seen -> the most frequent previous token overall (0, 3 times)
    prev_train, cur_train = np.array([0, 0, 2, 1, 1, 0]), np.array([1, 1, 1, 2, 2, 2])
    # test pairs (previous, current): (0, 1) right, (2, 1) wrong, (1, 2) right, (0, 3) right
    assert A.bigram_guess_accuracy(prev_train, cur_train, np.array([0, 2, 1, 0]), np.array([1, 1, 2, 3])) == 0.75


def test_previous_token_probes_shapes(model):
    tokens = np.random.default_rng(5).integers(0, V, 300)
    res = A.previous_token_probes(model, tokens[:200], tokens[200:], ctx=50)
    assert res["accuracy"].shape == res["current"].shape == (L, 2)
    assert res["n_train"] == 4 * 49 and res["n_test"] == 2 * 49
    assert ((0 <= res["accuracy"]) & (res["accuracy"] <= 1)).all() and 0 <= res["bigram"] <= 1


def test_previous_token_paths_separate_the_routes(model):
    tokens = np.random.default_rng(6).integers(0, V, 200)
    res = A.previous_token_paths(model, tokens, n_samples=12, window=8)
    assert set(res) == {"total", "shift", "stream", "state", "output"} and res["total"].shape == (L, 2)
    # layer 0's time mixing reads the embedding of token t alone: nothing of t-1 through the stream
    assert res["stream"][0, 0] == 0 and (res["stream"][1:] > 0).all() and res["stream"][0, 1] > 0
    assert (res["shift"] > 0).all() and (res["state"][:, 0] > 0).all() and np.isnan(res["state"][:, 1]).all()
    assert (res["total"] > 0).all() and (res["output"] > 0).all()
    # without any token shift, that path is exactly zero everywhere, and the others remain
    no_shift = A.previous_token_paths(A.without_token_shift(model), tokens, n_samples=12, window=8)
    assert (no_shift["shift"] == 0).all() and (no_shift["total"] > 0).all()
    # with layer 0's time mixing silenced, layer 0's channel mixing gets nothing of t-1 but its shift
    silent = A.previous_token_paths(A.without_sublayer(model, 0, "att"), tokens, n_samples=12, window=8)
    assert silent["stream"][0, 1] == 0 and silent["total"][0, 0] == 0
    with pytest.raises(ArgumentError, match="window"):
        A.previous_token_paths(model, tokens[:5], window=8)


def test_carried_loss_is_one_window_read_in_chunks(model):
    tokens = np.random.default_rng(7).integers(0, V, 50)
    one_window = A.heldout_loss(model, tokens, ctx=len(tokens))
    for chunk in (1, 7, 49, 100):
        assert A.carried_loss(model, tokens, chunk) == pytest.approx(one_window, rel=1e-5)
    with pytest.raises(ArgumentError, match="chunk"):
        A.carried_loss(model, tokens, 0)
