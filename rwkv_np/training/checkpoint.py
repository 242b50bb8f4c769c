"""Training checkpoints: everything a run needs to continue exactly, as one file replaced atomically.

<out>.ckpt is a safetensors file holding the float32 weights under their checkpoint names, AdamW's
moments as "adam.m.<name>" and "adam.v.<name>", and in its header a manifest (JSON): the step, tokens,
elapsed time, Adam's step count, the options that shape the run (MUST_MATCH) and the sha256 of the
training data, a sha256 of each part (weights, adam.m, adam.v) and one of the manifest itself. The
batches are drawn from (seed, step) alone, so the step is the position of the random stream.

Why one file: written to <file>.partial, flushed and fsynced, then renamed over the old one
(os.replace is atomic), a reader finds either the previous complete checkpoint or the new complete
one, never a mix of steps, whatever moment the writer is killed at; the folder is fsynced so that
the rename survives a power cut too. `load_training` verifies the manifest, the options, the names
and shapes, and every part's sha256, and refuses with our error on any mismatch.

The model itself (--out) is a plain safetensors file with the weights only, what rwkv_np.load_model
reads; it is written the same atomic way after each checkpoint. A run resumes from <out>.ckpt only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import ArgumentError, CheckpointError
from ..files import check_writable, open_regular, partial_path, write_atomic

FORMAT = "rwkv_np training checkpoint"
VERSION = 1
#: options whose values shape the weights a run produces: resuming with any other value would not
#: continue the same run (the architecture, the batches, the schedule, the update rule)
MUST_MATCH = ("n_layer", "n_embd", "ctx_len", "batch_size", "seed", "steps", "lr", "min_lr_ratio", "warmup",
              "weight_decay", "grad_clip", "time_budget")
MAX_HEADER = 16 << 20  # a manifest and the names of a few thousand tensors take well under 1 MB


def checkpoint_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".ckpt")


def atomic_write(path: str | os.PathLike, data: bytes, what: str | None = None) -> None:
    """Replace path by data so that any reader, at any moment, sees the old or the new file whole
    (rwkv_np.files.write_atomic: a FIFO or folder at either path is refused, naming `what`)."""
    write_atomic(path, data, what)


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = tensors[name]
        h.update(f"{name} {a.dtype.str} {a.shape}\n".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest itself (without this field): a damaged digit in the step is found too."""
    rest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def run_record(args, data_sha256: str) -> dict:
    """What a checkpoint records about the run that wrote it, and what a resuming run must match."""
    return {"args": {k: getattr(args, k) for k in MUST_MATCH}, "data_sha256": data_sha256}


def save_training(path: str | os.PathLike, params: dict, opt, progress: dict, run: dict,
                  what: str | None = None) -> None:
    """Write the checkpoint: params, opt's moments and step count, progress (step, tokens, elapsed, ...),
    run (from run_record); `what` names it in errors (default: the path)."""
    from safetensors.numpy import save

    parts = {"weights": params, "adam.m": opt.m, "adam.v": opt.v}
    manifest = {"format": FORMAT, "version": VERSION, **progress, "adam_t": opt.t, **run,
                "sha256": {part: _digest(t) for part, t in parts.items()}}
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    tensors = dict(params)
    for part in ("adam.m", "adam.v"):
        tensors.update({f"{part}.{k}": v for k, v in parts[part].items()})
    atomic_write(path, save(tensors, metadata={"manifest": json.dumps(manifest)}), what)


