"""Helpers for the notebooks: find the models and the held-out text, measure losses, ablate, time.

Every ablation returns a *new* model built from a copy of the weights; the original is untouched.
Nothing here redefines the network: `trace` calls the reference's functions (rwkv_np/rwkv4/reference.py)
layer by layer and keeps what they return, and a test checks that it reproduces the model's logits.
`time_mixing_parts` and `trace_time_mixing` (any version) repeat only the lines of a reference's
time_mixing that name its intermediates, call its own token_shift, mix/lerp and wkv, advance the
residual stream with its own `block`, and check each layer's scan state against the block's.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import ArgumentError, DownloadError
from .model import RWKV
from .rwkv4 import reference as R
from .rwkv4.eq14 import implied_attention, wkv_naive  # noqa: F401 - part of this API
from .training.wkv_grad import wkv_forward

REPO = Path(__file__).resolve().parents[1]
SHARED_SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
CACHED_SHAKESPEARE = Path.home() / ".cache" / "rwkv_np" / "tinyshakespeare.txt"
HELDOUT_FRACTION = 0.1  # the trainer holds out the last 10% of the file (rwkv_np.training.data.load_bytes)

# u standing in for "-infinity" (no bonus for the current token). Literal -inf makes the first
# token's wkv 0/0 = NaN: with an empty past both sums of eq. 14 are e^{u+k_0} = 0. Any finite u
# gives wkv_0 = v_0 exactly (the only token there is), which is also the limit u -> -inf; and
# e^{-1e4} is exactly 0 in float64, so from t = 1 on the current token's weight is exactly 0.
U_NO_BONUS = -1e4


# ---------------------------------------------------------------------------------- models and data

def default_model_path() -> Path:
    """The checkpoint the notebooks study: $RWKV_NP_NOTEBOOK_MODEL if set, else the shipped model
    (rwkv_np/assets/*.safetensors, as `rwkv-np generate` uses by default)."""
    override = os.environ.get("RWKV_NP_NOTEBOOK_MODEL")
    if override:
        return Path(override)
    from .cli import default_model_path as shipped

    return shipped()


def default_model() -> RWKV:
    """The model of `default_model_path()`, loaded."""
    from . import load_model

    return load_model(default_model_path())


def training_context(path: str | Path | None = None, default: int = 256) -> int:
    """The context length the model was trained with, from the JSON metadata beside the checkpoint
    (a "ctx_len" or "context_length" entry at any depth, as the trainer's arguments carry it);
    `default` when there is none."""
    path = Path(path) if path is not None else default_model_path()

    def find(obj):
        if isinstance(obj, dict):
            for key in ("ctx_len", "context_length"):
                if isinstance(obj.get(key), int):
                    return obj[key]
            for value in obj.values():
                found = find(value)
                if found is not None:
                    return found
        return None

    for meta in (path.with_suffix(".json"), Path(str(path) + ".json")):
        if meta.is_file():
            try:
                found = find(json.loads(meta.read_text()))
            except (OSError, ValueError):
                found = None
            if found is not None:
                return int(found)
    return default


AUTO_PILE_MODELS = 3  # found in the cache without being named: 169m, 430m, 1b5


def pile_model_path() -> str | Path | None:
    """A Pile (vocab 50277) checkpoint available offline, or None.

    $RWKV_NP_MODEL first (a path, or a name like 169m), then the smallest of 169m, 430m, 1b5 found
    in the Hugging Face download cache (`python -m rwkv_np download 169m` puts it there); larger
    cached models are used only when named in $RWKV_NP_MODEL, since a notebook would crawl with them.
    """
    with warnings.catch_warnings():  # huggingface_hub's tqdm warns about ipywidgets inside Jupyter
        warnings.simplefilter("ignore")
        return _pile_model_path()


def _pile_model_path() -> str | Path | None:
    from .download import is_model_name, model_names, resolve_model

    env = os.environ.get("RWKV_NP_MODEL")
    if env:
        if os.path.exists(env):
            return Path(env)
        if is_model_name(env):
            try:
                return resolve_model(env)
            except DownloadError:
                return None
        return None
    for name in model_names()[:AUTO_PILE_MODELS]:
        try:
            return resolve_model(name)
        except DownloadError:
            continue
    return None


PILE_HOWTO = ("No Pile model found (neither $RWKV_NP_MODEL nor the Hugging Face download cache). To add one: "
              "`python -m rwkv_np download 169m` (about 340 MB), then re-run this notebook.")


def pile_model() -> RWKV | None:
    """The model of `pile_model_path()` loaded, or None (print PILE_HOWTO then)."""
    path = pile_model_path()
    if path is None:
        return None
    from . import load_model

    return load_model(path)


def heldout_path() -> Path | None:
    """Tiny shakespeare: ../shared/data (CI) or the trainer's download cache; None if neither."""
    for path in (SHARED_SHAKESPEARE, CACHED_SHAKESPEARE):
        if path.is_file():
            return path
    return None


def heldout_tokens(n_bytes: int = 8192, path: str | Path | None = None) -> np.ndarray | None:
    """The first n_bytes of the held-out part (last 10%) of tiny shakespeare, as byte ids (n,).

    None when the file is nowhere to be found (see `heldout_path`).
    """
    path = Path(path) if path is not None else heldout_path()
    if path is None or not path.is_file():
        return None
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    start = int((1 - HELDOUT_FRACTION) * len(data))
    return data[start:start + n_bytes].astype(np.int64)


HELDOUT_MISSING = (f"Held-out text not found: put tiny shakespeare at {CACHED_SHAKESPEARE} (it is downloaded there "
                   f"by `python -m rwkv_np train`) or at {SHARED_SHAKESPEARE}; skipping the loss measurements.")



def training_tokens(path: str | Path | None = None) -> np.ndarray | None:
    """The training part (first 90%) of tiny shakespeare, as byte ids; None when the file is absent."""
    path = Path(path) if path is not None else heldout_path()
    if path is None or not path.is_file():
        return None
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    return data[:int((1 - HELDOUT_FRACTION) * len(data))].astype(np.int64)


def unigram_loss(tokens: Sequence[int] | np.ndarray, train: Sequence[int] | np.ndarray, vocab: int = 256) -> float:
    """Cross-entropy (nats per token) of `tokens` under a unigram model: each token's frequency in `train`,
    add-one smoothed so that a token unseen in training costs ln(len(train) + vocab), not infinity.
    The floor a language model must beat: it knows how often each byte occurs and nothing of context."""
    tokens, train = np.asarray(tokens, np.int64), np.asarray(train, np.int64)
    if tokens.ndim != 1 or len(tokens) == 0 or train.ndim != 1 or len(train) == 0:
        raise ArgumentError(f"unigram_loss: tokens and train must be non-empty 1-D id sequences, got shapes "
                            f"{tokens.shape} and {train.shape}")
    if min(tokens.min(), train.min()) < 0 or max(tokens.max(), train.max()) >= vocab:
        raise ArgumentError(f"unigram_loss: ids must lie in [0, {vocab})")
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    return float(-np.log(counts[tokens] / counts.sum()).mean())


# ---------------------------------------------------------------------------------- loss

def token_losses(model: RWKV, tokens: Sequence[int] | np.ndarray, ctx: int = 256) -> np.ndarray:
    """Cross-entropy in nats of each next-token prediction, windows of ctx tokens from the initial state.

    tokens (N,) is cut into windows of ctx + 1 tokens sharing their border token; each window is read
    from a fresh state, as in training, and its last ctx tokens are predicted. Returns (n_predicted,).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if ctx < 1:
        raise ArgumentError(f"ctx must be >= 1, got {ctx}")
    if tokens.ndim != 1 or len(tokens) < 2:
        raise ArgumentError(f"tokens: need a 1-D sequence of at least 2 ids, got shape {tokens.shape}")
    out = []
    for start in range(0, len(tokens) - 1, ctx):
        window = tokens[start:start + ctx + 1]
        logits, _ = model.forward(window[:-1], return_all=True)
        z = logits.astype(np.float64)
        z -= z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        out.append(-logp[np.arange(len(window) - 1), window[1:]])
    return np.concatenate(out)


def heldout_loss(model: RWKV, tokens: Sequence[int] | np.ndarray, ctx: int = 256) -> float:
    """Mean next-token cross-entropy in nats (windows of ctx, see `token_losses`)."""
    return float(token_losses(model, tokens, ctx).mean())


def carried_loss(model: RWKV, tokens: Sequence[int] | np.ndarray, chunk: int = 4096) -> float:
    """Mean next-token cross-entropy in nats over tokens read as one sequence from the initial state, the
    state carried from chunk to chunk (`token_losses` with a single window, in bounded memory)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or len(tokens) < 2:
        raise ArgumentError(f"tokens: need a 1-D sequence of at least 2 ids, got shape {tokens.shape}")
    if chunk < 1:
        raise ArgumentError(f"chunk must be >= 1, got {chunk}")
    state, total = None, 0.0
    for start in range(0, len(tokens) - 1, chunk):
        x, y = tokens[start:start + chunk], tokens[start + 1:start + chunk + 1]
        logits, state = model.forward(x, state, return_all=True)
        z = logits[:len(y)].astype(np.float64)
        z -= z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= logp[np.arange(len(y)), y].sum()
    return float(total / (len(tokens) - 1))


def bits(nats: float) -> float:
    """Nats -> bits (for a byte-level model: bits per byte)."""
    return nats / np.log(2.0)


# ---------------------------------------------------------------------------------- ablations

def _copy_weights(model: RWKV) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in model.weights.items()}


def _layers(model: RWKV, layers: int | Iterable[int] | None) -> list[int]:
    n = model.config.n_layer
    if layers is None:
        return list(range(n))
    out = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    for i in out:
        if not 0 <= i < n:
            raise ArgumentError(f"layers: {i} is not a layer of this model (0..{n - 1})")
    return [int(i) for i in out]


def with_time_first(model: RWKV, value: float | np.ndarray, layers: int | Iterable[int] | None = None) -> RWKV:
    """A copy of model with u (att.time_first) set to `value` in `layers` (None: all).

    Use U_NO_BONUS for "u = -infinity" (see its comment: literal -inf gives NaN at t = 0).
    """
    w = _copy_weights(model)
    for i in _layers(model, layers):
        key = f"blocks.{i}.att.time_first"
        w[key] = np.broadcast_to(np.asarray(value, np.float32), w[key].shape).copy()
    return RWKV(w, model.config)


def without_token_shift(model: RWKV, layers: int | Iterable[int] | None = None,
                        parts: Sequence[str] = ("att", "ffn")) -> RWKV:
    """A copy of model with every mu = 1 (no token shift) in the given layers and sub-blocks.

    mu * x_t + (1 - mu) * x_{t-1} with mu = 1 is x_t: each projection sees only the current token.
    parts: "att" (eqs. 11-13) and/or "ffn" (eqs. 16-17).
    """
    bad = [p for p in parts if p not in ("att", "ffn")]
    if bad:
        raise ArgumentError(f"parts: expected 'att' and/or 'ffn', got {bad[0]!r}")
    w = _copy_weights(model)
    for i in _layers(model, layers):
        for part in parts:
            for key in w:
                if key.startswith(f"blocks.{i}.{part}.time_mix_"):
                    w[key] = np.ones_like(w[key])
    return RWKV(w, model.config)


def without_sublayer(model: RWKV, layer: int, part: str) -> RWKV:
    """A copy of model whose time mixing ("att") or channel mixing ("ffn") of `layer` adds nothing
    to the residual stream: its last matrix (att.output / ffn.value) is zeroed."""
    if part not in ("att", "ffn"):
        raise ArgumentError(f"part: expected 'att' or 'ffn', got {part!r}")
    (i,) = _layers(model, layer)
    w = _copy_weights(model)
    key = f"blocks.{i}.att.output.weight" if part == "att" else f"blocks.{i}.ffn.value.weight"
    w[key] = np.zeros_like(w[key])
    return RWKV(w, model.config)


# ---------------------------------------------------------------------------------- looking inside

def trace(model: RWKV, tokens: Sequence[int] | np.ndarray) -> list[dict[str, np.ndarray]]:
    """Every intermediate of a parallel pass of an RWKV-4 model from the initial state, per layer,
    from the reference's own functions called layer by layer (rwkv_np/rwkv4/reference.py).

    Keys (arrays (T, C) unless noted): x_att (LayerNorm before time mixing), r, k, v (eqs. 11-13),
    w (the decay rate e^time_decay, (C,)), wkv (eq. 14), att_out (eq. 15), x_ffn (LayerNorm before
    channel mixing), ffn_r, ffn_k (eqs. 16-17, before the activation), ffn_hidden (relu(ffn_k)^2,
    (T, F)), ffn_out (eq. 18).
    """
    if model.config.version != "4":
        raise ArgumentError(f"trace: follows RWKV-4's reference; this is an RWKV-{model.config.version} model")
    tokens = model.check_tokens(tokens)
    params, eps = model.params, model.config.layer_norm_eps
    state = R.initial_state(model.config.n_layer, model.config.n_embd)
    x = R.layer_norm(params["emb"][tokens], **params["ln0"], eps=eps)
    out = []
    for p, s in zip(params["blocks"], state):
        att, ffn = p["att"], p["ffn"]
        d = {"x_att": R.layer_norm(x, **p["ln1"], eps=eps)}
        # eqs. 11-14 as time_mixing computes them, kept; then the sublayer itself
        parts = time_mixing_parts(R, d["x_att"], (s[R.ATT_X], s[R.AA], s[R.BB], s[R.PP]), att)
        d.update((key, parts[key]) for key in ("r", "k", "v", "w", "wkv"))
        d["att_out"], _ = R.time_mixing(d["x_att"], s[R.ATT_X], s[R.AA], s[R.BB], s[R.PP], **att)
        x = x + d["att_out"]
        d["x_ffn"] = R.layer_norm(x, **p["ln2"], eps=eps)
        xx = R.token_shift(d["x_ffn"], s[R.FFN_X])
        d["ffn_r"] = R.mix(d["x_ffn"], xx, ffn["time_mix_r"]) @ ffn["receptance"].T
        d["ffn_k"] = R.mix(d["x_ffn"], xx, ffn["time_mix_k"]) @ ffn["key"].T
        d["ffn_hidden"] = np.maximum(d["ffn_k"], 0) ** 2
        d["ffn_out"], _ = R.channel_mixing(d["x_ffn"], s[R.FFN_X], **ffn)
        x = x + d["ffn_out"]
        out.append(d)
    return out


def eq14_empty_state(n_embd: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The state (aa, bb, pp) of eq. 14 before any token, (C,) each in `dtype`: a = b = 0, and pp the
    reference's PP_EMPTY. For the reference's eq. 14 from an empty past:
    `rwkv_np.rwkv4.reference.wkv(w, u, k, v, *eq14_empty_state(C))` -> (wkv (T, C), (aa, bb, pp))."""
    return np.zeros(n_embd, dtype), np.zeros(n_embd, dtype), np.full(n_embd, R.PP_EMPTY, dtype)


def _version_of(reference) -> str:
    """"4", "5", "6" or "7": which of rwkv_np's references the module `reference` is."""
    folder = getattr(reference, "__name__", "").rpartition(".reference")[0].rpartition(".")[2]
    if folder not in ("rwkv4", "rwkv5", "rwkv6", "rwkv7"):
        raise ArgumentError(f"expected one of rwkv_np's reference modules (rwkv_np.rwkv4.reference ... "
                            f"rwkv_np.rwkv7.reference), got {getattr(reference, '__name__', reference)!r}")
    return folder[4:]


def time_mixing_parts(reference, x: np.ndarray, state: tuple, att: dict,
                      v_first: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What `reference.time_mixing` computes on its way to its output, for one layer: the token shift,
    the projections and the inputs and output of its scan `reference.wkv`, from the reference's own
    functions (token_shift, mix or lerp, sigmoid, wkv) and its lines for the projections, decays and keys.

    reference: the reference module (rwkv_np.rwkv4.reference ... rwkv7.reference: `model.reference`, or
    the first item of `rwkv_np.loading.load_reference`); x (T, C): the LayerNorm output time mixing
    takes; state: the layer's state as time_mixing takes it after x, (x_prev, aa, bb, pp) for RWKV-4,
    (x_prev, S) later; att: the layer's "att" params; v_first: RWKV-7's first-layer values (None in
    the first layer).

    Keys, as the reference names them: x_shift (T, C); r, k, v; w; the scan's output, "wkv" (T, C) for
    RWKV-4 (eq. 14), "y" (T, H, N) later; "state": the state after the last token, as time_mixing
    returns it. RWKV-4: r, k, v (T, C), w = e^time_decay and u (C,). RWKV-5: r, k, v (T, H, N), w and
    u (H, 1 or N, 1). RWKV-6: w (T, H, N) this token's decay, u (H, N, 1). RWKV-7: k is k~ (the
    replacement key), w, a (the in-context rate) and kappa_hat (the removal key) (T, H, N), and
    "v_first" for the next layers.
    """
    version = _version_of(reference)
    ref = reference
    T = len(x)
    x_prev, *scan_state = state
    xx = ref.token_shift(x, x_prev)  # (T, C)
    out = {"x_shift": xx}
    if version == "4":
        aa, bb, pp = scan_state
        for name, mu, W in (("r", "time_mix_r", "receptance"), ("k", "time_mix_k", "key"), ("v", "time_mix_v", "value")):
            out[name] = ref.mix(x, xx, att[mu]) @ att[W].T  # eqs. 11-13
        w, u = np.exp(att["time_decay"]), att["time_first"]
        out["wkv"], (aa, bb, pp) = ref.wkv(w, u, out["k"], out["v"], aa, bb, pp)  # eq. 14
        out.update(w=w, u=u, state=(x[-1], aa, bb, pp))
        return out
    (S,) = scan_state
    if version == "5":
        H = S.shape[0]
        N = att["key"].shape[0] // H
        r, k, v = ((ref.mix(x, xx, att[mu]) @ att[W].T).reshape(T, H, N)
                   for mu, W in (("time_mix_r", "receptance"), ("time_mix_k", "key"), ("time_mix_v", "value")))
        w = np.exp(-np.exp(att["time_decay"])).reshape(H, -1, 1)  # (H, 1 or N, 1)
        u = (np.exp(att["time_first"]) if att.get("time_faaaa") is None else att["time_faaaa"]).reshape(H, -1, 1)
        y, S = ref.wkv(r, k, v, w, u, S)
    elif version == "6":
        H, N = att["time_faaaa"].shape
        lora_in = np.tanh(ref.lerp(x, xx, att["time_maa_x"]) @ att["time_maa_w1"])  # (T, 5 D)
        m = np.einsum("tcd,cde->cte", lora_in.reshape(T, 5, -1), att["time_maa_w2"])  # (5, T, C)
        lambdas = (att[f"time_maa_{c}"] for c in "wkvrg")
        xw, xk, xv, xr, xg = (ref.lerp(x, xx, lam + mc) for lam, mc in zip(lambdas, m))
        r, k, v = ((z @ att[W].T).reshape(T, H, N) for z, W in ((xr, "receptance"), (xk, "key"), (xv, "value")))
        d = att["time_decay"] + np.tanh(xw @ att["time_decay_w1"]) @ att["time_decay_w2"]  # (T, A)
        w4 = np.exp(-np.exp(d)).reshape(T, H, N, 1)
        u = att["time_faaaa"][:, :, None]  # (H, N, 1)
        y, S = ref.wkv(r, k, v, w4, u, S)
        w = w4[..., 0]  # (T, H, N)
    else:
        H, N = att["r_k"].shape
        xr, xw, xk, xv, xa = (ref.lerp(x, xx, att[mu]) for mu in ("x_r", "x_w", "x_k", "x_v", "x_a"))
        r, k, v = xr @ att["receptance"].T, xk @ att["key"].T, xv @ att["value"].T  # (T, A)
        w = np.exp(-np.exp(np.float32(-0.5)) * ref.sigmoid(att["w0"] + np.tanh(xw @ att["w1"]) @ att["w2"]))
        a = ref.sigmoid(att["a0"] + (xa @ att["a1"]) @ att["a2"])  # (T, A)
        kappa = (k * att["k_k"]).reshape(T, H, N)
        kappa_hat = kappa / np.maximum(np.linalg.norm(kappa, axis=-1, keepdims=True), 1e-12)  # (T, H, N)
        k = k * (1 + (a - 1) * att["k_a"])  # k~
        if v_first is None:
            v_first = v
        else:
            v = ref.lerp(v, v_first, ref.sigmoid(att["v0"] + (xv @ att["v1"]) @ att["v2"]))
        r, w, k, v, a = (z.reshape(T, H, N) for z in (r, w, k, v, a))
        y, S = ref.wkv(r, w, k, v, kappa_hat, a, S)
        out.update(a=a, kappa_hat=kappa_hat, v_first=v_first)
    out.update(r=r, k=k, v=v, w=w, y=y, state=(x[-1], S))
    if version != "7":
        out["u"] = u
    return out


def trace_time_mixing(reference, params: dict, tokens: Sequence[int] | np.ndarray, state=None,
                      **options) -> list[dict[str, np.ndarray]]:
    """`time_mixing_parts` of every layer, for a parallel pass of `tokens` from `state` (None: the
    initial state): the embedding and ln0, then per layer ln1 and the parts of its time mixing, the
    residual stream advanced by the reference's own `block`. Any version, for the reference module
    and nested params of `rwkv_np.loading.load_reference` (or a model's `reference` and `params`);
    options: the reference's epsilons (`eps`, `ln_x_eps`), as forward takes them.

    Returns a list, one dict per layer (keys: see `time_mixing_parts`). Each layer's scan state after
    the last token is checked to equal the one `block` computed, bit for bit: the parts are what the
    reference's time mixing computed."""
    version = _version_of(reference)
    ref = reference
    eps = options.get("eps", 1e-5)
    blocks = params["blocks"]
    tokens = np.asarray(tokens)
    if state is None:
        att, C = blocks[0]["att"], params["emb"].shape[1]
        if version == "4":
            state = ref.initial_state(len(blocks), C)
        else:  # heads and head size, read off the params as the reference's forward reads them
            if version == "5":
                H = att["time_decay"].shape[0]
                N = att["key"].shape[0] // H
            else:
                H, N = (att["time_faaaa"] if version == "6" else att["r_k"]).shape
            state = ref.initial_state(len(blocks), C, H, N)
    x = ref.layer_norm(params["emb"][tokens], **params["ln0"], eps=eps)  # (T, C)
    out, v_first = [], None
    for i, p in enumerate(blocks):
        x_att = ref.layer_norm(x, **p["ln1"], eps=eps)
        if version == "4":
            s = state[i]
            parts = time_mixing_parts(ref, x_att, (s[ref.ATT_X], s[ref.AA], s[ref.BB], s[ref.PP]), p["att"])
            x, new = ref.block(x, s, **p, eps=eps)
            same = all(np.array_equal(a, new[row]) for a, row in zip(parts["state"][1:], (ref.AA, ref.BB, ref.PP)))
        else:
            shift, S = state[0][i], state[1][i]
            parts = time_mixing_parts(ref, x_att, (shift[ref.ATT_X], S), p["att"], v_first)
            if version == "7":
                x, _, new_S, v_first = ref.block(x, shift, S, v_first, **p, **options)
            else:
                x, _, new_S = ref.block(x, shift, S, **p, **options)
            same = np.array_equal(parts["state"][1], new_S)
        if not same:
            raise AssertionError(f"trace_time_mixing: layer {i}'s scan state differs from the reference's "
                                 f"({ref.__name__}): time_mixing_parts no longer follows its time_mixing")
        out.append(parts)
    return out


def eq14_compiled(w: np.ndarray, u: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Eq. 14 alone, from the empty state, by the compiled wkv_step (rwkv4/kernels.py: the engine's and the
    trainer's arithmetic, float64 inside): w, u (C,), k, v (T, C) -> wkv (T, C) in the dtype of k."""
    return wkv_forward(w, u, k[:, None], v[:, None])[0][:, 0]  # the trainer's kernels take (T, B, C)


def eq14_weights(w: np.ndarray, u: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Every channel's implied attention at once: (T, T, C) float64, [t, i, c] the weight eq. 14 gives
    token i in output t of channel c (`implied_attention` for all channels; rows sum to 1). O(T^2 C) memory."""
    k = np.asarray(k, np.float64)
    w, u = np.asarray(w, np.float64), np.asarray(u, np.float64)
    T = len(k)
    t, i = np.arange(T)[:, None], np.arange(T)[None, :]
    x = -(t - 1 - i)[..., None] * w + k[None]  # (T, T, C): past exponents (used where i < t)
    x = np.where((i == t)[..., None], (u + k)[:, None, :], x)  # the current token: u + k_t
    x = np.where((i > t)[..., None], -np.inf, x)  # the future is masked
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def current_token_share(u: float | np.ndarray, w: float | np.ndarray, n_past: int | np.ndarray) -> np.ndarray:
    """Share of eq. 14's weight the current token gets when all keys are equal:
    e^u / (e^u + sum_{j<n_past} e^{-j w}); broadcasts over its arguments."""
    u, w, n = (np.asarray(a, np.float64) for a in (u, w, n_past))
    past = np.where(w > 0, -np.expm1(-n * w) / -np.expm1(-np.where(w > 0, w, 1.0)), n)
    return np.exp(u) / (np.exp(u) + past)


def current_token_weights(model: RWKV, tokens: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """Per layer, the weight eq. 14 gives the current token on real text: (T, C) arrays of
    e^{u + k_t} / (e^{u + k_t} + sum_{i<t} e^{-(t-1-i) w + k_i}), i.e. the diagonal of
    `implied_attention` for every channel. Computed in float64 with log-sum-exp."""
    out = []
    for i, d in enumerate(trace(model, tokens)):
        w = d["w"].astype(np.float64)
        u = np.asarray(model.params["blocks"][i]["att"]["time_first"], np.float64)
        k = d["k"].astype(np.float64)
        log_past = np.full(k.shape[1], -np.inf)  # log of the decayed past sum b_{t-1}
        share = np.empty_like(k)
        for t in range(len(k)):
            now = u + k[t]
            share[t] = np.exp(now - np.logaddexp(now, log_past))
            log_past = np.logaddexp(log_past - w, k[t])
        out.append(share)
    return out


def half_life(decay: np.ndarray) -> np.ndarray:
    """Tokens after which a channel's weight has halved: ln 2 / w (w = e^time_decay > 0)."""
    return np.log(2.0) / np.asarray(decay, np.float64)


def decays(model: RWKV) -> np.ndarray:
    """The decay rate w = e^time_decay of every layer, (n_layer, C) float64."""
    return np.exp(layer_param(model, "att.time_decay"))


def layer_param(model: RWKV, name: str) -> np.ndarray:
    """A per-layer vector of every layer, (n_layer, C): name like "att.time_first", "ffn.time_mix_k"."""
    return np.stack([np.asarray(model.weights[f"blocks.{i}.{name}"], np.float64)
                     for i in range(model.config.n_layer)])



# ---------------------------------------------------------------------------------- how the past reaches a sublayer

SUBLAYERS = ("att", "ffn")  # time mixing, channel mixing: the order of the last axis below


def sublayer_inputs(model: RWKV, tokens: Sequence[int] | np.ndarray, ctx: int = 256
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What each sublayer reads at position t, over windows of ctx tokens each from the initial state
    (as in training): x_t, the LayerNorm output of the residual stream before it (`trace`'s x_att,
    x_ffn), at every position but the first of each window (which has no previous token).

    Returns (features (L, 2, N, C): [layer, sublayer (att, ffn)], previous tokens (N,), current tokens
    (N,)). x_t is the sublayer's input *before* its token shift mixes in x_{t-1}: what it knows of
    token t-1 without its own shift."""
    tokens = np.asarray(tokens, np.int64)
    feats, prev, cur = [], [], []
    for start in range(0, len(tokens) - 1, ctx):
        window = tokens[start:start + ctx]
        if len(window) < 2:
            break
        tr = trace(model, window)
        feats.append(np.stack([np.stack([d["x_att"][1:], d["x_ffn"][1:]]) for d in tr]))
        prev.append(window[:-1])
        cur.append(window[1:])
    return np.concatenate(feats, axis=2), np.concatenate(prev), np.concatenate(cur)


def linear_probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                          ridge: float = 1e-3) -> float:
    """Top-1 accuracy on (x_test, y_test) of a linear classifier fitted to (x_train, y_train): ridge
    regression of the one-hot labels on the standardised features plus a bias (`ridge` times the mean
    eigenvalue of X^T X), the prediction the label of the largest output. Labels unseen in training
    cannot be predicted. A lower bound on what a linear read-out of x can tell about y."""
    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    X = np.hstack([(x_train - mean) / std, np.ones((len(x_train), 1))])
    Xt = np.hstack([(x_test - mean) / std, np.ones((len(x_test), 1))])
    classes, y_idx = np.unique(y_train, return_inverse=True)
    Y = np.zeros((len(y_train), len(classes)))
    Y[np.arange(len(y_train)), y_idx] = 1.0
    G = X.T @ X
    W = np.linalg.solve(G + ridge * np.trace(G) / len(G) * np.eye(len(G)), X.T @ Y)
    return float(np.mean(classes[np.argmax(Xt @ W, axis=1)] == np.asarray(y_test)))


def bigram_guess_accuracy(prev_train: np.ndarray, cur_train: np.ndarray, prev_test: np.ndarray,
                          cur_test: np.ndarray) -> float:
    """Accuracy of the best guess of token t-1 from token t alone: for each current token, the previous
    token seen most often before it in training (a current token never seen: the most frequent previous
    token overall). The ceiling of any read-out of a function of token t alone, e.g. layer 0's x_t."""
    prev_train, cur_train = np.asarray(prev_train, np.int64), np.asarray(cur_train, np.int64)
    V = int(max(prev_train.max(), cur_train.max(), np.max(prev_test), np.max(cur_test))) + 1
    counts = np.zeros((V, V), np.int64)
    np.add.at(counts, (cur_train, prev_train), 1)
    overall = int(np.bincount(prev_train, minlength=V).argmax())
    guess = np.where(counts.sum(1) > 0, counts.argmax(1), overall)
    return float(np.mean(guess[np.asarray(cur_test)] == np.asarray(prev_test)))


def previous_token_probes(model: RWKV, train_tokens: Sequence[int] | np.ndarray,
                          test_tokens: Sequence[int] | np.ndarray, ctx: int = 256) -> dict:
    """How well token t-1 can be read, linearly, from what each sublayer reads at t before its own token
    shift (`sublayer_inputs`; probes fitted on train_tokens, scored on test_tokens).

    Returns {"accuracy": (L, 2) [layer, (att, ffn)], "current": (L, 2) the same probe for token t
    itself, "bigram": `bigram_guess_accuracy` (the best any function of token t alone can do),
    "n_train", "n_test": positions}."""
    f_tr, p_tr, c_tr = sublayer_inputs(model, train_tokens, ctx)
    f_te, p_te, c_te = sublayer_inputs(model, test_tokens, ctx)
    L = f_tr.shape[0]
    acc, cur = np.zeros((L, 2)), np.zeros((L, 2))
    for i in range(L):
        for j in range(2):
            acc[i, j] = linear_probe_accuracy(f_tr[i, j], p_tr, f_te[i, j], p_te)
            cur[i, j] = linear_probe_accuracy(f_tr[i, j], c_tr, f_te[i, j], c_te)
    return {"accuracy": acc, "current": cur, "bigram": bigram_guess_accuracy(p_tr, c_tr, p_te, c_te),
            "n_train": len(p_tr), "n_test": len(p_te)}


def previous_token_paths(model: RWKV, tokens: Sequence[int] | np.ndarray, n_samples: int = 200, window: int = 32,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Through which of its inputs does token t-1 reach each sublayer's output at t? A path patching
    experiment on the reference's own time_mixing and channel_mixing.

    For each of n_samples windows of `tokens` (window tokens, read from the initial state; t the last
    position), token t-1 is replaced by another token drawn from the window's text, and the model run
    again. Each sublayer at t reads three things that the change can reach: x_{t-1} through its own
    token shift ("shift"); x_t, the residual stream at t, into which earlier sublayers have written
    ("stream"); and, in time mixing only, the state of eq. 14 before t, which holds k_{t-1}, v_{t-1}
    ("state"). The sublayer's output at t is recomputed with one of them taken from the changed run
    and the others from the original, and with all three ("total").

    Returns {"total", "shift", "stream", "state": (L, 2) root-mean-square over samples of the change
    of the sublayer's output (a C-vector, its norm), [layer, (att, ffn)]; "state" is NaN for channel
    mixing, which has none; "output": (L, 2) the RMS norm of the sublayer's output itself, for scale}.
    The paths need not add up to "total": the sublayers are not linear."""
    if model.config.version != "4":
        raise ArgumentError(f"previous_token_paths: follows RWKV-4's reference; this is an RWKV-{model.config.version} model")
    tokens = np.asarray(tokens, np.int64)
    if window < 3 or len(tokens) < window:
        raise ArgumentError(f"previous_token_paths: need window >= 3 and at least window tokens, got window {window} "
                            f"and {len(tokens)} tokens")
    rng = np.random.default_rng(seed)
    L, C = model.config.n_layer, model.config.n_embd
    sums = {k: np.zeros((L, 2)) for k in ("total", "shift", "stream", "state", "output")}
    empty = (np.zeros(C, np.float32), *eq14_empty_state(C, np.float32))
    for _ in range(n_samples):
        start = int(rng.integers(0, len(tokens) - window + 1))
        clean = tokens[start:start + window].copy()
        others = np.setdiff1d(clean, clean[-2:-1])
        changed = clean.copy()
        changed[-2] = rng.choice(others) if len(others) else (clean[-2] + 1) % model.config.vocab_size
        a, b = trace(model, clean), trace(model, changed)
        for i, (da, db) in enumerate(zip(a, b)):
            att, ffn = model.params["blocks"][i]["att"], model.params["blocks"][i]["ffn"]
            # time mixing at t: (x_t, x_{t-1}, eq. 14's state before t)
            x = {"a": da["x_att"], "b": db["x_att"]}
            st = {r: R.time_mixing(x[r][:-1], *empty, **att)[1][1:] for r in "ab"}  # (aa, bb, pp) before t

            def tm(xt, xp, s):
                return R.time_mixing(x[xt][-1:], x[xp][-2], *st[s], **att)[0][0]

            base = tm("a", "a", "a")
            for key, args in (("total", "bbb"), ("shift", "aba"), ("stream", "baa"), ("state", "aab")):
                sums[key][i, 0] += np.sum((tm(*args) - base) ** 2)
            sums["output"][i, 0] += np.sum(base ** 2)
            # channel mixing at t: (x_t, x_{t-1})
            y = {"a": da["x_ffn"], "b": db["x_ffn"]}

            def cm(xt, xp):
                return R.channel_mixing(y[xt][-1:], y[xp][-2], **ffn)[0][0]

            base = cm("a", "a")
            for key, args in (("total", "bb"), ("shift", "ab"), ("stream", "ba")):
                sums[key][i, 1] += np.sum((cm(*args) - base) ** 2)
            sums["output"][i, 1] += np.sum(base ** 2)
    out = {k: np.sqrt(v / n_samples) for k, v in sums.items()}
    out["state"][:, 1] = np.nan
    return out


# ---------------------------------------------------------------------------------- initial values

def _init_params_fn():
    """The trainer's initialisation (the rules named by the table's Param.init, rwkv_np/rwkv4/params.py). The one place
    the notebooks import it from, so that moving the trainer is a one-line change here."""
    from .training.init import init_params

    return init_params


def initial_params(model: RWKV, seed: int = 0) -> dict[str, np.ndarray]:
    """The weights the trainer would start `model`'s shape from (flat BlinkDL names, float32).

    w, u and the mu are deterministic schedules over (layer, channel); only the matrices depend on seed."""
    cfg = model.config
    return _init_params_fn()(cfg.n_layer, cfg.n_embd, seed, vocab=cfg.vocab_size)


def initial_layer_param(model: RWKV, name: str) -> np.ndarray:
    """Like `layer_param` for the trainer's initial values: (n_layer, C) float64."""
    p = initial_params(model)
    return np.stack([np.asarray(p[f"blocks.{i}.{name}"], np.float64).reshape(-1)
                     for i in range(model.config.n_layer)])


def init_correlation(model: RWKV, name: str) -> np.ndarray:
    """Per layer, the Pearson correlation over channels of the trained with the initial values of a
    per-layer vector (e.g. "att.time_decay"): (n_layer,). NaN where either side is constant."""
    trained, initial = layer_param(model, name), initial_layer_param(model, name)
    out = np.full(len(trained), np.nan)
    for i, (a, b) in enumerate(zip(trained, initial)):
        if a.std() > 0 and b.std() > 0:
            out[i] = np.corrcoef(a, b)[0, 1]
    return out


def decay_schedule(n_layer: int, n_embd: int) -> np.ndarray:
    """The initial raw decay (ln w) as a formula: -5 + 8 (h / (C-1))^(0.7 + 1.3 l / (L-1)), (L, C).
    Written out here so the notebooks can show it; a test checks it equals the trainer's values."""
    h = np.arange(n_embd) / max(n_embd - 1, 1)
    depth = np.arange(n_layer)[:, None] / max(n_layer - 1, 1)
    return -5 + 8 * h[None] ** (0.7 + 1.3 * depth)


# ---------------------------------------------------------------------------------- figures

# One colour per kind of thing, the same in every notebook.
PALETTE = {
    "trained": "tab:blue",      # values or losses of the shipped (trained) model
    "initial": "tab:gray",      # the trainer's initial values
    "ablated": "tab:red",       # a trained model with a part zeroed or replaced
    "unigram": "black",         # the unigram baseline
    "current": "tab:orange",    # the current token (u, its weight)
    "past": "tab:purple",       # the past (a, b, decayed sums)
    "rwkv": "tab:blue",         # RWKV's recurrence, in cost plots
    "attention": "tab:red",     # softmax attention, in cost plots
    "peer": "tab:brown",        # another implementation (rwkv.cpp), in speed plots
    "naive": "tab:green",       # eq. 14 as written
    "time mixing": "tab:cyan",
    "channel mixing": "tab:olive",
}


def layer_colors(n_layer: int) -> np.ndarray:
    """One viridis colour per layer (dark = first, yellow-green = last), the same in every notebook."""
    import matplotlib

    return matplotlib.colormaps["viridis"](np.linspace(0, 0.85, n_layer))


# ---------------------------------------------------------------------------------- cost and size

def token_mixing_params(T: int, C: int) -> dict[str, int]:
    """Parameters of one token-mixing layer of width C with context T.

    attention: W_q, W_k, W_v, W_o (4 C^2), no positional parameter of its own;
    AFT-full: W_q, W_k, W_v, W_o plus the learned pairwise bias w (T x T);
    RWKV-4: W_r, W_k, W_v, W_o plus the decay w and bonus u (C each) and three mu (C each).
    """
    proj = 4 * C * C
    return {"attention": proj, "AFT-full": proj + T * T, "RWKV-4": proj + 2 * C + 3 * C}


def rwkv_state_bytes(n_layer: int, n_embd: int, itemsize: int = 4) -> int:
    """Bytes of RWKV-4's state: 5 vectors of C per layer, whatever the context length."""
    return 5 * n_layer * n_embd * itemsize


def kv_cache_bytes(n_layer: int, n_embd: int, T: int, itemsize: int = 4) -> int:
    """Bytes of a transformer's key/value cache of the same width and depth after T tokens."""
    return 2 * n_layer * T * n_embd * itemsize


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of `repeat` calls of fn, in seconds (the least disturbed by other processes)."""
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return float(best)


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where the resource module is missing)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def wkv_timings(lengths: Sequence[int], C: int = 64, repeat: int = 5, naive_repeat: int = 2,
                naive_max: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seconds to compute eq. 14 over T tokens and C channels, per T in lengths (best of repeats).

    Keys: "T"; "naive" (wkv_naive, O(T^2); NaN above naive_max); "recurrent" (the compiled scan of
    kernels.wkv_step as the trainer calls it, training/wkv_grad.wkv_forward: every call allocates its
    output and its saves for the backward, 20 bytes per token and channel); "inplace" (the same scan
    as the engine calls it, kernels.wkv_gate, into an output allocated once beforehand); "fresh" (that
    call with its output, 4 bytes per token and channel, allocated anew each time); "faults",
    "faults_inplace", "faults_fresh": the minor page faults of one call of each (the operating system
    mapping memory into the process at its first touch).
    """
    from .rwkv4.kernels import wkv_gate

    rng = np.random.default_rng(seed)
    w = rng.uniform(0.01, 3.0, C).astype(np.float32)
    u = rng.normal(0, 1, C).astype(np.float32)
    wkv_forward(w, u, np.zeros((2, 1, C), np.float32), np.zeros((2, 1, C), np.float32))  # compile first
    out = {key: [] for key in ("naive", "recurrent", "inplace", "fresh", "faults", "faults_inplace", "faults_fresh")}
    for T in lengths:
        k = rng.normal(0, 1, (T, C)).astype(np.float32)
        v = rng.normal(0, 1, (T, C)).astype(np.float32)
        r, y = np.full((T, C), np.inf, np.float32), np.empty((T, C), np.float32)  # sigmoid(inf) = 1

        def fresh():
            return wkv_forward(w, u, k[:, None], v[:, None])

        def inplace(into=None):
            aa, bb, pp = (np.asarray(a, np.float32) for a in eq14_empty_state(C))
            wkv_gate(w, u, k, v, r, aa, bb, pp, y if into is None else into)

        def new_output():
            inplace(np.empty((T, C), np.float32))

        for key, fn in (("recurrent", fresh), ("inplace", inplace), ("fresh", new_output)):
            out[key].append(best_time(fn, repeat))
            before = _minor_faults()
            fn()
            out["faults" + ("" if key == "recurrent" else "_" + key)].append(_minor_faults() - before)
        if naive_max is None or T <= naive_max:
            out["naive"].append(best_time(lambda: wkv_naive(w, u, k, v), naive_repeat))
        else:
            out["naive"].append(np.nan)
    return {"T": np.asarray(lengths), **{key: np.asarray(val) for key, val in out.items()}}


def parallel_wkv_timings(lengths: Sequence[int], C: int = 64, chunk: int = 32, repeat: int = 3,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Seconds to compute eq. 14 over T tokens and C channels from an empty past, per T in lengths
    (best of repeats), by the sequential scan and by the two forms parallel over time:

    "compiled scan" (kernels.wkv_gate into a buffer: T sequential steps, compiled), "NumPy scan"
    (reference.wkv: T sequential steps, each one vectorised over the C channels), "associative scan"
    (eq14.wkv_scan: log2(T) steps, each vectorised over all T tokens and C channels), "chunks"
    (eq14.wkv_chunked: T / chunk sequential steps, the rest vectorised). Also "T" and "steps": the
    sequential steps of each, {form: (len(lengths),)}, and "max_diff": the largest difference of each
    form's output from the compiled scan's, per T."""
    from .rwkv4.eq14 import wkv_chunked, wkv_scan
    from .rwkv4.kernels import wkv_gate

    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(-5, 3, C)).astype(np.float32)
    u = rng.normal(-1, 0.5, C).astype(np.float32)
    names = ("compiled scan", "NumPy scan", "associative scan", "chunks")
    times = {n: [] for n in names}
    diffs = {n: [] for n in names}
    for T in lengths:
        k = rng.normal(0, 1, (T, C)).astype(np.float32)
        v = rng.normal(0, 1, (T, C)).astype(np.float32)
        r, y = np.full((T, C), np.inf, np.float32), np.empty((T, C), np.float32)

        def compiled():
            aa, bb, pp = eq14_empty_state(C, np.float32)
            wkv_gate(w, u, k, v, r, aa, bb, pp, y)
            return y

        forms = {"compiled scan": compiled,
                 "NumPy scan": lambda: R.wkv(w, u, k, v, *eq14_empty_state(C, np.float32))[0],
                 "associative scan": lambda: wkv_scan(w, u, k, v, *eq14_empty_state(C, np.float32))[0],
                 "chunks": lambda: wkv_chunked(w, u, k, v, *eq14_empty_state(C, np.float32), chunk=chunk)[0]}
        ref = compiled().copy()
        for n, fn in forms.items():
            times[n].append(best_time(fn, repeat))
            diffs[n].append(float(np.abs(fn() - ref).max()))
    T = np.asarray(lengths)
    steps = {"compiled scan": T, "NumPy scan": T, "associative scan": np.ceil(np.log2(np.maximum(T, 2))).astype(int),
             "chunks": -(-T // chunk)}
    return {"T": T, **{n: np.asarray(t) for n, t in times.items()}, "steps": steps,
            "max_diff": {n: np.asarray(d) for n, d in diffs.items()}}


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Single-head causal softmax attention, for comparison: q, k, v (T, C) -> (T, C).

    Row t is sum_{i<=t} e^{q_t . k_i / sqrt C} v_i / sum_{i<=t} e^{q_t . k_i / sqrt C}: a (T, T)
    score matrix, hence O(T^2 C) time and O(T^2) memory.
    """
    T, C = q.shape
    scores = (q @ k.T) / np.sqrt(C)
    scores[np.arange(T)[:, None] < np.arange(T)[None, :]] = -np.inf  # the future is masked
    scores -= scores.max(1, keepdims=True)
    weights = np.exp(scores)
    return (weights / weights.sum(1, keepdims=True)) @ v


def attention_timings(lengths: Sequence[int], C: int = 64, repeat: int = 3, seed: int = 0) -> np.ndarray:
    """Seconds of `causal_attention` over T tokens and C channels, per T in lengths (best of repeats)."""
    rng = np.random.default_rng(seed)
    out = []
    for T in lengths:
        q, k, v = (rng.normal(0, 1, (T, C)).astype(np.float32) for _ in range(3))
        out.append(best_time(lambda: causal_attention(q, k, v), repeat))
    return np.asarray(out)


def recurrent_step_times(model: RWKV, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Seconds of each one-token recurrent step while reading tokens (N,): (N,)."""
    state = model.init_state()
    out = np.empty(len(tokens))
    for n, tok in enumerate(tokens):
        t0 = time.perf_counter()
        _, state = model.forward([int(tok)], state, mode="recurrent")
        out[n] = time.perf_counter() - t0
    return out


def attention_step_seconds(T: int, C: int, n_layer: int, ffn_dim: int | None = None, repeat: int = 5,
                           seed: int = 0) -> float:
    """Seconds of one decoding step of a minimal single-head transformer of the same size, at position T.

    Per layer: q, k, v projections, append to the KV cache of T positions, softmax(q K^T / sqrt C) V,
    output projection, a 4C ReLU feed-forward. A stand-in to show how the cost grows with T (the
    O(T C) attention read), not a tuned transformer.
    """
    F = ffn_dim or 4 * C
    rng = np.random.default_rng(seed)
    Wqkv = rng.normal(0, C ** -0.5, (3 * C, C)).astype(np.float32)
    Wo = rng.normal(0, C ** -0.5, (C, C)).astype(np.float32)
    W1 = rng.normal(0, C ** -0.5, (F, C)).astype(np.float32)
    W2 = rng.normal(0, F ** -0.5, (C, F)).astype(np.float32)
    K = rng.normal(0, 1, (n_layer, T + 1, C)).astype(np.float32)
    V = rng.normal(0, 1, (n_layer, T + 1, C)).astype(np.float32)
    x0 = rng.normal(0, 1, C).astype(np.float32)

    def step():
        x = x0
        for layer in range(n_layer):
            q, k, v = np.split(Wqkv @ x, 3)
            K[layer, T], V[layer, T] = k, v
            s = K[layer] @ q * (C ** -0.5)
            p = np.exp(s - s.max())
            x = x + Wo @ ((p / p.sum()) @ V[layer])
            x = x + W2 @ np.maximum(W1 @ x, 0)
        return x

    return best_time(step, repeat)
