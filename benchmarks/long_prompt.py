"""Issue 3: a 100,000-token prompt through a 169M-shaped random model in the parallel form.

    python benchmarks/long_prompt.py                  # fp32 weights, 100,000 tokens
    python benchmarks/long_prompt.py --dtype bf16 --tokens 20000

The parallel form reads the prompt in chunks of `RWKV.chunk_size` tokens and carries the state
across chunk borders, so memory does not grow with the prompt: the peak RSS stays near the
weights' bytes plus a few (chunk, ffn_dim) activations. Prints the numbers; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the 169M checkpoint writer and the loader call)

MiB = 1 << 20


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="checkpoint (bf16: kept 16-bit)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import rwkv_np.rwkv4.engine  # noqa: F401  (the runtime's own memory, before any weight)

    runtime = rss_mib("VmRSS")
    with tempfile.TemporaryDirectory(prefix="rwkv_np_long_") as tmp:
        paths = bench.write_checkpoints(Path(tmp))
        path = paths["bfloat16" if args.dtype == "bf16" else "float32"]
        model = bench.load(str(path), keep_16bit=args.dtype == "bf16")
        model.warm_up()  # kernels loaded, weights paged in, Numba's compiler code released
        weights = bench.weight_bytes(2 if args.dtype == "bf16" else 4)
        before = rss_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
        tokens = np.random.default_rng(0).integers(0, bench.SHAPE["V"], args.tokens)
        t0 = time.perf_counter()
        logits, state = model.forward(tokens, mode="parallel")
        seconds = time.perf_counter() - t0
        peak = rss_mib("VmHWM")
    print(f"{args.tokens} tokens, parallel form in chunks of {model.chunk_size}, {args.dtype} weights "
          f"({model.weight_dtype} in memory), {args.threads} threads")
    print(f"time {seconds:.1f} s ({args.tokens / seconds:.0f} tok/s); logits finite: {bool(np.isfinite(logits).all())}, "
          f"state finite: {bool(np.isfinite(state.data).all())}")
    print(f"weights {weights['all'] / MiB:.0f} MiB ({weights['per_token'] / MiB:.0f} MiB without the embedding, "
          f"which stays in the file and is read one row per token)")
    print(f"RSS after import (Python, NumPy, Numba) {runtime:.0f} MiB; before the prompt {before:.0f} MiB; "
          f"peak during it {peak:.0f} MiB = weights {peak - weights['all'] / MiB:+.0f} MiB")


if __name__ == "__main__":
    main()
