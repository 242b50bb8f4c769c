"""Architecture variants for retrained ablations: which sublayers a block has and in which order,
and which parameters are set to a constant, frozen, or tied across the channels of a layer.

A Variant changes the same model code at four points, never a copy of it:
  - `init`: after training/init.py's rules, parameters named in `set_to` get a constant, and tied
    vectors start at their layer's mean initial value (all channels equal);
  - model.block: `sublayers` is ("att", "ffn") (the paper's order), ("ffn", "att"), or ("att",)
    (no channel mixing; its parameters stay in the dict, unused, so the file keeps the checkpoint
    layout, and they get zero gradient);
  - `grads` (called by model.loss_and_grads): frozen parameters get a zero gradient, so AdamW's
    moments stay zero and the update is exactly zero (weight decay touches only matrices, and the
    frozen ones here are vectors); a tied vector gets, in every channel, the sum of its channels'
    gradients: the derivative of the loss with respect to the one shared value. Every channel then
    receives the same AdamW update, so the vector stays equal across channels, bit for bit;
  - `norm_once` (for optim.clip_grads): tied vectors are counted once in the global gradient norm,
    as the single parameter they are, not C times.

Names in set_to, frozen and tied are block parameter names without "blocks.{i}." (e.g.
"att.time_decay"); they apply to every block. The default Variant() is the model of the paper and of
`python -m rwkv_np train`: it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..rwkv4.params import BLOCK
from ..errors import ArgumentError

_BLOCK = {p.name: p for p in BLOCK}
_FFN_ONLY = tuple(p.name for p in BLOCK if p.name.startswith(("ffn.", "ln2.")))


@dataclass(frozen=True)
class Variant:
    sublayers: tuple[str, ...] = ("att", "ffn")
    set_to: tuple[tuple[str, float], ...] = ()  # (block parameter, constant value at init)
    frozen: tuple[str, ...] = ()  # block parameters kept at their initial value
    tied: tuple[str, ...] = ()  # block vectors with one value shared by all channels of a layer

    def __post_init__(self):
        if self.sublayers not in (("att", "ffn"), ("ffn", "att"), ("att",)):
            raise ArgumentError(f"Variant sublayers must be ('att', 'ffn'), ('ffn', 'att') or ('att',), "
                                f"got {self.sublayers!r}")
        names = [n for n, _ in self.set_to] + list(self.frozen) + list(self.tied)
        unknown = sorted(set(names) - set(_BLOCK))
        if unknown:
            raise ArgumentError(f"Variant: {', '.join(unknown)} is not a block parameter "
                                f"(one of {', '.join(_BLOCK)})")
        for n in self.tied:
            if _BLOCK[n].shape != ("C",):
                raise ArgumentError(f"Variant: only per-channel vectors can be tied, {n} is {_BLOCK[n].shape}")
            if n in self.frozen:
                raise ArgumentError(f"Variant: {n} is both tied and frozen")

    @property
    def is_default(self) -> bool:
        return self == Variant()

    def unused(self) -> tuple[str, ...]:
        """Block parameters the forward pass never reads."""
        return _FFN_ONLY if "ffn" not in self.sublayers else ()

    def _names(self, params: dict, which) -> list[str]:
        return [k for k in params if k.startswith("blocks.") and k.split(".", 2)[2] in which]

    def init(self, params: dict) -> dict:
        """Apply set_to and tying to fresh parameters (in place; also returned)."""
        values = dict(self.set_to)
        for k in self._names(params, values):
            params[k][...] = values[k.split(".", 2)[2]]
        for k in self._names(params, self.tied):
            params[k][...] = params[k].astype(np.float64).mean()
        return params

    def grads(self, grads: dict) -> dict:
        """The gradients of the variant's free parameters (in place; also returned)."""
        for k in self._names(grads, set(self.frozen) | set(self.unused())):
            grads[k][...] = 0
        for k in self._names(grads, self.tied):
            grads[k][...] = grads[k].sum(dtype=np.float64)
        return grads

    def norm_once(self, params: dict) -> tuple[str, ...]:
        """Names whose entries are copies of one value, to count once in the gradient norm."""
        return tuple(self._names(params, self.tied))

    def n_params(self, params: dict) -> tuple[int, int]:
        """(parameters the model uses, of which trained): a tied vector is one parameter."""
        used = trained = 0
        for k, v in params.items():
            short = k.split(".", 2)[2] if k.startswith("blocks.") else ""
            if short in self.unused():
                continue
            size = 1 if short in self.tied else v.size
            used += size
            if short not in self.frozen:
                trained += size
        return used, trained


DEFAULT = Variant()
