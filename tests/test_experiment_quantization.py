"""experiments/quantization.py, what quantization costs (issue 13), end to end in its --tiny mode: a
smoke run of the script (slow tier)."""

import json
import subprocess
import sys

import pytest

from helpers import EXPERIMENTS, REPO, SHAKESPEARE, need

pytestmark = pytest.mark.slow


def test_quantization_experiment_tiny(tmp_path):
    """experiments/quantization.py end to end on 4 KB of held-out text and a small random shape.
    The shipped weights are stored fp16, so fp16 changes nothing; coarser steps move the logits
    more: fp16 (11 significant bits) < bf16 (8) < int8, and Q8_0 < Q5_1 < Q4_1 (steps of 1/127,
    1/31 and 1/15 of a block's range)."""
    need(SHAKESPEARE)
    out = tmp_path / "q.json"
    run = subprocess.run([sys.executable, str(EXPERIMENTS / "quantization.py"), "--tiny", "--out", str(out)],
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                              "OPENBLAS_NUM_THREADS": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    r = json.loads(out.read_text())
    loss, move = r["loss"], r["logits"]
    assert list(loss) == ["fp32", "fp16", "bf16", "int8", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
    assert loss["fp16"] == loss["fp32"] and 1.0 < loss["fp32"] < 2.0
    assert all(abs(v - loss["fp32"]) < 0.05 for v in loss.values())
    assert r["bytes_per_weight"]["int8"] == 1.125 and r["bytes_per_weight"]["Q8_0"] == 34 / 32
    assert move["fp16"]["max_abs"] < move["bf16"]["max_abs"] < move["int8"]["max_abs"]
    assert move["Q8_0"]["max_abs"] < move["Q5_1"]["max_abs"] < move["Q4_1"]["max_abs"]
