"""tokenizer.json is untrusted input: what it may contain is checked before `tokenizers` sees it,
what `tokenizers` does is contained, and how much text it gets is bounded by what the file can do."""

import copy
import json
import os
import time
from pathlib import Path

import pytest

from rwkv_np.errors import ArgumentError
from rwkv_np.tokenizer import NeoXTokenizer, get_tokenizer
from rwkv_np.tokenizer_json import ENCODE_BUDGET_BYTES, GPT2_PATTERN, MAX_TOKENIZER_BYTES

from helpers import TOKENIZER_JSON, need

TEXT = "Hello my name is Jasmine. 日本語 ünïcödé 🎉\n\n    x = f(y) + 12345;\t'll 'd  \r\n" * 3


@pytest.fixture(scope="module")
def neox_doc():
    return json.loads(need(TOKENIZER_JSON).read_text(encoding="utf-8"))


def _write(tmp_path, doc, name="tokenizer.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _variant(doc, **changes):
    out = copy.deepcopy(doc)
    for key, value in changes.items():
        out[key] = value
    return out


def _mini_doc():
    """A complete byte-level BPE of 258 tokens, small enough to mutate hundreds of times."""
    from rwkv_np.tokenizer import _byte_level_alphabet

    vocab = {ch: i for i, ch in enumerate(sorted(_byte_level_alphabet(), key=_byte_level_alphabet().get))}
    vocab.update({"Ġt": 256, "he": 257})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": 0, "content": "\u0100", "special": True, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False}],
            "normalizer": {"type": "NFC"}, "pre_tokenizer": byte_level, "post_processor": None,
            "decoder": dict(byte_level), "model": {"type": "BPE", "dropout": None, "unk_token": None,
                                                   "continuing_subword_prefix": None, "end_of_word_suffix": None,
                                                   "fuse_unk": False, "vocab": vocab, "merges": ["Ġ t", "h e"]}}


@pytest.fixture
def mini_doc():
    return _mini_doc()


def test_the_neox_file_passes_and_tokenizes_as_the_library_does(neox_doc):
    from tokenizers import Tokenizer

    tok = NeoXTokenizer(TOKENIZER_JSON)
    assert (tok.vocab_size, tok.expansion, tok.max_input_bytes) == (50277, 3 * 2, 1 << 20)  # NFC 3x, ByteLevel 2x
    raw = Tokenizer.from_file(str(TOKENIZER_JSON))  # what passes is re-serialised: same ids
    assert tok.encode(TEXT) == raw.encode(TEXT, add_special_tokens=False).ids
    assert tok.decode_bytes(tok.encode(TEXT)) == TEXT.encode()


def _replace(pattern, content):
    return {"type": "Replace", "pattern": {"String": pattern}, "content": content}


