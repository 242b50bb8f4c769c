"""The command line: generate (streaming, stats line, Ctrl-C, errors), download, train wiring, help."""

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

import rwkv_np
from rwkv_np import cli
from rwkv_np.tokenizer import ByteTokenizer

from helpers import REPO, RWKV_CPP, random_flat, tiny_rwkv_cpp, write_torch_zip

ROOT = REPO
TINY = RWKV_CPP / "tiny-rwkv-4v0-660K-FP32.bin"
STATS = re.compile(r"^prompt: \d+ tokens, \d+\.\d tok/s \| generated: \d+ tokens, \d+\.\d tok/s$")


class ScriptedModel:
    """Greedy output is `script`; raises KeyboardInterrupt on forward call number `interrupt_at`."""

    def __init__(self, script, interrupt_at=None):
        self.script, self.interrupt_at = list(script.encode()), interrupt_at
        self.config = SimpleNamespace(vocab_size=256)

    def forward(self, tokens, state=None, mode="parallel", return_all=False):
        step = (state or 0) + 1
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        logits = np.zeros(256, dtype=np.float32)
        logits[self.script[(step - 1) % len(self.script)]] = 10.0
        return logits, step


def fake_load(model):
    return lambda args: (model, ByteTokenizer())


def test_generate_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--model", "--max-tokens", "--temperature", "--top-p", "--top-k", "--presence-penalty",
                   "--frequency-penalty", "--seed", "--stop", "--tokenizer", "--mode"):
        assert option in out
    assert "0 = greedy" in out and "0 = off" in out and "1 = off" in out


def test_generate_streams_and_prints_one_stats_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("Hello there. Bye")))
    code = cli.main(["generate", "hi", "--max-tokens", "16", "--temperature", "0", "--stop", "Bye",
                     "--stop", "zz"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "Hello there. \n"
    lines = err.splitlines()
    assert len(lines) == 1 and STATS.match(lines[0]), err
    assert lines[0].startswith("prompt: 2 tokens") and "generated: 16 tokens" in lines[0]  # "Bye" ends at 16


def test_ctrl_c_prints_stats_and_exits_130(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("abcdefgh", interrupt_at=4)))
    code = cli.main(["generate", "x", "-n", "100", "-t", "0"])
    out, err = capsys.readouterr()
    assert code == 130
    assert out == "ab\n"  # 'c' was sampled but the interrupt came in its forward step
    assert STATS.match(err.splitlines()[-1]) and "generated: 2 tokens" in err and "Traceback" not in err


def test_errors_are_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("a")))
    assert cli.main(["generate", "x", "--top-p", "2"]) == 2
    assert capsys.readouterr().err == "error: top_p must be in (0, 1] (1 = off), got 2.0\n"
    assert cli.main(["generate", "", "-n", "3"]) == 2
    assert "error: prompt is empty" in capsys.readouterr().err


def test_argparse_rejects_non_numbers(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "x", "--max-tokens", "many"])
    assert e.value.code == 2 and "expected an integer, got 'many'" in capsys.readouterr().err


