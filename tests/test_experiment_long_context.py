"""experiments/long_context.py, the retraining at two contexts of issue 23: the tiny campaign end to end
(and a restart that finds nothing to do), and the per-position loss it scores every model with."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from rwkv_np.training.init import init_params
from rwkv_np.training.model import evaluate
from rwkv_np.training.variant import Variant

from helpers import EXPERIMENTS, REPO, SHAKESPEARE

SCRIPT = EXPERIMENTS / "long_context.py"


def _long_context():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("long_context", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "text.txt"
    if SHAKESPEARE.exists():
        p.write_bytes(SHAKESPEARE.read_bytes()[:40_000])
        return p
    rng = np.random.default_rng(0)
    words = "the king and queen of france shall speak to thee my lord what say you now good sir".split()
    p.write_text(" ".join(rng.choice(words, 6000)))
    return p


@pytest.mark.slow
def test_tiny_campaign_end_to_end(tmp_path, text):
    out, runs = tmp_path / "long.json", tmp_path / "runs"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--data", str(text), "--out", str(out), "--runs", str(runs)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    LC = _long_context()
    n = len(LC.VARIANTS) * len(LC.TINY["contexts"]) * len(LC.TINY["seeds"])
    assert f"{n} of {n} runs to do" in first.stdout
    res = json.loads(out.read_text())
    assert res["complete"] and res["tiny"] and len(res["runs"]) == n
    L, C = LC.TINY["n_layer"], LC.TINY["n_embd"]
    for r in res["runs"]:
        # equal budget: the same bytes per step, cut into windows of the run's context
        assert r["batch_size"] * r["ctx_len"] == LC.TINY["tokens_per_step"] and r["steps"] == LC.TINY["steps"]
        assert r["held_out_loss"] == pytest.approx(r["loss_by_eval_context"][str(r["ctx_len"])], abs=2e-5)
        assert set(r["loss_by_eval_context"]) == {str(c) for c in LC.TINY["eval_contexts"]}
        assert np.shape(r["time_decay"]) == np.shape(r["time_decay_init"]) == (L, C)
        assert r["command"].endswith(f"--run {r['variant']} --ctx {r['ctx_len']} --seed {r['seed']} --tiny "
                                     f"--data {text}")
        if r["variant"] == "frozen_decay":
            assert r["time_decay"] == r["time_decay_init"] and r["time_decay_rms_change"] == [0.0] * L
        if r["variant"] == "tied_decay":
            assert all(len(set(row)) == 1 for row in r["time_decay"])
    again = subprocess.run(cmd + ["--jobs", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and f"0 of {n} runs to do" in again.stdout
    assert json.loads(out.read_text())["runs"] == res["runs"]


def test_position_losses_average_to_the_trainers_evaluation():
    LC = _long_context()
    rng = np.random.default_rng(0)
    params = {k: a + rng.normal(0, 0.2, a.shape).astype(np.float32) for k, a in init_params(2, 8, 0).items()}
    held = rng.integers(0, 256, 200)
    prof = LC.position_losses(params, held, 16, Variant(), batch=3)
    assert prof.shape == (16,)
    assert prof.mean() == pytest.approx(evaluate(params, held, 16, variant=Variant()), rel=1e-6)
