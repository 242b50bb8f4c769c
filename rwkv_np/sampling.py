"""Choosing the next token from logits: penalties, temperature, top-k, top-p.

Order (as in Hugging Face transformers): penalties on the raw logits, then divide by the
temperature, keep the top-k logits, softmax, keep the smallest set of tokens whose probability
reaches top-p, renormalise, draw. All arithmetic is float64 so a 50277-way softmax of float32
logits does not lose the tail.

temperature 0 means greedy: the arg-max (lowest id on ties), no random draw, and top-k / top-p
cannot change it. Any temperature > 0 works, however small: the logits are shifted so that the
largest is 0 before they are divided, so nothing overflows. Logits of -inf are banned tokens and are never drawn.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .errors import ArgumentError

#: |penalty| bound. A penalty of 1e6 already outweighs any logit a model produces (their spread is
#: tens), so a larger one could not change the choice; and times a count of at most 10^7
#: generated tokens it stays far inside float64, where 1e308 * 2 overflowed to inf (or NaN).
MAX_PENALTY = 1e6


def check_sampling_args(temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                        presence_penalty: float = 0.0, frequency_penalty: float = 0.0) -> None:
    """Raise ArgumentError naming the first invalid option."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not 0 <= temperature < math.inf:
        raise ArgumentError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0 < top_p <= 1:
        raise ArgumentError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 0:
        raise ArgumentError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if isinstance(value, bool) or not isinstance(value, Real) or not -MAX_PENALTY <= value <= MAX_PENALTY:
            raise ArgumentError(f"{name} must be a finite number in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value!r}")


def apply_penalties(logits: np.ndarray, counts: np.ndarray, presence_penalty: float = 0.0,
                    frequency_penalty: float = 0.0) -> np.ndarray:
    """logits (V,) minus presence * [count > 0] minus frequency * count, as float64.

    counts (V,): how many times each token has been generated so far (the prompt does not count,
    as in the OpenAI API). -inf (banned) stays -inf.
    """
    out = np.array(logits, dtype=np.float64)
    if presence_penalty:
        out -= presence_penalty * (counts > 0)
    if frequency_penalty:
        out -= frequency_penalty * counts
    return out


class Sampler:
    """Draws one token id from logits (V,) per call, with the options fixed at construction.

    The same steps as the module docstring, written so that a 50277-way draw costs a fraction of
    a millisecond: the float64 work arrays are kept between calls (fresh 400 KB temporaries cost
    page faults on every token), top-k and top-p select with a partition instead of sorting the
    vocabulary, and only the kept tokens' probabilities are summed for the draw. Ties keep the
    lower ids, as a stable sort would: the kept set, and so the draw, is fully determined.
    """

    #: top-p first looks for the nucleus among this many most likely tokens (the nucleus of a
    #: trained model is usually much smaller); it sorts the whole vocabulary only if they fall short
    HEAD = 1024

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 rng: np.random.Generator | None = None) -> None:
        check_sampling_args(temperature, top_p, top_k)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.rng = rng if rng is not None else np.random.default_rng()
        self._x = self._p = self._work = None

    def __call__(self, logits) -> int:
        x = self._load(logits)
        if self.temperature == 0:
            return int(np.argmax(x))
        # shift before dividing: (x - max) / T is <= 0 for every T > 0, so a tiny temperature
        # (1e-320) gives -inf for all but the best tokens (greedy in the limit, ties drawn
        # evenly) instead of inf - inf = NaN; softmax does not change under the shift
        x -= x.max()
        if self.temperature != 1:
            with np.errstate(over="ignore"):  # -huge / tiny T = -inf: a probability of 0, as meant
                x /= self.temperature
        if 0 < self.top_k < x.size:
            self._keep_top_k(x, self.top_k)
        p = self._p
        np.subtract(x, x.max(), out=p)
        np.exp(p, out=p)  # exp(-inf) = 0 for banned / filtered tokens; the max gives 1
        p /= p.sum()
        if self.top_p < 1:
            self._keep_top_p(p, self.top_p)
            kept = np.flatnonzero(p)
            return int(kept[self._draw(p[kept])])
        return self._draw(p)

    def _load(self, logits) -> np.ndarray:
        x = np.asarray(logits)
        if x.dtype.kind not in "fiub":
            raise ArgumentError(f"logits must be numbers, got dtype {x.dtype}")
        if x.ndim != 1 or x.size == 0:
            raise ArgumentError(f"logits must be a non-empty 1-D array (V,), got shape {x.shape}")
        if self._x is None or self._x.size != x.size:
            self._x, self._p, self._work = (np.empty(x.size) for _ in range(3))
        np.copyto(self._x, x, casting="unsafe")
        top = self._x.max()  # NaN if any is NaN
        if np.isnan(top) or top == np.inf:
            raise ArgumentError("logits contain NaN or +inf: the model output is not usable")
        if top == -np.inf:
            raise ArgumentError("every token is banned: all logits are -inf")
        return self._x

    def _keep_top_k(self, x: np.ndarray, k: int) -> None:
        """Set all but the k largest of x (ties: lower ids first) to -inf, in place."""
        work = self._work
        work[:] = x
        work.partition(x.size - k)
        kth = work[x.size - k]  # the k-th largest value
        n_above = int(np.count_nonzero(x > kth))
        x[x < kth] = -np.inf
        x[np.flatnonzero(x == kth)[k - n_above:]] = -np.inf

    def _keep_top_p(self, p: np.ndarray, top_p: float) -> None:
        """Zero all but the smallest set of most likely tokens whose mass reaches top_p, in place."""
        work, head = self._work, min(self.HEAD, p.size)
        work[:] = p
        work.partition(p.size - head)  # the `head` largest at the end, unordered
        ranked = np.sort(work[p.size - head:])[::-1]
        mass = np.cumsum(ranked)
        if mass[-1] < top_p and head < p.size:
            work.sort()
            ranked = work[::-1]
            mass = np.cumsum(ranked)
        # keep tokens until the mass reaches top_p, including the one that crosses it
        n_keep = min(int(np.searchsorted(mass, top_p, side="left")) + 1, p.size)
        last = ranked[n_keep - 1]
        n_above = int(np.count_nonzero(p > last))
        p[p < last] = 0
        p[np.flatnonzero(p == last)[n_keep - n_above:]] = 0

    def _draw(self, weights: np.ndarray) -> int:
        """An index drawn in proportion to weights (>= 0, not all 0)."""
        cdf = np.cumsum(weights, out=self._work[:weights.size])
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        # the first index whose cumulative weight exceeds u * total has a non-zero weight; past
        # the end only if u * total rounded up to the total: then the last non-zero one
        return i if i < weights.size else int(np.flatnonzero(weights)[-1])


def sample_logits(logits, *, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  rng: np.random.Generator | None = None) -> int:
    """Draw one token id from logits (V,). A seeded `rng` makes the draw repeatable.
    (A generation loop keeps one `Sampler` instead, reusing its work arrays.)"""
    return Sampler(temperature, top_p, top_k, rng)(logits)
