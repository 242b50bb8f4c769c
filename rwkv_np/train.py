"""Train a byte-level RWKV-4 in NumPy: parallel forward over (B, T) with a hand-written backward pass.

Parameters live in a dict under the RAW BlinkDL names a checkpoint stores (`att.time_decay` raw, the
decay is w = exp(time_decay); time_mix vectors (C,)), so a checkpoint is just `save_file(params)`.
Like the official trainer we optimise raw time_decay (w = exp(raw) stays positive) and time_first.

    python -m rwkv_np train --data input.txt --out model.safetensors --n-layer 4 --n-embd 128
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from .errors import ArgumentError, CheckpointError, DownloadError
from .wkv_grad import wkv_backward, wkv_forward

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_CACHE = Path.home() / ".cache" / "rwkv_np" / "tinyshakespeare.txt"
EPS = 1e-5
VOCAB = 256  # bytes

ATT_MATS = ("key", "value", "receptance", "output")
FFN_MATS = ("key", "value", "receptance")


# ----------------------------------------------------------------------------------------------- data

def default_data_path() -> Path:
    """Tiny shakespeare from the local cache, downloaded (and sha256-checked) on first use."""
    path = SHAKESPEARE_CACHE
    if path.exists():
        return path
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
            raw = r.read()
    except OSError as e:
        raise DownloadError(
            f"could not download tiny shakespeare from {SHAKESPEARE_URL} ({e}); put the file at {path} "
            f"(sha256 {SHAKESPEARE_SHA256}) or pass --data FILE") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise DownloadError(f"downloaded {SHAKESPEARE_URL} has sha256 {digest}, expected {SHAKESPEARE_SHA256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return path


def load_bytes(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The file's bytes as token ids, split into the first 90% (train) and the last 10% (held out)."""
    path = Path(path)
    if not path.is_file():
        raise ArgumentError(f"--data {path}: no such file")
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64)
    if len(data) < 100:
        raise ArgumentError(f"--data {path}: only {len(data)} bytes, need at least 100")
    n = int(0.9 * len(data))
    return data[:n], data[n:]


def get_batch(data: np.ndarray, batch: int, ctx: int, rng: np.random.Generator):
    """Random windows: inputs (B, T) and the next bytes (B, T)."""
    starts = rng.integers(0, len(data) - ctx - 1, size=batch)
    idx = starts[:, None] + np.arange(ctx)[None, :]
    return data[idx], data[idx + 1]


# ----------------------------------------------------------------------------------------------- init

def _orthogonal(rng: np.random.Generator, rows: int, cols: int, gain: float) -> np.ndarray:
    """Like torch.nn.init.orthogonal_: a (rows, cols) matrix with orthonormal rows or columns, times gain."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return gain * (q if rows >= cols else q.T)


def init_params(n_layer: int, n_embd: int, seed: int = 0, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    """Fresh parameters, initialised the way BlinkDL's RWKV-4 trainer (RWKV-v4neo) does (float32)."""
    rng = np.random.default_rng(seed)
    C, F, L = n_embd, 4 * n_embd, n_layer
    p: dict[str, np.ndarray] = {}
    # tiny embedding: ln0 of block 0 rescales it anyway, and a small start keeps early updates sane
    p["emb.weight"] = rng.uniform(-1e-4, 1e-4, (vocab, C))
    ramp = np.arange(C) / C  # 0 .. (C-1)/C across channels
    for i in range(L):
        b = f"blocks.{i}."
        for ln in (["ln0"] if i == 0 else []) + ["ln1", "ln2"]:
            p[b + ln + ".weight"] = np.ones(C)
            p[b + ln + ".bias"] = np.zeros(C)
        depth01 = i / (L - 1) if L > 1 else 0.0  # 0 at the first block .. 1 at the last
        shallow = 1.0 - i / L  # 1 at the first block .. 1/L at the last
        # decay spread over channels: raw from -5 (w = e^-5, long memory) to +3 (w = e^3, only the
        # last token), the curve bending towards slower decay in deeper blocks
        p[b + "att.time_decay"] = -5 + 8 * (np.arange(C) / max(C - 1, 1)) ** (0.7 + 1.3 * depth01)
        # bonus of the current token: log(0.3) with a zigzag of -0.5, 0, +0.5 across channels
        p[b + "att.time_first"] = math.log(0.3) + 0.5 * ((np.arange(C) + 1) % 3 - 1)
        # how much of the current token to take: ramps over channels, more of the previous token in
        # shallow blocks; v gets +0.3*depth so deep blocks lean on the current token
        p[b + "att.time_mix_k"] = ramp ** shallow
        p[b + "att.time_mix_v"] = ramp ** shallow + 0.3 * depth01
        p[b + "att.time_mix_r"] = ramp ** (0.5 * shallow)
        p[b + "ffn.time_mix_k"] = ramp ** shallow
        p[b + "ffn.time_mix_r"] = ramp ** shallow
        # matrices orthogonal with gain sqrt(out/in) when out > in; key of time mixing at 0.1; the
        # projections that write into the residual stream (att.output, ffn.value) and the ffn gate
        # start at zero so every block starts as the identity
        p[b + "att.key.weight"] = _orthogonal(rng, C, C, 0.1)
        p[b + "att.value.weight"] = _orthogonal(rng, C, C, 1.0)
        p[b + "att.receptance.weight"] = _orthogonal(rng, C, C, 1.0)
        p[b + "att.output.weight"] = np.zeros((C, C))
        p[b + "ffn.key.weight"] = _orthogonal(rng, F, C, math.sqrt(F / C))
        p[b + "ffn.receptance.weight"] = np.zeros((C, C))
        p[b + "ffn.value.weight"] = np.zeros((C, F))
    p["ln_out.weight"] = np.ones(C)
    p["ln_out.bias"] = np.zeros(C)
    # head: orthogonal, gain 0.5 * sqrt(V/C) when V > C
    p["head.weight"] = _orthogonal(rng, vocab, C, 0.5 * math.sqrt(vocab / C) if vocab > C else 0.5)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in p.items()}


