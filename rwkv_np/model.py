"""`rwkv_np.RWKV`: one model class for every architecture rwkv_np runs (rwkv_np.registry).

The model checks its inputs, cuts long inputs into chunks, keeps the state immutable, warms up and
chooses the rows' prefetch; the arithmetic is its architecture's engine's (rwkv_np/rwkv4/engine.py,
rwkv5/, rwkv6/, rwkv7/), which computes what that architecture's plain-NumPy reference computes:
`model.reference.forward(model.params, tokens)` is `model.forward(tokens, return_all=True)`.
Importing this module needs NumPy only; the engine (and Numba) is imported when a model is built.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Sequence

import numpy as np

from . import process, registry
from .config import RWKVConfig
from .errors import ArgumentError
from .quantize import as_float32
from .state import State, check_forward_output

#: weights read per token below which the threads' hand-offs (four a layer) cost more than the
#: products they share (a C = 256 model reads ~5M weights): such models run on one thread
SMALL_MODEL = 4_000_000


class RWKV:
    """An RWKV language model of any registered architecture: float32 arithmetic, weights float32 or
    kept as a checkpoint stores them.

    weights: the flat dict of rwkv_np.loading ({BlinkDL name: array}, the architecture's table);
    config: its RWKVConfig (read off the weights when None; config.version names the architecture).
    The matrices (emb, head and every projection) may be 16-bit as stored in a checkpoint: float16
    arrays, or bfloat16 bit patterns held as uint16 (numpy has no bfloat16), widened to float32
    exactly inside the products. For RWKV-4 they may also be rwkv_np.quantize.Int8Matrix
    (`load_model(..., quantize="int8")`) or an rwkv.cpp file's ggml blocks (quantize.BlockMatrix,
    `keep_blocks=True`).
    """

    #: the parallel form reads long inputs in chunks of this many tokens, so that memory stays
    #: bounded however long the prompt; the state carries everything across chunk borders.
    chunk_size: int = 1024

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig | None = None):
        self.config = config or registry.config_from_weights(weights)
        self.arch = registry.get(self.config.version)
        self.weights = weights
        self._params = None
        self._engine = registry.engine(self.arch)(weights, self.config)
        self._small = self.arch.n_params(self.config) < SMALL_MODEL
        self._threads: int | None = None  # None: chosen as the machine's load changes (process.Threads)
        self._governors: dict[str, process.Threads] = {}
        self.checkpoint_path = self.checkpoint_format = self.source_dtype = self.tokenizer_path = None

    @property
    def n_params(self) -> int:
        """The number of parameters, as the architecture's table counts them."""
        return self.arch.n_params(self.config)

    @property
    def weight_dtype(self) -> str:
        """How the matrices are held in memory: "float32", "bfloat16", "float16", "int8", or rwkv.cpp's
        block format kept as stored: "Q4_0", "Q4_1", "Q5_0" or "Q5_1" (the head may then be 16-bit)."""
        return self._engine.kind

    @property
    def reference(self):
        """The module of the plain-NumPy reference this model computes (rwkv_np/rwkv4/reference.py, ...)."""
        return registry.reference(self.arch)

    @property
    def params(self) -> dict:
        """The weights as the reference takes them, nested and float32: params["blocks"][i]["att"]["key"]
        is W_k of layer i (the architecture's params.py lists every name)."""
        if self._params is None:
            self._params = self.arch.nest({k: as_float32(v) for k, v in self.weights.items()}, self.config.n_layer)
        return self._params

    def reference_options(self) -> dict:
        """The keyword arguments of the reference's forward/step that this model's config fixes (its
        epsilons): `model.reference.forward(model.params, tokens, **model.reference_options())`."""
        return self.config.reference_options()

    # ---- speed ---------------------------------------------------------------------------------

    def warm_up(self, release_compiler: bool = True, choose_prefetch: bool = True) -> None:
        """Load (or, the first time, compile) the kernels of both forms now, on one token, instead
        of at the first call that needs each. Then, with release_compiler, let the OS reclaim
        Numba's compiler code, which running the kernels does not use (process.release_compiler_pages:
        about 50 MiB less resident memory while generating); with choose_prefetch, time the
        recurrent form with and without the rows' prefetch and keep the faster (`choose_prefetch`)."""
        for mode in ("parallel", "recurrent"):
            self.forward([0], mode=mode)
        if release_compiler:
            process.release_compiler_pages()
        if choose_prefetch:
            self.choose_prefetch()

    @property
    def prefetch_bytes(self) -> int:
        """How far ahead, in bytes, the recurrent form asks the memory for the weight rows it will
        multiply next (products.row_dot); 0: it does not ask. It changes the speed only: every setting
        gives the same logits bit for bit. `choose_prefetch` (run by warm_up) sets it."""
        return self._engine.ahead

    @prefetch_bytes.setter
    def prefetch_bytes(self, value: int) -> None:
        self._engine.ahead = _byte_count(value, "prefetch_bytes")

    def choose_prefetch(self, seconds: float = 1.0, choices: Sequence[int] | None = None) -> dict[int, float]:
        """Set prefetch_bytes to the fastest of choices (default products.PREFETCH_CHOICES: about 6 KB
        ahead, and none) for this model on this machine, timed now.

        Whether asking for the rows ahead pays depends on the machine and the weights' kind (it made
        one machine's generation faster and another's slower: benchmarks/NOTES.md, "Prefetching the
        rows"). So recurrent tokens run with each choice in turn, the order alternating, each from the
        initial state (no state of the caller's is touched), for about `seconds` in all (2 to 8 tokens
        per choice); the lowest median time per token wins, the first choice on a tie.
        Returns {choice: median seconds per token}."""
        from .products import PREFETCH_CHOICES

        def token_time(ahead: int, token: int) -> float:
            self._engine.ahead = ahead
            start = time.perf_counter()
            self.forward([token], mode="recurrent")  # from the initial state: no caller's state touched
            return time.perf_counter() - start

        choices = [_byte_count(c, "choices") for c in (PREFETCH_CHOICES if choices is None else choices)]
        if not choices:
            raise ArgumentError("choices: expected at least one prefetch distance in bytes")
        first = token_time(choices[0], 0)
        rounds = int(min(8, max(2, seconds / (len(choices) * max(first, 1e-9)))))
        times = {c: [] for c in choices}
        for r in range(rounds):
            for c in (choices if r % 2 == 0 else choices[::-1]):
                times[c].append(token_time(c, (7919 * (r + 1)) % self.config.vocab_size))
        medians = {c: float(np.median(t)) for c, t in times.items()}
        self._engine.ahead = min(choices, key=lambda c: (medians[c], choices.index(c)))
        return medians

    @property
    def threads(self) -> int | None:
        """How many threads the kernels and BLAS run on: None (the default) chooses, as the machine's load
        changes, the cores other programs leave free (process.Threads: measured from /proc/stat at most
        every 0.2 s, timed where unsure); a number fixes it (`--threads N`; at most what Numba and BLAS
        were started with). Every count gives the same numbers bit for bit; only the speed changes."""
        return self._threads

    @threads.setter
    def threads(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ArgumentError(f"threads: expected None (automatic) or a whole number >= 1, got {value!r}")
        self._threads = None if value is None else int(value)

    #: below this many rows the parallel form's products run on one BLAS thread whatever the count:
    #: OpenBLAS splits a large matrix-vector product's sums between its threads, so one row's logits
    #: ((1, 768) @ (768, 50277)) round differently on 1 and 2 threads, while a matrix product's threads
    #: share out its rows and columns only, the same numbers on any count (tests/test_threads.py checks
    #: both); a few rows lose nothing by running on one thread
    BLAS_ONE_THREAD_BELOW = 8

    @contextmanager
    def _on_threads(self, kind: str, tokens: int, rows: int):
        """Run the block with Numba's loops and BLAS on the threads this work gets: one for a tiny model
        or a product of fewer than BLAS_ONE_THREAD_BELOW rows (BLAS only), `threads` when fixed, else what
        the governor of this kind of work (recurrent tokens, rows of the parallel form, batches) chooses."""
        if self._small or self._threads is not None:  # tiny models: one thread, no waiting at the loops' ends
            chosen = nullcontext(1 if self._small else self._threads)
        else:
            if kind not in self._governors:
                self._governors[kind] = process.Threads(most=process.most_threads())
            chosen = self._governors[kind].use(tokens)
        with chosen as n, process.numba_threads(n), \
                process.blas_threads(1 if rows < self.BLAS_ONE_THREAD_BELOW else n):
            yield

    # ---- running it ----------------------------------------------------------------------------

    def init_state(self) -> State:
        """The state before any token."""
        return State.initial(self.config)

    def forward(self, tokens: Sequence[int] | np.ndarray, state: State | None = None,
                mode: str = "parallel", return_all: bool = False) -> tuple[np.ndarray, State]:
        """Run tokens (T,) through the network, starting from state (None: the initial state).

        mode "parallel": the whole sequence at once, every projection one matrix product over T.
        mode "recurrent": one token at a time, as an RNN. Both give the same numbers.
        Returns (logits, state): logits float32 (V,) for the last token, or (T, V) with
        return_all; state after the last token (the given state is not modified).
        """
        tokens = self.check_tokens(tokens)
        given = state is not None
        start = self._check_state(state)
        arrays = (start.data.copy(),) if start.wkv is None else (start.data.copy(), start.wkv.copy())
        if mode == "parallel":
            outputs = []
            for at in range(0, len(tokens), self.chunk_size):
                chunk = tokens[at:at + self.chunk_size]
                last = at + self.chunk_size >= len(tokens)
                with self._on_threads("parallel", len(chunk), len(chunk)):
                    logits = self._engine.parallel(chunk, *arrays, head=return_all or last, return_all=return_all)
                if return_all:
                    outputs.append(logits)
            if return_all:
                logits = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        elif mode == "recurrent":
            with self._on_threads("recurrent", len(tokens), 1):
                logits = self._engine.recurrent(tokens, *arrays, return_all)
        else:
            raise ArgumentError(f"mode: expected 'parallel' or 'recurrent', got {mode!r}")
        for a in arrays[:0:-1]:  # the matrices first, then the vectors with the logits
            check_forward_output(None, a, self.checkpoint_path, given)
        check_forward_output(logits, arrays[0], self.checkpoint_path, given)
        return logits, State(*arrays)

    def step_batch(self, tokens: Sequence[int] | np.ndarray, states: Sequence[State | None] | None = None, *,
                   reference: bool = False) -> tuple[np.ndarray, list[State]]:
        """Advance B independent sequences by one token each: the recurrent form over a batch.

        tokens (B,): sequence b's next token; states: B States (None for a sequence's initial state;
        states=None: all B start from it). Returns (logits (B, V) float32, the B States after); the given
        states are not modified, so a state can be forked into many sequences at no cost.

        Sequence b gets the logits `forward([tokens[b]], states[b], mode="recurrent")` gives it alone,
        to float32 rounding (the products sum in another order). The point is speed: an RNN's state is
        small, so one pass over the weights can advance every sequence, each per-token matrix-vector
        product becoming one matrix-matrix product over the B sequences, with each sequence's token shift
        and WKV state kept apart (RWKV-4: products.matmat on the weights as stored up to its engine's
        FUSED_MAX = 16 sequences, BLAS on them widened to float32 beyond; the later versions: BLAS, as
        their parallel form's over T tokens). B = 1 runs the recurrent form. reference=True runs the plain-NumPy reference's `step_batch` instead (model.reference).
        """
        tokens = self.check_tokens(tokens)
        B = len(tokens)
        if states is None:
            states = [None] * B
        elif isinstance(states, State) or not isinstance(states, Sequence):
            raise ArgumentError(f"states: expected a list of {B} rwkv_np.State or None (one per token), got "
                                f"{type(states).__name__}")
        if len(states) != B:
            raise ArgumentError(f"states: expected {B} states (one per token), got {len(states)}")
        given = any(st is not None for st in states)
        starts = []
        for b, st in enumerate(states):
            try:
                starts.append(self._check_state(st))
            except ArgumentError as e:
                raise ArgumentError(f"states[{b}]: {str(e).removeprefix('state: ')}") from None
        if B == 1 and not reference:  # one sequence: the recurrent form reads each weight once anyway
            logits, state = self.forward(tokens, starts[0], mode="recurrent")
            return logits[None], [state]
        # the batch axis: (L, 5, B, C) [RWKV-4], or (L, 2, B, C) and (L, B, H, N, N)
        arrays = [np.stack([st.data for st in starts], axis=2)]
        if starts[0].wkv is not None:
            arrays.append(np.stack([st.wkv for st in starts], axis=1))
        if reference:
            logits, after = self.reference.step_batch(self.params, tokens, arrays[0] if len(arrays) == 1 else
                                                      tuple(arrays), **self.reference_options())
            arrays = [after] if len(arrays) == 1 else list(after)
        elif hasattr(self._engine, "batch"):
            with self._on_threads("batch", B, B):
                logits = self._engine.batch(tokens, *arrays)
        else:  # an architecture registered without a batch form: one sequence at a time
            pairs = [self.forward([t], st, mode="recurrent") for t, st in zip(tokens, starts)]
            return np.stack([lg for lg, _ in pairs]), [st for _, st in pairs]
        for a in arrays[:0:-1]:
            check_forward_output(None, a, self.checkpoint_path, given)
        check_forward_output(logits, arrays[0], self.checkpoint_path, given)
        if len(arrays) == 1:
            return logits, [State(arrays[0][:, :, b]) for b in range(B)]
        return logits, [State(arrays[0][:, :, b], arrays[1][:, b]) for b in range(B)]

    def check_tokens(self, tokens) -> np.ndarray:
        """tokens as a 1-D int64 array of ids in [0, vocab_size), or an ArgumentError saying what is wrong."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ArgumentError(f"tokens: expected a sequence or 1-D array of ints, got shape {arr.shape}")
        if arr.size == 0:
            raise ArgumentError("tokens: empty; give at least one token id")
        if arr.dtype.kind not in "iu":
            # floats that hold whole numbers (1.0) are accepted; 1.5, strings and objects are not
            if arr.dtype.kind != "f" or not np.all(np.isfinite(arr) & (np.mod(arr, 1) == 0)):
                raise ArgumentError(f"tokens: expected integer token ids, got dtype {arr.dtype}")
            arr = arr.astype(np.int64)
        V = self.config.vocab_size
        bad = (arr < 0) | (arr >= V)
        if bad.any():
            i = int(np.argmax(bad))
            raise ArgumentError(f"tokens: id {int(arr[i])} at position {i} is outside the vocabulary [0, {V})")
        return arr.astype(np.int64, copy=False)

    def _check_state(self, state: State | None) -> State:
        if state is None:
            return self.init_state()
        if not isinstance(state, State):
            raise ArgumentError(f"state: expected an rwkv_np.State or None, got {type(state).__name__}")
        want = self.arch.state_shapes(self.config)
        got = (state.data.shape, None if state.wkv is None else state.wkv.shape)
        if got != want:
            if want[1] is None and got[1] is None:
                raise ArgumentError(f"state: shape {got[0]} does not fit this {self.arch.title} model, "
                                    f"expected {want[0]}")
            raise ArgumentError(f"state: shapes {got} do not fit this {self.arch.title} model, expected {want}")
        return state


def _byte_count(value, name: str) -> int:
    """value as a whole number of bytes >= 0, or an ArgumentError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ArgumentError(f"{name}: expected a whole number of bytes >= 0, got {value!r}")
    return int(value)
