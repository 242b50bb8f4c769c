"""RWKV-7's engine: rwkv_np/rwkv7/reference.py computed fast. Read reference.py first.

RWKV-5's engine (rwkv_np/rwkv5/engine.py) with RWKV-7's time mixing: the same layout of matrices and
head; the LoRAs (decay, in-context rate, gate, value residual) as BLAS products over the T tokens in
the parallel form and the delta rule compiled (kernels.scan); the whole token fused in kernels.step
in the recurrent form. Channel mixing has no receptance.
"""

from __future__ import annotations

import numpy as np

from ..rwkv5 import engine as E5
from ..rwkv5 import kernels as K5
from . import kernels as K
from .reference import group_norm

_DECAY_SCALE = np.float32(np.exp(-0.5))  # w = exp(-e^-0.5 sigmoid(d))


class Engine(E5.Engine):
    MATRICES = {row: name for row, name in E5.Engine.MATRICES.items() if row != K5.F_R}

    def matrix_names(self) -> dict[int, str]:
        return dict(self.MATRICES)

    def vectors(self, weights) -> None:
        c, w = self.config, self.w
        self.vc = self.table(self.lns + [w(weights, f"att.x_{x}") for x in "rwkvag"] + [w(weights, "ffn.x_k")],
                             c.n_embd)
        v0 = lambda i: None if i == 0 else w(weights, "att.v0")(i)  # noqa: E731 - layer 0 has no value residual
        self.va = self.table(self.lnx + [w(weights, "att.w0"), w(weights, "att.a0"), v0, w(weights, "att.k_k"),
                                         w(weights, "att.k_a"), w(weights, "att.r_k")], c.att_dim)
        dims, C, A = dict(c.lora), c.n_embd, c.att_dim
        self.lora = tuple(self.stack(weights, f"att.{n}", lambda a: a.T, first_missing=(n[0] == "v"),
                                     missing_shape=(dims.get("Dv", 1), C) if n == "v1" else (A, dims.get("Dv", 1)))
                          for n in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"))

    def step(self, common, shift, wkv, logits, which) -> None:
        K.step(*common, self.ln0, self.vc, self.va, *self.lora, self.ln_out, self.eps, self.lnx_eps, shift, wkv,
               logits, which, self.ahead)

    def time_mixing(self, i, xn, xx, S, mm, carry):
        c = self.config
        p, q = self.vc[i], self.va[i]
        T, H, N = len(xn), c.n_head, c.head_size
        sigmoid = E5.sigmoid
        w1, w2, a1, a2, v1, v2, g1, g2 = (t[i] for t in self.lora)
        xr, xw, xk, xv, xa, xg = (xn + (xx - xn) * p[K.V7_XR + j] for j in range(6))
        r, k, vv = mm(xr, K5.M_R, i), mm(xk, K5.M_K, i), mm(xv, K5.M_V, i)
        w = np.exp(-_DECAY_SCALE * sigmoid(q[K.A7_W0] + np.tanh(xw @ w1.T) @ w2.T))
        a = sigmoid(q[K.A7_A0] + (xa @ a1.T) @ a2.T)
        g = sigmoid(xg @ g1.T) @ g2.T
        kappa = (k * q[K.A7_KK]).reshape(T, H, N)
        kh = kappa / np.maximum(np.sqrt((kappa.astype(np.float64) ** 2).sum(-1, keepdims=True)), 1e-12)
        k = k * (1 + (a - 1) * q[K.A7_KA])
        if "v_first" not in carry:
            carry["v_first"] = vv
        else:
            vv = vv + (carry["v_first"] - vv) * sigmoid(q[K.A7_V0] + (xv @ v1.T) @ v2.T)
        G = S.shape[0]  # heads: H, or B H in a batch (engine.batch: the T rows are B sequences)
        y = np.empty((T * H // G, G, N), np.float32)
        K.scan(*(np.ascontiguousarray(z, dtype=np.float32).reshape(y.shape) for z in (r, w, k, vv, kh, a)), S, y)
        bonus = (r * q[K.A7_RK] * k).reshape(T, H, N).sum(-1, keepdims=True) * vv.reshape(T, H, N)
        return g * (group_norm(y.reshape(T, -1), q[K5.LNX_W], q[K5.LNX_B], self.lnx_eps, H) + bonus.reshape(T, -1))

    def channel_mixes(self, p, xn, xx):
        """The input of W'_k after the token shift (lerp); no receptance."""
        return xn + (xx - xn) * p[K.V7_FK], None
