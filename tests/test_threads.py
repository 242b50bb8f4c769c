"""How many threads the parallel work gets as the machine's load changes (rwkv_np.process.Threads),
decided from an injected clock and an injected machine load, so that no test depends on timing."""

import numpy as np
import pytest

from rwkv_np.errors import ArgumentError
from rwkv_np.process import CpuUse, Threads, cpu_count


class Machine:
    """A fake machine: a clock, the busy time of all its cores, and this process's own CPU time."""

    def __init__(self, others: int = 0):
        self.now, self.busy, self.own = 100.0, 0.0, 0.0
        self.running = 1 + others  # threads running now: the one asking, and the other programs'

    def run(self, seconds: float, others: float, ours: float = 1.0) -> None:
        """`seconds` pass with other processes keeping `others` cores busy and this one `ours`."""
        self.now += seconds
        self.busy += (others + ours) * seconds
        self.own += ours * seconds
        self.running = 1 + round(others)

    def cpu_use(self) -> CpuUse:
        return CpuUse(clock=lambda: self.now, busy=lambda: self.busy, own=lambda: self.own,
                      running=lambda: self.running)


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


def test_the_first_look_counts_the_programs_running_at_that_instant():
    """Busy time is counted in ticks of 1/100 s: the first choice, made before any interval has passed,
    comes from the threads running at that instant (procs_running), so that a busy machine gets one
    thread from the first token on."""
    for others, want in ((0, 2), (1, 1), (2, 1)):
        m = Machine(others=others)
        assert tokens(m, governor(m), others=others, n=12) == [want] * 12
    assert CpuUse(running=lambda: None).others_now() is None  # no /proc/stat: unknown


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


# ---- the model on the threads it is given --------------------------------------------------------

from rwkv_np import RWKV, process  # noqa: E402
from rwkv_np.config import RWKVConfig  # noqa: E402
from rwkv_np.rwkv4.params import random_weights  # noqa: E402
from rwkv_np.model import SMALL_MODEL  # noqa: E402

needs_two = pytest.mark.skipif(process.most_threads() < 2 or process.blas_max_threads() < 2,
                               reason="one thread only: nothing to compare")


@pytest.fixture(scope="module")
def mid_model():
    """An RWKV-4 just above SMALL_MODEL (its products run on every thread given), with a wide head."""
    config = RWKVConfig(n_layer=2, n_embd=512, vocab_size=8000, ffn_dim=2048)
    model = RWKV({k: v.astype(np.float32) for k, v in random_weights(config, 3).items()}, config)
    assert not model._small and model.n_params > SMALL_MODEL
    return model


@needs_two
@pytest.mark.parametrize("M", [RWKV.BLAS_ONE_THREAD_BELOW, 64])
def test_blas_products_of_many_rows_give_the_same_numbers_on_one_and_two_threads(M):
    """The rule the model's BLAS_ONE_THREAD_BELOW rests on, checked on this machine's OpenBLAS: a matrix
    product's threads share out rows and columns, so it gives the same numbers on any count. (A single
    row against a wide matrix goes through a matrix-vector product whose sums OpenBLAS may split: fewer
    rows than BLAS_ONE_THREAD_BELOW always run on one thread.)"""
    rng = np.random.default_rng(M)
    w = rng.standard_normal((50277, 768), dtype=np.float32)
    x = rng.standard_normal((M, 768), dtype=np.float32)
    with process.blas_threads(1):
        one = x @ w.T
    with process.blas_threads(2):
        two = x @ w.T
    np.testing.assert_array_equal(one, two)


@needs_two
def test_every_thread_count_gives_the_same_logits_bit_for_bit(mid_model):
    tokens = np.random.default_rng(0).integers(0, 8000, 24)
    got = {}
    for threads in (1, 2, None):
        mid_model.threads = threads
        runs = [mid_model.forward(tokens[:T], mode=mode, return_all=True)
                for mode in ("parallel", "recurrent") for T in (1, 5, 24)]
        runs.append(mid_model.step_batch(tokens[:12]))
        got[threads] = runs
    mid_model.threads = None
    for threads in (2, None):
        for (a, sa), (b, sb) in zip(got[1][:-1], got[threads][:-1]):
            np.testing.assert_array_equal(a, b)
            assert sa == sb
        np.testing.assert_array_equal(got[1][-1][0], got[threads][-1][0])


@needs_two
def test_the_model_runs_on_what_its_governor_chooses(mid_model, monkeypatch):
    """threads=None: the kernels and BLAS run on the count the governor chooses (here one core is
    taken on a fake 2-core machine: one thread); a fixed count is used as given."""
    machine = Machine()
    seen = []
    monkeypatch.setattr(mid_model, "_governors", {k: governor(machine) for k in ("recurrent", "parallel")})
    import numba

    def record(*args, **kw):
        seen.append((numba.get_num_threads(), process.blas_max_threads()))
        machine.run(0.3, others=1.0)  # the busy program keeps a core while this runs
        return real(*args, **kw)

    real = mid_model._engine.parallel
    monkeypatch.setattr(mid_model._engine, "parallel", record)
    for _ in range(3):
        mid_model.forward(list(range(16)))
    assert seen[0] == (2, 2) and seen[-1] == (1, 1)  # the first look: quiet; then one core found taken
    mid_model.threads = 2
    mid_model.forward(list(range(16)))
    assert seen[-1] == (2, 2)
    mid_model.threads = None
    assert (numba.get_num_threads(), process.blas_max_threads()) == (2, 2)  # restored after the call


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_whole_number_of_at_least_one(mid_model, bad):
    with pytest.raises(ArgumentError, match="threads: expected None"):
        mid_model.threads = bad


def test_the_command_line_refuses_threads_below_one(capsys):
    from rwkv_np import cli

    with pytest.raises(SystemExit):
        cli.main(["generate", "x", "--threads", "0"])
    assert "--threads: expected a whole number of threads >= 1, got '0'" in capsys.readouterr().err


@needs_two
def test_a_training_step_gives_the_same_numbers_on_one_and_two_blas_threads():
    from rwkv_np.training.init import init_params
    from rwkv_np.training.model import loss_and_grads

    params = init_params(n_layer=1, n_embd=128, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (2, 64))
    y = np.roll(x, -1, axis=1)
    with process.blas_threads(1):
        one = loss_and_grads(params, x, y)
    with process.blas_threads(2):
        two = loss_and_grads(params, x, y)
    assert one[0] == two[0]
    for k in one[1]:
        np.testing.assert_array_equal(one[1][k], two[1][k], err_msg=k)
