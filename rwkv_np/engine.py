"""The engine: rwkv_np/reference.py's network, computed fast. Read reference.py first.

`RWKV.forward` computes exactly what `reference.forward` (mode="parallel") and `reference.step`
(mode="recurrent") compute, with the compiled kernels of rwkv_np/kernels.py, which follow the
reference's names and order:
    parallel form   per layer: norm_shift_mix (LayerNorm, token_shift, mix) -> three BLAS products
                    (eqs. 11-13) -> wkv_gate (eqs. 14-15) -> W_o -> norm_shift_mix -> W'_k, W'_r
                    (16-17) -> square_relu, W'_v, add_gated (18)
    recurrent form  recurrent_tokens: a whole token through every layer in one compiled call, every
                    weight read once, eq. 14 applied per channel right after its dot products
Eq. 14 itself is one compiled function, kernels.wkv_step, used by both forms (and by training).
tests/test_engine.py checks this file against the reference at every position of every fixture.
"""

from __future__ import annotations

import time
from typing import Sequence

import numba
import numpy as np

from . import kernels as K
from . import schema
from .config import RWKVConfig
from .errors import ArgumentError
from .quantize import BLOCK_BYTES, BlockMatrix, Int8Matrix
from .reference import AA, ATT_X, BB, FFN_X, PP, layer_norm
from .state import State, check_forward_output


