"""Opening a file the user names without trusting what it is."""

import os
import stat

from .errors import ArgumentError


def open_regular(path, what: str):
    """(binary file object, size in bytes) of `path`, which must be a regular file: a FIFO, device or
    folder is refused before anything is read from it (opening is non-blocking, so a FIFO with no
    writer cannot hang). `what` starts each error message, e.g. "tokenizer file x.json"."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ArgumentError(f"{what}: cannot open it ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArgumentError(f"{what}: not a regular file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, what: str, max_bytes: int, limit_says: str) -> bytes:
    """The whole of a regular file of at most max_bytes (see open_regular). `limit_says` ends the message
    of a file over the limit, e.g. "a tokenizer file may have"."""
    f, size = open_regular(path, what)
    with f:
        if size > max_bytes:
            raise ArgumentError(f"{what}: {size} bytes, more than the {max_bytes} {limit_says}")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise ArgumentError(f"{what}: cannot read it ({e.strerror or e})") from None
    if len(data) > max_bytes:  # it grew while being read
        raise ArgumentError(f"{what}: more than the {max_bytes} bytes {limit_says}")
    return data
