"""Training data: a text file read as bytes (token id = byte value), tiny shakespeare by default.

The bytes stay uint8 in memory (a 600 MB corpus takes 600 MB, not the 4.7 GB of int64 ids); batches
index into them. The file is read into memory rather than memory-mapped, so that a file changed or
truncated during training cannot pull pages from under the run (SIGBUS). It is opened as every path a
user names is (rwkv_np.files): a FIFO, device or folder is refused, never waited on.
"""

from __future__ import annotations

import hashlib
import os
import stat
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import ArgumentError, DownloadError
from ..files import open_regular, write_atomic

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_CACHE = Path.home() / ".cache" / "rwkv_np" / "tinyshakespeare.txt"
TRAIN_SHARE = 0.9  # the first 90% of the bytes train, the last 10% are held out
MIN_BYTES = 100


def default_data_path() -> Path:
    """Tiny shakespeare from the local cache, downloaded (and sha256-checked) on first use."""
    path = SHAKESPEARE_CACHE
    if path.exists():
        return path
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
            raw = r.read(10_000_000)  # the file is 1.1 MB: never read an unbounded answer
    except OSError as e:
        raise DownloadError(
            f"could not download tiny shakespeare from {SHAKESPEARE_URL} ({e}); put the file at {path} "
            f"(sha256 {SHAKESPEARE_SHA256}) or pass --data FILE") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise DownloadError(f"downloaded {SHAKESPEARE_URL} has sha256 {digest}, expected {SHAKESPEARE_SHA256}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {path.parent} for tiny shakespeare ({e.strerror or e}); pass --data FILE") from None
    write_atomic(path, raw, f"the tiny shakespeare cache {path}")
    return path


def data_size(path: str | os.PathLike) -> int:
    """The size of a --data file, refusing what is not a regular file (a folder, a FIFO, /dev/zero:
    reading those would fail late, hang, or never end)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ArgumentError(f"--data {path}: no such file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArgumentError(f"--data {path}: not a regular file")
    if st.st_size < MIN_BYTES:
        raise ArgumentError(f"--data {path}: only {st.st_size} bytes, need at least {MIN_BYTES}")
    return st.st_size


def read_data(path: str | os.PathLike) -> np.ndarray:
    """The whole --data file as uint8, read from a regular file (refused otherwise, naming it)."""
    what = f"--data {path}"
    f, size = open_regular(path, what)
    with f:
        if size < MIN_BYTES:
            raise ArgumentError(f"{what}: only {size} bytes, need at least {MIN_BYTES}")
        data = np.empty(size, np.uint8)
        try:
            got = f.readinto(memoryview(data))
        except OSError as e:
            raise ArgumentError(f"{what}: cannot read it ({e.strerror or e})") from None
    if got < size:  # shrunk between stat and read
        raise ArgumentError(f"{what}: changed while being read ({got} of {size} bytes)")
    return data


def split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first 90% (train) and the last 10% (held out) of the bytes: views of data."""
    n = int(TRAIN_SHARE * len(data))
    return data[:n], data[n:]


def load_bytes(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The file's bytes as token ids (uint8), split into the first 90% (train) and the last 10%
    (held out); both are views of one array."""
    return split(read_data(path))


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a regular file, read in 1 MB pieces."""
    h = hashlib.sha256()
    f, _ = open_regular(path, str(path))
    with f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def get_batch(data: np.ndarray, batch: int, ctx: int, rng: np.random.Generator):
    """Random windows: inputs (B, T) and the next bytes (B, T), uint8."""
    starts = rng.integers(0, len(data) - ctx - 1, size=batch)
    idx = starts[:, None] + np.arange(ctx)[None, :]
    return data[idx], data[idx + 1]
