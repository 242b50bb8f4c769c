"""Training survives SIGKILL at any moment: resumed to the end, it equals a run that was never killed
(slow tier: real processes, real SIGKILLs).

Half of the kills land at random moments. The other half land inside a checkpoint write, provably: the
test waits until a write is under way (its .partial file exists), stops the process (SIGSTOP, and waits
until it is stopped), and only if the .partial file is still there then kills it; a write that finished
in between lets the process go on (SIGCONT) to the next write. A run saves at every step, so the next
write comes within a step; no kill moment is left to chance landing inside a write or not.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rwkv_np.training.checkpoint import checkpoint_path, partial_path

from helpers import REPO

pytestmark = pytest.mark.slow

STEPS = 80
KILLS = ("write", "random") * 4  # 4 kills inside checkpoint writes, 4 at random moments, alternating


def _cmd(data: Path, out: Path, resume: bool) -> list[str]:
    # a tiny model saved at every step: a step takes about as long as its checkpoint write
    return [sys.executable, "-m", "rwkv_np", "train", "--data", str(data), "--out", str(out),
            "--n-layer", "1", "--n-embd", "8", "--ctx-len", "8", "--batch-size", "2", "--steps", str(STEPS),
            "--lr", "3e-3", "--warmup", "5", "--save-every", "1", "--eval-every", "1000", "--eval-windows", "2",
            "--threads", "1"] + (["--resume"] if resume else [])


def _start(data, out, resume):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen(_cmd(data, out, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # "training ..." once set up: the steps start now, and the .partial files of an earlier kill are gone
    # (the trainer's write probes remove them before it prints this line)
    line = p.stdout.readline()
    assert line.startswith(b"training"), (line, p.stderr.read() if p.poll() is not None else b"")
    return p


def _kill_inside_a_write(p: subprocess.Popen, writing: tuple[Path, ...], seconds: float = 60) -> list[str]:
    """SIGKILL p while it is writing a checkpoint (one of `writing` exists and p is stopped); returns the
    names of the files being written then, or [] if p finished first."""
    deadline = time.monotonic() + seconds
    while p.poll() is None and time.monotonic() < deadline:
        if not any(f.exists() for f in writing):
            time.sleep(0.0001)
            continue
        os.kill(p.pid, signal.SIGSTOP)
        _, status = os.waitpid(p.pid, os.WUNTRACED)  # returns once p is stopped (or gone)
        if not os.WIFSTOPPED(status):  # it ended meanwhile (only a kill from outside could do that)
            p.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            return []
        landed = [f.name for f in writing if f.exists()]
        if landed:  # frozen between the .partial file's creation and its rename: inside the write
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
            return landed
        os.kill(p.pid, signal.SIGCONT)  # the write finished just before the stop: wait for the next one
    return []


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _losses(out: Path) -> list:
    recs = [json.loads(line) for line in Path(str(out) + ".log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def test_sigkill_inside_writes_and_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    data = tmp_path / "text.txt"
    data.write_bytes(bytes(np.random.default_rng(0).choice(np.frombuffer(b"the cat sat\n", np.uint8), 20000)))
    ref = tmp_path / "ref.safetensors"
    p = _start(data, ref, resume=False)
    assert p.wait(timeout=120) == 0, p.stderr.read()

    out = tmp_path / "run.safetensors"
    ckpt = checkpoint_path(out)
    writing = (partial_path(ckpt), partial_path(out))
    kills = []
    for kind in KILLS:
        p = _start(data, out, resume=ckpt.exists())
        if kind == "write":
            landed = _kill_inside_a_write(p, writing)
        else:
            time.sleep(rng.uniform(0, 0.25))
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
            landed = [f.name for f in writing if f.exists()]
        kills.append((kind, p.returncode, landed))
    note = f"random seed {seed}, kills (where, return code, files being written): {kills}"
    inside = [k for k in kills if k[0] == "write"]
    assert all(code == -signal.SIGKILL and landed for _, code, landed in inside), note
    assert sum(code == -signal.SIGKILL for _, code, _ in kills) >= 7, note  # a random kill may come after the end
    p = _start(data, out, resume=ckpt.exists())
    assert p.wait(timeout=120) == 0, p.stderr.read()
    # the model file, the weights and both Adam moments, and every step's loss: all equal
    a, b = _tensors(ref), _tensors(out)
    assert a.keys() == b.keys(), note
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k}; {note}")
    a, b = _tensors(checkpoint_path(ref)), _tensors(ckpt)
    assert a.keys() == b.keys() and len(a) == 3 * len(_tensors(ref)), note
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k}; {note}")
    assert _losses(out) == _losses(ref) and len(_losses(ref)) == STEPS, note
