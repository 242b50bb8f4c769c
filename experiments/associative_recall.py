"""Multi-query associative recall (MQAR, Arora et al. 2023, "Zoology", arXiv 2312.04927): RWKV-4
against a softmax-attention transformer of the same size, trained the same way in NumPy, as the number
of key-value pairs grows. Notebook 09 plots the JSON this writes; it never trains.

    PYTHONPATH=. nice python experiments/associative_recall.py            # the full grid (resumable)
    PYTHONPATH=. python experiments/associative_recall.py --tiny --out /tmp/t.json   # CI's end-to-end run

A sequence is N key-value pairs, then every one of the N keys again in a random order:

    k_1 v_1 k_2 v_2 ... k_N v_N  q_1 q_2 ... q_N      (q = a permutation of the keys)

Keys are tokens 0..63, values 64..127 (one fixed vocabulary of 128 for every N); the N keys of a
sequence are distinct, values are drawn with replacement. At each query position the model must output
the value that followed that key; loss and accuracy count those N positions only (the pairs themselves
are unpredictable). Chance accuracy is 1/64. Every training batch is fresh; accuracy is measured on a
fixed held-out set of sequences drawn from another seed.

Beside the grid (pairs x seeds x both models), a few extra RWKV-4 runs test the explanation of its
results: 4x the steps, twice the width, and keys drawn from a smaller set (4 or 8 of the 64).

Both models: same width C, depth, vocabulary, AdamW (rwkv_np.training.optim), steps, batch, peak lr,
warm-up and cosine schedule, gradient clipping. RWKV-4 is rwkv_np.training.model (init, forward and
the backward's pieces); the attention model is experiments/attention.py.

At the end of every run, what the model answers at the held-out queries (output_breakdown): the right
value, another value of the sequence (the last pair's?), a value absent from it, or a key.

The results file is rewritten (atomically) after every finished run; a rerun with the same settings
skips the runs it already holds. Different settings refuse to reuse the file: give another --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # rwkv_np from this checkout when run as a script
sys.path.insert(0, str(HERE))

import attention as attn  # noqa: E402
from rwkv_np.rwkv4 import ARCH  # noqa: E402
from rwkv_np.errors import ArgumentError, TrainingError  # noqa: E402
from rwkv_np.training import init as rwkv_init  # noqa: E402
from rwkv_np.training import model as rwkv  # noqa: E402
from rwkv_np.training.optim import AdamW, clip_grads, lr_at  # noqa: E402
from rwkv_np.process import set_blas_threads  # noqa: E402

N_KEYS = 64  # keys are tokens 0..63
VOCAB = 2 * N_KEYS  # values are tokens 64..127

# extras: runs beside the grid that test the grid's explanation of RWKV-4's failure (longer training, a
# wider model); each is run for every seed, with its overrides of the grid's settings
FULL = dict(pairs=[1, 2, 4, 8, 16, 32], seeds=[0, 1, 2], n_layer=2, n_embd=64, n_head=2, steps=600, batch=32,
            lr=3e-3, warmup=50, min_lr_ratio=0.1, grad_clip=1.0, eval_seqs=256, eval_every=100,
            extras=[{"model": "rwkv4", "pairs": 2, "steps": 2400}, {"model": "rwkv4", "pairs": 8, "steps": 2400},
                    {"model": "rwkv4", "pairs": 8, "n_embd": 128}, {"model": "rwkv4", "pairs": 2, "keys": 4},
                    {"model": "rwkv4", "pairs": 8, "keys": 8}])
TINY = dict(pairs=[2, 4], seeds=[0], n_layer=1, n_embd=16, n_head=2, steps=20, batch=8, lr=3e-3,
            warmup=5, min_lr_ratio=0.1, grad_clip=1.0, eval_seqs=32, eval_every=10,
            extras=[{"model": "rwkv4", "pairs": 2, "steps": 30}])
MODELS = ("rwkv4", "attention")


# ------------------------------------------------------------------------------ the task

def make_batch(rng: np.random.Generator, batch: int, pairs: int, keys: int = N_KEYS):
    """(tokens (B, 3N), targets (B, 3N), mask (B, 3N) True at the N query positions). Keys are drawn
    from the first `keys` key tokens (all 64 but in one extra run, which tests a smaller key set)."""
    if not 1 <= keys <= N_KEYS:
        raise ArgumentError(f"keys must be in 1..{N_KEYS}, got {keys}")
    if not 1 <= pairs <= keys:
        raise ArgumentError(f"pairs must be in 1..{keys} (the number of distinct keys), got {pairs}")
    n_keys = keys
    keys = np.argsort(rng.random((batch, n_keys)), axis=1)[:, :pairs]  # N distinct keys per row
    vals = N_KEYS + rng.integers(0, N_KEYS, (batch, pairs))
    order = np.argsort(rng.random((batch, pairs)), axis=1)
    tokens = np.concatenate([np.stack([keys, vals], -1).reshape(batch, 2 * pairs),
                             np.take_along_axis(keys, order, 1)], axis=1)
    targets = np.zeros_like(tokens)
    targets[:, 2 * pairs:] = np.take_along_axis(vals, order, 1)
    mask = np.zeros(tokens.shape, bool)
    mask[:, 2 * pairs:] = True
    return tokens, targets, mask


def masked_loss(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray):
    """Mean cross-entropy (nats) over the masked positions, accuracy there, and d loss / d logits.
    logits (..., V) with targets and mask of the leading shape."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    n = mask.sum()
    loss = float(-(picked * mask).sum() / n)
    acc = float(((logits.argmax(-1) == targets) & mask).sum() / n)
    d = np.exp(logp)
    np.put_along_axis(d, targets[..., None], np.take_along_axis(d, targets[..., None], -1) - 1, -1)
    d *= mask[..., None] / n
    return loss, acc, d


