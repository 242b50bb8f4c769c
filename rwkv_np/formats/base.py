"""What every checkpoint reader shares: the file it reads, the error it raises, the lazy tensor it
returns and the `Contents` it hands the loader.

Readers only parse and bounds-check headers; they return `LazyTensor`s pointing into the file's bytes
so that names and shapes can be validated before a single weight is copied (a hostile header can
claim any size it likes, but nothing is allocated until the claim has been checked against the file).
A format's quirks (another naming, tensors its writer transformed) travel with its Contents, as
functions the loader applies: `rename` and `convert`.
"""

import mmap
import os
import threading
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CheckpointError


class FileBytes:
    """A checkpoint file as the readers see it: its length when opened, and byte ranges read with
    pread into new buffers (`fb[a:b]` is bytes; `readinto` fills a numpy array).

    The file is never memory-mapped: a mapped file that another process truncates kills the
    reader with SIGBUS at the next access to a page past the new end, whatever we check before.
    A read that finds fewer bytes than the file had when opened raises CheckpointError instead.
    `changed()` compares the file's size and modification time with those seen when it was opened,
    to detect a rewrite in place (see `FileRows` for what it cannot detect).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb", buffering=0)
            st = os.fstat(self._file.fileno())
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read the file ({e.strerror or e})") from None
        self.size, self.stamp = st.st_size, (st.st_size, st.st_mtime_ns)
        self._lock = threading.Lock()  # for the seek + read fallback where os.preadv is missing

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("FileBytes supports only contiguous slices")
        start, stop, _ = key.indices(self.size)
        if stop <= start:
            return b""
        if hasattr(os, "pread"):  # bytes made once, not a bytearray copied
            try:
                data = os.pread(self._file.fileno(), stop - start, start)
            except OSError as e:
                raise CheckpointError(f"{self.path}: cannot read the file ({e.strerror or e})") from None
            if len(data) == stop - start:
                return data
        out = bytearray(stop - start)  # a short read (at most ~2 GiB per call), or no os.pread
        self.readinto(out, start)
        return bytes(out)

    def readinto(self, out, offset: int) -> None:
        """Fill `out` (a writable buffer: bytearray, C-contiguous numpy array) from `offset`."""
        try:
            got = self.read_at(out, offset)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read the file ({e.strerror or e})") from None
        if got < memoryview(out).nbytes:
            raise CheckpointError(f"{self.path}: the file is shorter than when it was opened (truncated "
                                  "while being read?); refusing it")

    def read_at(self, out, offset: int) -> int:
        """Read into the whole of `out` from `offset`, with pread where os.preadv exists (seek + read
        under a lock elsewhere); the number of bytes read, fewer only at the end of the file.
        OSError on a failed read."""
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):  # Linux reads at most ~2 GiB per call
            if hasattr(os, "preadv"):
                got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            else:
                with self._lock:
                    self._file.seek(offset + done)
                    got = self._file.readinto(view[done:])
            if not got:
                break
            done += got
        return done

    def reopen(self) -> "FileBytes":
        """A second handle on the same file (the same inode, even if the path now names another
        file), with the size and time seen when this one was opened."""
        other = object.__new__(FileBytes)
        other.path, other.size, other.stamp, other._lock = self.path, self.size, self.stamp, threading.Lock()
        other._file = os.fdopen(os.dup(self._file.fileno()), "rb", buffering=0)
        return other

    def changed(self) -> bool:
        """Whether the file's size or modification time differ from when it was opened."""
        try:
            st = os.fstat(self._file.fileno())
        except OSError:
            return True
        return (st.st_size, st.st_mtime_ns) != self.stamp

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FileBytes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Buffer = bytes | mmap.mmap | FileBytes  # what readers parse: the whole file's bytes


