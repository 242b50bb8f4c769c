"""The NumPy trainer: init, loss against the inference model, optimiser, checkpoints, resume, CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rwkv_np.errors import ArgumentError, CheckpointError, DownloadError
from rwkv_np.training import checkpoint as ckpt
from rwkv_np.training import data as D
from rwkv_np.training import init, model, optim, run

from helpers import ASSET, SHAKESPEARE, need
from helpers import train_args as _args


def _shakespeare() -> Path:
    return need(SHAKESPEARE)


def test_init_follows_the_official_recipe():
    p = init.init_params(3, 16, seed=0)
    assert all(v.dtype == np.float32 for v in p.values())
    assert p["emb.weight"].shape == (256, 16) and np.abs(p["emb.weight"]).max() <= 1e-4
    # decay ramp: raw time_decay from -5 (channel 0) to +3 (last channel) in every block
    for i in range(3):
        td = p[f"blocks.{i}.att.time_decay"]
        assert td[0] == pytest.approx(-5) and td[-1] == pytest.approx(3) and np.all(np.diff(td) > 0)
    # deeper blocks bend the curve towards slow decay (exponent 0.7 -> 2.0)
    assert p["blocks.2.att.time_decay"][8] < p["blocks.0.att.time_decay"][8]
    # time_first: log(0.3) + zigzag (-0.5, 0, +0.5)
    np.testing.assert_allclose(p["blocks.0.att.time_first"][:3], math.log(0.3) + np.array([0, 0.5, -0.5]), atol=1e-6)
    # the residual writers and the ffn gate start at zero, the rest orthogonal
    for name in ("att.output", "ffn.value", "ffn.receptance"):
        assert not p[f"blocks.1.{name}.weight"].any()
    wk = p["blocks.0.att.key.weight"].astype(np.float64)
    np.testing.assert_allclose(wk @ wk.T, 0.01 * np.eye(16), atol=1e-6)
    head = p["head.weight"].astype(np.float64)  # (256, 16), gain 0.5 * sqrt(256 / 16) = 2
    np.testing.assert_allclose(head.T @ head, 4 * np.eye(16), atol=1e-5)
    assert "blocks.0.ln0.weight" in p and "blocks.1.ln0.weight" not in p


def test_training_loss_equals_cross_entropy_of_model_forward():
    from rwkv_np import RWKV

    rng = np.random.default_rng(3)
    params = {k: v + rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in init.init_params(2, 32, 1).items()}
    tokens = rng.integers(0, 256, 40)
    logits_train, loss, _ = model.forward(params, tokens[None, :-1], tokens[None, 1:])
    logits, _ = RWKV(ckpt.model_ready(params)).forward(tokens[:-1], return_all=True)
    z = logits.astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    ce = float(np.mean(lse - z[np.arange(39), tokens[1:]]))
    # both float32: logits of size ~10 after 2 blocks of 32-term sums carry ~1e-6 relative rounding,
    # so ~1e-5 absolute; the mean cross-entropy averages those errors
    np.testing.assert_allclose(logits_train[0], logits, rtol=0, atol=1e-4)
    assert loss == pytest.approx(ce, abs=1e-5)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [optim.lr_at(s, 1e-3, 10, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert optim.lr_at(100, 1e-3, 10, 100, 0.1) == pytest.approx(1e-4)


def test_clip_grads_bounds_the_global_norm():
    g = {"a": np.full(3, 4.0), "b": np.full(1, 2.0)}  # norm sqrt(48 + 4) ~ 7.2
    assert optim.clip_grads(g, 1.0) == pytest.approx(math.sqrt(52))
    assert math.sqrt(sum((v ** 2).sum() for v in g.values())) == pytest.approx(1.0)


def test_short_run_lowers_the_loss():
    train, held = D.load_bytes(_shakespeare())
    assert train.dtype == np.uint8 and held.dtype == np.uint8  # bytes are not widened in memory
    params = init.init_params(2, 32, seed=0)
    opt = optim.AdamW(params)
    before = model.evaluate(params, held, 32, max_windows=16)
    losses = []
    for step in range(40):
        x, y = D.get_batch(train, 8, 32, np.random.default_rng([0, step]))
        loss, grads = model.loss_and_grads(params, x, y)
        optim.clip_grads(grads, 1.0)
        opt.step(params, grads, optim.lr_at(step, 3e-3, 5, 40))
        losses.append(loss)
    after = model.evaluate(params, held, 32, max_windows=16)
    # untrained: about ln 256 = 5.55 nats (the random orthogonal head adds a little); 40 steps learn at
    # least the byte frequencies (unigram entropy of the text ~3.3 nats)
    assert before > 5.3
    assert np.mean(losses[-5:]) < 3.4 and after < 3.4


def test_cli_run_writes_loadable_checkpoint_and_resume_is_exact(tmp_path, monkeypatch):
    data = tmp_path / "text.txt"
    data.write_bytes(_shakespeare().read_bytes()[:20000])
    common = dict(data=data, n_layer=1, n_embd=16, ctx_len=16, batch_size=4, lr=3e-3, warmup=2, steps=6,
                  eval_every=3, eval_windows=4, save_every=2)
    # one uninterrupted run of 6 steps
    full = tmp_path / "full.safetensors"
    assert run.run_train(_args(out=full, **common)) == 0
    # the same run stopped during step 5 (after the checkpoint of step 4), then resumed
    part = tmp_path / "part.safetensors"
    draws = []

    def stop_in_step_5(*a):
        draws.append(1)
        if len(draws) == 5:
            raise KeyboardInterrupt
        return D.get_batch(*a)

    monkeypatch.setattr(run, "get_batch", stop_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        run.run_train(_args(out=part, **common))
    monkeypatch.undo()
    assert ckpt.load_params(part)  # the model file of step 4 is there
    assert run.run_train(_args(out=part, resume=True, **common)) == 0
    a, b = ckpt.load_params(full), ckpt.load_params(part)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    from safetensors.numpy import load_file
    raw = load_file(str(full))
    assert "blocks.0.att.time_decay" in raw and "blocks.0.att.decay" not in raw and "head.weight" in raw
    log = [json.loads(line) for line in Path(str(full) + ".log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and len(log[0]["sha256"]) == 64
    steps = [r for r in log if "step" in r and "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert [r["step"] for r in steps if "val_loss" in r] == [3, 6] and steps[-1]["val_full"]
    # the resumed run's log holds each step once, with the uninterrupted run's losses
    log2 = [json.loads(line) for line in Path(str(part) + ".log.jsonl").read_text().splitlines()]
    steps2 = [r for r in log2 if "loss" in r]
    assert [(r["step"], r["loss"]) for r in steps2] == [(r["step"], r["loss"]) for r in steps]


def test_resume_without_checkpoint_and_bad_data_are_clear_errors(tmp_path):
    with pytest.raises(ArgumentError, match="--data .*nope.txt"):
        run.run_train(_args(data=tmp_path / "nope.txt", out=tmp_path / "m.safetensors", steps=1))
    data = tmp_path / "t.txt"
    data.write_bytes(b"hello world " * 200)  # 2400 bytes: a 240-byte held-out split fits ctx 128
    with pytest.raises(ArgumentError, match="--resume: no training checkpoint .*m.safetensors.ckpt"):
        run.run_train(_args(data=data, out=tmp_path / "m.safetensors", steps=1, resume=True))
    with pytest.raises(ArgumentError, match="--n-embd"):
        run.run_train(_args(data=data, n_embd=0))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        ckpt.load_params(bad)


def test_default_data_offline_raises_download_error_naming_the_path(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "tinyshakespeare.txt"
    monkeypatch.setattr(D, "SHAKESPEARE_CACHE", target)

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError, match=str(target)):
        D.default_data_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"cached")
    assert D.default_data_path() == target


def test_shipped_model_is_small_float16_and_trained():
    if not ASSET.exists():
        pytest.skip(f"shipped model missing: {ASSET}")
    from safetensors.numpy import load_file

    meta = json.loads(ASSET.with_suffix(".json").read_text())
    raw = load_file(str(ASSET))
    assert ASSET.stat().st_size <= 6_000_000
    assert all(v.dtype == np.float16 for v in raw.values())
    assert "blocks.0.att.time_decay" in raw and raw["emb.weight"].shape == (256, meta["n_embd"])
    assert sum(v.size for v in raw.values()) == meta["n_params"]
    assert meta["held_out_loss"] <= 1.60 and meta["training_data"]["sha256"] == D.SHAKESPEARE_SHA256
    # a 2 KB slice of the held-out text: the recorded loss is the mean over 111 KB, slices vary by
    # about +-0.15, so 1.8 separates a trained model from an untrained one (5.5) with room to spare
    _, held = D.load_bytes(_shakespeare())
    assert model.evaluate(ckpt.load_params(ASSET), held, 256, max_windows=8) < 1.8


# ---- the evaluation at the end of a run: bounded, with progress ------------------------------------------

def _final_record(out: Path) -> dict:
    log = [json.loads(line) for line in Path(str(out) + ".log.jsonl").read_text().splitlines()]
    return [r for r in log if "loss" in r][-1]


def test_the_final_evaluation_is_bounded_and_shows_progress(tmp_path, capsys):
    """The issue's `train --steps 1` on a 600 MB corpus spent minutes evaluating the whole held-out
    split with nothing shown: --final-eval-windows bounds it (0: the whole split), a progress bar
    goes to stderr as perplexity's does, and the log says how many windows the loss is over."""
    data = tmp_path / "text.txt"
    data.write_bytes(_shakespeare().read_bytes()[:40000])  # held out: 4000 bytes, 499 windows of 8
    common = dict(data=data, n_layer=1, n_embd=8, ctx_len=8, batch_size=2, steps=1, warmup=1, eval_windows=2)
    out = tmp_path / "bounded.safetensors"
    assert run.run_train(_args(out=out, final_eval_windows=40, **common)) == 0
    err = capsys.readouterr().err
    rec = _final_record(out)
    assert (rec["val_windows"], rec["val_final"], rec["val_full"]) == (40, True, False)
    _, held = D.load_bytes(data)
    params = ckpt.load_params(out)
    assert rec["val_loss"] == model.evaluate(params, held, 8, 40)  # the first 40 windows, bit for bit
    assert "held-out evaluation: 40 of the 499 windows of 8 bytes (--final-eval-windows; 0 for all)" in err
    assert "] 2/2 " in err and "loss so far" in err  # 40 windows: two batches of 32, the bar on stderr
    # 0: the whole split, as before
    whole = tmp_path / "whole.safetensors"
    assert run.run_train(_args(out=whole, final_eval_windows=0, **common)) == 0
    rec = _final_record(whole)
    assert (rec["val_windows"], rec["val_full"]) == (499, True)
    assert rec["val_loss"] == model.evaluate(ckpt.load_params(whole), held, 8)
    assert "held-out evaluation: 499 of the 499 windows of 8 bytes\n" in capsys.readouterr().err