def n_layers(params: dict) -> int:
    return 1 + max(int(k.split(".")[1]) for k in params if k.startswith("blocks."))


def model_ready(params: dict) -> dict[str, np.ndarray]:
    """The flat weights dict `rwkv_np.RWKV` takes: the same names and values, float32, vectors (C,)."""
    return {k: np.ascontiguousarray(np.asarray(v, np.float32).reshape(v.shape[-1:] if "time_" in k else v.shape))
            for k, v in params.items()}


# ----------------------------------------------------------------------------------------------- ops

def _ln_fwd(x, g, b):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + EPS)
    xhat = xc * rstd
    return xhat * g + b, (xhat, rstd)


def _ln_bwd(dy, g, cache):
    xhat, rstd = cache
    dg = (dy * xhat).sum((0, 1))
    db = dy.sum((0, 1))
    dxhat = dy * g
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dg, db


def _shift(x):
    """x_{t-1} at each position, zeros at t = 0: (B, T, C)."""
    xx = np.zeros_like(x)
    xx[:, 1:] = x[:, :-1]
    return xx


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _mm(x, W):
    """y = x @ W.T over (B, T, in) -> (B, T, out), as one 2-D BLAS call."""
    B, T, _ = x.shape
    return (x.reshape(B * T, -1) @ W.T).reshape(B, T, -1)


def _mm_bwd(dy, x, W):
    """For y = x W^T: (dx, dW)."""
    B, T, _ = x.shape
    dy2 = dy.reshape(B * T, -1)
    return (dy2 @ W).reshape(B, T, -1), dy2.T @ x.reshape(B * T, -1)


# ----------------------------------------------------------------------------------------------- model

