"""The optimiser: AdamW, global gradient clipping, and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np


class AdamW:
    """Adam with decoupled weight decay on the matrices only (not emb, LayerNorms, time_* vectors)."""

    def __init__(self, params: dict, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0):
        self.b1, self.b2 = betas
        self.eps, self.wd = eps, weight_decay
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict, grads: dict, lr: float) -> None:
        self.t += 1
        c1 = 1 - self.b1 ** self.t
        c2 = 1 - self.b2 ** self.t
        for k, p in params.items():
            gk = grads[k]
            m, v = self.m[k], self.v[k]
            m *= self.b1
            m += (1 - self.b1) * gk
            v *= self.b2
            v += (1 - self.b2) * gk * gk
            if self.wd and p.ndim == 2 and k != "emb.weight":
                p *= 1 - lr * self.wd
            p -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def clip_grads(grads: dict, max_norm: float, once: tuple[str, ...] = ()) -> float:
    """Scale all gradients so their global L2 norm is at most max_norm; returns the norm before.
    `once` names gradients whose entries are copies of one parameter's (a Variant's tied vectors):
    they count as that one entry."""
    norm = math.sqrt(sum(float(g.flat[0]) ** 2 if k in once else float(np.vdot(g, g)) for k, g in grads.items()))
    if max_norm > 0 and norm > max_norm:
        for g in grads.values():
            g *= max_norm / norm
    return norm


def lr_at(step: int, lr: float, warmup: int, total: int, min_ratio: float = 0.1, time_frac: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to min_ratio * lr at the end of training.

    Progress is the larger of step/total and time_frac (the share of a --time-budget used), so a run
    slowed down by a busy machine still anneals fully before its time is up.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = max(step / max(1, total), time_frac)
    start = warmup / max(1, total)
    frac = min(1.0, max(0.0, (progress - start) / max(1e-9, 1 - start)))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
