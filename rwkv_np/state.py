"""The recurrent state of RWKV-4: everything the network remembers of the tokens it has read.

Per layer, five vectors of C channels:
    0  att_x_prev   the LayerNorm output of the previous token, for time mixing's token shift
    1  aa           WKV numerator   (a_t of eq. 14's recurrence, scaled by e^-pp)
    2  bb           WKV denominator (b_t, scaled by e^-pp)
    3  pp           the running maximum exponent that keeps aa and bb finite
    4  ffn_x_prev   the LayerNorm output of the previous token, for channel mixing's token shift
Its size does not depend on how many tokens were read: this is what makes RWKV an RNN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError
from .reference import AA, ATT_X, BB, FFN_X, PP, PP_EMPTY  # noqa: F401 - the layout, defined once


@dataclass(frozen=True)
class State:
    """An immutable snapshot; `data` is (n_layer, 5, C) float32 and read-only.

    The model never modifies a State: forward() returns a new one, so an old state can be kept
    and continued later (forking a conversation) at no cost.
    """

    data: np.ndarray

    def __post_init__(self):
        data = np.array(self.data, dtype=np.float32)  # private copy
        if data.ndim != 3 or data.shape[1] != 5:
            raise ArgumentError(f"state: expected an array of shape (n_layer, 5, C), got {data.shape}")
        if not np.isfinite(data).all():
            raise ArgumentError("state: contains NaN or infinite values")
        data.flags.writeable = False
        object.__setattr__(self, "data", data)

    @classmethod
    def initial(cls, n_layer: int, n_embd: int) -> "State":
        """The state before any token: zeros, and an empty running maximum."""
        data = np.zeros((n_layer, 5, n_embd), dtype=np.float32)
        data[:, PP] = PP_EMPTY
        return cls(data)

    @property
    def n_layer(self) -> int:
        return self.data.shape[0]

    @property
    def n_embd(self) -> int:
        return self.data.shape[2]

    def copy(self) -> "State":
        """A State is immutable, so a copy is only needed to hand someone a separate object."""
        return State(self.data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to a .npz file (exact float32 values)."""
        np.savez(path, rwkv_np_state=self.data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "State":
        """Read a state written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as f:
                if "rwkv_np_state" not in f.files:
                    raise ArgumentError(f"{path}: not an rwkv_np state file (no 'rwkv_np_state' array)")
                data = f["rwkv_np_state"]
        except (OSError, ValueError) as e:
            if isinstance(e, ArgumentError):
                raise
            raise ArgumentError(f"{path}: cannot read a state file: {e}") from None
        return cls(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and np.array_equal(self.data, other.data)

    __hash__ = None  # type: ignore[assignment]
