"""Text <-> token ids: raw UTF-8 bytes (vocab 256), the GPT-NeoX-20B BPE (vocab 50277) of the
RWKV-4 Pile models, or the RWKV "World" tokenizer (vocab 65536, world_tokenizer.py).

All tokenizers decode to *bytes*, not str, so a streaming printer can hold back a multi-byte
character split across tokens (`Utf8Stream`) instead of printing garbage.
"""

from __future__ import annotations

import codecs
from functools import cached_property
from pathlib import Path

from .errors import ArgumentError, DownloadError
from .text import check_ids, text_to_utf8
from .tokenizer_json import ENCODE_BUDGET_BYTES, check_tokenizer_json, read_tokenizer_json
from .world_tokenizer import VOCAB_FILENAME, WORLD_VOCAB_SIZE, WorldTokenizer

NEOX_VOCAB_SIZE = 50277
TOKENIZER_FILENAMES = ("20B_tokenizer.json", "tokenizer.json")


class ByteTokenizer:
    """Vocab-256 models: one token per UTF-8 byte. There is no BOS/EOS token."""

    vocab_size = 256
    eos_id = None  # byte 0 is an ordinary character here, not an end-of-text marker

    def encode(self, text: str) -> list[int]:
        return list(text_to_utf8(text))

    def decode_bytes(self, ids) -> bytes:
        return bytes(check_ids(ids, 256, "decode_bytes"))

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2): printable char -> the byte it stands for.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) are
    shifted to code points 256.. in byte order, so every byte has a visible, unique symbol.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table


