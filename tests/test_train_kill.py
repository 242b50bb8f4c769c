"""Training survives SIGKILL at any moment: resumed to the end, it equals a run that was never killed.

Real processes, real SIGKILLs: at random moments, and at moments chosen while a checkpoint is being
written (its .partial file exists), so that several kills land inside the write.
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

from rwkv_np.training.checkpoint import checkpoint_path, partial_path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 80


def _cmd(data: Path, out: Path, resume: bool) -> list[str]:
    # a tiny model saved at every step: a step takes about as long as its checkpoint write, so
    # random kills fall inside and outside the writes alike
    return [sys.executable, "-m", "rwkv_np", "train", "--data", str(data), "--out", str(out),
            "--n-layer", "1", "--n-embd", "8", "--ctx-len", "8", "--batch-size", "2", "--steps", str(STEPS),
            "--lr", "3e-3", "--warmup", "5", "--save-every", "1", "--eval-every", "1000", "--eval-windows", "2",
            "--threads", "1"] + (["--resume"] if resume else [])


def _start(data, out, resume):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen(_cmd(data, out, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = p.stdout.readline()  # "training ..." once set up: the steps start now
    assert line.startswith(b"training"), (line, p.stderr.read() if p.poll() is not None else b"")
    return p


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _losses(out: Path) -> list:
    recs = [json.loads(line) for line in Path(str(out) + ".log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    data = tmp_path / "text.txt"
    data.write_bytes(bytes(np.random.default_rng(0).choice(np.frombuffer(b"the cat sat\n", np.uint8), 20000)))
    ref = tmp_path / "ref.safetensors"
    p = _start(data, ref, resume=False)
    assert p.wait(timeout=60) == 0, p.stderr.read()

    out = tmp_path / "run.safetensors"
    ckpt = checkpoint_path(out)
    writing = (partial_path(ckpt), partial_path(out))
    kills, inside = [], 0
    while True:
        p = _start(data, out, resume=ckpt.exists())
        if len(kills) < 10 and (inside < 3 or len(kills) < 5):
            if len(kills) % 2:  # wait until a checkpoint write is under way, then kill within it
                deadline = time.monotonic() + 5
                while not any(f.exists() for f in writing) and time.monotonic() < deadline:
                    time.sleep(0.0002)
                time.sleep(rng.uniform(0, 0.0005))
            else:
                time.sleep(rng.uniform(0, 0.25))
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
            landed = [f.name for f in writing if f.exists()]
            inside += bool(landed)
            kills.append((p.returncode, landed))
            continue
        assert p.wait(timeout=60) == 0, p.stderr.read()
        break
    note = f"random seed {seed}, kills (return code, files being written): {kills}"
    assert inside >= 3 and sum(code == -signal.SIGKILL for code, _ in kills) >= 5, note
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
