"""Sampling: greedy, temperature, top-k, top-p, penalties, banned tokens, bad options."""

import math

import numpy as np
import pytest

from rwkv_np.errors import ArgumentError
from rwkv_np.sampling import apply_penalties, sample_logits

P = np.array([0.5, 0.3, 0.2])
LOGITS = np.log(P).astype(np.float32)
N = 8000
# a frequency from N draws has standard deviation sqrt(p(1-p)/N) <= 0.0056; 0.025 is > 4 sigma
TOL = 0.025


def freqs(logits, seed=0, **kw):
    rng = np.random.default_rng(seed)
    draws = [sample_logits(logits, rng=rng, **kw) for _ in range(N)]
    return np.bincount(draws, minlength=len(logits)) / N


def test_greedy_is_argmax_lowest_on_ties():
    assert sample_logits([1.0, 3.0, 3.0, -np.inf], temperature=0) == 1
    # greedy ignores top-k / top-p and needs no rng
    assert sample_logits(LOGITS, temperature=0, top_k=3, top_p=0.1) == 0


def test_temperature_one_follows_softmax():
    np.testing.assert_allclose(freqs(LOGITS), P, atol=TOL)


def test_temperature_two_flattens():
    q = np.sqrt(P) / np.sqrt(P).sum()  # softmax(log p / 2)
    np.testing.assert_allclose(freqs(LOGITS, temperature=2.0), q, atol=TOL)


def test_top_k_keeps_k():
    f = freqs(LOGITS, top_k=2)
    assert f[2] == 0
    np.testing.assert_allclose(f[:2], P[:2] / P[:2].sum(), atol=TOL)


def test_top_p_keeps_the_set_reaching_p():
    f = freqs(LOGITS, top_p=0.7)  # 0.5 < 0.7 <= 0.5 + 0.3: tokens 0 and 1
    assert f[2] == 0
    np.testing.assert_allclose(f[:2], [0.625, 0.375], atol=TOL)
    assert set(np.flatnonzero(freqs(LOGITS, top_p=0.45))) == {0}


def test_banned_tokens_never_drawn():
    logits = np.array([0.0, -np.inf, 0.0, -np.inf], dtype=np.float32)
    f = freqs(logits)
    assert f[1] == 0 and f[3] == 0
    np.testing.assert_allclose(f[[0, 2]], [0.5, 0.5], atol=TOL)


def test_single_survivor():
    logits = np.full(50277, -np.inf, dtype=np.float32)
    logits[123] = -5.0
    rng = np.random.default_rng(1)
    assert {sample_logits(logits, rng=rng, temperature=1.3, top_p=0.2, top_k=7) for _ in range(50)} == {123}
    x = np.random.default_rng(2).normal(size=1000)
    assert sample_logits(x, top_k=1, rng=rng) == int(np.argmax(x))


def test_huge_logits_stay_finite():
    # float32 exp would overflow at 89; the max-subtracted float64 softmax does not
    logits = np.array([1e4, 1e4 - 1, -1e4], dtype=np.float32)
    f = freqs(logits, temperature=0.5)
    np.testing.assert_allclose(f, [1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2)), 0], atol=TOL)


def test_seed_repeats():
    a = [sample_logits(LOGITS, rng=np.random.default_rng(7)) for _ in range(5)]
    r1, r2 = np.random.default_rng(42), np.random.default_rng(42)
    assert [sample_logits(LOGITS, rng=r1) for _ in range(100)] == [sample_logits(LOGITS, rng=r2) for _ in range(100)]
    assert len(set(a)) == 1


@pytest.mark.parametrize("kw, message", [
    (dict(temperature=float("nan")), r"temperature must be a finite number >= 0 \(0 = greedy\), got nan"),
    (dict(temperature=-0.5), r"temperature .* got -0.5"),
    (dict(temperature=float("inf")), r"temperature .* got inf"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\] \(1 = off\), got 0.0"),
    (dict(top_p=1.5), r"top_p .* got 1.5"),
    (dict(top_p=float("nan")), r"top_p .* got nan"),
    (dict(top_k=-1), r"top_k must be an integer >= 0 \(0 = off\), got -1"),
    (dict(top_k=2.5), r"top_k .* got 2.5"),
])
def test_bad_options_name_the_argument(kw, message):
    with pytest.raises(ArgumentError, match=message):
        sample_logits(LOGITS, rng=np.random.default_rng(0), **kw)


def test_bad_logits():
    with pytest.raises(ArgumentError, match="every token is banned"):
        sample_logits([-np.inf, -np.inf], rng=np.random.default_rng(0))
    with pytest.raises(ArgumentError, match="NaN or \\+inf"):
        sample_logits([0.0, np.nan], rng=np.random.default_rng(0))
    with pytest.raises(ArgumentError, match=r"1-D array \(V,\), got shape \(2, 2\)"):
        sample_logits(np.zeros((2, 2)), rng=np.random.default_rng(0))


