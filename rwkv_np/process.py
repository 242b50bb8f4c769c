"""Process-level settings of the compiled kernels: how their threads wait, and handing back the
compiler's code pages. Nothing here runs at import; the command line, the benchmarks and
`RWKV.warm_up` call them.
"""

import os
from contextlib import contextmanager


@contextmanager
def numba_threads(n: int | None):
    """Run the block with Numba's parallel loops on n threads (None: as they are), then restore."""
    if n is None:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)


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


_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (clean file pages are simply dropped)


def release_compiler_pages() -> int:
    """Let the OS reclaim the machine code of LLVM (Numba's compiler), once the kernels are loaded.

    Numba needs LLVM to compile a kernel or to load it from its cache, not to run it; yet the
    ~50 MiB of LLVM's code touched while loading stay counted in the process's memory (RSS). They
    are clean pages of libllvmlite.so, so the kernel drops them and reads them back from the file
    if Numba ever compiles again. Only executable, never-written mappings are touched. Linux only;
    elsewhere (or if madvise refuses) nothing happens. Returns the bytes advised.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    try:
        maps = open("/proc/self/maps").read().splitlines()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in maps:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "r-xp" and fields[5].endswith(".so") and "llvmlite" in fields[5]:
            start, stop = (int(a, 16) for a in fields[0].split("-"))
            if madvise(start, stop - start, _MADV_PAGEOUT) == 0:
                advised += stop - start
    return advised