"""Many sequences at once: aggregate tokens/s of `RWKV.step_batch` at B = 1, 4, 16, 64, 256 on the 169M
shape of RWKV-4, in fp32, bf16 kept 16-bit and int8, next to the matmul ceiling measured in the same
process (issue 25).

    python benchmarks/batch.py                        # every kind, B = 1 4 16 64 256: about 3 minutes
    python benchmarks/batch.py --versus-blas          # and B = 4, 16 through BLAS instead of matmat
    python benchmarks/batch.py --kinds fp32 --batches 1 16 --steps 8 --json out.json

Random weights of the 169M shape (12 layers, 768 channels, FFN 3072, vocabulary 50277; the embedding
is read one row per token, so only the blocks and the head count), built in memory: fp32, the same
values rounded to bf16 and kept as bit patterns, or quantized to int8 as `load_model(quantize="int8")`
does. Each B starts from states forked from one 16-token prompt (step_batch's states are values: no
copy of the prompt is made), one step untimed, then `--steps` timed steps of B fresh tokens; the best
of `--rounds` such rounds is kept (other programs on the machine only ever slow a round down). The
model's threads are rwkv_np's own choice (the cores other programs leave free, as by default), or
`--threads N` fixed; Numba and BLAS are started with N (default: every core), the ceiling's BLAS too.

The ceiling: every generated token costs 2 x (13 C^2 L + V C) = 261 MFLOP of matrix products (the
blocks' seven matrices and the head), so tokens/s can be at most (matmul GFLOP/s) / 0.261. The GFLOP/s is
that of a large float32 matrix product (BLAS, 2048^3, best of 3), measured in this process before and
after each kind's rows; the table gives their median. B = 1 is step_batch's one-sequence path, the
recurrent form (memory-bound: each token reads every weight), so the B = 1 figure is the generation
speed of benchmarks/bench.py. The load average (/proc/loadavg) is printed before and after: other
programs on the machine take cores from both the figures and the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else str(os.cpu_count())
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np  # noqa: E402

sys.path.insert(0, str(REPO))

SHAPE = dict(n_layer=12, C=768, F=3072, V=50277)
KINDS = ("fp32", "bf16", "int8")


def flops_per_token(n_layer: int, C: int, F: int, V: int) -> int:
    """2 x the weights a token multiplies: per block W_k, W_v, W_r, W_o, W'_r (C x C), W'_k, W'_v (C x F); the head."""
    return 2 * (n_layer * (5 * C * C + 2 * C * F) + V * C)


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    """The best of `repeats` float32 n x n x n products (BLAS, its threads), in GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def weights_169m(kind: str, shape: dict = SHAPE, seed: int = 0) -> dict:
    """The 169M shape's weights in memory: float32, bf16 bit patterns (uint16) or Int8Matrix."""
    from rwkv_np.config import RWKVConfig
    from rwkv_np.quantize import Int8Matrix
    from rwkv_np.rwkv4.params import random_weights

    config = RWKVConfig(n_layer=shape["n_layer"], n_embd=shape["C"], vocab_size=shape["V"], ffn_dim=shape["F"])
    weights = {k: np.asarray(v, np.float32) for k, v in random_weights(config, seed).items()}
    for name, a in weights.items():
        if a.ndim != 2 or name == "emb.weight" and kind == "int8":
            continue
        if kind == "bf16":  # round to nearest even, keep the top 16 bits
            bits = a.view(np.uint32)
            weights[name] = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        elif kind == "int8":
            weights[name] = Int8Matrix.quantize(a)
    return weights


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def measure(model, B: int, steps: int, seed: int = 0) -> float:
    """Aggregate tokens/s of `steps` step_batch calls of B sequences forked from one prompt."""
    rng = np.random.default_rng(seed)
    V = model.config.vocab_size
    _, start = model.forward(rng.integers(0, V, 16))
    states = [start] * B
    _, states = model.step_batch(rng.integers(0, V, B), states)  # untimed: first touch of the buffers
    t0 = time.perf_counter()
    for _ in range(steps):
        _, states = model.step_batch(rng.integers(0, V, B), states)
    return B * steps / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16, 64, 256])
    ap.add_argument("--steps", type=int, default=0, help="timed steps per B (0: about 3 s of tokens each)")
    ap.add_argument("--threads", type=int, default=None,
                    help="fix the model's threads (default: rwkv_np's choice, from the cores left free)")
    ap.add_argument("--small", action="store_true", help="a tiny shape, for the smoke test")
    ap.add_argument("--fused-max", type=int, default=None,
                    help="RWKV-4's Engine.FUSED_MAX: batches up to this size use products.matmat (0: BLAS always)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per B; the best is kept")
    ap.add_argument("--versus-blas", action="store_true",
                    help="also time each batch of 2..FUSED_MAX through BLAS (alternating rounds)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from rwkv_np import RWKV, process
    from rwkv_np.rwkv4.engine import Engine

    if args.fused_max is not None:
        Engine.FUSED_MAX = args.fused_max

    shape = dict(n_layer=2, C=64, F=256, V=300) if args.small else SHAPE
    flop = flops_per_token(**shape)
    result = {"shape": shape, "threads": args.threads or "auto", "cores": os.cpu_count(),
              "fused_max": Engine.FUSED_MAX, "flop_per_token": flop, "loadavg_before": loadavg(), "rows": []}
    print(f"load average before: {result['loadavg_before']}; {flop / 1e6:.0f} MFLOP per token", flush=True)
    process.short_spin()
    for kind in args.kinds:
        model = RWKV(weights_169m(kind, shape))
        model.threads = args.threads
        model.warm_up()
        ceil = [matmul_gflops()]
        row = {"kind": kind, "weight_dtype": model.weight_dtype, "tok_s": {}, "blas_tok_s": {}}
        for B in args.batches:
            steps = args.steps or max(2, int(1.0 * measure(model, B, 1) / B))
            fused = args.versus_blas and 1 < B <= Engine.FUSED_MAX
            best, blas = 0.0, 0.0
            for _ in range(args.rounds):  # the best of the rounds: other programs only ever slow a round
                best = max(best, measure(model, B, steps))
                if fused:  # the same batch through BLAS, alternating with matmat's rounds
                    Engine.FUSED_MAX, fused_max = 0, Engine.FUSED_MAX
                    blas = max(blas, measure(model, B, steps))
                    Engine.FUSED_MAX = fused_max
            row["tok_s"][B] = best
            if fused:
                row["blas_tok_s"][B] = blas
            print(f"  {kind} B={B}: {best:.1f} tok/s ({args.rounds} x {steps} steps)"
                  + (f"; through BLAS: {blas:.1f}" if fused else ""), flush=True)
        ceil.append(matmul_gflops())
        row["gflops"] = float(np.median(ceil))
        row["ceiling_tok_s"] = row["gflops"] * 1e9 / flop
        result["rows"].append(row)
    result["loadavg_after"] = loadavg()

    Bs = args.batches
    print(f"\n| weights | " + " | ".join(f"B = {B}" for B in Bs) + " | B = 16 / B = 1 | largest B: of ceiling |"
          " ceiling (matmul GFLOP/s) |")
    print("| --- " * (len(Bs) + 4) + "|")
    for row in result["rows"]:
        t = row["tok_s"]
        ratio = f"{t[16] / t[1]:.1f}x" if 16 in t and 1 in t else ""
        big = max(Bs)
        print(f"| {row['kind']} | " + " | ".join(f"{t[B]:.0f}" for B in Bs) + f" | {ratio} | "
              f"{t[big] / row['ceiling_tok_s']:.0%} | {row['ceiling_tok_s']:.0f} tok/s ({row['gflops']:.0f}) |")
    print(f"\nload average after: {result['loadavg_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
