"""RWKV-5's engine (5.1 and 5.2): rwkv_np/rwkv5/reference.py computed fast. Read reference.py first.

`Engine` holds the weights laid out for kernels.py and runs both forms with them; rwkv_np.RWKV calls it.
    recurrent form  kernels.step: a whole token through every layer in one compiled call, every weight
                    read once (16-bit weights kept as stored)
    parallel form   per layer: LayerNorm, token shift in NumPy over the T tokens, every projection one
                    BLAS product over T, then the scan over T compiled (kernels.scan), ln_x, gate, W_o,
                    channel mixing
RWKV-6's and RWKV-7's engines (rwkv_np/rwkv6/engine.py, rwkv7/engine.py) extend this one: the same
layout of matrices, head and channel mixing, their own time mixing. Tests check every engine against
its reference at every position.
"""

from __future__ import annotations

import numpy as np

from ..config import RWKVConfig
from ..ops import LOGITS_ALL, LOGITS_LAST, LOGITS_NONE
from ..products import PREFETCH_BYTES, matvec, widen_into
from ..quantize import as_float32
from . import kernels as K
from .reference import group_norm, layer_norm, token_shift


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


class Engine:
    """The weights laid out for the compiled kernels, and both forms of the network run with them.

    Matrices are not copied: float32 and 16-bit arrays are handed to the kernels as they are (fp16 as
    its int16 bit pattern). The per-layer vectors are gathered into tables of width C (vc) and A (va).
    """

    #: the rows of the address table and the Linear matrices they hold (one per version)
    MATRICES = {K.M_K: "att.key.weight", K.M_V: "att.value.weight", K.M_R: "att.receptance.weight",
                K.M_O: "att.output.weight", K.F_K: "ffn.key.weight", K.F_V: "ffn.value.weight",
                K.F_R: "ffn.receptance.weight"}

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig):
        self.config = c = config
        self.ahead = PREFETCH_BYTES  # the rows' prefetch distance; RWKV.choose_prefetch may change it
        L = c.n_layer
        # 5.2 has a gate (and a bonus per channel); 5.1 neither: told by the weights, not a version string
        self.gated = "blocks.0.att.gate.weight" in weights
        names = self.matrix_names()
        matrices = ["emb.weight", "head.weight"] + [f"blocks.{i}.{n}" for i in range(L) for n in names.values()]
        dtypes = {np.dtype(weights[n].dtype) for n in matrices}
        kind = {np.dtype(np.uint16): "bfloat16", np.dtype(np.float16): "float16"}.get(dtypes.pop(), "float32")
        self.kind = "float32" if dtypes else kind  # mixed storage: everything float32
        self.emb = weights["emb.weight"]  # possibly a FileRows: rows read on demand
        self.head = self.stored(weights["head.weight"])
        self.m = {row: [self.stored(weights[f"blocks.{i}.{n}"]) for i in range(L)] for row, n in names.items()}
        self.addr = np.zeros((K.N_ADDR, L), np.int64)
        for row, mats in self.m.items():
            self.addr[row] = [a.ctypes.data for a in mats]
        self.addr[K.M_HEAD, 0] = self.head.ctypes.data
        self.lns = [self.w(weights, n) for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")]
        self.lnx = [self.w(weights, "att.ln_x.weight"), self.w(weights, "att.ln_x.bias")]
        self.vectors(weights)
        self.ln0 = np.stack([weights["blocks.0.ln0.weight"], weights["blocks.0.ln0.bias"]]).astype(np.float32).reshape(2, -1)
        self.ln_out = np.stack([weights["ln_out.weight"], weights["ln_out.bias"]]).astype(np.float32).reshape(2, -1)
        self.eps, self.lnx_eps = c.layer_norm_eps, c.ln_x_eps

    # ---- the layout ---------------------------------------------------------------------------

    def matrix_names(self) -> dict[int, str]:
        names = dict(self.MATRICES)
        if self.gated:
            names[K.M_G] = "att.gate.weight"
        return names

    def stored(self, a):
        """A matrix as the kernels read it: float32, or 16-bit as stored (fp16 as its int16 bits)."""
        a = np.ascontiguousarray(as_float32(a) if self.kind == "float32" else a)
        return a.view(np.int16) if a.dtype == np.float16 else a

    @staticmethod
    def w(weights, name):
        """Layer i's tensor `name`, float64 (a function of i, for `table`)."""
        return lambda i: np.asarray(weights[f"blocks.{i}.{name}"], np.float64)

    def table(self, rows, width):
        """(L, len(rows), width) float32 of per-layer vectors: row j of layer i is rows[j](i), repeated
        to the width when it holds one number per head; zeros where rows[j](i) is None."""
        out = np.zeros((self.config.n_layer, len(rows), width), np.float64)
        for i in range(self.config.n_layer):
            for j, fn in enumerate(rows):
                val = fn(i)
                if val is not None:
                    out[i, j] = np.reshape(val, -1) if np.size(val) == width else \
                        np.repeat(np.reshape(val, -1), width // np.size(val))
        return np.ascontiguousarray(out, dtype=np.float32)

    def stack(self, weights, name, fn, first_missing=False, missing_shape=None):
        """(L, ...) float32 of fn(layer i's tensor `name`); zeros of missing_shape in layer 0 if it lacks it."""
        mats = [np.zeros(missing_shape, np.float32) if first_missing and i == 0
                else fn(np.asarray(weights[f"blocks.{i}.{name}"], np.float32)) for i in range(self.config.n_layer)]
        return np.ascontiguousarray(np.stack(mats), dtype=np.float32)

    def vectors(self, weights) -> None:
        """vc (L, *, C) and va (L, *, A): the rows kernels.py names."""
        c, w = self.config, self.w
        gate_mix = w(weights, "att.time_mix_g") if self.gated else (lambda i: None)
        self.vc = self.table(self.lns + [w(weights, "att.time_mix_k"), w(weights, "att.time_mix_v"),
                                         w(weights, "att.time_mix_r"), gate_mix, w(weights, "ffn.time_mix_k"),
                                         w(weights, "ffn.time_mix_r")], c.n_embd)
        # w = exp(-exp(omega)) and u (5.1: exp(time_first)) once, in float64; 5.1's per-head
        # values repeated over the head's N channels
        bonus = (lambda i: np.exp(w(weights, "att.time_first")(i))) if not self.gated else w(weights, "att.time_faaaa")
        self.va = self.table(self.lnx + [lambda i: np.exp(-np.exp(w(weights, "att.time_decay")(i))), bonus],
                             c.att_dim)

    # ---- the recurrent form -------------------------------------------------------------------

    def rows(self, tokens: np.ndarray) -> np.ndarray:
        """The embedding rows of tokens (T,): (T, C) in the dtype the kernels read."""
        return self.stored(np.asarray(self.emb[tokens]))

    def recurrent(self, tokens, shift, wkv, return_all):
        """The recurrent form over tokens (T,); shift (L, 2, C), wkv (L, H, N, N) advanced in place."""
        c = self.config
        out = np.empty((len(tokens) if return_all else 1, c.vocab_size), np.float32)
        step = 256  # tokens per call: their embedding rows are gathered first
        for a in range(0, len(tokens), step):
            which = LOGITS_ALL if return_all else LOGITS_LAST if a + step >= len(tokens) else LOGITS_NONE
            rows, logits = self.rows(tokens[a:a + step]), out[a:a + step] if return_all else out
            self.step((rows, self.addr, c.vocab_size, c.ffn_dim, c.n_head, c.head_size), shift, wkv, logits,
                      which)
        return out if return_all else out[0]

    def step(self, common, shift, wkv, logits, which) -> None:
        K.step(*common, self.gated, self.ln0, self.vc, self.va, self.ln_out, self.eps,
               self.lnx_eps, shift, wkv, logits, which, self.ahead)

    # ---- the parallel form --------------------------------------------------------------------

    def _f32(self, w, scratch):
        # BLAS reads float32 only: widen a 16-bit matrix into a buffer reused by every layer
        if w.dtype == np.float32:
            return w
        if scratch[0] is None or scratch[0].size < w.size:
            scratch[0] = np.empty(w.size, np.float32)
        out = scratch[0][:w.size].reshape(w.shape)
        widen_into(w, out)
        return out

    def parallel(self, tokens, shift, wkv, head, return_all):
        """The parallel form over one chunk of tokens (T,); shift, wkv advanced in place. Logits (V,),
        (T, V) with return_all, or None without head."""
        x = self._blocks(tokens, shift, wkv, batched=False)
        if not head:
            return None
        if return_all:
            return self._logits(x)
        xn = layer_norm(x[-1:], self.ln_out[0], self.ln_out[1], self.eps).astype(np.float32)
        out = np.empty(self.config.vocab_size, np.float32)
        matvec(self.head, np.ascontiguousarray(xn[0]), out)
        return out

    def batch(self, tokens, shift, wkv):
        """The recurrent form over a batch: B sequences, one token each (tokens (B,)); sequence b's state
        in shift[:, :, b] (L, 2, B, C) and wkv[:, b] (L, B, H, N, N), advanced in place. Logits (B, V).

        The parallel form with the B sequences in place of the T tokens: every projection one BLAS
        product for all B (every weight read once per call); the token shift takes each row's previous
        token from its own state, and the scan sees B x H heads of one token each."""
        return self._logits(self._blocks(tokens, shift, wkv, batched=True))

    def _blocks(self, tokens, shift, wkv, batched):
        """Every block over the rows of tokens: x (T, C) after the last block; the state advanced in place.
        batched: the rows are B sequences (shift (L, 2, B, C), wkv (L, B, H, N, N)), not T tokens of one."""
        c = self.config
        scratch = [None]

        def mm(a, row, i):  # a (T, in) @ W.T: one BLAS product over the T tokens
            return a @ self._f32(self.m[row][i], scratch).T

        x = layer_norm(as_float32(np.asarray(self.emb[tokens])), self.ln0[0], self.ln0[1], self.eps)
        carry = {}  # what one layer hands the next within a call (RWKV-7's v_first)
        for i in range(c.n_layer):
            p, s = self.vc[i], shift[i]
            # each sequence's heads side by side in a batch: (B H, N, N), a view
            S = wkv[i].reshape(-1, c.head_size, c.head_size) if batched else wkv[i]

            def shifted(xn, row):  # x_{t-1} at every row; the state <- the last x
                xx = s[row].copy() if batched else token_shift(xn, s[row])
                s[row] = xn if batched else xn[-1]
                return xx
            xn = layer_norm(x, p[K.LN1_W], p[K.LN1_B], self.eps)
            xx = shifted(xn, 0)
            o = self.time_mixing(i, xn, xx, S, mm, carry)
            x = x + mm(np.ascontiguousarray(o, dtype=np.float32), K.M_O, i)
            # channel mixing: RWKV-4's (5.x: mix; 6: lerp; 7: lerp, no receptance)
            xn = layer_norm(x, p[K.LN2_W], p[K.LN2_B], self.eps)
            xx = shifted(xn, 1)
            xk, xr = self.channel_mixes(p, xn, xx)
            hidden = np.square(np.maximum(mm(xk, K.F_K, i), 0))
            out = mm(hidden, K.F_V, i)
            x = x + (out if xr is None else sigmoid(mm(xr, K.F_R, i)) * out)
            x = np.ascontiguousarray(x, dtype=np.float32)
        return x

    def _logits(self, x):
        """ln_out and the head over every row of x (T, C): (T, V)."""
        c = self.config
        xn = layer_norm(x, self.ln_out[0], self.ln_out[1], self.eps).astype(np.float32)
        out = np.empty((len(x), c.vocab_size), np.float32)
        scratch = [None]
        for a in range(0, c.vocab_size, 8192):  # widen the head a slice at a time
            np.matmul(xn, self._f32(self.head[a:a + 8192], scratch).T, out=out[:, a:a + 8192])
        return out

    def time_mixing(self, i, xn, xx, S, mm, carry):
        """Layer i's time mixing over the chunk: o (T, A), the input of W_o; S advanced in place."""
        c = self.config
        p, q = self.vc[i], self.va[i]

        def mix(row):
            return xn * p[row] + xx * (1 - p[row])
        r, k, vv = mm(mix(K.V5_MR), K.M_R, i), mm(mix(K.V5_MK), K.M_K, i), mm(mix(K.V5_MV), K.M_V, i)
        w = np.broadcast_to(q[K.A5_W], r.shape)
        y = self.scan(r, k, vv, w, q[K.A5_U], S)
        o = group_norm(y, q[K.LNX_W], q[K.LNX_B], self.lnx_eps, c.n_head)
        if self.gated:
            gg = mm(mix(K.V5_MG), K.M_G, i)
            o = o * (gg * sigmoid(gg))
        return o

    def channel_mixes(self, p, xn, xx):
        """The inputs of W'_k and W'_r after the token shift (RWKV-4's mix)."""
        return tuple(xn * p[j] + xx * (1 - p[j]) for j in (K.V5_FK, K.V5_FR))

    def scan(self, r, k, v, w, u, S):
        """kernels.scan over the chunk: y (T, A) from r, k, v, w (T, A), u (A,); S (H, N, N) advanced in
        place. In a batch (engine.batch) r, k, v, w are (B, A) and S (B H, N, N): one token of B H heads."""
        N = self.config.head_size
        G = S.shape[0]  # heads: H, or B H in a batch
        T = r.size // (G * N)
        y = np.empty((T, G, N), np.float32)
        u = np.ascontiguousarray(u, dtype=np.float32).reshape(-1, N)
        K.scan(*(np.ascontiguousarray(z, dtype=np.float32).reshape(T, G, N) for z in (r, k, v, w)),
               np.tile(u, (G // len(u), 1)), S, y)
        return y.reshape(r.shape)
