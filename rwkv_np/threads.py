"""How the compiled kernels' threads wait: set only when asked (the command line and the benchmarks ask).

Importing rwkv_np changes nothing process-wide. `short_spin()` sets OpenMP's wait policy for Numba's
thread pool before it starts: threads that finish a parallel loop spin briefly, then sleep.
"""

import os


def short_spin() -> bool:
    """OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=1000 (about 20 us of spinning), unless already set.

    The recurrent form runs ~50 parallel loops a token with a few microseconds of serial work
    between them. libgomp's default (spin ~300,000 times before sleeping) is fastest on an idle
    machine, but where cores are shared a spinning thread holds the core that the thread it waits
    for needs; sleeping at once costs a wake-up per loop. The short spin is the compromise
    (benchmarks/NOTES.md has the measurements). It takes effect only if called before the first
    parallel kernel runs; returns whether it changed anything.
    """
    changed = False
    for name, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("GOMP_SPINCOUNT", "1000")):
        if name not in os.environ:
            os.environ[name] = value
            changed = True
    return changed
