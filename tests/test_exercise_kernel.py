"""The exercise checks inside a real Jupyter kernel, as a learner runs them (slow tier): a cell's
endless loop is stopped by the check's time limit (the kernel runs cells in its main thread, where the
alarm can interrupt it) and the kernel is usable afterwards; a wrong answer and a never-ending
generate print their messages, not a traceback."""

import importlib.util
import json

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow

CELLS = [
    "import numpy as np\nfrom rwkv_np.exercises import check_generate, check_token_shift, show_generation\n"
    "from rwkv_np.exercises.data import tiny_params",
    # a learner's endless loop: t is never increased
    "def token_shift(x, x_prev):\n    out, t = np.empty_like(x), 1\n    out[0] = x_prev\n"
    "    while t < len(x):\n        out[t] = x[t - 1]\n    return out",
    "check_token_shift(token_shift, time_limit=1)",
    # the kernel still works: the fix passes
    "def token_shift(x, x_prev):\n    return np.concatenate([x_prev[None], x[:-1]])\ncheck_token_shift(token_shift)",
    # a wrong answer
    "check_token_shift(lambda x, x_prev: np.concatenate([np.zeros_like(x_prev)[None], x[:-1]]))",
    # a generate that never stops yielding
    "def generate(params, prompt, n):\n    while True:\n        yield 65\n"
    "print(check_generate(generate))\nshow_generation(generate, tiny_params(seed=9, vocab_size=256), b'x', 4)",
]


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "notebooks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checks_in_a_kernel_stop_an_endless_loop_and_explain_wrong_answers(tmp_path):
    pytest.importorskip("nbclient")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": src} for i, src in enumerate(CELLS)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "learner.ipynb"
    path.write_text(json.dumps(nb))
    _run_all().execute(path, write=True)  # raises CellExecutionError if a cell raises
    outputs = []
    for cell in json.loads(path.read_text())["cells"]:
        outputs.append("".join("".join(o.get("text") or o.get("data", {}).get("text/plain", ""))
                               for o in cell["outputs"]))
    stopped, fixed, wrong, generate = outputs[2], outputs[3], outputs[4], outputs[5]
    assert stopped.startswith("✗ check_token_shift: case 'T = 5, C = 3, x_prev from the previous call': your function "
                              "was still running after 1 s (in token_shift, line "), stopped
    assert "out[t] = x[t - 1]" in stopped or "while t < len(x):" in stopped
    assert fixed.startswith("✓ check_token_shift: all 4 cases passed")
    assert "This looks like: the shift not using the carried x_prev at t = 0 (zeros instead)." in wrong
    assert "your function returned a generator" in generate and "\nxAAAA\n(generate gave more than n = 4 ids" in generate