# normalizers that can make a text grow without bound, or too much: refused from the structure
@pytest.mark.parametrize("normalizer,growth", [
    ({"type": "Sequence", "normalizers": [_replace("a", "a" * 10)] * 6}, 2 * 10**6),  # the bomb
    ({"type": "Sequence", "normalizers": [_replace("a", "aa")] * 6}, 2 * 2**6),
    (_replace("x", "y" * 40), 2 * 40),
    ({"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "NFKD"}]}, 2 * 18 * 18),
    ({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁" * 12}, {"type": "Lowercase"}]},
     2 * 37 * 3),
])
def test_expanding_normalizers_are_refused(tmp_path, mini_doc, normalizer, growth):
    path = _write(tmp_path, _variant(mini_doc, normalizer=normalizer))
    with pytest.raises(ArgumentError, match=rf"tokenizer file {path}: normalizer and pre_tokenizer: together they "
                                            rf"can make a text up to {growth}x longer; at most 64x"):
        NeoXTokenizer(path)


@pytest.mark.parametrize("normalizer,growth", [
    (None, 2), ({"type": "NFKC"}, 36), (_replace(" ", "Ġ"), 4), (_replace("abc", "xy"), 2),
    ({"type": "Sequence", "normalizers": [{"type": "NFC"}, _replace("a", "bb"),
                                                {"type": "Strip", "strip_left": True, "strip_right": False}]}, 12)])
def test_bounded_normalizers_pass_and_bound_the_input(tmp_path, mini_doc, normalizer, growth):
    tok = NeoXTokenizer(_write(tmp_path, _variant(mini_doc, normalizer=normalizer)))
    assert tok.expansion == growth and tok.max_input_bytes == ENCODE_BUDGET_BYTES // growth
    # what the normalizer did, undone: " " -> "Ġ" (bytes c4 a0) and "a" -> "bb"
    assert tok.decode_bytes(tok.encode("plain text")).replace(b"bb", b"a").replace(b"\xc4\xa0", b" ") == b"plain text"


def test_input_is_bounded_by_what_the_file_can_do(tmp_path, mini_doc):
    tok = NeoXTokenizer(_write(tmp_path, _variant(mini_doc, normalizer={"type": "NFKC"})))
    limit = ENCODE_BUDGET_BYTES // 36
    assert len(tok.encode("ab " * (limit // 3))) > 0  # just under: accepted
    with pytest.raises(ArgumentError, match=rf"prompt: {limit + 1} bytes of text, more than the {limit} bytes the "
                                            rf"tokenizer file .* accepts at once \(.* up to 36x longer"):
        tok.encode("é" + "x" * (limit - 1))  # counted in UTF-8 bytes, not characters
    with pytest.raises(ArgumentError, match=rf"prompt: {limit + 2} bytes of text"):
        tok.encode("\udcff" + "x" * (limit - 1))  # a stray byte reaches tokenizers as U+FFFD, 3 bytes
    with pytest.raises(ArgumentError, match=rf"prompt: {limit + 1} characters of text"):
        tok.encode("x" * (limit + 1))


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|a)*$", "(\\s*)*x", "\\d+", "a{1,100000}",
                                     GPT2_PATTERN + "|x"])
def test_regular_expressions_are_refused_unless_the_gpt2_one(tmp_path, mini_doc, pattern):
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    pre = {"type": "Sequence", "pretokenizers": [split, {"type": "ByteLevel", "add_prefix_space": False,
                                                         "trim_offsets": True, "use_regex": False}]}
    path = _write(tmp_path, _variant(mini_doc, pre_tokenizer=pre))
    with pytest.raises(ArgumentError, match=rf"{path}: pre_tokenizer.pretokenizers\[0\].pattern: regular "
                                            r"expressions are not accepted"):
        NeoXTokenizer(path)
    replace = {"type": "Replace", "pattern": {"Regex": pattern}, "content": ""}
    path = _write(tmp_path, _variant(mini_doc, normalizer=replace), "r.json")
    with pytest.raises(ArgumentError, match=rf"{path}: normalizer.pattern: regular expressions are not accepted"):
        NeoXTokenizer(path)


def test_the_gpt2_split_pattern_is_accepted_and_gives_the_same_tokens(tmp_path, neox_doc):
    split = {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False}
    pre = {"type": "Sequence", "pretokenizers": [split, {"type": "ByteLevel", "add_prefix_space": False,
                                                         "trim_offsets": True, "use_regex": False}]}
    tok = NeoXTokenizer(_write(tmp_path, _variant(neox_doc, pre_tokenizer=pre)))
    assert tok.encode(TEXT) == NeoXTokenizer(TOKENIZER_JSON).encode(TEXT)


def test_padding_truncation_and_post_processor_are_not_passed_on(tmp_path, neox_doc):
    padding = {"strategy": {"Fixed": 100_000}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 1,
               "pad_type_id": 0, "pad_token": "<|padding|>"}
    truncation = {"direction": "Right", "max_length": 1, "strategy": "LongestFirst", "stride": 0}
    post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}] * 50,
            "pair": [], "special_tokens": {}}
    tok = NeoXTokenizer(_write(tmp_path, _variant(neox_doc, padding=padding, truncation=truncation,
                                                  post_processor=post)))
    assert tok.encode("Hello my name is") == [12092, 619, 1416, 310]


