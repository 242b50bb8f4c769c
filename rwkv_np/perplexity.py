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

Memory: a window is read `model.chunk_size` tokens per forward call, its state carried from call to
call (the model cuts a longer input at the same places, so the logits are the same bit for bit), and
only each scored token's loss is kept, computed `LOSS_ROWS` rows at a time: the memory is the model's
plus one chunk's logits, whatever `ctx` and the vocabulary.

Bytes: the loss per byte divides by the bytes of the FILE the scored tokens stand for (`tokenize`),
not by the bytes their ids decode to: a byte that is not UTF-8 reaches a BPE tokenizer as U+FFFD,
three bytes that the file does not have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import codecs

import numpy as np

from .errors import ArgumentError, ModelError

#: rows of logits turned into float64 losses at once (a block of 64 x 65536 float64 is 32 MiB)
LOSS_ROWS = 64
#: a BPE tokenizer is given the text in pieces of about this many bytes, cut after a newline
PIECE_BYTES = 64 << 10


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
    """-ln softmax(logits)[target] per row, in float64: logits (T, V), targets (T,). Each row's loss
    depends on that row alone (the sums run along the row), so any block of rows gives the same
    numbers bit for bit."""
    z = logits.astype(np.float64)
    top = z.max(axis=1)
    lse = np.log(np.exp(z - top[:, None]).sum(axis=1)) + top
    return lse - z[np.arange(len(z)), targets]


def _losses_by_block(logits: np.ndarray, targets: np.ndarray, rows: int = LOSS_ROWS) -> np.ndarray:
    """token_losses(logits, targets), LOSS_ROWS rows at a time (no float64 copy of all of logits)."""
    out = np.empty(len(targets), np.float64)
    for r in range(0, len(targets), rows):
        out[r:r + rows] = token_losses(logits[r:r + rows], targets[r:r + rows])
    return out


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


def _forward(model, tokens: np.ndarray, state, mode: str):
    """model.forward(tokens, state, return_all=True). Every state perplexity passes is one the model
    computed itself from the initial state (the window's earlier chunks, or the text so far with
    carry_state), so a non-finite value is the weights' doing alone: the model's message, which
    shares the blame with a given state, is reworded to say so."""
    try:
        return model.forward(tokens, state, mode=mode, return_all=True)
    except ModelError as e:
        message = str(e)
        if state is None or ", starting from the given state," not in message:
            raise
        message = message.replace(", starting from the given state,", "").replace(
            "the weights or that state hold values too large", "some weights are too large")
        raise ModelError(message) from None


def call_losses(model, tokens: np.ndarray, a: int, b: int, first: int, state=None, mode: str = "parallel"):
    """(the losses of tokens[first + 1:b + 1] read from tokens[a:b], the state after): one call of
    `plan`, read model.chunk_size tokens at a time with the state carried (the logits the model
    gives for tokens[a:b] in one call, bit for bit), each chunk's logits dropped once its rows are
    scored."""
    chunk = max(1, int(model.chunk_size)) if mode == "parallel" else b - a
    parts = []
    for at in range(a, b, chunk):
        stop = min(at + chunk, b)
        logits, state = _forward(model, tokens[at:stop], state, mode)
        lo = max(first, at)
        if lo < stop:
            parts.append(_losses_by_block(logits[lo - at:], tokens[lo + 1:stop + 1]))
        del logits
    return np.concatenate(parts), state


def batch_losses(model, tokens: np.ndarray, calls: list[tuple[int, int, int]]) -> list[np.ndarray]:
    """The losses of each call of `plan` (windows, each from the initial state), the windows read
    together: one token of every window per `model.step_batch` (the recurrent form over a batch: every
    weight read once per step for all the windows). A window's losses are those it gets alone in the
    recurrent form, to float32 rounding."""
    losses = [np.empty(b - first, np.float64) for a, b, first in calls]
    states = [None] * len(calls)
    for t in range(max(b - a for a, b, _ in calls)):
        running = [j for j, (a, b, _) in enumerate(calls) if a + t < b]
        logits, after = model.step_batch([tokens[calls[j][0] + t] for j in running], [states[j] for j in running])
        scored = [(row, j) for row, j in enumerate(running) if calls[j][0] + t >= calls[j][2]]
        if scored:  # each row's loss is its own, whatever rows are computed with it (token_losses)
            at = np.array([calls[j][0] + t for _, j in scored])
            for (_, j), loss in zip(scored, token_losses(logits[[row for row, _ in scored]], tokens[at + 1])):
                losses[j][calls[j][0] + t - calls[j][2]] = loss
        for row, j in enumerate(running):
            states[j] = after[row]
    return losses


