"""What a tokenizer.json may contain before rwkv_np hands it to the `tokenizers` library.

The file is untrusted: it is loaded automatically from beside a checkpoint. `tokenizers` is native
code, and a few kilobytes of JSON can make it allocate gigabytes (a chain of Replace normalizers,
each multiplying the text; a padding length of 10^9), spin in a backtracking regex, or panic. No
test run on the text can tell a safe regex from a slow one, so rwkv_np accepts only what its own
decoder can use anyway, a byte-level BPE like GPT-NeoX-20B's, built from an allow-list of parts:

- model: BPE, deterministic (no dropout); vocabulary and added tokens with ids 0..N-1, N <= MAX_VOCAB;
- normalizer: none, or NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace and Prepend with
  short literal strings, or a Sequence of at most MAX_SEQUENCE of them;
- pre-tokenizer: ByteLevel, alone or at the end of a short Sequence of Split (a short literal, or
  the GPT-2 pattern that ByteLevel uses itself), Digits and Punctuation;
- decoder: none or ByteLevel. The post-processor, padding and truncation are not used by rwkv_np
  (no special tokens are added, offsets are not read, one text at a time) and are not passed on;
- every object has only the keys its type has, no key twice (the library and Python's json
  could otherwise each read a different one of the two), and the whole file is at most
  MAX_TOKENIZER_BYTES.

What passes is re-serialised from the checked structure, so `tokenizers` reads exactly what was
checked. The worst-case growth of a text through the normalizer and the pre-tokenizer (NFKC: 18x,
Replace "a" -> "aaaa": 4x, ByteLevel: 2x as UTF-8, ...) is computed from the parts; it must stay
under MAX_EXPANSION, and the input of one encode call is limited to ENCODE_BUDGET_BYTES divided by
it, which bounds the memory `tokenizers` may use (measured at about 160 bytes per byte it works on).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ArgumentError
from .files import read_regular

#: 3.4x the GPT-NeoX-20B file (2.4 MB, 50277 tokens), the largest an RWKV-4 model comes with. Python's
#: json can need 24x a hostile file ("[{},{},...]": 5.6M empty dicts), so about 200 MB at most
MAX_TOKENIZER_BYTES = 8 << 20
#: ids of a tokenizer are 0..N-1 with N at most this (a table of N entries is built from them)
MAX_VOCAB = 1 << 20
#: parts in a Sequence, characters in a literal pattern / replacement / prefix, in an added token
MAX_SEQUENCE = 8
MAX_LITERAL = 64
MAX_TOKEN_CHARS = 1024
#: the largest worst-case growth of a text through normalizer and pre-tokenizer that is accepted
MAX_EXPANSION = 64
#: bytes of (normalized, pre-tokenized) text one encode call may give `tokenizers` to work on;
#: at ~160 bytes of its memory per byte, about 1 GB at most. A GPT-NeoX-20B file (NFC: 3x,
#: ByteLevel: 2x) thus takes prompts of up to 1 MiB at once
ENCODE_BUDGET_BYTES = 6 << 20

#: the pre-tokenization pattern of GPT-2 (and GPT-NeoX), which `ByteLevel` applies itself: the only
#: regex accepted in a Split, since it is known to run in linear time
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# worst-case growth of a text, in UTF-8 bytes or code points whichever is larger (Unicode UAX #15:
# NFC 3x, NFD 4x, NFKC/NFKD 18x; full lowercase mapping at most 3 code points per code point)
_NORMALIZER_GROWTH = {"NFC": 3, "NFD": 4, "NFKC": 18, "NFKD": 18, "Lowercase": 3, "StripAccents": 1}


@dataclass
class TokenizerSpec:
    json: str                   # the checked structure, re-serialised for tokenizers
    vocab_size: int             # N: ids are 0..N-1
    pieces: list[str | None]    # id -> its token string
    added: set[str]             # contents of the added tokens (stored as plain text, not byte-level)
    expansion: int              # worst-case growth of a text before BPE


def read_tokenizer_json(path: Path):
    """The parsed JSON of `path`: a regular file of at most MAX_TOKENIZER_BYTES, UTF-8, no duplicate
    keys, no NaN/Infinity. A FIFO or device is refused without reading it."""
    where = f"tokenizer file {path}"
    data = read_regular(path, where, MAX_TOKENIZER_BYTES, "a tokenizer file may have")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise ArgumentError(f"{where}: cannot read it as a tokenizers JSON file (not UTF-8: {e.reason} at "
                            f"byte {e.start})") from None
    except (ValueError, RecursionError) as e:
        raise ArgumentError(f"{where}: cannot read it as a tokenizers JSON file ({str(e)[:200]})") from None


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {key[:50]!r} appears twice in one object")
        obj[key] = value
    return obj


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, what: str):
        raise ArgumentError(f"tokenizer file {self.path}: {where}: {what}")

    def obj(self, value, where: str, keys: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {_kind(value)}")
        extra = sorted(set(value) - keys)
        if extra:
            self.fail(where, f"unknown key {extra[0][:50]!r} (allowed: {', '.join(sorted(keys))})")
        missing = sorted(required - set(value))
        if missing:
            self.fail(where, f"missing key {missing[0]!r}")
        return value

    def flag(self, obj: dict, key: str, where: str) -> None:
        if key in obj and not isinstance(obj[key], bool):
            self.fail(f"{where}.{key}", f"expected true or false, got {_kind(obj[key])}")

    def text(self, value, where: str, limit: int, empty: bool = True, null: bool = False) -> str | None:
        if value is None and null:
            return None
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {_kind(value)}")
        if len(value) > limit or (not empty and not value):
            self.fail(where, f"expected a {'non-empty ' if not empty else ''}string of at most {limit} "
                             f"characters, got {len(value)}")
        return value

    def sequence(self, obj: dict, key: str, where: str) -> list:
        items = obj.get(key)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_SEQUENCE:
            self.fail(f"{where}.{key}", f"expected a list of 1 to {MAX_SEQUENCE} parts, got "
                                        f"{len(items) if isinstance(items, list) else _kind(items)}")
        return items

    # --- the parts -------------------------------------------------------------------------------

    def normalizer(self, n, where: str = "normalizer") -> int:
        """Check a normalizer; return its worst-case growth factor."""
        if n is None:
            return 1
        kind = self._type(n, where)
        if kind == "Sequence":
            self.obj(n, where, {"type", "normalizers"}, {"normalizers"})
            return math.prod(self.normalizer(p, f"{where}.normalizers[{i}]")
                             for i, p in enumerate(self.sequence(n, "normalizers", where)))
        if kind in _NORMALIZER_GROWTH:
            self.obj(n, where, {"type"})
            return _NORMALIZER_GROWTH[kind]
        if kind == "Strip":
            self.obj(n, where, {"type", "strip_left", "strip_right"}, {"strip_left", "strip_right"})
            self.flag(n, "strip_left", where)
            self.flag(n, "strip_right", where)
            return 1
        if kind == "Replace":
            self.obj(n, where, {"type", "pattern", "content"}, {"pattern", "content"})
            pattern = self._literal(n["pattern"], f"{where}.pattern", regex_ok=False)
            content = self.text(n["content"], f"{where}.content", MAX_LITERAL)
            # each match of the literal (len(pattern) bytes) becomes len(content) bytes
            return max(1, -(-len(content.encode()) // len(pattern.encode())))
        if kind == "Prepend":
            self.obj(n, where, {"type", "prepend"}, {"prepend"})
            prefix = self.text(n["prepend"], f"{where}.prepend", MAX_LITERAL)
            return 1 + len(prefix.encode())  # a 1-byte text grows by the whole prefix
        self.fail(where, f"normalizer type {kind[:50]!r} is not supported (allowed: Sequence, "
                         f"{', '.join(sorted(_NORMALIZER_GROWTH))}, Strip, Replace, Prepend)")

    def pre_tokenizer(self, p, where: str = "pre_tokenizer") -> int:
        kind = self._type(p, where)
        if kind == "Sequence":
            self.obj(p, where, {"type", "pretokenizers"}, {"pretokenizers"})
            parts = self.sequence(p, "pretokenizers", where)
            growth = 1
            for i, part in enumerate(parts):
                here = f"{where}.pretokenizers[{i}]"
                is_last = i == len(parts) - 1
                if (self._type(part, here) == "ByteLevel") != is_last:
                    self.fail(here, "a Sequence must end with ByteLevel, and have only that one")
                growth *= self._byte_level(part, here) if is_last else self._splitter(part, here)
            return growth
        if kind != "ByteLevel":
            self.fail(where, f"pre-tokenizer type {kind[:50]!r} is not supported: rwkv_np reads byte-level "
                             "BPE tokenizers (ByteLevel, alone or after Split / Digits / Punctuation in a Sequence)")
        return self._byte_level(p, where)

    def _byte_level(self, p, where: str) -> int:
        self.obj(p, where, {"type", "add_prefix_space", "trim_offsets", "use_regex"})
        for key in ("add_prefix_space", "trim_offsets", "use_regex"):
            self.flag(p, key, where)
        # every byte becomes one character of U+0021..U+0143, at most 2 bytes of UTF-8; a prefix
        # space can add one more to a 1-byte text
        return 3 if p.get("add_prefix_space") else 2

    def _splitter(self, p, where: str) -> int:
        kind = self._type(p, where)
        if kind == "Split":
            self.obj(p, where, {"type", "pattern", "behavior", "invert"}, {"pattern", "behavior"})
            self._literal(p["pattern"], f"{where}.pattern", regex_ok=True)
            if p["behavior"] not in ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
                self.fail(f"{where}.behavior", f"unknown split behavior {str(p['behavior'])[:50]!r}")
            self.flag(p, "invert", where)
        elif kind == "Digits":
            self.obj(p, where, {"type", "individual_digits"})
            self.flag(p, "individual_digits", where)
        elif kind == "Punctuation":
            self.obj(p, where, {"type", "behavior"})
            if p.get("behavior", "Isolated") not in ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                                     "Contiguous"):
                self.fail(f"{where}.behavior", f"unknown split behavior {str(p['behavior'])[:50]!r}")
        else:
            self.fail(where, f"pre-tokenizer type {kind[:50]!r} is not supported before ByteLevel (allowed: "
                             "Split, Digits, Punctuation)")
        return 1  # splitting moves no text

    def _literal(self, pattern, where: str, regex_ok: bool) -> str:
        if not isinstance(pattern, dict) or len(pattern) != 1 or next(iter(pattern)) not in ("String", "Regex"):
            self.fail(where, 'expected {"String": "..."}' + (' or {"Regex": "..."}' if regex_ok else ""))
        (kind, value), = pattern.items()
        if kind == "Regex":
            # a backtracking engine can take time exponential in the input on a crafted pattern,
            # and no check of the text can tell every slow pattern from a fast one
            if not regex_ok or value != GPT2_PATTERN:
                self.fail(where, "regular expressions are not accepted (a crafted one can run for hours); only "
                                 + ("the GPT-2 pre-tokenizer pattern and " if regex_ok else "") + "literal strings")
            return value
        return self.text(value, where + ".String", MAX_LITERAL, empty=False)

    def decoder(self, d, where: str = "decoder") -> None:
        if d is None:
            return
        if self._type(d, where) != "ByteLevel":
            self.fail(where, f"decoder type {str(d.get('type'))[:50]!r} is not supported: rwkv_np decodes "
                             "byte-level BPE (ByteLevel)")
        self._byte_level(d, where)

    def model(self, m, where: str = "model") -> dict[str, int]:
        self.obj(m, where, {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                            "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"}, {"vocab", "merges"})
        if m.get("type", "BPE") != "BPE":
            self.fail(f"{where}.type", f"model type {str(m.get('type'))[:50]!r} is not supported: rwkv_np reads "
                                       "BPE tokenizers")
        dropout = m.get("dropout")
        if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                    or dropout != 0):
            self.fail(f"{where}.dropout", f"expected null or 0 (dropout makes tokenization random), got {dropout!r}")
        for key in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
            self.text(m.get(key), f"{where}.{key}", MAX_LITERAL if key != "unk_token" else MAX_TOKEN_CHARS, null=True)
        for key in ("fuse_unk", "byte_fallback", "ignore_merges"):
            self.flag(m, key, where)
        vocab = m["vocab"]
        if not isinstance(vocab, dict) or not 1 <= len(vocab) <= MAX_VOCAB:
            self.fail(f"{where}.vocab", f"expected an object of 1 to {MAX_VOCAB} tokens")
        for token, i in vocab.items():
            self._id(i, f"{where}.vocab[{token[:50]!r}]")
            if len(token) > MAX_TOKEN_CHARS:
                self.fail(f"{where}.vocab", f"a token of {len(token)} characters, more than {MAX_TOKEN_CHARS}")
        merges = m["merges"]
        if not isinstance(merges, list) or len(merges) > MAX_VOCAB:
            self.fail(f"{where}.merges", f"expected a list of at most {MAX_VOCAB} merges")
        for k, merge in enumerate(merges):
            ok = (isinstance(merge, str) and merge.count(" ") == 1) or (
                isinstance(merge, list) and len(merge) == 2 and all(isinstance(x, str) for x in merge))
            if not ok:
                self.fail(f"{where}.merges[{k}]", 'expected "left right" or ["left", "right"]')
        return vocab

    def added_tokens(self, tokens, where: str = "added_tokens") -> list[dict]:
        if tokens is None:
            return []
        if not isinstance(tokens, list) or len(tokens) > MAX_VOCAB:
            self.fail(where, f"expected a list of at most {MAX_VOCAB} tokens")
        for k, t in enumerate(tokens):
            here = f"{where}[{k}]"
            self.obj(t, here, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"},
                     {"id", "content"})
            self._id(t["id"], f"{here}.id")
            self.text(t["content"], f"{here}.content", MAX_TOKEN_CHARS, empty=False)
            for key in ("single_word", "lstrip", "rstrip", "normalized", "special"):
                self.flag(t, key, here)
        return tokens

    def _id(self, i, where: str) -> None:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < MAX_VOCAB:
            self.fail(where, f"expected a token id in [0, {MAX_VOCAB}), got {str(i)[:50]}")

    def _type(self, value, where: str) -> str:
        if not isinstance(value, dict):
            self.fail(where, f"expected an object, got {_kind(value)}")
        kind = value.get("type")
        if not isinstance(kind, str):
            self.fail(where, "no \"type\"")
        return kind


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def check_tokenizer_json(doc, path: Path) -> TokenizerSpec:
    """Check a parsed tokenizer.json against what rwkv_np accepts (see the module docstring)."""
    c = _Checker(path)
    c.obj(doc, "top level", {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
                             "post_processor", "decoder", "model"}, {"model", "pre_tokenizer"})
    c.text(doc.get("version", ""), "version", MAX_LITERAL)
    growth = c.normalizer(doc.get("normalizer")) * c.pre_tokenizer(doc["pre_tokenizer"])
    if growth > MAX_EXPANSION:
        c.fail("normalizer and pre_tokenizer", f"together they can make a text up to {growth}x longer; at most "
                                               f"{MAX_EXPANSION}x is accepted")
    c.decoder(doc.get("decoder"))
    for key in ("post_processor", "truncation", "padding"):  # not used, not passed on: only their type is checked
        if not isinstance(doc.get(key), (dict, type(None))):
            c.fail(key, f"expected an object or null, got {_kind(doc.get(key))}")
    vocab = c.model(doc["model"])
    added = c.added_tokens(doc.get("added_tokens"))

    pieces: dict[int, str] = {}
    for token, i in vocab.items():
        if pieces.setdefault(i, token) != token:
            c.fail("model.vocab", f"id {i} is given to two tokens, {pieces[i][:50]!r} and {token[:50]!r}")
    for t in added:
        pieces.setdefault(t["id"], t["content"])  # an added token may restate a vocabulary entry
    n = max(pieces) + 1
    if len(pieces) != n:
        missing = next(i for i in range(n) if i not in pieces)
        c.fail("model.vocab and added_tokens", f"token ids must be 0..{n - 1} without gaps; {missing} is missing")

    checked = dict(doc)
    checked.update(post_processor=None, truncation=None, padding=None)
    return TokenizerSpec(json=json.dumps(checked, ensure_ascii=False), vocab_size=n,
                         pieces=[pieces[i] for i in range(n)], added={t["content"] for t in added},
                         expansion=growth)
