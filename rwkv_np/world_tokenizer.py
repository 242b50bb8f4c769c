"""The RWKV "World" tokenizer (vocabulary 65536) of the RWKV-4 World, 5, 6 and 7 models.

It is not a BPE: the vocabulary (BlinkDL's rwkv_vocab_v20230424.txt) is a list of byte strings,
and a text's UTF-8 bytes are cut greedily, left to right, into the longest vocabulary entry that
starts at the current byte. Every single byte is an entry, so any byte string (invalid UTF-8 too)
is encoded and decodes back to itself. Id 0 is not in the file: the models use it as the
end-of-text token; ids 65530..65535 are unused rows of the models' embedding and decode to nothing.

The vocabulary file comes from the `rwkv` pip package (BlinkDL's ChatRWKV package, Apache-2.0,
which ships it beside its pure-Python reference tokenizer; installing it does not pull torch, and
only the text file is read from it here), or from beside a checkpoint, or from --tokenizer PATH.
It is read as untrusted input: each line is `ID LITERAL LENGTH` where LITERAL is a Python str or
bytes literal; it is evaluated with `ast.literal_eval` (never `eval`) only after the line passed
bounds on its length and shape, and the table must be a consistent tokenizer (ids in range and
unique, entries unique, all 256 single bytes present, LENGTH = the entry's byte count).

Encoding walks a byte trie stored as one dict `(node << 8) | byte -> child`, so each input byte
looked at costs one dict look-up, and remembers the last node that ends an entry (the longest
match). Compared with a trie of per-node 256-slot lists (BlinkDL's reference) it takes ~15 MB
instead of hundreds, and it gives the same ids (tests/test_world_tokenizer.py).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

from .errors import ArgumentError
from .files import read_regular
from .text import check_ids, text_to_utf8

WORLD_VOCAB_SIZE = 65536
VOCAB_FILENAME = "rwkv_vocab_v20230424.txt"
#: the published file is 1.16 MB (CRLF line ends) for 65529 entries: 4 MiB leaves room, no more
MAX_VOCAB_FILE_BYTES = 4 << 20
#: the longest entry is 128 bytes; its literal takes at most 4 characters a byte (\xNN) plus quotes
MAX_ENTRY_BYTES = 256
MAX_LINE_CHARS = 4 * MAX_ENTRY_BYTES + 32
#: bytes of text encoded in one call. The walk looks at most MAX_ENTRY_BYTES bytes per token, so a
#: hostile text costs at most that many dict look-ups per byte; ordinary text costs about 1.3
MAX_INPUT_BYTES = 16 << 20


def _read_bounded(path: Path) -> bytes:
    return read_regular(path, f"vocabulary file {path}", MAX_VOCAB_FILE_BYTES, "a World vocabulary file may have")


def _parse_literal(text: str, where: str) -> bytes:
    """A Python str/bytes literal -> its bytes (str as UTF-8), refusing anything else."""
    body = text[1:] if text[:1] == "b" else text
    if len(body) < 2 or body[0] not in "'\"" or body[-1] != body[0]:
        raise ArgumentError(f"{where}: {text[:40]!r} is not a quoted string or bytes literal")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ArgumentError(f"{where}: {text[:40]!r} is not a valid string literal ({type(e).__name__})") from None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise ArgumentError(f"{where}: the entry holds a lone surrogate, which UTF-8 cannot encode") from None
    if isinstance(value, bytes):
        return value
    raise ArgumentError(f"{where}: {text[:40]!r} is a {type(value).__name__}, not a string or bytes literal")


def parse_vocab(data: bytes, path: str | Path = "<vocabulary>") -> list[bytes | None]:
    """The text of a World vocabulary file -> a table id -> entry bytes (None: no entry), 65536 long.

    ArgumentError naming the file and line for anything a correct vocabulary cannot contain.
    """
    where = f"vocabulary file {path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArgumentError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    table: list[bytes | None] = [None] * WORLD_VOCAB_SIZE
    seen: dict[bytes, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        at = f"{where}, line {n}"
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise ArgumentError(f"{at}: {len(line)} characters, more than the {MAX_LINE_CHARS} an entry can take")
        first, last = line.find(" "), line.rfind(" ")
        if first <= 0 or last <= first:
            raise ArgumentError(f"{at}: expected `ID LITERAL LENGTH`, got {line[:40]!r}")
        id_text, literal, length_text = line[:first], line[first + 1:last], line[last + 1:]
        if not (id_text.isascii() and id_text.isdigit() and len(id_text) <= 6
                and length_text.isascii() and length_text.isdigit() and len(length_text) <= 4):
            raise ArgumentError(f"{at}: expected `ID LITERAL LENGTH` with decimal ID and LENGTH, got {line[:40]!r}")
        idx, length = int(id_text), int(length_text)
        if not 1 <= idx < WORLD_VOCAB_SIZE:
            raise ArgumentError(f"{at}: id {idx} is outside [1, {WORLD_VOCAB_SIZE}) (id 0 is end-of-text)")
        entry = _parse_literal(literal, at)
        if len(entry) != length:
            raise ArgumentError(f"{at}: the entry has {len(entry)} bytes but the line says {length}")
        if not 1 <= length <= MAX_ENTRY_BYTES:
            raise ArgumentError(f"{at}: an entry of {length} bytes (1 to {MAX_ENTRY_BYTES} are allowed)")
        if table[idx] is not None:
            raise ArgumentError(f"{at}: id {idx} appears a second time")
        if entry in seen:
            # greedy matching could not tell the two ids apart: one of them would never be produced
            raise ArgumentError(f"{at}: entry {entry!r} is already id {seen[entry]}")
        table[idx] = entry
        seen[entry] = idx
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        # without every single byte some texts could not be encoded at all
        raise ArgumentError(f"{where}: {len(missing)} of the 256 single bytes have no entry (the first is "
                            f"{bytes([missing[0]])!r}), so not every text can be encoded")
    return table


def packaged_vocab_path() -> Path | None:
    """rwkv_vocab_v20230424.txt as the `rwkv` package ships it, or None when that is not installed.

    Only the package's (empty) __init__ is imported, not its torch-based model code.
    """
    try:
        from importlib.resources import files

        path = Path(str(files("rwkv") / VOCAB_FILENAME))
    except (ImportError, TypeError, ValueError):
        return None
    return path if path.is_file() else None


class WorldTokenizer:
    """Greedy longest-match tokenizer over the World vocabulary's byte strings."""

    vocab_size = WORLD_VOCAB_SIZE
    eos_id = 0  # the World models end a document with token 0
    max_input_bytes = MAX_INPUT_BYTES

    def __init__(self, path: str | Path | None = None):
        if path is None:
            path = packaged_vocab_path()
            if path is None:
                raise ArgumentError(
                    f"the RWKV World tokenizer needs its vocabulary {VOCAB_FILENAME}: install the `rwkv` package "
                    f"(`pip install rwkv`, which ships it; it does not need torch for this), or pass "
                    f"--tokenizer PATH/{VOCAB_FILENAME}")
        self.path = Path(path)
        self._table, self._edges, self._ends = _load(str(self.path.resolve()))

    def encode_bytes(self, data: bytes) -> list[int]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ArgumentError(f"encode_bytes takes bytes, not {type(data).__name__} (use encode for text)")
        data = bytes(data)
        if len(data) > self.max_input_bytes:
            raise ArgumentError(f"prompt: {len(data)} bytes of text, more than the {self.max_input_bytes} the World "
                                "tokenizer encodes at once")
        edges, ends = self._edges, self._ends
        get = edges.get
        out, i, n = [], 0, len(data)
        while i < n:
            node, j, best, best_end = 0, i, 0, i
            while j < n:
                node = get((node << 8) | data[j])
                if node is None:
                    break
                j += 1
                tok = ends[node]
                if tok:
                    best, best_end = tok, j
            # every single byte is an entry (parse_vocab checks it), so best_end > i here
            out.append(best)
            i = best_end
        return out

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(text_to_utf8(text))

    def decode_bytes(self, ids) -> bytes:
        table = self._table
        return b"".join(table[i] or b"" for i in check_ids(ids, WORLD_VOCAB_SIZE, "decode_bytes"))

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


@lru_cache(maxsize=2)
def _load(path: str):
    """(id -> bytes table, trie edges, node -> id or 0) for the vocabulary at `path`, built once."""
    table = parse_vocab(_read_bounded(Path(path)), path)
    edges: dict[int, int] = {}
    ends = [0]
    for idx, entry in enumerate(table):
        if entry is None:
            continue
        node = 0
        for b in entry:
            key = (node << 8) | b
            child = edges.get(key)
            if child is None:
                child = edges[key] = len(ends)
                ends.append(0)
            node = child
        ends[node] = idx
    return tuple(table), edges, ends
