"""Generation and prompts when other programs keep cores busy: rwkv_np (and rwkv.cpp, when given) in one run.

    python benchmarks/busy.py [--tokens 48] [--formats fp32 bf16 int8] [--files DIR] [--json OUT]
                              [--rwkv-cpp PATH]
    python benchmarks/busy.py --quick    # a 7M-weight model, fp32, 8 tokens: that the script runs (tests)

Other programs are stand-ins that spin (`python -c "while True: pass"`), started by this script. For each
weight format, a fresh process per row loads the 169M-shaped checkpoint as the command line does and
times `--tokens` generated tokens after a warm-up, and a 512-token prompt (parallel form); the rows:
    quiet            no other program; threads: rwkv_np's own choice ("auto"), 2, 1
    one core busy    one spinning program; the same three
    both cores busy  two spinning programs; the same three
    leaving          one spinning program that is stopped halfway through the tokens: the speed before
                     and after, and how long after it left the speed came back
"auto" is what rwkv_np does by default (rwkv_np.process.Threads: the cores other processes leave free,
measured from /proc/stat); "2" and "1" fix the count (RWKV.threads).

Training (`python -m rwkv_np train`, a 4 x 256 model, windows of 128 bytes, batches of 8, on random
bytes) is timed the same way, quiet and with one core busy, --threads auto / 2 / 1: the median seconds
per optimiser step from its log.

With --rwkv-cpp PATH (a checkout of rwkv.cpp built from source, as for benchmarks/rwkv_cpp.py), rwkv.cpp's
rows run in the same way on the same weights: its FP32 and FP16 files (written here from the bf16 weights
widened, as its converter writes them), on 2 and 1 threads (it has no automatic count), through its own
Python wrapper in child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402

FORMATS = {"fp32": ("float32", {}), "bf16": ("bfloat16", {"keep_16bit": True}),
           "int8": ("float32", {"quantize": "int8"})}
CPP_FORMATS = {"FP32": 0, "FP16": 1}  # rwkv.cpp's data type ids
QUICK_VOCAB = 8000
VOCAB = [bench.SHAPE["V"]]  # the model's vocabulary (--quick's smaller one), handed to the children
SCENARIOS = {"quiet": 0, "one core busy": 1, "both cores busy": 2}


def spinners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def child(impl: str, path: str, options: dict, threads: str, tokens: int, leave_at: int, pids: list[int],
          cpp: str | None, vocab: int) -> dict:
    """In a fresh process: load as the command line does, then time generation and a prompt."""
    if impl == "rwkv_np":
        import rwkv_np
        from rwkv_np.process import short_spin

        if os.environ.get("BUSY_SPIN", "short") == "short":
            short_spin()  # as the command line does
        model = rwkv_np.load_model(path, lazy_embedding=True, **options)
        model.threads = None if threads == "auto" else int(threads)
        model.warm_up()

        def step(token, state):
            return model.forward([token], state, mode="recurrent")

        def prompt(toks):
            return model.forward(toks)
    else:
        sys.path.insert(0, str(Path(cpp) / "python"))
        from rwkv_cpp import rwkv_cpp_model, rwkv_cpp_shared_library

        model = rwkv_cpp_model.RWKVModel(rwkv_cpp_shared_library.load_rwkv_shared_library(), path,
                                         thread_count=int(threads))

        def step(token, state):
            return model.eval(token, state, use_numpy=True)

        def prompt(toks):  # its faster chunk size on a quiet machine (benchmarks/rwkv_cpp.py tries 16 and 64)
            return model.eval_sequence_in_chunks(toks, None, chunk_size=64, use_numpy=True)
    rng = np.random.default_rng(0)
    state = None
    for tok in rng.integers(0, vocab, 8):
        logits, state = step(int(tok), state)
    stamps, left = [], None
    for i, tok in enumerate(rng.integers(0, vocab, tokens)):
        if i == leave_at:
            for pid in pids:
                os.kill(pid, 9)
            left = time.perf_counter()
        t = time.perf_counter()
        _, state = step(int(tok), state)
        stamps.append((t, time.perf_counter() - t))
    res = {"times": [dt for _, dt in stamps], "starts": [t for t, _ in stamps], "left": left}
    toks = [int(t) for t in rng.integers(0, vocab, 512)]
    if leave_at < 0:
        prompt(toks[:16])
        res["prompt_s"] = bench.best_time(lambda: prompt(toks), 2)
    return res


def run(path: Path, fmt: str, threads: str, busy: int, tokens: int, leave: bool, cpp: Path | None = None) -> dict:
    procs = spinners(busy)
    try:
        time.sleep(0.5)
        cmd = [sys.executable, __file__, "--child", json.dumps({
            "impl": "rwkv_np" if cpp is None else "rwkv.cpp", "path": str(path),
            "options": FORMATS[fmt][1] if cpp is None else {}, "threads": threads, "tokens": tokens,
            "leave_at": tokens // 2 if leave else -1, "pids": [p.pid for p in procs] if leave else [],
            "cpp": None if cpp is None else str(cpp), "vocab": VOCAB[0]})]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{fmt} {threads} threads, {busy} busy: failed\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
            p.wait()


def train_step_seconds(folder: Path, threads: str, busy: int, steps: int) -> float:
    """Median seconds per optimiser step of a small training run (its log's times), `busy` cores taken."""
    data = folder / "random-bytes.txt"
    if not data.exists():
        data.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    out, log = folder / "busy-train.safetensors", folder / "busy-train.jsonl"
    for p in (out, log, Path(str(out) + ".ckpt")):
        p.unlink(missing_ok=True)
    procs = spinners(busy)
    try:
        time.sleep(0.5)
        cmd = [sys.executable, "-m", "rwkv_np", "train", "--data", str(data), "--out", str(out), "--log", str(log),
               "--n-layer", "4", "--n-embd", "256", "--ctx-len", "128", "--batch-size", "8", "--steps", str(steps),
               "--eval-every", str(10 * steps), "--save-every", str(10 * steps), "--final-eval-windows", "1"]
        if threads != "auto":
            cmd += ["--threads", threads]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
        if done.returncode:
            raise SystemExit(f"training, {threads} threads, {busy} busy: failed\n{done.stderr[-3000:]}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    times = [json.loads(line)["time"] for line in log.read_text().splitlines() if '"loss"' in line]
    return float(np.median(np.diff(times)[2:]))  # after the first steps (compilation, first touches)


def rate(times) -> float:
    return 1 / float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--files", type=Path, default=None, help="folder for the checkpoints (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--quick", action="store_true", help="a small model (2 x 512, vocabulary 8000), fp32, 8 tokens")
    ap.add_argument("--spin", choices=("short", "default"), default="short",
                    help="how rwkv_np's idle threads wait: short (process.short_spin, as the command line) or "
                         "default (libgomp's long spin, as a program importing rwkv_np gets unless it calls "
                         "short_spin)")
    ap.add_argument("--no-train", action="store_true", help="leave out the training rows")
    ap.add_argument("--rwkv-cpp", type=Path, default=None, metavar="PATH",
                    help="a checkout of rwkv.cpp, built (librwkv.so): its rows too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.child:
        os.environ["BUSY_SPIN"] = args.spin  # the children read it
    if args.child:
        a = json.loads(args.child)
        print(json.dumps(child(a["impl"], a["path"], a["options"], a["threads"], a["tokens"], a["leave_at"], a["pids"],
                               a["cpp"], a["vocab"])))
        return
    import tempfile

    folder = args.files or Path(tempfile.mkdtemp(prefix="rwkv_np_busy_"))
    folder.mkdir(parents=True, exist_ok=True)
    written = {"float32": folder / "rwkv4-169m-random-fp32.pth", "bfloat16": folder / "rwkv4-169m-random-bf16.pth"}
    if args.quick:
        from rwkv_np.config import RWKVConfig
        from rwkv_np.rwkv4.params import random_weights

        written = {"float32": folder / "quick-fp32.pth"}
        config = RWKVConfig(n_layer=2, n_embd=512, vocab_size=QUICK_VOCAB, ffn_dim=2048)
        bench.write_aligned_torch_zip(written["float32"], random_weights(config, 0), "float32")
        args.formats, args.tokens, args.rwkv_cpp = ["fp32"], 8, None
        del SCENARIOS["both cores busy"]
        VOCAB[0] = QUICK_VOCAB
    elif not all(p.exists() for p in written.values()):
        written = bench.write_checkpoints(folder)
    # (label, path, fmt, thread counts, rwkv.cpp checkout or None)
    counts = ("auto", "1") if args.quick else ("auto", "2", "1")
    rows = [(fmt, written[FORMATS[fmt][0]], fmt, counts, None) for fmt in args.formats]
    if args.rwkv_cpp is not None:
        if not (args.rwkv_cpp / "python" / "rwkv_cpp").is_dir():
            ap.error(f"--rwkv-cpp {args.rwkv_cpp}: no python/rwkv_cpp folder there (a checkout of rwkv.cpp?)")
        for fmt, type_id in CPP_FORMATS.items():
            path = folder / f"rwkv4-169m-random-{fmt}.bin"
            if not path.exists():
                from helpers import bf16_round, rwkv_cpp_bytes

                path.write_bytes(rwkv_cpp_bytes({k: bf16_round(v) for k, v in bench.random_169m().items()}, type_id))
            rows.append((f"rwkv.cpp {fmt}", path, fmt, ("2", "1"), args.rwkv_cpp))
    print(f"machine: {bench.machine()}; load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    results = {}
    print(f"\n| weights | threads | {' | '.join(SCENARIOS)} | prompt 512, quiet / one busy |")
    print("| --- " * (len(SCENARIOS) + 3) + "|")
    for label, path, fmt, counts, cpp in rows:
        for threads in counts:
            row = {name: run(path, fmt, threads, busy, args.tokens, False, cpp) for name, busy in SCENARIOS.items()}
            results[f"{label} {threads}"] = row
            gen = " | ".join(f"{rate(row[s]['times']):.1f} tok/s" for s in SCENARIOS)
            prompt = f"{512 / row['quiet']['prompt_s']:.0f} / {512 / row['one core busy']['prompt_s']:.0f} tok/s"
            print(f"| {label} | {threads} | {gen} | {prompt} |", flush=True)
    print("\n| weights | threads | while one core busy | after it left | back to 80% of quiet after |")
    print("| --- | --- | --- | --- | --- |")
    for label, path, fmt, counts, cpp in rows:
        quiet = rate(results[f"{label} {counts[0]}"]["quiet"]["times"])
        for threads in counts[:2] if cpp is None else counts[:1]:
            r = run(path, fmt, threads, 1, 2 * args.tokens + 16, True, cpp)
            results[f"{label} {threads} leaving"] = r
            half = len(r["times"]) // 2
            back = next((s - r["left"] for s, dt in zip(r["starts"][half:], r["times"][half:])
                         if 1 / dt >= 0.8 * quiet), float("nan"))
            print(f"| {label} | {threads} | {rate(r['times'][:half]):.1f} tok/s | {rate(r['times'][half + 8:]):.1f} tok/s"
                  f" | {back:.2f} s |", flush=True)
    if not (args.quick or args.no_train):
        print("\n| training | threads | quiet | one core busy |\n| --- | --- | --- | --- |")
        for threads in ("auto", "2", "1"):
            row = {name: train_step_seconds(folder, threads, busy, 14) for name, busy in list(SCENARIOS.items())[:2]}
            results[f"training {threads}"] = row
            print(f"| 4 x 256, batch 8 x 128 | {threads} | " + " | ".join(f"{v:.3f} s/step" for v in row.values())
                  + " |", flush=True)
    print(f"\nload average after: {open('/proc/loadavg').read().split()[:3]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
