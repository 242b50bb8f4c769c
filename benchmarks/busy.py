"""Generation and prompts when other programs keep cores busy: rwkv_np (and rwkv.cpp, when given) in one run.

    python benchmarks/busy.py [--tokens 48] [--formats fp32 bf16 int8] [--files DIR] [--json OUT]

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
SCENARIOS = {"quiet": 0, "one core busy": 1, "both cores busy": 2}


def spinners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def child(path: str, options: dict, threads: str, tokens: int, leave_at: int, pids: list[int]) -> dict:
    """In a fresh process: load as the command line does, then time generation and a prompt."""
    import rwkv_np
    from rwkv_np.process import short_spin

    short_spin()  # as the command line does
    model = rwkv_np.load_model(path, lazy_embedding=True, **options)
    model.warm_up()
    model.threads = None if threads == "auto" else int(threads)
    rng = np.random.default_rng(0)
    state = None
    for tok in rng.integers(0, bench.SHAPE["V"], 8):
        _, state = model.forward([int(tok)], state, mode="recurrent")
    stamps, left = [], None
    for i, tok in enumerate(rng.integers(0, bench.SHAPE["V"], tokens)):
        if i == leave_at:
            for pid in pids:
                os.kill(pid, 9)
            left = time.perf_counter()
        t = time.perf_counter()
        _, state = model.forward([int(tok)], state, mode="recurrent")
        stamps.append((t, time.perf_counter() - t))
    res = {"times": [dt for _, dt in stamps], "starts": [t for t, _ in stamps], "left": left}
    prompt = [int(t) for t in rng.integers(0, bench.SHAPE["V"], 512)]
    if leave_at < 0:
        model.forward(prompt[:16])
        res["prompt_s"] = bench.best_time(lambda: model.forward(prompt), 2)
    return res


def run(path: Path, fmt: str, threads: str, busy: int, tokens: int, leave: bool) -> dict:
    procs = spinners(busy)
    try:
        time.sleep(0.5)
        cmd = [sys.executable, __file__, "--child", json.dumps({
            "path": str(path), "options": FORMATS[fmt][1], "threads": threads, "tokens": tokens,
            "leave_at": tokens // 2 if leave else -1, "pids": [p.pid for p in procs] if leave else []})]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{fmt} {threads} threads, {busy} busy: failed\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
            p.wait()


def rate(times) -> float:
    return 1 / float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--files", type=Path, default=None, help="folder for the checkpoints (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        a = json.loads(args.child)
        print(json.dumps(child(a["path"], a["options"], a["threads"], a["tokens"], a["leave_at"], a["pids"])))
        return
    import tempfile

    folder = args.files or Path(tempfile.mkdtemp(prefix="rwkv_np_busy_"))
    folder.mkdir(parents=True, exist_ok=True)
    written = {"float32": folder / "rwkv4-169m-random-fp32.pth", "bfloat16": folder / "rwkv4-169m-random-bf16.pth"}
    if not all(p.exists() for p in written.values()):
        written = bench.write_checkpoints(folder)
    print(f"machine: {bench.machine()}; load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    results = {}
    print("\n| weights | threads | quiet | one core busy | both cores busy | prompt 512, quiet / one busy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for fmt in args.formats:
        path = written[FORMATS[fmt][0]]
        for threads in ("auto", "2", "1"):
            row = {name: run(path, fmt, threads, busy, args.tokens, False) for name, busy in SCENARIOS.items()}
            results[f"{fmt} {threads}"] = row
            gen = " | ".join(f"{rate(row[s]['times']):.1f} tok/s" for s in SCENARIOS)
            prompt = f"{512 / row['quiet']['prompt_s']:.0f} / {512 / row['one core busy']['prompt_s']:.0f} tok/s"
            print(f"| {fmt} | {threads} | {gen} | {prompt} |", flush=True)
    print("\n| weights | threads | while one core busy | after it left | back to 80% of quiet after |")
    print("| --- | --- | --- | --- | --- |")
    for fmt in args.formats:
        path = written[FORMATS[fmt][0]]
        quiet = rate(results[f"{fmt} auto"]["quiet"]["times"])
        for threads in ("auto", "2"):
            r = run(path, fmt, threads, 1, 2 * args.tokens, True)
            results[f"{fmt} {threads} leaving"] = r
            half = len(r["times"]) // 2
            back = next((s - r["left"] for s, dt in zip(r["starts"][half:], r["times"][half:])
                         if 1 / dt >= 0.8 * quiet), float("nan"))
            print(f"| {fmt} | {threads} | {rate(r['times'][:half]):.1f} tok/s | {rate(r['times'][half + 8:]):.1f} tok/s"
                  f" | {back:.2f} s |", flush=True)
    print(f"\nload average after: {open('/proc/loadavg').read().split()[:3]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
