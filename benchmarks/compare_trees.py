"""Two checkouts of rwkv_np side by side, round by round: did a change move the performance figures?

    python benchmarks/compare_trees.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 3]

(e.g. OLD_CHECKOUT from `git worktree add /tmp/old <commit>`.) Each round runs, for each tree in turn,
that tree's own bench.py children (fp32 and bf16 generation against the bandwidth measured in the same
process, the 512-token prompt, load time, peak RSS) on the same random 169M-shaped checkpoints, so a
change of the machine's load hits both trees alike; the same-round ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))


def child(tree: Path, path: Path, keep_16bit: bool, what: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / "bench.py"), "--threads", "2", "--child",
                          str(path), str(int(keep_16bit)), what], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{tree}: benchmark step {what!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.update(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", NUMBA_NUM_THREADS="2")
    import bench

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rows: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="rwkv_np_compare_") as tmp:
        paths = bench.write_checkpoints(Path(tmp))
        for tree in trees.values():
            child(tree, Path(tmp), False, "warm")
        for r in range(args.rounds):
            for name, tree in trees.items():
                g32 = child(tree, paths["float32"], False, "gen")
                g16 = child(tree, paths["bfloat16"], True, "gen")
                p = child(tree, paths["float32"], False, "prompt")
                row = {"fp32 gen tok/s": g32["gen_tok_s"], "fp32 gen fraction": g32["il_fraction"],
                       "bf16 gen tok/s": g16["gen_tok_s"], "bf16 gen fraction": g16["il_fraction"],
                       "prompt tok/s": p["prompt_par_tok_s"], "bf16 load s": g16["load_s"],
                       "bf16 peak RSS MiB": g16["gen_peak_mib"], "fp32 peak RSS MiB": g32["gen_peak_mib"]}
                rows[name].append(row)
                print(f"round {r} {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    print("\n| figure | old (median, range) | new (median, range) | new / old, same round |\n| --- | --- | --- | --- |")
    for key in rows["old"][0]:
        old, new = ([row[key] for row in rows[n]] for n in ("old", "new"))
        ratios = ", ".join(f"{b / a:.2f}" for a, b in zip(old, new))
        print(f"| {key} | {np.median(old):.3g} ({min(old):.3g}-{max(old):.3g}) | "
              f"{np.median(new):.3g} ({min(new):.3g}-{max(new):.3g}) | {ratios} |")


if __name__ == "__main__":
    main()