class NeoXTokenizer:
    """The GPT-NeoX-20B BPE of the RWKV-4 Pile models, through the `tokenizers` library.

    The JSON file is untrusted (it is picked up beside a downloaded checkpoint), and `tokenizers`
    is native code that can be made to allocate without bound or to panic. So the file is read
    and checked here first (`check_tokenizer_json`: a byte-level BPE built only from allowed
    parts, with bounded sizes), and only the checked structure, re-serialised, reaches
    `tokenizers`. Every call into it is contained: whatever it raises, including a Rust panic
    (a BaseException), becomes an ArgumentError naming the file. Inputs are bounded too
    (`max_input_bytes`), by how much the file's normalizer and pre-tokenizer can expand them.
    """

    eos_id = 0  # "<|endoftext|>": documents in the Pile are separated by it

    def __init__(self, path: str | Path):
        self.path = Path(path)
        spec = check_tokenizer_json(read_tokenizer_json(self.path), self.path)
        self.vocab_size = spec.vocab_size
        self.expansion = spec.expansion
        self.max_input_bytes = ENCODE_BUDGET_BYTES // spec.expansion
        self._pieces = spec.pieces
        self._added = spec.added

        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ArgumentError(f"tokenizer file {self.path}: reading it needs the `tokenizers` package ({e}); "
                                "install it with `pip install tokenizers`") from None
        self._tok = self._contained("reading it", lambda: Tokenizer.from_str(spec.json))

    def _contained(self, doing: str, call):
        """call() with anything the native library raises turned into our error."""
        try:
            return call()
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except MemoryError:
            raise ArgumentError(f"tokenizer file {self.path}: not enough memory while {doing}") from None
        except BaseException as e:  # noqa: B036 - pyo3 turns a Rust panic into a BaseException
            raise ArgumentError(f"tokenizer file {self.path}: the tokenizers library failed while {doing} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None

    def encode(self, text: str) -> list[int]:
        # every character is at least one byte: a text that long is refused before any copy of it
        size = len(text) if len(text) > self.max_input_bytes else None
        if size is None:
            # tokenizers cannot take lone surrogates; go through bytes and U+FFFD instead (which
            # takes 3 bytes where a stray byte took 1: the limit applies to what tokenizers gets)
            clean = text_to_utf8(text).decode("utf-8", errors="replace")
            size = len(clean.encode("utf-8"))
        if size > self.max_input_bytes:
            raise ArgumentError(
                f"prompt: {size} {'bytes' if size != len(text) else 'characters'} of text, more than the "
                f"{self.max_input_bytes} bytes the tokenizer file {self.path} accepts at once (its normalizer "
                f"and pre-tokenizer can make text up to {self.expansion}x longer, and "
                f"{ENCODE_BUDGET_BYTES >> 20} MiB is the most rwkv_np lets tokenizers work on)")
        return self._contained("encoding the prompt",
                               lambda: list(self._tok.encode(clean, add_special_tokens=False).ids))

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        """Token id -> the exact bytes it stands for (added tokens are stored as plain text)."""
        alphabet = _byte_level_alphabet()
        out = []
        for piece in self._pieces:
            if piece is None:
                out.append(b"")
            elif piece in self._added or any(c not in alphabet for c in piece):
                out.append(piece.encode("utf-8", errors="replace"))
            else:
                out.append(bytes(alphabet[c] for c in piece))
        return out

    def decode_bytes(self, ids) -> bytes:
        table = self._token_bytes
        return b"".join(table[i] for i in check_ids(ids, self.vocab_size, "decode_bytes"))

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class Utf8Stream:
    """Turns a stream of byte chunks into text, emitting only whole characters.

    A character split across chunks is held until its last byte arrives; bytes that can never
    form a character come out as U+FFFD as soon as that is certain (at most 3 bytes are held),
    and `flush()` turns a dangling incomplete sequence at the end into U+FFFD.
    """

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def _find_beside(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".json":  # already the tokenizer file (the loader found it)
        return path
    folder = path if path.is_dir() else path.parent
    for name in TOKENIZER_FILENAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _find_world_vocab(path: Path) -> Path | None:
    if path.is_file() and path.name == VOCAB_FILENAME:
        return path
    folder = path if path.is_dir() else path.parent
    return folder / VOCAB_FILENAME if (folder / VOCAB_FILENAME).is_file() else None


def get_tokenizer(vocab_size: int, tokenizer_path: str | Path | None = None,
                  checkpoint_tokenizer_path: str | Path | None = None):
    """The tokenizer for a model with `vocab_size` tokens.

    `tokenizer_path` (--tokenizer), when given, decides: a .txt file is a World vocabulary
    (rwkv_vocab_v20230424.txt), anything else a tokenizer.json. Otherwise:
    vocab 256 -> ByteTokenizer; vocab 65536 -> WorldTokenizer, from the rwkv_vocab_v20230424.txt
    beside the checkpoint (`checkpoint_tokenizer_path`) or inside its folder, else the copy the
    `rwkv` package ships; any other vocab -> a NeoXTokenizer from, in order: `checkpoint_tokenizer_path`
    when it is a .json file, or a 20B_tokenizer.json / tokenizer.json beside that checkpoint file or
    inside that checkpoint folder; the copy that `python -m rwkv_np download` put into the Hugging
    Face cache.
    """
    if tokenizer_path is not None:
        path = Path(tokenizer_path)
        if not path.exists():
            raise ArgumentError(f"--tokenizer {path}: no such file")
        tok = WorldTokenizer(path) if path.suffix == ".txt" else NeoXTokenizer(path)
    elif vocab_size == 256:
        return ByteTokenizer()
    elif vocab_size == WORLD_VOCAB_SIZE:
        beside = Path(checkpoint_tokenizer_path) if checkpoint_tokenizer_path else None
        tok = WorldTokenizer(_find_world_vocab(beside) if beside else None)
    else:
        path = _find_beside(Path(checkpoint_tokenizer_path)) if checkpoint_tokenizer_path else None
        if path is None:
            from .download import cached_tokenizer_path

            path = cached_tokenizer_path()
        if path is None:
            where = f" beside {checkpoint_tokenizer_path}" if checkpoint_tokenizer_path else ""
            raise DownloadError(
                f"no tokenizer found for a model with vocab {vocab_size}: none of {', '.join(TOKENIZER_FILENAMES)}"
                f"{where} nor in the Hugging Face cache. Pass --tokenizer PATH/20B_tokenizer.json, or fetch it "
                f"with `python -m rwkv_np download 169m` (it downloads the GPT-NeoX-20B tokenizer too)")
        tok = NeoXTokenizer(path)
    if tok.vocab_size != vocab_size:
        # fewer: ids the model has no row for would fail mid-prompt; more: the model would sample
        # ids the tokenizer cannot print. Either way the two were not made for each other
        # (a vocab-65536 "World" model, say, has its own tokenizer, not a NeoX one)
        raise ArgumentError(f"tokenizer file {tok.path}: its vocabulary has {tok.vocab_size} tokens but the "
                            f"model has {vocab_size}: it is not this model's tokenizer (pass the right one with "
                            "--tokenizer)")
    return tok
