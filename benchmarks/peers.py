"""rwkv_np next to a PyTorch peer (BlinkDL's `rwkv` package, ChatRWKV) on the same checkpoint, same run.

    python benchmarks/peers.py --peer-python /path/to/peervenv/bin/python [--threads 2]
    python benchmarks/peers.py --peer-python ... --checkpoint-dir DIR    # existing rwkv4-169m-random-*.pth

Optional: the peer needs its own virtual environment with torch, rwkv and numpy, e.g.
    python3.11 -m venv peervenv && peervenv/bin/pip install torch numpy && peervenv/bin/pip install --no-deps rwkv
rwkv_np never imports torch, and neither does this process: the peer runs only in children started
with --peer-python. Every (implementation, dtype, figure) runs in a fresh subprocess, as in bench.py,
so each load time and peak RSS is its own. Figures: generation (median of 64 single-token steps with
the state carried, after 8 warm-up steps), a 512-token prompt (best of 3), seconds to first logits,
peak RSS while generating. The logits of both after the same 16 tokens, fed at once and one at a
time, are compared: a mis-called peer would show here, not as a surprising speed.
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

if __name__ == "__main__":  # before numpy / numba / torch are imported: they read these once
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (checkpoint writer, loader call, best_time, machine line; imports no numba)

FILES = {"fp32": "rwkv4-169m-random-fp32.pth", "bf16": "rwkv4-169m-random-bf16.pth"}
PEER_STRATEGY = {"fp32": "cpu fp32", "bf16": "cpu bf16"}


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _loader(impl: str, path: str, dtype: str, threads: int):
    """Returns (info, step): step(tokens, state, whole) -> (float32 logits, state). `whole`: the
    prompt form (rwkv_np's parallel form, the peer's sequence mode); else one token per call."""
    if impl == "rwkv_np":
        import rwkv_np

        model = rwkv_np.load_model(path, keep_16bit=True, lazy_embedding=True)  # as the command line does

        def step(tokens, state, whole):
            return model.forward(tokens, state, mode="parallel" if whole else "recurrent")
        return {"weights": model.weight_dtype, "warm_up": model.warm_up}, step
    from importlib.metadata import version

    import torch

    torch.set_num_threads(threads)
    from rwkv.model import RWKV

    model = RWKV(model=path[:-len(".pth")], strategy=PEER_STRATEGY[dtype], verbose=False)  # it adds ".pth"

    def step(tokens, state, whole):
        logits, state = model.forward([int(t) for t in tokens], state)  # len > 1: its sequence mode
        return logits.numpy(), state
    return {"torch": torch.__version__, "rwkv": version("rwkv"), "jit": os.environ.get("RWKV_JIT_ON"),
            "strategy": PEER_STRATEGY[dtype], "torch_threads": torch.get_num_threads()}, step


def child(impl: str, path: str, dtype: str, what: str, out_dir: str, threads: int) -> dict:
    """In a fresh process: import, load to first logits, then "gen" (with the 16-token logits
    saved for the agreement check) or "prompt"."""
    res: dict = {}
    t0 = time.perf_counter()
    if impl == "rwkv_np":
        import rwkv_np.rwkv4.engine  # noqa: F401  (numba)
    else:
        import torch  # noqa: F401
    res["import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    info, step = _loader(impl, path, dtype, threads)
    logits, state = step([0], None, False)
    res["load_s"] = time.perf_counter() - t0
    if "warm_up" in info:
        info.pop("warm_up")()  # both forms loaded, Numba's compiler code released (as the command line)
    res.update(info)
    rng = np.random.default_rng(0)
    if what == "gen":
        prompt = [int(t) for t in rng.integers(0, bench.SHAPE["V"], 16)]
        whole, _ = step(prompt, None, True)
        s = None
        for tok in prompt:
            one, s = step([tok], s, False)
        np.save(Path(out_dir) / f"{impl}-{dtype}.npy", np.stack([whole, one]).astype(np.float32))
        for tok in rng.integers(0, bench.SHAPE["V"], 8):  # warm-up: weights paged in, JIT profiled
            logits, state = step([int(tok)], state, False)
        try:  # peak RSS from here on (Linux: writing 5 resets VmHWM to the current RSS)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        times = []
        for tok in rng.integers(0, bench.SHAPE["V"], 64):
            t = time.perf_counter()
            _, state = step([int(tok)], state, False)
            times.append(time.perf_counter() - t)
        res["gen_tok_s"] = 1 / float(np.median(times))
        res["gen_best_tok_s"] = 1 / min(times)  # the least disturbed step, when the host is busy
        res["gen_peak_mib"] = _rss_mib("VmHWM")
    else:
        prompt = [int(t) for t in rng.integers(0, bench.SHAPE["V"], 512)]
        step(prompt[:16], None, True)  # compile / profile the sequence path
        res["prompt_tok_s"] = 512 / bench.best_time(lambda: step(prompt, None, True), 3)
    return res


def run_child(python: str, impl: str, path: Path, dtype: str, what: str, out_dir: Path,
              args: argparse.Namespace) -> dict:
    env = os.environ.copy()
    if impl == "peer":  # read by rwkv.model at import time
        env.update(RWKV_JIT_ON=args.peer_jit, RWKV_CUDA_ON="0")
    cmd = [python, __file__, "--threads", str(args.threads), "--child", impl, str(path), dtype, what, str(out_dir)]
    load = Path("/proc/loadavg").read_text().split()[0]  # other agents share the host: note it per child
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{impl} {dtype} {what} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "loadavg": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer-python", required=True, help="python of a venv with torch, rwkv and numpy")
    ap.add_argument("--threads", type=int, default=2, help="BLAS, Numba and torch threads (default 2)")
    ap.add_argument("--checkpoint-dir", type=Path, help=f"folder holding {' and '.join(FILES.values())}")
    ap.add_argument("--peer-jit", choices=["0", "1"], default="1", help="RWKV_JIT_ON for the peer (default 1)")
    args = ap.parse_args()
    print(f"machine: {bench.machine()}", flush=True)
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rwkv_np_peers_") as tmp:
        tmp = Path(tmp)
        if args.checkpoint_dir:
            paths = {d: args.checkpoint_dir / f for d, f in FILES.items()}
        else:
            written = bench.write_checkpoints(tmp)
            paths = {"fp32": written["float32"], "bf16": written["bfloat16"]}
        (tmp / "warm").mkdir()
        bench.run_child(tmp / "warm", False, "warm", args.threads)  # Numba's on-disk cache, as in bench.py
        runs = {}
        for dtype in FILES:
            for impl, python in (("rwkv_np", sys.executable), ("peer", args.peer_python)):
                for what in ("gen", "prompt"):
                    runs[impl, dtype, what] = run_child(python, impl, paths[dtype], dtype, what, tmp, args)
        agree = {d: np.abs(np.load(tmp / f"rwkv_np-{d}.npy") - np.load(tmp / f"peer-{d}.npy")).max(axis=1)
                 for d in FILES}
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")
    report(runs, agree)


def report(runs: dict, agree: dict) -> None:
    p = runs["peer", "fp32", "gen"]
    peer = f"peer (rwkv {p['rwkv']}, torch {p['torch']}, cpu fp32 / cpu bf16, JIT {p['jit']})"
    print(f"rwkv_np {_version('rwkv_np')}; "
          f"peer torch {p['torch']} ({p['torch_threads']} threads), rwkv {p['rwkv']}, RWKV_JIT_ON={p['jit']}")
    print(f"import: rwkv_np (numba) {runs['rwkv_np', 'fp32', 'gen']['import_s']:.2f} s, torch {p['import_s']:.2f} s")
    for d in FILES:
        print(f"logits after 16 tokens, max |rwkv_np - peer| ({d}): at once {agree[d][0]:.2e}, "
              f"one at a time {agree[d][1]:.2e}" + ("  (the peer's bf16 strategy computes in bf16)" if d == "bf16" else ""))
    for d in FILES:
        print(f"generation {d}, best single step: rwkv_np {runs['rwkv_np', d, 'gen']['gen_best_tok_s']:.1f}, "
              f"peer {runs['peer', d, 'gen']['gen_best_tok_s']:.1f} tok/s")
    print("1-minute load average before each child: " + ", ".join(
        f"{impl} {d} {what} {r['loadavg']}" for (impl, d, what), r in runs.items()))
    print()
    print(f"| figure | rwkv_np | {peer} | ratio rwkv_np / peer |")
    print("| --- | --- | --- | --- |")
    rows = [("generation, {d}, tok/s (median of 64)", "gen", "gen_tok_s", 1),
            ("prompt 512 tokens, {d}, tok/s (best of 3)", "prompt", "prompt_tok_s", 0),
            ("load to first logits, {d}, s", "gen", "load_s", 2),
            ("peak RSS while generating, {d}, MiB", "gen", "gen_peak_mib", 0)]
    for name, what, key, digits in rows:
        for d in FILES:
            a, b = runs["rwkv_np", d, what][key], runs["peer", d, what][key]
            print(f"| {name.format(d=d)} | {a:.{digits}f} | {b:.{digits}f} | {a / b:.2f} |")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        impl, path, dtype, what, out_dir = sys.argv[i + 1:i + 6]
        print(json.dumps(child(impl, path, dtype, what, out_dir, int(os.environ["OMP_NUM_THREADS"]))))
    else:
        main()
