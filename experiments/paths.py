"""How the past reaches each sublayer, on the models retrained by experiments/ablations.py (issue 23):
the baseline and the three variants without a token shift, at every seed, from their checkpoints.

    PYTHONPATH=. nice -n 19 python experiments/paths.py          # -> experiments/paths.json (minutes)
    PYTHONPATH=. python experiments/paths.py --tiny --runs DIR   # on a tiny campaign's checkpoints
    PYTHONPATH=. nice -n 19 python experiments/paths.py --seeds 0,1   # some seeds only (the JSON says which)

Two measurements per model, both from rwkv_np.analysis (notebook 04 runs them on the shipped model):

  previous_token_probes  how well token t-1 can be read, by a linear probe, from x_t, the input each
                         sublayer reads at t before its own token shift mixes in x_{t-1} (fitted on the
                         first 24,576 bytes of the training split, scored on the first 8,192 held-out
                         bytes, in windows of the training context); against the best guess of token
                         t-1 from token t alone
  previous_token_paths   replace token t-1, and measure how much each sublayer's output at t changes
                         through its own token shift, through the residual stream, and (time mixing)
                         through eq. 14's state: 200 windows of 32 held-out bytes

The checkpoints are those the campaign leaves in experiments/runs/ (not committed); run it first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import ablations as AB  # noqa: E402
from rwkv_np import RWKV  # noqa: E402
from rwkv_np import analysis as A  # noqa: E402
from rwkv_np.errors import ArgumentError  # noqa: E402
from rwkv_np.training.data import load_bytes  # noqa: E402

RESULTS = HERE / "paths.json"
VARIANTS = ("baseline", "no_shift_att", "no_shift_ffn", "no_shift_both")
FULL = {"probe_train_bytes": 24576, "probe_test_bytes": 8192, "path_samples": 200, "path_window": 32}
TINY = {"probe_train_bytes": 2048, "probe_test_bytes": 512, "path_samples": 8, "path_window": 8}


def measure(model: RWKV, train: np.ndarray, held: np.ndarray, ctx: int, cfg: dict, seed: int = 0) -> dict:
    """Both measurements on one model, as lists for JSON."""
    probes = A.previous_token_probes(model, train[:cfg["probe_train_bytes"]], held[:cfg["probe_test_bytes"]], ctx)
    paths = A.previous_token_paths(model, held, cfg["path_samples"], cfg["path_window"], seed)
    r = lambda a: np.round(a, 5).tolist()  # noqa: E731
    return {"probe_accuracy": r(probes["accuracy"]), "probe_current": r(probes["current"]),
            "bigram_guess": round(probes["bigram"], 5), "probe_positions": [probes["n_train"], probes["n_test"]],
            "paths": {k: [[None if np.isnan(x) else round(float(x), 5) for x in row] for row in v]
                      for k, v in paths.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the ablations' tiny budget, few samples")
    ap.add_argument("--data", default=None, help="tiny shakespeare (default: ../shared/data, else the trainer's cache)")
    ap.add_argument("--runs", default=None, help=f"the ablation campaign's checkpoints (default {AB.RUNS})")
    ap.add_argument("--out", default=None, help=f"results JSON (default {RESULTS}; with --tiny a temp folder)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the campaign's)")
    args = ap.parse_args(argv)
    budget, cfg = (AB.TINY, TINY) if args.tiny else (AB.FULL, FULL)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(budget["seeds"])
    except ValueError:
        raise ArgumentError(f"--seeds {args.seeds}: comma-separated integers") from None
    data_path = AB.find_data(args.data)
    runs = Path(args.runs) if args.runs else AB.RUNS
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp()) / "paths.json" if args.tiny else RESULTS)
    train, held = load_bytes(data_path)
    train, held = train.astype(np.int64), held.astype(np.int64)
    results, t0 = [], time.time()
    for name in VARIANTS:
        for seed in seeds:
            params = AB.final_params(runs / f"{name}-s{seed}", name, seed, budget)
            if params is None:
                raise ArgumentError(f"no checkpoint of {name} seed {seed} in {runs}: run experiments/ablations.py first")
            model = RWKV({k: np.asarray(v, np.float32) for k, v in params.items()})
            results.append({"variant": name, "seed": seed, **measure(model, train, held, budget["ctx_len"], cfg, seed)})
            print(f"{name} s{seed}: probe accuracy {results[-1]['probe_accuracy']} ({time.time() - t0:.0f} s)", flush=True)
    summary = {
        "what": "how token t-1 reaches each sublayer at t, on the retrained baseline and no-shift variants (issue 23)",
        "command": "PYTHONPATH=. nice -n 19 python experiments/paths.py" + (" --tiny" if args.tiny else "")
                   + (f" --seeds {args.seeds}" if args.seeds else ""),
        "seeds": seeds, "all_seeds": seeds == list(budget["seeds"]),
        "tiny": args.tiny, "settings": cfg, "models": f"experiments/ablations.py's checkpoints ({budget['n_layer']} x "
                                                      f"{budget['n_embd']}, {budget['steps']} steps), context "
                                                      f"{budget['ctx_len']}",
        "definitions": {
            "probe_accuracy": "[layer][att, ffn]: top-1 accuracy of a ridge-regression probe reading token t-1 from "
                              "the sublayer's input x_t (rwkv_np.analysis.previous_token_probes)",
            "probe_current": "the same probe reading token t itself",
            "bigram_guess": "accuracy of guessing token t-1 from token t alone (the most frequent previous byte)",
            "paths": "[layer][att, ffn]: RMS norm of the change of the sublayer's output at t when token t-1 is "
                     "replaced, through each input alone (rwkv_np.analysis.previous_token_paths); state is null "
                     "for channel mixing"},
        "runs": results}
    AB.write_json(out, summary)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
