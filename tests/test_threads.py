"""How many threads the parallel work gets as the machine's load changes (rwkv_np.process.Threads),
decided from an injected clock and an injected machine load, so that no test depends on timing."""

import numpy as np
import pytest

from rwkv_np.process import CpuUse, Threads, cpu_count


class Machine:
    """A fake machine: a clock, the busy time of all its cores, and this process's own CPU time."""

    def __init__(self):
        self.now, self.busy, self.own = 100.0, 0.0, 0.0

    def run(self, seconds: float, others: float, ours: float = 1.0) -> None:
        """`seconds` pass with other processes keeping `others` cores busy and this one `ours`."""
        self.now += seconds
        self.busy += (others + ours) * seconds
        self.own += ours * seconds

    def cpu_use(self) -> CpuUse:
        return CpuUse(clock=lambda: self.now, busy=lambda: self.busy, own=lambda: self.own)


def governor(machine: Machine, most: int = 2, cpus: int = 2, window: float = 0.2) -> Threads:
    return Threads(most, use=machine.cpu_use(), clock=lambda: machine.now, window=window, cpus=cpus)


def tokens(machine: Machine, threads: Threads, others: float, n: int, seconds_per_token=None) -> list[int]:
    """n pieces of work of one token each, each taking 0.05 s (or seconds_per_token(count)); the counts used."""
    counts = []
    for _ in range(n):
        with threads.use(1) as count:
            machine.run(seconds_per_token(count) if seconds_per_token else 0.05, others)
        counts.append(count)
    return counts


def test_cpu_use_measures_the_other_processes_between_two_looks():
    m = Machine()
    use = m.cpu_use()
    assert use.others() is None  # the first look only starts the clock
    m.run(0.5, others=0.75, ours=1.2)
    assert use.others() == pytest.approx(0.75)
    m.run(1.0, others=0.0, ours=2.0)
    assert use.others() == pytest.approx(0.0)
    no_proc = CpuUse(clock=lambda: m.now, busy=lambda: None, own=lambda: m.own)
    no_proc.others()
    m.run(1.0, others=1.0)
    assert no_proc.others() is None  # no /proc/stat: unknown, not zero


def test_quiet_machine_all_threads():
    m = Machine()
    assert tokens(m, governor(m), others=0.0, n=20) == [2] * 20


def test_one_core_taken_one_thread_within_one_look():
    m = Machine()
    t = governor(m)
    tokens(m, t, others=0.0, n=10)
    counts = tokens(m, t, others=1.0, n=20)
    # the load is looked at every 0.2 s (4 tokens of 0.05 s, 5 with the clock's rounding): from the
    # second look on, one thread
    assert counts[5:] == [1] * 15, counts


def test_the_busy_process_leaves_and_all_threads_come_back_within_a_second():
    m = Machine()
    t = governor(m)
    tokens(m, t, others=1.0, n=20)
    assert t.count == 1
    counts = tokens(m, t, others=0.0, n=40)  # 2 s of work after the other process left
    first_two = counts.index(2)
    assert first_two * 0.05 <= 1.0 and counts[first_two:] == [2] * (40 - first_two), counts


def test_both_cores_taken_still_one_thread():
    m = Machine()
    assert tokens(m, governor(m), others=2.0, n=20)[5:] == [1] * 15


def test_never_more_than_most_nor_fewer_than_one():
    m = Machine()
    assert set(tokens(m, governor(m, most=3, cpus=8), others=0.0, n=10)) == {3}
    m = Machine()
    assert set(tokens(m, governor(m, most=1, cpus=2), others=0.0, n=10)) == {1}
    m = Machine()
    assert tokens(m, governor(m, most=4, cpus=4), others=2.9, n=12)[5:] == [1] * 7


def test_an_unsure_load_is_settled_by_timing_both_counts():
    # other processes on half a core: the rule cannot tell 1 from 2; both are timed under that
    # load and the faster kept, whichever it is
    for faster in (1, 2):
        m = Machine()
        t = governor(m)
        counts = tokens(m, t, others=0.5, n=80, seconds_per_token=lambda c: 0.02 if c == faster else 0.06)
        assert set(counts[:40]) == {1, 2}, counts  # both were tried
        assert counts[-20:] == [faster] * 20, counts


def test_the_window_bounds_how_often_the_load_is_read():
    m = Machine()
    looks = []
    use = m.cpu_use()
    original = use.others
    use.others = lambda: looks.append(m.now) or original()
    t = Threads(2, use=use, clock=lambda: m.now, window=0.2, cpus=2)
    tokens(m, t, others=0.0, n=100)  # 5 s of work
    gaps = np.diff(looks[1:])
    assert len(looks) <= 27 and gaps.min() >= 0.2 - 1e-9


def test_cpu_count_is_what_this_process_may_use():
    assert 1 <= cpu_count()
