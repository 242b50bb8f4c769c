"""Execute every notebook here in place, keeping the outputs, and refresh ../figures/.

    python notebooks/run_all.py              # all of them, in order
    python notebooks/run_all.py 03 05        # only those whose names start so

Each runs headless (nbclient, kernel python3) with notebooks/ as working directory, on the model
`rwkv_np.analysis.default_model()` finds (the shipped one; $RWKV_NP_NOTEBOOK_MODEL overrides it),
single-threaded unless NUMBA_NUM_THREADS / OPENBLAS_NUM_THREADS are set (see `execute`).
Exits non-zero, naming the notebook, when one raises.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
THREAD_VARS = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CELL_TIMEOUT = 600  # seconds; a whole notebook takes well under two minutes on 2 cores


def notebooks(prefixes: list[str] | None = None) -> list[Path]:
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        found = [p for p in found if any(p.name.startswith(x) for x in prefixes)]
    return found


def execute(path: Path, cwd: Path | None = None, write: bool = True) -> float:
    """Run one notebook (cells in order) and, when write, save it with its outputs. Returns seconds."""
    nb = nbformat.read(str(path), as_version=4)
    env = dict(os.environ)
    # One thread for Numba and BLAS unless the caller says otherwise: on a shared 2-core machine
    # (CI, or other jobs running) threaded kernels wait on each other at every barrier, and we
    # measured the held-out loss evaluation 20x slower with 2 threads than with 1 under load.
    for var in THREAD_VARS:
        env.setdefault(var, "1")
    # the kernel imports this checkout's rwkv_np even without `pip install -e .`
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    t0 = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - t0
    if write:
        nbformat.write(nb, str(path))
    return seconds


def main(argv: list[str]) -> int:
    total = 0.0
    for path in notebooks(argv):
        try:
            seconds = execute(path)
        except CellExecutionError as e:
            print(f"FAILED {path.name}:\n{e}", file=sys.stderr)
            return 1
        total += seconds
        print(f"{path.name}: {seconds:.1f} s", flush=True)
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