def test_penalties():
    logits = np.array([1.0, 2.0, -np.inf, 0.5], dtype=np.float32)
    counts = np.array([0, 3, 1, 1])
    out = apply_penalties(logits, counts, presence_penalty=0.5, frequency_penalty=0.25)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1.0, 2.0 - 0.5 - 0.75, -np.inf, 0.5 - 0.5 - 0.25])
    np.testing.assert_array_equal(apply_penalties(logits, counts), logits.astype(np.float64))


def _reference_draw(logits, temperature, top_p, top_k, rng) -> int:
    """The definition with full stable sorts, step by step as the module docstring says: the oracle
    for Sampler's partitions, head search and reused buffers."""
    x = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(x))
    x = (x - x.max()) / temperature
    if 0 < top_k < x.size:
        x[np.argsort(-x, kind="stable")[top_k:]] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        n_keep = int(np.searchsorted(np.cumsum(p[order]), top_p, side="left")) + 1
        kept = np.zeros_like(p)
        kept[order[:n_keep]] = p[order[:n_keep]]
        p = kept
    cdf = np.cumsum(p)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, int(np.flatnonzero(p)[-1]))


@pytest.mark.parametrize("scale", [0.01, 1.0, 4.0])  # flat (nucleus beyond the head) to peaked (inside it)
def test_sampler_draws_exactly_what_the_definition_draws(monkeypatch, scale):
    from rwkv_np.sampling import Sampler

    monkeypatch.setattr(Sampler, "HEAD", 64)  # both top-p paths on a 3000-token vocabulary
    rng = np.random.default_rng(11)
    logits = np.round(rng.normal(size=3000) * scale * 4) / 4  # many exact ties
    logits[rng.choice(3000, 300, replace=False)] = -np.inf  # banned tokens
    logits = logits.astype(np.float32)
    for temperature in (0.0, 0.7, 1.0, 1.5):
        for top_k in (0, 1, 7, 100, 2999):
            for top_p in (1.0, 0.999, 0.9, 0.5, 0.05):
                sampler = Sampler(temperature, top_p, top_k, np.random.default_rng(5))
                ref_rng = np.random.default_rng(5)
                got = [sampler(logits) for _ in range(8)]
                want = [_reference_draw(logits, temperature, top_p, top_k, ref_rng) for _ in range(8)]
                assert got == want, (temperature, top_k, top_p)


def test_sampler_keeps_working_when_the_vocabulary_size_changes():
    from rwkv_np.sampling import Sampler

    sampler = Sampler(temperature=1.0, top_p=0.9, rng=np.random.default_rng(0))
    assert sampler(np.array([0.0, -np.inf, -np.inf])) == 0
    assert sampler(np.array([-np.inf, -np.inf, 5.0, -np.inf, -np.inf])) == 2


@pytest.mark.parametrize("temperature", [5e-324, 1e-320, 1e-300, 1e-30, 1e-7])
def test_tiny_temperatures_are_greedy_in_the_limit(temperature):
    # x / T overflowed to inf for such T, and inf - inf made every probability NaN
    rng = np.random.default_rng(3)
    tied = np.array([1.0, 3.0, 3.0, 2.0, -np.inf, 2.9999], np.float32)
    draws = [sample_logits(tied, temperature=temperature, rng=rng) for _ in range(200)]
    assert set(draws) == {1, 2}  # exactly the tied best, both of them
    single = np.array([0.5, -1.0, 7.25, 7.0, -np.inf], np.float32)
    for top_k, top_p in ((0, 1.0), (2, 1.0), (0, 0.5), (3, 0.9)):
        assert {sample_logits(single, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
                for _ in range(50)} == {2}


def test_huge_temperature_is_uniform_over_allowed_tokens():
    rng = np.random.default_rng(4)
    logits = np.array([100.0, -100.0, 0.0, -np.inf, 3.0], np.float32)
    counts = np.bincount([sample_logits(logits, temperature=1e308, rng=rng) for _ in range(4000)], minlength=5)
    assert counts[3] == 0  # banned stays banned
    # 1000 expected each; 5 binomial standard deviations (sqrt(4000 * 1/4 * 3/4) = 27)
    assert np.all(np.abs(counts[[0, 1, 2, 4]] - 1000) < 5 * 27.4), counts


@pytest.mark.parametrize("name", ["presence_penalty", "frequency_penalty"])
def test_penalties_are_bounded_so_the_arithmetic_cannot_overflow(name):
    from rwkv_np.sampling import MAX_PENALTY, check_sampling_args

    for ok in (MAX_PENALTY, -MAX_PENALTY, 0.0, 2.5, -1e-300):
        check_sampling_args(**{name: ok})
    for bad in (MAX_PENALTY * (1 + 1e-15), -1e308, 1e308, 10**400):
        with pytest.raises(ArgumentError, match=rf"{name} must be a finite number in \[-1e\+06, 1e\+06\], got"):
            check_sampling_args(**{name: bad})
    counts = np.array([0, 1, 10**7])
    for p in (MAX_PENALTY, -MAX_PENALTY):
        out = apply_penalties(np.float32([3.0, -2.0, 1.0]), counts, **{name: p})
        assert np.isfinite(out).all()
        assert sample_logits(out, temperature=0.5, rng=np.random.default_rng(0)) == (0 if p > 0 else 2)
