"""`python -m rwkv_np train`: the options, their checks, the training loop, and the asset export.

    python -m rwkv_np train --data input.txt --out model.safetensors --n-layer 4 --n-embd 128

Trains a byte-level RWKV-4 (training/model.py: forward and backward; optim.py: AdamW; data.py: the
bytes; checkpoint.py: the files). Parameters live in a dict under the checkpoint names (rwkv4/params.py), so
the model file is just the dict saved. Like BlinkDL's trainer it optimises ln w (`att.time_decay`, so
that w = e^time_decay stays positive) and u (`att.time_first`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import process
from ..rwkv4 import params as table
from ..errors import ArgumentError, TrainingError
from ..files import open_writable, read_regular
from . import checkpoint as ckpt
from .data import SHAKESPEARE_CACHE, SHAKESPEARE_URL, data_size, default_data_path, get_batch, read_data, split
from .init import VOCAB, init_params
from .model import activation_bytes, evaluate, loss_and_grads
from .optim import AdamW, clip_grads, lr_at

#: held-out windows in the evaluation at the end of a run (--final-eval-windows): the whole split of
#: tiny shakespeare at any --ctx-len of 128 or more (111,540 bytes: 872 windows of 128, 435 of 256,
#: the shipped model's recorded loss), and a bounded time on a corpus of any size
FINAL_EVAL_WINDOWS = 1024
#: the most a --log file may hold when a run resumes and rewrites it (a record is ~150 bytes a step)
MAX_LOG_BYTES = 1 << 30


# ----------------------------------------------------------------------------------------------- CLI

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m rwkv_np train`."""
    a = parser.add_argument
    a("--data", default=None, help=f"text file to train on, as bytes (default: tiny shakespeare at {SHAKESPEARE_CACHE}, "
                                   "downloaded if missing)")
    a("--out", default="rwkv4-bytes.safetensors",
      help="model file (safetensors, checkpoint names), rewritten at every checkpoint; the training "
           "checkpoint that --resume reads is <out>.ckpt")
    a("--n-layer", type=int, default=4, help="blocks")
    a("--n-embd", type=int, default=128, help="channels C (the FFN is 4C wide)")
    a("--ctx-len", type=int, default=128, help="bytes per training window (T)")
    a("--batch-size", type=int, default=16, help="windows per step (B)")
    a("--steps", type=int, default=1000, help="optimiser steps")
    a("--lr", type=float, default=2e-3, help="peak learning rate")
    a("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of --lr (cosine decay)")
    a("--warmup", type=int, default=50, help="linear warm-up steps")
    a("--weight-decay", type=float, default=0.0, help="AdamW decay of the matrices (not emb)")
    a("--grad-clip", type=float, default=1.0, help="max global gradient norm (0: off)")
    a("--seed", type=int, default=0, help="seeds the init and the batches")
    a("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    a("--eval-windows", type=int, default=64, help="held-out windows per interval evaluation")
    a("--final-eval-windows", type=int, default=FINAL_EVAL_WINDOWS,
      help="held-out windows of --ctx-len bytes in the evaluation at the end, with a progress bar on stderr; "
           "0: the whole held-out split, however large (default: %(default)s, the whole split of a corpus up "
           "to about %(default)s x ctx-len x 10 bytes: all of tiny shakespeare's)"),
    a("--save-every", type=int, default=200, help="steps between checkpoints")
    a("--log", default=None, help="JSONL training log (default: <out>.log.jsonl)")
    a("--resume", action="store_true",
      help="continue the run that wrote <out>.ckpt, as if it had not stopped (bit for bit, unless "
           "--time-budget makes the schedule follow the clock); the options that shape the run (sizes, "
           "schedule, seed, data) must be those of that run")
    a("--time-budget", type=float, default=None,
      help="minutes: end training (final evaluation, checkpoint) once this much time is used, annealing "
           "the learning rate by whichever of steps or time runs out first")
    a("--threads", type=int, default=None,
      help="BLAS threads (default: those the other programs on the machine leave free, measured as it runs)")
    a("--fp16-out", default=None, help="also write the final weights as float16 safetensors here")


@contextmanager
def _threads(governor: process.Threads | None, fixed: int | None, tokens: int):
    """The block on `fixed` BLAS threads, or on those the governor chooses (and times) for it."""
    if governor is None:
        with process.blas_threads(fixed):
            yield
    else:
        with governor.use(tokens) as n, process.blas_threads(n):
            yield


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args) -> None:
    """Refuse values that cannot train, before anything is read or written."""
    for name in ("n_layer", "n_embd", "ctx_len", "batch_size", "steps", "eval_every", "eval_windows", "save_every"):
        if getattr(args, name) < 1:
            raise ArgumentError(f"{_opt(name)} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup", "seed", "final_eval_windows"):
        if getattr(args, name) < 0:
            raise ArgumentError(f"{_opt(name)} must be >= 0, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise ArgumentError(f"--threads must be >= 1, got {args.threads}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ArgumentError(f"--lr must be a finite number > 0, got {args.lr}")
    if not (0 <= args.min_lr_ratio <= 1):
        raise ArgumentError(f"--min-lr-ratio must be in [0, 1], got {args.min_lr_ratio}")
    for name in ("weight_decay", "grad_clip"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ArgumentError(f"{_opt(name)} must be a finite number >= 0, got {getattr(args, name)}")
    if args.lr * args.weight_decay >= 1:  # each step multiplies the matrices by 1 - lr * weight_decay
        raise ArgumentError(f"--weight-decay {args.weight_decay} with --lr {args.lr} would zero or flip the "
                            f"weights at every step (lr * weight decay must be < 1)")
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        raise ArgumentError(f"--time-budget must be a finite number of minutes > 0, got {args.time_budget}")


def n_params(n_layer: int, n_embd: int, vocab: int = VOCAB) -> int:
    """Parameters of a model of these sizes, from the table (by formula: n_layer may be absurd)."""
    dims = {"C": n_embd, "F": 4 * n_embd, "V": vocab}
    size = lambda p: math.prod(p.size(dims))  # noqa: E731
    return sum(map(size, table.EMBED + table.OUT)) + n_layer * sum(map(size, table.BLOCK))


def memory_estimate(args, data_bytes: int) -> dict[str, int]:
    """Bytes a run needs, by part: the parameters and their gradients, AdamW's two moments and a
    checkpoint being written or read (about 4 more copies) make 8 float32 copies; the activations of
    a training step (or of an evaluation batch of 32 windows, which keeps one layer at a time); the data."""
    C = args.n_embd
    step = activation_bytes(args.n_layer, C, 4 * C, VOCAB, args.batch_size, args.ctx_len)
    evaluation = activation_bytes(1, C, 4 * C, VOCAB, 32, args.ctx_len)
    return {"parameters, gradients, AdamW moments and checkpoint": 8 * 4 * n_params(args.n_layer, C),
            "activations": max(step, evaluation), "data": data_bytes}


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, lowered by a cgroup limit; None if unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def check_memory(args, data_bytes: int, available: int | None) -> None:
    parts = memory_estimate(args, data_bytes)
    total = sum(parts.values())
    if available is not None and total > available:
        detail = ", ".join(f"{k} {_size(v)}" for k, v in parts.items())
        raise ArgumentError(f"--n-layer {args.n_layer} --n-embd {args.n_embd} --batch-size {args.batch_size} "
                            f"--ctx-len {args.ctx_len}: training needs about {_size(total)} of memory ({detail}), "
                            f"more than the {_size(available)} available; choose smaller sizes")


def _trim_log(log_path: Path, step: int, what: str) -> None:
    """Keep the records of the steps up to the checkpoint: the steps after it (done before a kill, not
    saved) are done again, and a record cut by a kill is dropped."""
    if not log_path.exists():
        return
    kept = []
    text = read_regular(log_path, what, MAX_LOG_BYTES, "a training log may have").decode("utf-8", "replace")
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("event") or (isinstance(rec.get("step"), int) and rec["step"] <= step):
            kept.append(line + "\n")
    ckpt.atomic_write(log_path, "".join(kept).encode(), what)


def _append(log_path: Path, record: dict, what: str) -> None:
    """One JSON line added to the log (opened as every path a user names is: rwkv_np.files)."""
    with open_writable(log_path, what, append=True) as f:
        f.write((json.dumps(record) + "\n").encode())


def _final_evaluation(params, held: np.ndarray, ctx: int, max_windows: int | None) -> tuple[float, int, int]:
    """(mean loss, windows evaluated, windows in the split) of the evaluation at the end of a run, over
    the first max_windows windows (None: all), a progress bar on stderr as `perplexity` shows one."""
    from ..perplexity import ProgressBar

    total = (len(held) - 1) // ctx
    n = total if max_windows is None else min(total, max_windows)
    bar = ProgressBar(sys.stderr, n * ctx) if sys.stderr is not None else None
    if bar is not None:
        print(f"held-out evaluation: {n} of the {total} windows of {ctx} bytes"
              + ("" if n == total else " (--final-eval-windows; 0 for all)"), file=sys.stderr, flush=True)
    loss = evaluate(params, held, ctx, n, progress=bar)
    return loss, n, total


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) and write checkpoints; returns the process exit code."""
    check_args(args)
    data_path = Path(args.data) if args.data else default_data_path()
    check_memory(args, data_size(data_path), available_memory())
    # every path the run reads or writes, checked before anything is opened (rwkv_np.files): a regular
    # file, or a new file in a folder that takes files; never a FIFO, device or folder
    out = ckpt.ensure_writable("--out", args.out)
    ckpt_option = "--resume" if args.resume else "--out"  # <out>.ckpt: read to resume, written by every run
    ckpt_path = ckpt.ensure_writable(ckpt_option, ckpt.checkpoint_path(out))
    log_path = ckpt.ensure_writable("--log", args.log if args.log else str(out) + ".log.jsonl")
    if args.fp16_out:
        ckpt.ensure_writable("--fp16-out", args.fp16_out)
    names = {"out": f"--out {out}", "ckpt": f"{ckpt_option} {ckpt_path}", "log": f"--log {log_path}",
             "fp16": f"--fp16-out {args.fp16_out}"}
    if args.resume and not ckpt_path.exists():
        old = Path(str(out) + ".optim.npz")
        hint = (f" ({old} is from an older rwkv_np whose checkpoints were not one atomic unit; it cannot be "
                f"resumed)" if old.exists() else "")
        raise ArgumentError(f"--resume: no training checkpoint {ckpt_path}{hint}")
    # BLAS's threads per step: --threads, or those the other programs on the machine leave free (a product
    # waiting on a thread that has no core is many times slower than on fewer threads; the results are the
    # same on any count: every product has many rows)
    governor = None if args.threads else process.Threads(most=process.most_threads())
    data = read_data(data_path)
    train, held = split(data)
    if len(held) < args.ctx_len + 2 or len(train) < args.ctx_len + 2:
        raise ArgumentError(f"--data {data_path}: too short for --ctx-len {args.ctx_len}")
    sha = hashlib.sha256(data).hexdigest()  # of the bytes read, not of the file read again
    run = ckpt.run_record(args, sha)
    shapes = table.ARCH.shapes({"C": args.n_embd, "F": 4 * args.n_embd, "V": VOCAB, "L": args.n_layer})
    step, tokens, elapsed, smooth, finished = 0, 0, 0.0, None, False
    if args.resume:
        params, m, v, manifest = ckpt.load_training(ckpt_path, run, shapes, names["ckpt"])
        opt = AdamW(params, weight_decay=args.weight_decay)
        opt.m, opt.v, opt.t = m, v, manifest["adam_t"]
        step, tokens, elapsed = manifest["step"], manifest["tokens"], float(manifest["elapsed"])
        smooth, finished = manifest.get("smooth"), bool(manifest.get("finished"))
        _trim_log(log_path, step, names["log"])
    else:  # a new run: its log starts empty, and no checkpoint of an earlier run may be resumed into it
        params = init_params(args.n_layer, args.n_embd, args.seed)
        opt = AdamW(params, weight_decay=args.weight_decay)
        with open_writable(log_path, names["log"]):
            pass
        ckpt_path.unlink(missing_ok=True)
    n_par = sum(v.size for v in params.values())
    header = {"event": "start", "data": str(data_path), "sha256": sha, "n_params": int(n_par),
              "args": {k: v for k, v in vars(args).items() if not callable(v)}, "step": step}
    _append(log_path, header, names["log"])
    print(f"training {n_par:,} parameters on {data_path} ({len(train):,} train / {len(held):,} held-out bytes)",
          flush=True)
    tok_per_step = args.batch_size * args.ctx_len
    saved_step = step if args.resume else None  # the step of the checkpoint on disk
    model_step = None  # the step of the weights this process last wrote to --out

    def stopped(at: int, what: str) -> TrainingError:
        kept = (f"{ckpt_path} is left as it was (step {saved_step})" if saved_step is not None
                else "no checkpoint was written")
        return TrainingError(f"step {at}: {what}; training stopped, {kept}; lower --lr (now {args.lr})")

    def save(final: bool):
        nonlocal saved_step, model_step
        if not all(np.isfinite(v).all() for v in params.values()):
            raise stopped(step, "the weights are no longer finite")
        progress = {"step": step, "tokens": tokens, "elapsed": elapsed, "smooth": smooth, "finished": final}
        ckpt.save_training(ckpt_path, params, opt, progress, run, names["ckpt"])
        ckpt.save_model(out, params, metadata={"step": step}, what=names["out"])
        saved_step = model_step = step

    t_last = time.time()
    while step < args.steps and not finished:
        time_frac = elapsed / (60 * args.time_budget) if args.time_budget else 0.0
        lr = lr_at(step, args.lr, args.warmup, args.steps, args.min_lr_ratio, time_frac)
        # batches drawn from (seed, step) alone, so a resumed run sees exactly the batches it would have
        x, y = get_batch(train, args.batch_size, args.ctx_len, np.random.default_rng([args.seed, step]))
        with np.errstate(over="ignore", invalid="ignore"), _threads(governor, args.threads, x.size):
            loss, grads = loss_and_grads(params, x, y)  # a diverging run is reported just below
            gnorm = clip_grads(grads, args.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            raise stopped(step + 1, f"the loss is {loss} (gradient norm {gnorm})")
        opt.step(params, grads, lr)
        step += 1
        tokens += tok_per_step
        now = time.time()
        elapsed += now - t_last
        t_last = now
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
        rec = {"step": step, "tokens": tokens, "loss": loss, "lr": lr, "gnorm": gnorm, "time": elapsed}
        timed_out = bool(args.time_budget) and elapsed >= 60 * args.time_budget
        finished = step == args.steps or timed_out
        if step % args.eval_every == 0 or finished:
            with np.errstate(over="ignore", invalid="ignore"):
                if finished:
                    rec["val_loss"], rec["val_windows"], total = _final_evaluation(
                        params, held, args.ctx_len, args.final_eval_windows or None)
                    rec["val_final"] = True
                    rec["val_full"] = rec["val_windows"] == total  # the whole held-out split
                else:
                    rec["val_loss"] = evaluate(params, held, args.ctx_len, args.eval_windows)
            if not math.isfinite(rec["val_loss"]):
                raise stopped(step, f"the held-out loss is {rec['val_loss']}")
            if timed_out and step < args.steps:
                rec["stopped_early"] = f"--time-budget {args.time_budget} min used"
                print(f"stopping at step {step}: --time-budget {args.time_budget} min used", flush=True)
            t_last = time.time()
            elapsed += t_last - now
        _append(log_path, rec, names["log"])
        if step % 10 == 0 or "val_loss" in rec or step == 1:
            tps = tokens / max(elapsed, 1e-9)
            eta = (args.steps - step) * elapsed / step
            if args.time_budget:
                eta = min(eta, 60 * args.time_budget - elapsed)
            val = f" | held-out {rec['val_loss']:.4f}" if "val_loss" in rec else ""
            print(f"step {step}/{args.steps} | loss {loss:.4f} (avg {smooth:.4f}) | lr {lr:.2e} | "
                  f"{tps:,.0f} tok/s | ETA {eta / 60:.1f} min{val}", flush=True)
        if step % args.save_every == 0 or finished:
            save(finished)
    if model_step != step:  # resumed at the end: a kill may have come between <out>.ckpt and --out
        ckpt.save_model(out, params, metadata={"step": step}, what=names["out"])
    if args.fp16_out:
        ckpt.save_model(args.fp16_out, params, dtype=np.float16, what=names["fp16"])
    print(f"done: {step} steps, {tokens:,} tokens, {elapsed / 60:.1f} min; wrote {out}", flush=True)
    return 0


def export_asset(log_path: str | os.PathLike, fp16_ckpt: str | os.PathLike, out_dir: str | os.PathLike,
                 command: str, name: str = "rwkv4-shakespeare", full_curve: list | None = None) -> dict:
    """Copy a finished run's float16 weights to out_dir/<name>.safetensors and write <name>.json: sizes,
    data (with sha256), steps, tokens, held-out loss of the float16 weights, wall time, the command, and
    the curve points (train loss averaged over 20 steps; the interval held-out evaluations on the first
    --eval-windows windows; full_curve: [tokens, loss] on the whole held-out split, if measured)."""
    text = read_regular(log_path, f"training log {log_path}", MAX_LOG_BYTES, "a training log may have")
    recs = [json.loads(line) for line in text.decode("utf-8").splitlines() if line.strip()]
    start = [r for r in recs if r.get("event") == "start"][0]
    steps = [r for r in recs if "loss" in r]
    last = steps[-1]
    if last.get("val_final") and not last.get("val_full"):
        raise ArgumentError(f"training log {log_path}: the run's final evaluation read {last.get('val_windows')} "
                            "windows, not the whole held-out split that held_out_loss_float32 is defined on; "
                            "train with --final-eval-windows 0 (or more windows than the split has)")
    a = start["args"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{name}.safetensors"
    ckpt.atomic_write(dst, read_regular(fp16_ckpt, f"float16 weights {fp16_ckpt}", 1 << 34, "a model file may have"))
    params = ckpt.load_params(dst)  # float16 on disk, evaluated in float32
    data = read_data(start["data"])
    _, held = split(data)
    fp16_loss = evaluate(params, held, a["ctx_len"])
    # the same split read as one stream by the inference model, the state carried across (RNN use)
    from ..model import RWKV

    logits, _ = RWKV(ckpt.model_ready(params)).forward(held[:-1].astype(np.int64), return_all=True)
    z = logits.astype(np.float64)
    zmax = z.max(-1)
    stream_loss = float(np.mean(np.log(np.exp(z - zmax[:, None]).sum(-1)) + zmax - z[np.arange(len(z)), held[1:]]))
    train_curve = []
    for i in range(0, len(steps) - 19, 20):
        chunk = steps[i:i + 20]
        train_curve.append([chunk[-1]["tokens"], round(sum(r["loss"] for r in chunk) / 20, 4)])
    meta = {
        "name": name,
        "architecture": "RWKV-4 (arXiv 2305.13048), raw BlinkDL keys, att.time_decay raw (w = exp(raw))",
        "vocab": "bytes: token id = byte value (0-255), no special tokens",
        "vocab_size": VOCAB, "n_layer": a["n_layer"], "n_embd": a["n_embd"], "ffn_dim": 4 * a["n_embd"],
        "n_params": start["n_params"], "dtype_on_disk": "float16", "file_bytes": dst.stat().st_size,
        "training_data": {"name": "tiny shakespeare", "url": SHAKESPEARE_URL, "sha256": start["sha256"],
                          "bytes": len(data),
                          "split": "first 90% of the bytes for training, last 10% held out"},
        "ctx_len": a["ctx_len"], "batch_size": a["batch_size"], "steps": last["step"], "tokens": last["tokens"],
        "lr": a["lr"], "warmup": a["warmup"], "min_lr_ratio": a["min_lr_ratio"], "seed": a["seed"],
        "optimizer": "AdamW betas (0.9, 0.99) eps 1e-8, weight decay %g, grad clip %g" % (a["weight_decay"], a["grad_clip"]),
        "held_out_loss": round(fp16_loss, 4),
        "held_out_loss_float32": round(last["val_loss"], 4),
        "held_out_loss_streaming": round(stream_loss, 4),
        "held_out_loss_streaming_definition": "the whole held-out split as one sequence through rwkv_np.RWKV "
                                              "(float16 weights), state carried across, nats per byte",
        "held_out_loss_definition": f"mean cross-entropy, nats per byte, over all consecutive {a['ctx_len']}-byte "
                                    "windows of the held-out 10%, each read from the initial state",
        "final_train_loss_20_steps": train_curve[-1][1] if train_curve else None,
        "wall_time_minutes": round(last["time"] / 60, 1),
        "tokens_per_second": round(last["tokens"] / last["time"]),
        "stopped_early": last.get("stopped_early"),
        "command": command,
        "curve": {"train": train_curve, "eval_windows": a["eval_windows"],
                  "val_first_windows": [[r["tokens"], round(r["val_loss"], 4)] for r in steps
                                        if "val_loss" in r and not r.get("val_full") and not r.get("val_final")],
                  "val_first_windows_note": f"held-out loss on the first {a['eval_windows']} windows of "
                                            f"{a['ctx_len']} bytes only (an easier stretch than the whole split)",
                  "val_full": full_curve or [[last["tokens"], round(last["val_loss"], 4)]]},
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkv_np.training.run", description=__doc__)
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
