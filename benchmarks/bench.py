"""The performance table of issue 6: rwkv_np on a 169M-shaped RWKV-4 next to this machine's ceilings,
and (issue 12) the same figures for a 169M-class shape of each later version (5.1, 5.2, 6, 7).

    python benchmarks/bench.py                   # every version: about 8 minutes on 2 cores
    python benchmarks/bench.py --versions 4      # the RWKV-4 table alone (about 2 minutes)
    python benchmarks/bench.py --versions 6,7 --threads 1 --quick

The later versions: random weights of a 169M-class shape (12 layers x 768, head size 64, FFN 3072,
vocab 65536 as the World models, the LoRA ranks of BlinkDL's 0.1B models) written as a float32 .pth
with BlinkDL's names; generation tok/s against the bandwidth ceiling measured in the same process
(interleaved_ceiling) and a 512-token prompt, in both forms.

Random weights of the 169M shape (12 layers, 768 channels, FFN 3072, vocab 50277) are saved as real
checkpoints (fp32 and bf16 .pth, torch.save's zip layout) in a temporary folder. The ceilings are
measured in the same run, so the fractions stay meaningful on a shared machine:
    read bandwidth   a matrix-vector product over a matrix much larger than the caches
    matmul GFLOP/s   a large float32 matrix product (BLAS)
    generation ceiling = bandwidth / bytes of weights read per token (all but the embedding); the
                         generation rows measure the bandwidth again inside each generation process,
                         in rounds that alternate with the generation steps (interleaved_ceiling)
    prompt ceiling     = GFLOP/s / (2 x block parameters per token)
Every measurement runs in a fresh subprocess, so each load time and peak RSS is its own; this
process only writes the checkpoints and prints (it never imports Numba: a library mapped by two
processes is counted in the RSS of both and cannot be released by either, see
rwkv_np.process.release_compiler_pages).
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

REPO = Path(__file__).resolve().parents[1]


def _set_threads(n: int) -> None:
    # before numpy / numba are imported: both read these once, at start-up
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


if __name__ == "__main__":
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
    _set_threads(int(_threads))

import numpy as np  # noqa: E402

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SHAPE = dict(n_layer=12, C=768, F=3072, V=50277)
MiB = 1 << 20
LATER = ("5.1", "5.2", "6", "7")
# the later versions' 169M-class shape (the sizes their parameter tables are written in); LoRA ranks as in
# BlinkDL's 0.1B RWKV-6 / RWKV-7 World models
LATER_DIMS = dict(V=65536, C=768, L=12, A=768, F=3072, H=12, N=64, Dm=32, Dd=64, Dw=64, Da=64, Dv=32, Dg=128)


# ---- the checkpoints ----------------------------------------------------------------------------

def random_169m(seed: int = 0) -> dict[str, np.ndarray]:
    """A raw BlinkDL state dict of the 169M shape, float32 (rwkv_np.rwkv4.params.random_weights)."""
    from rwkv_np.config import RWKVConfig
    from rwkv_np.rwkv4.params import random_weights

    config = RWKVConfig(n_layer=SHAPE["n_layer"], n_embd=SHAPE["C"], vocab_size=SHAPE["V"], ffn_dim=SHAPE["F"])
    return random_weights(config, seed)


def write_aligned_torch_zip(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """torch.save's archive, with each member's data 64-byte aligned as torch.save writes it (an
    extra field of padding in the local header), so that the storages can be memory-mapped."""
    import struct
    import zipfile

    from helpers import torch_zip_members  # tests/helpers.py: torch.save's members, no torch

    with open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in torch_zip_members(tensors, dtype):
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            start = f.tell() + 30 + len(name.encode()) + 4  # local header, name, extra field header
            info.extra = struct.pack("<HH", 0x4246, -start % 64) + b"Z" * (-start % 64)
            zf.writestr(info, data)


def random_later(version: str, dims: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """A raw BlinkDL state dict of a later version, float32, values in the ranges trained models have
    (LayerNorm weights near 1, token-shift mixes in (0, 1), decays from slow to fast, matrices with
    unit-variance outputs), so that the activations stay finite through every layer."""
    from rwkv_np import registry

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in registry.get(version).shapes(dims).items():
        end = name.rsplit(".", 1)[-1]
        if name.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")):
            a = 1 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif end.startswith(("time_mix", "time_maa_", "x_")) and len(shape) == 1:
            a = rng.uniform(0, 1, shape).astype(np.float32)
        elif end == "time_decay":
            a = rng.uniform(-6, 1, shape).astype(np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(shape[-1] ** -0.5)
        out[name] = a
    return out


def write_later_checkpoint(folder: Path, version: str) -> Path:
    path = folder / f"rwkv{version}-169m-class-random-fp32.pth"
    write_aligned_torch_zip(path, random_later(version, LATER_DIMS), "float32")
    os.sync()
    return path


def write_checkpoints(folder: Path) -> dict[str, Path]:
    raw = random_169m()
    paths = {"float32": folder / "rwkv4-169m-random-fp32.pth", "bfloat16": folder / "rwkv4-169m-random-bf16.pth"}
    for dtype, path in paths.items():
        write_aligned_torch_zip(path, raw, dtype)
    os.sync()  # the kernel writing a GB of dirty pages back to disk would slow what follows
    return paths


#: bytes per matrix element of int8 weights: 1, plus a float32 scale per block of 32
INT8_BYTES = 1 + 4 / 32
BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": INT8_BYTES}


def weight_bytes(bytes_per_matrix_element: float) -> dict[str, int]:
    L, C, F, V = SHAPE["n_layer"], SHAPE["C"], SHAPE["F"], SHAPE["V"]
    block_matrix = 5 * C * C + 2 * C * F
    vectors = L * 11 * C + 4 * C  # the 11 per-channel vectors of rwkv_np.rwkv4.params.VECTORS, ln0, ln_out
    return {"block_params": L * block_matrix,
            "all": int((2 * V * C + L * block_matrix) * bytes_per_matrix_element + vectors * 4),
            "per_token": int((V * C + L * block_matrix) * bytes_per_matrix_element + vectors * 4)}


# ---- ceilings -----------------------------------------------------------------------------------

def best_time(fn, repeat: int, min_time: float = 0.0) -> float:
    """The fastest of `repeat` runs (at least min_time seconds of runs in all): other agents share
    the machine, and the fastest run is the one least disturbed."""
    best, total, n = float("inf"), 0.0, 0
    while n < repeat or total < min_time:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def ceilings(quick: bool) -> dict[str, float]:
    """Read bandwidth: the best matrix-vector product over 512 MiB (BLAS and rwkv_np's Numba kernel with
    each of its prefetch choices, rows of 768, 3072 and 8192 floats: which reads fastest depends on
    the shape and the machine). Matmul: BLAS."""
    from rwkv_np import products as K

    rng = np.random.default_rng(1)
    bw = {"blas": 0.0, "numba": 0.0}
    for cols in (768, 3072, 8192):
        W = rng.standard_normal(((512 * MiB // 4) // cols, cols), dtype=np.float32)
        x = rng.standard_normal(cols, dtype=np.float32)
        out = np.empty(W.shape[0], np.float32)
        K.matvec(W[:8], x, out[:8])  # compile
        bw["blas"] = max(bw["blas"], W.nbytes / best_time(lambda: np.matmul(W, x, out=out), 3 if quick else 5))
        for ahead in K.PREFETCH_CHOICES:
            bw["numba"] = max(bw["numba"], W.nbytes / best_time(lambda: K.matvec(W, x, out, None, ahead), 3 if quick else 5))
        del W
    n = 2048 if quick else 3072
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty_like(A)
    gflops = 2 * n ** 3 / best_time(lambda: np.matmul(A, B, out=C), 3 if quick else 5) / 1e9
    return {"bw_blas": bw["blas"] / 1e9, "bw_numba": bw["numba"] / 1e9, "bandwidth": max(bw.values()) / 1e9,
            "gflops": gflops}


# ---- the model figures, each in its own process ------------------------------------------------

def child(path: str, keep_16bit: bool | str, what: str) -> dict:
    """Runs in a fresh process: load, first logits, then `what` ("gen" or "prompt")."""
    status = Path("/proc/self/status")

    def rss(field: str) -> float:
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MiB
        return float("nan")

    res = {}
    t0 = time.perf_counter()
    import rwkv_np.rwkv4.engine  # noqa: F401  (numpy is imported already; this times numba and the engine)
    from rwkv_np.process import short_spin

    short_spin()  # as the command line does

    res["import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load(path, keep_16bit)
    logits, state = model.forward([0], mode="recurrent")
    res["load_s"] = time.perf_counter() - t0
    res["weight_dtype"] = model.weight_dtype
    res["version"] = version = model.config.version
    # bytes read per token: every weight but the embedding (of which one row is read)
    res["bytes_per_token"] = sum(np.asarray(a).nbytes for n, a in model.weights.items() if n != "emb.weight")
    res["block_params"] = sum(int(np.prod(np.shape(a))) for n, a in model.weights.items() if n.startswith("blocks."))
    model.warm_up()  # as the command line does: both forms loaded, Numba's compiler code released, prefetch timed
    res["prefetch_bytes"] = model.prefetch_bytes
    res["load_peak_mib"] = rss("VmHWM")
    rng = np.random.default_rng(0)
    if what == "gen":
        for tok in rng.integers(0, SHAPE["V"], 8):  # warm-up: every page of the weights touched
            logits, state = model.forward([int(tok)], state, mode="recurrent")
        try:  # peak RSS from here on (Linux: writing 5 resets VmHWM to the current RSS)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        steps, times = 64, []
        for tok in rng.integers(0, SHAPE["V"], steps):
            t = time.perf_counter()
            logits, state = model.forward([int(tok)], state, mode="recurrent")
            times.append(time.perf_counter() - t)
        times = np.sort(times)
        res["gen_tok_s"] = 1 / np.median(times)
        res["gen_best_tok_s"] = 1 / times[0]
        res["gen_peak_mib"] = rss("VmHWM")
        res.update(interleaved_ceiling(model, state, rng, bytes_per_token=weight_bytes(
            BYTES_PER_ELEMENT[model.weight_dtype])["per_token"] if version == "4" else res["bytes_per_token"]))
        # the version's plain-NumPy reference (NumPy + BLAS matrix-vector products), for comparison
        reference = model.reference
        s, params = (state.data if version == "4" else (state.data, state.wkv)), model.params
        times = []
        for tok in rng.integers(0, SHAPE["V"], 12):
            t = time.perf_counter()
            _, s = reference.step(params, int(tok), s)
            times.append(time.perf_counter() - t)
        res["ref_gen_tok_s"] = 1 / np.median(times)
    else:
        prompt = rng.integers(0, SHAPE["V"], 512)
        model.forward(prompt[:16])  # compile / warm
        res["prompt_par_tok_s"] = 512 / best_time(lambda: model.forward(prompt, mode="parallel"), 3)
        res["prompt_rec_tok_s"] = 512 / best_time(lambda: model.forward(prompt, mode="recurrent"), 1)
        if model.weight_dtype == "float32":  # the references compute in float32 whatever the weights
            reference = model.reference
            params = model.params
            res["ref_prompt_tok_s"] = 512 / best_time(lambda: reference.forward(params, prompt), 1)
    return res


def interleaved_ceiling(model, state, rng, bytes_per_token: int, rounds: int = 7, steps: int = 16) -> dict:
    """Generation against the read bandwidth measured in the same process, turn and turn about.

    How fast this virtual machine reads memory changes from one process to the next and within
    one (30 to 47 GB/s here within minutes), so a ceiling measured in another process, or a minute
    earlier, can put the same code at 72% or at 134%. Each round times a matrix-vector product over
    512 MiB (BLAS, and Numba with each prefetch choice, rows of 768 and 3072 floats: the best of
    them all) and then `steps`
    generation steps; the fraction is taken per round and its median reported."""
    from rwkv_np import products as K

    buf = np.random.default_rng(1).standard_normal((512 * MiB // 4) // 3072 * 3072, dtype=np.float32)
    shapes = [buf.reshape(-1, cols) for cols in (768, 3072)]
    xs = [np.ones(W.shape[1], np.float32) for W in shapes]
    outs = [np.empty(W.shape[0], np.float32) for W in shapes]
    fractions, rates, bandwidths = [], [], []
    for _ in range(rounds):
        best = min(min([best_time(lambda: np.matmul(W, x, out=o), 1)]
                       + [best_time(lambda: K.matvec(W, x, o, None, ahead), 1) for ahead in K.PREFETCH_CHOICES])
                   for W, x, o in zip(shapes, xs, outs))
        bandwidth = buf.nbytes / best
        times = []
        for tok in rng.integers(0, SHAPE["V"], steps):
            t = time.perf_counter()
            _, state = model.forward([int(tok)], state, mode="recurrent")
            times.append(time.perf_counter() - t)
        rate = 1 / float(np.median(times))
        fractions.append(rate * bytes_per_token / bandwidth)
        rates.append(rate)
        bandwidths.append(bandwidth)
    return {"il_tok_s": float(np.median(rates)), "il_bandwidth": float(np.median(bandwidths)) / 1e9,
            "il_fraction": float(np.median(fractions)), "il_fraction_range": [min(fractions), max(fractions)]}


def load(path: str, keep_16bit: bool | str):
    """rwkv_np.load_model as the command line calls it: the embedding left in the file, and 16-bit
    matrices kept as stored when keep_16bit; keep_16bit "int8": quantized to int8 at load time."""
    import rwkv_np

    if keep_16bit == "int8":
        return rwkv_np.load_model(path, keep_16bit=True, lazy_embedding=True, quantize="int8")
    return rwkv_np.load_model(path, keep_16bit=keep_16bit, lazy_embedding=True)


def warm_kernel_cache(folder: Path, versions=("4",)) -> None:
    """Compile every kernel signature the children use (on a tiny model saved the same way), so
    that their load times are those of any run but the first: Numba caches compiled code on disk."""
    from helpers import tiny_weights

    path = folder / "tiny.pth"
    for version in versions:
        if version != "4":
            dims = dict(LATER_DIMS, V=64, C=128, A=128, F=256, L=2, H=2)
            write_aligned_torch_zip(path, random_later(version, dims), "float32")
            model = load(str(path), False)
            model.forward([1, 2], mode="parallel")
            model.forward([1, 2], mode="recurrent")
    if "4" not in versions:
        return
    for dtype, keep in (("float32", False), ("bfloat16", True), ("bfloat16", False), ("bfloat16", "int8")):
        write_aligned_torch_zip(path, tiny_weights(n_layer=2, C=256, V=64, F=1024), dtype)
        model = load(str(path), keep)
        model.forward([1, 2], mode="parallel")
        model.forward([1, 2], mode="recurrent")


def run_child(path: Path, keep_16bit: bool | str, what: str, threads: int, quick: bool = False) -> dict:
    keep = keep_16bit if keep_16bit == "int8" else str(int(keep_16bit))
    cmd = [sys.executable, __file__, "--threads", str(threads), "--child", str(path), keep, what]
    out = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True,
                         env=os.environ.copy())
    if out.returncode:
        raise SystemExit(f"benchmark step {what!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- WKV kernels alone --------------------------------------------------------------------------

def wkv_kernels(quick: bool) -> dict[str, tuple[float, str]]:
    """ns per (token, channel) at T = 1024, C = 768 for each form of eq. 14."""
    from rwkv_np.rwkv4 import kernels as K
    from rwkv_np.rwkv4.eq14 import wkv_naive
    from rwkv_np.rwkv4.reference import PP_EMPTY, wkv
    from rwkv_np.training.wkv_grad import wkv_forward

    T, C = 1024, 768
    rng = np.random.default_rng(2)
    w = np.exp(rng.uniform(-6, 2.5, C)).astype(np.float32)
    u = rng.uniform(-1, 2, C).astype(np.float32)
    k = rng.standard_normal((T, C), dtype=np.float32)
    v = rng.standard_normal((T, C), dtype=np.float32)
    r = rng.standard_normal((T, C), dtype=np.float32)
    state = lambda: (np.zeros(C, np.float32), np.zeros(C, np.float32), np.full(C, PP_EMPTY, np.float32))  # noqa: E731
    per = 1e9 / (T * C)
    res = {}
    # naive is O(T^2): its cost per (token, channel) grows linearly with T
    Tn = 256 if quick else T
    t = best_time(lambda: wkv_naive(w.astype(np.float64), u.astype(np.float64),
                                    k[:Tn].astype(np.float64), v[:Tn].astype(np.float64)), 1)
    res["naive (eq. 14 as written, float64)"] = (t * 1e9 / (Tn * C) * T / Tn,
                                                 f"measured at T={Tn}, x{T // Tn} (O(T^2))" if Tn < T else "")
    res["the reference's wkv (NumPy, one step per token)"] = (
        best_time(lambda: wkv(w, u, k, v, *state()), 2) * per, "rwkv_np/rwkv4/reference.py")
    wkv_forward(w, u, k[:8, None], v[:8, None])
    res["compiled scan of wkv_step (training's, with saves)"] = (
        best_time(lambda: wkv_forward(w, u, k[:, None], v[:, None]), 5) * per, "")
    out = np.empty_like(k)
    K.wkv_gate(w, u, k[:8], v[:8], r[:8], *state(), out[:8])
    res["scan + gate, fused (wkv_gate, the engine's)"] = (
        best_time(lambda: K.wkv_gate(w, u, k, v, r, *state(), out), 5) * per, "")
    return res


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version  # not `import numba`: see the module docstring

    return (f"{cpu}, {os.cpu_count()} logical cores; Python {sys.version.split()[0]}, NumPy {np.__version__}, "
            f"Numba {version('numba')} ({os.environ.get('NUMBA_NUM_THREADS')} threads), "
            f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS')}; OpenMP waits "
            f"{os.environ.get('OMP_WAIT_POLICY', 'rwkv_np default')}, GOMP_SPINCOUNT "
            f"{os.environ.get('GOMP_SPINCOUNT', 'rwkv_np default')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="BLAS and Numba threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, naive WKV extrapolated")
    ap.add_argument("--versions", default="4," + ",".join(LATER), metavar="LIST",
                    help="comma-separated RWKV versions to measure, of 4, " + ", ".join(LATER) + " (default: all)")
    args = ap.parse_args()
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    unknown = [v for v in versions if v not in ("4",) + LATER]
    if unknown or not versions:
        ap.error(f"--versions: {unknown or 'empty'}; expected some of 4, {', '.join(LATER)}")
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rwkv_np_bench_") as tmp:
        run_child(Path(tmp), False, "warm:" + ",".join(versions), args.threads)
        ceil = run_child(Path(tmp), False, "ceilings", args.threads, args.quick)
        runs, later = {}, {}
        if "4" in versions:
            paths = write_checkpoints(Path(tmp))
            runs = {
                "fp32": run_child(paths["float32"], False, "gen", args.threads),
                "bf16": run_child(paths["bfloat16"], True, "gen", args.threads),
                "prompt": run_child(paths["float32"], False, "prompt", args.threads),
                "bf16_as_fp32": run_child(paths["bfloat16"], False, "gen", args.threads),
                "int8": run_child(paths["bfloat16"], "int8", "gen", args.threads),
                "prompt_bf16": run_child(paths["bfloat16"], True, "prompt", args.threads),
                "prompt_int8": run_child(paths["bfloat16"], "int8", "prompt", args.threads),
            }
            for p in paths.values():
                p.unlink()
        for version in versions:
            if version != "4":
                path = write_later_checkpoint(Path(tmp), version)
                later[version] = {"gen": run_child(path, False, "gen", args.threads),
                                  "prompt": run_child(path, False, "prompt", args.threads)}
                path.unlink()
        # again: how much did the machine's load change meanwhile?
        ceil_after = run_child(Path(tmp), False, "ceilings", args.threads, True)
        wkv = run_child(Path(tmp), False, "wkv", args.threads, args.quick) if "4" in versions else None
    if runs:
        report(ceil, ceil_after, runs, wkv)
    if later:
        report_later(ceil, ceil_after, later)


def report_later(ceil: dict, ceil_after: dict, later: dict) -> None:
    gf = max(ceil["gflops"], ceil_after["gflops"])
    d = LATER_DIMS
    print()
    print(f"later versions, 169M-class shape: {d['L']} layers x {d['C']}, {d['H']} heads of {d['N']}, FFN {d['F']}, "
          f"vocab {d['V']}; float32 weights (random, BlinkDL .pth); read bandwidth {ceil['bandwidth']:.1f} GB/s "
          f"before, {ceil_after['bandwidth']:.1f} GB/s after, matmul {gf:.0f} GFLOP/s")
    print()
    print("| version | MiB read per token | generation | ceiling (interleaved) | fraction (range) | "
          "reference_vN.step | prompt 512, parallel | prompt ceiling | prompt 512, recurrent | reference_vN.forward |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for version, r in later.items():
        g, p = r["gen"], r["prompt"]
        ceiling = g["il_bandwidth"] * 1e9 / g["bytes_per_token"]
        low, high = g["il_fraction_range"]
        prompt_ceiling = gf * 1e9 / (2 * p["block_params"])
        print(f"| {version} | {g['bytes_per_token'] / MiB:.0f} | {g['il_tok_s']:.1f} tok/s | {ceiling:.1f} tok/s | "
              f"{g['il_fraction']:.0%} ({low:.0%}-{high:.0%}) | {g['ref_gen_tok_s']:.1f} tok/s | "
              f"{p['prompt_par_tok_s']:.0f} tok/s | {prompt_ceiling:.0f} tok/s | {p['prompt_rec_tok_s']:.0f} tok/s | "
              f"{p['ref_prompt_tok_s']:.0f} tok/s |")
    print("(generation: each of 7 rounds a 512 MiB matrix-vector product, then 16 steps, in the same process; "
          "fraction = median over the rounds of each round's own fraction, range in brackets; peak RSS while "
          + ", ".join(f"{v}: {r['gen']['gen_peak_mib']:.0f} MiB" for v, r in later.items()) + ")")


def report(ceil: dict, ceil_after: dict, runs: dict, wkv: dict) -> None:
    b32, b16 = weight_bytes(4), weight_bytes(2)
    # the machine's figures drift during a run on a shared host: divide by the higher of the two
    # measurements (the lower fraction)
    bw, gf = max(ceil["bandwidth"], ceil_after["bandwidth"]), max(ceil["gflops"], ceil_after["gflops"])
    gen32 = bw * 1e9 / b32["per_token"]
    gen16 = bw * 1e9 / b16["per_token"]
    prompt_ceiling = gf * 1e9 / (2 * b32["block_params"])
    fp32, bf16, prompt, widened = runs["fp32"], runs["bf16"], runs["prompt"], runs["bf16_as_fp32"]
    print()
    print(f"ceilings: read bandwidth {ceil['bandwidth']:.1f} GB/s (best matrix-vector product over 512 MiB: BLAS "
          f"{ceil['bw_blas']:.1f}, Numba {ceil['bw_numba']:.1f}); float32 matmul {ceil['gflops']:.0f} GFLOP/s (BLAS)")
    print(f"          measured again after the model runs: {ceil_after['bandwidth']:.1f} GB/s, "
          f"{ceil_after['gflops']:.0f} GFLOP/s; the table uses the higher of each: {bw:.1f} GB/s, {gf:.0f} GFLOP/s")
    b8 = weight_bytes(INT8_BYTES)
    print(f"weights: fp32 {b32['all'] / MiB:.0f} MiB ({b32['per_token'] / MiB:.0f} MiB read per token), "
          f"bf16 {b16['all'] / MiB:.0f} MiB ({b16['per_token'] / MiB:.0f} MiB per token), "
          f"int8 {b8['per_token'] / MiB:.0f} MiB per token (scales included; its embedding stays bf16)")
    print()
    print("| figure | rwkv_np | ceiling (same run) | fraction | the reference alone |")
    print("| --- | --- | --- | --- | --- |")

    def row(name, value, unit, ceiling, ref=None, digits=1):
        ref_text = f"{ref:.{digits}f} {unit}" if ref is not None else ""
        print(f"| {name} | {value:.{digits}f} {unit} | {ceiling:.{digits}f} {unit} | {value / ceiling:.0%} | {ref_text} |")

    b8 = weight_bytes(INT8_BYTES)
    for name, r, b, ref in (("generation, float32 weights", fp32, b32, fp32["ref_gen_tok_s"]),
                            ("generation, bf16 weights kept 16-bit", bf16, b16, None),
                            ("generation, int8 weights (+ a float32 scale per 32)", runs["int8"], b8, None)):
        ceiling = r["il_bandwidth"] * 1e9 / b["per_token"]
        low, high = r["il_fraction_range"]
        print(f"| {name} | {r['il_tok_s']:.1f} tok/s | {ceiling:.1f} tok/s (interleaved) | {r['il_fraction']:.0%} "
              f"({low:.0%}-{high:.0%}) | {'' if ref is None else f'{ref:.1f} tok/s'} |")
    row("prompt, 512 tokens, parallel form", prompt["prompt_par_tok_s"], "tok/s", prompt_ceiling,
        prompt["ref_prompt_tok_s"], 0)
    print(f"| prompt, 512 tokens, recurrent form | {prompt['prompt_rec_tok_s']:.0f} tok/s | | the parallel form "
          f"is {prompt['prompt_par_tok_s'] / prompt['prompt_rec_tok_s']:.1f}x faster | |")
    for name in ("bf16", "int8"):
        r = runs[f"prompt_{name}"]
        row(f"prompt, 512 tokens, parallel form, {name} weights", r["prompt_par_tok_s"], "tok/s", prompt_ceiling,
            None, 0)
        print(f"| prompt, 512 tokens, recurrent form, {name} weights | {r['prompt_rec_tok_s']:.0f} tok/s | | | |")
    for name, r, b in (("fp32", fp32, b32), ("bf16 kept 16-bit", bf16, b16)):
        limit = b["all"] / MiB + 60
        print(f"| peak RSS while generating, {name} | {r['gen_peak_mib']:.0f} MiB | weights + 60 = {limit:.0f} MiB "
              f"| {r['gen_peak_mib'] / limit:.0%} | |")
    print(f"| load to first logits, bf16 .pth kept 16-bit | {bf16['load_s']:.2f} s | target 0.5 s | | |")
    print(f"| (before that: import rwkv_np, i.e. numba) | {bf16['import_s']:.2f} s | | | |")
    print(f"| load to first logits, fp32 .pth | {fp32['load_s']:.2f} s | | | |")
    print(f"| load to first logits, bf16 .pth widened to float32 | {widened['load_s']:.2f} s | | | |")
    print()
    print(f"generation from the bf16 file widened to float32: {widened['gen_tok_s']:.1f} tok/s, "
          f"peak RSS {widened['gen_peak_mib']:.0f} MiB; peak RSS while loading: fp32 {fp32['load_peak_mib']:.0f}, "
          f"bf16 kept {bf16['load_peak_mib']:.0f}, bf16 widened {widened['load_peak_mib']:.0f} MiB; "
          f"best single step: fp32 {fp32['gen_best_tok_s']:.1f}, bf16 {bf16['gen_best_tok_s']:.1f} tok/s")
    print(f"generation, median of 64 steps before the interleaved rounds: fp32 {fp32['gen_tok_s']:.1f} tok/s "
          f"({fp32['gen_tok_s'] / gen32:.0%} of the ceiling above), bf16 {bf16['gen_tok_s']:.1f} tok/s "
          f"({bf16['gen_tok_s'] / gen16:.0%})")
    print(f"rows' prefetch chosen at warm-up, bytes ahead (0: none): fp32 {fp32['prefetch_bytes']}, "
          f"bf16 {bf16['prefetch_bytes']}, int8 {runs['int8']['prefetch_bytes']}")
    print("(interleaved: each round a 512 MiB matrix-vector product, then 16 generation steps, in the same "
          "process; fraction = median over 7 rounds of each round's own fraction, range in brackets)")
    print()
    print("| WKV kernel, T = 1024, C = 768 | ns per (token, channel) | |")
    print("| --- | --- | --- |")
    for name, (ns, note) in wkv.items():
        print(f"| {name} | {ns:.2f} | {note} |")


if __name__ == "__main__":
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        where, what, quick = sys.argv[i + 1], sys.argv[i + 3], "--quick" in sys.argv
        keep = "int8" if sys.argv[i + 2] == "int8" else bool(int(sys.argv[i + 2]))
        if what.startswith("warm"):
            warm_kernel_cache(Path(where), what.partition(":")[2].split(",") if ":" in what else ("4",))
            result = {}
        elif what == "ceilings":
            result = ceilings(quick)
        elif what == "wkv":
            result = wkv_kernels(quick)
        else:
            result = child(where, keep, what)
        print(json.dumps(result))
    else:
        main()