def _model(doc, **changes):
    out = copy.deepcopy(doc)
    out["model"].update(changes)
    return out


@pytest.mark.parametrize("change,where,what", [
    (lambda d: _variant(d, extra=1), "top level", "unknown key 'extra'"),
    (lambda d: _variant(d, normalizer={"type": "NFC", "x": 1}), "normalizer", "unknown key 'x'"),
    (lambda d: _variant(d, normalizer={"type": "Precompiled", "precompiled_charsmap": "AAAA"}), "normalizer",
     "normalizer type 'Precompiled' is not supported"),
    (lambda d: _variant(d, normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"}] * 9}),
     "normalizer.normalizers", "expected a list of 1 to 8 parts, got 9"),
    (lambda d: _variant(d, normalizer=_replace("", "x")), "normalizer.pattern.String", "non-empty string"),
    (lambda d: _variant(d, pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer",
     "pre-tokenizer type 'Whitespace' is not supported"),
    (lambda d: _variant(d, pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "ByteLevel"}, {"type": "Digits"}]}), r"pre_tokenizer.pretokenizers\[0\]", "must end with ByteLevel"),
    (lambda d: _variant(d, decoder={"type": "WordPiece", "prefix": "##"}), "decoder",
     "decoder type 'WordPiece' is not supported"),
    (lambda d: _variant(d, post_processor=[1]), "post_processor", "expected an object or null, got a list"),
    (lambda d: _model(d, type="Unigram"), "model.type", "model type 'Unigram' is not supported"),
    (lambda d: _model(d, dropout=0.5), "model.dropout", "expected null or 0"),
    (lambda d: _model(d, fuse_unk="yes"), "model.fuse_unk", "expected true or false"),
    (lambda d: _model(d, merges=["a b c"]), r"model.merges\[0\]", "expected \"left right\""),
    (lambda d: _model(d, vocab={**d["model"]["vocab"], "zq": 2**31}), r"model.vocab\['zq'\]",
     r"expected a token id in \[0, 1048576\), got 2147483648"),
    (lambda d: _model(d, vocab={**d["model"]["vocab"], "zq": -1}), r"model.vocab\['zq'\]", "got -1"),
    (lambda d: _model(d, vocab={**d["model"]["vocab"], "zq": 7}), "model.vocab", "id 7 is given to two tokens"),
    (lambda d: _model(d, vocab={**d["model"]["vocab"], "zq": 60000}), "model.vocab and added_tokens",
     "token ids must be 0..60000 without gaps; 258 is missing"),
    (lambda d: _variant(d, added_tokens=d["added_tokens"] + [{"id": 258, "content": "x" * 2000}]),
     r"added_tokens\[1\].content", "at most 1024 characters, got 2000"),
    (lambda d: _variant(d, added_tokens=[{"id": 0}]), r"added_tokens\[0\]", "missing key 'content'"),
    (lambda d: [d], "top level", "expected an object, got a list"),
])
def test_each_part_outside_the_allow_list_is_refused_by_name(tmp_path, mini_doc, change, where, what):
    path = _write(tmp_path, change(mini_doc))
    with pytest.raises(ArgumentError, match=rf"^tokenizer file {path}: {where}: .*{what}"):
        NeoXTokenizer(path)


