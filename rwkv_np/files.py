"""Opening a file the user names without trusting what it is: the one way rwkv_np reads and writes
the paths it is given.

Every path is checked before anything is read from or written to it: a file to read must be a
regular file; a file to write must be a regular file or a new one in a folder that takes files. A
FIFO, a device, a socket or a folder is refused with an error naming the option (or role) and the
path, instead of an open that blocks forever (a FIFO nobody writes to or reads from), a read that
never ends (/dev/zero) or a late failure. Opens are non-blocking and the check is made on the open
file (fstat), so a path swapped for a FIFO between a check and the open cannot hang either.

    open_regular / read_regular     reading (read_regular: the whole file, at most max_bytes)
    check_writable                  up front: can a file be written there (creating its folder)?
    open_writable                   writing or appending in place (a log)
    write_atomic                    replacing a file whole: written beside it, then renamed over it
"""

import os
import stat
from pathlib import Path

from .errors import ArgumentError

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for messages."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(what: str, mode: int, writing: bool = False) -> ArgumentError:
    kind = _kind(mode)
    hint = "; give the path of a file (a new one, or a regular file to replace)" if writing else ""
    if kind == "not a regular file":
        return ArgumentError(f"{what}: not a regular file{hint}")
    return ArgumentError(f"{what}: not a regular file ({kind}){hint}")


def open_regular(path, what: str):
    """(binary file object, size in bytes) of `path`, which must be a regular file: a FIFO, device or
    folder is refused before anything is read from it (opening is non-blocking, so a FIFO with no
    writer cannot hang). `what` starts each error message, e.g. "tokenizer file x.json"."""
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError as e:
        raise ArgumentError(f"{what}: cannot open it ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(what, st.st_mode)
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


def _existing_kind(path: Path, what: str):
    """os.stat of path (following links), None if nothing is there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:  # a path through a file, a loop of links, a name too long...
        raise ArgumentError(f"{what}: cannot use this path ({e.strerror or e})") from None


def open_writable(path, what: str, append: bool = False):
    """A binary file object writing `path` (truncated, or appended to with append), which must be a
    regular file or not exist yet. Opening is non-blocking: a FIFO with no reader is refused rather
    than waited on, and any other special file is refused after the open, before a byte is written."""
    path = Path(path)
    st = _existing_kind(path, what)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise _not_regular(what, st.st_mode, writing=True)
    flags = os.O_WRONLY | os.O_CREAT | _NONBLOCK | _CLOEXEC | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        st = _existing_kind(path, what)
        if st is not None and not stat.S_ISREG(st.st_mode):  # it became one after the check above
            raise _not_regular(what, st.st_mode, writing=True) from None
        raise ArgumentError(f"{what}: cannot write it ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(what, st.st_mode, writing=True)
        if not append:
            os.ftruncate(fd, 0)  # only now: a special file is never truncated
        if _NONBLOCK:
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
        return os.fdopen(fd, "ab" if append else "wb")
    except OSError as e:
        os.close(fd)
        raise ArgumentError(f"{what}: cannot write it ({e.strerror or e})") from None
    except BaseException:
        os.close(fd)
        raise


def partial_path(path) -> Path:
    """Where `write_atomic` writes before the rename."""
    return Path(str(path) + ".partial")


def check_writable(path, what: str) -> Path:
    """Check up front that a file can be written at `path` (a regular file, or a new file in a folder
    that takes files; the folder is created if missing), so that a run does not fail, or hang, only
    when it first writes. Returns the path."""
    path = Path(path)
    st = _existing_kind(path, what)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise _not_regular(what, st.st_mode, writing=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgumentError(f"{what}: cannot create the folder {path.parent} ({e.strerror or e})") from None
    probe = partial_path(path)
    if _existing_kind(probe, what) is not None:  # an earlier run's temporary file, replaced at the next write
        with open_writable(probe, f"{what}: its temporary file {probe}", append=True):
            pass
        return path
    try:  # a new file (O_EXCL: never a FIFO or device already there), removed at once
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666))
        probe.unlink()
    except OSError as e:
        raise ArgumentError(f"{what}: cannot write in {path.parent} ({e.strerror or e})") from None
    return path


def write_atomic(path, data: bytes, what: str | None = None) -> None:
    """Replace `path` by data so that any reader, at any moment, sees the old or the new file whole:
    written to `partial_path(path)` (checked like any file to write), flushed and fsynced, then
    renamed over path, and the folder fsynced so that the rename survives a power cut."""
    path = Path(path)
    what = what or str(path)
    tmp = partial_path(path)
    with open_writable(tmp, f"{what}: its temporary file {tmp}") as f:
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            raise ArgumentError(f"{what}: cannot write {tmp} ({e.strerror or e})") from None
    st = _existing_kind(path, what)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise _not_regular(what, st.st_mode, writing=True)
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise ArgumentError(f"{what}: cannot replace it by {tmp} ({e.strerror or e})") from None
    try:  # make the rename itself durable (not possible on every platform; a kill needs only the rename)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
