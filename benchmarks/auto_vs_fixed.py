"""On a quiet machine, what choosing the threads as the load changes costs: rwkv_np's automatic choice
(RWKV.threads = None) against the count fixed at all cores, alternated in one process, paired by round.

    python benchmarks/auto_vs_fixed.py PATH [--rounds 6]

PATH: a checkpoint (benchmarks/bench.py and busy.py write random 169M-shaped ones), loaded as the command
line loads it. Each round reads a 512-token prompt (parallel form) and generates 24 tokens (recurrent
form, median time per token) with each setting, the order alternating from round to round; the ratios
auto / fixed are taken within a round. On a quiet machine both run on every core, so the ratios measure
the governor's own cost (reading /proc/stat every 0.2 s, setting the counts per call) and the noise.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rwkv_np  # noqa: E402
from rwkv_np import process  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    process.short_spin()  # as the command line does
    model = rwkv_np.load_model(args.path, keep_16bit=True, lazy_embedding=True, keep_blocks=True)
    model.warm_up()
    fixed = process.most_threads()
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, model.config.vocab_size, 512)]
    model.forward(tokens)  # the parallel form's first read of 512 tokens
    prompt, gen = {None: [], fixed: []}, {None: [], fixed: []}
    for r in range(args.rounds):
        for threads in ((None, fixed) if r % 2 == 0 else (fixed, None)):
            model.threads = threads
            start = time.perf_counter()
            model.forward(tokens)
            prompt[threads].append(len(tokens) / (time.perf_counter() - start))
            state, times = None, []
            for t in tokens[:24]:
                start = time.perf_counter()
                _, state = model.forward([t], state, mode="recurrent")
                times.append(time.perf_counter() - start)
            gen[threads].append(1 / float(np.median(times)))
    print(f"{args.path}, {args.rounds} rounds, fixed = {fixed} threads; load average after "
          f"{open('/proc/loadavg').read().split()[:3]}")
    for name, figures in (("prompt 512 tok/s", prompt), ("generation tok/s", gen)):
        ratios = [a / b for a, b in zip(figures[None], figures[fixed])]
        print(f"{name}: auto {np.median(figures[None]):.1f}, fixed {np.median(figures[fixed]):.1f}; auto / fixed "
              f"by round {', '.join(f'{x:.2f}' for x in ratios)}; median {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
