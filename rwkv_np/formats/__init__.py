"""The checkpoint formats rwkv_np reads, one module each, and the table that picks one by a file's
first bytes (never its name). A new format is one module with `sniff(head)` and `read(buf)` and one
row of READERS.

    torch_zip.py        BlinkDL's .pth and Hugging Face's pytorch_model.bin (torch.save's zip archive),
                        read without PyTorch and without running the pickle
    safetensors_file.py a .safetensors file
    rwkv_cpp.py         rwkv.cpp's files: FP32, FP16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; its converter undone
    hf.py               Hugging Face folders (config.json + weights), and Hugging Face's tensor names
    base.py             what they share: the file read with pread, lazy tensors, `Contents`
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from ..errors import CheckpointError
from . import hf, rwkv_cpp, safetensors_file, torch_zip
from .base import BadFile, Contents, FileBytes

READERS = (torch_zip, rwkv_cpp, safetensors_file)  # each: sniff(first 16 bytes) -> bool, read(buf) -> Contents
SUPPORTED = ("supported formats: a BlinkDL .pth (torch.save zip archive); a Hugging Face RWKV-4 folder "
             "(config.json + model.safetensors or pytorch_model.bin); a .safetensors file with BlinkDL or "
             "Hugging Face names; an rwkv.cpp .bin (FP32, FP16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)")


def read(path: Path, stack: ExitStack) -> Contents:
    """The checkpoint file or folder at path, parsed; files stay open in stack while it is loaded."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: a folder must be a Hugging Face model folder with config.json, "
                                  f"but there is none; {SUPPORTED}")
        return hf.read_folder(path, stack, read_file)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder; {SUPPORTED}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file or folder; {SUPPORTED}")
    return read_file(path, stack)


def read_file(path: Path, stack: ExitStack) -> Contents:
    """Open the file and parse it with the reader its first bytes call for.

    The file is read with pread, never mapped (see FileBytes): a file truncated meanwhile gives a
    short read, our error, where a mapping would give SIGBUS. When the load finishes, a file whose
    size or modification time changed meanwhile is refused (its bytes may mix two versions); a file
    replaced by another (renamed over it) is harmless, as the open one is read to the end. Not
    detected: a rewrite in place that leaves size and modification time as they were."""
    buf = stack.enter_context(FileBytes(path))
    stack.push(_unchanged_on_success(buf))
    if len(buf) == 0:
        raise CheckpointError(f"{path}: the file is empty; {SUPPORTED}")
    head = buf[:16]
    reader = next((r for r in READERS if r.sniff(head)), None)
    if reader is None:
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise CheckpointError(f"{path}: a bare pickle, i.e. the legacy (pre-1.6, non-zip) torch.save format, "
                                  "which is not supported (unpickling it safely is not possible); re-save it "
                                  "with a recent PyTorch: torch.save(torch.load(f), f)")
        raise CheckpointError(f"{path}: not a recognised checkpoint (starts with {head[:8]!r}); {SUPPORTED}")
    try:
        contents = reader.read(buf)
    except BadFile as e:
        raise CheckpointError(f"{path}: {e}") from None
    contents.tensors = {name: replace(t, source=buf) for name, t in contents.tensors.items()}
    contents.tokenizer_dir = path.parent
    return hf.adopt(contents) if hf.has_hf_names(contents.tensors) else contents


def _unchanged_on_success(buf: FileBytes):
    def check(exc_type, exc, tb) -> None:
        if exc_type is None and buf.changed():
            raise CheckpointError(f"{buf.path}: the file changed (size or modification time) while it was "
                                  "being loaded; refusing weights that may mix two versions - load it again")
    return check


__all__ = ["READERS", "SUPPORTED", "Contents", "read", "read_file"]
