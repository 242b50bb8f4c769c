"""The recurrent state: everything the network remembers of the tokens it has read, as a value.

RWKV-4 (rwkv_np/rwkv4/reference.py): `data` (L, 5, C), per layer five vectors of C channels:
    0  att_x_prev   the LayerNorm output of the previous token, for time mixing's token shift
    1  aa           WKV numerator   (a_t of eq. 14's recurrence, scaled by e^-pp)
    2  bb           WKV denominator (b_t, scaled by e^-pp)
    3  pp           the running maximum exponent that keeps aa and bb finite
    4  ffn_x_prev   the LayerNorm output of the previous token, for channel mixing's token shift
RWKV-5, 6 and 7: a pair, `data` (L, 2, C), the two token-shift vectors (0 att_x_prev, 1 ffn_x_prev),
and `wkv` (L, H, N, N), one N x N matrix per head. Each architecture says which (rwkv_np.registry).
Its size does not depend on how many tokens were read: this is what makes RWKV an RNN.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import registry
from .config import RWKVConfig
from .errors import ArgumentError, ModelError
from .files import open_regular

ARRAY_NAME = "rwkv_np_state"
WKV_NAME = "rwkv_np_wkv"  # the matrix-valued state of RWKV-5/6/7, a second array of the same archive
#: the largest state file we read: 256x the state of the largest RWKV-4 (14B: 40 layers x 5 x 5120
#: float32 = 4 MB). A bigger header is not a state any released model can have.
MAX_STATE_BYTES = 1 << 30
_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class State:
    """An immutable snapshot; `data` is (n_layer, 5, C) float32 and read-only (RWKV-4), or, with
    `wkv` (n_layer, H, N, N) given (RWKV-5/6/7), `data` is (n_layer, 2, C).

    The model never modifies a State: forward() returns a new one, so an old state can be kept
    and continued later (forking a conversation) at no cost.
    """

    data: np.ndarray
    wkv: np.ndarray | None = None

    def __post_init__(self):
        rows = 5 if self.wkv is None else 2
        data = _checked_array(self.data, "state", f"(n_layer, {rows}, C)",
                              lambda s: len(s) == 3 and s[1] == rows)
        object.__setattr__(self, "data", data)
        if self.wkv is not None:
            wkv = _checked_array(self.wkv, "state wkv", f"({data.shape[0]}, H, N, N)",
                                 lambda s: len(s) == 4 and s[0] == data.shape[0] and s[2] == s[3])
            object.__setattr__(self, "wkv", wkv)

    @classmethod
    def initial(cls, config: RWKVConfig) -> "State":
        """The state before any token of a model of this config, as its architecture's reference
        defines it (RWKV-4: zeros and an empty running maximum; later: zero shifts and matrices)."""
        return cls(*registry.get(config.version).initial(config))

    @property
    def n_layer(self) -> int:
        return self.data.shape[0]

    @property
    def n_embd(self) -> int:
        return self.data.shape[2]

    def copy(self) -> "State":
        """A State is immutable, so a copy is only needed to hand someone a separate object."""
        return State(self.data, self.wkv)

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to exactly `path` (an .npz archive holding one float32 array).

        The file is written beside its destination under a temporary name and renamed over it,
        so an interrupted save leaves either the old file or the new one, never half of one.
        """
        path = _state_path(path)
        folder = path.parent
        if not folder.is_dir():
            raise ArgumentError(f"{path}: cannot write the state file: the folder {folder} does not exist")
        if path.is_dir():
            raise ArgumentError(f"{path}: cannot write the state file: it is a folder")
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private
            with os.fdopen(fd, "wb") as f:
                # a file object, not a name: np.savez would append ".npz" to a name
                arrays = {ARRAY_NAME: self.data} if self.wkv is None else {ARRAY_NAME: self.data,
                                                                          WKV_NAME: self.wkv}
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            raise ArgumentError(f"{path}: cannot write the state file ({e.strerror or e})") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    @classmethod
    def load(cls, path: str | os.PathLike) -> "State":
        """Read a state written by `save`.

        The file is untrusted: it must be a regular file (a FIFO or device is refused without
        reading it), an uncompressed .npz whose array header says float32 (n_layer, 5, C) and
        whose size matches that header exactly, all checked before any array memory is
        allocated. Memory used is therefore at most the file's own size (and MAX_STATE_BYTES).
        """
        path = _state_path(path)
        f, size = open_regular(path, f"state file {path}")
        with f:
            data, wkv = _read_state_array(f, size, path)
        try:
            return cls(data, wkv)
        except ArgumentError as e:
            raise ArgumentError(f"{path}: {e}") from None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, State) and np.array_equal(self.data, other.data)
                and (self.wkv is None) == (other.wkv is None)
                and (self.wkv is None or np.array_equal(self.wkv, other.wkv)))

    __hash__ = None  # type: ignore[assignment]


