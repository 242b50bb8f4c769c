"""RWKV-4, as a handful of NumPy functions, one line of the paper each.

Equation numbers are those of the paper's first arXiv version (2305.13048v1):
    11-13  token shift: r, k, v from a learned blend of this token and the previous one
    14     wkv, the time-decayed weighted average of values (rwkv_np/wkv.py)
    15     output gate: sigmoid(r) decides how much of wkv goes out
    16-18  channel mixing: a squared-ReLU feed-forward gated by its own receptance

Every function takes a whole sequence x (T, C). The parallel (GPT-like) form calls them once with
all T tokens; the recurrent (RNN) form calls them with T = 1, once per token, carrying the state.
The only thing that ties positions together is the state each function receives and returns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .config import RWKVConfig
from .errors import ArgumentError
from .state import AA, ATT_X, BB, FFN_X, PP, State
from .wkv import wkv_numba


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """x (T, C) normalised over channels, then scaled by g and shifted by b (C,)."""
    mean = x.mean(-1, keepdims=True)
    var = np.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def token_shift(x: np.ndarray, x_prev: np.ndarray) -> np.ndarray:
    """The previous token's vector at each position: x (T, C), x_prev (C,) -> (T, C)."""
    return np.concatenate([x_prev[None, :], x[:-1]], axis=0)


def mix(x: np.ndarray, x_shift: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """mu * x_t + (1 - mu) * x_{t-1}, the interpolation inside eqs. 11-13 and 16-17."""
    return x * mu + x_shift * (1.0 - mu)


def time_mixing(x: np.ndarray, att_state: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Time mixing of one block. x (T, C) is the LayerNorm output.

    att_state (4, C): [x_prev, aa, bb, pp] before the first token. Returns (out (T, C), the new
    att_state (4, C)).
    """
    x_prev, aa, bb, pp = att_state
    xx = token_shift(x, x_prev)
    r = mix(x, xx, p["time_mix_r"]) @ p["receptance.weight"].T  # eq. 11
    k = mix(x, xx, p["time_mix_k"]) @ p["key.weight"].T  # eq. 12
    v = mix(x, xx, p["time_mix_v"]) @ p["value.weight"].T  # eq. 13
    wkv, aa, bb, pp = wkv_numba(p["decay"], p["time_first"], k, v, aa, bb, pp)  # eq. 14
    out = (sigmoid(r) * wkv) @ p["output.weight"].T  # eq. 15
    return out, np.stack([x[-1], aa, bb, pp])


def channel_mixing(x: np.ndarray, x_prev: np.ndarray, p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Channel mixing of one block. x (T, C) is the LayerNorm output, x_prev (C,) the one before.

    Returns (out (T, C), the new x_prev (C,)).
    """
    xx = token_shift(x, x_prev)
    r = mix(x, xx, p["time_mix_r"]) @ p["receptance.weight"].T  # eq. 16
    k = mix(x, xx, p["time_mix_k"]) @ p["key.weight"].T  # eq. 17
    out = sigmoid(r) * (np.square(np.maximum(k, 0.0)) @ p["value.weight"].T)  # eq. 18
    return out, x[-1]


def block(x: np.ndarray, layer_state: np.ndarray, p: dict, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """One pre-LayerNorm residual block. x (T, C); layer_state (5, C) -> (x (T, C), layer_state)."""
    new_state = np.empty_like(layer_state)
    att_out, new_state[ATT_X:PP + 1] = time_mixing(
        layer_norm(x, p["ln1.weight"], p["ln1.bias"], eps), layer_state[ATT_X:PP + 1], p["att"])
    x = x + att_out
    ffn_out, new_state[FFN_X] = channel_mixing(
        layer_norm(x, p["ln2.weight"], p["ln2.bias"], eps), layer_state[FFN_X], p["ffn"])
    return x + ffn_out, new_state


def rwkv(tokens: np.ndarray, state: np.ndarray, params: dict, config: RWKVConfig,
         head: bool = True, return_all: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
    """The whole network over tokens (T,) from state (L, 5, C).

    Returns (logits, new state): logits (T, V) when return_all, else (V,) for the last token;
    None when head is False (a prompt chunk whose logits nobody reads).
    """
    eps = config.layer_norm_eps
    x = params["emb.weight"][tokens]  # (T, C)
    x = layer_norm(x, params["ln0.weight"], params["ln0.bias"], eps)  # ln0: block 0 only
    new_state = np.empty_like(state)
    for i, p in enumerate(params["blocks"]):
        x, new_state[i] = block(x, state[i], p, eps)
    if not head:
        return None, new_state
    if not return_all:
        x = x[-1:]  # the head is the largest matrix: apply it only where logits are wanted
    logits = layer_norm(x, params["ln_out.weight"], params["ln_out.bias"], eps) @ params["head.weight"].T
    return (logits if return_all else logits[0]), new_state


class RWKV:
    """An RWKV-4 language model with float32 weights.

    weights: the model-ready dict of `rwkv_np.loading` (BlinkDL names, `att.decay` = the paper's w).
    """

    #: the parallel form reads long inputs in chunks of this many tokens, so that memory stays
    #: bounded however long the prompt; the state carries everything across chunk borders.
    chunk_size: int = 1024

    def __init__(self, weights: dict[str, np.ndarray], config: RWKVConfig | None = None):
        self.config = config or _config_from_shapes(weights)
        self.weights = weights
        self.params = _nest(weights, self.config.n_layer)

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
            steps = [tokens[i:i + self.chunk_size] for i in range(0, len(tokens), self.chunk_size)]
        elif mode == "recurrent":
            steps = [tokens[i:i + 1] for i in range(len(tokens))]
        else:
            raise ArgumentError(f"mode: expected 'parallel' or 'recurrent', got {mode!r}")
        outputs = []
        for n, chunk in enumerate(steps):
            last = n == len(steps) - 1
            logits, s = rwkv(chunk, s, self.params, self.config, head=return_all or last,
                             return_all=return_all)
            if return_all:
                outputs.append(logits)
        logits = np.concatenate(outputs) if return_all else logits
        return logits.astype(np.float32, copy=False), State(s)

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


def _config_from_shapes(weights: dict[str, np.ndarray]) -> RWKVConfig:
    n_layer = sum(1 for key in weights if key.endswith(".ln1.weight"))
    vocab_size, n_embd = weights["emb.weight"].shape
    return RWKVConfig(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size,
                      ffn_dim=weights["blocks.0.ffn.key.weight"].shape[0])


def _nest(weights: dict[str, np.ndarray], n_layer: int) -> dict:
    """Group the flat BlinkDL names into params["blocks"][i]["att"]["key.weight"] and so on."""
    params = {k: v for k, v in weights.items() if not k.startswith("blocks.")}
    params["ln0.weight"] = weights["blocks.0.ln0.weight"]
    params["ln0.bias"] = weights["blocks.0.ln0.bias"]
    params["blocks"] = []
    for i in range(n_layer):
        prefix = f"blocks.{i}."
        p: dict = {"att": {}, "ffn": {}}
        for key, value in weights.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name.startswith(("att.", "ffn.")):
                p[name[:3]][name[4:]] = value
            else:
                p[name] = value
        params["blocks"].append(p)
    return params