class RWKV:
    """An RWKV-4 language model: float32 arithmetic, weights float32 or kept 16-bit.

    weights: the flat dict of `rwkv_np.loading` (BlinkDL's names, `att.time_decay` = ln w, vectors (C,);
    rwkv_np/schema.py lists them).
    The matrices (emb, head and every projection) may also be 16-bit as stored in a checkpoint:
    float16 arrays, or bfloat16 bit patterns held as uint16 (numpy has no bfloat16). They are
    widened to float32 exactly, element by element, inside the products; vectors are float32.
    Or every matrix but the embedding may be an rwkv_np.quantize.Int8Matrix (int8 with a float32
    scale per block of 32 along each row, `load_model(..., quantize="int8")`), read as int8 by the
    kernels; or every block matrix an rwkv_np.quantize.BlockMatrix of one ggml format (an rwkv.cpp
    file's Q4_0/Q4_1/Q5_0/Q5_1 bytes, `load_model(..., keep_blocks=True)`), the head as the file
    holds it: the recurrent form reads the blocks, the parallel form dequantizes them as ggml does.

    `params` is the nested float32 dict that rwkv_np.reference's functions take:
    `reference.forward(model.params, tokens)` computes what `model.forward(tokens, return_all=True)` does.
    """

    #: the parallel form reads long inputs in chunks of this many tokens, so that memory stays
    #: bounded however long the prompt; the state carries everything across chunk borders.
    chunk_size: int = 1024

    def __new__(cls, weights=None, config: RWKVConfig | None = None):
        # RWKV(weights[, config]) of a later version (5.1, 5.2, 6, 7) is engine_later's model
        if cls is RWKV and weights is not None:
            if config is not None:
                version = config.version
            else:
                from .versions import detect_version

                version = detect_version(weights)
            if version != "4":
                from .engine_later import LaterRWKV

                return super().__new__(LaterRWKV)
        return super().__new__(cls)

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig | None = None):
        self.config = config or schema.config_from_weights(weights)
        self.weights = weights
        self._params = None
        self._fast = _FastWeights(weights, self.config)

    @property
    def weight_dtype(self) -> str:
        """How the matrices are held in memory: "float32", "bfloat16", "float16", "int8", or rwkv.cpp's
        block format kept as stored: "Q4_0", "Q4_1", "Q5_0" or "Q5_1" (the head may then be 16-bit)."""
        return self._fast.kind

    @property
    def params(self) -> dict:
        """The weights as rwkv_np.reference takes them, nested and float32:
        params["blocks"][i]["att"]["key"] is W_k of layer i (rwkv_np/schema.py lists every name)."""
        if self._params is None:
            flat = {k: _as_float32(v) for k, v in self.weights.items()}
            self._params = schema.nest(flat, self.config.n_layer, self.config.layer_norm_eps)
        return self._params

    def warm_up(self, release_compiler: bool = True, choose_prefetch: bool = True) -> None:
        """Load (or, the first time, compile) the kernels of both forms now, on one token, instead
        of at the first call that needs each. Then, with release_compiler, let the OS reclaim
        Numba's compiler code, which running the kernels does not use (kernels.release_compiler_pages:
        about 50 MiB less resident memory while generating); with choose_prefetch, time the
        recurrent form with and without the rows' prefetch and keep the faster (`choose_prefetch`)."""
        for mode in ("parallel", "recurrent"):
            self.forward([0], mode=mode)
        if release_compiler:
            K.release_compiler_pages()
        if choose_prefetch:
            self.choose_prefetch()

    @property
    def prefetch_bytes(self) -> int:
        """How far ahead, in bytes, the recurrent form asks the memory for the weight rows it will
        multiply next (kernels.row_dot); 0: it does not ask. It changes the speed only: every setting
        gives the same logits bit for bit. `choose_prefetch` (run by warm_up) sets it."""
        return self._fast.ahead

    @prefetch_bytes.setter
    def prefetch_bytes(self, value: int) -> None:
        self._fast.ahead = _byte_count(value, "prefetch_bytes")

    def choose_prefetch(self, seconds: float = 1.0, choices: Sequence[int] = K.PREFETCH_CHOICES) -> dict[int, float]:
        """Set prefetch_bytes to the fastest of choices for this model on this machine, timed now.

        Whether asking for the rows ahead pays depends on the machine and the weights' kind: on an
        Intel VM it made bf16 generation about 1.4x faster; on an AMD EPYC, generation without it was
        26-32% faster in float32, 12-17% in fp16 and 5% slower in int8 (benchmarks/NOTES.md,
        "Prefetching the rows"). So recurrent tokens run with each choice in turn, the order
        alternating, each from the initial state (no state of the caller's is touched), for about
        `seconds` in all (2 to 8 tokens per choice); the lowest median time per token wins, the
        first choice on a tie. Returns {choice: median seconds per token}."""
        def token_time(ahead: int, token: int) -> float:
            self._fast.ahead = ahead
            start = time.perf_counter()
            self.forward([token], mode="recurrent")  # from the initial state: no caller's state touched
            return time.perf_counter() - start

        choices = [_byte_count(c, "choices") for c in choices]
        if not choices:
            raise ArgumentError("choices: expected at least one prefetch distance in bytes")
        first = token_time(choices[0], 0)
        rounds = int(min(8, max(2, seconds / (len(choices) * max(first, 1e-9)))))
        times = {c: [] for c in choices}
        for r in range(rounds):
            for c in (choices if r % 2 == 0 else choices[::-1]):
                times[c].append(token_time(c, (7919 * (r + 1)) % self.config.vocab_size))
        medians = {c: float(np.median(t)) for c, t in times.items()}
        self._fast.ahead = min(choices, key=lambda c: (medians[c], choices.index(c)))
        return medians

    def init_state(self) -> State:
        """The state before any token."""
        return State.initial(self.config.n_layer, self.config.n_embd)

    def forward(self, tokens: Sequence[int] | np.ndarray, state: State | None = None,
                mode: str = "parallel", return_all: bool = False) -> tuple[np.ndarray, State]:
        """Run tokens (T,) through the network, starting from state (None: the initial state).

        mode "parallel": the whole sequence at once, every projection one matrix product over T.
        mode "recurrent": one token at a time, as an RNN. Both give the same numbers.
        Returns (logits, state): logits float32 (V,) for the last token, or (T, V) with
        return_all; state after the last token (the given state is not modified).
        """
        tokens = self._check_tokens(tokens)
        s = self._check_state(state).data.copy()
        if mode == "parallel":
            outputs = []
            for start in range(0, len(tokens), self.chunk_size):
                chunk = tokens[start:start + self.chunk_size]
                last = start + self.chunk_size >= len(tokens)
                logits = self._fast.parallel(chunk, s, head=return_all or last, return_all=return_all)
                if return_all:
                    outputs.append(logits)
            logits = np.concatenate(outputs) if return_all else logits
        elif mode == "recurrent":
            logits = self._fast.recurrent(tokens, s, return_all)
        else:
            raise ArgumentError(f"mode: expected 'parallel' or 'recurrent', got {mode!r}")
        check_forward_output(logits, s, getattr(self, "checkpoint_path", None), state is not None)
        return logits, State(s)

    def _check_tokens(self, tokens) -> np.ndarray:
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
        expected = (self.config.n_layer, 5, self.config.n_embd)
        if state.data.shape != expected:
            raise ArgumentError(f"state: shape {state.data.shape} does not fit this model, expected {expected}")
        return state


