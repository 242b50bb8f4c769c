"""Which RWKV generation a set of tensors is, what shapes it must have, and the nested params dict the
references (rwkv_np/reference*.py) take; plus the way back from an rwkv.cpp file to BlinkDL's raw
parameters.

Every function here works on a flat {BlinkDL name: array} dict. The references take the parameters
as BlinkDL's .pth stores them (raw time_decay, time_first / time_faaaa, LoRA matrices in their
x @ A orientation) with size-1 axes squeezed, so each decay transform is written once, in the
reference. rwkv.cpp's converter stored some tensors transformed; `from_rwkv_cpp` undoes that.
"""

import re
import numpy as np

from .errors import CheckpointError

VERSIONS = ("4", "5.1", "5.2", "6", "7")
LN_EPS = 1e-5  # every LayerNorm of every version (ln0, ln1, ln2, ln_out)
# The epsilon of ln_x, the per-head GroupNorm of 5-7. BlinkDL trains it as GroupNorm(y / 8) with
# 1e-5, i.e. GroupNorm(y) with 64e-5, and his inference code uses 64e-5 for every version. rwkv.cpp
# uses 1e-5 for RWKV-5 (64e-5 for 6 and 7), and its expected logits for the tiny 5.1 and 5.2 files
# follow: reproduced to 3e-6 with 1e-5, missed by up to 1.3 with 64e-5 (the models' cross-entropy
# on text is the same to 1e-3 nats either way, so the files cannot tell which one they were trained
# with). Each source gets its own peer's value.
LN_X_EPS = 64e-5
LN_X_EPS_RWKV_CPP = {"5.1": 1e-5, "5.2": 1e-5, "6": 64e-5, "7": 64e-5}


def detect_version(names) -> str:
    """The version from the tensor names, by rwkv.cpp's converter's rule (the newest marker wins):
    att.k_k -> "7"; att.time_maa_x -> "6"; att.gate -> "5.2"; att.ln_x -> "5.1"; otherwise "4"."""
    names = set(names)
    for marker, version in (("att.k_k", "7"), ("att.time_maa_x", "6"), ("att.gate.weight", "5.2"),
                            ("att.ln_x.weight", "5.1")):
        if f"blocks.0.{marker}" in names:
            return version
    return "4"


def _dims(flat: dict, version: str, source: str) -> dict[str, int]:
    """The sizes the shape table is written in, read off a few tensors (checked there afterwards).
    flat: {name: anything with a .shape} (arrays, or the loaders' lazy tensors)."""
    def shape(name: str, ndim: int | None) -> tuple[int, ...]:
        """The shape of tensor `name` without its size-1 axes (as stored when ndim is None)."""
        if name not in flat:
            raise CheckpointError(f"{source}: missing tensor {name} (RWKV-{version})")
        if ndim is None:
            return tuple(flat[name].shape)
        s = tuple(d for d in flat[name].shape if d != 1) or (1,)
        if len(s) != ndim:
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(flat[name].shape)}, expected "
                                  f"{ndim} axes of size > 1")
        return s

    V, C = shape("emb.weight", 2)
    layers = {int(m.group(1)) for n in flat for m in [re.match(r"blocks\.(\d+)\.", n)] if m}
    if not layers or layers != set(range(len(layers))):
        raise CheckpointError(f"{source}: block indices must run 0..L-1 without gaps, found "
                              f"{sorted(layers)[:10]}")
    d = {"V": V, "C": C, "L": len(layers), "A": shape("blocks.0.att.key.weight", 2)[0],
         "F": shape("blocks.0.ffn.key.weight", 2)[0]}
    # the head count: the first axis of 5.1's decay (H,), 5.2/6's bonus (H, N) and 7's rho (H, N);
    # read from the raw shape, as a single head squeezed away would read as none
    head_tensor = {"5.1": "time_decay", "5.2": "time_faaaa", "6": "time_faaaa", "7": "r_k"}.get(version)
    if head_tensor:
        raw = shape(f"blocks.0.att.{head_tensor}", None)
        d["H"] = int(np.prod(raw)) if version == "5.1" else raw[0] if len(raw) > 1 else 0
    if version != "4":
        if d.get("H", 0) < 1 or d["A"] % d["H"]:
            raise CheckpointError(f"{source}: cannot split the attention width {d['A']} into heads (head "
                                  f"count {d.get('H')} read from the decay / bonus tensor)")
        d["N"] = d["A"] // d["H"]
    if version == "6":
        d["Dm"] = shape("blocks.0.att.time_maa_w1", 2)[1] // 5
        d["Dd"] = shape("blocks.0.att.time_decay_w1", 2)[1]
    if version == "7":
        for lora in "wagv":
            layer = 1 if lora == "v" else 0  # block 0 has no value-residual LoRA
            if d["L"] > layer:
                d["D" + lora] = shape(f"blocks.{layer}.att.{lora}1", 2)[1]
    return d


