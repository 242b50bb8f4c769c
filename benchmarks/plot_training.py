"""Draw the training curve (loss vs tokens, train and held-out) of a `python -m rwkv_np train` run.

    python benchmarks/plot_training.py [LOG] [--out figures/training_curve.png]

LOG is the run's JSONL log or the shipped model's metadata JSON (rwkv_np/assets/rwkv4-shakespeare.json,
which keeps the curve points); default: the shipped metadata.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = ROOT / "rwkv_np" / "assets" / "rwkv4-shakespeare.json"


def read_curve(path: Path) -> dict:
    """{"train": [(tokens, loss)], "val": [(tokens, loss)], "title": str} from a JSONL log or metadata JSON."""
    text = path.read_text()
    if path.suffix == ".json":
        meta = json.loads(text)
        curve = meta["curve"]
        title = (f"RWKV-4 byte-level, {meta['n_layer']} layers x {meta['n_embd']} channels, "
                 f"{meta['n_params'] / 1e6:.2f}M parameters, tiny shakespeare")
        return {"train": curve["train"], "val": curve["val_first_windows"], "val_full": curve["val_full"],
                "n_windows": curve["eval_windows"], "title": title}
    recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    steps = [r for r in recs if "loss" in r]
    start = next((r for r in recs if r.get("event") == "start"), {})
    args = start.get("args", {})
    title = f"RWKV-4 byte-level, {args.get('n_layer')} layers x {args.get('n_embd')} channels"
    return {"train": smooth_train(steps),
            "val": [(r["tokens"], r["val_loss"]) for r in steps if "val_loss" in r and not r.get("val_full")],
            "val_full": [(r["tokens"], r["val_loss"]) for r in steps if r.get("val_full")],
            "n_windows": args.get("eval_windows"), "title": title}


def smooth_train(steps: list[dict], every: int = 20) -> list[tuple[int, float]]:
    """Mean training loss over each run of `every` steps, at the last step's token count."""
    out = []
    for i in range(0, len(steps) - every + 1, every):
        chunk = steps[i:i + every]
        out.append((chunk[-1]["tokens"], sum(r["loss"] for r in chunk) / len(chunk)))
    return out


def plot(curve: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    tx, ty = zip(*curve["train"])
    ax.plot([t / 1e6 for t in tx], ty, label="train (mean of 20 steps)", lw=1.2)
    vx, vy = zip(*curve["val"])
    ax.plot([t / 1e6 for t in vx], vy, "o-", ms=3, lw=1.2,
            label=f"held-out, first {curve['n_windows']} windows of the split only")
    if curve["val_full"]:
        fx, fy = zip(*curve["val_full"])
        ax.plot([t / 1e6 for t in fx], fy, "s-", ms=4, lw=1.2, color="C3",
                label="held-out, whole last 10% of the bytes")
        vy = vy + fy
    ax.axhline(1.60, color="grey", ls=":", lw=1, label="goal 1.60")
    ax.set_xlabel("training tokens (millions of bytes)")
    ax.set_ylabel("cross-entropy (nats per byte)")
    lo, hi = min(min(ty), min(vy)), max(max(ty), max(vy))
    # the first few hundred steps fall from ln 256 = 5.5; cut the axis at 3 to show the later curve
    ax.set_ylim(lo - 0.05, min(hi, max(3.0, lo + 0.5)) + 0.05)
    ax.set_title(curve["title"], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", nargs="?", default=str(DEFAULT_LOG))
    parser.add_argument("--out", default=str(ROOT / "figures" / "training_curve.png"))
    args = parser.parse_args()
    plot(read_curve(Path(args.log)), Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
