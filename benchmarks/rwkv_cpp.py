"""rwkv_np next to rwkv.cpp on the same 169M-shape checkpoint: generation and prompt speed, rounds interleaved.

    python benchmarks/rwkv_cpp.py --rwkv-cpp PATH --files DIR [--rounds 10] [--threads 2]

PATH is a checkout of rwkv.cpp built from source (its `python/rwkv_cpp` package and the
`librwkv.so` its loader finds); rwkv_np never imports it, and neither does this process: rwkv.cpp
runs only in child processes, through its own Python wrapper (ctypes, NumPy; no torch).
DIR holds the checkpoint (random weights of the 169M shape) in both projects' files:
    rwkv4-169m-random-bf16.pth                     (BlinkDL's format; written here if absent, no torch needed)
    rwkv4-169m-random-{FP32,FP16,Q8_0,Q5_1}.bin    (rwkv.cpp's conversions of that file)
rwkv_np reads the .pth (bf16, and int8 quantized at load) and rwkv.cpp's FP32, FP16, Q8_0 and Q5_1 files
themselves (Q5_1 kept in its blocks), so that each pair below compares the same weights.
The .bin files are made with rwkv.cpp's own scripts, in a separate virtual environment that has
torch (never rwkv_np's): the script prints the commands if they are missing.

Every round starts a fresh process per row, in the same order, so that a row's figure and its
partner's come from neighbouring minutes of this shared machine; each child first measures the
machine's read bandwidth (a 512 MiB matrix-vector product, BLAS, best of 3), then generation (median
of 32 single-token steps with the state carried, after 8 warm-up steps) and a 512-token prompt
(rwkv_np: its parallel form; rwkv.cpp: eval_sequence_in_chunks, the best of its chunk sizes 16 and
64). Ratios are taken round by round between partners and their median and range reported.
The logits after the same 16 tokens are compared too: a mis-called peer would show there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # before numpy / numba are imported: they read these once
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (checkpoint writer, best_time, machine line; imports no numba)

STEM = "rwkv4-169m-random"
# row name -> (implementation, file suffix, rwkv_np's quantize option)
ROWS = {
    "rwkv_np fp32": ("rwkv_np", "FP32.bin", None),
    "rwkv.cpp FP32": ("rwkv.cpp", "FP32.bin", None),
    "rwkv_np fp16": ("rwkv_np", "FP16.bin", None),
    "rwkv_np bf16": ("rwkv_np", "bf16.pth", None),
    "rwkv.cpp FP16": ("rwkv.cpp", "FP16.bin", None),
    "rwkv_np int8": ("rwkv_np", "bf16.pth", "int8"),
    "rwkv_np int8 (the Q8_0 file)": ("rwkv_np", "Q8_0.bin", "int8"),
    "rwkv.cpp Q8_0": ("rwkv.cpp", "Q8_0.bin", None),
    "rwkv_np Q5_1 (blocks kept)": ("rwkv_np", "Q5_1.bin", None),
    "rwkv.cpp Q5_1": ("rwkv.cpp", "Q5_1.bin", None),
}
# (numerator, denominator): compared round by round
PAIRS = [("rwkv_np fp32", "rwkv.cpp FP32"), ("rwkv_np fp16", "rwkv.cpp FP16"), ("rwkv_np bf16", "rwkv.cpp FP16"),
         ("rwkv_np int8", "rwkv.cpp Q8_0"), ("rwkv_np int8 (the Q8_0 file)", "rwkv.cpp Q8_0"),
         ("rwkv_np int8", "rwkv.cpp Q5_1"), ("rwkv_np Q5_1 (blocks kept)", "rwkv.cpp Q5_1")]
# (a, b, what the difference measures): logits after the same 16 tokens
AGREEMENT = [("rwkv_np fp32", "rwkv.cpp FP32", "the same float32 weights"),
             ("rwkv_np fp16", "rwkv.cpp FP16", "the same fp16 weights; ggml also rounds the activations to fp16"),
             ("rwkv_np int8 (the Q8_0 file)", "rwkv.cpp Q8_0",
              "the same Q8_0 blocks; rwkv_np requantizes the fp16 head, ggml rounds activations to 8 bits"),
             ("rwkv_np Q5_1 (blocks kept)", "rwkv.cpp Q5_1",
              "the same Q5_1 blocks and fp16 head; ggml rounds activations to 8 bits"),
             ("rwkv_np bf16", "rwkv_np fp32", "the same numbers: the FP32 file holds the bf16 weights widened"),
             ("rwkv_np fp16", "rwkv_np bf16", "fp16 rounding of the bf16 weights, as rwkv.cpp's converter writes them"),
             ("rwkv_np int8", "rwkv_np bf16", "what int8 quantization changes")]
MiB = 1 << 20
CONVERT = """The rwkv.cpp files are missing from {dir}. Make them with rwkv.cpp's scripts, in a venv that has torch:
    python3 -m venv tvenv && tvenv/bin/pip install torch numpy
    cd {cpp}/python
    for t in FP32 FP16; do ../../tvenv/bin/python convert_pytorch_to_ggml.py {dir}/{stem}-bf16.pth {dir}/{stem}-$t.bin $t; done
    for q in Q8_0 Q5_1; do ../../tvenv/bin/python quantize.py {dir}/{stem}-FP16.bin {dir}/{stem}-$q.bin $q; done"""


def _bandwidth() -> float:
    """GB/s of the best of 3 BLAS matrix-vector products over 512 MiB (rows of 3072 floats)."""
    W = np.random.default_rng(1).standard_normal((512 * MiB // 4 // 3072, 3072), dtype=np.float32)
    x, out = np.ones(3072, np.float32), np.empty(W.shape[0], np.float32)
    return W.nbytes / bench.best_time(lambda: np.matmul(W, x, out=out), 3) / 1e9


def _loader(impl: str, path: str, quantize: str | None, cpp: str, threads: int):
    """(bytes read per generated token, step, prompt, facts): step(token, state) -> (logits, state);
    prompt(tokens) -> logits of the last token; facts: a dict of what the loader chose."""
    if impl == "rwkv_np":
        import rwkv_np
        from rwkv_np.process import short_spin

        short_spin()  # as the command line does
        # as the command line loads: 16-bit kept 16-bit, rwkv.cpp's 4- and 5-bit blocks kept as blocks
        model = rwkv_np.load_model(path, keep_16bit=True, keep_blocks=True, lazy_embedding=True, quantize=quantize)
        model.warm_up()  # as the command line does; it also times the rows' prefetch and keeps the faster
        nbytes = sum(a.nbytes for n, a in model.weights.items() if n != "emb.weight")  # as held in memory

        def step(token, state):
            return model.forward([token], state, mode="recurrent")

        def prompt(tokens):
            return model.forward(tokens, mode="parallel")[0]
        return nbytes, step, prompt, {"prefetch_bytes": model.prefetch_bytes}
    sys.path.insert(0, str(Path(cpp) / "python"))
    from rwkv_cpp import rwkv_cpp_model, rwkv_cpp_shared_library

    model = rwkv_cpp_model.RWKVModel(rwkv_cpp_shared_library.load_rwkv_shared_library(), path, thread_count=threads)
    from rwkv_np.formats.base import FileBytes
    from rwkv_np.formats.rwkv_cpp import read_rwkv_cpp

    tensors, _ = read_rwkv_cpp(FileBytes(Path(path)))  # the tensors as rwkv.cpp holds them: sizes as stored
    nbytes = sum(t.nbytes for n, t in tensors.items() if n != "emb.weight")

    def step(token, state):
        logits, state = model.eval(token, state, use_numpy=True)
        return logits, state

    def prompt(tokens, chunk=16):
        return model.eval_sequence_in_chunks(tokens, None, chunk_size=chunk, use_numpy=True)[0]
    return nbytes, step, prompt, {}


def child(row: str, path: str, cpp: str, threads: int) -> dict:
    impl, _, quantize = ROWS[row]
    res = {"bandwidth": _bandwidth()}
    t0 = time.perf_counter()
    nbytes, step, prompt, facts = _loader(impl, path, quantize, cpp, threads)
    res["load_s"] = time.perf_counter() - t0
    res.update(facts)
    res["bytes_per_token"] = nbytes
    rng = np.random.default_rng(0)
    state = None
    for tok in rng.integers(0, bench.SHAPE["V"], 16):  # also the warm-up
        logits, state = step(int(tok), state)
    res["logits16"] = [float(v) for v in np.asarray(logits, np.float32)]
    times = []
    for tok in rng.integers(0, bench.SHAPE["V"], 32):
        t = time.perf_counter()
        _, state = step(int(tok), state)
        times.append(time.perf_counter() - t)
    res["gen_tok_s"] = 1 / float(np.median(times))
    tokens = [int(t) for t in rng.integers(0, bench.SHAPE["V"], 512)]
    if impl == "rwkv_np":
        prompt(tokens[:16])  # first call of the parallel form's scratch
        res["prompt_tok_s"] = 512 / bench.best_time(lambda: prompt(tokens), 2)
    else:
        res["prompt_tok_s"] = max(512 / bench.best_time(lambda: prompt(tokens, chunk), 2) for chunk in (16, 64))
    return res


def run_child(row: str, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", row, str(path), str(args.rwkv_cpp)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{row} ({path.name}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rwkv-cpp", type=Path, required=True, help="a checkout of rwkv.cpp, built (librwkv.so)")
    ap.add_argument("--files", type=Path, required=True, help="folder of the checkpoint files (see above)")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of every row (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both (default 2)")
    ap.add_argument("--json", type=Path, help="also write every child's figures here")
    args = ap.parse_args()
    if not (args.rwkv_cpp / "python" / "rwkv_cpp").is_dir():
        ap.error(f"--rwkv-cpp {args.rwkv_cpp}: no python/rwkv_cpp folder there (a checkout of rwkv.cpp?)")
    if args.rounds < 1:
        ap.error("--rounds: at least 1")
    args.files.mkdir(parents=True, exist_ok=True)
    if not (args.files / f"{STEM}-bf16.pth").exists():
        written = bench.write_checkpoints(args.files)
        print(f"wrote {', '.join(p.name for p in written.values())}")
    paths = {row: args.files / f"{STEM}-{suffix}" for row, (_, suffix, _) in ROWS.items()}
    if not all(p.exists() for p in paths.values()):
        raise SystemExit(CONVERT.format(dir=args.files.resolve(), cpp=args.rwkv_cpp.resolve(), stem=STEM))
    print(f"machine: {bench.machine()}", flush=True)
    cpp_commit = subprocess.run(["git", "-C", str(args.rwkv_cpp), "log", "-1", "--format=%h %cs"],
                                capture_output=True, text=True).stdout.strip()
    print(f"rwkv.cpp {cpp_commit or '(commit unknown)'} at {args.rwkv_cpp}", flush=True)
    runs: dict[str, list[dict]] = {row: [] for row in ROWS}
    for r in range(args.rounds):
        for row in ROWS:
            runs[row].append(run_child(row, paths[row], args))
        print(f"round {r + 1}: " + ", ".join(f"{row} {runs[row][-1]['gen_tok_s']:.1f}" for row in ROWS), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": bench.machine(), "rwkv.cpp": cpp_commit,
                                         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "rows": {row: [{k: v for k, v in x.items() if k != "logits16"} for x in xs]
                                                  for row, xs in runs.items()}}, indent=1) + "\n")
    report(runs)


def report(runs: dict[str, list[dict]]) -> None:
    def med(row, key):
        return float(np.median([x[key] for x in runs[row]]))

    def span(row, key, digits=1):
        v = [x[key] for x in runs[row]]
        return f"{np.median(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"

    first = {row: np.array(x[0]["logits16"]) for row, x in runs.items()}
    print()
    print("logits after the same 16 tokens, max |difference|:")
    for a, b, what in AGREEMENT:
        print(f"  {a} vs {b}: {np.abs(first[a] - first[b]).max():.3g}  ({what})")
    bw = [x["bandwidth"] for row in runs for x in runs[row]]
    print(f"read bandwidth measured in each child: median {np.median(bw):.1f} GB/s ({min(bw):.1f}-{max(bw):.1f})")
    chosen = {row: [x["prefetch_bytes"] for x in xs] for row, xs in runs.items() if "prefetch_bytes" in xs[0]}
    print("rwkv_np's row prefetch chosen at warm-up, bytes ahead (0: none), round by round:")
    for row, ahead in chosen.items():
        print(f"  {row}: {' '.join(map(str, ahead))}")
    print()
    print("| row | MiB read per token | generation, tok/s (range over rounds) | fraction of the bandwidth ceiling "
          "(same process) | prompt 512, tok/s | load to first logits, s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in ROWS:
        nb = runs[row][0]["bytes_per_token"]
        print(f"| {row} | {nb / MiB:.0f} | {span(row, 'gen_tok_s')} | {span_fraction(runs[row], nb)} | "
              f"{span(row, 'prompt_tok_s', 0)} | {med(row, 'load_s'):.2f} |")
    print()
    print("| pair, round by round | generation ratio, median (range) | prompt 512 ratio, median (range) |")
    print("| --- | --- | --- |")
    for a, b in PAIRS:
        cells = []
        for key in ("gen_tok_s", "prompt_tok_s"):
            ratio = [x[key] / y[key] for x, y in zip(runs[a], runs[b])]
            cells.append(f"{np.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})")
        print(f"| {a} / {b} | {cells[0]} | {cells[1]} |")


def span_fraction(results: list[dict], nbytes: int) -> str:
    f = [x["gen_tok_s"] * nbytes / (x["bandwidth"] * 1e9) for x in results]
    return f"{np.median(f):.0%} ({min(f):.0%}-{max(f):.0%})"


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        row, path, cpp = sys.argv[i + 1:i + 4]
        print(json.dumps(child(row, path, cpp, int(os.environ["OMP_NUM_THREADS"]))))
    else:
        main()
