"""experiments/ablations.py, the retrained ablations of issue 11: the tiny campaign end to end, resume,
the variants' constraints holding through training, and the baseline being `rwkv_np train` itself
(smoke runs of the script: slow tier); the variants' arguments, the gradient norm of a tied vector and
the unigram floor (fast)."""

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from rwkv_np.errors import ArgumentError
from rwkv_np.training import checkpoint as ckpt
from rwkv_np.training import run
from rwkv_np.training.init import init_params
from rwkv_np.training.model import backward, forward, loss_and_grads
from rwkv_np.training.optim import clip_grads
from rwkv_np.training.variant import Variant

from helpers import EXPERIMENTS, REPO, SHAKESPEARE, central_difference

SCRIPT = EXPERIMENTS / "ablations.py"


def _ablations():
    spec = importlib.util.spec_from_file_location("ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """The first 60 kB of tiny shakespeare when the fixtures are there (the final evaluation of
    `rwkv_np train` reads the whole held-out tenth: small keeps the test fast), else 40 kB of generated
    English-like text."""
    p = tmp_path_factory.mktemp("data") / "text.txt"
    if SHAKESPEARE.exists():
        p.write_bytes(SHAKESPEARE.read_bytes()[:60_000])
        return p
    rng = np.random.default_rng(0)
    words = "the king and queen of france shall speak to thee my lord what say you now good sir".split()
    p.write_text(" ".join(rng.choice(words, 8000)))
    return p


@pytest.mark.slow
def test_tiny_campaign_end_to_end_and_skips_finished_runs(tmp_path, text):
    out, runs = tmp_path / "ablations.json", tmp_path / "runs"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--data", str(text), "--out", str(out), "--runs", str(runs)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"}
    # two runs in worker processes, then the rest in this one (the finished two are skipped)
    first = subprocess.run(cmd + ["--only", "baseline,no_ffn"], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 of 2 runs to do" in first.stdout
    second = subprocess.run(cmd + ["--jobs", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"{len(_ablations().VARIANTS) - 2} of {len(_ablations().VARIANTS)} runs to do" in second.stdout
    res = json.loads(out.read_text())
    A = _ablations()
    assert res["complete"] and res["tiny"] and set(res["variants"]) == set(A.VARIANTS)
    for name, v in res["variants"].items():
        (r,) = v["runs"]
        assert r["steps"] == A.TINY["steps"] and len(r["curve"]) == 2, name
        # 6 steps of a 2 x 16 model move the loss a little below uniform (ln 256 = 5.545), not further
        assert 4.0 < r["held_out_loss"] < math.log(256), name
        assert v["held_out_loss_mean"] == r["held_out_loss"] and v["held_out_loss_std"] is None
        assert r["command"].endswith(f"--run {name} --seed 0 --tiny --data {text}")
    # no channel mixing: its parameters go to more time-mixing-only blocks, the total within 3%
    base, no_ffn = res["variants"]["baseline"], res["variants"]["no_ffn"]
    assert no_ffn["n_layer"] > base["n_layer"] and abs(no_ffn["n_params"] / base["n_params"] - 1) < 0.03
    # the depth-controlled ones: the baseline's blocks; at its width (fewer parameters), or wider (about as many)
    same, wide = res["variants"]["no_ffn_same_depth"], res["variants"]["no_ffn_wide"]
    assert same["n_layer"] == wide["n_layer"] == base["n_layer"] and same["n_embd"] == base["n_embd"] < wide["n_embd"]
    assert same["n_params"] < 0.8 * base["n_params"] and abs(wide["n_params"] / base["n_params"] - 1) < 0.03
    assert wide["runs"][0]["n_embd"] == wide["n_embd"]
    # the tied decay is one number per layer: C - 1 fewer parameters per layer
    assert base["n_params"] - res["variants"]["tied_decay"]["n_params"] == base["n_layer"] * (16 - 1)
    # the floor: a unigram model of the training bytes, on the same held-out bytes
    assert 2.5 < res["unigram_floor"]["held_out_loss"] < math.log(256)
    again = subprocess.run(cmd + ["--jobs", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 0 and f"0 of {len(A.VARIANTS)} runs to do" in again.stdout
    assert json.loads(out.read_text())["variants"] == res["variants"]


def _final_params(run_dir, n_layer, C):
    shapes = {k: v.shape for k, v in init_params(n_layer, C, 0).items()}
    manifest = json.loads(json.loads((run_dir / "run.ckpt").read_bytes()[8:8 + int.from_bytes(
        (run_dir / "run.ckpt").read_bytes()[:8], "little")])["__metadata__"]["manifest"])
    return ckpt.load_training(run_dir / "run.ckpt", {"args": manifest["args"], "data_sha256":
                                                      manifest["data_sha256"]}, shapes)[0]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result(tmp_path, text):
    A = _ablations()
    whole = A.train_run("tied_decay", 0, A.TINY, text, tmp_path / "whole", "cmd")
    assert A.train_run("tied_decay", 0, A.TINY, text, tmp_path / "cut", "cmd", stop_after=3) is None
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = A.train_run("tied_decay", 0, A.TINY, text, tmp_path / "cut", "cmd")
    assert resumed["held_out_loss"] == whole["held_out_loss"]
    assert [c["held_out_windows"] for c in resumed["curve"]] == [c["held_out_windows"] for c in whole["curve"]]
    a, b = _final_params(tmp_path / "whole", 2, 16), _final_params(tmp_path / "cut", 2, 16)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # a checkpoint of another budget is refused by name, not resumed into
    with pytest.raises(ArgumentError, match="--steps"):
        A.train_run("tied_decay", 0, dict(A.TINY, steps=9), text, tmp_path / "cut", "cmd")


@pytest.mark.slow
def test_the_variants_constraints_hold_after_training(tmp_path, text):
    A = _ablations()
    C, init = 16, init_params(2, 16, 0)
    for name in ("no_shift_both", "no_bonus", "tied_decay", "frozen_decay", "no_ffn", "coupled_u", "coupled_u_neg"):
        A.train_run(name, 0, A.TINY, text, tmp_path / name, "cmd")
        p = _final_params(tmp_path / name, A.n_layer_of(name, A.TINY), C)
        for i in range(2):
            b = f"blocks.{i}."
            if name == "no_shift_both":
                assert all((p[b + n] == 1).all() for n in A._MU_ATT + A._MU_FFN)
            if name == "no_bonus":
                assert (p[b + "att.time_first"] == 0).all()
            if name == "tied_decay":  # equal channels, moved from the layer's mean initial value
                d = p[b + "att.time_decay"]
                assert (d == d[0]).all() and d[0] != np.float32(init[b + "att.time_decay"].astype(np.float64).mean())
            if name == "frozen_decay":
                assert np.array_equal(p[b + "att.time_decay"], init[b + "att.time_decay"])
                assert not np.array_equal(p[b + "att.time_first"], init[b + "att.time_first"])  # others learn
            if name == "no_ffn":  # unused, untouched: the file stays a checkpoint whose FFNs output zero
                assert not p[b + "ffn.value.weight"].any() and np.array_equal(p[b + "ln2.weight"], init[b + "ln2.weight"])
            if name.startswith("coupled_u"):  # u follows the learned decay: u = +-w, to float32 rounding
                sign = 1.0 if name == "coupled_u" else -1.0
                d = p[b + "att.time_decay"]
                assert not np.array_equal(d, init[b + "att.time_decay"])
                np.testing.assert_allclose(p[b + "att.time_first"], sign * np.exp(d.astype(np.float64)), rtol=1e-6)


@pytest.mark.slow
def test_the_baseline_is_rwkv_np_train_bit_for_bit(tmp_path, text):
    A = _ablations()
    cfg = dict(A.TINY, steps=4, eval_every=2)
    A.train_run("baseline", 3, cfg, text, tmp_path / "campaign", "cmd")
    parser = __import__("argparse").ArgumentParser()
    run.add_train_arguments(parser)
    args = parser.parse_args(["--data", str(text), "--out", str(tmp_path / "m.safetensors"), "--n-layer", "2",
                              "--n-embd", "16", "--ctx-len", "32", "--batch-size", "4", "--steps", "4",
                              "--warmup", "2", "--seed", "3", "--eval-every", "2", "--eval-windows", "2"])
    assert run.run_train(args) == 0
    trained = ckpt.load_params(tmp_path / "m.safetensors")
    ours = _final_params(tmp_path / "campaign", 2, 16)
    assert all(np.array_equal(trained[k], ours[k].reshape(trained[k].shape)) for k in trained)


def test_bad_variants_are_refused_by_name():
    with pytest.raises(ArgumentError, match="att.nope"):
        Variant(frozen=("att.nope",))
    with pytest.raises(ArgumentError, match="att.key.weight"):
        Variant(tied=("att.key.weight",))
    with pytest.raises(ArgumentError, match="sublayers"):
        Variant(sublayers=("ffn",))
    with pytest.raises(ArgumentError, match="unknown variant 'nope'"):
        _ablations().main(["--tiny", "--only", "nope"])


def test_a_tied_vector_counts_once_in_the_gradient_norm():
    g = {"a": np.full(4, 3.0), "b": np.array([4.0])}
    assert clip_grads({k: v.copy() for k, v in g.items()}, 0) == math.sqrt(4 * 9 + 16)
    assert clip_grads(g, 1.0, once=("a",)) == 5.0  # sqrt(9 + 16): one parameter of value 3
    np.testing.assert_allclose(g["a"], 0.6, rtol=1e-15)  # and clipping to norm 1 scales all by 1/5
    np.testing.assert_allclose(g["b"], 0.8, rtol=1e-15)


def test_unigram_floor_by_hand():
    A = _ablations()
    train = np.array([97, 97, 98], np.uint8)  # counts + 1: a 3, b 2, the 254 others 1; total 259
    held = np.array([0, 97, 98, 99, 97], np.uint8)  # ctx 2: windows score held[1:5] = a, b, c, a
    expected = -(2 * math.log(3 / 259) + math.log(2 / 259) + math.log(1 / 259)) / 4
    assert A.unigram_floor(train, held, 2) == pytest.approx(expected, rel=1e-12)


def test_a_coupled_u_follows_the_decay_and_its_gradient_is_the_chain_rule():
    # u = c w = c e^time_decay: the loss as a function of time_decay alone (u set from it before every
    # forward); its finite differences must equal time_decay's gradient after Variant.grads(grads, params)
    # (float64, h = 1e-5, the init plus noise as in tests/test_train_gradients.py)
    rng = np.random.default_rng(3)
    for c in (1.0, -1.0, 0.5):
        v = Variant(coupled_u=c)
        params = v.init({k: a.astype(np.float64) + rng.normal(0, 0.3 if a.ndim == 2 else 0.1, a.shape)
                         for k, a in init_params(2, 6, 0).items()})
        for i in range(2):
            np.testing.assert_allclose(params[f"blocks.{i}.att.time_first"],
                                       c * np.exp(params[f"blocks.{i}.att.time_decay"]), rtol=1e-15)
        idx, targets = rng.integers(0, 256, (2, 2, 5))
        _, _, cache = forward(params, idx, targets, keep=True, variant=v)
        grads = v.grads(backward(params, cache), params)

        def loss():
            return forward(v.couple(params), idx, targets, variant=v)[1]

        for i in range(2):
            assert not grads[f"blocks.{i}.att.time_first"].any()  # u is no parameter of its own
            num = central_difference(loss, params[f"blocks.{i}.att.time_decay"], 1e-5)
            ana = grads[f"blocks.{i}.att.time_decay"]
            assert np.abs(num).max() > 1e-4
            assert np.abs(num - ana).max() < 1e-6 * np.abs(num).max(), (c, i)
        assert v.n_params(params)[0] - v.n_params(params)[1] == 2 * 6  # used, not trained: u of each layer


def test_a_coupled_variant_is_refused_where_its_parameters_are_not_given():
    v = Variant(coupled_u=1.0)
    params = v.init(init_params(1, 4, 0))
    idx = np.zeros((1, 3), np.int64)
    with pytest.raises(ArgumentError, match="coupled"):
        loss_and_grads(params, idx, idx, v)
    with pytest.raises(ArgumentError, match="coupled"):
        Variant(coupled_u=1.0, frozen=("att.time_first",))
    with pytest.raises(ArgumentError, match="finite"):
        Variant(coupled_u=float("inf"))
    # uncoupled variants are unchanged by couple
    p = init_params(1, 4, 0)
    before = {k: a.copy() for k, a in p.items()}
    Variant().couple(p)
    assert all(np.array_equal(p[k], before[k]) for k in p)