def _checked_array(value, what: str, expected: str, shape_ok) -> np.ndarray:
    """A private read-only float32 copy of value, after checking its type, shape and finiteness."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nested lists and the like
        raise ArgumentError(f"{what}: expected an array of shape {expected}, got {type(value).__name__} "
                            f"({e})") from None
    if arr.dtype.kind not in "fiu":
        # complex would silently lose its imaginary part, strings and records have no meaning here
        raise ArgumentError(f"{what}: expected real numbers (float32), got dtype {arr.dtype}")
    if not shape_ok(arr.shape) or arr.size == 0:
        raise ArgumentError(f"{what}: expected an array of shape {expected}, got {arr.shape}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused below
        data = np.array(arr, dtype=np.float32)  # private copy
    if not np.isfinite(data).all():
        raise ArgumentError(f"{what}: contains NaN or infinite values")
    data.flags.writeable = False
    return data


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _state_path(path) -> Path:
    if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
        raise ArgumentError(f"state file path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if str(path) in ("", "."):
        raise ArgumentError("state file path: empty")
    return path


def _read_state_array(f, file_size: int, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(data, wkv) of an open state file: the (n_layer, 5, C) float32 array and None (RWKV-4), or
    the (n_layer, 2, C) and (n_layer, H, N, N) arrays (RWKV-5/6/7), each checked before it is read."""
    what = f"{path}: not an rwkv_np state file"
    if file_size > MAX_STATE_BYTES + (1 << 20):  # the array and the archive's few hundred bytes around it
        raise ArgumentError(f"{what}: {file_size} bytes, more than the state of any RWKV-4 model needs")
    try:
        if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
            raise ArgumentError(f"{what}: it is a single .npy array, not the .npz archive State.save writes")
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            names = set(zf.namelist())
            if ARRAY_NAME + ".npy" not in names:
                raise ArgumentError(f"{what} (no '{ARRAY_NAME}' array)")
            if WKV_NAME + ".npy" not in names:
                return _read_member(zf, ARRAY_NAME, file_size, path, lambda s: s[1] == 5, "(n_layer, 5, C)"), None
            data = _read_member(zf, ARRAY_NAME, file_size, path, lambda s: s[1] == 2, "(n_layer, 2, C)")
            wkv = _read_member(zf, WKV_NAME, file_size, path, lambda s: s[0] == data.shape[0] and s[2] == s[3],
                               f"({data.shape[0]}, H, N, N)", ndim=4)
            return data, wkv
    except ArgumentError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError) as e:  # zipfile and numpy's header parser raise all of these on bad bytes
        raise ArgumentError(f"{path}: not a valid state file ({type(e).__name__}: {str(e)[:200]})") from None


