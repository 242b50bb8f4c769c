"""The engine of RWKV-5.1, 5.2, 6 and 7: rwkv_np/reference_v5.py, reference_v6.py and
reference_v7.py, computed fast. Read those first (and engine.py, RWKV-4's engine, which this follows).

`LaterRWKV.forward` computes what `reference_vN.forward` (mode="parallel") and `reference_vN.step`
(mode="recurrent") compute:
    recurrent form  kernels_later.step_v5 / step_v6 / step_v7: a whole token through every layer in
                    one compiled call, every weight read once (16-bit weights kept as stored)
    parallel form   per layer: LayerNorm, token shift and LoRAs in NumPy over the T tokens, every
                    projection one BLAS product over T, then the scan over T compiled
                    (kernels_later.scan_v5 for 5.x and 6, scan_v7 for 7), ln_x, gate, W_o, FFN
`rwkv_np.RWKV(weights, config)` returns a LaterRWKV when config.version is not "4", and
`rwkv_np.load_model` gives one for a later checkpoint; the API is RWKV-4's (forward, init_state,
params, warm_up), the State carrying the matrices (State.wkv).
tests/test_engine_later.py checks this file against the references at every position.
"""

from __future__ import annotations

import numba
import numpy as np

from . import kernels as K
from . import kernels_later as KL
from .config import RWKVConfig
from .engine import RWKV, _as_float32
from .errors import ArgumentError
from .reference_v5 import group_norm, layer_norm, token_shift
from .state import State, check_forward_output

_DECAY_SCALE = np.float32(np.exp(-0.5))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


class LaterRWKV(RWKV):
    """An RWKV-5.1, 5.2, 6 or 7 language model: float32 arithmetic, weights float32 or kept 16-bit.

    weights: the flat dict of rwkv_np.loading for a later version (BlinkDL's names and raw values,
    shapes of rwkv_np.versions.param_shapes); config: its RWKVConfig (version, n_head, head_size,
    ln_x_eps, LoRA ranks). `params` is the nested dict the reference of the version takes.
    """

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig | None = None):
        if config is None:
            from .versions import config_from_weights

            config = config_from_weights(weights)
        if config.version == "4":
            raise ArgumentError("config: LaterRWKV runs RWKV-5.1/5.2/6/7; RWKV-4 is rwkv_np.RWKV")
        self.config = config
        self.weights = weights
        self._params = None
        self._fast = _Layout(weights, config)

    @property
    def reference(self):
        """The module of the plain-NumPy reference this model computes."""
        from . import reference_v5, reference_v6, reference_v7

        return {"5.1": reference_v5, "5.2": reference_v5, "6": reference_v6, "7": reference_v7}[self.config.version]

    @property
    def params(self) -> dict:
        if self._params is None:
            from .versions import to_params

            flat = {k: _as_float32(v) for k, v in self.weights.items()}
            self._params = to_params(flat, self.config.version, ln_x_eps=self.config.ln_x_eps)
        return self._params

    def init_state(self) -> State:
        c = self.config
        return State.initial(c.n_layer, c.n_embd, c.n_head, c.head_size)

    def forward(self, tokens, state: State | None = None, mode: str = "parallel",
                return_all: bool = False) -> tuple[np.ndarray, State]:
        """As RWKV.forward: logits (V,) for the last token or (T, V) with return_all, and the State
        after the tokens (a new one; the given one is not modified)."""
        tokens = self._check_tokens(tokens)
        state = self._check_state(state)
        shift, wkv = state.data.copy(), state.wkv.copy()
        if mode == "parallel":
            outputs = []
            for start in range(0, len(tokens), self.chunk_size):
                last = start + self.chunk_size >= len(tokens)
                logits = self._fast.parallel(tokens[start:start + self.chunk_size], shift, wkv,
                                             head=return_all or last, return_all=return_all)
                if return_all:
                    outputs.append(logits)
            logits = np.concatenate(outputs) if return_all else logits
        elif mode == "recurrent":
            logits = self._fast.recurrent(tokens, shift, wkv, return_all)
        else:
            raise ArgumentError(f"mode: expected 'parallel' or 'recurrent', got {mode!r}")
        source = getattr(self, "checkpoint_path", None)
        check_forward_output(None, wkv, source, state is not None)
        check_forward_output(logits, shift, source, state is not None)
        return logits, State(shift, wkv)

    def _check_state(self, state: State | None) -> State:
        if state is None:
            return self.init_state()
        if not isinstance(state, State):
            raise ArgumentError(f"state: expected an rwkv_np.State or None, got {type(state).__name__}")
        c = self.config
        want = ((c.n_layer, 2, c.n_embd), (c.n_layer, c.n_head, c.head_size, c.head_size))
        got = (state.data.shape, None if state.wkv is None else state.wkv.shape)
        if got != want:
            raise ArgumentError(f"state: shapes {got} do not fit this RWKV-{c.version} model, expected {want}")
        return state


