"""experiments/paths.py, how the past reaches each sublayer on the retrained models (issue 23): a tiny
ablation campaign's checkpoints of the baseline and the no-shift variants, measured end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import EXPERIMENTS, REPO, SHAKESPEARE


@pytest.mark.slow
def test_tiny_paths_on_a_tiny_campaign(tmp_path):
    text = tmp_path / "text.txt"
    if SHAKESPEARE.exists():
        text.write_bytes(SHAKESPEARE.read_bytes()[:40_000])
    else:
        rng = np.random.default_rng(0)
        words = "the king and queen of france shall speak to thee my lord what say you now good sir".split()
        text.write_text(" ".join(rng.choice(words, 6000)))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"}
    runs, out = tmp_path / "runs", tmp_path / "paths.json"
    campaign = subprocess.run([sys.executable, str(EXPERIMENTS / "ablations.py"), "--tiny", "--data", str(text),
                               "--runs", str(runs), "--out", str(tmp_path / "ablations.json"), "--jobs", "1",
                               "--only", "baseline,no_shift_att,no_shift_ffn,no_shift_both"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert campaign.returncode == 0, campaign.stderr[-2000:]
    done = subprocess.run([sys.executable, str(EXPERIMENTS / "paths.py"), "--tiny", "--data", str(text), "--runs",
                           str(runs), "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["tiny"] and [(r["variant"], r["seed"]) for r in res["runs"]] == [
        (n, 0) for n in ("baseline", "no_shift_att", "no_shift_ffn", "no_shift_both")]
    for r in res["runs"]:
        acc, paths = np.array(r["probe_accuracy"]), r["paths"]
        assert acc.shape == (2, 2) and ((0 <= acc) & (acc <= 1)).all()
        assert np.array(paths["total"]).shape == (2, 2) and all(row[1] is None for row in paths["state"])
        shift = np.array(paths["shift"])
        if r["variant"] == "no_shift_both":  # no token shift at all: that path carries nothing
            assert (shift == 0).all()
        if r["variant"] == "no_shift_att":
            assert (shift[:, 0] == 0).all() and (shift[:, 1] > 0).all()
        if r["variant"] == "no_shift_ffn":
            assert (shift[:, 1] == 0).all() and (shift[:, 0] > 0).all()
        assert paths["stream"][0][0] == 0  # layer 0's time mixing reads token t's embedding alone
