"""The architectures rwkv_np runs, in one registry: detection, loading, the model and the state
consult it, never a version string.

    get("5.2")                     the Architecture of RWKVConfig.version "5.2"
    detect(names)                  the Architecture of a checkpoint, from its tensor names
    register(arch)                 add one (a new version, or a known one under other names)
    architectures()                all of them, in look-up order

An Architecture (rwkv_np/architecture.py) carries its parameter table and the names of its reference
and engine modules; the built-in ones are defined in rwkv_np/rwkv4, rwkv5, rwkv6, rwkv7.
"""

from __future__ import annotations

import importlib
from typing import Iterable

from .architecture import Architecture
from .config import RWKVConfig
from .errors import ArgumentError
from .rwkv4 import ARCH as RWKV4
from .rwkv5 import ARCH_5_1 as RWKV5_1
from .rwkv5 import ARCH_5_2 as RWKV5_2
from .rwkv6 import ARCH as RWKV6
from .rwkv7 import ARCH as RWKV7

_ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture, replace: bool = False) -> Architecture:
    """Add an architecture; its name must be new unless replace. Returns it."""
    if not isinstance(arch, Architecture):
        raise ArgumentError(f"register: expected an rwkv_np.architecture.Architecture, got {type(arch).__name__}")
    if arch.name in _ARCHITECTURES and not replace:
        raise ArgumentError(f"register: an architecture named {arch.name!r} is already registered")
    _ARCHITECTURES[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    """Remove an architecture registered under `name` (tests register their own and remove them)."""
    _ARCHITECTURES.pop(name, None)


def architectures() -> list[Architecture]:
    """Every registered architecture, in the order `detect` tries them (highest priority first)."""
    return sorted(_ARCHITECTURES.values(), key=lambda a: -a.priority)


def get(name: str) -> Architecture:
    """The architecture of RWKVConfig.version `name`."""
    try:
        return _ARCHITECTURES[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(a.name) for a in architectures())
        raise ArgumentError(f"version {str(name)[:40]!r} is not a registered architecture ({known})") from None


def detect(names: Iterable[str]) -> Architecture:
    """The architecture of a checkpoint with these tensor names: the first (by priority) whose marker
    tensor is among them, else the highest-priority one without a marker (RWKV-4)."""
    names = set(names)
    archs = architectures()
    for arch in archs:
        if arch.marker is not None and arch.marker in names:
            return arch
    return next(a for a in archs if a.marker is None)


def engine(arch: Architecture):
    """The engine class of an architecture (its module is imported now: Numba compiles there)."""
    return importlib.import_module(arch.engine).Engine


def reference(arch: Architecture):
    """The module of an architecture's plain-NumPy reference."""
    return importlib.import_module(arch.reference)


def config_from_weights(weights: dict, layer_norm_eps: float = 1e-5) -> RWKVConfig:
    """The RWKVConfig of a complete flat weights dict ({BlinkDL name: array}) of any architecture."""
    arch = detect(weights)
    dims = arch.read_dims({k: tuple(v.shape) for k, v in weights.items()}, "the weights", {})
    return arch.configure(dims, layer_norm_eps)


for _arch in (RWKV4, RWKV5_1, RWKV5_2, RWKV6, RWKV7):
    register(_arch)
