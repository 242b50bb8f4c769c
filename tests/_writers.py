"""Checkpoint writers for tests, without PyTorch: torch.save-style zips, safetensors, rwkv.cpp files.

They write exactly the layouts the real tools write (checked against the fixtures in ../shared), so
tests can build valid files of any size and then break them on purpose.
"""

import io
import json
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

from rwkv_np.config import RWKVConfig
from rwkv_np.schema import random_weights

STORAGE_TYPES = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage"}


def tiny_weights(n_layer: int = 1, C: int = 8, V: int = 16, F: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw BlinkDL state dict (time_decay raw, time_mix (1, 1, C)) of a small random RWKV-4, float32:
    rwkv_np.schema.random_weights, with the time_mix vectors shaped as .pth files store them."""
    config = RWKVConfig(n_layer=n_layer, n_embd=C, vocab_size=V, ffn_dim=F)
    return {k: v.reshape(1, 1, C) if ".time_mix_" in k else v for k, v in random_weights(config, seed).items()}


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


# ---- pickle opcodes, as torch.save's pickler (protocol 2) emits them --------------------------------

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


def rwkv_cpp_bytes(tensors: dict[str, np.ndarray], data_type: int = 0, header: tuple | None = None,
                   version: int = 100, store=None) -> bytes:
    """An rwkv.cpp file of a raw BlinkDL state dict: time_decay -> -exp, time_* squeezed, 2-D in data_type.

    store(name, x) -> (type id, payload bytes), if given, writes each 2-D tensor instead (quantized files)."""
    V, C = tensors["emb.weight"].shape
    n_layer = len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})
    out = [struct.pack("<6i", 0x67676D66, version, V, C, n_layer, data_type) if header is None
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
        key = name.encode()
        out.append(struct.pack(f"<3i{x.ndim}i", x.ndim, len(key), t, *reversed(x.shape)) + key + payload)
    return b"".join(out)


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


def expected_model_weights(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model-ready dict rwkv_np should make from a raw float32 BlinkDL state dict: the same
    values, vectors as (C,)."""
    return {k: v.reshape(-1) if ".time_" in k else v for k, v in raw.items()}


# ---- ggml's quantized blocks (rwkv.cpp files of version 101) ----------------------------------------
# ggml's quantize_row_*_reference, written from the format description in rwkv_np/quantize.py:
# per block of 32 weights, the scale from the block's extremes, q rounded as ggml's C does
# (a truncating (int8_t) cast of x * id + 0.5 / 8.5 / 16.5, or roundf for Q8_0).

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
