"""What fewer bytes per weight cost: the shipped model's held-out loss in every weight format rwkv_np
reads, and how far the logits of the 169M shape move. Notebook 07 plots the JSON this writes.

    PYTHONPATH=. python experiments/quantization.py                   # the README's table (a few minutes)
    PYTHONPATH=. python experiments/quantization.py --tiny --out /tmp/q.json   # CI's end-to-end run

Formats:
    fp32   the shipped weights (stored fp16, widened exactly): the baseline
    fp16   the same numbers
    bf16   every tensor rounded to the nearest bfloat16 (ties to even), as a bf16 checkpoint holds them
    int8   rwkv_np's int8 mode (`load_model(path, quantize="int8")`, rwkv_np/quantize.py): every matrix
           but the embedding (one row of it is read per token)
    Q8_0, Q5_1, Q5_0, Q4_1, Q4_0   rwkv.cpp files as its quantizer writes them, every matrix but the
           embedding and the head (tests/helpers.py: ggml's reference quantization, whose blocks
           docs/performance.md compares with rwkv.cpp's own quantizer's), read back by rwkv_np, which
           dequantizes them exactly as ggml does.
Loss: nats per byte over all consecutive 256-byte windows of the held-out split (the last 10% of
tiny shakespeare), each read from the initial state: the shipped model's own definition.
Logits: a model of the 169M shape with random weights (rwkv_np.rwkv4.params.random_weights), 64 tokens
in the parallel form; each format against float32: largest and rms difference, how often the top
token is the same. Random weights are not a trained model: they say how much the arithmetic moves,
not how much a trained 169M model's text would change.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # rwkv_np from this checkout when run as a script
sys.path.insert(0, str(HERE.parent / "tests"))  # the rwkv.cpp writer (ggml's quantization)

import rwkv_np  # noqa: E402
from helpers import bf16_round, rwkv_cpp_quantized_bytes  # noqa: E402
from rwkv_np import perplexity  # noqa: E402
from rwkv_np.cli import default_model_path  # noqa: E402
from rwkv_np.config import RWKVConfig  # noqa: E402
from rwkv_np.quantize import BLOCK, BLOCK_BYTES  # noqa: E402
from rwkv_np.rwkv4.params import random_weights  # noqa: E402

GGML = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
FORMATS = ("fp32", "fp16", "bf16", "int8") + GGML
# bytes per weight of the matrices as each format stores them (int8: a float32 scale per 32 weights)
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1 + 4 / BLOCK,
                    **{f: BLOCK_BYTES[f] / BLOCK for f in GGML}}
SHAPE_169M = dict(n_layer=12, n_embd=768, ffn_dim=3072, vocab_size=50277)
SHAPE_TINY = dict(n_layer=2, n_embd=64, ffn_dim=256, vocab_size=512)


def model_in(fmt: str, weights: dict[str, np.ndarray], tmp: Path) -> rwkv_np.RWKV:
    """The model of raw float32 weights (BlinkDL names) stored in format fmt, as rwkv_np runs it."""
    if fmt == "fp32":
        return rwkv_np.RWKV(weights)
    if fmt in ("fp16", "bf16"):  # every tensor, as a checkpoint of that type holds them
        rounded = (lambda w: w.astype(np.float16).astype(np.float32)) if fmt == "fp16" else bf16_round
        return rwkv_np.RWKV({n: rounded(w) for n, w in weights.items()})
    if fmt == "int8":
        path = tmp / "model.safetensors"
        from safetensors.numpy import save_file

        save_file(weights, str(path))
        return rwkv_np.load_model(path, quantize="int8")
    path = tmp / f"model-{fmt}.bin"
    path.write_bytes(rwkv_cpp_quantized_bytes(weights, fmt))
    model = rwkv_np.load_model(path)
    # the writer keeps the head float32, as rwkv.cpp keeps it: the table's Q rows quantize the blocks only
    assert np.array_equal(model.weights["head.weight"], weights["head.weight"])
    return model


def held_out_loss(model: rwkv_np.RWKV, data: bytes) -> float:
    tokens = np.frombuffer(data, np.uint8).astype(np.int64)
    r = perplexity.evaluate(model, tokens, np.ones(256, np.int64), ctx=256)
    return r.nats / r.bytes


def logit_movement(weights: dict[str, np.ndarray], tmp: Path, tokens: np.ndarray) -> dict[str, dict]:
    base, _ = rwkv_np.RWKV(weights).forward(tokens, return_all=True, mode="parallel")
    out = {}
    for fmt in FORMATS[1:]:
        got, _ = model_in(fmt, weights, tmp).forward(tokens, return_all=True, mode="parallel")
        d = (got - base).astype(np.float64)
        out[fmt] = {"max_abs": float(np.abs(d).max()), "rms": float(np.sqrt(np.mean(d ** 2))),
                    "rms_logits": float(np.sqrt(np.mean(base.astype(np.float64) ** 2))),
                    "top1_same": float(np.mean(got.argmax(-1) == base.argmax(-1)))}
        print(f"  {fmt}: logits move by at most {out[fmt]['max_abs']:.3g} (rms {out[fmt]['rms']:.3g}), "
              f"top token the same {out[fmt]['top1_same']:.1%}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt",
                    help="the text (default: ../shared/data/tinyshakespeare.txt); its last 10%% is scored")
    ap.add_argument("--model", type=Path, default=None, help="a byte-level RWKV-4 model (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=HERE / "quantization.json", help="the results file")
    ap.add_argument("--tiny", action="store_true", help="4 KB of held-out text and a small random shape (CI)")
    args = ap.parse_args()
    if not args.data.is_file():
        ap.error(f"--data {args.data}: no such file")
    text = args.data.read_bytes()
    held_out = text[int(0.9 * len(text)):]
    if args.tiny:
        held_out = held_out[:4096 + 1]
    path = args.model or default_model_path()
    shipped = rwkv_np.load_model(path)
    weights = {n: np.asarray(w, np.float32) for n, w in shipped.weights.items()}
    results = {"model": path.name, "data": f"{args.data.name}, last 10%: {len(held_out)} bytes",
               "bytes_per_weight": BYTES_PER_WEIGHT, "loss": {}, "tiny": args.tiny}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rwkv_np_quant_") as tmp:
        tmp = Path(tmp)
        print(f"held-out loss of {path.name}, nats per byte ({len(held_out)} bytes):", flush=True)
        for fmt in FORMATS:
            results["loss"][fmt] = held_out_loss(model_in(fmt, weights, tmp), held_out)
            print(f"  {fmt}: {results['loss'][fmt]:.5f} ({results['loss'][fmt] - results['loss']['fp32']:+.5f})",
                  flush=True)
        shape = SHAPE_TINY if args.tiny else SHAPE_169M
        print(f"logits of random weights of shape {shape}, against float32:", flush=True)
        random = random_weights(RWKVConfig(**shape), seed=0)
        tokens = np.random.default_rng(1).integers(0, shape["vocab_size"], 64)
        results["logits"] = {"shape": shape, **logit_movement(random, tmp, tokens)}
    results["seconds"] = time.perf_counter() - started
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(results, indent=1) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