def test_missing_default_model(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "ASSETS", tmp_path)
    assert cli.main(["generate", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no --model given and no shipped model in ") and "--model PATH" in err
    (tmp_path / "b.safetensors").write_bytes(b"")
    (tmp_path / "a.safetensors").write_bytes(b"")
    assert cli.default_model_path() == tmp_path / "a.safetensors"


def test_unknown_model_name_or_path(capsys, tmp_path):
    assert cli.main(["generate", "x", "--model", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.pth" in err and len(err.splitlines()) == 1


def test_download_offline(capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli.main(["download", "169m"]) == 2
    assert capsys.readouterr().err.startswith("error: could not download RWKV-4-Pile-169M-20220807-8023.pth")


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "generate" in capsys.readouterr().err


def test_train_is_wired(capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0 and "usage: rwkv-np train" in capsys.readouterr().out
    import rwkv_np.training.run

    monkeypatch.setattr(rwkv_np.training.run, "run_train", lambda args: 7)
    assert cli.main(["train"]) == 7


# --- the real thing, in a subprocess -----------------------------------------------------------

def _cmd(*args):
    return [sys.executable, "-m", "rwkv_np", "generate", *args, "--model", str(TINY)]


@pytest.fixture
def tiny():
    if not TINY.is_file():
        pytest.skip(f"rwkv.cpp tiny model missing: {TINY}")
    pytest.importorskip("rwkv_np.loading")


def test_subprocess_generate_is_repeatable(tiny):
    runs = [subprocess.run(_cmd("In the", "-n", "30", "--seed", "5", "--mode", mode), cwd=ROOT,
                           capture_output=True, text=True, timeout=120) for mode in ("parallel", "recurrent")]
    for r in runs:
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and STATS.match(lines[0]) and "prompt: 6 tokens" in lines[0]
        assert "generated: 30 tokens" in lines[0]
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout) > 1


def test_subprocess_sigint(tiny):
    p = subprocess.Popen(_cmd("Once", "-n", "10000000", "--seed", "1"), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = p.stdout.read(1)  # generation has started
        assert first
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill() if p.poll() is None else None
    err = err.decode()
    assert p.returncode == 130, err
    assert "Traceback" not in err and STATS.match(err.splitlines()[-1])


# --- every argument and stream checked (issue 15) -----------------------------------------------

@pytest.mark.parametrize("given,meant", [
    ("\\n\\n", "\n\n"), ("END", "END"), ("a\\tb", "a\tb"), ("\\\\n", "\\n"), ("\\x41\\u00e9\\U0001F389", "Aé🎉"),
    ("q\\\"\\'\\r\\0", "q\"'\r\0"), ("日本\\n", "日本\n")])
def test_stop_strings_interpret_backslash_escapes(given, meant):
    args = cli.build_parser().parse_args(["generate", "x", "--stop", given, "--stop", "plain"])
    assert args.stop == [meant, "plain"]


@pytest.mark.parametrize("given,message", [
    ("\\q", r"unknown escape \\q \(known: \\n newline"), ("ab\\", r"'ab\\\\' ends with a lone backslash"),
    ("\\x4", r"\\x needs 2 hex digits"), ("\\uD800", r"\\uD800 is not a Unicode character"),
    ("\\U00110000", r"is not a Unicode character"), ("", r"a stop string cannot be empty")])
def test_bad_stop_strings_are_refused_by_name(capsys, given, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "x", "--stop", given])
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(r"argument --stop: .*" + message, err), err


def test_readme_stop_example_stops_at_a_blank_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("first line\n\nsecond")))
    assert cli.main(["generate", "x", "-t", "0", "-n", "30", "--stop", "\\n\\n"]) == 0
    assert capsys.readouterr().out == "first line\n"


@pytest.mark.parametrize("temperature", ["1e-320", "5e-324", "1e-45"])
def test_subnormal_temperatures_behave_as_greedy(capsys, monkeypatch, temperature):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("greedy text!")))
    assert cli.main(["generate", "x", "-n", "12", "-t", temperature, "--seed", "3"]) == 0
    assert capsys.readouterr().out == "greedy text!\n"


@pytest.mark.parametrize("option", ["--frequency-penalty=1e308", "--presence-penalty=-1e308",
                                    "--frequency-penalty=1000001", "--presence-penalty=nan"])
def test_extreme_penalties_are_refused_by_name(capsys, monkeypatch, option):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("a")))
    assert cli.main(["generate", "x", option]) == 2
    name = option[2:].split("=")[0].replace("-", "_")
    assert re.fullmatch(rf"error: {name} must be a finite number in \[-1e\+06, 1e\+06\], got \S+\n",
                        capsys.readouterr().err)


class RecordingModel(ScriptedModel):
    def forward(self, tokens, state=None, mode="parallel", return_all=False):
        self.prompt = getattr(self, "prompt", None) or list(tokens)
        return super().forward(tokens, state, mode, return_all)


def _stdin(monkeypatch, data: bytes):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


@pytest.mark.parametrize("data", [b"\xff\xfe ab", b"caf\xc3\xa9 \xc3", bytes(range(256))])
def test_stdin_prompt_keeps_bytes_that_are_not_utf8(capsys, monkeypatch, data):
    model = RecordingModel("ok")
    monkeypatch.setattr(cli, "_load", fake_load(model))
    _stdin(monkeypatch, data)
    assert cli.main(["generate", "-", "-n", "2", "-t", "0"]) == 0
    assert model.prompt == list(data)  # the byte model reads exactly the bytes given
    assert capsys.readouterr().out == "ok\n"