def elements(buf: Buffer, np_dtype: str, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """The elements of `np_dtype` and `shape` at `offset` of buf: a read-only view of bytes or an
    mmap, or a new writable array, owning its memory, read from a FileBytes."""
    if isinstance(buf, FileBytes):
        out = np.empty(shape, np_dtype)
        buf.readinto(out, offset)
        return out
    return np.frombuffer(buf, np_dtype, count=prod(shape), offset=offset).reshape(shape)


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
    buf:     the whole file's bytes (a FileBytes, bytes or an mmap)
    offset:  byte offset of element [0, ..., 0] in buf
    strides: element strides, or None when C-contiguous
    source:  the FileBytes buf is, when the tensor is read from a file (set by formats.read_file)
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
        if self.strides is None and isinstance(self.buf, FileBytes):
            if self.dtype == "float32":
                return elements(self.buf, np_dtype, self.shape, self.offset)  # a new array already
            # 16-bit: a block at a time through a small buffer that stays in the cache, rather than
            # a whole-tensor temporary (its page faults and a second pass over memory)
            out = np.empty(self.shape, np.float32)
            flat, block = out.reshape(-1), min(n, 1 << 18)
            scratch = np.empty(block, np_dtype)
            for start in range(0, n, block):
                part = scratch[:min(block, n - start)]
                self.buf.readinto(part, self.offset + start * itemsize)
                if self.dtype == "bfloat16":
                    np.left_shift(part, 16, out=flat[start:start + part.size].view(np.uint32), dtype=np.uint32)
                else:
                    flat[start:start + part.size] = part
            return out
        if self.strides is None:
            view = elements(self.buf, np_dtype, self.shape, self.offset)
        else:
            extent = 1 + sum((d - 1) * s for d, s in zip(self.shape, self.strides))
            base = elements(self.buf, np_dtype, (extent,), self.offset)
            view = np.lib.stride_tricks.as_strided(
                base, self.shape, tuple(s * itemsize for s in self.strides), writeable=False)
        return to_float32(view, self.dtype)

    def stored(self, copy: bool) -> np.ndarray:
        """The tensor in its stored dtype (bfloat16 as its uint16 bit pattern), C-contiguous.

        copy=True: a new writable array (from a file: read once, straight into it).
        copy=False: read-only; a view into buf when buf is bytes or an mmap and the bytes allow it
        (contiguous, aligned); from a file, the new array (owning its memory, unlike a view),
        marked read-only like a view would be."""
        np_dtype, itemsize = STORED_DTYPES[self.dtype]
        if self.numel == 0:
            return np.zeros(self.shape, np_dtype)
        if self.strides is not None or (self.offset % itemsize and not isinstance(self.buf, FileBytes)):
            wide = self.read()  # exact, and narrowing back is exact too
            if self.dtype == "bfloat16":
                return (wide.view(np.uint32) >> 16).astype(np.uint16)
            return wide.astype(np_dtype, copy=False)
        a = elements(self.buf, np_dtype, self.shape, self.offset)
        if copy and not a.flags.writeable:
            return a.copy()
        if not copy:
            a.flags.writeable = False
        return a


def to_float32(view: np.ndarray, dtype: str) -> np.ndarray:
    """Widen stored elements to a fresh float32 C-contiguous array; bf16 is the top half of a float32."""
    if dtype == "bfloat16":
        out = np.empty(view.shape, np.uint32)
        np.left_shift(view, 16, out=out, dtype=np.uint32)
        return out.view(np.float32)
    return np.array(view, dtype=np.float32, order="C", copy=True)


def check_shape(shape: object, what: str, kind: str = "shape") -> tuple[int, ...]:
    """A shape (or strides: kind) read from a header as a tuple of non-negative Python ints, each at
    most MAX_DIM, or BadFile."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS:
        raise BadFile(f"{what}: {kind} must be a list of at most {MAX_DIMS} sizes, found {describe(shape)}")
    for d in shape:
        if type(d) is not int or d < 0:
            raise BadFile(f"{what}: {kind} {describe(shape)} has a size that is not a non-negative integer")
        if d > MAX_DIM:
            raise BadFile(f"{what}: {kind} {describe(shape)} has a size above 2**40; no real tensor has one")
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


@dataclass(frozen=True)
class Derived:
    """A tensor of the architecture's table, as a format holds it: the stored tensor `source`, and the
    function that turns its float32 values into the parameter (None: the values as they are) with
    the shape that results. rwkv.cpp's converter, for instance, stored RWKV-4's ln w as -w."""

    source: LazyTensor
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass
class Contents:
    """What a reader found in a checkpoint, for rwkv_np.loading.

    format:   "pth", "hf-bin", "hf-safetensors", "safetensors" or "rwkv.cpp"
    tensors:  {name as the file spells it: LazyTensor}
    rename:   the file's names -> BlinkDL's (Hugging Face's names), before the architecture is detected
    convert:  convert(architecture name, name, tensor) -> [(name, Derived), ...]: the parameters a
              stored tensor holds (one, or several for a tensor the writer concatenated)
    settings: settings(architecture name) -> RWKVConfig fields the file fixes (layer_norm_eps, ln_x_eps)
    claims:   (metadata key, RWKVConfig field, value): sizes the file's metadata states, checked
              against the weights; claims_from names the metadata ("config.json")
    only:     the architectures the format can hold (None: any), and why (only_why)
    tokenizer_dir: where a tokenizer.json beside the checkpoint would be
    """

    format: str
    tensors: dict
    rename: Callable[[str], str] | None = None
    convert: Callable | None = None
    settings: Callable[[str], dict] = field(default=lambda arch: {})
    claims: tuple = ()
    claims_from: str = ""
    only: tuple[str, ...] | None = None
    only_why: str = ""
    tokenizer_dir: Path | None = None


class FileRows:
    """A (V, C) matrix left in its checkpoint file, read a few rows at a time: the embedding, of
    which a model reads one row per token. `rows[tokens]` is a new (T, C) array (`rows[i]`: (C,))
    in the stored dtype (bfloat16 as uint16); `np.asarray(rows)` reads the whole matrix.

    Rows are read with pread, not through a memory map: a mapped file's pages count in the
    process's memory, the kernel maps them in large folios (up to 2 MiB for one 1.5 KB row), and
    a mapped file truncated by another process kills this one with SIGBUS.

    A file that changes while the model uses it (it is read from the file the checkpoint was
    loaded from, the same inode even if the path now names another file):
    - truncated, or grown or rewritten in place: the next read raises CheckpointError - a short
      read, or fstat showing another size or modification time than when the load began;
    - replaced by a new file (rename, or delete and write, as most tools save): not seen, and no
      harm: the rows still come from the old file, which stays readable while it is open;
    - not detected: a rewrite in place that keeps the size and the modification time (a tool that
      restores the time, or a write within the same clock tick as the file's previous write),
      and a write that lands between the read and the fstat check (those rows are from before).
    """

    def __init__(self, source: FileBytes | Path, offset: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        self._fb = source.reopen() if isinstance(source, FileBytes) else FileBytes(Path(source))
        self.path, self.offset = self._fb.path, offset
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.ndim, self.size = 2, shape[0] * shape[1]
        self.nbytes = self.size * self.dtype.itemsize
        self._row_bytes = shape[1] * self.dtype.itemsize

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(self.shape[0])[index]
        idx = np.asarray(index)
        if idx.dtype.kind not in "iu" or idx.ndim > 1:
            raise IndexError(f"FileRows: index with an int or a 1-D array of ints, got {idx.dtype} {idx.shape}")
        n_rows = self.shape[0]
        rows = idx.reshape(-1).astype(np.int64, copy=False)
        rows = np.where(rows < 0, rows + n_rows, rows)  # negative indices count from the end
        bad = (rows < 0) | (rows >= n_rows)
        if bad.any():
            raise IndexError(f"FileRows: row {int(idx.reshape(-1)[np.argmax(bad)])} is out of range for {n_rows} rows")
        out = np.empty((rows.size, self.shape[1]), self.dtype)
        for n, i in enumerate(rows.tolist()):
            self._read_into(out[n], self.offset + i * self._row_bytes)
        self._check_unchanged()
        return out[0] if idx.ndim == 0 else out

    def _read_into(self, row: np.ndarray, at: int) -> None:
        try:
            got = self._fb.read_at(row, at)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read the embedding from the file ({e.strerror or e})") from None
        if got != row.nbytes:
            raise CheckpointError(f"{self.path}: the file is shorter than when it was loaded (truncated while in use?)")

    def _check_unchanged(self) -> None:
        if self._fb.changed():
            raise CheckpointError(f"{self.path}: the file changed (size or modification time) since it was loaded, "
                                  "and the model reads its embedding from it; load it again")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = np.empty(self.shape, self.dtype)
        if a.size:
            self._read_into(a.reshape(-1), self.offset)  # the rows are contiguous in the file
            self._check_unchanged()
        return a if dtype is None else a.astype(dtype, copy=False)

    def copy(self) -> np.ndarray:
        """The whole matrix, read into memory."""
        return np.asarray(self)

    def __repr__(self) -> str:
        return f"FileRows({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"