def evaluate(model, tokens: np.ndarray, token_bytes: np.ndarray | None = None, ctx: int = 256,
             stride: int | None = None, carry_state: bool = False, mode: str = "parallel",
             progress: Callable[[int, int, float], None] | None = None,
             text_bytes: np.ndarray | None = None, batch: int = 1) -> Result:
    """Score `tokens` (N,) with `model` (rwkv_np.RWKV). The bytes the scored tokens stand for: either
    text_bytes[i], the bytes of the file token i stands for (`tokenize`), or token_bytes[id], the bytes
    token id stands for. progress(done calls, all calls, nats so far / tokens so far) after each call.
    batch > 1: the windows are read `batch` at a time, one token of each per step (`batch_losses`, the
    recurrent form over a batch, whatever `mode`); the state carried is one sequence, read as `mode` says."""
    tokens = np.asarray(tokens, np.int64)
    if text_bytes is None and token_bytes is None:
        raise ArgumentError("evaluate: give token_bytes (bytes per token id) or text_bytes (bytes per token)")
    if text_bytes is not None:
        text_bytes = np.asarray(text_bytes, np.int64)
        if text_bytes.shape != tokens.shape:
            raise ArgumentError(f"text_bytes: shape {text_bytes.shape}, expected one count per token {tokens.shape}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ArgumentError(f"batch: windows read at once, an integer >= 1, got {batch!r}")
    calls = plan(len(tokens), ctx, stride, carry_state)
    nats, scored, n_bytes, processed = 0.0, 0, 0, 0
    state, batched = None, {}
    started = time.perf_counter()
    for i, (a, b, first) in enumerate(calls):
        if batch > 1 and not carry_state:
            if i not in batched:  # the next `batch` windows, read together
                group = range(i, min(i + batch, len(calls)))
                batched = dict(zip(group, batch_losses(model, tokens, [calls[j] for j in group])))
            losses, new_state = batched.pop(i), None
        else:
            losses, new_state = call_losses(model, tokens, a, b, first, state if carry_state else None, mode)
        if carry_state:
            state = new_state
        nats += float(losses.sum())  # one sum over the call's losses, in their order
        targets = tokens[first + 1:b + 1]
        scored += len(targets)
        n_bytes += int(text_bytes[first + 1:b + 1].sum() if text_bytes is not None else token_bytes[targets].sum())
        processed += b - a
        if progress is not None:
            progress(i + 1, len(calls), nats / scored)
    return Result(nats, scored, n_bytes, processed, time.perf_counter() - started)


# ---- the text as tokens, and the bytes of the file each stands for ---------------------------------

def _decode_recording(data: bytes) -> tuple[str, list[tuple[int, int]]]:
    """data decoded as errors="replace" decodes it (one U+FFFD per maximal invalid sequence: the spans
    a strict decoder reports), and the (start, end) in data of each U+FFFD."""
    view, parts, replaced, a = memoryview(data), [], [], 0
    while True:
        try:
            parts.append(codecs.utf_8_decode(view[a:], "strict", True)[0])
            return "".join(parts), replaced
        except UnicodeDecodeError as e:
            parts.append(codecs.utf_8_decode(view[a:a + e.start], "strict", True)[0])
            parts.append("\ufffd")
            replaced.append((a + e.start, a + e.end))
            a += e.end


def _pieces(data: bytes):
    """data cut into pieces of about PIECE_BYTES for a BPE tokenizer, which takes a bounded text at
    once: after the piece's last newline (its pre-tokenizer splits at whitespace runs ending in a
    newline, so a token does not span the cut), or, in a piece without one, before the character
    that the limit would split (a UTF-8 sequence cut in two would reach the tokenizer as two U+FFFD)."""
    a = 0
    while a < len(data):
        b = min(len(data), a + PIECE_BYTES)
        if b < len(data):
            cut = data.rfind(b"\n", a, b)
            b = cut + 1 if cut > a else _character_start(data, a, b)
        yield data[a:b]
        a = b


def _character_start(data: bytes, a: int, b: int) -> int:
    """b, or the start of the UTF-8 sequence that the cut at b would split (a lead byte up to 3 bytes
    before b whose sequence reaches b), if that leaves the piece data[a:start] non-empty."""
    for k in range(1, 4):
        if b - k <= a or data[b - k] < 0x80:
            return b
        lead = data[b - k]
        if lead >= 0xC0:
            return b - k if k < (2 if lead < 0xE0 else 3 if lead < 0xF0 else 4) else b
    return b


def _common_prefix(x: np.ndarray, y: np.ndarray) -> int:
    m = min(len(x), len(y))
    differ = np.flatnonzero(x[:m] != y[:m])
    return int(differ[0]) if len(differ) else m


def _decoded_to_received(ends: np.ndarray, decoded: bytes, received: bytes) -> np.ndarray:
    """Offsets in the tokens' decoded bytes -> offsets in the bytes the tokenizer received, when its
    normalizer rewrote part of the text (NFC composing "e" + U+0301 into U+00E9, say) so that the two
    differ and no exact alignment exists: the longest common prefix and suffix correspond byte for
    byte (exact there); the part between is shared out in proportion to the decoded bytes (rounded,
    so the offsets stay in order and the piece's total stays exact)."""
    d = np.frombuffer(decoded, np.uint8)
    r = np.frombuffer(received, np.uint8)
    p = _common_prefix(d, r)
    s = min(_common_prefix(d[::-1], r[::-1]), len(d) - p, len(r) - p)
    middle_d, middle_r = len(d) - s - p, len(r) - s - p
    out = np.where(ends <= p, ends, ends - len(d) + len(r))  # the prefix; the suffix
    inside = (ends > p) & (ends < len(d) - s)
    if middle_d > 0:
        out[inside] = p + (2 * (ends[inside] - p) * middle_r + middle_d) // (2 * middle_d)
    return out


def _received_to_file(offsets: np.ndarray, replaced: list[tuple[int, int]], starts: np.ndarray) -> np.ndarray:
    """Offsets in the UTF-8 of the text the tokenizer received -> offsets in the file's piece: each
    U+FFFD (3 bytes) stands for the invalid bytes replaced[i] of the file, which start at received
    offset starts[i]; a token that ends inside a U+FFFD gets none of them, the token that ends it all."""
    if not replaced:
        return offsets
    spans = np.array(replaced, np.int64)
    ends = starts + 3
    shift = np.concatenate([[0], np.cumsum(spans[:, 1] - spans[:, 0] - 3)])
    k = np.searchsorted(ends, offsets, side="right")  # replacements wholly before each offset
    out = offsets + shift[k]
    nxt = np.minimum(k, len(spans) - 1)
    inside = (k < len(spans)) & (starts[nxt] < offsets) & (offsets < ends[nxt])
    out[inside] = spans[nxt[inside], 0]
    return out


def tokenize(tokenizer, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(token ids (N,), the bytes of `data` each token stands for (N,)), the counts adding up to len(data).

    Byte-level and World tokenizers read the bytes as they are: their tokens decode to the file's
    bytes exactly. A BPE tokenizer (NeoXTokenizer) receives text: every byte that is not UTF-8 is
    replaced by U+FFFD (rwkv_np.tokenizer) - three bytes for one, or for a cut-off sequence of up to
    three - so its tokens' bytes are aligned with the UTF-8 of the text it received, and mapped back to
    the file through the replacements made (exact). If its normalizer rewrote the text, so that the
    tokens' bytes are not the text's, the offsets between are estimated (`_decoded_to_received`),
    exact up to the first change and from the last one, and exact in total for every piece.
    """
    from .tokenizer import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(data, np.uint8).astype(np.int64), np.ones(len(data), np.int64)
    known: dict[int, int] = {}  # token id -> the length of its bytes, for the ids met so far
    all_ids, all_counts = [], []
    for piece in _pieces(data):
        if hasattr(tokenizer, "encode_bytes"):
            ids = tokenizer.encode_bytes(piece)
        else:
            ids = tokenizer.encode(piece.decode("utf-8", errors="surrogateescape"))
        ids = np.asarray(ids, np.int64)
        for i in set(ids.tolist()) - known.keys():
            known[i] = len(tokenizer.decode_bytes([i]))
        ends = np.cumsum([known[i] for i in ids.tolist()], dtype=np.int64)
        decoded = tokenizer.decode_bytes(ids.tolist())
        if decoded != piece:  # not the bytes as they are: the text the tokenizer received
            text, replaced = _decode_recording(piece)
            received = text.encode("utf-8")
            if decoded != received:
                ends = _decoded_to_received(ends, decoded, received)
            ends = _received_to_file(ends, replaced, _replacement_starts(replaced))
        if not len(ids):  # nothing to stand for the piece's bytes (a normalizer removed all of it)
            if all_counts:
                all_counts[-1] = all_counts[-1].copy()
                all_counts[-1][-1] += len(piece)
            continue
        ends[-1] = len(piece)  # the last token ends the piece (a normalizer may have dropped bytes at its end)
        all_ids.append(ids)
        all_counts.append(np.diff(ends, prepend=0))
    if not all_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(all_ids), np.concatenate(all_counts)


def _replacement_starts(replaced: list[tuple[int, int]]) -> np.ndarray:
    """The received UTF-8 offset of each U+FFFD: its file offset moved by the size change (3 bytes for
    end - start) of every replacement before it."""
    if not replaced:
        return np.zeros(0, np.int64)
    spans = np.array(replaced, np.int64)
    before = np.concatenate([[0], np.cumsum(3 - (spans[:, 1] - spans[:, 0]))[:-1]])
    return spans[:, 0] + before


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
