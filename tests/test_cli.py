"""The command line: generate (streaming, stats line, Ctrl-C, errors), download, train wiring, help."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rwkv_np import cli
from rwkv_np.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY = SHARED / "fixtures" / "rwkv_cpp" / "tiny-rwkv-4v0-660K-FP32.bin"
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
