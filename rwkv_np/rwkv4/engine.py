"""RWKV-4's engine: rwkv_np/rwkv4/reference.py's network, computed fast. Read reference.py first.

`Engine` holds the weights laid out for the compiled kernels (kernels.py) and runs both forms with
them; rwkv_np.RWKV (the one model class, rwkv_np/model.py) calls it. What each form does, following
the reference's names and order:
    parallel form   per layer: norm_shift_mix (LayerNorm, token_shift, mix) -> three BLAS products
                    (eqs. 11-13) -> wkv_gate (eqs. 14-15) -> W_o -> norm_shift_mix -> W'_k, W'_r
                    (16-17) -> square_relu, W'_v, add_gated (18)
    recurrent form  recurrent_tokens: a whole token through every layer in one compiled call, every
                    weight read once, eq. 14 applied per channel right after its dot products
Eq. 14 itself is one compiled function, kernels.wkv_step, used by both forms (and by training).
tests check this engine against the reference at every position of every fixture.
"""

from __future__ import annotations

import numpy as np

from ..config import RWKVConfig
from ..ops import LOGITS_ALL, LOGITS_LAST, LOGITS_NONE
from ..products import (PREFETCH_BYTES, block_layout, dequantize_blocks_into, dequantize_into, matmat, matvec,
                        widen_into)
from ..quantize import BLOCK_BYTES, BlockMatrix, Int8Matrix, as_float32, kernel_array
from . import kernels as K
from .params import MATRICES, VECTORS
from .reference import AA, ATT_X, BB, FFN_X, PP, layer_norm


