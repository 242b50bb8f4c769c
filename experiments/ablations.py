"""Retrained ablations of RWKV-4 at equal budget (issues 11 and 23): every variant trained from scratch on
the same bytes, for the same steps, batch, context and learning-rate schedule, at 4 seeds, and at the
same model size except where the variant says otherwise (no_ffn, no_ffn_same_depth, no_ffn_wide).

    PYTHONPATH=. nice -n 19 python experiments/ablations.py   # the campaign -> experiments/ablations.json
    PYTHONPATH=. python experiments/ablations.py --tiny     # a few steps of a tiny model, to a temp folder
    PYTHONPATH=. python experiments/ablations.py --run no_bonus --seed 1   # one run (what the JSON records)
    PYTHONPATH=. nice -n 19 python experiments/ablations.py --only coupled_u --seeds 2,3   # some variants and seeds

Each run lives in <runs>/<variant>-s<seed>/: a training checkpoint (rwkv_np/training/checkpoint.py:
atomic, verified, with the curve so far in its manifest) every `eval_every` steps, and result.json once
finished. A finished run is skipped; a killed campaign, restarted with the same command, resumes every
unfinished run from its checkpoint and continues it exactly (the batches are drawn from (seed, step)).
Runs go two at a time by default, each in its own process with one BLAS thread (the scan of eq. 14 is
serial and the products are small, so a second thread would buy little; two runs keep 2 cores busy).

The variants are rwkv_np.training.variant.Variant values: the model code is the trainer's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rwkv_np.rwkv4 import ARCH  # noqa: E402
from rwkv_np.errors import ArgumentError  # noqa: E402
from rwkv_np.training import checkpoint as ckpt  # noqa: E402
from rwkv_np.training.data import (SHAKESPEARE_CACHE, SHAKESPEARE_SHA256, TRAIN_SHARE, get_batch,  # noqa: E402
                                   load_bytes, sha256_of)
from rwkv_np.training.init import VOCAB, init_params  # noqa: E402
from rwkv_np.training.model import backward, evaluate, forward  # noqa: E402
from rwkv_np.training.optim import AdamW, clip_grads, lr_at  # noqa: E402
from rwkv_np.training.variant import Variant  # noqa: E402

RESULTS = REPO / "experiments" / "ablations.json"
RUNS = REPO / "experiments" / "runs"  # checkpoints (not committed: experiments/.gitignore)

#: the budget every variant gets: 4 x 64, 700 steps of 8 x 128 bytes (717k bytes, 0.7 of a pass over
#: the training split), far smaller than the shipped model (5 x 192, 12 x 256 bytes per step), so that
#: 52 runs (13 variants x 4 seeds) fit in about an hour on 2 cores shared with other work (one run takes
#: about 30 s of CPU, no_ffn's 13 blocks about 1.5 times that). 4 seeds, not 2: the seed-to-seed spread
#: of one variant (0.036 nats/byte for the baseline) is as large as several effects, and a 95% interval
#: over n seeds is t(n-1) s / sqrt(n) wide, with t = 12.7 for 2 seeds and 3.18 for 4.
FULL = {"n_layer": 4, "n_embd": 64, "ctx_len": 128, "batch_size": 8, "steps": 700, "lr": 2e-3, "warmup": 50,
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "weight_decay": 0.0, "eval_every": 100, "curve_windows": 64,
        "seeds": [0, 1, 2, 3]}
TINY = {"n_layer": 2, "n_embd": 16, "ctx_len": 32, "batch_size": 4, "steps": 6, "lr": 2e-3, "warmup": 2,
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "weight_decay": 0.0, "eval_every": 3, "curve_windows": 4,
        "seeds": [0], "max_eval_windows": 8}

_MU_ATT = ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r")
_MU_FFN = ("ffn.time_mix_k", "ffn.time_mix_r")

#: name -> (Variant, what it tests). mu = 1 takes all of x_t and none of x_{t-1}: no token shift.
#: u = 0 gives the current token the weight e^{k_t}, the same as the latest past token (which eq. 14
#: never decays): no bonus and no malus for the current token. (u -> -inf, dropping the current token
#: from wkv_t, would leave 0/0 at t = 0 and is a different question: can wkv work without x_t at all.)
VARIANTS = {
    "baseline": (Variant(), "the paper's RWKV-4 block, every parameter learned"),
    "no_shift_att": (Variant(set_to=tuple((n, 1.0) for n in _MU_ATT), frozen=_MU_ATT),
                     "time mixing without token shift: mu_k = mu_v = mu_r = 1, frozen"),
    "no_shift_ffn": (Variant(set_to=tuple((n, 1.0) for n in _MU_FFN), frozen=_MU_FFN),
                     "channel mixing without token shift: mu'_k = mu'_r = 1, frozen"),
    "no_shift_both": (Variant(set_to=tuple((n, 1.0) for n in _MU_ATT + _MU_FFN), frozen=_MU_ATT + _MU_FFN),
                      "no token shift anywhere: every mu = 1, frozen"),
    "no_bonus": (Variant(set_to=(("att.time_first", 0.0),), frozen=("att.time_first",)),
                 "u = 0, frozen: the current token weighs like the latest past token"),
    "tied_decay": (Variant(tied=("att.time_decay",)),
                   "one decay per layer shared by all channels (learned; starts at the layer's mean init ln w)"),
    "frozen_decay": (Variant(frozen=("att.time_decay",)), "decay frozen at its initial per-channel values"),
    "ffn_first": (Variant(sublayers=("ffn", "att")), "channel mixing before time mixing in every block"),
    "no_ffn": (Variant(sublayers=("att",)),
               "no channel mixing; its parameters given to more time-mixing-only blocks (same total count)"),
    # issue 23: no_ffn above changes depth (13 blocks against 4) as well as removing channel mixing;
    # these two keep the depth: the same 4 blocks at the same width (fewer parameters), or wider
    # (the width whose parameter count is nearest the baseline's)
    "no_ffn_same_depth": (Variant(sublayers=("att",)),
                          "no channel mixing, the baseline's blocks and width (so fewer parameters)"),
    "no_ffn_wide": (Variant(sublayers=("att",)),
                    "no channel mixing, the baseline's blocks, wider: the width whose count is nearest the baseline's"),
    # issue 23: u = 0 keeps the current:previous weight ratio independent of w; these tie it to w, the
    # alternative eq. 14's separate u avoids (training/variant.py, coupled_u)
    "coupled_u": (Variant(coupled_u=1.0),
                  "u = w (w = e^time_decay): the current token one more term of the decaying sum, e^{w + k_t}"),
    "coupled_u_neg": (Variant(coupled_u=-1.0),
                      "u = -w: the current token weighs e^{-w} times the latest past token at equal keys"),
}


def size_of(name: str, cfg: dict) -> tuple[int, int]:
    """(blocks, width) of a variant: the budget's, except no_ffn, which gets the number of
    time-mixing-only blocks whose parameter count is nearest the baseline's, and no_ffn_wide, which
    keeps the blocks and gets the width whose count is nearest."""
    L, C = cfg["n_layer"], cfg["n_embd"]
    if name not in ("no_ffn", "no_ffn_wide"):
        return L, C
    base = count_params("baseline", L, C)
    if name == "no_ffn":
        return min(range(1, 8 * L), key=lambda n: abs(count_params(name, n, C) - base)), C
    return L, min(range(C, 4 * C), key=lambda c: abs(count_params(name, L, c) - base))


def n_layer_of(name: str, cfg: dict) -> int:
    return size_of(name, cfg)[0]


def n_embd_of(name: str, cfg: dict) -> int:
    return size_of(name, cfg)[1]


def count_params(name: str, n_layer: int, n_embd: int) -> int:
    """Parameters the variant's model uses (from the shapes alone: np.empty allocates nothing it
    does not touch)."""
    dims = {"C": n_embd, "F": 4 * n_embd, "V": VOCAB}
    params = {k: np.empty(p.size(dims), np.float32) for k, p, _ in ARCH.params_of(n_layer)}
    return VARIANTS[name][0].n_params(params)[0]


def find_data(given: str | None) -> Path:
    """tiny shakespeare: --data, else ../shared/data (the project's fixtures), else the trainer's cache."""
    if given:
        return Path(given)
    for p in (REPO.parent / "shared" / "data" / "tinyshakespeare.txt", SHAKESPEARE_CACHE):
        if p.exists():
            return p
    raise ArgumentError(f"no tiny shakespeare at {REPO.parent / 'shared/data/tinyshakespeare.txt'} or "
                        f"{SHAKESPEARE_CACHE}; pass --data FILE (or run `python -m rwkv_np train` once to "
                        f"download it)")


def curve_windows(held: np.ndarray, ctx: int, n: int) -> np.ndarray:
    """Start offsets of n ctx-byte windows spread evenly over the held-out split (the interval
    evaluations of the curve; the final loss uses every window)."""
    last = len(held) - ctx - 1
    return np.linspace(0, last, n).round().astype(np.intp)


def curve_loss(params, held, starts, ctx, variant) -> float:
    idx = starts[:, None] + np.arange(ctx)[None, :]
    _, loss, _ = forward(params, held[idx], held[idx + 1], variant=variant)
    return loss


def unigram_floor(train: np.ndarray, held: np.ndarray, ctx: int, max_windows: int | None = None) -> float:
    """Cross-entropy (nats/byte) of the byte frequencies of the training split (add-one smoothed, so a
    byte unseen in training keeps a finite cost) on the targets the final evaluation scores: no
    modelling of context at all."""
    counts = np.bincount(train, minlength=VOCAB).astype(np.float64) + 1
    logp = np.log(counts / counts.sum())
    n = (len(held) - 1) // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    return float(-logp[held[1:n * ctx + 1]].mean())


def command_of(name: str, seed: int, args) -> str:
    parts = ["OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. nice -n 19 python experiments/ablations.py",
             f"--run {name} --seed {seed}"]
    if args.tiny:
        parts.append("--tiny")
    if args.data:
        parts.append(f"--data {args.data}")
    return " ".join(parts)


def train_run(name: str, seed: int, cfg: dict, data_path: Path, run_dir: Path, command: str,
              stop_after: int | None = None) -> dict | None:
    """Train one variant at one seed (resuming from run_dir's checkpoint if there is one); returns the
    result, or None when stop_after (a test's simulated kill) ends it early."""
    variant = VARIANTS[name][0]
    n_layer, n_embd = size_of(name, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "run.ckpt"
    train, held = load_bytes(data_path)
    sha = sha256_of(data_path)
    # what a resumed run must match: the checkpoint refuses any other options or data
    record = run_record(name, seed, cfg, sha)
    shapes = {k: v.shape for k, v in init_params(n_layer, n_embd, 0).items()}
    if ckpt_path.exists():
        params, m, v, manifest = ckpt.load_training(ckpt_path, record, shapes)
        opt = AdamW(params, weight_decay=cfg["weight_decay"])
        opt.m, opt.v, opt.t = m, v, manifest["adam_t"]
        step, elapsed, curve = manifest["step"], float(manifest["elapsed"]), manifest["curve"]
    else:
        params = variant.init(init_params(n_layer, n_embd, seed))
        opt = AdamW(params, weight_decay=cfg["weight_decay"])
        step, elapsed, curve = 0, 0.0, []
    once = variant.norm_once(params)
    starts = curve_windows(held, cfg["ctx_len"], cfg["curve_windows"])
    ctx, B, steps = cfg["ctx_len"], cfg["batch_size"], cfg["steps"]
    window_losses = []  # train loss of the steps since the last curve point
    t_last = time.time()
    while step < steps:
        lr = lr_at(step, cfg["lr"], cfg["warmup"], steps, cfg["min_lr_ratio"])
        x, y = get_batch(train, B, ctx, np.random.default_rng([seed, step]))  # as `rwkv_np train` draws them
        # training/model.loss_and_grads, with the parameters handed to the variant's filter (a coupled
        # variant's chain rule needs them), and a coupled u set from the updated decay after each step
        _, loss, cache = forward(params, x, y, keep=True, variant=variant)
        grads = variant.grads(backward(params, cache), params)
        clip_grads(grads, cfg["grad_clip"], once)
        if not math.isfinite(loss):
            raise ArgumentError(f"{name} seed {seed}: the loss is {loss} at step {step + 1}")
        opt.step(params, grads, lr)
        variant.couple(params)
        step += 1
        window_losses.append(loss)
        if step % cfg["eval_every"] == 0 or step == steps:
            held_loss = curve_loss(params, held, starts, ctx, variant)
            curve.append({"step": step, "tokens": step * B * ctx, "train": round(float(np.mean(window_losses)), 5),
                          "held_out_windows": round(held_loss, 5)})
            window_losses = []
            now = time.time()
            elapsed += now - t_last
            t_last = now
            ckpt.save_training(ckpt_path, params, opt, {"step": step, "tokens": step * B * ctx,
                                                        "elapsed": elapsed, "smooth": None, "finished": False,
                                                        "curve": curve}, record)
            print(f"{name} s{seed}: step {step}/{steps} train {curve[-1]['train']:.4f} "
                  f"held-out({cfg['curve_windows']} windows) {held_loss:.4f} {elapsed / 60:.1f} min", flush=True)
            if stop_after is not None and step >= stop_after and step < steps:
                return None
    t0 = time.time()
    final = evaluate(params, held, ctx, cfg.get("max_eval_windows"), variant=variant)
    eval_time = time.time() - t0
    used, trained = variant.n_params(params)
    result = {"variant": name, "seed": seed, "n_layer": n_layer, "n_embd": n_embd, "n_params": used, "n_params_trained": trained,
              "held_out_loss": round(final, 5), "train_loss_last_interval": curve[-1]["train"],
              "wall_time_minutes": round(elapsed / 60, 2), "final_eval_minutes": round(eval_time / 60, 2),
              "steps": steps, "tokens": steps * B * ctx, "curve": curve, "command": command,
              "vectors": drift(name, seed, cfg, params)}
    write_json(run_dir / "result.json", result)
    return result


def drift(name: str, seed: int, cfg: dict, params: dict) -> dict:
    """How far training moved the per-channel vectors from their initial values, per layer: the RMS
    change of ln w (att.time_decay), u (att.time_first) and the mus, and the mean of u before and after
    (the notebook's "did the decay need to be learned?" reads these)."""
    init = VARIANTS[name][0].init(init_params(*size_of(name, cfg), seed))
    out = {}
    for key, names in (("time_decay", ("att.time_decay",)), ("time_first", ("att.time_first",)),
                       ("time_mix", ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "ffn.time_mix_k",
                                     "ffn.time_mix_r"))):
        out[key + "_rms_change"] = [round(float(np.sqrt(np.mean(np.concatenate(
            [(params[f"blocks.{i}.{n}"].ravel() - init[f"blocks.{i}.{n}"]) ** 2 for n in names])))), 5)
            for i in range(n_layer_of(name, cfg))]
    out["time_decay_mean"] = [round(float(params[f"blocks.{i}.att.time_decay"].mean()), 4)
                              for i in range(n_layer_of(name, cfg))]  # ln w; for tied_decay, the one value
    out["time_first_mean_init"] = [round(float(init[f"blocks.{i}.att.time_first"].mean()), 4)
                                   for i in range(n_layer_of(name, cfg))]
    out["time_first_mean"] = [round(float(params[f"blocks.{i}.att.time_first"].mean()), 4)
                              for i in range(n_layer_of(name, cfg))]
    return out


def final_params(run_dir: Path, name: str, seed: int, cfg: dict) -> dict | None:
    """The weights of a run's last checkpoint (None if there is none)."""
    p = run_dir / "run.ckpt"
    if not p.exists():
        return None
    n_layer, n_embd = size_of(name, cfg)
    shapes = ARCH.shapes({"C": n_embd, "F": 4 * n_embd, "V": VOCAB, "L": n_layer})
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        sha = json.loads(json.loads(f.read(n))["__metadata__"]["manifest"])["data_sha256"]
    return ckpt.load_training(p, run_record(name, seed, cfg, sha), shapes)[0]


def run_record(name: str, seed: int, cfg: dict, sha: str) -> dict:
    """What a run's checkpoint records and a resumed run must match (rwkv_np/training/checkpoint.py)."""
    n_layer, n_embd = size_of(name, cfg)
    shaping = {k: cfg[k] for k in ("ctx_len", "batch_size", "steps", "lr", "warmup", "min_lr_ratio", "grad_clip",
                                   "weight_decay", "eval_every", "curve_windows")}
    return {"args": {**shaping, "n_embd": n_embd, "n_layer": n_layer, "seed": seed, "variant": name},
            "data_sha256": sha}


def load_result(run_dir: Path, name: str, seed: int, cfg: dict) -> dict | None:
    """A finished run's result, if it is one of this budget (else None: the run is redone)."""
    p = run_dir / "result.json"
    if not p.exists():
        return None
    try:
        r = json.loads(p.read_text())
    except ValueError:
        return None
    if r.get("variant") != name or r.get("seed") != seed or r.get("steps") != cfg["steps"]:
        return None
    return r


def summarise(cfg: dict, names: list[str], runs_dir: Path, data_path: Path, tiny: bool, args) -> dict:
    train, held = load_bytes(data_path)
    n_win = (len(held) - 1) // cfg["ctx_len"]
    if cfg.get("max_eval_windows"):
        n_win = min(n_win, cfg["max_eval_windows"])
    n = len(np.concatenate([train, held]))
    variants, complete = {}, True
    for name in names:
        runs = []
        for seed in cfg["seeds"]:
            r = load_result(runs_dir / f"{name}-s{seed}", name, seed, cfg)
            if r and "vectors" not in r:  # a run finished before the results recorded them
                params = final_params(runs_dir / f"{name}-s{seed}", name, seed, cfg)
                if params is not None:
                    r["vectors"] = drift(name, seed, cfg, params)
            runs.append(r if r else {"variant": name, "seed": seed, "status": "not run (did not finish)",
                                     "command": command_of(name, seed, args)})
        done = [r["held_out_loss"] for r in runs if "held_out_loss" in r]
        complete &= len(done) == len(runs)
        v = VARIANTS[name][0]
        variants[name] = {
            "description": VARIANTS[name][1],
            "variant": {"sublayers": list(v.sublayers), "set_to": dict(v.set_to), "frozen": list(v.frozen),
                        "tied": list(v.tied), "coupled_u": v.coupled_u},
            "n_layer": n_layer_of(name, cfg), "n_embd": n_embd_of(name, cfg),
            "n_params": count_params(name, *size_of(name, cfg)),
            "seeds_finished": len(done),
            "held_out_loss_mean": round(float(np.mean(done)), 5) if done else None,
            "held_out_loss_min": min(done) if done else None, "held_out_loss_max": max(done) if done else None,
            "held_out_loss_std": round(float(np.std(done, ddof=1)), 5) if len(done) > 1 else None,
            "runs": runs}
    # the same seed means the same initial values of the shared parameters and the same batches:
    # the difference to the baseline at each seed removes most of the seed-to-seed spread
    base = {r["seed"]: r["held_out_loss"] for r in variants["baseline"]["runs"] if "held_out_loss" in r} \
        if "baseline" in variants else {}
    for name, v in variants.items():
        d = {str(r["seed"]): round(r["held_out_loss"] - base[r["seed"]], 5) for r in v["runs"]
             if "held_out_loss" in r and r["seed"] in base}
        vals = list(d.values())
        v["paired_change_vs_baseline"] = {
            "per_seed": d, "mean": round(float(np.mean(vals)), 5) if vals else None,
            "std": round(float(np.std(vals, ddof=1)), 5) if len(vals) > 1 else None}
    return {
        "what": "RWKV-4 ablations retrained from scratch at equal budget (issues 11 and 23)",
        "campaign_command": "PYTHONPATH=. nice -n 19 python experiments/ablations.py" + (" --tiny" if tiny else ""),
        "complete": complete,
        "tiny": tiny,
        "budget": {k: v for k, v in cfg.items()},
        "optimizer": "AdamW betas (0.9, 0.99) eps 1e-8 (rwkv_np.training.optim), global gradient-norm clip, "
                     "linear warm-up then cosine decay to min_lr_ratio * lr; batches drawn as `rwkv_np train` "
                     "draws them (seed, step)",
        "data": {"file": "tiny shakespeare", "bytes": int(n), "sha256": sha256_of(data_path),
                 "sha256_is_tiny_shakespeare": sha256_of(data_path) == SHAKESPEARE_SHA256,
                 "train_split": f"bytes [0, {len(train)}) (the first {TRAIN_SHARE:.0%})",
                 "held_out_split": f"bytes [{len(train)}, {n}) (the last {1 - TRAIN_SHARE:.0%}, {len(held)} bytes)"},
        "held_out_loss_definition": (
            f"mean cross-entropy in nats per byte over the first {n_win} consecutive non-overlapping "
            f"{cfg['ctx_len']}-byte windows of the held-out split (all of them: {n_win * cfg['ctx_len']} "
            f"predicted bytes, held-out bytes 1..{n_win * cfg['ctx_len']}), each window read from the "
            f"initial state" if not cfg.get("max_eval_windows") else
            f"as the full campaign, but only the first {n_win} windows (tiny mode)"),
        "curve_definition": (f"every {cfg['eval_every']} steps: 'train' = mean training loss of those steps; "
                             f"'held_out_windows' = loss on {cfg['curve_windows']} {cfg['ctx_len']}-byte "
                             f"held-out windows spread evenly over the split (a subset: not the final number)"),
        "unigram_floor": {
            "held_out_loss": round(unigram_floor(train, held, cfg["ctx_len"], cfg.get("max_eval_windows")), 5),
            "definition": "byte frequencies of the training split (add-one smoothed), scored on the same "
                          "held-out targets as held_out_loss: no context at all"},
        "uniform_loss": round(math.log(VOCAB), 5),
        "wall_time_note": "wall_time_minutes: training time of the run, two runs at a time with one BLAS thread "
                          "each, on 2 cores shared with other jobs: it measures the machine's load as much as "
                          "the variant's cost (the final evaluation is timed apart, final_eval_minutes)",
        "variants": variants,
    }


def write_json(path: Path, obj) -> None:
    """obj as indented JSON at path (its folder made), written atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def run_jobs(jobs: list[tuple[object, list[str]]], at_once: int, progress) -> list:
    """Run each job's command line (key, argv) as its own process, at_once at a time, each on one thread
    (Numba and BLAS) with the repository importable; progress() after each one ends. Returns the keys
    of the jobs that failed."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    pending, running, failed = list(jobs), [], []
    while pending or running:
        while pending and len(running) < at_once:
            key, argv = pending.pop(0)
            running.append((key, subprocess.Popen(argv, env=env)))
        time.sleep(1)
        for key, proc in list(running):
            if proc.poll() is not None:
                running.remove((key, proc))
                if proc.returncode != 0:
                    failed.append(key)
                progress()
    return failed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a few steps of a tiny model, 1 seed, into a temp folder")
    ap.add_argument("--data", default=None, help="tiny shakespeare (default: ../shared/data, else the trainer's cache)")
    ap.add_argument("--out", default=None, help=f"results JSON (default {RESULTS}; with --tiny a temp folder)")
    ap.add_argument("--runs", default=None, help=f"checkpoints and per-run results (default {RUNS})")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each its own process, 1 BLAS thread); "
                                                      "1: all in this process")
    ap.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    ap.add_argument("--run", default=None, help="train this one variant (with --seed) and exit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds to train and summarise (default: the budget's)")
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else FULL
    if args.seeds:
        try:
            cfg = dict(cfg, seeds=[int(s) for s in args.seeds.split(",")])
        except ValueError:
            raise ArgumentError(f"--seeds {args.seeds}: comma-separated integers") from None
    data_path = find_data(args.data)
    names = list(VARIANTS) if not args.only else args.only.split(",")
    for n in names + ([args.run] if args.run else []):
        if n not in VARIANTS:
            raise ArgumentError(f"--only/--run: unknown variant {n!r} (one of {', '.join(VARIANTS)})")
    if args.jobs < 1:
        raise ArgumentError(f"--jobs must be >= 1, got {args.jobs}")
    tmp = Path(tempfile.mkdtemp(prefix="rwkv_np_ablations_")) if args.tiny and not (args.out and args.runs) else None
    runs_dir = Path(args.runs) if args.runs else (tmp / "runs" if args.tiny else RUNS)
    out = Path(args.out) if args.out else (tmp / "ablations.json" if args.tiny else RESULTS)

    if args.run:
        run_dir = runs_dir / f"{args.run}-s{args.seed}"
        if load_result(run_dir, args.run, args.seed, cfg) is None:
            train_run(args.run, args.seed, cfg, data_path, run_dir, command_of(args.run, args.seed, args))
        return 0

    # seed by seed (a campaign cut short still has every variant at the first seed), the slowest run
    # (no_ffn: more, serial, blocks) early so that it does not finish alone at the end
    order = sorted(names, key=lambda n: (n != "baseline", n != "no_ffn"))
    todo = [(n, s) for s in cfg["seeds"] for n in order
            if load_result(runs_dir / f"{n}-s{s}", n, s, cfg) is None]
    print(f"{len(todo)} of {len(names) * len(cfg['seeds'])} runs to do; results -> {out}", flush=True)
    if args.jobs == 1:
        for n, s in todo:
            train_run(n, s, cfg, data_path, runs_dir / f"{n}-s{s}", command_of(n, s, args))
    else:
        def cmd(n, s):
            return [sys.executable, str(Path(__file__).resolve()), "--run", n, "--seed", str(s), "--runs",
                    str(runs_dir), *(["--tiny"] if args.tiny else []), *(["--data", args.data] if args.data else [])]

        def progress():  # results so far, marked incomplete
            write_json(out, summarise(cfg, names, runs_dir, data_path, args.tiny, args))
        failed = run_jobs([((n, s), cmd(n, s)) for n, s in todo], args.jobs, progress)
        if failed:
            print(f"failed: {failed}", file=sys.stderr)
    summary = summarise(cfg, names, runs_dir, data_path, args.tiny, args)
    write_json(out, summary)
    for name, v in summary["variants"].items():
        print(f"{name:14s} {v['n_params']:>8,} params  held-out {v['held_out_loss_mean']}  "
              f"[{v['held_out_loss_min']}, {v['held_out_loss_max']}]", flush=True)
    print(f"wrote {out}; unigram floor {summary['unigram_floor']['held_out_loss']}", flush=True)
    return 0 if summary["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
