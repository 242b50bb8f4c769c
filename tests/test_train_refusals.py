"""Every bad training option is refused up front with an ArgumentError naming it; a damaged or
mismatched training checkpoint is refused on --resume; a diverging run stops naming the step."""

import contextlib
import json
import os
import re
import signal
import stat
import time

import numpy as np
import pytest

from rwkv_np import cli, files
from rwkv_np.errors import ArgumentError, CheckpointError, TrainingError
from rwkv_np.rwkv4 import ARCH
from rwkv_np.training import checkpoint as ckpt
from rwkv_np.training import data as D
from rwkv_np.training import run

from helpers import train_args as _args

TINY = dict(n_layer=1, n_embd=8, ctx_len=8, batch_size=2, warmup=1, eval_every=1000, eval_windows=2)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(bytes(np.random.default_rng(0).choice(np.frombuffer(b"to be or not\n", np.uint8), 4000)))
    return path


@pytest.mark.parametrize("option,value", [
    ("save_every", 0), ("eval_every", 0), ("eval_windows", 0), ("eval_windows", -3), ("steps", 0),
    ("n_layer", 0), ("n_embd", -1), ("ctx_len", 0), ("batch_size", 0), ("warmup", -1), ("seed", -2),
    ("threads", 0), ("lr", "inf"), ("lr", "nan"), ("lr", 0), ("lr", -1e-3), ("min_lr_ratio", 1.5),
    ("min_lr_ratio", "nan"), ("weight_decay", -0.1), ("weight_decay", "inf"), ("weight_decay", 1000),
    ("grad_clip", "nan"), ("grad_clip", -1), ("time_budget", 0), ("time_budget", "inf"), ("final_eval_windows", -1),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, text, option, value):
    out = tmp_path / "m.safetensors"
    with pytest.raises(ArgumentError, match="--" + option.replace("_", "-")):
        run.run_train(_args(data=text, out=out, **{**TINY, "steps": 3, option: value}))
    assert not list(tmp_path.glob("m.*"))


def test_the_command_line_prints_one_error_line(tmp_path, text, capsys):
    assert cli.main(["train", "--data", str(text), "--out", str(tmp_path / "m.safetensors"), "--save-every", "0"]) == 2
    assert capsys.readouterr().err == "error: --save-every must be >= 1, got 0\n"


def test_unwritable_outputs_are_refused_before_training(tmp_path, text):
    (tmp_path / "a_file").write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [("out", tmp_path / "a_file" / "m.safetensors"), ("out", folder),
             ("log", folder), ("log", tmp_path / "a_file" / "log.jsonl"),
             ("fp16_out", tmp_path / "a_file" / "m16.safetensors")]
    for option, path in cases:
        kw = {"out": tmp_path / "m.safetensors", option: path}
        t = time.perf_counter()
        with pytest.raises(ArgumentError, match=f"--{option.replace('_', '-')} .*{path.name}"):
            run.run_train(_args(data=text, steps=100000, **{**TINY, **kw}))
        assert time.perf_counter() - t < 5  # refused up front, not after 100000 steps
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_nobody_can_write_is_refused(tmp_path, text):
    # /proc takes no new files, not even from root (a read-only folder would not stop root)
    with pytest.raises(ArgumentError, match="--out /proc/m.safetensors: cannot write in /proc"):
        run.run_train(_args(data=text, out="/proc/m.safetensors", steps=1, **TINY))
    with pytest.raises(ArgumentError, match="--log /proc/self/log.jsonl: cannot write in /proc/self"):
        run.run_train(_args(data=text, out=tmp_path / "m.safetensors", log="/proc/self/log.jsonl", steps=1, **TINY))


def test_data_that_cannot_work_is_refused(tmp_path):
    (tmp_path / "short.txt").write_bytes(b"x" * 99)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block forever
    for path, why in ((tmp_path, "not a regular file"), (fifo, "not a regular file"),
                      ("/dev/zero", "not a regular file"), (tmp_path / "short.txt", "only 99 bytes"),
                      (tmp_path / "missing.txt", "no such file")):
        with pytest.raises(ArgumentError, match=f"--data {path}: {why}"):
            run.run_train(_args(data=path, out=tmp_path / "m.safetensors", steps=1, **TINY))


def test_sizes_beyond_memory_are_refused_with_the_estimate(tmp_path, text):
    with pytest.raises(ArgumentError, match=r"--n-embd 100000 .*needs about [\d.]+ TB of memory"):
        run.run_train(_args(data=text, out=tmp_path / "m.safetensors", n_embd=100000))
    t = time.perf_counter()
    with pytest.raises(ArgumentError, match=r"--n-layer 1000000000 .*memory"):
        run.run_train(_args(data=text, out=tmp_path / "m.safetensors", n_layer=10**9))
    assert time.perf_counter() - t < 1  # the estimate is a formula, not a walk over 10^9 layers
    # the estimate by part, against a given amount of memory: the default model (4 x 128, B 16, T 128)
    # needs 30 MB of float32 copies, ~161 MB of activations and the data
    args = _args()
    parts = run.memory_estimate(args, 1_000_000)
    assert parts["parameters, gradients, AdamW moments and checkpoint"] == 32 * run.n_params(4, 128)
    assert run.n_params(4, 128) == 923_648 == sum(int(np.prod(p.size({"C": 128, "F": 512, "V": 256})))
                                                  for _, p, _ in ARCH.params_of(4))
    assert 120e6 < parts["activations"] < 200e6 and parts["data"] == 1_000_000
    run.check_memory(args, 1_000_000, available=250_000_000)
    with pytest.raises(ArgumentError, match=r"--batch-size 16 --ctx-len 128: .*more than the 100.0 MB available"):
        run.check_memory(args, 1_000_000, available=100_000_000)


def test_a_diverging_run_stops_naming_the_step(tmp_path, text):
    # lr 1e30: the first update moves the weights by ~1e30 (finite, saved); the second step's LayerNorm
    # squares them past float32's range
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingError, match=r"step 2: the loss is nan .*m.safetensors.ckpt is left as it was "
                                            r"\(step 1\); lower --lr \(now 1e\+30\)"):
        run.run_train(_args(data=text, out=out, steps=20, lr=1e30, save_every=1, **TINY))
    with pytest.raises(TrainingError, match=r"step 2: the loss is nan .* no checkpoint was written"):
        run.run_train(_args(data=text, out=out, steps=20, lr=1e30, save_every=5, **TINY))