def _read_member(zf: zipfile.ZipFile, name: str, file_size: int, path: Path, shape_ok, expected: str,
                 ndim: int = 3) -> np.ndarray:
    what = f"{path}: not an rwkv_np state file"
    info = zf.getinfo(name + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        # State.save stores the arrays uncompressed; a compressed member could expand
        # to any size, stored bytes cannot exceed the file
        raise ArgumentError(f"{what}: its '{name}' array is compressed; State.save writes it uncompressed")
    if info.file_size > file_size or info.compress_size != info.file_size:
        raise ArgumentError(f"{path}: corrupt state file: the archive claims {info.file_size} bytes for "
                            f"'{name}' in a file of {file_size} bytes")
    with zf.open(info) as m:
        return _read_npy_member(m, info.file_size, path, shape_ok, expected, ndim)


def _read_npy_member(m, member_size: int, path: Path, shape_ok=lambda s: s[1] == 5,
                     expected: str = "(n_layer, 5, C)", ndim: int = 3) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(m)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(m)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(m)
    else:
        raise ArgumentError(f"{path}: not a valid state file: .npy format version {version}")
    header_size = m.tell()
    if dtype != np.dtype("<f4"):
        raise ArgumentError(f"{path}: not a valid state file: its array has dtype {dtype}, expected float32")
    if fortran or len(shape) != ndim or not shape_ok(shape) or min(shape) < 1:
        order = ", Fortran order" if fortran else ""
        raise ArgumentError(f"{path}: not a valid state file: its array has shape {shape}{order}, expected "
                            f"{expected}")
    nbytes = 4
    for d in shape:  # Python ints: no overflow whatever the header says
        nbytes *= d
    if nbytes > MAX_STATE_BYTES:
        raise ArgumentError(f"{path}: not a valid state file: shape {shape} is {nbytes} bytes, more than the "
                            f"{MAX_STATE_BYTES} a state of any RWKV-4 model needs")
    if header_size + nbytes != member_size:
        raise ArgumentError(f"{path}: corrupt state file: the array header says {nbytes} bytes of data, the "
                            f"archive member holds {member_size - header_size}")
    buf = m.read(nbytes)
    if len(buf) != nbytes or m.read(1):  # reading to the end also makes zipfile check the CRC
        raise ArgumentError(f"{path}: corrupt state file: the array data is truncated")
    return np.frombuffer(buf, dtype="<f4").reshape(shape)


def _all_finite(a: np.ndarray) -> bool:
    # a float64 sum of float32 values cannot overflow, so it is finite exactly when every value
    # is: one pass, no boolean temporary of the array's size
    return bool(np.isfinite(np.add.reduce(a, axis=None, dtype=np.float64)))


def check_forward_output(logits: np.ndarray | None, state: np.ndarray, source=None,
                         state_given: bool = False) -> None:
    """Raise ModelError if a forward pass produced inf or NaN.

    logits: (V,) or (T, V) float32 (None when no head was applied); state: (L, 5, C) after the
    pass (or any array with the layer first, such as a later version's (L, H, N, N) matrices). A NaN or inf that appears in a layer propagates to every later layer and token, so the
    first non-finite layer of the state (or the first non-finite row of the logits) says where
    it started. `source` names the checkpoint; `state_given` says whether the pass started from
    a state the caller passed (then it shares the blame), or from the initial state.
    """
    state_ok = _all_finite(state)
    logits_ok = logits is None or _all_finite(logits)
    if state_ok and logits_ok:
        return
    weights = f"the weights of {source}" if source is not None else "the model's weights"
    if not state_ok:
        layer = int(np.argmax(~np.isfinite(state).reshape(state.shape[0], -1).all(axis=1)))
        where = f"first in the state of layer {layer} (of {state.shape[0]})"
    else:
        rows = np.atleast_2d(logits)
        token = int(np.argmax(~np.isfinite(rows).all(axis=1)))
        where = "in the logits (ln_out and head)" + (f", first at token {token}" if rows.shape[0] > 1 else "")
    if state_given:
        raise ModelError(f"{weights}, starting from the given state, produce non-finite values (inf or NaN) "
                         f"{where}: the weights or that state hold values too large for float32 arithmetic")
    raise ModelError(f"{weights} produce non-finite values (inf or NaN) {where}: some weights are too large "
                     "for float32 arithmetic")