def param_shapes(version: str, d: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """{flat name: shape} of every parameter of `version`, in the references' convention (size-1 axes
    squeezed; Linear weights (out, in) as in PyTorch; LoRA matrices (in, out), used as x @ A).
    d: the sizes V (vocab), C (width), L (layers), A (attention width), F (FFN width), H, N (heads,
    head size), Dm, Dd (v6 LoRA ranks), Dw, Da, Dv, Dg (v7 LoRA ranks)."""
    if version == "4":  # RWKV-4's table is rwkv_np.schema's
        from .config import RWKVConfig
        from .schema import shapes as schema_shapes

        return schema_shapes(RWKVConfig(n_layer=d["L"], n_embd=d["C"], vocab_size=d["V"], ffn_dim=d["F"]))
    V, C, L, A, F = d["V"], d["C"], d["L"], d["A"], d["F"]
    H, N = d.get("H"), d.get("N")
    shapes = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
              "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}
    for i in range(L):
        b = f"blocks.{i}."
        s = {"ln1.weight": (C,), "ln1.bias": (C,), "ln2.weight": (C,), "ln2.bias": (C,),
             "att.key.weight": (A, C), "att.value.weight": (A, C), "att.receptance.weight": (A, C),
             "att.output.weight": (C, A), "ffn.key.weight": (F, C), "ffn.value.weight": (C, F)}
        if version != "7":
            s.update({"ffn.receptance.weight": (C, C)})
        if version in ("5.1", "5.2"):
            s.update({"att.time_mix_k": (C,), "att.time_mix_v": (C,), "att.time_mix_r": (C,),
                      "ffn.time_mix_k": (C,), "ffn.time_mix_r": (C,)})
        s.update({"att.ln_x.weight": (A,), "att.ln_x.bias": (A,)})
        if version == "5.1":
            s.update({"att.time_decay": (H,), "att.time_first": (H,)})
        elif version == "5.2":
            s.update({"att.time_decay": (H, N), "att.time_faaaa": (H, N), "att.time_mix_g": (C,),
                      "att.gate.weight": (A, C)})
        elif version == "6":
            s.update({f"att.time_maa_{c}": (C,) for c in "xwkvrg"})
            s.update({"att.time_maa_w1": (C, 5 * d["Dm"]), "att.time_maa_w2": (5, d["Dm"], C),
                      "att.time_decay": (A,), "att.time_decay_w1": (C, d["Dd"]),
                      "att.time_decay_w2": (d["Dd"], A), "att.time_faaaa": (H, N),
                      "att.gate.weight": (A, C), "ffn.time_maa_k": (C,), "ffn.time_maa_r": (C,)})
        elif version == "7":
            s.update({f"att.x_{c}": (C,) for c in "rwkvag"})
            for lora in "wagv":
                if lora == "v" and i == 0:
                    continue
                s.update({f"att.{lora}1": (C, d["D" + lora]), f"att.{lora}2": (d["D" + lora], A)})
                if lora != "g":
                    s[f"att.{lora}0"] = (A,)
            s.update({"att.k_k": (A,), "att.k_a": (A,), "att.r_k": (H, N), "ffn.x_k": (C,)})
        shapes.update({b + k: v for k, v in s.items()})
    return shapes


def check_shapes(flat: dict, version: str, source: str = "the weights"):
    """(dims, {name: shape}) of the later-version checkpoint `flat` ({BlinkDL name: anything with a
    .shape}, size-1 axes present or not), after checking that it holds exactly the tensors of
    param_shapes, each of its shape: otherwise a CheckpointError naming the tensor. Nothing is read."""
    if version not in VERSIONS:
        raise CheckpointError(f"{source}: RWKV version {version!r} is not one of {VERSIONS}")
    dims = _dims(flat, version, source)
    shapes = param_shapes(version, dims)
    missing = [n for n in shapes if n not in flat]
    extra = [n for n in flat if n not in shapes]
    if missing or extra:
        newer = (" (tensors of a newer architecture than rwkv_np runs, such as RWKV-8?)"
                 if extra and not missing else "")
        raise CheckpointError(f"{source}: not an RWKV-{version} checkpoint: missing tensors {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected tensors {extra[:5]}"
                              f"{' ...' if len(extra) > 5 else ''}{newer}")
    for name, shape in shapes.items():
        found = tuple(flat[name].shape)
        if tuple(x for x in found if x != 1) != tuple(x for x in shape if x != 1):
            raise CheckpointError(f"{source}: tensor {name} has shape {found}, expected {shape} "
                                  f"for RWKV-{version}")
    return dims, shapes


def config_from_weights(flat: dict, version: str | None = None, ln_x_eps: float = LN_X_EPS,
                        source: str = "the weights"):
    """The RWKVConfig of a flat {BlinkDL name: array} dict of any version (shapes checked)."""
    from .config import RWKVConfig

    version = version or detect_version(flat)
    dims, _ = check_shapes(flat, version, source)
    lora = tuple((k, dims[k]) for k in ("Dm", "Dd", "Dw", "Da", "Dv", "Dg") if k in dims)
    if version == "4":
        return RWKVConfig(n_layer=dims["L"], n_embd=dims["C"], vocab_size=dims["V"], ffn_dim=dims["F"])
    return RWKVConfig(n_layer=dims["L"], n_embd=dims["C"], vocab_size=dims["V"], ffn_dim=dims["F"],
                      version=version, n_head=dims["H"], head_size=dims["N"], ln_x_eps=ln_x_eps, lora=lora)


def to_params(flat: dict, version: str | None = None, source: str = "the weights",
              ln_x_eps: float = LN_X_EPS) -> dict:
    """The nested float32 params dict the references take, from a flat {BlinkDL name: array} dict.

    Every tensor is checked against `param_shapes` (size-1 axes may be present or not, as .pth files
    store vectors as (1, 1, C)); a missing, unexpected or misshapen tensor is a CheckpointError naming
    it. Layout: {"emb", "ln0", "blocks": [{"ln1", "att", "ln2", "ffn"}, ...], "ln_out", "head"}, with
    "weight" dropped from Linear names (att["key"]) and LayerNorms as {"weight", "bias", "eps"}
    (ln_x's eps: ln_x_eps)."""
    version = version or detect_version(flat)
    _, shapes = check_shapes(flat, version, source)
    arrays = {}
    for name, shape in shapes.items():
        a = np.asarray(flat[name])
        if not np.issubdtype(a.dtype, np.floating):
            raise CheckpointError(f"{source}: tensor {name} has dtype {a.dtype}, expected floating point")
        arrays[name] = np.ascontiguousarray(a.reshape(shape), dtype=np.float32)

    def ln(prefix: str) -> dict:
        return {"weight": arrays[prefix + ".weight"], "bias": arrays[prefix + ".bias"], "eps": LN_EPS}

    blocks = []
    for i in range(sum(1 for n in shapes if n.endswith(".ln1.weight"))):
        b = f"blocks.{i}."
        part = {"att": {}, "ffn": {}}
        for name, a in arrays.items():
            if name.startswith(b + "att.") or name.startswith(b + "ffn."):
                sub, key = name[len(b):].split(".", 1)
                if key.startswith("ln_x."):
                    part[sub].setdefault("ln_x", {"eps": ln_x_eps})[key[5:]] = a
                else:
                    part[sub][key.removesuffix(".weight")] = a
        blocks.append({"ln1": ln(b + "ln1"), "att": part["att"], "ln2": ln(b + "ln2"), "ffn": part["ffn"]})
    return {"emb": arrays["emb.weight"], "ln0": ln("blocks.0.ln0"), "blocks": blocks,
            "ln_out": ln("ln_out"), "head": arrays["head.weight"]}


def _log_checked(a: np.ndarray, name: str, source: str, low: float, high: float) -> np.ndarray:
    """log(a) in float64, after checking a lies in [low, high] (a converter output outside it is not
    one rwkv.cpp could have written, and its log would be NaN)."""
    a = np.asarray(a, np.float64)
    if not np.all((a >= low) & (a <= high)):
        raise CheckpointError(f"{source}: tensor {name} holds values outside [{low}, {high}] "
                              f"(min {np.nanmin(a):.4g}, max {np.nanmax(a):.4g}), which rwkv.cpp's "
                              "converter cannot have written")
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer at the ends of the range
        return np.log(a)


def from_rwkv_cpp(flat: dict, version: str, source: str = "the rwkv.cpp file") -> dict:
    """BlinkDL's raw parameters from the tensors of an rwkv.cpp file: undo its converter
    (python/convert_pytorch_to_ggml.py), which, besides squeezing the time_* vectors, stored
      4:   time_decay as -exp(time_decay);
      5.1: time_decay as exp(-exp(time_decay)) and time_first as exp(time_first), both (H, 1, 1);
      5.2: time_decay as exp(-exp(time_decay)) and time_faaaa with a trailing axis of 1;
      6:   time_maa_w1, time_decay_w1 and time_decay_w2 transposed, time_maa_w2 with its last two
           axes swapped, time_decay reshaped to (H, N, 1), time_faaaa with a trailing axis of 1;
      7:   the LoRA matrices w1 w2 a1 a2 v1 v2 g1 g2 transposed, and x_r x_w x_k x_v x_a x_g
           concatenated, in that order, as x_rwkvag (6, 1, C).
    The logs are taken in float64: exp(-exp(d)) near 1 (a slow decay) keeps the decay itself to
    float32 precision, and the round trip gives it back to within an ulp."""
    out = {}
    for name, a in flat.items():
        a = np.asarray(a)
        end = name.rsplit(".", 1)[-1] if ".att." in name else ""
        if version == "4" and end == "time_decay":
            a = _log_checked(-a, name, source, 0.0, np.inf)
        elif version in ("5.1", "5.2") and end == "time_decay":
            with np.errstate(divide="ignore"):  # a stored 1.0 (no decay) -> log(0) = -inf, consistent
                a = np.log(-_log_checked(a, name, source, 0.0, 1.0))
        elif version == "5.1" and end == "time_first":
            a = _log_checked(a, name, source, 0.0, np.inf)
        elif version == "6" and end in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
            a = a.T
        elif version == "6" and end == "time_decay":
            a = a.reshape(-1)
        elif version == "6" and end == "time_maa_w2":
            a = a.swapaxes(-1, -2)
        elif version == "7" and end in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
            a = a.T
        elif version == "7" and end == "x_rwkvag":
            if a.shape[0] != 6:
                raise CheckpointError(f"{source}: tensor {name} has shape {a.shape}, expected (6, 1, C)")
            prefix = name[: -len("x_rwkvag")]
            out.update({prefix + "x_" + c: a[j] for j, c in enumerate("rwkvag")})
            continue
        out[name] = a
    return out


def load_rwkv_cpp(path) -> tuple[str, dict]:
    """(version, params) from an rwkv.cpp FP32 or FP16 file (any version), for the references.

    Read through rwkv_np.loading (the one hardened reading path: its readers, limits, checks and
    errors naming the file), then nested for the references; ln_x's epsilon is rwkv.cpp's
    (LN_X_EPS_RWKV_CPP). Every problem is a CheckpointError naming the file."""
    from .loading import load_checkpoint

    checkpoint = load_checkpoint(path)
    c = checkpoint.config
    if checkpoint.format != "rwkv.cpp":
        raise CheckpointError(f"{path}: a {checkpoint.format} checkpoint, not an rwkv.cpp file")
    return c.version, to_params(checkpoint.weights, c.version, str(path), c.ln_x_eps or LN_X_EPS)
