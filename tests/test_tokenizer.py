"""Byte and GPT-NeoX-20B tokenizers, streaming UTF-8, and how the tokenizer file is found."""

import shutil

import pytest

from rwkv_np import download
from rwkv_np.errors import ArgumentError, DownloadError
from rwkv_np.tokenizer import ByteTokenizer, NeoXTokenizer, Utf8Stream, get_tokenizer, text_to_utf8

from helpers import TOKENIZER_JSON as NEOX_JSON


@pytest.fixture(scope="module")
def neox():
    if not NEOX_JSON.is_file():
        pytest.skip(f"GPT-NeoX tokenizer missing: {NEOX_JSON}")
    return NeoXTokenizer(NEOX_JSON)


def test_bytes_round_trip():
    tok = ByteTokenizer()
    assert tok.encode("hé") == [104, 195, 169]
    assert tok.decode_bytes([104, 195, 169]) == "hé".encode()
    assert tok.decode([0xFF, 65]) == "\ufffdA"  # invalid UTF-8 never raises


def test_bytes_out_of_range_id():
    with pytest.raises(ArgumentError, match=r"token id 256 is outside the vocabulary \[0, 256\)"):
        ByteTokenizer().decode_bytes([65, 256])


def test_non_utf8_command_line_bytes():
    # a non-UTF-8 argv byte 0xFF arrives as the surrogate U+DCFF and goes back to 0xFF
    assert ByteTokenizer().encode("a\udcff") == [97, 255]
    # a lone surrogate from elsewhere cannot be UTF-8: it becomes U+FFFD
    assert text_to_utf8("\ud800x") == "\ufffdx".encode()


def test_neox_known_ids(neox):
    # the input ids the transformers RWKV test uses for this prompt
    assert neox.encode("Hello my name is") == [12092, 619, 1416, 310]
    assert neox.vocab_size == 50277
    assert neox.eos_id == 0 and neox.decode_bytes([0]) == b"<|endoftext|>"


def test_neox_bytes_agree_with_tokenizers(neox):
    ids = list(range(0, neox.vocab_size, 23)) + [0, 1, 187, 50254, 50276]
    for i in ids:
        assert neox.decode_bytes([i]).decode("utf-8", errors="replace") == neox._tok.decode(
            [i], skip_special_tokens=False), i


def test_neox_round_trip_and_split_characters(neox):
    text = "Hello my name is Jasmine. 日本語 ünïcödé 🎉\n\n    x"
    ids = neox.encode(text)
    assert neox.decode_bytes(ids) == text.encode()
    pieces = [neox.decode_bytes([i]) for i in ids]
    # some character really is split across tokens, so streaming matters
    assert any(p and not _valid_utf8(p) for p in pieces)
    stream = Utf8Stream()
    out = [stream.push(p) for p in pieces] + [stream.flush()]
    assert "".join(out) == text and "\ufffd" not in "".join(out)


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_utf8_stream_holds_only_incomplete_characters():
    s = Utf8Stream()
    assert s.push("日".encode()[:1]) == ""
    assert s.push("日".encode()[1:2]) == ""
    assert s.push("日".encode()[2:] + b"!") == "日!"
    assert s.push(b"\xff") == "\ufffd"        # can never start a character: out at once
    assert s.push(b"\xc3") == ""
    assert s.push(b"A") == "\ufffdA"          # the lead byte's continuation never came
    assert s.push(b"\xe6\x97") == ""
    assert s.flush() == "\ufffd"              # dangling at the end of the stream


def test_get_tokenizer_bytes_and_explicit(neox):
    assert isinstance(get_tokenizer(256), ByteTokenizer)
    tok = get_tokenizer(50277, tokenizer_path=NEOX_JSON)
    assert isinstance(tok, NeoXTokenizer) and tok.vocab_size == 50277


def test_get_tokenizer_beside_checkpoint(neox, tmp_path):
    shutil.copy(NEOX_JSON, tmp_path / "20B_tokenizer.json")
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"")
    assert get_tokenizer(50277, checkpoint_tokenizer_path=ckpt).path == tmp_path / "20B_tokenizer.json"
    assert get_tokenizer(50277, checkpoint_tokenizer_path=tmp_path).path == tmp_path / "20B_tokenizer.json"


def test_get_tokenizer_missing_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "cached_tokenizer_path", lambda: None)
    with pytest.raises(DownloadError, match=r"no tokenizer found for a model with vocab 50277.*--tokenizer"):
        get_tokenizer(50277, checkpoint_tokenizer_path=tmp_path / "model.pth")
    with pytest.raises(ArgumentError, match=r"--tokenizer .*nope.json: no such file"):
        get_tokenizer(50277, tokenizer_path=tmp_path / "nope.json")


def test_get_tokenizer_rejects_bad_json_and_small_model(neox, tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ArgumentError, match=r"tokenizer file .*tokenizer.json: cannot read it as a tokenizers JSON"):
        get_tokenizer(50277, tokenizer_path=bad)
    for model_vocab in (256, 50276, 50304, 65536):  # a vocabulary of another size is another tokenizer's
        with pytest.raises(ArgumentError, match=rf"20B_tokenizer.json: its vocabulary has 50277 tokens but the "
                                                rf"model has {model_vocab}: it is not this model's tokenizer"):
            get_tokenizer(model_vocab, tokenizer_path=NEOX_JSON)
