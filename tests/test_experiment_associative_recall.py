"""experiments/associative_recall.py and its attention model (experiments/attention.py): the task, the
masked loss, the attention model's hand-written backward against finite differences, RWKV-4's masked
backward against the training package's, the committed results (fast), and the script end to end in its
--tiny mode (a smoke run: slow tier)."""

import json
import math
import sys

import numpy as np
import pytest

from rwkv_np.errors import ArgumentError
from rwkv_np.training import model as rwkv

from helpers import EXPERIMENTS, central_difference

sys.path.insert(0, str(EXPERIMENTS))  # the experiments are scripts, importable from their folder
import associative_recall as ar  # noqa: E402
import attention as attn  # noqa: E402


def test_batch_is_pairs_then_every_key_queried_with_its_value_as_target():
    tokens, targets, mask = ar.make_batch(np.random.default_rng(0), 5, 6)
    assert tokens.shape == targets.shape == mask.shape == (5, 18)
    assert mask.sum() == 5 * 6 and mask[:, 12:].all()
    for row, tgt in zip(tokens, targets):
        keys, vals = row[0:12:2], row[1:12:2]
        assert len(set(keys.tolist())) == 6 and (keys < ar.N_KEYS).all() and (vals >= ar.N_KEYS).all()
        assert sorted(row[12:].tolist()) == sorted(keys.tolist())  # every key queried once
        lookup = dict(zip(keys.tolist(), vals.tolist()))
        assert [lookup[q] for q in row[12:]] == tgt[12:].tolist()
    tokens, _, _ = ar.make_batch(np.random.default_rng(1), 50, 3, keys=4)
    assert set(tokens[:, 0:6:2].ravel().tolist()) == {0, 1, 2, 3}  # keys from the first 4 only
    with pytest.raises(ArgumentError, match="pairs"):
        ar.make_batch(np.random.default_rng(0), 1, ar.N_KEYS + 1)
    with pytest.raises(ArgumentError, match="pairs must be in 1..4"):
        ar.make_batch(np.random.default_rng(0), 1, 5, keys=4)


def test_masked_loss_counts_only_the_query_positions():
    # uniform logits: -ln(1/V) at every counted position whatever the targets; the gradient is
    # (1/V - onehot) / (masked positions) where counted and exactly 0 elsewhere
    V = ar.VOCAB
    targets = np.array([[3, 70, 5]])
    mask = np.array([[False, True, True]])
    loss, acc, d = ar.masked_loss(np.zeros((1, 3, V)), targets, mask)
    assert loss == pytest.approx(math.log(V), rel=1e-12)
    assert not d[0, 0].any()
    assert d[0, 1, 70] == pytest.approx((1 / V - 1) / 2) and d[0, 1, 0] == pytest.approx(1 / V / 2)
    logits = np.zeros((1, 3, V))
    logits[0, 0, 3] = logits[0, 1, 70] = 5  # right at an unmasked position and at one of two masked
    assert ar.masked_loss(logits, targets, mask)[1] == 0.5


def test_attention_backward_matches_finite_differences():
    # float64, 2 layers of 8 channels in 2 heads, 3 sequences of 4 pairs. Parameters are the init plus
    # N(0, 0.3) noise so that no gradient is tiny by construction. h = 1e-5: truncation ~ h^2 |f'''| ~
    # 1e-10 and rounding ~ 1e-16 |loss| / h ~ 1e-11, against gradients of ~1e-2..1: 1e-6 relative leaves
    # a wide margin (observed worst ~3e-9). Arrays of more than 64 entries are checked on 64 random
    # entries (the emb rows of tokens that occur), which keeps the test to a few seconds.
    rng = np.random.default_rng(0)
    p = attn.init_params(2, 8, 2, ar.VOCAB, seed=0)
    for k, v in attn.weights(p).items():
        p[k] = v.astype(np.float64) + rng.normal(0, 0.3, v.shape)
    tokens, targets, mask = ar.make_batch(rng, 3, 4)
    logits, cache = attn.forward(p, tokens)
    grads = attn.backward(p, cache, ar.masked_loss(logits, targets, mask)[2])
    assert set(grads) == set(attn.weights(p))
    used = set(tokens.ravel().tolist())
    errors = {}
    for name, arr in attn.weights(p).items():
        candidates = [i for i in np.ndindex(arr.shape) if name != "emb" or i[0] in used]
        picked = {candidates[j] for j in rng.choice(len(candidates), min(64, len(candidates)), replace=False)}
        only = picked.__contains__
        num = central_difference(lambda: ar.masked_loss(attn.forward(p, tokens)[0], targets, mask)[0], arr, 1e-5, only)
        assert np.abs(num).max() > 1e-6, name  # must not pass on all-zero gradients
        checked = np.zeros(arr.shape, bool)
        checked[tuple(np.array(sorted(picked)).T)] = True
        errors[name] = float(np.abs((num - grads[name])[checked]).max() / np.abs(num).max())
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, (worst, errors[worst])


def test_attention_is_causal():
    p = attn.init_params(1, 8, 2, ar.VOCAB, seed=1)
    tokens = np.random.default_rng(2).integers(0, ar.VOCAB, (2, 10))
    changed = tokens.copy()
    changed[:, 6] = (changed[:, 6] + 1) % ar.VOCAB
    a, b = attn.forward(p, tokens)[0], attn.forward(p, changed)[0]
    assert np.array_equal(a[:, :6], b[:, :6]) and not np.allclose(a[:, 6:], b[:, 6:])