def forward(params: dict, idx: np.ndarray, targets: np.ndarray | None = None, keep: bool = False):
    """Parallel forward over idx (B, T) from the zero state.

    Returns (logits (B, T, V), mean cross-entropy in nats (None without targets), cache (None unless keep)).
    """
    P = params
    L = n_layers(P)
    x = P["emb.weight"][idx]
    cache: dict = {"idx": idx}
    x, cache["ln0"] = _ln_fwd(x, P["blocks.0.ln0.weight"], P["blocks.0.ln0.bias"])
    for i in range(L):
        b = f"blocks.{i}."
        c: dict = {}
        # time mixing
        xa, c["ln1"] = _ln_fwd(x, P[b + "ln1.weight"], P[b + "ln1.bias"])
        xx = _shift(xa)
        c["xa"], c["xx"] = xa, xx
        dx_ = xa - xx  # mix(mu) = xx + mu * (xa - xx)
        c["xk"] = xk = xx + P[b + "att.time_mix_k"] * dx_
        c["xv"] = xv = xx + P[b + "att.time_mix_v"] * dx_
        c["xr"] = xr = xx + P[b + "att.time_mix_r"] * dx_
        c["sr"] = sr = _sigmoid(_mm(xr, P[b + "att.receptance.weight"]))
        c["k"] = k = _mm(xk, P[b + "att.key.weight"])
        c["v"] = v = _mm(xv, P[b + "att.value.weight"])
        w = np.exp(P[b + "att.time_decay"])
        c["y"], c["wkv_saves"] = y, _ = wkv_forward(w, P[b + "att.time_first"], k, v)
        c["ry"] = ry = sr * y
        x = x + _mm(ry, P[b + "att.output.weight"])
        # channel mixing
        xf, c["ln2"] = _ln_fwd(x, P[b + "ln2.weight"], P[b + "ln2.bias"])
        xx2 = _shift(xf)
        c["xf"], c["xx2"] = xf, xx2
        df_ = xf - xx2
        c["fk"] = fk = xx2 + P[b + "ffn.time_mix_k"] * df_
        c["fr"] = fr = xx2 + P[b + "ffn.time_mix_r"] * df_
        c["kpre"] = kpre = _mm(fk, P[b + "ffn.key.weight"])
        c["kk"] = kk = np.square(np.maximum(kpre, 0))
        c["kv"] = kv = _mm(kk, P[b + "ffn.value.weight"])
        c["rr"] = rr = _sigmoid(_mm(fr, P[b + "ffn.receptance.weight"]))
        x = x + rr * kv
        cache[i] = c
    xo, cache["ln_out"] = _ln_fwd(x, P["ln_out.weight"], P["ln_out.bias"])
    cache["xo"] = xo
    logits = _mm(xo, P["head.weight"])
    loss = None
    if targets is not None:
        z = logits - logits.max(-1, keepdims=True)
        lse = np.log(np.exp(z).sum(-1, keepdims=True))
        logp = z - lse
        loss = float(-np.take_along_axis(logp, targets[..., None], -1).mean())
        cache["logp"] = logp
        cache["targets"] = targets
    return logits, loss, (cache if keep else None)