# ------------------------------------------------------------------------------ the two models

class RWKV4:
    """rwkv_np.training.model with the loss restricted to the query positions: the package's own
    forward, then its backward's pieces fed this loss's gradient (its `backward` starts from the mean
    cross-entropy over all positions)."""

    name = "rwkv4"

    def __init__(self, cfg, seed):
        self.params = rwkv_init.init_params(cfg["n_layer"], cfg["n_embd"], seed, vocab=VOCAB)

    def weights(self):
        return self.params

    def logits(self, tokens):
        return rwkv.forward(self.params, tokens)[0]

    def loss_and_grads(self, tokens, targets, mask):
        logits, _, cache = rwkv.forward(self.params, tokens, keep=True)
        loss, acc, d_logits = masked_loss(logits, targets, mask)
        P = cache["P"]
        g: dict = {}
        d_xo, g["head"] = rwkv.linear_backward(d_logits.transpose(1, 0, 2), cache["xo"], P["head"])
        d, g["ln_out"] = rwkv.layer_norm_backward(d_xo, cache["x"], **P["ln_out"])
        g["blocks"] = [None] * len(P["blocks"])
        for i in reversed(range(len(P["blocks"]))):
            d, g["blocks"][i] = rwkv.block_backward(d, cache["blocks"][i], **P["blocks"][i])
        d, g["ln0"] = rwkv.layer_norm_backward(d, cache["x0"], **P["ln0"])
        g["emb"] = np.zeros_like(P["emb"])
        np.add.at(g["emb"], cache["tokens"].ravel(), d.reshape(-1, d.shape[-1]))
        grads = {k: np.asarray(v, dtype=self.params[k].dtype) for k, v in ARCH.flatten(g).items()}
        return loss, acc, grads

    @staticmethod
    def state_floats(cfg, T):
        """Floats carried from token to token at inference, whatever T: per layer the time-mixing
        shift x_{t-1}, eq. 14's a, b, p, and the channel-mixing shift: 5C."""
        return 5 * cfg["n_embd"] * cfg["n_layer"]


class Attention:
    name = "attention"

    def __init__(self, cfg, seed):
        self.params = attn.init_params(cfg["n_layer"], cfg["n_embd"], cfg["n_head"], VOCAB, seed)

    def weights(self):
        return attn.weights(self.params)

    def logits(self, tokens):
        return attn.forward(self.params, tokens)[0]

    def loss_and_grads(self, tokens, targets, mask):
        logits, cache = attn.forward(self.params, tokens)
        loss, acc, d_logits = masked_loss(logits, targets, mask)
        return loss, acc, attn.backward(self.params, cache, d_logits)

    @staticmethod
    def state_floats(cfg, T):
        """The KV cache after T tokens: a key and a value of C per token per layer."""
        return 2 * cfg["n_embd"] * cfg["n_layer"] * T