def _as_float32(a: np.ndarray) -> np.ndarray:
    """A weight as float32; uint16 arrays are bfloat16 bit patterns (the top half of a float32)."""
    a = np.asarray(a)  # a FileRows embedding is read whole here
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


def _byte_count(value, name: str) -> int:
    """value as a whole number of bytes >= 0, or an ArgumentError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ArgumentError(f"{name}: expected a whole number of bytes >= 0, got {value!r}")
    return int(value)


def _kernel_array(a):
    """The array the kernels read for a matrix: an int8 one's q, a ggml-blocks one's bytes."""
    return a.q if isinstance(a, Int8Matrix) else a.raw if isinstance(a, BlockMatrix) else a


class _FastWeights:
    """The weights laid out for rwkv_np/kernels.py, and the two forms of the network run with them.

    Matrices are not copied: float32 and 16-bit arrays are handed to the kernels as they are (fp16
    as its int16 bit pattern, since Numba has no float16 on the CPU); int8 ones as their q and
    scales arrays. Only the per-layer vectors are gathered into one (L, N_VECS, C) table.
    """

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig):
        L = config.n_layer
        self.ahead = K.PREFETCH_BYTES  # the rows' prefetch distance; RWKV.choose_prefetch may change it
        matrices = ["emb.weight", "head.weight"] + [f"blocks.{i}.{n}" for i in range(L) for n in schema.MATRICES]
        blocks = {weights[n].fmt if isinstance(weights[n], BlockMatrix) else None for n in matrices[2:]}
        if all(isinstance(weights[n], Int8Matrix) for n in matrices[1:]):
            self.kind = "int8"  # the embedding, as given, is only read a row at a time
        elif len(blocks) == 1 and None not in blocks:
            self.kind = blocks.pop()  # the block matrices; the head as the file holds it
        else:
            dtypes = {np.dtype(weights[n].dtype) for n in matrices}
            kind = {np.dtype(np.uint16): "bfloat16", np.dtype(np.float16): "float16"}.get(dtypes.pop(), "float32")
            self.kind = "float32" if dtypes else kind  # mixed storage: everything float32

        def stored(a: np.ndarray) -> np.ndarray:
            if isinstance(a, (Int8Matrix, BlockMatrix)):
                return a  # read as they are (with ggml blocks, the head is whatever the file holds)
            if self.kind == "int8":
                return _as_float32(a)  # embedding rows
            a = np.ascontiguousarray(_as_float32(a) if self.kind == "float32" else a)
            return a.view(np.int16) if a.dtype == np.float16 else a

        self.stored = stored
        kept = {n: stored(weights[n]) for n in matrices if n != "emb.weight"}
        # the embedding as given (it may be a FileRows: left in the file, rows read on demand);
        # only the rows a forward pass reads are converted
        self.emb, self.head = weights["emb.weight"], kept["head.weight"]
        # the recurrent kernel takes the matrices by address (one compiled signature for any
        # model); self.matrices and self.head keep them alive
        self.matrices = {n: tuple(kept[f"blocks.{i}.{n}"] for i in range(L)) for n in schema.MATRICES}
        vecs = np.stack([np.stack([np.reshape(weights[f"blocks.{i}.{n}"], -1) for n in schema.VECTORS])
                         for i in range(L)]).astype(np.float64)  # (L, N_VECS, C)
        # w = e^time_decay, once: in float64, rounded to float32 once
        vecs[:, K.DECAY_W] = np.exp(vecs[:, K.DECAY_W])
        self.vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        self.ln0 = np.stack([weights["blocks.0.ln0.weight"], weights["blocks.0.ln0.bias"]]).astype(np.float32).reshape(2, -1)
        self.ln_out = np.stack([weights["ln_out.weight"], weights["ln_out.bias"]]).astype(np.float32)
        self.addr = np.zeros((K.HEAD + 1, L), np.int64)
        # int8: the scales' addresses; other kinds have none, and point at one float32 never read
        self._no_scales = np.zeros(1, np.float32)
        self.saddr = np.full((K.HEAD + 1, L), self._no_scales.ctypes.data, np.int64)
        def scales(a):
            return (a.scales if isinstance(a, Int8Matrix) else self._no_scales).ctypes.data

        for row, n in enumerate(schema.MATRICES):
            self.addr[row, :L] = [_kernel_array(a).ctypes.data for a in self.matrices[n]]
            self.saddr[row, :L] = [scales(a) for a in self.matrices[n]]
        self.addr[K.HEAD, 0], self.saddr[K.HEAD, 0] = _kernel_array(self.head).ctypes.data, scales(self.head)

        def like(a):  # the kernels tell the kinds apart by dtype; ggml blocks by their size in bytes
            return np.zeros(BLOCK_BYTES[a.fmt] if isinstance(a, BlockMatrix) else 1, _kernel_array(a).dtype)
        self.like, self.head_like = like(self.matrices["att.key.weight"][0]), like(self.head)
        self.eps = config.layer_norm_eps
        self.config = config
        # weights read per token below which the threads' hand-offs (four a layer) cost more
        # than the products they share: a C = 256 model reads ~5M weights
        self.small = config.n_params < 4_000_000

    def rows(self, tokens: np.ndarray) -> np.ndarray:
        """The embedding rows of tokens (T,): (T, C) in the dtype the kernels read."""
        return self.stored(np.asarray(self.emb[tokens]))

    def recurrent(self, tokens: np.ndarray, s: np.ndarray, return_all: bool) -> np.ndarray:
        """The recurrent form over tokens (T,); state s (L, 5, C) advanced in place. Logits (V,) or (T, V)."""
        out = np.empty((len(tokens) if return_all else 1, self.config.vocab_size), np.float32)
        threads = numba.get_num_threads()
        if self.small:
            numba.set_num_threads(1)  # a few microseconds of work per loop: one thread, no waiting
        try:
            c = self.config
            step = 256  # tokens per call: their embedding rows are gathered first
            for a in range(0, len(tokens), step):
                which = K.LOGITS_ALL if return_all else K.LOGITS_LAST if a + step >= len(tokens) else K.LOGITS_NONE
                K.recurrent_tokens(self.rows(tokens[a:a + step]), self.like, self.head_like, self.addr, self.saddr, c.vocab_size, c.ffn_dim, self.ln0,
                                   self.vecs, self.ln_out, self.eps, s, out[a:a + step] if return_all else out, which,
                                   self.ahead)
        finally:
            numba.set_num_threads(threads)
        return out if return_all else out[0]

    def _f32(self, w: np.ndarray, scratch: list) -> np.ndarray:
        # BLAS reads float32 only: widen a 16-bit or int8 matrix into a buffer reused by every layer
        if w.dtype == np.float32:
            return w
        if scratch[0] is None or scratch[0].size < w.size:
            scratch[0] = np.empty(w.size, np.float32)
        out = scratch[0][:w.size].reshape(w.shape)
        if isinstance(w, Int8Matrix):
            K.dequantize_into(w.q, w.scales, out)
        elif isinstance(w, BlockMatrix):
            K.dequantize_blocks_into(w.raw, K.block_layout(w.fmt), out)  # ggml's arithmetic: as a dequantized load
        else:
            K.widen_into(w, out)
        return out

    def parallel(self, tokens: np.ndarray, s: np.ndarray, head: bool, return_all: bool) -> np.ndarray | None:
        """The parallel form over one chunk of tokens (T,): every projection one BLAS product over T.

        State s (L, 5, C) advanced in place. Logits (V,), (T, V) with return_all, or None without head.
        """
        T, C, F = len(tokens), self.config.n_embd, self.config.ffn_dim
        eps, m, scratch = self.eps, self.matrices, [None]
        rows = np.asarray(self.emb[tokens])
        x = layer_norm(_as_float32(rows), self.ln0[0], self.ln0[1], eps)  # reference.forward's ln0
        x = np.ascontiguousarray(x, dtype=np.float32)
        mixed = np.empty((3, T, C), np.float32)
        k, v, r, y = (np.empty((T, C), np.float32) for _ in range(4))
        kf = np.empty((T, F), np.float32)
        for i in range(self.config.n_layer):  # reference.block
            p = self.vecs[i]
            # reference.time_mixing: layer_norm, token_shift, mix (eqs. 11-13), then the products
            last = K.norm_shift_mix(x, p[K.LN1_W], p[K.LN1_B], eps, s[i, ATT_X].copy(),
                                    p[[K.ATT_MK, K.ATT_MV, K.ATT_MR]], mixed)
            s[i, ATT_X] = last
            np.matmul(mixed[0], self._f32(m["att.key.weight"][i], scratch).T, out=k)  # eq. 12
            np.matmul(mixed[1], self._f32(m["att.value.weight"][i], scratch).T, out=v)  # eq. 13
            np.matmul(mixed[2], self._f32(m["att.receptance.weight"][i], scratch).T, out=r)  # eq. 11
            K.wkv_gate(p[K.DECAY_W], p[K.FIRST], k, v, r, s[i, AA], s[i, BB], s[i, PP], y)  # eqs. 14-15
            x += np.matmul(y, self._f32(m["att.output.weight"][i], scratch).T, out=k)  # eq. 15, residual
            # reference.channel_mixing
            last = K.norm_shift_mix(x, p[K.LN2_W], p[K.LN2_B], eps, s[i, FFN_X].copy(),
                                    p[[K.FFN_MK, K.FFN_MR]], mixed[:2])
            s[i, FFN_X] = last
            np.matmul(mixed[0], self._f32(m["ffn.key.weight"][i], scratch).T, out=kf)  # eq. 17
            K.square_relu(kf)
            np.matmul(mixed[1], self._f32(m["ffn.receptance.weight"][i], scratch).T, out=r)  # eq. 16
            K.add_gated(x, r, np.matmul(kf, self._f32(m["ffn.value.weight"][i], scratch).T, out=v))  # eq. 18
        if not head:
            return None
        xn = layer_norm(x if return_all else x[-1:], self.ln_out[0], self.ln_out[1], eps).astype(np.float32)
        if not return_all:
            out = np.empty(self.config.vocab_size, np.float32)
            scales = self.head.scales if isinstance(self.head, Int8Matrix) else None
            K.matvec(_kernel_array(self.head), np.ascontiguousarray(xn[0]), out, scales, self.ahead)
            return out
        out = np.empty((T, self.config.vocab_size), np.float32)
        rows = 8192  # widen the head a slice at a time: it is the largest matrix
        for a in range(0, self.config.vocab_size, rows):
            np.matmul(xn, self._f32(self.head[a:a + rows], scratch).T, out=out[:, a:a + rows])
        return out

