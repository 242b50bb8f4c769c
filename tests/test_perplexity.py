"""`python -m rwkv_np perplexity` and rwkv_np/perplexity.py."""

import re

import numpy as np
import pytest

import rwkv_np
from rwkv_np import perplexity as P
from rwkv_np.cli import ASSETS, main
from rwkv_np.errors import ArgumentError
from rwkv_np.rwkv4 import reference
from rwkv_np.tokenizer import NeoXTokenizer

from helpers import (SHAKESPEARE, TOKENIZER_JSON, TORCH_WRITTEN, expected_model_weights, need, random_flat,
                     safetensors_bytes, tiny_weights, write_torch_zip)


def _scored(calls):
    return [t for a, b, first in calls for t in range(first + 1, b + 1)]


def test_plan_scores_every_token_once():
    assert P.plan(11, 4, None, False) == [(0, 4, 0), (4, 8, 4)]  # whole windows only: (11 - 1) // 4
    assert P.plan(11, 4, None, True) == [(0, 4, 0), (4, 8, 4), (8, 10, 8)]
    assert P.plan(11, 4, 3, False) == [(0, 4, 0), (3, 7, 4), (6, 10, 7)]
    for n, ctx, stride in [(11, 4, 2), (12, 4, 1), (100, 16, 5), (17, 16, 16), (5, 16, 3)]:
        assert _scored(P.plan(n, ctx, stride, stride != ctx)) == list(range(1, n))
        # every scored token has at least ctx - stride tokens before it in its window (or all there are)
        for a, b, first in P.plan(n, ctx, stride, False):
            assert first == 0 or first - a >= ctx - stride


@pytest.mark.parametrize("args, message", [
    ((10, 0, None, False), "ctx: must be at least 1 token, got 0"),
    ((10, 4, 5, False), r"stride: must be between 1 and ctx \(4\), got 5"),
    ((10, 4, 0, False), r"stride: must be between 1 and ctx \(4\), got 0"),
    ((1, 4, None, True), r"data: 1 token\(s\); at least 2"),
    ((4, 4, None, False), r"data: 4 tokens are fewer than one window of ctx \+ 1 = 5"),
])
def test_plan_errors_name_the_argument(args, message):
    with pytest.raises(ArgumentError, match=message):
        P.plan(*args)


def _reference_losses(params, tokens):
    """-ln p of tokens[1:] given the tokens before, by RWKV-4's reference in float32 + a float64 softmax."""
    logits = reference.forward(params, tokens)[0].astype(np.float64)
    z = logits[:-1] - logits[:-1].max(1, keepdims=True)
    return -(z[np.arange(len(z)), tokens[1:]] - np.log(np.exp(z).sum(1)))


@pytest.fixture(scope="module")
def small(small_model):
    return small_model


def test_windows_and_carried_state_against_the_reference(small):
    tokens = np.random.default_rng(0).integers(0, 256, 70)
    ones = np.ones(256, np.int64)
    # two windows of 32 from the initial state: tokens 1..64 scored, each window on its own
    r = P.evaluate(small, tokens, ones, ctx=32)
    want = np.concatenate([_reference_losses(small.params, tokens[a:a + 33]) for a in (0, 32)])
    assert (r.tokens, r.bytes, r.processed) == (64, 64, 64)
    assert r.nats == pytest.approx(want.sum(), rel=1e-5)
    assert r.loss_per_byte == r.loss_per_token and r.perplexity == pytest.approx(np.exp(want.mean()), rel=1e-5)
    # the state carried: the whole text is one sequence, read 32 tokens per call
    for mode in ("parallel", "recurrent"):
        c = P.evaluate(small, tokens, ones, ctx=32, carry_state=True, mode=mode)
        assert c.tokens == 69 and c.nats == pytest.approx(_reference_losses(small.params, tokens).sum(), rel=1e-5)
    # a sliding window scores each token once, from its own window's start
    s = P.evaluate(small, tokens, ones, ctx=32, stride=8)
    want = sum(_reference_losses(small.params, tokens[a:b + 1])[first - a:].sum()
               for a, b, first in P.plan(70, 32, 8, False))
    assert s.tokens == 69 and s.nats == pytest.approx(want, rel=1e-5)