class _Layout:
    """The weights laid out for kernels_later (see its docstring), and both forms run with them."""

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig):
        self.config = c = config
        self.ahead = K.PREFETCH_BYTES  # the rows' prefetch distance; RWKV.choose_prefetch may change it
        L, C, A, H, N = c.n_layer, c.n_embd, c.att_dim, c.n_head, c.head_size
        self.version = v = c.version
        names = {KL.M_K: "att.key.weight", KL.M_V: "att.value.weight", KL.M_R: "att.receptance.weight",
                 KL.M_O: "att.output.weight", KL.F_K: "ffn.key.weight", KL.F_V: "ffn.value.weight"}
        if v in ("5.2", "6"):
            names[KL.M_G] = "att.gate.weight"
        if v != "7":
            names[KL.F_R] = "ffn.receptance.weight"
        matrices = ["emb.weight", "head.weight"] + [f"blocks.{i}.{n}" for i in range(L) for n in names.values()]
        dtypes = {np.dtype(weights[n].dtype) for n in matrices}
        kind = {np.dtype(np.uint16): "bfloat16", np.dtype(np.float16): "float16"}.get(dtypes.pop(), "float32")
        self.kind = "float32" if dtypes else kind  # mixed storage: everything float32

        def stored(a):
            a = np.ascontiguousarray(_as_float32(a) if self.kind == "float32" else a)
            return a.view(np.int16) if a.dtype == np.float16 else a

        self.stored = stored
        self.emb = weights["emb.weight"]  # possibly a FileRows: rows read on demand
        self.head = stored(weights["head.weight"])
        self.m = {row: [stored(weights[f"blocks.{i}.{n}"]) for i in range(L)] for row, n in names.items()}
        self.addr = np.zeros((KL.N_ADDR, L), np.int64)
        for row, mats in self.m.items():
            self.addr[row] = [a.ctypes.data for a in mats]
        self.addr[KL.M_HEAD, 0] = self.head.ctypes.data

        def table(rows, width):  # (L, len(rows), width) float32 of per-layer vectors
            out = np.zeros((L, len(rows), width), np.float64)
            for i in range(L):
                for j, fn in enumerate(rows):
                    val = fn(i)
                    if val is not None:
                        out[i, j] = np.reshape(val, -1) if np.size(val) == width else np.repeat(np.reshape(val, -1), width // np.size(val))
            return np.ascontiguousarray(out, dtype=np.float32)

        def w(name):
            return lambda i: np.asarray(weights[f"blocks.{i}.{name}"], np.float64)

        lns = [w("ln1.weight"), w("ln1.bias"), w("ln2.weight"), w("ln2.bias")]
        lnx = [w("att.ln_x.weight"), w("att.ln_x.bias")]
        if v in ("5.1", "5.2"):
            gate_mix = w("att.time_mix_g") if v == "5.2" else (lambda i: None)
            self.vc = table(lns + [w("att.time_mix_k"), w("att.time_mix_v"), w("att.time_mix_r"), gate_mix,
                                   w("ffn.time_mix_k"), w("ffn.time_mix_r")], C)
            # w = exp(-exp(omega)) and u (5.1: exp(time_first)) once, in float64; 5.1's per-head
            # values repeated over the head's N channels
            bonus = (lambda i: np.exp(w("att.time_first")(i))) if v == "5.1" else w("att.time_faaaa")
            self.va = table(lnx + [lambda i: np.exp(-np.exp(w("att.time_decay")(i))), bonus], A)
        elif v == "6":
            self.vc = table(lns + [w(f"att.time_maa_{x}") for x in "xwkvrg"]
                            + [w("ffn.time_maa_k"), w("ffn.time_maa_r")], C)
            self.va = table(lnx + [w("att.time_decay"), w("att.time_faaaa")], A)
            Dm = dict(c.lora)["Dm"]
            self.lora = (self._stack(weights, "att.time_maa_w1", lambda a: a.T),  # (L, 5 Dm, C)
                         self._stack(weights, "att.time_maa_w2",
                                     lambda a: a.reshape(5, Dm, C).transpose(0, 2, 1)),  # (L, 5, C, Dm)
                         self._stack(weights, "att.time_decay_w1", lambda a: a.T),  # (L, Dd, C)
                         self._stack(weights, "att.time_decay_w2", lambda a: a.T))  # (L, A, Dd)
        else:
            self.vc = table(lns + [w(f"att.x_{x}") for x in "rwkvag"] + [w("ffn.x_k")], C)
            v0 = lambda i: None if i == 0 else w("att.v0")(i)  # noqa: E731 - layer 0 has no value residual
            self.va = table(lnx + [w("att.w0"), w("att.a0"), v0, w("att.k_k"), w("att.k_a"), w("att.r_k")], A)
            dims = dict(c.lora)
            self.lora = tuple(self._stack(weights, f"att.{n}", lambda a: a.T, first_missing=(n[0] == "v"),
                                          missing_shape=(dims.get("Dv", 1), C) if n == "v1" else (A, dims.get("Dv", 1)))
                              for n in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"))
        self.ln0 = np.stack([weights["blocks.0.ln0.weight"], weights["blocks.0.ln0.bias"]]).astype(np.float32).reshape(2, -1)
        self.ln_out = np.stack([weights["ln_out.weight"], weights["ln_out.bias"]]).astype(np.float32).reshape(2, -1)
        self.eps, self.lnx_eps = c.layer_norm_eps, c.ln_x_eps
        self.small = c.n_params < 4_000_000  # as engine._FastWeights: one thread for tiny models

    def _stack(self, weights, name, fn, first_missing=False, missing_shape=None):
        L = self.config.n_layer
        mats = [np.zeros(missing_shape, np.float32) if first_missing and i == 0
                else fn(np.asarray(weights[f"blocks.{i}.{name}"], np.float32)) for i in range(L)]
        return np.ascontiguousarray(np.stack(mats), dtype=np.float32)

    # ---- the recurrent form -------------------------------------------------------------------

    def rows(self, tokens: np.ndarray) -> np.ndarray:
        return self.stored(np.asarray(self.emb[tokens]))

    def recurrent(self, tokens, shift, wkv, return_all):
        c = self.config
        out = np.empty((len(tokens) if return_all else 1, c.vocab_size), np.float32)
        threads = numba.get_num_threads()
        if self.small:
            numba.set_num_threads(1)
        try:
            step = 256
            for a in range(0, len(tokens), step):
                which = K.LOGITS_ALL if return_all else K.LOGITS_LAST if a + step >= len(tokens) else K.LOGITS_NONE
                rows, logits = self.rows(tokens[a:a + step]), out[a:a + step] if return_all else out
                common = (rows, self.addr, c.vocab_size, c.ffn_dim, c.n_head, c.head_size)
                if self.version in ("5.1", "5.2"):
                    KL.step_v5(*common, self.version == "5.2", self.ln0, self.vc, self.va, self.ln_out, self.eps,
                               self.lnx_eps, shift, wkv, logits, which, self.ahead)
                elif self.version == "6":
                    KL.step_v6(*common, self.ln0, self.vc, self.va, *self.lora, self.ln_out, self.eps,
                               self.lnx_eps, shift, wkv, logits, which, self.ahead)
                else:
                    KL.step_v7(*common, self.ln0, self.vc, self.va, *self.lora, self.ln_out, self.eps,
                               self.lnx_eps, shift, wkv, logits, which, self.ahead)
        finally:
            numba.set_num_threads(threads)
        return out if return_all else out[0]

    # ---- the parallel form --------------------------------------------------------------------

    def _f32(self, w, scratch):
        # BLAS reads float32 only: widen a 16-bit matrix into a buffer reused by every layer
        if w.dtype == np.float32:
            return w
        if scratch[0] is None or scratch[0].size < w.size:
            scratch[0] = np.empty(w.size, np.float32)
        out = scratch[0][:w.size].reshape(w.shape)
        K.widen_into(w, out)
        return out

    def parallel(self, tokens, shift, wkv, head, return_all):
        """The parallel form over one chunk of tokens (T,); shift, wkv advanced in place."""
        c, v = self.config, self.version
        T, H, N = len(tokens), c.n_head, c.head_size
        scratch = [None]

        def mm(a, row, i):  # a (T, in) @ W.T: one BLAS product over the T tokens
            return a @ self._f32(self.m[row][i], scratch).T

        x = layer_norm(_as_float32(np.asarray(self.emb[tokens])), self.ln0[0], self.ln0[1], self.eps)
        v_first = None
        for i in range(c.n_layer):
            p, q, s = self.vc[i], self.va[i], shift[i]
            xn = layer_norm(x, p[KL.LN1_W], p[KL.LN1_B], self.eps)
            xx = token_shift(xn, s[0])
            s[0] = xn[-1]
            if v in ("5.1", "5.2"):
                def mix(row):
                    return xn * p[row] + xx * (1 - p[row])
                r, k, vv = mm(mix(KL.V5_MR), KL.M_R, i), mm(mix(KL.V5_MK), KL.M_K, i), mm(mix(KL.V5_MV), KL.M_V, i)
                w = np.broadcast_to(q[KL.A5_W], r.shape)
                y = self._scan5(r, k, vv, w, q[KL.A5_U], wkv[i])
                o = group_norm(y, q[KL.LNX_W], q[KL.LNX_B], self.lnx_eps, H)
                if v == "5.2":
                    gg = mm(mix(KL.V5_MG), KL.M_G, i)
                    o = o * (gg * _sigmoid(gg))
                fk, fr = KL.V5_FK, KL.V5_FR
            elif v == "6":
                maa_w1, maa_w2, dec_w1, dec_w2 = (t[i] for t in self.lora)
                hidden = np.tanh((xn + (xx - xn) * p[KL.V6_MX]) @ maa_w1.T)  # (T, 5 Dm)
                # (5, T, Dm) @ (5, Dm, C): the five B_c as one batched BLAS product
                m = np.matmul(hidden.reshape(T, 5, -1).transpose(1, 0, 2), maa_w2.transpose(0, 2, 1))  # (5, T, C)
                xw, xk, xv, xr, xg = (xn + (xx - xn) * (p[KL.V6_MW + j] + m[j]) for j in range(5))
                r, k, vv, gg = mm(xr, KL.M_R, i), mm(xk, KL.M_K, i), mm(xv, KL.M_V, i), mm(xg, KL.M_G, i)
                d = q[KL.A6_D] + np.tanh(xw @ dec_w1.T) @ dec_w2.T  # (T, A)
                w = np.exp(-np.exp(d.astype(np.float64))).astype(np.float32)
                y = self._scan5(r, k, vv, w, q[KL.A6_U], wkv[i])
                o = group_norm(y, q[KL.LNX_W], q[KL.LNX_B], self.lnx_eps, H) * (gg * _sigmoid(gg))
                fk, fr = KL.V6_FK, KL.V6_FR
            else:
                w1, w2, a1, a2, v1, v2, g1, g2 = (t[i] for t in self.lora)
                xr, xw, xk, xv, xa, xg = (xn + (xx - xn) * p[KL.V7_XR + j] for j in range(6))
                r, k, vv = mm(xr, KL.M_R, i), mm(xk, KL.M_K, i), mm(xv, KL.M_V, i)
                w = np.exp(-_DECAY_SCALE * _sigmoid(q[KL.A7_W0] + np.tanh(xw @ w1.T) @ w2.T))
                a = _sigmoid(q[KL.A7_A0] + (xa @ a1.T) @ a2.T)
                g = _sigmoid(xg @ g1.T) @ g2.T
                kappa = (k * q[KL.A7_KK]).reshape(T, H, N)
                kh = kappa / np.maximum(np.sqrt((kappa.astype(np.float64) ** 2).sum(-1, keepdims=True)), 1e-12)
                k = k * (1 + (a - 1) * q[KL.A7_KA])
                if v_first is None:
                    v_first = vv
                else:
                    vv = vv + (v_first - vv) * _sigmoid(q[KL.A7_V0] + (xv @ v1.T) @ v2.T)
                y = np.empty((T, H, N), np.float32)
                KL.scan_v7(*(np.ascontiguousarray(z, dtype=np.float32).reshape(T, H, N) for z in (r, w, k, vv, kh, a)),
                           wkv[i], y)
                bonus = (r * q[KL.A7_RK] * k).reshape(T, H, N).sum(-1, keepdims=True) * vv.reshape(T, H, N)
                o = g * (group_norm(y.reshape(T, -1), q[KL.LNX_W], q[KL.LNX_B], self.lnx_eps, H) + bonus.reshape(T, -1))
                fk, fr = KL.V7_FK, None
            x = x + mm(np.ascontiguousarray(o, dtype=np.float32), KL.M_O, i)
            # channel mixing: RWKV-4's (5.x: mix; 6: lerp; 7: lerp, no receptance)
            xn = layer_norm(x, p[KL.LN2_W], p[KL.LN2_B], self.eps)
            xx = token_shift(xn, s[1])
            s[1] = xn[-1]
            if v in ("5.1", "5.2"):
                xk, xr = (xn * p[j] + xx * (1 - p[j]) for j in (fk, fr))
            else:
                xk, xr = (xn + (xx - xn) * p[j] if j is not None else None for j in (fk, fr))
            hidden = np.square(np.maximum(mm(xk, KL.F_K, i), 0))
            out = mm(hidden, KL.F_V, i)
            x = x + (out if xr is None else _sigmoid(mm(xr, KL.F_R, i)) * out)
            x = np.ascontiguousarray(x, dtype=np.float32)
        if not head:
            return None
        xn = layer_norm(x if return_all else x[-1:], self.ln_out[0], self.ln_out[1], self.eps).astype(np.float32)
        if not return_all:
            out = np.empty(c.vocab_size, np.float32)
            K.matvec(self.head, np.ascontiguousarray(xn[0]), out)
            return out
        out = np.empty((T, c.vocab_size), np.float32)
        for a in range(0, c.vocab_size, 8192):  # widen the head a slice at a time
            np.matmul(xn, self._f32(self.head[a:a + 8192], scratch).T, out=out[:, a:a + 8192])
        return out

    def _scan5(self, r, k, v, w, u, S):
        c = self.config
        T, H, N = len(r), c.n_head, c.head_size
        y = np.empty((T, H, N), np.float32)
        KL.scan_v5(*(np.ascontiguousarray(z, dtype=np.float32).reshape(T, H, N) for z in (r, k, v, w)),
                   np.ascontiguousarray(u, dtype=np.float32).reshape(H, N), S, y)
        return y.reshape(T, H * N)
