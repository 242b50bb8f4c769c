"""What the tests share, in one module (tests import it as `helpers`; no test imports another test).

    paths       where the reference fixtures nobody here wrote live (../shared), and `need` to skip,
                naming the file, when one is absent
    fixtures    the facts about them: rwkv.cpp's prompt, file stems and tolerances, the float32 bound
    writers     checkpoint files of every format, without PyTorch: torch.save zips (and their pickle
                opcodes), safetensors, rwkv.cpp files (FP32/FP16, ggml's quantized blocks, and what
                rwkv.cpp's converter does to each version's tensors)
    weights     random weights of every architecture, shaped as checkpoints store them
    numerics    eq. 14 through the reference with the (wkv, aa, bb, pp) signature, both forms of any
                reference, float32 closeness, central differences
    training    the trainer's argument parser as the command line fills it

The writers write exactly the layouts the real tools write (checked against the fixtures in
../shared), so tests can build valid files of any size and then break them on purpose.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

from rwkv_np import registry
from rwkv_np.config import RWKVConfig
from rwkv_np.rwkv4 import reference as R4
from rwkv_np.rwkv4.params import random_weights

# ---- paths ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
TORCH_WRITTEN = FIXTURES / "torch_written"
RWKV_CPP = FIXTURES / "rwkv_cpp"
TOKENIZER_JSON = FIXTURES / "tokenizer" / "20B_tokenizer.json"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
ASSET = REPO / "rwkv_np" / "assets" / "rwkv4-shakespeare.safetensors"  # the shipped model
EXPERIMENTS = REPO / "experiments"


def need(path: Path) -> Path:
    """Skip the calling test, naming the file, when a reference fixture is absent."""
    if not path.exists():
        import pytest  # only here: benchmarks/ and experiments/ import the writers without pytest

        pytest.skip(f"reference fixture missing: {path}")
    return path


# ---- facts about the fixtures --------------------------------------------------------------------

# The three byte tokens of '"in', fed from the initial state by rwkv.cpp's own test.
PROMPT = [34, 105, 110]

# Float32 arithmetic on the small torch-written model (C = 48, FFN 192, two blocks): every dot product
# rounds at unit roundoff u = 6e-8 over at most 192 terms, through 2 x 5 matrix products, LayerNorms and
# the WKV average. The worst-case bound gamma_n = n u = 1.1e-5 relative to the logits' scale (~1);
# typical errors grow like sqrt(n) u. Observed: 2.7e-6 (ours), 3.2e-6 (transformers in float32).
# 1e-5 sits at the worst-case bound: a wrong formula moves logits by 1e-2 or more.
SMALL_ATOL = 1e-5

# rwkv.cpp's tiny models of the later versions: file stems, and its test's tolerance on
# |sum(logits - expected)| (1.05 x its own difference, tests/test_tiny_rwkv.c)
STEM = {"5.1": "5v1-730K", "5.2": "5v2-730K", "6": "6v0-1m", "7": "7v0-834K"}
SUM_TOL = {("5.1", "FP32"): 0.00105, ("5.2", "FP32"): 0.00105, ("6", "FP32"): 0.00105,
           ("7", "FP32"): 0.00105, ("5.1", "FP16"): 0.3044, ("5.2", "FP16"): 0.4787,
           ("6", "FP16"): 0.1936, ("7", "FP16"): 0.00605}


def expected_rwkv_cpp(stem: str = "4v0-660K") -> np.ndarray:
    """The 256 logits rwkv.cpp's test expects after PROMPT from the tiny model `stem`."""
    return np.fromfile(need(RWKV_CPP / f"expected-logits-{stem}.bin"), dtype="<f4")


def tiny_rwkv_cpp(version: str, dtype: str = "FP32") -> Path:
    """rwkv.cpp's tiny trained model of a later version ("5.1", "5.2", "6", "7")."""
    return need(RWKV_CPP / f"tiny-rwkv-{STEM[version]}-{dtype}.bin")


# ---- random weights ------------------------------------------------------------------------------

