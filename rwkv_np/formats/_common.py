"""What every checkpoint reader shares: the error it raises and the lazy tensor it returns.

Readers only parse and bounds-check headers; they return `LazyTensor`s pointing into the file's bytes
so that names and shapes can be validated before a single weight is copied (a hostile header can
claim any size it likes, but nothing is allocated until the claim has been checked against the file).
"""

import mmap
from dataclasses import dataclass
from math import prod

import numpy as np

Buffer = bytes | mmap.mmap  # what readers parse: the whole file's bytes


class BadFile(Exception):
    """A problem in a checkpoint's bytes. `rwkv_np.loading` adds the path and raises CheckpointError."""


# dtype name -> (numpy dtype of the stored elements, bytes per element). bfloat16 is read as its raw
# uint16 bit pattern and widened by a shift, since numpy has no bfloat16.
STORED_DTYPES = {"float32": ("<f4", 4), "float16": ("<f2", 2), "bfloat16": ("<u2", 2)}

MAX_DIMS = 8
# Any size a header claims is bounded before it is printed or multiplied: the largest real one (a
# vocabulary of 65536, or a flattened embedding of 2**29 elements) is far below this, and a
# non-empty tensor is checked against the bytes in the file anyway.
MAX_DIM = 1 << 40
MAX_INT_DIGITS = 19  # integers in JSON headers: every real one (sizes, offsets) is below 2**63


@dataclass(frozen=True)
class LazyTensor:
    """A tensor inside a checkpoint's bytes, not read yet.

    shape:   the tensor's shape
    dtype:   "float32", "float16" or "bfloat16"
    buf:     the whole file's bytes (an mmap or bytes)
    offset:  byte offset of element [0, ..., 0] in buf
    strides: element strides, or None when C-contiguous
    source:  the file whose bytes buf holds, when known (set by rwkv_np.loading, not the readers)
    """

    shape: tuple[int, ...]
    dtype: str
    buf: object
    offset: int
    strides: tuple[int, ...] | None = None
    source: object = None

    def __setstate__(self, state: object) -> None:
        # a pickle's BUILD opcode would otherwise rewrite offset/shape after the bounds checks
        raise BadFile("the pickle tries to modify a tensor after building it; refusing to load it")

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * STORED_DTYPES[self.dtype][1]

    def read(self) -> np.ndarray:
        """The tensor as a new float32 C-contiguous array (one conversion, no per-element Python)."""
        np_dtype, itemsize = STORED_DTYPES[self.dtype]
        n = self.numel
        if n == 0:
            return np.zeros(self.shape, np.float32)
        if self.strides is None:
            view = np.frombuffer(self.buf, np_dtype, count=n, offset=self.offset).reshape(self.shape)
        else:
            extent = 1 + sum((d - 1) * s for d, s in zip(self.shape, self.strides))
            base = np.frombuffer(self.buf, np_dtype, count=extent, offset=self.offset)
            view = np.lib.stride_tricks.as_strided(
                base, self.shape, tuple(s * itemsize for s in self.strides), writeable=False)
        return to_float32(view, self.dtype)

    def stored(self, copy: bool) -> np.ndarray:
        """The tensor in its stored dtype (bfloat16 as its uint16 bit pattern), C-contiguous: a
        read-only view into buf when copy is False and the bytes allow it (contiguous, aligned),
        else a new array."""
        np_dtype, itemsize = STORED_DTYPES[self.dtype]
        if self.numel == 0:
            return np.zeros(self.shape, np_dtype)
        if self.strides is not None or self.offset % itemsize:
            wide = self.read()  # exact, and narrowing back is exact too
            if self.dtype == "bfloat16":
                return (wide.view(np.uint32) >> 16).astype(np.uint16)
            return wide.astype(np_dtype, copy=False)
        view = np.frombuffer(self.buf, np_dtype, count=self.numel, offset=self.offset).reshape(self.shape)
        if copy:
            return view.copy()
        view.flags.writeable = False
        return view


def to_float32(view: np.ndarray, dtype: str) -> np.ndarray:
    """Widen stored elements to a fresh float32 C-contiguous array; bf16 is the top half of a float32."""
    if dtype == "bfloat16":
        out = np.empty(view.shape, np.uint32)
        np.left_shift(view, 16, out=out, dtype=np.uint32)
        return out.view(np.float32)
    return np.array(view, dtype=np.float32, order="C", copy=True)


def check_shape(shape: object, what: str) -> tuple[int, ...]:
    """A shape read from a header as a tuple of non-negative Python ints, or BadFile."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS:
        raise BadFile(f"{what}: shape must be a list of at most {MAX_DIMS} sizes, found {describe(shape)}")
    for d in shape:
        if type(d) is not int or d < 0:
            raise BadFile(f"{what}: shape {describe(shape)} has a size that is not a non-negative integer")
        if d > MAX_DIM:
            raise BadFile(f"{what}: shape {describe(shape)} has a size above 2**40; no real tensor has one")
    return tuple(shape)


def json_int(digits: str) -> int:
    """json.loads' parse_int: refuse an integer too long for any real header before converting it
    (Python's int() of a 4300-digit string is quadratic, and str() of it raises)."""
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise BadFile(f"an integer of {len(digits.lstrip('-'))} digits (sizes and offsets in real files have "
                      f"at most {MAX_INT_DIGITS})")
    return int(digits)


def describe(obj: object, limit: int = 80) -> str:
    """A short, safe description of a value from a hostile file, for error messages: its cost does
    not grow with the value (no repr of a huge integer, a long string or a deep or shared structure)."""
    text = _short(obj, 2, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(obj: object, levels: int, limit: int) -> str:
    if obj is None or isinstance(obj, (bool, float)):
        return repr(obj)
    if isinstance(obj, int):
        return repr(int(obj)) if obj.bit_length() <= 64 else f"<integer of {obj.bit_length()} bits>"
    if isinstance(obj, (str, bytes)):
        return repr(obj[:limit]) + ("..." if len(obj) > limit else "")
    if isinstance(obj, (list, tuple, dict)):
        kind = type(obj).__name__
        if len(obj) > 8 or (levels == 0 and obj):
            return f"<{kind} of {len(obj)} items>"
        if isinstance(obj, dict):
            return "{" + ", ".join(f"{_short(k, levels - 1, limit)}: {_short(v, levels - 1, limit)}"
                                   for k, v in obj.items()) + "}"
        inner = ", ".join(_short(x, levels - 1, limit) for x in obj)
        return f"[{inner}]" if isinstance(obj, list) else f"({inner}{',' if len(obj) == 1 else ''})"
    return f"<{type(obj).__name__}>"