def test_the_default_bound_keeps_the_shipped_models_evaluation_whole():
    """The shipped model's recorded held-out loss (rwkv_np/assets/*.json, held_out_loss_float32) is over
    the whole held-out split of tiny shakespeare at its --ctx-len: its command, which does not name
    --final-eval-windows, evaluates all of it under the default, as it does at the default --ctx-len;
    --help states the default."""
    meta = json.loads(ASSET.with_suffix(".json").read_text())
    size = meta["training_data"]["bytes"]
    held = size - int(D.TRAIN_SHARE * size)
    assert "--final-eval-windows" not in meta["command"]
    args = _args()
    for ctx in (meta["ctx_len"], args.ctx_len):
        assert (held - 1) // ctx <= args.final_eval_windows == run.FINAL_EVAL_WINDOWS
    parser = run.argparse.ArgumentParser()
    run.add_train_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--final-eval-windows FINAL_EVAL_WINDOWS" in text and "0: the whole held-out split" in text
    assert f"(default: {run.FINAL_EVAL_WINDOWS}," in text


def test_export_asset_needs_a_final_evaluation_over_the_whole_split(tmp_path):
    data = tmp_path / "text.txt"
    data.write_bytes(_shakespeare().read_bytes()[:20000])
    common = dict(data=data, n_layer=1, n_embd=8, ctx_len=8, batch_size=2, steps=1, warmup=1, eval_windows=2)
    out = tmp_path / "m.safetensors"
    assert run.run_train(_args(out=out, final_eval_windows=3, fp16_out=tmp_path / "h.safetensors", **common)) == 0
    with pytest.raises(ArgumentError, match=r"the run's final evaluation read 3 windows, not the whole held-out split"):
        run.export_asset(str(out) + ".log.jsonl", tmp_path / "h.safetensors", tmp_path / "asset", "cmd")
    assert run.run_train(_args(out=out, final_eval_windows=0, fp16_out=tmp_path / "h.safetensors", **common)) == 0
    meta = run.export_asset(str(out) + ".log.jsonl", tmp_path / "h.safetensors", tmp_path / "asset", "cmd")
    assert meta["curve"]["val_first_windows"] == [] and meta["training_data"]["bytes"] == 20000
    assert meta["held_out_loss_float32"] == round(_final_record(out)["val_loss"], 4)
