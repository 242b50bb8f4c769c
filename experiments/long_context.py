"""Does long context move the decays? (issue 23) RWKV-4 retrained from scratch at two training contexts,
128 and 1024 bytes, at equal budget (the same model, steps, bytes per step and learning-rate schedule:
only how the bytes are cut into windows differs), for three variants of the decay, at 4 seeds.

    PYTHONPATH=. nice -n 19 python experiments/long_context.py          # -> experiments/long_context.json
    PYTHONPATH=. python experiments/long_context.py --tiny              # a few steps of a tiny model, temp folder
    PYTHONPATH=. python experiments/long_context.py --run baseline --ctx 1024 --seed 1   # one run
    PYTHONPATH=. nice -n 19 python experiments/long_context.py --only baseline,frozen_decay --seeds 0,1
                                       # a smaller campaign: some variants, some seeds (the JSON says which)

At context 128 the slowest initial channels (w = e^-5, half-life 103 bytes) barely get to use their
memory: a window ends before their weights have halved. At 1024 they can. If the per-channel bank of
timescales were something training finds when long memory pays, the decays should move further from
their initialisation at 1024, and learning them per channel (against one frozen at the initial
values, or one shared decay per layer) should matter more there. Variants, as experiments/ablations.py
defines them: `baseline`, `frozen_decay` (w kept at its initial values), `tied_decay` (one learned w per
layer).

Each run is experiments/ablations.py's `train_run` (resumable: a checkpoint every `eval_every` steps,
result.json at the end; a killed campaign restarted with the same command continues every unfinished
run exactly). Then every finished model is scored the same way, whatever context it was trained at
(cached in the run's folder as scores.json): the held-out loss in windows of 128 and of 1024 bytes (each
from the initial state), the loss by position within the 1024-byte windows, and its decays against
their initial values.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import ablations as AB  # noqa: E402
from rwkv_np.errors import ArgumentError  # noqa: E402
from rwkv_np.training import checkpoint as ckpt  # noqa: E402
from rwkv_np.training.data import load_bytes, sha256_of  # noqa: E402
from rwkv_np.training.init import init_params  # noqa: E402
from rwkv_np.training.model import forward  # noqa: E402

RESULTS = HERE / "long_context.json"
RUNS = HERE / "runs_long"  # checkpoints (not committed: experiments/.gitignore)

#: the budget: experiments/ablations.py's 4 x 64 model, 1000 steps of 2048 bytes (2.05M bytes, about 2
#: passes over the 1 MB training split) cut into 16 windows of 128 or 2 windows of 1024. 24 runs
#: (3 variants x 2 contexts x 4 seeds) of some 3-6 minutes each on 2 cores shared with other work at
#: nice 19: about 1.5 hours, two at a time.
FULL = {"n_layer": 4, "n_embd": 64, "steps": 1000, "tokens_per_step": 2048, "contexts": [128, 1024], "lr": 2e-3,
        "warmup": 50, "min_lr_ratio": 0.1, "grad_clip": 1.0, "weight_decay": 0.0, "eval_every": 100,
        "curve_windows": 16, "seeds": [0, 1, 2, 3], "eval_contexts": [128, 1024]}
TINY = {"n_layer": 2, "n_embd": 16, "steps": 4, "tokens_per_step": 128, "contexts": [16, 64], "lr": 2e-3,
        "warmup": 2, "min_lr_ratio": 0.1, "grad_clip": 1.0, "weight_decay": 0.0, "eval_every": 2,
        "curve_windows": 2, "seeds": [0], "eval_contexts": [16, 64], "max_eval_windows": 4}
VARIANTS = ("baseline", "frozen_decay", "tied_decay")
#: position buckets within the longest evaluation window (start inclusive, end exclusive, as fractions of it)
BUCKETS = ((0, 1 / 64), (1 / 64, 1 / 8), (1 / 8, 1 / 2), (1 / 2, 1))


def run_cfg(cfg: dict, ctx: int) -> dict:
    """The budget as experiments/ablations.py's train_run takes it, for one training context."""
    out = {k: cfg[k] for k in ("n_layer", "n_embd", "steps", "lr", "warmup", "min_lr_ratio", "grad_clip",
                               "weight_decay", "eval_every", "curve_windows")}
    out.update(ctx_len=ctx, batch_size=cfg["tokens_per_step"] // ctx, seeds=cfg["seeds"])
    if cfg.get("max_eval_windows"):
        out["max_eval_windows"] = cfg["max_eval_windows"]
    return out


def run_dir(runs: Path, name: str, ctx: int, seed: int) -> Path:
    return runs / f"{name}-c{ctx}-s{seed}"


def command_of(name: str, ctx: int, seed: int, args) -> str:
    parts = ["OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=. nice -n 19 python experiments/long_context.py",
             f"--run {name} --ctx {ctx} --seed {seed}"]
    if args.tiny:
        parts.append("--tiny")
    if args.data:
        parts.append(f"--data {args.data}")
    return " ".join(parts)


def position_losses(params: dict, held: np.ndarray, ctx: int, variant, max_windows: int | None = None,
                    batch: int = 8) -> np.ndarray:
    """Cross-entropy (nats) at each position 0..ctx-1 of consecutive non-overlapping ctx-byte windows of
    the held-out bytes, each read from the initial state, averaged over the windows: (ctx,). Its mean
    is training.model.evaluate's loss at this context."""
    n = (len(held) - 1) // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    total = np.zeros(ctx)
    for s in range(0, n, batch):
        rows = np.arange(s, min(n, s + batch))
        idx = rows[:, None] * ctx + np.arange(ctx)[None, :]
        logits, _, _ = forward(params, held[idx], variant=variant)  # (B, T, V)
        z = logits.astype(np.float64)
        z -= z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total += -np.take_along_axis(logp, held[idx + 1][..., None], -1)[..., 0].sum(0)
    return total / n


def score(name: str, ctx: int, seed: int, cfg: dict, held: np.ndarray, runs: Path) -> dict:
    """The scores of a finished run (cached in scores.json beside its checkpoint)."""
    rdir = run_dir(runs, name, ctx, seed)
    cached = rdir / "scores.json"
    if cached.exists():
        return json.loads(cached.read_text())
    rc = run_cfg(cfg, ctx)
    params = AB.final_params(rdir, name, seed, rc)
    variant = AB.VARIANTS[name][0]
    out = {"loss_by_eval_context": {}, "position_buckets": {}}
    longest = max(cfg["eval_contexts"])
    for ec in cfg["eval_contexts"]:
        prof = position_losses(params, held, ec, variant, cfg.get("max_eval_windows"))
        out["loss_by_eval_context"][str(ec)] = round(float(prof.mean()), 5)
        if ec == longest:
            for a, b in BUCKETS:
                lo, hi = int(round(a * ec)), int(round(b * ec))
                out["position_buckets"][f"{lo}-{hi - 1}"] = round(float(prof[lo:hi].mean()), 5)
    init = variant.init(init_params(cfg["n_layer"], cfg["n_embd"], seed))
    L = cfg["n_layer"]
    lnw = np.stack([params[f"blocks.{i}.att.time_decay"].astype(np.float64) for i in range(L)])
    lnw0 = np.stack([init[f"blocks.{i}.att.time_decay"].astype(np.float64) for i in range(L)])
    out["time_decay"] = np.round(lnw, 5).tolist()  # (L, C): ln w, trained
    out["time_decay_init"] = np.round(lnw0, 5).tolist()  # (L, C): ln w at initialisation
    out["time_decay_rms_change"] = np.round(np.sqrt(((lnw - lnw0) ** 2).mean(1)), 5).tolist()
    ckpt.atomic_write(cached, (json.dumps(out) + "\n").encode())
    return out


def campaign_command(tiny: bool, names: list[str], seeds: list[int], cfg: dict) -> str:
    cmd = "PYTHONPATH=. nice -n 19 python experiments/long_context.py" + (" --tiny" if tiny else "")
    if list(names) != list(VARIANTS):
        cmd += " --only " + ",".join(names)
    if list(seeds) != list(cfg["seeds"]):
        cmd += " --seeds " + ",".join(str(s) for s in seeds)
    return cmd


def summarise(cfg: dict, runs: Path, data_path: Path, tiny: bool, args, names: list[str] | None = None,
              seeds: list[int] | None = None) -> dict:
    """The campaign's results: every run of `names` (default: all variants) at `seeds` (default: the
    budget's), finished or not. `complete` says whether all of those finished; `full_campaign` whether
    they are the whole campaign (every variant at every seed of the budget)."""
    train, held = load_bytes(data_path)
    names = list(names or VARIANTS)
    seeds = list(cfg["seeds"] if seeds is None else seeds)
    cfg = dict(cfg, seeds=seeds)
    out_runs, complete = [], True
    for name in names:
        for ctx in cfg["contexts"]:
            rc = run_cfg(cfg, ctx)
            for seed in cfg["seeds"]:
                rdir = run_dir(runs, name, ctx, seed)
                r = AB.load_result(rdir, name, seed, rc)
                row = {"variant": name, "ctx_len": ctx, "seed": seed, "command": command_of(name, ctx, seed, args)}
                if r is None:
                    complete = False
                    row["status"] = "not run (did not finish)"
                else:
                    row.update({k: r[k] for k in ("n_params", "held_out_loss", "wall_time_minutes", "steps", "tokens",
                                                  "curve")})
                    row["batch_size"] = rc["batch_size"]
                    row.update(score(name, ctx, seed, cfg, held, runs))
                out_runs.append(row)
    return {
        "what": "RWKV-4 retrained at two training contexts at equal budget, three decay variants (issue 23)",
        "complete": complete, "tiny": tiny, "budget": cfg, "variants": names,
        "full_campaign": names == list(VARIANTS) and seeds == list((TINY if tiny else FULL)["seeds"]),
        "campaign_command": campaign_command(tiny, names, seeds, TINY if tiny else FULL),
        "full_campaign_command": "PYTHONPATH=. nice -n 19 python experiments/long_context.py" + (" --tiny" if tiny else ""),
        "data": {"file": "tiny shakespeare", "sha256": sha256_of(data_path), "train_bytes": len(train),
                 "held_out_bytes": len(held)},
        "held_out_loss_definition": "held_out_loss: at the run's own training context (experiments/ablations.py's "
                                    "definition); loss_by_eval_context[c]: mean cross-entropy (nats/byte) over all "
                                    "consecutive non-overlapping c-byte windows of the held-out split, each from "
                                    "the initial state; position_buckets: the same at the longest evaluation "
                                    "context, averaged over the positions of each bucket",
        "time_decay_note": "ln w per layer and channel, trained and initial (the trainer's schedule; tied_decay "
                           "starts at the layer's mean); time_decay_rms_change per layer",
        "runs": out_runs,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a few steps of a tiny model, 1 seed, into a temp folder")
    ap.add_argument("--data", default=None, help="tiny shakespeare (default: ../shared/data, else the trainer's cache)")
    ap.add_argument("--out", default=None, help=f"results JSON (default {RESULTS}; with --tiny a temp folder)")
    ap.add_argument("--runs", default=None, help=f"checkpoints and per-run results (default {RUNS})")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each its own process); 1: in this process")
    ap.add_argument("--run", default=None, help="train this one variant (with --ctx and --seed) and exit")
    ap.add_argument("--ctx", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help=f"comma-separated variants (default: all, {','.join(VARIANTS)})")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the budget's)")
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else FULL
    data_path = AB.find_data(args.data)
    if args.jobs < 1:
        raise ArgumentError(f"--jobs must be >= 1, got {args.jobs}")
    names = args.only.split(",") if args.only else list(VARIANTS)
    if any(n not in VARIANTS for n in names):
        raise ArgumentError(f"--only {args.only}: the variants are {', '.join(VARIANTS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(cfg["seeds"])
    except ValueError:
        raise ArgumentError(f"--seeds {args.seeds}: comma-separated integers") from None
    tmp = Path(tempfile.mkdtemp(prefix="rwkv_np_long_")) if args.tiny and not (args.out and args.runs) else None
    runs = Path(args.runs) if args.runs else (tmp / "runs" if args.tiny else RUNS)
    out = Path(args.out) if args.out else (tmp / "long_context.json" if args.tiny else RESULTS)

    if args.run:
        if args.run not in VARIANTS or args.ctx not in cfg["contexts"]:
            raise ArgumentError(f"--run {args.run} --ctx {args.ctx}: the variants are {', '.join(VARIANTS)}, the "
                                f"contexts {cfg['contexts']}")
        rc, rdir = run_cfg(cfg, args.ctx), run_dir(runs, args.run, args.ctx, args.seed)
        if AB.load_result(rdir, args.run, args.seed, rc) is None:
            AB.train_run(args.run, args.seed, rc, data_path, rdir, command_of(args.run, args.ctx, args.seed, args))
        score(args.run, args.ctx, args.seed, cfg, load_bytes(data_path)[1], runs)
        return 0

    # seed by seed, so that a campaign cut short has every variant and context at the first seeds
    todo = [(n, c, s) for s in seeds for c in cfg["contexts"] for n in names
            if not (run_dir(runs, n, c, s) / "scores.json").exists()]
    print(f"{len(todo)} of {len(names) * len(cfg['contexts']) * len(seeds)} runs to do; results -> {out}",
          flush=True)
    if args.jobs == 1:
        for n, c, s in todo:
            main(["--run", n, "--ctx", str(c), "--seed", str(s), "--runs", str(runs), "--jobs", "1",
                  *(["--tiny"] if args.tiny else []), *(["--data", args.data] if args.data else [])])
    else:
        def cmd(n, c, s):
            return [sys.executable, str(Path(__file__).resolve()), "--run", n, "--ctx", str(c), "--seed", str(s),
                    "--runs", str(runs), *(["--tiny"] if args.tiny else []),
                    *(["--data", args.data] if args.data else [])]

        def progress():  # results so far, marked incomplete
            AB.write_json(out, summarise(cfg, runs, data_path, args.tiny, args, names, seeds))
        failed = AB.run_jobs([((n, c, s), cmd(n, c, s)) for n, c, s in todo], args.jobs, progress)
        if failed:
            print(f"failed: {failed}", file=sys.stderr)
    summary = summarise(cfg, runs, data_path, args.tiny, args, names, seeds)
    AB.write_json(out, summary)
    for r in summary["runs"]:
        if "held_out_loss" in r:
            print(f"{r['variant']:13s} ctx {r['ctx_len']:5d} s{r['seed']}: held-out {r['loss_by_eval_context']} "
                  f"ln w RMS change {r['time_decay_rms_change']}", flush=True)
    print(f"wrote {out}", flush=True)
    return 0 if summary["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
