"""Choosing the next token from logits: penalties, temperature, top-k, top-p.

Order (as in Hugging Face transformers): penalties on the raw logits, then divide by the
temperature, keep the top-k logits, softmax, keep the smallest set of tokens whose probability
reaches top-p, renormalise, draw. All arithmetic is float64 so a 50277-way softmax of float32
logits does not lose the tail.

temperature 0 means greedy: the arg-max (lowest id on ties), no random draw, and top-k / top-p
cannot change it. Logits of -inf are banned tokens and are never drawn.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .errors import ArgumentError


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
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ArgumentError(f"{name} must be a finite number, got {value!r}")


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


def _check_logits(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ArgumentError(f"logits must be a non-empty 1-D array (V,), got shape {x.shape}")
    if np.isnan(x).any() or np.isposinf(x).any():
        raise ArgumentError("logits contain NaN or +inf: the model output is not usable")
    if np.isneginf(x).all():
        raise ArgumentError("every token is banned: all logits are -inf")
    return x


def _top_p_filter(probs: np.ndarray, top_p: float, head: int = 1024) -> np.ndarray:
    """Zero all but the smallest set of most likely tokens whose mass reaches top_p (>= 1 token).

    A full sort of a 50277-way distribution costs milliseconds per token; the nucleus of a
    language model is usually within the top `head` tokens, so sort those first and fall back
    to the full sort only when they do not reach top_p.
    """
    idx = np.arange(probs.size)
    if probs.size > head:
        idx = np.argpartition(-probs, head - 1)[:head]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    cum = np.cumsum(probs[idx])
    if cum[-1] < top_p and idx.size < probs.size:
        idx = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[idx])
    # keep tokens until the mass reaches top_p, including the one that crosses it
    n_keep = int(np.searchsorted(cum, top_p, side="left")) + 1
    out = np.zeros_like(probs)
    out[idx[:n_keep]] = probs[idx[:n_keep]]
    return out


def sample_logits(logits, *, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  rng: np.random.Generator | None = None) -> int:
    """Draw one token id from logits (V,). A seeded `rng` makes the draw repeatable."""
    check_sampling_args(temperature, top_p, top_k)
    x = _check_logits(logits)
    if temperature == 0:
        return int(np.argmax(x))
    if rng is None:
        rng = np.random.default_rng()
    x = x / temperature
    if 0 < top_k < x.size:
        # stable sort: on ties the lower ids win, so the kept set is exactly k tokens
        dropped = np.argsort(-x, kind="stable")[top_k:]
        x[dropped] = -np.inf
    probs = np.exp(x - x.max())  # exp(-inf) = 0 for banned/filtered tokens; the max gives 1
    probs /= probs.sum()
    if top_p < 1:
        probs = _top_p_filter(probs, top_p)
    cdf = np.cumsum(probs)
    # the first index whose cumulative mass exceeds u * total; a zero-probability token never is
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, int(np.flatnonzero(probs)[-1]))