def build(model: str, cfg: dict, seed: int):
    return {"rwkv4": RWKV4, "attention": Attention}[model](cfg, seed)


def n_params(m) -> int:
    return int(sum(v.size for v in m.weights().values()))


# ------------------------------------------------------------------------------ training

def evaluate(m, eval_set) -> tuple[float, float]:
    tokens, targets, mask = eval_set
    losses, accs, n = 0.0, 0.0, 0
    for s in range(0, len(tokens), 64):
        sl = slice(s, s + 64)
        loss, acc, _ = masked_loss(m.logits(tokens[sl]), targets[sl], mask[sl])
        k = int(mask[sl].sum())
        losses, accs, n = losses + loss * k, accs + acc * k, n + k
    return losses / n, accs / n


def output_breakdown(m, eval_set) -> dict:
    """What the model outputs at the query positions of the held-out set (issue 23: does it answer with a
    value of the sequence, the latest one, any value?). Shares of the queries whose most likely token is
    the right value ("correct"); another value present in the sequence ("other_in_sequence"), of which
    the value of the last pair written ("last_pair", when it is not the right one); a value absent from
    the sequence ("value_not_in_sequence"); a key ("key"). And the mean probability the model puts on the
    right value, on the sequence's other values, on values absent from it, on keys ("mass_*"): a
    uniform guess among the sequence's N values would put 1/N on the right one and (N-1)/N on the rest."""
    tokens, targets, mask = eval_set
    N = tokens.shape[1] // 3
    counts = dict.fromkeys(("correct", "other_in_sequence", "last_pair", "value_not_in_sequence", "key"), 0)
    mass = dict.fromkeys(("mass_correct", "mass_other_in_sequence", "mass_value_not_in_sequence", "mass_key"), 0.0)
    n = 0
    for s in range(0, len(tokens), 64):
        z = m.logits(tokens[s:s + 64]).astype(np.float64)[:, 2 * N:]  # (B, N, V) at the queries
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        for row, tgt, prob in zip(tokens[s:s + 64], targets[s:s + 64, 2 * N:], p):
            values = set(row[1:2 * N:2].tolist())
            in_seq = np.zeros(VOCAB, bool)
            in_seq[list(values)] = True
            for q in range(N):
                best, right = int(prob[q].argmax()), int(tgt[q])
                if best == right:
                    counts["correct"] += 1
                elif best < N_KEYS:
                    counts["key"] += 1
                elif in_seq[best]:
                    counts["other_in_sequence"] += 1
                    counts["last_pair"] += best == int(row[2 * N - 1])
                else:
                    counts["value_not_in_sequence"] += 1
                others = in_seq.copy()
                others[right] = False
                mass["mass_correct"] += prob[q, right]
                mass["mass_other_in_sequence"] += prob[q, others].sum()
                mass["mass_value_not_in_sequence"] += prob[q, N_KEYS:][~in_seq[N_KEYS:]].sum()
                mass["mass_key"] += prob[q, :N_KEYS].sum()
                n += 1
    return {**{k: round(v / n, 5) for k, v in counts.items()}, **{k: round(float(v) / n, 5) for k, v in mass.items()}}


def variant_name(overrides: dict) -> str:
    """'' for the grid; 'steps=2400' etc. for an extra run (its settings that differ from the grid's)."""
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items()) if k not in ("model", "pairs"))