def _read_header(f, path, size: int) -> dict:
    raw = f.read(8)
    n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if not 0 < n <= min(MAX_HEADER, size - 8):
        raise CheckpointError(f"{path}: not a training checkpoint (no safetensors header)")
    try:
        header = json.loads(f.read(n))
        manifest = json.loads(header["__metadata__"]["manifest"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a training checkpoint (no readable manifest: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT}")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{path}: {FORMAT} version {manifest.get('version')!r}, this rwkv_np reads "
                              f"version {VERSION}")
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise CheckpointError(f"{path}: the manifest does not match its sha256: the file is damaged")
    return manifest


def _check_run(manifest: dict, run: dict, path) -> None:
    """Refuse to resume with options or data other than those of the run that wrote the checkpoint."""
    recorded = manifest.get("args")
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{path}: the manifest records no options")
    for name, value in run["args"].items():
        if name not in recorded:
            raise CheckpointError(f"{path}: the manifest does not record --{name.replace('_', '-')}")
        if recorded[name] != value:
            opt = "--" + name.replace("_", "-")
            raise ArgumentError(f"--resume: {opt} is {value} but {path} was written by a run with {opt} "
                                f"{recorded[name]}; resume with the options of that run (only then does it "
                                f"continue the same run)")
    if manifest.get("data_sha256") != run["data_sha256"]:
        raise ArgumentError(f"--resume: --data has sha256 {run['data_sha256']}, but {path} was trained on "
                            f"data with sha256 {manifest.get('data_sha256')}; resume on the same file")


def _count(v) -> bool:
    return type(v) is int and v >= 0


def _amount(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v >= 0


def load_training(path: str | os.PathLike, run: dict, shapes: dict[str, tuple[int, ...]], what: str | None = None):
    """Read and verify a checkpoint written by save_training for a run described by run (run_record)
    whose parameters have these shapes. Returns (params, m, v, manifest); arrays float32, writable.
    It must be a regular file (rwkv_np.files.open_regular; `what` names it in that error)."""
    from safetensors.numpy import load

    path = Path(path)
    f, size = open_regular(path, what or str(path))
    try:
        with f:
            manifest = _read_header(f, path, size)
            _check_run(manifest, run, path)
            # three float32 copies of the parameters plus the header: refuse anything larger before
            # reading it
            limit = 8 + MAX_HEADER + 3 * 4 * sum(int(np.prod(s)) for s in shapes.values())
            if size > limit:
                raise CheckpointError(f"{path}: {size} bytes, more than a checkpoint of these sizes can be")
            f.seek(0)
            raw = f.read(limit + 1)
            if len(raw) > limit:  # it grew while being read
                raise CheckpointError(f"{path}: more than {limit} bytes, more than a checkpoint of these sizes can be")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        tensors = load(raw)
    except Exception as e:  # noqa: BLE001 - any parse failure is a damaged checkpoint
        raise CheckpointError(f"{path}: damaged checkpoint ({e})") from None
    expected = set(shapes) | {f"{part}.{k}" for part in ("adam.m", "adam.v") for k in shapes}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)[:3]
        raise CheckpointError(f"{path}: the tensors do not match the model of these options ({', '.join(odd)})")
    parts = {part: {} for part in ("weights", "adam.m", "adam.v")}
    for name, shape in shapes.items():
        for part, key in (("weights", name), ("adam.m", "adam.m." + name), ("adam.v", "adam.v." + name)):
            a = tensors[key]
            if a.dtype != np.float32 or a.shape != tuple(shape):
                raise CheckpointError(f"{path}: {key} is {a.dtype} {a.shape}, expected float32 {tuple(shape)}")
            parts[part][name] = np.array(a)  # a writable copy
    recorded = manifest.get("sha256") or {}
    for part, t in parts.items():
        if recorded.get(part) != _digest(t):
            raise CheckpointError(f"{path}: the {part} do not match the sha256 the manifest records: the file "
                                  f"is damaged")
    for key, valid in (("step", _count), ("tokens", _count), ("adam_t", _count), ("elapsed", _amount),
                       ("smooth", lambda v: v is None or _amount(v)), ("finished", lambda v: type(v) is bool)):
        if not valid(manifest.get(key)):
            raise CheckpointError(f"{path}: the manifest's {key} is {manifest.get(key)!r}")
    if manifest["adam_t"] != manifest["step"]:  # one optimiser step per training step
        raise CheckpointError(f"{path}: the manifest's step {manifest['step']} and Adam's step count "
                              f"{manifest['adam_t']} disagree")
    return parts["weights"], parts["adam.m"], parts["adam.v"], manifest


# ------------------------------------------------------------------------------ the model file (--out)

def save_model(path: str | os.PathLike, params: dict, dtype=np.float32, metadata: dict | None = None,
               what: str | None = None) -> None:
    """Safetensors with the checkpoint names (what rwkv_np.load_model reads), written atomically;
    `what` names it in errors (default: the path)."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v.astype(dtype)) for k, v in params.items()},
                metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write(path, data, what)


def load_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A model file's weights as float32 under checkpoint names, vectors (C,)."""
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    if "emb.weight" not in raw or "blocks.0.att.time_decay" not in raw:
        raise CheckpointError(f"{path}: not an RWKV-4 checkpoint with raw BlinkDL keys (emb.weight, "
                              f"blocks.0.att.time_decay missing)")
    return model_ready(raw)


def model_ready(params: dict) -> dict[str, np.ndarray]:
    """The flat weights dict `rwkv_np.RWKV` takes: the same names and values, float32, vectors (C,)."""
    return {k: np.ascontiguousarray(np.asarray(v, np.float32).reshape(v.shape[-1:] if ".time_" in k else v.shape))
            for k, v in params.items()}


def ensure_writable(option: str, path: str | os.PathLike) -> Path:
    """Check up front that a file can be written at path (a regular file, or a new file in a folder
    that takes files, created if missing: rwkv_np.files.check_writable), so that a run does not fail
    or hang only at its end. Errors start "<option> <path>:". Returns the path."""
    return check_writable(path, f"{option} {path}")
