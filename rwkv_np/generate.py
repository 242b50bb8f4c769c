"""Text generation: the prompt through the model once, then one recurrent step per new token.

`generate(...)` returns a `Generation`: iterate it for text pieces as they become printable;
its `.stats` (token counts, seconds) are kept up to date while it runs, so they are right even
when the caller stops early (Ctrl-C).

Documented behaviours:
- Empty prompt: a NeoX (vocab 50277) model starts from "<|endoftext|>" (id 0), the separator it
  saw between documents in training. A byte-level model has no such token, so an empty prompt is
  an ArgumentError.
- Generation ends after `max_tokens` tokens, when the text contains a stop string (the stop
  string and anything after it are not emitted), or when a NeoX model samples "<|endoftext|>"
  (not emitted).
- `.state` afterwards is the model state after the prompt and every generated token (the
  end-of-text token excluded), ready to continue the conversation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from .errors import ArgumentError
from .sampling import Sampler, apply_penalties, check_sampling_args
from .tokenizer import Utf8Stream

MAX_TOKENS_LIMIT = 10**7  # ~ a day at 100 tok/s; anything above is a typo, not a wish
MODES = ("parallel", "recurrent")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    gen_seconds: float = 0.0

    @staticmethod
    def _rate(n: int, seconds: float) -> float:
        return n / seconds if seconds > 0 else 0.0

    def summary(self) -> str:
        """The one line the CLI prints on stderr."""
        return (f"prompt: {self.prompt_tokens} tokens, {self._rate(self.prompt_tokens, self.prompt_seconds):.1f} tok/s"
                f" | generated: {self.generated_tokens} tokens, "
                f"{self._rate(self.generated_tokens, self.gen_seconds):.1f} tok/s")


def _hold_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _prompt_ids(prompt, tokenizer, vocab_size: int) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, (bytes, bytearray)):
        raise ArgumentError("prompt must be a str or a sequence of token ids, not bytes")
    else:
        try:
            ids = [int(i) for i in np.asarray(prompt).reshape(-1)]
        except (TypeError, ValueError):
            raise ArgumentError(
                f"prompt must be a str or a sequence of token ids, got {type(prompt).__name__}") from None
    if not ids:
        if getattr(tokenizer, "eos_id", None) is None:
            raise ArgumentError("prompt is empty: a byte-level model has no start token, give at least one character")
        ids = [tokenizer.eos_id]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ArgumentError(f"prompt: token id {bad[0]} is outside the model's vocabulary [0, {vocab_size})")
    return ids


class Generation:
    """An iterator of text pieces; `.stats`, `.tokens` (generated ids) and `.state` as it goes."""

    def __init__(self, model, tokenizer, prompt_ids, *, max_tokens, sampling, penalties, stops, rng, state, mode):
        self.stats = GenerationStats(prompt_tokens=len(prompt_ids))
        self.tokens: list[int] = []
        self.state = state
        self.stop_reason: str | None = None  # "max_tokens", "stop", "eos" once finished
        self._it = self._run(model, tokenizer, prompt_ids, max_tokens, sampling, penalties, stops, rng, mode)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        self._it.close()

    @property
    def text(self) -> str:
        return "".join(self)

    def _run(self, model, tokenizer, prompt_ids, max_tokens, sampling, penalties, stops, rng, mode):
        t0 = time.perf_counter()
        logits, self.state = model.forward(prompt_ids, self.state, mode=mode)
        self.stats.prompt_seconds = time.perf_counter() - t0

        vocab = np.asarray(logits).shape[-1]
        counts = np.zeros(vocab, dtype=np.int64)
        stream, pending = Utf8Stream(), ""
        t0 = time.perf_counter()
        eos = getattr(tokenizer, "eos_id", None)
        self.stop_reason = "max_tokens"
        sampler = Sampler(rng=rng, **sampling)
        for _ in range(max_tokens):
            tok = sampler(apply_penalties(logits, counts, *penalties) if any(penalties) else logits)
            if tok == eos:
                self.stop_reason = "eos"
                break
            self.tokens.append(tok)
            counts[tok] += 1
            logits, self.state = model.forward([tok], self.state, mode="recurrent")
            self.stats.generated_tokens += 1
            self.stats.gen_seconds = time.perf_counter() - t0

            pending += stream.push(tokenizer.decode_bytes([tok]))
            hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
            if hits:
                self.stop_reason = "stop"
                pending = pending[:min(hits)]
                break
            # text that might be the start of a stop string waits for the next token
            ready = len(pending) - _hold_back(pending, stops)
            if ready:
                piece, pending = pending[:ready], pending[ready:]
                yield piece
        if self.stop_reason != "stop":
            pending += stream.flush()
            hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
            if hits:
                self.stop_reason = "stop"
                pending = pending[:min(hits)]
        self.stats.gen_seconds = time.perf_counter() - t0
        if pending:
            yield pending


def generate(model, tokenizer, prompt, *, max_tokens: int = 100, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             stop: tuple[str, ...] | list[str] = (), seed: int | None = None, state=None,
             mode: str = "parallel") -> Generation:
    """Generate text after `prompt` (a str, or a sequence of token ids).

    model: anything with `forward(tokens, state, mode=...) -> (logits (V,), state)`.
    mode: how the prompt is fed ("parallel": one pass over the whole prompt; "recurrent": token
    by token); new tokens always go through the recurrent form. Both give the same text.
    seed: an int makes the run repeatable; None draws fresh entropy.
    Every argument is checked here, before any model work, with an ArgumentError naming it.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, Integral) or not 0 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ArgumentError(f"max_tokens must be an integer in [0, {MAX_TOKENS_LIMIT}], got {max_tokens!r}")
    check_sampling_args(temperature, top_p, top_k, presence_penalty, frequency_penalty)
    if isinstance(stop, str):
        stop = (stop,)
    stops = tuple(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ArgumentError(f"stop strings must be non-empty str, got {stops!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0):
        raise ArgumentError(f"seed must be an integer >= 0 or None, got {seed!r}")
    if mode not in MODES:
        raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")
    tok_vocab = getattr(tokenizer, "vocab_size", None)
    if isinstance(tok_vocab, Integral) and tok_vocab < model.config.vocab_size:
        # the model could sample an id the tokenizer cannot print: refuse now, not mid-text
        raise ArgumentError(f"tokenizer: it has {tok_vocab} tokens but the model {model.config.vocab_size}; it is "
                            "not this model's tokenizer")
    prompt_ids = _prompt_ids(prompt, tokenizer, model.config.vocab_size)
    return Generation(model, tokenizer, prompt_ids, max_tokens=int(max_tokens),
                      sampling=dict(temperature=temperature, top_p=top_p, top_k=int(top_k)),
                      penalties=(presence_penalty, frequency_penalty), stops=stops,
                      rng=np.random.default_rng(seed), state=state, mode=mode)