@pytest.fixture
def finished(tmp_path, text):
    """A finished tiny run: (its options, its model path)."""
    out = tmp_path / "m.safetensors"
    kw = dict(data=text, out=out, steps=3, save_every=1, **TINY)
    assert run.run_train(_args(**kw)) == 0
    return kw, out


@pytest.mark.parametrize("option,value,recorded", [
    ("n_embd", 32, 8), ("n_layer", 2, 1), ("ctx_len", 16, 8), ("batch_size", 3, 2), ("seed", 1, 0),
    ("lr", 0.01, 0.002), ("steps", 6, 3), ("grad_clip", 0.5, 1.0), ("time_budget", 5.0, None),
])
def test_resume_refuses_options_other_than_the_checkpoints(finished, option, value, recorded):
    kw, out = finished
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ArgumentError, match=f"--resume: {flag} is {value} but .*m.safetensors.ckpt was written "
                                            f"by a run with {flag} {recorded}"):
        run.run_train(_args(resume=True, **{**kw, option: value}))


def test_resume_refuses_other_data(finished, tmp_path):
    kw, out = finished
    other = tmp_path / "other.txt"
    other.write_bytes(kw["data"].read_bytes()[::-1])
    with pytest.raises(ArgumentError, match="--data has sha256 .* trained on data with sha256"):
        run.run_train(_args(resume=True, **{**kw, "data": other}))