class Engine:
    """The weights laid out for kernels.py, and the two forms of the network run with them.

    Matrices are not copied: float32 and 16-bit arrays are handed to the kernels as they are (fp16
    as its int16 bit pattern, since Numba has no float16 on the CPU); int8 ones as their q and
    scales arrays. Only the per-layer vectors are gathered into one (L, N_VECS, C) table.
    """

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig):
        L = config.n_layer
        self.ahead = PREFETCH_BYTES  # the rows' prefetch distance; RWKV.choose_prefetch may change it
        matrices = ["emb.weight", "head.weight"] + [f"blocks.{i}.{n}" for i in range(L) for n in MATRICES]
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
                return as_float32(a)  # embedding rows
            a = np.ascontiguousarray(as_float32(a) if self.kind == "float32" else a)
            return a.view(np.int16) if a.dtype == np.float16 else a

        self.stored = stored
        kept = {n: stored(weights[n]) for n in matrices if n != "emb.weight"}
        # the embedding as given (it may be a FileRows: left in the file, rows read on demand);
        # only the rows a forward pass reads are converted
        self.emb, self.head = weights["emb.weight"], kept["head.weight"]
        # the recurrent kernel takes the matrices by address (one compiled signature for any
        # model); self.matrices and self.head keep them alive
        self.matrices = {n: tuple(kept[f"blocks.{i}.{n}"] for i in range(L)) for n in MATRICES}
        vecs = np.stack([np.stack([np.reshape(weights[f"blocks.{i}.{n}"], -1) for n in VECTORS])
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

        for row, n in enumerate(MATRICES):
            self.addr[row, :L] = [kernel_array(a).ctypes.data for a in self.matrices[n]]
            self.saddr[row, :L] = [scales(a) for a in self.matrices[n]]
        self.addr[K.HEAD, 0], self.saddr[K.HEAD, 0] = kernel_array(self.head).ctypes.data, scales(self.head)

        def like(a):  # the kernels tell the kinds apart by dtype; ggml blocks by their size in bytes
            return np.zeros(BLOCK_BYTES[a.fmt] if isinstance(a, BlockMatrix) else 1, kernel_array(a).dtype)
        self.like, self.head_like = like(self.matrices["att.key.weight"][0]), like(self.head)
        self.eps = config.layer_norm_eps
        self.config = config

    def rows(self, tokens: np.ndarray) -> np.ndarray:
        """The embedding rows of tokens (T,): (T, C) in the dtype the kernels read."""
        return self.stored(np.asarray(self.emb[tokens]))

    def recurrent(self, tokens: np.ndarray, s: np.ndarray, return_all: bool) -> np.ndarray:
        """The recurrent form over tokens (T,); state s (L, 5, C) advanced in place. Logits (V,) or (T, V)."""
        out = np.empty((len(tokens) if return_all else 1, self.config.vocab_size), np.float32)
        c = self.config
        step = 256  # tokens per call: their embedding rows are gathered first
        for a in range(0, len(tokens), step):
            which = LOGITS_ALL if return_all else LOGITS_LAST if a + step >= len(tokens) else LOGITS_NONE
            K.recurrent_tokens(self.rows(tokens[a:a + step]), self.like, self.head_like, self.addr, self.saddr,
                               c.vocab_size, c.ffn_dim, self.ln0, self.vecs, self.ln_out, self.eps, s,
                               out[a:a + step] if return_all else out, which, self.ahead)
        return out if return_all else out[0]

    def _f32(self, w: np.ndarray, scratch: list) -> np.ndarray:
        # BLAS reads float32 only: widen a 16-bit or int8 matrix into a buffer reused by every layer
        if w.dtype == np.float32:
            return w
        if scratch[0] is None or scratch[0].size < w.size:
            scratch[0] = np.empty(w.size, np.float32)
        out = scratch[0][:w.size].reshape(w.shape)
        if isinstance(w, Int8Matrix):
            dequantize_into(w.q, w.scales, out)
        elif isinstance(w, BlockMatrix):
            dequantize_blocks_into(w.raw, block_layout(w.fmt), out)  # ggml's arithmetic: as a dequantized load
        else:
            widen_into(w, out)
        return out

    def parallel(self, tokens: np.ndarray, s: np.ndarray, head: bool, return_all: bool) -> np.ndarray | None:
        """The parallel form over one chunk of tokens (T,): every projection one BLAS product over T.

        State s (L, 5, C) advanced in place. Logits (V,), (T, V) with return_all, or None without head.
        """
        x = self._blocks(tokens, s, batched=False)
        return self._logits(x, last=not return_all) if head else None

    def batch(self, tokens: np.ndarray, s: np.ndarray) -> np.ndarray:
        """The recurrent form over a batch: B sequences, one token each (tokens (B,)), sequence b's state
        in s[:, :, b] (s (L, 5, B, C), advanced in place). Logits (B, V).

        The parallel form's products with the B sequences in place of the T tokens (products.matmat on
        the weights as stored up to FUSED_MAX sequences, BLAS beyond), so every weight is read once per
        call for all B; only the token shift (kernels.norm_mix_rows: each row's previous
        token is its own sequence's) and eq. 14 (kernels.wkv_gate over the B x C channels, each with its
        own aa, bb, pp) see the rows as separate sequences."""
        return self._logits(self._blocks(tokens, s, batched=True), fused=self._fused(len(tokens)))

    #: up to this many sequences, the batch multiplies with products.matmat (each weight widened once, in
    #: the cache); beyond, with BLAS on the matrix widened to float32 (benchmarks/batch.py measures both)
    FUSED_MAX = 16

    def _fused(self, B: int) -> bool:
        return B <= self.FUSED_MAX and self.kind in ("float32", "bfloat16", "float16", "int8")

    def _product(self, a: np.ndarray, w, out: np.ndarray, fused: bool, scratch: list) -> np.ndarray:
        """out = a @ w.T: matmat on the weights as stored, or BLAS on them in float32."""
        if fused:
            matmat(kernel_array(w), w.scales if isinstance(w, Int8Matrix) else self._no_scales.reshape(1, 1), a, out)
        else:
            np.matmul(a, self._f32(w, scratch).T, out=out)
        return out

    def _blocks(self, tokens: np.ndarray, s: np.ndarray, batched: bool) -> np.ndarray:
        """Every block (reference.block) over the rows of tokens: x (T, C) after the last block, s advanced.
        batched: the rows are B sequences (s (L, 5, B, C)), not T tokens of one (s (L, 5, C))."""
        T, C, F = len(tokens), self.config.n_embd, self.config.ffn_dim
        eps, m, scratch = self.eps, self.matrices, [None]
        rows = np.asarray(self.emb[tokens])
        x = layer_norm(as_float32(rows), self.ln0[0], self.ln0[1], eps)  # reference.forward's ln0
        x = np.ascontiguousarray(x, dtype=np.float32)
        mixed = np.empty((3, T, C), np.float32)
        k, v, r, y = (np.empty((T, C), np.float32) for _ in range(4))
        kf = np.empty((T, F), np.float32)
        if batched:  # eq. 14's w and u for B x C channels: each sequence's C side by side
            wu = np.tile(self.vecs[:, [K.DECAY_W, K.FIRST]], (1, 1, T))  # (L, 2, B C)
        fused = batched and self._fused(T)

        def product(a, name, out):  # a @ W.T into out: one matrix product over the T rows
            return self._product(a, m[name][i], out, fused, scratch)
        for i in range(self.config.n_layer):  # reference.block
            p = self.vecs[i]

            def shift_mix(g, b, row, mus, out):  # layer_norm, token_shift, mix (eqs. 11-13, 16-17)
                if batched:
                    K.norm_mix_rows(x, p[g], p[b], eps, s[i, row], p[mus], out)
                else:
                    s[i, row] = K.norm_shift_mix(x, p[g], p[b], eps, s[i, row].copy(), p[mus], out)
            # reference.time_mixing: layer_norm, token_shift, mix (eqs. 11-13), then the products
            shift_mix(K.LN1_W, K.LN1_B, ATT_X, [K.ATT_MK, K.ATT_MV, K.ATT_MR], mixed)
            product(mixed[0], "att.key.weight", k)  # eq. 12
            product(mixed[1], "att.value.weight", v)  # eq. 13
            product(mixed[2], "att.receptance.weight", r)  # eq. 11
            if batched:  # eqs. 14-15, the B x C channels side by side, one step each
                K.wkv_gate(wu[i, 0], wu[i, 1], *(a.reshape(1, -1) for a in (k, v, r)), s[i, AA].reshape(-1),
                           s[i, BB].reshape(-1), s[i, PP].reshape(-1), y.reshape(1, -1))
            else:
                K.wkv_gate(p[K.DECAY_W], p[K.FIRST], k, v, r, s[i, AA], s[i, BB], s[i, PP], y)  # eqs. 14-15
            x += product(y, "att.output.weight", k)  # eq. 15, residual
            # reference.channel_mixing
            shift_mix(K.LN2_W, K.LN2_B, FFN_X, [K.FFN_MK, K.FFN_MR], mixed[:2])
            product(mixed[0], "ffn.key.weight", kf)  # eq. 17
            K.square_relu(kf)
            product(mixed[1], "ffn.receptance.weight", r)  # eq. 16
            K.add_gated(x, r, product(kf, "ffn.value.weight", v))  # eq. 18
        return x

    def _logits(self, x: np.ndarray, fused: bool = False, last: bool = False) -> np.ndarray:
        """ln_out and the head over every row of x (T, C): (T, V); last: over the last row only, (V,), by
        the recurrent form's matvec (as a token read alone)."""
        xn = layer_norm(x[-1:] if last else x, self.ln_out[0], self.ln_out[1], self.eps).astype(np.float32)
        if last:
            out = np.empty(self.config.vocab_size, np.float32)
            scales = self.head.scales if isinstance(self.head, Int8Matrix) else None
            matvec(kernel_array(self.head), np.ascontiguousarray(xn[0]), out, scales, self.ahead)
            return out
        out = np.empty((len(x), self.config.vocab_size), np.float32)
        if fused:
            return self._product(xn, self.head, out, True, None)
        rows, scratch = 8192, [None]  # widen the head a slice at a time: it is the largest matrix
        for a in range(0, self.config.vocab_size, rows):
            np.matmul(xn, self._f32(self.head[a:a + rows], scratch).T, out=out[:, a:a + rows])
        return out
