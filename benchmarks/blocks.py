"""Generation from rwkv.cpp's 4- and 5-bit files kept in their blocks, next to int8 and bf16 (169M shape).

    python benchmarks/blocks.py [--rounds 3] [--threads 2] [--quick] [--json FILE]

Writes bench.py's random weights of the 169M shape (12 x 768, vocab 50277) to a temporary folder: a
bf16 .pth, and rwkv.cpp files in Q8_0, Q5_1, Q5_0, Q4_1 and Q4_0 as rwkv.cpp's quantize.py writes
them from its FP16 file (tests/helpers.py's ggml quantizer, whose blocks are byte-identical to
rwkv.cpp's for Q8_0, Q5_1 and Q4_1; the embedding and head stay fp16). Then, round after round, every
row in a fresh process: load as the row says, 8 warm-up steps, then bench.interleaved_ceiling: seven
times a 512 MiB matrix-vector product (the read bandwidth now) and 16 generation steps, the
fraction of the ceiling (bandwidth / bytes read per token) taken per round. Prints one table with
the median over rounds of each row's tok/s and fraction (their range in brackets).
--quick: a 2-layer model with C = 256 (the same vocabulary) and one round, for the test that runs this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # before numpy / numba are imported: they read these once
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the random weights, the .pth writer, interleaved_ceiling; imports no numba)

# row -> (file, load_model options); "head int8" is what `generate --quantize int8` does with such a file
ROWS = {
    "bf16 (.pth), kept 16-bit": ("bf16.pth", dict(keep_16bit=True)),
    "int8 (--quantize int8, from the .pth)": ("bf16.pth", dict(keep_16bit=True, quantize="int8")),
    "Q8_0 file, its blocks as int8": ("Q8_0.bin", dict(keep_16bit=True, quantize="int8")),
    "Q5_1 file, blocks kept, head fp16": ("Q5_1.bin", dict(keep_16bit=True, keep_blocks=True)),
    "Q4_0 file, blocks kept, head fp16": ("Q4_0.bin", dict(keep_16bit=True, keep_blocks=True)),
    "Q5_1 file, blocks kept, head int8": ("Q5_1.bin", dict(keep_16bit=True, keep_blocks=True, quantize="int8")),
    "Q5_0 file, blocks kept, head int8": ("Q5_0.bin", dict(keep_16bit=True, keep_blocks=True, quantize="int8")),
    "Q4_1 file, blocks kept, head int8": ("Q4_1.bin", dict(keep_16bit=True, keep_blocks=True, quantize="int8")),
    "Q4_0 file, blocks kept, head int8": ("Q4_0.bin", dict(keep_16bit=True, keep_blocks=True, quantize="int8")),
}


def write_files(folder: Path, quick: bool) -> None:
    from helpers import GGML_TYPE_IDS, encode, ggml_quantize, rwkv_cpp_bytes

    if quick:
        from rwkv_np.config import RWKVConfig
        from rwkv_np.rwkv4.params import random_weights

        raw = random_weights(RWKVConfig(n_layer=2, n_embd=256, vocab_size=bench.SHAPE["V"], ffn_dim=1024), 0)
    else:
        raw = bench.random_169m()
    bench.write_aligned_torch_zip(folder / "bf16.pth", raw, "bfloat16")
    for fmt in ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"):
        def store(name: str, x: np.ndarray, fmt=fmt) -> tuple[int, bytes]:
            if name in ("emb.weight", "head.weight"):
                return 1, encode(x, "float16")  # rwkv.cpp's quantize.py keeps these as they were (FP16)
            return GGML_TYPE_IDS[fmt], ggml_quantize(np.asarray(x, np.float16).astype(np.float32), fmt)
        (folder / f"{fmt}.bin").write_bytes(rwkv_cpp_bytes(raw, GGML_TYPE_IDS[fmt], version=101, store=store))


def child(row: str, path: str) -> dict:
    import rwkv_np
    from rwkv_np.process import short_spin

    short_spin()  # as the command line does
    model = rwkv_np.load_model(path, lazy_embedding=True, **ROWS[row][1])
    model.warm_up()
    rng = np.random.default_rng(0)
    _, state = model.forward([0], mode="recurrent")
    for tok in rng.integers(0, model.config.vocab_size, 8):  # every page of the weights touched
        _, state = model.forward([int(tok)], state, mode="recurrent")
    # bytes read per token: every matrix but the embedding (one row of it is read), as held
    nbytes = sum(a.nbytes for n, a in model.weights.items() if n != "emb.weight")
    res = {"weight_dtype": model.weight_dtype, "bytes_per_token": nbytes, "prefetch_bytes": model.prefetch_bytes,
           "rss_mib": int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024}
    res.update(bench.interleaved_ceiling(model, state, rng, nbytes))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("--child", nargs=2, metavar=("ROW", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rounds = 1 if args.quick else args.rounds
    runs = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory(prefix="rwkv_np_blocks_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        write_files(folder, args.quick)
        print(f"wrote the files in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for r in range(rounds):
            for row, (name, _) in ROWS.items():
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", row, str(folder / name)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{row}: the child failed:\n{out.stderr[-3000:]}")
                runs[row].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}/{rounds} {row}: {runs[row][-1]['il_tok_s']:.1f} tok/s", file=sys.stderr)
    print(f"\n{bench.machine()}; {rounds} round(s), {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| row | held as | MiB read per token | generation tok/s | fraction of the ceiling | RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row, rs in runs.items():
        tok = [x["il_tok_s"] for x in rs]
        frac = [x["il_fraction"] for x in rs]
        print(f"| {row} | {rs[0]['weight_dtype']} | {rs[0]['bytes_per_token'] / bench.MiB:.0f} | "
              f"{np.median(tok):.1f} ({min(tok):.1f}-{max(tok):.1f}) | "
              f"{100 * np.median(frac):.0f}% ({100 * min(frac):.0f}-{100 * max(frac):.0f}%) | "
              f"{np.median([x['rss_mib'] for x in rs]):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": bench.machine(), "rows": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
