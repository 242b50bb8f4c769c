"""RWKV-6's engine: rwkv_np/rwkv6/reference.py computed fast. Read reference.py first.

RWKV-5's engine (rwkv_np/rwkv5/engine.py) with RWKV-6's time mixing: the same layout of matrices, head
and channel mixing (with lerp's mu), the data-dependent token shift and decay computed here (their
LoRAs over the T tokens as BLAS products in the parallel form; fused in kernels.step in the recurrent
form), and RWKV-5's scan over T, whose decay may change with t.
"""

from __future__ import annotations

import numpy as np

from ..rwkv5 import engine as E5
from ..rwkv5 import kernels as K5
from . import kernels as K
from .reference import group_norm


class Engine(E5.Engine):
    MATRICES = dict(E5.Engine.MATRICES) | {K5.M_G: "att.gate.weight"}

    def matrix_names(self) -> dict[int, str]:
        return dict(self.MATRICES)

    def vectors(self, weights) -> None:
        c, w = self.config, self.w
        self.vc = self.table(self.lns + [w(weights, f"att.time_maa_{x}") for x in "xwkvrg"]
                             + [w(weights, "ffn.time_maa_k"), w(weights, "ffn.time_maa_r")], c.n_embd)
        self.va = self.table(self.lnx + [w(weights, "att.time_decay"), w(weights, "att.time_faaaa")], c.att_dim)
        Dm = dict(c.lora)["Dm"]
        C = c.n_embd
        self.lora = (self.stack(weights, "att.time_maa_w1", lambda a: a.T),  # (L, 5 Dm, C)
                     self.stack(weights, "att.time_maa_w2",
                                lambda a: a.reshape(5, Dm, C).transpose(0, 2, 1)),  # (L, 5, C, Dm)
                     self.stack(weights, "att.time_decay_w1", lambda a: a.T),  # (L, Dd, C)
                     self.stack(weights, "att.time_decay_w2", lambda a: a.T))  # (L, A, Dd)

    def step(self, common, shift, wkv, logits, which) -> None:
        K.step(*common, self.ln0, self.vc, self.va, *self.lora, self.ln_out, self.eps, self.lnx_eps, shift, wkv,
               logits, which, self.ahead)

    def time_mixing(self, i, xn, xx, S, mm, carry):
        c = self.config
        p, q = self.vc[i], self.va[i]
        T = len(xn)
        maa_w1, maa_w2, dec_w1, dec_w2 = (t[i] for t in self.lora)
        hidden = np.tanh((xn + (xx - xn) * p[K.V6_MX]) @ maa_w1.T)  # (T, 5 Dm)
        # (5, T, Dm) @ (5, Dm, C): the five B_c as one batched BLAS product
        m = np.matmul(hidden.reshape(T, 5, -1).transpose(1, 0, 2), maa_w2.transpose(0, 2, 1))  # (5, T, C)
        xw, xk, xv, xr, xg = (xn + (xx - xn) * (p[K.V6_MW + j] + m[j]) for j in range(5))
        r, k, vv, gg = mm(xr, K5.M_R, i), mm(xk, K5.M_K, i), mm(xv, K5.M_V, i), mm(xg, K5.M_G, i)
        d = q[K.A6_D] + np.tanh(xw @ dec_w1.T) @ dec_w2.T  # (T, A)
        w = np.exp(-np.exp(d.astype(np.float64))).astype(np.float32)
        y = self.scan(r, k, vv, w, q[K.A6_U], S)
        return group_norm(y, q[K5.LNX_W], q[K5.LNX_B], self.lnx_eps, c.n_head) * (gg * E5.sigmoid(gg))

    def channel_mixes(self, p, xn, xx):
        """The inputs of W'_k and W'_r after the token shift (lerp)."""
        return tuple(xn + (xx - xn) * p[j] for j in (K.V6_FK, K.V6_FR))
