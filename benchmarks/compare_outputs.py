"""Two checkouts of rwkv_np side by side: are their logits and states bit-identical?

    python benchmarks/compare_outputs.py OLD_CHECKOUT NEW_CHECKOUT [--fixtures ../shared/fixtures]

(e.g. OLD_CHECKOUT from `git worktree add /tmp/old <commit>`.) For every checkpoint in the fixtures
folder (rwkv.cpp files of every version and quantization, the PyTorch-written .pth files and Hugging
Face folders) and the shipped model, each tree, in its own process, loads the checkpoint with every
option that applies to it (as stored; keep_16bit; lazy_embedding; quantize="int8"; keep_blocks) and
runs the same tokens through both forms (all logits, and the state after), then through the plain-NumPy
reference of its version. The two trees' arrays are compared byte for byte; a refused load must be
refused by both. Only public API is used (rwkv_np.load_model, model.forward, model.params, State),
plus the reference module, found under the name each tree gives it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOKENS = [34, 105, 110, 32, 116, 104, 101, 32, 98, 101, 103, 105, 110, 110, 105, 110, 103, 10, 0, 255]
OPTIONS = {"stored": {}, "keep_16bit": {"keep_16bit": True}, "lazy_embedding": {"lazy_embedding": True},
           "int8": {"quantize": "int8"}, "keep_blocks": {"keep_blocks": True},
           "all": {"keep_16bit": True, "lazy_embedding": True, "keep_blocks": True}}


def checkpoints(fixtures: Path, tree: Path) -> list[Path]:
    found = sorted((fixtures / "rwkv_cpp").glob("*.bin")) if (fixtures / "rwkv_cpp").is_dir() else []
    found = [p for p in found if not p.name.startswith("expected-")]
    torch_written = fixtures / "torch_written"
    if torch_written.is_dir():
        found += sorted(torch_written.glob("*.pth")) + sorted(p for p in torch_written.iterdir() if p.is_dir())
    found += sorted((tree / "rwkv_np" / "assets").glob("*.safetensors"))
    return found


def reference_module(version: str):
    """The tree's plain-NumPy reference of a version, under the name that tree gives it."""
    import importlib

    import rwkv_np

    package = {"4": "rwkv4", "5.1": "rwkv5", "5.2": "rwkv5", "6": "rwkv6", "7": "rwkv7"}[version]
    old = {"4": "reference", "5.1": "reference_v5", "5.2": "reference_v5", "6": "reference_v6", "7": "reference_v7"}
    if (Path(rwkv_np.__file__).parent / package).is_dir():
        return importlib.import_module(f"rwkv_np.{package}.reference")
    return importlib.import_module(f"rwkv_np.{old[version]}")


def run_child(paths: list[str], out: str) -> None:
    """In one tree's process: every checkpoint x option -> arrays in an .npz, refusals in a .json."""
    import rwkv_np

    arrays, notes = {}, {}
    for path in paths:
        for opt, kwargs in OPTIONS.items():
            key = f"{Path(path).name}|{opt}"
            try:
                model = rwkv_np.load_model(path, **kwargs)
            except rwkv_np.RWKVError as e:
                notes[key] = f"refused: {type(e).__name__}"
                continue
            V = model.config.vocab_size
            tokens = [t % V for t in TOKENS]
            for mode in ("parallel", "recurrent"):
                logits, state = model.forward(tokens, mode=mode, return_all=True)
                arrays[f"{key}|{mode}|logits"] = logits
                arrays[f"{key}|{mode}|state"] = state.data
                if state.wkv is not None:
                    arrays[f"{key}|{mode}|wkv"] = state.wkv
                # continue from the state: the state carries everything
                logits2, state2 = model.forward(tokens[:5], state, mode=mode, return_all=True)
                arrays[f"{key}|{mode}|continued"] = logits2
            if opt == "stored":
                ref = reference_module(model.config.version)
                kwargs_ref = {}
                if model.config.version != "4" and "ln_x_eps" in ref.forward.__code__.co_varnames:
                    kwargs_ref["ln_x_eps"] = model.config.ln_x_eps
                logits, state = ref.forward(model.params, tokens, **kwargs_ref)
                arrays[f"{key}|reference|logits"] = logits
                for i, s in enumerate(state if isinstance(state, tuple) else (state,)):
                    arrays[f"{key}|reference|state{i}"] = s
            notes[key] = f"loaded: {model.config.version} {model.weight_dtype}"
    np.savez(out, **arrays)
    Path(out + ".json").write_text(json.dumps({"package": rwkv_np.__file__, "notes": notes}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", type=Path, nargs="?")
    ap.add_argument("new", type=Path, nargs="?")
    ap.add_argument("--fixtures", type=Path, default=HERE.parent.parent / "shared" / "fixtures")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child[1:], args.child[0])
        return
    if args.old is None or args.new is None:
        ap.error("give the two checkouts")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    paths = [str(p) for p in checkpoints(args.fixtures.resolve(), trees["new"])]
    results = {}
    with tempfile.TemporaryDirectory(prefix="rwkv_np_outputs_") as tmp:
        for name, tree in trees.items():
            out = str(Path(tmp) / f"{name}.npz")
            env = dict(os.environ, PYTHONPATH=str(tree))
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", out, *paths],
                                  capture_output=True, text=True, env=env, cwd=tmp)
            if proc.returncode:
                raise SystemExit(f"{tree}: failed:\n{proc.stderr[-3000:]}")
            found = json.loads(Path(out + ".json").read_text())
            print(f"{name}: {found['package']}")
            results[name] = (dict(np.load(out)), found["notes"])
    (old, old_notes), (new, new_notes) = results["old"], results["new"]
    problems = [f"{k}: old {old_notes.get(k)}, new {new_notes.get(k)}"
                for k in sorted(old_notes.keys() | new_notes.keys()) if old_notes.get(k) != new_notes.get(k)]
    problems += [f"{k}: only in {'old' if k in old else 'new'}" for k in sorted(old.keys() ^ new.keys())]
    same = 0
    for k in sorted(old.keys() & new.keys()):
        a, b = old[k], new[k]
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max() if a.shape == b.shape else "shape"
            problems.append(f"{k}: differs (max abs {diff})")
        else:
            same += 1
    loaded = sum(v.startswith("loaded") for v in new_notes.values())
    print(f"{len(paths)} checkpoints x {len(OPTIONS)} load options: {loaded} loads, "
          f"{len(new_notes) - loaded} refused by both; {same} arrays bit-identical of {len(old.keys() | new.keys())}")
    for p in problems:
        print("DIFFERENT:", p)
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
