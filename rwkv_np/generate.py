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
        text = _Text(tokenizer, stops)
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

            piece = text.push(tok)
            if text.stopped:
                self.stop_reason = "stop"
                break
            if piece:
                yield piece
        piece = text.finish()
        if text.stopped:
            self.stop_reason = "stop"
        self.stats.gen_seconds = time.perf_counter() - t0
        if piece:
            yield piece


class _Text:
    """Generated tokens -> printable text: whole characters only, cut before the first stop string,
    text that might be the start of a stop string held back until the next token tells."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.stream, self.pending, self.stopped = Utf8Stream(), "", False

    def _cut(self) -> None:
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.pending = self.pending[:min(hits)]

    def push(self, token: int) -> str:
        """The text that token makes printable ("" if none yet); once `stopped`, nothing more counts."""
        self.pending += self.stream.push(self.tokenizer.decode_bytes([token]))
        self._cut()
        if self.stopped:
            return ""
        # text that might be the start of a stop string waits for the next token
        ready = len(self.pending) - _hold_back(self.pending, self.stops)
        piece, self.pending = self.pending[:ready], self.pending[ready:]
        return piece

    def finish(self) -> str:
        """The rest: what was held back (up to a stop string), and any incomplete character."""
        if not self.stopped:
            self.pending += self.stream.flush()
            self._cut()
        piece, self.pending = self.pending, ""
        return piece


def generate(model, tokenizer, prompt, *, max_tokens: int = 100, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             stop: tuple[str, ...] | list[str] = (), seed: int | None = None, state=None,
             mode: str = "parallel", rng: np.random.Generator | None = None) -> Generation:
    """Generate text after `prompt` (a str, or a sequence of token ids).

    model: anything with `forward(tokens, state, mode=...) -> (logits (V,), state)`.
    mode: how the prompt is fed ("parallel": one pass over the whole prompt; "recurrent": token
    by token); new tokens always go through the recurrent form. Both give the same text.
    seed: an int makes the run repeatable; None draws fresh entropy. rng: a numpy Generator to draw
    from instead (seed must then be None): a chat keeps one for the whole conversation.
    Every argument is checked here, before any model work, with an ArgumentError naming it.
    """
    if rng is not None and (seed is not None or not isinstance(rng, np.random.Generator)):
        raise ArgumentError(f"rng must be a numpy.random.Generator, and seed None with it; got rng={rng!r}, "
                            f"seed={seed!r}")
    prompt_ids, stops = _checked(model, tokenizer, prompt, max_tokens, temperature, top_p, top_k, presence_penalty,
                                 frequency_penalty, stop, seed, mode)
    return Generation(model, tokenizer, prompt_ids, max_tokens=int(max_tokens),
                      sampling=dict(temperature=temperature, top_p=top_p, top_k=int(top_k)),
                      penalties=(presence_penalty, frequency_penalty), stops=stops,
                      rng=rng if rng is not None else np.random.default_rng(seed), state=state,
                      mode=mode)


def _checked(model, tokenizer, prompt, max_tokens, temperature, top_p, top_k, presence_penalty, frequency_penalty,
             stop, seed, mode) -> tuple[list[int], tuple[str, ...]]:
    """generate's arguments checked, each by name: (the prompt's token ids, the stop strings)."""
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
    return _prompt_ids(prompt, tokenizer, model.config.vocab_size), stops


#: the most samples `generate_samples` makes at once: their states and logits are kept side by side
MAX_SAMPLES = 4096


@dataclass
class Sample:
    """One of generate_samples' continuations: its text, token ids, why it ended, and its state after."""
    text: str
    tokens: list
    stop_reason: str
    state: object


def generate_samples(model, tokenizer, prompt, n: int, *, max_tokens: int = 100, temperature: float = 1.0,
                     top_p: float = 1.0, top_k: int = 0, presence_penalty: float = 0.0,
                     frequency_penalty: float = 0.0, stop: tuple[str, ...] | list[str] = (),
                     seed: int | None = None, state=None, mode: str = "parallel",
                     stats: GenerationStats | None = None) -> list[Sample]:
    """n continuations of one prompt, generated together: the prompt is read once, its state forked n
    ways, and every step advances all the samples still running with one `model.step_batch` (every
    weight read once per step, not once per sample). Each sample has its own sampler, seeded from
    `seed` through numpy's SeedSequence.spawn (so the n are independent and the run repeatable), its
    own penalties' counts and stop strings; each ends as `generate` does (max_tokens, a stop string,
    the end-of-text token). Returns the n Samples in order; `stats`, if given, is filled in as it goes
    (generated_tokens counts the tokens of all samples)."""
    if isinstance(n, bool) or not isinstance(n, Integral) or not 1 <= n <= MAX_SAMPLES:
        raise ArgumentError(f"n (samples) must be an integer in [1, {MAX_SAMPLES}], got {n!r}")
    prompt_ids, stops = _checked(model, tokenizer, prompt, max_tokens, temperature, top_p, top_k, presence_penalty,
                                 frequency_penalty, stop, seed, mode)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    t0 = time.perf_counter()
    logits, start = model.forward(prompt_ids, state, mode=mode)
    stats.prompt_seconds = time.perf_counter() - t0
    eos = getattr(tokenizer, "eos_id", None)
    penalties = (presence_penalty, frequency_penalty)
    samplers = [Sampler(temperature, top_p, int(top_k), np.random.default_rng(s))
                for s in np.random.SeedSequence(seed).spawn(n)]
    texts = [_Text(tokenizer, stops) for _ in range(n)]
    pieces = [[] for _ in range(n)]
    tokens, reasons = [[] for _ in range(n)], ["max_tokens"] * n
    counts = np.zeros((n, np.asarray(logits).shape[-1]), np.int64)
    states, rows = [start] * n, np.broadcast_to(logits, (n, logits.shape[-1]))  # forked: no copies
    running = list(range(n))
    t0 = time.perf_counter()
    for _ in range(int(max_tokens)):
        picked = []
        for row, i in enumerate(running):
            lg = rows[row]
            tok = samplers[i](apply_penalties(lg, counts[i], *penalties) if any(penalties) else lg)
            if tok == eos:
                reasons[i] = "eos"
            else:
                picked.append((i, tok))
        if not picked:
            running = []
            break
        rows, after = model.step_batch([tok for _, tok in picked], [states[i] for i, _ in picked])
        running = []
        for row, (i, tok) in enumerate(picked):
            states[i] = after[row]
            tokens[i].append(tok)
            counts[i, tok] += 1
            pieces[i].append(texts[i].push(tok))
            if texts[i].stopped:
                reasons[i] = "stop"
            else:
                running.append(i)
        rows = rows[[row for row, (i, _) in enumerate(picked) if not texts[i].stopped]]
        stats.generated_tokens += len(picked)
        stats.gen_seconds = time.perf_counter() - t0
        if not running:
            break
    out = []
    for i in range(n):
        pieces[i].append(texts[i].finish())
        if texts[i].stopped:
            reasons[i] = "stop"
        out.append(Sample("".join(pieces[i]), tokens[i], reasons[i], states[i]))
    stats.gen_seconds = time.perf_counter() - t0
    return out