def test_bytes_per_token_count_in_the_per_byte_loss(small):
    tokens = np.arange(40) % 7
    token_bytes = np.full(256, 3)
    r = P.evaluate(small, tokens, token_bytes, ctx=13)
    assert r.bytes == 3 * r.tokens == 3 * 39 and r.loss_per_byte == pytest.approx(r.loss_per_token / 3)


def _run(capsys, *argv):
    code = main(["perplexity", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _loss(out: str) -> tuple[float, float]:
    m = re.search(r"loss: ([\d.]+) nats/token, ([\d.]+) nats/byte", out)
    return float(m.group(1)), float(m.group(2))


def test_cli_matches_the_library_and_shows_progress(capsys, tmp_path, small):
    text = bytes(np.random.default_rng(1).integers(32, 127, 300).astype(np.uint8))
    (tmp_path / "t.txt").write_bytes(text)
    code, out, err = _run(capsys, "--model", str(TORCH_WRITTEN / "small_fp32.pth"), "--data", str(tmp_path / "t.txt"),
                          "--ctx", "64", "--from", "0.5")
    assert code == 0
    r = P.evaluate(small, np.frombuffer(text[150:], np.uint8), np.ones(256, np.int64), ctx=64)
    assert _loss(out) == (round(r.loss_per_token, 5), round(r.loss_per_byte, 5))
    assert "150 bytes, 150 tokens" in out and "consecutive windows of 64 tokens, each from the initial state" in out
    assert "scored: 128 tokens, 128 bytes" in out and re.search(r"speed: \d+ tokens/s", out)
    assert "[" + "#" * 30 + "] 2/2" in err and "tok/s" in err  # the progress bar, on stderr only
    # --quantize int8 and --carry-state: the mean loss moves by at most 2 max|logit change|
    # (-ln softmax(z)[t] = logsumexp(z) - z[t], and each term moves by at most max|dz|)
    code, out8, _ = _run(capsys, "--model", str(TORCH_WRITTEN / "small_fp32.pth"), "--data", str(tmp_path / "t.txt"),
                         "--ctx", "64", "--from", "0.5", "--quantize", "int8", "--carry-state")
    assert code == 0 and "weights int8" in out8 and "one sequence, state carried across" in out8
    tokens = np.frombuffer(text[150:], np.uint8)
    c = P.evaluate(small, tokens, np.ones(256, np.int64), ctx=64, carry_state=True)
    m8 = rwkv_np.load_model(TORCH_WRITTEN / "small_fp32.pth", quantize="int8")
    dz = np.abs(m8.forward(tokens, return_all=True)[0] - small.forward(tokens, return_all=True)[0]).max()
    assert "scored: 149 tokens" in out8 and 0 < abs(_loss(out8)[0] - c.loss_per_token) <= 2 * dz + 1e-4


def test_cli_errors(capsys, tmp_path):
    (tmp_path / "t.txt").write_bytes(b"x" * 100)
    model = str(TORCH_WRITTEN / "small_fp32.pth")
    for argv, message in [
        (["--data", str(tmp_path / "none.txt")], "--data"),
        (["--data", str(tmp_path)], "not a regular file"),
        (["--data", str(tmp_path / "t.txt"), "--from", "1"], r"--from: a fraction of the file in \[0, 1\), got 1.0"),
        (["--data", str(tmp_path / "t.txt"), "--ctx", "100"], r"data: 100 tokens are fewer than one window"),
        (["--data", str(tmp_path / "t.txt"), "--stride", "300"], r"stride: must be between 1 and ctx \(256\)"),
        (["--data", str(tmp_path / "t.txt"), "--max-tokens", "1"], "--max-tokens: at least 2, got 1"),
    ]:
        code, out, err = _run(capsys, "--model", need(TORCH_WRITTEN / "small_fp32.pth").as_posix(), *argv)
        assert code == 2 and out == "" and re.search(message, err) and err.startswith("error: "), (argv, err)
    with pytest.raises(SystemExit):  # argparse: only int8 is a --quantize choice
        main(["perplexity", "--model", model, "--data", str(tmp_path / "t.txt"), "--quantize", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_shipped_model_held_out_definition():
    """The default reading is the README's held-out loss: consecutive 256-byte windows of the last
    10% of tiny shakespeare, each from the initial state. Checked on its first 6 windows against the
    trainer's own evaluation (rwkv_np/training: another implementation of the forward pass)."""
    from rwkv_np.training.checkpoint import load_params
    from rwkv_np.training.model import evaluate

    data = np.fromfile(need(SHAKESPEARE), np.uint8)
    held = data[int(0.9 * len(data)):][:6 * 256 + 1]
    model = rwkv_np.load_model(ASSETS / "rwkv4-shakespeare.safetensors", keep_16bit=True)
    r = P.evaluate(model, held, np.ones(256, np.int64))
    assert r.tokens == 6 * 256
    trainer = evaluate(load_params(ASSETS / "rwkv4-shakespeare.safetensors"), held, 256)
    assert r.loss_per_byte == pytest.approx(trainer, abs=1e-5)


def test_bpe_text_counts_bytes_per_token(capsys, tmp_path):
    """A vocab-50277 model reads the text through the GPT-NeoX tokenizer; the per-byte loss divides
    by the bytes of the scored tokens: all of the text but its first token."""
    tok = NeoXTokenizer(need(TOKENIZER_JSON))
    write_torch_zip(tmp_path / "m.pth", tiny_weights(C=8, V=50277, F=32))
    text = "The quick brown fox jumps over the lazy dog.\n" * 6
    (tmp_path / "t.txt").write_text(text)
    code, out, _ = _run(capsys, "--model", str(tmp_path / "m.pth"), "--data", str(tmp_path / "t.txt"),
                        "--tokenizer", str(TOKENIZER_JSON), "--carry-state", "--ctx", "16")
    ids = tok.encode(text)
    first = len(tok.decode_bytes(ids[:1]))
    assert code == 0 and f"{len(ids)} tokens" in out
    assert f"scored: {len(ids) - 1} tokens, {len(text) - first} bytes" in out
    per_token, per_byte = _loss(out)
    assert per_byte == pytest.approx(per_token * (len(ids) - 1) / (len(text) - first), abs=2e-5)


def test_generate_quantize_option(capsys):
    path = need(TORCH_WRITTEN / "small_fp32.pth")
    assert main(["generate", "hi", "--model", str(path), "-n", "4", "--seed", "0", "--quantize", "int8"]) == 0
    assert "generated: 4 tokens" in capsys.readouterr().err


# ---- memory: one chunk of logits at a time, the same numbers ----------------------------------------

def _old_evaluate(model, tokens, token_bytes, ctx, stride=None, carry_state=False, mode="parallel"):
    """perplexity.evaluate as it was before it read a window chunk by chunk: every call's (T, V) logits
    at once, their losses in one float64 pass, summed once per call."""
    tokens = np.asarray(tokens, np.int64)
    nats, scored, n_bytes, state = 0.0, 0, 0, None
    for a, b, first in P.plan(len(tokens), ctx, stride, carry_state):
        logits, new_state = model.forward(tokens[a:b], state if carry_state else None, mode=mode, return_all=True)
        if carry_state:
            state = new_state
        targets = tokens[first + 1:b + 1]
        nats += float(P.token_losses(logits[first - a:], targets).sum())
        scored += len(targets)
        n_bytes += int(token_bytes[targets].sum())
    return nats, scored, n_bytes


@pytest.mark.parametrize("version", ["4", "7"])
def test_chunk_by_chunk_gives_the_old_numbers_bit_for_bit(tmp_path, version):
    """Windows read model.chunk_size tokens at a time (here 16, so that windows of 40 and 37 tokens
    span several chunks and chunks end inside the scored part), losses LOSS_ROWS rows at a time: the
    totals equal those of whole windows, bit for bit, in every reading and both forms."""
    if version == "4":
        flat = expected_model_weights(tiny_weights(n_layer=2, C=8, V=300, F=32, seed=7))
    else:
        flat = random_flat("7", seed=7, dims={"V": 300})
    model = rwkv_np.RWKV(flat)
    model.chunk_size = 16
    tokens = np.random.default_rng(3).integers(0, 300, 211)
    per_id = np.random.default_rng(4).integers(1, 5, 300)
    for ctx, stride, carry in [(40, None, False), (37, 9, False), (40, None, True), (16, None, False),
                               (250, None, True), (5, 2, False)]:
        for mode in ("parallel", "recurrent"):
            old = _old_evaluate(model, tokens, per_id, ctx, stride, carry, mode)
            new = P.evaluate(model, tokens, per_id, ctx=ctx, stride=stride, carry_state=carry, mode=mode)
            assert (new.nats, new.tokens, new.bytes) == old, (ctx, stride, carry, mode)
    # and a block of rows gives each row's loss as the whole gives it
    logits = model.forward(tokens[:100], return_all=True)[0]
    whole = P.token_losses(logits, tokens[1:101])
    for rows in (1, 7, 64, 100):
        assert np.array_equal(P._losses_by_block(logits, tokens[1:101], rows), whole)


def test_memory_is_one_chunk_whatever_the_context():
    """The largest memory evaluate allocates (NumPy's, as tracemalloc sees it) is a chunk's logits and
    a block of losses, the same for a window of 1024 tokens as for one of 4096; the old way held a
    window's (T, V) logits three times over (float32, float64, and exp's float64 temporary)."""
    import tracemalloc

    V, chunk = 4096, 256
    model = rwkv_np.RWKV(expected_model_weights(tiny_weights(n_layer=1, C=8, V=V, F=16, seed=0)))
    model.chunk_size = chunk
    tokens = np.random.default_rng(0).integers(0, V, 4097)
    ones = np.ones(V, np.int64)
    P.evaluate(model, tokens[:300], ones, ctx=chunk + 10)  # compiled and warm before measuring
    peaks = {}
    for ctx in (1024, 4096):
        tracemalloc.start()
        try:
            r = P.evaluate(model, tokens, ones, ctx=ctx)
            peaks[ctx] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert r.tokens == 4096
    # a chunk's float32 logits twice (the engine's and RWKV.forward's concatenation), a block of
    # LOSS_ROWS float64 rows three times (the widened copy, its shifted copy, exp's result)
    bound = 2 * chunk * V * 4 + 3 * P.LOSS_ROWS * V * 8 + (1 << 20)
    assert peaks[4096] <= bound and peaks[1024] <= bound, (peaks, bound)
    assert abs(peaks[4096] - peaks[1024]) < (1 << 20)
    assert bound < 4096 * V * 4  # less than one window's float32 logits alone


# ---- bytes per token: the file's bytes ----------------------------------------------------------------

def _by_walking(token_bytes: list[bytes], data: bytes) -> list[int]:
    """The bytes of `data` each token stands for, found by walking the file byte by byte beside the
    tokens' bytes: a byte of valid text is itself; an invalid sequence (as Python's decoder delimits
    it) reached the tokenizer as U+FFFD (EF BF BD), and the token holding its last byte stands for it."""
    spans, a = {}, 0
    while a < len(data):
        try:
            data[a:].decode("utf-8")
            break
        except UnicodeDecodeError as e:
            spans[a + e.start] = a + e.end
            a += e.end
    counts, f, pending = [], 0, 0
    for tb in token_bytes:
        n = 0
        for byte in tb:
            if pending:
                assert byte == b"\xef\xbf\xbd"[pending]
                pending += 1
                if pending == 3:
                    n, f, pending = n + spans[f] - f, spans[f], 0
            elif f in spans:
                assert byte == 0xEF
                pending = 1
            else:
                assert data[f] == byte, (f, data[f:f + 8], tb)
                f, n = f + 1, n + 1
        counts.append(n)
    assert f == len(data) and not pending
    return counts


# invalid UTF-8 of every kind: stray bytes, a cut-off sequence of 2 or 3 bytes, lone continuation bytes,
# an overlong encoding, an encoded surrogate, a code point above U+10FFFF, and valid text around them
# (a literal U+FFFD, a 4-byte emoji, accents)
HOSTILE_TEXT = (b"Caf\xc3\xa9 au lait \xff\xfe at noon.\n\xe2\x82 half a euro\n\x80\x80\x80 and \xc0\xaf slash\n"
                b"\xed\xa0\x80 surrogate \xf4\x90\x80\x80 too far \xef\xbf\xbd literal \xf0\x9f\x98\x80 smile\n"
                b"\xe2\x82\xac euro \xf0\x9f\x98 cut emoji\n\n   spaces \xa0\xa0 nbsp\n")


@pytest.fixture(scope="module")
def neox():
    return NeoXTokenizer(need(TOKENIZER_JSON))


@pytest.mark.parametrize("piece_bytes", [P.PIECE_BYTES, 40])
def test_a_bpe_tokenizer_counts_the_files_bytes_token_by_token(neox, monkeypatch, piece_bytes):
    monkeypatch.setattr(P, "PIECE_BYTES", piece_bytes)  # 40: many pieces, each cut after a newline
    rng = np.random.default_rng(5)
    shakespeare = need(SHAKESPEARE).read_bytes()[:2000]
    noisy = bytearray(shakespeare)
    for at in sorted(rng.choice(len(noisy), 60, replace=False))[::-1]:
        noisy[at:at] = bytes(rng.integers(128, 256, int(rng.integers(1, 4))).astype(np.uint8))
    for data in (HOSTILE_TEXT, bytes(noisy), HOSTILE_TEXT * 3 + bytes(noisy[:500]), b"\xff", b"ok\n\xe2\x82"):
        ids, counts = P.tokenize(neox, data)
        assert counts.sum() == len(data) and (counts >= 0).all()
        assert counts.tolist() == _by_walking([neox.decode_bytes([i]) for i in ids], data)
    # valid text: each token stands for its own bytes, as before
    ids, counts = P.tokenize(neox, shakespeare)
    assert counts.tolist() == [len(neox.decode_bytes([i])) for i in ids] and counts.sum() == len(shakespeare)


def test_a_normalizer_that_rewrites_the_text_keeps_the_total_exact(neox):
    """GPT-NeoX's NFC composes "e" + U+0301 into U+00E9 (3 bytes into 2): the tokens' bytes are not
    the text's, no exact alignment exists; the tokens before the first change and after the last keep
    their own bytes, those between share the rest, and the total is the file's."""
    head, tail = b"The first line is plain.\n", b"\nAnd the last line is plain too.\n"
    data = head + "re\u0301sume\u0301 cafe\u0301 \xff".encode("utf-8", "surrogateescape").replace(b"\\xff", b"") \
        + b"\xff" + tail
    ids, counts = P.tokenize(neox, data)
    pieces = [neox.decode_bytes([i]) for i in ids]
    assert b"".join(pieces) != data.decode("utf-8", "replace").encode()  # NFC did rewrite it
    assert counts.sum() == len(data) and (counts >= 0).all()
    n_head = [len(b"".join(pieces[:k])) for k in range(len(pieces) + 1)].index(len(head))
    assert counts[:n_head].tolist() == [len(p) for p in pieces[:n_head]]
    n_tail = [len(b"".join(pieces[k:])) for k in range(len(pieces) + 1)].index(len(tail))
    assert counts[n_tail:].tolist() == [len(p) for p in pieces[n_tail:]]


def test_byte_and_world_tokenizers_are_exact():
    from rwkv_np.tokenizer import ByteTokenizer
    from rwkv_np.world_tokenizer import WorldTokenizer, packaged_vocab_path

    ids, counts = P.tokenize(ByteTokenizer(), HOSTILE_TEXT)
    assert ids.tolist() == list(HOSTILE_TEXT) and counts.tolist() == [1] * len(HOSTILE_TEXT)
    if packaged_vocab_path() is None:
        pytest.skip("the World vocabulary rwkv_vocab_v20230424.txt is not installed (pip install rwkv)")
    world = WorldTokenizer(None)
    for data in (HOSTILE_TEXT, HOSTILE_TEXT * 50):
        ids, counts = P.tokenize(world, data)
        assert b"".join(world.decode_bytes([i]) for i in ids) == data  # its tokens are the file's bytes
        assert counts.tolist() == [len(world.decode_bytes([i])) for i in ids] and counts.sum() == len(data)


def test_the_issues_example_a_3000_byte_file_is_3000_bytes(capsys, tmp_path, neox, monkeypatch):
    """A 3000-byte file with invalid UTF-8 (the issue's: "1280 tokens standing for 3449 bytes of a
    3000-byte file"): the bytes scored are the file's, not the bytes of the U+FFFD the tokenizer saw."""
    rng = np.random.default_rng(11)
    data = bytearray(need(SHAKESPEARE).read_bytes()[:2800])
    for at in sorted(rng.choice(len(data), 200, replace=False))[::-1]:
        data[at] = int(rng.integers(128, 256))
    data = bytes(data + bytes(rng.integers(0, 256, 200).astype(np.uint8)))
    assert len(data) == 3000
    (tmp_path / "t.txt").write_bytes(data)
    ids = neox.encode(data.decode("utf-8", errors="surrogateescape"))
    old_bytes = sum(len(neox.decode_bytes([i])) for i in ids)  # what was counted before
    assert old_bytes > 3200
    write_torch_zip(tmp_path / "m.pth", tiny_weights(C=8, V=50277, F=32))
    monkeypatch.setattr(rwkv_np.RWKV, "choose_prefetch", lambda self, *a, **k: {})  # speed only: 1 s saved
    code, out, _ = _run(capsys, "--model", str(tmp_path / "m.pth"), "--data", str(tmp_path / "t.txt"),
                        "--tokenizer", str(TOKENIZER_JSON), "--carry-state", "--ctx", "256")
    tokens, counts = P.tokenize(neox, data)
    assert code == 0 and len(tokens) == len(ids) and f"3000 bytes, {len(ids)} tokens" in out
    assert f"scored: {len(ids) - 1} tokens, {3000 - counts[0]} bytes" in out
    per_token, per_byte = _loss(out)
    assert per_byte == pytest.approx(per_token * (len(ids) - 1) / (3000 - counts[0]), abs=2e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's, about the overflow reported here
def test_an_overflow_in_a_later_chunk_is_the_weights_alone(tmp_path):
    """Windows are read a chunk at a time, the state carried: an overflow in a window's second chunk
    (or in a later call of carry_state) is the weights' doing, from the initial state; the message
    says so and does not blame a state nobody gave."""
    from rwkv_np.errors import ModelError

    w = tiny_weights(n_layer=1, C=8, V=16, F=32, seed=2)
    w["emb.weight"][7] = np.finfo(np.float32).max
    w["blocks.0.ln1.weight"][:] = 0
    path = tmp_path / "row.safetensors"
    path.write_bytes(safetensors_bytes(w))
    model = rwkv_np.load_model(path)
    model.chunk_size = 4
    tokens = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4])
    for kw in (dict(ctx=12), dict(ctx=4, carry_state=True), dict(ctx=10, stride=3)):
        with pytest.raises(ModelError) as e:
            P.evaluate(model, tokens, np.ones(16, np.int64), **kw)
        message = str(e.value)
        assert message.startswith(f"the weights of {path} produce non-finite values (inf or NaN) "), (kw, message)
        assert message.endswith("some weights are too large for float32 arithmetic"), (kw, message)
        assert "given state" not in message and "that state" not in message