def tiny_weights(n_layer: int = 1, C: int = 8, V: int = 16, F: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw BlinkDL state dict (time_decay raw, time_mix (1, 1, C)) of a small random RWKV-4, float32:
    rwkv_np.rwkv4.params.random_weights, with the time_mix vectors shaped as .pth files store them."""
    config = RWKVConfig(n_layer=n_layer, n_embd=C, vocab_size=V, ffn_dim=F)
    return {k: v.reshape(1, 1, C) if ".time_mix_" in k else v for k, v in random_weights(config, seed).items()}


def expected_model_weights(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model-ready dict rwkv_np should make from a raw float32 BlinkDL state dict: the same
    values, vectors as (C,)."""
    return {k: v.reshape(-1) if ".time_" in k else v for k, v in raw.items()}


# sizes of the random models of the later versions (and of RWKV-4: the letters it has)
DIMS = {"V": 40, "C": 16, "L": 3, "A": 16, "F": 24, "H": 2, "N": 8, "Dm": 3, "Dd": 5,
        "Dw": 4, "Da": 3, "Dv": 2, "Dg": 5}
LATER = ("5.1", "5.2", "6", "7")


def random_flat(version: str, seed: int = 0, dims: dict | None = None) -> dict[str, np.ndarray]:
    """A flat {BlinkDL name: raw parameter} dict of an architecture's table at DIMS (updated by dims),
    values in the ranges real checkpoints have (LayerNorm weights near 1, mixes in (0, 1), decays of
    both kinds)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in registry.get(version).shapes(dict(DIMS, **(dims or {}))).items():
        end = name.rsplit(".", 1)[-1]
        if name.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight", "ln_x.weight")):
            a = 1 + 0.2 * rng.standard_normal(shape)
        elif end.startswith("time_mix") or end.startswith("time_maa_") and end[-1] in "xwkvrg" \
                or end.startswith("x_"):
            a = rng.uniform(0, 1, shape)
        elif end == "time_decay":
            a = rng.uniform(-6, 1, shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[-1])
        flat[name] = a.astype(np.float32)
    return flat


def as_pth_vectors(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A flat dict with its 1-D vectors as BlinkDL's .pth files store them, (1, 1, C)."""
    return {k: (v[None, None] if v.ndim == 1 else v) for k, v in flat.items()}


def leaves(tree, prefix: str = ""):
    """(path, array) of every array in a nested params dict, in a fixed order."""
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from leaves(tree[k], f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, t in enumerate(tree):
            yield from leaves(t, f"{prefix}.{i}")
    else:
        yield prefix, tree


# ---- 16-bit values -------------------------------------------------------------------------------

def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like torch's .to(bfloat16)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 and widened back to float32."""
    return (bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def encode(x: np.ndarray, dtype: str) -> bytes:
    """Little-endian bytes of x stored as dtype ("float32", "float16", "bfloat16")."""
    if dtype == "bfloat16":
        return bf16_bits(x).astype("<u2").tobytes()
    return np.ascontiguousarray(x, {"float32": "<f4", "float16": "<f2"}[dtype]).tobytes()


# ---- torch.save zips: pickle opcodes as torch.save's pickler (protocol 2) emits them ----------------

STORAGE_TYPES = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage"}


def p_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def p_int(n: int) -> bytes:
    if 0 <= n < 256:
        return pickle.BININT1 + bytes([n])
    if 0 <= n < 65536:
        return pickle.BININT2 + struct.pack("<H", n)
    if -2 ** 31 <= n < 2 ** 31:
        return pickle.BININT + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(b)]) + b


def p_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def p_tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def p_tensor(storage_key: str, numel: int, shape: tuple, stride: tuple | None = None, offset: int = 0,
             dtype: str = "float32") -> bytes:
    """Pickle ops that push _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())."""
    if stride is None:
        stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    pid = p_tuple(p_str("storage"), p_global("torch", STORAGE_TYPES[dtype]), p_str(storage_key), p_str("cpu"),
                  p_int(numel)) + pickle.BINPERSID
    args = p_tuple(pid, p_int(offset), p_tuple(*map(p_int, shape)), p_tuple(*map(p_int, stride)),
                   pickle.NEWFALSE, p_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE)
    return p_global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def p_state_dict(entries: list[tuple[str, bytes]]) -> bytes:
    """A whole pickle: {name: <ops pushing the value>} as torch writes it."""
    body = b"".join(p_str(name) + ops for name, ops in entries)
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + body + pickle.SETITEMS + pickle.STOP


def zip_bytes(members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive with exactly these members, in order (duplicates and odd names allowed)."""
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names, which some tests want
        with zipfile.ZipFile(out, "w", compression=compress) as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data, compress_type=compress)
    return out.getvalue()


def write_zip(path: Path, members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> Path:
    path.write_bytes(zip_bytes(members, compress))
    return path


def torch_zip_members(tensors: dict[str, np.ndarray], dtype: str = "float32", prefix: str = "archive",
                      pickle_bytes: bytes | None = None) -> list[tuple[str, bytes]]:
    """Members of a torch.save archive holding tensors (one storage each) stored as dtype."""
    entries, storages = [], []
    for i, (name, x) in enumerate(tensors.items()):
        entries.append((name, p_tensor(str(i), x.size, x.shape, dtype=dtype)))
        storages.append((f"{prefix}/data/{i}", encode(x, dtype)))
    data_pkl = p_state_dict(entries) if pickle_bytes is None else pickle_bytes
    return ([(f"{prefix}/data.pkl", data_pkl), (f"{prefix}/.format_version", b"1"),
             (f"{prefix}/byteorder", b"little")] + storages + [(f"{prefix}/version", b"3\n")])


def write_torch_zip(path: Path, tensors: dict[str, np.ndarray], dtype: str = "float32",
                    prefix: str = "archive") -> Path:
    return write_zip(path, torch_zip_members(tensors, dtype, prefix))


# ---- safetensors ---------------------------------------------------------------------------------

def safetensors_bytes(tensors: dict[str, np.ndarray], dtype: str = "float32", header_extra: dict | None = None) -> bytes:
    """A safetensors file (the library's layout: u64 header length, JSON padded with spaces, data)."""
    code = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    header, blobs, pos = {"__metadata__": {"format": "pt"}}, [], 0
    for name, x in tensors.items():
        blob = encode(x, dtype)
        header[name] = {"dtype": code, "shape": list(x.shape), "data_offsets": [pos, pos + len(blob)]}
        blobs.append(blob)
        pos += len(blob)
    header.update(header_extra or {})
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def to_hf_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BlinkDL names -> Hugging Face RwkvForCausalLM names."""
    out = {}
    for k, v in tensors.items():
        n = k.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.").replace(".ln0.", ".pre_ln.")
        n = n.replace("time_mix_k", "time_mix_key").replace("time_mix_v", "time_mix_value")
        n = n.replace("time_mix_r", "time_mix_receptance")
        n = "rwkv.embeddings.weight" if n == "emb.weight" else n if n == "head.weight" else "rwkv." + n
        out[n] = v
    return out


# ---- rwkv.cpp files ------------------------------------------------------------------------------

RWKV_CPP_MAGIC = 0x67676D66  # "ggmf"


def rwkv_cpp_record(name: str, x: np.ndarray, type_id: int, payload: bytes) -> bytes:
    """One tensor record: n_dims, key length, data type, the sizes reversed, the key, the data."""
    key = name.encode()
    return struct.pack(f"<3i{x.ndim}i", x.ndim, len(key), type_id, *reversed(x.shape)) + key + payload


def rwkv_cpp_bytes(tensors: dict[str, np.ndarray], data_type: int = 0, header: tuple | None = None,
                   version: int = 100, store=None) -> bytes:
    """An rwkv.cpp file of a raw RWKV-4 BlinkDL state dict: time_decay -> -exp, time_* squeezed, 2-D in data_type.

    store(name, x) -> (type id, payload bytes), if given, writes each 2-D tensor instead (quantized files)."""
    V, C = tensors["emb.weight"].shape
    n_layer = len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})
    out = [struct.pack("<6i", RWKV_CPP_MAGIC, version, V, C, n_layer, data_type) if header is None
           else struct.pack("<6i", *header)]
    for name, x in tensors.items():
        x = np.asarray(x, np.float32)
        if name.endswith("time_decay"):
            x = -np.exp(x.astype(np.float64)).astype(np.float32)
        if ".time_" in name:
            x = x.reshape(-1)
        if store is not None and x.ndim == 2:
            t, payload = store(name, x)
        else:
            t = data_type if x.ndim == 2 else 0
            payload = encode(x, "float16" if t == 1 else "float32")
        out.append(rwkv_cpp_record(name, x, t, payload))
    return b"".join(out)


def to_rwkv_cpp(flat: dict[str, np.ndarray], version: str, H: int = DIMS["H"]) -> dict[str, np.ndarray]:
    """What rwkv.cpp's convert_pytorch_to_ggml.py does to each tensor of a later version (written from
    its description in shared/README.md), float32, in the file's (PyTorch-order) shapes."""
    out = {}
    for name, a in flat.items():
        a = a.astype(np.float64)
        end = name.rsplit(".", 1)[-1]
        if version == "7" and end.startswith("x_") and ".att." in name:
            prefix = name[: -len(end)]
            out.setdefault(prefix + "x_rwkvag", [None] * 6)["rwkvag".index(end[2])] = a.reshape(1, -1)
            continue
        if version == "7" and end in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"):
            a = a.T
        if version in ("5.1", "5.2") and end == "time_decay":
            a = np.exp(-np.exp(a)).reshape(H, -1, 1)
        if version == "5.1" and end == "time_first":
            a = np.exp(a).reshape(H, 1, 1)
        if version in ("5.2", "6") and end == "time_faaaa":
            a = a[..., None]
        if version == "6" and end in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
            a = a.T
        if version == "6" and end == "time_maa_w2":
            a = a.swapaxes(1, 2)
        if version == "6" and end == "time_decay":
            a = a.reshape(H, -1, 1)
        out[name] = a
    return {k: (np.stack(v) if isinstance(v, list) else v).astype(np.float32) for k, v in out.items()}


def rwkv_cpp_converted_bytes(converted: dict[str, np.ndarray], version: int = 101, data_type: int = 0,
                             store=None) -> bytes:
    """An rwkv.cpp file holding tensors as given (already converted: `to_rwkv_cpp`), FP32 unless
    store(name, x) -> (type id, payload bytes) writes a tensor otherwise (None: float32); data_type
    is the header's."""
    V, C = converted["emb.weight"].shape
    n_layer = len({k.split(".")[1] for k in converted if k.startswith("blocks.")})
    out = [struct.pack("<6i", RWKV_CPP_MAGIC, version, V, C, n_layer, data_type)]
    for name, x in converted.items():
        t, payload = (store(name, x) if store is not None else None) or (0, encode(x, "float32"))
        out.append(rwkv_cpp_record(name, x, t, payload))
    return b"".join(out)


# ggml's quantized blocks (rwkv.cpp files of version 101): ggml's quantize_row_*_reference, written from
# the format description in rwkv_np/quantize.py: per block of 32 weights, the scale from the block's
# extremes, q rounded as ggml's C does (a truncating (int8_t) cast of x * id + 0.5 / 8.5 / 16.5, or
# roundf for Q8_0).

GGML_TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 7, "Q5_1": 8, "Q8_0": 9}


def ggml_block_bytes(d: np.ndarray, q: np.ndarray, fmt: str, m: np.ndarray | None = None) -> bytes:
    """Pack blocks of fmt: scales d (n,), minimums m (n,) for Q4_1/Q5_1, q (n, 32) the stored integers
    (0..15 for Q4, 0..31 for Q5, -128..127 for Q8_0)."""
    n = len(q)
    parts = [np.asarray(d, "<f2").reshape(n, 1).view(np.uint8)]
    if fmt in ("Q4_1", "Q5_1"):
        parts.append(np.asarray(m, "<f2").reshape(n, 1).view(np.uint8))
    if fmt == "Q8_0":
        parts.append(np.asarray(q, np.int8).view(np.uint8))
    else:
        q = np.asarray(q, np.uint32)
        if fmt in ("Q5_0", "Q5_1"):
            qh = ((q >> 4) & 1) << np.arange(32, dtype=np.uint32)
            parts.append(qh.sum(axis=1, dtype=np.uint32).astype("<u4").reshape(n, 1).view(np.uint8))
        low = (q & 0x0F).astype(np.uint8)
        parts.append(low[:, :16] | (low[:, 16:] << 4))
    return np.concatenate(parts, axis=1).tobytes()


def ggml_quantize(x: np.ndarray, fmt: str) -> bytes:
    """A float32 matrix (rows a multiple of 32 long) quantized to fmt's blocks, as ggml does."""
    b = np.asarray(x, np.float32).reshape(-1, 32)
    f16 = lambda v: np.asarray(v, np.float32).astype(np.float16)  # noqa: E731
    with np.errstate(divide="ignore", invalid="ignore"):
        if fmt == "Q8_0":
            d = np.abs(b).max(axis=1) / np.float32(127)
            idd = np.where(d > 0, np.float32(1) / d, np.float32(0))
            v = b * idd[:, None]
            return ggml_block_bytes(f16(d), (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8), fmt)  # roundf
        if fmt in ("Q4_0", "Q5_0"):
            half = 8 if fmt == "Q4_0" else 16
            signed_max = b[np.arange(len(b)), np.abs(b).argmax(axis=1)]
            d = signed_max / np.float32(-half)
            idd = np.where(d != 0, np.float32(1) / d, np.float32(0))
            q = np.minimum(2 * half - 1, np.trunc(b * idd[:, None] + np.float32(half + 0.5))).astype(np.uint8)
            return ggml_block_bytes(f16(d), q, fmt)
        top = 15 if fmt == "Q4_1" else 31
        lo, hi = b.min(axis=1), b.max(axis=1)
        d = (hi - lo) / np.float32(top)
        idd = np.where(d != 0, np.float32(1) / d, np.float32(0))
        q = np.minimum(top, np.trunc((b - lo[:, None]) * idd[:, None] + np.float32(0.5))).astype(np.uint8)
        return ggml_block_bytes(f16(d), q, fmt, f16(lo))


def rwkv_cpp_quantized_bytes(tensors: dict[str, np.ndarray], fmt: str, version: int = 101) -> bytes:
    """An rwkv.cpp file as its quantizer writes it: the 2-D tensors in fmt, except the embedding and
    the head (kept float32, as rwkv.cpp keeps them), the rest as rwkv_cpp_bytes writes them."""
    def store(name: str, x: np.ndarray) -> tuple[int, bytes]:
        if name in ("emb.weight", "head.weight"):
            return 0, encode(x, "float32")
        return GGML_TYPE_IDS[fmt], ggml_quantize(x, fmt)

    return rwkv_cpp_bytes(tensors, GGML_TYPE_IDS[fmt], version=version, store=store)


# ---- numerics ------------------------------------------------------------------------------------

def reference_wkv(w, u, k, v, aa, bb, pp):
    """wkv (T, C) of eq. 14 over k, v (T, C) from the state aa, bb, pp (C,), and the state after,
    as rwkv_np/rwkv4/reference.py's `wkv` computes it (in the dtype of the inputs)."""
    wkv, (aa, bb, pp) = R4.wkv(w, u, k, v, aa, bb, pp)
    return wkv, aa, bb, pp


def empty_state(C: int, dtype=np.float64):
    """eq. 14's state of an empty past: aa = bb = 0 and the reference's empty running maximum."""
    return np.zeros(C, dtype), np.zeros(C, dtype), np.full(C, R4.PP_EMPTY, dtype)


def step_by_step(ref, params, tokens, state=None, **options):
    """A reference's `step` over tokens, one call per token: logits (T, V) and the state after."""
    rows = []
    for token in tokens:
        logits, state = ref.step(params, int(token), state, **options)
        rows.append(logits)
    return np.stack(rows), state


def wkv_stable_in_longdouble(w, u, k, v, aa, bb, pp):
    """A learner's exercise-4 wkv_stable by brute force: no running maximum, every sum in np.longdouble
    (80-bit on x86: e^k finite up to k ~ 11356), the state stored as (a/b, 1, ln b) so that nothing
    overflows float32 on the way out."""
    L = np.longdouble
    a, b = aa.astype(L) * np.exp(pp.astype(L)), bb.astype(L) * np.exp(pp.astype(L))
    w, u, k, v = (z.astype(L) for z in (w, u, k, v))
    out = np.empty(k.shape, L)
    for t in range(len(k)):
        out[t] = (a + np.exp(u + k[t]) * v[t]) / (b + np.exp(u + k[t]))
        a, b = np.exp(-w) * a + np.exp(k[t]) * v[t], np.exp(-w) * b + np.exp(k[t])
    dt = pp.dtype
    return out.astype(dt), (a / b).astype(dt), np.ones_like(pp), np.log(b).astype(dt)


def close_in_float32(a, b) -> bool:
    """Two float32 evaluations of the same function: only the matrix products may sum in another
    order (BLAS blocks T rows differently from 1; the engine's SIMD lanes and float64 statistics), a
    relative difference of about sqrt(K) 2^-24 ~ 1e-6 per product that a dozen layers carry along.
    1e-5 of the largest magnitude allows for that (the measured worst case is 1.2e-6 relative)
    while any real difference, such as a state carried wrongly, moves the logits by O(1)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


def assert_close_in_float32(got, want) -> None:
    """close_in_float32 as an assertion that says by how much it failed."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    err, scale = np.abs(got - want).max(), max(1.0, np.abs(want).max())
    assert err <= 1e-5 * scale, f"max abs difference {err:.3g} at scale {scale:.3g}"


def central_difference(f, arr: np.ndarray, h: float, only=None) -> np.ndarray:
    """d f / d arr by (f(a+h) - f(a-h)) / 2h, entry by entry (arr is perturbed in place and restored)."""
    out = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        if only is not None and not only(i):
            continue
        old = arr[i]
        arr[i] = old + h
        fp = f()
        arr[i] = old - h
        fm = f()
        arr[i] = old
        out[i] = (fp - fm) / (2 * h)
    return out


# ---- training ------------------------------------------------------------------------------------

def train_args(**kw) -> argparse.Namespace:
    """The namespace `rwkv_np train` builds from options given as keywords (True: a bare flag)."""
    from rwkv_np.training import run

    parser = argparse.ArgumentParser()
    run.add_train_arguments(parser)
    argv = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)
