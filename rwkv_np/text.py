"""Text and token ids, as every tokenizer takes and gives them: UTF-8 bytes that never raise, and ids
checked against the vocabulary."""

from __future__ import annotations

from .errors import ArgumentError


def text_to_utf8(text: str) -> bytes:
    """UTF-8 bytes of `text`, never raising.

    Command-line arguments that were not valid UTF-8 reach Python as lone surrogates
    (surrogateescape); they turn back into the original bytes. Any other lone surrogate, which
    UTF-8 cannot encode, becomes U+FFFD.
    """
    try:
        return text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text).encode("utf-8")


def check_ids(ids, vocab_size: int, what: str) -> list[int]:
    """ids as a list of ints in [0, vocab_size), or an ArgumentError naming `what`."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ArgumentError(f"{what}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids
