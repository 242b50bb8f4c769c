"""Run the loader fuzz properties of tests/test_fuzz_loaders.py with many more examples.

    python benchmarks/fuzz_campaign.py --examples 5000      # per property (10 properties)

Prints, per reader, how many cases were refused with CheckpointError and how many loaded, and the
time spent. A failing property prints hypothesis's minimal failing example and exits non-zero.
"""

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=5000, help="examples per property (default 5000)")
    ap.add_argument("--only", default="", help="run only properties whose name contains this (e.g. flips, pth)")
    args = ap.parse_args()
    os.environ["RWKV_NP_FUZZ_EXAMPLES"] = str(args.examples)  # read when the test module is imported
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import test_fuzz_loaders as fuzz

    props = [n for n in dir(fuzz) if n.startswith("test_") and hasattr(getattr(fuzz, n), "hypothesis")
             and args.only in n]
    seconds, failed = defaultdict(float), []
    for name in props:
        before = {reader: sum(c.values()) for reader, c in fuzz.COUNTS.items()}
        t0 = time.perf_counter()
        try:
            getattr(fuzz, name)()
            status = "ok"
        except Exception as e:  # hypothesis re-raises the minimal failing example's error
            status = f"FAILED: {type(e).__name__}: {e}"
            failed.append(name)
        dt = time.perf_counter() - t0
        # a property may cover several readers: share its time among them by their cases
        cases = {reader: sum(c.values()) - before.get(reader, 0) for reader, c in fuzz.COUNTS.items()}
        n = sum(cases.values())
        for reader, k in cases.items():
            seconds[reader] += dt * k / max(n, 1)
        print(f"{name:45s} {n:7d} cases {dt:7.1f} s  {status}", flush=True)
    print()
    for reader, counts in sorted(fuzz.COUNTS.items()):
        total = sum(counts.values())
        print(f"{reader:12s} {total:7d} cases: {counts['refused']:7d} refused with CheckpointError, "
              f"{counts['loaded']:6d} loaded; {seconds[reader]:.1f} s ({1e3 * seconds[reader] / max(total, 1):.2f} ms/case)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
