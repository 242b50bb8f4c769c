"""Process-level settings of the compiled kernels: how their threads wait, and handing back the
compiler's code pages. Nothing here runs at import; the command line, the benchmarks and
`RWKV.warm_up` call them.
"""

import os
import time
from contextlib import contextmanager

import numpy as np


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


_BLAS = []  # [(set_num_threads, get_num_threads, threads at start)] of the loaded OpenBLAS, once found


def _openblas():
    """(set, get, threads at start) of the OpenBLAS that NumPy loaded, or None (another BLAS, or not found)."""
    if not _BLAS:
        import ctypes
        import glob
        import sys

        found = None
        for mod in ("scipy_openblas64", "scipy_openblas32", "numpy.libs", "numpy/.libs"):
            for base in sys.path:
                for lib in glob.glob(os.path.join(base, mod, "**", "*openblas*.so*"), recursive=True):
                    try:
                        dll = ctypes.CDLL(lib)
                    except OSError:
                        continue
                    for suffix in ("64_", ""):
                        for prefix in ("scipy_openblas", "openblas"):
                            setter = getattr(dll, f"{prefix}_set_num_threads{suffix}", None)
                            getter = getattr(dll, f"{prefix}_get_num_threads{suffix}", None)
                            if setter is not None and getter is not None and found is None:
                                found = (setter, getter, int(getter()))  # and the count it started with
        _BLAS.append(found)
    return _BLAS[0]


def blas_max_threads() -> int:
    """The threads NumPy's OpenBLAS uses now (1 where it cannot be told)."""
    blas = _openblas()
    return int(blas[1]()) if blas else 1


@contextmanager
def blas_threads(n: int | None):
    """Run the block with NumPy's OpenBLAS on n threads (None: as it is; at most the count it started
    with), then restore. Best effort: nothing happens where the BLAS is not OpenBLAS."""
    blas = _openblas()
    if n is None or blas is None:
        yield
        return
    before = int(blas[1]())
    blas[0](max(1, min(int(n), blas[2])))  # never more than it started with (OPENBLAS_NUM_THREADS)
    try:
        yield
    finally:
        blas[0](before)


def set_blas_threads(n: int) -> bool:
    """Best effort: set NumPy's OpenBLAS to n threads for good. True on success."""
    blas = _openblas()
    if blas is not None:
        blas[0](int(n))
    return blas is not None


def most_threads() -> int:
    """The most threads this process's parallel work may use: what Numba was started with
    (NUMBA_NUM_THREADS) or NumPy's OpenBLAS (OPENBLAS_NUM_THREADS), the larger, at most the CPUs it may
    run on."""
    import numba

    blas = _openblas()
    return max(1, min(cpu_count(), max(numba.config.NUMBA_NUM_THREADS, blas[2] if blas else 1)))


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

# ---- how many threads, chosen as the machine's load changes --------------------------------------

def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _proc_stat_busy() -> float | None:
    """Seconds of CPU time the whole machine has spent busy (not idle, not waiting for I/O; a virtual
    machine's stolen time counts as busy) since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != b"cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _procs_running() -> int | None:
    """The threads running or ready to run on the whole machine now (/proc/stat's procs_running)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class CpuUse:
    """How many cores other processes keep busy, measured between two calls of `others()`: the machine's
    busy time (/proc/stat) less this process's own CPU time (all its threads), over the wall time.
    Busy time is counted in ticks (1/100 s), so the measure needs a tenth of a second or so to mean
    anything; before that, `others_now()` counts the threads that run or wait to run at this instant,
    less the one asking. Linux; elsewhere both are None. clock, busy, own and running are injectable
    for tests."""

    def __init__(self, clock=time.monotonic, busy=_proc_stat_busy, own=time.process_time, running=_procs_running):
        self.clock, self.busy, self.own, self.running = clock, busy, own, running
        self._last = None

    def others_now(self) -> float | None:
        n = self.running()
        return None if n is None else float(max(0, n - 1))

    def others(self) -> float | None:
        now, busy, own = self.clock(), self.busy(), self.own()
        last, self._last = self._last, (now, busy, own)
        if busy is None or last is None or now <= last[0]:
            return None
        return max(0.0, ((busy - last[1]) - (own - last[2])) / (now - last[0]))


class Threads:
    """How many threads one kind of parallel work gets (Numba's loops, or BLAS), chosen as the load
    of the machine changes, so that a loop never waits at its barrier for a thread that has no core.

    Every parallel loop ends when its slowest thread does. With both cores asked for and another
    program busy on one of them, each of a token's ~50 loops waits for the thread that is not
    running, and generation falls from tens of tokens per second to a few (benchmarks/busy.py). So,
    at most every `window` seconds, the cores other processes used since the last look are measured
    (CpuUse) and the work gets the cores left free: round(cpus - others), at least 1, at most `most`.
    Where that rule is unsure (others between 0.3 and 0.7 cores beyond a whole number), both counts
    next to it are timed, per token, under the same load, and the faster is kept. Results do not
    depend on the count: each output is computed by one thread in the same order whatever the count.

    Use: `with threads.use(n_tokens) as n: work on n threads` (the caller applies n, e.g. with
    `numba_threads(n)`); the block is timed and counted per token.
    """

    def __init__(self, most: int, use: CpuUse | None = None, clock=time.monotonic, window: float = 0.2,
                 cpus: int | None = None):
        self.most, self.clock, self.window = max(1, int(most)), clock, window
        self.cpus = cpus or cpu_count()
        self.cpu_use = use or CpuUse(clock=clock)
        self.count = self.most
        self.others = 0.0
        self._looked = None  # when the load was last measured
        self._times: dict[tuple[int, int], list[float]] = {}  # (count, load bucket) -> seconds per token
        self.cpu_use.others()  # the first look only starts the clock

    def _bucket(self) -> int:
        return int(round(self.others * 4))  # quarters of a core

    def choose(self) -> int:
        """The count for the next piece of work (the load measured again if `window` has passed)."""
        now = self.clock()
        if self._looked is None or now - self._looked >= self.window:
            # the first look comes too soon after the clock started for the busy time: a snapshot
            others = self.cpu_use.others_now() if self._looked is None else self.cpu_use.others()
            if others is not None:
                self.others = others
            self._looked = now
            free = self.cpus - self.others
            rule = int(min(self.most, max(1, round(free))))
            unsure = abs(free - round(free)) > 0.3 and self.most > 1
            self.count = self._timed_choice(rule) if unsure else rule
        return self.count

    def _timed_choice(self, rule: int) -> int:
        """Between the two counts around the free cores, the one timed faster under this load; a count
        not timed yet under this load is tried first."""
        free = self.cpus - self.others
        candidates = sorted({int(min(self.most, max(1, c))) for c in (int(free), int(free) + 1)})
        bucket = self._bucket()
        untried = [c for c in candidates if len(self._times.get((c, bucket), ())) < 2]
        if untried:
            return rule if rule in untried else untried[0]
        return min(candidates, key=lambda c: float(np.median(self._times[(c, bucket)])))

    def record(self, count: int, seconds: float, tokens: int) -> None:
        """What a piece of work of `tokens` tokens took with `count` threads (the last 5 are kept)."""
        if tokens > 0 and seconds > 0:
            times = self._times.setdefault((count, self._bucket()), [])
            times.append(seconds / tokens)
            del times[:-5]

    @contextmanager
    def use(self, tokens: int = 1):
        """Choose the count for the block (it is yielded: apply it), and time the block."""
        n = self.choose()
        start = self.clock()
        yield n
        self.record(n, self.clock() - start, tokens)