@pytest.mark.parametrize("data,what", [
    (b'{"model": {}, "model": {}}', r"the key 'model' appears twice"),
    (b"[" * 100_000, r"cannot read it as a tokenizers JSON file"),
    (b'{"version": NaN}', r"NaN is not a JSON number"),
    (b'{"version": "\xff"}', r"not UTF-8: invalid start byte at byte 13"),
    (b"", r"cannot read it as a tokenizers JSON file"),
])
def test_malformed_json_is_refused(tmp_path, data, what):
    (tmp_path / "t.json").write_bytes(data)
    with pytest.raises(ArgumentError, match=rf"tokenizer file .*t\.json: .*{what}"):
        NeoXTokenizer(tmp_path / "t.json")


def test_oversized_fifo_and_folder_are_refused_without_reading(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_TOKENIZER_BYTES + 1)  # sparse: nothing is written, nothing must be read
    with pytest.raises(ArgumentError, match=rf"big\.json: {MAX_TOKENIZER_BYTES + 1} bytes, more than the "
                                            rf"{MAX_TOKENIZER_BYTES}"):
        NeoXTokenizer(big)
    os.mkfifo(tmp_path / "fifo.json")  # a blocking open would wait for a writer forever
    for path in (tmp_path / "fifo.json", tmp_path):
        with pytest.raises(ArgumentError, match=rf"tokenizer file {path}: not a regular file"):
            get_tokenizer(50277, tokenizer_path=path)


def test_a_panic_inside_tokenizers_becomes_our_error(neox_doc):
    """The checks above keep such a file out; if the library panics anyway, it is contained."""
    from tokenizers import Tokenizer

    tok = NeoXTokenizer(TOKENIZER_JSON)
    evil = _variant(neox_doc, pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a|a)*$"},
                                             "behavior": "Isolated", "invert": False})
    tok._tok = Tokenizer.from_str(json.dumps(evil))  # bypassing the checks on purpose
    t0 = time.perf_counter()
    with pytest.raises(ArgumentError, match=rf"tokenizer file {TOKENIZER_JSON}: the tokenizers library failed while "
                                            r"encoding the prompt \(PanicException: "):
        tok.encode("a" * 40 + "b")
    assert time.perf_counter() - t0 < 10  # Oniguruma's retry limit ends the backtracking


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "vocab":  # 258 entries: mutated as a whole, not one by one
                yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):
            yield from _paths(v, prefix + (i,))


def test_random_mutations_load_or_are_refused_by_name(tmp_path):
    import random

    base = _mini_doc()
    ok = NeoXTokenizer(_write(tmp_path, base))
    assert ok.vocab_size == 258 and ok.decode_bytes(ok.encode("the hat")) == b"the hat"
    paths = list(_paths(base))[1:]
    values = [None, True, -1, 2**40, 1.5, "x", "", [], {}, "a" * 2000, {"type": "NFC"}, {"type": "Sequence"},
              {"String": "a"}, {"Regex": ".*"}, [{"type": "NFKC"}] * 9, {"type": "ByteLevel"}, "Ġ"]
    rng = random.Random(15)
    outcomes = {"loaded": 0, "refused": 0}
    for trial in range(400):
        doc = copy.deepcopy(base)
        for _ in range(rng.choice((1, 1, 2))):
            *parent_path, key = rng.choice(paths)
            parent = doc
            try:
                for step in parent_path:
                    parent = parent[step]
                if rng.random() < 0.15 and isinstance(parent, dict):
                    parent.pop(key, None)
                else:
                    parent[key] = copy.deepcopy(rng.choice(values))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed the path
        path = _write(tmp_path, doc, f"m{trial}.json")
        try:
            tok = NeoXTokenizer(path)
        except ArgumentError as e:
            assert str(e).startswith(f"tokenizer file {path}: "), e
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        try:
            ids = tok.encode("the hat, \u00e9t\u00e9 \u2126")
        except ArgumentError as e:
            assert str(path) in str(e)
            continue
        assert all(0 <= i < tok.vocab_size for i in ids)
    assert outcomes["loaded"] > 20 and outcomes["refused"] > 100, outcomes  # both sides were exercised