def backward(params: dict, cache: dict) -> dict[str, np.ndarray]:
    """Gradients of the mean cross-entropy for every parameter, from `forward(..., keep=True)`."""
    P = params
    L = n_layers(P)
    g: dict[str, np.ndarray] = {}
    logp, targets = cache["logp"], cache["targets"]
    B, T, V = logp.shape
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1)
    dlogits /= B * T
    dxo, g["head.weight"] = _mm_bwd(dlogits, cache["xo"], P["head.weight"])
    dx, g["ln_out.weight"], g["ln_out.bias"] = _ln_bwd(dxo, P["ln_out.weight"], cache["ln_out"])
    for i in reversed(range(L)):
        b = f"blocks.{i}."
        c = cache[i]
        # channel mixing: x += rr * kv
        drr = dx * c["kv"]
        dkv = dx * c["rr"]
        dpre_r = drr * c["rr"] * (1 - c["rr"])
        dfr, g[b + "ffn.receptance.weight"] = _mm_bwd(dpre_r, c["fr"], P[b + "ffn.receptance.weight"])
        dkk, g[b + "ffn.value.weight"] = _mm_bwd(dkv, c["kk"], P[b + "ffn.value.weight"])
        dkpre = dkk * 2 * np.maximum(c["kpre"], 0)
        dfk, g[b + "ffn.key.weight"] = _mm_bwd(dkpre, c["fk"], P[b + "ffn.key.weight"])
        df_ = c["xf"] - c["xx2"]
        g[b + "ffn.time_mix_k"] = (dfk * df_).sum((0, 1))
        g[b + "ffn.time_mix_r"] = (dfr * df_).sum((0, 1))
        mk, mr = P[b + "ffn.time_mix_k"], P[b + "ffn.time_mix_r"]
        dxf = dfk * mk + dfr * mr
        dxx2 = dfk * (1 - mk) + dfr * (1 - mr)
        dxf[:, :-1] += dxx2[:, 1:]
        dln, g[b + "ln2.weight"], g[b + "ln2.bias"] = _ln_bwd(dxf, P[b + "ln2.weight"], c["ln2"])
        dx = dx + dln
        # time mixing: x += Wo (sr * y)
        dry, g[b + "att.output.weight"] = _mm_bwd(dx, c["ry"], P[b + "att.output.weight"])
        dsr = dry * c["y"]
        dy = dry * c["sr"]
        w = np.exp(P[b + "att.time_decay"])
        gw, g[b + "att.time_first"], dk, dv = wkv_backward(
            w, P[b + "att.time_first"], c["k"], c["v"], c["y"], c["wkv_saves"], dy)
        g[b + "att.time_decay"] = gw * w  # w = exp(raw)
        dpre_r = dsr * c["sr"] * (1 - c["sr"])
        dxr, g[b + "att.receptance.weight"] = _mm_bwd(dpre_r, c["xr"], P[b + "att.receptance.weight"])
        dxk, g[b + "att.key.weight"] = _mm_bwd(dk, c["xk"], P[b + "att.key.weight"])
        dxv, g[b + "att.value.weight"] = _mm_bwd(dv, c["xv"], P[b + "att.value.weight"])
        dx_ = c["xa"] - c["xx"]
        dxa = np.zeros_like(dx)
        dxx = np.zeros_like(dx)
        for name, d in (("k", dxk), ("v", dxv), ("r", dxr)):
            mu = P[b + "att.time_mix_" + name]
            g[b + "att.time_mix_" + name] = (d * dx_).sum((0, 1))
            dxa += d * mu
            dxx += d * (1 - mu)
        dxa[:, :-1] += dxx[:, 1:]
        dln, g[b + "ln1.weight"], g[b + "ln1.bias"] = _ln_bwd(dxa, P[b + "ln1.weight"], c["ln1"])
        dx = dx + dln
    dx, g["blocks.0.ln0.weight"], g["blocks.0.ln0.bias"] = _ln_bwd(dx, P["blocks.0.ln0.weight"], cache["ln0"])
    demb = np.zeros_like(P["emb.weight"])
    np.add.at(demb, cache["idx"].reshape(-1), dx.reshape(-1, dx.shape[-1]))
    g["emb.weight"] = demb
    return {k: v.astype(P[k].dtype, copy=False) for k, v in g.items()}


def loss_and_grads(params: dict, idx: np.ndarray, targets: np.ndarray) -> tuple[float, dict]:
    _, loss, cache = forward(params, idx, targets, keep=True)
    return loss, backward(params, cache)


def evaluate(params: dict, data: np.ndarray, ctx: int, max_windows: int | None = None, batch: int = 32) -> float:
    """Mean cross-entropy (nats/byte) over consecutive non-overlapping ctx-windows of data, each from
    the zero state (all windows, or the first max_windows)."""
    n = (len(data) - 1) // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    total, count = 0.0, 0
    for s in range(0, n, batch):
        rows = np.arange(s, min(n, s + batch))
        idx = rows[:, None] * ctx + np.arange(ctx)[None, :]
        _, loss, _ = forward(params, data[idx], data[idx + 1])
        total += loss * idx.size
        count += idx.size
    return total / count


# ----------------------------------------------------------------------------------------------- optimiser

class AdamW:
    """Adam with decoupled weight decay on the matrices only (not emb, LayerNorms, time_* vectors)."""

    def __init__(self, params: dict, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0):
        self.b1, self.b2 = betas
        self.eps, self.wd = eps, weight_decay
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict, grads: dict, lr: float) -> None:
        self.t += 1
        c1 = 1 - self.b1 ** self.t
        c2 = 1 - self.b2 ** self.t
        for k, p in params.items():
            gk = grads[k]
            m, v = self.m[k], self.v[k]
            m *= self.b1
            m += (1 - self.b1) * gk
            v *= self.b2
            v += (1 - self.b2) * gk * gk
            if self.wd and p.ndim == 2 and k != "emb.weight":
                p *= 1 - lr * self.wd
            p -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"t": np.array(self.t)}
        out.update({"m." + k: v for k, v in self.m.items()})
        out.update({"v." + k: v for k, v in self.v.items()})
        return out

    def load_state_dict(self, d) -> None:
        self.t = int(d["t"])
        for k in self.m:
            self.m[k][...] = d["m." + k]
            self.v[k][...] = d["v." + k]


