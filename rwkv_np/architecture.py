"""What rwkv_np knows about an RWKV architecture, in one object: `Architecture`.

Each architecture folder (rwkv_np/rwkv4, rwkv5, rwkv6, rwkv7) builds one from its parameter table
(`Param` rows: name, shape, paper symbol, equation, role, initialisation) and the names of its
reference and engine modules; rwkv_np.registry keeps them. Everything else derives from the table:
the shapes a loader checks, the parameter count, the nested params dict the reference takes, the
state's shapes. The loader, the model and the state consult the registry, never a version string.

Names: a checkpoint's tensors, after `Architecture.rename`, are BlinkDL's: `emb.weight`,
`blocks.{i}.<block parameter>` (ln0 is stored in block 0), `ln_out.*`, `head.weight`.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from itertools import islice
from math import prod
from typing import Callable, Iterator, Mapping

import numpy as np

from .config import RWKVConfig
from .errors import CheckpointError

NORMS = ("ln0", "ln1", "ln2", "ln_out", "ln_x")  # their .weight is a norm's scale, kept under "weight"


@dataclass(frozen=True)
class Param:
    """One row of a parameter table.

    name:   BlinkDL's name: inside `blocks.{i}.` for a block parameter ("att.key.weight"), else
            the whole name ("emb.weight"; "ln0.weight" is stored as "blocks.0.ln0.weight")
    shape:  each size a dimension's letter ("C"), a multiple of one ("5*Dm") or a number
    symbol: the paper's symbol;  eq: the equation (or section) it enters;  role: what it does
    init:   the rule rwkv_np.training.init applies ("-": not trained here)
    first_block: False for a parameter that block 0 lacks (RWKV-7's value residual)
    """

    name: str
    shape: tuple
    symbol: str
    eq: str
    role: str
    init: str = "-"
    first_block: bool = True

    def size(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The shape in numbers, for the sizes `dims` ({"C": 768, ...}; RWKVConfig.dims)."""
        def one(term) -> int:
            if isinstance(term, int):
                return term
            factor, _, letter = term.rpartition("*")
            return (int(factor) if factor else 1) * dims[letter]
        return tuple(one(t) for t in self.shape)

    @property
    def path(self) -> tuple[str, ...]:
        """Where it sits in the nested params dict: ("att", "key") for att.key.weight, ("ln1", "weight")."""
        parts = self.name.split(".")
        if parts[-1] == "weight" and len(parts) > 1 and parts[-2] not in NORMS:
            parts = parts[:-1]
        return tuple(parts)


def _same_name(name: str) -> str:
    return name


@dataclass(frozen=True)
class Architecture:
    """An RWKV architecture: its parameter table, how to recognise and size its checkpoints, and where
    its reference and its engine are.

    name:       what RWKVConfig.version holds ("4", "5.1", "5.2", "6", "7")
    title:      how messages name it ("RWKV-4")
    embed, block, out: the parameter table: before the blocks, per block, after the blocks
    read_dims:  the sizes, read off a checkpoint's {name: shape} (before any check of the table):
                read_dims(shapes, where, original) -> {"V", "C", "L", "F", ...}; raises CheckpointError
    reference:  the module of its plain-NumPy reference (forward, step, initial_state)
    engine:     the module of its compiled fast path (class Engine(weights, config))
    marker:     a tensor name only its checkpoints hold (None: the architecture of a checkpoint that
                has no other's marker); `priority` orders the look-up (highest first)
    rename:     a checkpoint's names -> the table's (identity for BlinkDL's names)
    state_rows: vectors per layer in State.data: 5 for RWKV-4 (two token shifts, aa, bb, pp), else 2
    matrix_state: whether State.wkv holds an (L, H, N, N) matrix per head
    quantizable: whether its engine reads int8 and ggml-block matrices (load_model's quantize, keep_blocks)
    lora:       the dimension letters that are LoRA ranks (RWKVConfig.lora)
    ln_x_eps:   the epsilon of ln_x for BlinkDL's checkpoints (a format may say otherwise)
    validate:   checks of the loaded weights beyond the table: validate(weights, where, original)
    """

    name: str
    title: str
    embed: tuple[Param, ...]
    block: tuple[Param, ...]
    out: tuple[Param, ...]
    read_dims: Callable
    reference: str
    engine: str
    marker: str | None = None
    priority: int = 0
    rename: Callable[[str], str] = _same_name
    state_rows: int = 2
    matrix_state: bool = True
    quantizable: bool = False
    lora: tuple[str, ...] = ()
    ln_x_eps: float = 0.0
    validate: Callable | None = field(default=None, compare=False)

    # ---- the table, in numbers ---------------------------------------------------------------

    @staticmethod
    def flat_name(p: Param, layer: int | None = None) -> str:
        """The name in a checkpoint: ln0 is stored inside block 0, block parameters under blocks.{i}."""
        if layer is not None:
            return f"blocks.{layer}.{p.name}"
        return "blocks.0." + p.name if p.name.startswith("ln0.") else p.name

    def params_of(self, n_layer: int) -> Iterator[tuple[str, Param, int | None]]:
        """(flat name, Param, layer or None) of every parameter of an n_layer model, in network order."""
        yield from ((self.flat_name(p), p, None) for p in self.embed)
        for i in range(n_layer):
            yield from ((self.flat_name(p, i), p, i) for p in self.block if i > 0 or p.first_block)
        yield from ((self.flat_name(p), p, None) for p in self.out)

    def shapes(self, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Every tensor of a checkpoint with these sizes (RWKVConfig.dims), flat name -> shape."""
        return {name: p.size(dims) for name, p, _ in self.params_of(dims["L"])}

    def n_params(self, config: RWKVConfig) -> int:
        return sum(prod(s) for s in self.shapes(config.dims).values())

    def configure(self, dims: Mapping[str, int], layer_norm_eps: float = 1e-5,
                  ln_x_eps: float | None = None) -> RWKVConfig:
        """The RWKVConfig of a checkpoint with these sizes."""
        return RWKVConfig(n_layer=dims["L"], n_embd=dims["C"], vocab_size=dims["V"], ffn_dim=dims["F"],
                          layer_norm_eps=layer_norm_eps, version=self.name, n_head=dims.get("H", 0),
                          head_size=dims.get("N", 0),
                          ln_x_eps=self.ln_x_eps if ln_x_eps is None else ln_x_eps,
                          lora=tuple((k, dims[k]) for k in self.lora if k in dims))

    def state_shapes(self, config: RWKVConfig) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """(State.data's shape, State.wkv's shape or None) of a model of this config."""
        c = config
        wkv = (c.n_layer, c.n_head, c.head_size, c.head_size) if self.matrix_state else None
        return (c.n_layer, self.state_rows, c.n_embd), wkv

    def initial(self, config: RWKVConfig) -> tuple[np.ndarray, ...]:
        """The state before any token, as the reference's initial_state makes it: (data,) or (data, wkv)."""
        c = config
        sizes = (c.n_layer, c.n_embd) + ((c.n_head, c.head_size) if self.matrix_state else ())
        state = importlib.import_module(self.reference).initial_state(*sizes)
        return tuple(state) if isinstance(state, tuple) else (state,)

    # ---- flat checkpoint names <-> the nested dict of the reference ----------------------------

    def nest(self, flat: Mapping[str, np.ndarray], n_layer: int | None = None, dtype=np.float32) -> dict:
        """Flat checkpoint names -> the nested dict the reference takes:
        {"emb", "ln0": {weight, bias}, "blocks": [{"ln1", "att": {...}, "ln2", "ffn"}, ...], "ln_out", "head"},
        each array in the table's shape (a stored (1, 1, C) vector as (C,)) and of `dtype` (None: as
        given); no copy where none is needed."""
        def put(tree: dict, p: Param, value) -> None:
            *parents, last = p.path
            for key in parents:
                tree = tree.setdefault(key, {})
            tree[last] = value

        dims = None
        if n_layer is None:
            dims = self._dims_of(flat)
            n_layer = dims["L"]
        params: dict = {"blocks": [{} for _ in range(n_layer)]}
        for name, p, layer in self.params_of(n_layer):
            a = np.asarray(flat[name])
            if a.ndim != len(p.shape):  # size-1 axes as a checkpoint stores them: squeezed
                dims = dims or self._dims_of(flat)
                a = a.reshape(p.size(dims))
            put(params if layer is None else params["blocks"][layer], p,
                a if dtype is None else np.ascontiguousarray(a, dtype=dtype))
        return params

    def _dims_of(self, flat: Mapping[str, np.ndarray]) -> dict[str, int]:
        return self.read_dims({k: np.shape(v) for k, v in flat.items()}, "the weights", {})

    def flatten(self, params: dict) -> dict[str, np.ndarray]:
        """The inverse of `nest`: nested params -> flat checkpoint names (same arrays)."""
        def get(tree: dict, p: Param):
            for key in p.path:
                tree = tree[key]
            return tree

        return {name: get(params if layer is None else params["blocks"][layer], p)
                for name, p, layer in self.params_of(len(params["blocks"]))}


def blocks_prefix(prefix: str) -> Callable[[str], str]:
    """A rename for checkpoints that call the blocks `{prefix}{i}.` instead of `blocks.{i}.`."""
    pattern = re.compile("^" + re.escape(prefix) + r"(?=\d)")
    return lambda name: pattern.sub("blocks.", name)


# ---- reading the sizes off a checkpoint ----------------------------------------------------------

_LAYER = re.compile(r"blocks\.(\d{1,9})\.")  # a longer number is not a layer index (and is reported as
# an unexpected tensor): a name cannot make the loader count to 10**10


def common_dims(shapes: Mapping[str, tuple], where: str, original: Mapping[str, str], title: str) -> dict[str, int]:
    """V, C (emb.weight), L (the blocks present, which must run 0..L-1) and F (blocks.0.ffn.key.weight):
    the sizes every RWKV has. shapes: {table name: shape}; original: table name -> the checkpoint's."""
    def named(name: str) -> str:
        return original.get(name, name)

    emb = shapes.get("emb.weight")
    if emb is None:
        found = ", ".join(sorted(original.get(k, k) for k in shapes)[:6]) or "no tensors at all"
        raise CheckpointError(f"{where}: no emb.weight tensor, so not an {title} checkpoint (found: {found})")
    if len(emb) != 2 or 0 in emb:
        raise CheckpointError(f"{where}: tensor {named('emb.weight')} has shape {tuple(emb)}, expected "
                              "(vocab_size, n_embd)")
    layers = {int(m.group(1)) for k in shapes if (m := _LAYER.match(k))}
    if not layers:
        raise CheckpointError(f"{where}: no blocks.N tensors; an {title} checkpoint has at least one block")
    n_layer = max(layers) + 1
    if len(layers) != n_layer:
        # the layer count a name claims is not trusted: only the blocks present are counted, and
        # the first gaps are found in at most len(layers) + 5 steps, whatever the largest index
        missing = list(islice((i for i in range(n_layer) if i not in layers), 5))
        raise CheckpointError(f"{where}: block indices must run 0..{n_layer - 1} without gaps; blocks "
                              f"{missing}{' and more' if n_layer - len(layers) > 5 else ''} are missing")
    ffn_key = shapes.get("blocks.0.ffn.key.weight")
    if ffn_key is None:
        raise CheckpointError(f"{where}: missing tensor blocks.0.ffn.key.weight (needed for the FFN width)")
    if len(ffn_key) != 2 or ffn_key[0] == 0:
        raise CheckpointError(f"{where}: tensor {named('blocks.0.ffn.key.weight')} has shape {tuple(ffn_key)}, "
                              f"expected (ffn_dim, {emb[1]})")
    return {"V": emb[0], "C": emb[1], "L": n_layer, "F": ffn_key[0]}


def squeezed(shapes: Mapping[str, tuple], name: str, where: str, title: str) -> tuple[int, ...]:
    """The shape of tensor `name` without its size-1 axes, or a CheckpointError if it is missing."""
    if name not in shapes:
        raise CheckpointError(f"{where}: missing tensor {name} ({title})")
    return tuple(d for d in shapes[name] if d != 1) or (1,)
