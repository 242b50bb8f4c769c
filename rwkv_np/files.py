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
