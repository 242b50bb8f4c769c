"""How well a model predicts a text: loss per token and per byte, and perplexity
(`python -m rwkv_np perplexity`, like llama.cpp's perplexity tool and rwkv.cpp's
measure_pexplexity.py).

Two ways to read a text of N tokens, both scoring every token but the first exactly once
(the loss of token t is -ln p(token t | what the model read before it)):

windows (the default): windows of `ctx` tokens, each read from the initial state, starting every
    `stride` tokens. With stride == ctx (the default) they are consecutive and do not overlap:
    this is the definition of the shipped model's held-out loss (rwkv_np/assets/*.json:
    "all consecutive 256-byte windows ..., each read from the initial state"), so the first
    tokens of each window are predicted from little context. With stride < ctx, each window
    scores only its last `stride` tokens (the first window scores all of its own), so every
    scored token has at least ctx - stride tokens of context (llama.cpp's and Hugging Face's
    sliding window).
carry_state: the whole text as one sequence, the state carried from token to token, as an RNN
    reads it (rwkv.cpp's measure_pexplexity.py); `ctx` is then only how many tokens one
    forward call reads.

Tokens that do not fill a last whole window are scored only with carry_state or stride < ctx
(the README's definition uses whole windows only: (N - 1) // ctx of them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ArgumentError


@dataclass
class Result:
    nats: float           # sum of -ln p over the scored tokens
    tokens: int           # tokens scored
    bytes: int            # bytes those tokens stand for
    processed: int        # tokens read by the model (scored or context)
    seconds: float        # time in the model (forward passes and losses)

    @property
    def loss_per_token(self) -> float:
        return self.nats / self.tokens

    @property
    def loss_per_byte(self) -> float:
        return self.nats / self.bytes

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.loss_per_token))

    @property
    def tokens_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else float("inf")


def token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-ln softmax(logits)[target] per row, in float64: logits (T, V), targets (T,)."""
    z = logits.astype(np.float64)
    top = z.max(axis=1)
    lse = np.log(np.exp(z - top[:, None]).sum(axis=1)) + top
    return lse - z[np.arange(len(z)), targets]


def plan(n_tokens: int, ctx: int, stride: int | None, carry_state: bool) -> list[tuple[int, int, int]]:
    """The model calls as (start, stop, first scored): read tokens[start:stop] (from the state
    carried, or the initial state) and score the predictions of tokens[first + 1:stop + 1]."""
    if ctx < 1:
        raise ArgumentError(f"ctx: must be at least 1 token, got {ctx}")
    stride = ctx if stride is None else stride
    if not 1 <= stride <= ctx:
        raise ArgumentError(f"stride: must be between 1 and ctx ({ctx}), got {stride}")
    if n_tokens < 2:
        raise ArgumentError(f"data: {n_tokens} token(s); at least 2 are needed to score one prediction")
    last = n_tokens - 1  # tokens that have a next token to predict
    if carry_state:
        return [(a, min(a + ctx, last), a) for a in range(0, last, ctx)]
    if stride == ctx:
        if last < ctx:
            raise ArgumentError(f"data: {n_tokens} tokens are fewer than one window of ctx + 1 = {ctx + 1}; "
                                "use a smaller --ctx")
        return [(a, a + ctx, a) for a in range(0, last - ctx + 1, ctx)]
    calls, a = [], 0
    while True:
        stop = min(a + ctx, last)
        calls.append((a, stop, a if a == 0 else a + ctx - stride))  # first: where the previous one stopped
        if stop == last:
            return calls
        a = stop - (ctx - stride)  # the next window scores the `stride` tokens after this one


def evaluate(model, tokens: np.ndarray, token_bytes: np.ndarray, ctx: int = 256, stride: int | None = None,
             carry_state: bool = False, mode: str = "parallel",
             progress: Callable[[int, int, float], None] | None = None) -> Result:
    """Score `tokens` (N,) with `model` (rwkv_np.RWKV); token_bytes[id] = bytes token id stands for.
    progress(done calls, all calls, nats so far / tokens so far) after each call."""
    tokens = np.asarray(tokens, np.int64)
    calls = plan(len(tokens), ctx, stride, carry_state)
    nats, scored, n_bytes, processed = 0.0, 0, 0, 0
    state = None
    started = time.perf_counter()
    for i, (a, b, first) in enumerate(calls):
        logits, new_state = model.forward(tokens[a:b], state if carry_state else None, mode=mode, return_all=True)
        if carry_state:
            state = new_state
        targets = tokens[first + 1:b + 1]
        nats += float(token_losses(logits[first - a:], targets).sum())
        scored += len(targets)
        n_bytes += int(token_bytes[targets].sum())
        processed += b - a
        if progress is not None:
            progress(i + 1, len(calls), nats / scored)
    return Result(nats, scored, n_bytes, processed, time.perf_counter() - started)


class ProgressBar:
    """One line on a stream (stderr), rewritten in place: calls done, tokens/s, loss so far."""

    def __init__(self, stream, total_tokens: int, width: int = 30):
        self.stream, self.total_tokens, self.width = stream, total_tokens, width
        self.started = time.perf_counter()
        self.shown = -1.0

    def __call__(self, done: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if done < total and now - self.shown < 0.2:  # at most 5 updates a second
            return
        self.shown = now
        filled = self.width * done // total
        rate = self.total_tokens * done / total / max(now - self.started, 1e-9)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                          f"{rate:,.0f} tok/s, loss so far {loss:.4f} nats/token ")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()