def test_resume_of_a_finished_run_rewrites_the_model_and_changes_nothing(finished):
    kw, out = finished
    before = ckpt.checkpoint_path(out).read_bytes()
    out.unlink()  # as if killed between the last checkpoint and the model file
    assert run.run_train(_args(resume=True, **kw)) == 0
    assert ckpt.checkpoint_path(out).read_bytes() == before and ckpt.load_params(out)


def _flip_in(path, tensor):
    """Flip one bit in the middle of a tensor's data."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8:8 + n])[tensor]["data_offsets"]
    raw[8 + n + (start + end) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage,message", [
    (lambda p: _flip_in(p, "head.weight"), "the weights do not match the sha256"),
    (lambda p: _flip_in(p, "adam.m.blocks.0.att.time_first"), "the adam.m do not match the sha256"),
    (lambda p: _flip_in(p, "adam.v.emb.weight"), "the adam.v do not match the sha256"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "damaged checkpoint"),
    (lambda p: p.write_bytes(p.read_bytes()[:6]), "not a training checkpoint"),
    (lambda p: p.write_bytes(b""), "not a training checkpoint"),
    (lambda p: p.write_bytes(p.with_name("m.safetensors").read_bytes()), "not a training checkpoint"),
])
def test_resume_refuses_a_damaged_checkpoint(finished, damage, message):
    kw, out = finished
    damage(ckpt.checkpoint_path(out))
    with pytest.raises(CheckpointError, match=f"m.safetensors.ckpt: .*{message}"):
        run.run_train(_args(resume=True, **kw))


def test_resume_names_an_old_side_file(tmp_path, text):
    out = tmp_path / "m.safetensors"
    (tmp_path / "m.safetensors.optim.npz").write_bytes(b"PK")
    with pytest.raises(ArgumentError, match="no training checkpoint .*m.safetensors.optim.npz is from an older"):
        run.run_train(_args(data=text, out=out, steps=1, resume=True, **TINY))


def test_resume_refuses_a_changed_manifest(finished):
    # a damaged digit in the header's JSON keeps it valid JSON: the manifest's own sha256 catches it
    kw, out = finished
    path = ckpt.checkpoint_path(out)
    raw = path.read_bytes()
    assert raw.count(b'\\"step\\": 3,') == 1
    path.write_bytes(raw.replace(b'\\"step\\": 3,', b'\\"step\\": 2,'))
    with pytest.raises(CheckpointError, match="the manifest does not match its sha256"):
        run.run_train(_args(resume=True, **kw))


# ---- FIFOs and other special files: every path a run names is checked before it is opened -----------

@contextlib.contextmanager
def _no_hang(seconds: int = 20):
    """Fail (instead of blocking the test run forever) if the body takes longer than `seconds`: an open
    of a FIFO nobody reads or writes would never return."""
    def expired(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _special(tmp_path, kind: str, name: str):
    """A FIFO, a folder or a character device at tmp_path/name (the device: /dev/null, by a link)."""
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/null")
    return path


KINDS = {"fifo": r"not a regular file \(a FIFO \(named pipe\)\)", "folder": r"not a regular file \(a folder\)",
         "device": r"not a regular file \(a character device\)"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("role", ["out", "log", "fp16_out", "resume_ckpt", "resume_log", "out_partial",
                                  "ckpt_partial", "log_partial"])
def test_a_special_file_for_any_path_is_refused_naming_the_option(tmp_path, text, role, kind):
    """The issue's `train --log <fifo>` and `--resume` with <out>.ckpt a FIFO never returned: now every
    path a run reads or writes, named or derived (<out>.ckpt, the .partial file beside each output), is
    a regular file or a new one, checked before anything is opened, and the error names the option
    and the path. Nothing is written."""
    out = tmp_path / "m.safetensors"
    kw = dict(data=text, out=out, steps=2, **TINY)
    if role.startswith("resume"):
        assert run.run_train(_args(**kw)) == 0  # a finished run to resume
        kw["resume"] = True
    target = {"out": ("--out", "m2.safetensors"), "log": ("--log", "log.jsonl"), "fp16_out": ("--fp16-out", "h.st"),
              "resume_ckpt": ("--resume", "m.safetensors.ckpt"), "resume_log": ("--log", "m.safetensors.log.jsonl"),
              "out_partial": ("--out", "m2.safetensors.partial"), "ckpt_partial": ("--out", "m2.safetensors.ckpt.partial"),
              "log_partial": ("--log", "log.jsonl.partial")}[role]
    option, name = target
    if role in ("resume_ckpt", "resume_log"):
        (tmp_path / name).unlink()
    if role in ("out", "out_partial", "ckpt_partial"):
        kw["out"] = out = tmp_path / "m2.safetensors"
    if role in ("log", "log_partial"):
        kw["log"] = tmp_path / "log.jsonl"
    if role == "fp16_out":
        kw["fp16_out"] = tmp_path / "h.st"
    path = _special(tmp_path, kind, name)
    shown = out.with_suffix(".safetensors.ckpt") if role == "ckpt_partial" else \
        tmp_path / "log.jsonl" if role == "log_partial" else out if role == "out_partial" else path
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file() and not p.is_symlink()}
    with _no_hang(), pytest.raises(ArgumentError) as e:
        run.run_train(_args(**kw))
    message = str(e.value)
    assert message.startswith(f"{option} {shown}: "), message
    assert re.search(KINDS[kind], message), message
    if role.endswith("partial"):
        assert f"its temporary file {path}" in message
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file() and not p.is_symlink()}
    assert after == before  # nothing written, nothing truncated


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_the_files_module_never_waits_on_a_fifo(tmp_path):
    """rwkv_np.files, the one reader and writer of the paths a user names: each way in refuses a FIFO
    without blocking, and so a path swapped for one after the checks (a log becoming a FIFO during a
    run) is refused, not waited on."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with _no_hang():
        for call in (lambda: files.open_regular(fifo, f"--x {fifo}"),
                     lambda: files.read_regular(fifo, f"--x {fifo}", 10, "may have"),
                     lambda: files.open_writable(fifo, f"--x {fifo}"),
                     lambda: files.open_writable(fifo, f"--x {fifo}", append=True),
                     lambda: files.check_writable(fifo, f"--x {fifo}"),
                     lambda: files.write_atomic(fifo, b"data", f"--x {fifo}")):
            with pytest.raises(ArgumentError, match=rf"^--x {re.escape(str(fifo))}: not a regular file \(a FIFO"):
                call()
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # left as it was
        # a FIFO as the temporary file of an atomic write
        os.mkfifo(tmp_path / "m.partial")
        with pytest.raises(ArgumentError, match=r"^--x m: its temporary file .*m.partial: not a regular file \(a FIFO"):
            files.write_atomic(tmp_path / "m", b"data", "--x m")
        assert not (tmp_path / "m").exists()
        # regular files: written, appended to, replaced whole
        log = tmp_path / "log"
        with files.open_writable(log, "--log") as f:
            f.write(b"a\n")
        with files.open_writable(log, "--log", append=True) as f:
            f.write(b"b\n")
        assert log.read_bytes() == b"a\nb\n"
        files.write_atomic(log, b"c\n")
        assert log.read_bytes() == b"c\n" and not files.partial_path(log).exists()
        # the training checkpoint's reader and the data's, through the same opener
        with pytest.raises(ArgumentError, match=rf"^--resume {re.escape(str(fifo))}: not a regular file"):
            ckpt.load_training(fifo, {}, {}, f"--resume {fifo}")
        with pytest.raises(ArgumentError, match=rf"^--data {re.escape(str(fifo))}: not a regular file"):
            D.read_data(fifo)