def train_one(model: str, pairs: int, seed: int, cfg: dict, log=print, variant: str = "") -> dict:
    m = build(model, cfg, seed)
    params = m.weights()
    opt = AdamW(params)
    rng = np.random.default_rng([seed, pairs])  # the same batches for both models
    n_keys = cfg.get("keys", N_KEYS)
    eval_set = make_batch(np.random.default_rng([10_000 + seed, pairs]), cfg["eval_seqs"], pairs, n_keys)
    curve = []
    t0 = time.time()
    for step in range(cfg["steps"]):
        tokens, targets, mask = make_batch(rng, cfg["batch"], pairs, n_keys)
        loss, acc, grads = m.loss_and_grads(tokens, targets, mask)
        if not math.isfinite(loss):
            raise TrainingError(f"{model}, {pairs} pairs, seed {seed}: loss {loss} at step {step}")
        clip_grads(grads, cfg["grad_clip"])
        opt.step(params, grads, lr_at(step, cfg["lr"], cfg["warmup"], cfg["steps"], cfg["min_lr_ratio"]))
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == cfg["steps"]:
            el, ea = evaluate(m, eval_set)
            curve.append({"step": step + 1, "train_loss": loss, "eval_loss": el, "eval_acc": ea})
            log(f"  {model}{' ' + variant if variant else ''} N={pairs} seed={seed} step {step + 1}: train loss {loss:.3f}, "
                f"held-out loss {el:.3f}, acc {ea:.3f} ({time.time() - t0:.0f} s)")
    return {"model": model, "pairs": pairs, "seed": seed, "variant": variant, "steps": cfg["steps"],
            "n_embd": cfg["n_embd"], "keys": n_keys, "params": n_params(m),
            "state_floats": m.state_floats(cfg, 3 * pairs), "seq_len": 3 * pairs,
            "eval_loss": curve[-1]["eval_loss"], "eval_acc": curve[-1]["eval_acc"], "curve": curve,
            "outputs": output_breakdown(m, eval_set), "seconds": round(time.time() - t0, 1)}


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run(cfg: dict, out: Path, command: str, log=print) -> dict:
    data = {"command": command, "config": cfg, "task": {"keys": N_KEYS, "vocab": VOCAB, "chance_acc": 1 / N_KEYS},
            "runs": []}
    if out.exists():
        try:
            old = json.loads(out.read_text())
        except (OSError, ValueError) as e:
            raise ArgumentError(f"--out {out}: cannot read the results file to resume ({e})") from None
        if old.get("config") != cfg:
            raise ArgumentError(f"--out {out} holds runs with other settings ({old.get('config')}); "
                                f"give another --out to start afresh")
        data["runs"] = old.get("runs", [])
    # a grid run of RWKV-4 finished before the results recorded what it outputs is trained again (the
    # same seeds give the same run): those are the runs whose outputs the notebook reads
    data["runs"] = [r for r in data["runs"] if "outputs" in r or r["model"] != "rwkv4" or r["variant"]]
    done = {(r["model"], r["pairs"], r["seed"], r["variant"]) for r in data["runs"]}
    todo = [(model, pairs, seed, {}) for pairs in cfg["pairs"] for seed in cfg["seeds"] for model in MODELS]
    todo += [(x["model"], x["pairs"], seed, x) for x in cfg["extras"] for seed in cfg["seeds"]]
    todo_order = {(m, n, s, variant_name(o)): i for i, (m, n, s, o) in enumerate(todo)}
    for model, pairs, seed, overrides in todo:
        variant = variant_name(overrides)
        if (model, pairs, seed, variant) in done:
            continue
        run_cfg = {**cfg, **{k: v for k, v in overrides.items() if k not in ("model", "pairs")}}
        data["runs"].append(train_one(model, pairs, seed, run_cfg, log, variant))
        data["runs"].sort(key=lambda r: todo_order.get((r["model"], r["pairs"], r["seed"], r["variant"]), 0))
        data["complete"] = False
        _write(out, data)
    data["complete"] = True
    _write(out, data)
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the seconds-long version CI runs")
    ap.add_argument("--out", default=None,
                    help="results JSON (default experiments/associative_recall.json; with --tiny, required)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1: the machine is shared)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        raise ArgumentError(f"--threads must be >= 1, got {args.threads}")
    set_blas_threads(args.threads)
    if args.tiny and args.out is None:
        raise ArgumentError("--tiny needs --out: the default file holds the full experiment's results")
    out = Path(args.out or HERE / "associative_recall.json")
    cfg = dict(TINY if args.tiny else FULL)
    command = "PYTHONPATH=. nice python experiments/associative_recall.py" + (" --tiny" if args.tiny else "")
    if args.out:
        command += f" --out {args.out}"
    run(cfg, out, command)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
