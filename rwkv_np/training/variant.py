"""Architecture variants for retrained ablations: which sublayers a block has and in which order,
which parameters are set to a constant, frozen, or tied across the channels of a layer, and whether
the bonus u is its own parameter or a function of the decay (coupled: u = coupled_u * w).

A Variant changes the same model code at these points, never a copy of it:
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
    as the single parameter they are, not C times;
  - `couple` (coupled_u != 0 only): u = coupled_u * w in every channel, w = e^time_decay. Then u is no
    parameter of its own: `couple` sets it from time_decay (call it after every optimiser step, before
    the next forward; `init` calls it once), and `grads(grads, params)` adds u's gradient to
    time_decay's by the chain rule (d u / d time_decay = coupled_u * w = u) and zeroes u's, so the
    optimiser never moves u itself. u = w makes the current token one more term of the decaying sum
    (weight e^{w + k_t} against the latest past token's e^{k_{t-1}}: the ratio e^w is fixed by the
    decay), which is what eq. 14's separate u avoids. A coupled variant's gradients need the
    parameters: `grads(grads)` without them refuses it (so training/model.loss_and_grads does too).

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
    coupled_u: float = 0.0  # nonzero: u = coupled_u * w (w = e^time_decay), no parameter of its own

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
        if self.coupled_u and "att.time_first" in names:
            raise ArgumentError("Variant: att.time_first is coupled to the decay (coupled_u); it cannot also be "
                                "set, frozen or tied")
        if not np.isfinite(self.coupled_u):
            raise ArgumentError(f"Variant: coupled_u must be a finite number, got {self.coupled_u!r}")

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
        return self.couple(params)

    def couple(self, params: dict) -> dict:
        """Set u from the decay where they are coupled: u = coupled_u * e^time_decay, every block (in
        place; also returned). Nothing to do for an uncoupled variant."""
        if self.coupled_u:
            for k in self._names(params, ("att.time_first",)):
                decay = params[k.replace("time_first", "time_decay")]
                params[k][...] = self.coupled_u * np.exp(decay.astype(np.float64))
        return params

    def grads(self, grads: dict, params: dict | None = None) -> dict:
        """The gradients of the variant's free parameters (in place; also returned). `params` (the
        values the gradients were taken at) is needed by a coupled variant, for the chain rule."""
        if self.coupled_u:
            if params is None:
                raise ArgumentError("Variant: the gradients of a coupled variant (coupled_u) need the parameters: "
                                    "call grads(grads, params)")
            for k in self._names(grads, ("att.time_first",)):
                decay = k.replace("time_first", "time_decay")
                du = self.coupled_u * np.exp(params[decay].astype(np.float64))  # d u / d time_decay
                grads[decay][...] = grads[decay] + grads[k] * du
                grads[k][...] = 0
        for k in self._names(grads, set(self.frozen) | set(self.unused())):
            grads[k][...] = 0
        for k in self._names(grads, self.tied):
            grads[k][...] = grads[k].sum(dtype=np.float64)
        return grads

    def norm_once(self, params: dict) -> tuple[str, ...]:
        """Names whose entries are copies of one value, to count once in the gradient norm."""
        return tuple(self._names(params, self.tied))

    def n_params(self, params: dict) -> tuple[int, int]:
        """(parameters the model uses, of which trained): a tied vector is one parameter; a coupled u
        is used but not trained (a function of the decay)."""
        used = trained = 0
        for k, v in params.items():
            short = k.split(".", 2)[2] if k.startswith("blocks.") else ""
            if short in self.unused():
                continue
            size = 1 if short in self.tied else v.size
            used += size
            if short not in self.frozen and not (self.coupled_u and short == "att.time_first"):
                trained += size
        return used, trained


DEFAULT = Variant()