def test_stdin_prompt_is_bounded_and_must_be_open(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("a")))
    monkeypatch.setattr(cli, "MAX_STDIN_BYTES", 1000)
    _stdin(monkeypatch, b"y" * 1000)
    assert cli.main(["generate", "-", "-n", "1"]) == 0
    assert "prompt: 1000 tokens" in capsys.readouterr().err
    _stdin(monkeypatch, b"y" * 1001)
    assert cli.main(["generate", "-", "-n", "1"]) == 2
    assert capsys.readouterr().err == "error: prompt '-': standard input holds more than 1000 bytes, the most a prompt may have\n"
    monkeypatch.setattr(sys, "stdin", None)
    assert cli.main(["generate", "-"]) == 2
    assert capsys.readouterr().err == "error: prompt '-': standard input is closed\n"


@pytest.mark.parametrize("option", ["--model", "--tokenizer"])
def test_empty_paths_are_refused_by_name(capsys, monkeypatch, option):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("a")))
    assert cli.main(["generate", "x", option, " "]) == 2
    assert capsys.readouterr().err == f"error: {option}: an empty path\n"


def test_closed_or_failing_stdout(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load", fake_load(ScriptedModel("abc")))
    monkeypatch.setattr(sys, "stdout", None)
    assert cli.main(["generate", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: standard output is closed: generate writes the text there")

    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Full())
    assert cli.main(["generate", "x", "-n", "3"]) == 2
    assert capsys.readouterr().err == "error: cannot write to standard output (No space left on device)\n"


def test_a_model_error_mid_generation_is_one_line(capsys, monkeypatch):
    from rwkv_np.errors import ModelError

    class Failing(ScriptedModel):
        def forward(self, tokens, state=None, mode="parallel", return_all=False):
            if state == 2:
                raise ModelError("the weights of m.pth produce non-finite values (inf or NaN) first in the state "
                                 "of layer 3 (of 4): some weights are too large for float32 arithmetic")
            return super().forward(tokens, state, mode, return_all)

    monkeypatch.setattr(cli, "_load", fake_load(Failing("abcdef")))
    assert cli.main(["generate", "x", "-n", "5", "-t", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "a" and err == ("error: the weights of m.pth produce non-finite values (inf or NaN) first in the "
                                  "state of layer 3 (of 4): some weights are too large for float32 arithmetic\n")


def test_subprocess_stdin_from_dev_zero_is_refused_quickly():
    t0 = time.perf_counter()
    with open(os.devnull.replace("null", "zero"), "rb") as zero:
        r = subprocess.run([sys.executable, "-m", "rwkv_np", "generate", "-", "--model", "unused"], cwd=ROOT,
                           stdin=zero, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"error: prompt '-': standard input holds more than {cli.MAX_STDIN_BYTES} bytes, the most a "
                        "prompt may have\n")
    assert time.perf_counter() - t0 < 60


def test_subprocess_reader_going_away_is_quiet(tiny):
    p = subprocess.Popen(_cmd("Once", "-n", "100000", "--seed", "1"), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert p.stdout.read(5)  # generation has started; then the reader goes away, as `| head -c 5`
        p.stdout.close()
        err = p.stderr.read().decode()
        p.wait(timeout=60)
    finally:
        p.kill() if p.poll() is None else None
    assert p.returncode == 0 and err == "", err


# --- later versions ------------------------------------------------------------------------------

def test_cli_generates_text_with_tiny_v7(capsys):
    code = cli.main(["generate", "--model", str(tiny_rwkv_cpp("7")), '"in', "-n", "12", "-t", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(" the the the")  # the greedy continuation of this checkpoint


def test_cli_generates_with_a_world_vocab_v7(tmp_path, capsys):
    # a vocab-65536 RWKV-7 goes to the World tokenizer (rwkv_np.world_tokenizer)
    from rwkv_np.world_tokenizer import packaged_vocab_path

    if packaged_vocab_path() is None:
        pytest.skip("the World vocabulary rwkv_vocab_v20230424.txt is not installed (pip install rwkv)")
    flat = random_flat("7")
    flat["emb.weight"] = np.random.default_rng(0).standard_normal((65536, 16)).astype(np.float32)
    flat["head.weight"] = flat["emb.weight"] * 0.1
    path = write_torch_zip(tmp_path / "world.pth", flat)
    assert rwkv_np.load_model(path).config.vocab_size == 65536
    assert cli.main(["generate", "--model", str(path), "hello", "-n", "4", "-t", "0"]) == 0
    captured = capsys.readouterr()
    assert "generated: 4 tokens" in captured.err