def clip_grads(grads: dict, max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most max_norm; returns the norm before."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if max_norm > 0 and norm > max_norm:
        for g in grads.values():
            g *= max_norm / norm
    return norm


def lr_at(step: int, lr: float, warmup: int, total: int, min_ratio: float = 0.1, time_frac: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to min_ratio * lr at the end of training.

    Progress is the larger of step/total and time_frac (the share of a --time-budget used), so a run
    slowed down by a busy machine still anneals fully before its time is up.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = max(step / max(1, total), time_frac)
    start = warmup / max(1, total)
    frac = min(1.0, max(0.0, (progress - start) / max(1e-9, 1 - start)))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# ----------------------------------------------------------------------------------------------- files

def save_checkpoint(path: str | os.PathLike, params: dict, dtype=np.float32, metadata: dict | None = None) -> None:
    """Safetensors with the raw BlinkDL keys (what rwkv_np.load_model reads)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in params.items()}, str(tmp),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    tmp.replace(path)


def load_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    if "emb.weight" not in raw or "blocks.0.att.time_decay" not in raw:
        raise CheckpointError(f"{path}: not an RWKV-4 checkpoint with raw BlinkDL keys (emb.weight, "
                              f"blocks.0.att.time_decay missing)")
    return {k: np.ascontiguousarray(v.astype(np.float32).reshape(v.shape[-1:] if ".time_" in k else v.shape))
            for k, v in raw.items()}


def optim_path(ckpt: str | os.PathLike) -> Path:
    return Path(str(ckpt) + ".optim.npz")


def set_blas_threads(n: int) -> bool:
    """Best effort: set OpenBLAS's thread count for the already-loaded numpy. True on success."""
    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
             "openblas_set_num_threads64_", "openblas_set_num_threads")
    import glob
    libs = []
    for mod in ("scipy_openblas64", "scipy_openblas32", "numpy.libs", "numpy/.libs"):
        for base in sys.path:
            libs += glob.glob(os.path.join(base, mod, "**", "*openblas*.so*"), recursive=True)
    for lib in libs:
        try:
            dll = ctypes.CDLL(lib)
        except OSError:
            continue
        for name in names:
            fn = getattr(dll, name, None)
            if fn is not None:
                fn(int(n))
                return True
    return False


def export_asset(log_path: str | os.PathLike, fp16_ckpt: str | os.PathLike, out_dir: str | os.PathLike,
                 command: str, name: str = "rwkv4-shakespeare", full_curve: list | None = None) -> dict:
    """Copy a finished run's float16 weights to out_dir/<name>.safetensors and write <name>.json: sizes,
    data (with sha256), steps, tokens, held-out loss of the float16 weights, wall time, the command, and
    the curve points (train loss averaged over 20 steps; the interval held-out evaluations on the first
    --eval-windows windows; full_curve: [tokens, loss] on the whole held-out split, if measured)."""
    import shutil

    recs = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    start = [r for r in recs if r.get("event") == "start"][0]
    steps = [r for r in recs if "loss" in r]
    last = steps[-1]
    a = start["args"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{name}.safetensors"
    shutil.copyfile(fp16_ckpt, dst)
    params = load_params(dst)  # float16 on disk, evaluated in float32
    _, held = load_bytes(start["data"])
    fp16_loss = evaluate(params, held, a["ctx_len"])
    # the same split read as one stream by the inference model, the state carried across (RNN use)
    from .engine import RWKV

    logits, _ = RWKV(model_ready(params)).forward(held[:-1], return_all=True)
    z = logits.astype(np.float64)
    zmax = z.max(-1)
    stream_loss = float(np.mean(np.log(np.exp(z - zmax[:, None]).sum(-1)) + zmax - z[np.arange(len(z)), held[1:]]))
    train_curve = []
    for i in range(0, len(steps) - 19, 20):
        chunk = steps[i:i + 20]
        train_curve.append([chunk[-1]["tokens"], round(sum(r["loss"] for r in chunk) / 20, 4)])
    meta = {
        "name": name,
        "architecture": "RWKV-4 (arXiv 2305.13048), raw BlinkDL keys, att.time_decay raw (w = exp(raw))",
        "vocab": "bytes: token id = byte value (0-255), no special tokens",
        "vocab_size": VOCAB, "n_layer": a["n_layer"], "n_embd": a["n_embd"], "ffn_dim": 4 * a["n_embd"],
        "n_params": start["n_params"], "dtype_on_disk": "float16", "file_bytes": dst.stat().st_size,
        "training_data": {"name": "tiny shakespeare", "url": SHAKESPEARE_URL, "sha256": start["sha256"],
                          "bytes": len(Path(start["data"]).read_bytes()),
                          "split": "first 90% of the bytes for training, last 10% held out"},
        "ctx_len": a["ctx_len"], "batch_size": a["batch_size"], "steps": last["step"], "tokens": last["tokens"],
        "lr": a["lr"], "warmup": a["warmup"], "min_lr_ratio": a["min_lr_ratio"], "seed": a["seed"],
        "optimizer": "AdamW betas (0.9, 0.99) eps 1e-8, weight decay %g, grad clip %g" % (a["weight_decay"], a["grad_clip"]),
        "held_out_loss": round(fp16_loss, 4),
        "held_out_loss_float32": round(last["val_loss"], 4),
        "held_out_loss_streaming": round(stream_loss, 4),
        "held_out_loss_streaming_definition": "the whole held-out split as one sequence through rwkv_np.model.RWKV "
                                              "(float16 weights), state carried across, nats per byte",
        "held_out_loss_definition": f"mean cross-entropy, nats per byte, over all consecutive {a['ctx_len']}-byte "
                                    "windows of the held-out 10%, each read from the initial state",
        "final_train_loss_20_steps": train_curve[-1][1] if train_curve else None,
        "wall_time_minutes": round(last["time"] / 60, 1),
        "tokens_per_second": round(last["tokens"] / last["time"]),
        "stopped_early": last.get("stopped_early"),
        "command": command,
        "curve": {"train": train_curve, "eval_windows": a["eval_windows"],
                  "val_first_windows": [[r["tokens"], round(r["val_loss"], 4)] for r in steps
                                        if "val_loss" in r and not r.get("val_full")],
                  "val_first_windows_note": f"held-out loss on the first {a['eval_windows']} windows of "
                                            f"{a['ctx_len']} bytes only (an easier stretch than the whole split)",
                  "val_full": full_curve or [[last["tokens"], round(last["val_loss"], 4)]]},
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# ----------------------------------------------------------------------------------------------- CLI

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m rwkv_np train`."""
    a = parser.add_argument
    a("--data", default=None, help=f"text file to train on, as bytes (default: tiny shakespeare at {SHAKESPEARE_CACHE}, "
                                   "downloaded if missing)")
    a("--out", default="rwkv4-bytes.safetensors", help="checkpoint path (safetensors, raw BlinkDL keys)")
    a("--n-layer", type=int, default=4, help="blocks")
    a("--n-embd", type=int, default=128, help="channels C (the FFN is 4C wide)")
    a("--ctx-len", type=int, default=128, help="bytes per training window (T)")
    a("--batch-size", type=int, default=16, help="windows per step (B)")
    a("--steps", type=int, default=1000, help="optimiser steps")
    a("--lr", type=float, default=2e-3, help="peak learning rate")
    a("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of --lr (cosine decay)")
    a("--warmup", type=int, default=50, help="linear warm-up steps")
    a("--weight-decay", type=float, default=0.0, help="AdamW decay of the matrices (not emb)")
    a("--grad-clip", type=float, default=1.0, help="max global gradient norm (0: off)")
    a("--seed", type=int, default=0, help="seeds the init and the batches")
    a("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    a("--eval-windows", type=int, default=64, help="held-out windows per interval evaluation (full split at the end)")
    a("--save-every", type=int, default=200, help="steps between checkpoints")
    a("--log", default=None, help="JSONL training log (default: <out>.log.jsonl)")
    a("--resume", action="store_true", help="continue from --out and its .optim.npz side file")
    a("--time-budget", type=float, default=None,
      help="minutes: end training (final evaluation, checkpoint) once this much time is used, annealing "
           "the learning rate by whichever of steps or time runs out first")
    a("--threads", type=int, default=None, help="BLAS threads (default: leave as is)")
    a("--fp16-out", default=None, help="also write the final weights as float16 safetensors here")


def _check_args(args) -> None:
    for name in ("n_layer", "n_embd", "ctx_len", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise ArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise ArgumentError(f"--lr must be > 0, got {args.lr}")


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) and write checkpoints; returns the process exit code."""
    _check_args(args)
    if args.threads:
        set_blas_threads(args.threads)
    data_path = Path(args.data) if args.data else default_data_path()
    train, held = load_bytes(data_path)
    if len(held) < args.ctx_len + 2 or len(train) < args.ctx_len + 2:
        raise ArgumentError(f"--data {data_path}: too short for --ctx-len {args.ctx_len}")
    out = Path(args.out)
    log_path = Path(args.log) if args.log else Path(str(out) + ".log.jsonl")
    params = init_params(args.n_layer, args.n_embd, args.seed)
    opt = AdamW(params, weight_decay=args.weight_decay)
    step, tokens, elapsed = 0, 0, 0.0
    if args.resume:
        if not out.exists() or not optim_path(out).exists():
            raise ArgumentError(f"--resume: {out} or {optim_path(out)} missing")
        params = load_params(out)
        opt = AdamW(params, weight_decay=args.weight_decay)
        side = np.load(optim_path(out), allow_pickle=False)
        opt.load_state_dict(side)
        step, tokens, elapsed = int(side["step"]), int(side["tokens"]), float(side["elapsed"])
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    n_par = sum(v.size for v in params.values())
    sha = hashlib.sha256(data_path.read_bytes()).hexdigest()
    header = {"event": "start", "data": str(data_path), "sha256": sha, "n_params": int(n_par),
              "args": {k: v for k, v in vars(args).items() if not callable(v)}, "step": step}
    with open(log_path, "a") as f:
        f.write(json.dumps(header) + "\n")
    print(f"training {n_par:,} parameters on {data_path} ({len(train):,} train / {len(held):,} held-out bytes)",
          flush=True)
    tok_per_step = args.batch_size * args.ctx_len

    def save():
        save_checkpoint(out, params, metadata={"step": step})
        np.savez(optim_path(out), step=step, tokens=tokens, elapsed=elapsed, **opt.state_dict())

    t_last = time.time()
    smooth = None
    while step < args.steps:
        time_frac = elapsed / (60 * args.time_budget) if args.time_budget else 0.0
        lr = lr_at(step, args.lr, args.warmup, args.steps, args.min_lr_ratio, time_frac)
        # batches drawn from (seed, step) alone, so a resumed run sees exactly the batches it would have
        x, y = get_batch(train, args.batch_size, args.ctx_len, np.random.default_rng([args.seed, step]))
        loss, grads = loss_and_grads(params, x, y)
        gnorm = clip_grads(grads, args.grad_clip)
        opt.step(params, grads, lr)
        step += 1
        tokens += tok_per_step
        now = time.time()
        elapsed += now - t_last
        t_last = now
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
        rec = {"step": step, "tokens": tokens, "loss": loss, "lr": lr, "gnorm": gnorm, "time": elapsed}
        timed_out = bool(args.time_budget) and elapsed >= 60 * args.time_budget
        final = step == args.steps or timed_out
        if step % args.eval_every == 0 or final:
            rec["val_loss"] = evaluate(params, held, args.ctx_len, None if final else args.eval_windows)
            if final:
                rec["val_full"] = True
            if timed_out and step < args.steps:
                rec["stopped_early"] = f"--time-budget {args.time_budget} min used"
                print(f"stopping at step {step}: --time-budget {args.time_budget} min used", flush=True)
            t_last = time.time()
            elapsed += t_last - now
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if step % 10 == 0 or "val_loss" in rec or step == 1:
            tps = tokens / max(elapsed, 1e-9)
            eta = (args.steps - step) * elapsed / step
            if args.time_budget:
                eta = min(eta, 60 * args.time_budget - elapsed)
            val = f" | held-out {rec['val_loss']:.4f}" if "val_loss" in rec else ""
            print(f"step {step}/{args.steps} | loss {loss:.4f} (avg {smooth:.4f}) | lr {lr:.2e} | "
                  f"{tps:,.0f} tok/s | ETA {eta / 60:.1f} min{val}", flush=True)
        if step % args.save_every == 0 or final:
            save()
        if final:
            break
    if args.fp16_out:
        save_checkpoint(args.fp16_out, params, dtype=np.float16)
    print(f"done: {step} steps, {tokens:,} tokens, {elapsed / 60:.1f} min; wrote {out}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkv_np.train", description=__doc__)
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
