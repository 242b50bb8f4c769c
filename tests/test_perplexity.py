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

from helpers import SHAKESPEARE, TOKENIZER_JSON, TORCH_WRITTEN, need, tiny_weights, write_torch_zip


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