def test_rwkv_masked_backward_is_the_packages_backward_when_every_position_counts():
    # With the mask all True the experiment's loss is the package's mean cross-entropy, so the
    # gradients assembled from model.py's pieces must be the package's own, to float64 rounding.
    cfg = dict(ar.TINY, n_layer=2, n_embd=8)
    m = ar.RWKV4(cfg, seed=0)
    rng = np.random.default_rng(3)
    m.params = {k: v.astype(np.float64) + rng.normal(0, 0.3, v.shape) for k, v in m.params.items()}
    tokens, targets, _ = ar.make_batch(rng, 2, 3)
    loss, _, grads = m.loss_and_grads(tokens, targets, np.ones(tokens.shape, bool))
    ref_loss, ref = rwkv.loss_and_grads(m.params, tokens, targets)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-9, atol=1e-13, err_msg=k)


@pytest.mark.slow
def test_tiny_run_end_to_end_resumes_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "ar.json"
    assert ar.main(["--tiny", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["complete"] and data["config"] == ar.TINY
    runs = {(r["model"], r["pairs"], r["seed"]): r for r in data["runs"] if not r["variant"]}
    assert set(runs) == {(m, n, s) for m in ar.MODELS for n in ar.TINY["pairs"] for s in ar.TINY["seeds"]}
    for (m, n, s), r in runs.items():
        assert r["seq_len"] == 3 * n and 0 <= r["eval_acc"] <= 1 and math.isfinite(r["eval_loss"])
        assert r["curve"][-1]["step"] == r["steps"] == ar.TINY["steps"]
        o = r["outputs"]  # every query's answer falls in exactly one class; the masses add to 1
        assert o["correct"] == pytest.approx(r["eval_acc"], abs=1e-5)
        assert sum(o[k] for k in ("correct", "other_in_sequence", "value_not_in_sequence", "key")) == pytest.approx(1, abs=1e-4)
        assert sum(o[k] for k in o if k.startswith("mass_")) == pytest.approx(1, abs=1e-4)
        assert 0 <= o["last_pair"] <= o["other_in_sequence"]
    extras = [r for r in data["runs"] if r["variant"]]
    assert [(r["model"], r["pairs"], r["variant"], r["curve"][-1]["step"]) for r in extras] == [("rwkv4", 2, "steps=30", 30)]
    # same size: parameter counts within 10%; RWKV-4's state is fixed, the KV cache grows with T
    pa, pr = runs[("attention", 4, 0)]["params"], runs[("rwkv4", 4, 0)]["params"]
    assert abs(pa - pr) / pr < 0.10
    C, L = ar.TINY["n_embd"], ar.TINY["n_layer"]
    assert runs[("rwkv4", 2, 0)]["state_floats"] == runs[("rwkv4", 4, 0)]["state_floats"] == 5 * C * L
    assert runs[("attention", 4, 0)]["state_floats"] == 2 * C * L * 12
    # a rerun skips every finished run: the file comes back unchanged
    before = out.read_text()
    capsys.readouterr()
    assert ar.main(["--tiny", "--out", str(out)]) == 0
    assert out.read_text() == before and " step " not in capsys.readouterr().out
    data["config"]["steps"] += 1
    out.write_text(json.dumps(data))
    with pytest.raises(ArgumentError, match="other settings"):
        ar.main(["--tiny", "--out", str(out)])
    with pytest.raises(ArgumentError, match="--tiny needs --out"):
        ar.main(["--tiny"])


def test_output_breakdown_by_hand():
    # a "model" that always answers the value of the last pair, with certainty: right exactly when the
    # query is the last pair's key
    class LastValue:
        def logits(self, tokens):
            N = tokens.shape[1] // 3
            z = np.full((*tokens.shape, ar.VOCAB), -50.0)
            z[np.arange(len(tokens)), :, tokens[:, 2 * N - 1]] = 50.0
            return z

    tokens, targets, mask = ar.make_batch(np.random.default_rng(0), 40, 4)
    out = ar.output_breakdown(LastValue(), (tokens, targets, mask))
    right = np.mean(targets[:, 8:] == tokens[:, 7:8])
    assert out["correct"] == pytest.approx(right, abs=1e-5) and out["key"] == out["value_not_in_sequence"] == 0
    assert out["other_in_sequence"] == pytest.approx(1 - right, abs=1e-5) == out["last_pair"]
    assert out["mass_correct"] == pytest.approx(right, abs=1e-5)


def test_committed_results_are_complete_and_compare_models_of_the_same_size():
    path = EXPERIMENTS / "associative_recall.json"
    data = json.loads(path.read_text())
    assert data["complete"] and data["config"] == ar.FULL
    runs = [r for r in data["runs"] if not r["variant"]]
    cfg = data["config"]
    assert len(runs) == len(ar.MODELS) * len(cfg["pairs"]) * len(cfg["seeds"]) and len(cfg["seeds"]) >= 2
    assert len(data["runs"]) - len(runs) == len(cfg["extras"]) * len(cfg["seeds"])
    assert all("outputs" in r for r in runs if r["model"] == "rwkv4")  # what RWKV-4 answers (notebook 09)
    sizes = {r["model"]: r["params"] for r in runs}
    assert abs(sizes["attention"] - sizes["rwkv4"]) / sizes["rwkv4"] < 0.10
